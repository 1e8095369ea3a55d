//! Storage commands of the domain: each one is read-modify-write inside the storage
//! writer's transaction, so everything that must happen together lands together —
//! an order transition with its deadlines, timeline entry and entitlement grant.

use std::sync::Arc;

use payd_storage::{Key, ReadView, Record, StorageError, Store, Table, WriteCtx};

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

/// The reads and writes a storage command makes. The storage writer's [`WriteCtx`]
/// is the real one; the deterministic simulation (`order/simulation.rs`) runs the very
/// same command code against an in-memory store through it, so what it checks is what
/// production runs.
pub trait CommandCtx {
    fn get<K: Key, V: Record>(
        &self,
        table: &Table<K, V>,
        key: &K,
    ) -> Result<Option<V>, StorageError>;
    fn put<K: Key, V: Record>(&mut self, table: &Table<K, V>, key: &K, value: &V);
    fn delete<K: Key, V: Record>(&mut self, table: &Table<K, V>, key: &K);
}

impl CommandCtx for WriteCtx<'_> {
    fn get<K: Key, V: Record>(
        &self,
        table: &Table<K, V>,
        key: &K,
    ) -> Result<Option<V>, StorageError> {
        WriteCtx::get(self, table, key)
    }
    fn put<K: Key, V: Record>(&mut self, table: &Table<K, V>, key: &K, value: &V) {
        WriteCtx::put(self, table, key, value)
    }
    fn delete<K: Key, V: Record>(&mut self, table: &Table<K, V>, key: &K) {
        WriteCtx::delete(self, table, key)
    }
}

/// Submits a command and folds the store's error into the command's.
pub fn run<T, F>(store: &Store, command: F) -> impl Future<Output = Result<T, CommandError>> + '_
where
    F: FnOnce(&mut WriteCtx<'_>) -> Result<T, CommandError> + Send + 'static,
    T: Send + 'static,
{
    // Not an `async fn`, like `Store::submit`: the command is boxed now, not held.
    let submitted = store.submit(command);
    async move { submitted.await? }
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
pub fn create_order(
    store: &Store,
    order: Order,
) -> impl Future<Output = Result<Order, CommandError>> + '_ {
    create_order_priced(store, order, None)
}

/// Like `create_order`, with the pricing of an upgrade order stored beside it.
pub fn create_order_priced(
    store: &Store,
    order: Order,
    upgrade: Option<crate::model::UpgradePricing>,
) -> impl Future<Output = Result<Order, CommandError>> + '_ {
    run(store, move |ctx| write_new_order(ctx, order, upgrade))
}

/// Stores a new order together with the transition that opened its trade (`next`,
/// the order at its next version, and that transition's timeline entry), in one
/// command: a provider that opens trades locally costs one durable write per order,
/// not two. `outbox`: announce the opening's webhook events, as
/// [`apply_transition`] would. Answers the order as created and as stored (opened),
/// so the caller need not keep a copy of the first. (Plain functions returning the
/// command's future, so the order is moved into the command once instead of living
/// in every future.)
pub fn create_order_opened(
    store: &Store,
    order: Order,
    next: Order,
    entry: TimelineEntry,
    upgrade: Option<crate::model::UpgradePricing>,
    outbox: bool,
) -> impl Future<Output = Result<(Order, Order), CommandError>> + '_ {
    run(store, move |ctx| {
        let stored = write_new(ctx, &order, Some((next, entry)), upgrade, outbox)?;
        match stored {
            Some(stored) => Ok((order, stored)),
            None => Ok((order.clone(), order)),
        }
    })
}

/// The body of [`create_order_priced`]: what storing a new order writes.
pub fn write_new_order<C: CommandCtx>(
    ctx: &mut C,
    order: Order,
    upgrade: Option<crate::model::UpgradePricing>,
) -> Result<Order, CommandError> {
    write_new_order_opened(ctx, order, None, upgrade, false)
}

