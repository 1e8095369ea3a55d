//! The hub: who is watching live, and what to tell them.
//!
//! Each live connection (a WebSocket in the HTTP layer — the hub never sees one)
//! registers a bounded `tokio::sync::mpsc` sender under its user. The order actors
//! tell the hub about durable transitions through [`HubObserver`], which only casts a
//! message and returns, so a payment never waits for a browser. The hub fans each
//! event out to the owner's connections with `try_send`: a connection whose buffer
//! is full is a client that stopped reading, and it is dropped (its `kick` fires)
//! rather than buffered without bound or waited for.
//!
//! Events are keyed by the order's owner, so a user only ever hears about their own
//! orders.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{Notify, mpsc};

use crate::model::{Order, OrderStatus, Timestamp};
use crate::order::OrderObserver;

/// What a live client is told. The HTTP layer turns it into its JSON wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// The order's status changed (or, answering a subscribe, what it is now).
    OrderStatus {
        order_no: String,
        status: OrderStatus,
        at: Timestamp,
    },
    /// The order was paid.
    PaymentSuccess {
        order_no: String,
        amount_minor: i64,
        at: Timestamp,
    },
}

impl LiveEvent {
    /// The events a durable transition from `before` to `after` produces, in the
    /// order a client should see them.
    pub fn from_transition(before: &Order, after: &Order) -> Vec<LiveEvent> {
        let mut events = Vec::new();
        if before.status == after.status {
            return events;
        }
        events.push(LiveEvent::OrderStatus {
            order_no: after.order_no.clone(),
            status: after.status,
            at: after.updated_at,
        });
        if after.status == OrderStatus::Paid {
            events.push(LiveEvent::PaymentSuccess {
                order_no: after.order_no.clone(),
                amount_minor: after.amount_minor,
                at: after.paid_at.unwrap_or(after.updated_at),
            });
        }
        events
    }
}

/// Limits of the hub; every one bounds memory a client could otherwise grow.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Live connections one user may hold; the oldest is dropped beyond this.
    pub max_connections_per_user: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_connections_per_user: 16,
        }
    }
}

/// One live connection as the hub holds it.
pub struct Connection {
    pub id: u64,
    pub user_id: String,
    /// Bounded: when it is full the connection is dropped.
    pub sender: mpsc::Sender<LiveEvent>,
    /// Notified when the hub drops the connection (buffer full, too many
    /// connections); the connection's task then closes the socket.
    pub kick: Arc<Notify>,
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh connection id, unique within the process.
pub fn connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// Counters for tests and the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStats {
    pub users: usize,
    pub connections: usize,
    pub delivered: u64,
    /// Connections dropped because they stopped reading.
    pub dropped_slow: u64,
}

pub enum HubMsg {
    Register(Connection),
    Unregister {
        user_id: String,
        id: u64,
    },
    /// Events for the connections of `user_id`.
    Publish {
        user_id: String,
        events: Vec<LiveEvent>,
    },
    Stats(RpcReplyPort<HubStats>),
}

pub struct Hub;

pub struct HubState {
    config: HubConfig,
    users: HashMap<String, Vec<Connection>>,
    stats: HubStats,
}

impl Actor for Hub {
    type Msg = HubMsg;
    type State = HubState;
    type Arguments = HubConfig;

    async fn pre_start(
        &self,
        _myself: ActorRef<HubMsg>,
        config: HubConfig,
    ) -> Result<HubState, ActorProcessingErr> {
        Ok(HubState {
            config,
            users: HashMap::new(),
            stats: HubStats::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HubMsg>,
        msg: HubMsg,
        st: &mut HubState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HubMsg::Register(conn) => st.register(conn),
            HubMsg::Unregister { user_id, id } => st.unregister(&user_id, id),
            HubMsg::Publish { user_id, events } => st.publish(&user_id, &events),
            HubMsg::Stats(reply) => {
                let mut stats = st.stats.clone();
                stats.users = st.users.len();
                stats.connections = st.users.values().map(Vec::len).sum();
                let _ = reply.send(stats);
            }
        }
        Ok(())
    }
}

impl HubState {
    fn register(&mut self, conn: Connection) {
        let conns = self.users.entry(conn.user_id.clone()).or_default();
        conns.push(conn);
        while conns.len() > self.config.max_connections_per_user {
            let oldest = conns.remove(0);
            tracing::info!(user_id = %oldest.user_id, connection = oldest.id,
                "live connection dropped: too many for one user");
            oldest.kick.notify_one();
        }
    }

