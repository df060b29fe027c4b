//! Stores: where the engine keeps events, runs and journals.
//!
//! One trait, [`Store`], with one method that applies an [`Op`]; the typed
//! helpers on `dyn Store` wrap it. A store applies each op atomically and
//! durably before it answers; the SQLite store batches the ops of concurrent
//! runs into one transaction (group commit).
//!
//! Nothing here assumes one engine process: runs are claimed with leases
//! (`lease_owner`, `lease_until`), and every piece of state another process
//! would need lives in the store.

pub mod memory;
pub mod sqlite;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::function::BoxFuture;
use crate::journal::{Journal, Outcome};
use crate::step_id::StepId;

pub use memory::MemoryStore;
pub use sqlite::{SqliteStore, Sync as SqliteSync};

/// A store failure (I/O, corruption, a schema from the future).
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError(format!("corrupt JSON in the store: {e}"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A run's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting to be claimed (new, or a retry whose backoff is over).
    Queued,
    /// Claimed by an engine (leased).
    Running,
    /// Suspended until `wake_at` (a sleep, or a retry's backoff).
    Sleeping,
    Completed,
    Failed,
    Cancelled,
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
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// A new run, created with the event that triggers it.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub fn_id: String,
    /// The run and step that invoked this run and wait for its result.
    pub parent: Option<(String, String)>,
}

/// A run waiting for an event.
#[derive(Debug, Clone)]
pub struct WaitSpec {
    pub event: String,
    /// A CEL expression over `event` (the run's trigger) and `async`.
    pub expr: Option<String>,
}

/// A run to start in the same transaction as a suspension (invoke).
#[derive(Debug, Clone)]
pub struct Spawn {
    pub event_id: String,
    pub name: String,
    pub event: Value,
    pub run: NewRun,
}

/// A registered wait, as matched against incoming events.
#[derive(Debug, Clone)]
pub struct WaitRow {
    pub run_id: String,
    pub step_id: String,
    pub expr: Option<String>,
    /// The waiting run's triggering event.
    pub trigger: Value,
    pub created_ms: i64,
}

/// A run as stored.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub fn_id: String,
    pub event_id: String,
    pub status: RunStatus,
    /// The attempt number of the next new step.
    pub attempt: u32,
    /// Function-level retries used (the function itself returned an error).
    pub fn_attempt: u32,
    pub wake_at: Option<i64>,
    /// A sleep to journal as finished when the run wakes.
    pub pending_sleep: Option<String>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
}

/// A claimed run, with what the driver needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub run: RunRecord,
    pub event: Value,
    pub journal: Journal,
}

/// One step of a run's trace.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunRecord,
    pub event: Value,
    pub steps: Vec<StepRecord>,
}

/// Filter for listing runs.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunFilter {
    pub function: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: Option<usize>,
}

/// A completed step to journal.
#[derive(Debug, Clone)]
pub struct StepWrite {
    pub run_id: String,
    pub step: StepId,
    /// A readable name, when `step` is a hashed ID.
    pub name: Option<String>,
    pub outcome: Outcome,
    /// Position in the journal's completion order.
    pub seq: u64,
    pub attempts: u32,
    pub started_ms: i64,
    pub ended_ms: i64,
}

/// What to do with a run that stops without ending.
#[derive(Debug, Clone, Default)]
pub struct Suspend {
    pub run_id: String,
    pub now: i64,
    pub wake_at: i64,
    pub attempt: u32,
    pub fn_attempt: u32,
    pub pending_sleep: Option<StepId>,
    /// The sleep's readable name, when its ID is hashed.
    pub sleep_name: Option<String>,
    /// What to journal for `pending_sleep` when the wake time comes first
    /// (`null` when `None`: a sleep, a wait that timed out).
    pub pending_outcome: Option<Outcome>,
    /// Wait for an event; a match journals it for `pending_sleep`.
    pub wait: Option<WaitSpec>,
    /// Start a child run whose result resolves `pending_sleep`.
    pub spawn: Option<Spawn>,
    /// A failed attempt to record in the trace: (step, attempt, error).
    pub failed_attempt: Option<(StepId, u32, Value, i64)>,
}

