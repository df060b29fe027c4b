//! The small types around a run's context: how it is driven, where its
//! steps are recorded, and which attempt a step is on.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::Error;
use crate::function::BoxFuture;
use crate::transition::Transition;

/// How the driver runs the body; see [`crate::driver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each call replays from the top and executes at most one new step.
    ReEntry,
    /// Keep going after each step, journaling it durably, until the run ends
    /// or suspends.
    Continuous,
}

/// Why a [`StepSink`] refused an outcome. The driver stops driving the run
/// at once and applies no transition: the run belongs to someone else now,
/// or resumes from its journal later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandon {
    /// The run is no longer leased to this driver: another process took its
    /// lease over, or it was cancelled or ended meanwhile.
    LeaseLost(String),
    /// The store failed; the run resumes from its journal later.
    Store(String),
}

impl std::fmt::Display for Abandon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abandon::LeaseLost(why) => write!(f, "the run is no longer leased here: {why}"),
            Abandon::Store(why) => write!(f, "the store failed: {why}"),
        }
    }
}

impl std::error::Error for Abandon {}

/// Where the continuous driver records each new step outcome before the
/// body goes on: an engine's store. The transition is a `StepRan` or a
/// `StepFailed`; the write must be durable when the future resolves.
pub trait StepSink: Send + Sync {
    fn record(&self, step: Transition, meta: StepMeta) -> BoxFuture<'_, Result<(), Abandon>>;
}

/// Sends events for `send_event!`: the engine in process, or the
/// executor's event API over HTTP.
pub trait EventSender: Send + Sync {
    fn send(&self, events: Vec<Value>) -> BoxFuture<'_, Result<Vec<String>, Error>>;
}

/// When a new outcome happened and after how many attempts, for the
/// store's step trace.
#[derive(Debug, Clone, Copy)]
pub struct StepMeta {
    /// Attempts made, this one included.
    pub attempts: u32,
    pub started_ms: i64,
    pub ended_ms: i64,
}

/// Options of one step site (`step!("id", retries = 2, { … })`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StepOpts {
    pub retries: Option<u32>,
}

/// How a re-entry call may execute new steps (the Inngest protocol's
/// `disable_immediate_execution` and targeted `stepId`).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Report the next step as planned instead of running it.
    pub disable_immediate: bool,
    /// Run only the step with this hashed ID.
    pub target: Option<String>,
}

/// Which attempt each new step is on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Failed attempts so far of the steps being retried, by journal key
    /// (the readable ID, or its hash in a journal from the wire).
    pub by_step: HashMap<String, u32>,
    /// The attempt of the first new step reached that `by_step` does not
    /// name: the wire's `ctx.attempt`, which is about the call's one step.
    pub next_new: u32,
}
