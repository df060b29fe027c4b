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

fn step_status(o: &Outcome) -> &'static str {
    match o {
        Outcome::Error { .. } => "failed",
        _ => "completed",
    }
}

impl Mem {
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
                    self.ready.insert((now, r.id.clone()));
                    self.created.push(r.id.clone());
                    self.runs.insert(
                        r.id.clone(),
                        Row {
                            rec: RunRecord {
                                id: r.id,
                                fn_id: r.fn_id,
                                event_id: event_id.clone(),
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
                            lease_owner: None,
                            steps: Vec::new(),
                            index: HashMap::new(),
                            journal: Journal::new(),
                        },
                    );
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
                    if let Some(sleep) = row.rec.pending_sleep.take() {
                        let id = StepId::from_readable(sleep);
                        if let Some(s) = row.step_mut(id.as_str()) {
                            s.status = "completed".into();
                            s.ended_ms = Some(now);
                        }
                        row.journal.insert(id, Outcome::null());
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
                let status = step_status(&write.outcome);
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
                let Some(row) = self.runs.get_mut(&s.run_id) else {
                    return Reply::Rejected("no such run".into());
                };
                if row.rec.status != RunStatus::Running {
                    return Reply::Rejected(format!("run is {}", row.rec.status.as_str()));
                }
                if let Some((step, attempt, error, started)) = s.failed_attempt {
                    record_attempt(row, &step, attempt, error, started);
                }
                if let Some(sleep) = &s.pending_sleep {
                    row.push_step(StepRecord {
                        id: sleep.to_string(),
                        name: s.sleep_name.clone(),
                        status: "sleeping".into(),
                        attempts: 1,
                        started_ms: Some(s.now),
                        ended_ms: None,
                        output: None,
                        error: None,
                    });
                }
                row.rec.status = RunStatus::Sleeping;
                row.rec.wake_at = Some(s.wake_at);
                row.rec.attempt = s.attempt;
                row.rec.fn_attempt = s.fn_attempt;
                row.rec.pending_sleep = s.pending_sleep.map(|p| p.to_string());
                row.lease_owner = None;
                self.ready.insert((s.wake_at, s.run_id));
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
        }
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
            status: "retrying".into(),
            attempts: attempt + 1,
            started_ms: Some(started),
            ended_ms: None,
            output: None,
            error: Some(error),
        }),
    }
}