    fn unregister(&mut self, user_id: &str, id: u64) {
        if let Some(conns) = self.users.get_mut(user_id) {
            conns.retain(|c| c.id != id);
            if conns.is_empty() {
                self.users.remove(user_id);
            }
        }
    }

    fn publish(&mut self, user_id: &str, events: &[LiveEvent]) {
        let Some(conns) = self.users.get_mut(user_id) else {
            return;
        };
        let mut delivered = 0;
        let mut dropped = 0;
        conns.retain(|conn| {
            for event in events {
                match conn.sender.try_send(event.clone()) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(user_id = %conn.user_id, connection = conn.id,
                            "live connection dropped: it stopped reading");
                        conn.kick.notify_one();
                        dropped += 1;
                        return false;
                    }
                    // The connection's task is gone; its unregister is on the way.
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        if conns.is_empty() {
            self.users.remove(user_id);
        }
        self.stats.delivered += delivered;
        self.stats.dropped_slow += dropped;
    }
}

/// Tells the hub about every durable status change. Never blocks: a cast into the
/// hub's mailbox is all it does.
pub struct HubObserver {
    hub: ActorRef<HubMsg>,
}

impl HubObserver {
    pub fn new(hub: ActorRef<HubMsg>) -> Self {
        HubObserver { hub }
    }
}

impl OrderObserver for HubObserver {
    fn transition(&self, before: &Order, after: &Order, _event: &str) {
        let events = LiveEvent::from_transition(before, after);
        if events.is_empty() {
            return;
        }
        let msg = HubMsg::Publish {
            user_id: after.user_id.clone(),
            events,
        };
        if self.hub.cast(msg).is_err() {
            tracing::debug!(order_no = %after.order_no, "hub stopped; live update not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(user: &str, capacity: usize) -> (Connection, mpsc::Receiver<LiveEvent>) {
        let (sender, rx) = mpsc::channel(capacity);
        let c = Connection {
            id: connection_id(),
            user_id: user.into(),
            sender,
            kick: Arc::new(Notify::new()),
        };
        (c, rx)
    }

    fn event(no: &str) -> LiveEvent {
        LiveEvent::OrderStatus {
            order_no: no.into(),
            status: OrderStatus::Paid,
            at: Timestamp(1),
        }
    }

    fn state(max: usize) -> HubState {
        HubState {
            config: HubConfig {
                max_connections_per_user: max,
            },
            users: HashMap::new(),
            stats: HubStats::default(),
        }
    }

    #[tokio::test]
    async fn events_reach_only_their_owner() {
        let mut st = state(4);
        let (a, mut a_rx) = conn("alice", 4);
        let (b, mut b_rx) = conn("bob", 4);
        st.register(a);
        st.register(b);
        st.publish("alice", &[event("A1")]);
        assert_eq!(a_rx.try_recv().ok(), Some(event("A1")));
        assert!(b_rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_buffer_drops_the_connection_not_the_event_for_others() {
        let mut st = state(4);
        let (slow, _slow_rx) = conn("alice", 1);
        let slow_kick = slow.kick.clone();
        let (fast, mut fast_rx) = conn("alice", 8);
        st.register(slow);
        st.register(fast);
        st.publish("alice", &[event("A1"), event("A2")]);
        assert_eq!(st.stats.dropped_slow, 1);
        assert_eq!(st.users["alice"].len(), 1);
        // The kick was stored as a permit: the connection's task sees it whenever
        // it next looks.
        tokio::time::timeout(std::time::Duration::from_secs(1), slow_kick.notified())
            .await
            .expect("kicked");
        assert_eq!(fast_rx.try_recv().ok(), Some(event("A1")));
        assert_eq!(fast_rx.try_recv().ok(), Some(event("A2")));
    }

    #[tokio::test]
    async fn too_many_connections_drop_the_oldest() {
        let mut st = state(2);
        let (c1, _r1) = conn("u", 1);
        let k1 = c1.kick.clone();
        let (c2, _r2) = conn("u", 1);
        let (c3, _r3) = conn("u", 1);
        st.register(c1);
        st.register(c2);
        st.register(c3);
        assert_eq!(st.users["u"].len(), 2);
        tokio::time::timeout(std::time::Duration::from_secs(1), k1.notified())
            .await
            .expect("oldest kicked");
    }
}
