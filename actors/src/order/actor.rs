//! The order actor: a thin shell around the state machine.
//!
//! For each message: step the machine, persist the transition (with its grant and
//! deadlines) through one storage command, and only then answer the caller and carry
//! out the effects. Provider calls run in spawned tasks with a timeout and come back
//! as messages, so a slow provider never blocks a cancel or a deadline. When idle it
//! asks the supervisor to passivate it; its deadlines live on in storage.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::commands::{self, CommandError, RefundOp, TransitionWrite};
use crate::model::{NotificationRecord, Order, OrderStatus, TimelineEntry};
use crate::order::Deps;
use crate::order::local;
use crate::order::machine::{
    CloseOutcome, Effect, Event, QueryOutcome, RefundReport, Rejection, step,
};
use crate::order::supervisor::SupervisorMsg;
use crate::provider::{ProviderError, TradeRef, TradeRequest};

/// What callers get back from an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("no such order")]
    NotFound,
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("payment provider error: {0}")]
    Provider(String),
    #[error("storage unavailable: {0}")]
    Storage(String),
    #[error("order is quarantined after repeated failures")]
    Quarantined,
    #[error("the order actor stopped before answering")]
    Unavailable,
}

pub type OrderReply = RpcReplyPort<Result<Order, OrderError>>;

/// Requests an order actor serves.
#[derive(Debug)]
pub enum OrderCommand {
    /// Open the provider trade of a new order and answer with the QR code or URL.
    OpenTrade,
    /// Feed an event to the machine and answer once its transition is durable.
    Event(Event),
    /// A verified provider callback: like `Event`, and the callback is logged in the
    /// same storage transaction as its effect (or alone, when it changed nothing).
    Callback {
        event: Event,
        notification: Box<NotificationRecord>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderOp {
    Create,
    Query,
    Close,
    Refund,
}

pub enum OrderMsg {
    Command {
        command: OrderCommand,
        reply: Option<OrderReply>,
    },
    ProviderDone {
        op: ProviderOp,
        result: Result<Event, ProviderError>,
    },
    IdleCheck(u64),
    Stop,
    #[cfg(feature = "fault-injection")]
    Panic,
}

pub struct OrderActor;

pub struct OrderArgs {
    pub order: Order,
    pub deps: Arc<Deps>,
    pub supervisor: ActorRef<SupervisorMsg>,
}

pub struct OrderState {
    order: Order,
    deps: Arc<Deps>,
    supervisor: ActorRef<SupervisorMsg>,
    /// Messages received from the supervisor; the passivation handshake compares it
    /// with the number the supervisor routed.
    seen: u64,
    in_flight: u32,
    create_in_flight: bool,
    idle_generation: u64,
    /// Callers waiting for the trade to open, or for a re-issued QR code.
    waiting_for_trade: Vec<OrderReply>,
}

impl Actor for OrderActor {
    type Msg = OrderMsg;
    type State = OrderState;
    type Arguments = OrderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<OrderMsg>,
        args: OrderArgs,
    ) -> Result<OrderState, ActorProcessingErr> {
        tracing::debug!(order_no = %args.order.order_no, "order actor activated");
        let mut st = OrderState {
            order: args.order,
            deps: args.deps,
            supervisor: args.supervisor,
            seen: 0,
            in_flight: 0,
            create_in_flight: false,
            idle_generation: 0,
            waiting_for_trade: Vec::new(),
        };
        arm_idle(&myself, &mut st);
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<OrderMsg>,
        msg: OrderMsg,
        st: &mut OrderState,
    ) -> Result<(), ActorProcessingErr> {
        // An actor's task keeps room for the largest future it awaits for its whole
        // life, idle or not. Boxed, the handler's (about 10 KiB: storage commands,
        // provider replies) is allocated only while a message is being handled.
        Box::pin(handle_message(myself, msg, st)).await
    }
}

/// One message: what [`OrderActor`]'s `handle` does, in a future of its own.
async fn handle_message(
    myself: ActorRef<OrderMsg>,
    msg: OrderMsg,
    st: &mut OrderState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        OrderMsg::Command { command, reply } => {
            st.seen += 1;
            match command {
                OrderCommand::OpenTrade => {
                    if st.order.trade_opened || st.order.status != OrderStatus::Pending {
                        answer(reply, Ok(st.order.clone()));
                    } else {
                        st.waiting_for_trade.extend(reply);
                        if !st.create_in_flight {
                            spawn_create(&myself, st);
                        }
                    }
                }
                OrderCommand::Callback {
                    event,
                    notification,
                } => {
                    let result = apply_logged(&myself, st, event, Some(*notification)).await;
                    answer(reply, result.map(|()| st.order.clone()));
                }
                OrderCommand::Event(event) => {
                    let refresh = matches!(event, Event::RefreshQr);
                    match apply(&myself, st, event).await {
                        Ok(()) if refresh => st.waiting_for_trade.extend(reply),
                        Ok(()) => answer(reply, Ok(st.order.clone())),
                        Err(e) => answer(reply, Err(e)),
                    }
                }
            }
        }
        OrderMsg::ProviderDone { op, result } => {
            st.in_flight = st.in_flight.saturating_sub(1);
            if op == ProviderOp::Create {
                st.create_in_flight = false;
            }
            let outcome = match result {
                Ok(event) => apply(&myself, st, event).await.map(|()| st.order.clone()),
                Err(e) => Err(OrderError::Provider(e.message)),
            };
            if op == ProviderOp::Create {
                // A trade that failed to open leaves the order failed: say why.
                let outcome = match outcome {
                    Ok(o) if o.status == OrderStatus::Failed && !o.trade_opened => {
                        Err(OrderError::Provider(o.failure_reason.unwrap_or_default()))
                    }
                    other => other,
                };
                for reply in st.waiting_for_trade.drain(..) {
                    let _ = reply.send(outcome.clone());
                }
            }
        }
        OrderMsg::IdleCheck(generation) => {
            if generation == st.idle_generation && st.in_flight == 0 {
                let _ = st.supervisor.cast(SupervisorMsg::Passivate {
                    order_no: st.order.order_no.clone(),
                    seen: st.seen,
                });
            }
            return Ok(());
        }
        OrderMsg::Stop => {
            tracing::debug!(order_no = %st.order.order_no, "order actor passivated");
            myself.stop(None);
            return Ok(());
        }
        #[cfg(feature = "fault-injection")]
        OrderMsg::Panic => panic!("injected panic in order actor {}", st.order.order_no),
    }
    arm_idle(&myself, st);
    Ok(())
}

