//! The in-memory store: for tests and benchmarks. Nothing survives the
//! process. One mutex makes every operation atomic; the semantics are the
//! SQLite store's, checked by the same conformance suite.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use super::*;
use crate::step_id::StepId;

/// An in-memory [`Store`].
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Mem>,
}

#[derive(Default)]
struct Mem {
    /// Event ID → the runs it started.
    events: HashMap<String, Vec<String>>,
    /// Event name → the events in the order received: (received at, ID,
    /// event), for waits that look back.
    received: HashMap<String, Vec<(i64, String, Value)>>,
    runs: HashMap<String, Row>,
    created: Vec<String>,
    /// Queued and sleeping runs without concurrency limits: (wake_at, run).
    due: BTreeSet<(i64, String)>,
    /// Queued and sleeping runs with concurrency limits, by their first
    /// key: a claim looks only at the keys with room, not past every run of
    /// a full one.
    keyed: HashMap<String, BTreeSet<(i64, String)>>,
    /// Running runs: (lease until, run).
    leased: BTreeSet<(i64, String)>,
    /// Event name → waiting runs: (registered at, run).
    waits: HashMap<String, BTreeSet<(i64, String)>>,
    apps: BTreeMap<String, AppRecord>,
    /// Timeouts: (deadline, whether it is the finish one, run).
    deadlines: BTreeSet<(i64, bool, String)>,
    /// Flow-control keys: (function, kind, key) → value.
    flow: HashMap<(String, &'static str, String), i64>,
    /// (function, batch key) → the batch run that may still take events.
    batches: HashMap<(String, String), String>,
}

struct Row {
    rec: RunRecord,
    event: Value,
    parent: Option<Parent>,
    /// What a due timer journals for the pending step (`null` when `None`).
    pending_outcome: Option<Outcome>,
    /// (event name, expression, registered at)
    wait: Option<(String, Option<String>, i64)>,
    lease: Option<Lease>,
    generation: u64,
    steps: Vec<StepRecord>,
    /// Position of each step in `steps`.
    index: HashMap<String, usize>,
    journal: Journal,
    attempts: HashMap<String, u32>,
    /// The singleton key the run holds while active.
    singleton: Option<String>,
    /// The debounce key the run takes events for while queued.
    debounce: Option<String>,
    /// A batch run's events, in order (empty for other runs).
    batch: Vec<Value>,
    /// The concurrency limits the run counts against while running.
    concurrency: Vec<flow::Concurrency>,
    /// Until the run is first claimed: when it must have started by.
    start_by: Option<i64>,
    /// The finish timeout, and once started, its deadline.
    finish_ms: Option<i64>,
    finish_by: Option<i64>,
    /// Operations made on the run.
    ops: Vec<RunOp>,
}

impl Row {
    fn step_mut(&mut self, id: &str) -> Option<&mut StepRecord> {
        self.index.get(id).map(|&i| &mut self.steps[i])
    }

    fn push_step(&mut self, s: StepRecord) {
        self.index.insert(s.id.clone(), self.steps.len());
        self.steps.push(s);
    }

    fn journal(&mut self, c: StepCommit) {
        if c.reset_fn_attempt {
            self.rec.fn_attempt = 0;
        }
        let status = match c.outcome {
            Outcome::Error { .. } => "failed",
            _ => "completed",
        };
        let (output, error) = split_outcome(&c.outcome);
        match self.step_mut(&c.step) {
            Some(s) => {
                s.status = status.into();
                s.attempts = c.attempts;
                s.ended_ms = Some(c.ended_ms);
                s.output = output;
                // A retried step keeps its last failed attempt's error.
                if error.is_some() {
                    s.error = error;
                }
            }
            None => self.push_step(StepRecord {
                id: c.step.clone(),
                name: c.name,
                kind: None,
                status: status.into(),
                attempts: c.attempts,
                started_ms: Some(c.started_ms),
                ended_ms: Some(c.ended_ms),
                output,
                error,
            }),
        }
        self.attempts.remove(&c.step);
        self.journal
            .insert(StepId::from_readable(c.step), c.outcome);
    }

    fn holds(&self, lease: &Lease) -> bool {
        self.rec.status == RunStatus::Running
            && self
                .lease
                .as_ref()
                .is_some_and(|l| l.owner == lease.owner && l.generation == lease.generation)
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn mem(&self) -> MutexGuard<'_, Mem> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(v))
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn ingest(&self, batch: IngestBatch) -> BoxFuture<'_, StoreResult<IngestReceipt>> {
        let mut receipt = IngestReceipt::default();
        let r = self
            .mem()
            .ingest(batch.events, batch.now_ms, &mut receipt)
            .map(|()| receipt);
        ready(r)
    }

    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, StoreResult<Vec<ClaimedRun>>> {
        ready(Ok(self.mem().claim(&req)))
    }

