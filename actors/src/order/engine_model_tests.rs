//! The real engine against a reference model (issue 8, test 6b): random sequences of
//! orders, payments (by callback or by query, right or wrong amount, repeated or a
//! second transaction), cancels, expiries, refunds that succeed or fail, and
//! `Restart` — the actors stopped, the store shut down and opened again from its
//! directory — run through the order actors on real storage in a temporary
//! directory. After every operation each stored order must match the reference model
//! of `reordering_tests` (status, grant, late flag, payments and their disposition,
//! refunds and their state) and each buyer's points must be what was granted less
//! what succeeded refunds took back. `PAYD_MODEL_CASES=N` runs more cases.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::reordering_tests::{CloseBy, Outcome, PARTIAL, PRICE};
use crate::clock::{Clock, SystemClock};
use crate::model::*;
use crate::order::actor::OrderCommand;
use crate::order::machine::*;
use crate::order::simulation::{sim_order, sim_policy};
use crate::order::test_engine::{Engine, SilentProvider, open_store};
use crate::tables::{ENTITLEMENTS, HISTORY, ORDERS};

#[derive(Debug, Clone)]
enum Op {
    Create {
        user: u8,
    },
    Pay {
        order: u8,
        tx: u8,
        ok: bool,
    },
    QueryPaid {
        order: u8,
        tx: u8,
    },
    Cancel {
        order: u8,
    },
    Expire {
        order: u8,
    },
    Refund {
        order: u8,
        full: bool,
        succeeds: bool,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..2).prop_map(|user| Op::Create { user }),
        4 => (0u8..4, 0u8..2, prop::bool::weighted(0.85))
            .prop_map(|(order, tx, ok)| Op::Pay { order, tx, ok }),
        2 => (0u8..4, 0u8..2).prop_map(|(order, tx)| Op::QueryPaid { order, tx }),
        1 => (0u8..4).prop_map(|order| Op::Cancel { order }),
        1 => (0u8..4).prop_map(|order| Op::Expire { order }),
        2 => (0u8..4, any::<bool>(), prop::bool::weighted(0.7))
            .prop_map(|(order, full, succeeds)| Op::Refund { order, full, succeeds }),
        1 => Just(Op::Restart),
    ]
}

struct Placed {
    no: String,
    user: String,
    model: Outcome,
}

fn report(tx: &str, ok: bool, source: PaymentSource) -> PaymentReport {
    PaymentReport {
        transaction_id: tx.into(),
        amount_minor: if ok { PRICE } else { PRICE - 1 },
        currency: Currency::parse("CNY").expect("CNY"),
        paid_at: SystemClock.now(),
        source,
    }
}

/// The points a refund of `amount` takes back (its share of the package, rounded
/// down), as the entitlement rules say.
fn share(points: u64, amount: i64) -> u64 {
    points * amount as u64 / PRICE as u64
}

async fn start(dir: &std::path::Path, late: LatePaymentPolicy) -> Engine {
    Engine::start(
        open_store(dir),
        sim_policy(late),
        Arc::new(SystemClock),
        Arc::new(SilentProvider),
        Duration::from_secs(3600),
    )
    .await
}

async fn event(engine: &Engine, no: &str, e: Event) -> Option<Order> {
    engine.ask(no, OrderCommand::Event(e)).await.ok()
}

