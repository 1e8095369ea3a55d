//! The WeChat Pay API v2 side of the sandbox: XML requests signed with the merchant
//! API key (HMAC-SHA256 or MD5), signed XML answers, `ORDERPAID` on closing a paid
//! trade, refunds with an encrypted `req_info` notification, and XML payment
//! notifications retried until the merchant answers `return_code` SUCCESS.
//!
//! (The real refund endpoint requires mutual TLS; here it is served over plain HTTP,
//! so the test proves payd loads its merchant certificate and signs the refund, not
//! the TLS handshake itself.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use payd::providers::wechat::crypto::{self, V2SignType};
use payd::providers::wechat::xml::{parse_xml, to_xml};

use crate::wechat_sandbox::{APPID, MCHID, Trade};

pub(crate) const V2_API_KEY: &str = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6";

type Fields = BTreeMap<String, String>;

pub(crate) struct SandboxV2 {
    pub(crate) trades: Mutex<std::collections::HashMap<String, Trade>>,
    pub(crate) refunds: Mutex<std::collections::HashMap<String, Fields>>,
    /// (path, sign verified, fields) of every request.
    pub(crate) seen: Mutex<Vec<(String, bool, Fields)>>,
    pub(crate) deliveries: Mutex<Vec<(String, u16, bool)>>,
    pub(crate) pay_on_close: Mutex<Vec<String>>,
    /// Orders paid whose payment the query side never shows (see the v3 sandbox).
    pub(crate) unseen: Mutex<Vec<String>>,
    /// Order numbers the bill leaves out.
    pub(crate) bill_hide: Mutex<Vec<String>>,
    client: reqwest::Client,
}

pub(crate) struct WechatV2Sandbox {
    pub(crate) base: String,
    pub(crate) sb: Arc<SandboxV2>,
}

fn f(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn signed_xml(mut fields: Fields, sign_type: V2SignType) -> String {
    fields.insert("nonce_str".into(), crypto::nonce_str());
    let sign = crypto::v2_sign(&fields, V2_API_KEY, sign_type);
    fields.insert("sign".into(), sign);
    to_xml(&fields)
}

fn answer(fields: Fields, sign_type: V2SignType) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/xml")],
        signed_xml(fields, sign_type),
    )
        .into_response()
}

fn transport_fail(msg: &str) -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/xml")],
        to_xml(&f(&[("return_code", "FAIL"), ("return_msg", msg)])),
    )
        .into_response()
}

