//! The scheduler: one timer service over the persisted deadline index.
//!
//! Deadlines are written with the transitions that set them (the `deadlines` table,
//! keyed by due time), so nothing here needs to survive a restart: on start the
//! scheduler simply reads the index from its head (and then from the earliest
//! deadline still there). It holds in memory only the
//! deadlines it has fired and not yet seen removed — never the index itself — and
//! fires overdue ones at a bounded rate, so a backlog after downtime drains without
//! swamping the providers.
//!
//! A fired deadline stays in the index until the order's transition clears it. If
//! that never happens (the actor crashed), it is fired again after `refire_after`.
//!
//! Deadlines are in wall time, but they fire by [`FiringClock`]: the wall clock, held
//! back to what the monotonic clock has really run. A wall clock stepped forward
//! (an operator, NTP after a long drift) therefore never expires an order early; a
//! step backward delays deadlines by the step, which errs on the safe side.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use payd_storage::{Key, Store};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::clock::SharedClock;
use crate::model::{TimerKind, Timestamp};
use crate::order::actor::OrderCommand;
use crate::order::machine::Event;
use crate::order::supervisor::SupervisorMsg;
use crate::tables::DEADLINES;

#[derive(Clone)]
pub struct SchedulerConfig {
    /// How often the head of the index is looked at.
    pub tick: Duration,
    /// At most this many deadlines are fired per tick.
    pub max_fire_per_tick: usize,
    /// A deadline still in the index this long after it was fired is fired again.
    pub refire_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            tick: Duration::from_millis(100),
            max_fire_per_tick: 200,
            refire_after: Duration::from_secs(30),
        }
    }
}

pub struct SchedulerArgs {
    pub store: Store,
    pub clock: SharedClock,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub config: SchedulerConfig,
}

pub enum SchedulerMsg {
    Tick,
}

pub struct Scheduler;

/// The time deadlines fire by. It follows the wall clock whenever the wall clock is
/// no further ahead than the monotonic clock has run since the last reading, and
/// otherwise (a forward step) keeps counting monotonic time from the last trusted
/// reading, so a jump ahead of the wall clock is never believed. A backward step is
/// followed at once (deadlines then fire late by the step, never early). After a
/// forward step, deadlines set later fire late by the step until payd restarts.
#[derive(Debug, Default, Clone, Copy)]
pub struct FiringClock {
    /// The last trusted reading: (wall time, monotonic ms) taken together.
    anchor: Option<(Timestamp, i64)>,
}

impl FiringClock {
    /// The firing time for a reading of both clocks. Returns it, and how far the wall
    /// clock is ahead of it (0 unless it was stepped forward).
    pub fn now(&mut self, wall: Timestamp, monotonic_ms: i64) -> (Timestamp, i64) {
        let Some((anchor_wall, anchor_mono)) = self.anchor else {
            self.anchor = Some((wall, monotonic_ms));
            return (wall, 0);
        };
        let ran = anchor_wall.plus_ms(monotonic_ms.saturating_sub(anchor_mono).max(0));
        if wall <= ran {
            self.anchor = Some((wall, monotonic_ms));
            (wall, 0)
        } else {
            (ran, wall.ms().saturating_sub(ran.ms()))
        }
    }
}

pub struct SchedulerState {
    args: Arc<SchedulerArgs>,
    firing: FiringClock,
    /// The forward step last warned about, so a step is logged once, not every tick.
    warned_ahead_ms: i64,
    /// (order number, kind, generation) → when it was fired.
    fired: HashMap<(String, u8, u64), Timestamp>,
    /// Where the next scan starts: the key of the earliest deadline the last scan
    /// found (or the time it scanned to, when nothing was due). Everything before it
    /// had been handled and deleted, and a deadline is set in the future, so scanning
    /// from here skips the tombstones of handled deadlines (an expiry storm leaves a
    /// hundred thousand of them, all due in the same millisecond, in the memtable,
    /// which a scan from the head walks on every tick). `None`: from the head.
    resume_at: Option<Vec<u8>>,
    /// Ticks since the last scan from the head. One in [`FULL_SCAN_EVERY`] scans from
    /// the head anyway, so a deadline set behind the resume point (a wall clock
    /// stepped backward) fires at most that many ticks late.
    ticks_since_full: u32,
}

/// One scan in this many ticks starts at the head of the deadline index.
const FULL_SCAN_EVERY: u32 = 50;

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        let _ = myself.cast(SchedulerMsg::Tick);
        Ok(SchedulerState {
            args: Arc::new(args),
            firing: FiringClock::default(),
            warned_ahead_ms: 0,
            fired: HashMap::new(),
            resume_at: None,
            ticks_since_full: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        st: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Tick => {
                if let Err(e) = fire_due(st) {
                    tracing::warn!(error = %e, "scheduler could not read the deadline index");
                }
                myself.send_after(st.args.config.tick, || SchedulerMsg::Tick);
            }
        }
        Ok(())
    }
}

