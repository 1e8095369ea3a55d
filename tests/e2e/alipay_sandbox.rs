//! A protocol-faithful Alipay OpenAPI gateway: an axum server holding Alipay's key
//! that checks the merchant's RSA2 signature on every request (API calls by POST,
//! page pay by the buyer's browser GET), keeps trade state per `out_trade_no` —
//! with "no trade until the buyer scans" behind a switch — answers `…_response`
//! JSON signed over the exact substring (slashes escaped, as Alipay does), honours
//! close and refunds (`out_request_no` idempotent, cumulative `refund_fee`, never
//! more than paid), and delivers form-encoded notifies signed with Alipay's key to
//! the request's `notify_url`, retrying (schedule compressed) until the merchant
//! answers exactly `success`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use payd::providers::alipay::wire;
use payd::providers::wechat::crypto::{MerchantSigner, RsaVerifier};
use serde_json::{Value, json};

use crate::wechat_sandbox::fixture;

pub(crate) const APP_ID: &str = "2021000000000001";
pub(crate) const SELLER_ID: &str = "2088000000000001";

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

#[derive(Debug, Clone)]
pub(crate) struct Trade {
    pub(crate) amount: i64,
    pub(crate) subject: String,
    pub(crate) time_expire: Option<String>,
    pub(crate) notify_url: Option<String>,
    pub(crate) return_url: Option<String>,
    /// WAIT_BUYER_PAY, TRADE_SUCCESS, TRADE_FINISHED or TRADE_CLOSED.
    pub(crate) status: String,
    /// Whether the buyer has scanned (or logged in): before that, with the switch
    /// on, Alipay has no trade to query or close.
    pub(crate) scanned: bool,
    pub(crate) trade_no: String,
    pub(crate) paid_amount: Option<i64>,
    /// (out_request_no, fen), in order.
    pub(crate) refunds: Vec<(String, i64)>,
    /// When each refund went through (Unix seconds), in the same order.
    pub(crate) refunded_at: Vec<i64>,
    pub(crate) precreates: u32,
    /// When the buyer paid (Unix seconds): the bill's day.
    pub(crate) paid_at: Option<i64>,
}

/// A fault to put in the next bill download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BillFault {
    /// The zip is cut short.
    TruncatedZip,
    /// The CSV inside is UTF-8, not GBK.
    Utf8Inside,
    /// The detail header carries a column payd does not know.
    UnknownColumn,
}

/// What the bill shows besides the sandbox's own trades.
#[derive(Debug, Default)]
pub(crate) struct BillKnobs {
    /// Raw detail rows appended (and counted in the trailer).
    pub(crate) extra_rows: Vec<String>,
    pub(crate) hide_orders: Vec<String>,
    pub(crate) fault: Option<BillFault>,
}

impl Trade {
    fn paid(&self) -> i64 {
        self.paid_amount.unwrap_or(self.amount)
    }
    fn refunded(&self) -> i64 {
        self.refunds.iter().map(|(_, a)| a).sum()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) http_method: String,
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) signature_ok: bool,
}

impl Seen {
    pub(crate) fn method(&self) -> &str {
        self.params.get("method").map(String::as_str).unwrap_or("")
    }
    pub(crate) fn biz(&self) -> Value {
        serde_json::from_str(
            self.params
                .get("biz_content")
                .map(String::as_str)
                .unwrap_or(""),
        )
        .unwrap_or(Value::Null)
    }
}

/// One delivery attempt of a notify.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) order_no: String,
    pub(crate) trade_status: String,
    pub(crate) refund: bool,
    pub(crate) reply: String,
}

