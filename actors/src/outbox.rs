//! The webhook outbox: events for the host application, written in the same storage
//! command as the transition they announce, and the delivery state the deliverer
//! (in the binary, which owns HTTP) keeps on them.
//!
//! Why an outbox rather than "send after commit": a crash between the commit and the
//! send would lose the event, and a send before the commit could announce something
//! the disk does not hold. Written with the transition, an event exists exactly when
//! its change does. Events are numbered by one outbox sequence; events of one order
//! are delivered one at a time in that sequence (the deliverer's rule), so a host
//! application never hears `order.refunded` before `order.paid`.

use payd_storage::{ReadView, StorageError, Store};

use crate::commands::{CommandCtx, CommandError, run};
use crate::model::{Order, RefundState, Timestamp, WebhookEvent, WebhookStatus};
use crate::tables::{
    PendingWebhook, WEBHOOK_CURSOR, WEBHOOK_CURSOR_KEY, WEBHOOK_EVENTS, WEBHOOK_PENDING,
    WebhookCursor,
};

/// One event a transition announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub id: String,
    pub event_type: String,
    pub refund_no: Option<String>,
}

/// A refund is announced when it appears (`refund.created`, while processing) and
/// when it ends (`refund.succeeded`, `refund.failed`).
fn refund_event_type(state: RefundState) -> String {
    match state {
        RefundState::Processing => "refund.created".into(),
        s => format!("refund.{}", s.as_str()),
    }
}

/// What the change from `before` to `after` announces, in delivery order: refund
/// changes first (the cause), then the order's new status (the effect). `after`
/// carries its new version. Pure, so it can be tested without storage.
pub fn announcements(before: &Order, after: &Order) -> Vec<Announcement> {
    let mut out = Vec::new();
    for r in &after.refunds {
        let old = before.refunds.iter().find(|b| b.refund_no == r.refund_no);
        if old.is_some_and(|o| o.state == r.state) {
            continue;
        }
        out.push(Announcement {
            id: format!("{}:{}", r.refund_no, r.state.as_str()),
            event_type: refund_event_type(r.state),
            refund_no: Some(r.refund_no.clone()),
        });
    }
    if after.status != before.status {
        out.push(Announcement {
            id: format!("{}:{}", after.order_no, after.version),
            event_type: format!("order.{}", after.status.as_str()),
            refund_no: None,
        });
    }
    out
}

/// Writes the events of a transition into the outbox, inside the transition's own
/// command. `after` must already carry its new version.
pub(crate) fn record_transition<C: CommandCtx>(
    ctx: &mut C,
    before: &Order,
    after: &Order,
) -> Result<(), CommandError> {
    let events = announcements(before, after);
    if events.is_empty() {
        return Ok(());
    }
    let cursor_key = WEBHOOK_CURSOR_KEY.to_string();
    let mut cursor = ctx
        .get(&WEBHOOK_CURSOR, &cursor_key)?
        .unwrap_or(WebhookCursor { next_seq: 1 });
    for a in events {
        let seq = cursor.next_seq;
        cursor.next_seq += 1;
        let at = after.updated_at;
        ctx.put(
            &WEBHOOK_EVENTS,
            &seq,
            &WebhookEvent {
                id: a.id,
                event_type: a.event_type,
                order: after.clone(),
                refund_no: a.refund_no,
                created_at: at,
                status: WebhookStatus::Pending,
                attempts: 0,
                next_attempt_at: at,
                last_attempt_at: None,
                last_error: None,
                delivered_at: None,
            },
        );
        ctx.put(
            &WEBHOOK_PENDING,
            &seq,
            &PendingWebhook {
                order_no: after.order_no.clone(),
                next_attempt_at: at,
            },
        );
    }
    ctx.put(&WEBHOOK_CURSOR, &cursor_key, &cursor);
    Ok(())
}

// ---- the deliverer's side ----

/// The first `limit` undelivered events in outbox order.
pub fn pending(view: &ReadView, limit: usize) -> Result<Vec<(u64, PendingWebhook)>, StorageError> {
    view.scan_prefix(&WEBHOOK_PENDING, &(), limit, false)
}

pub fn event(view: &ReadView, seq: u64) -> Result<Option<WebhookEvent>, StorageError> {
    view.get(&WEBHOOK_EVENTS, &seq)
}

