//! Storage commands of the domain: each one is read-modify-write inside the storage
//! writer's transaction, so everything that must happen together lands together —
//! an order transition with its deadlines, timeline entry and entitlement grant.

use std::sync::Arc;

use payd_storage::{ReadView, StorageError, Store, WriteCtx};

use crate::model::{
    Entitlements, HistoryEntry, Membership, NotificationRecord, Order, OrderStatus, Package,
    PackageKind, PackageSnapshot, TimelineEntry, TimerKind, Timestamp,
};
use crate::tables::*;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error(
        "the order changed underneath this transition (stored version {stored}, expected {expected})"
    )]
    VersionConflict { stored: u64, expected: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Submits a command and folds the store's error into the command's.
pub async fn run<T, F>(store: &Store, command: F) -> Result<T, CommandError>
where
    F: FnOnce(&mut WriteCtx<'_>) -> Result<T, CommandError> + Send + 'static,
    T: Send + 'static,
{
    store.submit(command).await?
}

const DAY_MS: i64 = 86_400_000;

fn deadline_key(order_no: &str, kind: TimerKind, at: Timestamp) -> (i64, String, u8) {
    (at.ms(), order_no.to_string(), kind.as_u8())
}

/// Inserts packages whose id is not stored yet; never overwrites. Returns how many.
pub async fn seed_packages(store: &Store, packages: Vec<Package>) -> Result<usize, CommandError> {
    run(store, move |ctx| {
        let mut inserted = 0;
        for p in packages {
            if ctx.get(&PACKAGES, &p.id)?.is_none() {
                ctx.put(&PACKAGES, &p.id, &p);
                inserted += 1;
            }
        }
        Ok(inserted)
    })
    .await
}

/// Stores a new order with its index entries, deadlines and first timeline entry.
pub async fn create_order(store: &Store, order: Order) -> Result<Order, CommandError> {
    run(store, move |ctx| {
        if ctx.get(&ORDERS, &order.order_no)?.is_some() {
            return Err(CommandError::AlreadyExists);
        }
        ctx.put(&ORDERS, &order.order_no, &order);
        ctx.put(
            &USER_ORDERS,
            &(
                order.user_id.clone(),
                order.created_at.ms(),
                order.order_no.clone(),
            ),
            &Marker,
        );
        for (kind, t) in order.timers.iter() {
            ctx.put(
                &DEADLINES,
                &deadline_key(&order.order_no, kind, t.at),
                &DeadlineRef {
                    generation: t.generation,
                },
            );
        }
        ctx.put(
            &TIMELINE,
            &(order.order_no.clone(), order.version),
            &TimelineEntry {
                at: order.created_at,
                from: OrderStatus::Pending,
                to: OrderStatus::Pending,
                event: "created".into(),
                actor: crate::model::Actor::User,
                reason: None,
            },
        );
        Ok(order)
    })
    .await
}

/// One order transition, as the order actor hands it to storage.
pub struct TransitionWrite {
    /// The version the actor stepped from; a mismatch means another writer was there.
    pub from_version: u64,
    pub next: Order,
    pub grant: bool,
    pub timeline: Option<TimelineEntry>,
    pub tiers: Arc<Vec<String>>,
    /// The verified callback that caused it, logged in the same transaction.
    pub notification: Option<NotificationRecord>,
}

/// Persists a transition: the order, its deadline index entries (old ones removed,
/// new ones added), its timeline entry and — if it was paid — the grant with its
/// history entry. All in one command, so all durable together.
pub async fn apply_transition(store: &Store, w: TransitionWrite) -> Result<Order, CommandError> {
    run(store, move |ctx| {
        let TransitionWrite {
            from_version,
            mut next,
            grant,
            timeline,
            tiers,
            notification,
        } = w;
        let stored = ctx
            .get(&ORDERS, &next.order_no)?
            .ok_or(CommandError::NotFound)?;
        if stored.version != from_version {
            return Err(CommandError::VersionConflict {
                stored: stored.version,
                expected: from_version,
            });
        }
        for (kind, t) in stored.timers.iter() {
            if next.timers.get(kind) != Some(t) {
                ctx.delete(&DEADLINES, &deadline_key(&next.order_no, kind, t.at));
            }
        }
        for (kind, t) in next.timers.iter() {
            if stored.timers.get(kind) != Some(t) {
                ctx.put(
                    &DEADLINES,
                    &deadline_key(&next.order_no, kind, t.at),
                    &DeadlineRef {
                        generation: t.generation,
                    },
                );
            }
        }
        next.version = stored.version + 1;
        if let Some(entry) = timeline {
            ctx.put(&TIMELINE, &(next.order_no.clone(), next.version), &entry);
        }
        // Granted at most once, whatever the caller believes.
        if grant && !stored.granted && next.granted {
            let mut ent = ctx.get(&ENTITLEMENTS, &next.user_id)?.unwrap_or_default();
            let now = next.updated_at;
            let entry = grant_package(&mut ent, &next.package, &tiers, now, &next.order_no);
            ctx.put(&HISTORY, &(next.user_id.clone(), ent.history_len), &entry);
            ent.history_len += 1;
            ctx.put(&ENTITLEMENTS, &next.user_id, &ent);
        }
        ctx.put(&ORDERS, &next.order_no, &next);
        if let Some(n) = notification {
            put_notification(ctx, n)?;
        }
        Ok(next)
    })
    .await
}

/// Logs a verified callback; a repeated event id counts a delivery on the first record.
fn put_notification(ctx: &mut WriteCtx<'_>, n: NotificationRecord) -> Result<(), CommandError> {
    let key = (n.provider.as_str().to_string(), n.event_id.clone());
    match ctx.get(&NOTIFICATIONS, &key)? {
        Some(mut first) => {
            first.deliveries += 1;
            ctx.put(&NOTIFICATIONS, &key, &first);
        }
        None => ctx.put(&NOTIFICATIONS, &key, &n),
    }
    Ok(())
}

/// Logs a verified callback that changed nothing (a duplicate).
pub async fn log_notification(store: &Store, n: NotificationRecord) -> Result<(), CommandError> {
    run(store, move |ctx| put_notification(ctx, n)).await
}

fn tier_rank(tiers: &[String], t: &str) -> usize {
    tiers.iter().position(|x| x == t).unwrap_or(0)
}

/// Applies a purchased package to a user's entitlements and returns the history entry.
///
/// Membership: a higher tier replaces a lower one (a lower tier bought during a higher
/// one keeps the higher tier); the expiry extends from max(now, current expiry) by the
/// package's validity; its queries are added — unless the current membership has
/// lapsed, whose queries lapsed with it. Points: paid and bonus points kept apart.
pub fn grant_package(
    ent: &mut Entitlements,
    package: &PackageSnapshot,
    tiers: &[String],
    now: Timestamp,
    order_no: &str,
) -> HistoryEntry {
    let mut entry = HistoryEntry {
        at: now,
        change: "grant".into(),
        order_no: Some(order_no.to_string()),
        reason: "order paid".into(),
        membership: None,
        points_delta: 0,
        bonus_points_delta: 0,
        queries_delta: 0,
        refund_no: None,
    };
    match package.kind {
        PackageKind::Membership => {
            let new_type = package.membership_type.clone().unwrap_or_default();
            let days = i64::from(package.validity_days.unwrap_or(0));
            let queries = u64::from(package.queries_count.unwrap_or(0));
            let next = match ent.active_membership(now) {
                None => Membership {
                    membership_type: new_type,
                    expires_at: now.plus_ms(days * DAY_MS),
                    queries_remaining: queries,
                },
                Some(cur) => {
                    let membership_type =
                        if tier_rank(tiers, &new_type) > tier_rank(tiers, &cur.membership_type) {
                            new_type
                        } else {
                            cur.membership_type.clone()
                        };
                    Membership {
                        membership_type,
                        expires_at: cur.expires_at.max(now).plus_ms(days * DAY_MS),
                        queries_remaining: cur.queries_remaining.saturating_add(queries),
                    }
                }
            };
            entry.queries_delta = queries as i64;
            entry.membership = Some(next.clone());
            ent.membership = Some(next);
        }
        PackageKind::Points => {
            let points = package.points.unwrap_or(0);
            let bonus = package.bonus_points.unwrap_or(0);
            ent.points_paid = ent.points_paid.saturating_add(points);
            ent.points_bonus = ent.points_bonus.saturating_add(bonus);
            entry.points_delta = points as i64;
            entry.bonus_points_delta = bonus as i64;
        }
    }
    entry
}

/// What an `Idempotency-Key` allows the request to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First use: the key is now held by this request.
    Proceed,
    /// Same key, same request: answer this again.
    Replay { status: u16, body: String },
    /// Same key, another request body.
    Mismatch,
    /// The first request with this key is still running.
    InUse,
}

/// An in-flight key older than this is taken over (its request died with a crash).
const IDEMPOTENCY_STALE_MS: i64 = 60_000;

pub async fn idempotency_begin(
    store: &Store,
    user_id: String,
    key: String,
    request_hash: Vec<u8>,
    now: Timestamp,
) -> Result<IdempotencyBegin, CommandError> {
    run(store, move |ctx| {
        let k = (user_id, key);
        if let Some(rec) = ctx.get(&IDEMPOTENCY, &k)? {
            let fresh = rec.created_at.plus_ms(24 * 3_600_000) > now;
            if fresh {
                if rec.request_hash != request_hash {
                    return Ok(IdempotencyBegin::Mismatch);
                }
                match rec.state {
                    IdempotencyState::Done { status, body } => {
                        return Ok(IdempotencyBegin::Replay { status, body });
                    }
                    IdempotencyState::InFlight
                        if rec.created_at.plus_ms(IDEMPOTENCY_STALE_MS) > now =>
                    {
                        return Ok(IdempotencyBegin::InUse);
                    }
                    IdempotencyState::InFlight => {}
                }
            }
        }
        ctx.put(
            &IDEMPOTENCY,
            &k,
            &IdempotencyRecord {
                request_hash,
                created_at: now,
                state: IdempotencyState::InFlight,
            },
        );
        Ok(IdempotencyBegin::Proceed)
    })
    .await
}

/// Remembers the response for a key (`Some`), or releases the key so the request may
/// be retried (`None`, after a server-side failure).
pub async fn idempotency_finish(
    store: &Store,
    user_id: String,
    key: String,
    response: Option<(u16, String)>,
) -> Result<(), CommandError> {
    run(store, move |ctx| {
        let k = (user_id, key);
        match (response, ctx.get(&IDEMPOTENCY, &k)?) {
            (Some((status, body)), Some(mut rec)) => {
                rec.state = IdempotencyState::Done { status, body };
                ctx.put(&IDEMPOTENCY, &k, &rec);
            }
            (None, Some(_)) => ctx.delete(&IDEMPOTENCY, &k),
            (_, None) => {}
        }
        Ok(())
    })
    .await
}

// ---- reads ----

pub fn list_packages(view: &ReadView, active_only: bool) -> Result<Vec<Package>, StorageError> {
    let mut all: Vec<Package> = view
        .scan_prefix(&PACKAGES, &(), usize::MAX, false)?
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p: &Package| p.is_active || !active_only)
        .collect();
    all.sort_by(|a, b| a.sort_order.cmp(&b.sort_order).then(a.id.cmp(&b.id)));
    Ok(all)
}

