//! payd-actors: the payment domain and its actors.
//!
//! Knows nothing of HTTP or of any provider's wire format: providers plug in through
//! the [`provider::PaymentProvider`] port, and all persistence goes through
//! payd-storage commands defined in [`commands`].

pub mod model;
pub mod order;