fn answer(reply: Option<OrderReply>, value: Result<Order, OrderError>) {
    if let Some(reply) = reply {
        let _ = reply.send(value);
    }
}

/// Schedules an idle check; any later message makes it stale. A final order with
/// nothing in flight goes at once: final orders are read from storage, not actors.
fn arm_idle(myself: &ActorRef<OrderMsg>, st: &mut OrderState) {
    st.idle_generation += 1;
    if st.in_flight > 0 || !st.waiting_for_trade.is_empty() {
        return;
    }
    let delay = if st.order.status.is_final() {
        Duration::ZERO
    } else {
        st.deps.passivate_after
    };
    let generation = st.idle_generation;
    myself.send_after(delay, move || OrderMsg::IdleCheck(generation));
}

/// Steps the machine, persists the transition, then carries out the effects.
async fn apply(
    myself: &ActorRef<OrderMsg>,
    st: &mut OrderState,
    event: Event,
) -> Result<(), OrderError> {
    apply_logged(myself, st, event, None).await
}

fn storage_failed(
    myself: &ActorRef<OrderMsg>,
    order_no: &str,
    event_name: &str,
    e: CommandError,
) -> OrderError {
    tracing::error!(order_no = %order_no, event = event_name, error = %e,
        "order transition not persisted; the actor stops and reloads from storage");
    // Whatever is in memory may no longer match the disk: start over from it.
    myself.stop(Some("storage error".into()));
    match e {
        CommandError::Storage(s) => OrderError::Storage(s.to_string()),
        other => OrderError::Storage(other.to_string()),
    }
}

