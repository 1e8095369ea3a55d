//! The HTTP layer: routes client requests and mock callbacks to the order actors,
//! and reads everything else straight from storage snapshots. Glue only — no
//! state-machine rule lives here.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use payd_actors::clock::SharedClock;
use payd_actors::model::Order;
use payd_actors::order::actor::{OrderCommand, OrderError};
use payd_actors::order::supervisor::SupervisorMsg;
use payd_actors::provider::Providers;
use payd_storage::Store;
use ractor::ActorRef;
use ractor::rpc::CallResult;
use tower_http::trace::TraceLayer;

use crate::auth::Jwt;
use crate::config::Config;
use crate::http::error::ApiError;
use crate::providers::alipay::Alipay;
use crate::providers::mock::MockProvider;
use crate::providers::rejections::RejectionLog;
use crate::providers::stripe::Stripe;
use crate::providers::wechat::v2::WechatV2;
use crate::providers::wechat::v3::WechatV3;

mod admin;
mod admin_ops;
mod alipay;
pub mod error;
pub mod extract;
pub mod guard;
mod me;
mod methods;
mod mock;
pub mod monitor;
mod notify;
pub mod openapi;
mod ops;
mod orders;
mod page;
mod qr;
mod reconcile;
mod stripe;
pub mod views;
pub mod ws;

