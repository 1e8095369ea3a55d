//! Provider callbacks. Each is verified over its raw bytes before anything reaches an
//! actor; a verified one goes to the order's actor with its log entry, and the
//! provider hears "success" only once the effect is durable. A rejected one gets the
//! provider's failure format, is counted by reason, and changes nothing.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use payd_actors::model::{NotificationRecord, PaymentSource, ProviderKind};
use payd_actors::order::actor::OrderCommand;
use payd_actors::order::machine::Event;
use payd_actors::tables::ORDERS;
use serde_json::json;

use crate::http::AppState;
use crate::providers::rejections::{RejectReason, Rejected};
use crate::providers::wechat::v2::{V2Notification, notify_reply};
use crate::providers::wechat::v3::V3Notification;

/// A callback that passed its provider's verification.
pub(super) struct Verified {
    pub provider: ProviderKind,
    pub event_id: String,
    pub order_no: String,
    /// What it means for the order; `None`: logged and acknowledged only.
    pub event: Option<Event>,
    /// The headers its signature needs, kept with the raw body in the log.
    pub headers: Vec<(String, String)>,
}

/// Why a verified-looking callback was not acknowledged.
pub(super) enum NotApplied {
    Rejected(RejectReason),
    /// Not durable (storage, actor): the provider must retry.
    Retry,
}

/// Reads the body within the configured limit.
pub(super) async fn read_body(state: &AppState, body: Body) -> Result<Bytes, RejectReason> {
    axum::body::to_bytes(body, state.config.server.body_limit_bytes)
        .await
        .map_err(|_| RejectReason::TooLarge)
}

/// Counts and logs a rejected callback (in memory only: no disk sync per forgery).
pub(super) fn count_rejection(
    state: &AppState,
    provider: &'static str,
    reason: RejectReason,
    peer: &SocketAddr,
) {
    state.rejections.record(Rejected {
        provider,
        reason: reason.as_str(),
        source_ip: Some(peer.ip().to_string()),
        at: state.clock.now(),
    });
}

/// Checks the order is this provider's, then applies the event with its log entry in
/// one durable step (or logs the callback alone). Ok means: safe to acknowledge.
pub(super) async fn apply_verified(
    state: &AppState,
    peer: &SocketAddr,
    raw: &Bytes,
    v: Verified,
) -> Result<(), NotApplied> {
    let known = state
        .store
        .read()
        .ok()
        .and_then(|view| view.get(&ORDERS, &v.order_no).ok().flatten())
        .is_some_and(|o| o.provider == v.provider);
    if !known {
        return Err(NotApplied::Rejected(RejectReason::UnknownOrder));
    }
    let record = NotificationRecord {
        provider: v.provider,
        event_id: v.event_id,
        order_no: v.order_no.clone(),
        result: String::new(),
        source_ip: Some(peer.ip().to_string()),
        received_at: state.clock.now(),
        deliveries: 1,
        raw_body: raw.to_vec(),
        headers: v.headers,
    };
    // A retry of an event whose effect is already durable: count the delivery and
    // answer, without activating the order's actor.
    let source = crate::http::guard::callback_label(v.provider);
    let event_id = record.event_id.clone();
    if state.protection.callbacks.seen(source, &event_id) {
        let mut record = record;
        record.result = "duplicate".into();
        return match payd_actors::commands::log_notification(&state.store, record).await {
            Ok(()) => {
                crate::metrics::callback_deduplicated(source);
                Ok(())
            }
            Err(e) => {
                tracing::error!(order_no = %v.order_no, error = %e, "callback delivery not logged; the provider will retry");
                Err(NotApplied::Retry)
            }
        };
    }
    let outcome = match v.event {
        Some(event) => state
            .ask(
                &v.order_no,
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
    if outcome.is_ok() {
        state.protection.callbacks.remember(source, &event_id);
    }
    outcome.map_err(|e| {
        tracing::error!(order_no = %v.order_no, provider = v.provider.as_str(), error = %e.detail,
            "callback not applied; the provider will retry");
        NotApplied::Retry
    })
}

// ---- WeChat Pay ----

/// Headers kept with a logged v3 callback, so it can be re-verified later.
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

fn wechat_v2_reply(status: StatusCode, ok: bool, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        notify_reply(ok, message),
    )
        .into_response()
}

fn rejection_status(reason: RejectReason) -> StatusCode {
    match reason {
        RejectReason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        RejectReason::Malformed | RejectReason::UnknownOrder | RejectReason::WrongMerchant => {
            StatusCode::BAD_REQUEST
        }
        RejectReason::MissingSignature
        | RejectReason::BadSignature
        | RejectReason::UnknownSerial
        | RejectReason::Stale
        | RejectReason::Undecryptable => StatusCode::UNAUTHORIZED,
    }
}

/// `POST /api/v1/notify/wechat` and `/api/v1/notify/wechat/refund`: v3 JSON or v2
/// XML, whichever API version is configured.
pub(super) async fn wechat(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let v2 = state.wechat_v2.is_some();
    let reply = |outcome: Result<(), NotApplied>| -> Response {
        match (outcome, v2) {
            (Ok(()), false) => StatusCode::NO_CONTENT.into_response(),
            (Ok(()), true) => wechat_v2_reply(StatusCode::OK, true, "OK"),
            (Err(NotApplied::Rejected(reason)), false) => {
                count_rejection(&state, "wechat", reason, &peer);
                wechat_fail(rejection_status(reason), reason.as_str())
            }
            (Err(NotApplied::Rejected(reason)), true) => {
                count_rejection(&state, "wechat", reason, &peer);
                wechat_v2_reply(rejection_status(reason), false, reason.as_str())
            }
            (Err(NotApplied::Retry), false) => wechat_fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "temporarily unable to process",
            ),
            (Err(NotApplied::Retry), true) => wechat_v2_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
                "temporarily unable to process",
            ),
        }
    };
    if state.wechat.is_none() && !v2 {
        return wechat_fail(StatusCode::NOT_FOUND, "WeChat Pay is not configured");
    }
    let raw = match read_body(&state, body).await {
        Ok(raw) => raw,
        Err(reason) => return reply(Err(NotApplied::Rejected(reason))),
    };
    let verified = if v2 {
        verify_wechat_v2(&state, &raw)
    } else {
        verify_wechat_v3(&state, &headers, &raw, None).await
    };
    match verified {
        Ok(v) => reply(apply_verified(&state, &peer, &raw, v).await),
        Err(reason) => reply(Err(NotApplied::Rejected(reason))),
    }
}