/// The host application acknowledged the event.
pub async fn mark_delivered(store: &Store, seq: u64, at: Timestamp) -> Result<(), CommandError> {
    run(store, move |ctx| {
        let Some(mut ev) = ctx.get(&WEBHOOK_EVENTS, &seq)? else {
            return Err(CommandError::NotFound);
        };
        ev.attempts += 1;
        ev.last_attempt_at = Some(at);
        ev.status = WebhookStatus::Delivered;
        ev.delivered_at = Some(at);
        ev.last_error = None;
        ctx.put(&WEBHOOK_EVENTS, &seq, &ev);
        ctx.delete(&WEBHOOK_PENDING, &seq);
        Ok(())
    })
    .await
}

/// An attempt failed. The next one waits `retry_ms[attempts - 1]`; after the last
/// delay has been used, the event is dead (kept, listed, re-sendable). Returns the
/// event as it now stands.
pub async fn mark_failed(
    store: &Store,
    seq: u64,
    at: Timestamp,
    error: String,
    retry_ms: Vec<i64>,
) -> Result<WebhookEvent, CommandError> {
    run(store, move |ctx| {
        let Some(mut ev) = ctx.get(&WEBHOOK_EVENTS, &seq)? else {
            return Err(CommandError::NotFound);
        };
        ev.attempts += 1;
        ev.last_attempt_at = Some(at);
        ev.last_error = Some(error);
        match retry_ms.get(ev.attempts as usize - 1) {
            Some(&delay) => {
                ev.next_attempt_at = at.plus_ms(delay);
                ctx.put(
                    &WEBHOOK_PENDING,
                    &seq,
                    &PendingWebhook {
                        order_no: ev.order.order_no.clone(),
                        next_attempt_at: ev.next_attempt_at,
                    },
                );
            }
            None => {
                ev.status = WebhookStatus::Dead;
                ctx.delete(&WEBHOOK_PENDING, &seq);
            }
        }
        ctx.put(&WEBHOOK_EVENTS, &seq, &ev);
        Ok(ev)
    })
    .await
}

/// Drops a work-list entry whose event is gone or no longer pending, so the
/// deliverer never spins on it.
pub async fn forget_pending(store: &Store, seq: u64) -> Result<(), CommandError> {
    run(store, move |ctx| {
        let stale = ctx
            .get(&WEBHOOK_EVENTS, &seq)?
            .is_none_or(|ev| ev.status != WebhookStatus::Pending);
        if stale {
            ctx.delete(&WEBHOOK_PENDING, &seq);
        }
        Ok(())
    })
    .await
}

// ---- the operator's side ----

/// The event with this id, by a walk over the outbox (an admin action, rare).
pub fn find(view: &ReadView, id: &str) -> Result<Option<(u64, WebhookEvent)>, StorageError> {
    Ok(view
        .scan_prefix(&WEBHOOK_EVENTS, &(), usize::MAX, false)?
        .into_iter()
        .find(|(_, ev)| ev.id == id))
}

/// A page of events, newest first, optionally of one status.
pub fn list(
    view: &ReadView,
    status: Option<WebhookStatus>,
    page: usize,
    page_size: usize,
) -> Result<(Vec<(u64, WebhookEvent)>, usize), StorageError> {
    let all: Vec<(u64, WebhookEvent)> = view
        .scan_prefix(&WEBHOOK_EVENTS, &(), usize::MAX, true)?
        .into_iter()
        .filter(|(_, ev)| status.is_none_or(|s| ev.status == s))
        .collect();
    let total = all.len();
    let items = all
        .into_iter()
        .skip(page.saturating_sub(1).saturating_mul(page_size))
        .take(page_size)
        .collect();
    Ok((items, total))
}

/// Queues an event for delivery again, whatever its status, with a fresh retry
/// schedule. Events of its order still follow the outbox order.
pub async fn resend(store: &Store, seq: u64, now: Timestamp) -> Result<WebhookEvent, CommandError> {
    run(store, move |ctx| {
        let Some(mut ev) = ctx.get(&WEBHOOK_EVENTS, &seq)? else {
            return Err(CommandError::NotFound);
        };
        ev.status = WebhookStatus::Pending;
        ev.attempts = 0;
        ev.next_attempt_at = now;
        ev.delivered_at = None;
        ctx.put(&WEBHOOK_EVENTS, &seq, &ev);
        ctx.put(
            &WEBHOOK_PENDING,
            &seq,
            &PendingWebhook {
                order_no: ev.order.order_no.clone(),
                next_attempt_at: now,
            },
        );
        Ok(ev)
    })
    .await
}

