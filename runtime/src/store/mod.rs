//! Stores: where the engine keeps events, runs, journals and app
//! registrations.
//!
//! [`Store`] is a typed trait, one async method per operation. Each write
//! is atomic and durable before its future resolves: an ingest commits its
//! events, the runs they start, the waits they resolve and the runs they
//! cancel together or not at all. Runs are claimed with a [`Lease`] that
//! carries a generation; every write for a run carries the lease and is
//! refused with [`StoreError::LeaseLost`] once the lease was taken over or
//! the run was cancelled (fencing), so that nothing here assumes one engine
//! process.
//!
//! Every store passes the same [`conformance`] suite: the in-memory store
//! (tests), SQLite (the embedded default) and any other.

pub mod conformance;
pub mod flow;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorInfo;
use crate::function::BoxFuture;
use crate::journal::{Journal, Outcome};

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgOptions, PgStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, Sync as SqliteSync};

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The run is not leased under this lease any more: another process
    /// claimed it after the lease ran out, or it was cancelled or ended.
    /// The caller must stop driving the run; nothing was written.
    LeaseLost { run_id: String },
    /// The write would break an invariant of the store (a run ID that
    /// exists already); nothing of the operation was written.
    Conflict(String),
    /// I/O, corruption, a schema from a newer durafn, a stopped writer.
    Backend(String),
}

impl StoreError {
    pub fn backend(message: impl fmt::Display) -> StoreError {
        StoreError::Backend(message.to_string())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::LeaseLost { run_id } => write!(
                f,
                "store: run {run_id} is no longer leased here (taken over, cancelled or ended)"
            ),
            StoreError::Conflict(m) => write!(f, "store: {m}"),
            StoreError::Backend(m) => write!(f, "store: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Backend(format!("corrupt JSON in the store: {e}"))
    }
}

impl From<StoreError> for crate::ctx::Abandon {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost { run_id } => crate::ctx::Abandon::LeaseLost(format!(
                "run {run_id} was taken over, cancelled or ended"
            )),
            other => crate::ctx::Abandon::Store(other.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A run's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting to be claimed (new, delayed, or due).
    Queued,
    /// Claimed by an engine (leased).
    Running,
    /// Suspended until `wake_at`: a sleep, a wait, an invoke, or a retry's
    /// backoff.
    Sleeping,
    Completed,
    Failed,
    Cancelled,
    /// Never started: flow control (idempotency, a rate limit, a
    /// singleton) refused the event; the run's error says which.
    Skipped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Sleeping => "sleeping",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "sleeping" => RunStatus::Sleeping,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "skipped" => RunStatus::Skipped,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Skipped
        )
    }
}

/// The run and step an invoked run reports its result to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub run_id: String,
    /// The parent's pending step (its journal key).
    pub step: String,
}

/// A run to start with an event.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub id: String,
    pub fn_id: String,
    /// Set for an invoked run.
    pub parent: Option<Parent>,
    /// Flow control decided at ingest (keys evaluated on the event).
    pub flow: flow::RunFlow,
    /// The version of the function the run starts on (its step table's
    /// hash), when the engine knows it.
    pub version: Option<String>,
}

/// A function whose active runs an event cancels (`cancel_on`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRule {
    pub fn_id: String,
    /// CEL over `event` (the run's trigger) and `async` (the incoming
    /// event); every active run when `None`.
    pub expr: Option<String>,
}

/// An event to store, with what it starts and cancels (decided by the
/// engine from its functions' triggers).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The idempotency key: an event whose ID is stored already changes
    /// nothing.
    pub id: String,
    pub name: String,
    pub ts: i64,
    /// The whole event (`{name, data, id, ts, ..}`).
    pub payload: Value,
    pub runs: Vec<NewRun>,
    pub cancels: Vec<CancelRule>,
}

/// Events to ingest in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestBatch {
    pub now_ms: i64,
    pub events: Vec<NewEvent>,
}

