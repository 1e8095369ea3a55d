//! Provider answers folded into the transition that asked for them.
//!
//! A provider whose trades live in payd's own store (the mock, see
//! [`LocalTrades`](crate::provider::LocalTrades)) answers a query with a read and a close with a write. Sending
//! such a call out as a message and persisting each answer as its own transition
//! would cost a storage command — an fsync — per answer: five for an expiring order
//! (the deadline, query, close, query, and the close record). Instead the answers are
//! taken inside the command that persists the transition asking for them, each
//! stepped through the machine and written in turn with exactly the versions,
//! timeline entries, deadlines and outbox events the message path writes, so one
//! command and one fsync hold the whole sequence — together with the trade state the
//! answers report.

use std::sync::Arc;

use payd_storage::WriteCtx;

use crate::commands::{CommandError, write_transition};
use crate::model::{Actor, NotificationRecord, Order, Timestamp};
use crate::order::actor::{trade_ref, transition_write};
use crate::order::machine::{Effect, Event, Policy, Transition, step};
use crate::provider::PaymentProvider;

/// At most this many answers go into one command (an expiry takes three); an effect
/// beyond them is carried out as a call.
const MAX_ANSWERS: usize = 8;

/// One transition written by [`fold`].
#[derive(Debug)]
pub(crate) struct Written {
    pub before: Order,
    pub after: Order,
    pub event: &'static str,
}

/// What [`fold`] wrote, and the effects still to carry out once it is durable.
#[derive(Debug)]
pub(crate) struct Folded {
    pub order: Order,
    pub written: Vec<Written>,
    pub effects: Vec<Effect>,
}

/// What every transition of a fold shares.
pub(crate) struct FoldCtx<'a> {
    pub now: Timestamp,
    pub policy: &'a Policy,
    pub tiers: &'a Arc<Vec<String>>,
    pub webhooks: bool,
}

/// Whether `effects` hold a call that a local provider answers.
pub(crate) fn wants_answers(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::Query | Effect::Close))
}

/// Writes `transition` (made by `event` from `before`) and then, one at a time, the
/// transitions of the local answers to the queries and closes it and its successors
/// ask for. `notification` is logged with the first transition, or alone when that
/// changed nothing.
pub(crate) fn fold(
    ctx: &mut WriteCtx<'_>,
    provider: &dyn PaymentProvider,
    before: &Order,
    transition: Transition,
    (event, actor): (&'static str, Actor),
    fc: &FoldCtx<'_>,
    mut notification: Option<NotificationRecord>,
) -> Result<Folded, CommandError> {
    let mut order = before.clone();
    let mut written = Vec::new();
    let mut write = |ctx: &mut WriteCtx<'_>,
                     order: &mut Order,
                     t: &Transition,
                     event: &'static str,
                     actor: Actor,
                     notification: &mut Option<NotificationRecord>|
     -> Result<(), CommandError> {
        let Some(w) = transition_write(
            order,
            t,
            event,
            actor,
            fc.now,
            fc.tiers,
            fc.webhooks,
            notification,
        ) else {
            return Ok(());
        };
        let saved = write_transition(ctx, w)?;
        written.push(Written {
            before: std::mem::replace(order, saved.clone()),
            after: saved,
            event,
        });
        Ok(())
    };
    write(
        ctx,
        &mut order,
        &transition,
        event,
        actor,
        &mut notification,
    )?;
    if let Some(mut n) = notification.take() {
        // Verified, but it changed nothing: still logged, in the same command.
        n.result = "duplicate".into();
        crate::commands::put_notification(ctx, n)?;
    }
    let mut effects = transition.effects;
    let local = provider.local_trades();
    for _ in 0..MAX_ANSWERS {
        let position = effects
            .iter()
            .position(|e| matches!(e, Effect::Query | Effect::Close));
        let (Some(local), Some(i)) = (local, position) else {
            break;
        };
        let trade = trade_ref(&order);
        let answer = match effects[i] {
            Effect::Query => Event::QueryResult(local.query(ctx, &trade)?),
            _ => Event::CloseResult(local.close(ctx, &trade)?),
        };
        let (event, actor) = (answer.name(), answer.actor());
        // A provider's answer is never rejected by the machine; were it, the call is
        // left to be made the usual way.
        let Ok(t) = step(&order, answer, fc.now, fc.policy) else {
            break;
        };
        effects.remove(i);
        write(ctx, &mut order, &t, event, actor, &mut None)?;
        effects.extend(t.effects);
    }
    Ok(Folded {
        order,
        written,
        effects,
    })
}
