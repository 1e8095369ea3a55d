//! Packages, orders and entitlements for the signed-in user.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use payd_actors::commands::{self, IdempotencyBegin};
use payd_actors::model::{
    Actor, Order, OrderStatus, PackageSnapshot, PaymentMethod, ProviderKind, Timer, Timers,
};
use payd_actors::order::actor::OrderCommand;
use payd_actors::order::create::{self, Created};
use payd_actors::order::machine::Event;
use payd_actors::tables::{ENTITLEMENTS, ORDERS, PACKAGES};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery, AuthUser};
use crate::http::views::{EntitlementsView, OrderView, PackageView, Page};
use crate::order_no::{looks_like_order_no, new_order_no};

pub(super) async fn list_packages(State(state): State<AppState>) -> Result<Response, ApiError> {
    let view = state.store.read()?;
    let items: Vec<PackageView> = commands::list_packages(&view, true)?
        .iter()
        .map(PackageView::from)
        .collect();
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}

pub(super) async fn get_package(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let view = state.store.read()?;
    match view.get(&PACKAGES, &id)? {
        Some(p) if p.is_active => Ok(Json(PackageView::from(&p)).into_response()),
        _ => Err(ApiError::not_found("no such package")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateOrderBody {
    package_id: String,
    payment_method: String,
    #[serde(default)]
    client_ip: Option<String>,
    #[serde(default)]
    is_upgrade: Option<bool>,
}

const IDEMPOTENCY_HEADER: &str = "idempotency-key";

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let ok = raw.len() <= 255
        && !raw.is_empty()
        && raw.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b));
    if !ok {
        return Err(ApiError::validation(
            "Idempotency-Key must be 1-255 visible ASCII characters",
        ));
    }
    Ok(raw.to_str().ok().map(str::to_string))
}

pub(super) async fn create_order(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    client: Option<axum::Extension<crate::http::guard::ClientIp>>,
    ApiJson(body): ApiJson<CreateOrderBody>,
) -> Result<Response, ApiError> {
    let source_ip = client.map(|c| c.0.0.to_string());
    if !state.config.payment.enabled {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "payments_disabled",
            "payments are disabled on this server",
        ));
    }
    let key = idempotency_key(&headers)?;
    let method = PaymentMethod::parse(&body.payment_method).ok_or_else(|| {
        ApiError::validation(format!(
            "unknown payment_method {:?}; use wechat_native, alipay_qr, alipay_page, stripe_checkout or mock",
            body.payment_method
        ))
    })?;
    if let Some(ip) = &body.client_ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(ApiError::validation("client_ip must be an IP address"));
    }

    // Same key, same user, same (normalised) request: the first answer again.
    let Some(key) = key else {
        return create_order_inner(&state, &user, method, &body, source_ip)
            .await
            .map(created);
    };
    let hash = request_hash(&body, method);
    let now = state.clock.now();
    match commands::idempotency_begin(&state.store, user.user_id.clone(), key.clone(), hash, now)
        .await?
    {
        IdempotencyBegin::Proceed => {}
        other => return idempotent_answer(other),
    }
    let outcome = create_order_inner(&state, &user, method, &body, source_ip).await;
    // Remember 2xx and 4xx answers; release the key after a server-side failure so
    // the client can retry.
    let remembered = match &outcome {
        Ok(json) => Some((StatusCode::CREATED.as_u16(), json.clone())),
        Err(e) if e.status.is_client_error() => Some((e.status.as_u16(), e.body())),
        Err(_) => None,
    };
    commands::idempotency_finish(&state.store, user.user_id.clone(), key, remembered).await?;
    outcome.map(created)
}

/// The 201 answer to a created order, from its JSON.
fn created(json: String) -> Response {
    let mut response = (StatusCode::CREATED, json).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// The answer to a request whose `Idempotency-Key` was seen before: the remembered
/// response (marked `Idempotent-Replayed`), or why the key cannot be used.
pub(super) fn idempotent_answer(begin: IdempotencyBegin) -> Result<Response, ApiError> {
    match begin {
        IdempotencyBegin::Replay { status, body } => Ok(replayed(status, body)),
        IdempotencyBegin::Mismatch => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )),
        IdempotencyBegin::InUse => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still being processed",
        )),
        IdempotencyBegin::Proceed => Err(ApiError::internal("no remembered answer")),
    }
}

