//! The admin API (role `admin`): orders with their timelines, refunds, force-complete,
//! cancel, the anomaly queue, and the audit log of every admin action (who, when,
//! what, why). A valid token without the admin role gets 403.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use payd_actors::commands::{self, IdempotencyBegin};
use payd_actors::model::{
    Actor, AuditEntry, Order, OrderStatus, PaymentMethod, RefundEntry, Timestamp,
};
use payd_actors::order::actor::OrderCommand;
use payd_actors::order::machine::{Event, ResolveAction};
use payd_actors::tables::{AUDIT, ORDERS, TIMELINE};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery, AuthUser};
use crate::http::views::{OrderView, Page, rfc3339};
use crate::order_no::looks_like_order_no;

/// An authenticated admin.
pub(super) struct Admin(pub AuthUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !user.is_admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this route needs the admin role",
            ));
        }
        Ok(Admin(user))
    }
}

fn load_order(state: &AppState, order_no: &str) -> Result<Order, ApiError> {
    if !looks_like_order_no(order_no) {
        return Err(ApiError::not_found("no such order"));
    }
    state
        .store
        .read()?
        .get(&ORDERS, &order_no.to_string())?
        .ok_or_else(|| ApiError::not_found("no such order"))
}

pub(super) async fn audit(
    state: &AppState,
    admin: &Admin,
    action: &str,
    target: &str,
    reason: &str,
) {
    let entry = AuditEntry {
        at: state.clock.now(),
        admin: admin.0.user_id.clone(),
        action: action.to_string(),
        target: target.to_string(),
        reason: reason.to_string(),
    };
    tracing::info!(admin = %entry.admin, action, target, "admin action");
    if let Err(e) = commands::audit(&state.store, entry).await {
        tracing::error!(error = %e, action, target, "audit entry not written");
    }
}

fn reason_of(reason: &str) -> Result<String, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(ApiError::validation(
            "reason is required (1-500 characters)",
        ));
    }
    Ok(reason.to_string())
}

#[derive(Serialize)]
pub(super) struct RefundView {
    refund_no: String,
    order_no: String,
    amount: i64,
    currency: String,
    reason: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_refund_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
}

fn refund_view(order: &Order, r: &RefundEntry) -> RefundView {
    RefundView {
        refund_no: r.refund_no.clone(),
        order_no: order.order_no.clone(),
        amount: r.amount_minor,
        currency: order.currency.as_str().to_string(),
        reason: r.reason.clone(),
        status: r.state.as_str(),
        provider_refund_id: r.provider_refund_id.clone(),
        transaction_id: r.transaction_id.clone(),
        failure_reason: r.failure_reason.clone(),
        created_at: rfc3339(r.created_at),
        finished_at: r.finished_at.map(rfc3339),
    }
}

fn anomaly_json(order: &Order, index: usize) -> serde_json::Value {
    let a = &order.anomalies[index];
    json!({
        "id": format!("{}:{}", order.order_no, index),
        "order_no": order.order_no,
        "user_id": order.user_id,
        "kind": a.kind.as_str(),
        "transaction_id": a.transaction_id,
        "amount": a.amount_minor,
        "currency": a.currency.as_str(),
        "order_amount": order.amount_minor,
        "order_status": order.status.as_str(),
        "detail": a.detail,
        "at": rfc3339(a.at),
        "status": if a.resolved { "resolved" } else { "open" },
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct OrdersQuery {
    status: Option<String>,
    user_id: Option<String>,
    payment_method: Option<String>,
    from: Option<String>,
    to: Option<String>,
    page: Option<usize>,
    page_size: Option<usize>,
}

fn parse_time(field: &str, v: &Option<String>) -> Result<Option<Timestamp>, ApiError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => crate::providers::wechat::parse_rfc3339(s)
            .map(Some)
            .ok_or_else(|| ApiError::validation(format!("{field} must be an RFC 3339 time"))),
    }
}

pub(super) async fn list_orders(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<OrdersQuery>,
) -> Result<Response, ApiError> {
    let (page, page_size) = super::orders::page_params(q.page, q.page_size)?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            OrderStatus::parse(s)
                .ok_or_else(|| ApiError::validation(format!("unknown status {s:?}")))?,
        ),
    };
    let method = match q.payment_method.as_deref() {
        None | Some("") => None,
        Some(m) => Some(
            PaymentMethod::parse(m)
                .ok_or_else(|| ApiError::validation(format!("unknown payment_method {m:?}")))?,
        ),
    };
    let from = parse_time("from", &q.from)?;
    let to = parse_time("to", &q.to)?;
    let view = state.store.read()?;
    let (orders, total) = commands::scan_orders(
        &view,
        |o| {
            status.is_none_or(|s| o.status == s)
                && q.user_id
                    .as_deref()
                    .is_none_or(|u| u.is_empty() || o.user_id == u)
                && method.is_none_or(|m| o.payment_method == m)
                && from.is_none_or(|f| o.created_at >= f)
                && to.is_none_or(|t| o.created_at < t)
        },
        page,
        page_size,
    )?;
    Ok(Json(Page {
        items: orders.iter().map(OrderView::from).collect(),
        page,
        page_size,
        total,
    })
    .into_response())
}

