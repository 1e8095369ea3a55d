//! The mock provider's routes (mock mode only; 404 otherwise): the API's simulated
//! payment and failure, the cashier page that mock QR codes point to, and the demo
//! sign-in. Simulated payments travel the same path a verified provider callback
//! takes: a confirmation event to the order's actor, answered once durable.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use payd_actors::model::Currency;
use payd_actors::order::actor::OrderCommand;
use payd_actors::order::machine::Event;
use payd_actors::tables::ORDERS;
use serde::Deserialize;
use serde_json::json;

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{ApiQuery, AuthUser};
use crate::http::views::{OrderView, rfc3339};
use crate::order_no::looks_like_order_no;
use crate::providers::mock::MockProvider;

fn mock(state: &AppState) -> Result<&MockProvider, ApiError> {
    match (&state.mock, state.config.payment.mock_mode) {
        (Some(m), true) => Ok(m),
        _ => Err(ApiError::not_found("no such route")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PayQuery {
    notify: Option<bool>,
    amount: Option<i64>,
    currency: Option<String>,
    transaction_id: Option<String>,
}

/// Loads an order the caller owns (others' are 404).
fn owned(state: &AppState, user: &AuthUser, order_no: &str) -> Result<(), ApiError> {
    if !looks_like_order_no(order_no) {
        return Err(ApiError::not_found("no such order"));
    }
    let view = state.store.read()?;
    match view.get(&ORDERS, &order_no.to_string())? {
        Some(o) if o.user_id == user.user_id => Ok(()),
        _ => Err(ApiError::not_found("no such order")),
    }
}

async fn pay(
    state: &AppState,
    order_no: &str,
    q: PayQuery,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let mock = mock(state)?;
    if q.amount.is_some_and(|a| a <= 0) {
        return Err(ApiError::validation("amount must be a positive integer"));
    }
    let currency = match &q.currency {
        None => None,
        Some(c) => Some(
            Currency::parse(c)
                .ok_or_else(|| ApiError::validation("currency must be an ISO 4217 code"))?,
        ),
    };
    if let Some(tx) = &q.transaction_id
        && (tx.is_empty()
            || tx.len() > 64
            || !tx
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    {
        return Err(ApiError::validation(
            "transaction_id must be 1-64 characters [A-Za-z0-9_-]",
        ));
    }
    let now = state.clock.now();
    let report = mock
        .pay(order_no, q.amount, currency, q.transaction_id, now)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "order_not_payable",
                "the provider trade of this order was never opened",
            )
        })?;
    if q.notify == Some(false) {
        // Paid at the "provider" only: polling has to find it.
        let view = state.store.read()?;
        let order = view
            .get(&ORDERS, &order_no.to_string())?
            .ok_or_else(|| ApiError::not_found("no such order"))?;
        return Ok((StatusCode::ACCEPTED, json!(OrderView::from(&order))));
    }
    let order = state
        .ask(order_no, OrderCommand::Event(Event::Confirmed(report)))
        .await?;
    Ok((StatusCode::OK, json!(OrderView::from(&order))))
}

pub(super) async fn api_pay(
    State(state): State<AppState>,
    user: AuthUser,
    Path(order_no): Path<String>,
    ApiQuery(q): ApiQuery<PayQuery>,
) -> Result<Response, ApiError> {
    mock(&state)?;
    owned(&state, &user, &order_no)?;
    let (status, body) = pay(&state, &order_no, q).await?;
    Ok((status, Json(body)).into_response())
}

async fn fail(state: &AppState, order_no: &str) -> Result<serde_json::Value, ApiError> {
    let mock = mock(state)?;
    if !mock.fail(order_no).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "order_not_payable",
            "the provider trade of this order was never opened",
        ));
    }
    let order = state
        .ask(
            order_no,
            OrderCommand::Event(Event::PaymentFailed {
                reason: "payment_failed".into(),
            }),
        )
        .await?;
    Ok(json!(OrderView::from(&order)))
}

