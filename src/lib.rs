//! payd: a payment engine for host applications that sell memberships and points.
//!
//! This crate is the glue: configuration, wiring, the HTTP layer (axum), provider
//! adapters and the CLI. The domain lives in payd-actors; storage in payd-storage.

pub mod app;
pub mod auth;
pub mod backup;
pub mod check;
pub mod config;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod logtime;
pub mod logwriter;
pub mod metrics;
pub mod monitor;
pub mod order_no;
pub mod providers;
pub mod ratelimit;
pub mod reconcile;
pub mod retention;
pub mod security;
pub mod webhooks;
