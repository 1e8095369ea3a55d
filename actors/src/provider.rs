//! The port every payment provider adapter implements.
//!
//! Every call is required: a provider that cannot refund says so in its own code
//! path with a real error, never through a default that fails at run time. The one
//! default, [`PaymentProvider::open_locally`], is a capability (opening a trade
//! without a network call) that only the mock has. Adapters
//! translate wire formats into these types; the order machine sees only
//! [`QueryOutcome`] and [`CloseOutcome`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use payd_storage::{StorageError, WriteCtx};

use crate::model::{Currency, PaymentMethod, ProviderKind, Timestamp};
pub use crate::order::machine::{CloseOutcome, QueryOutcome};

/// A provider call failed. `transient` errors (network, timeouts, 5xx) may be retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub transient: bool,
    pub message: String,
}

impl ProviderError {
    pub fn transient(message: impl Into<String>) -> Self {
        ProviderError {
            transient: true,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        ProviderError {
            transient: false,
            message: message.into(),
        }
    }
}

pub type ProviderFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// What the provider needs to open a trade (or re-issue its QR code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRequest {
    pub order_no: String,
    pub method: PaymentMethod,
    pub amount_minor: i64,
    pub currency: Currency,
    pub description: String,
    /// The provider trade must stop being payable at this moment.
    pub expire_at: Timestamp,
    pub client_ip: Option<String>,
}

impl TradeRequest {
    /// The request that opens `order`'s trade (or re-issues its code).
    pub fn for_order(order: &crate::model::Order) -> TradeRequest {
        TradeRequest {
            order_no: order.order_no.clone(),
            method: order.payment_method,
            amount_minor: order.amount_minor,
            currency: order.currency.clone(),
            description: order.package.name.clone(),
            expire_at: order.expire_at,
            client_ip: order.client_ip.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedTrade {
    pub qr_code_url: Option<String>,
    pub payment_url: Option<String>,
    pub trade_ref: Option<String>,
}

/// Which trade to query or close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradeRef {
    pub order_no: String,
    pub trade_ref: Option<String>,
    pub amount_minor: i64,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub trade: TradeRef,
    pub refund_no: String,
    pub amount_minor: i64,
    pub reason: String,
    /// `Some`: refund this provider transaction (an extra — double or late — payment)
    /// rather than the order's own payment.
    pub transaction_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundStatus {
    Processing,
    Succeeded,
    Failed { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOutcome {
    pub status: RefundStatus,
    pub provider_refund_id: Option<String>,
}

pub trait PaymentProvider: Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;
    /// Opens the trade, or returns the QR code of the same trade again.
    fn create(&self, request: TradeRequest) -> ProviderFuture<'_, OpenedTrade>;
    /// Opens the trade without a network call or a write of the provider's own, when
    /// the provider can (the mock, whose trades are implied by their orders): then
    /// the new order is stored with its trade already open, in one storage command.
    /// Real providers must be called after the order is durable, so they keep `None`.
    fn open_locally(&self, _request: &TradeRequest) -> Option<OpenedTrade> {
        None
    }
    /// The provider's trades as records in payd's own store, when they are (the
    /// mock): then a query or a close is answered inside the storage command that
    /// records the answer, without a call. Real providers keep `None`.
    fn local_trades(&self) -> Option<&dyn LocalTrades> {
        None
    }
    fn query(&self, trade: TradeRef) -> ProviderFuture<'_, QueryOutcome>;
    fn close(&self, trade: TradeRef) -> ProviderFuture<'_, CloseOutcome>;
    fn refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome>;
    fn query_refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome>;
}

/// Queries and closes answered from trades kept in payd's own store, inside a storage
/// command: what [`PaymentProvider::query`] and [`PaymentProvider::close`] would
/// answer, read (and for a close, written) through `ctx`, so the answer and the
/// order's transition that records it are durable together.
pub trait LocalTrades: Send + Sync {
    fn query(&self, ctx: &mut WriteCtx<'_>, trade: &TradeRef)
    -> Result<QueryOutcome, StorageError>;
    fn close(&self, ctx: &mut WriteCtx<'_>, trade: &TradeRef)
    -> Result<CloseOutcome, StorageError>;
}

/// The configured providers, and which one serves each payment method.
#[derive(Clone, Default)]
pub struct Providers {
    by_kind: HashMap<ProviderKind, Arc<dyn PaymentProvider>>,
    by_method: HashMap<PaymentMethod, ProviderKind>,
}

impl Providers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `provider` as the one serving `methods`.
    pub fn register(&mut self, provider: Arc<dyn PaymentProvider>, methods: &[PaymentMethod]) {
        let kind = provider.kind();
        for m in methods {
            self.by_method.insert(*m, kind);
        }
        self.by_kind.insert(kind, provider);
    }

    /// The provider of record for a new order paid with `method`.
    pub fn for_method(&self, method: PaymentMethod) -> Option<ProviderKind> {
        self.by_method.get(&method).copied()
    }

    pub fn get(&self, kind: ProviderKind) -> Option<Arc<dyn PaymentProvider>> {
        self.by_kind.get(&kind).cloned()
    }

    pub fn kinds(&self) -> Vec<ProviderKind> {
        let mut v: Vec<_> = self.by_kind.keys().copied().collect();
        v.sort_by_key(|k| k.as_str());
        v
    }
}