/// The storage command for a transition (`None`: it changed nothing): the next order,
/// the grant, the entitlement changes of refunds, the timeline entry when something a
/// reader would notice changed, and the verified callback that caused it. Pure, so the
/// deterministic simulation persists exactly what the actor persists.
#[allow(clippy::too_many_arguments)]
pub(crate) fn transition_write(
    before: &Order,
    transition: &crate::order::machine::Transition,
    event_name: &str,
    actor: crate::model::Actor,
    now: crate::model::Timestamp,
    tiers: &Arc<Vec<String>>,
    webhooks: bool,
    notification: &mut Option<NotificationRecord>,
) -> Option<TransitionWrite> {
    if transition.next == *before {
        return None;
    }
    let timeline = timeline_entry(before, &transition.next, event_name, actor, now);
    let refund_ops = transition
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::HoldEntitlement { refund_no } => Some(RefundOp::Hold(refund_no.clone())),
            Effect::Clawback { refund_no } => Some(RefundOp::Clawback(refund_no.clone())),
            Effect::ReleaseHold { refund_no } => Some(RefundOp::Release(refund_no.clone())),
            _ => None,
        })
        .collect();
    Some(TransitionWrite {
        refund_ops,
        from_version: before.version,
        next: transition.next.clone(),
        grant: transition.effects.contains(&Effect::Grant),
        timeline,
        tiers: tiers.clone(),
        outbox: webhooks,
        notification: notification.take().map(|mut n| {
            n.result = "processed".into();
            n
        }),
    })
}

async fn apply_logged(
    myself: &ActorRef<OrderMsg>,
    st: &mut OrderState,
    event: Event,
    mut notification: Option<NotificationRecord>,
) -> Result<(), OrderError> {
    let now = st.deps.clock.now();
    let event_name = event.name();
    let actor = event.actor();
    let before = st.order.clone();
    let transition = step(&before, event, now, &st.deps.policy)?;
    if local::wants_answers(&transition.effects)
        && let Some(provider) = st.deps.providers.get(before.provider)
        && provider.local_trades().is_some()
    {
        return apply_folded(
            myself,
            st,
            provider,
            (before, transition),
            (event_name, actor),
            now,
            notification,
        )
        .await;
    }
    if let Some(write) = transition_write(
        &before,
        &transition,
        event_name,
        actor,
        now,
        &st.deps.tiers,
        st.deps.webhooks,
        &mut notification,
    ) {
        match commands::apply_transition(&st.deps.store, write).await {
            Ok(saved) => st.order = saved,
            Err(e) => return Err(storage_failed(myself, &before.order_no, event_name, e)),
        }
        if st.order.status != before.status {
            tracing::info!(order_no = %st.order.order_no, from = before.status.as_str(),
                to = st.order.status.as_str(), event = event_name, "order status changed");
        }
        for observer in &st.deps.observers {
            observer.transition(&before, &st.order, event_name);
        }
    }
    if let Some(mut n) = notification {
        // Verified, but it changed nothing: still logged, durably, before the reply.
        n.result = "duplicate".into();
        if let Err(e) = commands::log_notification(&st.deps.store, n).await {
            return Err(storage_failed(myself, &before.order_no, event_name, e));
        }
    }
    for effect in transition.effects {
        dispatch(myself, st, effect);
    }
    Ok(())
}