pub(crate) struct Sandbox {
    merchant: RsaVerifier,
    provider: MerchantSigner,
    pub(crate) trades: Mutex<HashMap<String, Trade>>,
    pub(crate) seen: Mutex<Vec<Seen>>,
    pub(crate) deliveries: Mutex<Vec<Delivery>>,
    /// The last notify body built for each order (to deliver it again verbatim).
    pub(crate) last_notify: Mutex<HashMap<String, String>>,
    /// Alipay's documented behaviour: precreate and page.pay open no trade until
    /// the buyer scans or logs in.
    pub(crate) not_exist_until_scanned: AtomicBool,
    /// Orders whose buyer pays at the very moment the merchant closes the trade.
    pub(crate) pay_on_close: Mutex<Vec<String>>,
    /// Orders paid at Alipay whose payment its query side never shows (queries say
    /// WAIT_BUYER_PAY, a close "succeeds"): only the bill tells.
    pub(crate) unseen: Mutex<Vec<String>>,
    pub(crate) bill: Mutex<BillKnobs>,
    bill_files: Mutex<HashMap<String, Vec<u8>>>,
    base: Mutex<String>,
    seq: AtomicU64,
    client: reqwest::Client,
}

pub(crate) struct AlipaySandbox {
    pub(crate) base: String,
    pub(crate) sb: Arc<Sandbox>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn beijing_now() -> String {
    wire::beijing_wall_time(payd_actors::model::Timestamp(now_secs() * 1000))
}

fn yuan(fen: i64) -> String {
    wire::format_yuan(fen).unwrap()
}

impl AlipaySandbox {
    pub(crate) async fn start() -> AlipaySandbox {
        let sb = Arc::new(Sandbox {
            merchant: RsaVerifier::from_public_key_pem(&read(
                "vectors/merchant_rsa2048_public.pem",
            ))
            .unwrap(),
            provider: MerchantSigner::from_pem(&read("vectors/provider_rsa2048_private_pkcs1.pem"))
                .unwrap(),
            trades: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            deliveries: Mutex::new(Vec::new()),
            last_notify: Mutex::new(HashMap::new()),
            not_exist_until_scanned: AtomicBool::new(true),
            pay_on_close: Mutex::new(Vec::new()),
            unseen: Mutex::new(Vec::new()),
            bill: Mutex::new(BillKnobs::default()),
            bill_files: Mutex::new(HashMap::new()),
            base: Mutex::new(String::new()),
            seq: AtomicU64::new(1),
            client: reqwest::Client::new(),
        });
        let router = Router::new()
            .route("/gateway.do", get(gateway).post(gateway))
            .route("/downloadBillFile.resource", get(bill_download))
            .with_state(sb.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *sb.base.lock().unwrap() = format!("http://{addr}");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        AlipaySandbox {
            base: format!("http://{addr}"),
            sb,
        }
    }

    pub(crate) fn gateway(&self) -> String {
        format!("{}/gateway.do", self.base)
    }

    pub(crate) fn trade(&self, no: &str) -> Option<Trade> {
        self.sb.trades.lock().unwrap().get(no).cloned()
    }

    pub(crate) fn seen(&self, method: &str) -> Vec<Seen> {
        self.sb
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method() == method)
            .cloned()
            .collect()
    }

    /// The buyer scans the code (or logs in on the cashier page): Alipay now knows
    /// the trade.
    pub(crate) fn scan(&self, no: &str) {
        self.sb
            .trades
            .lock()
            .unwrap()
            .get_mut(no)
            .expect("trade")
            .scanned = true;
    }

    /// The buyer pays (as ordered, or `amount` fen). Returns the trade_no.
    pub(crate) fn pay(&self, no: &str, amount: Option<i64>) -> String {
        let mut trades = self.sb.trades.lock().unwrap();
        let t = trades.get_mut(no).expect("trade exists");
        t.scanned = true;
        t.status = "TRADE_SUCCESS".into();
        t.paid_amount = Some(amount.unwrap_or(t.amount));
        t.paid_at = Some(now_secs());
        t.trade_no.clone()
    }

