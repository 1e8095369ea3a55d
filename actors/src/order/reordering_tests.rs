//! Reordering (issue 8, test 3): every ordering of the four things that can happen to
//! a paid-for order — the payment callback, the order's close (cancel or expiry), a
//! refund, and a status query's answer — in every variant, against a small reference
//! model written for this test. Run through the pure machine, through the actor's
//! persist path on the simulation's in-memory store (the real storage commands, so
//! grants are counted where they are written), and for 100 orders through the real
//! order actors on real storage.
//!
//! What the reference model decides (and so what payd must do):
//! - a matching payment on a pending order pays it and grants it, once;
//! - the same transaction again (callback and query both report it) changes nothing;
//! - a payment of the wrong amount is held as an anomaly, granted nothing, and fails
//!   the order if it was still pending;
//! - another matching transaction on a paid order is a double payment: refunded;
//! - a matching payment on a cancelled, expired or failed order follows the
//!   late-payment policy: `grant` → paid (late) and granted; `refund` → the order
//!   keeps its final state and the payment is refunded;
//! - cancel and expiry act only on a pending order;
//! - a refund is accepted only on a paid order and never beyond what is left; its
//!   success moves the order to partially refunded / refunded, its failure changes
//!   nothing but the refund's own state.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::model::*;
use crate::order::actor::OrderCommand;
use crate::order::machine::*;
use crate::order::simulation::{MemStore, T0, sim_order, sim_policy};
use crate::order::test_engine::{Engine, SilentProvider, open_store};
use crate::tables::{HISTORY, ORDERS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseBy {
    Cancel,
    /// The expiry deadline fires and the provider has seen no payment yet.
    Expire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    /// The provider reports the payment the callback is about.
    PaidSame,
    /// The provider reports another transaction (a second payment).
    PaidOther,
    NotPaid,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Pay,
    Close,
    Refund,
    Query,
}

#[derive(Debug, Clone, Copy)]
struct Variant {
    amount_ok: bool,
    close: CloseBy,
    refund_full: bool,
    refund_succeeds: bool,
    query: Query,
}

fn variants() -> Vec<Variant> {
    let mut out = Vec::new();
    for amount_ok in [true, false] {
        for close in [CloseBy::Cancel, CloseBy::Expire] {
            for refund_full in [true, false] {
                for refund_succeeds in [true, false] {
                    for query in [
                        Query::PaidSame,
                        Query::PaidOther,
                        Query::NotPaid,
                        Query::Closed,
                    ] {
                        out.push(Variant {
                            amount_ok,
                            close,
                            refund_full,
                            refund_succeeds,
                            query,
                        });
                    }
                }
            }
        }
    }
    out
}

fn permutations(items: &[Ev]) -> Vec<Vec<Ev>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, first);
            out.push(tail);
        }
    }
    out
}

pub(super) const PARTIAL: i64 = 300;
pub(super) const PRICE: i64 = 990;

/// What the reference model says the order ends as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Outcome {
    pub(super) status: OrderStatus,
    pub(super) granted_tx: Option<String>,
    pub(super) late: bool,
    pub(super) payments: Vec<(String, PaymentDisposition)>,
    /// (extra transaction refunded, or the order's own payment; amount; state)
    pub(super) refunds: Vec<(Option<String>, i64, RefundState)>,
}

impl Outcome {
    pub(super) fn of(o: &Order) -> Outcome {
        Outcome {
            status: o.status,
            granted_tx: o
                .granted
                .then(|| o.provider_transaction_id.clone())
                .flatten(),
            late: o.late_payment,
            payments: o
                .payments
                .iter()
                .map(|p| (p.transaction_id.clone(), p.disposition))
                .collect(),
            refunds: o
                .refunds
                .iter()
                .map(|r| (r.transaction_id.clone(), r.amount_minor, r.state))
                .collect(),
        }
    }
}

impl Outcome {
    pub(super) fn new() -> Outcome {
        Outcome {
            status: OrderStatus::Pending,
            granted_tx: None,
            late: false,
            payments: vec![],
            refunds: vec![],
        }
    }

