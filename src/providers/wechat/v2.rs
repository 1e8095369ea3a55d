//! WeChat Pay API v2 (legacy): XML over HTTPS, signed with the merchant's API key
//! (MD5 or HMAC-SHA256 over the sorted fields). Native QR via `unifiedorder`,
//! `orderquery`, `closeorder` (an `ORDERPAID` answer means the trade was paid),
//! refunds over mutual TLS with the merchant certificate, XML notifications, and
//! refund notifications whose `req_info` is AES-256-ECB encrypted with the MD5 of
//! the API key. Times are Beijing wall time (`yyyyMMddHHmmss`, fixed +08:00).

use std::collections::BTreeMap;

use payd_actors::clock::SharedClock;
use payd_actors::model::{Currency, PaymentSource, ProviderKind, Timestamp};
use payd_actors::order::machine::PaymentReport;
use payd_actors::provider::{
    CloseOutcome, OpenedTrade, PaymentProvider, ProviderError, ProviderFuture, QueryOutcome,
    RefundOutcome, RefundRequest, RefundStatus, TradeRef, TradeRequest,
};
use reqwest::Method;

use super::crypto::{self, V2SignType};
use super::xml::{parse_xml, to_xml};
use crate::providers::executor::{Executor, InboundResponse, OutboundRequest};
use crate::providers::rejections::RejectReason;

/// Requests are signed with HMAC-SHA256, the stronger of v2's two sign types.
const SIGN_TYPE: V2SignType = V2SignType::HmacSha256;

pub struct WechatV2Settings {
    pub appid: String,
    pub mch_id: String,
    pub api_key: String,
    pub notify_url: String,
    pub refund_notify_url: String,
    pub base_url: String,
}

pub struct WechatV2 {
    s: WechatV2Settings,
    exec: Executor,
    /// Refunds need mutual TLS with the merchant certificate; absent without one.
    refund_exec: Option<Executor>,
    clock: SharedClock,
}

type Fields = BTreeMap<String, String>;

/// What a verified v2 notification says.
#[derive(Debug)]
pub enum V2Notification {
    Payment {
        event_id: String,
        order_no: String,
        /// `None` when the notification reports a failure (`result_code` FAIL).
        report: Option<PaymentReport>,
    },
    Refund {
        event_id: String,
        order_no: String,
        out_refund_no: String,
        refund_status: String,
    },
}

/// Beijing wall time as v2 writes it: `yyyyMMddHHmmss`.
pub fn beijing_compact(t: Timestamp) -> String {
    super::beijing_rfc3339(t)
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit())
        .collect()
}

fn parse_beijing_compact(s: &str) -> Option<Timestamp> {
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}+08:00",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[8..10],
        &s[10..12],
        &s[12..14]
    );
    super::parse_rfc3339(&rfc)
}

fn field<'a>(f: &'a Fields, k: &str) -> Option<&'a str> {
    f.get(k).map(String::as_str).filter(|v| !v.is_empty())
}

impl WechatV2 {
    pub fn new(
        s: WechatV2Settings,
        exec: Executor,
        refund_exec: Option<Executor>,
        clock: SharedClock,
    ) -> Self {
        WechatV2 {
            s,
            exec,
            refund_exec,
            clock,
        }
    }

    pub fn mch_id(&self) -> &str {
        &self.s.mch_id
    }

    pub fn refunds_enabled(&self) -> bool {
        self.refund_exec.is_some()
    }

    fn base_fields(&self) -> Fields {
        let mut f = Fields::new();
        f.insert("appid".into(), self.s.appid.clone());
        f.insert("mch_id".into(), self.s.mch_id.clone());
        f.insert("sign_type".into(), SIGN_TYPE.as_str().into());
        f
    }

