//! The Stripe API objects payd reads — only the fields it uses — and the conversions
//! between Stripe's money and payd's.
//!
//! Stripe sends amounts as integers in the currency's smallest unit, which for the
//! currencies payd sells (CNY, USD, EUR, …, and zero-decimal ones such as JPY, whose
//! "minor unit" is the yen itself) is exactly payd's `amount_minor`: the same integer
//! passes both ways. Currencies are lower-case on Stripe's wire and upper-case ISO
//! codes in payd. The few currencies whose Stripe unit differs from the ISO minor
//! unit are refused rather than converted (see [`stripe_amount`]).

use std::collections::BTreeMap;

use payd_actors::model::{Currency, PaymentSource, Timestamp};
use payd_actors::order::machine::PaymentReport;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// An expandable field: Stripe sends either the id or, when expanded, the object.
fn expandable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(id)) => Some(id),
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    })
}

/// Metadata values are strings; anything else (or `null`) is dropped.
fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Object(o)) => o
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    })
}

/// A Checkout Session (`cs_…`).
#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    pub id: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: BTreeMap<String, String>,
    /// `open`, `complete` or `expired`.
    #[serde(default)]
    pub status: Option<String>,
    /// `paid`, `unpaid` or `no_payment_required`.
    pub payment_status: String,
    #[serde(default, deserialize_with = "expandable")]
    pub payment_intent: Option<String>,
    #[serde(default)]
    pub amount_total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub expires_at: Option<i64>,
}

impl Session {
    /// The order this session was opened for: `metadata.order_no`, else
    /// `client_reference_id`. Both present and different: `Err`.
    pub fn order_no(&self) -> Result<Option<&str>, String> {
        match (
            self.metadata.get("order_no").map(String::as_str),
            self.client_reference_id.as_deref(),
        ) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "session {} names two orders ({a} and {b})",
                self.id
            )),
            (Some(a), _) => Ok(Some(a)),
            (None, b) => Ok(b),
        }
    }

    /// The payment this session shows, when `payment_status` is `paid`.
    pub fn paid_report(
        &self,
        paid_at: Timestamp,
        source: PaymentSource,
    ) -> Result<Option<PaymentReport>, String> {
        if self.payment_status != "paid" {
            return Ok(None);
        }
        let transaction_id = self
            .payment_intent
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("paid session {} without a payment_intent", self.id))?;
        let amount_minor = self
            .amount_total
            .ok_or_else(|| format!("paid session {} without amount_total", self.id))?;
        let currency = payd_currency(self.currency.as_deref().unwrap_or(""))
            .ok_or_else(|| format!("paid session {} with a bad currency", self.id))?;
        Ok(Some(PaymentReport {
            transaction_id,
            amount_minor,
            currency,
            paid_at,
            source,
        }))
    }
}

/// A PaymentIntent (`pi_…`).
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub amount_received: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: BTreeMap<String, String>,
}

impl PaymentIntent {
    /// The payment a `succeeded` PaymentIntent shows (`amount_received`).
    pub fn paid_report(
        &self,
        paid_at: Timestamp,
        source: PaymentSource,
    ) -> Result<Option<PaymentReport>, String> {
        if self.status.as_deref() != Some("succeeded") {
            return Ok(None);
        }
        let amount_minor = self
            .amount_received
            .or(self.amount)
            .ok_or_else(|| format!("succeeded payment intent {} without an amount", self.id))?;
        let currency = payd_currency(self.currency.as_deref().unwrap_or(""))
            .ok_or_else(|| format!("payment intent {} with a bad currency", self.id))?;
        Ok(Some(PaymentReport {
            transaction_id: self.id.clone(),
            amount_minor,
            currency,
            paid_at,
            source,
        }))
    }
}

/// A Refund (`re_…`).
#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    #[serde(default)]
    pub currency: Option<String>,
    /// `pending`, `requires_action`, `succeeded`, `failed` or `canceled`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub failure_reason: Option<String>,
    #[serde(default, deserialize_with = "expandable")]
    pub payment_intent: Option<String>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: BTreeMap<String, String>,
}

/// One page of `GET /v1/refunds`.
#[derive(Debug, Clone, Deserialize)]
pub struct RefundList {
    pub data: Vec<Refund>,
    #[serde(default)]
    pub has_more: bool,
}

