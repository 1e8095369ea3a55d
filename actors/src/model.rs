//! The domain's records: packages, orders, entitlements, and the newtypes that keep raw
//! strings and floats out of the core.
//!
//! These are persisted with postcard, which encodes an enum variant by its position:
//! variants are append-only (never reorder, never reuse), and a changed record shape
//! bumps its `Record::SCHEMA`.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. payd keeps UTC internally.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn plus_ms(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
    pub fn ms(self) -> i64 {
        self.0
    }
}

/// An ISO 4217 currency code (three upper-case letters), checked at the edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Currency(String);

impl Currency {
    pub fn parse(s: &str) -> Option<Currency> {
        (s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())).then(|| Currency(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    User = 0,
    Admin = 1,
    Provider = 2,
    System = 3,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::User => "user",
            Actor::Admin => "admin",
            Actor::Provider => "provider",
            Actor::System => "system",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PackageKind {
    Membership = 0,
    Points = 1,
}

impl PackageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageKind::Membership => "membership",
            PackageKind::Points => "points",
        }
    }
}

/// A product the host application sells. Amounts in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub id: String,
    pub kind: PackageKind,
    pub name: String,
    pub description: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub membership_type: Option<String>,
    pub validity_days: Option<u32>,
    pub queries_count: Option<u32>,
    pub points: Option<u64>,
    pub bonus_points: Option<u64>,
    pub is_active: bool,
    pub sort_order: i32,
}

impl payd_storage::Record for Package {
    const SCHEMA: u8 = 1;
}

/// The payment methods a buyer can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PaymentMethod {
    WechatNative = 0,
    AlipayQr = 1,
    AlipayPage = 2,
    StripeCheckout = 3,
    Mock = 4,
}

impl PaymentMethod {
    pub const ALL: [PaymentMethod; 5] = [
        PaymentMethod::WechatNative,
        PaymentMethod::AlipayQr,
        PaymentMethod::AlipayPage,
        PaymentMethod::StripeCheckout,
        PaymentMethod::Mock,
    ];

    /// Canonical names and the aliases integrators use, case-insensitively.
    pub fn parse(s: &str) -> Option<PaymentMethod> {
        match s.to_ascii_lowercase().as_str() {
            "wechat_native" | "wechat" => Some(PaymentMethod::WechatNative),
            "alipay_qr" | "alipay" => Some(PaymentMethod::AlipayQr),
            "alipay_page" => Some(PaymentMethod::AlipayPage),
            "stripe_checkout" | "stripe" => Some(PaymentMethod::StripeCheckout),
            "mock" => Some(PaymentMethod::Mock),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::WechatNative => "wechat_native",
            PaymentMethod::AlipayQr => "alipay_qr",
            PaymentMethod::AlipayPage => "alipay_page",
            PaymentMethod::StripeCheckout => "stripe_checkout",
            PaymentMethod::Mock => "mock",
        }
    }

    /// QR methods show a code; the others redirect the buyer to a payment page.
    pub fn is_qr(self) -> bool {
        matches!(
            self,
            PaymentMethod::WechatNative | PaymentMethod::AlipayQr | PaymentMethod::Mock
        )
    }

    /// WeChat Pay and Alipay settle CNY only.
    pub fn supports_currency(self, currency: &Currency) -> bool {
        match self {
            PaymentMethod::WechatNative | PaymentMethod::AlipayQr | PaymentMethod::AlipayPage => {
                currency.as_str() == "CNY"
            }
            PaymentMethod::StripeCheckout | PaymentMethod::Mock => true,
        }
    }
}

/// The provider of record: where an order was created, queried and refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProviderKind {
    Mock = 0,
    WechatV3 = 1,
    WechatV2 = 2,
    Alipay = 3,
    Stripe = 4,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Mock => "mock",
            ProviderKind::WechatV3 => "wechat_v3",
            ProviderKind::WechatV2 => "wechat_v2",
            ProviderKind::Alipay => "alipay",
            ProviderKind::Stripe => "stripe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    Pending = 0,
    Paid = 1,
    PartiallyRefunded = 2,
    Refunded = 3,
    Cancelled = 4,
    Expired = 5,
    Failed = 6,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        OrderStatus::Pending,
        OrderStatus::Paid,
        OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded,
        OrderStatus::Cancelled,
        OrderStatus::Expired,
        OrderStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::PartiallyRefunded => "partially_refunded",
            OrderStatus::Refunded => "refunded",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
            OrderStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Nothing leaves these except through the late-payment rule.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderStatus::Cancelled
                | OrderStatus::Expired
                | OrderStatus::Failed
                | OrderStatus::Refunded
        )
    }

    /// States in which money has been taken and granted.
    pub fn is_paid(self) -> bool {
        matches!(
            self,
            OrderStatus::Paid | OrderStatus::PartiallyRefunded | OrderStatus::Refunded
        )
    }
}

