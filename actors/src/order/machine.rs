//! The order state machine: `step(&order, event, now, &policy) -> Transition`.
//!
//! Pure: no I/O, no clock of its own, no randomness, no async. Every decision about an
//! order is made here and returned as data — the next record and a list of effects —
//! which the order actor persists and then carries out. Deadlines are part of the
//! record (`Order::timers`), so they are persisted with the transition that sets them;
//! a deadline that fires with an old generation is ignored.

use crate::model::{
    Actor, Anomaly, AnomalyKind, CloseStep, Currency, Order, OrderStatus, Payment,
    PaymentDisposition, PaymentSource, Timer, TimerKind, Timestamp,
};
use crate::order::refund;
pub use crate::order::refund::{RefundReport, ResolveAction};

/// Settings the machine needs, taken from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub query_interval_ms: i64,
    pub query_retry_max: u32,
    pub qr_code_expire_ms: i64,
    /// First delay before a provider call of the expiry sequence is re-issued when its
    /// answer failed or never came back (doubles on each retry). Longer than the
    /// provider call timeout, so a slow answer is not raced by its own retry.
    pub retry_base_ms: i64,
    pub late_payment: LatePaymentPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatePaymentPolicy {
    /// The order becomes paid (`late_payment: true`) and is granted.
    Grant,
    /// The order keeps its final status; the payment is recorded and refunded.
    Refund,
}

/// A payment as a provider (or its query) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentReport {
    pub transaction_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub paid_at: Timestamp,
    pub source: PaymentSource,
}

/// What an active status query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryOutcome {
    Paid(PaymentReport),
    /// Still awaiting payment (or the provider has no such trade yet).
    NotPaid,
    /// The provider closed the trade; it can no longer be paid.
    Closed,
    /// The provider reports the payment failed for good.
    Failed {
        reason: String,
    },
    /// The query itself failed (network, timeout, provider error).
    Error {
        reason: String,
    },
}

/// What closing the trade at the provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    Closed,
    /// The trade cannot be closed because it was paid: a query tells us the payment.
    AlreadyPaid,
    Error {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The provider opened the trade: a QR code or a payment URL to show.
    TradeOpened {
        qr_code_url: Option<String>,
        payment_url: Option<String>,
        trade_ref: Option<String>,
    },
    TradeOpenFailed {
        reason: String,
    },
    /// The buyer asks for a fresh QR code for the same trade.
    RefreshQr,
    QrReissued {
        qr_code_url: String,
    },
    /// A verified payment confirmation (callback, or the mock's simulated one).
    Confirmed(PaymentReport),
    /// A verified report that the payment failed.
    PaymentFailed {
        reason: String,
    },
    QueryResult(QueryOutcome),
    CloseResult(CloseOutcome),
    Cancel {
        by: Actor,
    },
    Timer {
        kind: TimerKind,
        generation: u64,
    },
    /// Refund (part of) the payment; `amount_minor: None` refunds all that is
    /// refundable. `transaction_id` names an extra (double or late) payment instead.
    RequestRefund {
        amount_minor: Option<i64>,
        reason: String,
        by: Actor,
        transaction_id: Option<String>,
    },
    /// The provider's answer (call, query or notification) about a refund.
    RefundResult {
        refund_no: String,
        report: RefundReport,
    },
    /// An operator marks the order paid and granted.
    ForceComplete {
        reason: String,
    },
    /// An operator settles one of the order's anomalies.
    ResolveAnomaly {
        index: usize,
        action: ResolveAction,
        reason: String,
    },
    /// A verified report that the buyer disputed the payment (a chargeback), or that a
    /// dispute changed status. Recorded as an anomaly; the order's status stays.
    Disputed {
        dispute_id: String,
        amount_minor: i64,
        currency: Currency,
        status: String,
    },
}

