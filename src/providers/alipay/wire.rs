//! Alipay OpenAPI wire format, kept pure: form encoding and decoding, the strings
//! that are signed and verified, the extraction of a synchronous response's signed
//! substring, yuan ↔ fen, and Beijing wall time.
//!
//! Why hand-written and byte-exact: Alipay signs *text*, not data. A request is
//! signed over its raw (unencoded) sorted parameters; a notify over its form-decoded
//! values; a synchronous response over the exact bytes of its `…_response` object as
//! received, escaped slashes and all. Anything that parses and re-serializes on the
//! way would verify something other than what was signed, so every function here
//! takes and returns the exact text. Nothing here does I/O, reads a clock or logs.

use std::collections::BTreeMap;

use payd_actors::model::Timestamp;

/// The only signature type payd speaks: SHA256withRSA, PKCS#1 v1.5.
pub const SIGN_TYPE: &str = "RSA2";

/// Why a piece of wire text was refused. Never carries the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not valid form encoding: {0}")]
    Form(&'static str),
    #[error("a parameter appears twice")]
    DuplicateParameter,
    #[error("not a JSON object as Alipay sends it: {0}")]
    Json(&'static str),
}

// ---------------------------------------------------------------------------
// application/x-www-form-urlencoded
// ---------------------------------------------------------------------------

/// Appends `s` form-encoded: space becomes `+`; letters, digits and `-._~` stay;
/// every other UTF-8 byte becomes `%XX` (upper-case hex), as the official SDKs emit.
pub fn form_encode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b' ' => out.push('+'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
}

/// `k=v&k=v…` in the order given, each key and value form-encoded.
pub fn form_encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        form_encode_into(k.as_ref(), &mut out);
        out.push('=');
        form_encode_into(v.as_ref(), &mut out);
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn form_decode_component(s: &[u8]) -> Result<String, WireError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = s.get(i + 1).copied().and_then(hex_value);
                let lo = s.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(WireError::Form("a '%' not followed by two hex digits"));
                };
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| WireError::Form("a value is not UTF-8"))
}

/// Decodes a form body or query string into its parameters, in order. `+` is a
/// space and `%XX` a byte; the decoded bytes must be UTF-8. Empty segments
/// (`a=1&&b=2`) are skipped; a segment without `=` is a key with an empty value.
pub fn form_decode(s: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    s.split(|&b| b == b'&')
        .filter(|seg| !seg.is_empty())
        .map(|seg| {
            let (k, v) = match seg.iter().position(|&b| b == b'=') {
                Some(i) => (&seg[..i], &seg[i + 1..]),
                None => (seg, &seg[seg.len()..]),
            };
            Ok((form_decode_component(k)?, form_decode_component(v)?))
        })
        .collect()
}

/// [`form_decode`] into a map, refusing a key given twice: which of the two values
/// was signed would be ambiguous.
pub fn form_decode_map(s: &[u8]) -> Result<BTreeMap<String, String>, WireError> {
    let mut map = BTreeMap::new();
    for (k, v) in form_decode(s)? {
        if map.insert(k, v).is_some() {
            return Err(WireError::DuplicateParameter);
        }
    }
    Ok(map)
}

// ---------------------------------------------------------------------------
// What is signed
// ---------------------------------------------------------------------------

fn join_sorted<'a>(mut pairs: Vec<(&'a str, &'a str)>) -> String {
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::new();
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The text a request's `sign` covers: every parameter except `sign` — `sign_type`
/// included — with empty values dropped, sorted by key (bytewise), joined as raw
/// `k=v` with `&`. `biz_content` goes in verbatim.
pub fn request_sign_content<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> String {
    join_sorted(
        params
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .filter(|(k, v)| *k != "sign" && !v.is_empty())
            .collect(),
    )
}

/// The text an async notify's (or a page-pay return's) `sign` covers: the decoded
/// parameters without `sign` *and* `sign_type`, empty values dropped, sorted,
/// joined as raw `k=v` with `&`.
pub fn notify_verify_content(params: &BTreeMap<String, String>) -> String {
    join_sorted(
        params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, v)| *k != "sign" && *k != "sign_type" && !v.is_empty())
            .collect(),
    )
}

// ---------------------------------------------------------------------------
// Synchronous responses: the signed substring
// ---------------------------------------------------------------------------

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// `i` is at an opening quote; returns the index just past the closing one. A
/// backslash always escapes the next byte, so `\"` and `\\` are handled.
fn scan_string(b: &[u8], mut i: usize) -> Result<usize, WireError> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(WireError::Json("unterminated string"))
}

