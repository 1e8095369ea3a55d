//! The expiry storm: `n` pending mock orders whose expiry deadline is the same
//! instant, written into a data directory through payd's own order-creation code
//! (in this process, before payd starts), then payd started on it. From that
//! instant on, create-order load runs until the last of those orders has left
//! `pending`, watched through `/metrics` (`payd_order_transitions_total`, counted
//! after each transition is durable).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use payd::providers::mock::{MOCK_METHODS, MockProvider};
use payd_actors::clock::SystemClock;
use payd_actors::model::{
    Order, OrderStatus, PackageSnapshot, PaymentMethod, ProviderKind, Timer, Timers, Timestamp,
};
use payd_actors::order::Deps;
use payd_actors::order::create::{Created, create};
use payd_actors::order::machine::{LatePaymentPolicy, Policy};
use payd_actors::provider::Providers;
use payd_storage::Store;

use crate::load::{Conn, Work};
use crate::report::Sample;

/// Concurrent order creations while filling (group commit does the rest).
const FILL_TASKS: usize = 256;

/// Writes `count` pending mock orders, trade opened, all expiring at `expire_at`,
/// into the store at `data` — the orders `POST /api/v1/orders` would have made
/// (same order-number scheme, same timers, same create command), minus the first
/// status query, which would fall after the expiry. Returns how long the orders
/// took (opening and closing the store aside).
pub(crate) async fn fill(
    config: &payd::config::Config,
    data: &Path,
    count: u64,
    users: usize,
    expire_at: Timestamp,
) -> anyhow::Result<Duration> {
    let store = Store::open(payd::app::store_options(data))
        .with_context(|| format!("opening {}", data.display()))?;
    let seed = config.packages.first().context("no package configured")?;
    let package = payd::app::package_from_seed(seed)?;
    payd_actors::commands::seed_packages(&store, vec![package.clone()]).await?;
    let mut providers = Providers::new();
    providers.register(
        Arc::new(MockProvider::new(
            store.clone(),
            config.server.base_url.clone(),
        )),
        &MOCK_METHODS,
    );
    let deps = Arc::new(Deps {
        store: store.clone(),
        providers,
        clock: Arc::new(SystemClock),
        policy: Policy {
            query_interval_ms: config.payment.query_interval.as_millis() as i64,
            query_retry_max: config.payment.query_retry_max,
            qr_code_expire_ms: config.payment.qr_code_expire.as_millis() as i64,
            retry_base_ms: (config.providers.timeout + Duration::from_secs(1)).as_millis() as i64,
            late_payment: LatePaymentPolicy::Grant,
        },
        tiers: Arc::new(Vec::new()),
        provider_timeout: config.providers.timeout,
        passivate_after: config.actors.passivate_after,
        restart_budget: config.actors.restart_budget,
        observers: Vec::new(),
        webhooks: false,
    });
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(FILL_TASKS);
    for _ in 0..FILL_TASKS {
        let (deps, next, package) = (deps.clone(), next.clone(), package.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                let now = Timestamp(unix_ms());
                let mut order =
                    Order::for_tests(PackageSnapshot::from(&package), package.amount_minor, now);
                order.order_no = payd::order_no::new_order_no(now);
                order.user_id = format!("bench-user-{}", i as usize % users);
                order.package_id = package.id.clone();
                order.currency = package.currency.clone();
                order.payment_method = PaymentMethod::Mock;
                order.provider = ProviderKind::Mock;
                order.expire_at = expire_at;
                order.timers = Timers {
                    expire: Some(Timer {
                        at: expire_at,
                        generation: 2,
                    }),
                    ..Timers::default()
                };
                order.timer_generation = 2;
                match create(&deps, order, None).await? {
                    Created::Opened(o) if o.trade_opened && o.status == OrderStatus::Pending => {}
                    other => bail!("a storm order was not stored opened: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("a fill task panicked")??;
    }
    let took = t0.elapsed();
    drop(deps);
    store.shutdown().await;
    drop(store);
    Ok(took)
}

pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `Instant` at which the wall clock reads `at`.
pub(crate) fn instant_of(at: Timestamp) -> Instant {
    let now = unix_ms();
    if at.0 >= now {
        Instant::now() + Duration::from_millis((at.0 - now) as u64)
    } else {
        Instant::now()
            .checked_sub(Duration::from_millis((now - at.0) as u64))
            .unwrap_or_else(Instant::now)
    }
}

/// Orders that have left `pending` for a final status other than paid (expired,
/// closed, failed, cancelled), summed over `payd_order_transitions_total`.
pub(crate) fn settled_unpaid(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("payd_order_transitions_total{"))
        .filter(|l| l.contains("from=\"pending\"") && !l.contains("to=\"paid\""))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Runs `inner` until `stop` is set.
pub(crate) struct Until<W> {
    pub(crate) inner: W,
    pub(crate) stop: Arc<AtomicBool>,
}

impl<W: Work> Work for Until<W> {
    async fn step(&self, conn: &mut Conn, worker: usize, seq: u64) -> anyhow::Result<bool> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        self.inner.step(conn, worker, seq).await
    }
}

/// How the storm went.
#[derive(Debug, Clone, Default)]
pub(crate) struct Storm {
    pub(crate) orders: u64,
    /// Filling the data directory (untimed for the figure).
    pub(crate) fill_secs: f64,
    /// payd's start on the filled directory: spawn → `/readyz` 200.
    pub(crate) start_secs: f64,
    /// From the expiry instant until the first and half of the orders had settled.
    pub(crate) first_secs: f64,
    pub(crate) half_secs: f64,
    /// … and until the last one had (or the time given up after).
    pub(crate) secs: f64,
    pub(crate) settled: u64,
    /// Create order without the storm, just before it (same payd, same run).
    pub(crate) calm: Sample,
    /// Create order during the storm.
    pub(crate) during: Sample,
    /// (seconds after the expiry instant, orders settled), one a second.
    pub(crate) progress: Vec<(f64, u64)>,
}

impl Storm {
    pub(crate) fn finished(&self) -> bool {
        self.settled >= self.orders
    }

    pub(crate) fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.settled as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Polls `/metrics` every `every` until `want` orders have settled or `give_up`
/// passes; returns (first settled, half settled, done or given up, settled, progress),
/// times measured from `from`.
pub(crate) async fn watch(
    addr: SocketAddr,
    from: Instant,
    want: u64,
    every: Duration,
    give_up: Duration,
) -> anyhow::Result<(f64, f64, f64, u64, Vec<(f64, u64)>)> {
    let mut conn = Conn::open(addr).await?;
    let (mut first, mut half) = (None, None);
    let mut progress = Vec::new();
    let mut next_progress = 1.0;
    loop {
        let (status, body) = conn.send(Method::GET, "/metrics", &[], None).await?;
        if status != StatusCode::OK {
            bail!("/metrics answered {status}");
        }
        let settled = settled_unpaid(&String::from_utf8_lossy(&body));
        let at = from.elapsed().as_secs_f64();
        if settled > 0 && first.is_none() {
            first = Some(at);
        }
        if settled * 2 >= want && half.is_none() {
            half = Some(at);
        }
        if at >= next_progress {
            progress.push(((at * 10.0).round() / 10.0, settled));
            next_progress = at.floor() + 1.0;
        }
        if settled >= want || from.elapsed() >= give_up {
            progress.push(((at * 10.0).round() / 10.0, settled));
            return Ok((
                first.unwrap_or(at),
                half.unwrap_or(at),
                at,
                settled,
                progress,
            ));
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_orders_are_read_from_the_transition_counters() {
        let text = "\
# TYPE payd_order_transitions_total counter
payd_order_transitions_total{from=\"pending\",to=\"expired\",method=\"mock\"} 1500
payd_order_transitions_total{from=\"pending\",to=\"closed\",method=\"alipay\"} 2
payd_order_transitions_total{from=\"pending\",to=\"paid\",method=\"mock\"} 70
payd_order_transitions_total{from=\"paid\",to=\"refunded\",method=\"mock\"} 9
payd_orders_created_total{method=\"mock\",currency=\"CNY\"} 100000
";
        assert_eq!(settled_unpaid(text), 1502);
        assert_eq!(settled_unpaid(""), 0);
    }
}
