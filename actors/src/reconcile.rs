//! Reconciliation: payd's records against a provider's statement for one day.
//!
//! Pure, like the order machine: [`compare`] takes the statement (already parsed from
//! the provider's format by its adapter) and payd's orders, and returns the report
//! plus the repairs to make. The caller feeds each repair to the order's actor as the
//! very event a provider query or notification would have produced, so a payment
//! found only in the statement is granted — or refunded under the late-payment rule —
//! by the same machine rules, never by a side door. Re-running a day is idempotent:
//! a repaired payment is on the order afterwards (a no-op for the machine), and the
//! report carries forward what an earlier run of the same day repaired.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::model::{
    Currency, Order, OrderStatus, PaymentDisposition, PaymentSource, RefundState, Timestamp,
};
use crate::order::machine::{Event, PaymentReport, QueryOutcome, RefundReport};

/// A line of the statement: a payment or a refund, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RowKind {
    Payment = 0,
    Refund = 1,
}

/// One statement row, normalised by the provider's adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    pub kind: RowKind,
    /// payd's order number (`out_trade_no`, 商户订单号, `metadata[order_no]`).
    pub order_no: String,
    /// The provider's payment transaction id.
    pub transaction_id: String,
    /// payd's refund number (`out_refund_no`, 退款批次号/请求号) on a refund row.
    pub refund_no: Option<String>,
    pub provider_refund_id: Option<String>,
    /// Always positive: the payment taken or the refund given back.
    pub amount_minor: i64,
    pub currency: Currency,
    /// The provider's fee on this row in thousandths of a minor unit (WeChat states
    /// fees to 0.00001 yuan); negative when a refund gives a fee back.
    pub fee_milli_minor: i64,
    /// The fee's currency: the row's, except where the provider settles in another
    /// (Stripe charges fees in the account's balance currency).
    pub fee_currency: Currency,
    pub at: Timestamp,
    /// The row as the statement wrote it: the evidence of any discrepancy.
    pub raw: String,
}

/// A statement for one provider and day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statement {
    pub rows: Vec<StatementRow>,
}

/// The day a statement covers, as milliseconds `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayWindow {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl DayWindow {
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start <= t && t < self.end
    }
}

/// What a discrepancy is. Persisted: append-only discriminants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DiscrepancyKind {
    /// Paid at the provider, not paid in payd: fed to the order as a late confirmation.
    PaidNotRecorded = 0,
    /// Paid in payd, absent from the provider's statement.
    MissingAtProvider = 1,
    /// The statement's amount differs from payd's.
    AmountMismatch = 2,
    /// The statement's currency differs from payd's.
    CurrencyMismatch = 3,
    /// A refund in the statement that payd did not know had succeeded.
    RefundNotRecorded = 4,
    /// A refund payd holds as succeeded that the statement does not list.
    RefundMissingAtProvider = 5,
    /// A statement row for an order number payd never issued.
    UnknownOrder = 6,
}

impl DiscrepancyKind {
    pub const ALL: [DiscrepancyKind; 7] = [
        DiscrepancyKind::PaidNotRecorded,
        DiscrepancyKind::MissingAtProvider,
        DiscrepancyKind::AmountMismatch,
        DiscrepancyKind::CurrencyMismatch,
        DiscrepancyKind::RefundNotRecorded,
        DiscrepancyKind::RefundMissingAtProvider,
        DiscrepancyKind::UnknownOrder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DiscrepancyKind::PaidNotRecorded => "paid_not_recorded",
            DiscrepancyKind::MissingAtProvider => "missing_at_provider",
            DiscrepancyKind::AmountMismatch => "amount_mismatch",
            DiscrepancyKind::CurrencyMismatch => "currency_mismatch",
            DiscrepancyKind::RefundNotRecorded => "refund_not_recorded",
            DiscrepancyKind::RefundMissingAtProvider => "refund_missing_at_provider",
            DiscrepancyKind::UnknownOrder => "unknown_order",
        }
    }
}

/// Whether reconciliation settled a discrepancy or a human must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// Applied to the order through its actor (granted or refunded by policy).
    Repaired = 0,
    /// Reported: an operator must look.
    Unresolved = 1,
    /// Reported, and an operator has settled it (the outcome names who and why).
    Resolved = 2,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Repaired => "repaired",
            Resolution::Unresolved => "unresolved",
            Resolution::Resolved => "resolved",
        }
    }
}