impl Event {
    /// A short name for logs and the timeline.
    pub fn name(&self) -> &'static str {
        match self {
            Event::TradeOpened { .. } => "trade_opened",
            Event::TradeOpenFailed { .. } => "trade_open_failed",
            Event::RefreshQr => "refresh_qr",
            Event::QrReissued { .. } => "qr_reissued",
            Event::Confirmed(_) => "payment_confirmed",
            Event::PaymentFailed { .. } => "payment_failed",
            Event::QueryResult(_) => "query_result",
            Event::CloseResult(_) => "close_result",
            Event::Cancel { .. } => "cancel",
            Event::RequestRefund { .. } => "refund_requested",
            Event::RefundResult { .. } => "refund_result",
            Event::ForceComplete { .. } => "force_complete",
            Event::ResolveAnomaly { .. } => "resolve_anomaly",
            Event::Timer { kind, .. } => match kind {
                TimerKind::Poll => "poll_due",
                TimerKind::Expire => "order_expired",
                TimerKind::Retry => "retry_due",
                TimerKind::RefundPoll => "refund_poll_due",
            },
            Event::Disputed { .. } => "disputed",
        }
    }

    pub fn actor(&self) -> Actor {
        match self {
            Event::RefreshQr => Actor::User,
            Event::Cancel { by } => *by,
            Event::RequestRefund { by, .. } => *by,
            Event::ForceComplete { .. } | Event::ResolveAnomaly { .. } => Actor::Admin,
            Event::Timer { .. } => Actor::System,
            _ => Actor::Provider,
        }
    }
}

/// Things to do after the transition is durable (or, for `Grant`, inside the same
/// storage command as the transition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Ask the provider for a QR code again, for the same trade.
    ReissueQr,
    /// Query the trade's status at the provider.
    Query,
    /// Close the trade at the provider.
    Close,
    /// Grant the order's package to its buyer. Applied in the transition's own storage
    /// command, so a paid order and its grant are durable together or not at all.
    Grant,
    /// Something an operator must hear about.
    Alert { kind: AlertKind, detail: String },
    /// Put the refunded share of the entitlement on hold (in the same command).
    HoldEntitlement { refund_no: String },
    /// Take the held share back for good (in the same command as the success).
    Clawback { refund_no: String },
    /// Give the held share back (in the same command as the failure).
    ReleaseHold { refund_no: String },
    /// Ask the provider to refund (idempotent on the refund number).
    StartRefund { refund_no: String },
    /// Ask the provider how a refund stands.
    QueryRefund { refund_no: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    AmountMismatch,
    DoublePayment,
    LatePayment,
    Dispute,
    RefundAbnormal,
    /// A closed (cancelled, expired, failed) order's trade was never confirmed closed
    /// and unpaid by the provider, a day past its expiry: check it by hand.
    CloseUnconfirmed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub next: Order,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("order is {0:?} and cannot be cancelled")]
    NotCancellable(OrderStatus),
    #[error("order is {0:?}, not awaiting payment")]
    NotPending(OrderStatus),
    #[error("order is {0:?}: there is no payment to refund")]
    NotRefundable(OrderStatus),
    #[error("the refund exceeds what can still be refunded ({refundable})")]
    RefundExceedsPaid { refundable: i64 },
    #[error("the amount must be a positive integer")]
    InvalidAmount,
    #[error("the order has no such extra payment")]
    NoSuchPayment,
    #[error("the order has no such open anomaly")]
    NoSuchAnomaly,
    #[error("order is {0:?} and cannot be completed")]
    NotCompletable(OrderStatus),
}