    /// A payment reported by callback or query (`ok`: the right amount).
    pub(super) fn pay(&mut self, tx: &str, ok: bool, late: LatePaymentPolicy) {
        use OrderStatus::*;
        if self.payments.iter().any(|(t, _)| t == tx) {
            return;
        }
        if !ok {
            self.payments
                .push((tx.into(), PaymentDisposition::AmountMismatch));
            if self.status == Pending {
                self.status = Failed;
            }
            return;
        }
        let grant = |m: &mut Outcome| {
            m.payments.push((tx.into(), PaymentDisposition::Granted));
            m.status = Paid;
            m.granted_tx = Some(tx.into());
        };
        let refund_it = |m: &mut Outcome, d| {
            m.payments.push((tx.into(), d));
            m.refunds
                .push((Some(tx.into()), PRICE, RefundState::Processing));
        };
        match (self.status, late) {
            (Pending, _) => grant(self),
            (Paid | PartiallyRefunded | Refunded, _) => {
                refund_it(self, PaymentDisposition::DoublePayment)
            }
            (Cancelled | Expired | Failed, LatePaymentPolicy::Grant) => {
                grant(self);
                self.late = true;
            }
            (Cancelled | Expired | Failed, LatePaymentPolicy::Refund) => {
                refund_it(self, PaymentDisposition::LateRefund)
            }
        }
    }

    /// Cancel or expiry: only a pending order closes.
    pub(super) fn close(&mut self, by: CloseBy) {
        if self.status == OrderStatus::Pending {
            self.status = match by {
                CloseBy::Cancel => OrderStatus::Cancelled,
                CloseBy::Expire => OrderStatus::Expired,
            };
        }
    }

    /// A refund of all that is left (`full`) or of 300, answered at once. Returns the
    /// amount if it was accepted.
    pub(super) fn refund(&mut self, full: bool, succeeds: bool) -> Option<i64> {
        use OrderStatus::*;
        if !matches!(self.status, Paid | PartiallyRefunded) {
            return None;
        }
        let committed: i64 = self
            .refunds
            .iter()
            .filter(|(tx, _, s)| tx.is_none() && *s != RefundState::Failed)
            .map(|r| r.1)
            .sum();
        let left = PRICE - committed;
        let amount = if full { left } else { PARTIAL };
        if amount <= 0 || amount > left {
            return None;
        }
        let state = if succeeds {
            RefundState::Succeeded
        } else {
            RefundState::Failed
        };
        self.refunds.push((None, amount, state));
        if succeeds {
            self.status = if committed + amount >= PRICE {
                Refunded
            } else {
                PartiallyRefunded
            };
        }
        Some(amount)
    }
}

/// The reference model: a few lines per rule, written from the rules above, sharing
/// no code with the machine.
fn model(order: &[Ev], v: Variant, late: LatePaymentPolicy) -> Outcome {
    let mut m = Outcome::new();
    for ev in order {
        match ev {
            Ev::Pay => m.pay("tx1", v.amount_ok, late),
            Ev::Query => match v.query {
                Query::PaidSame => m.pay("tx1", v.amount_ok, late),
                Query::PaidOther => m.pay("tx2", true, late),
                Query::NotPaid | Query::Closed => {}
            },
            Ev::Close => m.close(v.close),
            Ev::Refund => {
                m.refund(v.refund_full, v.refund_succeeds);
            }
        }
    }
    m
}

fn report(tx: &str, amount: i64, source: PaymentSource) -> PaymentReport {
    PaymentReport {
        transaction_id: tx.into(),
        amount_minor: amount,
        currency: Currency::parse("CNY").expect("CNY"),
        paid_at: T0,
        source,
    }
}

/// The machine events one test event stands for. Events that depend on the order as
/// it stands then (a timer's generation, the refund just opened) are built by `next`.
enum Step {
    Now(Event),
    /// Fire the expiry deadline with the generation the order holds (a stale one if
    /// it holds none), then the provider's answers of the expiry sequence.
    FireExpiry,
    /// Answer the most recent refund.
    AnswerLastRefund(RefundReport),
}

