//! Entry points for fuzzing, shared by the cargo-fuzz targets in `fuzz/` and by the
//! stable tests that replay `fuzz/corpus/` and feed each target 10 000 arbitrary
//! inputs (`providers/arbitrary_input_tests.rs`). Compiled for tests and under the
//! `fuzzing` feature only; release builds never carry it.
//!
//! Each target takes raw bytes and panics when an invariant breaks:
//! - no parser or verifier panics, and each answers within [`TIME_LIMIT`];
//! - nothing is ever "verified" without a valid signature (the `*_raw` targets: the
//!   input is the whole callback, which no fuzzer can sign);
//! - the `*_signed` targets sign (and, for WeChat v3, encrypt) the fuzzer's bytes with
//!   the fixture keys, so that what runs *after* verification — the decrypted
//!   resource's JSON, the report mapping, the event classification — is fuzzed too;
//! - `request_body` posts the bytes to one of the JSON endpoints of an in-process
//!   router (first byte picks the endpoint): never a 5xx, every refusal a
//!   problem+json with a `code`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::providers::alipay::{self, Alipay, AlipaySetup};
use crate::providers::stripe::webhook;
use crate::providers::wechat::v2::{V2Notification, WechatV2};
use crate::providers::wechat::v3::{V3Notification, WechatV3};
use crate::providers::wechat::{self, WechatSetup, crypto, xml};

/// The most any one input may take (debug builds included).
pub const TIME_LIMIT: Duration = Duration::from_secs(2);

/// Every target, by the name of its corpus directory and fuzz binary.
pub const TARGETS: [&str; 9] = [
    "wechat_v3_raw",
    "wechat_v3_signed",
    "wechat_v2_raw",
    "wechat_v2_signed",
    "alipay_raw",
    "alipay_signed",
    "stripe_raw",
    "stripe_signed",
    "request_body",
];

const APP_ID: &str = "wx0000000000000001";
const MCH_ID: &str = "1900000001";
const API_V3_KEY: &str = "0123456789abcdef0123456789ABCDEF";
const PUB_KEY_ID: &str = "PUB_KEY_ID_0119000000012024010100000000000001";
const V2_API_KEY: &str = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6";
const ALIPAY_APP_ID: &str = "2021000000000001";
const STRIPE_SECRET: &str = "whsec_fuzzing_secret";
const JWT_SECRET: &str = "fuzzing-secret-0123456789abcdef";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn provider_config(wechat_version: &str) -> crate::config::Config {
    let wechat = if wechat_version == "v2" {
        format!(
            r#"[wechat]
api_version = "v2"
app_id = "{APP_ID}"
mch_id = "{MCH_ID}"
api_key = "{V2_API_KEY}"
"#
        )
    } else {
        format!(
            r#"[wechat]
app_id = "{APP_ID}"
mch_id = "{MCH_ID}"
api_v3_key = "{API_V3_KEY}"
private_key_path = {key:?}
cert_serial_no = "3775B6A45ACD588826D15E583A95F5DD12345678"
platform_public_key_path = {pubkey:?}
platform_public_key_id = "{PUB_KEY_ID}"
"#,
            key = fixture("vectors/merchant_rsa2048_private_pkcs8.pem"),
            pubkey = fixture("vectors/provider_rsa2048_public.pem"),
        )
    };
    let text = format!(
        r#"
[auth]
jwt_secret = "{JWT_SECRET}"
{wechat}
[alipay]
app_id = "{ALIPAY_APP_ID}"
private_key_path = {key:?}
alipay_public_key_path = {pubkey:?}
"#,
        key = fixture("vectors/merchant_rsa2048_private_pkcs8.pem"),
        pubkey = fixture("vectors/provider_rsa2048_public.pem"),
    );
    crate::config::load_from_str(&text, &|_| None, &[]).expect("valid fuzzing config")
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Splits `data` at the first `n` newlines: `n` header fields, then the body.
fn fields(data: &[u8], n: usize) -> (Vec<String>, &[u8]) {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    for _ in 0..n {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                out.push(String::from_utf8_lossy(&rest[..i]).into_owned());
                rest = &rest[i + 1..];
            }
            None => out.push(String::new()),
        }
    }
    (out, rest)
}

