//! The Alipay adapter: `PaymentProvider` over the OpenAPI gateway, and the verifier
//! of async notifies and page-pay returns.
//!
//! Requests are form-encoded and signed RSA2 with the app key over their raw sorted
//! parameters (`sign_type` included). Every synchronous answer is verified with
//! Alipay's public key over the exact `…_response` substring as received before a
//! field of it is believed; an unsigned answer is only ever an error. Notifies and
//! returns are verified over their form-decoded parameters without `sign` and
//! `sign_type`, then checked for our `app_id` (and `seller_id`, when configured).
//! `trade_status`, close and refund answers are mapped exhaustively onto the
//! engine's outcomes. Yuan strings become fen at this edge and nowhere else.

use std::collections::BTreeMap;

use payd_actors::clock::SharedClock;
use payd_actors::model::{Currency, PaymentMethod, PaymentSource, ProviderKind, Timestamp};
use payd_actors::order::machine::PaymentReport;
use payd_actors::provider::{
    CloseOutcome, OpenedTrade, PaymentProvider, ProviderError, ProviderFuture, QueryOutcome,
    RefundOutcome, RefundRequest, RefundStatus, TradeRef, TradeRequest,
};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::wire::{self, SIGN_TYPE};
use crate::providers::executor::{Executor, OutboundRequest};
use crate::providers::rejections::RejectReason;
use crate::providers::wechat::crypto::{MerchantSigner, RsaVerifier};

const PRECREATE: &str = "alipay.trade.precreate";
const PAGE_PAY: &str = "alipay.trade.page.pay";
const QUERY: &str = "alipay.trade.query";
const CLOSE: &str = "alipay.trade.close";
const REFUND: &str = "alipay.trade.refund";
const REFUND_QUERY: &str = "alipay.trade.fastpay.refund.query";
const BILL_URL: &str = "alipay.data.dataservice.bill.downloadurl.query";

/// `code` of a successful call.
const CODE_SUCCESS: &str = "10000";
/// `code` of "service temporarily unavailable": worth trying again.
const CODE_UNAVAILABLE: &str = "20000";
/// Precreate and page.pay open no trade until the buyer scans or logs in; until
/// then query and close answer this.
const TRADE_NOT_EXIST: &str = "ACQ.TRADE_NOT_EXIST";
/// A close refused because of the trade's status (paid, or already closed).
const TRADE_STATUS_ERROR: &str = "ACQ.TRADE_STATUS_ERROR";

pub struct AlipaySettings {
    pub app_id: String,
    pub seller_id: Option<String>,
    pub notify_url: String,
    pub return_url: String,
    pub gateway: String,
}

pub struct Alipay {
    s: AlipaySettings,
    signer: MerchantSigner,
    verifier: RsaVerifier,
    exec: Executor,
    clock: SharedClock,
}

#[derive(Serialize)]
struct PrecreateBiz<'a> {
    out_trade_no: &'a str,
    total_amount: String,
    subject: &'a str,
    time_expire: String,
}

#[derive(Serialize)]
struct PagePayBiz<'a> {
    out_trade_no: &'a str,
    total_amount: String,
    subject: &'a str,
    product_code: &'static str,
    time_expire: String,
}

#[derive(Serialize)]
struct TradeBiz<'a> {
    out_trade_no: &'a str,
}

#[derive(Serialize)]
struct RefundBiz<'a> {
    out_trade_no: &'a str,
    /// An extra payment is refunded by its own Alipay trade number.
    #[serde(skip_serializing_if = "Option::is_none")]
    trade_no: Option<&'a str>,
    refund_amount: String,
    out_request_no: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    refund_reason: &'a str,
}

#[derive(Serialize)]
struct RefundQueryBiz<'a> {
    out_trade_no: &'a str,
    out_request_no: &'a str,
}

