//! Rule-by-rule tests of the order machine, and property tests over random event
//! sequences (proptest; a failure prints its minimal sequence and replays from the
//! seed proptest records).

use proptest::prelude::*;

use super::machine::*;
use crate::model::RefundState;
use crate::model::*;

const T0: Timestamp = Timestamp(1_700_000_000_000);
const MIN: i64 = 60_000;

fn policy(late: LatePaymentPolicy) -> Policy {
    Policy {
        query_interval_ms: MIN,
        query_retry_max: 5,
        qr_code_expire_ms: 15 * MIN,
        retry_base_ms: 11_000,
        late_payment: late,
    }
}

pub(crate) fn new_order() -> Order {
    let mut o = Order::for_tests(
        PackageSnapshot {
            name: "basic".into(),
            kind: PackageKind::Membership,
            membership_type: Some("pro".into()),
            validity_days: Some(30),
            queries_count: Some(100),
            points: None,
            bonus_points: None,
        },
        990,
        T0,
    );
    o.timer_generation = 2;
    o.timers.poll = Some(Timer {
        at: T0.plus_ms(MIN),
        generation: 1,
    });
    o.timers.expire = Some(Timer {
        at: o.expire_at,
        generation: 2,
    });
    o
}

fn pay(tx: &str, amount: i64) -> Event {
    Event::Confirmed(PaymentReport {
        transaction_id: tx.into(),
        amount_minor: amount,
        currency: Currency::parse("CNY").unwrap(),
        paid_at: T0,
        source: PaymentSource::Callback,
    })
}

fn run(o: &Order, e: Event, late: LatePaymentPolicy) -> Transition {
    step(o, e, T0.plus_ms(MIN), &policy(late)).expect("accepted")
}

fn fire(o: &Order, kind: TimerKind) -> Transition {
    let t = o.timers.get(kind).expect("timer set");
    step(
        o,
        Event::Timer {
            kind,
            generation: t.generation,
        },
        t.at,
        &policy(LatePaymentPolicy::Grant),
    )
    .unwrap()
}

#[test]
fn payment_grants_once_and_duplicate_is_a_no_op() {
    let o = new_order();
    let t = run(&o, pay("tx1", 990), LatePaymentPolicy::Grant);
    assert_eq!(t.next.status, OrderStatus::Paid);
    assert_eq!(t.effects, vec![Effect::Grant]);
    assert!(
        t.next.timers.iter().next().is_none(),
        "no deadlines after paid"
    );
    let again = run(&t.next, pay("tx1", 990), LatePaymentPolicy::Grant);
    assert_eq!(again.next, t.next);
    assert!(again.effects.is_empty());
}

#[test]
fn a_second_transaction_is_a_double_payment_queued_for_refund() {
    let paid = run(&new_order(), pay("tx1", 990), LatePaymentPolicy::Grant).next;
    let t = run(&paid, pay("tx2", 990), LatePaymentPolicy::Grant);
    assert_eq!(t.next.status, OrderStatus::Paid);
    assert!(!t.effects.contains(&Effect::Grant));
    // Its refund is opened in the same transition, so it is durable with the payment.
    let r = &t.next.refunds[0];
    assert_eq!(
        (r.transaction_id.as_deref(), r.amount_minor, r.state),
        (Some("tx2"), 990, RefundState::Processing)
    );
    assert!(t.effects.contains(&Effect::StartRefund {
        refund_no: r.refund_no.clone()
    }));
    assert_eq!(t.next.anomalies[0].kind, AnomalyKind::DoublePayment);
}

#[test]
fn wrong_amount_fails_the_order_with_an_anomaly_and_no_grant() {
    let t = run(&new_order(), pay("tx1", 989), LatePaymentPolicy::Grant);
    assert_eq!(t.next.status, OrderStatus::Failed);
    assert_eq!(t.next.failure_reason.as_deref(), Some("amount_mismatch"));
    assert!(!t.effects.contains(&Effect::Grant));
    assert_eq!(t.next.anomalies.len(), 1);
    // The provider repeating that callback changes nothing.
    let again = run(&t.next, pay("tx1", 989), LatePaymentPolicy::Grant);
    assert!(again.effects.is_empty() && again.next == t.next);
}