/// What an ingest did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReceipt {
    /// One per event, in order.
    pub events: Vec<EventReceipt>,
    /// Waits the events resolved: (run, step).
    pub resolved: Vec<(String, String)>,
    /// Runs the events cancelled.
    pub cancelled: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventReceipt {
    pub id: String,
    /// False for an event ID seen before (then nothing happened).
    pub new: bool,
    /// The runs started.
    pub runs: Vec<String>,
    /// Runs flow control skipped (stored with status `skipped` and the
    /// reason as their error).
    pub skipped: Vec<String>,
    /// Queued runs this event joined (debounce): each will run with the
    /// newest event of its burst.
    pub debounced: Vec<String>,
    /// Open batches this event joined: each will run with all its events.
    pub batched: Vec<String>,
}

/// Ask for due runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    pub owner: String,
    /// Now on the timers' clock: runs whose `wake_at` is due.
    pub now_ms: i64,
    /// Now on the wall clock: leases that ran out before it are free.
    pub lease_now_ms: i64,
    pub lease_ms: i64,
    pub limit: usize,
    /// The functions the claimant can run. A run of another function is
    /// left for a process that has it, until it was created at or before
    /// `unknown_before_ms` (then the claimant takes it to fail it).
    pub functions: Vec<String>,
    pub unknown_before_ms: i64,
}

/// The right to drive one run, until `until_ms` on the wall clock. Each
/// claim of a run raises its generation; a write carrying an older one is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: String,
    pub owner: String,
    pub generation: u64,
    pub until_ms: i64,
}

/// A claimed run, with what a driver needs.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub lease: Lease,
    pub run: RunRecord,
    /// The triggering event (a batch's first).
    pub event: Value,
    /// A batch run's events, in order; empty for other runs.
    pub events: Vec<Value>,
    pub journal: Journal,
    /// Failed attempts so far of the steps being retried, by journal key.
    pub attempts: HashMap<String, u32>,
}

/// A step outcome to journal.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCommit {
    /// The journal key: the readable ID, or its hash for runs driven over
    /// the wire.
    pub step: String,
    /// The readable name, when `step` is a hash.
    pub name: Option<String>,
    pub outcome: Outcome,
    /// Attempts made, this one included.
    pub attempts: u32,
    pub started_ms: i64,
    pub ended_ms: i64,
    /// Set the run's function-level attempt back to 0: a step completed
    /// after the function itself failed, and the next part of the function
    /// starts with all its retries again (as in Inngest, where each part
    /// between steps has its own attempts).
    pub reset_fn_attempt: bool,
}

/// The step a suspension waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStep {
    pub step: String,
    pub name: Option<String>,
}

/// A failed attempt of a step that will be retried.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptFailure {
    pub step: String,
    pub name: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
    pub error: ErrorInfo,
    pub started_ms: i64,
}

/// How a run stops without ending.
#[derive(Debug, Clone, PartialEq)]
pub enum Suspension {
    /// Retry at `wake_at` (failed step attempts, or the function's own
    /// retriable error).
    Retry {
        failures: Vec<AttemptFailure>,
        fn_attempt: u32,
        wake_at: i64,
    },
    /// Journal `null` for `step` at `until_ms`.
    Sleep { step: PendingStep, until_ms: i64 },
    /// Journal the first matching event for `step`, or `null` at
    /// `until_ms`. With `since_ms`, the first matching event received from
    /// then on, stored already, resolves the wait at once: not the run's
    /// own trigger, nor an event in `seen` (one an earlier wait of the run
    /// took). Among the first 1,000 such events of that name.
    Wait {
        step: PendingStep,
        event: String,
        expr: Option<String>,
        until_ms: i64,
        since_ms: Option<i64>,
        seen: Vec<String>,
    },
    /// Start `child` (an event with one run whose parent is this step) in
    /// the same transaction; its result resolves `step`, else
    /// `timeout_error` at `until_ms`. A child event stored already (a
    /// replay after a crash) starts nothing, and hands over its run's
    /// result at once if that run ended.
    Invoke {
        step: PendingStep,
        until_ms: i64,
        timeout_error: ErrorInfo,
        child: NewEvent,
    },
    /// Back to the queue until `wake_at`, no attempt spent.
    Delay { wake_at: i64 },
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Completed {
        output: Value,
    },
    /// `event`: the failure event, ingested in the same transaction.
    Failed {
        error: ErrorInfo,
        event: Option<NewEvent>,
    },
}

