//! Live updates over WebSocket (API.md, Live updates).
//!
//! Browsers cannot put `Authorization` on a WebSocket and a token in a URL ends up
//! in logs, so a client first trades its JWT for a ticket (`POST /api/v1/ws/ticket`):
//! random, single use, valid 60 s, kept here only as its SHA-256. The socket
//! (`GET /api/v1/ws?ticket=…`) is accepted only from an allowed `Origin` and closes
//! when the JWT behind the ticket expires.
//!
//! Each socket is one task. It registers a bounded channel with the hub (see
//! `payd_actors::hub`) and is the only writer of its socket, so the answer to a
//! `subscribe` (read from storage) and the pushes of later transitions can never
//! reach the client out of order. A client that stops reading fills its channel and
//! is dropped by the hub; a client that stops answering pings is dropped here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use payd_actors::hub::{Connection, HubMsg, LiveEvent, connection_id};
use payd_actors::model::Timestamp;
use payd_actors::tables::ORDERS;
use ractor::ActorRef;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::AuthUser;
use crate::http::views::rfc3339;
use crate::order_no::looks_like_order_no;

/// Limits of the live channel. Fixed in code: none is a deployment decision.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// How long a ticket can be redeemed.
    pub ticket_ttl: Duration,
    /// Tickets outstanding at once, all users together; then issuing answers 503.
    pub max_tickets: usize,
    /// Tickets one user may hold unredeemed; the oldest is forgotten beyond this.
    pub max_tickets_per_user: usize,
    /// Events buffered per connection before it counts as not reading.
    pub buffer: usize,
    /// How often the server pings.
    pub ping_every: Duration,
    /// A connection silent this long (no pong, no message) is dropped.
    pub dead_after: Duration,
    /// One frame's write may take this long before the client counts as stuck.
    pub write_timeout: Duration,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
}

impl Default for LiveSettings {
    fn default() -> Self {
        LiveSettings {
            ticket_ttl: Duration::from_secs(60),
            max_tickets: 10_000,
            max_tickets_per_user: 16,
            buffer: 32,
            ping_every: Duration::from_secs(20),
            dead_after: Duration::from_secs(50),
            write_timeout: Duration::from_secs(10),
            max_message_bytes: 4096,
        }
    }
}

struct Ticket {
    user_id: String,
    /// `exp` of the JWT that bought the ticket, in Unix seconds.
    token_exp_secs: u64,
    expires_at: Timestamp,
}

/// The hub's handle and the outstanding tickets.
pub struct Live {
    pub hub: ActorRef<HubMsg>,
    pub settings: LiveSettings,
    /// SHA-256 of the ticket → what it grants.
    tickets: Mutex<HashMap<[u8; 32], Ticket>>,
}

impl Live {
    pub fn new(hub: ActorRef<HubMsg>, settings: LiveSettings) -> Live {
        Live {
            hub,
            settings,
            tickets: Mutex::new(HashMap::new()),
        }
    }

    fn issue(
        &self,
        user_id: &str,
        token_exp_secs: u64,
        now: Timestamp,
    ) -> Option<(String, Timestamp)> {
        let ticket = data_encoding::BASE64URL_NOPAD.encode(&rand::random::<[u8; 32]>());
        let expires_at = now.plus_ms(self.settings.ticket_ttl.as_millis() as i64);
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        tickets.retain(|_, t| t.expires_at > now);
        let mine: Vec<([u8; 32], Timestamp)> = tickets
            .iter()
            .filter(|(_, t)| t.user_id == user_id)
            .map(|(k, t)| (*k, t.expires_at))
            .collect();
        if mine.len() >= self.settings.max_tickets_per_user
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, at)| *at)
        {
            tickets.remove(oldest);
        }
        if tickets.len() >= self.settings.max_tickets {
            return None;
        }
        tickets.insert(
            digest(&ticket),
            Ticket {
                user_id: user_id.to_string(),
                token_exp_secs,
                expires_at,
            },
        );
        Some((ticket, expires_at))
    }

    /// Redeems a ticket: it is gone afterwards whether or not it was still valid.
    fn redeem(&self, ticket: &str, now: Timestamp) -> Option<Ticket> {
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        tickets
            .remove(&digest(ticket))
            .filter(|t| t.expires_at > now)
    }
}