#[test]
fn late_payment_follows_the_policy() {
    let cancelled = run(
        &new_order(),
        Event::Cancel { by: Actor::User },
        LatePaymentPolicy::Grant,
    )
    .next;
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    let granted = run(&cancelled, pay("tx1", 990), LatePaymentPolicy::Grant);
    assert_eq!(granted.next.status, OrderStatus::Paid);
    assert!(granted.next.late_payment);
    assert!(granted.effects.contains(&Effect::Grant));
    let refunded = run(&cancelled, pay("tx1", 990), LatePaymentPolicy::Refund);
    assert_eq!(refunded.next.status, OrderStatus::Cancelled);
    assert!(!refunded.effects.contains(&Effect::Grant));
    assert_eq!(
        refunded.next.refunds[0].transaction_id.as_deref(),
        Some("tx1")
    );
    assert!(
        refunded
            .effects
            .iter()
            .any(|e| matches!(e, Effect::StartRefund { .. }))
    );
}

#[test]
fn expiry_runs_query_close_query_and_the_last_answer_decides() {
    let o = run(
        &new_order(),
        Event::TradeOpened {
            qr_code_url: Some("q".into()),
            payment_url: None,
            trade_ref: None,
        },
        LatePaymentPolicy::Grant,
    )
    .next;
    let t = fire(&o, TimerKind::Expire);
    assert_eq!(t.next.closing, Some(CloseStep::QueryBeforeClose));
    assert_eq!(t.effects, vec![Effect::Query]);
    // A failed query is retried by the watchdog deadline, not dropped.
    let err = run(
        &t.next,
        Event::QueryResult(QueryOutcome::Error {
            reason: "timeout".into(),
        }),
        LatePaymentPolicy::Grant,
    );
    assert!(err.effects.is_empty());
    let retried = fire(&err.next, TimerKind::Retry);
    assert_eq!(retried.effects, vec![Effect::Query]);
    let t = run(
        &retried.next,
        Event::QueryResult(QueryOutcome::NotPaid),
        LatePaymentPolicy::Grant,
    );
    assert_eq!(t.effects, vec![Effect::Close]);
    let t = run(
        &t.next,
        Event::CloseResult(CloseOutcome::Closed),
        LatePaymentPolicy::Grant,
    );
    assert_eq!(t.effects, vec![Effect::Query]);
    let expired = run(
        &t.next,
        Event::QueryResult(QueryOutcome::NotPaid),
        LatePaymentPolicy::Grant,
    );
    assert_eq!(expired.next.status, OrderStatus::Expired);
    assert!(expired.next.timers.iter().next().is_none());
    // Same sequence, but the buyer paid while the close was in flight.
    let paid = run(
        &t.next,
        Event::QueryResult(QueryOutcome::Paid(match pay("tx9", 990) {
            Event::Confirmed(r) => r,
            _ => unreachable!(),
        })),
        LatePaymentPolicy::Grant,
    );
    assert_eq!(paid.next.status, OrderStatus::Paid);
    assert!(!paid.next.late_payment);
}

#[test]
fn a_provider_that_never_answers_still_lets_the_order_expire() {
    let mut o = fire(&new_order(), TimerKind::Expire).next;
    let mut fired = 0;
    while o.status == OrderStatus::Pending {
        o = fire(&o, TimerKind::Retry).next;
        fired += 1;
        assert!(fired < 50, "expiry sequence never ends");
    }
    assert_eq!(o.status, OrderStatus::Expired);
}

#[test]
fn stale_deadlines_are_ignored() {
    let o = new_order();
    let t = step(
        &o,
        Event::Timer {
            kind: TimerKind::Expire,
            generation: 1,
        },
        o.expire_at,
        &policy(LatePaymentPolicy::Grant),
    )
    .unwrap();
    assert_eq!(t.next, o);
    assert!(t.effects.is_empty());
}

