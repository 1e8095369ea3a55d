//! Clock jumps (issue 8, test 12): the wall clock steps forward 10 minutes, back 10
//! minutes, and back an hour, while orders wait for their expiry under the real
//! scheduler and order actors on real storage. Deadlines are written in wall time
//! (they must survive restarts), but they fire by the scheduler's firing clock, which
//! follows the wall clock only as far as the monotonic clock has really run — so a
//! jump never expires an order early (beyond the scheduler's tick), and never
//! panics. The price of a forward jump is that deadlines fire late by the jump until
//! payd restarts; that is the side to err on.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ractor::Actor;

use crate::clock::Clock;
use crate::model::*;
use crate::order::actor::OrderCommand;
use crate::order::machine::LatePaymentPolicy;
use crate::order::race_tests::LedgerProvider;
use crate::order::simulation::{sim_order, sim_policy};
use crate::order::test_engine::{Engine, open_store};
use crate::scheduler::{Scheduler, SchedulerArgs, SchedulerConfig};
use crate::tables::ORDERS;

const MIN: i64 = 60_000;

/// A clock the test moves by hand: `pass` lets time run (both clocks), `jump` steps
/// the wall clock alone, as an operator or NTP stepping the system clock does.
#[derive(Default)]
struct ManualClock {
    wall_ms: AtomicI64,
    mono_ms: AtomicI64,
}

impl ManualClock {
    fn starting_at(wall: Timestamp) -> ManualClock {
        let c = ManualClock::default();
        c.wall_ms.store(wall.ms(), Ordering::SeqCst);
        c
    }
    fn pass(&self, ms: i64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
        self.mono_ms.fetch_add(ms, Ordering::SeqCst);
    }
    fn jump(&self, ms: i64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.wall_ms.load(Ordering::SeqCst))
    }
    fn monotonic_ms(&self) -> i64 {
        self.mono_ms.load(Ordering::SeqCst)
    }
}

struct World {
    engine: Engine,
    clock: Arc<ManualClock>,
    orders: Vec<String>,
}

async fn world(dir: &std::path::Path) -> World {
    let clock = Arc::new(ManualClock::starting_at(Timestamp(1_763_856_000_000)));
    let engine = Engine::start(
        open_store(dir),
        sim_policy(LatePaymentPolicy::Grant),
        clock.clone(),
        Arc::new(LedgerProvider::default()),
        Duration::from_secs(5),
    )
    .await;
    Actor::spawn(
        None,
        Scheduler,
        SchedulerArgs {
            store: engine.store.clone(),
            clock: clock.clone(),
            supervisor: engine.supervisor.clone(),
            config: SchedulerConfig {
                tick: Duration::from_millis(5),
                ..SchedulerConfig::default()
            },
        },
    )
    .await
    .expect("scheduler starts");
    let mut orders = Vec::new();
    // Three orders, expiring 20, 30 and 40 minutes after creation; no polling.
    for (n, ttl) in [20, 30, 40].into_iter().enumerate() {
        let mut o = sim_order(n, "u", true, clock.now(), ttl * MIN);
        o.timers.poll = None;
        let no = o.order_no.clone();
        crate::commands::create_order(&engine.store, o)
            .await
            .expect("created");
        engine
            .ask(&no, OrderCommand::OpenTrade)
            .await
            .expect("opened");
        orders.push(no);
    }
    World {
        engine,
        clock,
        orders,
    }
}

impl World {
    /// Lets the scheduler run for a while (it ticks every 5 ms of real time).
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    fn statuses(&self) -> Vec<(OrderStatus, bool)> {
        let view = self.engine.store.read().expect("read");
        self.orders
            .iter()
            .map(|no| {
                let o: Order = view.get(&ORDERS, no).expect("read").expect("stored");
                (o.status, o.closing.is_some())
            })
            .collect()
    }
    /// How many orders have begun or finished expiring.
    fn expiring(&self) -> usize {
        self.statuses()
            .iter()
            .filter(|(s, closing)| *s != OrderStatus::Pending || *closing)
            .count()
    }
}

/// Found by this test: the scheduler compared deadlines with the wall clock alone, so
/// a wall clock stepped 10 minutes ahead expired every order due in the next 10
/// minutes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_forward_does_not_expire_orders_early() {
    let dir = tempfile::tempdir().expect("temp dir");
    let w = world(dir.path()).await;
    w.clock.pass(15 * MIN);
    w.settle().await;
    assert_eq!(w.expiring(), 0);
    // 15 minutes have really passed; the wall clock now says 25.
    w.clock.jump(10 * MIN);
    w.settle().await;
    assert_eq!(
        w.expiring(),
        0,
        "expired early after a forward jump: {:?}",
        w.statuses()
    );
    // 21 minutes really passed: only the 20-minute order is due.
    w.clock.pass(6 * MIN);
    w.settle().await;
    assert_eq!(w.expiring(), 1, "{:?}", w.statuses());
    w.clock.pass(30 * MIN);
    w.settle().await;
    assert_eq!(w.statuses(), vec![(OrderStatus::Expired, false); 3]);
    w.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_backward_delays_expiry_and_never_panics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let w = world(dir.path()).await;
    w.clock.pass(15 * MIN);
    // Back 10 minutes, then back an hour: the wall clock is now before the orders
    // were created. Nothing fires, nothing panics.
    w.clock.jump(-10 * MIN);
    w.settle().await;
    w.clock.jump(-60 * MIN);
    w.settle().await;
    assert_eq!(w.expiring(), 0);
    // 45 minutes really passed, but the wall clock is 70 minutes behind: a deadline
    // fires late rather than early.
    w.clock.pass(30 * MIN);
    w.settle().await;
    assert_eq!(w.expiring(), 0, "{:?}", w.statuses());
    // Forward 10 again (undoing part of the step back), then time runs on: every
    // order expires, none before its time had really come.
    w.clock.jump(10 * MIN);
    w.settle().await;
    assert_eq!(w.expiring(), 0, "{:?}", w.statuses());
    w.clock.pass(90 * MIN);
    w.settle().await;
    assert_eq!(w.statuses(), vec![(OrderStatus::Expired, false); 3]);
    w.engine.stop().await;
}

/// Each scan of the deadline index starts at the earliest deadline the previous one
/// found, skipping the tombstones of handled ones. A deadline set behind that point —
/// here after the wall clock stepped back — is still fired by the periodic scan from
/// the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_set_behind_the_scan_position_still_fires() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut w = world(dir.path()).await;
    // Scanned with 35 minutes on the clock: two orders expired, the scans now start
    // at 35 minutes or later.
    w.clock.pass(35 * MIN);
    w.settle().await;
    assert_eq!(w.expiring(), 2, "{:?}", w.statuses());
    // Back 30 minutes, and a new order due 10 minutes later: 25 minutes before where
    // the scans start.
    w.clock.jump(-30 * MIN);
    let mut o = sim_order(3, "u", true, w.clock.now(), 10 * MIN);
    o.timers.poll = None;
    let no = o.order_no.clone();
    crate::commands::create_order(&w.engine.store, o)
        .await
        .expect("created");
    w.engine
        .ask(&no, OrderCommand::OpenTrade)
        .await
        .expect("opened");
    w.orders.push(no);
    w.clock.pass(11 * MIN);
    // A scan from the head comes at least once in 50 ticks (5 ms each).
    for _ in 0..4 {
        w.settle().await;
    }
    let statuses = w.statuses();
    assert_eq!(statuses[3], (OrderStatus::Expired, false), "{statuses:?}");
    w.engine.stop().await;
}