/// The common part of every `…_response`.
#[derive(Debug, Deserialize)]
struct Status {
    code: String,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    sub_code: Option<String>,
    #[serde(default)]
    sub_msg: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PrecreateResponse {
    out_trade_no: String,
    qr_code: String,
}

#[derive(Debug, Deserialize)]
struct TradeQueryResponse {
    #[serde(default)]
    out_trade_no: Option<String>,
    #[serde(default)]
    trade_no: Option<String>,
    #[serde(default)]
    trade_status: Option<String>,
    #[serde(default)]
    total_amount: Option<String>,
    #[serde(default)]
    send_pay_date: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RefundResponse {
    #[serde(default)]
    out_trade_no: Option<String>,
    #[serde(default)]
    trade_no: Option<String>,
    #[serde(default)]
    fund_change: Option<String>,
    /// Cumulative over every refund of the trade.
    #[serde(default)]
    refund_fee: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RefundQueryResponse {
    #[serde(default)]
    out_request_no: Option<String>,
    #[serde(default)]
    refund_status: Option<String>,
    #[serde(default)]
    refund_amount: Option<String>,
}

/// A synchronous answer whose signature checked out: its status and the exact
/// signed text, parsed further only on demand.
#[derive(Debug)]
pub struct VerifiedReply {
    status: Status,
    raw: String,
}

impl VerifiedReply {
    fn is_success(&self) -> bool {
        self.status.code == CODE_SUCCESS
    }

    fn sub_code(&self) -> Option<&str> {
        self.status.sub_code.as_deref()
    }

    fn parse<T: DeserializeOwned>(&self, what: &str) -> Result<T, ProviderError> {
        serde_json::from_str(&self.raw)
            .map_err(|e| ProviderError::permanent(format!("Alipay {what} answer: {e}")))
    }

    fn error(&self) -> ProviderError {
        status_error(&self.status)
    }
}

fn status_error(s: &Status) -> ProviderError {
    let sub = s.sub_code.as_deref().unwrap_or("-");
    ProviderError {
        transient: s.code == CODE_UNAVAILABLE
            || sub.ends_with("SYSTEM_ERROR")
            || sub == "isp.unknow-error",
        message: format!(
            "Alipay {} {}: {}",
            s.code,
            sub,
            s.sub_msg.as_deref().unwrap_or(&s.msg)
        ),
    }
}

fn non_empty(v: Option<&String>) -> Option<&str> {
    v.map(String::as_str).filter(|s| !s.is_empty())
}

/// Builds the payment a paid trade proves, from the fields query answers and
/// notifies share. `None` names the missing or malformed field.
fn payment_report(
    trade_no: Option<&str>,
    total_amount: Option<&str>,
    paid_at: Option<&str>,
    source: PaymentSource,
    now: Timestamp,
) -> Result<PaymentReport, &'static str> {
    let transaction_id = trade_no.filter(|s| !s.is_empty()).ok_or("trade_no")?;
    let amount_minor = total_amount
        .and_then(wire::parse_yuan)
        .ok_or("total_amount")?;
    let currency = Currency::parse("CNY").ok_or("currency")?;
    Ok(PaymentReport {
        transaction_id: transaction_id.to_string(),
        amount_minor,
        currency,
        paid_at: paid_at
            .and_then(wire::parse_beijing_wall_time)
            .unwrap_or(now),
        source,
    })
}

/// A verified async notify: its decoded parameters.
#[derive(Debug, Clone)]
pub struct AlipayNotification {
    params: BTreeMap<String, String>,
}

impl AlipayNotification {
    /// A parameter, if present and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        non_empty(self.params.get(key))
    }

    pub fn out_trade_no(&self) -> &str {
        self.get("out_trade_no").unwrap_or_default()
    }

    pub fn trade_status(&self) -> &str {
        self.get("trade_status").unwrap_or_default()
    }

    /// The dedupe key: `notify_id` stays the same across resends of one
    /// notification, and one trade's statuses each have their own.
    pub fn event_id(&self) -> String {
        format!(
            "{}:{}",
            self.get("notify_id").unwrap_or_default(),
            self.trade_status()
        )
    }

    /// Whether it reports a refund (`refund_fee` is present on both the partial
    /// refund's TRADE_SUCCESS and the full refund's TRADE_CLOSED).
    pub fn carries_refund(&self) -> bool {
        self.get("refund_fee").is_some() || self.get("gmt_refund").is_some()
    }

    /// The payment it confirms (TRADE_SUCCESS / TRADE_FINISHED).
    pub fn payment_report(&self, now: Timestamp) -> Result<PaymentReport, RejectReason> {
        payment_report(
            self.get("trade_no"),
            self.get("total_amount"),
            self.get("gmt_payment"),
            PaymentSource::Callback,
            now,
        )
        .map_err(|_| RejectReason::Malformed)
    }
}

impl Alipay {
    pub fn new(
        s: AlipaySettings,
        signer: MerchantSigner,
        verifier: RsaVerifier,
        exec: Executor,
        clock: SharedClock,
    ) -> Self {
        Alipay {
            s,
            signer,
            verifier,
            exec,
            clock,
        }
    }

    pub fn app_id(&self) -> &str {
        &self.s.app_id
    }