/// A remembered response, sent again.
pub(super) fn replayed(status: u16, body: String) -> Response {
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
    let content_type = if status >= 400 {
        "application/problem+json"
    } else {
        "application/json"
    };
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

fn request_hash(body: &CreateOrderBody, method: PaymentMethod) -> Vec<u8> {
    let mut h = Sha256::new();
    for part in [
        body.package_id.as_str(),
        method.as_str(),
        if body.is_upgrade == Some(true) {
            "upgrade"
        } else {
            ""
        },
        body.client_ip.as_deref().unwrap_or(""),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize().to_vec()
}

async fn create_order_inner(
    state: &AppState,
    user: &AuthUser,
    method: PaymentMethod,
    body: &CreateOrderBody,
    source_ip: Option<String>,
) -> Result<String, ApiError> {
    let cfg = &state.config;
    let package = {
        let view = state.store.read()?;
        view.get(&PACKAGES, &body.package_id)?
    }
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "package_not_found",
            format!("no package {:?}", body.package_id),
        )
    })?;
    if !package.is_active {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "package_inactive",
            format!("package {:?} is no longer sold", package.id),
        ));
    }
    if !method.supports_currency(&package.currency) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency_not_supported",
            format!(
                "{} does not take {}",
                method.as_str(),
                package.currency.as_str()
            ),
        ));
    }
    let provider = if cfg.payment.mock_mode {
        Some(ProviderKind::Mock)
    } else {
        state.providers.for_method(method)
    }
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "payment_method_unavailable",
            format!("{} is not configured on this server", method.as_str()),
        )
    })?;
    if let Some(max) = cfg.payment.max_order_amount.get(package.currency.as_str())
        && package.amount_minor > *max
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount_limit_exceeded",
            format!(
                "{} {} is above the limit of {} per order",
                package.amount_minor,
                package.currency.as_str(),
                max
            ),
        ));
    }
    if package.amount_minor <= 0 {
        return Err(ApiError::validation("the package has no positive price"));
    }
    let now = state.clock.now();
    let upgrade = if body.is_upgrade == Some(true) {
        Some(upgrade_pricing(state, &user.user_id, &package, now)?)
    } else {
        None
    };
    let amount_minor = upgrade
        .as_ref()
        .map_or(package.amount_minor, |u| u.price_minor);

    let expire_at = now.plus_ms(cfg.payment.order_expire.as_millis() as i64);
    let mut timers = Timers::default();
    let first_poll = now.plus_ms(cfg.payment.query_interval.as_millis() as i64);
    if cfg.payment.query_retry_max > 0 && first_poll < expire_at {
        timers.poll = Some(Timer {
            at: first_poll,
            generation: 1,
        });
    }
    timers.expire = Some(Timer {
        at: expire_at,
        generation: 2,
    });
    // The package was read for this order alone: its strings move into the order.
    let snapshot = PackageSnapshot::from(&package);
    let order = Order {
        order_no: new_order_no(now),
        user_id: user.user_id.clone(),
        package_id: package.id,
        package: snapshot,
        amount_minor,
        currency: package.currency,
        payment_method: method,
        provider,
        status: OrderStatus::Pending,
        closing: None,
        trade_opened: false,
        qr_code_url: None,
        qr_code_expire_at: None,
        payment_url: None,
        provider_trade_ref: None,
        client_ip: body.client_ip.clone(),
        expire_at,
        created_at: now,
        updated_at: now,
        paid_at: None,
        cancelled_at: None,
        provider_transaction_id: None,
        refunded_amount_minor: 0,
        failure_reason: None,
        late_payment: false,
        granted: false,
        force_completed: false,
        source_ip,
        refunds: vec![],
        payments: vec![],
        anomalies: vec![],
        timers,
        timer_generation: 2,
        poll_count: 0,
        settled_at: None,
        retry_count: 0,
        version: 0,
    };
    let opened = match create::create(&state.deps, order, upgrade.clone()).await? {
        Created::Opened(order) => {
            log_created(&order);
            order
        }
        Created::NeedsTrade(order) => {
            log_created(&order);
            state.ask(&order.order_no, OrderCommand::OpenTrade).await?
        }
    };
    serde_json::to_string(&OrderView::from(&opened).with_upgrade(upgrade.as_ref()))
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn log_created(order: &Order) {
    tracing::info!(order_no = %order.order_no, user_id = %order.user_id, package_id = %order.package_id,
        method = order.payment_method.as_str(), amount_minor = order.amount_minor, "order created");
}

