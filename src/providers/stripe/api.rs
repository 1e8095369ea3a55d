//! Stripe Checkout: the adapter behind the `PaymentProvider` port.
//!
//! Every call is form-encoded (see `form`), authenticated with `Authorization: Bearer
//! sk_…`, pinned to `stripe.api_version` with `Stripe-Version`, and sent through the
//! shared executor. Every POST carries an `Idempotency-Key` derived from the order
//! or refund number and the operation — never random — so the executor's retries,
//! and a retry after a crash, are the same request to Stripe and cannot open a
//! second session or refund twice. For that the parameters must be the same on every
//! attempt too, which is why the session's `expires_at` is derived from the order
//! alone (see [`checkout_expires_at`]).
//!
//! Mapping onto the port:
//! - create: `POST /v1/checkout/sessions` → the session `url` is the payment URL, the
//!   session id (`cs_…`) the trade reference kept on the order;
//! - query: `GET /v1/checkout/sessions/{id}` → `paid` is Paid (the PaymentIntent id
//!   is the transaction id), `expired` is Closed, anything else NotPaid;
//! - close: `POST /v1/checkout/sessions/{id}/expire`; when Stripe refuses because the
//!   session is no longer open, the session itself says what happened;
//! - refund: `POST /v1/refunds` on the session's PaymentIntent, always with an
//!   explicit `amount`, `metadata[refund_no]` and the refund number as key;
//! - query_refund: a refund's Stripe id is found again without a database: from a
//!   small in-process cache when this process created it (`GET /v1/refunds/{id}`),
//!   else by listing the PaymentIntent's refunds (`GET /v1/refunds?payment_intent=`)
//!   and matching `metadata[refund_no]`. Replaying the idempotent POST to learn the
//!   id was rejected: Stripe prunes keys after 24 h, and a replay after that would
//!   create a new refund. `refund` looks the same way before it POSTs, so it stays
//!   idempotent past those 24 h as well.

use std::collections::HashMap;
use std::sync::Mutex;

use payd_actors::clock::SharedClock;
use payd_actors::model::{Order, OrderStatus, PaymentSource, ProviderKind, Timestamp};
use payd_actors::order::machine::Event;
use payd_actors::provider::{
    CloseOutcome, OpenedTrade, PaymentProvider, ProviderError, ProviderFuture, QueryOutcome,
    RefundOutcome, RefundRequest, RefundStatus, TradeRef, TradeRequest,
};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::form;
use super::objects::{self, ErrorBody, PaymentIntent, Refund, RefundList, Session};
use super::webhook::{self, Meaning, OrderHint, WebhookEvent};
use crate::config::Secret;
use crate::providers::executor::{Executor, InboundResponse, OutboundRequest};
use crate::providers::rejections::RejectReason;

/// Stripe accepts a session `expires_at` from 30 minutes to 24 hours after creation;
/// payd keeps a minute away from each edge.
const MIN_SESSION_MS: i64 = 31 * 60_000;
const MAX_SESSION_MS: i64 = 24 * 3_600_000 - 60_000;
/// Refund ids remembered for `query_refund`; past this the cache starts over (the
/// listing finds any refund again).
const REFUND_CACHE: usize = 10_000;
/// Pages of refunds read when looking one up (100 each).
const REFUND_PAGES: usize = 10;
/// Stripe metadata values hold at most 500 characters.
const METADATA_VALUE_MAX: usize = 500;

pub struct StripeSettings {
    pub secret_key: Secret,
    pub webhook_secret: Secret,
    pub api_base: String,
    pub api_version: String,
    pub success_url: String,
    pub cancel_url: String,
    /// `payment.order_expire`: lets the session's expiry be derived from the order.
    pub order_expire_ms: i64,
}

pub struct Stripe {
    s: StripeSettings,
    exec: Executor,
    clock: SharedClock,
    /// refund_no → Stripe refund id, for refunds this process created or found.
    refund_ids: Mutex<HashMap<String, String>>,
}