fn digest(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

pub(super) async fn issue_ticket(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Response, ApiError> {
    let now = state.clock.now();
    let (ticket, expires_at) = state
        .live
        .issue(&user.user_id, user.claims.exp, now)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "live_unavailable",
                "too many live connections are being opened; retry shortly",
            )
        })?;
    Ok(Json(json!({"ticket": ticket, "expires_at": rfc3339(expires_at)})).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct ConnectQuery {
    ticket: Option<String>,
}

/// The scheme and authority of a URL: `https://a.example:8443/x` → `https://a.example:8443`.
fn origin_of(url: &str) -> &str {
    let rest_at = url.find("://").map_or(0, |i| i + 3);
    match url[rest_at..].find('/') {
        Some(i) => &url[..rest_at + i],
        None => url,
    }
}

/// Browsers always send `Origin` on a WebSocket handshake; other clients (a host
/// application's backend) need not, and are not what the check protects against.
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    let same = |candidate: &str| candidate.eq_ignore_ascii_case(origin);
    if same(origin_of(&state.config.server.base_url)) {
        return true;
    }
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok())
        && (same(&format!("http://{host}")) || same(&format!("https://{host}")))
    {
        return true;
    }
    state.config.server.cors_origins.iter().any(|o| same(o))
}

pub(super) async fn connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ConnectQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if !origin_allowed(&state, &headers) {
        tracing::warn!("live connection refused: origin not allowed");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not open a live connection; see server.cors_origins",
        ));
    }
    let upgrade = upgrade.map_err(|r| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            format!("this route speaks WebSocket only: {}", r.body_text()),
        )
    })?;
    let now = state.clock.now();
    let ticket = q
        .ticket
        .as_deref()
        .and_then(|t| state.live.redeem(t, now))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "the ticket is missing, unknown, already used or expired; get a new one from POST /api/v1/ws/ticket",
            )
        })?;
    let remaining_ms = (ticket.token_exp_secs as i64)
        .saturating_mul(1000)
        .saturating_sub(now.ms());
    if remaining_ms <= 0 {
        return Err(ApiError::unauthorized(
            "the token behind this ticket has expired",
        ));
    }
    let token_deadline = Instant::now() + Duration::from_millis(remaining_ms as u64);
    let max = state.live.settings.max_message_bytes;
    Ok(upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            run(socket, state, ticket.user_id, token_deadline).await;
        }))
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Subscribe { order_no: String },
}

fn wire(event: &LiveEvent) -> String {
    match event {
        LiveEvent::OrderStatus {
            order_no,
            status,
            at,
        } => json!({"type": "order_status", "order_no": order_no, "status": status.as_str(),
            "at": rfc3339(*at)}),
        LiveEvent::PaymentSuccess {
            order_no,
            amount_minor,
            at,
        } => json!({"type": "payment_success", "order_no": order_no, "amount": amount_minor,
            "at": rfc3339(*at)}),
    }
    .to_string()
}

/// Why a connection ended, for the log and the close frame.
enum End {
    ClientLeft,
    Kicked,
    TokenExpired,
    Silent,
    WriteFailed,
}

