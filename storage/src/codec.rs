//! The value envelope: one schema-version byte, then postcard.
//!
//! Every persisted value says which schema wrote it, so a newer build can migrate an
//! older record and an older build refuses a newer one instead of misreading it.

use serde::{Serialize, de::DeserializeOwned};

use crate::StorageError;

/// A value stored in a [`crate::Table`]. Bump `SCHEMA` whenever the encoding changes,
/// and never reuse a number.
pub trait Record: Serialize + DeserializeOwned {
    const SCHEMA: u8;
}

pub fn encode_record<V: Record>(value: &V) -> Vec<u8> {
    // Room for a typical record (an order is a few hundred bytes) up front, instead
    // of growing the buffer field by field.
    let mut out = Vec::with_capacity(512);
    out.push(V::SCHEMA);
    // postcard into a Vec cannot fail for the plain data types we store.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => panic!("postcard encoding failed: {e}"),
    }
}

pub fn decode_record<V: Record>(table: &'static str, bytes: &[u8]) -> Result<V, StorageError> {
    let (&version, body) = bytes.split_first().ok_or_else(|| StorageError::Corrupt {
        table,
        reason: "empty value".into(),
    })?;
    if version != V::SCHEMA {
        return Err(StorageError::Schema {
            table,
            found: version,
            expected: V::SCHEMA,
        });
    }
    postcard::from_bytes(body).map_err(|e| StorageError::Corrupt {
        table,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        a: u64,
        b: String,
    }
    impl Record for V1 {
        const SCHEMA: u8 = 1;
    }
    #[derive(Debug, Serialize, Deserialize)]
    struct V2 {
        a: u64,
    }
    impl Record for V2 {
        const SCHEMA: u8 = 2;
    }

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let v = V1 {
            a: 7,
            b: "x".into(),
        };
        let bytes = encode_record(&v);
        assert_eq!(bytes[0], 1);
        assert_eq!(decode_record::<V1>("t", &bytes).unwrap(), v);
        let err = decode_record::<V2>("t", &bytes).unwrap_err();
        assert!(matches!(
            err,
            StorageError::Schema {
                found: 1,
                expected: 2,
                ..
            }
        ));
        assert!(decode_record::<V1>("t", &[]).is_err());
        assert!(decode_record::<V1>("t", &[1, 0xff]).is_err());
    }
}