    /// The refund window passes: TRADE_FINISHED.
    pub(crate) fn finish(&self, no: &str) {
        self.sb.trades.lock().unwrap().get_mut(no).unwrap().status = "TRADE_FINISHED".into();
    }

    /// A fresh notification of the trade's current status (a new `notify_id`),
    /// delivered with Alipay's retries. Returns the merchant's last reply.
    pub(crate) async fn notify(&self, no: &str) -> String {
        let params = self.sb.notify_params(no, None);
        let body = self.sb.signed_form(params);
        self.deliver(no, body).await
    }

    /// Delivers the last notification again, byte for byte (same `notify_id`).
    pub(crate) async fn redeliver(&self, no: &str) -> String {
        let body = self.sb.last_notify.lock().unwrap()[no].clone();
        self.deliver(no, body).await
    }

    async fn deliver(&self, no: &str, body: String) -> String {
        let url = self
            .trade(no)
            .and_then(|t| t.notify_url)
            .expect("notify_url");
        self.sb
            .last_notify
            .lock()
            .unwrap()
            .insert(no.to_string(), body.clone());
        self.sb.deliver(no, &url, body).await
    }

    /// Notify parameters of the trade (signed later), for tests that bend them.
    pub(crate) fn notify_params(&self, no: &str) -> BTreeMap<String, String> {
        self.sb.notify_params(no, None)
    }

    /// Signs `params` with Alipay's key and form-encodes them as a notify body.
    pub(crate) fn signed_form(&self, params: BTreeMap<String, String>) -> String {
        self.sb.signed_form(params)
    }

    /// The URL Alipay sends the buyer's browser back to after page pay.
    pub(crate) fn return_url(&self, no: &str) -> String {
        let t = self.trade(no).expect("trade");
        let mut p = BTreeMap::new();
        for (k, v) in [
            ("charset", "utf-8".to_string()),
            ("out_trade_no", no.to_string()),
            ("method", "alipay.trade.page.pay.return".into()),
            ("total_amount", yuan(t.paid())),
            ("trade_no", t.trade_no.clone()),
            ("auth_app_id", APP_ID.into()),
            ("version", "1.0".into()),
            ("app_id", APP_ID.into()),
            ("seller_id", SELLER_ID.into()),
            ("timestamp", beijing_now()),
        ] {
            p.insert(k.to_string(), v);
        }
        format!(
            "{}?{}",
            t.return_url.expect("return_url"),
            self.sb.signed_form(p)
        )
    }
}

impl Sandbox {
    fn sign(&self, text: &str) -> String {
        self.provider.sign_base64(text.as_bytes())
    }

    /// `{"<key>":{…},"sign":"…"}` with the signature over the exact member text.
    /// Slashes are escaped the way Alipay's JSON writer does.
    fn answer(&self, key: &str, body: Value) -> Response {
        let member = body.to_string().replace('/', "\\/");
        let text = format!("{{\"{key}\":{member},\"sign\":\"{}\"}}", self.sign(&member));
        (
            StatusCode::OK,
            [("content-type", "text/html;charset=utf-8")],
            text,
        )
            .into_response()
    }

    fn success(&self, method: &str, mut fields: Value) -> Response {
        fields["code"] = json!("10000");
        fields["msg"] = json!("Success");
        self.answer(&wire::response_key(method), fields)
    }