/// [`apply_logged`] for a transition that asks a local provider (the mock) for
/// answers: the transition and those answers' transitions in one storage command
/// (see [`local`]), then the observers hear of each, in order, and what is left of
/// the effects is carried out.
async fn apply_folded(
    myself: &ActorRef<OrderMsg>,
    st: &mut OrderState,
    provider: Arc<dyn crate::provider::PaymentProvider>,
    (before, transition): (Order, crate::order::machine::Transition),
    (event_name, actor): (&'static str, crate::model::Actor),
    now: crate::model::Timestamp,
    notification: Option<NotificationRecord>,
) -> Result<(), OrderError> {
    let deps = st.deps.clone();
    let order_no = before.order_no.clone();
    let result = commands::run(&st.deps.store, move |ctx| {
        let fc = local::FoldCtx {
            now,
            policy: &deps.policy,
            tiers: &deps.tiers,
            webhooks: deps.webhooks,
        };
        local::fold(
            ctx,
            provider.as_ref(),
            &before,
            transition,
            (event_name, actor),
            &fc,
            notification,
        )
    })
    .await;
    let folded = match result {
        Ok(f) => f,
        Err(e) => return Err(storage_failed(myself, &order_no, event_name, e)),
    };
    st.order = folded.order;
    for w in &folded.written {
        if w.after.status != w.before.status {
            tracing::info!(order_no = %order_no, from = w.before.status.as_str(),
                to = w.after.status.as_str(), event = w.event, "order status changed");
        }
        for observer in &st.deps.observers {
            observer.transition(&w.before, &w.after, w.event);
        }
    }
    for effect in folded.effects {
        dispatch(myself, st, effect);
    }
    Ok(())
}

/// The timeline entry of a transition from `before` to `next`, when it is one a
/// reader of the order's history would want to see.
pub(crate) fn timeline_entry(
    before: &Order,
    next: &Order,
    event_name: &str,
    actor: crate::model::Actor,
    now: crate::model::Timestamp,
) -> Option<TimelineEntry> {
    let refund_states = |o: &Order| o.refunds.iter().map(|r| r.state).collect::<Vec<_>>();
    let notable = next.status != before.status
        || next.payments.len() != before.payments.len()
        || next.closing != before.closing
        || next.trade_opened != before.trade_opened
        || next.anomalies != before.anomalies
        || refund_states(next) != refund_states(before);
    notable.then(|| TimelineEntry {
        at: now,
        from: before.status,
        to: next.status,
        event: event_name.to_string(),
        actor,
        reason: next.failure_reason.clone(),
    })
}

pub(crate) fn trade_ref(order: &Order) -> TradeRef {
    TradeRef {
        order_no: order.order_no.clone(),
        trade_ref: order.provider_trade_ref.clone(),
        amount_minor: order.amount_minor,
        currency: order.currency.clone(),
    }
}

fn dispatch(myself: &ActorRef<OrderMsg>, st: &mut OrderState, effect: Effect) {
    let order_no = st.order.order_no.clone();
    match effect {
        Effect::Grant => {
            tracing::info!(order_no = %order_no, user_id = %st.order.user_id,
                package_id = %st.order.package_id, "entitlement granted");
        }
        Effect::ReissueQr => spawn_create(myself, st),
        Effect::HoldEntitlement { refund_no }
        | Effect::Clawback { refund_no }
        | Effect::ReleaseHold { refund_no } => {
            tracing::info!(order_no = %order_no, refund_no = %refund_no, "entitlement share updated for a refund");
        }
        Effect::StartRefund { refund_no } => spawn_refund(myself, st, refund_no, false),
        Effect::QueryRefund { refund_no } => spawn_refund(myself, st, refund_no, true),
        Effect::Query => {
            let trade = trade_ref(&st.order);
            spawn_call(myself, st, ProviderOp::Query, move |p| {
                Box::pin(async move {
                    Ok(Event::QueryResult(match p.query(trade).await {
                        Ok(outcome) => outcome,
                        Err(e) => QueryOutcome::Error { reason: e.message },
                    }))
                })
            });
        }
        Effect::Close => {
            let trade = trade_ref(&st.order);
            spawn_call(myself, st, ProviderOp::Close, move |p| {
                Box::pin(async move {
                    Ok(Event::CloseResult(match p.close(trade).await {
                        Ok(outcome) => outcome,
                        Err(e) => CloseOutcome::Error { reason: e.message },
                    }))
                })
            });
        }
        Effect::Alert { kind, detail } => {
            tracing::warn!(order_no = %order_no, alert = ?kind, detail = %detail, "payment alert");
        }
    }
}

fn spawn_create(myself: &ActorRef<OrderMsg>, st: &mut OrderState) {
    let request = TradeRequest::for_order(&st.order);
    st.create_in_flight = true;
    spawn_call(myself, st, ProviderOp::Create, move |p| {
        Box::pin(async move {
            let t = p.create(request).await?;
            Ok(Event::TradeOpened {
                qr_code_url: t.qr_code_url,
                payment_url: t.payment_url,
                trade_ref: t.trade_ref,
            })
        })
    });
}

type CallFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Event, ProviderError>> + Send + 'static>,
>;

fn spawn_call<F>(myself: &ActorRef<OrderMsg>, st: &mut OrderState, op: ProviderOp, call: F)
where
    F: FnOnce(Arc<dyn crate::provider::PaymentProvider>) -> CallFuture + Send + 'static,
{
    let order_no = st.order.order_no.clone();
    let trade_was_open = st.order.trade_opened;
    let Some(provider) = st.deps.providers.get(st.order.provider) else {
        tracing::error!(order_no = %order_no, provider = st.order.provider.as_str(),
            "provider of record is not configured; cannot reach it");
        let _ = myself.cast(OrderMsg::ProviderDone {
            op,
            result: Err(ProviderError::permanent(format!(
                "provider {} is not configured",
                st.order.provider.as_str()
            ))),
        });
        st.in_flight += 1;
        return;
    };
    st.in_flight += 1;
    let timeout = st.deps.provider_timeout;
    let me = myself.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, call(provider)).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::transient(format!(
                "provider call timed out after {timeout:?}"
            ))),
        };
        tracing::debug!(order_no = %order_no, op = ?op, ok = result.is_ok(),
            elapsed_ms = started.elapsed().as_millis() as u64, "provider call finished");
        let result = provider_answer(op, trade_was_open, result);
        let _ = me.cast(OrderMsg::ProviderDone { op, result });
    });
}

