//! Alipay's two ways back to payd: the async notify (`POST /api/v1/notify/alipay`)
//! and the buyer's browser after page pay (`GET /payment/return`).
//!
//! The notify is verified over its form-decoded parameters before anything reaches
//! an actor, and Alipay hears exactly `success` only once its effect (or, when it
//! changes nothing, its log entry) is durable; anything else gets `fail`, so Alipay
//! delivers it again. A rejected notify is counted by reason and changes nothing.
//! The return page trusts nothing it is given: it verifies the signature, then shows
//! the status the order has in storage, and never changes state.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use payd_actors::model::{NotificationRecord, Order, ProviderKind};
use payd_actors::order::actor::OrderCommand;
use payd_actors::order::machine::Event;
use payd_actors::tables::ORDERS;

use crate::http::AppState;
use crate::order_no::looks_like_order_no;
use crate::providers::alipay::{AlipayNotification, wire};
use crate::providers::rejections::{RejectReason, Rejected};

const PROVIDER: &str = "alipay";

fn reply(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn fail(status: StatusCode) -> Response {
    reply(status, "fail")
}

fn reject(state: &AppState, reason: RejectReason, peer: &SocketAddr) -> Response {
    state.rejections.record(Rejected {
        provider: PROVIDER,
        reason: reason.as_str(),
        source_ip: Some(peer.ip().to_string()),
        at: state.clock.now(),
    });
    let status = match reason {
        RejectReason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        RejectReason::Malformed | RejectReason::UnknownOrder | RejectReason::WrongMerchant => {
            StatusCode::BAD_REQUEST
        }
        RejectReason::MissingSignature
        | RejectReason::BadSignature
        | RejectReason::UnknownSerial
        | RejectReason::Stale
        | RejectReason::Undecryptable => StatusCode::UNAUTHORIZED,
    };
    fail(status)
}

/// What a verified notify asks of the order: a confirmation, or nothing (it is
/// logged and acknowledged).
pub(super) fn event_for(
    n: &AlipayNotification,
    state: &AppState,
) -> Result<Option<Event>, RejectReason> {
    Ok(match n.trade_status() {
        // A partial refund re-sends TRADE_SUCCESS with refund_fee: it confirms no new
        // payment. Refund records come with the refunds work; until then it is logged.
        "TRADE_SUCCESS" if n.carries_refund() => None,
        // FINISHED may follow SUCCESS: the machine dedupes by trade_no, never
        // crediting twice, and checks the amount against the order.
        "TRADE_SUCCESS" | "TRADE_FINISHED" => {
            Some(Event::Confirmed(n.payment_report(state.clock.now())?))
        }
        // Closed unpaid (polling and expiry decide), or fully refunded (logged), or
        // pending: nothing to apply.
        "TRADE_CLOSED" | "WAIT_BUYER_PAY" => None,
        other => {
            tracing::warn!(order_no = %n.out_trade_no(), trade_status = other,
                "Alipay notify with an unknown trade_status; logged only");
            None
        }
    })
}

pub(super) async fn notify(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let Some(alipay) = state.alipay.clone() else {
        return fail(StatusCode::NOT_FOUND);
    };
    let Ok(raw) = axum::body::to_bytes(body, state.config.server.body_limit_bytes).await else {
        return reject(&state, RejectReason::TooLarge, &peer);
    };
    let n = match alipay.verify_notify(&raw) {
        Ok(n) => n,
        Err(reason) => return reject(&state, reason, &peer),
    };
    let order_no = n.out_trade_no().to_string();
    let order = match state.store.read().and_then(|v| v.get(&ORDERS, &order_no)) {
        Ok(order) => order,
        Err(e) => {
            tracing::error!(order_no = %order_no, error = %e, "Alipay notify: storage unreadable; Alipay will retry");
            return fail(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    if order.is_none_or(|o| o.provider != ProviderKind::Alipay) {
        return reject(&state, RejectReason::UnknownOrder, &peer);
    }
    let event = match event_for(&n, &state) {
        Ok(e) => e,
        Err(reason) => return reject(&state, reason, &peer),
    };
    tracing::info!(order_no = %order_no, trade_status = n.trade_status(),
        refund = n.carries_refund(), "Alipay notify verified");
    let record = NotificationRecord {
        provider: ProviderKind::Alipay,
        event_id: n.event_id(),
        order_no: order_no.clone(),
        result: String::new(),
        source_ip: Some(peer.ip().to_string()),
        received_at: state.clock.now(),
        deliveries: 1,
        // The signature is inside the body: the body alone re-verifies.
        raw_body: raw.to_vec(),
        headers: Vec::new(),
    };
    let outcome = match event {
        Some(event) => state
            .ask(
                &order_no,
                OrderCommand::Callback {
                    event,
                    notification: Box::new(record),
                },
            )
            .await
            .map(|_| ()),
        None => payd_actors::commands::log_notification(&state.store, record)
            .await
            .map_err(crate::http::error::ApiError::from),
    };
    match outcome {
        // Durable: now Alipay may stop delivering it.
        Ok(()) => reply(StatusCode::OK, "success"),
        Err(e) => {
            tracing::error!(order_no = %order_no, error = %e.detail, "Alipay notify not applied; Alipay will retry");
            fail(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>body{{font-family:system-ui,sans-serif;max-width:28rem;\
         margin:2rem auto;padding:0 1rem}}.amount{{font-size:2rem;font-weight:600}}</style>\
         </head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    (status, Html(html)).into_response()
}

fn status_sentence(order: &Order) -> &'static str {
    use payd_actors::model::OrderStatus::*;
    match order.status {
        Pending => {
            "We have not received the payment yet. This page does not update by itself: reload it in a moment."
        }
        Paid => "Payment received. Thank you!",
        PartiallyRefunded => "Paid; part of it has been refunded.",
        Refunded => "This order has been refunded.",
        Cancelled => "This order was cancelled.",
        Expired => "This order expired before it was paid.",
        Failed => "This order could not be completed.",
    }
}

/// Where Alipay page pay (and Stripe Checkout) send the buyer back. Alipay's return
/// is signed: it must verify, or the page says so and shows nothing. Stripe's carries
/// only `order_no`: its page is a plain read of that (unguessable) order's stored
/// status, as the order page is. Either way the status shown is the one payd has
/// stored, because a return only says the buyer came back, not that money arrived.
pub(super) async fn payment_return(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Response {
    let unverified = || {
        page(
            StatusCode::BAD_REQUEST,
            "Payment return not verified",
            "<p>This return could not be verified, so it says nothing about the payment. \
             Your order page shows its real status.</p>",
        )
    };
    let query = query.unwrap_or_default();
    let Ok(params) = wire::form_decode_map(query.as_bytes()) else {
        return unverified();
    };
    let from_alipay = ["sign", "sign_type", "app_id", "out_trade_no"]
        .iter()
        .any(|k| params.contains_key(*k));
    if !from_alipay {
        return match params.get("order_no") {
            Some(no) if looks_like_order_no(no) => {
                order_page(&state, no, ProviderKind::Stripe).unwrap_or_else(unverified)
            }
            _ => unverified(),
        };
    }
    let Some(alipay) = state.alipay.clone() else {
        return unverified();
    };
    match alipay.verify_return(&query) {
        Ok(no) => order_page(&state, &no, ProviderKind::Alipay).unwrap_or_else(unverified),
        Err(reason) => {
            tracing::warn!(reason = reason.as_str(), "Alipay return refused");
            unverified()
        }
    }
}

/// The stored status of `order_no`, if it is an order of `provider`; `None` when it
/// is not (the caller says the return could not be verified).
fn order_page(state: &AppState, order_no: &str, provider: ProviderKind) -> Option<Response> {
    let order = match state
        .store
        .read()
        .and_then(|v| v.get(&ORDERS, &order_no.to_string()))
    {
        Ok(Some(o)) if o.provider == provider => o,
        Ok(_) => return None,
        Err(e) => {
            tracing::error!(order_no = %order_no, error = %e, "payment return: storage unreadable");
            return Some(page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "<p>The order cannot be read right now; reload this page in a moment.</p>",
            ));
        }
    };
    let body = format!(
        "<p>Order <code>{no}</code></p><p>{name}</p>\
         <p class=\"amount\">{yuan}.{fen:02} {currency}</p>\
         <p>Status: <strong id=\"status\" data-status=\"{status}\">{status}</strong></p><p>{sentence}</p>",
        no = escape(&order.order_no),
        name = escape(&order.package.name),
        yuan = order.amount_minor / 100,
        fen = order.amount_minor % 100,
        currency = escape(order.currency.as_str()),
        status = order.status.as_str(),
        sentence = status_sentence(&order),
    );
    Some(page(StatusCode::OK, "Payment", &body))
}