    /// The common parameters of a call, in the order the official SDK sends them,
    /// signed. `notify` / `back` add `notify_url` / `return_url`.
    pub fn signed_params(
        &self,
        method: &str,
        biz_content: &str,
        notify: bool,
        back: bool,
    ) -> Result<Vec<(&'static str, String)>, ProviderError> {
        let mut params: Vec<(&'static str, String)> = vec![
            ("app_id", self.s.app_id.clone()),
            ("method", method.to_string()),
            ("format", "JSON".into()),
            ("charset", "utf-8".into()),
            ("sign_type", SIGN_TYPE.into()),
            ("timestamp", wire::beijing_wall_time(self.clock.now())),
            ("version", "1.0".into()),
        ];
        if notify {
            params.push(("notify_url", self.s.notify_url.clone()));
        }
        if back {
            params.push(("return_url", self.s.return_url.clone()));
        }
        params.push(("biz_content", biz_content.to_string()));
        let content = wire::request_sign_content(&params);
        let sign = self
            .signer
            .try_sign_base64(content.as_bytes())
            .map_err(|e| ProviderError::permanent(format!("signing the Alipay request: {e}")))?;
        params.push(("sign", sign));
        Ok(params)
    }

    /// The signed `gateway?…` URL the buyer's browser is sent to for page pay.
    pub fn page_pay_url(&self, request: &TradeRequest) -> Result<String, ProviderError> {
        let biz = PagePayBiz {
            out_trade_no: &request.order_no,
            total_amount: yuan(request.amount_minor)?,
            subject: &request.description,
            product_code: "FAST_INSTANT_TRADE_PAY",
            time_expire: wire::beijing_wall_time(request.expire_at),
        };
        let params = self.signed_params(PAGE_PAY, &to_json(&biz)?, true, true)?;
        let sep = if self.s.gateway.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(format!(
            "{}{sep}{}",
            self.s.gateway,
            wire::form_encode(&params)
        ))
    }

    /// Verifies a synchronous answer over the exact `…_response` substring. An
    /// unsigned or badly signed answer is an error and is never believed.
    pub fn verify_response(
        &self,
        method: &str,
        body: &[u8],
    ) -> Result<VerifiedReply, ProviderError> {
        let bad = |what: String| ProviderError::permanent(format!("Alipay answer: {what}"));
        let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8".into()))?;
        let key = wire::response_key(method);
        let raw = match wire::top_level_value(text, &key).map_err(|e| bad(e.to_string()))? {
            Some(raw) => raw,
            None => wire::top_level_value(text, "error_response")
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad(format!("no {key}")))?,
        };
        let sign = match wire::top_level_value(text, "sign").map_err(|e| bad(e.to_string()))? {
            Some(s) => Some(
                serde_json::from_str::<String>(s)
                    .map_err(|_| bad("sign is not a string".into()))?,
            ),
            None => None,
        };
        let status: Result<Status, _> = serde_json::from_str(raw);
        match sign {
            Some(sign) if self.verifier.verify_base64(raw.as_bytes(), &sign) => {}
            Some(_) => return Err(bad("signature does not verify".into())),
            None => {
                // Alipay leaves some gateway errors unsigned: report, never believe.
                return Err(match status {
                    Ok(s) if s.code != CODE_SUCCESS => {
                        let mut e = status_error(&s);
                        e.message = format!("unsigned answer: {}", e.message);
                        e
                    }
                    _ => bad("unsigned".into()),
                });
            }
        }
        let status = status.map_err(|e| bad(format!("status: {e}")))?;
        Ok(VerifiedReply {
            status,
            raw: raw.to_string(),
        })
    }

    async fn call<B: Serialize>(
        &self,
        op: &'static str,
        method: &'static str,
        biz: &B,
        notify: bool,
    ) -> Result<VerifiedReply, ProviderError> {
        let biz_content = to_json(biz)?;
        let resp = self
            .exec
            .send(op, || {
                // Signed per attempt: the timestamp is part of what is signed.
                let params = self.signed_params(method, &biz_content, notify, false)?;
                Ok(OutboundRequest {
                    method: Method::POST,
                    url: self.s.gateway.clone(),
                    headers: vec![(
                        "content-type",
                        "application/x-www-form-urlencoded;charset=utf-8".into(),
                    )],
                    body: Some(wire::form_encode(&params).into_bytes()),
                })
            })
            .await?;
        if resp.status != 200 {
            return Err(ProviderError::permanent(format!(
                "Alipay answered HTTP {}",
                resp.status
            )));
        }
        self.verify_response(method, &resp.body)
    }