/// What a finish did besides ending the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finished {
    /// Runs that became due: the parent an invoked run resumed, the
    /// failure handlers a failure started.
    pub woke: Vec<String>,
}

/// An app's registration (what its SDK sent to `/fn/register`).
#[derive(Debug, Clone, PartialEq)]
pub struct AppRecord {
    pub id: String,
    pub url: String,
    pub body: Value,
    pub updated_ms: i64,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub fn_id: String,
    pub event_id: String,
    pub status: RunStatus,
    /// Function-level retries used (the function itself returned an error).
    pub fn_attempt: u32,
    pub wake_at: Option<i64>,
    /// The step a sleep, wait or invoke is pending on.
    pub pending_step: Option<String>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
    /// The version of the function the run started on.
    pub version: Option<String>,
    /// The run it was made from, by a rerun or a replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// How a run was made from another by an operator: from the start again
/// (`rerun`), or keeping the other run's journal up to a step (`replay`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The run it was made from.
    pub run_id: String,
    /// `rerun` or `replay`.
    pub kind: String,
    /// A replay: the first step run again (the journal before it is the
    /// other run's); none when the whole journal was kept. Its ID, or for
    /// an app's step, the name the app gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_step: Option<String>,
    /// A replay with an edited output: the step whose output was replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_step: Option<String>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub id: String,
    pub name: String,
    pub received_ms: i64,
    /// The whole event (`{name, data, id, ts, ..}`).
    pub event: Value,
}

/// An operation a person made on a run, as recorded on it: `cancel`,
/// `rerun` or `replay` (with the run it made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOp {
    pub at_ms: i64,
    pub op: String,
    /// The run a rerun or replay made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_step: Option<String>,
}

impl RunOp {
    /// A person's cancel at `at_ms`.
    pub fn cancel(at_ms: i64) -> RunOp {
        RunOp {
            at_ms,
            op: "cancel".into(),
            made: None,
            from_step: None,
            edited_step: None,
        }
    }

    /// The rerun or replay `origin` describes, which made run `made`.
    pub fn made(origin: &Origin, made: &str, at_ms: i64) -> RunOp {
        RunOp {
            at_ms,
            op: origin.kind.clone(),
            made: Some(made.to_string()),
            from_step: origin.from_step.clone(),
            edited_step: origin.edited_step.clone(),
        }
    }
}

/// A run made from another ([`Store::restart`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    /// The new run: its ID, function, flow control (concurrency and
    /// timeouts apply; the keys decided per event do not) and version.
    pub run: NewRun,
    /// Where it comes from (`origin.run_id` is the run it is made from).
    pub origin: Origin,
    /// Journaled before it starts, in order (the kept steps of the other
    /// run, one of them perhaps with an edited output).
    pub journal: Vec<StepCommit>,
    pub now_ms: i64,
}

/// One step of a run's trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub id: String,
    /// The readable name when `id` is a hashed ID (steps of functions
    /// driven over HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the step is: `run`, `sleep`, `wait_for_event`, `invoke`,
    /// `send_event`, `now`/`random`/`uuid` (filled in from the function's
    /// step table when the engine has it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `completed`, `failed`, `retrying`, `sleeping`, `waiting`, `invoking`.
    pub status: String,
    pub attempts: u32,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// A run with its step trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunRecord,
    pub event: Value,
    /// A batch run's events, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Value>,
    pub steps: Vec<StepRecord>,
    /// The operations made on the run, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<RunOp>,
}

