//! Every bad input gets a clear problem+json error with a stable code, and changes
//! nothing in storage.

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, now_secs, order_no};

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    token: Option<String>,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    idempotency_key: Option<&'static str>,
    status: StatusCode,
    code: &'static str,
}

fn case(name: &'static str, method: Method, path: impl Into<String>, token: Option<&str>) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        token: token.map(str::to_string),
        content_type: None,
        body: None,
        idempotency_key: None,
        status: StatusCode::OK,
        code: "",
    }
}

impl Case {
    fn json(mut self, body: serde_json::Value) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(body.to_string().into_bytes());
        self
    }
    fn raw(mut self, content_type: Option<&'static str>, body: &[u8]) -> Self {
        self.content_type = content_type;
        self.body = Some(body.to_vec());
        self
    }
    fn key(mut self, key: &'static str) -> Self {
        self.idempotency_key = Some(key);
        self
    }
    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = StatusCode::from_u16(status).unwrap();
        self.code = code;
        self
    }
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn forge(header: serde_json::Value, claims: serde_json::Value, signature: &str) -> String {
    format!("{}.{}.{}", b64(&header), b64(&claims), signature)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_json_and_change_nothing() {
    let app = TestApp::spawn_with_replacements(&[
        ("order_expire = \"4s\"", "order_expire = \"60s\""),
        ("query_interval = \"1s\"", "query_interval = \"30s\""),
    ])
    .await;
    let u = app.token("quinn");
    let other = app.token("rita");
    // Fixtures: a pending order, a paid order, and a used idempotency key.
    let pending = order_no(&app.order(&u, "basic", "mock").await);
    let paid = order_no(&app.order(&u, "basic", "mock").await);
    app.pay(&u, &paid, "").await;
    let (status, _) = app
        .call(Method::POST, "/api/v1/orders", Some(&u), None)
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = app
        .client
        .post(format!("{}/api/v1/orders", app.base))
        .bearer_auth(&u)
        .header("Idempotency-Key", "fixture-key")
        .json(&json!({"package_id": "basic", "payment_method": "mock"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Let the actors of the fixtures go idle so nothing moves underneath us.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = app.fingerprint();

    let expired = payd::auth::Jwt::new(&payd::config::AuthConfig {
        jwt_secret: payd::config::Secret::new("test-secret-0123456789abcdef"),
        leeway: std::time::Duration::from_secs(5),
        issuer: None,
        audience: None,
    })
    .mint("quinn", false, now_secs() - 7200, 60);
    let wrong_key = payd::auth::Jwt::new(&payd::config::AuthConfig {
        jwt_secret: payd::config::Secret::new("another-secret-0123456789"),
        leeway: std::time::Duration::from_secs(5),
        issuer: None,
        audience: None,
    })
    .mint("quinn", false, now_secs(), 600);
    let alg_none = forge(
        json!({"alg": "none", "typ": "JWT"}),
        json!({"sub": "quinn", "exp": now_secs() + 600}),
        "",
    );
    let mut flipped = u.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    let admin_claim_unsigned = forge(
        json!({"alg": "HS256", "typ": "JWT"}),
        json!({"sub": "quinn", "role": "admin", "exp": now_secs() + 600}),
        "c2lnbmF0dXJl",
    );

    let orders = "/api/v1/orders";
    let valid = json!({"package_id": "basic", "payment_method": "mock"});
    let big = vec![b' '; 70 * 1024];
    let mut big_json = b"{\"package_id\":\"basic\",\"payment_method\":\"mock\",\"x\":\"".to_vec();
    big_json.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big_json.extend(b"\"}");
    let cases = vec![
        case("malformed json", Method::POST, orders, Some(&u))
            .raw(Some("application/json"), b"{\"package_id\": ")
            .expect(400, "malformed_json"),
        case("not json at all", Method::POST, orders, Some(&u))
            .raw(Some("application/json"), b"package_id=basic")
            .expect(400, "malformed_json"),
        case("empty body", Method::POST, orders, Some(&u))
            .raw(Some("application/json"), b"")
            .expect(400, "malformed_json"),
        case(
            "missing body and content type",
            Method::POST,
            orders,
            Some(&u),
        )
        .expect(415, "unsupported_media_type"),
        case("wrong content type", Method::POST, orders, Some(&u))
            .raw(Some("text/plain"), valid.to_string().as_bytes())
            .expect(415, "unsupported_media_type"),
        case("wrong field type", Method::POST, orders, Some(&u))
            .json(json!({"package_id": 7, "payment_method": "mock"}))
            .expect(422, "validation_failed"),
        case("missing field", Method::POST, orders, Some(&u))
            .json(json!({"payment_method": "mock"}))
            .expect(422, "validation_failed"),
        case("unknown field", Method::POST, orders, Some(&u))
            .json(json!({"package_id": "basic", "payment_method": "mock", "amount": 1}))
            .expect(422, "validation_failed"),
        case("mass-assigned status", Method::POST, orders, Some(&u))
            .json(json!({"package_id": "basic", "payment_method": "mock", "status": "paid"}))
            .expect(422, "validation_failed"),
        case("array body", Method::POST, orders, Some(&u))
            .json(json!([valid.clone()]))
            .expect(422, "validation_failed"),
        case("body over the limit", Method::POST, orders, Some(&u))
            .raw(Some("application/json"), &big)
            .expect(413, "payload_too_large"),
        case("json over the limit", Method::POST, orders, Some(&u))
            .raw(Some("application/json"), &big_json)
            .expect(413, "payload_too_large"),
        case("unknown package", Method::POST, orders, Some(&u))
            .json(json!({"package_id": "nope", "payment_method": "mock"}))
            .expect(422, "package_not_found"),
        case("inactive package", Method::POST, orders, Some(&u))
            .json(json!({"package_id": "retired", "payment_method": "mock"}))
            .expect(422, "package_inactive"),
        case("unknown payment method", Method::POST, orders, Some(&u))
            .json(json!({"package_id": "basic", "payment_method": "paypal"}))
            .expect(422, "validation_failed"),
        case(
            "USD package with a CNY-only method",
            Method::POST,
            orders,
            Some(&u),
        )
        .json(json!({"package_id": "usd_pack", "payment_method": "wechat_native"}))
        .expect(422, "currency_not_supported"),
        case("USD package with alipay", Method::POST, orders, Some(&u))
            .json(json!({"package_id": "usd_pack", "payment_method": "alipay_page"}))
            .expect(422, "currency_not_supported"),
        case("amount over the maximum", Method::POST, orders, Some(&u))
            .json(json!({"package_id": "whale", "payment_method": "mock"}))
            .expect(422, "amount_limit_exceeded"),
        case("client_ip not an address", Method::POST, orders, Some(&u))
            .json(json!({"package_id": "basic", "payment_method": "mock", "client_ip": "evil"}))
            .expect(422, "validation_failed"),
        case(
            "idempotency key reused with another body",
            Method::POST,
            orders,
            Some(&u),
        )
        .json(json!({"package_id": "premium", "payment_method": "mock"}))
        .key("fixture-key")
        .expect(422, "idempotency_key_reused"),
        case(
            "page_size 0",
            Method::GET,
            "/api/v1/orders?page_size=0",
            Some(&u),
        )
        .expect(422, "validation_failed"),
        case(
            "page_size 1000",
            Method::GET,
            "/api/v1/orders?page_size=1000",
            Some(&u),
        )
        .expect(422, "validation_failed"),
        case("page 0", Method::GET, "/api/v1/orders?page=0", Some(&u))
            .expect(422, "validation_failed"),
        case(
            "page not a number",
            Method::GET,
            "/api/v1/orders?page=abc",
            Some(&u),
        )
        .expect(422, "validation_failed"),
        case(
            "unknown status filter",
            Method::GET,
            "/api/v1/orders?status=shipped",
            Some(&u),
        )
        .expect(422, "validation_failed"),
        case("missing token", Method::POST, orders, None)
            .json(valid.clone())
            .expect(401, "unauthorized"),
        case("expired token", Method::POST, orders, Some(&expired))
            .json(valid.clone())
            .expect(401, "unauthorized"),
        case(
            "token signed with another key",
            Method::POST,
            orders,
            Some(&wrong_key),
        )
        .json(valid.clone())
        .expect(401, "unauthorized"),
        case("alg=none token", Method::POST, orders, Some(&alg_none))
            .json(valid.clone())
            .expect(401, "unauthorized"),
        case("flipped signature bit", Method::GET, orders, Some(&flipped))
            .expect(401, "unauthorized"),
        case(
            "self-made admin claim",
            Method::GET,
            orders,
            Some(&admin_claim_unsigned),
        )
        .expect(401, "unauthorized"),
        case("garbage token", Method::GET, orders, Some("not.a.jwt")).expect(401, "unauthorized"),
        case(
            "another user's order",
            Method::GET,
            format!("/api/v1/orders/{pending}"),
            Some(&other),
        )
        .expect(404, "not_found"),
        case(
            "cancel another user's order",
            Method::POST,
            format!("/api/v1/orders/{pending}/cancel"),
            Some(&other),
        )
        .expect(404, "not_found"),
        case(
            "pay another user's order",
            Method::POST,
            format!("/api/v1/mock/orders/{pending}/pay"),
            Some(&other),
        )
        .expect(404, "not_found"),
        case(
            "guessed order number",
            Method::GET,
            "/api/v1/orders/PD261122203315K3M9Q2XA7F4HD1RN",
            Some(&u),
        )
        .expect(404, "not_found"),
        case(
            "junk order number",
            Method::GET,
            "/api/v1/orders/../../etc",
            Some(&u),
        )
        .expect(404, "not_found"),
        case(
            "cancel a paid order",
            Method::POST,
            format!("/api/v1/orders/{paid}/cancel"),
            Some(&u),
        )
        .expect(409, "order_not_cancellable"),
        case(
            "mock pay with amount 0",
            Method::POST,
            format!("/api/v1/mock/orders/{pending}/pay?amount=0"),
            Some(&u),
        )
        .expect(422, "validation_failed"),
        case(
            "mock pay with amount -1",
            Method::POST,
            format!("/api/v1/mock/orders/{pending}/pay?amount=-1"),
            Some(&u),
        )
        .expect(422, "validation_failed"),
        case(
            "mock pay with a fractional amount",
            Method::POST,
            format!("/api/v1/mock/orders/{pending}/pay?amount=0.1"),
            Some(&u),
        )
        .expect(422, "validation_failed"),
        case(
            "mock pay with an unknown parameter",
            Method::POST,
            format!("/api/v1/mock/orders/{pending}/pay?status=paid"),
            Some(&u),
        )
        .expect(422, "validation_failed"),
        case(
            "unknown package by id",
            Method::GET,
            "/api/v1/packages/nope",
            Some(&u),
        )
        .expect(404, "not_found"),
        case("unknown route", Method::GET, "/api/v1/nothing", Some(&u)).expect(404, "not_found"),
    ];

    for c in cases {
        let mut req = app
            .client
            .request(c.method.clone(), format!("{}{}", app.base, c.path));
        if let Some(t) = &c.token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(k) = c.idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = c.body.clone() {
            req = req.body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body: serde_json::Value = resp.json().await.unwrap_or(json!(null));
        assert_eq!(status, c.status, "{}: {body}", c.name);
        assert_eq!(content_type, "application/problem+json", "{}", c.name);
        assert_eq!(body["code"], c.code, "{}: {body}", c.name);
        assert_eq!(body["status"], c.status.as_u16(), "{}", c.name);
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            c.name
        );
        assert!(
            body["title"].is_string() && body["type"].is_string(),
            "{}",
            c.name
        );
    }
    assert_eq!(app.fingerprint(), before, "a bad request changed storage");
    app.stop().await;
}

/// A generated corpus of hostile requests (≈ 200): each must be a 4xx problem+json
/// with a stable code, and storage must be unchanged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_corpus_is_refused_with_stable_codes_and_changes_nothing() {
    let app = TestApp::spawn_with_replacements(&[
        ("order_expire = \"4s\"", "order_expire = \"60s\""),
        ("query_interval = \"1s\"", "query_interval = \"30s\""),
    ])
    .await;
    let u = app.token("mallory");
    let admin = app.admin_token();
    let paid = order_no(&app.order(&u, "basic", "mock").await);
    app.pay(&u, &paid, "").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = app.fingerprint();

    // (method, path, token, content type, body, idempotency key)
    type Req = (
        Method,
        String,
        Option<String>,
        Option<&'static str>,
        Vec<u8>,
        Option<String>,
    );
    let mut corpus: Vec<(String, Req)> = Vec::new();
    let orders = "/api/v1/orders".to_string();
    let consume = "/api/v1/me/entitlements/consume".to_string();
    let refund = format!("/api/v1/admin/orders/{paid}/refunds");
    let json_ct = Some("application/json");
    let mut push = |name: String,
                    method: Method,
                    path: &str,
                    token: Option<&str>,
                    body: Vec<u8>,
                    key: Option<&str>| {
        corpus.push((
            name,
            (
                method,
                path.to_string(),
                token.map(str::to_string),
                json_ct,
                body,
                key.map(str::to_string),
            ),
        ));
    };
    // Deep nesting, in several shapes.
    for depth in [64, 129, 1_000, 20_000] {
        let arr = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        push(
            format!("nested array {depth}"),
            Method::POST,
            &orders,
            Some(&u),
            arr.into_bytes(),
            None,
        );
        let obj = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        push(
            format!("nested object {depth}"),
            Method::POST,
            &orders,
            Some(&u),
            obj.into_bytes(),
            None,
        );
    }
    // Invalid UTF-8 and control bytes.
    for (i, bytes) in [
        vec![0xff, 0xfe, 0xfd],
        b"{\"package_id\":\"\xc3\x28\",\"payment_method\":\"mock\"}".to_vec(),
        b"{\"package_id\":\"basic\x00\",\"payment_method\":\"mock\"}".to_vec(),
        vec![0u8; 100],
    ]
    .into_iter()
    .enumerate()
    {
        push(
            format!("bad bytes {i}"),
            Method::POST,
            &orders,
            Some(&u),
            bytes,
            None,
        );
    }
    // Duplicate keys, wrong shapes, mass assignment.
    for (i, body) in [
        r#"{"package_id":"basic","package_id":"premium","payment_method":"mock"}"#,
        r#"{"package_id":"basic","payment_method":"mock","payment_method":"wechat"}"#,
        r#"{"package_id":null,"payment_method":"mock"}"#,
        r#"{"package_id":["basic"],"payment_method":"mock"}"#,
        r#"{"package_id":{"id":"basic"},"payment_method":"mock"}"#,
        r#"{"package_id":"basic","payment_method":"mock","user_id":"victim"}"#,
        r#"{"package_id":"basic","payment_method":"mock","amount":1}"#,
        r#"{"package_id":"basic","payment_method":"mock","status":"paid"}"#,
        r#"{"package_id":"basic","payment_method":"mock","provider":"stripe"}"#,
        r#"{"package_id":"basic","payment_method":"mock","is_upgrade":"yes"}"#,
        r#"{"package_id":"basic","payment_method":"mock","client_ip":"999.1.1.1"}"#,
        r#"{"package_id":"basic","payment_method":""}"#,
        r#"{"package_id":"","payment_method":"mock"}"#,
        r#"{"package_id":"../../etc/passwd","payment_method":"mock"}"#,
        r#"{"package_id":"basic","payment_method":"mock"} trailing"#,
        r#""just a string""#,
        "null",
        "12345",
        "{}",
        r#"{"PACKAGE_ID":"basic","payment_method":"mock"}"#,
    ]
    .into_iter()
    .enumerate()
    {
        push(
            format!("order body {i}"),
            Method::POST,
            &orders,
            Some(&u),
            body.as_bytes().to_vec(),
            None,
        );
    }
    // Amounts of every hostile form, on consumption (key required) and refunds (admin).
    for (i, amount) in [
        "-1",
        "0",
        "1e30",
        "18446744073709551616",
        "\"0.1\"",
        "0.1",
        "1.5",
        "-0",
        "NaN",
        "\"\"",
        "true",
        "[]",
        "{}",
        "9223372036854775808",
    ]
    .into_iter()
    .enumerate()
    {
        push(
            format!("consume points {amount}"),
            Method::POST,
            &consume,
            Some(&u),
            format!("{{\"points\":{amount}}}").into_bytes(),
            Some(&format!("hostile-{i}")),
        );
        push(
            format!("consume queries {amount}"),
            Method::POST,
            &consume,
            Some(&u),
            format!("{{\"queries\":{amount}}}").into_bytes(),
            Some(&format!("hostile-q-{i}")),
        );
        push(
            format!("refund amount {amount}"),
            Method::POST,
            &refund,
            Some(&admin),
            format!("{{\"amount\":{amount},\"reason\":\"x\"}}").into_bytes(),
            None,
        );
    }
    // Order-number guessing: well-formed numbers that do not exist, and junk.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..55 {
        seed ^= seed << 7;
        seed ^= seed >> 9;
        let tail: String = (0..16)
            .map(|k| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"[((seed >> (k * 4)) % 32) as usize] as char)
            .collect();
        let guess = format!("PD2611222033{:02}{tail}", i % 60);
        push(
            format!("guess {guess}"),
            Method::GET,
            &format!("/api/v1/orders/{guess}"),
            Some(&u),
            vec![],
            None,
        );
        push(
            format!("cancel guess {guess}"),
            Method::POST,
            &format!("/api/v1/orders/{guess}/cancel"),
            Some(&u),
            vec![],
            None,
        );
    }
    for junk in [
        "%00",
        "..",
        "PD",
        "pd261122203315k3m9q2xa7f4hd1rn",
        &"A".repeat(300),
        "PD261122203315K3M9Q2XA7F4HD1R!",
    ] {
        let path = format!("/api/v1/orders/{}", junk.replace('%', "%25"));
        push(
            format!("junk order number {junk}"),
            Method::GET,
            &path,
            Some(&u),
            vec![],
            None,
        );
    }
    // Tokens of every forged kind on a state-changing route.
    for (i, token) in [
        "",
        "Bearer",
        "a.b",
        "a.b.c",
        &"x".repeat(5000),
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.",
    ]
    .into_iter()
    .enumerate()
    {
        push(
            format!("token {i}"),
            Method::POST,
            &orders,
            Some(token),
            br#"{"package_id":"basic","payment_method":"mock"}"#.to_vec(),
            None,
        );
    }

    let total = corpus.len();
    assert!(total >= 190, "corpus has {total} cases");
    for (name, (method, path, token, ct, body, key)) in corpus {
        let mut req = app.client.request(method, format!("{}{}", app.base, path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.body(body).send().await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        let body: serde_json::Value = resp.json().await.unwrap_or(json!(null));
        assert!(status.is_client_error(), "{name}: {status} {body}");
        assert_eq!(content_type, "application/problem+json", "{name}: {body}");
        let code = body["code"].as_str().unwrap_or("");
        assert!(
            !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name}: {body}"
        );
    }
    assert_eq!(
        app.fingerprint(),
        before,
        "a hostile request changed storage"
    );
    println!("hostile corpus: {total} cases, all refused, storage unchanged");
    app.stop().await;
}
