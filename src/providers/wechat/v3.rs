//! WeChat Pay API v3: Native QR payments over signed JSON.
//!
//! Requests are signed with the merchant key (`Authorization: WECHATPAY2-SHA256-RSA2048
//! …`); every response and callback is verified over its raw bytes with the key its
//! `Wechatpay-Serial` names before a byte of it is believed; callbacks' resources are
//! AES-256-GCM encrypted with the APIv3 key. `trade_state` and refund `status` are
//! mapped exhaustively onto the engine's outcomes.

use std::sync::Arc;

use payd_actors::clock::SharedClock;
use payd_actors::model::{Currency, PaymentSource, ProviderKind};
use payd_actors::order::machine::PaymentReport;
use payd_actors::provider::{
    CloseOutcome, OpenedTrade, PaymentProvider, ProviderError, ProviderFuture, QueryOutcome,
    RefundOutcome, RefundRequest, RefundStatus, TradeRef, TradeRequest,
};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::crypto::{self, MerchantSigner, PlatformCertificate};
use super::keys::{KeyVerdict, WechatKeys};
use super::{RejectReason, beijing_rfc3339, parse_rfc3339};
use crate::providers::executor::{Executor, InboundResponse, OutboundRequest};

/// Timestamps further than this from our clock are rejected (both ways).
pub const MAX_SKEW_SECS: i64 = 300;

pub struct WechatV3Settings {
    pub mchid: String,
    pub appid: String,
    pub serial_no: String,
    pub api_v3_key: Vec<u8>,
    pub notify_url: String,
    pub refund_notify_url: String,
    pub base_url: String,
}

pub struct WechatV3 {
    s: WechatV3Settings,
    signer: MerchantSigner,
    pub keys: Arc<WechatKeys>,
    exec: Executor,
    clock: SharedClock,
}

#[derive(Serialize)]
struct Amount<'a> {
    total: i64,
    currency: &'a str,
}

#[derive(Serialize)]
struct SceneInfo<'a> {
    payer_client_ip: &'a str,
}

#[derive(Serialize)]
struct NativePrepay<'a> {
    appid: &'a str,
    mchid: &'a str,
    description: &'a str,
    out_trade_no: &'a str,
    time_expire: String,
    notify_url: &'a str,
    amount: Amount<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scene_info: Option<SceneInfo<'a>>,
}

#[derive(Deserialize)]
struct PrepayResponse {
    code_url: String,
}

#[derive(Debug, Deserialize)]
pub struct TransactionAmount {
    pub total: i64,
    #[serde(default)]
    pub currency: Option<String>,
}

/// The Transaction object of queries and payment notifications (fields we use).
#[derive(Debug, Deserialize)]
pub struct Transaction {
    pub appid: String,
    pub mchid: String,
    pub out_trade_no: String,
    #[serde(default)]
    pub transaction_id: Option<String>,
    pub trade_state: String,
    #[serde(default)]
    pub trade_state_desc: Option<String>,
    #[serde(default)]
    pub success_time: Option<String>,
    #[serde(default)]
    pub amount: Option<TransactionAmount>,
}

#[derive(Debug, Deserialize)]
struct RefundAmount {
    refund: i64,
}

