//! The interpreter: the one place where a run's [`Transition`] is applied
//! to the store.
//!
//! [`Policy::decide`] says what a transition means (journal, retry at,
//! sleep, wait, invoke, complete, fail and announce); [`RunDriver::apply`]
//! makes it so under the run's lease: journal the step, suspend with the
//! right timer, start the invoked run, finish with the failure event. The
//! continuous driver of a durable fn in this process and the HTTP driver
//! of an app's function both end here.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::Value;

use super::ingest::{self, EngineSender};
use super::telemetry::{RunTrace, SpanRecord};
use super::Inner;
use crate::ctx::{Abandon, StepMeta, StepSink};
use crate::driver::{continuous, Invocation};
use crate::error::{ErrorInfo, Retry};
use crate::function::{BoxFuture, DurableFn};
use crate::store::{
    AttemptFailure, ClaimedRun, Finish, Lease, PendingStep, RunRecord, StepCommit, StoreError,
    Suspension,
};
use crate::transition::{Decision, Policy, Transition};

/// What the driver does after a transition was applied.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    /// A step was journaled: go on.
    Continue,
    /// Re-entry: call this step next (a planned parallel branch).
    Plan(String),
    /// The run suspended or ended.
    Stop,
}

/// One claimed run, driven by this engine under its lease.
pub(crate) struct RunDriver {
    pub inner: Arc<Inner>,
    pub lease: Lease,
    pub run: RunRecord,
    pub event: Value,
    pub policy: Policy,
    /// The function-level attempt now: the run's, back to 0 once a step
    /// completes.
    fn_attempt: std::sync::atomic::AtomicU32,
    /// The HTTP status of an app's last answer (0 for a run in process).
    app_status: std::sync::atomic::AtomicU32,
    /// The run's place in its trace.
    trace: RunTrace,
}

impl RunDriver {
    pub fn new(inner: Arc<Inner>, claimed: &ClaimedRun) -> RunDriver {
        RunDriver {
            policy: inner.registry.policy(&claimed.run.fn_id, inner.backoff),
            lease: claimed.lease.clone(),
            run: claimed.run.clone(),
            event: claimed.event.clone(),
            fn_attempt: claimed.run.fn_attempt.into(),
            app_status: 0.into(),
            trace: RunTrace::of(&claimed.run.id, &claimed.event),
            inner,
        }
    }

    /// Export one attempt of a step as a span, when traces are exported.
    fn step_span(
        &self,
        step: &str,
        name: Option<&str>,
        attempts: u32,
        times: (i64, i64),
        outcome: &str,
        error: Option<String>,
    ) {
        let Some(t) = &self.inner.telemetry else {
            return;
        };
        let attempt = attempts.saturating_sub(1);
        let shown = name.unwrap_or(step);
        t.export(SpanRecord {
            name: shown,
            trace: self.trace.trace,
            span: self.trace.step_span(&self.run.id, step, attempt),
            parent: Some(self.trace.span),
            start_ms: times.0,
            end_ms: times.1,
            attributes: vec![
                ("durafn.run_id", self.run.id.clone()),
                ("durafn.function", self.run.fn_id.clone()),
                ("durafn.step", shown.to_string()),
                ("durafn.attempt", attempt.to_string()),
                ("durafn.outcome", outcome.to_string()),
            ],
            error,
        });
    }

    /// Export the run's own span as it ends.
    fn run_span(&self, status: &str, error: Option<String>, now: i64) {
        if let Some(t) = &self.inner.telemetry {
            t.run_span(&self.run, &self.trace, (status, error), now);
        }
    }

    /// Note the HTTP status an app answered a call with.
    pub fn note_status(&self, status: u16) {
        self.app_status.store(status.into(), Ordering::SeqCst);
    }

    /// The error status of an app's last answer.
    fn app_status(&self) -> Option<u16> {
        match self.app_status.load(Ordering::SeqCst) {
            s @ 400.. => u16::try_from(s).ok(),
            _ => None,
        }
    }

    /// The function-level attempt the next call makes.
    pub fn fn_attempt(&self) -> u32 {
        self.fn_attempt.load(Ordering::SeqCst)
    }

