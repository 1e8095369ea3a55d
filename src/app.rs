//! Wiring: open storage, seed packages, start the actors, bind HTTP — and stop it all
//! in order (HTTP first, then the actors, then storage).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use payd_actors::clock::{SharedClock, SystemClock};
use payd_actors::commands;
use payd_actors::hub::{Hub, HubConfig, HubObserver};
use payd_actors::model::{Currency, Package, PackageKind};
use payd_actors::monitor::MonitorObserver;
use payd_actors::order::machine::{LatePaymentPolicy, Policy};
use payd_actors::order::supervisor::{OrderSupervisor, SupervisorMsg, SupervisorStats};
use payd_actors::order::{Deps, OrderObserver};
use payd_actors::provider::Providers;
use payd_actors::scheduler::{Scheduler, SchedulerArgs, SchedulerConfig, SchedulerMsg};
use payd_actors::tables::DOMAIN_TABLES;
use payd_storage::{Store, StoreOptions};
use ractor::{Actor, ActorRef};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::Jwt;
use crate::config::{self, Config, LatePayment};
use crate::http::ws::LiveSettings;
use crate::http::{self, AppState};
use crate::providers::alipay::{self, AlipaySetup};
use crate::providers::mock::{MOCK_METHODS, MockProvider};
use crate::providers::rejections::RejectionLog;
use crate::providers::stripe::{self, StripeSetup};
use crate::providers::wechat::{self, WechatSetup};
use crate::retention;
use crate::webhooks::{self, WebhookSettings};
use payd_actors::model::PaymentMethod;

pub struct Application {
    addr: SocketAddr,
    state: AppState,
    scheduler: ActorRef<SchedulerMsg>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// The rate-limit sweeper and the separate metrics listener.
    watch: Vec<JoinHandle<()>>,
    metrics_addr: Option<SocketAddr>,
}

pub fn package_from_seed(seed: &config::PackageSeed) -> anyhow::Result<Package> {
    Ok(Package {
        id: seed.id.clone(),
        kind: match seed.kind {
            config::PackageKind::Membership => PackageKind::Membership,
            config::PackageKind::Points => PackageKind::Points,
        },
        name: seed.name.clone(),
        description: seed.description.clone(),
        amount_minor: seed.amount,
        currency: Currency::parse(&seed.currency)
            .with_context(|| format!("package {}: bad currency", seed.id))?,
        membership_type: seed.membership_type.clone(),
        validity_days: seed.validity_days,
        queries_count: seed.queries_count,
        points: seed.points,
        bonus_points: seed.bonus_points,
        is_active: seed.is_active,
        sort_order: seed.sort_order,
    })
}

/// Every table payd keeps: the domain's and the mock provider's. Backups cover
/// exactly these.
/// How payd opens its database at `path`: every table, and the migrations that bring
/// an older data format up to this build's.
pub fn store_options(path: &std::path::Path) -> StoreOptions {
    let mut opts = StoreOptions::new(path, store_tables());
    opts.migrations = payd_actors::migrations::migrations();
    opts
}

pub fn store_tables() -> Vec<&'static str> {
    let mut tables: Vec<&'static str> = DOMAIN_TABLES.to_vec();
    tables.push(crate::providers::mock::MOCK_TRADES.name());
    tables
}