/// The Refund object of refund calls, queries and refund notifications.
#[derive(Debug, Deserialize)]
pub struct RefundObject {
    #[serde(default)]
    pub refund_id: Option<String>,
    pub out_refund_no: String,
    #[serde(default)]
    pub out_trade_no: Option<String>,
    /// `status` in API answers, `refund_status` in notifications.
    #[serde(default, alias = "refund_status")]
    pub status: Option<String>,
    #[serde(default)]
    amount: Option<RefundAmount>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct EncryptedResource {
    algorithm: String,
    ciphertext: String,
    #[serde(default)]
    associated_data: String,
    nonce: String,
    #[serde(default)]
    original_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NotifyEnvelope {
    id: String,
    event_type: String,
    resource: EncryptedResource,
}

#[derive(Debug, Deserialize)]
struct CertificateList {
    data: Vec<CertificateEntry>,
}

#[derive(Debug, Deserialize)]
struct CertificateEntry {
    serial_no: String,
    encrypt_certificate: EncryptedResource,
}

/// What a verified WeChat v3 callback says.
#[derive(Debug)]
pub enum V3Notification {
    Payment {
        event_id: String,
        transaction: Transaction,
    },
    Refund {
        event_id: String,
        refund: RefundObject,
    },
}

impl WechatV3 {
    pub fn new(
        s: WechatV3Settings,
        signer: MerchantSigner,
        keys: Arc<WechatKeys>,
        exec: Executor,
        clock: SharedClock,
    ) -> Self {
        WechatV3 {
            s,
            signer,
            keys,
            exec,
            clock,
        }
    }

    pub fn mchid(&self) -> &str {
        &self.s.mchid
    }

    fn now_unix(&self) -> i64 {
        self.clock.now().ms().div_euclid(1000)
    }

    /// A request builder that signs each attempt with a fresh timestamp and nonce.
    fn signed(
        &self,
        method: Method,
        path: String,
        body: Option<String>,
    ) -> impl Fn() -> Result<OutboundRequest, ProviderError> + '_ {
        move || {
            let timestamp = self.now_unix();
            let nonce = crypto::nonce_str();
            let body_text = body.as_deref().unwrap_or("");
            let authorization = crypto::authorization(
                &self.signer,
                &self.s.mchid,
                &self.s.serial_no,
                method.as_str(),
                &path,
                timestamp,
                &nonce,
                body_text,
            );
            let mut headers = vec![
                ("authorization", authorization),
                ("accept", "application/json".to_string()),
                ("content-type", "application/json".to_string()),
            ];
            // Responses are signed with the key we name here (public-key mode).
            if let Some(id) = self.keys.public_key_id() {
                headers.push(("wechatpay-serial", id.to_string()));
            }
            Ok(OutboundRequest {
                method: method.clone(),
                url: format!("{}{}", self.s.base_url, path),
                headers,
                body: body.clone().map(String::into_bytes),
            })
        }
    }

    /// Checks a signed message (response or callback) as WeChat's SDKs do: the
    /// timestamp within ±300 s, then the signature by the key the serial names,
    /// downloading certificates once if the serial is unknown.
    pub async fn verify_signed(
        &self,
        timestamp: Option<&str>,
        nonce: Option<&str>,
        signature: Option<&str>,
        serial: Option<&str>,
        body: &[u8],
    ) -> Result<(), RejectReason> {
        self.verify_signed_at(timestamp, nonce, signature, serial, body, self.now_unix())
            .await
    }

    /// [`Self::verify_signed`] as of `now` (unix seconds) instead of the clock.
    async fn verify_signed_at(
        &self,
        timestamp: Option<&str>,
        nonce: Option<&str>,
        signature: Option<&str>,
        serial: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), RejectReason> {
        let (Some(timestamp), Some(nonce), Some(signature), Some(serial)) =
            (timestamp, nonce, signature, serial)
        else {
            return Err(RejectReason::MissingSignature);
        };
        let ts: i64 = timestamp.parse().map_err(|_| RejectReason::Malformed)?;
        if (now - ts).abs() >= MAX_SKEW_SECS {
            return Err(RejectReason::Stale);
        }
        let message = crypto::response_message(timestamp, nonce, body);
        match self.keys.verify_known(serial, &message, signature, now) {
            KeyVerdict::Valid => return Ok(()),
            KeyVerdict::BadSignature => return Err(RejectReason::BadSignature),
            KeyVerdict::UnknownSerial => {}
        }
        if self.keys.may_refresh().await {
            if let Err(e) = self.refresh_certificates().await {
                tracing::warn!(error = %e, "WeChat certificate refresh failed");
            }
            match self.keys.verify_known(serial, &message, signature, now) {
                KeyVerdict::Valid => return Ok(()),
                KeyVerdict::BadSignature => return Err(RejectReason::BadSignature),
                KeyVerdict::UnknownSerial => {}
            }
        }
        Err(RejectReason::UnknownSerial)
    }

    async fn verify_response(&self, r: &InboundResponse) -> Result<(), ProviderError> {
        self.verify_signed(
            r.header("wechatpay-timestamp"),
            r.header("wechatpay-nonce"),
            r.header("wechatpay-signature"),
            r.header("wechatpay-serial"),
            &r.body,
        )
        .await
        .map_err(|reason| {
            ProviderError::permanent(format!(
                "WeChat response failed verification: {}",
                reason.as_str()
            ))
        })
    }

    /// Downloads `/v3/certificates`, decrypts each entry with the APIv3 key and adds
    /// the valid ones. The answer itself must verify with one of the certificates it
    /// carries (or a key we already trust).
    pub async fn refresh_certificates(&self) -> Result<usize, ProviderError> {
        let resp = self
            .exec
            .send(
                "certificates",
                self.signed(Method::GET, "/v3/certificates".into(), None),
            )
            .await?;
        if resp.status != 200 {
            return Err(error_from(&resp));
        }
        let list: CertificateList = serde_json::from_slice(&resp.body)
            .map_err(|e| ProviderError::permanent(format!("certificate list: {e}")))?;
        let mut fresh = Vec::new();
        for entry in list.data {
            let r = &entry.encrypt_certificate;
            if r.algorithm != "AEAD_AES_256_GCM" {
                continue;
            }
            let pem = crypto::aes_gcm_decrypt(
                &self.s.api_v3_key,
                &r.nonce,
                &r.associated_data,
                &r.ciphertext,
            )
            .map_err(|_| {
                ProviderError::permanent("certificate entry does not decrypt with the APIv3 key")
            })?;
            let cert = PlatformCertificate::from_pem(&pem)
                .map_err(|e| ProviderError::permanent(format!("certificate entry: {e}")))?;
            if !cert.serial_no.eq_ignore_ascii_case(&entry.serial_no) {
                return Err(ProviderError::permanent(
                    "certificate serial does not match its entry",
                ));
            }
            fresh.push((pem, cert));
        }
        // The list must be signed by a key we trust or by one of its own certificates.
        let serial = resp
            .header("wechatpay-serial")
            .unwrap_or_default()
            .to_string();
        let message = crypto::response_message(
            resp.header("wechatpay-timestamp").unwrap_or_default(),
            resp.header("wechatpay-nonce").unwrap_or_default(),
            &resp.body,
        );
        let signature = resp
            .header("wechatpay-signature")
            .unwrap_or_default()
            .to_string();
        let now = self.now_unix();
        let trusted = self.keys.verify_known(&serial, &message, &signature, now)
            == KeyVerdict::Valid
            || fresh.iter().any(|(_, c)| {
                c.serial_no.eq_ignore_ascii_case(&serial)
                    && c.verifier.verify_base64(&message, &signature)
            });
        if !trusted {
            return Err(ProviderError::permanent(
                "certificate list failed verification",
            ));
        }
        let count = fresh.len();
        for (pem, cert) in fresh {
            if cert.not_before_unix <= now && now <= cert.not_after_unix {
                self.keys.add_certificate(&pem, cert);
            }
        }
        tracing::info!(
            certificates = count,
            "WeChat platform certificates refreshed"
        );
        Ok(count)
    }

    /// Verifies a callback over its raw body and decrypts what it carries.
    pub async fn verify_callback(
        &self,
        header: impl Fn(&str) -> Option<String>,
        body: &[u8],
    ) -> Result<V3Notification, RejectReason> {
        self.verify_callback_at(header, body, self.now_unix()).await
    }

    /// Verifies a callback from the callback log again, as of the moment it was
    /// received: everything is checked (signature, key, decryption, merchant) except
    /// that "now" is `received_at`, since the freshness window was passed then.
    pub async fn verify_logged_callback(
        &self,
        header: impl Fn(&str) -> Option<String>,
        body: &[u8],
        received_at: payd_actors::model::Timestamp,
    ) -> Result<V3Notification, RejectReason> {
        self.verify_callback_at(header, body, received_at.ms().div_euclid(1000))
            .await
    }

    pub(crate) async fn verify_callback_at(
        &self,
        header: impl Fn(&str) -> Option<String>,
        body: &[u8],
        now: i64,
    ) -> Result<V3Notification, RejectReason> {
        self.verify_signed_at(
            header("wechatpay-timestamp").as_deref(),
            header("wechatpay-nonce").as_deref(),
            header("wechatpay-signature").as_deref(),
            header("wechatpay-serial").as_deref(),
            body,
            now,
        )
        .await?;
        let envelope: NotifyEnvelope =
            serde_json::from_slice(body).map_err(|_| RejectReason::Malformed)?;
        let r = &envelope.resource;
        if r.algorithm != "AEAD_AES_256_GCM" {
            return Err(RejectReason::Malformed);
        }
        let plain = crypto::aes_gcm_decrypt(
            &self.s.api_v3_key,
            &r.nonce,
            &r.associated_data,
            &r.ciphertext,
        )
        .map_err(|_| RejectReason::Undecryptable)?;
        let refund = envelope.event_type.starts_with("REFUND.")
            || r.original_type.as_deref() == Some("refund");
        if refund {
            #[derive(Deserialize)]
            struct RefundIdentity {
                mchid: String,
            }
            let id: RefundIdentity =
                serde_json::from_slice(&plain).map_err(|_| RejectReason::Malformed)?;
            if id.mchid != self.s.mchid {
                return Err(RejectReason::WrongMerchant);
            }
            let refund: RefundObject =
                serde_json::from_slice(&plain).map_err(|_| RejectReason::Malformed)?;
            return Ok(V3Notification::Refund {
                event_id: envelope.id,
                refund,
            });
        }
        let transaction: Transaction =
            serde_json::from_slice(&plain).map_err(|_| RejectReason::Malformed)?;
        if transaction.mchid != self.s.mchid || transaction.appid != self.s.appid {
            return Err(RejectReason::WrongMerchant);
        }
        Ok(V3Notification::Payment {
            event_id: envelope.id,
            transaction,
        })
    }

    /// Maps a verified Transaction onto the engine's query outcome.
    pub fn outcome(&self, t: &Transaction) -> Result<QueryOutcome, ProviderError> {
        if t.mchid != self.s.mchid || t.appid != self.s.appid {
            return Err(ProviderError::permanent("transaction of another merchant"));
        }
        Ok(match t.trade_state.as_str() {
            // REFUND: it was paid, and has refunds since; the payment stands.
            "SUCCESS" | "REFUND" => QueryOutcome::Paid(self.report(t, PaymentSource::Query)?),
            "NOTPAY" | "USERPAYING" | "ACCEPT" => QueryOutcome::NotPaid,
            "CLOSED" | "REVOKED" => QueryOutcome::Closed,
            "PAYERROR" => QueryOutcome::Failed {
                reason: format!(
                    "payerror: {}",
                    t.trade_state_desc.as_deref().unwrap_or("payment failed")
                ),
            },
            other => {
                return Err(ProviderError::permanent(format!(
                    "unknown trade_state {other:?}"
                )));
            }
        })
    }

    pub fn report(
        &self,
        t: &Transaction,
        source: PaymentSource,
    ) -> Result<PaymentReport, ProviderError> {
        let amount = t
            .amount
            .as_ref()
            .ok_or_else(|| ProviderError::permanent("paid transaction without amount"))?;
        let transaction_id = t
            .transaction_id
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ProviderError::permanent("paid transaction without transaction_id"))?;
        let currency = Currency::parse(amount.currency.as_deref().unwrap_or("CNY"))
            .ok_or_else(|| ProviderError::permanent("bad currency"))?;
        let paid_at = t
            .success_time
            .as_deref()
            .and_then(parse_rfc3339)
            .unwrap_or_else(|| self.clock.now());
        Ok(PaymentReport {
            transaction_id,
            amount_minor: amount.total,
            currency,
            paid_at,
            source,
        })
    }

