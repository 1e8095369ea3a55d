//! Stripe webhooks: the `Stripe-Signature` check over the raw body, the event
//! envelope, and what each event type means to payd — as data, so the rules are
//! tested without a server.
//!
//! The signature is `hex(HMAC-SHA256(key = the whole "whsec_…" secret, "t.body"))`;
//! any `v1` entry may match (several appear while a secret is being rolled), other
//! schemes are ignored, and the comparison is constant-time. A timestamp more than
//! 300 s old is refused, as Stripe's libraries do; so is one more than 300 s ahead,
//! which they accept, because a payload signed by a clock far ahead could otherwise be
//! replayed for as long as that clock is ahead.

use aws_lc_rs::hmac;
use payd_actors::model::{Currency, PaymentSource, Timestamp};
use payd_actors::order::machine::PaymentReport;
use serde::Deserialize;
use serde_json::Value;

use super::objects::{self, Charge, Dispute, PaymentIntent, Refund, Session};
use crate::providers::rejections::RejectReason;

/// How old (or how far ahead) a signed timestamp may be, in seconds.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No `Stripe-Signature` header, or one without any `v1` entry.
    Missing,
    /// The header cannot be read (no `t`, a non-numeric `t`, an entry without `=`).
    Malformed,
    /// No `v1` entry matches under any secret.
    Mismatch,
    /// Signed longer ago (or further ahead) than the tolerance.
    OutsideTolerance,
}

impl SignatureError {
    pub fn reason(self) -> RejectReason {
        match self {
            SignatureError::Missing => RejectReason::MissingSignature,
            SignatureError::Malformed => RejectReason::Malformed,
            SignatureError::Mismatch => RejectReason::BadSignature,
            SignatureError::OutsideTolerance => RejectReason::Stale,
        }
    }
}

/// A parsed `Stripe-Signature` header: `t` and every decodable `v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    pub timestamp: i64,
    pub v1: Vec<Vec<u8>>,
}

pub fn parse_header(header: &str) -> Result<SignatureHeader, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let (k, v) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k {
            "t" if timestamp.is_none() => {
                timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?);
            }
            "t" => return Err(SignatureError::Malformed),
            // An undecodable v1 can never match; the others may.
            "v1" => {
                if let Ok(sig) = data_encoding::HEXLOWER_PERMISSIVE.decode(v.as_bytes()) {
                    v1.push(sig);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        return Err(SignatureError::Missing);
    }
    Ok(SignatureHeader { timestamp, v1 })
}

/// `t + "." + body`: what the signature covers.
fn signed_payload(timestamp: i64, payload: &[u8]) -> Vec<u8> {
    let mut signed = timestamp.to_string().into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(payload);
    signed
}

/// The key is the whole secret string, `whsec_` prefix included, as UTF-8.
fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

/// `t=…,v1=…` over `payload`, as Stripe sends it (and as the sandbox signs).
pub fn signature_header(secret: &str, timestamp: i64, payload: &[u8]) -> String {
    let tag = hmac::sign(&key(secret), &signed_payload(timestamp, payload));
    format!(
        "t={timestamp},v1={}",
        data_encoding::HEXLOWER.encode(tag.as_ref())
    )
}

/// Checks `header` over the raw `payload` with any of `secrets` at `now_secs`.
/// Returns the signed timestamp.
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secrets: &[&str],
    now_secs: i64,
) -> Result<i64, SignatureError> {
    let header = parse_header(header.ok_or(SignatureError::Missing)?)?;
    let signed = signed_payload(header.timestamp, payload);
    let matched = secrets.iter().any(|secret| {
        let key = key(secret);
        header
            .v1
            .iter()
            // `hmac::verify` compares in constant time.
            .any(|sig| hmac::verify(&key, &signed, sig).is_ok())
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    if (now_secs - header.timestamp).abs() > TOLERANCE_SECS {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(header.timestamp)
}

/// The event envelope (fields payd uses).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookEvent {
    pub id: String,
    pub object: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    #[serde(default)]
    pub livemode: bool,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: Value,
}

pub fn parse_event(body: &[u8]) -> Result<WebhookEvent, RejectReason> {
    let event: WebhookEvent = serde_json::from_slice(body).map_err(|_| RejectReason::Malformed)?;
    if event.object != "event" || event.id.is_empty() || event.kind.is_empty() {
        return Err(RejectReason::Malformed);
    }
    Ok(event)
}

/// How the order an event is about is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderHint {
    /// The event names it (`client_reference_id`, `metadata.order_no`).
    OrderNo(String),
    /// Only through the PaymentIntent, whose `metadata.order_no` payd set.
    PaymentIntent(String),
}

/// What a verified event means to payd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// A payment may have landed: completed, async succeeded, PaymentIntent
    /// succeeded. `snapshot` is the payment the signed event shows, when it shows one
    /// paid; `session_id` the Checkout Session to ask about, when the event names one.
    Payment {
        order_no: String,
        session_id: Option<String>,
        snapshot: Option<PaymentReport>,
    },
    /// A delayed payment method (bank debit…) failed for this session.
    AsyncPaymentFailed {
        order_no: String,
        session_id: String,
    },
    /// A dispute was opened or changed status.
    Dispute {
        payment_intent: String,
        dispute_id: String,
        amount_minor: i64,
        currency: Currency,
        status: String,
    },
    /// Verified, logged on the order and acknowledged; decides nothing. Session
    /// expiry (the order's own expiry sequence decides), failed attempts (a
    /// PaymentIntent can be retried: not final), cancellations, refunds (refund
    /// records arrive with the refunds work).
    Logged { hint: OrderHint },
    /// An event type payd does not subscribe to: acknowledged, not logged.
    Ignored,
}