/// Decides what `event` does to `order` at `now`.
pub fn step(
    order: &Order,
    event: Event,
    now: Timestamp,
    policy: &Policy,
) -> Result<Transition, Rejection> {
    let mut next = order.clone();
    let mut effects = Vec::new();
    match event {
        Event::TradeOpened {
            qr_code_url,
            payment_url,
            trade_ref,
        } => {
            if order.status == OrderStatus::Pending && !order.trade_opened {
                next.trade_opened = true;
                next.qr_code_expire_at =
                    qr_code_url.as_ref().map(|_| qr_expiry(order, now, policy));
                next.qr_code_url = qr_code_url;
                next.payment_url = payment_url;
                next.provider_trade_ref = trade_ref;
            } else if !order.trade_opened && unpaid_final(order.status) {
                // Cancelled (or failed) while the trade was being opened: the trade
                // now exists at the provider, so close it before anyone can pay it.
                next.trade_opened = true;
                next.provider_trade_ref = trade_ref;
                close_final(&mut next, &mut effects, now, policy);
            }
        }
        Event::TradeOpenFailed { reason } => {
            if order.status == OrderStatus::Pending && !order.trade_opened {
                fail(&mut next, format!("provider_error: {reason}"));
                // A timed-out create may still have opened the trade: close it.
                close_final(&mut next, &mut effects, now, policy);
            }
        }
        Event::RefreshQr => {
            if order.status != OrderStatus::Pending || order.closing.is_some() {
                return Err(Rejection::NotPending(order.status));
            }
            // Re-issuing asks the provider for the same trade's code, which also opens
            // a trade whose first opening was lost.
            effects.push(Effect::ReissueQr);
        }
        Event::QrReissued { qr_code_url } => {
            if order.status == OrderStatus::Pending && order.closing.is_none() {
                next.qr_code_expire_at = Some(qr_expiry(order, now, policy));
                next.qr_code_url = Some(qr_code_url);
            }
        }
        Event::Confirmed(report) => confirm(&mut next, &mut effects, report, now, policy),
        Event::PaymentFailed { reason } => {
            if order.status == OrderStatus::Pending {
                fail(&mut next, reason);
                close_final(&mut next, &mut effects, now, policy);
            }
        }
        Event::QueryResult(outcome) => query_result(&mut next, &mut effects, outcome, now, policy),
        Event::CloseResult(outcome) => close_result(&mut next, &mut effects, outcome, now, policy),
        Event::Cancel { .. } => {
            if order.status != OrderStatus::Pending {
                return Err(Rejection::NotCancellable(order.status));
            }
            next.status = OrderStatus::Cancelled;
            next.cancelled_at = Some(now);
            next.closing = None;
            next.timers = Default::default();
            if order.trade_opened {
                close_final(&mut next, &mut effects, now, policy);
            }
        }
        Event::RequestRefund {
            amount_minor,
            reason,
            by,
            transaction_id,
        } => refund::request(
            &mut next,
            &mut effects,
            amount_minor,
            reason,
            by,
            transaction_id,
            now,
            policy,
        )?,
        Event::RefundResult { refund_no, report } => {
            refund::result(&mut next, &mut effects, &refund_no, report, now, policy)
        }
        Event::ForceComplete { .. } => refund::force_complete(&mut next, &mut effects, now)?,
        Event::ResolveAnomaly {
            index,
            action,
            reason,
        } => refund::resolve(
            &mut next,
            &mut effects,
            index,
            action,
            reason,
            Actor::Admin,
            now,
            policy,
        )?,
        Event::Timer { kind, generation } => {
            if order.timers.get(kind).map(|t| t.generation) != Some(generation) {
                // A deadline that was replaced or cleared: ignore it.
                return Ok(Transition { next, effects });
            }
            *next.timers.slot(kind) = None;
            timer_fired(&mut next, &mut effects, kind, now, policy);
        }
        Event::Disputed {
            dispute_id,
            amount_minor,
            currency,
            status,
        } => disputed(
            &mut next,
            &mut effects,
            dispute_id,
            amount_minor,
            currency,
            &status,
            now,
        ),
    }
    if next != *order {
        next.updated_at = now;
    }
    Ok(Transition { next, effects })
}

fn qr_expiry(order: &Order, now: Timestamp, policy: &Policy) -> Timestamp {
    now.plus_ms(policy.qr_code_expire_ms).min(order.expire_at)
}

fn set_timer(order: &mut Order, kind: TimerKind, at: Timestamp) {
    order.timer_generation += 1;
    *order.timers.slot(kind) = Some(Timer {
        at,
        generation: order.timer_generation,
    });
}

/// Cancelled, expired or failed: no payment was granted, but the provider's trade
/// may still take one until it is closed.
fn unpaid_final(status: OrderStatus) -> bool {
    status.is_final() && !status.is_paid()
}

