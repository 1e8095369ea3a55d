//! `payd check-config`: loads every configured provider's keys and certificates and
//! says precisely what is missing or malformed, without starting the server. Never
//! prints a secret.

use std::sync::Arc;

use payd_actors::clock::SystemClock;

use crate::config::Config;
use crate::providers::alipay::{self, AlipaySetup};
use crate::providers::stripe::{self, StripeSetup};
use crate::providers::wechat::{self, WechatSetup};

/// One provider's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderCheck {
    NotConfigured,
    Usable(String),
    Unusable(Vec<String>),
}

/// Every provider's verdict, in a fixed order.
pub fn check_providers(cfg: &Config) -> Vec<(&'static str, ProviderCheck)> {
    let clock: payd_actors::clock::SharedClock = Arc::new(SystemClock);
    let wechat = match wechat::setup(cfg, clock.clone()) {
        WechatSetup::Absent => ProviderCheck::NotConfigured,
        WechatSetup::Unusable(problems) => ProviderCheck::Unusable(problems),
        WechatSetup::V3(w) => {
            let mut keys = Vec::new();
            if let Some(id) = w.keys.public_key_id() {
                keys.push(format!("public key {id}"));
            }
            if w.keys.certificate_mode() {
                keys.push(format!(
                    "platform certificates (cached: {})",
                    w.keys.certificate_serials().join(", ")
                ));
            }
            ProviderCheck::Usable(format!(
                "API v3, mchid {}, verifies with {}",
                w.mchid(),
                keys.join(" and ")
            ))
        }
        WechatSetup::V2(w) => ProviderCheck::Usable(format!(
            "API v2, mch_id {}, refunds {}",
            w.mch_id(),
            if w.refunds_enabled() {
                "enabled (merchant certificate loaded)"
            } else {
                "disabled: set wechat.cert_path and wechat.private_key_path"
            }
        )),
    };
    let alipay = match alipay::setup(cfg, clock.clone()) {
        AlipaySetup::Absent => ProviderCheck::NotConfigured,
        AlipaySetup::Unusable(problems) => ProviderCheck::Unusable(problems),
        AlipaySetup::Ready(_) => ProviderCheck::Usable(format!(
            "app_id {}, gateway {}",
            cfg.alipay.app_id.as_deref().unwrap_or("?"),
            cfg.alipay.gateway
        )),
    };
    let stripe = match stripe::setup(cfg, clock) {
        StripeSetup::Absent => ProviderCheck::NotConfigured,
        StripeSetup::Unusable(problems) => ProviderCheck::Unusable(problems),
        StripeSetup::Ready(_) => ProviderCheck::Usable(format!(
            "API {}, Stripe-Version {}",
            cfg.stripe.api_base, cfg.stripe.api_version
        )),
    };
    vec![("wechat", wechat), ("alipay", alipay), ("stripe", stripe)]
}

/// The report `check-config` prints, and whether every configured provider is usable.
pub fn report(cfg: &Config) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    out.push_str(&format!(
        "configuration: ok (mock mode {}, storage {}, listening on {})\n",
        if cfg.payment.mock_mode { "on" } else { "off" },
        cfg.storage.path.display(),
        cfg.server.bind
    ));
    for (name, verdict) in check_providers(cfg) {
        match verdict {
            ProviderCheck::NotConfigured => out.push_str(&format!("{name}: not configured\n")),
            ProviderCheck::Usable(summary) => {
                out.push_str(&format!("{name}: usable — {summary}\n"))
            }
            ProviderCheck::Unusable(problems) => {
                ok = false;
                out.push_str(&format!("{name}: UNUSABLE\n"));
                for p in problems {
                    out.push_str(&format!("  - {p}\n"));
                }
            }
        }
    }
    (out, ok)
}