pub(super) async fn order_detail(
    State(state): State<AppState>,
    _admin: Admin,
    Path(order_no): Path<String>,
) -> Result<Response, ApiError> {
    let order = load_order(&state, &order_no)?;
    let view = state.store.read()?;
    let timeline: Vec<serde_json::Value> = view
        .scan_prefix(&TIMELINE, &order_no, usize::MAX, false)?
        .into_iter()
        .map(|(_, t)| {
            json!({"at": rfc3339(t.at), "from": t.from.as_str(), "to": t.to.as_str(),
                   "event": t.event, "actor": t.actor.as_str(), "reason": t.reason})
        })
        .collect();
    let payments: Vec<serde_json::Value> = order
        .payments
        .iter()
        .map(|p| {
            json!({"transaction_id": p.transaction_id, "amount": p.amount_minor, "currency": p.currency.as_str(),
                   "paid_at": rfc3339(p.paid_at), "recorded_at": rfc3339(p.recorded_at),
                   "source": format!("{:?}", p.source).to_lowercase(),
                   "disposition": format!("{:?}", p.disposition)})
        })
        .collect();
    let mut body = serde_json::to_value(OrderView::from(&order))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    body["timeline"] = json!(timeline);
    body["payments"] = json!(payments);
    body["refunds"] = json!(
        order
            .refunds
            .iter()
            .map(|r| refund_view(&order, r))
            .collect::<Vec<_>>()
    );
    body["anomalies"] = json!(
        (0..order.anomalies.len())
            .map(|i| anomaly_json(&order, i))
            .collect::<Vec<_>>()
    );
    body["force_completed"] = json!(order.force_completed);
    body["source_ip"] = json!(order.source_ip);
    Ok(Json(body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReasonBody {
    reason: String,
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    admin: Admin,
    Path(order_no): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    load_order(&state, &order_no)?;
    // The body is optional: `{"reason": …}` when given.
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        "cancelled by an operator".to_string()
    } else {
        let parsed: ReasonBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::validation(format!("body: {e}")))?;
        reason_of(&parsed.reason)?
    };
    let order = state
        .ask(
            &order_no,
            OrderCommand::Event(Event::Cancel { by: Actor::Admin }),
        )
        .await?;
    audit(&state, &admin, "order.cancel", &order_no, &reason).await;
    Ok(Json(OrderView::from(&order)).into_response())
}

pub(super) async fn complete(
    State(state): State<AppState>,
    admin: Admin,
    Path(order_no): Path<String>,
    ApiJson(body): ApiJson<ReasonBody>,
) -> Result<Response, ApiError> {
    let reason = reason_of(&body.reason)?;
    load_order(&state, &order_no)?;
    let order = state
        .ask(
            &order_no,
            OrderCommand::Event(Event::ForceComplete {
                reason: reason.clone(),
            }),
        )
        .await?;
    audit(&state, &admin, "order.force_complete", &order_no, &reason).await;
    Ok(Json(OrderView::from(&order)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RefundBody {
    #[serde(default)]
    amount: Option<i64>,
    reason: String,
}

pub(super) async fn create_refund(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(order_no): Path<String>,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<Response, ApiError> {
    let reason = reason_of(&body.reason)?;
    if body.amount.is_some_and(|a| a <= 0) {
        return Err(ApiError::validation(
            "amount must be a positive integer in minor units",
        ));
    }
    load_order(&state, &order_no)?;
    let key = super::orders::idempotency_key(&headers)?;
    if let Some(key) = &key {
        let mut h = Sha256::new();
        h.update(order_no.as_bytes());
        h.update(body.amount.unwrap_or(-1).to_be_bytes());
        h.update(reason.as_bytes());
        let begun = commands::idempotency_begin(
            &state.store,
            admin.0.user_id.clone(),
            format!("refund:{key}"),
            h.finalize().to_vec(),
            state.clock.now(),
        )
        .await?;
        if !matches!(begun, IdempotencyBegin::Proceed) {
            return super::orders::idempotent_answer(begun);
        }
    }
    let before = load_order(&state, &order_no)?.refunds.len();
    let outcome = state
        .ask(
            &order_no,
            OrderCommand::Event(Event::RequestRefund {
                amount_minor: body.amount,
                reason: reason.clone(),
                by: Actor::Admin,
                transaction_id: None,
            }),
        )
        .await
        .and_then(|order| {
            let r = order
                .refunds
                .get(before)
                .ok_or_else(|| ApiError::internal("refund not recorded"))?;
            serde_json::to_string(&refund_view(&order, r))
                .map_err(|e| ApiError::internal(e.to_string()))
        });
    if let Some(key) = key {
        let remembered = match &outcome {
            Ok(json) => Some((201, json.clone())),
            Err(e) if e.status.is_client_error() => Some((e.status.as_u16(), e.body())),
            Err(_) => None,
        };
        commands::idempotency_finish(
            &state.store,
            admin.0.user_id.clone(),
            format!("refund:{key}"),
            remembered,
        )
        .await?;
    }
    let json = outcome?;
    audit(&state, &admin, "order.refund", &order_no, &reason).await;
    let mut r = (StatusCode::CREATED, json).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Ok(r)
}

pub(super) async fn list_refunds(
    State(state): State<AppState>,
    _admin: Admin,
    Path(order_no): Path<String>,
) -> Result<Response, ApiError> {
    let order = load_order(&state, &order_no)?;
    let items: Vec<RefundView> = order
        .refunds
        .iter()
        .map(|r| refund_view(&order, r))
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct AnomalyQuery {
    status: Option<String>,
    page: Option<usize>,
    page_size: Option<usize>,
}

pub(super) async fn anomalies(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<AnomalyQuery>,
) -> Result<Response, ApiError> {
    let (page, page_size) = super::orders::page_params(q.page, q.page_size)?;
    let want_open = match q.status.as_deref() {
        None | Some("") | Some("open") => Some(true),
        Some("resolved") => Some(false),
        Some("all") => None,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "unknown status {other:?}; use open, resolved or all"
            )));
        }
    };
    let view = state.store.read()?;
    let (orders, _) = commands::scan_orders(&view, |o| !o.anomalies.is_empty(), 1, usize::MAX)?;
    let all: Vec<serde_json::Value> = orders
        .iter()
        .flat_map(|o| {
            (0..o.anomalies.len())
                .filter(|i| want_open.is_none_or(|open| o.anomalies[*i].resolved != open))
                .map(|i| anomaly_json(o, i))
                .collect::<Vec<_>>()
        })
        .collect();
    let total = all.len();
    let items: Vec<_> = all
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    Ok(Json(Page {
        items,
        page,
        page_size,
        total,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResolveBody {
    action: String,
    reason: String,
}

pub(super) async fn resolve_anomaly(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ResolveBody>,
) -> Result<Response, ApiError> {
    let reason = reason_of(&body.reason)?;
    let action = match body.action.as_str() {
        "refund" => ResolveAction::Refund,
        "complete" => ResolveAction::Complete,
        "dismiss" => ResolveAction::Dismiss,
        other => {
            return Err(ApiError::validation(format!(
                "unknown action {other:?}; use refund, complete or dismiss"
            )));
        }
    };
    let (order_no, index) = id
        .rsplit_once(':')
        .and_then(|(o, i)| i.parse::<usize>().ok().map(|i| (o.to_string(), i)))
        .ok_or_else(|| ApiError::not_found("no such anomaly"))?;
    load_order(&state, &order_no)?;
    let order = state
        .ask(
            &order_no,
            OrderCommand::Event(Event::ResolveAnomaly {
                index,
                action,
                reason: reason.clone(),
            }),
        )
        .await?;
    audit(
        &state,
        &admin,
        &format!("anomaly.{}", body.action),
        &id,
        &reason,
    )
    .await;
    Ok(Json(anomaly_json(&order, index)).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    page: Option<usize>,
    page_size: Option<usize>,
}

pub(super) async fn audit_log(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let (page, page_size) = super::orders::page_params(q.page, q.page_size)?;
    let view = state.store.read()?;
    let all = view.scan_prefix(&AUDIT, &(), usize::MAX, true)?;
    let total = all.len();
    let items: Vec<serde_json::Value> = all
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(|(_, e)| json!({"at": rfc3339(e.at), "admin": e.admin, "action": e.action, "target": e.target, "reason": e.reason}))
        .collect();
    Ok(Json(Page {
        items,
        page,
        page_size,
        total,
    })
    .into_response())
}

// ---- packages ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PackageBody {
    id: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    description: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    membership_type: Option<String>,
    validity_days: Option<u32>,
    queries_count: Option<u32>,
    points: Option<u64>,
    bonus_points: Option<u64>,
    is_active: Option<bool>,
    sort_order: Option<i32>,
}

/// Applies `body` over `base` (a new package starts from defaults) and checks the
/// result as the configuration's `[[packages]]` are checked.
fn build_package(
    state: &AppState,
    base: Option<payd_actors::model::Package>,
    body: PackageBody,
) -> Result<payd_actors::model::Package, ApiError> {
    use payd_actors::model::{Currency, Package, PackageKind};
    let kind = match body.kind.as_deref() {
        Some("membership") => Some(PackageKind::Membership),
        Some("points") => Some(PackageKind::Points),
        Some(other) => return Err(ApiError::validation(format!("unknown kind {other:?}"))),
        None => None,
    };
    let p = match base {
        Some(mut p) => {
            if body.id.as_ref().is_some_and(|id| *id != p.id) {
                return Err(ApiError::validation("the id of a package cannot change"));
            }
            if kind.is_some_and(|k| k != p.kind) {
                return Err(ApiError::validation("the kind of a package cannot change"));
            }
            if let Some(v) = body.name {
                p.name = v;
            }
            if let Some(v) = body.description {
                p.description = v;
            }
            if let Some(v) = body.amount {
                p.amount_minor = v;
            }
            if let Some(v) = body.currency {
                p.currency = Currency::parse(&v)
                    .ok_or_else(|| ApiError::validation("currency must be an ISO 4217 code"))?;
            }
            if body.membership_type.is_some() {
                p.membership_type = body.membership_type;
            }
            if body.validity_days.is_some() {
                p.validity_days = body.validity_days;
            }
            if body.queries_count.is_some() {
                p.queries_count = body.queries_count;
            }
            if body.points.is_some() {
                p.points = body.points;
            }
            if body.bonus_points.is_some() {
                p.bonus_points = body.bonus_points;
            }
            if let Some(v) = body.is_active {
                p.is_active = v;
            }
            if let Some(v) = body.sort_order {
                p.sort_order = v;
            }
            p
        }
        None => Package {
            id: body
                .id
                .ok_or_else(|| ApiError::validation("id is required"))?,
            kind: kind.ok_or_else(|| ApiError::validation("kind is required"))?,
            name: body
                .name
                .ok_or_else(|| ApiError::validation("name is required"))?,
            description: body.description.unwrap_or_default(),
            amount_minor: body
                .amount
                .ok_or_else(|| ApiError::validation("amount is required"))?,
            currency: Currency::parse(body.currency.as_deref().unwrap_or(""))
                .ok_or_else(|| ApiError::validation("currency must be an ISO 4217 code"))?,
            membership_type: body.membership_type,
            validity_days: body.validity_days,
            queries_count: body.queries_count,
            points: body.points,
            bonus_points: body.bonus_points,
            is_active: body.is_active.unwrap_or(true),
            sort_order: body.sort_order.unwrap_or(0),
        },
    };
    let id_ok = !p.id.is_empty()
        && p.id.len() <= 64
        && p.id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !id_ok {
        return Err(ApiError::validation("id must match [a-z0-9_-]{1,64}"));
    }
    if p.name.trim().is_empty() {
        return Err(ApiError::validation("name must not be empty"));
    }
    if p.amount_minor <= 0 {
        return Err(ApiError::validation(
            "amount must be a positive integer in minor units",
        ));
    }
    match p.kind {
        PackageKind::Membership => {
            let tier_ok = p
                .membership_type
                .as_ref()
                .is_some_and(|t| state.config.membership.tiers.contains(t));
            if !tier_ok {
                return Err(ApiError::validation(format!(
                    "membership_type must be one of {:?}",
                    state.config.membership.tiers
                )));
            }
            if p.validity_days.unwrap_or(0) == 0 {
                return Err(ApiError::validation("validity_days must be at least 1"));
            }
            if p.points.is_some() || p.bonus_points.is_some() {
                return Err(ApiError::validation("a membership package has no points"));
            }
        }
        PackageKind::Points => {
            if p.points.unwrap_or(0) == 0 {
                return Err(ApiError::validation("points must be at least 1"));
            }
            if p.membership_type.is_some() || p.validity_days.is_some() || p.queries_count.is_some()
            {
                return Err(ApiError::validation(
                    "a points package has no membership fields",
                ));
            }
        }
    }
    Ok(p)
}

pub(super) async fn create_package(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(body): ApiJson<PackageBody>,
) -> Result<Response, ApiError> {
    let p = build_package(&state, None, body)?;
    let saved = commands::put_package(&state.store, p, true)
        .await
        .map_err(|e| match e {
            commands::CommandError::AlreadyExists => ApiError::new(
                StatusCode::CONFLICT,
                "package_exists",
                "a package with this id exists",
            ),
            other => other.into(),
        })?;
    audit(&state, &admin, "package.create", &saved.id, "").await;
    Ok((
        StatusCode::CREATED,
        Json(crate::http::views::PackageView::from(&saved)),
    )
        .into_response())
}

pub(super) async fn update_package(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PackageBody>,
) -> Result<Response, ApiError> {
    let current = state
        .store
        .read()?
        .get(&payd_actors::tables::PACKAGES, &id)?
        .ok_or_else(|| ApiError::not_found("no such package"))?;
    let p = build_package(&state, Some(current), body)?;
    let saved = commands::put_package(&state.store, p, false).await?;
    audit(&state, &admin, "package.update", &saved.id, "").await;
    Ok(Json(crate::http::views::PackageView::from(&saved)).into_response())
}

// ---- users ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExtendBody {
    days: u32,
    reason: String,
}

fn adjusted(outcome: commands::AdjustOutcome, now: Timestamp) -> Result<Response, ApiError> {
    match outcome {
        commands::AdjustOutcome::Done(ent) => {
            Ok(Json(crate::http::views::EntitlementsView::new(&ent, now)).into_response())
        }
        commands::AdjustOutcome::Insufficient(what) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "insufficient_entitlement",
            format!("the user has not enough {what}; nothing was changed"),
        )),
        commands::AdjustOutcome::NoMembership => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_membership",
            "the user has never had a membership to extend",
        )),
    }
}

pub(super) async fn extend_membership(
    State(state): State<AppState>,
    admin: Admin,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<ExtendBody>,
) -> Result<Response, ApiError> {
    let reason = reason_of(&body.reason)?;
    if body.days == 0 || body.days > 3660 {
        return Err(ApiError::validation("days must be between 1 and 3660"));
    }
    let now = state.clock.now();
    let outcome = commands::extend_membership(
        &state.store,
        user_id.clone(),
        body.days,
        reason.clone(),
        now,
    )
    .await?;
    let response = adjusted(outcome, now)?;
    audit(&state, &admin, "membership.extend", &user_id, &reason).await;
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdjustBody {
    #[serde(default)]
    points: i64,
    #[serde(default)]
    bonus_points: i64,
    reason: String,
}

pub(super) async fn adjust_points(
    State(state): State<AppState>,
    admin: Admin,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<AdjustBody>,
) -> Result<Response, ApiError> {
    let reason = reason_of(&body.reason)?;
    if body.points == 0 && body.bonus_points == 0 {
        return Err(ApiError::validation(
            "points or bonus_points must be non-zero",
        ));
    }
    if body.points.unsigned_abs() > 1_000_000_000
        || body.bonus_points.unsigned_abs() > 1_000_000_000
    {
        return Err(ApiError::validation("adjustment too large"));
    }
    let now = state.clock.now();
    let outcome = commands::adjust_points(
        &state.store,
        user_id.clone(),
        body.points,
        body.bonus_points,
        reason.clone(),
        now,
    )
    .await?;
    let response = adjusted(outcome, now)?;
    audit(&state, &admin, "points.adjust", &user_id, &reason).await;
    Ok(response)
}

// ---- statistics ----

#[derive(Debug, Deserialize)]
pub(super) struct StatsQuery {
    days: Option<u32>,
}

pub(super) async fn statistics(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Response, ApiError> {
    use std::collections::BTreeMap;
    let days = q.days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(ApiError::validation("days must be between 1 and 366"));
    }
    let now = state.clock.now();
    const DAY: i64 = 86_400_000;
    let start = Timestamp((now.ms().div_euclid(DAY) - i64::from(days) + 1) * DAY);
    let view = state.store.read()?;
    let (orders, total) = commands::scan_orders(&view, |o| o.created_at >= start, 1, usize::MAX)?;
    #[derive(Default, Serialize)]
    struct Bucket {
        count: u64,
        amount: BTreeMap<String, i64>,
    }
    let mut by_status: BTreeMap<&str, Bucket> = BTreeMap::new();
    let mut by_method: BTreeMap<&str, Bucket> = BTreeMap::new();
    let mut per_day: BTreeMap<String, (u64, u64, BTreeMap<String, i64>)> = BTreeMap::new();
    let (mut paid, mut settled, mut forced) = (0u64, 0u64, 0u64);
    let mut paid_amount: BTreeMap<String, i64> = BTreeMap::new();
    let mut refunded_amount: BTreeMap<String, i64> = BTreeMap::new();
    let mut refunded_orders = 0u64;
    for o in &orders {
        let cur = o.currency.as_str().to_string();
        let b = by_status.entry(o.status.as_str()).or_default();
        b.count += 1;
        *b.amount.entry(cur.clone()).or_default() += o.amount_minor;
        let m = by_method.entry(o.payment_method.as_str()).or_default();
        m.count += 1;
        *m.amount.entry(cur.clone()).or_default() += o.amount_minor;
        let day = rfc3339(o.created_at).chars().take(10).collect::<String>();
        let d = per_day.entry(day).or_default();
        d.0 += 1;
        if o.status.is_paid() {
            paid += 1;
            d.1 += 1;
            *d.2.entry(cur.clone()).or_default() += o.amount_minor;
            *paid_amount.entry(cur.clone()).or_default() += o.amount_minor;
            if o.force_completed {
                forced += 1;
            }
            if o.refunded_amount_minor > 0 {
                refunded_orders += 1;
                *refunded_amount.entry(cur).or_default() += o.refunded_amount_minor;
            }
        }
        if o.status != OrderStatus::Pending {
            settled += 1;
        }
    }
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            (a / b * 10_000.0).round() / 10_000.0
        } else {
            0.0
        }
    };
    let refund_rate_by_amount: BTreeMap<&String, f64> = paid_amount
        .iter()
        .map(|(c, p)| {
            (
                c,
                ratio(*refunded_amount.get(c).unwrap_or(&0) as f64, *p as f64),
            )
        })
        .collect();
    let series: Vec<serde_json::Value> = per_day
        .into_iter()
        .map(|(day, (created, paid, amount))| json!({"date": day, "created": created, "paid": paid, "paid_amount": amount}))
        .collect();
    Ok(Json(json!({
        "days": days,
        "from": rfc3339(start),
        "total": total,
        "by_status": by_status,
        "by_method": by_method,
        "paid": paid,
        "force_completed": forced,
        "paid_amount": paid_amount,
        "refunded_amount": refunded_amount,
        "success_rate": ratio(paid as f64, settled as f64),
        "refund_rate": {"by_count": ratio(refunded_orders as f64, paid as f64), "by_amount": refund_rate_by_amount},
        "series": series,
    }))
    .into_response())
}
