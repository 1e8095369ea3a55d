//! The real order engine for in-crate tests: storage on a temporary directory, the
//! order supervisor and its actors, and providers the test controls. Used by the
//! reordering, race, model and clock tests.

use std::sync::Arc;
use std::time::Duration;

use payd_storage::{Store, StoreOptions};
use ractor::{Actor, ActorRef, rpc::CallResult};

use crate::clock::SharedClock;
use crate::model::{Order, PaymentMethod, ProviderKind};
use crate::order::Deps;
use crate::order::actor::{OrderCommand, OrderError};
use crate::order::machine::Policy;
use crate::order::supervisor::{OrderSupervisor, SupervisorMsg};
use crate::provider::{
    CloseOutcome, OpenedTrade, PaymentProvider, ProviderFuture, Providers, QueryOutcome,
    RefundOutcome, RefundRequest, TradeRef, TradeRequest,
};
use crate::tables::DOMAIN_TABLES;

/// A provider that never answers (its calls run into the actor's timeout, set to an
/// hour here): the test alone decides which provider answers the order sees.
pub(crate) struct SilentProvider;

fn never<'a, T: Send + 'a>() -> ProviderFuture<'a, T> {
    Box::pin(std::future::pending())
}

impl PaymentProvider for SilentProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Mock
    }
    fn create(&self, _: TradeRequest) -> ProviderFuture<'_, OpenedTrade> {
        never()
    }
    fn query(&self, _: TradeRef) -> ProviderFuture<'_, QueryOutcome> {
        never()
    }
    fn close(&self, _: TradeRef) -> ProviderFuture<'_, CloseOutcome> {
        never()
    }
    fn refund(&self, _: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        never()
    }
    fn query_refund(&self, _: RefundRequest) -> ProviderFuture<'_, RefundOutcome> {
        never()
    }
}

#[derive(Clone)]
pub(crate) struct Engine {
    pub(crate) store: Store,
    pub(crate) supervisor: ActorRef<SupervisorMsg>,
}

pub(crate) fn open_store(dir: &std::path::Path) -> Store {
    Store::open(StoreOptions::new(dir, DOMAIN_TABLES.to_vec())).expect("store opens")
}

impl Engine {
    pub(crate) async fn start(
        store: Store,
        policy: Policy,
        clock: SharedClock,
        provider: Arc<dyn PaymentProvider>,
        provider_timeout: Duration,
    ) -> Engine {
        let mut providers = Providers::new();
        providers.register(provider, &[PaymentMethod::Mock]);
        let deps = Arc::new(Deps {
            store: store.clone(),
            providers,
            clock,
            policy,
            tiers: Arc::new(vec!["basic".into(), "pro".into()]),
            provider_timeout,
            passivate_after: Duration::from_secs(3600),
            restart_budget: 3,
            observers: Vec::new(),
            webhooks: false,
        });
        let (supervisor, _) = Actor::spawn(None, OrderSupervisor, deps)
            .await
            .expect("supervisor starts");
        Engine { store, supervisor }
    }

    /// Sends `command` to the order's actor and waits for its answer (durable first).
    pub(crate) async fn ask(
        &self,
        order_no: &str,
        command: OrderCommand,
    ) -> Result<Order, OrderError> {
        let order_no = order_no.to_string();
        match self
            .supervisor
            .call(
                |reply| SupervisorMsg::Route {
                    order_no,
                    command,
                    reply: Some(reply),
                },
                Some(Duration::from_secs(30)),
            )
            .await
        {
            Ok(CallResult::Success(r)) => r,
            _ => Err(OrderError::Unavailable),
        }
    }

    /// Stops the actors and closes the store (everything acknowledged is on disk).
    pub(crate) async fn stop(self) {
        self.supervisor.stop(None);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.store.shutdown().await;
    }
}
