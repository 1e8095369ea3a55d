//! A protocol-faithful WeChat Pay API v3 sandbox: an axum server with WeChat's keys
//! that checks the merchant's `Authorization` signature, keeps trade state per
//! `out_trade_no`, answers signed responses (public-key or certificate mode), serves
//! `/v3/certificates` encrypted with the APIv3 key, and delivers encrypted, signed
//! notifications to the merchant's `notify_url` with WeChat's retry behaviour
//! (schedule compressed), until the merchant acknowledges.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use payd::providers::wechat::crypto::{self, MerchantSigner, RsaVerifier};
use serde_json::{Value, json};

pub(crate) const MCHID: &str = "1900000001";
pub(crate) const APPID: &str = "wx0000000000000001";
pub(crate) const APIV3_KEY: &str = "0123456789abcdef0123456789ABCDEF";
pub(crate) const MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD12345678";
pub(crate) const PUB_KEY_ID: &str = "PUB_KEY_ID_0119000000012024010100000000000001";
pub(crate) const CERT_SERIAL: &str = "6F2A8D4C1B3E5A7F9081726354ABCDEF12345678";
pub(crate) const ROTATED_SERIAL: &str = "7A1100C0FFEE0000000000000000000000000002";

/// The `[wechat]` table that points payd (API v3, both key modes) at `sandbox`.
pub(crate) fn payd_config(sandbox: &WechatSandbox) -> String {
    let certs = tempfile::tempdir().unwrap().keep();
    format!(
        r#"
[wechat]
app_id = "{APPID}"
mch_id = "{MCHID}"
api_v3_key = "{APIV3_KEY}"
private_key_path = {key:?}
cert_serial_no = "{MERCHANT_SERIAL}"
platform_public_key_path = {pubkey:?}
platform_public_key_id = "{PUB_KEY_ID}"
platform_cert_dir = {certs:?}
base_url = "{base}"
"#,
        key = fixture("vectors/merchant_rsa2048_private_pkcs8.pem")
            .display()
            .to_string(),
        pubkey = fixture("vectors/provider_rsa2048_public.pem")
            .display()
            .to_string(),
        certs = certs.display().to_string(),
        base = sandbox.base,
    )
}

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

#[derive(Debug, Clone)]
pub(crate) struct Trade {
    pub(crate) amount: i64,
    pub(crate) time_expire: Option<String>,
    pub(crate) notify_url: String,
    pub(crate) state: String,
    pub(crate) transaction_id: Option<String>,
    pub(crate) paid_amount: Option<i64>,
    /// When the buyer paid (Unix seconds): `success_time`, and the bill's day.
    pub(crate) paid_at: Option<i64>,
}

/// A fault to put in the next trade bill download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BillFault {
    /// The file does not hash to the announced SHA1.
    BadHash,
    /// The file is cut before its summary.
    Truncated,
    /// The header carries a column payd does not know.
    UnknownColumn,
    /// The file is GBK, not the UTF-8 the API v3 bill is.
    NotUtf8,
}

/// What the trade bill shows besides the sandbox's own trades (tests inject
/// discrepancies here).
#[derive(Debug, Default)]
pub(crate) struct BillKnobs {
    /// Raw rows appended (and counted in the summary).
    pub(crate) extra_rows: Vec<String>,
    /// Order numbers whose payment rows the bill leaves out.
    pub(crate) hide_orders: Vec<String>,
    /// Refund numbers the bill leaves out.
    pub(crate) hide_refunds: Vec<String>,
    pub(crate) fault: Option<BillFault>,
}

#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) body: String,
    pub(crate) signature_ok: bool,
}