    /// Signs `fields` afresh (new nonce) for each attempt.
    fn signed(
        &self,
        path: &str,
        fields: Fields,
    ) -> impl Fn() -> Result<OutboundRequest, ProviderError> + '_ {
        let url = format!("{}{}", self.s.base_url, path);
        move || {
            let mut f = fields.clone();
            f.insert("nonce_str".into(), crypto::nonce_str());
            let sign = crypto::v2_sign(&f, &self.s.api_key, SIGN_TYPE);
            f.insert("sign".into(), sign);
            Ok(OutboundRequest {
                method: Method::POST,
                url: url.clone(),
                headers: vec![("content-type", "text/xml; charset=utf-8".to_string())],
                body: Some(to_xml(&f).into_bytes()),
            })
        }
    }

    /// The trade bill (`bill_type=ALL`) of a Beijing day from `/pay/downloadbill`:
    /// the answer is the bill text itself — the same format as API v3's — or, when
    /// there is none, an XML `return_code` FAIL naming why. API v2 publishes no hash
    /// of the file: its summary line's count is what shows a cut file.
    pub async fn trade_bill(
        &self,
        day: crate::providers::statement::StatementDay,
    ) -> Result<payd_actors::reconcile::Statement, crate::providers::statement::StatementError>
    {
        use crate::providers::statement::StatementError;
        let mut fields = self.base_fields();
        fields.insert("bill_date".into(), day.compact());
        fields.insert("bill_type".into(), "ALL".into());
        let body = crate::providers::statement::download(
            &self.exec,
            "bill_download",
            self.signed("/pay/downloadbill", fields),
        )
        .await?;
        if body.trim_ascii_start().starts_with(b"<xml>") {
            let f = parse_xml(&body).map_err(|e| {
                StatementError::malformed(format!("WeChat v2 bill answer is not valid XML: {e}"))
            })?;
            return Err(StatementError::Download(format!(
                "WeChat v2 downloadbill: {} ({})",
                field(&f, "return_msg").unwrap_or("no message"),
                field(&f, "error_code").unwrap_or("-")
            )));
        }
        let text = std::str::from_utf8(&body)
            .map_err(|_| StatementError::malformed("the bill is not UTF-8 text"))?;
        super::bill::parse_trade_bill(text)
    }

    /// Sends, checks the transport result, verifies the answer's signature, and hands
    /// back its fields (with `result_code` / `err_code` for the caller to read).
    async fn call(
        &self,
        op: &'static str,
        path: &str,
        fields: Fields,
        mtls: bool,
    ) -> Result<Fields, ProviderError> {
        let exec = if mtls {
            self.refund_exec.as_ref().ok_or_else(|| {
                ProviderError::permanent(
                    "WeChat v2 refunds need the merchant certificate (wechat.cert_path)",
                )
            })?
        } else {
            &self.exec
        };
        let resp: InboundResponse = exec.send(op, self.signed(path, fields)).await?;
        if resp.status != 200 {
            return Err(ProviderError {
                transient: resp.status >= 500,
                message: format!("WeChat v2 answered HTTP {}", resp.status),
            });
        }
        let f = parse_xml(&resp.body).map_err(|e| {
            ProviderError::permanent(format!("WeChat v2 answer is not valid XML: {e}"))
        })?;
        if field(&f, "return_code") != Some("SUCCESS") {
            return Err(ProviderError::transient(format!(
                "WeChat v2 {op} failed: {}",
                field(&f, "return_msg").unwrap_or("no message")
            )));
        }
        if !crypto::v2_verify(&f, &self.s.api_key, Some(SIGN_TYPE)) {
            return Err(ProviderError::permanent(format!(
                "WeChat v2 {op} answer failed verification"
            )));
        }
        if field(&f, "appid") != Some(self.s.appid.as_str())
            || field(&f, "mch_id") != Some(self.s.mch_id.as_str())
        {
            return Err(ProviderError::permanent(
                "WeChat v2 answer of another merchant",
            ));
        }
        Ok(f)
    }

    fn report(&self, f: &Fields, source: PaymentSource) -> Result<PaymentReport, ProviderError> {
        let transaction_id = field(f, "transaction_id")
            .ok_or_else(|| ProviderError::permanent("paid trade without transaction_id"))?
            .to_string();
        let amount_minor: i64 = field(f, "total_fee")
            .and_then(|v| v.parse().ok())
            .filter(|v: &i64| *v > 0)
            .ok_or_else(|| ProviderError::permanent("paid trade without a valid total_fee"))?;
        let currency = Currency::parse(field(f, "fee_type").unwrap_or("CNY"))
            .ok_or_else(|| ProviderError::permanent("bad fee_type"))?;
        let paid_at = field(f, "time_end")
            .and_then(parse_beijing_compact)
            .unwrap_or_else(|| self.clock.now());
        Ok(PaymentReport {
            transaction_id,
            amount_minor,
            currency,
            paid_at,
            source,
        })
    }

    /// Verifies a notification (payment: signature; refund: `req_info` decrypts with
    /// our key) and that it is addressed to us.
    pub fn verify_notify(&self, body: &[u8]) -> Result<V2Notification, RejectReason> {
        let f = parse_xml(body).map_err(|e| match e {
            super::xml::XmlError::TooLarge => RejectReason::TooLarge,
            _ => RejectReason::Malformed,
        })?;
        if let Some(req_info) = field(&f, "req_info") {
            if field(&f, "appid") != Some(self.s.appid.as_str())
                || field(&f, "mch_id") != Some(self.s.mch_id.as_str())
            {
                return Err(RejectReason::WrongMerchant);
            }
            let plain = crypto::v2_decrypt_req_info(req_info, &self.s.api_key)
                .map_err(|_| RejectReason::Undecryptable)?;
            let inner = parse_xml(plain.as_bytes()).map_err(|_| RejectReason::Malformed)?;
            let (Some(order_no), Some(out_refund_no), Some(status)) = (
                field(&inner, "out_trade_no"),
                field(&inner, "out_refund_no"),
                field(&inner, "refund_status"),
            ) else {
                return Err(RejectReason::Malformed);
            };
            return Ok(V2Notification::Refund {
                event_id: format!("refund:{out_refund_no}:{status}"),
                order_no: order_no.to_string(),
                out_refund_no: out_refund_no.to_string(),
                refund_status: status.to_string(),
            });
        }
        if field(&f, "sign").is_none() {
            return Err(RejectReason::MissingSignature);
        }
        // Notifications carry no sign_type even when the order was signed with
        // HMAC-SHA256; accept the type we sign with, or MD5.
        if !crypto::v2_verify(&f, &self.s.api_key, Some(SIGN_TYPE))
            && !crypto::v2_verify(&f, &self.s.api_key, Some(V2SignType::Md5))
        {
            return Err(RejectReason::BadSignature);
        }
        if field(&f, "appid") != Some(self.s.appid.as_str())
            || field(&f, "mch_id") != Some(self.s.mch_id.as_str())
        {
            return Err(RejectReason::WrongMerchant);
        }
        let order_no = field(&f, "out_trade_no")
            .ok_or(RejectReason::Malformed)?
            .to_string();
        let paid = field(&f, "return_code") == Some("SUCCESS")
            && field(&f, "result_code") == Some("SUCCESS");
        let report = if paid {
            Some(
                self.report(&f, PaymentSource::Callback)
                    .map_err(|_| RejectReason::Malformed)?,
            )
        } else {
            None
        };
        let event_id = match &report {
            Some(r) => format!("pay:{}", r.transaction_id),
            None => format!(
                "payfail:{order_no}:{}",
                field(&f, "nonce_str").unwrap_or("")
            ),
        };
        Ok(V2Notification::Payment {
            event_id,
            order_no,
            report,
        })
    }
}