#[test]
fn polling_doubles_and_never_passes_expiry() {
    let mut o = new_order();
    let mut polls = 0;
    while let Some(t) = o.timers.poll {
        let fired = fire(&o, TimerKind::Poll);
        assert_eq!(fired.effects, vec![Effect::Query]);
        polls += 1;
        o = step(
            &fired.next,
            Event::QueryResult(QueryOutcome::NotPaid),
            t.at,
            &policy(LatePaymentPolicy::Grant),
        )
        .unwrap()
        .next;
        if let Some(n) = o.timers.poll {
            assert!(n.at < o.expire_at);
            assert!(n.at.ms() - t.at.ms() >= MIN);
        }
    }
    // 1 + 2 + 4 + 8 = 15 minutes; the next (16 later) would pass the 30-minute expiry.
    assert_eq!(polls, 4);
}

#[test]
fn cancel_commits_at_once_and_closes_afterwards() {
    let o = run(
        &new_order(),
        Event::TradeOpened {
            qr_code_url: Some("q".into()),
            payment_url: None,
            trade_ref: None,
        },
        LatePaymentPolicy::Grant,
    )
    .next;
    let t = run(
        &o,
        Event::Cancel { by: Actor::User },
        LatePaymentPolicy::Grant,
    );
    assert_eq!(t.next.status, OrderStatus::Cancelled);
    assert_eq!(t.effects, vec![Effect::Close]);
    let paid = run(&o, pay("tx1", 990), LatePaymentPolicy::Grant).next;
    assert_eq!(
        step(
            &paid,
            Event::Cancel { by: Actor::User },
            T0,
            &policy(LatePaymentPolicy::Grant)
        ),
        Err(Rejection::NotCancellable(OrderStatus::Paid))
    );
    // The close finds the trade paid: a query learns the payment (late-payment rule).
    let t2 = run(
        &t.next,
        Event::CloseResult(CloseOutcome::AlreadyPaid),
        LatePaymentPolicy::Grant,
    );
    assert_eq!(t2.effects, vec![Effect::Query]);
}

#[test]
fn qr_reissue_stays_within_the_order_expiry() {
    let o = run(
        &new_order(),
        Event::TradeOpened {
            qr_code_url: Some("q1".into()),
            payment_url: None,
            trade_ref: None,
        },
        LatePaymentPolicy::Grant,
    )
    .next;
    assert_eq!(o.qr_code_expire_at, Some(T0.plus_ms(16 * MIN)));
    let t = step(
        &o,
        Event::RefreshQr,
        T0.plus_ms(20 * MIN),
        &policy(LatePaymentPolicy::Grant),
    )
    .unwrap();
    assert_eq!(t.effects, vec![Effect::ReissueQr]);
    let t = step(
        &o,
        Event::QrReissued {
            qr_code_url: "q1".into(),
        },
        T0.plus_ms(20 * MIN),
        &policy(LatePaymentPolicy::Grant),
    )
    .unwrap();
    assert_eq!(t.next.qr_code_expire_at, Some(o.expire_at));
}

// ---- property tests over random event sequences ----

#[derive(Debug, Clone)]
enum Op {
    Open,
    OpenFail,
    Refresh,
    Reissue,
    Pay {
        tx: u8,
        delta: i64,
        usd: bool,
        by_query: bool,
    },
    Fail,
    Query(u8),
    Close(u8),
    Cancel,
    Refund(Option<i64>),
    RefundAnswer(u8, u8),
    FireCurrent(u8),
    FireStale(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Open),
        Just(Op::OpenFail),
        Just(Op::Refresh),
        Just(Op::Reissue),
        (
            0u8..3,
            prop_oneof![Just(0i64), Just(1), Just(-1)],
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(tx, delta, usd, by_query)| Op::Pay {
                tx,
                delta,
                usd,
                by_query
            }),
        Just(Op::Fail),
        (0u8..4).prop_map(Op::Query),
        (0u8..3).prop_map(Op::Close),
        Just(Op::Cancel),
        prop_oneof![
            Just(None),
            Just(Some(1i64)),
            Just(Some(300)),
            Just(Some(990)),
            Just(Some(1000)),
            Just(Some(0))
        ]
        .prop_map(Op::Refund),
        (0u8..4, 0u8..4).prop_map(|(i, k)| Op::RefundAnswer(i, k)),
        (0u8..3).prop_map(Op::FireCurrent),
        (0u8..3).prop_map(Op::FireStale),
    ]
}

