//! Refunds, as part of the pure order machine: requesting one (never more than was
//! paid, counting refunds still in flight), following the provider's answers, polling
//! the ones still processing, and the operator's overrides (force-complete, resolving
//! anomalies). Called from `machine::step`; no I/O here either.

use crate::model::{
    Actor, Anomaly, AnomalyKind, EntitlementHold, Order, OrderStatus, PaymentDisposition,
    RefundEntry, RefundState, Timestamp,
};
use crate::order::machine::{AlertKind, Effect, Policy, Rejection};

/// What the provider said about a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundReport {
    Succeeded {
        provider_refund_id: Option<String>,
    },
    Processing {
        provider_refund_id: Option<String>,
    },
    Failed {
        reason: String,
    },
    /// The call itself failed; the refund poll asks (or re-issues) again.
    Error {
        reason: String,
    },
}

/// How an operator resolves an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveAction {
    /// Refund the payment the anomaly is about.
    Refund,
    /// Accept it: the order becomes paid and is granted.
    Complete,
    /// Close it without action.
    Dismiss,
}

/// Refund numbers are the order number plus a sequence: unique, stable across
/// retries, and within every provider's length limit (≤ 64).
pub fn next_refund_no(order: &Order) -> String {
    format!("{}R{:02}", order.order_no, order.refunds.len() + 1)
}

fn in_flight(order: &Order, transaction_id: Option<&str>) -> i64 {
    order
        .refunds
        .iter()
        .filter(|r| r.transaction_id.as_deref() == transaction_id)
        .filter(|r| r.state != RefundState::Failed)
        .map(|r| r.amount_minor)
        .sum()
}