async fn run(ops: Vec<Op>, late: LatePaymentPolicy) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = start(dir.path(), late).await;
    let mut orders: Vec<Placed> = Vec::new();
    // Per user: (points granted, points taken back by refunds).
    let mut points = [(0u64, 0u64), (0u64, 0u64)];
    let mut bonus = [(0u64, 0u64), (0u64, 0u64)];
    for op in ops {
        let pick = |i: u8| (!orders.is_empty()).then(|| i as usize % orders.len());
        match op {
            Op::Create { user } => {
                if orders.len() >= 4 {
                    continue;
                }
                let n = orders.len();
                let user = format!("user{user}");
                let o = sim_order(n, &user, true, SystemClock.now(), 30 * 60_000);
                let no = o.order_no.clone();
                crate::commands::create_order(&engine.store, o)
                    .await
                    .expect("created");
                event(
                    &engine,
                    &no,
                    Event::TradeOpened {
                        qr_code_url: Some("q".into()),
                        payment_url: None,
                        trade_ref: None,
                    },
                )
                .await
                .expect("opened");
                orders.push(Placed {
                    no,
                    user,
                    model: Outcome::new(),
                });
            }
            Op::Pay { order, tx, .. } | Op::QueryPaid { order, tx } if pick(order).is_some() => {
                let i = pick(order).expect("some");
                let by_query = matches!(op, Op::QueryPaid { .. });
                let ok = ok_of(&op);
                let tx = format!("tx{i}-{tx}");
                let no = orders[i].no.clone();
                let command = if by_query {
                    OrderCommand::Event(Event::QueryResult(QueryOutcome::Paid(report(
                        &tx,
                        ok,
                        PaymentSource::Query,
                    ))))
                } else {
                    OrderCommand::Callback {
                        event: Event::Confirmed(report(&tx, ok, PaymentSource::Callback)),
                        notification: Box::new(NotificationRecord {
                            provider: ProviderKind::Mock,
                            event_id: format!("EV-{tx}"),
                            order_no: no.clone(),
                            result: String::new(),
                            source_ip: None,
                            received_at: SystemClock.now(),
                            deliveries: 1,
                            raw_body: vec![],
                            headers: vec![],
                        }),
                    }
                };
                engine.ask(&no, command).await.expect("acknowledged");
                let m = &mut orders[i].model;
                let was_granted = m.granted_tx.is_some();
                m.pay(&tx, ok, late);
                if !was_granted && m.granted_tx.is_some() {
                    let u = user_index(&orders[i].user);
                    points[u].0 += 100;
                    bonus[u].0 += 10;
                }
            }
            Op::Cancel { order } if pick(order).is_some() => {
                let i = pick(order).expect("some");
                let _ = event(
                    &engine,
                    &orders[i].no.clone(),
                    Event::Cancel { by: Actor::User },
                )
                .await;
                orders[i].model.close(CloseBy::Cancel);
            }
            Op::Expire { order } if pick(order).is_some() => {
                let i = pick(order).expect("some");
                let no = orders[i].no.clone();
                let stored: Order = engine
                    .store
                    .read()
                    .expect("read")
                    .get(&ORDERS, &no)
                    .expect("read")
                    .expect("stored");
                let generation = stored.timers.expire.map_or(2, |t| t.generation);
                for e in [
                    Event::Timer {
                        kind: TimerKind::Expire,
                        generation,
                    },
                    Event::QueryResult(QueryOutcome::NotPaid),
                    Event::CloseResult(CloseOutcome::Closed),
                    Event::QueryResult(QueryOutcome::NotPaid),
                ] {
                    let _ = event(&engine, &no, e).await;
                }
                orders[i].model.close(CloseBy::Expire);
            }
            Op::Refund {
                order,
                full,
                succeeds,
            } if pick(order).is_some() => {
                let i = pick(order).expect("some");
                let no = orders[i].no.clone();
                let requested = event(
                    &engine,
                    &no,
                    Event::RequestRefund {
                        amount_minor: (!full).then_some(PARTIAL),
                        reason: "model".into(),
                        by: Actor::Admin,
                        transaction_id: None,
                    },
                )
                .await;
                if let Some(o) = &requested {
                    let refund_no = o.refunds.last().expect("a refund").refund_no.clone();
                    let report = if succeeds {
                        RefundReport::Succeeded {
                            provider_refund_id: None,
                        }
                    } else {
                        RefundReport::Failed {
                            reason: "declined".into(),
                        }
                    };
                    event(&engine, &no, Event::RefundResult { refund_no, report })
                        .await
                        .expect("refund answered");
                }
                let accepted = orders[i].model.refund(full, succeeds);
                prop_assert_eq!(accepted.is_some(), requested.is_some(), "refund on {}", no);
                if let (Some(amount), true) = (accepted, succeeds) {
                    let u = user_index(&orders[i].user);
                    points[u].1 += share(100, amount);
                    bonus[u].1 += share(10, amount);
                }
            }
            Op::Restart => {
                engine.stop().await;
                engine = start(dir.path(), late).await;
            }
            _ => {}
        }
        // Every order, and every buyer's points, as the model says.
        let view = engine.store.read().expect("read");
        for p in &orders {
            let stored: Order = view.get(&ORDERS, &p.no).expect("read").expect("stored");
            prop_assert_eq!(&Outcome::of(&stored), &p.model, "order {}", p.no);
        }
        for (u, (granted, taken)) in points.iter().enumerate() {
            let user = format!("user{u}");
            let ent = view
                .get(&ENTITLEMENTS, &user)
                .expect("read")
                .unwrap_or_default();
            prop_assert_eq!(
                ent.points_paid + ent.held_points_paid,
                granted - taken,
                "{}",
                user
            );
            prop_assert_eq!(
                ent.points_bonus + ent.held_points_bonus,
                bonus[u].0 - bonus[u].1,
                "{}",
                user
            );
            let grants = view
                .scan_prefix(&HISTORY, &user, usize::MAX, false)
                .expect("history")
                .into_iter()
                .filter(|(_, h)| h.change == "grant")
                .count() as u64;
            prop_assert_eq!(grants * 100, *granted, "{}", user);
        }
    }
    engine.stop().await;
    Ok(())
}

fn ok_of(op: &Op) -> bool {
    match op {
        Op::Pay { ok, .. } => *ok,
        _ => true,
    }
}

fn user_index(user: &str) -> usize {
    usize::from(user == "user1")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PAYD_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8)
    ))]

    #[test]
    fn the_engine_on_real_storage_matches_the_reference_model_across_restarts(
        ops in proptest::collection::vec(op(), 1..30),
        refund_policy in any::<bool>(),
    ) {
        let late = if refund_policy { LatePaymentPolicy::Refund } else { LatePaymentPolicy::Grant };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run(ops, late))?;
    }
}
