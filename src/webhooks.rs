//! Outbound webhooks to the host application: the deliverer that drains the outbox,
//! the JSON shape of an event and its signature.
//!
//! Events are written to the outbox (`payd_actors::outbox`) by the transition they
//! announce, so this task only reads the outbox and records what happened to each
//! attempt; it never sits on the order path, and a slow or dead endpoint costs the
//! payments nothing. Delivery is at least once and in order per order: an order's
//! next event is not sent before its previous one was answered 2xx (or died after
//! the last retry), while different orders are delivered concurrently. Because the
//! outbox is in storage, a restart resumes where the last run stopped; an attempt
//! cut short by the restart is simply sent again.
//!
//! Signature: `Payd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//! with `webhooks.secret`, fresh for every attempt (README, "Webhooks to your
//! application", shows how to check it).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use payd_actors::clock::SharedClock;
use payd_actors::model::{Order, Timestamp, WebhookEvent, WebhookStatus};
use payd_actors::order::OrderObserver;
use payd_actors::outbox;
use payd_storage::Store;
use serde_json::json;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{Secret, WebhooksConfig};
use crate::http::views::{OrderView, rfc3339};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Payd-Signature";
/// Orders whose head event may be in flight at once.
const MAX_IN_FLIGHT: usize = 16;
/// Undelivered events looked at per pass (their heads are what is sent).
const SCAN_LIMIT: usize = 10_000;
/// Longest sleep between passes when nothing nudges the deliverer.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Pause after a failure to record an attempt (storage unavailable), per order.
const STORAGE_BACKOFF: Duration = Duration::from_secs(1);

/// What the deliverer needs from the configuration.
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: Secret,
    pub retry: Vec<Duration>,
    pub timeout: Duration,
}

impl WebhookSettings {
    /// `None` when `webhooks.url` is not set (the configuration guarantees a secret
    /// whenever it is).
    pub fn from_config(c: &WebhooksConfig) -> Option<WebhookSettings> {
        Some(WebhookSettings {
            url: c.url.clone()?,
            secret: c.secret.clone()?,
            retry: c.retry.clone(),
            timeout: c.timeout,
        })
    }
}

/// `t=<t>,v1=<hex>` for `body` signed at unix time `t`.
pub fn signature_header(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is unreachable in practice.
        Err(_) => return format!("t={t},v1="),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={t},v1={}",
        data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
    )
}

fn refund_json(order: &Order, refund_no: &str) -> Option<serde_json::Value> {
    let r = order.refunds.iter().find(|r| r.refund_no == refund_no)?;
    Some(json!({
        "refund_no": r.refund_no,
        "order_no": order.order_no,
        "amount": r.amount_minor,
        "currency": order.currency.as_str(),
        "reason": r.reason,
        "status": r.state.as_str(),
        "provider_refund_id": r.provider_refund_id,
        "failure_reason": r.failure_reason,
        "created_at": rfc3339(r.created_at),
        "finished_at": r.finished_at.map(rfc3339),
    }))
}

