//! What a person does when a run went wrong: rerun it (a new run from the
//! same event), replay it from a step (a new run whose journal is the old
//! run's up to that step, so nothing before it runs again), replay it with
//! one step's output edited, and do these (and cancel) in bulk, as jobs
//! that report their progress.
//!
//! Each operation is recorded on the run it touched
//! ([`RunDetail::ops`](crate::store::RunDetail)), and a run it made names
//! the run it came from ([`RunRecord::origin`](crate::store::RunRecord)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use super::{new_id, Engine};
use crate::journal::Outcome;
use crate::store::{
    Origin, Restart, RunFilter, RunRecord, RunStatus, StepCommit, StepRecord, StoreError,
};

/// What a replay keeps and what it changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    /// Run this step and every step journaled after it again; the steps
    /// before it keep their outcomes. A step's ID (`fetch-products[3]`), or
    /// the name an app gave it. `None` with an edit: replay from the step
    /// after the edited one.
    pub from: Option<String>,
    /// Replace the output of this kept step with this JSON value (a step
    /// that failed then succeeds with it).
    pub edit: Option<(String, Value)>,
}

impl Replay {
    /// Replay from `step`.
    pub fn from(step: impl Into<String>) -> Replay {
        Replay {
            from: Some(step.into()),
            edit: None,
        }
    }

    /// And replace the output of the kept step `step` with `output`.
    pub fn edit(mut self, step: impl Into<String>, output: Value) -> Replay {
        self.edit = Some((step.into(), output));
        self
    }
}

/// Why an operation was refused; nothing changed.
#[derive(Debug)]
pub enum OpError {
    /// No such run.
    NoRun(String),
    /// The request cannot be followed (an unknown step, a function this
    /// engine does not have).
    Bad(String),
    Store(StoreError),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::NoRun(id) => write!(f, "durafn: no run `{id}`"),
            OpError::Bad(m) => write!(f, "durafn: {m}"),
            OpError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpError {}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

/// A bulk operation: `cancel` or `rerun` every run that matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkOp {
    Cancel,
    Rerun,
}

/// Which runs a bulk operation touches: of a function, with a status,
/// created within a time range (ms since the epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Selection {
    pub function: Option<String>,
    pub status: Option<RunStatus>,
    /// Created at or after.
    pub since_ms: Option<i64>,
    /// Created before.
    pub until_ms: Option<i64>,
}

/// A bulk operation's progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    pub id: String,
    pub op: BulkOp,
    /// Runs selected so far (the selection is read page by page).
    pub matched: usize,
    /// Runs the operation was applied to.
    pub done: usize,
    /// Runs it was refused for (a run that ended meanwhile, for a cancel),
    /// with the first few reasons.
    pub skipped: usize,
    pub errors: Vec<String>,
    /// Every matching run was seen.
    pub finished: bool,
}

/// The jobs of this engine process (they do not outlive it).
#[derive(Default)]
pub(crate) struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

struct Job {
    id: String,
    op: BulkOp,
    matched: AtomicUsize,
    done: AtomicUsize,
    skipped: AtomicUsize,
    errors: Mutex<Vec<String>>,
    finished: AtomicBool,
}

impl Job {
    fn status(&self) -> JobStatus {
        JobStatus {
            id: self.id.clone(),
            op: self.op,
            matched: self.matched.load(Ordering::SeqCst),
            done: self.done.load(Ordering::SeqCst),
            skipped: self.skipped.load(Ordering::SeqCst),
            errors: self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
            finished: self.finished.load(Ordering::SeqCst),
        }
    }

    fn skip(&self, why: String) {
        self.skipped.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut e) = self.errors.lock() {
            if e.len() < 10 {
                e.push(why);
            }
        }
    }
}

/// Runs read per page while a bulk operation selects.
const PAGE: usize = 500;

/// Finished bulk jobs kept for [`Engine::job`].
const KEEP_JOBS: usize = 100;

impl Engine {
    /// A new run of the same function from the same event (or batch),
    /// from the start; recorded on `run_id` as `rerun`. Answers the new
    /// run's ID.
    ///
    /// The new run runs within the function's concurrency limits and
    /// timeouts; what is decided per event (idempotency, rate limits,
    /// debounce, batching, singletons, throttles) does not apply to it,
    /// as in Inngest.
    pub async fn rerun(&self, run_id: &str) -> Result<String, OpError> {
        let run = self.op_target(run_id).await?;
        self.restart(run, "rerun", Vec::new(), None, None).await
    }

