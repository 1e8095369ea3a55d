//! Orders: the pure state machine, the actor that hosts it, and the supervisor that
//! is the only registry of live order actors.

use std::sync::Arc;
use std::time::Duration;

use payd_storage::Store;

use crate::clock::SharedClock;
use crate::provider::Providers;

pub mod actor;
#[cfg(test)]
mod clock_jump_tests;
pub mod create;
#[cfg(test)]
mod engine_model_tests;
mod local;
pub mod machine;
#[cfg(test)]
mod machine_tests;
#[cfg(test)]
mod race_tests;
pub mod refund;
#[cfg(test)]
mod reordering_tests;
#[cfg(test)]
pub(crate) mod simulation;
pub mod supervisor;
#[cfg(test)]
pub(crate) mod test_engine;

/// Read-only dependencies shared by the supervisor and every order actor.
pub struct Deps {
    pub store: Store,
    pub providers: Providers,
    pub clock: SharedClock,
    pub policy: machine::Policy,
    /// Membership tiers from lowest to highest.
    pub tiers: Arc<Vec<String>>,
    pub provider_timeout: Duration,
    pub passivate_after: Duration,
    pub restart_budget: u32,
    /// Told about every durable transition (live pushes, monitor, webhooks).
    pub observers: Vec<Arc<dyn OrderObserver>>,
    /// Write outbound webhook events with each transition (`webhooks.url` is set).
    pub webhooks: bool,
}

/// Hears about an order's transitions *after* they are durable — never before, so a
/// push or a metric can never announce something the disk does not hold. Must not
/// block: hand the news to a channel or an actor.
pub trait OrderObserver: Send + Sync + 'static {
    fn transition(&self, before: &crate::model::Order, after: &crate::model::Order, event: &str);
}