    /// Maps a verified `alipay.trade.query` answer onto the engine's outcome.
    fn query_outcome(
        &self,
        order_no: &str,
        reply: &VerifiedReply,
    ) -> Result<QueryOutcome, ProviderError> {
        if !reply.is_success() {
            return match reply.sub_code() {
                // Nobody has scanned the code yet: there is no trade to pay.
                Some(TRADE_NOT_EXIST) => Ok(QueryOutcome::NotPaid),
                _ => Err(reply.error()),
            };
        }
        let t: TradeQueryResponse = reply.parse("query")?;
        if t.out_trade_no.as_deref() != Some(order_no) {
            return Err(ProviderError::permanent(
                "Alipay query answered for another order",
            ));
        }
        Ok(match t.trade_status.as_deref() {
            Some("WAIT_BUYER_PAY") => QueryOutcome::NotPaid,
            // FINISHED: paid, and past the refund window.
            Some("TRADE_SUCCESS" | "TRADE_FINISHED") => QueryOutcome::Paid(
                payment_report(
                    t.trade_no.as_deref(),
                    t.total_amount.as_deref(),
                    t.send_pay_date.as_deref(),
                    PaymentSource::Query,
                    self.clock.now(),
                )
                .map_err(|field| {
                    ProviderError::permanent(format!("paid Alipay trade without a valid {field}"))
                })?,
            ),
            Some("TRADE_CLOSED") => QueryOutcome::Closed,
            other => {
                return Err(ProviderError::permanent(format!(
                    "unknown Alipay trade_status {other:?}"
                )));
            }
        })
    }

    async fn query_trade(&self, order_no: &str) -> Result<QueryOutcome, ProviderError> {
        let reply = self
            .call(
                "query",
                QUERY,
                &TradeBiz {
                    out_trade_no: order_no,
                },
                false,
            )
            .await?;
        self.query_outcome(order_no, &reply)
    }

    /// Checks the signature and identity of notify or return parameters.
    fn verify_signed_params(&self, params: &BTreeMap<String, String>) -> Result<(), RejectReason> {
        let Some(sign) = non_empty(params.get("sign")) else {
            return Err(RejectReason::MissingSignature);
        };
        let content = wire::notify_verify_content(params);
        if !self.verifier.verify_base64(content.as_bytes(), sign) {
            return Err(RejectReason::BadSignature);
        }
        if non_empty(params.get("app_id")) != Some(self.s.app_id.as_str()) {
            tracing::warn!(field = "app_id", "Alipay callback for another app");
            return Err(RejectReason::WrongMerchant);
        }
        if let Some(seller) = &self.s.seller_id
            && non_empty(params.get("seller_id")) != Some(seller.as_str())
        {
            tracing::warn!(field = "seller_id", "Alipay callback for another seller");
            return Err(RejectReason::WrongMerchant);
        }
        Ok(())
    }

    /// Verifies an async notify over its form-decoded parameters.
    pub fn verify_notify(&self, body: &[u8]) -> Result<AlipayNotification, RejectReason> {
        let params = wire::form_decode_map(body).map_err(|_| RejectReason::Malformed)?;
        self.verify_signed_params(&params)?;
        let n = AlipayNotification { params };
        if n.get("notify_id").is_none()
            || n.get("out_trade_no").is_none()
            || n.get("trade_status").is_none()
        {
            return Err(RejectReason::Malformed);
        }
        Ok(n)
    }

    /// Verifies the parameters Alipay appends to `return_url` after page pay, and
    /// returns the order number they name.
    pub fn verify_return(&self, query: &str) -> Result<String, RejectReason> {
        let params =
            wire::form_decode_map(query.as_bytes()).map_err(|_| RejectReason::Malformed)?;
        self.verify_signed_params(&params)?;
        non_empty(params.get("out_trade_no"))
            .map(str::to_string)
            .ok_or(RejectReason::Malformed)
    }
}

#[derive(Serialize)]
struct BillBiz<'a> {
    bill_type: &'static str,
    bill_date: &'a str,
}

#[derive(Debug, Deserialize)]
struct BillUrlResponse {
    bill_download_url: String,
}