impl Meaning {
    pub fn hint(&self) -> Option<OrderHint> {
        match self {
            Meaning::Payment { order_no, .. } | Meaning::AsyncPaymentFailed { order_no, .. } => {
                Some(OrderHint::OrderNo(order_no.clone()))
            }
            Meaning::Dispute { payment_intent, .. } => {
                Some(OrderHint::PaymentIntent(payment_intent.clone()))
            }
            Meaning::Logged { hint } => Some(hint.clone()),
            Meaning::Ignored => None,
        }
    }
}

fn object<T: serde::de::DeserializeOwned>(event: &WebhookEvent) -> Result<T, RejectReason> {
    serde_json::from_value(event.data.object.clone()).map_err(|_| RejectReason::Malformed)
}

fn checked_id(id: Option<String>) -> Result<Option<String>, RejectReason> {
    match id {
        Some(id) if !objects::is_object_id(&id) => Err(RejectReason::Malformed),
        other => Ok(other),
    }
}

fn session_order(s: &Session) -> Result<String, RejectReason> {
    if !objects::is_object_id(&s.id) {
        return Err(RejectReason::Malformed);
    }
    match s.order_no() {
        Err(_) => Err(RejectReason::Malformed),
        Ok(None) => Err(RejectReason::UnknownOrder),
        Ok(Some(no)) => Ok(no.to_string()),
    }
}

fn intent_order(pi: &PaymentIntent) -> Result<String, RejectReason> {
    pi.metadata
        .get("order_no")
        .cloned()
        .ok_or(RejectReason::UnknownOrder)
}

