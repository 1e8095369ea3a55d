//! Glue between the monitor (payd-actors) and the parts of the binary that feed it:
//! its settings from the configuration, and the news of provider calls.
//!
//! Provider executors are built deep inside each adapter's setup, long before any
//! application state exists, so they report through this module rather than
//! through a handle threaded into every adapter: each running application
//! registers its monitor here, and every executor's call outcome reaches every
//! registered monitor (and the metrics). A process runs one payd; the test suite,
//! which runs several side by side, tolerates that their monitors hear each other's
//! provider calls.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use payd_actors::monitor::{Fact, MonitorHandle, MonitorSettings};

use crate::config::Config;

static LISTENERS: Mutex<Vec<Weak<MonitorHandle>>> = Mutex::new(Vec::new());

/// The monitor's thresholds from `monitor.*`; the burst and rapid-payment rules
/// keep their documented defaults.
pub fn settings(config: &Config) -> MonitorSettings {
    let m = &config.monitor;
    MonitorSettings {
        failure_rate_alert: m.failure_rate_alert,
        refund_rate_alert: m.refund_rate_alert,
        min_volume: m.min_volume,
        large_transaction: m.large_transaction.clone(),
        window: m.window,
        ..MonitorSettings::default()
    }
}

/// Makes `handle` hear provider calls for as long as it is alive.
pub fn listen(handle: &Arc<MonitorHandle>) {
    let mut listeners = LISTENERS.lock().unwrap_or_else(|p| p.into_inner());
    listeners.retain(|w| w.strong_count() > 0);
    listeners.push(Arc::downgrade(handle));
}

fn tell(fact: &Fact) {
    let listeners = LISTENERS.lock().unwrap_or_else(|p| p.into_inner());
    for handle in listeners.iter().filter_map(Weak::upgrade) {
        handle.tell(fact.clone());
    }
}

/// One attempt of an outbound provider call: `ok` is false for a transport error
/// or a 5xx.
pub fn provider_call(provider: &'static str, op: &'static str, ok: bool, elapsed: Duration) {
    crate::metrics::provider_call(provider, op, ok, elapsed);
    tell(&Fact::ProviderCall {
        provider,
        ok,
        latency_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    });
}

/// A provider's circuit breaker opened or closed.
pub fn breaker(provider: &'static str, open: bool) {
    crate::metrics::circuit(provider, open);
    tell(&Fact::Breaker { provider, open });
}

/// Every currency payd may see: the packages', and those with limits configured.
/// They label the per-currency metrics registered at start-up.
pub fn known_currencies(config: &Config) -> Vec<String> {
    let mut currencies: Vec<String> = config
        .packages
        .iter()
        .map(|p| p.currency.clone())
        .chain(config.payment.max_order_amount.keys().cloned())
        .chain(config.monitor.large_transaction.keys().cloned())
        .collect();
    currencies.sort();
    currencies.dedup();
    currencies
}

/// Starts the monitor actor (ticking every second, sampling `store`, counting fired
/// alerts in the metrics) and registers it for provider-call news.
pub async fn start(
    config: &Config,
    clock: payd_actors::clock::SharedClock,
    store: payd_storage::Store,
) -> anyhow::Result<Arc<MonitorHandle>> {
    use anyhow::Context;
    let (actor, _) = ractor::Actor::spawn(
        None,
        payd_actors::monitor::Monitor,
        payd_actors::monitor::MonitorArgs {
            settings: settings(config),
            clock,
            store: Some(store),
            tick: Duration::from_secs(1),
            sink: Some(Arc::new(crate::metrics::AlertMetrics)),
        },
    )
    .await
    .context("starting the monitor")?;
    let handle = Arc::new(MonitorHandle::new(actor));
    listen(&handle);
    Ok(handle)
}

/// Tells `monitor` about every rejected callback (the rejection log calls it).
pub fn rejection_observer(
    monitor: &Arc<MonitorHandle>,
) -> Arc<dyn Fn(&crate::providers::rejections::Rejected) + Send + Sync> {
    let monitor = monitor.clone();
    Arc::new(move |r| {
        monitor.tell(Fact::CallbackRejected {
            provider: r.provider,
            reason: r.reason,
        })
    })
}