/// A cancelled or failed order still has an open trade at the provider: close it,
/// then query it, with a persisted `Retry` watchdog that re-issues a close or query
/// whose answer failed or was lost (a crash). Without it, a payment that slipped in
/// before the close was learnt only from a callback — and with callbacks lost, never
/// (found by the deterministic simulation).
fn close_final(order: &mut Order, effects: &mut Vec<Effect>, now: Timestamp, policy: &Policy) {
    order.closing = Some(CloseStep::Close);
    order.retry_count = 0;
    effects.push(Effect::Close);
    set_timer(order, TimerKind::Retry, now.plus_ms(policy.retry_base_ms));
}

/// The provider says the trade is paid: query until an answer reports the payment.
fn query_paid_trade(order: &mut Order, effects: &mut Vec<Effect>, now: Timestamp, policy: &Policy) {
    order.closing = Some(CloseStep::QueryAfterPaidClose);
    order.retry_count = 0;
    effects.push(Effect::Query);
    set_timer(order, TimerKind::Retry, now.plus_ms(policy.retry_base_ms));
}

fn finish_close(order: &mut Order) {
    order.closing = None;
    order.retry_count = 0;
    order.timers.retry = None;
}

/// How long past its expiry a closed order's trade is still asked about. Providers
/// keep trades far longer; their callbacks stop after about a day.
const CONFIRM_CLOSE_FOR_MS: i64 = 24 * 3_600_000;
/// The longest pause between two attempts.
const CONFIRM_CLOSE_MAX_DELAY_MS: i64 = 3_600_000;
/// And at least this many attempts before giving up, however the time went (payd
/// down for hours fires an overdue deadline once, not once per missed hour).
const CONFIRM_CLOSE_MIN_ATTEMPTS: u32 = 20;

/// The watchdog of a closed order's close sequence fired: the close or the query
/// after it was not answered (failed, timed out, or lost with a crashed actor), so
/// it is re-issued, backing off up to an hour between attempts, until a day past the
/// trade's expiry and at least 20 attempts; then an operator is alerted. Money the provider took before the
/// close is found this way even when no callback ever arrives.
fn retry_final_close(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    now: Timestamp,
    policy: &Policy,
) {
    let Some(step) = order.closing else { return };
    if now >= order.expire_at.plus_ms(CONFIRM_CLOSE_FOR_MS)
        && order.retry_count >= CONFIRM_CLOSE_MIN_ATTEMPTS
    {
        finish_close(order);
        effects.push(Effect::Alert {
            kind: AlertKind::CloseUnconfirmed,
            detail: format!(
                "the provider never confirmed that the trade of this {} order is closed and unpaid",
                order.status.as_str()
            ),
        });
        return;
    }
    order.retry_count = order.retry_count.saturating_add(1);
    effects.push(if step == CloseStep::Close {
        Effect::Close
    } else {
        Effect::Query
    });
    let delay = policy
        .retry_base_ms
        .saturating_mul(1i64 << order.retry_count.min(20))
        .min(CONFIRM_CLOSE_MAX_DELAY_MS.max(policy.retry_base_ms));
    set_timer(order, TimerKind::Retry, now.plus_ms(delay));
}

fn fail(order: &mut Order, reason: String) {
    order.status = OrderStatus::Failed;
    order.failure_reason = Some(reason);
    order.closing = None;
    order.timers = Default::default();
}