/// Prices an upgrade to `target`: its list price minus the unused, prorated value of
/// the buyer's current membership, never below `payment.upgrade_min_amount`.
fn upgrade_pricing(
    state: &AppState,
    user_id: &str,
    target: &payd_actors::model::Package,
    now: payd_actors::model::Timestamp,
) -> Result<payd_actors::model::UpgradePricing, ApiError> {
    if target.kind != payd_actors::model::PackageKind::Membership {
        return Err(ApiError::validation(
            "is_upgrade applies to membership packages only",
        ));
    }
    let ent = state
        .store
        .read()?
        .get(&payd_actors::tables::ENTITLEMENTS, &user_id.to_string())?
        .unwrap_or_default();
    let cur = ent.active_membership(now).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_membership_to_upgrade",
            "there is no active membership to upgrade; buy the package without is_upgrade",
        )
    })?;
    let tiers = &state.config.membership.tiers;
    let rank = |t: &str| tiers.iter().position(|x| x == t);
    if rank(target.membership_type.as_deref().unwrap_or("")) <= rank(&cur.membership_type) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_an_upgrade",
            format!(
                "{} is not a higher tier than {}",
                target.id, cur.membership_type
            ),
        ));
    }
    if cur.currency.as_ref().is_some_and(|c| c != &target.currency) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency_not_supported",
            "an upgrade is priced in the currency of the current membership",
        ));
    }
    let total_ms = (cur.expires_at.ms() - cur.started_at.ms()).max(1);
    let left_ms = (cur.expires_at.ms() - now.ms()).clamp(0, total_ms);
    let credit = (i128::from(cur.value_minor) * i128::from(left_ms) / i128::from(total_ms)) as i64;
    let minimum = state
        .config
        .payment
        .upgrade_min_amount
        .get(target.currency.as_str())
        .copied()
        .unwrap_or(1)
        .max(1);
    let raw = target.amount_minor - credit;
    Ok(payd_actors::model::UpgradePricing {
        from_type: cur.membership_type,
        list_price_minor: target.amount_minor,
        credit_minor: credit.max(0),
        price_minor: raw.max(minimum),
        minimum_applied: raw < minimum,
    })
}

/// Loads an order the caller owns; anybody else's is "not found" (no enumeration).
fn owned_order(state: &AppState, user: &AuthUser, order_no: &str) -> Result<Order, ApiError> {
    if !looks_like_order_no(order_no) {
        return Err(ApiError::not_found("no such order"));
    }
    let view = state.store.read()?;
    match view.get(&ORDERS, &order_no.to_string())? {
        Some(o) if o.user_id == user.user_id => Ok(o),
        _ => Err(ApiError::not_found("no such order")),
    }
}

pub(super) async fn get_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(order_no): Path<String>,
) -> Result<Response, ApiError> {
    let order = owned_order(&state, &user, &order_no)?;
    let upgrade = state
        .store
        .read()?
        .get(&payd_actors::tables::UPGRADES, &order.order_no)?;
    Ok(Json(OrderView::from(&order).with_upgrade(upgrade.as_ref())).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    page: Option<usize>,
    page_size: Option<usize>,
}

pub(super) fn page_params(
    page: Option<usize>,
    page_size: Option<usize>,
) -> Result<(usize, usize), ApiError> {
    let page = page.unwrap_or(1);
    let page_size = page_size.unwrap_or(20);
    if page == 0 {
        return Err(ApiError::validation("page starts at 1"));
    }
    if !(1..=100).contains(&page_size) {
        return Err(ApiError::validation("page_size must be between 1 and 100"));
    }
    Ok((page, page_size))
}

pub(super) async fn list_orders(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let (page, page_size) = page_params(q.page, q.page_size)?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            OrderStatus::parse(s)
                .ok_or_else(|| ApiError::validation(format!("unknown status {s:?}")))?,
        ),
    };
    let view = state.store.read()?;
    let (orders, total) =
        commands::list_user_orders(&view, &user.user_id, status, page, page_size)?;
    Ok(Json(Page {
        items: orders.iter().map(OrderView::from).collect(),
        page,
        page_size,
        total,
    })
    .into_response())
}

pub(super) async fn cancel_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(order_no): Path<String>,
) -> Result<Response, ApiError> {
    owned_order(&state, &user, &order_no)?;
    let order = state
        .ask(
            &order_no,
            OrderCommand::Event(Event::Cancel { by: Actor::User }),
        )
        .await?;
    Ok(Json(OrderView::from(&order)).into_response())
}

pub(super) async fn refresh_qr(
    State(state): State<AppState>,
    user: AuthUser,
    Path(order_no): Path<String>,
) -> Result<Response, ApiError> {
    owned_order(&state, &user, &order_no)?;
    let order = state
        .ask(&order_no, OrderCommand::Event(Event::RefreshQr))
        .await?;
    Ok(Json(OrderView::from(&order)).into_response())
}

pub(super) async fn entitlements(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Response, ApiError> {
    let view = state.store.read()?;
    let ent = view.get(&ENTITLEMENTS, &user.user_id)?.unwrap_or_default();
    Ok(Json(EntitlementsView::new(&ent, state.clock.now())).into_response())
}
