//! Data format migrations, run by the store when it opens an older database (see
//! [`payd_storage::Migration`]).
//!
//! Format 2 (Order schema 2): orders record `settled_at`, when the order first
//! left `pending` — paid, cancelled, expired or failed. Before it, the moment an
//! order expired or failed was only in its timeline (`updated_at` moves on with
//! every later change, refunds included). The migration takes it from the
//! timeline, exactly; an order without a timeline entry for it falls back to
//! `paid_at`, `cancelled_at`, then `updated_at`.

use payd_storage::{Migration, StorageError, WriteCtx, decode_record, encode_record};
use serde::{Deserialize, Serialize};

use crate::model::{
    Anomaly, CloseStep, Currency, Order, OrderStatus, PackageSnapshot, Payment, PaymentMethod,
    ProviderKind, RefundEntry, TimelineEntry, Timers, Timestamp,
};
use crate::tables::{ORDERS, TIMELINE};

/// The data format this build writes.
pub const FORMAT: u32 = 2;

/// Every step from format 1 to [`FORMAT`].
pub fn migrations() -> Vec<Migration> {
    vec![Migration {
        to: 2,
        what: "orders: schema 2 records settled_at",
        run: orders_settled_at,
    }]
}

/// An order as format 1 stored it (schema 1): the exact field order postcard wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderV1 {
    pub order_no: String,
    pub user_id: String,
    pub package_id: String,
    pub package: PackageSnapshot,
    pub amount_minor: i64,
    pub currency: Currency,
    pub payment_method: PaymentMethod,
    pub provider: ProviderKind,
    pub status: OrderStatus,
    pub closing: Option<CloseStep>,
    pub trade_opened: bool,
    pub qr_code_url: Option<String>,
    pub qr_code_expire_at: Option<Timestamp>,
    pub payment_url: Option<String>,
    pub provider_trade_ref: Option<String>,
    pub client_ip: Option<String>,
    pub expire_at: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub paid_at: Option<Timestamp>,
    pub cancelled_at: Option<Timestamp>,
    pub provider_transaction_id: Option<String>,
    pub refunded_amount_minor: i64,
    pub failure_reason: Option<String>,
    pub late_payment: bool,
    pub granted: bool,
    pub force_completed: bool,
    pub source_ip: Option<String>,
    pub refunds: Vec<RefundEntry>,
    pub payments: Vec<Payment>,
    pub anomalies: Vec<Anomaly>,
    pub timers: Timers,
    pub timer_generation: u64,
    pub poll_count: u32,
    pub retry_count: u32,
    pub version: u64,
}

impl payd_storage::Record for OrderV1 {
    const SCHEMA: u8 = 1;
}

impl OrderV1 {
    /// The same order in schema 2.
    pub fn upgrade(self, settled_at: Option<Timestamp>) -> Order {
        Order {
            order_no: self.order_no,
            user_id: self.user_id,
            package_id: self.package_id,
            package: self.package,
            amount_minor: self.amount_minor,
            currency: self.currency,
            payment_method: self.payment_method,
            provider: self.provider,
            status: self.status,
            closing: self.closing,
            trade_opened: self.trade_opened,
            qr_code_url: self.qr_code_url,
            qr_code_expire_at: self.qr_code_expire_at,
            payment_url: self.payment_url,
            provider_trade_ref: self.provider_trade_ref,
            client_ip: self.client_ip,
            expire_at: self.expire_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            paid_at: self.paid_at,
            cancelled_at: self.cancelled_at,
            provider_transaction_id: self.provider_transaction_id,
            refunded_amount_minor: self.refunded_amount_minor,
            failure_reason: self.failure_reason,
            late_payment: self.late_payment,
            granted: self.granted,
            force_completed: self.force_completed,
            source_ip: self.source_ip,
            refunds: self.refunds,
            payments: self.payments,
            anomalies: self.anomalies,
            timers: self.timers,
            timer_generation: self.timer_generation,
            poll_count: self.poll_count,
            retry_count: self.retry_count,
            version: self.version,
            settled_at,
        }
    }
}

fn orders_settled_at(ctx: &mut WriteCtx<'_>) -> Result<(), StorageError> {
    for (key, value) in ctx.raw_entries(ORDERS.name())? {
        if value.first() != Some(&<OrderV1 as payd_storage::Record>::SCHEMA) {
            continue;
        }
        let old: OrderV1 = decode_record(ORDERS.name(), &value)?;
        let settled_at = if old.status == OrderStatus::Pending {
            None
        } else {
            let timeline: Vec<((String, u64), TimelineEntry)> =
                ctx.scan_prefix(&TIMELINE, &old.order_no, usize::MAX)?;
            timeline
                .iter()
                .find(|(_, e)| e.from == OrderStatus::Pending && e.to != OrderStatus::Pending)
                .map(|(_, e)| e.at)
                .or(old.paid_at)
                .or(old.cancelled_at)
                .or(Some(old.updated_at))
        };
        ctx.put_raw(ORDERS.name(), key, encode_record(&old.upgrade(settled_at)));
    }
    Ok(())
}