/// The session's `expires_at` (Unix seconds) for an order expiring at `expire_at`:
/// the order's own expiry, but at least 31 minutes and at most 24 hours (less a
/// minute) after the order was created — Stripe's window. Derived from the order
/// only (its creation is `expire_at - order_expire`), so every attempt to open the
/// session sends the same parameters under the same idempotency key. An order
/// shorter than 31 minutes is still expired on time: payd expires the session itself.
pub fn checkout_expires_at(expire_at: Timestamp, order_expire_ms: i64) -> i64 {
    let created = expire_at.ms() - order_expire_ms;
    let at = expire_at
        .ms()
        .max(created + MIN_SESSION_MS)
        .min(created + MAX_SESSION_MS);
    // Rounded up: the session never stops before the order does.
    at.div_euclid(1000) + i64::from(at.rem_euclid(1000) != 0)
}

/// `url` with `order_no` added to its query, so the return page knows the order.
fn with_order_no(url: &str, order_no: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}order_no={order_no}")
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn error_from(r: &InboundResponse) -> ProviderError {
    // 409: a request with this key is still running; 429: rate limited. Both pass.
    let transient = r.status >= 500 || r.status == 409 || r.status == 429;
    match serde_json::from_slice::<ErrorBody>(&r.body) {
        Ok(e) => ProviderError {
            transient,
            message: format!(
                "Stripe {} {}{}: {}",
                r.status,
                e.error.kind,
                e.error
                    .code
                    .as_deref()
                    .map(|c| format!("/{c}"))
                    .unwrap_or_default(),
                e.error
                    .message
                    .as_deref()
                    .or(e.error.param.as_deref())
                    .unwrap_or("")
            ),
        },
        Err(_) => ProviderError {
            transient,
            message: format!("Stripe answered HTTP {}", r.status),
        },
    }
}

fn parse<T: DeserializeOwned>(r: &InboundResponse, what: &str) -> Result<T, ProviderError> {
    if r.status != 200 {
        return Err(error_from(r));
    }
    serde_json::from_slice(&r.body)
        .map_err(|e| ProviderError::permanent(format!("Stripe {what} answer: {e}")))
}

fn refund_outcome(r: &Refund) -> Result<RefundOutcome, ProviderError> {
    let status = match r.status.as_deref() {
        Some("succeeded") => RefundStatus::Succeeded,
        // requires_action: the buyer must supply details (some non-card methods).
        Some("pending" | "requires_action") => RefundStatus::Processing,
        Some("failed") => RefundStatus::Failed {
            reason: format!(
                "failed: {}",
                r.failure_reason.as_deref().unwrap_or("unknown")
            ),
        },
        Some("canceled") => RefundStatus::Failed {
            reason: "canceled".into(),
        },
        other => {
            return Err(ProviderError::permanent(format!(
                "unknown Stripe refund status {other:?}"
            )));
        }
    };
    Ok(RefundOutcome {
        status,
        provider_refund_id: Some(r.id.clone()),
    })
}

impl Stripe {
    pub fn new(s: StripeSettings, exec: Executor, clock: SharedClock) -> Self {
        Stripe {
            s,
            exec,
            clock,
            refund_ids: Mutex::new(HashMap::new()),
        }
    }

    pub fn api_version(&self) -> &str {
        &self.s.api_version
    }

    /// Whether the secret key is a test-mode key (`sk_test_…`, `rk_test_…`).
    pub fn test_mode(&self) -> bool {
        let k = self.s.secret_key.expose();
        k.starts_with("sk_test_") || k.starts_with("rk_test_")
    }

    fn now_secs(&self) -> i64 {
        self.clock.now().ms().div_euclid(1000)
    }