/// One difference, with the statement row (or payd's record) that shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discrepancy {
    pub kind: DiscrepancyKind,
    pub order_no: String,
    pub transaction_id: String,
    pub refund_no: Option<String>,
    pub statement_amount_minor: Option<i64>,
    pub payd_amount_minor: Option<i64>,
    pub currency: Currency,
    pub resolution: Resolution,
    /// What the order became, or why nothing was done.
    pub outcome: String,
    pub evidence: String,
}

impl Discrepancy {
    /// Identifies the same discrepancy across runs of one day.
    fn identity(&self) -> (DiscrepancyKind, &str, &str, Option<&str>) {
        (
            self.kind,
            &self.order_no,
            &self.transaction_id,
            self.refund_no.as_deref(),
        )
    }
}

/// Count and amount of one category in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryTotal {
    /// `matched`, `matched_refund` or a [`DiscrepancyKind`] name.
    pub category: String,
    pub currency: Currency,
    pub count: u64,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeTotal {
    pub currency: Currency,
    pub fee_milli_minor: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    Completed = 0,
    Failed = 1,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
        }
    }
}

/// The stored result of reconciling one provider's day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconReport {
    pub provider: String,
    /// `YYYY-MM-DD`, in the provider's statement time zone.
    pub date: String,
    pub status: RunStatus,
    /// Why the latest run failed (the statement could not be fetched or read); a
    /// completed report of an earlier run is kept alongside.
    pub failure: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// Runs of this day so far.
    pub runs: u32,
    pub statement_rows: u64,
    pub totals: Vec<CategoryTotal>,
    pub fees: Vec<FeeTotal>,
    pub discrepancies: Vec<Discrepancy>,
}

impl payd_storage::Record for ReconReport {
    const SCHEMA: u8 = 1;
}

impl ReconReport {
    pub fn unresolved(&self) -> usize {
        self.discrepancies
            .iter()
            .filter(|d| d.resolution == Resolution::Unresolved)
            .count()
    }
}

/// An event to feed to an order's actor, and the discrepancy it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub order_no: String,
    pub event: Event,
    /// Index into the report's discrepancies.
    pub discrepancy: usize,
}

/// What [`compare`] found: the report's body and the repairs still to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub statement_rows: u64,
    pub totals: Vec<CategoryTotal>,
    pub fees: Vec<FeeTotal>,
    pub discrepancies: Vec<Discrepancy>,
    pub repairs: Vec<Repair>,
}

/// The order's state after a payment was fed to it, in words.
pub fn payment_outcome(order: &Order, transaction_id: &str) -> String {
    let Some(p) = order
        .payments
        .iter()
        .find(|p| p.transaction_id == transaction_id)
    else {
        return format!("order is {}; payment not recorded", order.status.as_str());
    };
    match p.disposition {
        PaymentDisposition::Granted if order.late_payment => {
            "late payment: order paid and granted (late-payment policy grant)".into()
        }
        PaymentDisposition::Granted => "order paid and granted".into(),
        PaymentDisposition::LateRefund => {
            "late payment: refunded (late-payment policy refund)".into()
        }
        PaymentDisposition::DoublePayment => "second payment of a paid order: refunded".into(),
        PaymentDisposition::AmountMismatch => {
            "recorded on the order as an amount-mismatch anomaly; nothing granted".into()
        }
    }
}