/// Filter for listing runs.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunFilter {
    pub function: Option<String>,
    pub status: Option<RunStatus>,
    /// Only the runs an event started (or joined, for a batch).
    #[serde(default)]
    pub event: Option<String>,
    pub limit: Option<usize>,
    /// Only runs after this one in the listing's order (newest first, by
    /// creation time then ID): its `(created_ms, id)`. The next page
    /// starts after the last run of the previous one.
    #[serde(skip)]
    pub after: Option<(i64, String)>,
}

/// Whether a run comes after `cursor` in the listing's order.
pub(crate) fn listed_after(r: &RunRecord, cursor: Option<&(i64, String)>) -> bool {
    cursor.is_none_or(|(ms, id)| (r.created_ms, r.id.as_str()) < (*ms, id.as_str()))
}

/// A place to keep runs. See the module docs; [`conformance`] holds the
/// suite every implementation must pass.
///
/// A method takes its arguments by value or clones them before it returns
/// its future, so a store may start the work at once (the SQLite store
/// queues it for its next group commit).
pub trait Store: Send + Sync + 'static {
    /// A short name for logs (`memory`, `sqlite:path`).
    fn describe(&self) -> String;

    /// Store the batch's new events with their runs, resolve the waits
    /// they match and cancel the runs their cancel rules match, in one
    /// transaction. A run ID that exists already fails the whole batch with
    /// [`StoreError::Conflict`].
    fn ingest(&self, batch: IngestBatch) -> BoxFuture<'_, StoreResult<IngestReceipt>>;

    /// Lease up to `limit` runs of the claimant's functions (or overdue
    /// runs of others): queued or sleeping runs that are due (journaling a
    /// due sleep's, wait's or invoke's default outcome), and running runs
    /// whose lease ran out.
    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, StoreResult<Vec<ClaimedRun>>>;

    /// Extend a lease to `until_ms`.
    fn heartbeat(&self, lease: &Lease, until_ms: i64) -> BoxFuture<'_, StoreResult<()>>;

    /// Journal a step's outcome.
    fn commit_step(&self, lease: &Lease, commit: StepCommit) -> BoxFuture<'_, StoreResult<()>>;

    /// Suspend the run and give up its lease.
    fn suspend(
        &self,
        lease: &Lease,
        suspension: Suspension,
        now_ms: i64,
    ) -> BoxFuture<'_, StoreResult<()>>;

    /// End the run and give up its lease; an invoked run's result resolves
    /// its parent's step.
    fn finish(
        &self,
        lease: &Lease,
        finish: Finish,
        now_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Finished>>;

    /// Cancel a run that has not ended (any lease on it is lost; an invoked
    /// run's parent resumes with [`crate::transition::INVOKE_CANCELLED`]).
    /// Answers the status the run had, or `None` if there is no such run.
    /// Records a `cancel` operation on the run when it cancelled it.
    fn cancel(&self, run_id: &str, now_ms: i64) -> BoxFuture<'_, StoreResult<Option<RunStatus>>>;

    /// Start `restart.run` from the event (or batch) of the run
    /// `restart.origin.run_id`, due now, with `restart.journal` journaled,
    /// and record the operation on that run, in one transaction. False,
    /// changing nothing, when there is no such run.
    fn restart(&self, restart: Restart) -> BoxFuture<'_, StoreResult<bool>>;

    /// Make every lease claimable at once (a store that only one engine
    /// process opens, at its start).
    fn release_leases(&self) -> BoxFuture<'_, StoreResult<()>>;

    /// Store an app's registration, replacing the app's previous one.
    fn put_app(&self, app: AppRecord) -> BoxFuture<'_, StoreResult<()>>;

    /// Every stored app registration.
    fn apps(&self) -> BoxFuture<'_, StoreResult<Vec<AppRecord>>>;

    /// One run with its step trace.
    fn run(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<RunDetail>>>;

    /// One run without its trace (cheap).
    fn run_record(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<RunRecord>>>;

    /// A run's journal, in order, as a driver replays it (`None` for no
    /// such run). Reading it takes no lease.
    fn journal(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<Journal>>>;

    /// Runs, newest first.
    fn list_runs(&self, filter: RunFilter) -> BoxFuture<'_, StoreResult<Vec<RunRecord>>>;

    /// Up to `limit` events, newest received first; with `before` (an
    /// event's received time and ID), only those listed after it.
    fn list_events(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> BoxFuture<'_, StoreResult<Vec<EventRecord>>>;

    /// Retention, one small batch: delete up to `limit` runs that ended
    /// before `before_ms`, with their journals and traces, but not a run
    /// with a child still active or whose parent is still active (it may
    /// yet hand over its result); then up to `limit` events received
    /// before `before_ms` that no remaining run started from; then flow
    /// keys that expired before `before_ms` (idempotency, rate limits,
    /// throttles). A store on a file gives space back to the file system,
    /// a little per call (see [`Purged::reclaiming`]).
    fn purge(&self, before_ms: i64, limit: usize) -> BoxFuture<'_, StoreResult<Purged>>;

    /// Woken when another process made runs due (a store shared by
    /// several processes); `None` for a store only this process writes.
    fn wakeups(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// When a claim with these `functions` could next find a queued or
    /// sleeping run: its `wake_at` for a run of one of them, else the later
    /// of its `wake_at` and its creation plus `unknown_timeout_ms`.
    fn next_wake(
        &self,
        functions: Vec<String>,
        unknown_timeout_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Option<i64>>>;
}

/// What one [`Store::purge`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub runs: usize,
    pub events: usize,
    pub keys: usize,
    /// The store gave space back to the file system and has more to give.
    pub reclaiming: bool,
}

impl Purged {
    /// Whether there may be more to do: a batch of `limit` was full on
    /// any count, or space is still being given back.
    pub fn full(&self, limit: usize) -> bool {
        self.runs >= limit || self.events >= limit || self.keys >= limit || self.reclaiming
    }
}

/// The outcome a finished child run hands to its parent's `invoke!`.
pub(crate) fn child_outcome(
    run_id: &str,
    fn_id: &str,
    status: RunStatus,
    output: Option<&Value>,
    error: Option<&Value>,
) -> Option<Outcome> {
    match status {
        RunStatus::Completed => Some(Outcome::data(output.cloned().unwrap_or(Value::Null))),
        RunStatus::Failed => Some(Outcome::error(
            error
                .map(ErrorInfo::from_value)
                .unwrap_or_else(|| ErrorInfo::new("Error", "the invoked run failed")),
        )),
        RunStatus::Cancelled => Some(Outcome::error(ErrorInfo::new(
            crate::transition::INVOKE_CANCELLED,
            format!("the invoked run {run_id} of `{fn_id}` was cancelled"),
        ))),
        _ => None,
    }
}

/// Split an outcome into the trace's output and error columns.
pub(crate) fn split_outcome(o: &Outcome) -> (Option<Value>, Option<Value>) {
    match o {
        Outcome::Data { data } => (Some(data.clone()), None),
        Outcome::Error { error } => (None, serde_json::to_value(error).ok()),
        Outcome::Null(()) => (None, None),
    }
}

/// Whether a wait's or a cancel rule's expression accepts `incoming` for a
/// run triggered by `trigger`: no expression accepts all; a bad one none.
pub(crate) fn expr_matches(expr: Option<&str>, trigger: &Value, incoming: &Value) -> bool {
    match expr {
        None => true,
        Some(src) => match crate::expr::Expr::cached(src) {
            Ok(x) => x.matches(trigger, incoming),
            Err(e) => {
                tracing::error!("{e}");
                false
            }
        },
    }
}

/// The status shown for a pending step.
pub(crate) fn pending_status(s: &Suspension) -> &'static str {
    match s {
        Suspension::Wait { .. } => "waiting",
        Suspension::Invoke { .. } => "invoking",
        _ => "sleeping",
    }
}
