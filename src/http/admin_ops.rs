//! Admin routes for operations: the outbound webhook outbox (list, re-send), online
//! backups, and the provider callback log (list, statistics, re-process).
//!
//! All of them read storage snapshots or go through the same paths as everything
//! else — a re-processed callback is verified again by its provider's adapter and
//! applied through the order's actor, exactly like a fresh one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use payd_actors::model::{NotificationRecord, ProviderKind, WebhookEvent, WebhookStatus};
use payd_actors::order::actor::OrderCommand;
use payd_actors::order::machine::Event;
use payd_actors::outbox;
use payd_actors::tables::{NOTIFICATIONS, ORDERS};
use serde::Deserialize;
use serde_json::json;

use crate::http::AppState;
use crate::http::admin::{Admin, audit};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::views::{OrderView, Page, rfc3339};
use crate::providers::rejections::RejectReason;

// ---- webhooks ----

fn webhook_json(ev: &WebhookEvent) -> serde_json::Value {
    json!({
        "id": ev.id,
        "type": ev.event_type,
        "order_no": ev.order.order_no,
        "refund_no": ev.refund_no,
        "status": ev.status.as_str(),
        "attempts": ev.attempts,
        "created_at": rfc3339(ev.created_at),
        "next_attempt_at": (ev.status == WebhookStatus::Pending).then(|| rfc3339(ev.next_attempt_at)),
        "last_attempt_at": ev.last_attempt_at.map(rfc3339),
        "last_error": ev.last_error,
        "delivered_at": ev.delivered_at.map(rfc3339),
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct WebhooksQuery {
    status: Option<String>,
    page: Option<usize>,
    page_size: Option<usize>,
}

/// `GET /api/v1/admin/webhooks?status=pending|delivered|dead&page=&page_size=`,
/// newest first.
pub(super) async fn list_webhooks(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<WebhooksQuery>,
) -> Result<Response, ApiError> {
    let (page, page_size) = super::orders::page_params(q.page, q.page_size)?;
    let status = match q.status.as_deref() {
        None | Some("") | Some("all") => None,
        Some(s) => Some(WebhookStatus::parse(s).ok_or_else(|| {
            ApiError::validation(format!(
                "unknown status {s:?}; use pending, delivered, dead or all"
            ))
        })?),
    };
    let view = state.store.read()?;
    let (events, total) = outbox::list(&view, status, page, page_size)?;
    Ok(Json(Page {
        items: events.iter().map(|(_, ev)| webhook_json(ev)).collect(),
        page,
        page_size,
        total,
    })
    .into_response())
}

/// `POST /api/v1/admin/webhooks/{id}/resend`: queue the event again with a fresh
/// retry schedule (a dead one too; a delivered one is delivered once more).
pub(super) async fn resend_webhook(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.config.webhooks.url.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "webhooks_disabled",
            "webhooks.url is not set: nothing would deliver the event",
        ));
    }
    let found = outbox::find(&state.store.read()?, &id)?;
    let Some((seq, _)) = found else {
        return Err(ApiError::not_found("no such webhook event"));
    };
    let ev = outbox::resend(&state.store, seq, state.clock.now()).await?;
    tracing::info!(order_no = %ev.order.order_no, event_id = %ev.id, "webhook event queued again");
    audit(&state, &admin, "webhook.resend", &id, "").await;
    Ok((StatusCode::ACCEPTED, Json(webhook_json(&ev))).into_response())
}

// ---- backups ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackupBody {
    dest: String,
}

/// `POST /api/v1/admin/backup {"dest": "/absolute/path/file"}`: writes a consistent
/// backup file from one read snapshot while payd keeps serving. The path is on the
/// server's file system; an existing file is never overwritten.
pub(super) async fn backup(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(body): ApiJson<BackupBody>,
) -> Result<Response, ApiError> {
    let dest = PathBuf::from(body.dest.trim());
    if !dest.is_absolute() {
        return Err(ApiError::validation("dest must be an absolute path"));
    }
    let store = state.store.clone();
    let now = state.clock.now();
    let target = dest.clone();
    let written = tokio::task::spawn_blocking(move || {
        crate::backup::export(&store, &crate::app::store_tables(), &target, now)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let summary = match written {
        Ok(s) => s,
        Err(crate::backup::BackupError::Exists(p)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "backup_exists",
                format!("{} exists; a backup never overwrites a file", p.display()),
            ));
        }
        Err(crate::backup::BackupError::Storage(e)) => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "backup failed");
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "backup_failed",
                e.to_string(),
            ));
        }
    };
    tracing::info!(dest = %summary.path.display(), entries = summary.entries(), bytes = summary.bytes,
        "backup written");
    audit(
        &state,
        &admin,
        "backup.create",
        &summary.path.display().to_string(),
        "",
    )
    .await;
    Ok((StatusCode::CREATED, Json(backup_json(&summary))).into_response())
}