/// The event as the host application receives it. Rendered from the stored snapshot,
/// so every attempt (and a re-send) carries the same body.
pub fn render(ev: &WebhookEvent) -> Vec<u8> {
    let mut data = json!({ "order": OrderView::from(&ev.order) });
    if let Some(refund) = ev
        .refund_no
        .as_deref()
        .and_then(|no| refund_json(&ev.order, no))
    {
        data["refund"] = refund;
    }
    let body = json!({
        "id": ev.id,
        "type": ev.event_type,
        "created": rfc3339(ev.created_at),
        "data": data,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Wakes the deliverer after every durable transition, so new events go out at once
/// rather than at the next poll.
pub struct Nudge(pub Arc<Notify>);

impl OrderObserver for Nudge {
    fn transition(&self, _before: &Order, _after: &Order, _event: &str) {
        self.0.notify_one();
    }
}

struct Deliverer {
    store: Store,
    clock: SharedClock,
    settings: WebhookSettings,
    client: reqwest::Client,
    retry_ms: Vec<i64>,
}

/// Starts the deliverer. It runs until the handle is aborted (on stop); deliveries in
/// flight are dropped with it and sent again by the next run.
pub fn spawn(
    store: Store,
    clock: SharedClock,
    settings: WebhookSettings,
    nudge: Arc<Notify>,
) -> JoinHandle<()> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.timeout)
        .timeout(settings.timeout)
        .user_agent(concat!("payd/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    let retry_ms = settings
        .retry
        .iter()
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .collect();
    let d = Arc::new(Deliverer {
        store,
        clock,
        settings,
        client,
        retry_ms,
    });
    tokio::spawn(run(d, nudge))
}

async fn run(d: Arc<Deliverer>, nudge: Arc<Notify>) {
    tracing::info!(attempts = d.retry_ms.len() + 1, "webhook deliverer started");
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        let now = d.clock.now();
        let next_due = fill(&d, now, &mut tasks, &mut in_flight);
        let wait = match next_due {
            Some(t) => Duration::from_millis(u64::try_from(t.ms() - now.ms()).unwrap_or(0)),
            None => IDLE_POLL,
        }
        .min(IDLE_POLL);
        tokio::select! {
            done = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match done {
                    Some(Ok((id, ()))) => Some(id),
                    Some(Err(e)) => Some(e.id()),
                    None => None,
                };
                if let Some(id) = id {
                    in_flight.remove(&id);
                }
            }
            () = nudge.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Starts a delivery for every order whose oldest undelivered event is due and not
/// already in flight. Returns when the earliest event not yet due will be.
fn fill(
    d: &Arc<Deliverer>,
    now: Timestamp,
    tasks: &mut JoinSet<()>,
    in_flight: &mut HashMap<tokio::task::Id, String>,
) -> Option<Timestamp> {
    let pending = match d.store.read().and_then(|v| outbox::pending(&v, SCAN_LIMIT)) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "webhook outbox unreadable; retrying");
            return Some(now.plus_ms(STORAGE_BACKOFF.as_millis() as i64));
        }
    };
    let busy: HashSet<String> = in_flight.values().cloned().collect();
    let mut heads = HashSet::new();
    let mut next_due: Option<Timestamp> = None;
    for (seq, p) in pending {
        // Only the oldest undelivered event of an order may go.
        if !heads.insert(p.order_no.clone()) || busy.contains(&p.order_no) {
            continue;
        }
        if p.next_attempt_at > now {
            next_due = Some(next_due.map_or(p.next_attempt_at, |t| t.min(p.next_attempt_at)));
            continue;
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            // A slot frees when a delivery finishes, which wakes the loop.
            break;
        }
        let handle = tasks.spawn(deliver(d.clone(), seq));
        in_flight.insert(handle.id(), p.order_no);
    }
    next_due
}

async fn deliver(d: Arc<Deliverer>, seq: u64) {
    let ev = match d.store.read().and_then(|v| outbox::event(&v, seq)) {
        Ok(Some(ev)) if ev.status == WebhookStatus::Pending => ev,
        Ok(_) => {
            if let Err(e) = outbox::forget_pending(&d.store, seq).await {
                tracing::warn!(error = %e, seq, "stale webhook work-list entry not dropped");
                tokio::time::sleep(STORAGE_BACKOFF).await;
            }
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, seq, "webhook event unreadable; retrying");
            tokio::time::sleep(STORAGE_BACKOFF).await;
            return;
        }
    };
    let order_no = ev.order.order_no.clone();
    let body = render(&ev);
    let t = d.clock.now().ms().div_euclid(1000);
    let signature = signature_header(d.settings.secret.expose(), t, &body);
    let outcome = d
        .client
        .post(&d.settings.url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header("Payd-Event-Id", ev.id.as_str())
        .header("Payd-Event-Type", ev.event_type.as_str())
        .body(body)
        .send()
        .await;
    let failure = match outcome {
        Ok(resp) if resp.status().is_success() => None,
        Ok(resp) => Some(format!("HTTP {}", resp.status().as_u16())),
        Err(e) if e.is_timeout() => Some(format!(
            "timed out after {}",
            humantime::format_duration(d.settings.timeout)
        )),
        // Without the URL: it may carry credentials.
        Err(e) => Some(e.without_url().to_string()),
    };
    let at = d.clock.now();
    let recorded = match failure {
        None => {
            tracing::info!(order_no = %order_no, event_id = %ev.id, event_type = %ev.event_type,
                attempt = ev.attempts + 1, "webhook delivered");
            outbox::mark_delivered(&d.store, seq, at).await
        }
        Some(error) => {
            match outbox::mark_failed(&d.store, seq, at, error.clone(), d.retry_ms.clone()).await {
                Ok(after) if after.status == WebhookStatus::Dead => {
                    tracing::error!(order_no = %order_no, event_id = %ev.id, attempts = after.attempts,
                        error = %error, "webhook dead after its last attempt; re-send it from the admin API");
                    Ok(())
                }
                Ok(after) => {
                    tracing::warn!(order_no = %order_no, event_id = %ev.id, attempt = after.attempts,
                        error = %error, next_attempt_at = %rfc3339(after.next_attempt_at),
                        "webhook delivery failed; will retry");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = recorded {
        tracing::error!(order_no = %order_no, event_id = %ev.id, error = %e,
            "webhook attempt not recorded; it will be sent again");
        tokio::time::sleep(STORAGE_BACKOFF).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec
        assert_eq!(
            signature_header("whsec", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=8ad37ba156048ae0e0a5533c75cdf26fee88b07f93cb57ee4c80adb053012032"
        );
    }
}
