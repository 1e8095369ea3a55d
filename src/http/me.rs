//! The signed-in user's entitlements: spending them (so the host application can meter
//! queries and points against payd) and their history.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use payd_actors::commands::{self, ConsumeOutcome, Consumption};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery, AuthUser};
use crate::http::views::{EntitlementsView, Page, rfc3339};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConsumeBody {
    #[serde(default)]
    queries: Option<u64>,
    #[serde(default)]
    points: Option<u64>,
}

/// Largest amount spent in one call: far above any real use, far below overflow.
const MAX_CONSUME: u64 = 1_000_000_000;

pub(super) async fn consume(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ConsumeBody>,
) -> Result<Response, ApiError> {
    let key = super::orders::idempotency_key(&headers)?
        .ok_or_else(|| ApiError::validation("Idempotency-Key is required to consume"))?;
    let want = Consumption {
        queries: body.queries.unwrap_or(0),
        points: body.points.unwrap_or(0),
    };
    if want.queries == 0 && want.points == 0 {
        return Err(ApiError::validation(
            "consume at least one query or one point",
        ));
    }
    if want.queries > MAX_CONSUME || want.points > MAX_CONSUME {
        return Err(ApiError::validation("amount too large"));
    }
    let mut h = Sha256::new();
    h.update(want.queries.to_be_bytes());
    h.update(want.points.to_be_bytes());
    let now = state.clock.now();
    let render: Box<dyn Fn(&payd_actors::model::Entitlements) -> String + Send> =
        Box::new(move |ent| {
            serde_json::to_string(&EntitlementsView::new(ent, now)).unwrap_or_default()
        });
    let outcome = commands::consume(
        &state.store,
        user.user_id.clone(),
        key,
        h.finalize().to_vec(),
        want,
        now,
        render,
    )
    .await?;
    match outcome {
        ConsumeOutcome::Done(ent) => Ok(Json(EntitlementsView::new(&ent, now)).into_response()),
        ConsumeOutcome::Replay(body) => Ok(super::orders::replayed(200, body)),
        ConsumeOutcome::Mismatch => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )),
        ConsumeOutcome::Insufficient(what) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "insufficient_entitlement",
            format!("not enough {what}; nothing was spent"),
        )),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct HistoryQuery {
    page: Option<usize>,
    page_size: Option<usize>,
}

#[derive(Serialize)]
struct HistoryView {
    at: String,
    change: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_no: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refund_no: Option<String>,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    membership: Option<serde_json::Value>,
    points: i64,
    bonus_points: i64,
    queries: i64,
}

pub(super) async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let (page, page_size) = super::orders::page_params(q.page, q.page_size)?;
    let view = state.store.read()?;
    let (entries, total) = commands::list_history(&view, &user.user_id, page, page_size)?;
    let items = entries
        .into_iter()
        .map(|e| HistoryView {
            at: rfc3339(e.at),
            change: e.change,
            order_no: e.order_no,
            refund_no: e.refund_no,
            reason: e.reason,
            membership: e.membership.map(|m| {
                serde_json::json!({
                    "type": m.membership_type,
                    "expires_at": rfc3339(m.expires_at),
                    "queries_remaining": m.queries_remaining,
                })
            }),
            points: e.points_delta,
            bonus_points: e.bonus_points_delta,
            queries: e.queries_delta,
        })
        .collect();
    Ok(Json(Page {
        items,
        page,
        page_size,
        total,
    })
    .into_response())
}