    async fn call(
        &self,
        op: &'static str,
        method: Method,
        path: String,
        body: Option<String>,
    ) -> Result<InboundResponse, ProviderError> {
        let resp = self.exec.send(op, self.signed(method, path, body)).await?;
        if (200..300).contains(&resp.status) && !resp.body.is_empty() {
            self.verify_response(&resp).await?;
        }
        Ok(resp)
    }
}

#[derive(Debug, Deserialize)]
struct BillLocation {
    hash_type: String,
    hash_value: String,
    download_url: String,
}

impl WechatV3 {
    /// The trade bill (`bill_type=ALL`: payments and refunds) of a Beijing day:
    /// `GET /v3/bill/tradebill` (a signed, verified answer naming a download URL and
    /// the file's SHA1), then a signed GET of that URL, whose bytes must hash to it.
    pub async fn trade_bill(
        &self,
        day: crate::providers::statement::StatementDay,
    ) -> Result<payd_actors::reconcile::Statement, crate::providers::statement::StatementError>
    {
        use crate::providers::statement::StatementError;
        use sha1::Digest;
        let path = format!("/v3/bill/tradebill?bill_date={}&bill_type=ALL", day.iso());
        let resp = self
            .call("bill", Method::GET, path, None)
            .await
            .map_err(|e| StatementError::Download(e.message))?;
        if resp.status != 200 {
            // NO_STATEMENT_EXIST: no trade that day, or the bill is not ready yet.
            return Err(StatementError::Download(error_from(&resp).message));
        }
        let loc: BillLocation = serde_json::from_slice(&resp.body)
            .map_err(|e| StatementError::malformed(format!("bill answer: {e}")))?;
        if !loc.hash_type.eq_ignore_ascii_case("SHA1") {
            return Err(StatementError::Integrity(format!(
                "unsupported hash_type {:?}",
                loc.hash_type
            )));
        }
        // The download is signed like any call, so it must go to WeChat's own host.
        let file_path = loc
            .download_url
            .strip_prefix(&self.s.base_url)
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| {
                StatementError::Integrity("the download URL is not on WeChat's API host".into())
            })?
            .to_string();
        let body = crate::providers::statement::download(
            &self.exec,
            "bill_download",
            self.signed(Method::GET, file_path, None),
        )
        .await?;
        let digest = data_encoding::HEXLOWER.encode(&sha1::Sha1::digest(&body));
        if !digest.eq_ignore_ascii_case(loc.hash_value.trim()) {
            return Err(StatementError::Integrity(format!(
                "the bill hashes to {digest}, WeChat announced {}",
                loc.hash_value
            )));
        }
        let text = std::str::from_utf8(&body)
            .map_err(|_| StatementError::malformed("the bill is not UTF-8 text"))?;
        super::bill::parse_trade_bill(text)
    }
}