pub(crate) fn backup_json(s: &crate::backup::BackupSummary) -> serde_json::Value {
    json!({
        "dest": s.path.display().to_string(),
        "taken_at": rfc3339(s.taken_at),
        "entries": s.entries(),
        "bytes": s.bytes,
        "tables": s.tables.iter().map(|(t, n)| (t.clone(), *n)).collect::<BTreeMap<_, _>>(),
    })
}

// ---- the callback log ----

/// The name a provider's callbacks are counted under in the rejection log (both
/// WeChat API versions arrive at the same endpoint).
fn channel(p: ProviderKind) -> &'static str {
    match p {
        ProviderKind::WechatV3 | ProviderKind::WechatV2 => "wechat",
        ProviderKind::Alipay => "alipay",
        ProviderKind::Stripe => "stripe",
        ProviderKind::Mock => "mock",
    }
}

fn notification_id(n: &NotificationRecord) -> String {
    format!("{}:{}", n.provider.as_str(), n.event_id)
}

fn notification_json(n: &NotificationRecord) -> serde_json::Value {
    json!({
        "id": notification_id(n),
        "provider": n.provider.as_str(),
        "event_id": n.event_id,
        "order_no": n.order_no,
        "status": n.result,
        "deliveries": n.deliveries,
        "source_ip": n.source_ip,
        "received_at": rfc3339(n.received_at),
        "headers": n.headers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "body_bytes": n.raw_body.len(),
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct NotificationsQuery {
    provider: Option<String>,
    status: Option<String>,
    page: Option<usize>,
    page_size: Option<usize>,
}

const PROVIDERS: [ProviderKind; 5] = [
    ProviderKind::Mock,
    ProviderKind::WechatV3,
    ProviderKind::WechatV2,
    ProviderKind::Alipay,
    ProviderKind::Stripe,
];

fn all_notifications(state: &AppState) -> Result<Vec<NotificationRecord>, ApiError> {
    Ok(state
        .store
        .read()?
        .scan_prefix(&NOTIFICATIONS, &(), usize::MAX, false)?
        .into_iter()
        .map(|(_, n)| n)
        .collect())
}

/// `GET /api/v1/admin/notifications?provider=&status=&page=&page_size=`: verified
/// callbacks, newest first. `provider` is a provider of record (`wechat_v3`, …) or
/// `wechat` for both API versions; `status` is `processed`, `duplicate` or `logged`.
pub(super) async fn list_notifications(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<NotificationsQuery>,
) -> Result<Response, ApiError> {
    let (page, page_size) = super::orders::page_params(q.page, q.page_size)?;
    let provider = q.provider.as_deref().filter(|p| !p.is_empty());
    if let Some(p) = provider
        && !PROVIDERS
            .iter()
            .any(|k| k.as_str() == p || channel(*k) == p)
    {
        return Err(ApiError::validation(format!("unknown provider {p:?}")));
    }
    let status = q.status.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = status
        && !["processed", "duplicate", "logged"].contains(&s)
    {
        return Err(ApiError::validation(format!(
            "unknown status {s:?}; use processed, duplicate or logged"
        )));
    }
    let mut all: Vec<NotificationRecord> = all_notifications(&state)?
        .into_iter()
        .filter(|n| provider.is_none_or(|p| n.provider.as_str() == p || channel(n.provider) == p))
        .filter(|n| status.is_none_or(|s| n.result == s))
        .collect();
    all.sort_by(|a, b| {
        b.received_at
            .cmp(&a.received_at)
            .then_with(|| b.event_id.cmp(&a.event_id))
    });
    let total = all.len();
    let items = all
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(notification_json)
        .collect();
    Ok(Json(Page {
        items,
        page,
        page_size,
        total,
    })
    .into_response())
}

#[derive(Default, serde::Serialize)]
struct ChannelStats {
    /// Every callback that arrived: verified deliveries plus rejected ones.
    received: u64,
    /// Deliveries that passed verification (each is in the log).
    verified: u64,
    /// Distinct events in the log.
    logged_events: u64,
    /// Events that changed an order.
    processed: u64,
    /// Deliveries that changed nothing: repeats of a logged event, and events that
    /// were already applied by another path (a poll, a second notification).
    duplicates: u64,
    /// Verified events that decide nothing (kept for the record).
    logged_only: u64,
    /// Refused before verification, by reason (since this process started).
    rejected: BTreeMap<&'static str, u64>,
    rejected_total: u64,
}

/// `GET /api/v1/admin/notifications/statistics`: per callback channel (`wechat`,
/// `alipay`, `stripe`), what arrived and what became of it. Verified callbacks come
/// from the durable log; rejected ones from the in-memory rejection counters.
pub(super) async fn notification_statistics(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let mut stats: BTreeMap<&'static str, ChannelStats> = BTreeMap::new();
    for n in all_notifications(&state)? {
        let s = stats.entry(channel(n.provider)).or_default();
        let deliveries = u64::from(n.deliveries.max(1));
        s.verified += deliveries;
        s.logged_events += 1;
        s.duplicates += deliveries - 1;
        match n.result.as_str() {
            "processed" => s.processed += 1,
            "duplicate" => s.duplicates += 1,
            _ => s.logged_only += 1,
        }
    }
    for ((provider, reason), count) in state.rejections.counts() {
        let s = stats.entry(provider).or_default();
        *s.rejected.entry(reason).or_default() += count;
        s.rejected_total += count;
    }
    for s in stats.values_mut() {
        s.received = s.verified + s.rejected_total;
    }
    Ok(Json(json!({ "providers": stats })).into_response())
}

fn not_reprocessable(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "not_reprocessable", detail)
}

fn verification_failed(reason: RejectReason) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "verification_failed",
        format!(
            "the logged callback no longer verifies: {}",
            reason.as_str()
        ),
    )
}