/// Verifies a v3 callback now, or — for a logged one being re-processed —
/// as of `received_at` (see `WechatV3::verify_logged_callback`).
pub(super) async fn verify_wechat_v3(
    state: &AppState,
    headers: &HeaderMap,
    raw: &[u8],
    received_at: Option<payd_actors::model::Timestamp>,
) -> Result<Verified, RejectReason> {
    let wechat = state.wechat.clone().ok_or(RejectReason::Malformed)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let kept: Vec<(String, String)> = WECHAT_SIGNATURE_HEADERS
        .iter()
        .filter_map(|h| header(h).map(|v| (h.to_string(), v)))
        .collect();
    let notification = match received_at {
        None => wechat.verify_callback(header, raw).await?,
        Some(at) => wechat.verify_logged_callback(header, raw, at).await?,
    };
    match notification {
        V3Notification::Payment {
            event_id,
            transaction,
        } => {
            // Payment notifications are only sent on success; anything else is
            // logged and acknowledged, and polling learns the state.
            let event = match transaction.trade_state.as_str() {
                "SUCCESS" => Some(Event::Confirmed(
                    wechat
                        .report(&transaction, PaymentSource::Callback)
                        .map_err(|_| RejectReason::Malformed)?,
                )),
                _ => None,
            };
            Ok(Verified {
                provider: ProviderKind::WechatV3,
                event_id,
                order_no: transaction.out_trade_no,
                event,
                headers: kept,
            })
        }
        // Refund records arrive with the refunds issue; until then a refund
        // notification is verified, logged and acknowledged.
        V3Notification::Refund { event_id, refund } => Ok(Verified {
            provider: ProviderKind::WechatV3,
            event_id,
            order_no: refund.out_trade_no.unwrap_or_default(),
            event: None,
            headers: kept,
        }),
    }
}

/// v2 notifications carry no timestamp: a logged one verifies as it did then.
pub(super) fn verify_wechat_v2(state: &AppState, raw: &[u8]) -> Result<Verified, RejectReason> {
    let wechat = state.wechat_v2.clone().ok_or(RejectReason::Malformed)?;
    match wechat.verify_notify(raw)? {
        V2Notification::Payment {
            event_id,
            order_no,
            report,
        } => Ok(Verified {
            provider: ProviderKind::WechatV2,
            event_id,
            order_no,
            event: report.map(Event::Confirmed),
            headers: vec![],
        }),
        V2Notification::Refund {
            event_id, order_no, ..
        } => Ok(Verified {
            provider: ProviderKind::WechatV2,
            event_id,
            order_no,
            event: None,
            headers: vec![],
        }),
    }
}