/// The operations a store applies, each atomically.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store an event and create its runs, unless an event with the same ID
    /// is stored already (then nothing happens: idempotency).
    Ingest {
        event_id: String,
        name: String,
        event: Value,
        ts: i64,
        runs: Vec<NewRun>,
        now: i64,
    },
    /// Lease up to `limit` runs that are due at `now`; journal due sleeps.
    Claim {
        now: i64,
        lease_now: i64,
        limit: usize,
        owner: String,
        lease_ms: i64,
    },
    /// Journal a completed step; fails if the run is no longer leased by
    /// `owner` as running (cancelled, or taken over).
    Append {
        write: StepWrite,
        owner: String,
        extend_lease_to: Option<i64>,
    },
    Suspend(Box<Suspend>),
    Finish {
        run_id: String,
        owner: String,
        status: RunStatus,
        output: Option<Value>,
        error: Option<Value>,
        now: i64,
    },
    Cancel {
        run_id: String,
        now: i64,
    },
    ListRuns(RunFilter),
    GetRun {
        run_id: String,
    },
    /// The run without its trace (cheap).
    GetRunRecord {
        run_id: String,
    },
    /// The earliest `wake_at` of a sleeping or queued run.
    NextWake,
    /// Release every lease (a single-process store at start).
    ReleaseLeases,
    /// The waits for events named `event`.
    Waiting {
        event: String,
    },
    /// Runs of `fn_id` that have not ended, with their triggering events.
    Active {
        fn_id: String,
    },
    /// Journal `outcome` for a run's pending step and wake the run now,
    /// unless something resolved it first.
    Resolve {
        run_id: String,
        step_id: String,
        outcome: Outcome,
        now: i64,
    },
}

/// What an op answers.
#[derive(Debug)]
pub enum Reply {
    Ingested {
        new: bool,
    },
    Claimed(Vec<Claimed>),
    Done,
    /// The op did not apply (the run is not in a state that allows it).
    Rejected(String),
    Cancelled {
        was: Option<RunStatus>,
    },
    Runs(Vec<RunRecord>),
    Run(Option<Box<RunDetail>>),
    Record(Option<RunRecord>),
    NextWake(Option<i64>),
    Waits(Vec<WaitRow>),
    Active(Vec<(String, Value)>),
}

/// A place to keep runs. See the module docs.
pub trait Store: Send + Sync + 'static {
    /// Apply `op` atomically and durably. A store should take the op at
    /// once, not when the future is first polled: the engine submits
    /// several ops before awaiting them so that they can share a commit.
    fn apply(&self, op: Op) -> BoxFuture<'_, StoreResult<Reply>>;
    /// A short name for logs (`memory`, `sqlite:path`).
    fn describe(&self) -> String;
}

fn unexpected(r: Reply) -> StoreError {
    StoreError(format!("unexpected store reply {r:?}"))
}

impl dyn Store {
    pub async fn ingest(
        &self,
        event_id: String,
        name: String,
        event: Value,
        ts: i64,
        runs: Vec<NewRun>,
        now: i64,
    ) -> StoreResult<bool> {
        match self
            .apply(Op::Ingest {
                event_id,
                name,
                event,
                ts,
                runs,
                now,
            })
            .await?
        {
            Reply::Ingested { new } => Ok(new),
            r => Err(unexpected(r)),
        }
    }

