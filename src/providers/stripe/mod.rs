//! Stripe Checkout: hosted payment pages opened through the REST API, and signed
//! webhooks. `form` writes Stripe's bracketed form bodies, `objects` reads its
//! objects and converts its money, `webhook` verifies and interprets events, and
//! `api` is the adapter behind the `PaymentProvider` port.

use std::sync::Arc;

use payd_actors::clock::SharedClock;

use crate::config::Config;
use crate::providers::executor::{Executor, ExecutorConfig};

pub mod api;
pub mod balance;
pub mod form;
pub mod objects;
pub mod webhook;

pub use api::{Stripe, StripeSettings};

/// What `check-config` and start-up learn about the Stripe configuration.
pub enum StripeSetup {
    /// No Stripe key is configured at all.
    Absent,
    /// Configured but unusable: each line names a key and what is wrong.
    Unusable(Vec<String>),
    Ready(Arc<Stripe>),
}

/// Checks the Stripe keys and builds the adapter. Secret values never appear in the
/// problems it reports.
pub fn setup(cfg: &Config, clock: SharedClock) -> StripeSetup {
    let s = &cfg.stripe;
    if s.secret_key.is_none() && s.webhook_secret.is_none() && s.publishable_key.is_none() {
        return StripeSetup::Absent;
    }
    let mut problems = Vec::new();
    match &s.secret_key {
        None => problems.push("stripe.secret_key: missing".to_string()),
        Some(k) if !(k.expose().starts_with("sk_") || k.expose().starts_with("rk_")) => problems
            .push(
                "stripe.secret_key: must be a secret key (sk_…) or a restricted key (rk_…)".into(),
            ),
        Some(_) => {}
    }
    match &s.webhook_secret {
        None => problems.push(
            "stripe.webhook_secret: missing (the whsec_… signing secret of the webhook endpoint)"
                .to_string(),
        ),
        Some(w) if !w.expose().starts_with("whsec_") => problems
            .push("stripe.webhook_secret: must be an endpoint signing secret (whsec_…)".into()),
        Some(_) => {}
    }
    if let Some(p) = &s.publishable_key
        && !p.starts_with("pk_")
    {
        problems.push("stripe.publishable_key: must be a publishable key (pk_…)".into());
    }
    if s.api_version.trim().is_empty() {
        problems.push("stripe.api_version: empty".into());
    }
    match (&s.secret_key, &s.webhook_secret) {
        (Some(secret_key), Some(webhook_secret)) if problems.is_empty() => {
            let settings = StripeSettings {
                secret_key: secret_key.clone(),
                webhook_secret: webhook_secret.clone(),
                api_base: s.api_base.trim_end_matches('/').to_string(),
                api_version: s.api_version.trim().to_string(),
                success_url: s.success_url.clone(),
                cancel_url: s.cancel_url.clone(),
                order_expire_ms: cfg.payment.order_expire.as_millis() as i64,
            };
            let exec = Executor::new(
                "stripe",
                Executor::default_client(),
                ExecutorConfig::new(cfg.providers.timeout, cfg.providers.max_concurrency),
            );
            StripeSetup::Ready(Arc::new(Stripe::new(settings, exec, clock)))
        }
        _ => StripeSetup::Unusable(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use payd_actors::clock::SystemClock;

    fn load(extra: &str) -> Config {
        let no_env = |_: &str| None;
        crate::config::load_from_str(extra, &no_env, &[]).expect("config loads")
    }

    #[test]
    fn setup_names_each_missing_or_wrong_key_without_its_value() {
        assert!(matches!(
            setup(&load(""), Arc::new(SystemClock)),
            StripeSetup::Absent
        ));
        let half = load("[stripe]\nsecret_key = \"pk_live_oops_secret_value\"\n");
        match setup(&half, Arc::new(SystemClock)) {
            StripeSetup::Unusable(p) => {
                let all = p.join("\n");
                assert!(all.contains("stripe.secret_key"), "{all}");
                assert!(all.contains("stripe.webhook_secret: missing"), "{all}");
                assert!(!all.contains("oops_secret_value"), "{all}");
            }
            _ => panic!("an sk_-less key and no webhook secret is unusable"),
        }
        let ready = load(
            "[stripe]\nsecret_key = \"sk_test_abc\"\nwebhook_secret = \"whsec_abc\"\napi_base = \"https://api.stripe.com/\"\n",
        );
        match setup(&ready, Arc::new(SystemClock)) {
            StripeSetup::Ready(s) => {
                assert!(s.test_mode());
                assert_eq!(s.api_version(), crate::config::STRIPE_API_VERSION);
            }
            _ => panic!("complete keys are ready"),
        }
    }
}