/// `i` is at the start of a value; returns the index just past its end. Objects
/// and arrays end at their matching bracket, counting only brackets outside
/// quoted strings.
fn scan_value(b: &[u8], i: usize) -> Result<usize, WireError> {
    match b.get(i) {
        None => Err(WireError::Json("value expected")),
        Some(b'"') => scan_string(b, i),
        Some(b'{' | b'[') => {
            let mut closers = Vec::new();
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = scan_string(b, j)?;
                        continue;
                    }
                    b'{' => closers.push(b'}'),
                    b'[' => closers.push(b']'),
                    c @ (b'}' | b']') => {
                        if closers.pop() != Some(c) {
                            return Err(WireError::Json("mismatched bracket"));
                        }
                        if closers.is_empty() {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Err(WireError::Json("unterminated object"))
        }
        Some(_) => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
            {
                j += 1;
            }
            if j == i {
                return Err(WireError::Json("value expected"));
            }
            Ok(j)
        }
    }
}

/// The members of a top-level JSON object as (decoded key, exact raw value text),
/// in order. Only the top level is split; values are returned byte for byte.
pub fn top_level_members(body: &str) -> Result<Vec<(String, &str)>, WireError> {
    let b = body.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(WireError::Json("not an object"));
    }
    i = skip_ws(b, i + 1);
    let mut members = Vec::new();
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return Err(WireError::Json("member name expected"));
            }
            let key_end = scan_string(b, i)?;
            let key: String = serde_json::from_str(&body[i..key_end])
                .map_err(|_| WireError::Json("bad member name"))?;
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return Err(WireError::Json("':' expected"));
            }
            let start = skip_ws(b, i + 1);
            let end = scan_value(b, start)?;
            members.push((key, &body[start..end]));
            i = skip_ws(b, end);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(WireError::Json("',' or '}' expected")),
            }
        }
    }
    if skip_ws(b, i) != b.len() {
        return Err(WireError::Json("text after the object"));
    }
    Ok(members)
}

/// The exact raw text of the top-level member `key`, if present; a key given twice
/// is refused (which one was signed would be ambiguous).
pub fn top_level_value<'a>(body: &'a str, key: &str) -> Result<Option<&'a str>, WireError> {
    let mut found = None;
    for (k, v) in top_level_members(body)? {
        if k == key {
            if found.is_some() {
                return Err(WireError::Json("member given twice"));
            }
            found = Some(v);
        }
    }
    Ok(found)
}

/// The response member of `method`: `alipay.trade.query` → `alipay_trade_query_response`.
pub fn response_key(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

// ---------------------------------------------------------------------------
// Money: yuan strings ↔ fen, exactly
// ---------------------------------------------------------------------------

/// Parses Alipay's yuan amount (`"88.88"`, `"0.01"`, `"100"`, `"9.9"`) into fen.
/// Only ASCII digits with at most two decimals; no sign, exponent, spaces or
/// leading/trailing dot; never through a float.
pub fn parse_yuan(s: &str) -> Option<i64> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    if int.is_empty() || int.len() > 15 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let yuan: i64 = int.parse().ok()?;
    let fen = match frac {
        None => 0,
        Some(f) if (1..=2).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => {
            let v: i64 = f.parse().ok()?;
            if f.len() == 1 { v * 10 } else { v }
        }
        Some(_) => return None,
    };
    yuan.checked_mul(100)?.checked_add(fen)
}

/// Formats fen as Alipay's yuan string with exactly two decimals (`8888` →
/// `"88.88"`). Negative amounts have no yuan form here.
pub fn format_yuan(fen: i64) -> Option<String> {
    (fen >= 0).then(|| format!("{}.{:02}", fen / 100, fen % 100))
}

// ---------------------------------------------------------------------------
// Time: Beijing wall clock, whatever the host's zone
// ---------------------------------------------------------------------------

const BEIJING: time::UtcOffset = time::macros::offset!(+8);
const WALL: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

/// `yyyy-MM-dd HH:mm:ss` in Beijing time (fixed +08:00), as `timestamp` and
/// `time_expire` want it.
pub fn beijing_wall_time(t: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.ms().div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(BEIJING)
        .format(WALL)
        .unwrap_or_default()
}

