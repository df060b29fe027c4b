//! The two drivers of a durable fn.
//!
//! - [`reenter`]: the Inngest model and the HTTP protocol. Each call runs the
//!   body from the top against the journal, executes at most one new step,
//!   and returns the [`Transition`]; the caller journals it and calls again.
//! - [`continuous`]: in process. The same future keeps being polled; each new
//!   step is executed, committed to the [`StepSink`] (durably, in an engine)
//!   and the body goes on. Replay happens only after a suspension (sleep,
//!   retry backoff) or a crash.
//!
//! Both give the same journal for the same function and inputs.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;

use serde_json::Value;

use crate::ctx::{
    Abandon, Attempts, Clock, Ctx, CtxInit, EventSender, Faults, Mode, Plan, StepSink, SystemClock,
};
use crate::error::{ErrorInfo, Retry};
use crate::function::{check_journal_shape, DurableFn};
use crate::journal::Journal;
use crate::step_id::StepId;
use crate::transition::Transition;

/// The inputs of one call of a durable fn.
#[derive(Clone)]
pub struct Invocation {
    pub run_id: String,
    /// The function's input as JSON: the triggering event (`{name, data,
    /// id, ts}`), or a batching function's events in an array.
    pub event: Value,
    /// What is journaled so far.
    pub journal: Journal,
    /// The attempt number of the first new step the call reaches (0 first),
    /// unless `step_attempts` names it.
    pub attempt: u32,
    /// Failed attempts so far of the steps being retried, by journal key.
    pub step_attempts: std::collections::HashMap<String, u32>,
    pub clock: Arc<dyn Clock>,
    pub faults: Option<Arc<Faults>>,
    /// Re-entry only: plan instead of running, or run one targeted step.
    pub plan: Plan,
    /// Where `send_event!` sends.
    pub sender: Option<Arc<dyn EventSender>>,
    /// How much the run may journal: a step returning more than
    /// `step_output`, or taking the journal over `journal`, fails with
    /// [`crate::journal::OUTPUT_TOO_LARGE`] or
    /// [`crate::journal::JOURNAL_TOO_LARGE`], without retries.
    pub bounds: crate::journal::Bounds,
}

/// The failures a replay can end with that mean the code does not fit the
/// run's journal or its event.
pub const REPLAY_BREAKS: &[&str] = &[
    "NonDeterminism",
    "JournalMismatch",
    "DuplicateStep",
    "EventMismatch",
    "Panic",
];

/// The outcome a suspended run's pending step will get when it resumes,
/// as far as a replay check needs it: a sleep's `null`, a wait that timed
/// out (`null`), an invoke that failed (`status` is the step's trace
/// status: `sleeping`, `waiting`, `invoking`).
fn pending_stand_in(status: Option<&str>) -> crate::journal::Outcome {
    match status {
        Some("invoking") => crate::journal::Outcome::error(ErrorInfo::new(
            "ReplayCheck",
            "a stand-in for the invoked run's result",
        )),
        _ => crate::journal::Outcome::null(),
    }
}

/// Replay `journal` against `f` with `input`, running no step body (the
/// first new site ends the replay): `Err` with the error the run would
/// fail with when this code does not fit its journal or its event.
/// `pending`: the step a suspended run waits in, with its trace status; a
/// run journals that step's outcome first when it resumes, so it is
/// replayed as it will be then (any outcome of the right shape does, since
/// no code past it runs here).
pub async fn check_replay(
    f: &dyn DurableFn,
    run_id: &str,
    input: Value,
    mut journal: Journal,
    pending: Option<(&str, Option<&str>)>,
) -> Result<(), ErrorInfo> {
    if let Some((step, status)) = pending {
        journal.insert(
            StepId::from_readable(step.to_string()),
            pending_stand_in(status),
        );
    }
    let mut inv = Invocation::new(run_id, input).with_journal(journal);
    inv.plan.disable_immediate = true;
    match reenter(f, inv).await.transition {
        Transition::Failed { error, .. } if REPLAY_BREAKS.contains(&error.name.as_str()) => {
            Err(error)
        }
        _ => Ok(()),
    }
}

/// What a function is called with: its triggering event, or for a
/// function with `batch_events` its batch's events (an invoked run's, its
/// one event) as an array.
pub fn input_of(f: &dyn DurableFn, event: Value, batch: Vec<Value>) -> Value {
    match (f.config().batch_events, batch.is_empty()) {
        (None, _) => event,
        (Some(_), true) => Value::Array(vec![event]),
        (Some(_), false) => Value::Array(batch),
    }
}

impl Invocation {
    /// A first call: empty journal, attempt 0, system clock.
    pub fn new(run_id: impl Into<String>, event: Value) -> Invocation {
        Invocation {
            run_id: run_id.into(),
            event,
            journal: Journal::new(),
            attempt: 0,
            step_attempts: Default::default(),
            clock: Arc::new(SystemClock),
            faults: None,
            plan: Plan::default(),
            sender: None,
            bounds: Default::default(),
        }
    }

    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = journal;
        self
    }

    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// What one call produced.