    fn business_error(&self, method: &str, sub_code: &str, sub_msg: &str) -> Response {
        self.answer(
            &wire::response_key(method),
            json!({"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg}),
        )
    }

    fn notify_params(&self, no: &str, refund: Option<&str>) -> BTreeMap<String, String> {
        let t = self.trades.lock().unwrap().get(no).cloned().expect("trade");
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let paid = yuan(t.paid());
        let mut p: BTreeMap<String, String> = [
            ("notify_time", beijing_now()),
            ("notify_type", "trade_status_sync".into()),
            (
                "notify_id",
                format!("2026112200222{seq:06}{}", &no[no.len() - 8..]),
            ),
            ("app_id", APP_ID.into()),
            ("auth_app_id", APP_ID.into()),
            ("charset", "utf-8".into()),
            ("version", "1.0".into()),
            ("trade_no", t.trade_no.clone()),
            ("out_trade_no", no.into()),
            ("trade_status", t.status.clone()),
            ("total_amount", paid.clone()),
            ("receipt_amount", paid.clone()),
            ("invoice_amount", paid.clone()),
            ("buyer_pay_amount", paid.clone()),
            ("point_amount", "0.00".into()),
            ("gmt_create", beijing_now()),
            ("gmt_payment", beijing_now()),
            ("seller_id", SELLER_ID.into()),
            ("buyer_id", "2088000000000002".into()),
            ("subject", t.subject.clone()),
            (
                "fund_bill_list",
                format!("[{{\"amount\":\"{paid}\",\"fundChannel\":\"ALIPAYACCOUNT\"}}]"),
            ),
            ("passback_params", String::new()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(out_request_no) = refund {
            p.insert("refund_fee".into(), yuan(t.refunded()));
            p.insert("gmt_refund".into(), format!("{}.000", beijing_now()));
            p.insert("out_biz_no".into(), out_request_no.into());
        }
        p
    }

    fn signed_form(&self, mut params: BTreeMap<String, String>) -> String {
        let sign = self.sign(&wire::notify_verify_content(&params));
        params.insert("sign".into(), sign);
        params.insert("sign_type".into(), "RSA2".into());
        let pairs: Vec<(&String, &String)> = params.iter().collect();
        wire::form_encode(&pairs)
    }

    async fn deliver(&self, no: &str, url: &str, body: String) -> String {
        let params = wire::form_decode_map(body.as_bytes()).unwrap();
        // Alipay: 4m, 10m, 10m, 1h, 2h, 6h, 15h — compressed and cut short.
        let schedule = [0u64, 100, 200, 400, 800];
        let mut last = String::new();
        for delay_ms in schedule {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let sent = self
                .client
                .post(url)
                .header(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )
                .body(body.clone())
                .send()
                .await;
            last = match sent {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            self.deliveries.lock().unwrap().push(Delivery {
                order_no: no.to_string(),
                trade_status: params.get("trade_status").cloned().unwrap_or_default(),
                refund: params.contains_key("refund_fee"),
                reply: last.clone(),
            });
            // Exactly these 7 bytes; anything else is a failure.
            if last == "success" {
                break;
            }
        }
        last
    }

    /// Checks the merchant's request: RSA2 over the raw sorted parameters,
    /// `sign_type` included, with the merchant's public key; our app; a fresh
    /// Beijing timestamp.
    fn check(
        &self,
        http_method: &Method,
        params: &BTreeMap<String, String>,
    ) -> Option<&'static str> {
        let pairs: Vec<(&String, &String)> = params.iter().collect();
        let content = wire::request_sign_content(&pairs);
        let sig_ok = params.get("sign_type").map(String::as_str) == Some("RSA2")
            && params
                .get("sign")
                .is_some_and(|s| self.merchant.verify_base64(content.as_bytes(), s));
        self.seen.lock().unwrap().push(Seen {
            http_method: http_method.to_string(),
            params: params.clone(),
            signature_ok: sig_ok,
        });
        if !sig_ok {
            return Some("isv.invalid-signature");
        }
        if params.get("app_id").map(String::as_str) != Some(APP_ID) {
            return Some("isv.invalid-app-id");
        }
        let fresh = params
            .get("timestamp")
            .and_then(|t| wire::parse_beijing_wall_time(t))
            .is_some_and(|t| (t.ms() / 1000 - now_secs()).abs() < 600);
        if !fresh {
            return Some("isv.invalid-timestamp");
        }
        None
    }
}

async fn gateway(
    State(sb): State<Arc<Sandbox>>,
    http_method: Method,
    RawQuery(raw_query): RawQuery,
    body: Bytes,
) -> Response {
    // The official SDK sends the common parameters in the query string and the
    // rest in the body; others send everything in one place. Both are accepted.
    let mut params = BTreeMap::new();
    for source in [raw_query.unwrap_or_default().into_bytes(), body.to_vec()] {
        let Ok(pairs) = wire::form_decode(&source) else {
            return (StatusCode::BAD_REQUEST, "bad form").into_response();
        };
        for (k, v) in pairs {
            if params.insert(k, v).is_some() {
                return (StatusCode::BAD_REQUEST, "duplicate parameter").into_response();
            }
        }
    }
    let method = params.get("method").cloned().unwrap_or_default();
    if let Some(sub_code) = sb.check(&http_method, &params) {
        if method == "alipay.trade.page.pay" {
            return (
                StatusCode::BAD_REQUEST,
                Html(format!("<p>Alipay cashier: {sub_code}</p>")),
            )
                .into_response();
        }
        let key = if method.is_empty() {
            "error_response".to_string()
        } else {
            wire::response_key(&method)
        };
        return sb.answer(
            &key,
            json!({"code": "40002", "msg": "Invalid Arguments", "sub_code": sub_code, "sub_msg": "sandbox refused the request"}),
        );
    }
    let biz: Value = serde_json::from_str(
        params
            .get("biz_content")
            .map(String::as_str)
            .unwrap_or("{}"),
    )
    .unwrap_or(Value::Null);
    let no = biz["out_trade_no"].as_str().unwrap_or_default().to_string();
    match method.as_str() {
        "alipay.trade.precreate" | "alipay.trade.page.pay" => open(&sb, &method, &params, &biz, &no),
        "alipay.trade.query" => query(&sb, &method, &no),
        "alipay.trade.close" => close(&sb, &method, &no),
        "alipay.trade.refund" => refund(&sb, &method, &biz, &no),
        "alipay.trade.fastpay.refund.query" => refund_query(&sb, &method, &biz, &no),
        "alipay.data.dataservice.bill.downloadurl.query" => bill_url(&sb, &method, &biz),
        _ => sb.answer(
            "error_response",
            json!({"code": "40004", "msg": "Business Failed", "sub_code": "isv.invalid-method", "sub_msg": "unknown method"}),
        ),
    }
}

fn open(
    sb: &Arc<Sandbox>,
    method: &str,
    params: &BTreeMap<String, String>,
    biz: &Value,
    no: &str,
) -> Response {
    let page = method == "alipay.trade.page.pay";
    let Some(amount) = biz["total_amount"].as_str().and_then(wire::parse_yuan) else {
        return sb.business_error(method, "ACQ.INVALID_PARAMETER", "total_amount");
    };
    if no.is_empty() || (page && biz["product_code"] != "FAST_INSTANT_TRADE_PAY") {
        return sb.business_error(method, "ACQ.INVALID_PARAMETER", "missing fields");
    }
    let mut trades = sb.trades.lock().unwrap();
    let seq = sb.seq.fetch_add(1, Ordering::SeqCst);
    let t = trades.entry(no.to_string()).or_insert_with(|| Trade {
        amount,
        subject: biz["subject"].as_str().unwrap_or_default().to_string(),
        time_expire: biz["time_expire"].as_str().map(str::to_string),
        notify_url: params.get("notify_url").cloned(),
        return_url: params.get("return_url").cloned(),
        status: "WAIT_BUYER_PAY".into(),
        scanned: !sb.not_exist_until_scanned.load(Ordering::SeqCst),
        trade_no: format!(
            "20261122220014{seq:06}{}",
            &no[no.len().saturating_sub(8)..]
        ),
        paid_amount: None,
        refunds: Vec::new(),
        refunded_at: Vec::new(),
        precreates: 0,
        paid_at: None,
    });
    t.precreates += 1;
    if page {
        // The buyer logs in on the cashier page: now Alipay has the trade.
        t.scanned = true;
    }
    let (status, amount_was) = (t.status.clone(), t.amount);
    drop(trades);
    if amount_was != amount {
        return sb.business_error(method, "ACQ.CONTEXT_INCONSISTENT", "trade differs");
    }
    match status.as_str() {
        "TRADE_SUCCESS" | "TRADE_FINISHED" => {
            sb.business_error(method, "ACQ.TRADE_HAS_SUCCESS", "already paid")
        }
        "TRADE_CLOSED" => sb.business_error(method, "ACQ.TRADE_HAS_CLOSE", "closed"),
        _ if page => Html(format!("<p>Alipay cashier for {no}</p>")).into_response(),
        _ => sb.success(
            method,
            json!({"out_trade_no": no, "qr_code": format!("https://qr.alipay.com/bax0{no}")}),
        ),
    }
}

fn known(sb: &Sandbox, no: &str) -> Option<Trade> {
    sb.trades
        .lock()
        .unwrap()
        .get(no)
        .filter(|t| t.scanned)
        .cloned()
}

fn query(sb: &Sandbox, method: &str, no: &str) -> Response {
    let Some(mut t) = known(sb, no) else {
        return sb.business_error(method, "ACQ.TRADE_NOT_EXIST", "no such trade");
    };
    if sb.unseen.lock().unwrap().iter().any(|n| n == no) {
        t.status = "WAIT_BUYER_PAY".into();
        t.paid_amount = None;
    }
    let mut v = json!({
        "out_trade_no": no, "trade_no": t.trade_no, "trade_status": t.status,
        "total_amount": yuan(t.paid()), "buyer_logon_id": "sbx***@example.com",
        "buyer_user_id": "2088000000000002",
    });
    if t.paid_amount.is_some() {
        v["buyer_pay_amount"] = json!(yuan(t.paid()));
        v["receipt_amount"] = json!(yuan(t.paid()));
        v["send_pay_date"] = json!(beijing_now());
    }
    sb.success(method, v)
}

fn close(sb: &Sandbox, method: &str, no: &str) -> Response {
    if sb.pay_on_close.lock().unwrap().iter().any(|n| n == no) {
        // The buyer's payment lands a moment before the close.
        if let Some(t) = sb.trades.lock().unwrap().get_mut(no) {
            t.scanned = true;
            t.status = "TRADE_SUCCESS".into();
            t.paid_amount = Some(t.amount);
            t.paid_at = Some(now_secs());
        }
    }
    if sb.unseen.lock().unwrap().iter().any(|n| n == no) {
        // Answered by a side that never saw the payment.
        return sb.success(method, json!({"out_trade_no": no}));
    }
    let mut trades = sb.trades.lock().unwrap();
    match trades.get_mut(no).filter(|t| t.scanned) {
        None => {
            drop(trades);
            sb.business_error(method, "ACQ.TRADE_NOT_EXIST", "no such trade")
        }
        Some(t) if t.status == "WAIT_BUYER_PAY" => {
            t.status = "TRADE_CLOSED".into();
            let trade_no = t.trade_no.clone();
            drop(trades);
            sb.success(method, json!({"out_trade_no": no, "trade_no": trade_no}))
        }
        Some(_) => {
            drop(trades);
            sb.business_error(
                method,
                "ACQ.TRADE_STATUS_ERROR",
                "trade status does not allow close",
            )
        }
    }
}

fn refund(sb: &Arc<Sandbox>, method: &str, biz: &Value, no: &str) -> Response {
    let Some(amount) = biz["refund_amount"].as_str().and_then(wire::parse_yuan) else {
        return sb.business_error(method, "ACQ.INVALID_PARAMETER", "refund_amount");
    };
    // Without out_request_no Alipay keys the refund by the trade itself.
    let out_request_no = biz["out_request_no"].as_str().unwrap_or(no).to_string();
    let mut trades = sb.trades.lock().unwrap();
    let Some(t) = trades.get_mut(no).filter(|t| t.scanned) else {
        drop(trades);
        return sb.business_error(method, "ACQ.TRADE_NOT_EXIST", "no such trade");
    };
    let repeat = t
        .refunds
        .iter()
        .find(|(r, _)| *r == out_request_no)
        .map(|(_, a)| *a);
    let fund_change = match repeat {
        Some(a) if a == amount => "N",
        Some(_) => {
            drop(trades);
            return sb.business_error(
                method,
                "ACQ.DISCORDANT_REPEAT_REQUEST",
                "same out_request_no, other amount",
            );
        }
        None => {
            match t.status.as_str() {
                "TRADE_SUCCESS" => {}
                "TRADE_FINISHED" => {
                    drop(trades);
                    return sb.business_error(method, "ACQ.TRADE_HAS_FINISHED", "finished");
                }
                _ => {
                    drop(trades);
                    return sb.business_error(method, "ACQ.TRADE_STATUS_ERROR", "not paid");
                }
            }
            if amount <= 0 || t.refunded() + amount > t.paid() {
                drop(trades);
                return sb.business_error(
                    method,
                    "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                    "refund exceeds the paid amount",
                );
            }
            t.refunds.push((out_request_no.clone(), amount));
            t.refunded_at.push(now_secs());
            if t.refunded() == t.paid() {
                t.status = "TRADE_CLOSED".into();
            }
            "Y"
        }
    };
    let answer = json!({
        "out_trade_no": no, "trade_no": t.trade_no, "buyer_logon_id": "sbx***@example.com",
        "fund_change": fund_change, "refund_fee": yuan(t.refunded()), "gmt_refund_pay": beijing_now(),
    });
    drop(trades);
    if fund_change == "Y" {
        // TRADE_SUCCESS with refund_fee after a partial refund; TRADE_CLOSED with
        // refund_fee after a full one (the sandbox notifies every status). Built
        // now, so it describes the trade as this refund left it.
        let params = sb.notify_params(no, Some(&out_request_no));
        let body = sb.signed_form(params);
        let url = sb.trades.lock().unwrap()[no].notify_url.clone();
        let sb2 = sb.clone();
        let no = no.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(url) = url {
                sb2.deliver(&no, &url, body).await;
            }
        });
    }
    sb.success(method, answer)
}

fn refund_query(sb: &Sandbox, method: &str, biz: &Value, no: &str) -> Response {
    let out_request_no = biz["out_request_no"].as_str().unwrap_or(no);
    let Some(t) = known(sb, no) else {
        return sb.business_error(method, "ACQ.TRADE_NOT_EXIST", "no such trade");
    };
    match t.refunds.iter().find(|(r, _)| r == out_request_no) {
        // No such refund: an empty success, as Alipay answers.
        None => sb.success(method, json!({})),
        Some((_, amount)) => sb.success(
            method,
            json!({
                "out_trade_no": no, "trade_no": t.trade_no, "out_request_no": out_request_no,
                "refund_amount": yuan(*amount), "total_amount": yuan(t.paid()),
                "refund_status": "REFUND_SUCCESS", "gmt_refund_pay": beijing_now(),
            }),
        ),
    }
}

// ---- bills ----

/// `YYYY-MM-DD HH:MM:SS` in Beijing.
fn beijing_wall(secs: i64) -> String {
    wire::beijing_wall_time(payd_actors::model::Timestamp(secs * 1000))
}

/// A detail row the way Alipay writes it, for tests that add their own.
pub(crate) fn bill_row(
    trade_no: &str,
    order_no: &str,
    amount: i64,
    refund_no: Option<&str>,
) -> String {
    payd::providers::alipay::bill::detail_row(
        trade_no,
        order_no,
        &beijing_wall(now_secs()),
        amount,
        refund_no,
    )
}

impl Sandbox {
    fn bill_zip(&self, date: &str) -> Option<Vec<u8>> {
        use payd::providers::alipay::bill;
        let knobs = self.bill.lock().unwrap();
        let on_day = |secs: i64| beijing_wall(secs).starts_with(date);
        let mut rows: Vec<(i64, String)> = Vec::new();
        for (no, t) in self.trades.lock().unwrap().iter() {
            let Some(at) = t.paid_at else { continue };
            if on_day(at) && !knobs.hide_orders.contains(no) {
                rows.push((
                    at,
                    bill::detail_row(&t.trade_no, no, &beijing_wall(at), t.paid(), None),
                ));
            }
            for ((request_no, amount), at) in t.refunds.iter().zip(&t.refunded_at) {
                if on_day(*at) {
                    rows.push((
                        *at,
                        bill::detail_row(
                            &t.trade_no,
                            no,
                            &beijing_wall(*at),
                            *amount,
                            Some(request_no),
                        ),
                    ));
                }
            }
        }
        rows.sort();
        let mut lines: Vec<String> = rows.into_iter().map(|(_, l)| l).collect();
        lines.extend(knobs.extra_rows.iter().cloned());
        if lines.is_empty() {
            return None;
        }
        let mut detail = bill::detail_text(SELLER_ID, date, &lines);
        if knobs.fault == Some(BillFault::UnknownColumn) {
            detail = detail.replace("分润（元）", "花呗分期（元）");
        }
        if knobs.fault == Some(BillFault::Utf8Inside) {
            use std::io::Write;
            let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            let o = zip::write::SimpleFileOptions::default();
            let compact = date.replace('-', "");
            w.start_file(format!("{SELLER_ID}_{compact}_业务明细.csv"), o)
                .unwrap();
            w.write_all(detail.as_bytes()).unwrap();
            w.start_file(format!("{SELLER_ID}_{compact}_业务明细(汇总).csv"), o)
                .unwrap();
            w.write_all(b"#summary\r\n").unwrap();
            return Some(w.finish().unwrap().into_inner());
        }
        let mut zip = bill::bill_zip(SELLER_ID, date, &detail);
        if knobs.fault == Some(BillFault::TruncatedZip) {
            zip.truncate(zip.len() * 2 / 3);
        }
        Some(zip)
    }
}

fn bill_url(sb: &Sandbox, method: &str, biz: &Value) -> Response {
    if biz["bill_type"] != "trade" {
        return sb.business_error(
            method,
            "isv.invalid-bill-type",
            "sandbox serves trade bills",
        );
    }
    let date = biz["bill_date"].as_str().unwrap_or_default();
    let Some(zip) = sb.bill_zip(date) else {
        return sb.business_error(method, "isp.bill_not_exist", "no bill for this day");
    };
    let token = format!("{}", sb.seq.fetch_add(1, Ordering::SeqCst));
    sb.bill_files.lock().unwrap().insert(token.clone(), zip);
    let base = sb.base.lock().unwrap().clone();
    sb.success(
        method,
        json!({"bill_download_url": format!("{base}/downloadBillFile.resource?bizType=trade&userId={SELLER_ID}&fileType=csv.zip&bizDates={}&fileId={token}", date.replace('-', ""))}),
    )
}

#[derive(serde::Deserialize)]
struct DownloadQuery {
    #[serde(rename = "fileId")]
    file_id: String,
}

/// The file: the URL's own token authorises it (valid once, like Alipay's 30 s).
async fn bill_download(
    State(sb): State<Arc<Sandbox>>,
    axum::extract::Query(q): axum::extract::Query<DownloadQuery>,
) -> Response {
    match sb.bill_files.lock().unwrap().remove(&q.file_id) {
        Some(zip) => ([("content-type", "application/oct-stream")], zip).into_response(),
        None => (StatusCode::NOT_FOUND, "expired").into_response(),
    }
}
