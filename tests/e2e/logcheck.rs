//! Every log line the end-to-end suite produces passes through one process-wide
//! subscriber that looks in it for every secret a test has handed payd: the
//! configured JWT secret and provider keys, and every token minted. A line that
//! holds one is remembered (which secret, never the line), and `TestApp::stop`
//! fails the test that finds it.
//!
//! Global rather than per test: `tracing`'s scoped subscribers miss events from
//! callsites whose interest other threads cached first, and tests run in parallel.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

static SECRETS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
static LEAKS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LINES: AtomicU64 = AtomicU64::new(0);

/// Installs the checking subscriber (once): everything at debug, payd at trace.
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = EnvFilter::new("debug,payd=trace,payd_actors=trace,payd_storage=trace");
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(Checker)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Names a secret that must never be logged (`what` says which, in a failure).
pub(crate) fn secret(what: &str, value: &str) {
    if value.len() < 8 {
        return;
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    if !secrets.iter().any(|(_, v)| v == value) {
        secrets.push((what.to_string(), value.to_string()));
    }
}

/// Log lines written so far by the whole suite.
pub(crate) fn lines() -> u64 {
    LINES.load(Ordering::SeqCst)
}

/// Fails if any line so far held a secret.
pub(crate) fn assert_clean() {
    let leaks = LEAKS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(leaks.is_empty(), "secrets reached the logs: {leaks:?}");
}

struct Checker;

/// One event's formatted line, checked when the subscriber is done with it.
struct Line(Vec<u8>);

impl<'a> MakeWriter<'a> for Checker {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        LINES.fetch_add(1, Ordering::SeqCst);
        let line = String::from_utf8_lossy(&self.0);
        let secrets = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
        for (what, value) in secrets.iter() {
            if line.contains(value.as_str()) {
                LEAKS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(what.clone());
            }
        }
    }
}

/// Every secret in a test's configuration.
pub(crate) fn config_secrets(cfg: &payd::config::Config) {
    secret("auth.jwt_secret", cfg.auth.jwt_secret.expose());
    let optional = [
        ("stripe.secret_key", &cfg.stripe.secret_key),
        ("stripe.webhook_secret", &cfg.stripe.webhook_secret),
        ("wechat.api_v3_key", &cfg.wechat.api_v3_key),
        ("wechat.api_key", &cfg.wechat.api_key),
        ("alipay.private_key", &cfg.alipay.private_key),
        ("webhooks.secret", &cfg.webhooks.secret),
    ];
    for (what, value) in optional {
        if let Some(s) = value {
            secret(what, s.expose());
        }
    }
}