    /// A new run whose journal is `run_id`'s up to `replay.from` (and with
    /// `replay.edit`'s output in place of the edited step's), so that no
    /// step before it runs again; recorded on `run_id` as `replay`.
    /// Answers the new run's ID. The new run runs the function as it is
    /// now: a journal that does not fit it fails the run with
    /// `JournalMismatch`, as any replay would.
    pub async fn replay(&self, run_id: &str, replay: Replay) -> Result<String, OpError> {
        let run = self.op_target(run_id).await?;
        let store = &self.inner.store;
        let detail = store
            .run(run_id)
            .await?
            .ok_or_else(|| OpError::NoRun(run_id.into()))?;
        let journal = store
            .journal(run_id)
            .await?
            .ok_or_else(|| OpError::NoRun(run_id.into()))?;
        let order: Vec<String> = journal.order().iter().map(|s| s.to_string()).collect();
        let find = |step: &str| position(&order, &detail.steps, step);
        let edit = match &replay.edit {
            Some((step, output)) => Some((find(step)?, output.clone())),
            None => None,
        };
        let cut = match (&replay.from, &edit) {
            (Some(step), _) => find(step)?,
            (None, Some((at, _))) => at + 1,
            (None, None) => {
                return Err(OpError::Bad(
                    "a replay needs the step to replay from, or a step output to edit".into(),
                ))
            }
        };
        if let Some((at, _)) = &edit {
            if *at >= cut {
                return Err(OpError::Bad(format!(
                    "the edited step `{}` is not kept: it is at or after `{}`, which runs again; edit a step before it",
                    order[*at], order[cut]
                )));
            }
        }
        let by_id: HashMap<&str, &StepRecord> =
            detail.steps.iter().map(|s| (s.id.as_str(), s)).collect();
        let now = self.inner.clock.now_ms();
        let mut kept = Vec::with_capacity(cut);
        for (i, (id, outcome)) in journal.iter().enumerate().take(cut) {
            let key = id.to_string();
            let trace = by_id.get(key.as_str());
            let outcome = match &edit {
                Some((at, output)) if *at == i => Outcome::data(output.clone()),
                _ => outcome.clone(),
            };
            kept.push(StepCommit {
                name: trace.and_then(|t| t.name.clone()),
                outcome,
                attempts: trace.map_or(1, |t| t.attempts),
                started_ms: trace.and_then(|t| t.started_ms).unwrap_or(now),
                ended_ms: trace.and_then(|t| t.ended_ms).unwrap_or(now),
                reset_fn_attempt: false,
                step: key,
            });
        }
        // Recorded as a person reads them: an app's step by its name.
        let readable = |key: &String| {
            by_id
                .get(key.as_str())
                .and_then(|t| t.name.clone())
                .unwrap_or_else(|| key.clone())
        };
        let from_step = order.get(cut).map(readable);
        let edited = edit.map(|(at, _)| readable(&order[at]));
        self.restart(run, "replay", kept, from_step, edited).await
    }

    /// Start a bulk `op` over the runs `selection` matches, in the
    /// background; answers the job, whose progress [`Engine::job`] tells.
    pub fn bulk(&self, op: BulkOp, selection: Selection) -> JobStatus {
        let job = Arc::new(Job {
            id: new_id(self.inner.clock.now_ms()),
            op,
            matched: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            skipped: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
            finished: AtomicBool::new(false),
        });
        if let Ok(mut jobs) = self.inner.jobs.jobs.lock() {
            // Keep the newest finished jobs only (IDs sort by time).
            let mut done: Vec<String> = jobs
                .values()
                .filter(|j| j.finished.load(Ordering::SeqCst))
                .map(|j| j.id.clone())
                .collect();
            if done.len() >= KEEP_JOBS {
                done.sort_unstable();
                for id in &done[..done.len() + 1 - KEEP_JOBS] {
                    jobs.remove(id);
                }
            }
            jobs.insert(job.id.clone(), job.clone());
        }
        let engine = self.clone();
        let status = job.status();
        tokio::spawn(async move {
            engine.run_bulk(&job, selection).await;
            job.finished.store(true, Ordering::SeqCst);
            tracing::info!(job = %job.id, op = ?job.op, done = job.done.load(Ordering::SeqCst), "bulk operation finished");
        });
        status
    }

    /// A bulk operation's progress (`None`: no such job in this process,
    /// or one of the finished ones past the newest 100).
    pub fn job(&self, id: &str) -> Option<JobStatus> {
        let jobs = self.inner.jobs.jobs.lock().ok()?;
        jobs.get(id).map(|j| j.status())
    }