/// What every handler can reach: one shared [`AppStateInner`], so the clone that
/// every handler and middleware takes is one reference count, not a copy of each
/// field (the provider maps among them).
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl AppState {
    pub fn new(inner: AppStateInner) -> AppState {
        AppState(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub config: Arc<Config>,
    pub store: Store,
    pub supervisor: ActorRef<SupervisorMsg>,
    /// What the order actors share (the store, providers, clock, policy, observers).
    pub deps: Arc<payd_actors::order::Deps>,
    pub providers: Providers,
    pub clock: SharedClock,
    pub jwt: Arc<Jwt>,
    pub mock: Option<Arc<MockProvider>>,
    pub wechat: Option<Arc<WechatV3>>,
    pub alipay: Option<Arc<Alipay>>,
    pub wechat_v2: Option<Arc<WechatV2>>,
    pub stripe: Option<Arc<Stripe>>,
    pub rejections: Arc<RejectionLog>,
    /// The monitor: sliding-window counts and alerts.
    pub monitor: Arc<payd_actors::monitor::MonitorHandle>,
    /// Rate limits, trusted proxies, callback allowlists, recent-callback cache.
    pub protection: Arc<guard::Protection>,
    /// Live updates: the hub and the WebSocket tickets.
    pub live: Arc<ws::Live>,
    /// Daily statements against payd's records.
    pub reconciler: Arc<crate::reconcile::Reconciler>,
}

impl AppState {
    /// Sends `command` to the order's actor and waits for its durable answer.
    pub async fn ask(&self, order_no: &str, command: OrderCommand) -> Result<Order, ApiError> {
        let timeout = self.config.providers.timeout + Duration::from_secs(5);
        let order_no = order_no.to_string();
        let answer = self
            .supervisor
            .call(
                |reply| SupervisorMsg::Route {
                    order_no,
                    command,
                    reply: Some(reply),
                },
                Some(timeout),
            )
            .await;
        match answer {
            Ok(CallResult::Success(result)) => result.map_err(ApiError::from),
            Ok(CallResult::Timeout) => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "order_unavailable",
                "the order did not answer in time; retry",
            )),
            Ok(CallResult::SenderError) | Err(_) => Err(OrderError::Unavailable.into()),
        }
    }
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    let routes = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(monitor::metrics))
        .route("/api/v1/admin/monitor/status", get(monitor::status))
        .route("/api/v1/admin/monitor/alerts", get(monitor::alerts))
        .route("/api/v1/packages", get(orders::list_packages))
        .route("/api/v1/packages/{id}", get(orders::get_package))
        .route(
            "/api/v1/orders",
            post(orders::create_order).get(orders::list_orders),
        )
        .route("/api/v1/orders/{order_no}", get(orders::get_order))
        .route(
            "/api/v1/orders/{order_no}/cancel",
            post(orders::cancel_order),
        )
        .route("/api/v1/orders/{order_no}/qr", post(orders::refresh_qr))
        .route("/api/v1/me/entitlements", get(orders::entitlements))
        .route("/api/v1/admin/webhooks", get(admin_ops::list_webhooks))
        .route(
            "/api/v1/admin/webhooks/{id}/resend",
            post(admin_ops::resend_webhook),
        )
        .route("/api/v1/admin/backup", post(admin_ops::backup))
        .route(
            "/api/v1/admin/reconciliations",
            post(reconcile::start).get(reconcile::list),
        )
        .route(
            "/api/v1/admin/reconciliations/{provider}/{date}",
            get(reconcile::detail),
        )
        .route(
            "/api/v1/admin/reconciliations/{provider}/{date}/discrepancies/{index}/resolve",
            post(reconcile::resolve),
        )
        .route(
            "/api/v1/admin/notifications",
            get(admin_ops::list_notifications),
        )
        .route(
            "/api/v1/admin/notifications/statistics",
            get(admin_ops::notification_statistics),
        )
        .route(
            "/api/v1/admin/notifications/{id}/retry",
            post(admin_ops::retry_notification),
        )
        .route("/api/v1/me/entitlements/consume", post(me::consume))
        .route("/api/v1/me/entitlements/history", get(me::history))
        .route("/api/v1/admin/orders", get(admin::list_orders))
        .route("/api/v1/admin/orders/{order_no}", get(admin::order_detail))
        .route(
            "/api/v1/admin/orders/{order_no}/cancel",
            post(admin::cancel),
        )
        .route(
            "/api/v1/admin/orders/{order_no}/complete",
            post(admin::complete),
        )
        .route(
            "/api/v1/admin/orders/{order_no}/refunds",
            post(admin::create_refund).get(admin::list_refunds),
        )
        .route("/api/v1/admin/anomalies", get(admin::anomalies))
        .route(
            "/api/v1/admin/anomalies/{id}/resolve",
            post(admin::resolve_anomaly),
        )
        .route("/api/v1/admin/audit", get(admin::audit_log))
        .route("/api/v1/admin/orders/statistics", get(admin::statistics))
        .route("/api/v1/admin/packages", post(admin::create_package))
        .route(
            "/api/v1/admin/packages/{id}",
            axum::routing::put(admin::update_package),
        )
        .route(
            "/api/v1/admin/users/{user_id}/membership/extend",
            post(admin::extend_membership),
        )
        .route(
            "/api/v1/admin/users/{user_id}/points/adjust",
            post(admin::adjust_points),
        )
        .route("/api/v1/mock/orders/{order_no}/pay", post(mock::api_pay))
        .route("/api/v1/mock/orders/{order_no}/fail", post(mock::api_fail))
        .route("/api/v1/mock/demo-token", post(mock::demo_token))
        .route("/api/v1/notify/wechat", post(notify::wechat))
        .route("/api/v1/notify/wechat/refund", post(notify::wechat))
        .route("/api/v1/notify/stripe", post(stripe::notify))
        .route("/api/v1/notify/alipay", post(alipay::notify))
        .route("/payment/return", get(alipay::payment_return))
        .route("/mock/pay/{order_no}", get(mock::cashier_page))
        .route("/mock/pay/{order_no}/pay", post(mock::cashier_pay))
        .route("/mock/pay/{order_no}/fail", post(mock::cashier_fail))
        .route("/", get(page::index))
        .route("/assets/app.js", get(page::app_js))
        .route("/assets/app.css", get(page::app_css))
        .route("/api-docs/openapi.json", get(openapi::serve))
        .route("/api/v1/payment-methods", get(methods::payment_methods))
        .route("/api/v1/orders/{order_no}/qr.svg", get(qr::qr_svg))
        .route("/api/v1/ws/ticket", post(ws::issue_ticket))
        .route("/api/v1/ws", get(ws::connect))
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::front,
        ));
    let routes = match guard::cors(&state.config) {
        Some(cors) => routes.layer(cors),
        None => routes,
    };
    routes
        .layer(TraceLayer::new_for_http().make_span_with(span_without_query))
        .with_state(state)
}

/// The request span names the path but never the query string: a WebSocket ticket
/// travels there, and no log may hold one.
fn span_without_query(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
}
