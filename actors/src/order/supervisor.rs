//! The order supervisor: the only map from order number to live order actor.
//!
//! It activates an actor on demand (when a request, callback or deadline concerns the
//! order), passivates it by handshake when it has been idle, restarts it from storage
//! when it panics — up to the restart budget — and then quarantines the order instead
//! of letting it loop. Why on demand: an idle actor costs kilobytes, and a million
//! pending orders must not cost gigabytes; every order stays addressable anyway.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::order::Deps;
use crate::order::actor::{OrderActor, OrderArgs, OrderCommand, OrderError, OrderMsg, OrderReply};
use crate::tables::ORDERS;

pub enum SupervisorMsg {
    /// Deliver `command` to the order's actor, activating it if needed.
    Route {
        order_no: String,
        command: OrderCommand,
        reply: Option<OrderReply>,
    },
    /// An idle actor asks to stop; `seen` is how many routed messages it has received.
    Passivate {
        order_no: String,
        seen: u64,
    },
    Stats(RpcReplyPort<SupervisorStats>),
    #[cfg(feature = "fault-injection")]
    InjectPanic(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SupervisorStats {
    pub live_actors: usize,
    pub activations: u64,
    pub passivations: u64,
    pub restarts: u64,
    pub quarantined: Vec<String>,
}

struct Entry {
    actor: ActorRef<OrderMsg>,
    routed: u64,
}

pub struct OrderSupervisor;

pub struct SupervisorState {
    deps: Arc<Deps>,
    live: HashMap<String, Entry>,
    by_id: HashMap<ActorId, String>,
    restarts: HashMap<String, u32>,
    quarantined: HashSet<String>,
    stats: SupervisorStats,
}

impl Actor for OrderSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<Deps>;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        deps: Arc<Deps>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            deps,
            live: HashMap::new(),
            by_id: HashMap::new(),
            restarts: HashMap::new(),
            quarantined: HashSet::new(),
            stats: SupervisorStats::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Route {
                order_no,
                command,
                reply,
            } => route(&myself, st, order_no, command, reply).await,
            SupervisorMsg::Passivate { order_no, seen } => {
                // Only when nothing was routed to it since it became idle: then its
                // mailbox holds nothing but the Stop we send, and a later message
                // activates a fresh actor from storage.
                if st.live.get(&order_no).is_some_and(|e| e.routed == seen)
                    && let Some(entry) = st.live.remove(&order_no)
                {
                    st.by_id.remove(&entry.actor.get_id());
                    let _ = entry.actor.cast(OrderMsg::Stop);
                    st.restarts.remove(&order_no);
                    st.stats.passivations += 1;
                }
            }
            SupervisorMsg::Stats(reply) => {
                let mut stats = st.stats.clone();
                stats.live_actors = st.live.len();
                stats.quarantined = st.quarantined.iter().cloned().collect();
                stats.quarantined.sort();
                let _ = reply.send(stats);
            }
            #[cfg(feature = "fault-injection")]
            SupervisorMsg::InjectPanic(order_no) => {
                // A passivated (or never activated) order is woken up to panic.
                if !st.live.contains_key(&order_no)
                    && !st.quarantined.contains(&order_no)
                    && let Err(e) = activate(&myself, st, &order_no).await
                {
                    tracing::warn!(order_no = %order_no, error = %e, "no actor to panic");
                }
                if let Some(e) = st.live.get(&order_no) {
                    let _ = e.actor.cast(OrderMsg::Panic);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(order_no) = st.by_id.remove(&cell.get_id()) {
                    st.live.remove(&order_no);
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(order_no) = st.by_id.remove(&cell.get_id()) else {
                    return Ok(());
                };
                st.live.remove(&order_no);
                let count = st.restarts.entry(order_no.clone()).or_insert(0);
                *count += 1;
                if *count > st.deps.restart_budget {
                    tracing::error!(order_no = %order_no, error = %err, restarts = *count - 1,
                        "order actor keeps failing; order quarantined");
                    st.quarantined.insert(order_no);
                } else {
                    tracing::warn!(order_no = %order_no, error = %err, restart = *count,
                        "order actor failed; restarting it from storage");
                    st.stats.restarts += 1;
                    // Restart at once so its in-flight work resumes from storage.
                    if let Err(e) = activate(&myself, st, &order_no).await {
                        tracing::error!(order_no = %order_no, error = %e, "restart failed");
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

async fn activate(
    myself: &ActorRef<SupervisorMsg>,
    st: &mut SupervisorState,
    order_no: &str,
) -> Result<(), OrderError> {
    let view = st
        .deps
        .store
        .read()
        .map_err(|e| OrderError::Storage(e.to_string()))?;
    let order = view
        .get(&ORDERS, &order_no.to_string())
        .map_err(|e| OrderError::Storage(e.to_string()))?
        .ok_or(OrderError::NotFound)?;
    drop(view);
    let args = OrderArgs {
        order,
        deps: st.deps.clone(),
        supervisor: myself.clone(),
    };
    let (actor, _) = Actor::spawn_linked(None, OrderActor, args, myself.get_cell())
        .await
        .map_err(|e| OrderError::Storage(format!("could not start order actor: {e}")))?;
    st.by_id.insert(actor.get_id(), order_no.to_string());
    st.live
        .insert(order_no.to_string(), Entry { actor, routed: 0 });
    st.stats.activations += 1;
    Ok(())
}

async fn route(
    myself: &ActorRef<SupervisorMsg>,
    st: &mut SupervisorState,
    order_no: String,
    command: OrderCommand,
    reply: Option<OrderReply>,
) {
    if st.quarantined.contains(&order_no) {
        if let Some(r) = reply {
            let _ = r.send(Err(OrderError::Quarantined));
        }
        return;
    }
    if !st.live.contains_key(&order_no)
        && let Err(e) = activate(myself, st, &order_no).await
    {
        if let Some(r) = reply {
            let _ = r.send(Err(e));
        }
        return;
    }
    let Some(entry) = st.live.get_mut(&order_no) else {
        return;
    };
    entry.routed += 1;
    if let Err(err) = entry.actor.cast(OrderMsg::Command { command, reply }) {
        // The actor stopped (storage error) before its termination reached us: drop
        // the stale entry and hand the message to a fresh actor.
        st.by_id.remove(&entry.actor.get_id());
        st.live.remove(&order_no);
        let msg = match err {
            ractor::MessagingErr::SendErr(m) => Some(m),
            _ => None,
        };
        if let Some(OrderMsg::Command { command, reply }) = msg {
            if let Err(e) = activate(myself, st, &order_no).await {
                if let Some(r) = reply {
                    let _ = r.send(Err(e));
                }
                return;
            }
            if let Some(entry) = st.live.get_mut(&order_no) {
                entry.routed += 1;
                let _ = entry.actor.cast(OrderMsg::Command { command, reply });
            }
        }
    }
}