/// The body of [`create_order_opened`] (and, with `opened` = `None`, of
/// [`write_new_order`]): answers the order as stored.
pub fn write_new_order_opened<C: CommandCtx>(
    ctx: &mut C,
    order: Order,
    opened: Option<(Order, TimelineEntry)>,
    upgrade: Option<crate::model::UpgradePricing>,
    outbox: bool,
) -> Result<Order, CommandError> {
    Ok(write_new(ctx, &order, opened, upgrade, outbox)?.unwrap_or(order))
}

/// Writes a new order; answers its opened version when `opened` is given (`None`:
/// `order` itself is what was stored).
fn write_new<C: CommandCtx>(
    ctx: &mut C,
    order: &Order,
    opened: Option<(Order, TimelineEntry)>,
    upgrade: Option<crate::model::UpgradePricing>,
    outbox: bool,
) -> Result<Option<Order>, CommandError> {
    if ctx.get(&ORDERS, &order.order_no)?.is_some() {
        return Err(CommandError::AlreadyExists);
    }
    if let Some(u) = &upgrade {
        ctx.put(&UPGRADES, &order.order_no, u);
    }
    ctx.put(
        &USER_ORDERS,
        &(
            order.user_id.clone(),
            order.created_at.ms(),
            order.order_no.clone(),
        ),
        &Marker,
    );
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
    let next = match opened {
        None => None,
        Some((mut next, entry)) => {
            next.version = order.version + 1;
            ctx.put(&TIMELINE, &(next.order_no.clone(), next.version), &entry);
            if outbox {
                crate::outbox::record_transition(ctx, order, &next)?;
            }
            Some(next)
        }
    };
    let stored = next.as_ref().unwrap_or(order);
    for (kind, t) in stored.timers.iter() {
        ctx.put(
            &DEADLINES,
            &deadline_key(&stored.order_no, kind, t.at),
            &DeadlineRef {
                generation: t.generation,
            },
        );
    }
    ctx.put(&ORDERS, &stored.order_no, stored);
    Ok(next)
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
    /// Entitlement changes of refunds, applied in the same transaction.
    pub refund_ops: Vec<RefundOp>,
    /// Write the webhook events the transition announces to the outbox, in the same
    /// transaction (on when `webhooks.url` is set).
    pub outbox: bool,
}

/// What a refund does to the buyer's entitlement, with the transition that causes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOp {
    Hold(String),
    Clawback(String),
    Release(String),
}

/// Persists a transition: the order, its deadline index entries (old ones removed,
/// new ones added), its timeline entry and — if it was paid — the grant with its
/// history entry, and the webhook events it announces (the outbox). All in one
/// command, so all durable together.
pub async fn apply_transition(store: &Store, w: TransitionWrite) -> Result<Order, CommandError> {
    run(store, move |ctx| write_transition(ctx, w)).await
}