/// Reads a Beijing wall time such as `gmt_payment` or `send_pay_date`.
pub fn parse_beijing_wall_time(s: &str) -> Option<Timestamp> {
    let dt = time::PrimitiveDateTime::parse(s, WALL)
        .ok()?
        .assume_offset(BEIJING);
    Some(Timestamp(
        i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_and_fen_convert_exactly_and_refuse_everything_else() {
        let good: &[(&str, i64)] = &[
            ("88.88", 8888),
            ("0.01", 1),
            ("0.10", 10),
            ("0.1", 10),
            ("9.9", 990),
            ("100", 10000),
            ("100.00", 10000),
            ("0", 0),
            ("0.00", 0),
            ("10000.00", 1_000_000),
            ("92233720368547.75", 9_223_372_036_854_775),
        ];
        for (s, fen) in good {
            assert_eq!(parse_yuan(s), Some(*fen), "{s}");
        }
        let bad = [
            "",
            ".",
            "1.",
            ".5",
            "1e3",
            "1E3",
            "-1",
            "+1",
            "0.001",
            "1.234",
            " 1",
            "1 ",
            "1,00",
            "1.0.0",
            "0x10",
            "١٢",
            "NaN",
            "inf",
            "1.-1",
            "1..0",
            "999999999999999999",
        ];
        for s in bad {
            assert_eq!(parse_yuan(s), None, "{s:?} must be refused");
        }
        let formats: &[(i64, &str)] = &[
            (8888, "88.88"),
            (1, "0.01"),
            (10, "0.10"),
            (990, "9.90"),
            (10000, "100.00"),
            (0, "0.00"),
        ];
        for (fen, s) in formats {
            assert_eq!(format_yuan(*fen).as_deref(), Some(*s));
            assert_eq!(parse_yuan(s), Some(*fen), "round trip {s}");
        }
        assert_eq!(format_yuan(-1), None);
    }

    #[test]
    fn brace_matching_skips_braces_and_escaped_quotes_inside_strings() {
        let body = r#"{"alipay_trade_query_response":{"code":"10000","msg":"a } b { \" }","nested":{"x":["}",{"y":"\\"}]}},"sign":"abc"}"#;
        assert_eq!(
            top_level_value(body, "alipay_trade_query_response").unwrap(),
            Some(r#"{"code":"10000","msg":"a } b { \" }","nested":{"x":["}",{"y":"\\"}]}}"#)
        );
        assert_eq!(top_level_value(body, "sign").unwrap(), Some("\"abc\""));
        // The key must be a top-level member, not text inside a value.
        let decoy = r#"{"other":{"alipay_trade_query_response":{"code":"10000"}},"sign":"x"}"#;
        assert_eq!(
            top_level_value(decoy, "alipay_trade_query_response").unwrap(),
            None
        );
        // Whitespace around members is allowed; the value is still exact.
        let spaced = "{ \"k\" : { \"a\" : \"\\/\" } , \"sign\" : \"s\" }";
        assert_eq!(
            top_level_value(spaced, "k").unwrap(),
            Some("{ \"a\" : \"\\/\" }")
        );
        for broken in [
            r#"{"k":{"a":"b"}"#,
            r#"{"k":{"a":"b}}"#,
            r#"{"k":{"a":["b"}]}"#,
            r#"{"k":1}{"#,
            r#"["k"]"#,
            r#"{"k":{},"k":{}}"#,
        ] {
            assert!(
                top_level_value(broken, "k").is_err(),
                "{broken} must be refused"
            );
        }
    }

    #[test]
    fn form_round_trip_and_refusals() {
        let pairs = [("a b", "c+d/é&="), ("empty", "")];
        let encoded = form_encode(&pairs);
        assert_eq!(encoded, "a+b=c%2Bd%2F%C3%A9%26%3D&empty=");
        let decoded = form_decode(encoded.as_bytes()).unwrap();
        assert_eq!(
            decoded,
            vec![
                ("a b".to_string(), "c+d/é&=".to_string()),
                ("empty".to_string(), String::new())
            ]
        );
        assert!(form_decode(b"a=%zz").is_err());
        assert!(form_decode(b"a=%4").is_err());
        assert!(form_decode(b"a=%FF").is_err(), "not UTF-8");
        assert_eq!(
            form_decode_map(b"a=1&a=2"),
            Err(WireError::DuplicateParameter)
        );
    }

    #[test]
    fn beijing_wall_time_is_fixed_plus_eight() {
        // 2023-11-14T22:13:20Z
        let t = Timestamp(1_700_000_000_000);
        assert_eq!(beijing_wall_time(t), "2023-11-15 06:13:20");
        assert_eq!(parse_beijing_wall_time("2023-11-15 06:13:20"), Some(t));
        assert_eq!(parse_beijing_wall_time("2023-11-15T06:13:20"), None);
    }
}
