//! WeChat Pay: API v3 (JSON, RSA-signed, AES-GCM callbacks) and the legacy API v2
//! (XML, MD5/HMAC-SHA256). Pure signing and encryption live in `crypto` and `xml`;
//! `v3` is the adapter; `keys` holds the verification keys of both key modes.

use std::path::Path;
use std::sync::Arc;

use payd_actors::clock::SharedClock;
use payd_actors::model::Timestamp;

use crate::config::{Config, WechatApiVersion};
use crate::providers::executor::{Executor, ExecutorConfig};

pub mod bill;
pub mod crypto;
pub mod keys;
pub mod v2;
pub mod v3;
pub mod xml;

use crypto::{MerchantSigner, RsaVerifier};
use keys::WechatKeys;
use v2::{WechatV2, WechatV2Settings};
use v3::{WechatV3, WechatV3Settings};

pub use crate::providers::rejections::RejectReason;

/// Beijing wall time with a fixed +08:00 offset, whatever the host's time zone.
pub fn beijing_rfc3339(t: Timestamp) -> String {
    let secs = t.ms().div_euclid(1000);
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    let dt = time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+08:00",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(Timestamp((dt.unix_timestamp_nanos() / 1_000_000) as i64))
}

/// What `check-config` and start-up learn about the WeChat configuration.
pub enum WechatSetup {
    /// No WeChat key is configured at all.
    Absent,
    /// Configured but unusable: each line names a key and what is wrong.
    Unusable(Vec<String>),
    V3(Arc<WechatV3>),
    V2(Arc<WechatV2>),
}

