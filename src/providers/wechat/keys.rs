//! The keys WeChat Pay signs with, in both modes at once: the "WeChat Pay public key"
//! (`PUB_KEY_ID_…`) and platform certificates (downloaded from `/v3/certificates`,
//! decrypted with the APIv3 key, cached on disk). During WeChat's migration from
//! certificates to public keys callbacks arrive signed either way, so both verify.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::crypto::{PlatformCertificate, RsaVerifier};

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyVerdict {
    Valid,
    BadSignature,
    UnknownSerial,
}

pub struct WechatKeys {
    public_key: Option<(String, RsaVerifier)>,
    certificates: RwLock<HashMap<String, PlatformCertificate>>,
    /// Certificate mode is on when a cache directory is configured.
    cert_dir: Option<PathBuf>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

/// An unknown serial triggers at most one download per this interval.
const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(60);

impl WechatKeys {
    pub fn new(public_key: Option<(String, RsaVerifier)>, cert_dir: Option<PathBuf>) -> Self {
        WechatKeys {
            public_key,
            certificates: RwLock::new(HashMap::new()),
            cert_dir,
            last_refresh: tokio::sync::Mutex::new(None),
        }
    }

    pub fn public_key_id(&self) -> Option<&str> {
        self.public_key.as_ref().map(|(id, _)| id.as_str())
    }

    pub fn certificate_mode(&self) -> bool {
        self.cert_dir.is_some()
    }

    pub fn certificate_serials(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .certificates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Loads the certificates cached on disk (`*.pem` in the cache directory).
    /// Returns how many were loaded; unreadable files are reported, not fatal.
    pub fn load_cached(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(dir) = &self.cert_dir else {
            return problems;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return problems;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pem") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| PlatformCertificate::from_pem(&pem).map_err(|e| e.to_string()))
            {
                Ok(cert) => self.insert(cert),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        problems
    }

    /// Adds a certificate (and caches it on disk in certificate mode).
    pub fn add_certificate(&self, pem: &[u8], cert: PlatformCertificate) {
        if let Some(dir) = &self.cert_dir {
            let file = dir.join(format!("{}.pem", cert.serial_no.to_ascii_uppercase()));
            if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&file, pem)) {
                tracing::warn!(error = %e, path = %file.display(), "could not cache a WeChat platform certificate");
            }
        }
        self.insert(cert);
    }

    fn insert(&self, cert: PlatformCertificate) {
        self.certificates
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cert.serial_no.to_ascii_uppercase(), cert);
    }

    /// Verifies `signature` over `message` with the key `serial` names, without any
    /// download. Certificates outside their validity at `now_unix` do not count.
    pub fn verify_known(
        &self,
        serial: &str,
        message: &[u8],
        signature: &str,
        now_unix: i64,
    ) -> KeyVerdict {
        if let Some((id, key)) = &self.public_key
            && id == serial
        {
            return if key.verify_base64(message, signature) {
                KeyVerdict::Valid
            } else {
                KeyVerdict::BadSignature
            };
        }
        let certs = self.certificates.read().unwrap_or_else(|p| p.into_inner());
        match certs.get(&serial.to_ascii_uppercase()) {
            Some(c) if c.not_before_unix <= now_unix && now_unix <= c.not_after_unix => {
                if c.verifier.verify_base64(message, signature) {
                    KeyVerdict::Valid
                } else {
                    KeyVerdict::BadSignature
                }
            }
            _ => KeyVerdict::UnknownSerial,
        }
    }

    /// Lets the next unknown serial download at once (an operator who knows WeChat
    /// just rotated; tests).
    pub async fn reset_refresh_limit(&self) {
        *self.last_refresh.lock().await = None;
    }

    /// Whether an unknown serial may trigger a download now (rate-limited), and if so
    /// records that one is happening.
    pub async fn may_refresh(&self) -> bool {
        if !self.certificate_mode() {
            return false;
        }
        let mut last = self.last_refresh.lock().await;
        match *last {
            Some(t) if t.elapsed() < REFRESH_MIN_INTERVAL => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }
}
