//! Retention: runs that ended, their journals and traces, events and
//! expired flow keys older than the configured age are deleted in the
//! background, in small batches so that commits never wait long behind
//! one (see [`Store::purge`](crate::store::Store::purge)).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Inner;
use crate::store::{Purged, StoreResult};

/// Runs (and events, and keys) deleted per write: a batch is one short
/// transaction, and commits queue behind it only that long.
pub(crate) const BATCH: usize = 200;

/// How often the task looks for what to delete: a quarter of the age,
/// between 100 ms and a minute.
fn tick(keep: Duration) -> Duration {
    (keep / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// The background task of an engine with a retention age.
pub(crate) async fn run(inner: Arc<Inner>, keep: Duration) {
    loop {
        tokio::time::sleep(tick(keep)).await;
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = pass(&inner, keep).await {
            tracing::warn!(error = %e, "retention: the store refused a delete; trying again later");
        }
    }
}

/// Delete everything that ended or arrived more than `keep` ago, batch
/// after batch until a batch is not full.
pub(crate) async fn pass(inner: &Inner, keep: Duration) -> StoreResult<Purged> {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let before = inner.clock.now_ms().saturating_sub(keep_ms);
    let mut total = Purged::default();
    loop {
        let p = inner.store.purge(before, BATCH).await?;
        total.runs += p.runs;
        total.events += p.events;
        total.keys += p.keys;
        if !p.full(BATCH) || inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        // Let the commits queued meanwhile go first.
        tokio::task::yield_now().await;
    }
    if total != Purged::default() {
        tracing::info!(
            runs = total.runs,
            events = total.events,
            keys = total.keys,
            "retention: deleted what ended or arrived before the window"
        );
    }
    Ok(total)
}