/// Everything the targets need, built once per process.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    v3: Arc<WechatV3>,
    v2: Arc<WechatV2>,
    alipay: Arc<Alipay>,
    provider_key: crypto::MerchantSigner,
    router: std::sync::Mutex<Option<Router>>,
}

struct Router {
    /// Kept alive for its actors and storage; requests go through `router`.
    _app: crate::app::Application,
    router: axum::Router,
    user_token: String,
    admin_token: String,
    order_no: String,
    data_dir: std::path::PathBuf,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let clock = Arc::new(payd_actors::clock::SystemClock);
        let WechatSetup::V3(v3) = wechat::setup(&provider_config("v3"), clock.clone()) else {
            panic!("WeChat v3 configured");
        };
        let WechatSetup::V2(v2) = wechat::setup(&provider_config("v2"), clock.clone()) else {
            panic!("WeChat v2 configured");
        };
        let AlipaySetup::Ready(alipay) = alipay::setup(&provider_config("v3"), clock) else {
            panic!("Alipay configured");
        };
        let pem = std::fs::read(fixture("vectors/provider_rsa2048_private_pkcs8.pem"))
            .expect("provider key fixture");
        let provider_key = crypto::MerchantSigner::from_pem(&pem).expect("provider key");
        Harness {
            runtime,
            v3,
            v2,
            alipay,
            provider_key,
            router: std::sync::Mutex::new(None),
        }
    }

    /// Runs `target` on `data`; panics when an invariant breaks.
    pub fn run(&self, target: &str, data: &[u8]) {
        if target == "request_body" {
            // Starting payd is setup, not the input's time.
            drop(self.router());
        }
        let started = Instant::now();
        match target {
            "wechat_v3_raw" => self.wechat_v3_raw(data),
            "wechat_v3_signed" => self.wechat_v3_signed(data),
            "wechat_v2_raw" => self.wechat_v2_raw(data),
            "wechat_v2_signed" => self.wechat_v2_signed(data),
            "alipay_raw" => self.alipay_raw(data),
            "alipay_signed" => self.alipay_signed(data),
            "stripe_raw" => stripe_raw(data),
            "stripe_signed" => stripe_signed(data),
            "request_body" => self.request_body(data),
            other => panic!("unknown fuzz target {other}"),
        }
        let took = started.elapsed();
        assert!(
            took <= TIME_LIMIT,
            "{target} took {took:?} on a {}-byte input",
            data.len()
        );
    }

    /// Headers (timestamp, nonce, signature, serial) and body as the fuzzer gives
    /// them: never verified.
    fn wechat_v3_raw(&self, data: &[u8]) {
        let (h, body) = fields(data, 4);
        let header = |name: &str| match name {
            "wechatpay-timestamp" => Some(h[0].clone()),
            "wechatpay-nonce" => Some(h[1].clone()),
            "wechatpay-signature" => Some(h[2].clone()),
            "wechatpay-serial" => Some(h[3].clone()),
            _ => None,
        };
        let verdict = self.runtime.block_on(self.v3.verify_callback(header, body));
        assert!(verdict.is_err(), "an unsigned WeChat v3 callback verified");
        let _ = crypto::parse_authorization(&String::from_utf8_lossy(data));
    }

    /// The fuzzer's bytes are the decrypted resource (first line: the event type):
    /// encrypted with the APIv3 key, wrapped in an envelope, signed with the
    /// platform key — so verification passes and the resource parsing is fuzzed.
    fn wechat_v3_signed(&self, data: &[u8]) {
        let (h, plain) = fields(data, 1);
        let nonce = "fuzzNonce012";
        let Ok(ciphertext) =
            crypto::aes_gcm_encrypt(API_V3_KEY.as_bytes(), nonce, "transaction", plain)
        else {
            return;
        };
        let envelope = serde_json::json!({
            "id": "EV-fuzz",
            "create_time": "2026-01-01T00:00:00+08:00",
            "resource_type": "encrypt-resource",
            "event_type": h[0],
            "summary": "fuzz",
            "resource": {
                "original_type": if h[0].starts_with("REFUND.") { "refund" } else { "transaction" },
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": ciphertext,
                "associated_data": "transaction",
                "nonce": nonce,
            }
        });
        let body = envelope.to_string();
        let ts = now_secs().to_string();
        let sig_nonce = "fuzzsignaturenonce";
        let signature = self.provider_key.sign_base64(&crypto::response_message(
            &ts,
            sig_nonce,
            body.as_bytes(),
        ));
        let header = |name: &str| match name {
            "wechatpay-timestamp" => Some(ts.clone()),
            "wechatpay-nonce" => Some(sig_nonce.to_string()),
            "wechatpay-signature" => Some(signature.clone()),
            "wechatpay-serial" => Some(PUB_KEY_ID.to_string()),
            _ => None,
        };
        match self
            .runtime
            .block_on(self.v3.verify_callback(header, body.as_bytes()))
        {
            Ok(V3Notification::Payment { transaction, .. }) => {
                // What the callback route does with a verified payment next.
                let _ = self
                    .v3
                    .report(&transaction, payd_actors::model::PaymentSource::Callback);
                let _ = self.v3.outcome(&transaction);
            }
            Ok(V3Notification::Refund { .. }) => {}
            Err(reason) => assert!(
                !matches!(
                    reason,
                    crate::providers::rejections::RejectReason::BadSignature
                        | crate::providers::rejections::RejectReason::UnknownSerial
                        | crate::providers::rejections::RejectReason::Stale
                ),
                "a correctly signed WeChat v3 callback refused as {reason:?}"
            ),
        }
    }

    fn wechat_v2_raw(&self, data: &[u8]) {
        let _ = xml::parse_xml(data);
        if let Ok(V2Notification::Payment { .. }) = self.v2.verify_notify(data) {
            panic!("an unsigned WeChat v2 payment notification verified");
        }
        // A refund notification is authenticated by decrypting `req_info` with the
        // API key; the fuzzer does not have it.
        assert!(
            self.v2.verify_notify(data).is_err(),
            "a WeChat v2 notification verified without the key"
        );
    }

    /// The fuzzer's XML fields, with our merchant's identity and a valid sign: the
    /// payment report mapping is fuzzed. A line starting with `R` first makes it a
    /// refund notification whose `req_info` is the rest, encrypted with the key.
    fn wechat_v2_signed(&self, data: &[u8]) {
        if let Some(rest) = data.strip_prefix(b"R") {
            let mut f = BTreeMap::new();
            f.insert("appid".to_string(), APP_ID.to_string());
            f.insert("mch_id".to_string(), MCH_ID.to_string());
            f.insert("return_code".to_string(), "SUCCESS".to_string());
            f.insert(
                "req_info".to_string(),
                crypto::v2_encrypt_req_info(&String::from_utf8_lossy(rest), V2_API_KEY),
            );
            let _ = self.v2.verify_notify(xml::to_xml(&f).as_bytes());
            return;
        }
        let Ok(mut f) = xml::parse_xml(data) else {
            return;
        };
        f.insert("appid".to_string(), APP_ID.to_string());
        f.insert("mch_id".to_string(), MCH_ID.to_string());
        f.remove("req_info");
        f.remove("sign");
        let sign_type = if data.len().is_multiple_of(2) {
            crypto::V2SignType::Md5
        } else {
            crypto::V2SignType::HmacSha256
        };
        let sign = crypto::v2_sign(&f, V2_API_KEY, sign_type);
        f.insert("sign".to_string(), sign);
        let body = xml::to_xml(&f);
        if let Err(reason) = self.v2.verify_notify(body.as_bytes()) {
            assert!(
                !matches!(
                    reason,
                    crate::providers::rejections::RejectReason::BadSignature
                ),
                "a correctly signed WeChat v2 notification refused as {reason:?}: {body}"
            );
        }
    }

    fn alipay_raw(&self, data: &[u8]) {
        assert!(
            self.alipay.verify_notify(data).is_err(),
            "an unsigned Alipay notify verified"
        );
        assert!(
            self.alipay
                .verify_return(&String::from_utf8_lossy(data))
                .is_err(),
            "an unsigned Alipay return verified"
        );
    }

    /// The fuzzer's form parameters, for our app, signed with the Alipay key: the
    /// notification accessors are fuzzed.
    fn alipay_signed(&self, data: &[u8]) {
        let Ok(mut params) = alipay::wire::form_decode_map(data) else {
            return;
        };
        params.insert("app_id".to_string(), ALIPAY_APP_ID.to_string());
        params.remove("sign");
        let sign = self
            .provider_key
            .sign_base64(alipay::wire::notify_verify_content(&params).as_bytes());
        params.insert("sign".to_string(), sign);
        params.insert("sign_type".to_string(), "RSA2".to_string());
        let pairs: Vec<(&String, &String)> = params.iter().collect();
        let body = alipay::wire::form_encode(&pairs);
        match self.alipay.verify_notify(body.as_bytes()) {
            Ok(n) => {
                let _ = (n.out_trade_no(), n.trade_status(), n.event_id());
                let _ = n.carries_refund();
                let _ = n.payment_report(payd_actors::model::Timestamp(now_secs() * 1000));
            }
            Err(reason) => assert!(
                !matches!(
                    reason,
                    crate::providers::rejections::RejectReason::BadSignature
                ),
                "a correctly signed Alipay notify refused as {reason:?}"
            ),
        }
    }

    fn router(&self) -> std::sync::MutexGuard<'_, Option<Router>> {
        let mut guard = self.router.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(self.runtime.block_on(Router::start()));
        }
        guard
    }

    fn request_body(&self, data: &[u8]) {
        let guard = self.router();
        if let Some(router) = guard.as_ref() {
            self.runtime.block_on(router.post(data));
        }
    }
}