async fn run(mut socket: WebSocket, state: AppState, user_id: String, token_deadline: Instant) {
    let settings = state.live.settings.clone();
    let (sender, mut events) = mpsc::channel(settings.buffer);
    let kick = Arc::new(Notify::new());
    let id = connection_id();
    let registered = state.live.hub.cast(HubMsg::Register(Connection {
        id,
        user_id: user_id.clone(),
        sender,
        kick: kick.clone(),
    }));
    if registered.is_err() {
        tracing::warn!("live connection refused: the hub is not running");
        return;
    }
    tracing::debug!(%user_id, connection = id, "live connection opened");
    let mut ping =
        tokio::time::interval_at(Instant::now() + settings.ping_every, settings.ping_every);
    let mut last_heard = Instant::now();
    let end = loop {
        let out = tokio::select! {
            () = kick.notified() => break End::Kicked,
            () = tokio::time::sleep_until(token_deadline) => break End::TokenExpired,
            _ = ping.tick() => {
                if last_heard.elapsed() > settings.dead_after {
                    break End::Silent;
                }
                Message::Ping(Default::default())
            }
            event = events.recv() => match event {
                Some(event) => Message::Text(wire(&event).into()),
                None => break End::Kicked,
            },
            incoming = socket.recv() => {
                last_heard = Instant::now();
                match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break End::ClientLeft,
                    Some(Ok(Message::Text(text))) => Message::Text(answer(&state, &user_id, &text).into()),
                    Some(Ok(_)) => continue,
                }
            }
        };
        if !write(&mut socket, out, &kick, settings.write_timeout).await {
            break End::WriteFailed;
        }
    };
    let _ = state.live.hub.cast(HubMsg::Unregister {
        user_id: user_id.clone(),
        id,
    });
    let (code, reason, why) = match end {
        End::ClientLeft => (1000, "bye", "client closed"),
        End::Kicked => (
            1008,
            "dropped: not reading fast enough",
            "dropped by the hub",
        ),
        End::TokenExpired => (4001, "token expired", "token expired"),
        End::Silent => (1001, "no answer to pings", "no answer to pings"),
        End::WriteFailed => (1011, "write failed", "write failed or timed out"),
    };
    if !matches!(end, End::ClientLeft | End::Kicked | End::WriteFailed) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(settings.write_timeout, socket.send(frame)).await;
    }
    tracing::debug!(%user_id, connection = id, why, "live connection closed");
}

/// Writes one frame unless the hub drops the connection or the client stalls first.
async fn write(socket: &mut WebSocket, msg: Message, kick: &Notify, timeout: Duration) -> bool {
    tokio::select! {
        sent = socket.send(msg) => sent.is_ok(),
        () = kick.notified() => {
            // Put the permit back so the main loop ends the connection as kicked.
            kick.notify_one();
            true
        }
        () = tokio::time::sleep(timeout) => false,
    }
}

/// The reply to a client's message: the current status of an order it owns.
fn answer(state: &AppState, user_id: &str, text: &str) -> String {
    let error = |code: &str, detail: &str| {
        json!({"type": "error", "code": code, "detail": detail}).to_string()
    };
    let Ok(ClientMessage::Subscribe { order_no }) = serde_json::from_str::<ClientMessage>(text)
    else {
        return error("bad_message", r#"send {"type":"subscribe","order_no":"…"}"#);
    };
    let order = if looks_like_order_no(&order_no) {
        state
            .store
            .read()
            .and_then(|view| view.get(&ORDERS, &order_no))
    } else {
        Ok(None)
    };
    match order {
        Ok(Some(order)) if order.user_id == user_id => wire(&LiveEvent::OrderStatus {
            order_no: order.order_no,
            status: order.status,
            at: order.updated_at,
        }),
        Ok(_) => json!({"type": "error", "code": "not_found", "order_no": order_no,
            "detail": "no such order"})
        .to_string(),
        Err(_) => error("storage_unavailable", "the order could not be read; retry"),
    }
}

#[cfg(test)]
mod tests {
    use super::origin_of;

    #[test]
    fn origin_of_strips_the_path() {
        assert_eq!(origin_of("http://127.0.0.1:3007"), "http://127.0.0.1:3007");
        assert_eq!(
            origin_of("https://pay.example/app/x"),
            "https://pay.example"
        );
    }
}