    pub async fn claim(
        &self,
        now: i64,
        lease_now: i64,
        limit: usize,
        owner: &str,
        lease_ms: i64,
    ) -> StoreResult<Vec<Claimed>> {
        match self
            .apply(Op::Claim {
                now,
                lease_now,
                limit,
                owner: owner.to_string(),
                lease_ms,
            })
            .await?
        {
            Reply::Claimed(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }

    /// `Ok(false)` when the run was cancelled or taken over.
    pub async fn append(
        &self,
        write: StepWrite,
        owner: &str,
        extend_lease_to: Option<i64>,
    ) -> StoreResult<bool> {
        match self
            .apply(Op::Append {
                write,
                owner: owner.to_string(),
                extend_lease_to,
            })
            .await?
        {
            Reply::Done => Ok(true),
            Reply::Rejected(_) => Ok(false),
            r => Err(unexpected(r)),
        }
    }

    pub async fn suspend(&self, s: Suspend) -> StoreResult<()> {
        match self.apply(Op::Suspend(Box::new(s))).await? {
            Reply::Done | Reply::Rejected(_) => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    pub async fn finish(
        &self,
        run_id: &str,
        owner: &str,
        status: RunStatus,
        output: Option<Value>,
        error: Option<Value>,
        now: i64,
    ) -> StoreResult<bool> {
        let op = Op::Finish {
            run_id: run_id.to_string(),
            owner: owner.to_string(),
            status,
            output,
            error,
            now,
        };
        match self.apply(op).await? {
            Reply::Done => Ok(true),
            Reply::Rejected(_) => Ok(false),
            r => Err(unexpected(r)),
        }
    }

    /// The status the run had, or `None` if there is no such run.
    pub async fn cancel(&self, run_id: &str, now: i64) -> StoreResult<Option<RunStatus>> {
        match self
            .apply(Op::Cancel {
                run_id: run_id.to_string(),
                now,
            })
            .await?
        {
            Reply::Cancelled { was } => Ok(was),
            r => Err(unexpected(r)),
        }
    }

    pub async fn list_runs(&self, filter: RunFilter) -> StoreResult<Vec<RunRecord>> {
        match self.apply(Op::ListRuns(filter)).await? {
            Reply::Runs(r) => Ok(r),
            r => Err(unexpected(r)),
        }
    }

    pub async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunDetail>> {
        match self
            .apply(Op::GetRun {
                run_id: run_id.to_string(),
            })
            .await?
        {
            Reply::Run(r) => Ok(r.map(|b| *b)),
            r => Err(unexpected(r)),
        }
    }

    pub async fn get_run_record(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        match self
            .apply(Op::GetRunRecord {
                run_id: run_id.to_string(),
            })
            .await?
        {
            Reply::Record(r) => Ok(r),
            r => Err(unexpected(r)),
        }
    }

    pub async fn active_runs(&self, fn_id: &str) -> StoreResult<Vec<(String, Value)>> {
        match self
            .apply(Op::Active {
                fn_id: fn_id.to_string(),
            })
            .await?
        {
            Reply::Active(a) => Ok(a),
            r => Err(unexpected(r)),
        }
    }

    pub async fn waiting(&self, event: &str) -> StoreResult<Vec<WaitRow>> {
        match self
            .apply(Op::Waiting {
                event: event.to_string(),
            })
            .await?
        {
            Reply::Waits(w) => Ok(w),
            r => Err(unexpected(r)),
        }
    }

    /// Whether the outcome was journaled (false: resolved already, or not waiting).
    pub async fn resolve(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: Outcome,
        now: i64,
    ) -> StoreResult<bool> {
        let op = Op::Resolve {
            run_id: run_id.to_string(),
            step_id: step_id.to_string(),
            outcome,
            now,
        };
        match self.apply(op).await? {
            Reply::Done => Ok(true),
            Reply::Rejected(_) => Ok(false),
            r => Err(unexpected(r)),
        }
    }

    pub async fn next_wake(&self) -> StoreResult<Option<i64>> {
        match self.apply(Op::NextWake).await? {
            Reply::NextWake(w) => Ok(w),
            r => Err(unexpected(r)),
        }
    }
}