fn policy(cfg: &Config) -> Policy {
    Policy {
        query_interval_ms: cfg.payment.query_interval.as_millis() as i64,
        query_retry_max: cfg.payment.query_retry_max,
        qr_code_expire_ms: cfg.payment.qr_code_expire.as_millis() as i64,
        retry_base_ms: (cfg.providers.timeout + Duration::from_secs(1)).as_millis() as i64,
        late_payment: match cfg.payment.late_payment {
            LatePayment::Grant => LatePaymentPolicy::Grant,
            LatePayment::Refund => LatePaymentPolicy::Refund,
        },
    }
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(
        config: Config,
        clock: SharedClock,
    ) -> anyhow::Result<Application> {
        let config = Arc::new(config);
        crate::security::check_key_files(&config)?;
        crate::metrics::init(&crate::monitor::known_currencies(&config));
        let mut opts = store_options(&config.storage.path);
        opts.cache_size_bytes = config.storage.cache_size_bytes;
        opts.max_journal_size_bytes = config.storage.max_journal_size_bytes;
        opts.commit_observer = Some(crate::metrics::commit_observer());
        let store = Store::open(opts)
            .with_context(|| format!("opening storage at {}", config.storage.path.display()))?;

        let seeds = config
            .packages
            .iter()
            .map(package_from_seed)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let inserted = commands::seed_packages(&store, seeds)
            .await
            .context("seeding packages")?;
        if inserted > 0 {
            tracing::info!(inserted, "packages seeded from the configuration");
        }

        let mut providers = Providers::new();
        let (wechat, wechat_v2) = match wechat::setup(&config, clock.clone()) {
            WechatSetup::Absent => {
                tracing::info!("WeChat Pay is not configured");
                (None, None)
            }
            WechatSetup::Unusable(problems) => {
                tracing::error!(problems = %problems.join("; "),
                    "WeChat Pay is disabled: its configuration is incomplete");
                (None, None)
            }
            WechatSetup::V3(w) => {
                tracing::info!(mchid = w.mchid(), "WeChat Pay v3 configured");
                (Some(w), None)
            }
            WechatSetup::V2(w) => {
                tracing::info!(
                    mch_id = w.mch_id(),
                    refunds = w.refunds_enabled(),
                    "WeChat Pay v2 configured"
                );
                (None, Some(w))
            }
        };
        let mock = if config.payment.mock_mode {
            let mock = Arc::new(MockProvider::new(
                store.clone(),
                config.server.base_url.clone(),
            ));
            providers.register(mock.clone(), &MOCK_METHODS);
            tracing::warn!("mock mode: every payment method is served by the mock provider");
            Some(mock)
        } else {
            None
        };
        // Orders placed earlier with a real provider are still queried and closed
        // there in mock mode too; only new orders go to the mock.
        if let Some(w) = &wechat {
            let methods: &[PaymentMethod] = if config.payment.mock_mode {
                &[]
            } else {
                &[PaymentMethod::WechatNative]
            };
            providers.register(w.clone(), methods);
        }
        if let Some(w) = &wechat_v2 {
            let methods: &[PaymentMethod] = if config.payment.mock_mode {
                &[]
            } else {
                &[PaymentMethod::WechatNative]
            };
            providers.register(w.clone(), methods);
        }
        let stripe = match stripe::setup(&config, clock.clone()) {
            StripeSetup::Absent => {
                tracing::info!("Stripe is not configured");
                None
            }
            StripeSetup::Unusable(problems) => {
                tracing::error!(problems = %problems.join("; "),
                    "Stripe is disabled: its configuration is incomplete");
                None
            }
            StripeSetup::Ready(s) => {
                tracing::info!(
                    api_version = s.api_version(),
                    test_mode = s.test_mode(),
                    "Stripe configured"
                );
                // Mock mode wins for new orders; Stripe's own orders are still served.
                let methods: &[PaymentMethod] = if config.payment.mock_mode {
                    &[]
                } else {
                    &[PaymentMethod::StripeCheckout]
                };
                providers.register(s.clone(), methods);
                Some(s)
            }
        };
        let alipay = match alipay::setup(&config, clock.clone()) {
            AlipaySetup::Absent => {
                tracing::info!("Alipay is not configured");
                None
            }
            AlipaySetup::Unusable(problems) => {
                tracing::error!(problems = %problems.join("; "),
                    "Alipay is disabled: its configuration is incomplete");
                None
            }
            AlipaySetup::Ready(a) => {
                tracing::info!(app_id = a.app_id(), "Alipay configured");
                let methods: &[PaymentMethod] = if config.payment.mock_mode {
                    &[]
                } else {
                    &[PaymentMethod::AlipayQr, PaymentMethod::AlipayPage]
                };
                providers.register(a.clone(), methods);
                Some(a)
            }
        };
        let monitor = crate::monitor::start(&config, clock.clone(), store.clone()).await?;
        let watchers: [Arc<dyn OrderObserver>; 2] = [
            Arc::new(MonitorObserver::new((*monitor).clone())),
            Arc::new(crate::metrics::OrderMetrics {
                large_transaction: config.monitor.large_transaction.clone(),
            }),
        ];
        let protection = Arc::new(crate::http::guard::Protection::new(&config));
        let mut watch = vec![crate::http::guard::spawn_sweeper(protection.clone())];
        let certificate_refresh = wechat
            .clone()
            .filter(|w| w.keys.certificate_mode())
            .map(|w| tokio::spawn(refresh_wechat_certificates(w)));

        let (hub, _) = Actor::spawn(None, Hub, HubConfig::default())
            .await
            .context("starting the live-update hub")?;
        let webhook_settings = WebhookSettings::from_config(&config.webhooks);
        let webhook_nudge = Arc::new(tokio::sync::Notify::new());
        let mut deps = Deps {
            store: store.clone(),
            providers: providers.clone(),
            clock: clock.clone(),
            policy: policy(&config),
            tiers: Arc::new(config.membership.tiers.clone()),
            provider_timeout: config.providers.timeout,
            passivate_after: config.actors.passivate_after,
            restart_budget: config.actors.restart_budget,
            webhooks: webhook_settings.is_some(),
            observers: [
                vec![Arc::new(HubObserver::new(hub.clone())) as Arc<dyn OrderObserver>],
                watchers.to_vec(),
            ]
            .concat(),
        };
        if webhook_settings.is_some() {
            deps.observers
                .push(Arc::new(webhooks::Nudge(webhook_nudge.clone())));
        }
        let deps = Arc::new(deps);
        let (supervisor, _) = Actor::spawn(None, OrderSupervisor, deps.clone())
            .await
            .context("starting the order supervisor")?;
        let (scheduler, _) = Actor::spawn(
            None,
            Scheduler,
            SchedulerArgs {
                store: store.clone(),
                clock: clock.clone(),
                supervisor: supervisor.clone(),
                config: SchedulerConfig::default(),
            },
        )
        .await
        .context("starting the scheduler")?;

        let mut background: Vec<JoinHandle<()>> = certificate_refresh.into_iter().collect();
        background.push(retention::spawn(
            store.clone(),
            clock.clone(),
            config.retention.clone(),
        ));
        match webhook_settings {
            Some(settings) => background.push(webhooks::spawn(
                store.clone(),
                clock.clone(),
                settings,
                webhook_nudge,
            )),
            None => tracing::info!("webhooks.url is not set: no events for the host application"),
        }

        let mut sources: Vec<(
            payd_actors::model::ProviderKind,
            Arc<dyn crate::providers::statement::StatementSource>,
        )> = Vec::new();
        if let Some(w) = &wechat {
            sources.push((payd_actors::model::ProviderKind::WechatV3, w.clone()));
        }
        if let Some(w) = &wechat_v2 {
            sources.push((payd_actors::model::ProviderKind::WechatV2, w.clone()));
        }
        if let Some(a) = &alipay {
            sources.push((payd_actors::model::ProviderKind::Alipay, a.clone()));
        }
        if let Some(s) = &stripe {
            sources.push((payd_actors::model::ProviderKind::Stripe, s.clone()));
        }
        let reconciler = Arc::new(crate::reconcile::Reconciler::new(
            store.clone(),
            supervisor.clone(),
            clock.clone(),
            sources,
            config.providers.timeout + Duration::from_secs(5),
        ));
        reconciler.publish_stored();
        background.push(crate::reconcile::spawn_daily(
            reconciler.clone(),
            &config.reconciliation.time,
        ));
        let state = AppState::new(http::AppStateInner {
            reconciler,
            wechat,
            wechat_v2,
            stripe,
            alipay,
            rejections: Arc::new(RejectionLog::observed(crate::monitor::rejection_observer(
                &monitor,
            ))),
            monitor,
            protection,
            live: Arc::new(http::ws::Live::new(hub, LiveSettings::default())),
            jwt: Arc::new(Jwt::new(&config.auth)),
            config: config.clone(),
            store,
            supervisor,
            deps,
            providers,
            clock,
            mock,
        });
        let listener = tokio::net::TcpListener::bind(config.server.bind)
            .await
            .with_context(|| format!("binding {}", config.server.bind))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let router = http::router(state.clone());
        let server = tokio::spawn(async move {
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            let served = axum::serve(listener, service)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server stopped with an error");
            }
        });
        tracing::info!(%addr, "payd listening");
        let mut metrics_addr = None;
        if let Some((bound, task)) = http::monitor::serve_metrics(&state).await? {
            metrics_addr = Some(bound);
            watch.push(task);
        }
        Ok(Application {
            addr,
            state,
            scheduler,
            shutdown: Some(tx),
            server,
            watch,
            metrics_addr,
            background,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when `server.metrics_bind` gives it a listener.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub async fn supervisor_stats(&self) -> Option<SupervisorStats> {
        match self
            .state
            .supervisor
            .call(SupervisorMsg::Stats, Some(Duration::from_secs(5)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => Some(s),
            _ => None,
        }
    }

    /// Stops accepting HTTP, lets requests in flight finish, stops the actors, and
    /// closes storage after the writes already queued.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for task in self.background.iter().chain(&self.watch) {
            task.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.server).await;
        let wait = Some(Duration::from_secs(10));
        let _ = self.scheduler.stop_and_wait(None, wait).await;
        self.state
            .supervisor
            .stop_children_and_wait(None, wait)
            .await;
        let _ = self.state.supervisor.stop_and_wait(None, wait).await;
        let _ = self.state.monitor.actor().stop_and_wait(None, wait).await;
        let _ = self.state.live.hub.stop_and_wait(None, wait).await;
        self.state.store.shutdown().await;
        tracing::info!("payd stopped");
    }

    /// Serves until Ctrl-C or SIGTERM, then stops gracefully.
    pub async fn run_until_signal(self) {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.stop().await;
    }
}

/// Certificate mode: download WeChat's platform certificates at start (when none are
/// cached) and then once a day.
async fn refresh_wechat_certificates(w: Arc<crate::providers::wechat::v3::WechatV3>) {
    const DAILY: Duration = Duration::from_secs(24 * 3600);
    if !w.keys.certificate_serials().is_empty() {
        tokio::time::sleep(DAILY).await;
    }
    loop {
        if let Err(e) = w.refresh_certificates().await {
            tracing::warn!(error = %e, "WeChat certificate download failed; retrying in a minute");
            tokio::time::sleep(Duration::from_secs(60)).await;
            continue;
        }
        tokio::time::sleep(DAILY).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