fn timer_fired(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    kind: TimerKind,
    now: Timestamp,
    policy: &Policy,
) {
    if kind == TimerKind::RefundPoll {
        return refund::poll(order, effects, now, policy);
    }
    if order.status != OrderStatus::Pending {
        if kind == TimerKind::Retry && unpaid_final(order.status) {
            retry_final_close(order, effects, now, policy);
        }
        return;
    }
    match kind {
        TimerKind::Poll => {
            if order.closing.is_none() {
                order.poll_count += 1;
                effects.push(Effect::Query);
                schedule_next_poll(order, now, policy);
            }
        }
        TimerKind::Expire => {
            order.timers.poll = None;
            order.closing = Some(CloseStep::QueryBeforeClose);
            order.retry_count = 0;
            effects.push(Effect::Query);
            set_timer(order, TimerKind::Retry, now.plus_ms(policy.retry_base_ms));
        }
        TimerKind::RefundPoll => {}
        TimerKind::Retry => {
            let Some(step) = order.closing else { return };
            if step == CloseStep::QueryAfterPaidClose {
                // Paid at the provider: keep asking (backing off) rather than expire
                // an order whose payment is known to exist; after a day, expire it
                // and alert.
                retry_final_close(order, effects, now, policy);
                if order.closing.is_none() {
                    order.status = OrderStatus::Expired;
                }
                return;
            }
            if order.retry_count >= policy.query_retry_max {
                // The provider kept failing: move on. Its own `time_expire` has passed,
                // and a payment that surfaces later is handled as a late payment.
                advance(order, effects, step, now, policy);
                if step == CloseStep::QueryAfterClose {
                    // Expired without the last answer: keep asking for it (the watchdog
                    // of a closed order), so a payment made before expiry is found
                    // even when its callback never comes.
                    order.closing = Some(CloseStep::QueryAfterClose);
                    set_timer(order, TimerKind::Retry, now.plus_ms(policy.retry_base_ms));
                }
                return;
            }
            order.retry_count += 1;
            effects.push(if step == CloseStep::Close {
                Effect::Close
            } else {
                Effect::Query
            });
            let delay = policy
                .retry_base_ms
                .saturating_mul(1i64 << order.retry_count.min(10));
            set_timer(order, TimerKind::Retry, now.plus_ms(delay));
        }
    }
}

/// Polling: the first query comes `query_interval` after creation (set when the order
/// is created), then the interval doubles, at most `query_retry_max` queries; a query
/// that would fall at or after expiry is left to the expiry sequence. The next poll is
/// set when one fires, so a lost answer never stops the polling.
fn schedule_next_poll(order: &mut Order, now: Timestamp, policy: &Policy) {
    if order.poll_count >= policy.query_retry_max {
        return;
    }
    let factor = 1i64 << order.poll_count.min(20);
    let at = now.plus_ms(policy.query_interval_ms.saturating_mul(factor));
    if at < order.expire_at {
        set_timer(order, TimerKind::Poll, at);
    }
}

/// The expiry sequence moves to its next step. Each provider call gets a `Retry`
/// deadline as a watchdog: if its answer fails or is lost (a crash), the call is
/// re-issued; a good answer replaces the watchdog with the next step's.
fn advance(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    from: CloseStep,
    now: Timestamp,
    policy: &Policy,
) {
    order.retry_count = 0;
    let watchdog = now.plus_ms(policy.retry_base_ms);
    match from {
        CloseStep::QueryBeforeClose => {
            order.closing = Some(CloseStep::Close);
            effects.push(Effect::Close);
            set_timer(order, TimerKind::Retry, watchdog);
        }
        CloseStep::Close => {
            order.closing = Some(CloseStep::QueryAfterClose);
            effects.push(Effect::Query);
            set_timer(order, TimerKind::Retry, watchdog);
        }
        CloseStep::QueryAfterClose | CloseStep::QueryAfterPaidClose => {
            order.status = OrderStatus::Expired;
            order.closing = None;
            order.timers = Default::default();
        }
    }
}

