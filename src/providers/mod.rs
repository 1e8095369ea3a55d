//! Provider adapters. Each translates one platform's wire protocol into the
//! `PaymentProvider` port of payd-actors; the built-in mock speaks no wire protocol
//! at all and is for development and tests of everything above the adapters.

pub mod mock;