#[derive(Debug)]
pub struct CallResult {
    pub transition: Transition,
    /// The journal after the call: the input journal plus, in continuous
    /// mode, every step the call completed.
    pub journal: Journal,
    /// The journaled steps the call replayed (memo hits).
    pub replayed: usize,
    /// The steps whose body ran in this call, with their attempt numbers
    /// (recorded when the call has no sink: re-entry and in-memory runs).
    pub executed: Vec<(StepId, u32)>,
}

/// Re-entry: run `f` from the top, execute at most one new step, return.
pub async fn reenter(f: &dyn DurableFn, inv: Invocation) -> CallResult {
    match drive(f, inv, Mode::ReEntry, None).await {
        Ok(r) => r,
        Err(_) => unreachable!("only a sink abandons a call, and re-entry has none"),
    }
}

/// Continuous: run `f` until it ends or suspends, recording every new step
/// in `sink` (if any) before the body goes on. `Err` when the sink refused
/// an outcome: the run is not this driver's to go on with.
pub async fn continuous(
    f: &dyn DurableFn,
    inv: Invocation,
    sink: Option<Arc<dyn StepSink>>,
) -> Result<CallResult, Abandon> {
    drive(f, inv, Mode::Continuous, sink).await
}

async fn drive(
    f: &dyn DurableFn,
    inv: Invocation,
    mode: Mode,
    sink: Option<Arc<dyn StepSink>>,
) -> Result<CallResult, Abandon> {
    // A hashed journal (from the wire) cannot be checked by name; its
    // steps are checked as the run reaches them.
    let shape = match inv.journal.is_hashed() {
        true => Ok(()),
        false => check_journal_shape(f, &inv.journal),
    };
    if let Err(e) = shape {
        return Ok(CallResult {
            transition: Transition::Failed {
                error: e.info().clone(),
                retry: Retry::Never,
            },
            journal: inv.journal,
            replayed: 0,
            executed: Vec::new(),
        });
    }
    let ctx = Ctx::new(CtxInit {
        run_id: inv.run_id,
        fn_id: f.id(),
        mode,
        retries: f.config().retries,
        attempts: Attempts {
            by_step: inv.step_attempts,
            next_new: inv.attempt,
        },
        journal: inv.journal,
        clock: inv.clock,
        sink,
        faults: inv.faults,
        plan: inv.plan,
        sites: f.steps(),
        sender: inv.sender,
        bounds: inv.bounds,
    });
    let mut fut = f.call(ctx.clone(), inv.event);
    let ended =
        poll_fn(
            |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                Ok(Poll::Ready(r)) => Poll::Ready(Ended::Returned(r)),
                Ok(Poll::Pending) if ctx.can_stop() => Poll::Ready(Ended::Stopped),
                // Pending on an await durafn does not know of: the backstop
                // for what the compile-time check cannot see.
                Ok(Poll::Pending) if ctx.idle() => Poll::Ready(Ended::Stray),
                Ok(Poll::Pending) => Poll::Pending,
                Err(panic) => Poll::Ready(Ended::Panicked(panic_message(&panic))),
            },
        )
        .await;
    // Dropping the future ends the run's body for this call.
    drop(fut);
    let state = ctx.finish();
    if let Some(why) = state.abandoned {
        return Err(why);
    }
    let transition = match ended {
        Ended::Stopped => state.transition.expect("a pending run has a transition"),
        Ended::Returned(Ok(value)) => Transition::Done(value),
        Ended::Returned(Err(e)) => Transition::Failed {
            error: e.info().clone(),
            retry: e.retry(),
        },
        Ended::Panicked(msg) => Transition::Failed {
            error: ErrorInfo::new("Panic", format!("the function panicked: {msg}")),
            retry: Retry::Backoff,
        },
        Ended::Stray => {
            let after = match &state.last {
                Some(id) => format!("after step `{id}`"),
                None => "before its first step".to_string(),
            };
            let message = format!(
                "durafn: `{}` awaited something outside a step ({after}): its future was pending while no step body ran and no durafn primitive waited, so that work is not journaled and would run again on every replay; move the awaited call into `step!(\"name\", {{ .. }})` (an `.await` inside a macro or a helper of another crate is still an `.await`)",
                f.id()
            );
            tracing::error!("{message}");
            Transition::Failed {
                error: ErrorInfo::new("AwaitOutsideStep", message),
                retry: Retry::Never,
            }
        }
    };
    Ok(CallResult {
        transition,
        journal: state.journal,
        replayed: state.reached,
        executed: state.executed,
    })
}

/// How one poll loop of a function's future ended.
enum Ended {
    Returned(Result<Value, crate::error::Error>),
    /// The context recorded a transition (or abandoned the run).
    Stopped,
    Panicked(String),
    /// Pending on an await outside the journal.
    Stray,
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