    /// Apply one transition. `name` is the step's readable name when its
    /// ID is a hash; `meta` its attempts and timing.
    pub async fn apply(
        &self,
        t: Transition,
        name: Option<String>,
        meta: StepMeta,
    ) -> Result<Flow, StoreError> {
        self.apply_named(t, name, &HashMap::new(), meta).await
    }

    /// [`apply`](Self::apply), with the readable names of steps that failed
    /// side by side (by journal key), each kept with its own failure.
    pub async fn apply_named(
        &self,
        t: Transition,
        name: Option<String>,
        names: &HashMap<String, String>,
        meta: StepMeta,
    ) -> Result<Flow, StoreError> {
        let inner = &self.inner;
        let store = &inner.store;
        let now = inner.clock.now_ms();
        let pending = |id: &crate::StepId| PendingStep {
            step: id.to_string(),
            name: name.clone(),
        };
        match self.policy.decide(t, self.fn_attempt(), now) {
            Decision::Journal { id, outcome } => {
                let (done, error) = match &outcome {
                    crate::journal::Outcome::Error { error } => ("failed", Some(error.to_string())),
                    _ => ("completed", None),
                };
                let commit = StepCommit {
                    step: id.to_string(),
                    name: name.clone(),
                    outcome,
                    attempts: meta.attempts,
                    started_ms: meta.started_ms,
                    ended_ms: meta.ended_ms,
                    reset_fn_attempt: self.fn_attempt.swap(0, Ordering::SeqCst) > 0,
                };
                store.commit_step(&self.lease, commit).await?;
                inner.steps_committed.fetch_add(1, Ordering::Relaxed);
                // Exported once the store has it: a lost lease exports
                // nothing for an attempt another process repeats.
                self.step_span(
                    id.as_str(),
                    name.as_deref(),
                    meta.attempts,
                    (meta.started_ms, meta.ended_ms),
                    done,
                    error,
                );
                Ok(Flow::Continue)
            }
            Decision::Plan { id } => Ok(Flow::Plan(id.to_string())),
            Decision::Retry {
                failures,
                fn_attempt,
                wake_at,
            } => {
                let named =
                    |id: &crate::StepId| names.get(id.as_str()).cloned().or_else(|| name.clone());
                let spans: Vec<(String, Option<String>, u32, String)> = failures
                    .iter()
                    .map(|f| {
                        (
                            f.id.to_string(),
                            named(&f.id),
                            f.attempt + 1,
                            f.error.to_string(),
                        )
                    })
                    .collect();
                let failures = failures
                    .into_iter()
                    .map(|f| AttemptFailure {
                        step: f.id.to_string(),
                        name: named(&f.id),
                        attempts: f.attempt + 1,
                        error: f.error,
                        started_ms: meta.started_ms,
                    })
                    .collect();
                let s = Suspension::Retry {
                    failures,
                    fn_attempt,
                    wake_at,
                };
                let flow = self.suspend(s, now).await?;
                for (step, name, attempts, error) in spans {
                    let times = (meta.started_ms, meta.ended_ms);
                    self.step_span(
                        &step,
                        name.as_deref(),
                        attempts,
                        times,
                        "retrying",
                        Some(error),
                    );
                }
                Ok(flow)
            }
            Decision::Sleep { id, until_ms } => {
                let s = Suspension::Sleep {
                    step: pending(&id),
                    until_ms,
                };
                self.suspend(s, now).await
            }
            Decision::WaitForEvent {
                id,
                event,
                expr,
                until_ms,
                since_ms,
                seen,
            } => {
                let s = Suspension::Wait {
                    step: pending(&id),
                    event,
                    expr,
                    until_ms,
                    since_ms,
                    seen,
                };
                self.suspend(s, now).await
            }
            Decision::Invoke {
                id,
                function,
                data,
                until_ms,
                timeout_error,
            } => {
                let child = ingest::invoke_event(
                    inner,
                    (&self.run.id, &self.run.fn_id, &self.trace.traceparent()),
                    &id,
                    &function,
                    data,
                    now,
                );
                let s = Suspension::Invoke {
                    step: pending(&id),
                    until_ms,
                    timeout_error,
                    child,
                };
                let flow = self.suspend(s, now).await?;
                // The child is due now.
                inner.notify.notify_one();
                Ok(flow)
            }
            Decision::Complete(output) => {
                tracing::info!("run completed");
                let flow = self.finish(Finish::Completed { output }, now).await?;
                self.run_span("completed", None, now);
                Ok(flow)
            }
            Decision::Fail { error, notify } => {
                tracing::warn!(error = %error.to_string().escape_debug(), "run failed");
                let shown = error.to_string();
                let event = notify.then(|| {
                    ingest::failure_event(
                        inner,
                        &self.run.fn_id,
                        &self.run.id,
                        (&error, self.app_status()),
                        &self.event,
                        now,
                    )
                });
                let flow = self.finish(Finish::Failed { error, event }, now).await?;
                self.run_span("failed", Some(shown), now);
                Ok(flow)
            }
        }
    }