impl WechatV2Sandbox {
    pub(crate) async fn start() -> WechatV2Sandbox {
        let sb = Arc::new(SandboxV2 {
            trades: Mutex::new(Default::default()),
            refunds: Mutex::new(Default::default()),
            seen: Mutex::new(Vec::new()),
            deliveries: Mutex::new(Vec::new()),
            pay_on_close: Mutex::new(Vec::new()),
            unseen: Mutex::new(Vec::new()),
            bill_hide: Mutex::new(Vec::new()),
            client: reqwest::Client::new(),
        });
        let router = Router::new()
            .route("/pay/unifiedorder", post(unifiedorder))
            .route("/pay/orderquery", post(orderquery))
            .route("/pay/closeorder", post(closeorder))
            .route("/secapi/pay/refund", post(refund))
            .route("/pay/refundquery", post(refundquery))
            .route("/pay/downloadbill", post(downloadbill))
            .with_state(sb.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        WechatV2Sandbox {
            base: format!("http://{addr}"),
            sb,
        }
    }

    pub(crate) fn trade(&self, no: &str) -> Option<Trade> {
        self.sb.trades.lock().unwrap().get(no).cloned()
    }

    pub(crate) fn pay(&self, no: &str, amount: Option<i64>) {
        let mut trades = self.sb.trades.lock().unwrap();
        let t = trades.get_mut(no).expect("trade");
        t.state = "SUCCESS".into();
        t.transaction_id = Some(format!("42000V2{}", &no[no.len() - 10..]));
        t.paid_amount = Some(amount.unwrap_or(t.amount));
        t.paid_at = Some(crate::support::now_secs() as i64);
    }

    /// The payment notification fields of a paid trade (unsigned).
    pub(crate) fn notify_fields(&self, no: &str) -> Fields {
        let t = self.trade(no).expect("trade");
        let total = t.paid_amount.unwrap_or(t.amount).to_string();
        let mut n = f(&[
            ("return_code", "SUCCESS"),
            ("result_code", "SUCCESS"),
            ("appid", APPID),
            ("mch_id", MCHID),
            ("openid", "oSandboxBuyer"),
            ("is_subscribe", "N"),
            ("trade_type", "NATIVE"),
            ("bank_type", "OTHERS"),
            ("fee_type", "CNY"),
            ("out_trade_no", no),
        ]);
        n.insert("time_end".into(), time_end(&t));
        n.insert("total_fee".into(), total.clone());
        n.insert("cash_fee".into(), total);
        n.insert(
            "transaction_id".into(),
            t.transaction_id.unwrap_or_default(),
        );
        n
    }

    /// Real v2 notifications carry no sign_type, even when signed with HMAC-SHA256.
    pub(crate) fn sign_notify(&self, fields: Fields, sign_type: V2SignType) -> String {
        signed_xml(fields, sign_type)
    }

    pub(crate) async fn notify(&self, no: &str) -> (u16, bool) {
        let url = self.trade(no).expect("trade").notify_url;
        let body = self.sign_notify(self.notify_fields(no), V2SignType::HmacSha256);
        self.sb.deliver(no, &url, body).await
    }
}

impl SandboxV2 {
    /// Posts XML until the merchant answers 200 with return_code SUCCESS.
    async fn deliver(&self, no: &str, url: &str, body: String) -> (u16, bool) {
        let mut last = (0, false);
        for delay_ms in [0u64, 150, 150, 300, 1800] {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            last = match self
                .client
                .post(url)
                .header("content-type", "text/xml")
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.bytes().await.unwrap_or_default();
                    let ok = parse_xml(&text)
                        .ok()
                        .and_then(|x| x.get("return_code").cloned())
                        == Some("SUCCESS".into());
                    (status, ok)
                }
                Err(_) => (0, false),
            };
            self.deliveries
                .lock()
                .unwrap()
                .push((no.to_string(), last.0, last.1));
            if last == (200, true) {
                break;
            }
        }
        last
    }

    /// Parses and checks a request; `Err` → answer with a transport failure.
    #[allow(clippy::result_large_err)]
    fn check(&self, path: &str, body: &[u8]) -> Result<(Fields, V2SignType), Response> {
        let Ok(fields) = parse_xml(body) else {
            return Err(transport_fail("XML格式错误"));
        };
        let sign_type = V2SignType::parse(fields.get("sign_type").map(String::as_str))
            .unwrap_or(V2SignType::Md5);
        let ok = crypto::v2_verify(&fields, V2_API_KEY, None)
            && fields.get("appid").map(String::as_str) == Some(APPID)
            && fields.get("mch_id").map(String::as_str) == Some(MCHID)
            && fields
                .get("nonce_str")
                .is_some_and(|n| !n.is_empty() && n.len() <= 32);
        self.seen
            .lock()
            .unwrap()
            .push((path.to_string(), ok, fields.clone()));
        if !ok {
            return Err(transport_fail("签名错误"));
        }
        Ok((fields, sign_type))
    }
}

fn base(result: &str) -> Fields {
    f(&[
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", APPID),
        ("mch_id", MCHID),
        ("result_code", result),
    ])
}

