//! WeChat Pay API v3 for the benchmark: a tiny stub of WeChat's API (prepay answers
//! signed with WeChat's key, nothing else worth timing), payd's `[wechat]` section
//! pointing at it, and signed, encrypted payment callbacks built ahead of time so
//! the bench's own RSA signing is not part of the timed window.
//!
//! The keys are the test fixtures of `tests/fixtures/vectors/` (the sandbox's).
//! Unlike the e2e sandbox, the stub does not verify payd's request signatures and
//! answers every prepay with one cached signed body: WeChat's CPU is not payd's, and
//! on two cores the stub must not steal it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Bytes;
use payd::providers::wechat::crypto::{self, MerchantSigner};
use serde_json::json;

use crate::scenarios::{AMOUNT, Callback};

const MCHID: &str = "1900000001";
const APPID: &str = "wx0000000000000001";
const APIV3_KEY: &str = "0123456789abcdef0123456789ABCDEF";
const MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD12345678";
const PUB_KEY_ID: &str = "PUB_KEY_ID_0119000000012024010100000000000001";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/vectors")
        .join(name)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// WeChat's side of the signature: the Wechatpay-* headers over `body`.
fn sign_headers(signer: &MerchantSigner, body: &[u8]) -> Vec<(String, String)> {
    let ts = now_secs().to_string();
    let nonce = crypto::nonce_str();
    let signature = signer.sign_base64(&crypto::response_message(&ts, &nonce, body));
    vec![
        ("wechatpay-timestamp".into(), ts),
        ("wechatpay-nonce".into(), nonce),
        ("wechatpay-signature".into(), signature),
        ("wechatpay-serial".into(), PUB_KEY_ID.into()),
        (
            "wechatpay-signature-type".into(),
            "WECHATPAY2-SHA256-RSA2048".into(),
        ),
    ]
}

struct Stub {
    signer: MerchantSigner,
    prepay_body: String,
    /// The prepay answer's headers, re-signed once a minute (well inside the
    /// ±300 s payd accepts).
    prepay_headers: Mutex<(Instant, Vec<(String, String)>)>,
}

impl Stub {
    fn respond(status: StatusCode, body: String, headers: &[(String, String)]) -> Response {
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        for (k, v) in headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.insert(k, v);
            }
        }
        resp
    }
}

async fn prepay(State(stub): State<Arc<Stub>>) -> Response {
    let headers = {
        let mut cached = stub.prepay_headers.lock().expect("stub lock");
        if cached.0.elapsed() > Duration::from_secs(60) {
            *cached = (
                Instant::now(),
                sign_headers(&stub.signer, stub.prepay_body.as_bytes()),
            );
        }
        cached.1.clone()
    };
    Stub::respond(StatusCode::OK, stub.prepay_body.clone(), &headers)
}

/// Queries and closes are not expected during a run (orders stay pending for a
/// day); answered "not paid" / closed so that a stray one does no harm.
async fn query(State(stub): State<Arc<Stub>>) -> Response {
    let body = json!({"code": "ORDER_NOT_EXIST", "message": "payd-bench stub"}).to_string();
    let headers = sign_headers(&stub.signer, body.as_bytes());
    Stub::respond(StatusCode::NOT_FOUND, body, &headers)
}

async fn close(State(stub): State<Arc<Stub>>) -> Response {
    let headers = sign_headers(&stub.signer, b"");
    Stub::respond(StatusCode::NO_CONTENT, String::new(), &headers)
}

/// Starts the stub on the current runtime; returns its base URL.
pub(crate) async fn start_stub() -> anyhow::Result<String> {
    let signer = MerchantSigner::from_pem(&std::fs::read(fixture(
        "provider_rsa2048_private_pkcs8.pem",
    ))?)?;
    let prepay_body = json!({"code_url": "weixin://wxpay/bizpayurl?pr=paydbench"}).to_string();
    let headers = sign_headers(&signer, prepay_body.as_bytes());
    let stub = Arc::new(Stub {
        signer,
        prepay_body,
        prepay_headers: Mutex::new((Instant::now(), headers)),
    });
    let router = Router::new()
        .route("/v3/pay/transactions/native", post(prepay))
        .route("/v3/pay/transactions/out-trade-no/{no}", get(query))
        .route("/v3/pay/transactions/out-trade-no/{no}/close", post(close))
        .with_state(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(format!("http://{addr}"))
}

/// payd's `[wechat]` section for the stub at `stub_base` (mock mode off, so
/// `wechat_native` goes to WeChat). The merchant key is copied into `dir` owner-only,
/// as payd wants a private key file.
pub(crate) fn payd_section(dir: &Path, stub_base: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("merchant_private.pem");
    std::fs::copy(fixture("merchant_rsa2048_private_pkcs8.pem"), &key)
        .context("copying the merchant key fixture")?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    Ok(format!(
        r#"
[wechat]
app_id = "{APPID}"
mch_id = "{MCHID}"
api_v3_key = "{APIV3_KEY}"
private_key_path = {key:?}
cert_serial_no = "{MERCHANT_SERIAL}"
platform_public_key_path = {pubkey:?}
platform_public_key_id = "{PUB_KEY_ID}"
base_url = "{stub_base}"
"#,
        key = key.display().to_string(),
        pubkey = fixture("provider_rsa2048_public.pem").display().to_string(),
    ))
}

/// One signed, encrypted `TRANSACTION.SUCCESS` notification per order, as WeChat
/// sends them, built on every core (RSA signing is the slow part).
pub(crate) fn callbacks(orders: &[(usize, String)], round: usize) -> anyhow::Result<Vec<Callback>> {
    let signer = MerchantSigner::from_pem(&std::fs::read(fixture(
        "provider_rsa2048_private_pkcs8.pem",
    ))?)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = orders.len().div_ceil(threads).max(1);
    let built: Vec<anyhow::Result<Vec<Callback>>> = std::thread::scope(|s| {
        let handles: Vec<_> = orders
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                let signer = &signer;
                s.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, (_, no))| callback(signer, no, round, c * chunk + i))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("signing thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(orders.len());
    for part in built {
        all.extend(part?);
    }
    Ok(all)
}

fn callback(signer: &MerchantSigner, no: &str, round: usize, i: usize) -> anyhow::Result<Callback> {
    let transaction = json!({
        "appid": APPID, "mchid": MCHID, "out_trade_no": no,
        "transaction_id": format!("42{round:04}{i:022}"),
        "trade_type": "NATIVE", "trade_state": "SUCCESS", "trade_state_desc": "paid",
        "bank_type": "OTHERS", "attach": "", "success_time": "2026-01-01T12:00:00+08:00",
        "payer": {"openid": "oPaydBenchBuyer"},
        "amount": {"total": AMOUNT, "payer_total": AMOUNT, "currency": "CNY", "payer_currency": "CNY"},
    });
    let nonce: String = crypto::nonce_str().chars().take(12).collect();
    let ciphertext = crypto::aes_gcm_encrypt(
        APIV3_KEY.as_bytes(),
        &nonce,
        "transaction",
        transaction.to_string().as_bytes(),
    )?;
    let body = json!({
        "id": format!("EV-bench-{round}-{i}"), "create_time": "2026-01-01T12:00:05+08:00",
        "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS",
        "summary": "payd-bench",
        "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                     "ciphertext": ciphertext, "associated_data": "transaction", "nonce": nonce},
    })
    .to_string();
    let headers = sign_headers(signer, body.as_bytes());
    Ok(Callback {
        body: Bytes::from(body),
        headers,
    })
}