// ---- retention ----

/// Up to `limit` delivered events acknowledged before `cutoff`, oldest first.
pub fn prunable(
    view: &ReadView,
    cutoff: Timestamp,
    limit: usize,
) -> Result<Vec<u64>, StorageError> {
    Ok(view
        .scan_prefix(&WEBHOOK_EVENTS, &(), usize::MAX, false)?
        .into_iter()
        .filter(|(_, ev)| {
            ev.status == WebhookStatus::Delivered && ev.delivered_at.is_some_and(|t| t < cutoff)
        })
        .take(limit)
        .map(|(seq, _)| seq)
        .collect())
}

/// Deletes the given events if they are still delivered before `cutoff` (a resend
/// since the scan keeps one). Pending and dead events are never pruned.
pub async fn prune_delivered(
    store: &Store,
    seqs: Vec<u64>,
    cutoff: Timestamp,
) -> Result<usize, CommandError> {
    run(store, move |ctx| {
        let mut pruned = 0;
        for seq in seqs {
            let Some(ev) = ctx.get(&WEBHOOK_EVENTS, &seq)? else {
                continue;
            };
            if ev.status == WebhookStatus::Delivered && ev.delivered_at.is_some_and(|t| t < cutoff)
            {
                ctx.delete(&WEBHOOK_EVENTS, &seq);
                pruned += 1;
            }
        }
        Ok(pruned)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Actor, EntitlementHold, OrderStatus, PackageKind, PackageSnapshot, RefundEntry,
    };

    fn order() -> Order {
        Order {
            order_no: "PD1".into(),
            user_id: "u".into(),
            package_id: "p".into(),
            trade_opened: true,
            expire_at: Timestamp(0),
            version: 1,
            ..Order::for_tests(
                PackageSnapshot {
                    name: "p".into(),
                    kind: PackageKind::Points,
                    membership_type: None,
                    validity_days: None,
                    queries_count: None,
                    points: Some(1),
                    bonus_points: None,
                },
                100,
                Timestamp(0),
            )
        }
    }

    fn refund(no: &str, state: RefundState) -> RefundEntry {
        RefundEntry {
            refund_no: no.into(),
            amount_minor: 100,
            reason: "r".into(),
            state,
            provider_refund_id: None,
            created_at: Timestamp(0),
            finished_at: None,
            requested_by: Actor::Admin,
            failure_reason: None,
            transaction_id: None,
            hold: EntitlementHold::default(),
            attempts: 0,
        }
    }

    #[test]
    fn a_status_change_announces_the_order_with_its_version() {
        let before = order();
        let mut after = before.clone();
        after.status = OrderStatus::Paid;
        after.version = 2;
        assert_eq!(
            announcements(&before, &after),
            vec![Announcement {
                id: "PD1:2".into(),
                event_type: "order.paid".into(),
                refund_no: None
            }]
        );
        // Anything else (a timer, a QR code) announces nothing.
        let mut quiet = before.clone();
        quiet.poll_count = 3;
        quiet.version = 2;
        assert!(announcements(&before, &quiet).is_empty());
    }

    #[test]
    fn refund_changes_come_before_the_order_status_they_cause() {
        let mut before = order();
        before.status = OrderStatus::Paid;
        let mut created = before.clone();
        created
            .refunds
            .push(refund("PD1R01", RefundState::Processing));
        created.version = 2;
        let ids: Vec<_> = announcements(&before, &created)
            .into_iter()
            .map(|a| (a.id, a.event_type))
            .collect();
        assert_eq!(
            ids,
            vec![("PD1R01:processing".into(), "refund.created".into())]
        );
        let mut done = created.clone();
        done.refunds[0].state = RefundState::Succeeded;
        done.status = OrderStatus::Refunded;
        done.version = 3;
        let ids: Vec<_> = announcements(&created, &done)
            .into_iter()
            .map(|a| (a.id, a.event_type))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("PD1R01:succeeded".into(), "refund.succeeded".into()),
                ("PD1:3".into(), "order.refunded".into()),
            ]
        );
    }
}