fn to_event(o: &Order, op: &Op) -> Event {
    let kind = |k: u8| TimerKind::ALL[k as usize % 3];
    match op {
        Op::Open => Event::TradeOpened {
            qr_code_url: Some("q".into()),
            payment_url: None,
            trade_ref: None,
        },
        Op::OpenFail => Event::TradeOpenFailed {
            reason: "timeout".into(),
        },
        Op::Refresh => Event::RefreshQr,
        Op::Reissue => Event::QrReissued {
            qr_code_url: "q2".into(),
        },
        Op::Pay {
            tx,
            delta,
            usd,
            by_query,
        } => {
            let report = PaymentReport {
                transaction_id: format!("tx{tx}"),
                amount_minor: o.amount_minor + delta,
                currency: Currency::parse(if *usd { "USD" } else { "CNY" }).unwrap(),
                paid_at: T0,
                source: if *by_query {
                    PaymentSource::Query
                } else {
                    PaymentSource::Callback
                },
            };
            if *by_query {
                Event::QueryResult(QueryOutcome::Paid(report))
            } else {
                Event::Confirmed(report)
            }
        }
        Op::Fail => Event::PaymentFailed {
            reason: "declined".into(),
        },
        Op::Query(i) => Event::QueryResult(match i {
            0 => QueryOutcome::NotPaid,
            1 => QueryOutcome::Closed,
            2 => QueryOutcome::Failed {
                reason: "payerror".into(),
            },
            _ => QueryOutcome::Error {
                reason: "timeout".into(),
            },
        }),
        Op::Close(i) => Event::CloseResult(match i {
            0 => CloseOutcome::Closed,
            1 => CloseOutcome::AlreadyPaid,
            _ => CloseOutcome::Error {
                reason: "timeout".into(),
            },
        }),
        Op::Cancel => Event::Cancel { by: Actor::User },
        Op::Refund(amount) => Event::RequestRefund {
            amount_minor: *amount,
            reason: "test".into(),
            by: Actor::Admin,
            transaction_id: None,
        },
        Op::RefundAnswer(i, k) => Event::RefundResult {
            refund_no: o
                .refunds
                .get(*i as usize)
                .map_or_else(|| "none".to_string(), |r| r.refund_no.clone()),
            report: match k {
                0 => RefundReport::Succeeded {
                    provider_refund_id: Some("r".into()),
                },
                1 => RefundReport::Processing {
                    provider_refund_id: None,
                },
                2 => RefundReport::Failed {
                    reason: "declined".into(),
                },
                _ => RefundReport::Error {
                    reason: "timeout".into(),
                },
            },
        },
        Op::FireCurrent(k) => Event::Timer {
            kind: kind(*k),
            generation: o.timers.get(kind(*k)).map_or(0, |t| t.generation),
        },
        Op::FireStale(k) => Event::Timer {
            kind: kind(*k),
            generation: o.timer_generation + 1,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_event_sequences_keep_the_money_rules(
        ops in proptest::collection::vec(op(), 1..60),
        refund_policy in any::<bool>(),
    ) {
        let late = if refund_policy { LatePaymentPolicy::Refund } else { LatePaymentPolicy::Grant };
        let pol = policy(late);
        let mut o = new_order();
        let mut now = T0;
        let mut grants = 0;
        let mut refund_queued: Vec<String> = vec![];
        let mut holds = std::collections::HashSet::new();
        let mut settled = std::collections::HashSet::new();
        for op in &ops {
            now = now.plus_ms(7_000);
            let event = to_event(&o, op);
            let before = o.clone();
            let Ok(t) = step(&o, event, now, &pol) else { continue };
            // A final state is never left, except by the late-payment rule.
            if before.status.is_final() && t.next.status != before.status {
                prop_assert_eq!(late, LatePaymentPolicy::Grant);
                prop_assert_eq!(t.next.status, OrderStatus::Paid);
                prop_assert!(t.next.late_payment);
                prop_assert_ne!(before.status, OrderStatus::Refunded);
            }
            // paid moves only through refunds, and only forward.
            if before.status.is_paid() && t.next.status != before.status {
                prop_assert!(matches!(t.next.status, OrderStatus::PartiallyRefunded | OrderStatus::Refunded));
                prop_assert!(t.next.refunded_amount_minor > before.refunded_amount_minor);
            }
            for e in &t.effects {
                match e {
                    Effect::Grant => {
                        grants += 1;
                        // A grant only with a matching amount.
                        let p = t.next.payments.last().unwrap();
                        prop_assert_eq!(p.amount_minor, o.amount_minor);
                        prop_assert_eq!(&p.currency, &o.currency);
                        prop_assert_eq!(p.disposition, PaymentDisposition::Granted);
                        prop_assert_eq!(t.next.status, OrderStatus::Paid);
                    }
                    Effect::StartRefund { refund_no } => {
                        if let Some(tx) = t.next.refunds.iter().find(|r| &r.refund_no == refund_no).and_then(|r| r.transaction_id.clone()) {
                            refund_queued.push(tx);
                        }
                    }
                    _ => {}
                }
            }
            // No deadline survives a non-pending order, but the refund poll while
            // refunds are processing.
            // A cancelled or failed order keeps one more: the watchdog of the close
            // (and query) it still owes the provider.
            if t.next.status != OrderStatus::Pending {
                let closing = t.next.closing.is_some() && !t.next.status.is_paid();
                prop_assert!(t.next.timers.iter().all(|(k, _)| k == TimerKind::RefundPoll
                    || (k == TimerKind::Retry && closing)));
                prop_assert_eq!(t.next.timers.retry.is_some(), closing);
            }
            let processing = t.next.refunds.iter().any(|r| r.state == RefundState::Processing);
            prop_assert_eq!(t.next.timers.refund_poll.is_some(), processing);
            // Refunds never exceed the payment, counting those in flight.
            let committed: i64 = t.next.refunds.iter()
                .filter(|r| r.transaction_id.is_none() && r.state != RefundState::Failed)
                .map(|r| r.amount_minor).sum();
            prop_assert!(committed <= t.next.amount_minor);
            let succeeded: i64 = t.next.refunds.iter()
                .filter(|r| r.transaction_id.is_none() && r.state == RefundState::Succeeded)
                .map(|r| r.amount_minor).sum();
            prop_assert_eq!(succeeded, t.next.refunded_amount_minor);
            prop_assert_eq!(t.next.status == OrderStatus::Refunded, succeeded == t.next.amount_minor && succeeded > 0);
            for e in &t.effects {
                match e {
                    Effect::HoldEntitlement { refund_no } => prop_assert!(holds.insert(refund_no.clone())),
                    Effect::Clawback { refund_no } | Effect::ReleaseHold { refund_no } => {
                        prop_assert!(holds.contains(refund_no));
                        prop_assert!(settled.insert(refund_no.clone()), "a hold settled twice");
                    }
                    _ => {}
                }
            }
            o = t.next;
        }
        // Granted at most once, and exactly when the order is granted.
        prop_assert!(grants <= 1);
        prop_assert_eq!(grants == 1, o.granted);
        // Every confirmed payment ends paid, queued for refund, or as an open anomaly.
        let mut seen = std::collections::HashSet::new();
        for p in &o.payments {
            prop_assert!(seen.insert(p.transaction_id.clone()), "a transaction recorded twice");
            match p.disposition {
                PaymentDisposition::Granted => {
                    prop_assert!(o.status.is_paid());
                    prop_assert_eq!(o.provider_transaction_id.as_ref(), Some(&p.transaction_id));
                }
                PaymentDisposition::DoublePayment | PaymentDisposition::LateRefund => {
                    prop_assert!(refund_queued.contains(&p.transaction_id));
                }
                PaymentDisposition::AmountMismatch => {
                    prop_assert!(o.anomalies.iter().any(|a| a.transaction_id == p.transaction_id && !a.resolved));
                }
            }
        }
        prop_assert!(o.payments.iter().filter(|p| p.disposition == PaymentDisposition::Granted).count() <= 1);
    }
}

fn dispute(id: &str, amount: i64, status: &str) -> Event {
    Event::Disputed {
        dispute_id: id.into(),
        amount_minor: amount,
        currency: Currency::parse("CNY").unwrap(),
        status: status.into(),
    }
}

#[test]
fn a_dispute_is_an_anomaly_updated_by_status_that_never_moves_the_order() {
    let paid = run(&new_order(), pay("tx1", 990), LatePaymentPolicy::Grant).next;
    let opened = run(
        &paid,
        dispute("dp_1", 990, "needs_response"),
        LatePaymentPolicy::Grant,
    );
    assert_eq!(opened.next.status, OrderStatus::Paid);
    assert_eq!(opened.next.granted, paid.granted);
    assert_eq!(opened.next.anomalies.len(), 1);
    let a = &opened.next.anomalies[0];
    assert_eq!(
        (a.kind, a.transaction_id.as_str()),
        (AnomalyKind::Dispute, "dp_1")
    );
    assert!(
        a.detail.contains("needs_response") && a.detail.contains("tx1"),
        "{}",
        a.detail
    );
    assert!(matches!(
        opened.effects.as_slice(),
        [Effect::Alert {
            kind: AlertKind::Dispute,
            ..
        }]
    ));
    // The same report again (a redelivered event): nothing changes, no second alert.
    let again = run(
        &opened.next,
        dispute("dp_1", 990, "needs_response"),
        LatePaymentPolicy::Grant,
    );
    assert_eq!(again.next, opened.next);
    assert!(again.effects.is_empty());
    // The dispute closes: the same anomaly is updated, reopened and alerted.
    let mut resolved = opened.next.clone();
    resolved.anomalies[0].resolved = true;
    let lost = run(
        &resolved,
        dispute("dp_1", 990, "lost"),
        LatePaymentPolicy::Grant,
    );
    assert_eq!(lost.next.status, OrderStatus::Paid);
    assert_eq!(lost.next.anomalies.len(), 1);
    assert!(lost.next.anomalies[0].detail.contains("lost"));
    assert!(!lost.next.anomalies[0].resolved);
    assert_eq!(lost.effects.len(), 1);
    assert!(lost.next.timers.iter().next().is_none());
    // Another dispute on the same order is another anomaly.
    let second = run(
        &lost.next,
        dispute("dp_2", 100, "warning_needs_response"),
        LatePaymentPolicy::Grant,
    );
    assert_eq!(second.next.anomalies.len(), 2);
}

/// A cancelled order still owes the provider a close and a query: a lost or failed
/// answer is re-issued by the persisted watchdog, backing off to an hour between
/// attempts, until a day past the trade's expiry — then an operator is alerted.
#[test]
fn a_cancelled_orders_close_is_retried_until_the_provider_answers() {
    let pol = policy(LatePaymentPolicy::Grant);
    let o = run(
        &new_order(),
        Event::TradeOpened {
            qr_code_url: Some("q".into()),
            payment_url: None,
            trade_ref: None,
        },
        LatePaymentPolicy::Grant,
    )
    .next;
    let mut o = run(
        &o,
        Event::Cancel { by: Actor::User },
        LatePaymentPolicy::Grant,
    )
    .next;
    assert_eq!(o.closing, Some(CloseStep::Close));
    let mut calls = vec![];
    let mut last_at = T0;
    while let Some(t) = o.timers.retry {
        assert!(
            t.at.ms() - last_at.ms() <= 3_600_000,
            "more than an hour between attempts"
        );
        last_at = t.at;
        let fired = step(
            &o,
            Event::Timer {
                kind: TimerKind::Retry,
                generation: t.generation,
            },
            t.at,
            &pol,
        )
        .unwrap();
        calls.extend(fired.effects.clone());
        o = fired.next;
        assert!(calls.len() < 100, "the watchdog never stops");
    }
    assert_eq!(o.status, OrderStatus::Cancelled);
    assert_eq!(o.closing, None);
    assert!(last_at >= o.expire_at.plus_ms(24 * 3_600_000));
    let closes = calls.iter().filter(|e| **e == Effect::Close).count();
    assert!((20..40).contains(&closes), "{closes} closes");
    assert!(matches!(
        calls.last(),
        Some(Effect::Alert {
            kind: AlertKind::CloseUnconfirmed,
            ..
        })
    ));
    // Answered: closed, then the query after it finds nothing — done.
    let o = run(
        &new_order(),
        Event::TradeOpened {
            qr_code_url: None,
            payment_url: Some("u".into()),
            trade_ref: None,
        },
        LatePaymentPolicy::Grant,
    )
    .next;
    let o = run(
        &o,
        Event::Cancel { by: Actor::User },
        LatePaymentPolicy::Grant,
    )
    .next;
    let t = run(
        &o,
        Event::CloseResult(CloseOutcome::Closed),
        LatePaymentPolicy::Grant,
    );
    assert_eq!(t.effects, vec![Effect::Query]);
    assert_eq!(t.next.closing, Some(CloseStep::QueryAfterClose));
    let done = run(
        &t.next,
        Event::QueryResult(QueryOutcome::Closed),
        LatePaymentPolicy::Grant,
    )
    .next;
    assert_eq!((done.closing, done.timers.retry), (None, None));
    assert_eq!(done.status, OrderStatus::Cancelled);
}

/// Found by the simulation (seed 10987384483653195593 of 100 000): a poll's "not
/// paid", sent before the buyer paid and answered after the close had said "already
/// paid", was taken for the query after the close — the cancelled order stopped
/// asking and the payment was never learnt (an expiring order would have expired). Once
/// the close says paid, only an answer that reports the payment ends the sequence.
#[test]
fn a_stale_not_paid_answer_after_a_close_found_the_trade_paid_is_ignored() {
    let paid = match pay("tx1", 990) {
        Event::Confirmed(r) => QueryOutcome::Paid(r),
        _ => unreachable!(),
    };
    let opened = run(
        &new_order(),
        Event::TradeOpened {
            qr_code_url: Some("q".into()),
            payment_url: None,
            trade_ref: None,
        },
        LatePaymentPolicy::Grant,
    )
    .next;
    // Cancelled, and the expiring order: both hear "already paid" from the close.
    let cancelled = run(
        &opened,
        Event::Cancel { by: Actor::User },
        LatePaymentPolicy::Grant,
    )
    .next;
    let expiring = fire(&opened, TimerKind::Expire).next;
    let expiring = run(
        &expiring,
        Event::QueryResult(QueryOutcome::NotPaid),
        LatePaymentPolicy::Grant,
    )
    .next;
    assert_eq!(expiring.closing, Some(CloseStep::Close));
    for o in [cancelled, expiring] {
        let t = run(
            &o,
            Event::CloseResult(CloseOutcome::AlreadyPaid),
            LatePaymentPolicy::Grant,
        );
        assert_eq!(t.effects, vec![Effect::Query]);
        let mut o = t.next;
        for stale in [QueryOutcome::NotPaid, QueryOutcome::Closed] {
            o = run(&o, Event::QueryResult(stale), LatePaymentPolicy::Grant).next;
            assert_eq!(o.closing, Some(CloseStep::QueryAfterPaidClose));
            assert!(o.timers.retry.is_some(), "the watchdog still asks");
        }
        assert_ne!(o.status, OrderStatus::Expired);
        let done = run(
            &o,
            Event::QueryResult(paid.clone()),
            LatePaymentPolicy::Grant,
        )
        .next;
        assert_eq!(done.status, OrderStatus::Paid);
        assert!(done.granted);
        assert_eq!(done.closing, None);
    }
}
