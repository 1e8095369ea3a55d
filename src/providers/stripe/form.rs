//! Stripe's request bodies: `application/x-www-form-urlencoded` with brackets for
//! nesting (`metadata[order_no]=…`, `line_items[0][price_data][unit_amount]=499`).
//!
//! A body is built as a JSON value and flattened, so the nesting is written once, in
//! the shape Stripe documents, and the output is deterministic (object keys in sorted
//! order) — which idempotent requests need: a replay must carry the very same
//! parameters. Brackets stay literal in keys, as in Stripe's own examples; everything
//! else outside the unreserved set is percent-encoded. `decode` is the inverse, for
//! the sandbox and tests.

use serde_json::Value;

/// Flattens `value` into bracketed `(key, value)` pairs. Objects nest as `a[b]`,
/// arrays as `a[0]`; `null` is left out (Stripe has no "absent" spelling in a form).
pub fn flatten(value: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Value::Object(map) = value {
        for (k, v) in map {
            walk(k.clone(), v, &mut out);
        }
    }
    out
}

fn walk(key: String, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push((key, b.to_string())),
        Value::Number(n) => out.push((key, n.to_string())),
        Value::String(s) => out.push((key, s.clone())),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(format!("{key}[{i}]"), v, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                walk(format!("{key}[{k}]"), v, out);
            }
        }
    }
}

/// `k=v&k=v`, percent-encoded; `[` and `]` in keys are kept as they are.
pub fn encode(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        escape(k, true, &mut out);
        out.push('=');
        escape(v, false, &mut out);
    }
    out
}

/// Flattens and encodes in one go.
pub fn to_body(value: &Value) -> String {
    encode(&flatten(value))
}

fn escape(s: &str, key: bool, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'[' | b']' if key => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// Parses a form body back into pairs (`+` is a space; bad escapes stay as written).
pub fn decode(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let pair = &bytes[i + 1..i + 3];
                let hex = pair
                    .iter()
                    .all(u8::is_ascii_hexdigit)
                    .then(|| std::str::from_utf8(pair).ok())
                    .flatten();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_session_create_flattens_into_stripes_bracketed_form() {
        let body = json!({
            "mode": "payment",
            "client_reference_id": "PD261122203315K3M9Q2XA7F4HD1RN",
            "expires_at": 1_795_381_455,
            "line_items": [{
                "quantity": 1,
                "price_data": {
                    "currency": "usd",
                    "unit_amount": 499,
                    "product_data": {"name": "USD coins & more"},
                },
            }],
            "metadata": {"order_no": "PD261122203315K3M9Q2XA7F4HD1RN"},
            "payment_intent_data": {"metadata": {"order_no": "PD261122203315K3M9Q2XA7F4HD1RN"}},
            "success_url": "https://shop.example/payment/return?order_no=PD1",
            "customer_email": null,
        });
        let encoded = to_body(&body);
        assert_eq!(
            encoded,
            "client_reference_id=PD261122203315K3M9Q2XA7F4HD1RN\
             &expires_at=1795381455\
             &line_items[0][price_data][currency]=usd\
             &line_items[0][price_data][product_data][name]=USD%20coins%20%26%20more\
             &line_items[0][price_data][unit_amount]=499\
             &line_items[0][quantity]=1\
             &metadata[order_no]=PD261122203315K3M9Q2XA7F4HD1RN\
             &mode=payment\
             &payment_intent_data[metadata][order_no]=PD261122203315K3M9Q2XA7F4HD1RN\
             &success_url=https%3A%2F%2Fshop.example%2Fpayment%2Freturn%3Forder_no%3DPD1"
        );
        let back = decode(&encoded);
        assert_eq!(back, flatten(&body));
        assert!(back.contains(&(
            "line_items[0][price_data][product_data][name]".into(),
            "USD coins & more".into()
        )));
    }

    #[test]
    fn decoding_tolerates_escaped_brackets_plus_signs_and_bad_escapes() {
        assert_eq!(
            decode("metadata%5Border_no%5D=A+1&x=%zz&y=%4"),
            vec![
                ("metadata[order_no]".to_string(), "A 1".to_string()),
                ("x".to_string(), "%zz".to_string()),
                ("y".to_string(), "%4".to_string()),
            ]
        );
        assert_eq!(decode("名=%E5%90%8D"), vec![("名".into(), "名".into())]);
    }
}