/// What can still be refunded of the order's own payment.
pub fn refundable(order: &Order) -> i64 {
    if !order.status.is_paid() || order.force_completed && order.provider_transaction_id.is_none() {
        return 0;
    }
    order.amount_minor - in_flight(order, None)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn request(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    amount_minor: Option<i64>,
    reason: String,
    by: Actor,
    transaction_id: Option<String>,
    now: Timestamp,
    policy: &Policy,
) -> Result<(), Rejection> {
    let available = match &transaction_id {
        None => {
            if !order.status.is_paid() || order.status == OrderStatus::Refunded {
                return Err(Rejection::NotRefundable(order.status));
            }
            if order.force_completed && order.provider_transaction_id.is_none() {
                return Err(Rejection::NotRefundable(order.status));
            }
            refundable(order)
        }
        Some(tx) => {
            let payment = order
                .payments
                .iter()
                .find(|p| &p.transaction_id == tx && p.disposition != PaymentDisposition::Granted)
                .ok_or(Rejection::NoSuchPayment)?;
            payment.amount_minor - in_flight(order, Some(tx))
        }
    };
    let amount = amount_minor.unwrap_or(available);
    if amount <= 0 {
        return Err(if available <= 0 {
            Rejection::RefundExceedsPaid { refundable: 0 }
        } else {
            Rejection::InvalidAmount
        });
    }
    if amount > available {
        return Err(Rejection::RefundExceedsPaid {
            refundable: available,
        });
    }
    let refund_no = next_refund_no(order);
    order.refunds.push(RefundEntry {
        refund_no: refund_no.clone(),
        amount_minor: amount,
        reason,
        state: RefundState::Processing,
        provider_refund_id: None,
        created_at: now,
        finished_at: None,
        requested_by: by,
        failure_reason: None,
        transaction_id: transaction_id.clone(),
        hold: EntitlementHold::default(),
        attempts: 0,
    });
    if transaction_id.is_none() {
        // The refunded share is put on hold now, so it cannot be spent meanwhile.
        effects.push(Effect::HoldEntitlement {
            refund_no: refund_no.clone(),
        });
    }
    effects.push(Effect::StartRefund { refund_no });
    arm_poll(order, now, policy);
    Ok(())
}

/// The refund poll is one deadline per order, re-armed while any refund processes.
fn arm_poll(order: &mut Order, now: Timestamp, policy: &Policy) {
    let attempts = order
        .refunds
        .iter()
        .filter(|r| r.state == RefundState::Processing)
        .map(|r| r.attempts)
        .min();
    match attempts {
        None => order.timers.refund_poll = None,
        Some(a) => {
            let delay = policy
                .retry_base_ms
                .max(policy.query_interval_ms)
                .saturating_mul(1i64 << a.min(6));
            order.timer_generation += 1;
            order.timers.refund_poll = Some(crate::model::Timer {
                at: now.plus_ms(delay),
                generation: order.timer_generation,
            });
        }
    }
}

pub(super) fn result(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    refund_no: &str,
    report: RefundReport,
    now: Timestamp,
    policy: &Policy,
) {
    let Some(i) = order.refunds.iter().position(|r| r.refund_no == refund_no) else {
        return;
    };
    if order.refunds[i].state != RefundState::Processing {
        // A repeated or late answer about a refund that has finished.
        return;
    }
    match report {
        RefundReport::Succeeded { provider_refund_id } => {
            let r = &mut order.refunds[i];
            r.state = RefundState::Succeeded;
            r.finished_at = Some(now);
            r.provider_refund_id = provider_refund_id.or(r.provider_refund_id.take());
            let (amount, tx) = (r.amount_minor, r.transaction_id.clone());
            match tx {
                None => {
                    order.refunded_amount_minor += amount;
                    order.status = if order.refunded_amount_minor >= order.amount_minor {
                        OrderStatus::Refunded
                    } else {
                        OrderStatus::PartiallyRefunded
                    };
                    effects.push(Effect::Clawback {
                        refund_no: refund_no.to_string(),
                    });
                }
                Some(tx) => {
                    // An extra payment went back: its anomaly is settled.
                    for a in order
                        .anomalies
                        .iter_mut()
                        .filter(|a| a.transaction_id == tx)
                    {
                        a.resolved = true;
                    }
                }
            }
        }
        RefundReport::Processing { provider_refund_id } => {
            let r = &mut order.refunds[i];
            if provider_refund_id.is_some() {
                r.provider_refund_id = provider_refund_id;
            }
        }
        RefundReport::Failed { reason } => {
            let r = &mut order.refunds[i];
            r.state = RefundState::Failed;
            r.finished_at = Some(now);
            r.failure_reason = Some(reason.clone());
            let (amount, tx, main) = (
                r.amount_minor,
                r.transaction_id.clone(),
                r.transaction_id.is_none(),
            );
            if main {
                effects.push(Effect::ReleaseHold {
                    refund_no: refund_no.to_string(),
                });
            }
            let detail = format!("refund {refund_no} failed at the provider: {reason}");
            order.anomalies.push(Anomaly {
                kind: AnomalyKind::RefundAbnormal,
                transaction_id: tx
                    .unwrap_or_else(|| order.provider_transaction_id.clone().unwrap_or_default()),
                amount_minor: amount,
                currency: order.currency.clone(),
                detail: detail.clone(),
                at: now,
                resolved: false,
            });
            effects.push(Effect::Alert {
                kind: AlertKind::RefundAbnormal,
                detail,
            });
        }
        RefundReport::Error { .. } => {}
    }
    arm_poll(order, now, policy);
}

/// The refund poll fired: ask about every refund still processing.
pub(super) fn poll(order: &mut Order, effects: &mut Vec<Effect>, now: Timestamp, policy: &Policy) {
    for r in order
        .refunds
        .iter_mut()
        .filter(|r| r.state == RefundState::Processing)
    {
        r.attempts += 1;
        effects.push(Effect::QueryRefund {
            refund_no: r.refund_no.clone(),
        });
    }
    arm_poll(order, now, policy);
}

/// An operator marks the order paid (e.g. a payment verified by hand): granted once.
pub(super) fn force_complete(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    now: Timestamp,
) -> Result<(), Rejection> {
    if order.status.is_paid() || order.granted {
        return Err(Rejection::NotCompletable(order.status));
    }
    order.status = OrderStatus::Paid;
    order.paid_at = Some(now);
    order.closing = None;
    order.failure_reason = None;
    order.force_completed = true;
    order.granted = true;
    let refund_poll = order.timers.refund_poll;
    order.timers = Default::default();
    order.timers.refund_poll = refund_poll;
    effects.push(Effect::Grant);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn resolve(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    index: usize,
    action: ResolveAction,
    reason: String,
    by: Actor,
    now: Timestamp,
    policy: &Policy,
) -> Result<(), Rejection> {
    let anomaly = order
        .anomalies
        .get(index)
        .filter(|a| !a.resolved)
        .cloned()
        .ok_or(Rejection::NoSuchAnomaly)?;
    match action {
        ResolveAction::Dismiss => {}
        ResolveAction::Refund => {
            let extra = order.payments.iter().any(|p| {
                p.transaction_id == anomaly.transaction_id
                    && p.disposition != PaymentDisposition::Granted
            });
            let tx = extra.then(|| anomaly.transaction_id.clone());
            request(
                order,
                effects,
                None,
                format!("anomaly resolved by refund: {reason}"),
                by,
                tx,
                now,
                policy,
            )?;
        }
        ResolveAction::Complete => force_complete(order, effects, now)?,
    }
    if let Some(a) = order.anomalies.get_mut(index) {
        // A refund settles it when it succeeds; the other actions settle it now.
        if action != ResolveAction::Refund {
            a.resolved = true;
        }
        a.detail = format!(
            "{} — resolved by {} ({}): {reason}",
            a.detail,
            by.as_str(),
            match action {
                ResolveAction::Refund => "refund",
                ResolveAction::Complete => "complete",
                ResolveAction::Dismiss => "dismiss",
            }
        );
    }
    Ok(())
}
