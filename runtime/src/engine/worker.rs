//! The worker: claims due runs and drives each under its lease.
//!
//! Each run being driven holds one permit of the engine's semaphore (its
//! slot) and a heartbeat that extends its lease; both are released when
//! the drive ends, whatever way it ends. A heartbeat that finds the lease
//! taken over (or the run cancelled) stops the drive at once. A panic or a
//! store error while driving fails the attempt (retried with backoff), or
//! if even that cannot be written, leaves the run to be claimed again when
//! its lease runs out, by this engine or another.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::interpreter::{drive_local, RunDriver};
use super::registry::Function;
use super::Inner;
use crate::ctx::{Abandon, Clock, SystemClock};
use crate::error::{ErrorInfo, Retry};
use crate::store::{ClaimRequest, ClaimedRun, Lease, StoreError};
use crate::transition::Transition;

pub(super) async fn run(inner: Arc<Inner>) {
    loop {
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        let free = inner.slots.available_permits();
        if free > 0 {
            let now_ms = inner.clock.now_ms();
            let req = ClaimRequest {
                owner: inner.owner.clone(),
                now_ms,
                lease_now_ms: SystemClock.now_ms(),
                lease_ms: inner.lease_ms,
                limit: free,
                functions: inner.registry.ids(),
                unknown_before_ms: now_ms.saturating_sub(
                    i64::try_from(inner.unknown_fn_timeout.as_millis()).unwrap_or(i64::MAX),
                ),
            };
            match inner.store.claim(req).await {
                Ok(claimed) if !claimed.is_empty() => {
                    for c in claimed {
                        let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
                            unreachable!("only the worker takes slots, and it claimed no more than were free")
                        };
                        tokio::spawn(drive(inner.clone(), c, permit));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "claiming runs failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        // From here until the wait, any run that suspends wakes us: the
        // next-wake answer below may not include it yet.
        inner.planned_wake.store(i64::MAX, Ordering::SeqCst);
        let unknown_timeout_ms =
            i64::try_from(inner.unknown_fn_timeout.as_millis()).unwrap_or(i64::MAX);
        let next = inner
            .store
            .next_wake(inner.registry.ids(), unknown_timeout_ms)
            .await;
        let wait = match next {
            Ok(Some(w)) => (w - inner.clock.now_ms()).clamp(0, 1000) as u64,
            _ => 1000,
        };
        // A run due now that the claim did not take: look again in a
        // millisecond rather than spin.
        inner
            .planned_wake
            .store(inner.clock.now_ms() + wait as i64, Ordering::SeqCst);
        let woken = async {
            match &inner.store_wake {
                Some(other) => tokio::select! {
                    () = inner.notify.notified() => {}
                    () = other.notified() => {}
                },
                None => inner.notify.notified().await,
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(wait.max(1)), woken).await;
        inner.planned_wake.store(0, Ordering::SeqCst);
    }
}

/// Extends a lease every third of its length; returns when the lease is
/// gone (taken over, or the run cancelled or ended elsewhere).
async fn heartbeat(inner: &Inner, lease: &Lease) {
    let every = Duration::from_millis((inner.lease_ms / 3).max(10) as u64);
    loop {
        tokio::time::sleep(every).await;
        let until = SystemClock.now_ms().saturating_add(inner.lease_ms);
        match inner.store.heartbeat(lease, until).await {
            Ok(()) => {}
            Err(StoreError::LeaseLost { .. }) => return,
            Err(e) => tracing::warn!(error = %e, "a lease heartbeat failed"),
        }
    }
}

/// A future whose panic is caught and answered as its message.
struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(crate::driver::panic_message(&payload))),
        }
    }
}

/// Gives the slot back, however the drive ends, and wakes the worker if
/// it waits for a free slot.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let was_full = self.inner.slots.available_permits() == 0;
        drop(self.permit.take());
        if was_full {
            self.inner.notify.notify_one();
        }
    }
}

async fn drive(inner: Arc<Inner>, c: ClaimedRun, permit: OwnedSemaphorePermit) {
    let _slot = Slot {
        permit: Some(permit),
        inner: inner.clone(),
    };
    let span = tracing::info_span!("run", run_id = %c.run.id, fn_id = %c.run.fn_id);
    async move {
        let driver = Arc::new(RunDriver::new(inner.clone(), &c));
        let lease = c.lease.clone();
        // The drive and the lease's heartbeat, in this one task.
        let outcome = tokio::select! {
            r = CatchPanic(Box::pin(drive_claimed(driver.clone(), c))) => r,
            () = heartbeat(&inner, &lease) => {
                tracing::info!("the run's lease was taken over or the run cancelled; it is no longer driven here");
                return;
            }
        };
        let failure = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(Abandon::LeaseLost(why))) => {
                tracing::info!("stopped driving the run: {why}");
                return;
            }
            Ok(Err(Abandon::Store(why))) => {
                // Not the function's fault: no attempt is spent.
                tracing::error!("the store failed while the run was driven: {why}; it resumes from its journal");
                let wake_at = inner.clock.now_ms() + inner.backoff.delay(0).as_millis() as i64;
                if let Err(e) = driver.delay(wake_at).await {
                    tracing::error!(error = %e, "the run is claimed again when its lease ends");
                }
                return;
            }
            Err(msg) => (
                "Panic",
                format!("durafn: the engine panicked while driving the run: {msg}"),
            ),
        };
        tracing::error!("{}", failure.1);
        if let Err(e) = driver.fail_attempt(failure.0, failure.1).await {
            tracing::error!(error = %e, "the failed attempt could not be recorded; the run is claimed again when its lease ends");
        }
    }
    .instrument(span)
    .await;
}

/// Drive one claimed run until it suspends or ends.
async fn drive_claimed(driver: Arc<RunDriver>, c: ClaimedRun) -> Result<(), Abandon> {
    let inner = driver.inner.clone();
    match inner.registry.get(&c.run.fn_id) {
        Some(Function::Local(f)) => drive_local(driver, f, c).await,
        Some(Function::Remote(f)) => super::remote::drive(&driver, f, c).await,
        None => {
            let now = inner.clock.now_ms();
            let deadline = c
                .run
                .created_ms
                .saturating_add(inner.unknown_fn_timeout.as_millis() as i64);
            if now < deadline {
                // Claimed as the function's registration went away: give
                // the run back to whoever has the function.
                driver.delay(now).await?;
                return Ok(());
            }
            let err = ErrorInfo::new(
                "UnknownFunction",
                format!(
                    "no function `{}` is registered with this engine (waited {:?} for it); register it and send the event again",
                    c.run.fn_id, inner.unknown_fn_timeout
                ),
            );
            tracing::error!("{}", err.message);
            driver
                .apply_now(Transition::Failed {
                    error: err,
                    retry: Retry::Never,
                })
                .await?;
            Ok(())
        }
    }
}