async fn unifiedorder(State(sb): State<Arc<SandboxV2>>, body: Bytes) -> Response {
    let (req, st) = match sb.check("/pay/unifiedorder", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (Some(no), Some(total), Some(notify_url)) = (
        req.get("out_trade_no"),
        req.get("total_fee").and_then(|t| t.parse::<i64>().ok()),
        req.get("notify_url"),
    ) else {
        let mut a = base("FAIL");
        a.insert("err_code".into(), "PARAM_ERROR".into());
        return answer(a, st);
    };
    if req.get("trade_type").map(String::as_str) != Some("NATIVE")
        || !req.contains_key("product_id")
    {
        let mut a = base("FAIL");
        a.insert("err_code".into(), "PARAM_ERROR".into());
        return answer(a, st);
    }
    let mut trades = sb.trades.lock().unwrap();
    let t = trades.entry(no.clone()).or_insert_with(|| Trade {
        amount: total,
        time_expire: req.get("time_expire").cloned(),
        notify_url: notify_url.clone(),
        state: "NOTPAY".into(),
        transaction_id: None,
        paid_amount: None,
        paid_at: None,
    });
    if t.state == "SUCCESS" {
        drop(trades);
        let mut a = base("FAIL");
        a.insert("err_code".into(), "ORDERPAID".into());
        return answer(a, st);
    }
    drop(trades);
    let mut a = base("SUCCESS");
    a.insert("trade_type".into(), "NATIVE".into());
    a.insert("prepay_id".into(), format!("wx2026{}", &no[no.len() - 8..]));
    a.insert(
        "code_url".into(),
        format!("weixin://wxpay/bizpayurl?pr=v2{no}"),
    );
    answer(a, st)
}

async fn orderquery(State(sb): State<Arc<SandboxV2>>, body: Bytes) -> Response {
    let (req, st) = match sb.check("/pay/orderquery", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let no = req.get("out_trade_no").cloned().unwrap_or_default();
    let Some(mut t) = sb.trades.lock().unwrap().get(&no).cloned() else {
        let mut a = base("FAIL");
        a.insert("err_code".into(), "ORDERNOTEXIST".into());
        return answer(a, st);
    };
    if sb.unseen.lock().unwrap().contains(&no) {
        t.state = "NOTPAY".into();
        t.transaction_id = None;
    }
    let mut a = base("SUCCESS");
    a.insert("out_trade_no".into(), no);
    a.insert("trade_state".into(), t.state.clone());
    a.insert(
        "total_fee".into(),
        t.paid_amount.unwrap_or(t.amount).to_string(),
    );
    a.insert("fee_type".into(), "CNY".into());
    if let Some(tx) = t.transaction_id.clone() {
        a.insert("transaction_id".into(), tx);
        a.insert("time_end".into(), time_end(&t));
    }
    answer(a, st)
}

async fn closeorder(State(sb): State<Arc<SandboxV2>>, body: Bytes) -> Response {
    let (req, st) = match sb.check("/pay/closeorder", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let no = req.get("out_trade_no").cloned().unwrap_or_default();
    if sb.pay_on_close.lock().unwrap().contains(&no)
        && let Some(t) = sb.trades.lock().unwrap().get_mut(&no)
    {
        t.state = "SUCCESS".into();
        t.transaction_id = Some(format!("42000V2RACE{}", &no[no.len() - 6..]));
        t.paid_amount = Some(t.amount);
        t.paid_at = Some(crate::support::now_secs() as i64);
    }
    if sb.unseen.lock().unwrap().contains(&no) {
        return answer(base("SUCCESS"), st);
    }
    let mut trades = sb.trades.lock().unwrap();
    let code = match trades.get_mut(&no) {
        None => Some("ORDERNOTEXIST"),
        Some(t) if t.state == "SUCCESS" => Some("ORDERPAID"),
        Some(t) => {
            t.state = "CLOSED".into();
            None
        }
    };
    drop(trades);
    match code {
        None => answer(base("SUCCESS"), st),
        Some(code) => {
            let mut a = base("FAIL");
            a.insert("err_code".into(), code.into());
            answer(a, st)
        }
    }
}

async fn refund(State(sb): State<Arc<SandboxV2>>, body: Bytes) -> Response {
    let (req, st) = match sb.check("/secapi/pay/refund", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let no = req.get("out_trade_no").cloned().unwrap_or_default();
    let out_refund_no = req.get("out_refund_no").cloned().unwrap_or_default();
    let fee: i64 = req
        .get("refund_fee")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let Some(t) = sb
        .trades
        .lock()
        .unwrap()
        .get(&no)
        .cloned()
        .filter(|t| t.state == "SUCCESS" || t.state == "REFUND")
    else {
        let mut a = base("FAIL");
        a.insert("err_code".into(), "TRADE_STATE_ERROR".into());
        return answer(a, st);
    };
    let refunded: i64 = sb
        .refunds
        .lock()
        .unwrap()
        .values()
        .filter(|r| r["out_trade_no"] == no && r["out_refund_no"] != out_refund_no)
        .map(|r| r["refund_fee"].parse::<i64>().unwrap_or(0))
        .sum();
    if fee <= 0 || refunded + fee > t.paid_amount.unwrap_or(t.amount) {
        let mut a = base("FAIL");
        a.insert("err_code".into(), "NOTENOUGH".into());
        return answer(a, st);
    }
    let record = sb
        .refunds
        .lock()
        .unwrap()
        .entry(out_refund_no.clone())
        .or_insert_with(|| {
            f(&[
                ("out_trade_no", &no),
                ("out_refund_no", &out_refund_no),
                ("refund_fee", &fee.to_string()),
                ("refund_id", &format!("50300V2{out_refund_no}")),
                ("refund_status", "PROCESSING"),
                ("transaction_id", t.transaction_id.as_deref().unwrap_or("")),
                ("total_fee", &t.paid_amount.unwrap_or(t.amount).to_string()),
            ])
        })
        .clone();
    if let Some(tr) = sb.trades.lock().unwrap().get_mut(&no) {
        tr.state = "REFUND".into();
    }
    let notify_url = req.get("notify_url").cloned();
    let sb2 = sb.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = {
            let mut refunds = sb2.refunds.lock().unwrap();
            let r = refunds.get_mut(&out_refund_no).unwrap();
            r.insert("refund_status".into(), "SUCCESS".into());
            r.clone()
        };
        let mut inner = done.clone();
        inner.insert("success_time".into(), "2026-11-22 20:10:05".into());
        inner.insert("refund_recv_accout".into(), "sandbox".into());
        let req_info = crypto::v2_encrypt_req_info(&to_xml(&inner), V2_API_KEY);
        let outer = f(&[
            ("return_code", "SUCCESS"),
            ("appid", APPID),
            ("mch_id", MCHID),
            ("nonce_str", &crypto::nonce_str()),
            ("req_info", &req_info),
        ]);
        if let Some(url) = notify_url {
            sb2.deliver(&no, &url, to_xml(&outer)).await;
        }
    });
    let mut a = base("SUCCESS");
    a.insert("out_trade_no".into(), record["out_trade_no"].clone());
    a.insert("out_refund_no".into(), record["out_refund_no"].clone());
    a.insert("refund_id".into(), record["refund_id"].clone());
    a.insert("refund_fee".into(), record["refund_fee"].clone());
    answer(a, st)
}

async fn refundquery(State(sb): State<Arc<SandboxV2>>, body: Bytes) -> Response {
    let (req, st) = match sb.check("/pay/refundquery", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let no = req.get("out_refund_no").cloned().unwrap_or_default();
    let Some(r) = sb.refunds.lock().unwrap().get(&no).cloned() else {
        let mut a = base("FAIL");
        a.insert("err_code".into(), "REFUNDNOTEXIST".into());
        return answer(a, st);
    };
    let mut a = base("SUCCESS");
    a.insert("out_trade_no".into(), r["out_trade_no"].clone());
    a.insert("refund_count".into(), "1".into());
    a.insert("out_refund_no_0".into(), r["out_refund_no"].clone());
    a.insert("refund_id_0".into(), r["refund_id"].clone());
    a.insert("refund_fee_0".into(), r["refund_fee"].clone());
    a.insert("refund_status_0".into(), r["refund_status"].clone());
    answer(a, st)
}

/// `yyyyMMddHHmmss` in Beijing: when the buyer paid.
fn time_end(t: &Trade) -> String {
    let secs = t
        .paid_at
        .unwrap_or_else(|| crate::support::now_secs() as i64);
    crate::wechat_sandbox::beijing_rfc3339(secs)[..19].replace(['-', 'T', ':'], "")
}

/// `/pay/downloadbill`: the bill text of the day (the v3 format), or an XML FAIL.
async fn downloadbill(State(sb): State<Arc<SandboxV2>>, body: Bytes) -> Response {
    let (req, _) = match sb.check("/pay/downloadbill", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let date = req.get("bill_date").cloned().unwrap_or_default();
    if req.get("bill_type").map(String::as_str) != Some("ALL") || date.len() != 8 {
        return transport_fail("invalid bill_type or bill_date");
    }
    let day = format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..]);
    let hide = sb.bill_hide.lock().unwrap().clone();
    let mut rows: Vec<(i64, String)> = sb
        .trades
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(no, t)| {
            let (tx, at) = (t.transaction_id.as_ref()?, t.paid_at?);
            let on_day = crate::wechat_sandbox::beijing_rfc3339(at).starts_with(&day);
            (on_day && !hide.contains(no)).then(|| {
                let amount = t.paid_amount.unwrap_or(t.amount);
                (
                    at,
                    crate::wechat_sandbox::bill_row(at, tx, no, "CNY", amount, None),
                )
            })
        })
        .collect();
    if rows.is_empty() {
        return (
            StatusCode::OK,
            [("content-type", "text/xml")],
            to_xml(&f(&[
                ("return_code", "FAIL"),
                ("return_msg", "No Bill Exist"),
                ("error_code", "20002"),
            ])),
        )
            .into_response();
    }
    rows.sort();
    let mut text = format!("{}\r\n", crate::wechat_sandbox::BILL_HEADER);
    for (_, r) in &rows {
        text.push_str(r);
        text.push_str("\r\n");
    }
    text.push_str("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n");
    text.push_str(&format!(
        "`{},`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\r\n",
        rows.len()
    ));
    (
        StatusCode::OK,
        [("content-type", "text/plain;charset=utf-8")],
        text,
    )
        .into_response()
}