fn query_result(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    outcome: QueryOutcome,
    now: Timestamp,
    policy: &Policy,
) {
    if let QueryOutcome::Paid(report) = outcome {
        let closing_final = unpaid_final(order.status) && order.closing.is_some();
        confirm(order, effects, report, now, policy);
        if closing_final && unpaid_final(order.status) {
            // The query after the close found the payment: the sequence is done.
            finish_close(order);
        }
        return;
    }
    if order.status != OrderStatus::Pending {
        if unpaid_final(order.status)
            && order.closing == Some(CloseStep::QueryAfterClose)
            && !matches!(outcome, QueryOutcome::Error { .. })
        {
            // Closed and not paid: nothing can be paid on this trade any more.
            finish_close(order);
        }
        return;
    }
    match (order.closing, outcome) {
        // An error changes nothing: the next poll, or the watchdog, asks again.
        (_, QueryOutcome::Error { .. }) => {}
        // The close said paid: an answer without the payment was sent before it.
        (Some(CloseStep::QueryAfterPaidClose), _) => {}
        (None | Some(CloseStep::QueryAfterClose), QueryOutcome::Failed { reason }) => {
            fail(order, reason);
            close_final(order, effects, now, policy);
        }
        // Not paid yet, or closed at the provider by its own expiry: the expiry
        // deadline finishes the order through the usual sequence.
        (None, _) => {}
        (Some(step @ (CloseStep::QueryBeforeClose | CloseStep::QueryAfterClose)), _) => {
            advance(order, effects, step, now, policy)
        }
        // A query answer while the close is in flight: the close result decides.
        (Some(CloseStep::Close), _) => {}
    }
}

fn close_result(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    outcome: CloseOutcome,
    now: Timestamp,
    policy: &Policy,
) {
    match (order.status, order.closing, outcome) {
        (_, _, CloseOutcome::Error { .. }) => {}
        // Paid: a query learns the payment. Only an answer that reports it ends the
        // sequence; the order is not expired meanwhile.
        (OrderStatus::Pending, Some(_), CloseOutcome::AlreadyPaid) => {
            query_paid_trade(order, effects, now, policy)
        }
        (OrderStatus::Pending, Some(CloseStep::Close), _) => {
            advance(order, effects, CloseStep::Close, now, policy)
        }
        // After a cancel (or failure): closed — the query after it decides; or found
        // paid — the query learns the payment, which follows the late-payment rule.
        (status, Some(CloseStep::Close), CloseOutcome::Closed) if unpaid_final(status) => {
            order.closing = Some(CloseStep::QueryAfterClose);
            order.retry_count = 0;
            effects.push(Effect::Query);
            set_timer(order, TimerKind::Retry, now.plus_ms(policy.retry_base_ms));
        }
        (status, _, CloseOutcome::AlreadyPaid) if unpaid_final(status) => {
            query_paid_trade(order, effects, now, policy)
        }
        _ => {}
    }
}

fn confirm(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    report: PaymentReport,
    now: Timestamp,
    policy: &Policy,
) {
    if order
        .payments
        .iter()
        .any(|p| p.transaction_id == report.transaction_id)
    {
        // The same transaction again (callback + poll, repeated callbacks): no-op.
        return;
    }
    let matches = report.amount_minor == order.amount_minor && report.currency == order.currency;
    let record = |order: &mut Order, disposition: PaymentDisposition| {
        order.payments.push(Payment {
            transaction_id: report.transaction_id.clone(),
            amount_minor: report.amount_minor,
            currency: report.currency.clone(),
            paid_at: report.paid_at,
            recorded_at: now,
            source: report.source,
            disposition,
        });
    };
    let anomaly = |order: &mut Order, kind: AnomalyKind, detail: String| {
        order.anomalies.push(Anomaly {
            kind,
            transaction_id: report.transaction_id.clone(),
            amount_minor: report.amount_minor,
            currency: report.currency.clone(),
            detail,
            at: now,
            resolved: false,
        });
    };

    if !matches {
        let detail = format!(
            "paid {} {} for an order of {} {}",
            report.amount_minor,
            report.currency.as_str(),
            order.amount_minor,
            order.currency.as_str()
        );
        record(order, PaymentDisposition::AmountMismatch);
        anomaly(order, AnomalyKind::AmountMismatch, detail.clone());
        if order.status == OrderStatus::Pending {
            fail(order, "amount_mismatch".into());
        }
        effects.push(Effect::Alert {
            kind: AlertKind::AmountMismatch,
            detail,
        });
        return;
    }

    if order.status == OrderStatus::Pending {
        record(order, PaymentDisposition::Granted);
        mark_paid(order, &report, now);
        effects.push(Effect::Grant);
        return;
    }

    if order.status.is_paid() {
        let detail = format!(
            "second transaction {} on an order already paid by {}",
            report.transaction_id,
            order.provider_transaction_id.as_deref().unwrap_or("?")
        );
        record(order, PaymentDisposition::DoublePayment);
        anomaly(order, AnomalyKind::DoublePayment, detail.clone());
        refund_extra_payment(order, effects, &report, now, policy);
        effects.push(Effect::Alert {
            kind: AlertKind::DoublePayment,
            detail,
        });
        return;
    }

    // Cancelled, expired or failed: the late-payment rule.
    let detail = format!(
        "payment {} confirmed after the order was {}",
        report.transaction_id,
        order.status.as_str()
    );
    match policy.late_payment {
        LatePaymentPolicy::Grant => {
            record(order, PaymentDisposition::Granted);
            mark_paid(order, &report, now);
            order.late_payment = true;
            order.failure_reason = None;
            effects.push(Effect::Grant);
        }
        LatePaymentPolicy::Refund => {
            record(order, PaymentDisposition::LateRefund);
            anomaly(order, AnomalyKind::LatePaymentRefund, detail.clone());
            refund_extra_payment(order, effects, &report, now, policy);
        }
    }
    effects.push(Effect::Alert {
        kind: AlertKind::LatePayment,
        detail,
    });
}

