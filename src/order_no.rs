//! Order numbers: "PD" + yyMMddHHmmss (UTC) + 16 Crockford base32 characters of 80
//! random bits — 30 characters, within WeChat's 32, sortable by creation second and
//! unguessable.

use std::sync::LazyLock;

use data_encoding::{Encoding, Specification};
use payd_actors::model::Timestamp;

static CROCKFORD: LazyLock<Encoding> = LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("0123456789ABCDEFGHJKMNPQRSTVWXYZ");
    match spec.encoding() {
        Ok(e) => e,
        Err(e) => panic!("invalid Crockford base32 specification: {e}"),
    }
});

pub fn new_order_no(now: Timestamp) -> String {
    let random: [u8; 10] = rand::random();
    let mut no = String::with_capacity(30);
    no.push_str("PD");
    stamp(now, &mut no);
    CROCKFORD.encode_append(&random, &mut no);
    no
}

/// yyMMddHHmmss of `now` (UTC), pushed digit by digit: `format!` with padded
/// integers was most of the cost of a new order number.
fn stamp(now: Timestamp, out: &mut String) {
    let t = time::OffsetDateTime::from_unix_timestamp(now.ms().div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    for part in [
        t.year().rem_euclid(100) as u8,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    ] {
        out.push(char::from(b'0' + part / 10));
        out.push(char::from(b'0' + part % 10));
    }
}

/// Whether `s` has the shape of an order number (cheap rejection of junk paths).
pub fn looks_like_order_no(s: &str) -> bool {
    s.len() == 30
        && s.starts_with("PD")
        && s[2..14].bytes().all(|b| b.is_ascii_digit())
        && s[14..]
            .bytes()
            .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_documented_shape() {
        // 2026-11-22T20:33:15Z
        let no = new_order_no(Timestamp(1_795_379_595_000));
        assert_eq!(no.len(), 30);
        assert!(no.starts_with("PD261122203315"), "{no}");
        assert!(looks_like_order_no(&no));
        assert_ne!(no, new_order_no(Timestamp(1_795_379_595_000)));
        assert!(!looks_like_order_no("PD26112220331"));
        assert!(!looks_like_order_no("PD261122203315K3M9Q2XA7F4HD1RI"));
    }
}