/// A Charge (`ch_…`), as `charge.refunded` carries it.
#[derive(Debug, Clone, Deserialize)]
pub struct Charge {
    pub id: String,
    #[serde(default, deserialize_with = "expandable")]
    pub payment_intent: Option<String>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: BTreeMap<String, String>,
}

/// A Dispute (`dp_…`): the buyer asked their bank to take the money back.
#[derive(Debug, Clone, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    /// `warning_needs_response`, `needs_response`, `under_review`, `won`, `lost`, …
    pub status: String,
    #[serde(default, deserialize_with = "expandable")]
    pub payment_intent: Option<String>,
}

/// Stripe's error body: `{"error": {"type", "code"?, "message"?, "param"?}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

/// A Stripe currency (`usd`) as payd's (`USD`).
pub fn payd_currency(stripe: &str) -> Option<Currency> {
    Currency::parse(&stripe.to_ascii_uppercase())
}

/// payd's currency as Stripe spells it.
pub fn stripe_currency(c: &Currency) -> String {
    c.as_str().to_ascii_lowercase()
}

/// Currencies whose Stripe unit is not the ISO minor unit: Stripe wants ISK and UGX
/// (ISO: no decimals) written with two decimals.
const CONVERTED_UNITS: [&str; 2] = ["ISK", "UGX"];
/// Three-decimal currencies: Stripe takes only amounts whose last digit is zero.
const THREE_DECIMAL: [&str; 5] = ["BHD", "JOD", "KWD", "OMR", "TND"];

/// payd's `amount_minor` as the `unit_amount` Stripe expects — the same integer —
/// or why this amount cannot be charged through Stripe as it is.
pub fn stripe_amount(amount_minor: i64, currency: &Currency) -> Result<i64, String> {
    let c = currency.as_str();
    if amount_minor <= 0 {
        return Err(format!("{amount_minor} {c} is not a positive amount"));
    }
    if CONVERTED_UNITS.contains(&c) {
        return Err(format!(
            "{c} needs a unit conversion for Stripe that payd does not do"
        ));
    }
    if THREE_DECIMAL.contains(&c) && amount_minor % 10 != 0 {
        return Err(format!(
            "Stripe takes {c} amounts only in multiples of 10 minor units"
        ));
    }
    Ok(amount_minor)
}

/// Whether `s` can be put in a URL path as a Stripe object id.
pub fn is_object_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(s: &str) -> Currency {
        Currency::parse(s).unwrap()
    }

    #[test]
    fn amounts_pass_through_in_minor_units_zero_decimal_included() {
        assert_eq!(stripe_amount(499, &cur("USD")), Ok(499));
        assert_eq!(stripe_amount(990, &cur("CNY")), Ok(990));
        // JPY has no minor unit: 500 yen is 500 both in payd and at Stripe.
        assert_eq!(stripe_amount(500, &cur("JPY")), Ok(500));
        assert!(stripe_amount(0, &cur("USD")).is_err());
        assert!(stripe_amount(1000, &cur("ISK")).is_err());
        assert!(stripe_amount(1005, &cur("KWD")).is_err());
        assert_eq!(stripe_amount(1010, &cur("KWD")), Ok(1010));
        assert_eq!(stripe_currency(&cur("USD")), "usd");
        assert_eq!(payd_currency("cny"), Some(cur("CNY")));
        assert_eq!(payd_currency("usdx"), None);
    }

    #[test]
    fn a_session_names_its_order_and_its_payment() {
        let s: Session = serde_json::from_value(serde_json::json!({
            "id": "cs_test_1", "payment_status": "paid", "status": "complete",
            "client_reference_id": "PD1", "metadata": {"order_no": "PD1", "n": 1},
            "payment_intent": {"id": "pi_1", "object": "payment_intent"},
            "amount_total": 499, "currency": "usd",
        }))
        .unwrap();
        assert_eq!(s.order_no(), Ok(Some("PD1")));
        let r = s
            .paid_report(Timestamp(5), PaymentSource::Callback)
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                r.transaction_id.as_str(),
                r.amount_minor,
                r.currency.as_str()
            ),
            ("pi_1", 499, "USD")
        );
        let mut other = s.clone();
        other.client_reference_id = Some("PD2".into());
        assert!(other.order_no().is_err());
        other.payment_status = "unpaid".into();
        assert_eq!(
            other.paid_report(Timestamp(5), PaymentSource::Query),
            Ok(None)
        );
        assert!(is_object_id("cs_test_a1B2"));
        assert!(!is_object_id("cs_test/../x"));
    }
}