fn fire_due(st: &mut SchedulerState) -> Result<(), payd_storage::StorageError> {
    let args = st.args.clone();
    let (now, ahead_ms) = st.firing.now(args.clock.now(), args.clock.monotonic_ms());
    if ahead_ms > 1_000 && (ahead_ms - st.warned_ahead_ms).abs() > 1_000 {
        tracing::warn!(
            ahead_ms,
            "the wall clock jumped ahead of the time that really passed; deadlines fire by the time that passed"
        );
        st.warned_ahead_ms = ahead_ms;
    }
    let refire_ms = args.config.refire_after.as_millis() as i64;
    let end = (now.ms() + 1).to_bytes();
    let from = match st.resume_at.take() {
        Some(key) if st.ticks_since_full < FULL_SCAN_EVERY => {
            st.ticks_since_full += 1;
            // Never past the end (the wall clock may have stepped back since).
            Some(if key.as_slice() < end.as_slice() {
                key
            } else {
                now.ms().to_bytes()
            })
        }
        _ => {
            st.ticks_since_full = 0;
            None
        }
    };
    let view = args.store.read()?;
    // Read past the ones fired and still waiting, so they cannot starve the rest.
    let limit = args.config.max_fire_per_tick + st.fired.len();
    let due = view.scan_until(&DEADLINES, from.as_deref(), &end, limit)?;
    drop(view);
    // Resume at the earliest deadline still there; nothing due: at now, since
    // whatever is set from now on is due later.
    st.resume_at = Some(
        due.first()
            .map_or_else(|| now.ms().to_bytes(), |(key, _)| key.to_bytes()),
    );
    let mut fired_now = 0;
    let mut still_due = std::collections::HashSet::new();
    for ((_, order_no, kind), dref) in due {
        let key = (order_no, kind, dref.generation);
        still_due.insert(key.clone());
        if st
            .fired
            .get(&key)
            .is_some_and(|at| at.plus_ms(refire_ms) > now)
        {
            continue;
        }
        if fired_now >= args.config.max_fire_per_tick {
            continue;
        }
        let Some(kind_enum) = TimerKind::from_u8(kind) else {
            tracing::error!(order_no = %key.0, kind, "unknown timer kind in the deadline index");
            continue;
        };
        tracing::debug!(order_no = %key.0, kind = ?kind_enum, "deadline due");
        let sent = args.supervisor.cast(SupervisorMsg::Route {
            order_no: key.0.clone(),
            command: OrderCommand::Event(Event::Timer {
                kind: kind_enum,
                generation: dref.generation,
            }),
            reply: None,
        });
        if sent.is_ok() {
            st.fired.insert(key, now);
            fired_now += 1;
        }
    }
    // Forget what has left the index (handled) — or what we could not see this time.
    st.fired.retain(|k, _| still_due.contains(k));
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::FiringClock;
    use crate::model::Timestamp;

    proptest! {
        /// Whatever the wall clock does (steps of up to ±2 hours, among readings that
        /// advance by up to 10 minutes), the firing clock never runs ahead of the wall
        /// clock nor of the time that really passed since the previous reading.
        #[test]
        fn the_firing_clock_never_runs_ahead_of_real_time(
            moves in proptest::collection::vec((0i64..600_000, -7_200_000i64..7_200_000, any::<bool>()), 1..60)
        ) {
            let mut clock = FiringClock::default();
            let (mut wall, mut mono) = (1_763_856_000_000i64, 0i64);
            let (mut last, _) = clock.now(Timestamp(wall), mono);
            for (passed, step, jumps) in moves {
                wall += passed + if jumps { step } else { 0 };
                mono += passed;
                let (now, ahead) = clock.now(Timestamp(wall), mono);
                prop_assert!(now.ms() <= wall);
                prop_assert!(now.ms() <= last.ms() + passed, "ran ahead: {} > {} + {passed}", now.ms(), last.ms());
                prop_assert_eq!(ahead, wall - now.ms());
                last = now;
            }
        }
    }

    #[test]
    fn extreme_readings_do_not_panic() {
        let mut clock = FiringClock::default();
        for (wall, mono) in [(0, 0), (i64::MAX, i64::MIN), (i64::MIN, i64::MAX), (-5, 3)] {
            let _ = clock.now(Timestamp(wall), mono);
        }
    }
}