/// What the buyer bought, frozen at purchase time: later package edits never change
/// an existing order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageSnapshot {
    pub name: String,
    pub kind: PackageKind,
    pub membership_type: Option<String>,
    pub validity_days: Option<u32>,
    pub queries_count: Option<u32>,
    pub points: Option<u64>,
    pub bonus_points: Option<u64>,
}

impl From<&Package> for PackageSnapshot {
    fn from(p: &Package) -> Self {
        PackageSnapshot {
            name: p.name.clone(),
            kind: p.kind,
            membership_type: p.membership_type.clone(),
            validity_days: p.validity_days,
            queries_count: p.queries_count,
            points: p.points,
            bonus_points: p.bonus_points,
        }
    }
}

/// How a confirmed payment was dealt with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentDisposition {
    /// Paid the order and granted it.
    Granted = 0,
    /// Amount or currency differed from the order: nothing granted.
    AmountMismatch = 1,
    /// A second transaction for an order already paid.
    DoublePayment = 2,
    /// Arrived after cancel/expiry under the refund policy: to be refunded.
    LateRefund = 3,
}

/// Where a payment confirmation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentSource {
    Callback = 0,
    Query = 1,
    Admin = 2,
    /// Found in the provider's daily statement by reconciliation.
    Reconciliation = 3,
}

/// A provider-confirmed payment, as recorded on the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub transaction_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub paid_at: Timestamp,
    pub recorded_at: Timestamp,
    pub source: PaymentSource,
    pub disposition: PaymentDisposition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnomalyKind {
    AmountMismatch = 0,
    DoublePayment = 1,
    LatePaymentRefund = 2,
    /// The buyer disputed the payment with their bank (a Stripe chargeback). The
    /// anomaly's `transaction_id` holds the dispute id (`dp_…`), so later updates of
    /// the same dispute find it; its detail names the dispute's current status.
    Dispute = 3,
    /// The provider reports a refund failed or abnormal.
    RefundAbnormal = 4,
    /// A refund could not take back what was already spent.
    ClawbackShortfall = 5,
}

impl AnomalyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::AmountMismatch => "amount_mismatch",
            AnomalyKind::DoublePayment => "double_payment",
            AnomalyKind::LatePaymentRefund => "late_payment_refund",
            AnomalyKind::Dispute => "dispute",
            AnomalyKind::RefundAbnormal => "refund_abnormal",
            AnomalyKind::ClawbackShortfall => "clawback_shortfall",
        }
    }
}

/// Something a human must look at; kept on the order with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub transaction_id: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub detail: String,
    pub at: Timestamp,
    pub resolved: bool,
}

/// A pending deadline of an order. `generation` lets a stale firing be ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    pub at: Timestamp,
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TimerKind {
    /// Time for the next active status query.
    Poll = 0,
    /// The order's expiry: start query → close → query.
    Expire = 1,
    /// Retry of a provider call in the expiry sequence that failed.
    Retry = 2,
    /// Ask the provider about refunds still processing (and re-issue lost ones).
    RefundPoll = 3,
}

impl TimerKind {
    pub const ALL: [TimerKind; 4] = [
        TimerKind::Poll,
        TimerKind::Expire,
        TimerKind::Retry,
        TimerKind::RefundPoll,
    ];