/// A page of a user's orders, newest first, optionally filtered by status.
pub fn list_user_orders(
    view: &ReadView,
    user_id: &str,
    status: Option<OrderStatus>,
    page: usize,
    page_size: usize,
) -> Result<(Vec<Order>, usize), StorageError> {
    let index = view.scan_prefix(&USER_ORDERS, &user_id.to_string(), usize::MAX, true)?;
    let mut total = 0;
    let mut items = Vec::new();
    let skip = page.saturating_sub(1).saturating_mul(page_size);
    for ((_, _, order_no), _) in index {
        let Some(order) = view.get(&ORDERS, &order_no)? else {
            continue;
        };
        if status.is_some_and(|s| s != order.status) {
            continue;
        }
        if total >= skip && items.len() < page_size {
            items.push(order);
        }
        total += 1;
    }
    Ok((items, total))
}

// ---- consumption ----

/// What the host application spends of a user's entitlements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumption {
    pub queries: u64,
    pub points: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeOutcome {
    /// Debited; the new entitlements.
    Done(Entitlements),
    /// The same key and request again: the first answer.
    Replay(String),
    /// The same key with another request.
    Mismatch,
    /// Not enough of `what`; nothing was debited.
    Insufficient(&'static str),
}

/// Debits queries (from the active membership) and points (bonus first, then paid)
/// atomically, once per `Idempotency-Key`: the debit, its history entry and the
/// remembered answer are one command. `render` turns the new entitlements into the
/// response body to remember.
pub async fn consume(
    store: &Store,
    user_id: String,
    key: String,
    request_hash: Vec<u8>,
    want: Consumption,
    now: Timestamp,
    render: Box<dyn Fn(&Entitlements) -> String + Send>,
) -> Result<ConsumeOutcome, CommandError> {
    run(store, move |ctx| {
        let idem_key = (user_id.clone(), format!("consume:{key}"));
        if let Some(rec) = ctx.get(&IDEMPOTENCY, &idem_key)?
            && rec.created_at.plus_ms(24 * 3_600_000) > now
        {
            if rec.request_hash != request_hash {
                return Ok(ConsumeOutcome::Mismatch);
            }
            if let IdempotencyState::Done { body, .. } = rec.state {
                return Ok(ConsumeOutcome::Replay(body));
            }
        }
        let mut ent = ctx.get(&ENTITLEMENTS, &user_id)?.unwrap_or_default();
        if want.queries > 0 {
            match ent.membership.as_mut().filter(|m| m.expires_at > now) {
                Some(m) if m.queries_remaining >= want.queries => {
                    m.queries_remaining -= want.queries
                }
                _ => return Ok(ConsumeOutcome::Insufficient("queries")),
            }
        }
        let (from_bonus, from_paid) = if want.points > 0 {
            if ent.points_bonus.saturating_add(ent.points_paid) < want.points {
                return Ok(ConsumeOutcome::Insufficient("points"));
            }
            let from_bonus = want.points.min(ent.points_bonus);
            (from_bonus, want.points - from_bonus)
        } else {
            (0, 0)
        };
        ent.points_bonus -= from_bonus;
        ent.points_paid -= from_paid;
        let entry = HistoryEntry {
            at: now,
            change: "consume".into(),
            order_no: None,
            reason: format!("consumed (Idempotency-Key {key})"),
            membership: ent.active_membership(now).cloned(),
            points_delta: -(from_paid as i64),
            bonus_points_delta: -(from_bonus as i64),
            queries_delta: -(want.queries as i64),
            refund_no: None,
        };
        ctx.put(&HISTORY, &(user_id.clone(), ent.history_len), &entry);
        ent.history_len += 1;
        ctx.put(&ENTITLEMENTS, &user_id, &ent);
        ctx.put(
            &IDEMPOTENCY,
            &idem_key,
            &IdempotencyRecord {
                request_hash,
                created_at: now,
                state: IdempotencyState::Done {
                    status: 200,
                    body: render(&ent),
                },
            },
        );
        Ok(ConsumeOutcome::Done(ent))
    })
    .await
}

/// A page of a user's entitlement history, newest first.
pub fn list_history(
    view: &ReadView,
    user_id: &str,
    page: usize,
    page_size: usize,
) -> Result<(Vec<HistoryEntry>, usize), StorageError> {
    let all = view.scan_prefix(&HISTORY, &user_id.to_string(), usize::MAX, true)?;
    let total = all.len();
    let items = all
        .into_iter()
        .skip(page.saturating_sub(1).saturating_mul(page_size))
        .take(page_size)
        .map(|(_, e)| e)
        .collect();
    Ok((items, total))
}