/// What `event` means. Snapshots of paid payments are dated by the event's `created`.
pub fn classify(event: &WebhookEvent) -> Result<Meaning, RejectReason> {
    let created = Timestamp(event.created.saturating_mul(1000));
    let malformed = |_| RejectReason::Malformed;
    Ok(match event.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            let s: Session = object(event)?;
            let order_no = session_order(&s)?;
            checked_id(s.payment_intent.clone())?;
            Meaning::Payment {
                snapshot: s
                    .paid_report(created, PaymentSource::Callback)
                    .map_err(malformed)?,
                session_id: Some(s.id),
                order_no,
            }
        }
        "checkout.session.async_payment_failed" => {
            let s: Session = object(event)?;
            Meaning::AsyncPaymentFailed {
                order_no: session_order(&s)?,
                session_id: s.id,
            }
        }
        "checkout.session.expired" => {
            let s: Session = object(event)?;
            Meaning::Logged {
                hint: OrderHint::OrderNo(session_order(&s)?),
            }
        }
        "payment_intent.succeeded" => {
            let pi: PaymentIntent = object(event)?;
            checked_id(Some(pi.id.clone()))?;
            Meaning::Payment {
                order_no: intent_order(&pi)?,
                session_id: None,
                snapshot: pi
                    .paid_report(created, PaymentSource::Callback)
                    .map_err(malformed)?,
            }
        }
        "payment_intent.payment_failed" | "payment_intent.canceled" => {
            let pi: PaymentIntent = object(event)?;
            Meaning::Logged {
                hint: OrderHint::OrderNo(intent_order(&pi)?),
            }
        }
        "charge.refunded" => {
            let c: Charge = object(event)?;
            let hint = match (c.metadata.get("order_no"), checked_id(c.payment_intent)?) {
                (Some(no), _) => OrderHint::OrderNo(no.clone()),
                (None, Some(pi)) => OrderHint::PaymentIntent(pi),
                (None, None) => return Err(RejectReason::UnknownOrder),
            };
            Meaning::Logged { hint }
        }
        "refund.created" | "refund.updated" | "refund.failed" => {
            let r: Refund = object(event)?;
            let hint = match (r.metadata.get("order_no"), checked_id(r.payment_intent)?) {
                (Some(no), _) => OrderHint::OrderNo(no.clone()),
                (None, Some(pi)) => OrderHint::PaymentIntent(pi),
                (None, None) => return Err(RejectReason::UnknownOrder),
            };
            Meaning::Logged { hint }
        }
        "charge.dispute.created"
        | "charge.dispute.updated"
        | "charge.dispute.closed"
        | "charge.dispute.funds_withdrawn"
        | "charge.dispute.funds_reinstated" => {
            let d: Dispute = object(event)?;
            Meaning::Dispute {
                payment_intent: checked_id(d.payment_intent)?.ok_or(RejectReason::UnknownOrder)?,
                dispute_id: d.id,
                amount_minor: d.amount,
                currency: objects::payd_currency(&d.currency).ok_or(RejectReason::Malformed)?,
                status: d.status,
            }
        }
        _ => Meaning::Ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VECTORS: &str = include_str!("../../../tests/fixtures/vectors/stripe.json");

    fn vectors() -> Value {
        serde_json::from_str(VECTORS).unwrap()
    }

    fn s(v: &Value, k: &str) -> String {
        v[k].as_str().unwrap().to_string()
    }

    #[test]
    fn the_vector_header_is_reproduced_byte_for_byte() {
        let v = vectors();
        let t = v["timestamp"].as_i64().unwrap();
        let payload = s(&v, "payload");
        assert_eq!(
            format!("{t}.{payload}"),
            s(&v, "signed_payload"),
            "signed payload is t.body"
        );
        assert_eq!(
            signature_header(&s(&v, "secret"), t, payload.as_bytes()),
            s(&v, "stripe_signature")
        );
        // With the clock injected at the signing time it verifies…
        assert_eq!(
            verify(
                Some(&s(&v, "stripe_signature")),
                payload.as_bytes(),
                &[&s(&v, "secret")],
                t
            ),
            Ok(t)
        );
        // …and today, with the default tolerance, it is far too old.
        assert_eq!(
            verify(
                Some(&s(&v, "stripe_signature")),
                payload.as_bytes(),
                &[&s(&v, "secret")],
                t + 86_400 * 365
            ),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn the_rolled_secret_header_verifies_under_either_secret() {
        let v = vectors();
        let t = v["timestamp"].as_i64().unwrap();
        let payload = s(&v, "payload");
        let header = s(&v, "stripe_signature_rolled_secret");
        let parsed = parse_header(&header).unwrap();
        assert_eq!(parsed.v1.len(), 2, "v0 is ignored");
        for secret in [s(&v, "secret"), s(&v, "old_secret")] {
            assert_eq!(
                verify(Some(&header), payload.as_bytes(), &[&secret], t),
                Ok(t)
            );
        }
        assert_eq!(
            verify(Some(&header), payload.as_bytes(), &["whsec_other"], t),
            Err(SignatureError::Mismatch)
        );
        // One byte of the body changed: nothing matches.
        let tampered = payload.replace("1999", "1998");
        assert_eq!(
            verify(Some(&header), tampered.as_bytes(), &[&s(&v, "secret")], t),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn tolerance_is_300_seconds_either_way() {
        let secret = "whsec_test_tolerance";
        let body = br#"{"id":"evt_1"}"#;
        let t = 1_800_000_000;
        let h = signature_header(secret, t, body);
        for (now, ok) in [
            (t, true),
            (t + 300, true),
            (t + 301, false),
            (t - 300, true),
            (t - 301, false),
        ] {
            let got = verify(Some(&h), body, &[secret], now);
            assert_eq!(got.is_ok(), ok, "now = t{:+}", now - t);
            if !ok {
                assert_eq!(got, Err(SignatureError::OutsideTolerance));
            }
        }
    }

    #[test]
    fn malformed_headers_are_refused_with_their_reason() {
        let body = b"{}";
        let good = "t=1800000000,v1=".to_string() + &"ab".repeat(32);
        let cases: [(Option<&str>, SignatureError); 9] = [
            (None, SignatureError::Missing),
            (Some(""), SignatureError::Malformed),
            (Some("t=1800000000"), SignatureError::Missing),
            (Some("t=1800000000,v0=abcd"), SignatureError::Missing),
            (Some("t=1800000000,v1=not-hex"), SignatureError::Missing),
            (Some("v1=abcd"), SignatureError::Malformed),
            (Some("t=soon,v1=abcd"), SignatureError::Malformed),
            (Some("t=1,t=2,v1=abcd"), SignatureError::Malformed),
            (Some("t=1800000000;v1=abcd"), SignatureError::Malformed),
        ];
        for (header, want) in cases {
            assert_eq!(
                verify(header, body, &["whsec_x"], 1_800_000_000),
                Err(want),
                "{header:?}"
            );
        }
        assert_eq!(
            verify(Some(&good), body, &["whsec_x"], 1_800_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            SignatureError::Missing.reason(),
            RejectReason::MissingSignature
        );
        assert_eq!(
            SignatureError::OutsideTolerance.reason(),
            RejectReason::Stale
        );
    }

    fn event(kind: &str, object: Value) -> WebhookEvent {
        parse_event(
            json!({"id": "evt_1", "object": "event", "type": kind, "created": 1_800_000_000,
                   "livemode": false, "data": {"object": object}})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn the_vector_event_is_a_paid_checkout_session() {
        let v = vectors();
        let e = parse_event(s(&v, "payload").as_bytes()).unwrap();
        assert_eq!(e.kind, "checkout.session.completed");
        // The vector names its order by `metadata.order_id` (another integration's
        // key) and `client_reference_id`; payd reads the latter.
        match classify(&e).unwrap() {
            Meaning::Payment {
                order_no,
                session_id,
                snapshot: Some(r),
            } => {
                assert_eq!(order_no, "ORDER20240003");
                assert_eq!(session_id.as_deref(), Some("cs_test_a1b2c3d4e5f6"));
                assert_eq!(r.transaction_id, "pi_3TestPaymentIntent0001");
                assert_eq!((r.amount_minor, r.currency.as_str()), (1999, "USD"));
                assert_eq!(r.paid_at, Timestamp(1_700_000_000_000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_are_classified_by_type() {
        let session = |status: &str| {
            json!({"id": "cs_1", "object": "checkout.session", "payment_status": status,
                   "status": "complete", "client_reference_id": "PD1", "payment_intent": "pi_1",
                   "amount_total": 499, "currency": "usd"})
        };
        assert!(matches!(
            classify(&event("checkout.session.completed", session("unpaid"))),
            Ok(Meaning::Payment { snapshot: None, .. })
        ));
        assert_eq!(
            classify(&event(
                "checkout.session.async_payment_failed",
                session("unpaid")
            )),
            Ok(Meaning::AsyncPaymentFailed {
                order_no: "PD1".into(),
                session_id: "cs_1".into()
            })
        );
        assert_eq!(
            classify(&event("checkout.session.expired", session("unpaid"))),
            Ok(Meaning::Logged {
                hint: OrderHint::OrderNo("PD1".into())
            })
        );
        let pi = |status: &str| {
            json!({"id": "pi_1", "object": "payment_intent", "status": status, "amount": 499,
                   "amount_received": 499, "currency": "usd", "metadata": {"order_no": "PD1"}})
        };
        assert!(matches!(
            classify(&event("payment_intent.succeeded", pi("succeeded"))),
            Ok(Meaning::Payment {
                snapshot: Some(_),
                session_id: None,
                ..
            })
        ));
        assert!(matches!(
            classify(&event(
                "payment_intent.payment_failed",
                pi("requires_payment_method")
            )),
            Ok(Meaning::Logged { .. })
        ));
        assert_eq!(
            classify(&event(
                "charge.refunded",
                json!({"id": "ch_1", "payment_intent": "pi_1"})
            )),
            Ok(Meaning::Logged {
                hint: OrderHint::PaymentIntent("pi_1".into())
            })
        );
        assert_eq!(
            classify(&event(
                "charge.dispute.created",
                json!({"id": "dp_1", "amount": 499, "currency": "usd", "status": "needs_response",
                       "payment_intent": "pi_1", "charge": "ch_1"})
            )),
            Ok(Meaning::Dispute {
                payment_intent: "pi_1".into(),
                dispute_id: "dp_1".into(),
                amount_minor: 499,
                currency: Currency::parse("USD").unwrap(),
                status: "needs_response".into(),
            })
        );
        assert_eq!(
            classify(&event("customer.created", json!({"id": "cus_1"}))),
            Ok(Meaning::Ignored)
        );
        // Sessions payd did not open, and bodies that do not parse.
        let mut foreign = session("paid");
        foreign["client_reference_id"] = Value::Null;
        assert_eq!(
            classify(&event("checkout.session.completed", foreign)),
            Err(RejectReason::UnknownOrder)
        );
        let mut bad_id = session("paid");
        bad_id["id"] = json!("cs_1/../../v1/refunds");
        assert_eq!(
            classify(&event("checkout.session.completed", bad_id)),
            Err(RejectReason::Malformed)
        );
        assert_eq!(
            classify(&event("checkout.session.completed", json!({"id": 5}))),
            Err(RejectReason::Malformed)
        );
        assert_eq!(
            parse_event(b"{\"id\":\"evt_1\"").unwrap_err(),
            RejectReason::Malformed
        );
        assert_eq!(
            parse_event(
                br#"{"id":"evt_1","object":"charge","type":"x","created":1,"data":{"object":{}}}"#
            )
            .unwrap_err(),
            RejectReason::Malformed
        );
    }
}
