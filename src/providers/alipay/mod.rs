//! Alipay OpenAPI: QR (`alipay.trade.precreate`) and PC web (`alipay.trade.page.pay`)
//! payments over the form-encoded, RSA2-signed gateway.
//!
//! `wire` holds the pure text rules (what is signed, the signed response substring,
//! yuan ↔ fen, Beijing time); `adapter` is the `PaymentProvider` and the verifier of
//! notifies and page-pay returns. This module loads the keys: a provider whose keys
//! are missing or unreadable is disabled, not fatal, and every problem names its key.

use std::sync::Arc;

use payd_actors::clock::SharedClock;

use crate::config::Config;
use crate::providers::executor::{Executor, ExecutorConfig};
use crate::providers::wechat::crypto::{CryptoError, MerchantSigner, RsaVerifier};

pub mod adapter;
pub mod bill;
pub mod wire;

pub use adapter::{Alipay, AlipayNotification, AlipaySettings};

/// What `check-config` and start-up learn about the Alipay configuration.
pub enum AlipaySetup {
    /// No Alipay key is configured at all.
    Absent,
    /// Configured but unusable: each line names a key and what is wrong.
    Unusable(Vec<String>),
    Ready(Arc<Alipay>),
}

/// Loads the app private key as Alipay's console hands it out — bare base64 of a
/// PKCS#8 or PKCS#1 DER, no PEM armour — or as PEM of either form.
pub fn load_private_key(text: &str) -> Result<MerchantSigner, CryptoError> {
    if text.contains("-----BEGIN") {
        return MerchantSigner::from_pem(text.as_bytes());
    }
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty()
        || !compact
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return Err(CryptoError::BadKey(
            "private key is neither PEM nor base64".into(),
        ));
    }
    let armour = |label: &str| {
        let mut pem = format!("-----BEGIN {label}-----\n");
        for line in compact.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {label}-----\n"));
        pem
    };
    // The console's default is PKCS#8; older keys (and the official Python SDK) use
    // PKCS#1. Each parser refuses the other's DER, so try them in turn.
    MerchantSigner::from_pem(armour("PRIVATE KEY").as_bytes()).or_else(|_| {
        MerchantSigner::from_pem(armour("RSA PRIVATE KEY").as_bytes()).map_err(|_| {
            CryptoError::BadKey("base64 key is neither a PKCS#8 nor a PKCS#1 RSA key".into())
        })
    })
}

/// Loads every Alipay key the configuration names.
pub fn setup(cfg: &Config, clock: SharedClock) -> AlipaySetup {
    let a = &cfg.alipay;
    let any = a.app_id.is_some()
        || a.seller_id.is_some()
        || a.private_key.is_some()
        || a.private_key_path.is_some()
        || a.alipay_public_key.is_some()
        || a.alipay_public_key_path.is_some();
    if !any {
        return AlipaySetup::Absent;
    }
    let mut problems = Vec::new();
    let app_id = a.app_id.clone();
    if app_id.is_none() {
        problems.push("alipay.app_id: missing".to_string());
    }
    let private_key_name = if a.private_key_path.is_some() {
        "alipay.private_key_path"
    } else {
        "alipay.private_key"
    };
    let signer = match &a.private_key {
        None => {
            problems.push(
                "alipay.private_key: missing (the app private key, inline or as alipay.private_key_path)"
                    .into(),
            );
            None
        }
        Some(key) => load_private_key(key.expose())
            .map_err(|e| problems.push(format!("{private_key_name}: {e}")))
            .ok(),
    };
    let verifier = match (&a.alipay_public_key, &a.alipay_public_key_path) {
        (Some(text), _) => RsaVerifier::from_public_key_pem(text.trim().as_bytes())
            .map_err(|e| problems.push(format!("alipay.alipay_public_key: {e}")))
            .ok(),
        (None, Some(path)) => match std::fs::read(path) {
            Ok(bytes) => RsaVerifier::from_public_key_pem(&bytes)
                .map_err(|e| problems.push(format!("alipay.alipay_public_key_path: {e}")))
                .ok(),
            Err(e) => {
                problems.push(format!(
                    "alipay.alipay_public_key_path: cannot read {}: {e}",
                    path.display()
                ));
                None
            }
        },
        (None, None) => {
            problems.push(
                "alipay.alipay_public_key: missing (Alipay's public key, inline or as alipay.alipay_public_key_path)"
                    .into(),
            );
            None
        }
    };
    match (app_id, signer, verifier) {
        (Some(app_id), Some(signer), Some(verifier)) if problems.is_empty() => {
            let settings = AlipaySettings {
                app_id,
                seller_id: a.seller_id.clone(),
                notify_url: a.notify_url.clone(),
                return_url: a.return_url.clone(),
                gateway: a.gateway.clone(),
            };
            let exec = Executor::new(
                "alipay",
                Executor::default_client(),
                ExecutorConfig::new(cfg.providers.timeout, cfg.providers.max_concurrency),
            );
            AlipaySetup::Ready(Arc::new(Alipay::new(
                settings, signer, verifier, exec, clock,
            )))
        }
        _ => AlipaySetup::Unusable(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/vectors")
                .join(name),
        )
        .expect("fixture")
    }

    fn bare(pem: &str) -> String {
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    #[test]
    fn private_keys_load_as_pem_or_bare_base64_of_either_form() {
        let pkcs8 = fixture("merchant_rsa2048_private_pkcs8.pem");
        let pkcs1 = fixture("merchant_rsa2048_private_pkcs1.pem");
        let message = b"payd";
        let reference = load_private_key(&pkcs8).unwrap().sign_base64(message);
        for text in [pkcs1.clone(), bare(&pkcs8), bare(&pkcs1)] {
            let signer = load_private_key(&text).unwrap();
            // RSA PKCS#1 v1.5 is deterministic: the same key signs the same bytes.
            assert_eq!(signer.sign_base64(message), reference);
        }
        assert!(load_private_key("not a key!").is_err());
        assert!(load_private_key("QUJD").is_err());
        // The public key is no private key, and errors never echo the input.
        let public = fixture("merchant_rsa2048_public.pem");
        let err = load_private_key(&bare(&public)).unwrap_err().to_string();
        assert!(!err.contains(&bare(&public)[..20]), "{err}");
    }
}