    pub fn as_u8(self) -> u8 {
        self as u8
    }
    pub fn from_u8(v: u8) -> Option<TimerKind> {
        TimerKind::ALL.into_iter().find(|k| *k as u8 == v)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timers {
    pub poll: Option<Timer>,
    pub expire: Option<Timer>,
    pub retry: Option<Timer>,
    pub refund_poll: Option<Timer>,
}

impl Timers {
    pub fn get(&self, kind: TimerKind) -> Option<Timer> {
        match kind {
            TimerKind::Poll => self.poll,
            TimerKind::Expire => self.expire,
            TimerKind::Retry => self.retry,
            TimerKind::RefundPoll => self.refund_poll,
        }
    }
    pub fn slot(&mut self, kind: TimerKind) -> &mut Option<Timer> {
        match kind {
            TimerKind::Poll => &mut self.poll,
            TimerKind::Expire => &mut self.expire,
            TimerKind::Retry => &mut self.retry,
            TimerKind::RefundPoll => &mut self.refund_poll,
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = (TimerKind, Timer)> + '_ {
        TimerKind::ALL
            .into_iter()
            .filter_map(|k| self.get(k).map(|t| (k, t)))
    }
}

/// Where the expiry sequence stands: query, then close, then query again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseStep {
    QueryBeforeClose = 0,
    Close = 1,
    QueryAfterClose = 2,
    /// The close answered that the trade is paid: only a query that reports the
    /// payment ends the sequence (an answer saying otherwise is a stale one, sent
    /// before the payment).
    QueryAfterPaidClose = 3,
}

/// An order and everything the state machine needs to decide its next step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_no: String,
    pub user_id: String,
    pub package_id: String,
    pub package: PackageSnapshot,
    pub amount_minor: i64,
    pub currency: Currency,
    pub payment_method: PaymentMethod,
    pub provider: ProviderKind,
    pub status: OrderStatus,
    /// Set while the expiry sequence runs (the order is `pending/closing`).
    pub closing: Option<CloseStep>,
    pub trade_opened: bool,
    pub qr_code_url: Option<String>,
    pub qr_code_expire_at: Option<Timestamp>,
    pub payment_url: Option<String>,
    /// The provider's own handle on the trade where it has one (a Stripe session id).
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
    /// Paid by an operator's force-complete, not by a provider confirmation.
    pub force_completed: bool,
    /// The address the order was placed from: the connection's, or the one a trusted
    /// proxy forwarded (for audit; `client_ip` is what the host application reported).
    pub source_ip: Option<String>,
    /// Refunds of this order, each with its own state.
    pub refunds: Vec<RefundEntry>,
    pub payments: Vec<Payment>,
    pub anomalies: Vec<Anomaly>,
    pub timers: Timers,
    pub timer_generation: u64,
    pub poll_count: u32,
    pub retry_count: u32,
    /// Incremented on every persisted transition; numbers the timeline.
    pub version: u64,
    /// When the order first left `pending` (paid, cancelled, expired or failed);
    /// set by storage with the transition that did it. Schema 2.
    pub settled_at: Option<Timestamp>,
}

impl payd_storage::Record for Order {
    const SCHEMA: u8 = 2;
}

impl Order {
    /// A pending mock order that nothing has happened to yet, for tests and
    /// benchmarks: order `PD2611222033150000000000000000` of user `u1` for package
    /// `basic`, CNY, expiring 30 minutes after `created_at`. Callers set the fields
    /// that matter to them.
    pub fn for_tests(package: PackageSnapshot, amount_minor: i64, created_at: Timestamp) -> Order {
        Order {
            order_no: "PD2611222033150000000000000000".into(),
            user_id: "u1".into(),
            package_id: "basic".into(),
            package,
            amount_minor,
            currency: Currency("CNY".into()),
            payment_method: PaymentMethod::Mock,
            provider: ProviderKind::Mock,
            status: OrderStatus::Pending,
            closing: None,
            trade_opened: false,
            qr_code_url: None,
            qr_code_expire_at: None,
            payment_url: None,
            provider_trade_ref: None,
            client_ip: None,
            expire_at: created_at.plus_ms(30 * 60_000),
            created_at,
            updated_at: created_at,
            paid_at: None,
            cancelled_at: None,
            provider_transaction_id: None,
            refunded_amount_minor: 0,
            failure_reason: None,
            late_payment: false,
            granted: false,
            force_completed: false,
            source_ip: None,
            refunds: vec![],
            payments: vec![],
            anomalies: vec![],
            timers: Timers::default(),
            timer_generation: 0,
            poll_count: 0,
            retry_count: 0,
            version: 0,
            settled_at: None,
        }
    }
}

/// One line of an order's append-only timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: Timestamp,
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub event: String,
    pub actor: Actor,
    pub reason: Option<String>,
}

impl payd_storage::Record for TimelineEntry {
    const SCHEMA: u8 = 1;
}

/// A user's active membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub membership_type: String,
    pub expires_at: Timestamp,
    pub queries_remaining: u64,
    /// When the current run of membership began, and what was paid into it (list
    /// value, minor units): an upgrade credits the unused, prorated share of it.
    pub started_at: Timestamp,
    pub value_minor: i64,
    pub currency: Option<Currency>,
}

/// How an upgrade order's price was computed: the target's list price minus the
/// unused, prorated value of the membership it replaces, never below the minimum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradePricing {
    pub from_type: String,
    pub list_price_minor: i64,
    pub credit_minor: i64,
    pub price_minor: i64,
    /// The minimum upgrade price applied (the credit was larger than allowed).
    pub minimum_applied: bool,
}

impl payd_storage::Record for UpgradePricing {
    const SCHEMA: u8 = 1;
}

/// What a user holds. Paid and bonus points are kept apart (bonus is spent first and
/// refunds claw back each share separately).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlements {
    pub membership: Option<Membership>,
    pub points_paid: u64,
    pub points_bonus: u64,
    /// Number of history entries written; the next entry's sequence number.
    pub history_len: u64,
    /// Put on hold by refunds in flight: not spendable, clawed back when the refund
    /// succeeds, released if it fails.
    pub held_points_paid: u64,
    pub held_points_bonus: u64,
    pub held_queries: u64,
}

