//! payd-actors: the payment domain and its actors.
//!
//! Knows nothing of HTTP or of any provider's wire format: providers plug in through
//! the [`provider::PaymentProvider`] port, and all persistence goes through the
//! storage commands in [`commands`].

pub mod clock;
pub mod commands;
pub mod hub;
pub mod migrations;
pub mod model;
pub mod monitor;
pub mod order;
pub mod outbox;
pub mod provider;
pub mod reconcile;
pub mod scheduler;
pub mod tables;
