//! Provider callbacks. Each is verified over its raw bytes before anything reaches an
//! actor; a verified one goes to the order's actor with its log entry, and the
//! provider hears "success" only once the effect is durable. A rejected one gets the
//! provider's failure format, is counted by reason, and changes nothing.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use payd_actors::model::{NotificationRecord, PaymentSource, ProviderKind};
use payd_actors::order::actor::OrderCommand;
use payd_actors::order::machine::Event;
use payd_actors::tables::ORDERS;
use serde_json::json;

use crate::http::AppState;
use crate::providers::rejections::{RejectReason, Rejected};
use crate::providers::wechat::v3::V3Notification;

/// Headers kept with a logged callback, so it can be re-verified later.
const WECHAT_SIGNATURE_HEADERS: [&str; 5] = [
    "wechatpay-timestamp",
    "wechatpay-nonce",
    "wechatpay-signature",
    "wechatpay-serial",
    "wechatpay-signature-type",
];

fn wechat_fail(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": "FAIL", "message": message})),
    )
        .into_response()
}

fn reject(
    state: &AppState,
    provider: &'static str,
    reason: RejectReason,
    ip: &SocketAddr,
) -> Response {
    state.rejections.record(Rejected {
        provider,
        reason: reason.as_str(),
        source_ip: Some(ip.ip().to_string()),
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
    wechat_fail(status, reason.as_str())
}

pub(super) async fn wechat(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(wechat) = state.wechat.clone() else {
        return wechat_fail(StatusCode::NOT_FOUND, "WeChat Pay is not configured");
    };
    let Ok(raw) = axum::body::to_bytes(body, state.config.server.body_limit_bytes).await else {
        return reject(&state, "wechat", RejectReason::TooLarge, &peer);
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let notification = match wechat.verify_callback(header, &raw).await {
        Ok(n) => n,
        Err(reason) => return reject(&state, "wechat", reason, &peer),
    };
    let (event_id, order_no, event) = match notification {
        V3Notification::Payment {
            event_id,
            transaction,
        } => {
            let event = match transaction.trade_state.as_str() {
                "SUCCESS" => match wechat.report(&transaction, PaymentSource::Callback) {
                    Ok(report) => Some(Event::Confirmed(report)),
                    Err(_) => return reject(&state, "wechat", RejectReason::Malformed, &peer),
                },
                // Payment notifications are only sent on success; anything else is
                // logged and acknowledged, and polling learns the state.
                _ => None,
            };
            (event_id, transaction.out_trade_no, event)
        }
        V3Notification::Refund { event_id, refund } => {
            // Refund records arrive with the refunds issue; until then a refund
            // notification is verified, logged and acknowledged.
            let order_no = refund.out_trade_no.clone().unwrap_or_default();
            (event_id, order_no, None)
        }
    };
    // The order must exist and be WeChat's.
    let known = state
        .store
        .read()
        .ok()
        .and_then(|v| v.get(&ORDERS, &order_no).ok().flatten())
        .is_some_and(|o| o.provider == ProviderKind::WechatV3);
    if !known {
        return reject(&state, "wechat", RejectReason::UnknownOrder, &peer);
    }
    let record = NotificationRecord {
        provider: ProviderKind::WechatV3,
        event_id,
        order_no: order_no.clone(),
        result: String::new(),
        source_ip: Some(peer.ip().to_string()),
        received_at: state.clock.now(),
        deliveries: 1,
        raw_body: raw.to_vec(),
        headers: WECHAT_SIGNATURE_HEADERS
            .iter()
            .filter_map(|h| header(h).map(|v| (h.to_string(), v)))
            .collect(),
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
        // Durable: now WeChat may stop retrying.
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::error!(order_no = %order_no, error = %e.detail, "WeChat callback not applied; WeChat will retry");
            wechat_fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "temporarily unable to process",
            )
        }
    }
}
