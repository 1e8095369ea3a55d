//! The tables payd keeps, with their key layouts. One fjall keyspace each.

use payd_storage::{Record, Table};
use serde::{Deserialize, Serialize};

use crate::model::{
    Entitlements, HistoryEntry, NotificationRecord, Order, Package, TimelineEntry, Timestamp,
    WebhookEvent,
};

/// A value-less index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker;
impl Record for Marker {
    const SCHEMA: u8 = 1;
}

/// An entry of the deadline index; the key says when, which order and which timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineRef {
    pub generation: u64,
}
impl Record for DeadlineRef {
    const SCHEMA: u8 = 1;
}

/// A remembered response for an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub request_hash: Vec<u8>,
    pub created_at: Timestamp,
    pub state: IdempotencyState,
}
impl Record for IdempotencyRecord {
    const SCHEMA: u8 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdempotencyState {
    InFlight,
    Done { status: u16, body: String },
}

/// package id → package.
pub const PACKAGES: Table<String, Package> = Table::new("packages");
/// order number → order.
pub const ORDERS: Table<String, Order> = Table::new("orders");
/// (user id, created at ms, order number): a user's orders in time order.
pub const USER_ORDERS: Table<(String, i64, String), Marker> = Table::new("user_orders");
/// (order number, version): the order's timeline.
pub const TIMELINE: Table<(String, u64), TimelineEntry> = Table::new("timeline");
/// (due at ms, order number, timer kind): the scheduler's index, earliest first.
pub const DEADLINES: Table<(i64, String, u8), DeadlineRef> = Table::new("deadlines");
/// user id → entitlements.
pub const ENTITLEMENTS: Table<String, Entitlements> = Table::new("entitlements");
/// (user id, sequence): the user's entitlement history.
pub const HISTORY: Table<(String, u64), HistoryEntry> = Table::new("history");
/// (user id, key) → remembered response.
pub const IDEMPOTENCY: Table<(String, String), IdempotencyRecord> = Table::new("idempotency");

/// (provider, event id) → the verified callback, its raw form and what it did.
pub const NOTIFICATIONS: Table<(String, String), NotificationRecord> = Table::new("notifications");

/// (at ms, sequence within the ms): the admin audit log, in time order.
pub const AUDIT: Table<(i64, u64), crate::model::AuditEntry> = Table::new("audit");

/// An outbox entry still to deliver: which order it belongs to (events of one order
/// go out one at a time, in sequence) and when its next attempt is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWebhook {
    pub order_no: String,
    pub next_attempt_at: Timestamp,
}
impl Record for PendingWebhook {
    const SCHEMA: u8 = 1;
}

/// The next outbox sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookCursor {
    pub next_seq: u64,
}
impl Record for WebhookCursor {
    const SCHEMA: u8 = 1;
}

/// outbox sequence → webhook event (with its delivery state), oldest first.
pub const WEBHOOK_EVENTS: Table<u64, WebhookEvent> = Table::new("webhook_events");
/// outbox sequence → events not yet delivered nor dead: the deliverer's work list.
pub const WEBHOOK_PENDING: Table<u64, PendingWebhook> = Table::new("webhook_pending");
/// [`WEBHOOK_CURSOR_KEY`] → the next outbox sequence number (fjall refuses empty keys,
/// so the single entry has a name).
pub const WEBHOOK_CURSOR: Table<String, WebhookCursor> = Table::new("webhook_cursor");
pub const WEBHOOK_CURSOR_KEY: &str = "next";

/// order number → how an upgrade order was priced (written with the order).
pub const UPGRADES: Table<String, crate::model::UpgradePricing> = Table::new("upgrades");

/// (provider, statement day `YYYY-MM-DD`) → the reconciliation report of that day.
pub const RECONCILIATIONS: Table<(String, String), crate::reconcile::ReconReport> =
    Table::new("reconciliations");

/// Every table of the domain, for `StoreOptions::tables`.
pub const DOMAIN_TABLES: [&str; 15] = [
    "packages",
    "orders",
    "user_orders",
    "timeline",
    "deadlines",
    "entitlements",
    "history",
    "idempotency",
    "notifications",
    "audit",
    "upgrades",
    "webhook_events",
    "webhook_pending",
    "webhook_cursor",
    "reconciliations",
];