fn stripe_raw(data: &[u8]) {
    let (h, body) = fields(data, 1);
    assert!(
        webhook::verify(Some(&h[0]), body, &[STRIPE_SECRET], now_secs()).is_err(),
        "an unsigned Stripe event verified"
    );
    let _ = webhook::parse_header(&h[0]);
    if let Ok(event) = webhook::parse_event(body) {
        let _ = webhook::classify(&event);
    }
}

fn stripe_signed(data: &[u8]) {
    let now = now_secs();
    let header = webhook::signature_header(STRIPE_SECRET, now, data);
    assert_eq!(
        webhook::verify(Some(&header), data, &[STRIPE_SECRET], now).ok(),
        Some(now),
        "a correctly signed Stripe event refused"
    );
    if let Ok(event) = webhook::parse_event(data)
        && let Ok(meaning) = webhook::classify(&event)
    {
        let _ = meaning.hint();
    }
}

/// JSON endpoints the `request_body` target posts to; `{no}` is a paid mock order.
const ENDPOINTS: [(&str, &str, bool); 11] = [
    ("POST", "/api/v1/orders", false),
    ("POST", "/api/v1/orders/{no}/cancel", false),
    ("POST", "/api/v1/me/entitlements/consume", false),
    ("POST", "/api/v1/admin/orders/{no}/refunds", true),
    ("POST", "/api/v1/admin/orders/{no}/cancel", true),
    ("POST", "/api/v1/admin/orders/{no}/complete", true),
    ("POST", "/api/v1/admin/anomalies/1/resolve", true),
    ("POST", "/api/v1/admin/packages", true),
    ("PUT", "/api/v1/admin/packages/coins_100", true),
    (
        "POST",
        "/api/v1/admin/users/fuzz-user/membership/extend",
        true,
    ),
    ("POST", "/api/v1/admin/users/fuzz-user/points/adjust", true),
];

