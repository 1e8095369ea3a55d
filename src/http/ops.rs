//! Operations endpoints: liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::http::AppState;
use crate::http::error::ApiError;

pub(super) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when storage accepts writes and the order supervisor runs; also says which
/// providers are configured.
pub(super) async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let storage = state.store.is_healthy();
    let actors = matches!(state.supervisor.get_status(), ractor::ActorStatus::Running);
    let ready = storage && actors;
    let providers: Vec<&str> = state.providers.kinds().iter().map(|k| k.as_str()).collect();
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "storage": if storage { "ok" } else { "unavailable" },
        "actors": if actors { "ok" } else { "stopped" },
        "mock_mode": state.config.payment.mock_mode,
        "payments_enabled": state.config.payment.enabled,
        "providers": providers,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