/// Verifies a logged callback again with its provider's adapter, as of when it was
/// received, and returns what it means for its order (`None`: nothing to apply).
async fn reverify(state: &AppState, n: &NotificationRecord) -> Result<Option<Event>, ApiError> {
    let unconfigured = || {
        not_reprocessable(format!(
            "{} is not configured, so its callbacks cannot be verified",
            n.provider.as_str()
        ))
    };
    let verified = match n.provider {
        ProviderKind::WechatV3 => {
            if state.wechat.is_none() {
                return Err(unconfigured());
            }
            let mut headers = HeaderMap::new();
            for (k, v) in &n.headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    headers.insert(k, v);
                }
            }
            super::notify::verify_wechat_v3(state, &headers, &n.raw_body, Some(n.received_at))
                .await
                .map_err(verification_failed)?
        }
        ProviderKind::WechatV2 => {
            if state.wechat_v2.is_none() {
                return Err(unconfigured());
            }
            super::notify::verify_wechat_v2(state, &n.raw_body).map_err(verification_failed)?
        }
        ProviderKind::Stripe => {
            let Some(stripe) = state.stripe.clone() else {
                return Err(unconfigured());
            };
            let signature = n
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("stripe-signature"))
                .map(|(_, v)| v.as_str());
            let event = stripe
                .verify_logged_event(signature, &n.raw_body, n.received_at)
                .map_err(verification_failed)?;
            let meaning =
                crate::providers::stripe::webhook::classify(&event).map_err(verification_failed)?;
            let order = state
                .store
                .read()?
                .get(&ORDERS, &n.order_no)?
                .ok_or_else(|| ApiError::not_found("the callback's order is gone"))?;
            return stripe
                .event_for(meaning, &order)
                .await
                .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "provider_error", e.message));
        }
        ProviderKind::Alipay => {
            let Some(alipay) = state.alipay.clone() else {
                return Err(unconfigured());
            };
            // Alipay's notify carries no timestamp: it verifies as it did then.
            let notify = alipay
                .verify_notify(&n.raw_body)
                .map_err(verification_failed)?;
            if notify.out_trade_no() != n.order_no {
                return Err(verification_failed(RejectReason::Malformed));
            }
            return super::alipay::event_for(&notify, state).map_err(verification_failed);
        }
        ProviderKind::Mock => {
            return Err(not_reprocessable(
                "the mock provider's callbacks are not logged",
            ));
        }
    };
    if verified.order_no != n.order_no {
        return Err(verification_failed(RejectReason::Malformed));
    }
    Ok(verified.event)
}

/// `POST /api/v1/admin/notifications/{id}/retry` (`id` = `{provider}:{event_id}`):
/// re-process a logged callback. Its stored raw body and headers are verified again
/// (only the freshness window is measured from when it was received) and the event
/// is applied through the order's actor — idempotently: a payment already recorded
/// changes nothing. The retry counts as one more delivery of the event.
pub(super) async fn retry_notification(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (provider, event_id) = id
        .split_once(':')
        .ok_or_else(|| ApiError::not_found("no such notification"))?;
    let record = state
        .store
        .read()?
        .get(
            &NOTIFICATIONS,
            &(provider.to_string(), event_id.to_string()),
        )?
        .ok_or_else(|| ApiError::not_found("no such notification"))?;
    let before = state
        .store
        .read()?
        .get(&ORDERS, &record.order_no)?
        .ok_or_else(|| ApiError::not_found("the callback's order is gone"))?;
    let outcome = match reverify(&state, &record).await? {
        None => {
            tracing::info!(order_no = %record.order_no, notification = %id,
                "logged callback re-verified; it decides nothing, so nothing was applied");
            json!({"id": id, "result": "nothing_to_apply", "order": OrderView::from(&before)})
        }
        Some(event) => {
            let order = state
                .ask(
                    &record.order_no,
                    OrderCommand::Callback {
                        event,
                        notification: Box::new(record.clone()),
                    },
                )
                .await?;
            let result = if order.version != before.version {
                "processed"
            } else {
                "unchanged"
            };
            tracing::info!(order_no = %order.order_no, notification = %id, result,
                "logged callback re-processed");
            json!({"id": id, "result": result, "order": OrderView::from(&order)})
        }
    };
    audit(&state, &admin, "notification.retry", &id, "").await;
    Ok(Json(outcome).into_response())
}