fn steps(ev: Ev, v: Variant) -> Vec<Step> {
    let amount = if v.amount_ok { PRICE } else { PRICE - 1 };
    match ev {
        Ev::Pay => vec![Step::Now(Event::Confirmed(report(
            "tx1",
            amount,
            PaymentSource::Callback,
        )))],
        Ev::Query => vec![Step::Now(Event::QueryResult(match v.query {
            Query::PaidSame => QueryOutcome::Paid(report("tx1", amount, PaymentSource::Query)),
            Query::PaidOther => QueryOutcome::Paid(report("tx2", PRICE, PaymentSource::Query)),
            Query::NotPaid => QueryOutcome::NotPaid,
            Query::Closed => QueryOutcome::Closed,
        }))],
        Ev::Close => match v.close {
            CloseBy::Cancel => vec![Step::Now(Event::Cancel { by: Actor::User })],
            CloseBy::Expire => vec![
                Step::FireExpiry,
                Step::Now(Event::QueryResult(QueryOutcome::NotPaid)),
                Step::Now(Event::CloseResult(CloseOutcome::Closed)),
                Step::Now(Event::QueryResult(QueryOutcome::NotPaid)),
            ],
        },
        Ev::Refund => vec![
            Step::Now(Event::RequestRefund {
                amount_minor: (!v.refund_full).then_some(PARTIAL),
                reason: "reordering".into(),
                by: Actor::Admin,
                transaction_id: None,
            }),
            Step::AnswerLastRefund(if v.refund_succeeds {
                RefundReport::Succeeded {
                    provider_refund_id: Some("r1".into()),
                }
            } else {
                RefundReport::Failed {
                    reason: "declined".into(),
                }
            }),
        ],
    }
}

/// The machine event a step stands for, given the order as it stands now.
fn event_of(step: &Step, o: &Order, refunds_before: usize) -> Option<Event> {
    match step {
        Step::Now(e) => Some(e.clone()),
        Step::FireExpiry => Some(Event::Timer {
            kind: TimerKind::Expire,
            generation: o.timers.expire.map_or(2, |t| t.generation),
        }),
        // Only if the refund request was accepted (it added a refund).
        Step::AnswerLastRefund(report) => {
            (o.refunds.len() > refunds_before).then(|| Event::RefundResult {
                refund_no: o.refunds.last().expect("a refund").refund_no.clone(),
                report: report.clone(),
            })
        }
    }
}

fn opened() -> Event {
    Event::TradeOpened {
        qr_code_url: Some("q".into()),
        payment_url: None,
        trade_ref: None,
    }
}

/// Every case: 24 orderings × 64 variants × 2 late-payment policies.
fn cases() -> Vec<(Vec<Ev>, Variant, LatePaymentPolicy)> {
    let mut out = Vec::new();
    for order in permutations(&[Ev::Pay, Ev::Close, Ev::Refund, Ev::Query]) {
        for v in variants() {
            for late in [LatePaymentPolicy::Grant, LatePaymentPolicy::Refund] {
                out.push((order.clone(), v, late));
            }
        }
    }
    out
}

#[test]
fn every_ordering_of_pay_close_refund_and_query_ends_as_the_reference_model_says() {
    let cases = cases();
    assert_eq!(cases.len(), 24 * 64 * 2);
    let mut grants = 0;
    for (n, (order, v, late)) in cases.iter().enumerate() {
        let policy = sim_policy(*late);
        // The machine alone, and the actor's persist path on the in-memory store.
        let mut o = sim_order(n, "u1", n % 2 == 0, T0, 30 * 60_000);
        let mut store = MemStore::default();
        let mut tx = store.tx();
        crate::commands::write_new_order(&mut tx, o.clone(), None).expect("created");
        let staged = tx.into_staged();
        store.apply(staged);
        let mut now = T0;
        let mut apply = |o: &mut Order, e: Event, now: Timestamp| {
            let Ok(t) = step(o, e.clone(), now, &policy) else {
                return;
            };
            let mut none = None;
            if let Some(w) = crate::order::actor::transition_write(
                o,
                &t,
                e.name(),
                e.actor(),
                now,
                &Arc::new(vec![]),
                false,
                &mut none,
            ) {
                let mut tx = store.tx();
                let saved = crate::commands::write_transition(&mut tx, w).expect("persisted");
                let staged = tx.into_staged();
                store.apply(staged);
                *o = saved;
            }
        };
        apply(&mut o, opened(), now);
        for ev in order {
            let refunds_before = o.refunds.len();
            for s in steps(*ev, *v) {
                now = now.plus_ms(1_000);
                if let Some(e) = event_of(&s, &o, refunds_before) {
                    apply(&mut o, e, now);
                }
            }
        }
        let expected = model(order, *v, *late);
        assert_eq!(
            Outcome::of(&o),
            expected,
            "ordering {order:?}, {v:?}, late payments {late:?}"
        );
        let stored: Order = store.get(&ORDERS, &o.order_no).expect("stored");
        assert_eq!(stored, o);
        let granted = store
            .scan(&HISTORY)
            .into_iter()
            .filter(|(_, h)| h.change == "grant")
            .count();
        assert_eq!(
            granted,
            usize::from(expected.granted_tx.is_some()),
            "{order:?} {v:?}"
        );
        grants += granted;
    }
    println!(
        "reordering: {} cases (24 orderings × 64 variants × 2 policies), {grants} granted",
        cases.len()
    );
}

