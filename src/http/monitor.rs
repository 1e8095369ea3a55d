//! Watching payd: `GET /metrics` (Prometheus text format) and the admin monitor
//! routes — `GET /api/v1/admin/monitor/status` (health, current rates, active
//! alerts) and `GET /api/v1/admin/monitor/alerts` (the alert history).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use payd_actors::monitor::{Alert, WindowStatus};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::admin::Admin;
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::http::views::{Page, rfc3339};

/// `GET /metrics` on the main listener (404 there when `server.metrics_bind` gives
/// it a listener of its own).
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    if state.config.server.metrics_bind.is_some() {
        return ApiError::not_found("no such route").into_response();
    }
    scrape(&state).await
}

/// With `server.metrics_bind` set, serves `/metrics` (and nothing else) on that
/// address until the task is aborted; returns the bound address and the task.
pub async fn serve_metrics(
    state: &AppState,
) -> anyhow::Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>> {
    use anyhow::Context;
    let Some(bind) = state.config.server.metrics_bind else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding server.metrics_bind {bind}"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(state): State<AppState>| async move { scrape(&state).await }),
        )
        .with_state(state.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped with an error");
        }
    });
    tracing::info!(%addr, "metrics listening");
    Ok(Some((addr, task)))
}

/// Samples the gauges that mirror other components, then renders every metric.
pub async fn scrape(state: &AppState) -> Response {
    let supervisor = state
        .supervisor
        .call(
            payd_actors::order::supervisor::SupervisorMsg::Stats,
            Some(std::time::Duration::from_secs(2)),
        )
        .await;
    let actors = match supervisor {
        Ok(ractor::rpc::CallResult::Success(s)) => {
            Some((s.live_actors, s.restarts, s.quarantined.len()))
        }
        _ => None,
    };
    let status = state.monitor.status().await;
    crate::metrics::sample(
        actors,
        state.store.is_healthy(),
        state.protection.limiter.len(),
        status.as_ref().map(|s| s.active.as_slice()),
    );
    let mut response = crate::metrics::render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn rate(r: Option<f64>) -> Value {
    r.map_or(Value::Null, |v| json!(v))
}

fn window_json(w: &WindowStatus) -> Value {
    let mut amounts = BTreeMap::new();
    for (currency, t) in &w.tally.currencies {
        amounts.insert(
            currency.clone(),
            json!({
                "created": t.created.amount_minor,
                "paid": t.paid.amount_minor,
                "failed": t.failed.amount_minor,
                "expired": t.expired.amount_minor,
                "cancelled": t.cancelled.amount_minor,
                "refunded": t.refunded.amount_minor,
            }),
        );
    }
    let mut rejected: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for ((provider, reason), n) in &w.tally.rejected {
        rejected.entry(provider).or_default().insert(reason, *n);
    }
    let providers: BTreeMap<&str, Value> = w
        .tally
        .providers
        .iter()
        .map(|(p, t)| {
            (
                *p,
                json!({
                    "calls": t.calls,
                    "errors": t.errors,
                    "avg_latency_ms": t.latency_ms_sum.checked_div(t.calls).unwrap_or(0),
                    "max_latency_ms": t.latency_ms_max,
                }),
            )
        })
        .collect();
    let c = &w.counts;
    json!({
        "seconds": w.span_ms / 1000,
        "created": c.created,
        "paid": c.paid,
        "failed": c.failed,
        "expired": c.expired,
        "cancelled": c.cancelled,
        "settled": c.settled(),
        "refunded": c.refunded,
        "success_rate": rate(w.success_rate),
        "failure_rate": rate(w.failure_rate),
        "abandonment_rate": rate(w.abandonment_rate),
        "refund_rate_by_count": rate(w.refund_rate_by_count),
        "refund_rate_by_amount": w.refund_rate_by_amount,
        "amounts": amounts,
        "active_users": w.active_users,
        "large_payments": w.tally.large_payments,
        "late_payments": w.tally.late_payments,
        "anomalies": w.tally.anomalies,
        "callbacks_rejected": rejected,
        "providers": providers,
    })
}

fn alert_json(a: &Alert) -> Value {
    json!({
        "id": a.id,
        "rule": a.rule.as_str(),
        "severity": a.severity.as_str(),
        "status": if a.resolved_at.is_some() { "resolved" } else { "firing" },
        "subject": a.subject,
        "message": a.message,
        "value": a.value,
        "fired_at": rfc3339(a.fired_at),
        "resolved_at": a.resolved_at.map(rfc3339),
    })
}

fn monitor_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "monitor_unavailable",
        "the monitor did not answer; retry",
    )
}

/// `GET /api/v1/admin/monitor/status`
pub(super) async fn status(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let s = state
        .monitor
        .status()
        .await
        .ok_or_else(monitor_unavailable)?;
    Ok(Json(json!({
        "health": s.health,
        "at": rfc3339(s.at),
        "storage": if s.storage_healthy { "ok" } else { "unavailable" },
        "open_circuit_breakers": s.open_breakers,
        "window": window_json(&s.window),
        "day": window_json(&s.day),
        "active_alerts": s.active.iter().map(alert_json).collect::<Vec<_>>(),
        "alerts_fired_total": s.fired_total,
        "rate_limiter": {"buckets": state.protection.limiter.len()},
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertsQuery {
    page: Option<usize>,
    page_size: Option<usize>,
}

/// `GET /api/v1/admin/monitor/alerts?page=&page_size=` — newest first.
pub(super) async fn alerts(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<AlertsQuery>,
) -> Result<Json<Page<Value>>, ApiError> {
    let (page, page_size) = super::orders::page_params(q.page, q.page_size)?;
    let (items, total) = state
        .monitor
        .history(page, page_size)
        .await
        .ok_or_else(monitor_unavailable)?;
    Ok(Json(Page {
        items: items.iter().map(alert_json).collect(),
        page,
        page_size,
        total,
    }))
}
