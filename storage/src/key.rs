//! Order-preserving key encodings.
//!
//! Byte order of an encoded key equals the natural order of the value, so range scans
//! over a keyspace walk keys in order: integers big-endian (signed ones with the sign
//! bit flipped), strings with 0x00 escaped as 0x00 0xFF and terminated by 0x00 0x01
//! (so "a" < "ab" and a string is never a prefix-collision of a longer one), and
//! tuples as the concatenation of their parts — which also makes the encoding of a
//! tuple's first parts a prefix of the whole key.

/// A key component. Implemented for integers, strings and tuples of them.
pub trait Key: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(r: &mut KeyReader<'_>) -> Option<Self>;

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode(&mut out);
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut r = KeyReader { rest: bytes };
        let v = Self::decode(&mut r)?;
        r.rest.is_empty().then_some(v)
    }
}

/// A cursor over an encoded key.
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl KeyReader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.rest.split_first_chunk::<N>()?;
        self.rest = tail;
        Some(*head)
    }
}

/// The empty key: as a prefix it selects the whole table.
impl Key for () {
    fn encode(&self, _out: &mut Vec<u8>) {}
    fn decode(_r: &mut KeyReader<'_>) -> Option<Self> {
        Some(())
    }
}

impl Key for u64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn decode(r: &mut KeyReader<'_>) -> Option<Self> {
        r.take::<8>().map(u64::from_be_bytes)
    }
}

impl Key for u32 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn decode(r: &mut KeyReader<'_>) -> Option<Self> {
        r.take::<4>().map(u32::from_be_bytes)
    }
}

impl Key for u8 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
    fn decode(r: &mut KeyReader<'_>) -> Option<Self> {
        r.take::<1>().map(|b| b[0])
    }
}

impl Key for i64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&((*self as u64) ^ (1 << 63)).to_be_bytes());
    }
    fn decode(r: &mut KeyReader<'_>) -> Option<Self> {
        r.take::<8>()
            .map(|b| (u64::from_be_bytes(b) ^ (1 << 63)) as i64)
    }
}

impl Key for String {
    fn encode(&self, out: &mut Vec<u8>) {
        let bytes = self.as_bytes();
        // Keys almost never hold a 0x00: copy them whole, escape only when needed.
        if bytes.contains(&0) {
            for &b in bytes {
                if b == 0 {
                    out.extend_from_slice(&[0, 0xff]);
                } else {
                    out.push(b);
                }
            }
        } else {
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(&[0, 1]);
    }
    fn decode(r: &mut KeyReader<'_>) -> Option<Self> {
        let mut bytes = Vec::new();
        loop {
            let [b] = r.take::<1>()?;
            if b != 0 {
                bytes.push(b);
                continue;
            }
            match r.take::<1>()? {
                [0xff] => bytes.push(0),
                [1] => break,
                _ => return None,
            }
        }
        String::from_utf8(bytes).ok()
    }
}

impl<A: Key, B: Key> Key for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
    }
    fn decode(r: &mut KeyReader<'_>) -> Option<Self> {
        Some((A::decode(r)?, B::decode(r)?))
    }
}

impl<A: Key, B: Key, C: Key> Key for (A, B, C) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
        self.2.encode(out);
    }
    fn decode(r: &mut KeyReader<'_>) -> Option<Self> {
        Some((A::decode(r)?, B::decode(r)?, C::decode(r)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn string_order_is_byte_order(a in ".{0,12}", b in ".{0,12}") {
            let (ea, eb) = (a.to_bytes(), b.to_bytes());
            prop_assert_eq!(a.cmp(&b), ea.cmp(&eb));
            prop_assert_eq!(String::from_bytes(&ea), Some(a));
        }

        #[test]
        fn tuple_order_is_byte_order(a in (any::<i64>(), "[a\\x00b]{0,4}", any::<u64>()),
                                     b in (any::<i64>(), "[a\\x00b]{0,4}", any::<u64>())) {
            prop_assert_eq!(a.cmp(&b), a.to_bytes().cmp(&b.to_bytes()));
            prop_assert_eq!(<(i64, String, u64)>::from_bytes(&a.to_bytes()), Some(a));
        }
    }

    #[test]
    fn truncated_or_trailing_bytes_are_refused() {
        let k = ("user".to_string(), 5u64).to_bytes();
        assert!(<(String, u64)>::from_bytes(&k[..k.len() - 1]).is_none());
        let mut longer = k.clone();
        longer.push(0);
        assert!(<(String, u64)>::from_bytes(&longer).is_none());
    }
}
