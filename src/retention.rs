//! Retention: deletes what payd no longer needs, on a schedule (`retention.*`).
//!
//! Idempotency keys older than `retention.idempotency_keys` (their replay window is
//! 24 h) and webhook events delivered more than `retention.webhooks` ago. Pending and
//! dead webhook events are never pruned: the first still have to go out, the second
//! wait for an operator. Candidates are found on a read snapshot and deleted in
//! batches, each batch one storage command that checks every candidate again, so
//! the writer is never held by a long scan and nothing touched since is lost.

use std::time::Duration;

use payd_actors::clock::SharedClock;
use payd_actors::commands::{self, CommandError};
use payd_actors::model::Timestamp;
use payd_actors::outbox;
use payd_storage::Store;
use tokio::task::JoinHandle;

use crate::config::RetentionConfig;

/// Deletions per storage command.
const BATCH: usize = 1000;

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub idempotency_keys: usize,
    pub webhook_events: usize,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One pass over everything retention covers, as of `now`.
pub async fn prune_once(
    store: &Store,
    cfg: &RetentionConfig,
    now: Timestamp,
) -> Result<Pruned, CommandError> {
    let mut pruned = Pruned::default();
    let cutoff = now.plus_ms(-ms(cfg.idempotency_keys));
    loop {
        let keys = commands::stale_idempotency_keys(&store.read()?, cutoff, BATCH)?;
        if keys.is_empty() {
            break;
        }
        let full = keys.len() == BATCH;
        pruned.idempotency_keys += commands::prune_idempotency(store, keys, cutoff).await?;
        if !full {
            break;
        }
    }
    let cutoff = now.plus_ms(-ms(cfg.webhooks));
    loop {
        let seqs = outbox::prunable(&store.read()?, cutoff, BATCH)?;
        if seqs.is_empty() {
            break;
        }
        let full = seqs.len() == BATCH;
        pruned.webhook_events += outbox::prune_delivered(store, seqs, cutoff).await?;
        if !full {
            break;
        }
    }
    Ok(pruned)
}

/// Runs a pass at start and then every `retention.interval`, until aborted.
pub fn spawn(store: Store, clock: SharedClock, cfg: RetentionConfig) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match prune_once(&store, &cfg, clock.now()).await {
                Ok(p) if p == Pruned::default() => {
                    tracing::debug!("retention pass: nothing to prune")
                }
                Ok(p) => tracing::info!(
                    idempotency_keys = p.idempotency_keys,
                    webhook_events = p.webhook_events,
                    "retention pass pruned old records"
                ),
                Err(e) => tracing::warn!(error = %e, "retention pass failed; trying again later"),
            }
            tokio::time::sleep(cfg.interval).await;
        }
    })
}
