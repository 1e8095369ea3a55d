//! Cancel vs pay vs expiry (issue 8, test 4): in each round the buyer's cancel, the
//! buyer's payment at the provider (with its callback) and the order's expiry
//! deadline are released together against the real order actors on real storage.
//! The provider is a ledger that behaves as real ones do: a trade closed first
//! refuses the payment; a trade paid first answers a close with "already paid".
//!
//! Every round must end with no money lost: what the provider took is either granted
//! (the order paid, on time or late under the `grant` policy) or refunded in full
//! (a late payment under the `refund` policy, the order keeping its final state); an
//! acknowledged callback's payment is always on the order; nothing is granted twice.
//! The end-to-end race over HTTP is `tests/e2e/races.rs`; this one adds the expiry
//! leg, which can be released at a chosen instant only in process. Each policy runs
//! twice: with the provider answering by message, and answering locally as the mock
//! does (its answers folded into the transitions that ask for them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Barrier;

use crate::clock::{Clock, SystemClock};
use crate::model::*;
use crate::order::actor::OrderCommand;
use crate::order::machine::*;
use crate::order::simulation::{sim_order, sim_policy};
use crate::order::test_engine::{Engine, open_store};
use crate::provider::*;
use crate::tables::{HISTORY, ORDERS};

#[derive(Default)]
struct Trade {
    paid: Option<(String, Timestamp)>,
    closed: bool,
    refunds: HashMap<String, (Option<String>, i64)>,
}

/// A provider that keeps a ledger of what it took and gave back.
#[derive(Default)]
pub(crate) struct LedgerProvider {
    trades: Mutex<HashMap<String, Trade>>,
    problems: Mutex<Vec<String>>,
    /// Answer queries and closes as a local provider does (the mock): inside the
    /// storage command of the transition that asks, folded into it. The ledger stays
    /// in memory, so what this exercises is the fold racing payments and cancels,
    /// not its atomicity with the store (the mock's trades are in the store).
    local: bool,
}

impl LedgerProvider {
    fn answering_locally() -> Self {
        LedgerProvider {
            local: true,
            ..Self::default()
        }
    }
    fn query_now(&self, order_no: &str) -> QueryOutcome {
        let trades = self.trades.lock().expect("ledger");
        match trades.get(order_no) {
            Some(Trade {
                paid: Some((tx, at)),
                ..
            }) => QueryOutcome::Paid(report(tx, *at, PaymentSource::Query)),
            Some(t) if t.closed => QueryOutcome::Closed,
            _ => QueryOutcome::NotPaid,
        }
    }
    fn close_now(&self, order_no: &str) -> CloseOutcome {
        let mut trades = self.trades.lock().expect("ledger");
        let t = trades.entry(order_no.into()).or_default();
        if t.paid.is_some() {
            CloseOutcome::AlreadyPaid
        } else {
            t.closed = true;
            CloseOutcome::Closed
        }
    }
    /// The buyer pays: refused if the trade was closed first.
    fn pay(&self, order_no: &str, tx: &str) -> Option<PaymentReport> {
        let mut trades = self.trades.lock().expect("ledger");
        let t = trades.entry(order_no.into()).or_default();
        if t.closed || t.paid.is_some() {
            return None;
        }
        let at = SystemClock.now();
        t.paid = Some((tx.into(), at));
        Some(report(tx, at, PaymentSource::Callback))
    }
    fn taken(&self, order_no: &str) -> (Option<String>, i64) {
        let trades = self.trades.lock().expect("ledger");
        let t = trades.get(order_no);
        (
            t.and_then(|t| t.paid.as_ref().map(|p| p.0.clone())),
            t.map_or(0, |t| t.refunds.values().map(|r| r.1).sum()),
        )
    }
}

fn report(tx: &str, at: Timestamp, source: PaymentSource) -> PaymentReport {
    PaymentReport {
        transaction_id: tx.into(),
        amount_minor: 990,
        currency: Currency::parse("CNY").expect("CNY"),
        paid_at: at,
        source,
    }
}

fn ready<'a, T: Send + 'a>(v: Result<T, ProviderError>) -> ProviderFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl PaymentProvider for LedgerProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Mock
    }
    fn create(&self, _: TradeRequest) -> ProviderFuture<'_, OpenedTrade> {
        ready(Ok(OpenedTrade {
            qr_code_url: Some("q".into()),
            payment_url: None,
            trade_ref: None,
        }))
    }
    fn local_trades(&self) -> Option<&dyn LocalTrades> {
        self.local.then_some(self as &dyn LocalTrades)
    }
    fn query(&self, trade: TradeRef) -> ProviderFuture<'_, QueryOutcome> {
        ready(Ok(self.query_now(&trade.order_no)))
    }
    fn close(&self, trade: TradeRef) -> ProviderFuture<'_, CloseOutcome> {
        ready(Ok(self.close_now(&trade.order_no)))
    }
    fn refund(&self, r: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        let mut trades = self.trades.lock().expect("ledger");
        let t = trades.entry(r.trade.order_no.clone()).or_default();
        if !t.refunds.contains_key(&r.refund_no) {
            let refunded: i64 = t.refunds.values().map(|x| x.1).sum();
            let paid_tx = t.paid.as_ref().map(|p| p.0.clone());
            let tx = r.transaction_id.clone().or(paid_tx.clone());
            if tx.is_none() || tx != paid_tx || refunded + r.amount_minor > 990 {
                self.problems.lock().expect("problems").push(format!(
                    "{}: refund {} of {} for {:?} with {refunded} refunded",
                    r.trade.order_no, r.refund_no, r.amount_minor, r.transaction_id
                ));
            }
            t.refunds
                .insert(r.refund_no.clone(), (r.transaction_id, r.amount_minor));
        }
        ready(Ok(RefundOutcome {
            status: RefundStatus::Succeeded,
            provider_refund_id: Some(format!("pr-{}", r.refund_no)),
        }))
    }
    fn query_refund(&self, r: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        self.refund(r)
    }
}

