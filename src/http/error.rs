//! The one error type of the HTTP layer, rendered as RFC 9457 problem+json with a
//! stable `code`. No side effects here: logging happens in the trace middleware.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use payd_actors::commands::CommandError;
use payd_actors::order::actor::OrderError;
use payd_actors::order::machine::Rejection;
use payd_storage::StorageError;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            detail,
        )
    }
    pub fn storage(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            detail,
        )
    }
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", detail)
    }

    /// The problem+json body, also used to remember idempotent responses.
    pub fn body(&self) -> String {
        let problem = Problem {
            kind: format!("https://payd.dev/problems/{}", self.code.replace('_', "-")),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
        };
        serde_json::to_string(&problem).unwrap_or_else(|_| "{}".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Unavailable | StorageError::Closed => ApiError::storage(e.to_string()),
            StorageError::Engine(_)
            | StorageError::Schema { .. }
            | StorageError::Corrupt { .. }
            | StorageError::CorruptKey { .. }
            | StorageError::NewerFormat { .. }
            | StorageError::CommandPanicked => {
                tracing::error!(error = %e, "storage error");
                ApiError::storage("storage error")
            }
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound => ApiError::not_found("no such record"),
            CommandError::AlreadyExists => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "already exists")
            }
            CommandError::VersionConflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "concurrent change; retry")
            }
            CommandError::Storage(s) => s.into(),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::NotFound => ApiError::not_found("no such order"),
            OrderError::Rejected(Rejection::NotCancellable(status)) => ApiError::new(
                StatusCode::CONFLICT,
                "order_not_cancellable",
                format!(
                    "the order is {} and can no longer be cancelled",
                    status.as_str()
                ),
            ),
            OrderError::Rejected(Rejection::NotPending(status)) => ApiError::new(
                StatusCode::CONFLICT,
                "order_not_pending",
                format!(
                    "the order is {} and no longer awaits payment",
                    status.as_str()
                ),
            ),
            OrderError::Rejected(Rejection::NotRefundable(status)) => ApiError::new(
                StatusCode::CONFLICT,
                "order_not_refundable",
                format!(
                    "the order is {} and has no payment left to refund",
                    status.as_str()
                ),
            ),
            OrderError::Rejected(Rejection::RefundExceedsPaid { refundable }) => ApiError::new(
                StatusCode::CONFLICT,
                "refund_exceeds_paid",
                format!("at most {refundable} can still be refunded"),
            ),
            OrderError::Rejected(Rejection::InvalidAmount) => {
                ApiError::validation("amount must be a positive integer in minor units")
            }
            OrderError::Rejected(Rejection::NoSuchPayment) => {
                ApiError::not_found("the order has no such extra payment")
            }
            OrderError::Rejected(Rejection::NoSuchAnomaly) => {
                ApiError::not_found("no such open anomaly")
            }
            OrderError::Rejected(Rejection::NotCompletable(status)) => ApiError::new(
                StatusCode::CONFLICT,
                "order_not_completable",
                format!(
                    "the order is {} and cannot be force-completed",
                    status.as_str()
                ),
            ),
            OrderError::Provider(detail) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "provider_error",
                format!("the payment provider failed: {detail}"),
            ),
            OrderError::Storage(_) => ApiError::storage("storage unavailable; nothing was changed"),
            OrderError::Quarantined => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "order_quarantined",
                "this order is held for an operator after repeated internal failures",
            ),
            OrderError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "order_unavailable",
                "the order could not be processed right now; retry",
            ),
        }
    }
}
