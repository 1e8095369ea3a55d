//! The scheduler: one timer service over the persisted deadline index.
//!
//! Deadlines are written with the transitions that set them (the `deadlines` table,
//! keyed by due time), so nothing here needs to survive a restart: on start the
//! scheduler simply reads the index from its head. It holds in memory only the
//! deadlines it has fired and not yet seen removed — never the index itself — and
//! fires overdue ones at a bounded rate, so a backlog after downtime drains without
//! swamping the providers.
//!
//! A fired deadline stays in the index until the order's transition clears it. If
//! that never happens (the actor crashed), it is fired again after `refire_after`.

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

pub struct SchedulerState {
    args: Arc<SchedulerArgs>,
    /// (order number, kind, generation) → when it was fired.
    fired: HashMap<(String, u8, u64), Timestamp>,
}

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
            fired: HashMap::new(),
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
    let now = args.clock.now();
    let refire_ms = args.config.refire_after.as_millis() as i64;
    let end = (now.ms() + 1).to_bytes();
    let view = args.store.read()?;
    // Read past the ones fired and still waiting, so they cannot starve the rest.
    let limit = args.config.max_fire_per_tick + st.fired.len();
    let due = view.scan_until(&DEADLINES, &end, limit)?;
    drop(view);
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