/// What a provider call's answer means to the order: a re-issued code for a trade
/// already open updates the QR only; a failed first opening fails the order, a failed
/// re-issue changes nothing. `trade_was_open` is as it stood when the call was made.
pub(crate) fn provider_answer(
    op: ProviderOp,
    trade_was_open: bool,
    result: Result<Event, ProviderError>,
) -> Result<Event, ProviderError> {
    match (op, result) {
        (
            ProviderOp::Create,
            Ok(Event::TradeOpened {
                qr_code_url: Some(url),
                ..
            }),
        ) if trade_was_open => Ok(Event::QrReissued { qr_code_url: url }),
        (ProviderOp::Create, Err(e)) if !trade_was_open => {
            Ok(Event::TradeOpenFailed { reason: e.message })
        }
        (_, r) => r,
    }
}

/// A refund call's answer as the machine sees it: a transient error is asked again
/// by the refund poll, a permanent one fails the refund.
pub(crate) fn refund_report(
    answer: Result<crate::provider::RefundOutcome, ProviderError>,
) -> RefundReport {
    match answer {
        Ok(a) => match a.status {
            crate::provider::RefundStatus::Succeeded => RefundReport::Succeeded {
                provider_refund_id: a.provider_refund_id,
            },
            crate::provider::RefundStatus::Processing => RefundReport::Processing {
                provider_refund_id: a.provider_refund_id,
            },
            crate::provider::RefundStatus::Failed { reason } => RefundReport::Failed { reason },
        },
        Err(e) if e.transient => RefundReport::Error { reason: e.message },
        Err(e) => RefundReport::Failed { reason: e.message },
    }
}

/// Calls the provider about one refund: `query` asks how it stands (and re-issues it
/// when the provider does not know it — refunds are idempotent on their number);
/// otherwise it asks for the refund. The answer comes back as a `RefundResult`.
fn spawn_refund(myself: &ActorRef<OrderMsg>, st: &mut OrderState, refund_no: String, query: bool) {
    let Some(r) = st.order.refunds.iter().find(|r| r.refund_no == refund_no) else {
        return;
    };
    let request = crate::provider::RefundRequest {
        trade: trade_ref(&st.order),
        refund_no: refund_no.clone(),
        amount_minor: r.amount_minor,
        reason: r.reason.clone(),
        transaction_id: r.transaction_id.clone(),
    };
    spawn_call(myself, st, ProviderOp::Refund, move |p| {
        Box::pin(async move {
            let answer = if query {
                match p.query_refund(request.clone()).await {
                    Ok(a) => Ok(a),
                    Err(_) => p.refund(request).await,
                }
            } else {
                p.refund(request).await
            };
            let report = refund_report(answer);
            Ok(Event::RefundResult { refund_no, report })
        })
    });
}