impl payd_storage::Record for Entitlements {
    const SCHEMA: u8 = 1;
}

impl Entitlements {
    /// The membership as it stands at `now`: an expired one (and its queries) is gone.
    pub fn active_membership(&self, now: Timestamp) -> Option<&Membership> {
        self.membership.as_ref().filter(|m| m.expires_at > now)
    }
}

/// An append-only record of a change to a user's entitlements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: Timestamp,
    pub change: String,
    pub order_no: Option<String>,
    pub reason: String,
    pub membership: Option<Membership>,
    pub points_delta: i64,
    pub bonus_points_delta: i64,
    pub queries_delta: i64,
    /// The refund that caused it, for holds, clawbacks and releases.
    pub refund_no: Option<String>,
}

impl payd_storage::Record for HistoryEntry {
    const SCHEMA: u8 = 1;
}

/// A verified provider callback, kept with everything needed to re-verify and replay
/// it later. Written in the same transaction as the effect it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub provider: ProviderKind,
    /// The provider's own id of the event (WeChat `id`, Alipay `notify_id` + status,
    /// Stripe `event.id`), the dedupe key.
    pub event_id: String,
    pub order_no: String,
    /// `processed` (it changed the order) or `duplicate` (it changed nothing).
    pub result: String,
    pub source_ip: Option<String>,
    pub received_at: Timestamp,
    /// How many times it was delivered.
    pub deliveries: u32,
    /// The raw body and the headers its signature needs.
    pub raw_body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl payd_storage::Record for NotificationRecord {
    const SCHEMA: u8 = 1;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefundState {
    Processing = 0,
    Succeeded = 1,
    Failed = 2,
}

impl RefundState {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundState::Processing => "processing",
            RefundState::Succeeded => "succeeded",
            RefundState::Failed => "failed",
        }
    }
}

/// What a refund put on hold of the buyer's entitlements (clawed back when it
/// succeeds, released when it fails).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementHold {
    pub points_paid: u64,
    pub points_bonus: u64,
    pub queries: u64,
    /// The days of membership the refund takes back when it succeeds.
    pub membership_days: u32,
    /// Part of the refunded share had been spent already: nothing below zero, an
    /// anomaly instead.
    pub shortfall: bool,
}

/// One refund of an order: its own record with its own state (processing →
/// succeeded | failed), kept on the order so that its actor owns it and payments
/// and refunds of one order never race.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundEntry {
    pub refund_no: String,
    pub amount_minor: i64,
    pub reason: String,
    pub state: RefundState,
    pub provider_refund_id: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub requested_by: Actor,
    pub failure_reason: Option<String>,
    /// `Some`: refunds an extra payment (double or late); `None`: the order's payment.
    pub transaction_id: Option<String>,
    pub hold: EntitlementHold,
    /// Status queries (and re-issues) made so far.
    pub attempts: u32,
}

/// Who did what, when and why, through the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: Timestamp,
    pub admin: String,
    pub action: String,
    pub target: String,
    pub reason: String,
}

impl payd_storage::Record for AuditEntry {
    const SCHEMA: u8 = 1;
}

/// Where an outbound webhook event stands. Persisted: append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WebhookStatus {
    /// Waiting for its (next) delivery attempt.
    Pending = 0,
    /// The host application answered 2xx.
    Delivered = 1,
    /// Every attempt of `webhooks.retry` failed; kept and listed until re-sent.
    Dead = 2,
}

impl WebhookStatus {
    pub const ALL: [WebhookStatus; 3] = [
        WebhookStatus::Pending,
        WebhookStatus::Delivered,
        WebhookStatus::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookStatus::Pending => "pending",
            WebhookStatus::Delivered => "delivered",
            WebhookStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<WebhookStatus> {
        WebhookStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// An event for the host application, written to the outbox in the same transaction
/// as the change it announces, with the order as it stood right after that change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Stable: `{order_no}:{version}` for an order's status, `{refund_no}:{state}`
    /// for a refund's. Receivers deduplicate on it (delivery is at least once).
    pub id: String,
    /// `order.paid`, `order.refunded`, `refund.succeeded`, …
    pub event_type: String,
    pub order: Order,
    /// The refund the event is about, for `refund.*` events.
    pub refund_no: Option<String>,
    pub created_at: Timestamp,
    pub status: WebhookStatus,
    /// Delivery attempts made so far.
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub last_attempt_at: Option<Timestamp>,
    /// Why the last attempt failed (an HTTP status or a transport error), never a body.
    pub last_error: Option<String>,
    pub delivered_at: Option<Timestamp>,
}

impl payd_storage::Record for WebhookEvent {
    const SCHEMA: u8 = 1;
}
