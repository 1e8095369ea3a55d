//! The mock provider: behaves like a real one without the network.
//!
//! Its trades are kept in storage (`mock_trades`), so a payment made with
//! `notify=false` is still found by polling after a restart. A trade is opened
//! locally (no call, no write of its own: it is stored with its order) and its
//! record is written the first time something happens to it — paid, failed or
//! closed; until then the order alone says the trade exists and is unpaid. The QR code points at
//! the cashier page `/mock/pay/{order_no}`; "pay" there (or through the API's mock
//! routes) marks the trade paid and delivers a confirmation through the same path a
//! verified provider callback takes. A closed trade can still be "paid" here, on
//! purpose: that is how tests produce a payment racing a close (a late payment).

use payd_actors::model::PaymentSource;
use payd_actors::model::{Currency, PaymentMethod, ProviderKind, Timestamp};
use payd_actors::order::machine::PaymentReport;
use payd_actors::provider::{
    CloseOutcome, LocalTrades, OpenedTrade, PaymentProvider, ProviderError, ProviderFuture,
    QueryOutcome, RefundOutcome, RefundRequest, RefundStatus, TradeRef, TradeRequest,
};
use payd_actors::tables::ORDERS;
use payd_storage::{Record, StorageError, Store, Table, WriteCtx};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MockTradeState {
    NotPaid,
    Paid {
        transaction_id: String,
        amount_minor: i64,
        currency: Currency,
        paid_at: Timestamp,
    },
    Closed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockTrade {
    pub order_no: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub state: MockTradeState,
    /// Set once it was paid, even if later closed.
    pub paid: Option<(String, i64, Currency, Timestamp)>,
}

impl Record for MockTrade {
    const SCHEMA: u8 = 1;
}

pub const MOCK_TRADES: Table<String, MockTrade> = Table::new("mock_trades");

pub struct MockProvider {
    store: Store,
    base_url: String,
}

impl MockProvider {
    pub fn new(store: Store, base_url: String) -> Self {
        MockProvider { store, base_url }
    }

    pub fn cashier_url(&self, order_no: &str) -> String {
        format!("{}/mock/pay/{}", self.base_url, order_no)
    }

    /// The trade's QR code or payment URL: the cashier page.
    fn opened(&self, request: &TradeRequest) -> OpenedTrade {
        let url = self.cashier_url(&request.order_no);
        if request.method.is_qr() {
            OpenedTrade {
                qr_code_url: Some(url),
                payment_url: None,
                trade_ref: None,
            }
        } else {
            OpenedTrade {
                qr_code_url: None,
                payment_url: Some(url),
                trade_ref: None,
            }
        }
    }

    /// The buyer pays: the trade is marked paid (durably) and the payment returned,
    /// ready to be delivered as a confirmation.
    pub async fn pay(
        &self,
        order_no: &str,
        amount_minor: Option<i64>,
        currency: Option<Currency>,
        transaction_id: Option<String>,
        now: Timestamp,
    ) -> Result<Option<PaymentReport>, StorageError> {
        let order_no = order_no.to_string();
        self.store
            .submit(move |ctx| {
                let Some(mut trade) = trade_of(ctx, &order_no)? else {
                    return Ok(None);
                };
                let tx = transaction_id
                    .or_else(|| trade.paid.as_ref().map(|p| p.0.clone()))
                    .unwrap_or_else(|| format!("MOCK{}", hex(&rand::random::<[u8; 10]>())));
                let amount = amount_minor.unwrap_or(trade.amount_minor);
                let currency = currency.unwrap_or_else(|| trade.currency.clone());
                trade.state = MockTradeState::Paid {
                    transaction_id: tx.clone(),
                    amount_minor: amount,
                    currency: currency.clone(),
                    paid_at: now,
                };
                trade.paid = Some((tx.clone(), amount, currency.clone(), now));
                ctx.put(&MOCK_TRADES, &order_no, &trade);
                Ok::<_, StorageError>(Some(PaymentReport {
                    transaction_id: tx,
                    amount_minor: amount,
                    currency,
                    paid_at: now,
                    source: PaymentSource::Callback,
                }))
            })
            .await?
    }

    /// The buyer's payment fails. Returns false when there is no such trade.
    pub async fn fail(&self, order_no: &str) -> Result<bool, StorageError> {
        let order_no = order_no.to_string();
        self.store
            .submit(move |ctx| {
                let Some(mut trade) = trade_of(ctx, &order_no)? else {
                    return Ok(false);
                };
                if trade.paid.is_none() {
                    trade.state = MockTradeState::Failed;
                    ctx.put(&MOCK_TRADES, &order_no, &trade);
                }
                Ok::<_, StorageError>(true)
            })
            .await?
    }
}

/// The order's mock trade: its record, or — before anything happened to it — the
/// unpaid trade its mock order implies. `None` when there is no such mock order.
fn trade_of(ctx: &mut WriteCtx<'_>, order_no: &String) -> Result<Option<MockTrade>, StorageError> {
    if let Some(trade) = ctx.get(&MOCK_TRADES, order_no)? {
        return Ok(Some(trade));
    }
    Ok(ctx
        .get(&ORDERS, order_no)?
        .filter(|o| o.provider == ProviderKind::Mock)
        .map(|o| MockTrade {
            order_no: o.order_no,
            amount_minor: o.amount_minor,
            currency: o.currency,
            state: MockTradeState::NotPaid,
            paid: None,
        }))
}

/// What a query of a trade in this state answers.
fn query_answer(found: Option<MockTrade>) -> QueryOutcome {
    match found {
        // Like real providers before the buyer scans: no trade means unpaid.
        None => QueryOutcome::NotPaid,
        Some(t) => match (t.paid, t.state) {
            (Some((transaction_id, amount_minor, currency, paid_at)), _) => {
                QueryOutcome::Paid(PaymentReport {
                    transaction_id,
                    amount_minor,
                    currency,
                    paid_at,
                    source: PaymentSource::Query,
                })
            }
            (None, MockTradeState::Closed) => QueryOutcome::Closed,
            (None, MockTradeState::Failed) => QueryOutcome::Failed {
                reason: "mock payment failed".into(),
            },
            (None, _) => QueryOutcome::NotPaid,
        },
    }
}

/// Closes the trade unless it was paid.
fn close_trade(ctx: &mut WriteCtx<'_>, order_no: &String) -> Result<CloseOutcome, StorageError> {
    let Some(mut t) = trade_of(ctx, order_no)? else {
        return Ok(CloseOutcome::Closed);
    };
    if t.paid.is_some() {
        return Ok(CloseOutcome::AlreadyPaid);
    }
    t.state = MockTradeState::Closed;
    ctx.put(&MOCK_TRADES, order_no, &t);
    Ok(CloseOutcome::Closed)
}

/// The same answers as the calls, inside the command that records them.
impl LocalTrades for MockProvider {
    fn query(
        &self,
        ctx: &mut WriteCtx<'_>,
        trade: &TradeRef,
    ) -> Result<QueryOutcome, StorageError> {
        Ok(query_answer(ctx.get(&MOCK_TRADES, &trade.order_no)?))
    }

    fn close(
        &self,
        ctx: &mut WriteCtx<'_>,
        trade: &TradeRef,
    ) -> Result<CloseOutcome, StorageError> {
        close_trade(ctx, &trade.order_no)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn storage_err(e: StorageError) -> ProviderError {
    ProviderError::transient(format!("mock trade store: {e}"))
}

impl PaymentProvider for MockProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Mock
    }

    fn create(&self, request: TradeRequest) -> ProviderFuture<'_, OpenedTrade> {
        Box::pin(async move { Ok(self.opened(&request)) })
    }

    fn open_locally(&self, request: &TradeRequest) -> Option<OpenedTrade> {
        Some(self.opened(request))
    }

    fn local_trades(&self) -> Option<&dyn LocalTrades> {
        Some(self)
    }

    fn query(&self, trade: TradeRef) -> ProviderFuture<'_, QueryOutcome> {
        Box::pin(async move {
            let view = self.store.read().map_err(storage_err)?;
            let found = view
                .get(&MOCK_TRADES, &trade.order_no)
                .map_err(storage_err)?;
            Ok(query_answer(found))
        })
    }

    fn close(&self, trade: TradeRef) -> ProviderFuture<'_, CloseOutcome> {
        Box::pin(async move {
            self.store
                .submit(move |ctx| close_trade(ctx, &trade.order_no))
                .await
                .and_then(|r| r)
                .map_err(storage_err)
        })
    }

    fn refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        Box::pin(async move {
            if request.amount_minor <= 0 || request.amount_minor > request.trade.amount_minor {
                return Err(ProviderError::permanent("refund amount out of range"));
            }
            // A refund whose reason says so is declined, as a bank sometimes does.
            if request.reason.contains(MOCK_REFUND_DECLINE) {
                return Ok(RefundOutcome {
                    status: RefundStatus::Failed {
                        reason: "mock refund declined".into(),
                    },
                    provider_refund_id: Some(format!("MOCKR{}", request.refund_no)),
                });
            }
            Ok(RefundOutcome {
                status: RefundStatus::Succeeded,
                provider_refund_id: Some(format!("MOCKR{}", request.refund_no)),
            })
        })
    }

    fn query_refund(&self, request: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        Box::pin(async move {
            Ok(RefundOutcome {
                status: RefundStatus::Succeeded,
                provider_refund_id: Some(format!("MOCKR{}", request.refund_no)),
            })
        })
    }
}

/// A refund reason containing this is declined by the mock provider (for trying the
/// failure path).
pub const MOCK_REFUND_DECLINE: &str = "mock-decline";

/// Every method the mock serves in mock mode.
pub const MOCK_METHODS: [PaymentMethod; 5] = PaymentMethod::ALL;