/// 100 of the cases (spread over every ordering, variant and both policies) through
/// the real order actors on real storage: the events go through the supervisor as
/// the HTTP layer and the scheduler send them, each answered only once durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_orders_through_the_real_actors_end_as_the_reference_model_says() {
    let all = cases();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = 0;
    for late in [LatePaymentPolicy::Grant, LatePaymentPolicy::Refund] {
        let store = open_store(&dir.path().join(format!("{late:?}")));
        let engine = Engine::start(
            store,
            sim_policy(late),
            Arc::new(SystemClock),
            Arc::new(SilentProvider),
            Duration::from_secs(3600),
        )
        .await;
        let picked: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(_, c)| c.2 == late)
            .filter(|(n, _)| n % 61 == 0 || n % 61 == 1)
            .take(50)
            .map(|(n, c)| (n, c.clone()))
            .collect();
        assert_eq!(picked.len(), 50);
        let mut tasks = Vec::new();
        for (n, (ordering, v, _)) in picked {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let now = SystemClock.now();
                let order = sim_order(n, &format!("user{n}"), n % 2 == 0, now, 30 * 60_000);
                let no = order.order_no.clone();
                let mut o = crate::commands::create_order(&engine.store, order)
                    .await
                    .expect("created");
                let send = async |o: &mut Order, e: Event| {
                    let command = match e {
                        Event::Confirmed(_) => OrderCommand::Callback {
                            notification: Box::new(NotificationRecord {
                                provider: ProviderKind::Mock,
                                event_id: format!("EV-{n}"),
                                order_no: no.clone(),
                                result: String::new(),
                                source_ip: None,
                                received_at: SystemClock.now(),
                                deliveries: 1,
                                raw_body: vec![],
                                headers: vec![],
                            }),
                            event: e,
                        },
                        e => OrderCommand::Event(e),
                    };
                    if let Ok(next) = engine.ask(&no, command).await {
                        *o = next;
                    }
                };
                send(&mut o, opened()).await;
                for ev in &ordering {
                    let refunds_before = o.refunds.len();
                    for s in steps(*ev, v) {
                        if let Some(e) = event_of(&s, &o, refunds_before) {
                            send(&mut o, e).await;
                        }
                    }
                }
                (n, ordering, v, no)
            }));
        }
        for t in tasks {
            let (n, ordering, v, no) = t.await.expect("order task");
            let view = engine.store.read().expect("read");
            let stored: Order = view.get(&ORDERS, &no).expect("read").expect("stored");
            let expected = model(&ordering, v, late);
            assert_eq!(
                Outcome::of(&stored),
                expected,
                "case {n}: ordering {ordering:?}, {v:?}, late payments {late:?}"
            );
            let grants = view
                .scan_prefix(&HISTORY, &format!("user{n}"), usize::MAX, false)
                .expect("history")
                .into_iter()
                .filter(|(_, h)| h.change == "grant")
                .count();
            assert_eq!(
                grants,
                usize::from(expected.granted_tx.is_some()),
                "case {n}"
            );
            checked += 1;
        }
        engine.stop().await;
    }
    assert_eq!(checked, 100);
}
