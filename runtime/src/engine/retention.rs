//! Retention: runs that ended, their journals and traces, events and
//! expired flow keys older than the configured age are deleted in the
//! background, in small batches paced so that the runs' commits keep
//! most of the store (see [`Store::purge`](crate::store::Store::purge)).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Inner;
use crate::store::{Purged, StoreResult};

/// Runs (and events, and keys) deleted per write: a batch is one short
/// transaction, and commits queue behind it only that long.
pub(crate) const BATCH: usize = 50;

/// Between two batches, a pause of this many times the last batch's time.
const PACE: u32 = 9;

/// The longest pause between two batches.
const MAX_PAUSE: Duration = Duration::from_millis(50);

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
        let t = std::time::Instant::now();
        let p = inner.store.purge(before, BATCH).await?;
        let spent = t.elapsed();
        total.runs += p.runs;
        total.events += p.events;
        total.keys += p.keys;
        total.reclaiming = p.reclaiming;
        if !p.full(BATCH) || inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        // Pace the batches: the store gives the runs' commits nine times
        // the time the last batch took (it took longer for waiting behind
        // them), up to a bound that keeps a busy store from starving
        // retention.
        tokio::time::sleep((spent * PACE).min(MAX_PAUSE)).await;
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