pub(super) async fn api_fail(
    State(state): State<AppState>,
    user: AuthUser,
    Path(order_no): Path<String>,
) -> Result<Response, ApiError> {
    mock(&state)?;
    owned(&state, &user, &order_no)?;
    Ok(Json(fail(&state, &order_no).await?).into_response())
}

pub(super) async fn demo_token(State(state): State<AppState>) -> Result<Response, ApiError> {
    mock(&state)?;
    let now = state.clock.now();
    let user_id = format!(
        "demo-{}",
        rand::random::<[u8; 6]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let ttl_secs = 3600;
    let now_secs = (now.ms() / 1000) as u64;
    let token = state.jwt.mint(&user_id, false, now_secs, ttl_secs);
    Ok(Json(json!({
        "token": token,
        "user_id": user_id,
        "expires_at": rfc3339(now.plus_ms(ttl_secs as i64 * 1000)),
    }))
    .into_response())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>body{{font-family:system-ui,sans-serif;max-width:28rem;\
         margin:2rem auto;padding:0 1rem}}button{{font-size:1.1rem;padding:.6rem 1.2rem;\
         margin:.3rem}}.amount{{font-size:2rem;font-weight:600}}</style></head>\
         <body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    ))
}

/// The mock cashier, as the buyer's phone shows it after scanning the mock QR code.
/// Like a provider's cashier link, it is reached by the unguessable order number.
pub(super) async fn cashier_page(
    State(state): State<AppState>,
    Path(order_no): Path<String>,
) -> Result<Response, ApiError> {
    mock(&state)?;
    if !looks_like_order_no(&order_no) {
        return Err(ApiError::not_found("no such order"));
    }
    let view = state.store.read()?;
    let order = view
        .get(&ORDERS, &order_no)?
        .ok_or_else(|| ApiError::not_found("no such order"))?;
    let amount = format!(
        "{}.{:02} {}",
        order.amount_minor / 100,
        order.amount_minor % 100,
        order.currency.as_str()
    );
    let body = format!(
        "<p>Mock cashier for order <code>{no}</code></p><p>{name}</p>\
         <p class=\"amount\">{amount}</p><p>Status: <strong>{status}</strong></p>\
         <form method=\"post\" action=\"/mock/pay/{no}/pay\"><button type=\"submit\">Pay</button></form>\
         <form method=\"post\" action=\"/mock/pay/{no}/fail\"><button type=\"submit\">Fail</button></form>",
        no = escape(&order.order_no),
        name = escape(&order.package.name),
        status = order.status.as_str(),
    );
    Ok(page("payd mock cashier", &body).into_response())
}

pub(super) async fn cashier_pay(
    State(state): State<AppState>,
    Path(order_no): Path<String>,
) -> Result<Response, ApiError> {
    if !looks_like_order_no(&order_no) {
        return Err(ApiError::not_found("no such order"));
    }
    let q = PayQuery {
        notify: None,
        amount: None,
        currency: None,
        transaction_id: None,
    };
    let (_, order) = pay(&state, &order_no, q).await?;
    let status = order["status"].as_str().unwrap_or("unknown").to_string();
    Ok(page(
        "Payment sent",
        &format!("<p>Order status: <strong>{}</strong></p>", escape(&status)),
    )
    .into_response())
}

pub(super) async fn cashier_fail(
    State(state): State<AppState>,
    Path(order_no): Path<String>,
) -> Result<Response, ApiError> {
    if !looks_like_order_no(&order_no) {
        return Err(ApiError::not_found("no such order"));
    }
    let order = fail(&state, &order_no).await?;
    let status = order["status"].as_str().unwrap_or("unknown").to_string();
    Ok(page(
        "Payment failed",
        &format!("<p>Order status: <strong>{}</strong></p>", escape(&status)),
    )
    .into_response())
}
