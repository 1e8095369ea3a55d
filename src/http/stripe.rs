//! `POST /api/v1/notify/stripe`: Stripe webhook events.
//!
//! Verified over the raw body before anything is parsed; a rejected event gets a
//! non-2xx answer, is counted by reason, and changes nothing. A verified one is
//! deduplicated on its event id, tied to an order of Stripe's, turned into an order
//! event where it decides something (see `Stripe::event_for`) and logged with it.
//! Stripe advises acknowledging first and working afterwards; payd answers 200 only
//! once the effect is durable instead, so an event payd did not keep is delivered
//! again — the work is small, and Stripe's retries make up for a slow answer.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use payd_actors::model::{NotificationRecord, ProviderKind};
use payd_actors::order::actor::OrderCommand;
use payd_actors::tables::{NOTIFICATIONS, ORDERS};
use serde_json::json;

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::providers::rejections::{RejectReason, Rejected};
use crate::providers::stripe::webhook::Meaning;

const PROVIDER: &str = "stripe";
const SIGNATURE_HEADER: &str = "stripe-signature";

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn reject(state: &AppState, reason: RejectReason, ip: &SocketAddr) -> Response {
    state.rejections.record(Rejected {
        provider: PROVIDER,
        reason: reason.as_str(),
        source_ip: Some(ip.ip().to_string()),
        at: state.clock.now(),
    });
    let status = match reason {
        RejectReason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        RejectReason::MissingSignature | RejectReason::BadSignature | RejectReason::Stale => {
            StatusCode::UNAUTHORIZED
        }
        // Malformed, unknown order, wrong mode, and whatever else may be added.
        _ => StatusCode::BAD_REQUEST,
    };
    reply(status, json!({"error": reason.as_str()}))
}

/// Stripe delivers again on any non-2xx; this says "not now", not "invalid".
fn retry_later(order_no: &str, what: &str, detail: &str) -> Response {
    tracing::error!(order_no = %order_no, error = %detail, "{what}; Stripe will deliver the event again");
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "temporarily unable to process"}),
    )
}

fn received() -> Response {
    reply(StatusCode::OK, json!({"received": true}))
}

pub(super) async fn notify(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(stripe) = state.stripe.clone() else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": "Stripe is not configured"}),
        );
    };
    let Ok(raw) = axum::body::to_bytes(body, state.config.server.body_limit_bytes).await else {
        return reject(&state, RejectReason::TooLarge, &peer);
    };
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let event = match stripe.verify_event(signature.as_deref(), &raw) {
        Ok(e) => e,
        Err(reason) => return reject(&state, reason, &peer),
    };
    let record = |order_no: String| NotificationRecord {
        provider: ProviderKind::Stripe,
        event_id: event.id.clone(),
        order_no,
        result: String::new(),
        source_ip: Some(peer.ip().to_string()),
        received_at: state.clock.now(),
        deliveries: 1,
        raw_body: raw.to_vec(),
        headers: signature
            .iter()
            .map(|v| (SIGNATURE_HEADER.to_string(), v.clone()))
            .collect(),
    };

    // Delivered before: count the delivery on the first record, change nothing.
    let key = (ProviderKind::Stripe.as_str().to_string(), event.id.clone());
    let first = state
        .store
        .read()
        .ok()
        .and_then(|v| v.get(&NOTIFICATIONS, &key).ok().flatten());
    if let Some(first) = first {
        let order_no = first.order_no.clone();
        return match payd_actors::commands::log_notification(&state.store, record(order_no.clone()))
            .await
        {
            Ok(()) => {
                tracing::info!(order_no = %order_no, event_type = %event.kind, "Stripe event delivered again; acknowledged");
                received()
            }
            Err(e) => retry_later(&order_no, "Stripe event not logged", &e.to_string()),
        };
    }

    let meaning = match crate::providers::stripe::webhook::classify(&event) {
        Ok(m) => m,
        Err(reason) => return reject(&state, reason, &peer),
    };
    let Some(hint) = meaning.hint() else {
        tracing::debug!(event_type = %event.kind, "Stripe event of a type payd does not use; acknowledged");
        return received();
    };
    let order_no = match stripe.order_no_for(&hint).await {
        Ok(Some(no)) => no,
        Ok(None) => return reject(&state, RejectReason::UnknownOrder, &peer),
        Err(e) => return retry_later("-", "Stripe event's order not found", &e.message),
    };
    let order = state
        .store
        .read()
        .ok()
        .and_then(|v| v.get(&ORDERS, &order_no).ok().flatten())
        .filter(|o| o.provider == ProviderKind::Stripe);
    let Some(order) = order else {
        return reject(&state, RejectReason::UnknownOrder, &peer);
    };
    if matches!(meaning, Meaning::Logged { .. }) {
        tracing::info!(order_no = %order_no, event_type = %event.kind, "Stripe event logged");
    }
    let order_event = match stripe.event_for(meaning, &order).await {
        Ok(e) => e,
        Err(e) => {
            return retry_later(
                &order_no,
                "Stripe not reachable to confirm an event",
                &e.message,
            );
        }
    };
    let outcome = match order_event {
        Some(order_event) => state
            .ask(
                &order_no,
                OrderCommand::Callback {
                    event: order_event,
                    notification: Box::new(record(order_no.clone())),
                },
            )
            .await
            .map(|_| ()),
        None => {
            // Verified and kept, though it decided nothing.
            let mut logged = record(order_no.clone());
            logged.result = "logged".into();
            payd_actors::commands::log_notification(&state.store, logged)
                .await
                .map_err(ApiError::from)
        }
    };
    match outcome {
        // Durable: now Stripe may stop delivering it.
        Ok(()) => received(),
        Err(e) => retry_later(&order_no, "Stripe event not applied", &e.detail),
    }
}