    async fn suspend(&self, s: Suspension, now: i64) -> Result<Flow, StoreError> {
        let wake_at = match &s {
            Suspension::Retry { wake_at, .. } | Suspension::Delay { wake_at } => *wake_at,
            // An event stored already may resolve it in the same write.
            Suspension::Wait {
                since_ms: Some(_), ..
            } => now,
            Suspension::Sleep { until_ms, .. }
            | Suspension::Wait { until_ms, .. }
            | Suspension::Invoke { until_ms, .. } => *until_ms,
        };
        self.inner.store.suspend(&self.lease, s, now).await?;
        self.inner.wake_worker_by(wake_at);
        Ok(Flow::Stop)
    }

    async fn finish(&self, f: Finish, now: i64) -> Result<Flow, StoreError> {
        let finished = self.inner.store.finish(&self.lease, f, now).await?;
        self.inner.runs_ended.fetch_add(1, Ordering::SeqCst);
        self.inner.ended.notify_waiters();
        if !finished.woke.is_empty() {
            // A parent resumed, or failure handlers started.
            self.inner.notify.notify_one();
        }
        Ok(Flow::Stop)
    }

    /// Apply a transition that has no step of its own (the function's end,
    /// a failed call), timed now.
    pub async fn apply_now(&self, t: Transition) -> Result<Flow, StoreError> {
        let now = self.inner.clock.now_ms();
        let meta = StepMeta {
            attempts: 1,
            started_ms: now,
            ended_ms: now,
        };
        self.apply(t, None, meta).await
    }

    /// Put the run back in the queue until `wake_at`, spending no attempt.
    pub async fn delay(&self, wake_at: i64) -> Result<Flow, StoreError> {
        let now = self.inner.clock.now_ms();
        self.suspend(Suspension::Delay { wake_at }, now).await
    }

    /// The run failed in a way that is not its function's fault (a panic
    /// in the engine, a store error): retried like a failed attempt.
    pub async fn fail_attempt(&self, name: &str, message: String) -> Result<Flow, StoreError> {
        self.apply_now(Transition::Failed {
            error: ErrorInfo::new(name, message),
            retry: Retry::Backoff,
        })
        .await
    }
}

/// Journals each step of a continuous run through the interpreter.
struct Sink(Arc<RunDriver>);

impl StepSink for Sink {
    fn record(&self, step: Transition, meta: StepMeta) -> BoxFuture<'_, Result<(), Abandon>> {
        Box::pin(async move {
            match self.0.apply(step, None, meta).await? {
                Flow::Continue => Ok(()),
                other => Err(Abandon::Store(format!(
                    "a step outcome was applied as {other:?}"
                ))),
            }
        })
    }
}

/// Drive a durable fn of this process with the continuous driver: every
/// step is journaled under the lease before the body goes on; the call's
/// last transition suspends or ends the run.
pub(crate) async fn drive_local(
    driver: Arc<RunDriver>,
    f: Arc<dyn DurableFn>,
    claimed: ClaimedRun,
) -> Result<(), Abandon> {
    let inner = driver.inner.clone();
    let inv = Invocation {
        run_id: claimed.run.id,
        event: crate::driver::input_of(&*f, claimed.event, claimed.events),
        journal: claimed.journal,
        attempt: 0,
        step_attempts: claimed.attempts,
        clock: inner.clock.clone(),
        faults: None,
        plan: Default::default(),
        sender: Some(Arc::new(EngineSender(inner.clone()))),
        bounds: inner.bounds,
    };
    let res = continuous(&*f, inv, Some(Arc::new(Sink(driver.clone())))).await?;
    driver.apply_now(res.transition).await?;
    Ok(())
}
