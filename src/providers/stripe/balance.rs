//! Stripe's statement: the balance transactions of a UTC day.
//!
//! `GET /v1/balance_transactions?created[gte]=…&created[lt]=…&limit=100` with
//! `expand[]=data.source`, page after page (`starting_after` the last id while
//! `has_more`). A `charge`/`payment` transaction's source is the Charge, whose
//! `payment_intent` is the transaction id payd records and whose metadata (copied
//! from the PaymentIntent, where payd put `order_no`) names the order; a
//! `refund`/`payment_refund` source is the Refund, carrying payd's `refund_no` in its
//! metadata. Amounts and currencies are the charge's own (what the buyer was asked
//! for); the fee is the balance transaction's, in the balance currency. Other types
//! (payouts, Stripe's own fees, dispute adjustments) move no order's money and are
//! left out; disputes reach payd as webhooks.

use std::collections::BTreeMap;

use payd_actors::model::{Currency, Timestamp};
use payd_actors::reconcile::{RowKind, StatementRow};
use serde::Deserialize;

use crate::providers::statement::StatementError;

/// Transactions per page (Stripe's maximum).
pub const PAGE: usize = 100;

#[derive(Debug, Deserialize)]
pub struct BalanceList {
    pub data: Vec<serde_json::Value>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize)]
struct BalanceTransaction {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    fee: i64,
    currency: String,
    source: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Source {
    id: String,
    object: String,
    amount: i64,
    currency: String,
    #[serde(default)]
    payment_intent: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// A row still missing its order number (refunds name only their PaymentIntent).
#[derive(Debug)]
pub struct Pending {
    pub row: StatementRow,
    /// Look the order up by this PaymentIntent when `row.order_no` is empty.
    pub payment_intent: String,
}

fn currency(code: &str) -> Result<Currency, StatementError> {
    Currency::parse(&code.to_ascii_uppercase())
        .ok_or_else(|| StatementError::malformed(format!("bad currency {code:?}")))
}

/// Maps one balance transaction (JSON as listed); `None` for types that are not a
/// payment or a refund.
pub fn map_transaction(v: &serde_json::Value) -> Result<Option<Pending>, StatementError> {
    let bt: BalanceTransaction = serde_json::from_value(v.clone())
        .map_err(|e| StatementError::malformed(format!("balance transaction: {e}")))?;
    let kind = match bt.kind.as_str() {
        "charge" | "payment" => RowKind::Payment,
        "refund" | "payment_refund" => RowKind::Refund,
        _ => return Ok(None),
    };
    let source: Source = match bt.source {
        Some(s @ serde_json::Value::Object(_)) => serde_json::from_value(s).map_err(|e| {
            StatementError::malformed(format!("balance transaction {} source: {e}", bt.id))
        })?,
        _ => {
            return Err(StatementError::malformed(format!(
                "balance transaction {} has no expanded source",
                bt.id
            )));
        }
    };
    let expected = match kind {
        RowKind::Payment => "charge",
        RowKind::Refund => "refund",
    };
    if source.object != expected {
        return Err(StatementError::malformed(format!(
            "balance transaction {} of type {} has a {} source",
            bt.id, bt.kind, source.object
        )));
    }
    let payment_intent = source
        .payment_intent
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            StatementError::malformed(format!(
                "{} {} has no payment_intent",
                source.object, source.id
            ))
        })?;
    let order_no = match kind {
        RowKind::Payment => source.metadata.get("order_no").cloned().unwrap_or_default(),
        RowKind::Refund => String::new(),
    };
    let refund_no = match kind {
        RowKind::Payment => None,
        RowKind::Refund => Some(
            source
                .metadata
                .get("refund_no")
                .cloned()
                .unwrap_or_default(),
        ),
    };
    Ok(Some(Pending {
        row: StatementRow {
            kind,
            order_no,
            transaction_id: payment_intent.clone(),
            refund_no,
            provider_refund_id: (kind == RowKind::Refund).then(|| source.id.clone()),
            amount_minor: source.amount.abs(),
            currency: currency(&source.currency)?,
            fee_currency: currency(&bt.currency)?,
            fee_milli_minor: bt.fee.saturating_mul(1000),
            at: Timestamp(bt.created.saturating_mul(1000)),
            raw: v.to_string(),
        },
        payment_intent,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn charges_and_refunds_map_to_the_payment_intent_and_the_order() {
        let charge = json!({"id": "txn_1", "object": "balance_transaction", "type": "charge",
            "amount": 4200, "currency": "eur", "fee": 152, "net": 4048, "created": 1_763_800_000,
            "source": {"id": "ch_1", "object": "charge", "amount": 499, "currency": "usd",
                "payment_intent": "pi_1", "metadata": {"order_no": "PD1"}}});
        let p = map_transaction(&charge).unwrap().unwrap();
        assert_eq!(
            (
                p.row.kind,
                p.row.order_no.as_str(),
                p.row.transaction_id.as_str()
            ),
            (RowKind::Payment, "PD1", "pi_1")
        );
        assert_eq!(
            (
                p.row.amount_minor,
                p.row.currency.as_str(),
                p.row.fee_currency.as_str()
            ),
            (499, "USD", "EUR")
        );
        assert_eq!(
            (p.row.fee_milli_minor, p.row.at),
            (152_000, Timestamp(1_763_800_000_000))
        );
        let refund = json!({"id": "txn_2", "type": "refund", "amount": -100, "currency": "usd",
            "fee": 0, "created": 1, "source": {"id": "re_1", "object": "refund", "amount": 100,
            "currency": "usd", "payment_intent": "pi_1", "metadata": {"refund_no": "RF1"}}});
        let r = map_transaction(&refund).unwrap().unwrap();
        assert_eq!(
            (r.row.kind, r.row.refund_no.as_deref(), r.row.amount_minor),
            (RowKind::Refund, Some("RF1"), 100)
        );
        assert_eq!(
            (r.row.order_no.as_str(), r.payment_intent.as_str()),
            ("", "pi_1")
        );
        let payout = json!({"id": "txn_3", "type": "payout", "amount": -5000, "currency": "usd", "fee": 0, "created": 1, "source": "po_1"});
        assert!(map_transaction(&payout).unwrap().is_none());
        let unexpanded = json!({"id": "txn_4", "type": "charge", "amount": 1, "currency": "usd", "fee": 0, "created": 1, "source": "ch_9"});
        assert!(
            map_transaction(&unexpanded)
                .unwrap_err()
                .to_string()
                .contains("expanded")
        );
    }
}