impl LocalTrades for LedgerProvider {
    fn query(
        &self,
        _: &mut payd_storage::WriteCtx<'_>,
        trade: &TradeRef,
    ) -> Result<QueryOutcome, payd_storage::StorageError> {
        Ok(self.query_now(&trade.order_no))
    }
    fn close(
        &self,
        _: &mut payd_storage::WriteCtx<'_>,
        trade: &TradeRef,
    ) -> Result<CloseOutcome, payd_storage::StorageError> {
        Ok(self.close_now(&trade.order_no))
    }
}

#[derive(Debug, Default)]
struct Tally {
    paid_on_time: u32,
    late_granted: u32,
    late_refunded: u32,
    closed_unpaid: u32,
    cancelled: u32,
    expired: u32,
}

async fn round(
    engine: &Engine,
    ledger: &Arc<LedgerProvider>,
    late: LatePaymentPolicy,
    n: usize,
) -> Result<&'static str, String> {
    let user = format!("racer{n}");
    let order = sim_order(n, &user, true, SystemClock.now(), 30 * 60_000);
    let no = order.order_no.clone();
    crate::commands::create_order(&engine.store, order)
        .await
        .map_err(|e| e.to_string())?;
    engine
        .ask(&no, OrderCommand::OpenTrade)
        .await
        .map_err(|e| format!("open: {e}"))?;
    let barrier = Arc::new(Barrier::new(3));
    let cancel = {
        let (engine, barrier, no) = (engine.clone(), barrier.clone(), no.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            // In some rounds the buyer cancels a little later, or not at all (then
            // it is payment against expiry alone).
            match (n as u64 * 104_729) % 40 {
                0..=9 => return,
                lag @ 10..=24 => tokio::time::sleep(Duration::from_millis(lag - 10)).await,
                _ => {}
            }
            let _ = engine
                .ask(&no, OrderCommand::Event(Event::Cancel { by: Actor::User }))
                .await;
        })
    };
    let expiry = {
        let (engine, barrier, no) = (engine.clone(), barrier.clone(), no.clone());
        // Answered locally, the whole expiry is one transition, so a cancel wins only
        // by reaching the actor first: in a quarter of those rounds the deadline
        // fires a little late.
        let lag = ledger.local && n.is_multiple_of(4);
        tokio::spawn(async move {
            barrier.wait().await;
            if lag {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            let _ = engine
                .ask(
                    &no,
                    OrderCommand::Event(Event::Timer {
                        kind: TimerKind::Expire,
                        generation: 2,
                    }),
                )
                .await;
        })
    };
    let pay = {
        let (engine, barrier, no, ledger) =
            (engine.clone(), barrier.clone(), no.clone(), ledger.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            // The buyer is sometimes a few milliseconds slower than the close that
            // the cancel or the expiry sends the provider: then the close wins there.
            let lag_ms = (n as u64 * 7_919) % 24;
            if lag_ms >= 8 {
                tokio::time::sleep(Duration::from_millis(lag_ms - 8)).await;
            }
            let tx = format!("tx-{no}");
            let report = ledger.pay(&no, &tx)?;
            let notification = NotificationRecord {
                provider: ProviderKind::Mock,
                event_id: format!("EV-{tx}"),
                order_no: no.clone(),
                result: String::new(),
                source_ip: None,
                received_at: SystemClock.now(),
                deliveries: 1,
                raw_body: vec![],
                headers: vec![],
            };
            let acked = engine
                .ask(
                    &no,
                    OrderCommand::Callback {
                        event: Event::Confirmed(report),
                        notification: Box::new(notification),
                    },
                )
                .await
                .is_ok();
            Some((tx, acked))
        })
    };
    cancel.await.map_err(|e| e.to_string())?;
    expiry.await.map_err(|e| e.to_string())?;
    let paid = pay.await.map_err(|e| e.to_string())?;
    // Let the expiry sequence and the close after the cancel finish at the provider.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (o, grants) = loop {
        let view = engine.store.read().map_err(|e| e.to_string())?;
        let o: Order = view
            .get(&ORDERS, &no)
            .map_err(|e| e.to_string())?
            .ok_or("order missing")?;
        let grants = view
            .scan_prefix(&HISTORY, &user, usize::MAX, false)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|(_, h)| h.change == "grant")
            .count();
        let (taken, refunded) = ledger.taken(&no);
        let settled = o.status != OrderStatus::Pending
            && o.refunds.iter().all(|r| r.state == RefundState::Succeeded)
            && taken.as_ref().is_none_or(|tx| {
                o.payments.iter().any(|p| &p.transaction_id == tx) && (o.granted || refunded == 990)
            });
        if settled {
            break (o, grants);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "{no} never settled: {} payments {:?}, provider took {taken:?}, refunded {refunded}",
                o.status.as_str(),
                o.payments
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (taken, refunded) = ledger.taken(&no);
    // G1: an acknowledged callback's payment is on the order.
    if let Some((tx, true)) = &paid
        && !o.payments.iter().any(|p| &p.transaction_id == tx)
    {
        return Err(format!("{no}: acknowledged {tx} lost"));
    }
    // G2: granted at most once, and only for money taken.
    if grants > 1 || (grants == 1) != o.granted || (o.granted && taken.is_none()) {
        return Err(format!("{no}: {grants} grants, granted {}", o.granted));
    }
    let outcome = match (&taken, o.status, o.late_payment) {
        (None, OrderStatus::Cancelled | OrderStatus::Expired, _) => {
            if !o.payments.is_empty() || o.granted {
                return Err(format!("{no}: nothing was paid but {:?}", o.payments));
            }
            "closed_unpaid"
        }
        (Some(_), OrderStatus::Paid, false) => "paid_on_time",
        (Some(_), OrderStatus::Paid, true) if late == LatePaymentPolicy::Grant => "late_granted",
        (Some(_), OrderStatus::Cancelled | OrderStatus::Expired, _)
            if late == LatePaymentPolicy::Refund && refunded == 990 && !o.granted =>
        {
            "late_refunded"
        }
        _ => {
            return Err(format!(
                "{no}: provider took {taken:?} (refunded {refunded}); order {} late {} granted {} under {late:?}",
                o.status.as_str(),
                o.late_payment,
                o.granted
            ));
        }
    };
    Ok(match (outcome, o.status) {
        ("closed_unpaid", OrderStatus::Cancelled) => "closed_unpaid_cancelled",
        ("closed_unpaid", _) => "closed_unpaid_expired",
        (other, _) => other,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_pay_and_expiry_released_together_lose_no_money_and_follow_the_late_payment_policy()
{
    let rounds: usize = std::env::var("PAYD_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let started = std::time::Instant::now();
    // Each policy with the provider's answers coming back as messages, then folded
    // into the transitions that ask for them (as the mock's are).
    let runs = [LatePaymentPolicy::Grant, LatePaymentPolicy::Refund]
        .into_iter()
        .flat_map(|late| [(late, false), (late, true)]);
    for (late, local) in runs {
        let ledger = Arc::new(if local {
            LedgerProvider::answering_locally()
        } else {
            LedgerProvider::default()
        });
        let engine = Engine::start(
            open_store(&dir.path().join(format!("{late:?}-{local}"))),
            sim_policy(late),
            Arc::new(SystemClock),
            ledger.clone(),
            Duration::from_secs(5),
        )
        .await;
        let mut tally = Tally::default();
        let half = rounds / 2;
        // 25 rounds at a time: each round's three parties race each other, and the
        // rounds share the storage writer's group commits.
        let mut n = 0;
        while n < half {
            let batch: Vec<_> = (n..(n + 25).min(half))
                .map(|i| {
                    let (engine, ledger) = (engine.clone(), ledger.clone());
                    tokio::spawn(async move { round(&engine, &ledger, late, i).await })
                })
                .collect();
            for t in batch {
                match t.await.expect("round task") {
                    Ok("paid_on_time") => tally.paid_on_time += 1,
                    Ok("late_granted") => tally.late_granted += 1,
                    Ok("late_refunded") => tally.late_refunded += 1,
                    Ok("closed_unpaid_cancelled") => {
                        tally.closed_unpaid += 1;
                        tally.cancelled += 1
                    }
                    Ok(_) => {
                        tally.closed_unpaid += 1;
                        tally.expired += 1
                    }
                    Err(e) => panic!("under {late:?} (local answers: {local}): {e}"),
                }
            }
            n += 25;
        }
        let problems = ledger.problems.lock().expect("problems").clone();
        assert!(problems.is_empty(), "{problems:#?}");
        println!(
            "race ({late:?}, local answers: {local}): {half} rounds in {:.1?}: {tally:?}",
            started.elapsed()
        );
        // Each policy's own outcome happened, or the test proved nothing about it.
        match late {
            LatePaymentPolicy::Grant => assert_eq!(tally.late_refunded, 0),
            LatePaymentPolicy::Refund => assert_eq!(tally.late_granted, 0),
        }
        assert!(
            tally.paid_on_time > 0 && tally.cancelled > 0 && tally.expired > 0,
            "{tally:?}"
        );
        engine.stop().await;
    }
}