    fn heartbeat(&self, lease: &Lease, until_ms: i64) -> BoxFuture<'_, StoreResult<()>> {
        let mut m = self.mem();
        let r = m.leased_row(lease).map(|row| {
            let old = row.lease.as_ref().map_or(0, |l| l.until_ms);
            if let Some(l) = &mut row.lease {
                l.until_ms = until_ms;
            }
            old
        });
        if let Ok(old) = r {
            m.leased.remove(&(old, lease.run_id.clone()));
            m.leased.insert((until_ms, lease.run_id.clone()));
        }
        ready(r.map(|_| ()))
    }

    fn commit_step(&self, lease: &Lease, commit: StepCommit) -> BoxFuture<'_, StoreResult<()>> {
        let mut m = self.mem();
        ready(m.leased_row(lease).map(|row| row.journal(commit)))
    }

    fn suspend(
        &self,
        lease: &Lease,
        suspension: Suspension,
        now_ms: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        ready(self.mem().suspend(lease, suspension, now_ms))
    }

    fn finish(
        &self,
        lease: &Lease,
        finish: Finish,
        now_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Finished>> {
        ready(self.mem().finish(lease, finish, now_ms))
    }

    fn cancel(&self, run_id: &str, now_ms: i64) -> BoxFuture<'_, StoreResult<Option<RunStatus>>> {
        let mut m = self.mem();
        let was = m.cancel(run_id, now_ms);
        if let (Some(was), Some(row)) = (was, m.runs.get_mut(run_id)) {
            if !was.is_final() {
                row.ops.push(RunOp::cancel(now_ms));
            }
        }
        ready(Ok(was))
    }

    fn restart(&self, restart: Restart) -> BoxFuture<'_, StoreResult<bool>> {
        ready(self.mem().restart(restart))
    }

    fn release_leases(&self) -> BoxFuture<'_, StoreResult<()>> {
        let mut m = self.mem();
        let leased: Vec<(i64, String)> = m.leased.iter().cloned().collect();
        for (until, id) in leased {
            m.leased.remove(&(until, id.clone()));
            m.leased.insert((i64::MIN, id.clone()));
            if let Some(l) = m.runs.get_mut(&id).and_then(|r| r.lease.as_mut()) {
                l.until_ms = i64::MIN;
            }
        }
        ready(Ok(()))
    }

    fn put_app(&self, app: AppRecord) -> BoxFuture<'_, StoreResult<()>> {
        self.mem().apps.insert(app.id.clone(), app);
        ready(Ok(()))
    }

    fn apps(&self) -> BoxFuture<'_, StoreResult<Vec<AppRecord>>> {
        ready(Ok(self.mem().apps.values().cloned().collect()))
    }

    fn run(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<RunDetail>>> {
        let detail = self.mem().runs.get(run_id).map(|r| RunDetail {
            run: r.rec.clone(),
            event: r.event.clone(),
            events: r.batch.clone(),
            steps: r.steps.clone(),
            ops: r.ops.clone(),
        });
        ready(Ok(detail))
    }

    fn journal(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<Journal>>> {
        ready(Ok(self.mem().runs.get(run_id).map(|r| r.journal.clone())))
    }

    fn run_record(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<RunRecord>>> {
        ready(Ok(self.mem().runs.get(run_id).map(|r| r.rec.clone())))
    }

    fn purge(&self, before_ms: i64, limit: usize) -> BoxFuture<'_, StoreResult<Purged>> {
        ready(Ok(self.mem().purge(before_ms, limit)))
    }

    fn list_events(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> BoxFuture<'_, StoreResult<Vec<EventRecord>>> {
        let m = self.mem();
        let mut all: Vec<&(i64, String, Value)> = m
            .received
            .values()
            .flatten()
            .filter(|(at, id, _)| {
                before
                    .as_ref()
                    .is_none_or(|(b, bid)| (*at, id.as_str()) < (*b, bid.as_str()))
            })
            .collect();
        all.sort_unstable_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        let out = all
            .into_iter()
            .take(limit)
            .map(|(at, id, e)| EventRecord {
                id: id.clone(),
                name: e["name"].as_str().unwrap_or_default().to_string(),
                received_ms: *at,
                event: e.clone(),
            })
            .collect();
        ready(Ok(out))
    }

    fn list_runs(&self, f: RunFilter) -> BoxFuture<'_, StoreResult<Vec<RunRecord>>> {
        let m = self.mem();
        let mut runs: Vec<RunRecord> = m
            .created
            .iter()
            .filter_map(|id| m.runs.get(id))
            .filter(|r| f.function.as_ref().is_none_or(|fid| &r.rec.fn_id == fid))
            .filter(|r| f.status.is_none_or(|s| r.rec.status == s))
            .filter(|r| {
                f.event.as_ref().is_none_or(|e| {
                    &r.rec.event_id == e
                        || r.batch
                            .iter()
                            .any(|b| b.get("id").and_then(Value::as_str) == Some(e))
                })
            })
            .filter(|r| listed_after(&r.rec, f.after.as_ref()))
            .map(|r| r.rec.clone())
            .collect();
        runs.sort_unstable_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
        runs.truncate(f.limit.unwrap_or(100));
        ready(Ok(runs))
    }

    fn next_wake(
        &self,
        functions: Vec<String>,
        unknown_timeout_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Option<i64>>> {
        let m = self.mem();
        let mut best: Option<i64> = None;
        for set in std::iter::once(&m.due).chain(m.keyed.values()) {
            for (w, id) in set {
                // Each set is in wake order, and a run is due no earlier
                // than its wake time.
                if best.is_some_and(|b| *w >= b) {
                    break;
                }
                let r = &m.runs[id].rec;
                let at = if functions.contains(&r.fn_id) {
                    *w
                } else {
                    (*w).max(r.created_ms.saturating_add(unknown_timeout_ms))
                };
                best = Some(best.map_or(at, |b| b.min(at)));
            }
        }
        ready(Ok(best))
    }
}

impl Mem {
    fn leased_row(&mut self, lease: &Lease) -> StoreResult<&mut Row> {
        match self.runs.get_mut(&lease.run_id) {
            Some(row) if row.holds(lease) => Ok(row),
            _ => Err(StoreError::LeaseLost {
                run_id: lease.run_id.clone(),
            }),
        }
    }

    /// Move a run out of the due and leased indexes and the waits.
    fn unindex(&mut self, run_id: &str) {
        let Some(row) = self.runs.get_mut(run_id) else {
            return;
        };
        if let Some(w) = row.rec.wake_at {
            let entry = (w, run_id.to_string());
            match row.concurrency.first() {
                None => {
                    self.due.remove(&entry);
                }
                Some(c) => {
                    if let Some(set) = self.keyed.get_mut(&c.key) {
                        set.remove(&entry);
                        if set.is_empty() {
                            self.keyed.remove(&c.key);
                        }
                    }
                }
            }
        }
        if let Some(l) = row.lease.take() {
            self.leased.remove(&(l.until_ms, run_id.to_string()));
        }
        if let Some((name, _, at)) = row.wait.take() {
            if let Some(set) = self.waits.get_mut(&name) {
                set.remove(&(at, run_id.to_string()));
            }
        }
    }

    fn set_due(&mut self, run_id: &str, status: RunStatus, wake_at: i64) {
        self.unindex(run_id);
        if let Some(row) = self.runs.get_mut(run_id) {
            row.rec.status = status;
            row.rec.wake_at = Some(wake_at);
            let key = row.concurrency.first().map(|c| c.key.clone());
            self.index_due(key, wake_at, run_id.to_string());
        }
    }

    fn index_due(&mut self, first_key: Option<String>, wake_at: i64, run_id: String) {
        match first_key {
            None => self.due.insert((wake_at, run_id)),
            Some(k) => self.keyed.entry(k).or_default().insert((wake_at, run_id)),
        };
    }

    fn ingest(
        &mut self,
        events: Vec<NewEvent>,
        now: i64,
        receipt: &mut IngestReceipt,
    ) -> StoreResult<()> {
        self.check(&events)?;
        for e in events {
            if self.events.contains_key(&e.id) {
                receipt.events.push(EventReceipt {
                    id: e.id,
                    new: false,
                    runs: Vec::new(),
                    skipped: Vec::new(),
                    debounced: Vec::new(),
                    batched: Vec::new(),
                });
                continue;
            }
            for rule in &e.cancels {
                let hits: Vec<String> = self
                    .created
                    .iter()
                    .filter_map(|id| self.runs.get(id))
                    .filter(|r| r.rec.fn_id == rule.fn_id && !r.rec.status.is_final())
                    .filter(|r| expr_matches(rule.expr.as_deref(), &r.event, &e.payload))
                    .map(|r| r.rec.id.clone())
                    .collect();
                for id in hits {
                    self.cancel(&id, now);
                    receipt.cancelled.push(id);
                }
            }
            let waiting: Vec<String> = self
                .waits
                .get(&e.name)
                .map(|s| s.iter().map(|(_, id)| id.clone()).collect())
                .unwrap_or_default();
            for id in waiting {
                let Some(row) = self.runs.get(&id) else {
                    continue;
                };
                let expr = row.wait.as_ref().and_then(|w| w.1.clone());
                let step = row.rec.pending_step.clone().unwrap_or_default();
                if expr_matches(expr.as_deref(), &row.event, &e.payload)
                    && self.resolve(&id, &step, Outcome::data(e.payload.clone()), now)
                {
                    receipt.resolved.push((id, step));
                }
            }
            let all: Vec<String> = e.runs.iter().map(|r| r.id.clone()).collect();
            let (mut ids, mut skipped, mut debounced, mut batched) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for r in e.runs {
                let id = r.id.clone();
                match self.admit(&r, now, (&e.id, &e.payload), receipt) {
                    flow::Admitted::Joined(into) => debounced.push(into),
                    flow::Admitted::Batched(into) => batched.push(into),
                    flow::Admitted::Queued(due) => {
                        let start_by = r.flow.timeouts.start_ms.map(|t| now.saturating_add(t));
                        self.insert_run(r, &e.id, &e.payload, now, due);
                        if let Some(at) = start_by {
                            self.deadlines.insert((at, false, id.clone()));
                            if let Some(row) = self.runs.get_mut(&id) {
                                row.start_by = Some(at);
                            }
                        }
                        ids.push(id);
                    }
                    flow::Admitted::Skipped(skip) => {
                        let error = skip.error(&r.fn_id, &r.flow);
                        self.insert_run(r, &e.id, &e.payload, now, now);
                        self.unindex(&id);
                        let row = self.runs.get_mut(&id).expect("inserted");
                        row.rec.status = RunStatus::Skipped;
                        row.rec.wake_at = None;
                        row.rec.ended_ms = Some(now);
                        row.rec.error = serde_json::to_value(&error).ok();
                        row.singleton = None;
                        row.debounce = None;
                        if !row.batch.is_empty() {
                            self.batches.retain(|_, run| *run != id);
                        }
                        skipped.push(id);
                    }
                }
            }
            self.events.insert(e.id.clone(), all);
            self.received.entry(e.name.clone()).or_default().push((
                now,
                e.id.clone(),
                e.payload.clone(),
            ));
            receipt.events.push(EventReceipt {
                id: e.id,
                new: true,
                runs: ids,
                skipped,
                debounced,
                batched,
            });
        }
        Ok(())
    }

    /// Refuse a batch that would start a run whose ID exists, before
    /// anything changes: a write applies whole or not at all.
    fn check(&self, events: &[NewEvent]) -> StoreResult<()> {
        let mut seen = std::collections::HashSet::new();
        let mut run_ids = std::collections::HashSet::new();
        for e in events {
            if self.events.contains_key(&e.id) || !seen.insert(e.id.as_str()) {
                continue;
            }
            for r in &e.runs {
                if self.runs.contains_key(&r.id) || !run_ids.insert(r.id.as_str()) {
                    return Err(StoreError::Conflict(format!(
                        "a run with the ID `{}` exists already",
                        r.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Flow control for a new run: `None` to start it (its keys written,
    /// a singleton's active run cancelled), else why it is skipped.
    fn admit(
        &mut self,
        r: &NewRun,
        now: i64,
        (event_id, event): (&str, &Value),
        receipt: &mut IngestReceipt,
    ) -> flow::Admitted {
        if r.flow.admits_all() {
            return flow::Admitted::Queued(flow::due_at(&r.flow, now));
        }
        let key = |kind: flow::KeyKind, k: &str| (r.fn_id.clone(), kind.as_str(), k.to_string());
        let read = |m: &Mem, kind, k: &Option<String>| {
            k.as_ref().and_then(|k| m.flow.get(&key(kind, k)).copied())
        };
        let held = read(self, flow::KeyKind::Idempotency, &r.flow.idempotency);
        let tat = read(
            self,
            flow::KeyKind::RateLimit,
            &r.flow.rate_limit.as_ref().map(|l| l.key.clone()),
        );
        let active: Vec<String> = match &r.flow.singleton {
            Some(s) => self
                .created
                .iter()
                .filter_map(|id| self.runs.get(id))
                .filter(|row| {
                    row.rec.fn_id == r.fn_id
                        && !row.rec.status.is_final()
                        && row.singleton.as_deref() == Some(s.key.as_str())
                })
                .map(|row| row.rec.id.clone())
                .collect(),
            None => Vec::new(),
        };
        let throttle_tat = read(
            self,
            flow::KeyKind::Throttle,
            &r.flow.throttle.as_ref().map(|t| t.key.clone()),
        );
        let pending_debounce = r.flow.debounce.as_ref().and_then(|d| {
            self.created
                .iter()
                .filter_map(|id| self.runs.get(id))
                .find(|row| {
                    row.rec.fn_id == r.fn_id
                        && row.rec.status == RunStatus::Queued
                        && row.debounce.as_deref() == Some(d.key.as_str())
                })
                .map(|row| (row.rec.id.clone(), row.rec.created_ms))
        });
        let open_batch = r.flow.batch.as_ref().and_then(|b| {
            let id = self.batches.get(&(r.fn_id.clone(), b.key.clone()))?;
            let row = self.runs.get(id)?;
            let size = u32::try_from(row.batch.len()).unwrap_or(u32::MAX);
            (row.rec.status == RunStatus::Queued
                && flow::batch_open(b, row.rec.created_ms, size, now))
            .then(|| (id.clone(), size))
        });
        let state = flow::Read {
            held_until: held,
            tat,
            active_singleton: !active.is_empty(),
            throttle_tat,
            pending_debounce,
            open_batch,
        };
        match flow::admit(&r.flow, now, state) {
            flow::Admit::Skip(skip) => flow::Admitted::Skipped(skip),
            flow::Admit::Join {
                writes,
                run_id,
                due_ms,
            } => {
                for (kind, k, v) in writes {
                    self.flow.insert(key(kind, &k), v);
                }
                self.set_due(&run_id, RunStatus::Queued, due_ms);
                if let Some(row) = self.runs.get_mut(&run_id) {
                    row.rec.event_id = event_id.to_string();
                    row.event = event.clone();
                }
                flow::Admitted::Joined(run_id)
            }
            flow::Admit::Append {
                writes,
                run_id,
                full,
                due_ms,
                ..
            } => {
                for (kind, k, v) in writes {
                    self.flow.insert(key(kind, &k), v);
                }
                if let Some(row) = self.runs.get_mut(&run_id) {
                    row.batch.push(event.clone());
                }
                if full {
                    if let Some(b) = &r.flow.batch {
                        self.batches.remove(&(r.fn_id.clone(), b.key.clone()));
                    }
                }
                if let Some(at) = due_ms {
                    self.set_due(&run_id, RunStatus::Queued, at);
                }
                flow::Admitted::Batched(run_id)
            }
            flow::Admit::Start {
                writes,
                cancel_active,
                due_ms,
            } => {
                for (kind, k, v) in writes {
                    self.flow.insert(key(kind, &k), v);
                }
                if cancel_active {
                    for id in active {
                        self.cancel(&id, now);
                        receipt.cancelled.push(id);
                    }
                }
                flow::Admitted::Queued(due_ms)
            }
        }
    }

    fn insert_run(&mut self, r: NewRun, event_id: &str, event: &Value, now: i64, due: i64) {
        if let Some(b) = &r.flow.batch {
            if b.max_size > 1 {
                self.batches
                    .insert((r.fn_id.clone(), b.key.clone()), r.id.clone());
            }
        }
        self.index_due(
            r.flow.concurrency.first().map(|c| c.key.clone()),
            due,
            r.id.clone(),
        );
        self.created.push(r.id.clone());
        self.runs.insert(
            r.id.clone(),
            Row {
                rec: RunRecord {
                    id: r.id,
                    fn_id: r.fn_id,
                    event_id: event_id.to_string(),
                    status: RunStatus::Queued,
                    fn_attempt: 0,
                    wake_at: Some(due),
                    pending_step: None,
                    output: None,
                    error: None,
                    created_ms: now,
                    ended_ms: None,
                    version: r.version,
                    origin: None,
                },
                event: event.clone(),
                parent: r.parent,
                pending_outcome: None,
                wait: None,
                lease: None,
                generation: 0,
                steps: Vec::new(),
                index: HashMap::new(),
                journal: Journal::new(),
                attempts: HashMap::new(),
                singleton: r.flow.singleton.map(|s| s.key),
                debounce: r.flow.debounce.map(|d| d.key),
                batch: match r.flow.batch {
                    Some(_) => vec![event.clone()],
                    None => Vec::new(),
                },
                finish_ms: r.flow.timeouts.finish_ms,
                concurrency: r.flow.concurrency,
                start_by: None,
                finish_by: None,
                ops: Vec::new(),
            },
        );
    }

    fn restart(&mut self, r: Restart) -> StoreResult<bool> {
        let Some(from) = self.runs.get(&r.origin.run_id) else {
            return Ok(false);
        };
        if self.runs.contains_key(&r.run.id) {
            return Err(StoreError::Conflict(format!(
                "a run with the ID `{}` exists already",
                r.run.id
            )));
        }
        let (event_id, event, batch) = (
            from.rec.event_id.clone(),
            from.event.clone(),
            from.batch.clone(),
        );
        let now = r.now_ms;
        let id = r.run.id.clone();
        let start_by = r.run.flow.timeouts.start_ms.map(|t| now.saturating_add(t));
        self.insert_run(r.run, &event_id, &event, now, now);
        if let Some(at) = start_by {
            self.deadlines.insert((at, false, id.clone()));
        }
        self.events.entry(event_id).or_default().push(id.clone());
        let row = self.runs.get_mut(&id).expect("inserted");
        row.start_by = start_by;
        row.batch = batch;
        row.rec.origin = Some(r.origin.clone());
        for c in r.journal {
            row.journal(c);
        }
        let from = self.runs.get_mut(&r.origin.run_id).expect("found above");
        from.ops.push(RunOp::made(&r.origin, &id, now));
        Ok(true)
    }

    /// Journal `outcome` for a run's pending step and make the run due now,
    /// if the step is still pending.
    fn resolve(&mut self, run_id: &str, step: &str, outcome: Outcome, now: i64) -> bool {
        match self.runs.get(run_id) {
            Some(row)
                if row.rec.status == RunStatus::Sleeping
                    && row.rec.pending_step.as_deref() == Some(step) => {}
            _ => return false,
        }
        self.set_due(run_id, RunStatus::Sleeping, now);
        let row = self.runs.get_mut(run_id).expect("checked above");
        row.rec.pending_step = None;
        row.pending_outcome = None;
        journal_pending(row, step, outcome, now);
        true
    }

    fn purge(&mut self, before: i64, limit: usize) -> Purged {
        let active = |r: &Row| !r.rec.status.is_final();
        // Runs with an active child, and runs whose parent is active.
        let mut kept: std::collections::HashSet<&str> = Default::default();
        for r in self.runs.values() {
            if let Some(p) = &r.parent {
                if active(r) {
                    kept.insert(p.run_id.as_str());
                } else if self.runs.get(&p.run_id).is_some_and(active) {
                    kept.insert(r.rec.id.as_str());
                }
            }
        }
        let mut old: Vec<(i64, String)> = self
            .runs
            .values()
            .filter(|r| !active(r) && r.rec.ended_ms.is_some_and(|e| e < before))
            .filter(|r| !kept.contains(r.rec.id.as_str()))
            .map(|r| (r.rec.ended_ms.unwrap_or_default(), r.rec.id.clone()))
            .collect();
        old.sort_unstable();
        old.truncate(limit);
        let gone: std::collections::HashSet<String> = old.into_iter().map(|(_, id)| id).collect();
        for id in &gone {
            self.runs.remove(id);
        }
        self.created.retain(|id| !gone.contains(id));
        for w in self.waits.values_mut() {
            w.retain(|(_, id)| !gone.contains(id));
        }
        let mut used: std::collections::HashSet<&str> = Default::default();
        for r in self.runs.values() {
            used.insert(r.rec.event_id.as_str());
            used.extend(r.batch.iter().filter_map(|b| b.get("id")?.as_str()));
        }
        let mut events = Vec::new();
        for list in self.received.values() {
            events.extend(
                list.iter()
                    .filter(|(at, id, _)| *at < before && !used.contains(id.as_str()))
                    .map(|(at, id, _)| (*at, id.clone())),
            );
        }
        events.sort_unstable();
        events.truncate(limit);
        let dropped: std::collections::HashSet<String> =
            events.into_iter().map(|(_, id)| id).collect();
        for list in self.received.values_mut() {
            list.retain(|(_, id, _)| !dropped.contains(id));
        }
        for id in &dropped {
            self.events.remove(id);
        }
        let expired: Vec<_> = self
            .flow
            .iter()
            .filter(|((_, kind, _), v)| {
                matches!(*kind, "idempotency" | "rate_limit" | "throttle") && **v < before
            })
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect();
        for k in &expired {
            self.flow.remove(k);
        }
        Purged {
            runs: gone.len(),
            events: dropped.len(),
            keys: expired.len(),
            reclaiming: false,
        }
    }

    /// Cancel the runs whose start or finish timeout passed.
    fn sweep_timeouts(&mut self, now: i64) {
        while let Some((at, finish, id)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(row) = self.runs.get(&id) else {
                continue;
            };
            let due = match finish {
                false => row.start_by == Some(at),
                true => row.finish_by == Some(at),
            };
            if !due || row.rec.status.is_final() {
                continue;
            }
            let name = match finish {
                false => flow::START_TIMEOUT,
                true => flow::FINISH_TIMEOUT,
            };
            let error = flow::timeout_error(name, &row.rec.fn_id);
            self.cancel(&id, now);
            if let Some(row) = self.runs.get_mut(&id) {
                row.rec.error = serde_json::to_value(&error).ok();
            }
        }
    }

    fn claim(&mut self, req: &ClaimRequest) -> Vec<ClaimedRun> {
        self.sweep_timeouts(req.now_ms);
        let known: std::collections::HashSet<&str> =
            req.functions.iter().map(String::as_str).collect();
        let claimable = |id: &String| {
            let r = &self.runs[id].rec;
            known.contains(r.fn_id.as_str()) || r.created_ms <= req.unknown_before_ms
        };
        // Runs running now per concurrency key (leases not run out).
        let mut running: HashMap<&str, u64> = HashMap::new();
        for (_, id) in self.leased.range((req.lease_now_ms, String::new())..) {
            for c in &self.runs[id].concurrency {
                *running.entry(c.key.as_str()).or_default() += 1;
            }
        }
        let mut taken = HashMap::new();
        let mut fits = |id: &String| {
            flow::fits(
                &self.runs[id].concurrency,
                |k| running.get(k).copied().unwrap_or(0),
                &mut taken,
            )
        };
        // Due runs in wake order: the unkeyed ones, and per key with room
        // as many as it has room for.
        let mut candidates: Vec<&(i64, String)> = self
            .due
            .iter()
            .take_while(|(w, _)| *w <= req.now_ms)
            .filter(|(_, id)| claimable(id))
            .take(req.limit)
            .collect();
        for (key, set) in &self.keyed {
            let Some((_, head)) = set.first() else {
                continue;
            };
            let limit = self.runs[head]
                .concurrency
                .first()
                .map_or(0, |c| u64::from(c.limit));
            let room = limit.saturating_sub(running.get(key.as_str()).copied().unwrap_or(0));
            candidates.extend(
                set.iter()
                    .take_while(|(w, _)| *w <= req.now_ms)
                    .filter(|(_, id)| claimable(id))
                    .take(room.min(req.limit as u64) as usize),
            );
        }
        candidates.sort_unstable();
        let mut ids: Vec<String> = candidates
            .into_iter()
            .map(|(_, id)| id)
            .filter(|id| fits(id))
            .take(req.limit)
            .cloned()
            .collect();
        let room = req.limit - ids.len();
        ids.extend(
            self.leased
                .iter()
                .take_while(|(until, _)| *until < req.lease_now_ms)
                .map(|(_, id)| id)
                .filter(|id| claimable(id) && fits(id))
                .take(room)
                .cloned(),
        );
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            self.unindex(&id);
            let until_ms = req.lease_now_ms.saturating_add(req.lease_ms);
            self.leased.insert((until_ms, id.clone()));
            let row = self.runs.get_mut(&id).expect("an indexed run exists");
            if let Some(step) = row.rec.pending_step.take() {
                let outcome = row.pending_outcome.take().unwrap_or_else(Outcome::null);
                journal_pending(row, &step, outcome, req.now_ms);
            }
            row.generation += 1;
            row.start_by = None;
            if !row.batch.is_empty() {
                // A claimed batch takes no more events.
                self.batches.retain(|_, run| *run != id);
            }
            let row = self.runs.get_mut(&id).expect("an indexed run exists");
            if let (None, Some(ms)) = (row.finish_by, row.finish_ms) {
                let at = req.now_ms.saturating_add(ms);
                row.finish_by = Some(at);
                self.deadlines.insert((at, true, id.clone()));
            }
            let row = self.runs.get_mut(&id).expect("an indexed run exists");
            let lease = Lease {
                run_id: id.clone(),
                owner: req.owner.clone(),
                generation: row.generation,
                until_ms,
            };
            row.lease = Some(lease.clone());
            row.rec.status = RunStatus::Running;
            row.rec.wake_at = None;
            out.push(ClaimedRun {
                lease,
                run: row.rec.clone(),
                event: row.event.clone(),
                events: row.batch.clone(),
                journal: row.journal.clone(),
                attempts: row.attempts.clone(),
            });
        }
        out
    }

    fn suspend(&mut self, lease: &Lease, s: Suspension, now: i64) -> StoreResult<()> {
        self.leased_row(lease)?;
        if let Suspension::Invoke { child, .. } = &s {
            self.check(std::slice::from_ref(child))?;
        }
        let id = lease.run_id.as_str();
        let status = pending_status(&s);
        let (wake_at, pending) = match &s {
            Suspension::Retry { wake_at, .. } | Suspension::Delay { wake_at } => (*wake_at, None),
            Suspension::Sleep { step, until_ms }
            | Suspension::Wait { step, until_ms, .. }
            | Suspension::Invoke { step, until_ms, .. } => (*until_ms, Some(step.clone())),
        };
        let queued = matches!(s, Suspension::Delay { .. });
        self.set_due(
            id,
            if queued {
                RunStatus::Queued
            } else {
                RunStatus::Sleeping
            },
            wake_at,
        );
        let row = self.runs.get_mut(id).expect("leased above");
        row.rec.pending_step = pending.as_ref().map(|p| p.step.clone());
        row.pending_outcome = None;
        if let Some(p) = &pending {
            if row.step_mut(&p.step).is_none() {
                row.push_step(StepRecord {
                    id: p.step.clone(),
                    name: p.name.clone(),
                    kind: None,
                    status: status.into(),
                    attempts: 1,
                    started_ms: Some(now),
                    ended_ms: None,
                    output: None,
                    error: None,
                });
            }
        }
        match s {
            Suspension::Retry {
                failures,
                fn_attempt,
                ..
            } => {
                row.rec.fn_attempt = fn_attempt;
                for f in failures {
                    record_attempt(row, f);
                }
            }
            Suspension::Sleep { .. } | Suspension::Delay { .. } => {}
            Suspension::Wait {
                step,
                event,
                expr,
                since_ms,
                seen,
                ..
            } => {
                row.wait = Some((event.clone(), expr.clone(), now));
                let trigger = (row.event.clone(), row.rec.event_id.clone());
                let own = |e: &str| {
                    e == trigger.1
                        || row
                            .batch
                            .iter()
                            .any(|b| b.get("id").and_then(Value::as_str) == Some(e))
                };
                let found = since_ms.and_then(|since| {
                    self.received
                        .get(&event)?
                        .iter()
                        .filter(|(at, e, _)| *at >= since && !own(e) && !seen.contains(e))
                        .take(1000)
                        .find(|(_, _, payload)| expr_matches(expr.as_deref(), &trigger.0, payload))
                });
                let found = found.map(|(_, _, payload)| payload.clone());
                self.waits
                    .entry(event)
                    .or_default()
                    .insert((now, id.to_string()));
                if let Some(payload) = found {
                    self.resolve(id, &step.step, Outcome::data(payload), now);
                }
            }
            Suspension::Invoke {
                step,
                timeout_error,
                child,
                ..
            } => {
                row.pending_outcome = Some(Outcome::error(timeout_error));
                match self.events.get(&child.id) {
                    None => {
                        let mut receipt = IngestReceipt::default();
                        self.ingest(vec![child], now, &mut receipt)?;
                    }
                    Some(runs) => {
                        // Invoked before a crash: hand over the result of a
                        // child that ended meanwhile.
                        let ended = runs
                            .iter()
                            .filter_map(|c| self.runs.get(c))
                            .find(|c| c.parent.as_ref().is_some_and(|p| p.run_id == id))
                            .and_then(|c| {
                                child_outcome(
                                    &c.rec.id,
                                    &c.rec.fn_id,
                                    c.rec.status,
                                    c.rec.output.as_ref(),
                                    c.rec.error.as_ref(),
                                )
                            });
                        if let Some(o) = ended {
                            self.resolve(id, &step.step, o, now);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, lease: &Lease, f: Finish, now: i64) -> StoreResult<Finished> {
        self.leased_row(lease)?;
        if let Finish::Failed { event: Some(e), .. } = &f {
            self.check(std::slice::from_ref(e))?;
        }
        let id = lease.run_id.as_str();
        self.unindex(id);
        let row = self.runs.get_mut(id).expect("leased above");
        row.rec.ended_ms = Some(now);
        row.rec.wake_at = None;
        let event = match f {
            Finish::Completed { output } => {
                row.rec.status = RunStatus::Completed;
                row.rec.output = Some(output);
                None
            }
            Finish::Failed { error, event } => {
                row.rec.status = RunStatus::Failed;
                row.rec.error = Some(serde_json::to_value(&error)?);
                event
            }
        };
        let mut woke: Vec<String> = self.notify_parent(id, now).into_iter().collect();
        if let Some(e) = event {
            let mut receipt = IngestReceipt::default();
            self.ingest(vec![e], now, &mut receipt)?;
            woke.extend(receipt.events.into_iter().flat_map(|e| e.runs));
        }
        Ok(Finished { woke })
    }

    /// An invoked run ended: resolve its parent's step with its result.
    /// Answers the parent if it resumed.
    fn notify_parent(&mut self, run_id: &str, now: i64) -> Option<String> {
        let row = self.runs.get(run_id)?;
        let parent = row.parent.clone()?;
        let outcome = child_outcome(
            run_id,
            &row.rec.fn_id,
            row.rec.status,
            row.rec.output.as_ref(),
            row.rec.error.as_ref(),
        );
        let o = outcome?;
        self.resolve(&parent.run_id, &parent.step, o, now)
            .then_some(parent.run_id)
    }

    fn cancel(&mut self, run_id: &str, now: i64) -> Option<RunStatus> {
        let was = self.runs.get(run_id)?.rec.status;
        if !was.is_final() {
            self.unindex(run_id);
            let row = self.runs.get_mut(run_id).expect("found above");
            row.rec.status = RunStatus::Cancelled;
            row.rec.ended_ms = Some(now);
            row.rec.wake_at = None;
            self.notify_parent(run_id, now);
        }
        Some(was)
    }
}

/// Journal the outcome of a run's pending step.
fn journal_pending(row: &mut Row, step: &str, outcome: Outcome, now: i64) {
    let started = row.step_mut(step).and_then(|s| s.started_ms).unwrap_or(now);
    row.journal(StepCommit {
        step: step.to_string(),
        name: None,
        outcome,
        attempts: 1,
        started_ms: started,
        ended_ms: now,
        reset_fn_attempt: false,
    });
}

fn record_attempt(row: &mut Row, f: AttemptFailure) {
    let error = serde_json::to_value(&f.error).ok();
    row.attempts.insert(f.step.clone(), f.attempts);
    match row.step_mut(&f.step) {
        Some(s) => {
            s.attempts = f.attempts;
            s.error = error;
            s.status = "retrying".into();
        }
        None => row.push_step(StepRecord {
            id: f.step,
            name: f.name,
            kind: None,
            status: "retrying".into(),
            attempts: f.attempts,
            started_ms: Some(f.started_ms),
            ended_ms: None,
            output: None,
            error,
        }),
    }
}
