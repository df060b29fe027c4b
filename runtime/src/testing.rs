//! An in-memory harness for unit tests of durable fns, in the spirit of
//! `@inngest/test`: run a function to completion with an event, inspect the
//! journal, force steps to fail. Sleeps and retry backoffs do not wait: the
//! harness moves a manual clock instead.
//!
//! ```
//! # use durafn_runtime as durafn;
//! # async fn demo(f: impl durafn::DurableFn) {
//! let out = durafn::testing::TestRun::new(f)
//!     .event("shop/import.requested", serde_json::json!({"store_id": "s1"}))
//!     .fail_step("fetch-products[2]", 1)
//!     .run()
//!     .await;
//! assert!(out.result.is_ok());
//! # }
//! ```

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use std::collections::HashMap;

use crate::ctx::{Clock, Faults};
use crate::driver::{continuous, reenter, Invocation};
use crate::error::ErrorInfo;
use crate::function::DurableFn;
use crate::journal::{Journal, Outcome};
use crate::step_id::StepId;
use crate::transition::{Backoff, Decision, Policy, Transition};

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(start_ms))
    }
    pub fn set(&self, ms: i64) {
        self.0.fetch_max(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Which driver the harness uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// One call per new step, as over HTTP.
    ReEntry,
    /// In process, re-entering only after suspensions.
    Continuous,
}

/// One test run of a durable fn.
pub struct TestRun<F> {
    f: F,
    event: Value,
    /// A batching function's events (`event` alone when empty).
    batch: Vec<Value>,
    driver: Driver,
    faults: Arc<Faults>,
    clock: Arc<ManualClock>,
    journal: Journal,
    max_calls: usize,
    wait_events: std::collections::HashMap<String, Value>,
    invoke_results: std::collections::HashMap<String, Result<Value, ErrorInfo>>,
}

/// What happened in a [`TestRun`].
#[derive(Debug)]
pub struct TestOutcome {
    /// The function's value, or its final error.
    pub result: Result<Value, ErrorInfo>,
    pub journal: Journal,
    /// Every call's transition, in order.
    pub transitions: Vec<Transition>,
    /// Every step body execution, with its attempt number, in order.
    pub executed: Vec<(StepId, u32)>,
    /// How many times the body was entered.
    pub calls: usize,
}

impl TestOutcome {
    /// The function's value, deserialized; panics with the error otherwise.
    pub fn output<T: DeserializeOwned>(&self) -> T {
        match &self.result {
            Ok(v) => serde_json::from_value(v.clone()).expect("output deserializes"),
            Err(e) => panic!("the run failed: {e}"),
        }
    }

    /// The journaled output of a step (readable ID).
    pub fn step_output(&self, id: &str) -> Option<&Value> {
        match self.journal.get(&StepId::from(id))? {
            Outcome::Data { data } => Some(data),
            _ => None,
        }
    }

    /// How many times the body of step `id` ran.
    pub fn attempts(&self, id: &str) -> usize {
        self.executed
            .iter()
            .filter(|(s, _)| s.as_str() == id)
            .count()
    }
}

impl<F: DurableFn> TestRun<F> {
    pub fn new(f: F) -> Self {
        TestRun {
            f,
            event: json!({"name": "test/event", "data": {}, "id": "test-event", "ts": 0}),
            batch: Vec::new(),
            driver: Driver::Continuous,
            faults: Arc::new(Faults::default()),
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            journal: Journal::new(),
            max_calls: 1_000_000,
            wait_events: Default::default(),
            invoke_results: Default::default(),
        }
    }

    /// The triggering event.
    pub fn event(mut self, name: &str, data: Value) -> Self {
        self.event =
            json!({"name": name, "data": data, "id": "test-event", "ts": self.clock.now_ms()});
        self
    }

    /// The triggering event, whole.
    pub fn raw_event(mut self, event: Value) -> Self {
        self.event = event;
        self
    }

    /// A batch for a function with `batch_events`: events named `name`
    /// with these data, in order (IDs `test-event-0`, `test-event-1`, …).
    /// Without it, such a function gets a batch of the one event.
    pub fn batch(mut self, name: &str, data: impl IntoIterator<Item = Value>) -> Self {
        let ts = self.clock.now_ms();
        self.batch = data
            .into_iter()
            .enumerate()
            .map(|(i, d)| json!({"name": name, "data": d, "id": format!("test-event-{i}"), "ts": ts}))
            .collect();
        if let Some(first) = self.batch.first() {
            self.event = first.clone();
        }
        self
    }

    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = driver;
        self
    }

    /// Fail the next `times` attempts of step `id` (a readable ID such as
    /// `fetch-products[2]`) with an injected, retriable error.
    pub fn fail_step(self, id: &str, times: u32) -> Self {
        self.faults.fail(id, times);
        self
    }

    /// The event that resolves `wait_for_event!` step `id`; waits with no
    /// event given time out (`None`).
    pub fn wait_event(mut self, id: &str, event: Value) -> Self {
        self.wait_events.insert(id.to_string(), event);
        self
    }

    /// The result `invoke!` step `id` resumes with; invokes with no result
    /// given fail with an error saying so.
    pub fn invoke_result(mut self, id: &str, result: Result<Value, ErrorInfo>) -> Self {
        self.invoke_results.insert(id.to_string(), result);
        self
    }

    /// Start from an existing journal (resume a run).
    pub fn journal(mut self, journal: Journal) -> Self {
        self.journal = journal;
        self
    }

    /// Stop after this many calls (guards tests against endless runs).
    pub fn max_calls(mut self, n: usize) -> Self {
        self.max_calls = n;
        self
    }

    /// Drive the function until it finishes or fails for good. Each call's
    /// transition is decided by the same rules as in an engine
    /// ([`Policy::decide`]); sleeps and backoffs move the manual clock.
    pub async fn run(self) -> TestOutcome {
        let policy = Policy {
            retries: self.f.config().retries,
            backoff: Backoff::NONE,
            notify_failure: false,
        };
        let mut journal = self.journal;
        let mut transitions = Vec::new();
        let mut executed = Vec::new();
        let mut attempts: HashMap<String, u32> = HashMap::new();
        let mut fn_attempt = 0;
        let mut calls = 0;
        let input = crate::driver::input_of(&self.f, self.event.clone(), self.batch.clone());
        let result = loop {
            if calls >= self.max_calls {
                break Err(ErrorInfo::new(
                    "TestLimit",
                    format!("stopped after {calls} calls"),
                ));
            }
            calls += 1;
            let inv = Invocation {
                run_id: "test-run".into(),
                event: input.clone(),
                journal,
                attempt: 0,
                step_attempts: attempts.clone(),
                clock: self.clock.clone(),
                faults: Some(self.faults.clone()),
                plan: Default::default(),
                sender: None,
                bounds: Default::default(),
            };
            let res = match self.driver {
                Driver::ReEntry => reenter(&self.f, inv).await,
                Driver::Continuous => match continuous(&self.f, inv, None).await {
                    Ok(r) => r,
                    Err(_) => unreachable!("a call without a sink is never abandoned"),
                },
            };
            journal = res.journal;
            executed.extend(res.executed);
            transitions.push(res.transition.clone());
            let now = self.clock.now_ms();
            match policy.decide(res.transition, fn_attempt, now) {
                Decision::Journal { id, outcome } => {
                    attempts.remove(journal.key_of(&id).as_str());
                    journal.insert(id, outcome);
                }
                Decision::Retry {
                    failures,
                    fn_attempt: next,
                    wake_at,
                } => {
                    for f in failures {
                        attempts.insert(journal.key_of(&f.id).to_string(), f.attempt + 1);
                    }
                    fn_attempt = next;
                    self.clock.set(wake_at);
                }
                Decision::Sleep { id, until_ms } => {
                    self.clock.set(until_ms);
                    journal.insert(id, Outcome::null());
                }
                Decision::WaitForEvent { id, until_ms, .. } => {
                    let outcome = match self.wait_events.get(id.as_str()) {
                        Some(e) => Outcome::data(e.clone()),
                        None => {
                            self.clock.set(until_ms);
                            Outcome::null()
                        }
                    };
                    journal.insert(id, outcome);
                }
                Decision::Invoke { id, function, .. } => {
                    let outcome = match self.invoke_results.get(id.as_str()) {
                        Some(Ok(v)) => Outcome::data(v.clone()),
                        Some(Err(e)) => Outcome::error(e.clone()),
                        None => Outcome::error(ErrorInfo::new(
                            "NotMocked",
                            format!("the test gave no result for invoking `{function}` at step `{id}` (TestRun::invoke_result)"),
                        )),
                    };
                    journal.insert(id, outcome);
                }
                Decision::Plan { id } => {
                    break Err(ErrorInfo::new(
                        "Unexpected",
                        format!("step `{id}` was planned without a plan"),
                    ))
                }
                Decision::Complete(v) => break Ok(v),
                Decision::Fail { error, .. } => break Err(error),
            }
        };
        TestOutcome {
            result,
            journal,
            transitions,
            executed,
            calls,
        }
    }
}