/// A double or late payment goes back to the buyer: its refund is opened in the same
/// transition that records the payment, so it is durable with it. (It used to be a
/// message the actor sent itself afterwards, which a crash could lose — found by the
/// deterministic simulation.) The refund poll re-issues it if the call is lost.
fn refund_extra_payment(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    report: &PaymentReport,
    now: Timestamp,
    policy: &Policy,
) {
    let opened = refund::request(
        order,
        effects,
        Some(report.amount_minor),
        "automatic refund of a double or late payment".into(),
        Actor::System,
        Some(report.transaction_id.clone()),
        now,
        policy,
    );
    if let Err(rejection) = opened {
        // Cannot happen for a recorded extra payment of a positive amount; if it
        // ever does, the open anomaly keeps it in front of an operator.
        effects.push(Effect::Alert {
            kind: AlertKind::RefundAbnormal,
            detail: format!(
                "automatic refund of {} could not be opened: {rejection}",
                report.transaction_id
            ),
        });
    }
}

/// A dispute is recorded once per dispute id and updated when its status changes; a
/// repeated report of the same status is a no-op. The order's status never moves:
/// money taken back by a lost dispute is clawed back through the refund path.
fn disputed(
    order: &mut Order,
    effects: &mut Vec<Effect>,
    dispute_id: String,
    amount_minor: i64,
    currency: Currency,
    status: &str,
    now: Timestamp,
) {
    let detail = format!(
        "dispute {dispute_id} is {status}: {amount_minor} {} disputed on payment {}",
        currency.as_str(),
        order.provider_transaction_id.as_deref().unwrap_or("?")
    );
    let existing = order
        .anomalies
        .iter_mut()
        .find(|a| a.kind == AnomalyKind::Dispute && a.transaction_id == dispute_id);
    match existing {
        Some(a) if a.detail == detail && a.amount_minor == amount_minor => return,
        Some(a) => {
            a.amount_minor = amount_minor;
            a.currency = currency;
            a.detail = detail.clone();
            a.at = now;
            // A new status is news even if an operator had closed the earlier one.
            a.resolved = false;
        }
        None => order.anomalies.push(Anomaly {
            kind: AnomalyKind::Dispute,
            transaction_id: dispute_id,
            amount_minor,
            currency,
            detail: detail.clone(),
            at: now,
            resolved: false,
        }),
    }
    effects.push(Effect::Alert {
        kind: AlertKind::Dispute,
        detail,
    });
}

fn mark_paid(order: &mut Order, report: &PaymentReport, now: Timestamp) {
    order.status = OrderStatus::Paid;
    order.paid_at = Some(report.paid_at.min(now));
    order.provider_transaction_id = Some(report.transaction_id.clone());
    order.closing = None;
    order.timers = Default::default();
    order.granted = true;
}