impl Alipay {
    /// The trade bill of a Beijing day: the signed, verified answer of
    /// `alipay.data.dataservice.bill.downloadurl.query` names a short-lived URL (its
    /// own token authorises the download), and the zip behind it is read by
    /// [`super::bill::parse_bill_zip`] (the zip's CRC-32s are its integrity check:
    /// Alipay publishes no hash).
    pub async fn trade_bill(
        &self,
        day: crate::providers::statement::StatementDay,
    ) -> Result<payd_actors::reconcile::Statement, crate::providers::statement::StatementError>
    {
        use crate::providers::statement::StatementError;
        let date = day.iso();
        let reply = self
            .call(
                "bill",
                BILL_URL,
                &BillBiz {
                    bill_type: "trade",
                    bill_date: &date,
                },
                false,
            )
            .await
            .map_err(|e| StatementError::Download(e.message))?;
        if !reply.is_success() {
            // isp.bill_not_exist: no trade that day, or the bill is not ready yet.
            return Err(StatementError::Download(reply.error().message));
        }
        let url: BillUrlResponse = reply
            .parse("bill")
            .map_err(|e| StatementError::malformed(e.message))?;
        if !(url.bill_download_url.starts_with("https://")
            || url.bill_download_url.starts_with("http://"))
        {
            return Err(StatementError::malformed("the bill URL is not an HTTP URL"));
        }
        let bytes = crate::providers::statement::download(&self.exec, "bill_download", || {
            Ok(OutboundRequest {
                method: Method::GET,
                url: url.bill_download_url.clone(),
                headers: vec![],
                body: None,
            })
        })
        .await?;
        super::bill::parse_bill_zip(&bytes)
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String, ProviderError> {
    serde_json::to_string(v).map_err(|e| ProviderError::permanent(e.to_string()))
}

fn yuan(fen: i64) -> Result<String, ProviderError> {
    if fen <= 0 {
        return Err(ProviderError::permanent("Alipay amounts must be positive"));
    }
    wire::format_yuan(fen).ok_or_else(|| ProviderError::permanent("amount has no yuan form"))
}

fn cny_only(currency: &Currency) -> Result<(), ProviderError> {
    if currency.as_str() == "CNY" {
        Ok(())
    } else {
        Err(ProviderError::permanent("Alipay takes CNY only"))
    }
}

impl PaymentProvider for Alipay {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Alipay
    }

    fn create(&self, request: TradeRequest) -> ProviderFuture<'_, OpenedTrade> {
        Box::pin(async move {
            cny_only(&request.currency)?;
            match request.method {
                PaymentMethod::AlipayQr => {
                    // Asking again for the same trade returns its code again.
                    let biz = PrecreateBiz {
                        out_trade_no: &request.order_no,
                        total_amount: yuan(request.amount_minor)?,
                        subject: &request.description,
                        // Otherwise Alipay keeps the trade payable for its default window.
                        time_expire: wire::beijing_wall_time(request.expire_at),
                    };
                    let reply = self.call("create", PRECREATE, &biz, true).await?;
                    if !reply.is_success() {
                        return Err(reply.error());
                    }
                    let r: PrecreateResponse = reply.parse("precreate")?;
                    if r.out_trade_no != request.order_no || r.qr_code.is_empty() {
                        return Err(ProviderError::permanent(
                            "Alipay precreate answered for another order",
                        ));
                    }
                    Ok(OpenedTrade {
                        qr_code_url: Some(r.qr_code),
                        payment_url: None,
                        trade_ref: None,
                    })
                }
                // No call: the buyer's browser carries the signed request to Alipay.
                PaymentMethod::AlipayPage => Ok(OpenedTrade {
                    qr_code_url: None,
                    payment_url: Some(self.page_pay_url(&request)?),
                    trade_ref: None,
                }),
                other @ (PaymentMethod::WechatNative
                | PaymentMethod::StripeCheckout
                | PaymentMethod::Mock) => Err(ProviderError::permanent(format!(
                    "Alipay does not serve {}",
                    other.as_str()
                ))),
            }
        })
    }

