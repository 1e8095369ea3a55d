//! Admin routes of reconciliation: start a run, list the stored days, read one day
//! (JSON, or CSV for finance with `?format=csv` or `Accept: text/csv`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use payd_actors::reconcile::ReconReport;
use payd_actors::tables::RECONCILIATIONS;
use serde::Deserialize;
use serde_json::json;

use crate::http::AppState;
use crate::http::admin::{Admin, audit};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::views::rfc3339;
use crate::providers::statement::StatementError;
use crate::reconcile::RunError;

pub(crate) fn report_json(r: &ReconReport, full: bool) -> serde_json::Value {
    let mut v = json!({
        "provider": r.provider,
        "date": r.date,
        "status": r.status.as_str(),
        "failure": r.failure,
        "runs": r.runs,
        "started_at": rfc3339(r.started_at),
        "finished_at": rfc3339(r.finished_at),
        "statement_rows": r.statement_rows,
        "discrepancies_count": r.discrepancies.len(),
        "unresolved": r.unresolved(),
        "totals": r.totals.iter().map(|t| json!({
            "category": t.category, "currency": t.currency.as_str(),
            "count": t.count, "amount": t.amount_minor,
        })).collect::<Vec<_>>(),
        "fees": r.fees.iter().map(|f| json!({
            "currency": f.currency.as_str(), "fee_milli_minor": f.fee_milli_minor,
        })).collect::<Vec<_>>(),
    });
    if full {
        v["discrepancies"] = r
            .discrepancies
            .iter()
            .enumerate()
            .map(|(index, d)| {
                json!({
                    "index": index,
                    "kind": d.kind.as_str(),
                    "resolution": d.resolution.as_str(),
                    "order_no": d.order_no,
                    "transaction_id": d.transaction_id,
                    "refund_no": d.refund_no,
                    "currency": d.currency.as_str(),
                    "statement_amount": d.statement_amount_minor,
                    "payd_amount": d.payd_amount_minor,
                    "outcome": d.outcome,
                    "evidence": d.evidence,
                })
            })
            .collect();
    }
    v
}

fn run_error(e: RunError) -> ApiError {
    match e {
        RunError::UnknownProvider(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "provider_unavailable",
            e.to_string(),
        ),
        RunError::BadDate(_) => ApiError::validation(e.to_string()),
        RunError::Storage(s) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", s)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartBody {
    provider: String,
    date: String,
}

/// `POST /api/v1/admin/reconciliations {"provider", "date"}`: runs it now and answers
/// with the stored report; a statement that cannot be had or read answers a problem
/// naming why (the failed run is stored too, and changed nothing).
pub(super) async fn start(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(body): ApiJson<StartBody>,
) -> Result<Response, ApiError> {
    let outcome = state
        .reconciler
        .run(body.provider.trim(), body.date.trim())
        .await
        .map_err(run_error)?;
    let target = format!("{}/{}", outcome.report.provider, outcome.report.date);
    audit(&state, &admin, "reconciliation.run", &target, "").await;
    match outcome.error {
        None => Ok(Json(report_json(&outcome.report, true)).into_response()),
        Some(e @ StatementError::Download(_)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "statement_unavailable",
            e.to_string(),
        )),
        Some(e @ (StatementError::Integrity(_) | StatementError::Malformed(_))) => {
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "statement_invalid",
                e.to_string(),
            ))
        }
    }
}

/// `GET /api/v1/admin/reconciliations`: every stored day, newest first (summaries).
pub(super) async fn list(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let view = state.store.read()?;
    let all = payd_actors::commands::list_reconciliations(&view)?;
    Ok(Json(json!({
        "providers": state.reconciler.providers(),
        "items": all.iter().map(|r| report_json(r, false)).collect::<Vec<_>>(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct DetailQuery {
    format: Option<String>,
}

/// `GET /api/v1/admin/reconciliations/{provider}/{date}`: one day with every
/// discrepancy and its evidence.
pub(super) async fn detail(
    State(state): State<AppState>,
    _admin: Admin,
    Path((provider, date)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<DetailQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let csv = match q.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "unknown format {other:?}; use json or csv"
            )));
        }
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/csv")),
    };
    let found = state
        .store
        .read()?
        .get(&RECONCILIATIONS, &(provider, date))?;
    let Some(report) = found else {
        return Err(ApiError::not_found(
            "no reconciliation for this provider and day",
        ));
    };
    if csv {
        let name = format!("reconciliation-{}-{}.csv", report.provider, report.date);
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{name}\""),
                ),
            ],
            crate::reconcile::to_csv(&report),
        )
            .into_response());
    }
    Ok(Json(report_json(&report, true)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResolveBody {
    reason: String,
}

/// `POST /api/v1/admin/reconciliations/{provider}/{date}/discrepancies/{index}/resolve
/// {"reason"}`: an operator settles a reported discrepancy (audited). Re-runs of the
/// day keep it settled.
pub(super) async fn resolve(
    State(state): State<AppState>,
    admin: Admin,
    Path((provider, date, index)): Path<(String, String, usize)>,
    ApiJson(body): ApiJson<ResolveBody>,
) -> Result<Response, ApiError> {
    use payd_actors::commands::{CommandError, ResolveDiscrepancy};
    let reason = body.reason.trim().to_string();
    if reason.is_empty() || reason.len() > 500 {
        return Err(ApiError::validation(
            "reason is required (1-500 characters)",
        ));
    }
    let outcome = format!("resolved by {}: {reason}", admin.0.user_id);
    let done = payd_actors::commands::resolve_discrepancy(
        &state.store,
        provider.clone(),
        date.clone(),
        index,
        outcome,
    )
    .await;
    let report = match done {
        Ok(ResolveDiscrepancy::Done(r)) => r,
        Ok(ResolveDiscrepancy::NotOpen) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "discrepancy_not_open",
                "this discrepancy was repaired or resolved already",
            ));
        }
        Err(CommandError::NotFound) => {
            return Err(ApiError::not_found("no such reconciliation or discrepancy"));
        }
        Err(e) => return Err(e.into()),
    };
    let d = &report.discrepancies[index];
    tracing::info!(order_no = %d.order_no, kind = d.kind.as_str(), provider = %provider,
        date = %date, "reconciliation discrepancy resolved by an operator");
    audit(
        &state,
        &admin,
        "reconciliation.resolve",
        &format!("{provider}/{date}/{index}"),
        &reason,
    )
    .await;
    state.reconciler.publish_stored();
    Ok(Json(report_json(&report, true)).into_response())
}