/// Replay a run exported with `durafn export <run-id> > run.json` against
/// `f`, running no step body: `Ok` when this code replays the run's
/// journal (up to its end, and its pending sleep, wait or invoke), else
/// the error the run would fail with (`NonDeterminism`, `JournalMismatch`,
/// an event that no longer fits). A journal from production becomes a
/// regression test:
///
/// ```no_run
/// # use durafn_runtime as durafn;
/// # async fn demo(f: impl durafn::DurableFn) {
/// durafn::testing::replay(f, "tests/runs/import-2026-11-25.json").await.unwrap();
/// # }
/// ```
pub async fn replay<F: DurableFn>(
    f: F,
    path: impl AsRef<std::path::Path>,
) -> Result<(), ErrorInfo> {
    let path = path.as_ref();
    let bad = |why: String| ErrorInfo::new("BadExport", format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if v["durafn_export"] != json!(1) {
        return Err(bad(
            "not a run exported by `durafn export` (format 1)".into()
        ));
    }
    if v["fn_id"] != json!(f.id()) {
        return Err(bad(format!(
            "the run is of `{}`, not of `{}`",
            v["fn_id"].as_str().unwrap_or("?"),
            f.id()
        )));
    }
    let mut journal = Journal::new();
    for entry in v["journal"].as_array().into_iter().flatten() {
        let step = entry["step"]
            .as_str()
            .ok_or_else(|| bad("a journal entry has no `step`".into()))?;
        let outcome: Outcome = serde_json::from_value(entry["outcome"].clone())
            .map_err(|e| bad(format!("the outcome of `{step}`: {e}")))?;
        journal.insert(StepId::from_readable(step.to_string()), outcome);
    }
    let pending = v["pending_step"]
        .as_str()
        .map(|p| (p, v["pending_status"].as_str()));
    let events = v["events"].as_array().cloned().unwrap_or_default();
    let input = crate::driver::input_of(&f, v["event"].clone(), events);
    let run_id = v["run_id"].as_str().unwrap_or("replay").to_string();
    crate::driver::check_replay(&f, &run_id, input, journal, pending).await
}