fn error_from(r: &InboundResponse) -> ProviderError {
    match serde_json::from_slice::<ErrorBody>(&r.body) {
        Ok(e) => ProviderError {
            transient: r.status >= 500 || e.code == "SYSTEM_ERROR" || e.code == "FREQUENCY_LIMITED",
            message: format!("WeChat {} {}: {}", r.status, e.code, e.message),
        },
        Err(_) => ProviderError {
            transient: r.status >= 500,
            message: format!("WeChat answered HTTP {}", r.status),
        },
    }
}

fn error_code(r: &InboundResponse) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(&r.body)
        .ok()
        .map(|e| e.code)
}

fn refund_outcome(r: &RefundObject) -> Result<RefundOutcome, ProviderError> {
    let status = match r.status.as_deref() {
        Some("SUCCESS") => RefundStatus::Succeeded,
        Some("PROCESSING") => RefundStatus::Processing,
        Some(s @ ("CLOSED" | "ABNORMAL")) => RefundStatus::Failed {
            reason: s.to_ascii_lowercase(),
        },
        other => {
            return Err(ProviderError::permanent(format!(
                "unknown refund status {other:?}"
            )));
        }
    };
    Ok(RefundOutcome {
        status,
        provider_refund_id: r.refund_id.clone(),
    })
}