/// Which key signs responses and notifications.
#[derive(Clone)]
pub(crate) enum SignWith {
    PublicKey,
    Certificate(&'static str),
}

pub(crate) struct Sandbox {
    merchant: RsaVerifier,
    provider: MerchantSigner,
    rotated: MerchantSigner,
    pub(crate) sign_with: Mutex<SignWith>,
    /// Certificates `/v3/certificates` lists: (serial, PEM).
    pub(crate) certificates: Mutex<Vec<(String, Vec<u8>)>>,
    pub(crate) trades: Mutex<HashMap<String, Trade>>,
    pub(crate) refunds: Mutex<HashMap<String, Value>>,
    pub(crate) seen: Mutex<Vec<Seen>>,
    /// Every notification delivery attempt: (order number, HTTP status or 0).
    pub(crate) deliveries: Mutex<Vec<(String, u16)>>,
    pub(crate) certificate_downloads: Mutex<u32>,
    /// Orders whose buyer pays at the very moment the merchant closes the trade.
    pub(crate) pay_on_close: Mutex<Vec<String>>,
    /// Orders paid at WeChat whose payment its query side never shows (queries say
    /// NOTPAY, a close "succeeds"): only the bill tells. The lost-everything case.
    pub(crate) unseen: Mutex<Vec<String>>,
    pub(crate) bill: Mutex<BillKnobs>,
    /// Prepared bill files by download token.
    bill_files: Mutex<HashMap<String, Vec<u8>>>,
    base: Mutex<String>,
    client: reqwest::Client,
}

pub(crate) struct WechatSandbox {
    pub(crate) base: String,
    pub(crate) sb: Arc<Sandbox>,
}

impl WechatSandbox {
    pub(crate) async fn start() -> WechatSandbox {
        let sb = Arc::new(Sandbox {
            merchant: RsaVerifier::from_public_key_pem(&read(
                "vectors/merchant_rsa2048_public.pem",
            ))
            .unwrap(),
            provider: MerchantSigner::from_pem(&read("vectors/provider_rsa2048_private_pkcs8.pem"))
                .unwrap(),
            rotated: MerchantSigner::from_pem(&read("wechat/rotated_platform_private_pkcs8.pem"))
                .unwrap(),
            sign_with: Mutex::new(SignWith::PublicKey),
            certificates: Mutex::new(vec![(
                CERT_SERIAL.into(),
                read("vectors/wechatpay_platform_cert.pem"),
            )]),
            trades: Mutex::new(HashMap::new()),
            refunds: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            deliveries: Mutex::new(Vec::new()),
            certificate_downloads: Mutex::new(0),
            pay_on_close: Mutex::new(Vec::new()),
            unseen: Mutex::new(Vec::new()),
            bill: Mutex::new(BillKnobs::default()),
            bill_files: Mutex::new(HashMap::new()),
            base: Mutex::new(String::new()),
            client: reqwest::Client::new(),
        });
        let router = Router::new()
            .route("/v3/pay/transactions/native", post(prepay))
            .route("/v3/pay/transactions/out-trade-no/{no}", get(query))
            .route("/v3/pay/transactions/out-trade-no/{no}/close", post(close))
            .route("/v3/refund/domestic/refunds", post(refund))
            .route("/v3/refund/domestic/refunds/{no}", get(refund_query))
            .route("/v3/certificates", get(certificates))
            .route("/v3/bill/tradebill", get(trade_bill))
            .route("/v3/billdownload/file", get(bill_download))
            .with_state(sb.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *sb.base.lock().unwrap() = format!("http://{addr}");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        WechatSandbox {
            base: format!("http://{addr}"),
            sb,
        }
    }

    pub(crate) fn trade(&self, no: &str) -> Option<Trade> {
        self.sb.trades.lock().unwrap().get(no).cloned()
    }

    /// The buyer pays (amount as ordered, or `amount`). Returns the transaction id.
    pub(crate) fn pay(&self, no: &str, amount: Option<i64>) -> String {
        let mut trades = self.sb.trades.lock().unwrap();
        let t = trades.get_mut(no).expect("trade exists");
        let tx = format!("42000{}", &no[no.len() - 12..]);
        t.state = "SUCCESS".into();
        t.transaction_id = Some(tx.clone());
        t.paid_amount = Some(amount.unwrap_or(t.amount));
        t.paid_at = Some(now_secs());
        tx
    }

    /// Delivers the payment notification of a paid trade, retrying as WeChat does
    /// (compressed) until the merchant answers 2xx. Returns the final status.
    pub(crate) async fn notify(&self, no: &str) -> u16 {
        let (url, body, headers) = self.sb.payment_notification(no, &format!("EV-{no}"));
        self.sb.deliver(no, &url, body, headers).await
    }

    pub(crate) fn sign_with(&self, s: SignWith) {
        *self.sb.sign_with.lock().unwrap() = s;
    }

    /// WeChat issues a new platform certificate: listed, and used from now on.
    pub(crate) fn rotate_certificate(&self) {
        self.sb.certificates.lock().unwrap().push((
            ROTATED_SERIAL.into(),
            read("wechat/rotated_platform_cert.pem"),
        ));
        self.sign_with(SignWith::Certificate(ROTATED_SERIAL));
    }

    /// A notification body and headers for tests that forge or bend one.
    pub(crate) fn notification_for(
        &self,
        event_id: &str,
        plaintext: &Value,
    ) -> (String, Vec<(String, String)>) {
        let body = self
            .sb
            .envelope(event_id, "TRANSACTION.SUCCESS", "transaction", plaintext);
        let headers = self.sb.sign_headers(body.as_bytes(), None);
        (body, headers)
    }

    pub(crate) fn transaction_json(&self, no: &str) -> Value {
        self.sb.transaction(no, &self.trade(no).expect("trade"))
    }

    pub(crate) fn sign_headers(
        &self,
        body: &[u8],
        timestamp: Option<i64>,
    ) -> Vec<(String, String)> {
        self.sb.sign_headers(body, timestamp)
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Sandbox {
    fn signer(&self) -> (String, &MerchantSigner) {
        match self.sign_with.lock().unwrap().clone() {
            SignWith::PublicKey => (PUB_KEY_ID.into(), &self.provider),
            SignWith::Certificate(s) if s == ROTATED_SERIAL => (s.into(), &self.rotated),
            SignWith::Certificate(s) => (s.into(), &self.provider),
        }
    }

    fn sign_headers(&self, body: &[u8], timestamp: Option<i64>) -> Vec<(String, String)> {
        let (serial, signer) = self.signer();
        let ts = timestamp.unwrap_or_else(now_secs).to_string();
        let nonce = crypto::nonce_str();
        let sig = signer.sign_base64(&crypto::response_message(&ts, &nonce, body));
        vec![
            ("Wechatpay-Timestamp".into(), ts),
            ("Wechatpay-Nonce".into(), nonce),
            ("Wechatpay-Signature".into(), sig),
            ("Wechatpay-Serial".into(), serial),
            (
                "Wechatpay-Signature-Type".into(),
                "WECHATPAY2-SHA256-RSA2048".into(),
            ),
        ]
    }

    fn signed(&self, status: StatusCode, body: Value) -> Response {
        let text = body.to_string();
        let mut resp = (status, text.clone()).into_response();
        let h = resp.headers_mut();
        h.insert("content-type", "application/json".parse().unwrap());
        for (k, v) in self.sign_headers(text.as_bytes(), None) {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        resp
    }

    fn error(&self, status: StatusCode, code: &str, message: &str) -> Response {
        self.signed(status, json!({"code": code, "message": message}))
    }

    /// Checks the merchant's Authorization header over the exact request.
    fn authorized(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> bool {
        let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Ok(parts) = crypto::parse_authorization(h) else {
            return false;
        };
        let ts: i64 = parts.timestamp.parse().unwrap_or(0);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
        let message = crypto::request_message(
            method.as_str(),
            path,
            ts,
            &parts.nonce_str,
            std::str::from_utf8(body).unwrap_or(""),
        );
        let ok = parts.mchid == MCHID
            && parts.serial_no == MERCHANT_SERIAL
            && (now_secs() - ts).abs() < 300
            && self
                .merchant
                .verify_base64(message.as_bytes(), &parts.signature);
        self.seen.lock().unwrap().push(Seen {
            method: method.to_string(),
            path: path.to_string(),
            body: String::from_utf8_lossy(body).into_owned(),
            signature_ok: ok,
        });
        ok
    }

    fn transaction(&self, no: &str, t: &Trade) -> Value {
        let mut v = json!({
            "appid": APPID, "mchid": MCHID, "out_trade_no": no,
            "trade_type": "NATIVE", "trade_state": t.state,
            "trade_state_desc": "sandbox", "bank_type": "OTHERS", "attach": "",
            "payer": {"openid": "oSandboxBuyer"},
            "amount": {"total": t.paid_amount.unwrap_or(t.amount), "payer_total": t.paid_amount.unwrap_or(t.amount), "currency": "CNY", "payer_currency": "CNY"},
        });
        if let Some(tx) = &t.transaction_id {
            v["transaction_id"] = json!(tx);
            v["success_time"] = json!(beijing_rfc3339(t.paid_at.unwrap_or_else(now_secs)));
        }
        v
    }

    fn envelope(
        &self,
        event_id: &str,
        event_type: &str,
        original_type: &str,
        plaintext: &Value,
    ) -> String {
        let nonce: String = crypto::nonce_str().chars().take(12).collect();
        let ciphertext = crypto::aes_gcm_encrypt(
            APIV3_KEY.as_bytes(),
            &nonce,
            original_type,
            plaintext.to_string().as_bytes(),
        )
        .unwrap();
        json!({
            "id": event_id, "create_time": "2026-11-22T20:00:05+08:00",
            "resource_type": "encrypt-resource", "event_type": event_type, "summary": "sandbox",
            "resource": {"original_type": original_type, "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": ciphertext, "associated_data": original_type, "nonce": nonce},
        })
        .to_string()
    }

    fn payment_notification(
        &self,
        no: &str,
        event_id: &str,
    ) -> (String, String, Vec<(String, String)>) {
        let t = self.trades.lock().unwrap().get(no).cloned().expect("trade");
        let body = self.envelope(
            event_id,
            "TRANSACTION.SUCCESS",
            "transaction",
            &self.transaction(no, &t),
        );
        let headers = self.sign_headers(body.as_bytes(), None);
        (t.notify_url, body, headers)
    }

    async fn deliver(
        &self,
        no: &str,
        url: &str,
        body: String,
        headers: Vec<(String, String)>,
    ) -> u16 {
        // WeChat: 15s, 15s, 30s, 3m, … — compressed a hundredfold and cut short.
        let schedule = [0u64, 150, 150, 300, 1800];
        let mut last = 0;
        for delay_ms in schedule {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let mut req = self
                .client
                .post(url)
                .body(body.clone())
                .header("content-type", "application/json");
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            last = match req.send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            self.deliveries.lock().unwrap().push((no.to_string(), last));
            if (200..300).contains(&last) {
                break;
            }
        }
        last
    }
}

async fn prepay(
    State(sb): State<Arc<Sandbox>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !sb.authorized(&method, &uri, &headers, &body) {
        return sb.error(
            StatusCode::UNAUTHORIZED,
            "SIGN_ERROR",
            "signature verification failed",
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return sb.error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "body is not JSON");
    };
    let (Some(no), Some(total), Some(notify_url)) = (
        v["out_trade_no"].as_str(),
        v["amount"]["total"].as_i64(),
        v["notify_url"].as_str(),
    ) else {
        return sb.error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "missing fields");
    };
    if v["mchid"] != MCHID || v["appid"] != APPID {
        return sb.error(
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            "mchid/appid mismatch",
        );
    }
    let mut trades = sb.trades.lock().unwrap();
    let t = trades.entry(no.to_string()).or_insert_with(|| Trade {
        amount: total,
        time_expire: v["time_expire"].as_str().map(str::to_string),
        notify_url: notify_url.to_string(),
        state: "NOTPAY".into(),
        transaction_id: None,
        paid_amount: None,
        paid_at: None,
    });
    if t.state != "NOTPAY" {
        let state = t.state.clone();
        drop(trades);
        return sb.error(
            StatusCode::BAD_REQUEST,
            if state == "SUCCESS" {
                "ORDERPAID"
            } else {
                "ORDER_CLOSED"
            },
            "trade is final",
        );
    }
    drop(trades);
    sb.signed(
        StatusCode::OK,
        json!({"code_url": format!("weixin://wxpay/bizpayurl?pr={no}")}),
    )
}

async fn query(
    State(sb): State<Arc<Sandbox>>,
    Path(no): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if !sb.authorized(&method, &uri, &headers, b"") {
        return sb.error(
            StatusCode::UNAUTHORIZED,
            "SIGN_ERROR",
            "signature verification failed",
        );
    }
    let mut t = sb.trades.lock().unwrap().get(&no).cloned();
    if sb.unseen.lock().unwrap().contains(&no)
        && let Some(t) = t.as_mut()
    {
        t.state = "NOTPAY".into();
        t.transaction_id = None;
    }
    match t {
        None => sb.error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "no such order"),
        Some(t) => sb.signed(StatusCode::OK, sb.transaction(&no, &t)),
    }
}

async fn close(
    State(sb): State<Arc<Sandbox>>,
    Path(no): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !sb.authorized(&method, &uri, &headers, &body) {
        return sb.error(
            StatusCode::UNAUTHORIZED,
            "SIGN_ERROR",
            "signature verification failed",
        );
    }
    if sb.pay_on_close.lock().unwrap().contains(&no) {
        // The buyer's payment lands a moment before the close.
        let mut trades = sb.trades.lock().unwrap();
        if let Some(t) = trades.get_mut(&no) {
            t.state = "SUCCESS".into();
            t.transaction_id = Some(format!("42000RACE{}", &no[no.len() - 8..]));
            t.paid_amount = Some(t.amount);
            t.paid_at = Some(now_secs());
        }
    }
    if sb.unseen.lock().unwrap().contains(&no) {
        // The close is answered by a side that never saw the payment.
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut trades = sb.trades.lock().unwrap();
    match trades.get_mut(&no) {
        None => {
            drop(trades);
            sb.error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "no such order")
        }
        Some(t) if t.state == "SUCCESS" => {
            drop(trades);
            sb.error(StatusCode::BAD_REQUEST, "ORDERPAID", "order already paid")
        }
        Some(t) => {
            t.state = "CLOSED".into();
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn refund(
    State(sb): State<Arc<Sandbox>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !sb.authorized(&method, &uri, &headers, &body) {
        return sb.error(
            StatusCode::UNAUTHORIZED,
            "SIGN_ERROR",
            "signature verification failed",
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return sb.error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "body is not JSON");
    };
    let no = v["out_trade_no"].as_str().unwrap_or_default().to_string();
    let out_refund_no = v["out_refund_no"].as_str().unwrap_or_default().to_string();
    let amount = v["amount"]["refund"].as_i64().unwrap_or(0);
    let trade = sb.trades.lock().unwrap().get(&no).cloned();
    let Some(trade) = trade.filter(|t| t.state == "SUCCESS" || t.state == "REFUND") else {
        return sb.error(StatusCode::BAD_REQUEST, "TRADE_NOT_EXIST", "no paid trade");
    };
    let refunded: i64 = sb
        .refunds
        .lock()
        .unwrap()
        .values()
        .filter(|r| {
            r["out_trade_no"] == no.as_str() && r["out_refund_no"] != out_refund_no.as_str()
        })
        .map(|r| r["amount"]["refund"].as_i64().unwrap_or(0))
        .sum();
    if amount <= 0 || refunded + amount > trade.paid_amount.unwrap_or(trade.amount) {
        return sb.error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "refund exceeds the paid amount",
        );
    }
    let mut refunds = sb.refunds.lock().unwrap();
    // Idempotent on out_refund_no.
    let r = refunds.entry(out_refund_no.clone()).or_insert_with(|| json!({
        "refund_id": format!("50300{}", &out_refund_no[out_refund_no.len().saturating_sub(8)..]),
        "out_refund_no": out_refund_no, "transaction_id": trade.transaction_id, "out_trade_no": no,
        "channel": "ORIGINAL", "user_received_account": "sandbox", "create_time": "2026-11-22T20:10:00+08:00",
        "status": "PROCESSING", "funds_account": "AVAILABLE",
        "amount": {"total": trade.paid_amount.unwrap_or(trade.amount), "refund": amount, "payer_total": trade.amount, "payer_refund": amount, "currency": "CNY"},
        "notify_url": v["notify_url"],
    })).clone();
    drop(refunds);
    if let Some(t) = sb.trades.lock().unwrap().get_mut(&no) {
        t.state = "REFUND".into();
    }
    let mut answer = r.clone();
    answer.as_object_mut().unwrap().remove("notify_url");
    // The refund completes shortly after, and WeChat says so.
    let sb2 = sb.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out = r["out_refund_no"].as_str().unwrap_or_default().to_string();
        let done = {
            let mut refunds = sb2.refunds.lock().unwrap();
            let e = refunds.get_mut(&out).unwrap();
            e["status"] = json!("SUCCESS");
            e["success_time"] = json!(beijing_rfc3339(now_secs()));
            e.clone()
        };
        let plain = json!({
            "mchid": MCHID, "out_trade_no": done["out_trade_no"], "transaction_id": done["transaction_id"],
            "out_refund_no": done["out_refund_no"], "refund_id": done["refund_id"], "refund_status": "SUCCESS",
            "success_time": done["success_time"], "user_received_account": "sandbox",
            "amount": {"total": done["amount"]["total"], "refund": done["amount"]["refund"], "payer_total": done["amount"]["payer_total"], "payer_refund": done["amount"]["payer_refund"]},
        });
        let body = sb2.envelope(&format!("EV-R-{out}"), "REFUND.SUCCESS", "refund", &plain);
        let headers = sb2.sign_headers(body.as_bytes(), None);
        if let Some(url) = done["notify_url"].as_str() {
            let no = done["out_trade_no"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            sb2.deliver(&no, url, body, headers).await;
        }
    });
    sb.signed(StatusCode::OK, answer)
}

async fn refund_query(
    State(sb): State<Arc<Sandbox>>,
    Path(no): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if !sb.authorized(&method, &uri, &headers, b"") {
        return sb.error(
            StatusCode::UNAUTHORIZED,
            "SIGN_ERROR",
            "signature verification failed",
        );
    }
    let r = sb.refunds.lock().unwrap().get(&no).cloned();
    match r {
        None => sb.error(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_EXISTS",
            "no such refund",
        ),
        Some(mut r) => {
            r.as_object_mut().unwrap().remove("notify_url");
            sb.signed(StatusCode::OK, r)
        }
    }
}

async fn certificates(
    State(sb): State<Arc<Sandbox>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if !sb.authorized(&method, &uri, &headers, b"") {
        return sb.error(
            StatusCode::UNAUTHORIZED,
            "SIGN_ERROR",
            "signature verification failed",
        );
    }
    *sb.certificate_downloads.lock().unwrap() += 1;
    let data: Vec<Value> = sb.certificates.lock().unwrap().iter().map(|(serial, pem)| {
        let nonce: String = crypto::nonce_str().chars().take(12).collect();
        json!({
            "serial_no": serial, "effective_time": "2024-01-01T00:00:00+08:00", "expire_time": "2034-01-01T00:00:00+08:00",
            "encrypt_certificate": {"algorithm": "AEAD_AES_256_GCM", "nonce": nonce, "associated_data": "certificate",
                "ciphertext": crypto::aes_gcm_encrypt(APIV3_KEY.as_bytes(), &nonce, "certificate", pem).unwrap()},
        })
    }).collect();
    sb.signed(StatusCode::OK, json!({"data": data}))
}

// ---- trade bill ----

const OFFSET: time::UtcOffset = match time::UtcOffset::from_hms(8, 0, 0) {
    Ok(o) => o,
    Err(_) => time::UtcOffset::UTC,
};

fn beijing(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap()
        .to_offset(OFFSET)
}

pub(crate) fn beijing_rfc3339(secs: i64) -> String {
    let t = beijing(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+08:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `YYYY-MM-DD HH:MM:SS` in Beijing, as bills write times.
pub(crate) fn beijing_wall(secs: i64) -> String {
    beijing_rfc3339(secs).replace('T', " ")[..19].to_string()
}

/// Today's Beijing date, `YYYY-MM-DD`: the bill day of the sandbox's trades.
pub(crate) fn beijing_today() -> String {
    beijing_rfc3339(now_secs())[..10].to_string()
}

pub(crate) const BILL_HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";

fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// One bill line. `refund`: (WeChat refund id, out_refund_no, amount). The fee is
/// WeChat's 0.6 %, to 0.00001 yuan (negative on a refund, which gives it back).
pub(crate) fn bill_row(
    at_secs: i64,
    transaction_id: &str,
    order_no: &str,
    currency: &str,
    amount: i64,
    refund: Option<(&str, &str, i64)>,
) -> String {
    let fee_units = |fen: i64| fen * 600; // 0.6 % in 0.00001 yuan
    let (state, refund_id, refund_no, refund_amount, fee) = match refund {
        None => ("SUCCESS", "0", "0", 0, fee_units(amount)),
        Some((id, no, amt)) => ("REFUND", id, no, amt, -fee_units(amt)),
    };
    let fee_text = format!(
        "{}{}.{:05}",
        if fee < 0 { "-" } else { "" },
        fee.abs() / 100_000,
        fee.abs() % 100_000
    );
    let fields = [
        beijing_wall(at_secs),
        APPID.into(),
        MCHID.into(),
        "0".into(),
        String::new(),
        transaction_id.into(),
        order_no.into(),
        "oSandboxBuyer".into(),
        "NATIVE".into(),
        state.into(),
        "OTHERS".into(),
        currency.into(),
        yuan(amount),
        "0.00".into(),
        refund_id.into(),
        refund_no.into(),
        yuan(refund_amount),
        "0.00".into(),
        if refund.is_some() { "ORIGINAL" } else { "" }.into(),
        if refund.is_some() { "SUCCESS" } else { "" }.into(),
        "sandbox goods".into(),
        String::new(),
        fee_text,
        "0.60%".into(),
        yuan(amount),
        yuan(refund_amount),
        String::new(),
    ];
    fields
        .iter()
        .map(|f| format!("`{f}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Sandbox {
    /// The trade bill (`bill_type=ALL`) of a Beijing day, from the sandbox's own
    /// trades and refunds, plus what the test asked for.
    fn bill_text(&self, date: &str) -> Option<String> {
        let knobs = self.bill.lock().unwrap();
        let on_day = |secs: i64| beijing_rfc3339(secs).starts_with(date);
        let mut rows: Vec<(i64, String)> = Vec::new();
        for (no, t) in self.trades.lock().unwrap().iter() {
            let (Some(tx), Some(at)) = (&t.transaction_id, t.paid_at) else {
                continue;
            };
            if on_day(at) && !knobs.hide_orders.contains(no) {
                let amount = t.paid_amount.unwrap_or(t.amount);
                rows.push((at, bill_row(at, tx, no, "CNY", amount, None)));
            }
        }
        for r in self.refunds.lock().unwrap().values() {
            let Some(done) = r["success_time"].as_str() else {
                continue;
            };
            let at =
                time::OffsetDateTime::parse(done, &time::format_description::well_known::Rfc3339)
                    .unwrap()
                    .unix_timestamp();
            let refund_no = r["out_refund_no"].as_str().unwrap_or_default();
            if r["status"] == "SUCCESS"
                && on_day(at)
                && !knobs.hide_refunds.iter().any(|h| h == refund_no)
            {
                rows.push((
                    at,
                    bill_row(
                        at,
                        r["transaction_id"].as_str().unwrap_or_default(),
                        r["out_trade_no"].as_str().unwrap_or_default(),
                        "CNY",
                        r["amount"]["total"].as_i64().unwrap_or(0),
                        Some((
                            r["refund_id"].as_str().unwrap_or_default(),
                            refund_no,
                            r["amount"]["refund"].as_i64().unwrap_or(0),
                        )),
                    ),
                ));
            }
        }
        rows.sort();
        let mut lines: Vec<String> = rows.into_iter().map(|(_, l)| l).collect();
        lines.extend(knobs.extra_rows.iter().cloned());
        if lines.is_empty() {
            return None;
        }
        let mut text = format!("{BILL_HEADER}\r\n");
        if knobs.fault == Some(BillFault::UnknownColumn) {
            text = format!("{BILL_HEADER},结算状态\r\n");
        }
        for l in &lines {
            text.push_str(l);
            if knobs.fault == Some(BillFault::UnknownColumn) {
                text.push_str(",`");
            }
            text.push_str("\r\n");
        }
        if knobs.fault == Some(BillFault::Truncated) {
            return Some(text);
        }
        text.push_str("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n");
        text.push_str(&format!(
            "`{},`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\r\n",
            lines.len()
        ));
        Some(text)
    }
}

#[derive(serde::Deserialize)]
struct BillQuery {
    bill_date: String,
    bill_type: Option<String>,
}

async fn trade_bill(
    State(sb): State<Arc<Sandbox>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<BillQuery>,
) -> Response {
    if !sb.authorized(&method, &uri, &headers, b"") {
        return sb.error(
            StatusCode::UNAUTHORIZED,
            "SIGN_ERROR",
            "signature verification failed",
        );
    }
    if q.bill_type.as_deref().is_some_and(|t| t != "ALL") {
        return sb.error(
            StatusCode::BAD_REQUEST,
            "PARAM_ERROR",
            "sandbox serves ALL bills",
        );
    }
    let Some(text) = sb.bill_text(&q.bill_date) else {
        return sb.error(
            StatusCode::BAD_REQUEST,
            "NO_STATEMENT_EXIST",
            "no bill for this day",
        );
    };
    let fault = sb.bill.lock().unwrap().fault;
    let bytes = if fault == Some(BillFault::NotUtf8) {
        encoding_rs::GBK.encode(&text).0.into_owned()
    } else {
        text.into_bytes()
    };
    use sha1::Digest;
    let mut hash = data_encoding::HEXLOWER.encode(&sha1::Sha1::digest(&bytes));
    if fault == Some(BillFault::BadHash) {
        hash = hash.replace(|c: char| c.is_ascii_digit(), "0");
    }
    let token = crypto::nonce_str();
    sb.bill_files.lock().unwrap().insert(token.clone(), bytes);
    let base = sb.base.lock().unwrap().clone();
    sb.signed(
        StatusCode::OK,
        json!({"hash_type": "SHA1", "hash_value": hash,
            "download_url": format!("{base}/v3/billdownload/file?token={token}")}),
    )
}

#[derive(serde::Deserialize)]
struct DownloadQuery {
    token: String,
}

/// The file itself: signed request, unsigned answer (its hash was in the signed one).
async fn bill_download(
    State(sb): State<Arc<Sandbox>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<DownloadQuery>,
) -> Response {
    if !sb.authorized(&method, &uri, &headers, b"") {
        return sb.error(
            StatusCode::UNAUTHORIZED,
            "SIGN_ERROR",
            "signature verification failed",
        );
    }
    match sb.bill_files.lock().unwrap().remove(&q.token) {
        Some(bytes) => ([("content-type", "application/octet-stream")], bytes).into_response(),
        None => sb.error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "token expired"),
    }
}
