//! A new order: stored durably, and its provider trade opened.
//!
//! A real provider is called only once the order is on disk (so every provider trade
//! has a durable order behind it): the order is stored alone and its actor opens the
//! trade. A provider that opens trades locally (the mock) needs no call: the order is
//! stepped through the same `TradeOpened` transition its actor would make and stored
//! with it in one command, without waking an actor.

use crate::commands::{self, CommandError};
use crate::model::{Order, UpgradePricing};
use crate::order::Deps;
use crate::order::actor::timeline_entry;
use crate::order::machine::{Event, step};
use crate::provider::TradeRequest;

/// What [`create`] did.
#[derive(Debug)]
pub enum Created {
    /// Stored with its trade open: ready to show.
    Opened(Order),
    /// Stored; its actor must open the trade (`OrderCommand::OpenTrade`).
    NeedsTrade(Order),
}

/// Stores `order` (and the pricing of an upgrade), opening its trade in the same
/// command when its provider can do that locally.
pub async fn create(
    deps: &Deps,
    order: Order,
    upgrade: Option<UpgradePricing>,
) -> Result<Created, CommandError> {
    let now = order.created_at;
    let opened = deps
        .providers
        .get(order.provider)
        .and_then(|p| p.open_locally(&TradeRequest::for_order(&order)))
        .and_then(|trade| {
            let event = Event::TradeOpened {
                qr_code_url: trade.qr_code_url,
                payment_url: trade.payment_url,
                trade_ref: trade.trade_ref,
            };
            let (name, actor) = (event.name(), event.actor());
            // A fresh pending order always opens without effects; were it otherwise,
            // its actor would decide.
            let next = step(&order, event, now, &deps.policy)
                .ok()
                .filter(|t| t.effects.is_empty())?
                .next;
            let entry = timeline_entry(&order, &next, name, actor, now)?;
            Some((next, entry, name))
        });
    let Some((next, entry, name)) = opened else {
        return commands::create_order_priced(&deps.store, order, upgrade)
            .await
            .map(Created::NeedsTrade);
    };
    let (order, stored) =
        commands::create_order_opened(&deps.store, order, next, entry, upgrade, deps.webhooks)
            .await?;
    tracing::debug!(order_no = %stored.order_no, "trade opened locally with the order");
    // Durable now: tell the observers, as the actor does after each transition.
    for observer in &deps.observers {
        observer.transition(&order, &stored, name);
    }
    Ok(Created::Opened(stored))
}