    async fn run_bulk(&self, job: &Job, sel: Selection) {
        let mut after: Option<(i64, String)> = None;
        loop {
            let filter = RunFilter {
                function: sel.function.clone(),
                status: sel.status,
                event: None,
                limit: Some(PAGE),
                after: after.clone(),
            };
            let page = match self.inner.store.list_runs(filter).await {
                Ok(p) => p,
                Err(e) => {
                    job.skip(format!("listing runs failed: {e}"));
                    return;
                }
            };
            let Some(last) = page.last() else { return };
            after = Some((last.created_ms, last.id.clone()));
            let full = page.len() == PAGE;
            // Newest first: past `since`, nothing older matches.
            let mut older = false;
            for run in page {
                if sel.until_ms.is_some_and(|u| run.created_ms >= u) {
                    continue;
                }
                if sel.since_ms.is_some_and(|s| run.created_ms < s) {
                    older = true;
                    break;
                }
                job.matched.fetch_add(1, Ordering::SeqCst);
                match self.apply_bulk(job.op, &run).await {
                    Ok(()) => {
                        job.done.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(why) => job.skip(format!("{}: {why}", run.id)),
                }
            }
            if older || !full {
                return;
            }
        }
    }

    async fn apply_bulk(&self, op: BulkOp, run: &RunRecord) -> Result<(), String> {
        match op {
            BulkOp::Cancel => match self.cancel(&run.id).await {
                Ok(Some(was)) if !was.is_final() => Ok(()),
                Ok(Some(was)) => Err(format!("it had ended ({})", was.as_str())),
                Ok(None) => Err("it was deleted".into()),
                Err(e) => Err(e.to_string()),
            },
            BulkOp::Rerun => self
                .rerun(&run.id)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    /// The run an operation starts from, if its function is known here.
    async fn op_target(&self, run_id: &str) -> Result<RunRecord, OpError> {
        let run = self
            .inner
            .store
            .run_record(run_id)
            .await?
            .ok_or_else(|| OpError::NoRun(run_id.into()))?;
        if self.inner.registry.get(&run.fn_id).is_none() {
            return Err(OpError::Bad(format!(
                "run `{run_id}` is of function `{}`, which this engine does not have (register it, or sync its app, first)",
                run.fn_id
            )));
        }
        Ok(run)
    }

    async fn restart(
        &self,
        run: RunRecord,
        kind: &str,
        journal: Vec<StepCommit>,
        from_step: Option<String>,
        edited_step: Option<String>,
    ) -> Result<String, OpError> {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let event = inner
            .store
            .run(&run.id)
            .await?
            .map(|d| d.event)
            .unwrap_or(Value::Null);
        let decided = inner.registry.flow_for(&run.fn_id, &event);
        let id = new_id(now);
        let restart = Restart {
            run: crate::store::NewRun {
                id: id.clone(),
                fn_id: run.fn_id.clone(),
                parent: None,
                flow: crate::store::flow::RunFlow {
                    concurrency: decided.concurrency,
                    timeouts: decided.timeouts,
                    ..Default::default()
                },
                version: inner.registry.version(&run.fn_id),
            },
            origin: Origin {
                run_id: run.id.clone(),
                kind: kind.into(),
                from_step,
                edited_step,
            },
            journal,
            now_ms: now,
        };
        if !inner.store.restart(restart).await? {
            return Err(OpError::NoRun(run.id));
        }
        tracing::info!(from = %run.id, run_id = %id, kind, "run made from another");
        inner.notify.notify_one();
        Ok(id)
    }
}

/// The position in the journal `order` of `step`: a journal key, or the
/// readable name of one (an app's steps are keyed by hashes).
fn position(order: &[String], steps: &[StepRecord], step: &str) -> Result<usize, OpError> {
    if let Some(i) = order.iter().position(|k| k == step) {
        return Ok(i);
    }
    let named: Vec<usize> = steps
        .iter()
        .filter(|s| s.name.as_deref() == Some(step))
        .filter_map(|s| order.iter().position(|k| *k == s.id))
        .collect();
    match named.as_slice() {
        [i] => Ok(*i),
        [] => {
            let shown: Vec<String> = order
                .iter()
                .map(|k| {
                    match steps
                        .iter()
                        .find(|s| s.id == *k)
                        .and_then(|s| s.name.as_ref())
                    {
                        Some(name) => format!("{name} ({k})"),
                        None => k.clone(),
                    }
                })
                .collect();
            Err(OpError::Bad(format!(
                "the run has no journaled step `{step}`; its steps, in order: {}",
                if shown.is_empty() {
                    "none".to_string()
                } else {
                    shown.join(", ")
                }
            )))
        }
        several => Err(OpError::Bad(format!(
            "{} journaled steps are named `{step}`; name one by its ID: {}",
            several.len(),
            several
                .iter()
                .map(|i| order[*i].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