impl PaymentProvider for WechatV3 {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WechatV3
    }

    fn create(&self, request: TradeRequest) -> ProviderFuture<'_, OpenedTrade> {
        Box::pin(async move {
            if request.currency.as_str() != "CNY" {
                return Err(ProviderError::permanent("WeChat Pay takes CNY only"));
            }
            let body = NativePrepay {
                appid: &self.s.appid,
                mchid: &self.s.mchid,
                description: &request.description,
                out_trade_no: &request.order_no,
                // Otherwise WeChat keeps the code payable for up to two hours.
                time_expire: beijing_rfc3339(request.expire_at),
                notify_url: &self.s.notify_url,
                amount: Amount {
                    total: request.amount_minor,
                    currency: "CNY",
                },
                scene_info: request.client_ip.as_deref().map(|ip| SceneInfo {
                    payer_client_ip: ip,
                }),
            };
            let json = serde_json::to_string(&body)
                .map_err(|e| ProviderError::permanent(e.to_string()))?;
            let resp = self
                .call(
                    "create",
                    Method::POST,
                    "/v3/pay/transactions/native".into(),
                    Some(json),
                )
                .await?;
            if resp.status != 200 {
                return Err(error_from(&resp));
            }
            let prepay: PrepayResponse = serde_json::from_slice(&resp.body)
                .map_err(|e| ProviderError::permanent(format!("prepay answer: {e}")))?;
            Ok(OpenedTrade {
                qr_code_url: Some(prepay.code_url),
                payment_url: None,
                trade_ref: None,
            })
        })
    }

    fn query(&self, trade: TradeRef) -> ProviderFuture<'_, QueryOutcome> {
        Box::pin(async move {
            let path = format!(
                "/v3/pay/transactions/out-trade-no/{}?mchid={}",
                trade.order_no, self.s.mchid
            );
            let resp = self.call("query", Method::GET, path, None).await?;
            match resp.status {
                200 => {
                    let t: Transaction = serde_json::from_slice(&resp.body)
                        .map_err(|e| ProviderError::permanent(format!("query answer: {e}")))?;
                    if t.out_trade_no != trade.order_no {
                        return Err(ProviderError::permanent("query answered for another order"));
                    }
                    self.outcome(&t)
                }
                // Before the buyer scans, WeChat may not know the trade yet.
                404 if error_code(&resp).as_deref() == Some("ORDER_NOT_EXIST") => {
                    Ok(QueryOutcome::NotPaid)
                }
                _ => Err(error_from(&resp)),
            }
        })
    }

    fn close(&self, trade: TradeRef) -> ProviderFuture<'_, CloseOutcome> {
        Box::pin(async move {
            let path = format!("/v3/pay/transactions/out-trade-no/{}/close", trade.order_no);
            let body = serde_json::json!({ "mchid": self.s.mchid }).to_string();
            let resp = self.call("close", Method::POST, path, Some(body)).await?;
            match (resp.status, error_code(&resp).as_deref()) {
                (204 | 200, _) => Ok(CloseOutcome::Closed),
                (_, Some("ORDERPAID" | "TRADE_PAID")) => Ok(CloseOutcome::AlreadyPaid),
                (_, Some("ORDER_CLOSED" | "ORDER_NOT_EXIST")) => Ok(CloseOutcome::Closed),
                _ => Err(error_from(&resp)),
            }
        })
    }

    fn refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        Box::pin(async move {
            let mut body = serde_json::json!({
                "out_refund_no": request.refund_no,
                "reason": request.reason,
                "notify_url": self.s.refund_notify_url,
                "amount": {
                    "refund": request.amount_minor,
                    "total": request.trade.amount_minor,
                    "currency": "CNY",
                },
            });
            match &request.transaction_id {
                // An extra payment is refunded by its own transaction, in full.
                Some(tx) => {
                    body["transaction_id"] = serde_json::json!(tx);
                    body["amount"]["total"] = serde_json::json!(request.amount_minor);
                }
                None => body["out_trade_no"] = serde_json::json!(request.trade.order_no),
            }
            let body = body.to_string();
            let resp = self
                .call(
                    "refund",
                    Method::POST,
                    "/v3/refund/domestic/refunds".into(),
                    Some(body),
                )
                .await?;
            if resp.status != 200 {
                return Err(error_from(&resp));
            }
            let r: RefundObject = serde_json::from_slice(&resp.body)
                .map_err(|e| ProviderError::permanent(format!("refund answer: {e}")))?;
            if r.amount
                .as_ref()
                .is_some_and(|a| a.refund != request.amount_minor)
            {
                return Err(ProviderError::permanent(
                    "refund answered with another amount",
                ));
            }
            refund_outcome(&r)
        })
    }

    fn query_refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        Box::pin(async move {
            let path = format!("/v3/refund/domestic/refunds/{}", request.refund_no);
            let resp = self.call("refund_query", Method::GET, path, None).await?;
            if resp.status != 200 {
                return Err(error_from(&resp));
            }
            let r: RefundObject = serde_json::from_slice(&resp.body)
                .map_err(|e| ProviderError::permanent(format!("refund query answer: {e}")))?;
            refund_outcome(&r)
        })
    }
}