    /// A request builder: the same bytes and the same idempotency key on every attempt.
    fn request(
        &self,
        method: Method,
        path: String,
        body: Option<String>,
        idempotency_key: Option<String>,
    ) -> impl Fn() -> Result<OutboundRequest, ProviderError> + '_ {
        move || {
            let mut headers = vec![
                (
                    "authorization",
                    format!("Bearer {}", self.s.secret_key.expose()),
                ),
                ("stripe-version", self.s.api_version.clone()),
                ("accept", "application/json".to_string()),
            ];
            if body.is_some() {
                headers.push((
                    "content-type",
                    "application/x-www-form-urlencoded".to_string(),
                ));
            }
            if let Some(key) = &idempotency_key {
                headers.push(("idempotency-key", key.clone()));
            }
            Ok(OutboundRequest {
                method: method.clone(),
                url: format!("{}{}", self.s.api_base, path),
                headers,
                body: body.clone().map(String::into_bytes),
            })
        }
    }

    async fn get(&self, op: &'static str, path: String) -> Result<InboundResponse, ProviderError> {
        self.exec
            .send(op, self.request(Method::GET, path, None, None))
            .await
    }

    async fn post(
        &self,
        op: &'static str,
        path: String,
        body: String,
        idempotency_key: String,
    ) -> Result<InboundResponse, ProviderError> {
        self.exec
            .send(
                op,
                self.request(Method::POST, path, Some(body), Some(idempotency_key)),
            )
            .await
    }

    /// The form body of a session for `r` (pure, for tests too).
    pub fn session_body(&self, r: &TradeRequest) -> Result<String, ProviderError> {
        let unit_amount = objects::stripe_amount(r.amount_minor, &r.currency)
            .map_err(ProviderError::permanent)?;
        let name = if r.description.trim().is_empty() {
            r.order_no.clone()
        } else {
            r.description.clone()
        };
        let body = json!({
            "mode": "payment",
            "client_reference_id": r.order_no,
            "expires_at": checkout_expires_at(r.expire_at, self.s.order_expire_ms),
            "line_items": [{
                "quantity": 1,
                "price_data": {
                    "currency": objects::stripe_currency(&r.currency),
                    "unit_amount": unit_amount,
                    "product_data": {"name": name},
                },
            }],
            "metadata": {"order_no": r.order_no},
            "payment_intent_data": {"metadata": {"order_no": r.order_no}},
            "success_url": with_order_no(&self.s.success_url, &r.order_no),
            "cancel_url": with_order_no(&self.s.cancel_url, &r.order_no),
        });
        Ok(form::to_body(&body))
    }

    /// Retrieves a session and checks it belongs to `order_no`.
    pub async fn session(&self, order_no: &str, id: &str) -> Result<Session, ProviderError> {
        if !objects::is_object_id(id) {
            return Err(ProviderError::permanent("not a Checkout Session id"));
        }
        let resp = self
            .get("session", format!("/v1/checkout/sessions/{id}"))
            .await?;
        let s: Session = parse(&resp, "session")?;
        self.check_session(&s, order_no)?;
        Ok(s)
    }

    fn check_session(&self, s: &Session, order_no: &str) -> Result<(), ProviderError> {
        match s.order_no() {
            Ok(Some(no)) if no == order_no => Ok(()),
            _ => Err(ProviderError::permanent(format!(
                "Checkout Session {} is not order {order_no}'s",
                s.id
            ))),
        }
    }

    /// Maps a session onto the query outcome, exhaustively over Stripe's two enums.
    pub fn outcome(
        &self,
        s: &Session,
        source: PaymentSource,
    ) -> Result<QueryOutcome, ProviderError> {
        match (s.payment_status.as_str(), s.status.as_deref()) {
            ("paid", _) => s
                .paid_report(self.clock.now(), source)
                .map_err(ProviderError::permanent)?
                .map(QueryOutcome::Paid)
                .ok_or_else(|| ProviderError::permanent("paid session without a payment")),
            ("unpaid", Some("expired")) => Ok(QueryOutcome::Closed),
            // complete + unpaid: a delayed method (bank debit…) is still settling.
            ("unpaid", Some("open" | "complete")) => Ok(QueryOutcome::NotPaid),
            ("no_payment_required", _) => Err(ProviderError::permanent(
                "session needs no payment; payd never opens one",
            )),
            (p, st) => Err(ProviderError::permanent(format!(
                "unknown session state payment_status={p:?} status={st:?}"
            ))),
        }
    }

    fn trade_session<'a>(&self, trade: &'a TradeRef) -> Option<&'a str> {
        trade.trade_ref.as_deref().filter(|r| !r.is_empty())
    }

    /// The PaymentIntent that paid the order's session.
    async fn paid_intent(&self, trade: &TradeRef) -> Result<String, ProviderError> {
        let id = self.trade_session(trade).ok_or_else(|| {
            ProviderError::permanent("no Checkout Session is recorded for this order")
        })?;
        let s = self.session(&trade.order_no, id).await?;
        s.payment_intent
            .filter(|pi| objects::is_object_id(pi))
            .ok_or_else(|| ProviderError::permanent("the session has no payment to refund"))
    }

    /// The refund of `payment_intent` made for `refund_no`, if Stripe has one.
    async fn find_refund(
        &self,
        payment_intent: &str,
        refund_no: &str,
    ) -> Result<Option<Refund>, ProviderError> {
        let mut after: Option<String> = None;
        for _ in 0..REFUND_PAGES {
            let mut path = format!("/v1/refunds?payment_intent={payment_intent}&limit=100");
            if let Some(last) = &after {
                path.push_str(&format!("&starting_after={last}"));
            }
            let page: RefundList = parse(&self.get("refund_list", path).await?, "refund list")?;
            if let Some(r) = page
                .data
                .iter()
                .find(|r| r.metadata.get("refund_no").map(String::as_str) == Some(refund_no))
            {
                return Ok(Some(r.clone()));
            }
            match page.data.last() {
                Some(last) if page.has_more && objects::is_object_id(&last.id) => {
                    after = Some(last.id.clone())
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    fn remember_refund(&self, refund_no: &str, id: &str) {
        let mut ids = self.refund_ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.len() >= REFUND_CACHE {
            ids.clear();
        }
        ids.insert(refund_no.to_string(), id.to_string());
    }

    fn remembered_refund(&self, refund_no: &str) -> Option<String> {
        self.refund_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(refund_no)
            .cloned()
    }

    /// Checks a webhook over its raw body and parses its envelope. Test-mode keys
    /// take only test-mode events and live keys only live ones.
    pub fn verify_event(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<WebhookEvent, RejectReason> {
        self.verify_event_at(signature, body, self.now_secs())
    }

    /// Verifies an event from the callback log again, as of the moment it was
    /// received: the signature, secret and mode are checked; only the tolerance
    /// window is measured from `received_at`, since it was passed then.
    pub fn verify_logged_event(
        &self,
        signature: Option<&str>,
        body: &[u8],
        received_at: payd_actors::model::Timestamp,
    ) -> Result<WebhookEvent, RejectReason> {
        self.verify_event_at(signature, body, received_at.ms().div_euclid(1000))
    }

    fn verify_event_at(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now_secs: i64,
    ) -> Result<WebhookEvent, RejectReason> {
        webhook::verify(signature, body, &[self.s.webhook_secret.expose()], now_secs)
            .map_err(|e| e.reason())?;
        let event = webhook::parse_event(body)?;
        if event.livemode == self.test_mode() {
            return Err(RejectReason::WrongMerchant);
        }
        Ok(event)
    }

    /// The balance transactions of a UTC day as a statement, every page of them.
    /// A refund's order is found through its PaymentIntent (one lookup per intent).
    pub async fn balance_statement(
        &self,
        day: crate::providers::statement::StatementDay,
    ) -> Result<payd_actors::reconcile::Statement, crate::providers::statement::StatementError>
    {
        use super::balance::{self, BalanceList};
        use crate::providers::statement::StatementError;
        let window = day.window();
        let (gte, lt) = (window.start.ms() / 1000, window.end.ms() / 1000);
        let mut rows = Vec::new();
        let mut after: Option<String> = None;
        let mut orders_of: HashMap<String, String> = HashMap::new();
        loop {
            let mut path = format!(
                "/v1/balance_transactions?created[gte]={gte}&created[lt]={lt}&limit={}&expand[]=data.source",
                balance::PAGE
            );
            if let Some(id) = &after {
                path.push_str(&format!("&starting_after={id}"));
            }
            let resp = self
                .get("balance_transactions", path)
                .await
                .map_err(|e| StatementError::Download(e.message))?;
            if resp.status != 200 {
                return Err(StatementError::Download(error_from(&resp).message));
            }
            let page: BalanceList = serde_json::from_slice(&resp.body)
                .map_err(|e| StatementError::malformed(format!("balance transaction list: {e}")))?;
            let last = page
                .data
                .last()
                .and_then(|v| v["id"].as_str())
                .map(str::to_string);
            for v in &page.data {
                let Some(mut p) = balance::map_transaction(v)? else {
                    continue;
                };
                if p.row.order_no.is_empty() {
                    let order_no = match orders_of.get(&p.payment_intent) {
                        Some(o) => o.clone(),
                        None => {
                            let hint = webhook::OrderHint::PaymentIntent(p.payment_intent.clone());
                            let found = self
                                .order_no_for(&hint)
                                .await
                                .map_err(|e| StatementError::Download(e.message))?
                                .unwrap_or_default();
                            orders_of.insert(p.payment_intent.clone(), found.clone());
                            found
                        }
                    };
                    p.row.order_no = order_no;
                }
                if p.row.order_no.is_empty() {
                    // Not one of payd's payments (no order_no in its metadata).
                    p.row.order_no = format!("(none: {})", p.payment_intent);
                }
                rows.push(p.row);
            }
            match (page.has_more, last) {
                (true, Some(id)) => after = Some(id),
                (true, None) => {
                    return Err(StatementError::malformed("has_more on an empty page"));
                }
                (false, _) => break,
            }
        }
        Ok(payd_actors::reconcile::Statement { rows })
    }

    /// The order an event is about. `Ok(None)`: not one of payd's.
    pub async fn order_no_for(&self, hint: &OrderHint) -> Result<Option<String>, ProviderError> {
        match hint {
            OrderHint::OrderNo(no) => Ok(Some(no.clone())),
            OrderHint::PaymentIntent(pi) => {
                let resp = self
                    .get("payment_intent", format!("/v1/payment_intents/{pi}"))
                    .await?;
                if resp.status == 404 {
                    return Ok(None);
                }
                let pi: PaymentIntent = parse(&resp, "payment intent")?;
                Ok(pi.metadata.get("order_no").cloned())
            }
        }
    }

    /// The order event a verified webhook feeds to the order, if any.
    ///
    /// Events arrive late, twice and out of order, and each carries a snapshot of its
    /// object as it was when the event was created. So for an order still pending,
    /// payd asks Stripe for the session as it is now and acts on that answer. A
    /// snapshot that shows the payment made is used when Stripe's answer does not
    /// (yet) confirm it, or Stripe cannot be reached: a payment does not un-happen,
    /// so a "paid" snapshot cannot be stale in the direction that matters. For an
    /// order no longer pending the snapshot is enough: the machine ignores a
    /// transaction it already has and treats another as a double or late payment.
    /// `Err`: ask Stripe to deliver again later.
    pub async fn event_for(
        &self,
        meaning: Meaning,
        order: &Order,
    ) -> Result<Option<Event>, ProviderError> {
        let pending = order.status == OrderStatus::Pending;
        let trade = |session_id: Option<String>| TradeRef {
            order_no: order.order_no.clone(),
            trade_ref: session_id.or_else(|| order.provider_trade_ref.clone()),
            amount_minor: order.amount_minor,
            currency: order.currency.clone(),
        };
        Ok(match meaning {
            Meaning::Payment {
                session_id,
                snapshot,
                ..
            } => {
                if !pending {
                    return Ok(snapshot.map(Event::Confirmed));
                }
                match self
                    .query_as(trade(session_id), PaymentSource::Callback)
                    .await
                {
                    Ok(QueryOutcome::Paid(report)) => Some(Event::Confirmed(report)),
                    Ok(_) | Err(_) if snapshot.is_some() => {
                        tracing::warn!(order_no = %order.order_no,
                            "Stripe does not confirm yet what the signed event shows paid; taking the event");
                        snapshot.map(Event::Confirmed)
                    }
                    Ok(_) => None,
                    Err(e) => return Err(e),
                }
            }
            Meaning::AsyncPaymentFailed { session_id, .. } if pending => {
                match self
                    .query_as(trade(Some(session_id)), PaymentSource::Callback)
                    .await?
                {
                    QueryOutcome::Paid(report) => Some(Event::Confirmed(report)),
                    _ => Some(Event::PaymentFailed {
                        reason: "stripe: async_payment_failed".into(),
                    }),
                }
            }
            Meaning::AsyncPaymentFailed { .. } => None,
            Meaning::Dispute {
                dispute_id,
                amount_minor,
                currency,
                status,
                ..
            } => Some(Event::Disputed {
                dispute_id,
                amount_minor,
                currency,
                status,
            }),
            Meaning::Logged { .. } | Meaning::Ignored => None,
        })
    }

    async fn query_as(
        &self,
        trade: TradeRef,
        source: PaymentSource,
    ) -> Result<QueryOutcome, ProviderError> {
        let Some(id) = self.trade_session(&trade) else {
            // No session was ever recorded (its opening failed): nothing anyone could
            // have paid through payd.
            return Ok(QueryOutcome::NotPaid);
        };
        let s = self.session(&trade.order_no, id).await?;
        self.outcome(&s, source)
    }
}

impl PaymentProvider for Stripe {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Stripe
    }

    fn create(&self, request: TradeRequest) -> ProviderFuture<'_, OpenedTrade> {
        Box::pin(async move {
            let body = self.session_body(&request)?;
            let key = format!("payd-{}-checkout-session", request.order_no);
            let resp = self
                .post("create", "/v1/checkout/sessions".into(), body, key)
                .await?;
            let s: Session = parse(&resp, "session")?;
            self.check_session(&s, &request.order_no)?;
            if !objects::is_object_id(&s.id) {
                return Err(ProviderError::permanent("Stripe answered a bad session id"));
            }
            let same_money = s.amount_total == Some(request.amount_minor)
                && s.currency.as_deref().and_then(objects::payd_currency)
                    == Some(request.currency.clone());
            if !same_money {
                return Err(ProviderError::permanent(
                    "Stripe opened the session for another amount",
                ));
            }
            let url = s
                .url
                .clone()
                .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                .ok_or_else(|| ProviderError::permanent("Stripe answered no session url"))?;
            tracing::debug!(order_no = %request.order_no, session = %s.id, "Checkout Session opened");
            Ok(OpenedTrade {
                qr_code_url: None,
                payment_url: Some(url),
                trade_ref: Some(s.id),
            })
        })
    }

    fn query(&self, trade: TradeRef) -> ProviderFuture<'_, QueryOutcome> {
        Box::pin(async move { self.query_as(trade, PaymentSource::Query).await })
    }

    fn close(&self, trade: TradeRef) -> ProviderFuture<'_, CloseOutcome> {
        Box::pin(async move {
            let Some(id) = self.trade_session(&trade) else {
                tracing::warn!(order_no = %trade.order_no,
                    "no Checkout Session recorded; nothing to expire at Stripe");
                return Ok(CloseOutcome::Closed);
            };
            if !objects::is_object_id(id) {
                return Err(ProviderError::permanent("not a Checkout Session id"));
            }
            let key = format!("payd-{}-checkout-expire", trade.order_no);
            let resp = self
                .post(
                    "close",
                    format!("/v1/checkout/sessions/{id}/expire"),
                    String::new(),
                    key,
                )
                .await?;
            let expired = resp.status == 200;
            let refused = (400..500).contains(&resp.status);
            if !expired && !refused {
                return Err(error_from(&resp));
            }
            // Expired just now — or refused because the session is no longer open:
            // either way the session says how it ended.
            let s = if expired {
                let s: Session = parse(&resp, "session")?;
                self.check_session(&s, &trade.order_no)?;
                s
            } else {
                self.session(&trade.order_no, id).await?
            };
            Ok(match self.outcome(&s, PaymentSource::Query)? {
                QueryOutcome::Paid(_) => CloseOutcome::AlreadyPaid,
                QueryOutcome::Closed => CloseOutcome::Closed,
                _ if s.status.as_deref() == Some("complete") => {
                    // A delayed payment is settling and cannot be stopped; should it
                    // succeed, it arrives as a late payment.
                    tracing::warn!(order_no = %trade.order_no,
                        "Checkout Session completed with a payment still settling; cannot expire it");
                    CloseOutcome::Closed
                }
                _ => return Err(error_from(&resp)),
            })
        })
    }

    fn refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        Box::pin(async move {
            // An extra payment is refunded by its own PaymentIntent.
            let payment_intent = match &request.transaction_id {
                Some(tx) => tx.clone(),
                None => self.paid_intent(&request.trade).await?,
            };
            // Made before (even more than 24 h ago, when Stripe has forgotten the key)?
            if let Some(r) = self
                .find_refund(&payment_intent, &request.refund_no)
                .await?
            {
                self.remember_refund(&request.refund_no, &r.id);
                return refund_outcome(&r);
            }
            // The amount is always explicit: without it Stripe refunds whatever is
            // left, which after an earlier partial refund is not what was asked.
            let body = form::to_body(&json!({
                "payment_intent": payment_intent,
                "amount": request.amount_minor,
                "metadata": {
                    "refund_no": request.refund_no,
                    "order_no": request.trade.order_no,
                    "reason": truncate(&request.reason, METADATA_VALUE_MAX),
                },
            }));
            let key = format!("payd-{}-refund", request.refund_no);
            let resp = self.post("refund", "/v1/refunds".into(), body, key).await?;
            let r: Refund = parse(&resp, "refund")?;
            if r.amount != request.amount_minor {
                return Err(ProviderError::permanent(
                    "Stripe answered a refund of another amount",
                ));
            }
            self.remember_refund(&request.refund_no, &r.id);
            refund_outcome(&r)
        })
    }

    fn query_refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        Box::pin(async move {
            if let Some(id) = self
                .remembered_refund(&request.refund_no)
                .filter(|id| objects::is_object_id(id))
            {
                let resp = self
                    .get("refund_query", format!("/v1/refunds/{id}"))
                    .await?;
                return refund_outcome(&parse::<Refund>(&resp, "refund")?);
            }
            let payment_intent = match &request.transaction_id {
                Some(tx) => tx.clone(),
                None => self.paid_intent(&request.trade).await?,
            };
            match self
                .find_refund(&payment_intent, &request.refund_no)
                .await?
            {
                Some(r) => {
                    self.remember_refund(&request.refund_no, &r.id);
                    refund_outcome(&r)
                }
                None => Err(ProviderError::permanent(format!(
                    "Stripe has no refund {} for this payment",
                    request.refund_no
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::executor::ExecutorConfig;
    use payd_actors::clock::SystemClock;
    use payd_actors::model::{Currency, PaymentMethod};
    use std::sync::Arc;
    use std::time::Duration;

    const MIN: i64 = 60_000;

    fn stripe() -> Stripe {
        Stripe::new(
            StripeSettings {
                secret_key: Secret::new("sk_test_unit"),
                webhook_secret: Secret::new("whsec_unit"),
                api_base: "http://127.0.0.1:9".into(),
                api_version: "2025-08-27.basil".into(),
                success_url: "https://shop.example/payment/return".into(),
                cancel_url: "https://shop.example/payment/return?from=stripe".into(),
                order_expire_ms: 30 * MIN,
            },
            Executor::new(
                "stripe",
                Executor::default_client(),
                ExecutorConfig::new(Duration::from_secs(1), 1),
            ),
            Arc::new(SystemClock),
        )
    }

    #[test]
    fn the_session_expiry_is_derived_from_the_order_within_stripes_window() {
        let created = Timestamp(1_800_000_000_000);
        // A 30-minute order: Stripe needs 30 minutes at least, so 31 after creation.
        assert_eq!(
            checkout_expires_at(created.plus_ms(30 * MIN), 30 * MIN),
            1_800_000_000 + 31 * 60
        );
        // A 2-hour order: the order's own expiry.
        assert_eq!(
            checkout_expires_at(created.plus_ms(120 * MIN), 120 * MIN),
            1_800_000_000 + 7200
        );
        // A 3-day order: capped at 24 h less a minute after creation.
        assert_eq!(
            checkout_expires_at(created.plus_ms(3 * 1440 * MIN), 3 * 1440 * MIN),
            1_800_000_000 + 86_400 - 60
        );
        // Never before the order's expiry: milliseconds round up.
        assert_eq!(
            checkout_expires_at(created.plus_ms(120 * MIN + 1), 120 * MIN),
            1_800_000_000 + 7201
        );
    }

    #[test]
    fn a_session_create_is_the_bracketed_form_stripe_documents() {
        let body = stripe()
            .session_body(&TradeRequest {
                order_no: "PD261122203315K3M9Q2XA7F4HD1RN".into(),
                method: PaymentMethod::StripeCheckout,
                amount_minor: 499,
                currency: Currency::parse("USD").unwrap(),
                description: "USD coins".into(),
                expire_at: Timestamp(1_800_000_000_000 + 30 * MIN),
                client_ip: None,
            })
            .unwrap();
        assert_eq!(
            body,
            "cancel_url=https%3A%2F%2Fshop.example%2Fpayment%2Freturn%3Ffrom%3Dstripe%26order_no%3DPD261122203315K3M9Q2XA7F4HD1RN\
             &client_reference_id=PD261122203315K3M9Q2XA7F4HD1RN\
             &expires_at=1800001860\
             &line_items[0][price_data][currency]=usd\
             &line_items[0][price_data][product_data][name]=USD%20coins\
             &line_items[0][price_data][unit_amount]=499\
             &line_items[0][quantity]=1\
             &metadata[order_no]=PD261122203315K3M9Q2XA7F4HD1RN\
             &mode=payment\
             &payment_intent_data[metadata][order_no]=PD261122203315K3M9Q2XA7F4HD1RN\
             &success_url=https%3A%2F%2Fshop.example%2Fpayment%2Freturn%3Forder_no%3DPD261122203315K3M9Q2XA7F4HD1RN"
        );
    }

    #[test]
    fn sessions_and_refunds_map_exhaustively() {
        let st = stripe();
        let session = |payment_status: &str, status: &str| -> Session {
            serde_json::from_value(json!({
                "id": "cs_1", "payment_status": payment_status, "status": status,
                "client_reference_id": "PD1", "payment_intent": "pi_1",
                "amount_total": 990, "currency": "cny",
            }))
            .unwrap()
        };
        let q = |p, s| st.outcome(&session(p, s), PaymentSource::Query);
        assert!(
            matches!(q("paid", "complete"), Ok(QueryOutcome::Paid(r)) if r.transaction_id == "pi_1" && r.currency.as_str() == "CNY")
        );
        assert_eq!(q("unpaid", "open"), Ok(QueryOutcome::NotPaid));
        assert_eq!(q("unpaid", "complete"), Ok(QueryOutcome::NotPaid));
        assert_eq!(q("unpaid", "expired"), Ok(QueryOutcome::Closed));
        assert!(q("no_payment_required", "complete").is_err());
        assert!(q("mystery", "open").is_err());
        let refund = |status: &str| -> Refund {
            serde_json::from_value(json!({"id": "re_1", "amount": 5, "status": status})).unwrap()
        };
        let r = |s| refund_outcome(&refund(s)).map(|o| o.status);
        assert_eq!(r("pending"), Ok(RefundStatus::Processing));
        assert_eq!(r("requires_action"), Ok(RefundStatus::Processing));
        assert_eq!(r("succeeded"), Ok(RefundStatus::Succeeded));
        assert!(matches!(r("failed"), Ok(RefundStatus::Failed { .. })));
        assert!(matches!(r("canceled"), Ok(RefundStatus::Failed { .. })));
        assert!(r("unheard_of").is_err());
    }

    #[test]
    fn test_keys_take_only_test_events() {
        let st = stripe();
        let body = br#"{"id":"evt_1","object":"event","type":"customer.created","created":1,"livemode":true,"data":{"object":{}}}"#;
        let now = st.now_secs();
        let header = webhook::signature_header("whsec_unit", now, body);
        assert_eq!(
            st.verify_event(Some(&header), body).unwrap_err(),
            RejectReason::WrongMerchant
        );
        let test_body = String::from_utf8_lossy(body).replace("true", "false");
        let header = webhook::signature_header("whsec_unit", now, test_body.as_bytes());
        assert!(st.verify_event(Some(&header), test_body.as_bytes()).is_ok());
    }
}