    fn query(&self, trade: TradeRef) -> ProviderFuture<'_, QueryOutcome> {
        Box::pin(async move { self.query_trade(&trade.order_no).await })
    }

    fn close(&self, trade: TradeRef) -> ProviderFuture<'_, CloseOutcome> {
        Box::pin(async move {
            let reply = self
                .call(
                    "close",
                    CLOSE,
                    &TradeBiz {
                        out_trade_no: &trade.order_no,
                    },
                    false,
                )
                .await?;
            if reply.is_success() {
                return Ok(CloseOutcome::Closed);
            }
            match reply.sub_code() {
                // Never scanned: no trade exists, and none can be paid any more
                // once the order's time_expire passes.
                Some(TRADE_NOT_EXIST) => Ok(CloseOutcome::Closed),
                // Paid, or closed already: the trade's status decides which.
                Some(TRADE_STATUS_ERROR) => match self.query_trade(&trade.order_no).await? {
                    QueryOutcome::Paid(_) => Ok(CloseOutcome::AlreadyPaid),
                    QueryOutcome::Closed => Ok(CloseOutcome::Closed),
                    QueryOutcome::NotPaid
                    | QueryOutcome::Failed { .. }
                    | QueryOutcome::Error { .. } => Err(reply.error()),
                },
                _ => Err(reply.error()),
            }
        })
    }

    fn refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        Box::pin(async move {
            cny_only(&request.trade.currency)?;
            let biz = RefundBiz {
                out_trade_no: &request.trade.order_no,
                trade_no: request.transaction_id.as_deref(),
                refund_amount: yuan(request.amount_minor)?,
                // The idempotency key: the same refund_no on every retry.
                out_request_no: &request.refund_no,
                refund_reason: &request.reason,
            };
            let reply = self.call("refund", REFUND, &biz, false).await?;
            if !reply.is_success() {
                return Err(reply.error());
            }
            let r: RefundResponse = reply.parse("refund")?;
            if r.out_trade_no
                .as_deref()
                .is_some_and(|n| n != request.trade.order_no)
            {
                return Err(ProviderError::permanent(
                    "Alipay refund answered for another order",
                ));
            }
            if let Some(fee) = non_empty(r.refund_fee.as_ref()) {
                match wire::parse_yuan(fee) {
                    Some(total) if total >= request.amount_minor => {}
                    _ => {
                        return Err(ProviderError::permanent(
                            "Alipay refund answered with a refund_fee below the refund",
                        ));
                    }
                }
            }
            let status = match r.fund_change.as_deref() {
                // Money moved now.
                Some("Y") => RefundStatus::Succeeded,
                // Accepted (or a repeat of an earlier request): the refund query says
                // whether it is done.
                Some("N") | None => RefundStatus::Processing,
                Some(other) => {
                    return Err(ProviderError::permanent(format!(
                        "unknown Alipay fund_change {other:?}"
                    )));
                }
            };
            // Alipay gives a refund no id of its own: it is (trade_no, out_request_no).
            Ok(RefundOutcome {
                status,
                provider_refund_id: r.trade_no.filter(|s| !s.is_empty()),
            })
        })
    }

    fn query_refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        Box::pin(async move {
            let biz = RefundQueryBiz {
                out_trade_no: &request.trade.order_no,
                out_request_no: &request.refund_no,
            };
            let reply = self.call("refund_query", REFUND_QUERY, &biz, false).await?;
            if !reply.is_success() {
                return Err(reply.error());
            }
            let r: RefundQueryResponse = reply.parse("refund query")?;
            if non_empty(r.out_request_no.as_ref()).is_some_and(|n| n != request.refund_no) {
                return Err(ProviderError::permanent(
                    "Alipay refund query answered for another refund",
                ));
            }
            let amount = non_empty(r.refund_amount.as_ref());
            if let Some(a) = amount
                && wire::parse_yuan(a) != Some(request.amount_minor)
            {
                return Err(ProviderError::permanent(
                    "Alipay refund query answered with another amount",
                ));
            }
            let status = match (non_empty(r.refund_status.as_ref()), amount) {
                (Some("REFUND_SUCCESS"), _) => RefundStatus::Succeeded,
                // Older answers carry no status: a returned amount means done.
                (None, Some(_)) => RefundStatus::Succeeded,
                // Alipay knows no such refund: nothing moved. It may be sent again
                // with the same out_request_no.
                (None, None) => RefundStatus::Failed {
                    reason: "not_refunded".into(),
                },
                (Some(other), _) => {
                    return Err(ProviderError::permanent(format!(
                        "unknown Alipay refund_status {other:?}"
                    )));
                }
            };
            Ok(RefundOutcome {
                status,
                provider_refund_id: None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use payd_actors::clock::Clock;
    use serde_json::Value;

    use super::*;
    use crate::providers::executor::ExecutorConfig;

    struct FixedClock(Timestamp);
    impl Clock for FixedClock {
        fn now(&self) -> Timestamp {
            self.0
        }
        fn monotonic_ms(&self) -> i64 {
            0
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/vectors")
                .join(name),
        )
        .expect("fixture")
    }

    fn vectors() -> Value {
        serde_json::from_slice(&fixture("alipay.json")).expect("alipay.json")
    }

    fn s(v: &Value) -> &str {
        v.as_str().expect("string")
    }

    /// 2024-01-01 12:00:00 in Beijing.
    const VECTOR_TIME: Timestamp = Timestamp(1_704_081_600_000);

    fn alipay(seller_id: Option<&str>) -> Alipay {
        Alipay::new(
            AlipaySettings {
                app_id: "2021000000000001".into(),
                seller_id: seller_id.map(str::to_string),
                notify_url: "https://merchant.example.com/alipay/notify".into(),
                return_url: "https://merchant.example.com/return".into(),
                gateway: "https://openapi.alipay.com/gateway.do".into(),
            },
            MerchantSigner::from_pem(&fixture("merchant_rsa2048_private_pkcs1.pem")).unwrap(),
            RsaVerifier::from_public_key_pem(&fixture("provider_rsa2048_public.pem")).unwrap(),
            Executor::new(
                "alipay",
                reqwest::Client::new(),
                ExecutorConfig::new(std::time::Duration::from_secs(1), 1),
            ),
            Arc::new(FixedClock(VECTOR_TIME)),
        )
    }

    #[test]
    fn precreate_request_reproduces_the_sdk_sign_content_signature_and_form_body() {
        let v = &vectors()["request_precreate"];
        let a = alipay(None);
        let params = a
            .signed_params(PRECREATE, s(&v["params"]["biz_content"]), true, false)
            .unwrap();
        // The same parameters as the SDK sent, value for value.
        for (k, val) in v["params"].as_object().unwrap() {
            let ours = params.iter().find(|(p, _)| p == k).map(|(_, x)| x.as_str());
            assert_eq!(ours, Some(s(val)), "{k}");
        }
        assert_eq!(wire::request_sign_content(&params), s(&v["sign_content"]));
        let sign = &params.iter().find(|(k, _)| *k == "sign").unwrap().1;
        assert_eq!(sign, s(&v["sign"]));
        assert_eq!(wire::form_encode(&params), s(&v["form_body"]));
    }

    #[test]
    fn page_pay_redirect_url_reproduces_the_sdk_url() {
        let v = &vectors()["request_page_pay"];
        let url = s(&v["redirect_url"]);
        let (gateway, query) = url.split_once('?').unwrap();
        // The SDK's parameters, decoded, in its order.
        let params = wire::form_decode(query.as_bytes()).unwrap();
        assert_eq!(wire::request_sign_content(&params), s(&v["sign_content"]));
        let a = alipay(None);
        let unsigned: Vec<_> = params.iter().filter(|(k, _)| k != "sign").collect();
        let content = wire::request_sign_content(
            &unsigned
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(a.signer.sign_base64(content.as_bytes()), s(&v["sign"]));
        // Re-encoded in the same order, byte for byte the SDK's URL.
        assert_eq!(format!("{gateway}?{}", wire::form_encode(&params)), url);
    }

    #[test]
    fn our_page_pay_url_is_signed_over_its_own_parameters() {
        let a = alipay(None);
        let url = a
            .page_pay_url(&TradeRequest {
                order_no: "PD261122203315K3M9Q2XA7F4HD1RN".into(),
                method: PaymentMethod::AlipayPage,
                amount_minor: 8888,
                currency: Currency::parse("CNY").unwrap(),
                description: "Test order".into(),
                expire_at: VECTOR_TIME.plus_ms(30 * 60 * 1000),
                client_ip: None,
            })
            .unwrap();
        let (gateway, query) = url.split_once('?').unwrap();
        assert_eq!(gateway, "https://openapi.alipay.com/gateway.do");
        let params: BTreeMap<_, _> = wire::form_decode(query.as_bytes())
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(params["method"], PAGE_PAY);
        assert_eq!(params["return_url"], "https://merchant.example.com/return");
        assert_eq!(params["timestamp"], "2024-01-01 12:00:00");
        let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
        assert_eq!(biz["total_amount"], "88.88");
        assert_eq!(biz["product_code"], "FAST_INSTANT_TRADE_PAY");
        assert_eq!(biz["time_expire"], "2024-01-01 12:30:00");
        let content = wire::request_sign_content(&params.iter().collect::<Vec<_>>());
        let merchant =
            RsaVerifier::from_public_key_pem(&fixture("merchant_rsa2048_public.pem")).unwrap();
        assert!(merchant.verify_base64(content.as_bytes(), &params["sign"]));
    }

    #[test]
    fn precreate_response_verifies_over_the_exact_substring() {
        let v = &vectors()["response_precreate"];
        let a = alipay(None);
        let raw = s(&v["raw_body"]);
        let key = wire::response_key(PRECREATE);
        assert_eq!(
            wire::top_level_value(raw, &key).unwrap(),
            Some(s(&v["signed_substring"]))
        );
        let reply = a.verify_response(PRECREATE, raw.as_bytes()).unwrap();
        assert!(reply.is_success());
        let r: PrecreateResponse = reply.parse("precreate").unwrap();
        assert_eq!(r.qr_code, "https://qr.alipay.com/bax00000000000000000000");
        // Re-serializing would turn `\/` into `/` and break the signature: tampering
        // with one byte of the substring must fail.
        let tampered = raw.replacen("bax0", "bax1", 1);
        assert!(a.verify_response(PRECREATE, tampered.as_bytes()).is_err());
        let unescaped = raw.replace("\\/", "/");
        assert!(a.verify_response(PRECREATE, unescaped.as_bytes()).is_err());
        // Unsigned success is never believed.
        let unsigned = format!("{{\"{key}\":{}}}", s(&v["signed_substring"]));
        assert!(a.verify_response(PRECREATE, unsigned.as_bytes()).is_err());
        // Signed by our own key instead of Alipay's: refused.
        let forged = format!(
            "{{\"{key}\":{sub},\"sign\":\"{sig}\"}}",
            sub = s(&v["signed_substring"]),
            sig = a.signer.sign_base64(s(&v["signed_substring"]).as_bytes())
        );
        assert!(a.verify_response(PRECREATE, forged.as_bytes()).is_err());
    }

    #[test]
    fn async_notify_verifies_over_decoded_params_without_sign_and_sign_type() {
        let v = &vectors()["async_notify"];
        let a = alipay(Some("2088000000000001"));
        let raw = s(&v["raw_body"]);
        let params = wire::form_decode_map(raw.as_bytes()).unwrap();
        let decoded: BTreeMap<String, String> =
            serde_json::from_value(v["decoded_params"].clone()).unwrap();
        assert_eq!(params, decoded);
        assert_eq!(
            wire::notify_verify_content(&params),
            s(&v["verify_content"])
        );
        let n = a.verify_notify(raw.as_bytes()).unwrap();
        assert_eq!(n.out_trade_no(), "ORDER20240001");
        assert_eq!(
            n.event_id(),
            "2024010100222120002000000000000001:TRADE_SUCCESS"
        );
        assert!(!n.carries_refund());
        let report = n.payment_report(VECTOR_TIME).unwrap();
        assert_eq!(report.amount_minor, 8888);
        assert_eq!(report.transaction_id, "2024010122001400000000000001");
        assert_eq!(report.currency.as_str(), "CNY");
        // gmt_payment 2024-01-01 12:00:02 Beijing.
        assert_eq!(report.paid_at, VECTOR_TIME.plus_ms(2000));

        let tampered = raw.replacen("total_amount=88.88", "total_amount=88.89", 1);
        assert_eq!(
            a.verify_notify(tampered.as_bytes()).unwrap_err(),
            RejectReason::BadSignature
        );
        let unsigned: String = raw.split("&sign=").next().unwrap().to_string();
        assert_eq!(
            a.verify_notify(unsigned.as_bytes()).unwrap_err(),
            RejectReason::MissingSignature
        );
        assert_eq!(
            alipay(Some("2088000000000999"))
                .verify_notify(raw.as_bytes())
                .unwrap_err(),
            RejectReason::WrongMerchant
        );
        assert_eq!(
            a.verify_notify(b"a=%zz").unwrap_err(),
            RejectReason::Malformed
        );
    }

    #[test]
    fn trade_status_maps_exhaustively() {
        let a = alipay(None);
        let reply = |body: &str| VerifiedReply {
            status: serde_json::from_str(body).unwrap(),
            raw: body.to_string(),
        };
        let no = "ORDER20240001";
        let paid = reply(
            r#"{"code":"10000","msg":"Success","out_trade_no":"ORDER20240001","trade_no":"T1","trade_status":"TRADE_SUCCESS","total_amount":"9.90","send_pay_date":"2024-01-01 12:00:02"}"#,
        );
        match a.query_outcome(no, &paid).unwrap() {
            QueryOutcome::Paid(r) => {
                assert_eq!((r.amount_minor, r.transaction_id.as_str()), (990, "T1"));
                assert_eq!(r.source, PaymentSource::Query);
            }
            other => panic!("{other:?}"),
        }
        let status = |st: &str| {
            reply(&format!(
                r#"{{"code":"10000","msg":"Success","out_trade_no":"{no}","trade_no":"T1","trade_status":"{st}","total_amount":"9.90"}}"#
            ))
        };
        assert_eq!(
            a.query_outcome(no, &status("WAIT_BUYER_PAY")).unwrap(),
            QueryOutcome::NotPaid
        );
        assert!(matches!(
            a.query_outcome(no, &status("TRADE_FINISHED")).unwrap(),
            QueryOutcome::Paid(_)
        ));
        assert_eq!(
            a.query_outcome(no, &status("TRADE_CLOSED")).unwrap(),
            QueryOutcome::Closed
        );
        assert!(a.query_outcome(no, &status("SOMETHING_NEW")).is_err());
        assert!(a.query_outcome("OTHER", &status("TRADE_CLOSED")).is_err());
        let not_exist = reply(
            r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"no trade"}"#,
        );
        assert_eq!(
            a.query_outcome(no, &not_exist).unwrap(),
            QueryOutcome::NotPaid
        );
        let busy = reply(
            r#"{"code":"20000","msg":"Service Currently Unavailable","sub_code":"isp.unknow-error"}"#,
        );
        assert!(a.query_outcome(no, &busy).unwrap_err().transient);
        let bad_amount = reply(&format!(
            r#"{{"code":"10000","msg":"Success","out_trade_no":"{no}","trade_no":"T1","trade_status":"TRADE_SUCCESS","total_amount":"1e3"}}"#
        ));
        assert!(a.query_outcome(no, &bad_amount).is_err());
    }
}