impl Router {
    async fn start() -> Router {
        let data_dir = std::env::temp_dir().join(format!("payd-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let text = format!(
            r#"
[server]
bind = "127.0.0.1:0"
[storage]
path = {data:?}
[auth]
jwt_secret = "{JWT_SECRET}"
[[packages]]
id = "coins_100"
kind = "points"
name = "100 coins"
amount = 990
currency = "CNY"
points = 100
[[packages]]
id = "vip_month"
kind = "membership"
name = "VIP month"
amount = 1500
currency = "CNY"
membership_type = "pro"
validity_days = 30
queries_count = 100
"#,
            data = data_dir.display().to_string()
        );
        let cfg = crate::config::load_from_str(&text, &|_| None, &[]).expect("router config");
        let jwt = crate::auth::Jwt::new(&cfg.auth);
        let app = crate::app::Application::build(cfg)
            .await
            .expect("payd starts for fuzzing");
        let now = now_secs() as u64;
        let mut router = Router {
            router: crate::http::router(app.state().clone()),
            _app: app,
            user_token: jwt.mint("fuzz-user", false, now, 86_400 * 365),
            admin_token: jwt.mint("fuzz-admin", true, now, 86_400 * 365),
            order_no: String::new(),
            data_dir,
        };
        // A paid order for the endpoints that need one.
        let (_, created) = router
            .call(
                "POST",
                "/api/v1/orders",
                false,
                br#"{"package_id":"coins_100","payment_method":"mock"}"#,
            )
            .await;
        router.order_no = created["order_no"].as_str().unwrap_or_default().to_string();
        let path = format!("/api/v1/mock/orders/{}/pay", router.order_no);
        router.call("POST", &path, false, b"").await;
        router
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        admin: bool,
        body: &[u8],
    ) -> (axum::http::StatusCode, serde_json::Value) {
        use tower::ServiceExt;
        let token = if admin {
            &self.admin_token
        } else {
            &self.user_token
        };
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_vec()))
            .expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let problem = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert!(
            !status.is_server_error(),
            "{method} {path} answered {status} to {:?}: {json}",
            String::from_utf8_lossy(body)
        );
        if !status.is_success() {
            assert!(
                problem && json["code"].is_string(),
                "{method} {path} refused with {status} but not a problem+json with a code: {json}"
            );
        }
        (status, json)
    }

    async fn post(&self, data: &[u8]) {
        let Some((&selector, body)) = data.split_first() else {
            return;
        };
        let (method, path, admin) = ENDPOINTS[selector as usize % ENDPOINTS.len()];
        let path = path.replace("{no}", &self.order_no);
        self.call(method, &path, admin, body).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::rejections::RejectReason;

    /// WeChat Pay v3 takes a callback signed less than 300 s from payd's clock, either
    /// way, and refuses one 300 s or more away as stale: the official payment
    /// notification vector (signed at 1 700 000 000), verified as of each moment.
    #[test]
    fn a_wechat_v3_callback_is_fresh_up_to_but_not_at_300_seconds() {
        let h = Harness::new();
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/vectors/wechatpay_v3.json"))
                .expect("vectors");
        let n = &vectors["payment_notification"];
        let body = n["body"].as_str().expect("body");
        let signed_at: i64 = n["headers"]["Wechatpay-Timestamp"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("timestamp");
        let header = |name: &str| {
            let (_, v) = n["headers"]
                .as_object()?
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))?;
            v.as_str().map(str::to_string)
        };
        for (offset, fresh) in [
            (0, true),
            (299, true),
            (-299, true),
            (300, false),
            (-300, false),
            (86_400, false),
        ] {
            let verdict = h.runtime.block_on(h.v3.verify_callback_at(
                header,
                body.as_bytes(),
                signed_at + offset,
            ));
            if fresh {
                assert!(
                    matches!(verdict, Ok(V3Notification::Payment { .. })),
                    "{offset} s: {verdict:?}"
                );
            } else {
                assert!(
                    matches!(verdict, Err(RejectReason::Stale)),
                    "{offset} s: {verdict:?}"
                );
            }
        }
    }
}
