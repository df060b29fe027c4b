//! The in-memory store: for tests and benchmarks. Nothing survives the
//! process.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use serde_json::Value;

use super::*;

/// An in-memory [`Store`].
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Mem>,
}

#[derive(Default)]
struct Mem {
    events: HashSet<String>,
    runs: HashMap<String, Row>,
    created: Vec<String>,
    /// Runs that may be claimed: (wake_at, run id).
    ready: BTreeSet<(i64, String)>,
}

struct Row {
    rec: RunRecord,
    event: Value,
    pending_outcome: Option<Outcome>,
    parent: Option<(String, String)>,
    /// (event name, expression, registered at)
    wait: Option<(String, Option<String>, i64)>,
    lease_owner: Option<String>,
    steps: Vec<StepRecord>,
    /// Position of each step in `steps`.
    index: HashMap<String, usize>,
    journal: Journal,
}

impl Row {
    fn step_mut(&mut self, id: &str) -> Option<&mut StepRecord> {
        self.index.get(id).map(|&i| &mut self.steps[i])
    }

    fn push_step(&mut self, s: StepRecord) {
        self.index.insert(s.id.clone(), self.steps.len());
        self.steps.push(s);
    }

    /// Journal the outcome of the pending step.
    fn journal_pending(&mut self, step: &str, outcome: Outcome, now: i64) {
        let (output, error) = split_outcome(&outcome);
        let status = if matches!(outcome, Outcome::Error { .. }) {
            "failed"
        } else {
            "completed"
        };
        match self.step_mut(step) {
            Some(s) => {
                s.status = status.into();
                s.ended_ms = Some(now);
                s.output = output;
                s.error = error;
            }
            None => self.push_step(StepRecord {
                id: step.to_string(),
                name: None,
                kind: None,
                status: status.into(),
                attempts: 1,
                started_ms: Some(now),
                ended_ms: Some(now),
                output,
                error,
            }),
        }
        self.journal.insert(StepId::from_readable(step), outcome);
        self.wait = None;
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn apply(&self, op: Op) -> BoxFuture<'_, StoreResult<Reply>> {
        let reply = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(op);
        Box::pin(std::future::ready(Ok(reply)))
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

impl Mem {
    fn insert_run(&mut self, r: NewRun, event_id: &str, event: &Value, now: i64) {
        self.ready.insert((now, r.id.clone()));
        self.created.push(r.id.clone());
        self.runs.insert(
            r.id.clone(),
            Row {
                rec: RunRecord {
                    id: r.id,
                    fn_id: r.fn_id,
                    event_id: event_id.to_string(),
                    status: RunStatus::Queued,
                    attempt: 0,
                    fn_attempt: 0,
                    wake_at: Some(now),
                    pending_sleep: None,
                    output: None,
                    error: None,
                    created_ms: now,
                    ended_ms: None,
                },
                event: event.clone(),
                pending_outcome: None,
                parent: r.parent,
                wait: None,
                lease_owner: None,
                steps: Vec::new(),
                index: HashMap::new(),
                journal: Journal::new(),
            },
        );
    }

    /// Resolve a run's pending step now, if it is still pending.
    fn resolve(&mut self, run_id: &str, step: &str, outcome: Outcome, now: i64) -> bool {
        let Some(row) = self.runs.get_mut(run_id) else {
            return false;
        };
        if row.rec.status != RunStatus::Sleeping || row.rec.pending_sleep.as_deref() != Some(step) {
            return false;
        }
        if let Some(w) = row.rec.wake_at {
            self.ready.remove(&(w, run_id.to_string()));
        }
        row.rec.pending_sleep = None;
        row.pending_outcome = None;
        row.rec.wake_at = Some(now);
        row.journal_pending(step, outcome, now);
        self.ready.insert((now, run_id.to_string()));
        true
    }

    fn apply(&mut self, op: Op) -> Reply {
        match op {
            Op::Ingest {
                event_id,
                event,
                runs,
                now,
                ..
            } => {
                if !self.events.insert(event_id.clone()) {
                    return Reply::Ingested { new: false };
                }
                for r in runs {
                    self.insert_run(r, &event_id, &event, now);
                }
                Reply::Ingested { new: true }
            }
            Op::Claim {
                now, limit, owner, ..
            } => {
                let due: Vec<(i64, String)> = self
                    .ready
                    .iter()
                    .take_while(|(w, _)| *w <= now)
                    .take(limit)
                    .cloned()
                    .collect();
                let mut out = Vec::with_capacity(due.len());
                for key in due {
                    self.ready.remove(&key);
                    let row = self.runs.get_mut(&key.1).expect("ready run exists");
                    if let Some(step) = row.rec.pending_sleep.take() {
                        let outcome = row.pending_outcome.take().unwrap_or_else(Outcome::null);
                        row.journal_pending(&step, outcome, now);
                    }
                    row.rec.status = RunStatus::Running;
                    row.rec.wake_at = None;
                    row.lease_owner = Some(owner.clone());
                    out.push(Claimed {
                        run: row.rec.clone(),
                        event: row.event.clone(),
                        journal: row.journal.clone(),
                    });
                }
                Reply::Claimed(out)
            }
            Op::Append { write, owner, .. } => {
                let Some(row) = self.runs.get_mut(&write.run_id) else {
                    return Reply::Rejected("no such run".into());
                };
                if row.rec.status != RunStatus::Running
                    || row.lease_owner.as_deref() != Some(owner.as_str())
                {
                    return Reply::Rejected(format!("run is {}", row.rec.status.as_str()));
                }
                let status = if matches!(write.outcome, Outcome::Error { .. }) {
                    "failed"
                } else {
                    "completed"
                };
                let (output, error) = split_outcome(&write.outcome);
                match row.step_mut(write.step.as_str()) {
                    Some(s) => {
                        s.status = status.into();
                        s.attempts = write.attempts;
                        s.ended_ms = Some(write.ended_ms);
                        s.output = output;
                        s.error = error;
                    }
                    None => row.push_step(StepRecord {
                        id: write.step.to_string(),
                        name: write.name.clone(),
                        kind: None,
                        status: status.into(),
                        attempts: write.attempts,
                        started_ms: Some(write.started_ms),
                        ended_ms: Some(write.ended_ms),
                        output,
                        error,
                    }),
                }
                row.journal.insert(write.step, write.outcome);
                Reply::Done
            }
            Op::Suspend(s) => {
                let s = *s;
                let Some(row) = self.runs.get_mut(&s.run_id) else {
                    return Reply::Rejected("no such run".into());
                };
                if row.rec.status != RunStatus::Running {
                    return Reply::Rejected(format!("run is {}", row.rec.status.as_str()));
                }
                if let Some((step, attempt, error, started)) = s.failed_attempt {
                    record_attempt(row, &step, attempt, error, started);
                }
                if let Some(step) = &s.pending_sleep {
                    let status = if s.wait.is_some() {
                        "waiting"
                    } else if s.spawn.is_some() {
                        "invoking"
                    } else {
                        "sleeping"
                    };
                    if row.step_mut(step.as_str()).is_none() {
                        row.push_step(StepRecord {
                            id: step.to_string(),
                            name: s.sleep_name.clone(),
                            kind: None,
                            status: status.into(),
                            attempts: 1,
                            started_ms: Some(s.now),
                            ended_ms: None,
                            output: None,
                            error: None,
                        });
                    }
                    row.wait = s
                        .wait
                        .as_ref()
                        .map(|w| (w.event.clone(), w.expr.clone(), s.now));
                }
                row.rec.status = RunStatus::Sleeping;
                row.rec.wake_at = Some(s.wake_at);
                row.rec.attempt = s.attempt;
                row.rec.fn_attempt = s.fn_attempt;
                row.rec.pending_sleep = s.pending_sleep.as_ref().map(|p| p.to_string());
                row.pending_outcome = s.pending_outcome;
                row.lease_owner = None;
                self.ready.insert((s.wake_at, s.run_id.clone()));
                if let (Some(sp), Some(step)) = (s.spawn, s.pending_sleep) {
                    if self.events.insert(sp.event_id.clone()) {
                        self.insert_run(sp.run, &sp.event_id, &sp.event, s.now);
                    } else {
                        // Invoked before: hand over the child's result if it ended.
                        let ended = self
                            .runs
                            .values()
                            .find(|r| {
                                r.rec.event_id == sp.event_id
                                    && r.parent.as_ref().is_some_and(|p| p.0 == s.run_id)
                            })
                            .and_then(|r| child_outcome(&r.rec));
                        if let Some(o) = ended {
                            self.resolve(&s.run_id, step.as_str(), o, s.now);
                        }
                    }
                }
                Reply::Done
            }
            Op::Finish {
                run_id,
                owner,
                status,
                output,
                error,
                now,
            } => {
                let Some(row) = self.runs.get_mut(&run_id) else {
                    return Reply::Rejected("no such run".into());
                };
                if row.rec.status != RunStatus::Running
                    || row.lease_owner.as_deref() != Some(owner.as_str())
                {
                    return Reply::Rejected(format!("run is {}", row.rec.status.as_str()));
                }
                row.rec.status = status;
                row.rec.output = output;
                row.rec.error = error;
                row.rec.ended_ms = Some(now);
                row.lease_owner = None;
                let parent = row.parent.clone();
                let outcome = child_outcome(&row.rec);
                if let (Some((p, step)), Some(o)) = (parent, outcome) {
                    self.resolve(&p, &step, o, now);
                }
                Reply::Done
            }
            Op::Cancel { run_id, now } => {
                let Some(row) = self.runs.get_mut(&run_id) else {
                    return Reply::Cancelled { was: None };
                };
                let was = row.rec.status;
                if !was.is_final() {
                    if let Some(w) = row.rec.wake_at {
                        self.ready.remove(&(w, run_id.clone()));
                    }
                    row.rec.status = RunStatus::Cancelled;
                    row.rec.ended_ms = Some(now);
                    row.rec.wake_at = None;
                    row.lease_owner = None;
                    row.wait = None;
                }
                Reply::Cancelled { was: Some(was) }
            }
            Op::ListRuns(f) => {
                let limit = f.limit.unwrap_or(100);
                let runs = self
                    .created
                    .iter()
                    .rev()
                    .filter_map(|id| self.runs.get(id))
                    .filter(|r| f.function.as_ref().is_none_or(|fid| &r.rec.fn_id == fid))
                    .filter(|r| f.status.is_none_or(|s| r.rec.status == s))
                    .take(limit)
                    .map(|r| r.rec.clone())
                    .collect();
                Reply::Runs(runs)
            }
            Op::GetRun { run_id } => Reply::Run(self.runs.get(&run_id).map(|r| {
                Box::new(RunDetail {
                    run: r.rec.clone(),
                    event: r.event.clone(),
                    steps: r.steps.clone(),
                })
            })),
            Op::GetRunRecord { run_id } => {
                Reply::Record(self.runs.get(&run_id).map(|r| r.rec.clone()))
            }
            Op::NextWake => Reply::NextWake(self.ready.iter().next().map(|(w, _)| *w)),
            Op::ReleaseLeases => Reply::Done,
            Op::Waiting { event } => {
                let mut waits: Vec<WaitRow> = self
                    .runs
                    .values()
                    .filter(|r| r.rec.status == RunStatus::Sleeping)
                    .filter_map(|r| {
                        let (name, expr, created) = r.wait.as_ref()?;
                        (*name == event).then(|| WaitRow {
                            run_id: r.rec.id.clone(),
                            step_id: r.rec.pending_sleep.clone().unwrap_or_default(),
                            expr: expr.clone(),
                            trigger: r.event.clone(),
                            created_ms: *created,
                        })
                    })
                    .collect();
                waits.sort_by_key(|w| w.created_ms);
                Reply::Waits(waits)
            }
            Op::Active { fn_id } => Reply::Active(
                self.runs
                    .values()
                    .filter(|r| r.rec.fn_id == fn_id && !r.rec.status.is_final())
                    .map(|r| (r.rec.id.clone(), r.event.clone()))
                    .collect(),
            ),
            Op::Resolve {
                run_id,
                step_id,
                outcome,
                now,
            } => {
                if self.resolve(&run_id, &step_id, outcome, now) {
                    Reply::Done
                } else {
                    Reply::Rejected("the step is no longer pending".into())
                }
            }
        }
    }
}

/// The outcome a finished child run hands to its parent, if it ended.
fn child_outcome(r: &RunRecord) -> Option<Outcome> {
    match r.status {
        RunStatus::Completed => Some(Outcome::data(r.output.clone().unwrap_or(Value::Null))),
        RunStatus::Failed | RunStatus::Cancelled => Some(Outcome::error(
            r.error
                .as_ref()
                .map(crate::serve::wire::error_info)
                .unwrap_or_else(|| {
                    crate::error::ErrorInfo::new("Cancelled", "the invoked run was cancelled")
                }),
        )),
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

fn record_attempt(row: &mut Row, step: &StepId, attempt: u32, error: Value, started: i64) {
    match row.step_mut(step.as_str()) {
        Some(s) => {
            s.attempts = attempt + 1;
            s.error = Some(error);
            s.status = "retrying".into();
        }
        None => row.push_step(StepRecord {
            id: step.to_string(),
            name: None,
            kind: None,
            status: "retrying".into(),
            attempts: attempt + 1,
            started_ms: Some(started),
            ended_ms: None,
            output: None,
            error: Some(error),
        }),
    }
}