/// Compares `statement` with `orders` (every order of the provider that could be
/// concerned: the statement's, and those paid or refunded within `day`).
/// `previous`: the stored report of an earlier run of the same day, whose repairs
/// are carried forward so that a re-run reports the same result.
pub fn compare(
    statement: &Statement,
    orders: &HashMap<String, Order>,
    day: DayWindow,
    previous: Option<&ReconReport>,
) -> Comparison {
    // Keyed without allocating per row: 100 000 rows are mostly the same few keys.
    let mut totals: HashMap<&'static str, HashMap<Currency, (u64, i64)>> = HashMap::new();
    let mut fees: HashMap<Currency, i64> = HashMap::new();
    let mut discrepancies: Vec<Discrepancy> = Vec::new();
    let mut repairs = Vec::new();
    let earlier: HashSet<(DiscrepancyKind, String, String, Option<String>)> = previous
        .map(|r| {
            r.discrepancies
                .iter()
                .filter(|d| d.resolution == Resolution::Repaired)
                .map(|d| {
                    let (k, o, t, r) = d.identity();
                    (k, o.to_string(), t.to_string(), r.map(str::to_string))
                })
                .collect()
        })
        .unwrap_or_default();
    let was_repaired = |kind, order_no: &str, tx: &str, refund_no: Option<&str>| {
        !earlier.is_empty()
            && earlier.contains(&(
                kind,
                order_no.to_string(),
                tx.to_string(),
                refund_no.map(str::to_string),
            ))
    };
    let mut add = |category: &'static str, currency: &Currency, amount: i64| {
        let by_currency = totals.entry(category).or_default();
        let e = match by_currency.get_mut(currency) {
            Some(e) => e,
            None => by_currency.entry(currency.clone()).or_default(),
        };
        e.0 += 1;
        e.1 += amount;
    };
    let mut statement_payments: HashSet<&str> = HashSet::new();
    let mut statement_refunds: HashSet<&str> = HashSet::new();

    for row in &statement.rows {
        match fees.get_mut(&row.fee_currency) {
            Some(f) => *f += row.fee_milli_minor,
            None => {
                fees.insert(row.fee_currency.clone(), row.fee_milli_minor);
            }
        }
        let mut found = |kind: DiscrepancyKind,
                         payd_amount: Option<i64>,
                         resolution: Resolution,
                         outcome: String| {
            discrepancies.push(Discrepancy {
                kind,
                order_no: row.order_no.clone(),
                transaction_id: row.transaction_id.clone(),
                refund_no: row.refund_no.clone(),
                statement_amount_minor: Some(row.amount_minor),
                payd_amount_minor: payd_amount,
                currency: row.currency.clone(),
                resolution,
                outcome,
                evidence: row.raw.clone(),
            });
            discrepancies.len() - 1
        };
        let Some(order) = orders.get(&row.order_no) else {
            add(
                DiscrepancyKind::UnknownOrder.as_str(),
                &row.currency,
                row.amount_minor,
            );
            found(
                DiscrepancyKind::UnknownOrder,
                None,
                Resolution::Unresolved,
                "no order with this number in payd".into(),
            );
            continue;
        };
        match row.kind {
            RowKind::Payment => {
                statement_payments.insert(&row.transaction_id);
                let payment = order
                    .payments
                    .iter()
                    .find(|p| p.transaction_id == row.transaction_id);
                // Against the order's price, and against what payd recorded for this
                // very transaction if it has it.
                let differs = if row.currency != order.currency
                    || payment.is_some_and(|p| p.currency != row.currency)
                {
                    Some(DiscrepancyKind::CurrencyMismatch)
                } else if row.amount_minor != order.amount_minor
                    || payment.is_some_and(|p| p.amount_minor != row.amount_minor)
                {
                    Some(DiscrepancyKind::AmountMismatch)
                } else {
                    None
                };
                let confirm = || {
                    Event::QueryResult(QueryOutcome::Paid(PaymentReport {
                        transaction_id: row.transaction_id.clone(),
                        amount_minor: row.amount_minor,
                        currency: row.currency.clone(),
                        paid_at: row.at,
                        source: PaymentSource::Reconciliation,
                    }))
                };
                match (differs, payment) {
                    (Some(kind), None) => {
                        // Unknown to payd and not what the order asked: the machine
                        // records it as an amount-mismatch anomaly and grants nothing.
                        add(kind.as_str(), &row.currency, row.amount_minor);
                        let i = found(
                            kind,
                            Some(order.amount_minor),
                            Resolution::Unresolved,
                            String::new(),
                        );
                        repairs.push(Repair {
                            order_no: order.order_no.clone(),
                            event: confirm(),
                            discrepancy: i,
                        });
                    }
                    (Some(kind), Some(p)) => {
                        add(kind.as_str(), &row.currency, row.amount_minor);
                        let outcome = if p.source == PaymentSource::Reconciliation {
                            payment_outcome(order, &p.transaction_id)
                        } else {
                            "payd recorded another amount or currency for this transaction".into()
                        };
                        found(kind, Some(p.amount_minor), Resolution::Unresolved, outcome);
                    }
                    (None, None) => {
                        let kind = DiscrepancyKind::PaidNotRecorded;
                        add(kind.as_str(), &row.currency, row.amount_minor);
                        let i = found(kind, None, Resolution::Repaired, String::new());
                        repairs.push(Repair {
                            order_no: order.order_no.clone(),
                            event: confirm(),
                            discrepancy: i,
                        });
                    }
                    (None, Some(p))
                        if p.source == PaymentSource::Reconciliation
                            || was_repaired(
                                DiscrepancyKind::PaidNotRecorded,
                                &row.order_no,
                                &row.transaction_id,
                                None,
                            ) =>
                    {
                        // Repaired by an earlier run of reconciliation.
                        let kind = DiscrepancyKind::PaidNotRecorded;
                        add(kind.as_str(), &row.currency, row.amount_minor);
                        found(
                            kind,
                            None,
                            Resolution::Repaired,
                            payment_outcome(order, &p.transaction_id),
                        );
                    }
                    (None, Some(_)) => add("matched", &row.currency, row.amount_minor),
                }
            }
            RowKind::Refund => {
                let refund_no = row.refund_no.as_deref().unwrap_or_default();
                statement_refunds.insert(refund_no);
                let refund = order.refunds.iter().find(|r| r.refund_no == refund_no);
                match refund {
                    None => {
                        let kind = DiscrepancyKind::RefundNotRecorded;
                        add(kind.as_str(), &row.currency, row.amount_minor);
                        found(
                            kind,
                            None,
                            Resolution::Unresolved,
                            "a refund payd did not make (made at the provider directly?)".into(),
                        );
                    }
                    Some(r) if r.amount_minor != row.amount_minor => {
                        let kind = DiscrepancyKind::AmountMismatch;
                        add(kind.as_str(), &row.currency, row.amount_minor);
                        found(
                            kind,
                            Some(r.amount_minor),
                            Resolution::Unresolved,
                            "refund amount differs".into(),
                        );
                    }
                    Some(r) if r.state != RefundState::Succeeded => {
                        let kind = DiscrepancyKind::RefundNotRecorded;
                        add(kind.as_str(), &row.currency, row.amount_minor);
                        let i = found(
                            kind,
                            Some(r.amount_minor),
                            Resolution::Repaired,
                            String::new(),
                        );
                        repairs.push(Repair {
                            order_no: order.order_no.clone(),
                            event: Event::RefundResult {
                                refund_no: r.refund_no.clone(),
                                report: RefundReport::Succeeded {
                                    provider_refund_id: row.provider_refund_id.clone(),
                                },
                            },
                            discrepancy: i,
                        });
                    }
                    Some(r)
                        if was_repaired(
                            DiscrepancyKind::RefundNotRecorded,
                            &row.order_no,
                            &row.transaction_id,
                            Some(refund_no),
                        ) =>
                    {
                        let kind = DiscrepancyKind::RefundNotRecorded;
                        add(kind.as_str(), &row.currency, row.amount_minor);
                        found(
                            kind,
                            Some(r.amount_minor),
                            Resolution::Repaired,
                            "refund recorded as succeeded".into(),
                        );
                    }
                    Some(_) => add("matched_refund", &row.currency, row.amount_minor),
                }
            }
        }
    }

    // payd's side: what it holds for the day that the statement does not list.
    let mut ours: Vec<&Order> = orders.values().collect();
    ours.sort_by(|a, b| a.order_no.cmp(&b.order_no));
    for order in ours {
        for p in &order.payments {
            if day.contains(p.paid_at) && !statement_payments.contains(p.transaction_id.as_str()) {
                let kind = DiscrepancyKind::MissingAtProvider;
                add(kind.as_str(), &p.currency, p.amount_minor);
                discrepancies.push(Discrepancy {
                    kind,
                    order_no: order.order_no.clone(),
                    transaction_id: p.transaction_id.clone(),
                    refund_no: None,
                    statement_amount_minor: None,
                    payd_amount_minor: Some(p.amount_minor),
                    currency: p.currency.clone(),
                    resolution: Resolution::Unresolved,
                    outcome: format!(
                        "payd holds this payment ({}, order {}) but the statement does not",
                        match p.source {
                            PaymentSource::Callback => "from a callback",
                            PaymentSource::Query => "from a query",
                            PaymentSource::Admin => "entered by an operator",
                            PaymentSource::Reconciliation => "from an earlier statement",
                        },
                        order.status.as_str()
                    ),
                    evidence: format!(
                        "payd: order {} transaction {} {} {} paid at {} ms",
                        order.order_no,
                        p.transaction_id,
                        p.amount_minor,
                        p.currency.as_str(),
                        p.paid_at.ms()
                    ),
                });
            }
        }
        for r in &order.refunds {
            let finished_in_day = r.finished_at.is_some_and(|t| day.contains(t));
            if r.state == RefundState::Succeeded
                && finished_in_day
                && !statement_refunds.contains(r.refund_no.as_str())
            {
                let kind = DiscrepancyKind::RefundMissingAtProvider;
                add(kind.as_str(), &order.currency, r.amount_minor);
                discrepancies.push(Discrepancy {
                    kind,
                    order_no: order.order_no.clone(),
                    transaction_id: r
                        .transaction_id
                        .clone()
                        .or_else(|| order.provider_transaction_id.clone())
                        .unwrap_or_default(),
                    refund_no: Some(r.refund_no.clone()),
                    statement_amount_minor: None,
                    payd_amount_minor: Some(r.amount_minor),
                    currency: order.currency.clone(),
                    resolution: Resolution::Unresolved,
                    outcome: "payd holds this refund as succeeded but the statement does not"
                        .into(),
                    evidence: format!(
                        "payd: order {} refund {} {} {} succeeded",
                        order.order_no,
                        r.refund_no,
                        r.amount_minor,
                        order.currency.as_str()
                    ),
                });
            }
        }
    }

    // What an operator settled in an earlier run of the day stays settled.
    if let Some(previous) = previous {
        let settled: HashMap<(DiscrepancyKind, &str, &str, Option<&str>), &str> = previous
            .discrepancies
            .iter()
            .filter(|d| d.resolution == Resolution::Resolved)
            .map(|d| (d.identity(), d.outcome.as_str()))
            .collect();
        for d in discrepancies
            .iter_mut()
            .filter(|d| d.resolution == Resolution::Unresolved)
        {
            let found = settled.get(&d.identity()).map(|o| o.to_string());
            if let Some(outcome) = found {
                d.resolution = Resolution::Resolved;
                d.outcome = outcome;
            }
        }
    }

    Comparison {
        statement_rows: statement.rows.len() as u64,
        totals: {
            let mut t: Vec<CategoryTotal> = totals
                .into_iter()
                .flat_map(|(category, by_currency)| {
                    by_currency
                        .into_iter()
                        .map(move |(currency, (count, amount_minor))| CategoryTotal {
                            category: category.to_string(),
                            currency,
                            count,
                            amount_minor,
                        })
                })
                .collect();
            t.sort_by(|a, b| (&a.category, &a.currency).cmp(&(&b.category, &b.currency)));
            t
        },
        fees: {
            let mut f: Vec<FeeTotal> = fees
                .into_iter()
                .map(|(currency, fee_milli_minor)| FeeTotal {
                    currency,
                    fee_milli_minor,
                })
                .collect();
            f.sort_by(|a, b| a.currency.cmp(&b.currency));
            f
        },
        discrepancies,
        repairs,
    }
}

/// Whether `order` is one reconciliation of `day` must look at: paid or refunded in
/// that day (payd's side of the comparison).
pub fn concerns_day(order: &Order, day: DayWindow) -> bool {
    order.payments.iter().any(|p| day.contains(p.paid_at))
        || order
            .refunds
            .iter()
            .any(|r| r.finished_at.is_some_and(|t| day.contains(t)))
        || (order.status == OrderStatus::Paid && order.paid_at.is_some_and(|t| day.contains(t)))
}

#[cfg(test)]
mod tests;
