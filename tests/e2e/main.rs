//! End-to-end tests: payd started in-process on port 0 with a temporary data
//! directory and short durations, driven over real HTTP. One test binary, so the
//! crate is built once and the tests run in parallel.

mod alipay;
mod alipay_sandbox;
mod backup;
mod bad_input;
mod browser;
mod buyer;
mod callback_log;
mod crash;
mod durability_audit;
mod entitlements;
mod lifecycle;
mod logcheck;
mod monitoring;
mod powercut;
mod prometheus;
mod purchase;
mod races;
mod reconcile;
mod recovery;
mod refunds;
mod storage_faults;
mod stripe;
mod stripe_sandbox;
mod support;
mod upgrade;
mod webhooks;
mod wechat;
mod wechat_sandbox;
mod wechat_v2;
mod wechat_v2_sandbox;