/// The XML answers v2 expects to a notification.
pub fn notify_reply(ok: bool, message: &str) -> String {
    let mut f = Fields::new();
    f.insert(
        "return_code".into(),
        if ok { "SUCCESS" } else { "FAIL" }.into(),
    );
    f.insert("return_msg".into(), message.into());
    to_xml(&f)
}

fn refund_status(status: Option<&str>) -> Result<RefundStatus, ProviderError> {
    Ok(match status {
        Some("SUCCESS") => RefundStatus::Succeeded,
        Some("PROCESSING") => RefundStatus::Processing,
        Some(s @ ("REFUNDCLOSE" | "CHANGE")) => RefundStatus::Failed {
            reason: s.to_ascii_lowercase(),
        },
        other => {
            return Err(ProviderError::permanent(format!(
                "unknown refund_status {other:?}"
            )));
        }
    })
}

fn business_error(f: &Fields) -> ProviderError {
    let code = field(f, "err_code").unwrap_or("UNKNOWN");
    ProviderError {
        transient: matches!(
            code,
            "SYSTEMERROR" | "BIZERR_NEED_RETRY" | "FREQUENCY_LIMITED"
        ),
        message: format!(
            "WeChat v2 {code}: {}",
            field(f, "err_code_des").unwrap_or("")
        ),
    }
}