fn read(path: &Path, key: &str, problems: &mut Vec<String>) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            problems.push(format!("{key}: cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Loads every WeChat key and certificate the configuration names.
pub fn setup(cfg: &Config, clock: SharedClock) -> WechatSetup {
    let w = &cfg.wechat;
    let any = w.app_id.is_some()
        || w.mch_id.is_some()
        || w.api_v3_key.is_some()
        || w.api_key.is_some()
        || w.private_key_path.is_some();
    if !any {
        return WechatSetup::Absent;
    }
    let mut problems = Vec::new();
    if w.api_version == WechatApiVersion::V2 {
        return setup_v2(cfg, clock);
    }
    let mut need = |v: Option<String>, key: &str| {
        if v.is_none() {
            problems.push(format!("{key}: missing"));
        }
        v
    };
    let appid = need(w.app_id.clone(), "wechat.app_id");
    let mchid = need(w.mch_id.clone(), "wechat.mch_id");
    let serial = need(w.cert_serial_no.clone(), "wechat.cert_serial_no");
    let api_v3_key = need(
        w.api_v3_key.as_ref().map(|s| s.expose().to_string()),
        "wechat.api_v3_key",
    );
    if let Some(k) = &api_v3_key
        && k.len() != 32
    {
        problems.push("wechat.api_v3_key: must be 32 bytes".into());
    }
    let signer = match &w.private_key_path {
        None => {
            problems.push("wechat.private_key_path: missing".into());
            None
        }
        Some(p) => read(p, "wechat.private_key_path", &mut problems).and_then(|pem| {
            MerchantSigner::from_pem(&pem)
                .map_err(|e| problems.push(format!("wechat.private_key_path: {e}")))
                .ok()
        }),
    };
    let public_key = match (&w.platform_public_key_path, &w.platform_public_key_id) {
        (Some(p), Some(id)) => {
            read(p, "wechat.platform_public_key_path", &mut problems).and_then(|pem| {
                RsaVerifier::from_public_key_pem(&pem)
                    .map_err(|e| problems.push(format!("wechat.platform_public_key_path: {e}")))
                    .ok()
                    .map(|k| (id.clone(), k))
            })
        }
        (Some(_), None) => {
            problems.push(
                "wechat.platform_public_key_id: missing (the PUB_KEY_ID_… of the public key)"
                    .into(),
            );
            None
        }
        (None, Some(_)) => {
            problems.push("wechat.platform_public_key_path: missing".into());
            None
        }
        (None, None) => None,
    };
    if public_key.is_none() && w.platform_cert_dir.is_none() && problems.is_empty() {
        problems.push(
            "wechat.platform_public_key_path / wechat.platform_cert_dir: configure the WeChat Pay public key, a platform certificate directory, or both".into(),
        );
    }
    let keys = WechatKeys::new(public_key, w.platform_cert_dir.clone());
    for p in keys.load_cached() {
        problems.push(format!("wechat.platform_cert_dir: {p}"));
    }
    match (appid, mchid, serial, api_v3_key, signer) {
        (Some(appid), Some(mchid), Some(serial_no), Some(key), Some(signer))
            if problems.is_empty() =>
        {
            let settings = WechatV3Settings {
                mchid,
                appid,
                serial_no,
                api_v3_key: key.into_bytes(),
                notify_url: w.notify_url.clone(),
                refund_notify_url: format!("{}/api/v1/notify/wechat/refund", cfg.server.base_url),
                base_url: w.base_url.trim_end_matches('/').to_string(),
            };
            let exec = Executor::new(
                "wechat",
                Executor::default_client(),
                ExecutorConfig::new(cfg.providers.timeout, cfg.providers.max_concurrency),
            );
            WechatSetup::V3(Arc::new(WechatV3::new(
                settings,
                signer,
                Arc::new(keys),
                exec,
                clock,
            )))
        }
        _ => WechatSetup::Unusable(problems),
    }
}

/// API v2: the app id, merchant id and API key; the merchant certificate and key
/// (PEM) for refunds over mutual TLS.
fn setup_v2(cfg: &Config, clock: SharedClock) -> WechatSetup {
    let w = &cfg.wechat;
    let mut problems = Vec::new();
    let mut need = |v: Option<String>, key: &str| {
        if v.is_none() {
            problems.push(format!("{key}: missing"));
        }
        v
    };
    let appid = need(w.app_id.clone(), "wechat.app_id");
    let mch_id = need(w.mch_id.clone(), "wechat.mch_id");
    let api_key = need(
        w.api_key.as_ref().map(|s| s.expose().to_string()),
        "wechat.api_key",
    );
    if api_key.as_ref().is_some_and(|k| k.len() != 32) {
        problems.push("wechat.api_key: the v2 API key is 32 characters".into());
    }
    let exec_config = ExecutorConfig::new(cfg.providers.timeout, cfg.providers.max_concurrency);
    let refund_exec = match (&w.cert_path, &w.private_key_path) {
        (Some(cert), Some(key)) => {
            let pem = read(cert, "wechat.cert_path", &mut problems).zip(read(
                key,
                "wechat.private_key_path",
                &mut problems,
            ));
            pem.and_then(|(mut cert_pem, key_pem)| {
                cert_pem.push(b'\n');
                cert_pem.extend_from_slice(&key_pem);
                let client = reqwest::Identity::from_pem(&cert_pem)
                    .and_then(|id| {
                        reqwest::Client::builder()
                            .identity(id)
                            .redirect(reqwest::redirect::Policy::none())
                            .build()
                    })
                    .map_err(|e| problems.push(format!("wechat.cert_path: merchant certificate or key unusable for TLS: {e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())))
                    .ok()?;
                Some(Executor::new("wechat_v2_refund", client, exec_config.clone()))
            })
        }
        (Some(_), None) => {
            problems.push(
                "wechat.private_key_path: missing (the key of wechat.cert_path, for refunds)"
                    .into(),
            );
            None
        }
        _ => None,
    };
    match (appid, mch_id, api_key) {
        (Some(appid), Some(mch_id), Some(api_key)) if problems.is_empty() => {
            let settings = WechatV2Settings {
                appid,
                mch_id,
                api_key,
                notify_url: w.notify_url.clone(),
                refund_notify_url: format!("{}/api/v1/notify/wechat/refund", cfg.server.base_url),
                base_url: w.base_url.trim_end_matches('/').to_string(),
            };
            let exec = Executor::new("wechat", Executor::default_client(), exec_config);
            WechatSetup::V2(Arc::new(WechatV2::new(settings, exec, refund_exec, clock)))
        }
        _ => WechatSetup::Unusable(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beijing_time_is_fixed_plus_eight() {
        // 2023-11-14T22:13:20Z
        assert_eq!(
            beijing_rfc3339(Timestamp(1_700_000_000_000)),
            "2023-11-15T06:13:20+08:00"
        );
        assert_eq!(
            parse_rfc3339("2023-11-15T06:13:20+08:00"),
            Some(Timestamp(1_700_000_000_000))
        );
    }
}