/// The body of [`apply_transition`]: what one transition writes, inside a command.
pub fn write_transition<C: CommandCtx>(
    ctx: &mut C,
    w: TransitionWrite,
) -> Result<Order, CommandError> {
    let TransitionWrite {
        from_version,
        mut next,
        grant,
        timeline,
        tiers,
        notification,
        refund_ops,
        outbox,
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
    // The first transition out of pending settles the order, whatever came after.
    next.settled_at = stored
        .settled_at
        .or((next.status != OrderStatus::Pending).then_some(next.updated_at));
    if let Some(entry) = timeline {
        ctx.put(&TIMELINE, &(next.order_no.clone(), next.version), &entry);
    }
    // Granted at most once, whatever the caller believes.
    if grant && !stored.granted && next.granted {
        let mut ent = ctx.get(&ENTITLEMENTS, &next.user_id)?.unwrap_or_default();
        let now = next.updated_at;
        let upgrade = ctx.get(&UPGRADES, &next.order_no)?;
        let entry = grant_package(
            &mut ent,
            &next.package,
            &tiers,
            now,
            &next.order_no,
            (next.amount_minor, &next.currency),
            upgrade.as_ref(),
        );
        ctx.put(&HISTORY, &(next.user_id.clone(), ent.history_len), &entry);
        ent.history_len += 1;
        ctx.put(&ENTITLEMENTS, &next.user_id, &ent);
    }
    if !refund_ops.is_empty() {
        let mut ent = ctx.get(&ENTITLEMENTS, &next.user_id)?.unwrap_or_default();
        for op in &refund_ops {
            if let Some(entry) = apply_refund_op(&mut ent, &mut next, op) {
                ctx.put(&HISTORY, &(next.user_id.clone(), ent.history_len), &entry);
                ent.history_len += 1;
            }
        }
        ctx.put(&ENTITLEMENTS, &next.user_id, &ent);
    }
    ctx.put(&ORDERS, &next.order_no, &next);
    if outbox {
        crate::outbox::record_transition(ctx, &stored, &next)?;
    }
    if let Some(n) = notification {
        put_notification(ctx, n)?;
    }
    Ok(next)
}

/// Logs a verified callback; a repeated event id counts a delivery on the first record.
pub(crate) fn put_notification<C: CommandCtx>(
    ctx: &mut C,
    n: NotificationRecord,
) -> Result<(), CommandError> {
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
#[allow(clippy::too_many_arguments)]
pub fn grant_package(
    ent: &mut Entitlements,
    package: &PackageSnapshot,
    tiers: &[String],
    now: Timestamp,
    order_no: &str,
    paid: (i64, &crate::model::Currency),
    upgrade: Option<&crate::model::UpgradePricing>,
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
            let fresh = |membership_type: String, value_minor: i64| Membership {
                membership_type,
                expires_at: now.plus_ms(days * DAY_MS),
                queries_remaining: queries,
                started_at: now,
                value_minor,
                currency: Some(paid.1.clone()),
            };
            let next = match (ent.active_membership(now), upgrade) {
                // An upgrade replaces the current membership from payment time; the
                // new run is worth the target's list price (credit + payment).
                (_, Some(u)) => fresh(new_type, u.list_price_minor),
                (None, None) => fresh(new_type, paid.0),
                (Some(cur), None) => {
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
                        started_at: cur.started_at,
                        value_minor: cur.value_minor.saturating_add(paid.0),
                        currency: cur.currency.clone().or(Some(paid.1.clone())),
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

/// Up to `limit` idempotency keys created before `cutoff`, for retention.
pub fn stale_idempotency_keys(
    view: &ReadView,
    cutoff: Timestamp,
    limit: usize,
) -> Result<Vec<(String, String)>, StorageError> {
    Ok(view
        .scan_prefix(&IDEMPOTENCY, &(), usize::MAX, false)?
        .into_iter()
        .filter(|(_, rec)| rec.created_at < cutoff)
        .take(limit)
        .map(|(k, _)| k)
        .collect())
}

/// Deletes the given idempotency keys if they are still older than `cutoff` (a key
/// reused since the scan is kept). Returns how many were deleted.
pub async fn prune_idempotency(
    store: &Store,
    keys: Vec<(String, String)>,
    cutoff: Timestamp,
) -> Result<usize, CommandError> {
    run(store, move |ctx| {
        let mut pruned = 0;
        for k in keys {
            if ctx
                .get(&IDEMPOTENCY, &k)?
                .is_some_and(|rec| rec.created_at < cutoff)
            {
                ctx.delete(&IDEMPOTENCY, &k);
                pruned += 1;
            }
        }
        Ok(pruned)
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

/// `x` scaled by the refunded share of the order, rounded down, in integers.
fn share(x: u64, refund_minor: i64, order_minor: i64) -> u64 {
    if order_minor <= 0 || refund_minor <= 0 {
        return 0;
    }
    (u128::from(x) * refund_minor as u128 / order_minor as u128) as u64
}

/// Holds, claws back or releases the refunded share of an order's entitlement, and
/// returns the history entry. The refunded share is the refund's fraction of the
/// order's amount: of its points and bonus points (kept apart), of its queries, and
/// of its membership days. Nothing goes below zero: what was already spent is a
/// shortfall, recorded as an anomaly when the refund succeeds.
fn apply_refund_op(
    ent: &mut Entitlements,
    order: &mut Order,
    op: &RefundOp,
) -> Option<HistoryEntry> {
    let (RefundOp::Hold(no) | RefundOp::Clawback(no) | RefundOp::Release(no)) = op;
    let idx = order.refunds.iter().position(|r| &r.refund_no == no)?;
    let amount = order.refunds[idx].amount_minor;
    let now = order.updated_at;
    let pkg = order.package.clone();
    let mut entry = HistoryEntry {
        at: now,
        change: String::new(),
        order_no: Some(order.order_no.clone()),
        reason: String::new(),
        membership: None,
        points_delta: 0,
        bonus_points_delta: 0,
        queries_delta: 0,
        refund_no: Some(no.clone()),
    };
    match op {
        RefundOp::Hold(_) => {
            let mut hold = crate::model::EntitlementHold::default();
            match pkg.kind {
                PackageKind::Points => {
                    let want_paid = share(pkg.points.unwrap_or(0), amount, order.amount_minor);
                    let want_bonus =
                        share(pkg.bonus_points.unwrap_or(0), amount, order.amount_minor);
                    hold.points_paid = want_paid.min(ent.points_paid);
                    hold.points_bonus = want_bonus.min(ent.points_bonus);
                    hold.shortfall = hold.points_paid < want_paid || hold.points_bonus < want_bonus;
                    ent.points_paid -= hold.points_paid;
                    ent.points_bonus -= hold.points_bonus;
                    ent.held_points_paid += hold.points_paid;
                    ent.held_points_bonus += hold.points_bonus;
                }
                PackageKind::Membership => {
                    let want_queries = share(
                        u64::from(pkg.queries_count.unwrap_or(0)),
                        amount,
                        order.amount_minor,
                    );
                    hold.membership_days = share(
                        u64::from(pkg.validity_days.unwrap_or(0)),
                        amount,
                        order.amount_minor,
                    ) as u32;
                    let available = ent
                        .membership
                        .as_ref()
                        .filter(|m| m.expires_at > now)
                        .map_or(0, |m| m.queries_remaining);
                    hold.queries = want_queries.min(available);
                    hold.shortfall = hold.queries < want_queries;
                    if let Some(m) = ent.membership.as_mut() {
                        m.queries_remaining -= hold.queries.min(m.queries_remaining);
                    }
                    ent.held_queries += hold.queries;
                }
            }
            entry.change = "refund_hold".into();
            entry.reason = "refunded share put on hold while the refund is processed".into();
            entry.points_delta = -(hold.points_paid as i64);
            entry.bonus_points_delta = -(hold.points_bonus as i64);
            entry.queries_delta = -(hold.queries as i64);
            order.refunds[idx].hold = hold;
        }
        RefundOp::Clawback(_) => {
            let hold = order.refunds[idx].hold.clone();
            ent.held_points_paid = ent.held_points_paid.saturating_sub(hold.points_paid);
            ent.held_points_bonus = ent.held_points_bonus.saturating_sub(hold.points_bonus);
            ent.held_queries = ent.held_queries.saturating_sub(hold.queries);
            if hold.membership_days > 0
                && let Some(m) = ent.membership.as_mut()
            {
                m.expires_at = m
                    .expires_at
                    .plus_ms(-(i64::from(hold.membership_days) * DAY_MS));
            }
            if hold.shortfall {
                order.anomalies.push(crate::model::Anomaly {
                    kind: crate::model::AnomalyKind::ClawbackShortfall,
                    transaction_id: order.provider_transaction_id.clone().unwrap_or_default(),
                    amount_minor: amount,
                    currency: order.currency.clone(),
                    detail: format!(
                        "refund {no}: part of the refunded share had already been spent"
                    ),
                    at: now,
                    resolved: false,
                });
            }
            entry.change = "refund_clawback".into();
            entry.reason = format!(
                "refund succeeded: held share taken back, membership shortened by {} days",
                hold.membership_days
            );
            entry.membership = ent.active_membership(now).cloned();
        }
        RefundOp::Release(_) => {
            let hold = order.refunds[idx].hold.clone();
            let paid = hold.points_paid.min(ent.held_points_paid);
            let bonus = hold.points_bonus.min(ent.held_points_bonus);
            let queries = hold.queries.min(ent.held_queries);
            ent.held_points_paid -= paid;
            ent.held_points_bonus -= bonus;
            ent.held_queries -= queries;
            ent.points_paid += paid;
            ent.points_bonus += bonus;
            if let Some(m) = ent.membership.as_mut() {
                m.queries_remaining += queries;
            }
            entry.change = "refund_release".into();
            entry.reason = "refund failed: held share released".into();
            entry.points_delta = paid as i64;
            entry.bonus_points_delta = bonus as i64;
            entry.queries_delta = queries as i64;
        }
    }
    Some(entry)
}

/// Appends an admin action to the audit log.
pub async fn audit(store: &Store, entry: crate::model::AuditEntry) -> Result<(), CommandError> {
    run(store, move |ctx| {
        let at = entry.at.ms();
        // A free sequence number within the same millisecond.
        let taken = ctx.scan_prefix(&AUDIT, &at, usize::MAX)?.len() as u64;
        ctx.put(&AUDIT, &(at, taken), &entry);
        Ok(())
    })
    .await
}

/// Every order matching `keep`, newest first, and the total.
pub fn scan_orders(
    view: &ReadView,
    keep: impl Fn(&Order) -> bool,
    page: usize,
    page_size: usize,
) -> Result<(Vec<Order>, usize), StorageError> {
    let mut all: Vec<Order> = view
        .scan_prefix(&ORDERS, &(), usize::MAX, false)?
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| keep(o))
        .collect();
    all.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(b.order_no.cmp(&a.order_no))
    });
    let total = all.len();
    let items = all
        .into_iter()
        .skip(page.saturating_sub(1).saturating_mul(page_size))
        .take(page_size)
        .collect();
    Ok((items, total))
}

// ---- operator changes to entitlements and packages ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdjustOutcome {
    Done(Entitlements),
    /// The change would take the balance (or the membership) below zero.
    Insufficient(&'static str),
    NoMembership,
}

/// Extends a user's membership by `days` (from now if it has lapsed), with a history
/// entry naming the admin's reason.
pub async fn extend_membership(
    store: &Store,
    user_id: String,
    days: u32,
    reason: String,
    now: Timestamp,
) -> Result<AdjustOutcome, CommandError> {
    run(store, move |ctx| {
        let mut ent = ctx.get(&ENTITLEMENTS, &user_id)?.unwrap_or_default();
        let Some(m) = ent.membership.as_mut() else {
            return Ok(AdjustOutcome::NoMembership);
        };
        if m.expires_at <= now {
            // A lapsed membership restarts now; its queries lapsed with it.
            m.expires_at = now;
            m.queries_remaining = 0;
            m.started_at = now;
        }
        m.expires_at = m.expires_at.plus_ms(i64::from(days) * DAY_MS);
        let entry = HistoryEntry {
            at: now,
            change: "admin_extend".into(),
            order_no: None,
            reason,
            membership: Some(m.clone()),
            points_delta: 0,
            bonus_points_delta: 0,
            queries_delta: 0,
            refund_no: None,
        };
        ctx.put(&HISTORY, &(user_id.clone(), ent.history_len), &entry);
        ent.history_len += 1;
        ctx.put(&ENTITLEMENTS, &user_id, &ent);
        Ok(AdjustOutcome::Done(ent))
    })
    .await
}

/// Credits (positive) or debits (negative) paid and bonus points by hand — the
/// "re-issue coins" every operator needs — never below zero.
pub async fn adjust_points(
    store: &Store,
    user_id: String,
    points: i64,
    bonus_points: i64,
    reason: String,
    now: Timestamp,
) -> Result<AdjustOutcome, CommandError> {
    run(store, move |ctx| {
        let mut ent = ctx.get(&ENTITLEMENTS, &user_id)?.unwrap_or_default();
        let paid = ent.points_paid as i128 + i128::from(points);
        let bonus = ent.points_bonus as i128 + i128::from(bonus_points);
        if paid < 0 || bonus < 0 {
            return Ok(AdjustOutcome::Insufficient("points"));
        }
        ent.points_paid = u64::try_from(paid).unwrap_or(u64::MAX);
        ent.points_bonus = u64::try_from(bonus).unwrap_or(u64::MAX);
        let entry = HistoryEntry {
            at: now,
            change: "admin_adjust".into(),
            order_no: None,
            reason,
            membership: None,
            points_delta: points,
            bonus_points_delta: bonus_points,
            queries_delta: 0,
            refund_no: None,
        };
        ctx.put(&HISTORY, &(user_id.clone(), ent.history_len), &entry);
        ent.history_len += 1;
        ctx.put(&ENTITLEMENTS, &user_id, &ent);
        Ok(AdjustOutcome::Done(ent))
    })
    .await
}

/// Creates a package (`create`: refused if the id exists) or replaces an existing
/// one (refused if it does not, or if its kind would change). Orders keep their
/// snapshot, so this never changes an existing order.
pub async fn put_package(
    store: &Store,
    package: Package,
    create: bool,
) -> Result<Package, CommandError> {
    run(store, move |ctx| {
        match (ctx.get(&PACKAGES, &package.id)?, create) {
            (Some(_), true) => return Err(CommandError::AlreadyExists),
            (None, false) => return Err(CommandError::NotFound),
            (Some(old), false) if old.kind != package.kind => {
                return Err(CommandError::AlreadyExists);
            }
            _ => {}
        }
        ctx.put(&PACKAGES, &package.id, &package);
        Ok(package)
    })
    .await
}

// ---- reconciliation ----

/// Stores the report of a reconciliation run. A failed run never replaces a
/// completed report of the same day: it is recorded on it as the latest failure.
pub async fn save_reconciliation(
    store: &Store,
    report: crate::reconcile::ReconReport,
) -> Result<crate::reconcile::ReconReport, CommandError> {
    use crate::reconcile::RunStatus;
    run(store, move |ctx| {
        let key = (report.provider.clone(), report.date.clone());
        let previous = ctx.get(&RECONCILIATIONS, &key)?;
        let runs = previous.as_ref().map_or(0, |p| p.runs) + 1;
        let saved = match previous {
            Some(mut kept)
                if report.status == RunStatus::Failed && kept.status == RunStatus::Completed =>
            {
                kept.runs = runs;
                kept.failure = report.failure;
                kept
            }
            _ => crate::reconcile::ReconReport { runs, ..report },
        };
        ctx.put(&RECONCILIATIONS, &key, &saved);
        Ok(saved)
    })
    .await
}

/// Every stored reconciliation report, newest day first.
pub fn list_reconciliations(
    view: &ReadView,
) -> Result<Vec<crate::reconcile::ReconReport>, StorageError> {
    let mut all: Vec<_> = view
        .scan_prefix(&RECONCILIATIONS, &(), usize::MAX, false)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    all.sort_by(|a, b| b.date.cmp(&a.date).then(a.provider.cmp(&b.provider)));
    Ok(all)
}

/// What [`resolve_discrepancy`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveDiscrepancy {
    Done(crate::reconcile::ReconReport),
    /// The discrepancy was repaired, or an operator settled it already.
    NotOpen,
}

/// An operator settles one reported discrepancy of a stored day; `outcome` says who
/// and why. Later runs of the day keep it settled.
pub async fn resolve_discrepancy(
    store: &Store,
    provider: String,
    date: String,
    index: usize,
    outcome: String,
) -> Result<ResolveDiscrepancy, CommandError> {
    use crate::reconcile::Resolution;
    run(store, move |ctx| {
        let key = (provider, date);
        let mut report = ctx
            .get(&RECONCILIATIONS, &key)?
            .ok_or(CommandError::NotFound)?;
        let d = report
            .discrepancies
            .get_mut(index)
            .ok_or(CommandError::NotFound)?;
        if d.resolution != Resolution::Unresolved {
            return Ok(ResolveDiscrepancy::NotOpen);
        }
        d.resolution = Resolution::Resolved;
        d.outcome = outcome;
        ctx.put(&RECONCILIATIONS, &key, &report);
        Ok(ResolveDiscrepancy::Done(report))
    })
    .await
}