impl PaymentProvider for WechatV2 {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WechatV2
    }

    fn create(&self, request: TradeRequest) -> ProviderFuture<'_, OpenedTrade> {
        Box::pin(async move {
            if request.currency.as_str() != "CNY" {
                return Err(ProviderError::permanent("WeChat Pay takes CNY only"));
            }
            let mut f = self.base_fields();
            f.insert(
                "body".into(),
                request.description.chars().take(40).collect(),
            );
            f.insert("out_trade_no".into(), request.order_no.clone());
            f.insert("total_fee".into(), request.amount_minor.to_string());
            f.insert(
                "spbill_create_ip".into(),
                request
                    .client_ip
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1".into()),
            );
            f.insert("notify_url".into(), self.s.notify_url.clone());
            f.insert("trade_type".into(), "NATIVE".into());
            f.insert("product_id".into(), request.order_no.clone());
            f.insert("time_start".into(), beijing_compact(self.clock.now()));
            f.insert("time_expire".into(), beijing_compact(request.expire_at));
            let r = self.call("create", "/pay/unifiedorder", f, false).await?;
            if field(&r, "result_code") != Some("SUCCESS") {
                return Err(business_error(&r));
            }
            let code_url = field(&r, "code_url").ok_or_else(|| {
                ProviderError::permanent("unifiedorder answered without code_url")
            })?;
            Ok(OpenedTrade {
                qr_code_url: Some(code_url.to_string()),
                payment_url: None,
                trade_ref: None,
            })
        })
    }

    fn query(&self, trade: TradeRef) -> ProviderFuture<'_, QueryOutcome> {
        Box::pin(async move {
            let mut f = self.base_fields();
            f.insert("out_trade_no".into(), trade.order_no.clone());
            let r = self.call("query", "/pay/orderquery", f, false).await?;
            if field(&r, "result_code") != Some("SUCCESS") {
                return match field(&r, "err_code") {
                    Some("ORDERNOTEXIST") => Ok(QueryOutcome::NotPaid),
                    _ => Err(business_error(&r)),
                };
            }
            if field(&r, "out_trade_no") != Some(trade.order_no.as_str()) {
                return Err(ProviderError::permanent("query answered for another order"));
            }
            Ok(match field(&r, "trade_state") {
                Some("SUCCESS" | "REFUND") => {
                    QueryOutcome::Paid(self.report(&r, PaymentSource::Query)?)
                }
                Some("NOTPAY" | "USERPAYING" | "ACCEPT") => QueryOutcome::NotPaid,
                Some("CLOSED" | "REVOKED") => QueryOutcome::Closed,
                Some("PAYERROR") => QueryOutcome::Failed {
                    reason: format!(
                        "payerror: {}",
                        field(&r, "trade_state_desc").unwrap_or("payment failed")
                    ),
                },
                other => {
                    return Err(ProviderError::permanent(format!(
                        "unknown trade_state {other:?}"
                    )));
                }
            })
        })
    }

    fn close(&self, trade: TradeRef) -> ProviderFuture<'_, CloseOutcome> {
        Box::pin(async move {
            let mut f = self.base_fields();
            f.insert("out_trade_no".into(), trade.order_no.clone());
            let r = self.call("close", "/pay/closeorder", f, false).await?;
            if field(&r, "result_code") == Some("SUCCESS") {
                return Ok(CloseOutcome::Closed);
            }
            match field(&r, "err_code") {
                // The buyer paid before the close: a query learns the payment.
                Some("ORDERPAID") => Ok(CloseOutcome::AlreadyPaid),
                Some("ORDERCLOSED" | "ORDERNOTEXIST") => Ok(CloseOutcome::Closed),
                _ => Err(business_error(&r)),
            }
        })
    }

    fn refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        Box::pin(async move {
            let mut f = self.base_fields();
            match &request.transaction_id {
                // An extra payment is refunded by its own transaction, in full.
                Some(tx) => {
                    f.insert("transaction_id".into(), tx.clone());
                    f.insert("total_fee".into(), request.amount_minor.to_string());
                }
                None => {
                    f.insert("out_trade_no".into(), request.trade.order_no.clone());
                    f.insert("total_fee".into(), request.trade.amount_minor.to_string());
                }
            }
            f.insert("out_refund_no".into(), request.refund_no.clone());
            f.insert("refund_fee".into(), request.amount_minor.to_string());
            f.insert(
                "refund_desc".into(),
                request.reason.chars().take(80).collect(),
            );
            f.insert("notify_url".into(), self.s.refund_notify_url.clone());
            let r = self.call("refund", "/secapi/pay/refund", f, true).await?;
            if field(&r, "result_code") != Some("SUCCESS") {
                return Err(business_error(&r));
            }
            // Accepted; the money moves later (refund query or notification).
            Ok(RefundOutcome {
                status: RefundStatus::Processing,
                provider_refund_id: field(&r, "refund_id").map(str::to_string),
            })
        })
    }

    fn query_refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        Box::pin(async move {
            let mut f = self.base_fields();
            f.insert("out_refund_no".into(), request.refund_no.clone());
            let r = self
                .call("refund_query", "/pay/refundquery", f, false)
                .await?;
            if field(&r, "result_code") != Some("SUCCESS") {
                return Err(business_error(&r));
            }
            Ok(RefundOutcome {
                status: refund_status(field(&r, "refund_status_0"))?,
                provider_refund_id: field(&r, "refund_id_0").map(str::to_string),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beijing_compact_time_is_fixed_plus_eight() {
        // 2023-11-14T22:13:20Z is 2023-11-15 06:13:20 in Beijing.
        assert_eq!(
            beijing_compact(Timestamp(1_700_000_000_000)),
            "20231115061320"
        );
        assert_eq!(
            parse_beijing_compact("20231115061320"),
            Some(Timestamp(1_700_000_000_000))
        );
        assert_eq!(parse_beijing_compact("2023111506132"), None);
    }

    #[test]
    fn notify_replies_are_the_documented_xml() {
        assert_eq!(
            notify_reply(true, "OK"),
            "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
        );
    }
}
