//! Provider adapters. Each translates one platform's wire protocol into the
//! `PaymentProvider` port of payd-actors, through the shared [`executor`]; the
//! built-in mock speaks no wire protocol and serves development and tests of
//! everything above the adapters.

pub mod alipay;
#[cfg(test)]
mod arbitrary_input_tests;
pub mod executor;
pub mod mock;
pub mod rejections;
pub mod statement;
pub mod stripe;
pub mod wechat;
