//! The engine: events in, runs out.
//!
//! ```no_run
//! # use durafn_runtime as durafn;
//! # async fn demo(f: impl durafn::DurableFn) -> Result<(), durafn::Error> {
//! let engine = durafn::Engine::builder()
//!     .sqlite("durafn.db")          // the embedded default: one file, created if missing
//!     .register(f)
//!     .build()
//!     .await?;
//! engine.send(durafn::Event::new("shopify/import.requested", serde_json::json!({"store_id": "s1"}))).await?;
//! engine.serve("127.0.0.1:8288").await?;   // event API + run API over HTTP
//! # Ok(()) }
//! ```
//!
//! A worker loop claims due runs from the store (with a lease) and drives
//! each with the continuous driver: every step is committed to the store
//! before the body goes on. A failed attempt, a sleep or a function-level
//! retry suspends the run with a wake-up time; the worker claims it again
//! when the time comes, after a restart too.

pub mod cron;
mod http;
pub mod remote;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::ctx::{Clock, StepMeta, StepSink, SystemClock, Transition};
use crate::driver::{continuous, Invocation};
use crate::error::{Error, ErrorInfo, Retry};
use crate::event::Event;
use crate::function::{BoxFuture, DurableFn};
use crate::journal::Outcome;
use crate::step_id::StepId;
use crate::store::{
    Claimed, MemoryStore, NewRun, RunDetail, RunFilter, RunRecord, RunStatus, SqliteStore,
    SqliteSync, StepWrite, Store, Suspend,
};

/// Inngest's limit on one event's size.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 512 * 1024;

/// Exponential backoff with jitter for retries.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The delay before the second attempt (before jitter).
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// The delay after failed attempt `attempt` (0-based): `base * 2^attempt`,
    /// capped at `max`, then scaled by a random factor in `[0.5, 1.0]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(20));
        let capped = exp.min(self.max);
        capped.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    store: StoreChoice,
    fns: Vec<Arc<dyn DurableFn>>,
    max_event_bytes: usize,
    concurrency: usize,
    backoff: Backoff,
    lease: Duration,
    clock: Arc<dyn Clock>,
    start_workers: bool,
    signing_key: Option<String>,
}

enum StoreChoice {
    Memory,
    Sqlite(PathBuf, SqliteSync),
    Custom(Arc<dyn Store>),
}

impl EngineBuilder {
    /// Keep everything in one SQLite file (created if missing): the
    /// embedded default, with an fsync on every commit.
    pub fn sqlite(mut self, path: impl Into<PathBuf>) -> Self {
        self.store = StoreChoice::Sqlite(path.into(), SqliteSync::Full);
        self
    }

    /// SQLite without an fsync per commit: commits survive a crash of the
    /// process, not a power loss.
    pub fn sqlite_sync(mut self, sync: SqliteSync) -> Self {
        if let StoreChoice::Sqlite(_, s) = &mut self.store {
            *s = sync;
        }
        self
    }

    /// Keep everything in memory (tests).
    pub fn memory(mut self) -> Self {
        self.store = StoreChoice::Memory;
        self
    }

    /// Use another store.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = StoreChoice::Custom(store);
        self
    }

    /// Register a durable fn.
    pub fn register(mut self, f: impl DurableFn) -> Self {
        self.fns.push(Arc::new(f));
        self
    }

    /// The largest accepted event, serialized (default 512 KiB).
    pub fn max_event_bytes(mut self, n: usize) -> Self {
        self.max_event_bytes = n;
        self
    }

    /// How many runs execute at once (default 1024).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Retry backoff (default 1 s doubling, at most 1 h, with jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a claimed run stays leased without progress (default 60 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The clock for timers and `ctx.now()` (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Do not start the worker loop: runs are stored but not executed
    /// (an API-only engine, or a test that drives the store).
    pub fn without_workers(mut self) -> Self {
        self.start_workers = false;
        self
    }

    /// Sign the requests this engine sends to apps (`X-Inngest-Signature`).
    pub fn signing_key(mut self, key: impl Into<String>) -> Self {
        self.signing_key = Some(key.into());
        self
    }

    /// Open the store and start the worker loop (needs a Tokio runtime).
    pub async fn build(self) -> Result<Engine, Error> {
        let (store, single_process): (Arc<dyn Store>, bool) = match self.store {
            StoreChoice::Memory => (Arc::new(MemoryStore::new()), true),
            StoreChoice::Sqlite(path, sync) => {
                let s = tokio::task::spawn_blocking(move || SqliteStore::open(path, sync))
                    .await
                    .map_err(Error::msg)??;
                (Arc::new(s), true)
            }
            StoreChoice::Custom(s) => (s, false),
        };
        if single_process {
            // This process is the only engine on the store: runs that a
            // previous process was running are free to take at once.
            store.apply(crate::store::Op::ReleaseLeases).await?;
        }
        let mut fns = HashMap::new();
        for f in &self.fns {
            let bad = |what: &str, e: String| {
                Error::non_retriable(format!("function `{}`, {what}: {e}", f.id()))
                    .with_name("BadExpression")
            };
            for t in f.triggers() {
                match t {
                    crate::function::Trigger::Event {
                        expression: Some(x),
                        ..
                    } => {
                        crate::expr::Expr::compile(x).map_err(|e| bad("trigger `if`", e))?;
                    }
                    crate::function::Trigger::Cron { cron } => {
                        cron::parse(cron).map_err(|e| bad("cron", e))?;
                    }
                    _ => {}
                }
            }
            if let Some(c) = f.config().cancel_on {
                if let Some(x) = c.expression {
                    crate::expr::Expr::compile(x).map_err(|e| bad("cancel_on", e))?;
                }
            }
            for site in f.steps() {
                if let Some(src) = site.expr {
                    crate::expr::Expr::compile(src).map_err(|e| {
                        Error::non_retriable(format!(
                            "function `{}`, step `{}` (line {}): {e}",
                            f.id(),
                            site.id,
                            site.line
                        ))
                        .with_name("BadExpression")
                    })?;
                }
            }
        }
        for f in self.fns {
            if let Some(prev) = fns.insert(f.id(), f.clone()) {
                return Err(Error::non_retriable(format!(
                    "two functions registered with the ID `{}` ({} and {})",
                    f.id(),
                    prev.name(),
                    f.name()
                )));
            }
        }
        let inner = Arc::new(Inner {
            store,
            fns,
            notify: Notify::new(),
            owner: format!("engine-{}", new_id(self.clock.now_ms())),
            max_event_bytes: self.max_event_bytes,
            concurrency: self.concurrency,
            backoff: self.backoff,
            lease_ms: self.lease.as_millis() as i64,
            clock: self.clock,
            running: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            steps_committed: AtomicI64::new(0),
            runs_ended: AtomicI64::new(0),
            ended: Notify::new(),
            planned_wake: AtomicI64::new(0),
            remote: remote::Registry::default(),
            http: reqwest::Client::new(),
            signing_key: self.signing_key,
            http_calls: AtomicI64::new(0),
        });
        let handle = self
            .start_workers
            .then(|| tokio::spawn(worker(inner.clone())));
        if self.start_workers {
            for f in inner.fns.values() {
                for t in f.triggers() {
                    if let crate::function::Trigger::Cron { cron } = t {
                        tokio::spawn(cron::run(
                            inner.clone(),
                            f.id().to_string(),
                            cron.to_string(),
                        ));
                    }
                }
            }
        }
        tracing::info!(store = %inner.store.describe(), functions = inner.fns.len(), "engine started");
        Ok(Engine {
            inner,
            worker: Arc::new(std::sync::Mutex::new(handle)),
        })
    }
}

/// The durable engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    worker: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

pub(crate) struct Inner {
    store: Arc<dyn Store>,
    fns: HashMap<&'static str, Arc<dyn DurableFn>>,
    notify: Notify,
    owner: String,
    max_event_bytes: usize,
    concurrency: usize,
    backoff: Backoff,
    lease_ms: i64,
    clock: Arc<dyn Clock>,
    running: AtomicUsize,
    stopped: AtomicBool,
    steps_committed: AtomicI64,
    runs_ended: AtomicI64,
    /// Woken whenever a run ends.
    ended: Notify,
    /// When the idle worker will look for due runs next (ms).
    planned_wake: AtomicI64,
    /// Functions of apps served over HTTP.
    remote: remote::Registry,
    http: reqwest::Client,
    signing_key: Option<String>,
    /// Call requests sent to apps.
    http_calls: AtomicI64,
}

/// What [`Engine::send`] answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    /// The event IDs, in order.
    pub ids: Vec<String>,
    /// The runs started, in order.
    pub runs: Vec<String>,
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRejected {
    Malformed(String),
    TooLarge { bytes: usize, limit: usize },
}

impl std::fmt::Display for EventRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventRejected::Malformed(m) => f.write_str(m),
            EventRejected::TooLarge { bytes, limit } => {
                write!(
                    f,
                    "the event is {bytes} bytes, over the limit of {limit} bytes"
                )
            }
        }
    }
}

impl std::error::Error for EventRejected {}

fn new_id(now_ms: i64) -> String {
    // Time-ordered: 12 hex digits of milliseconds, then 80 random bits.
    let r: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    format!("{:012x}{:020x}", now_ms as u64 & 0xffff_ffff_ffff, r)
}

impl Engine {
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            store: StoreChoice::Memory,
            fns: Vec::new(),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            concurrency: 1024,
            backoff: Backoff::default(),
            lease: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
            start_workers: true,
            signing_key: None,
        }
    }

    /// The registered functions.
    pub fn functions(&self) -> Vec<Arc<dyn DurableFn>> {
        self.inner.fns.values().cloned().collect()
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        self.inner.store.clone()
    }

    /// Send one event: store it and start a run of every function it
    /// triggers. An event with an `id` already seen starts nothing
    /// (idempotency) and answers the same ID.
    pub async fn send<T: Serialize>(&self, event: Event<T>) -> Result<Sent, Error> {
        let v = serde_json::to_value(&event)
            .map_err(|e| Error::non_retriable(format!("the event does not serialize: {e}")))?;
        self.send_values(vec![v]).await
    }

    /// Send events given as JSON (the HTTP API's path): each must be an
    /// object with a non-empty string `name`.
    pub async fn send_values(&self, events: Vec<Value>) -> Result<Sent, Error> {
        let mut prepared = Vec::with_capacity(events.len());
        for (i, v) in events.into_iter().enumerate() {
            let e = self.prepare(v).map_err(|e| {
                let msg = if i == 0 {
                    e.to_string()
                } else {
                    format!("event {i}: {e}")
                };
                match e {
                    EventRejected::TooLarge { .. } => {
                        Error::non_retriable(msg).with_name("EventTooLarge")
                    }
                    EventRejected::Malformed(_) => {
                        Error::non_retriable(msg).with_name("MalformedEvent")
                    }
                }
            })?;
            prepared.push(e);
        }
        let mut sent = Sent {
            ids: Vec::new(),
            runs: Vec::new(),
        };
        // Submit every event before awaiting any: a store that batches
        // (SQLite) commits them together.
        let mut pending = Vec::with_capacity(prepared.len());
        for (id, name, ts, event) in prepared {
            let now = self.inner.clock.now_ms();
            let event_for_filter = event.clone();
            let runs: Vec<NewRun> = self
                .inner
                .fns
                .values()
                .filter(|f| {
                    f.triggers()
                        .iter()
                        .any(|t| t.matches(&name) && trigger_accepts(t, &event_for_filter))
                })
                .map(|f| NewRun {
                    id: new_id(now),
                    fn_id: f.id().to_string(),
                    parent: None,
                })
                .chain(
                    self.inner
                        .remote
                        .matching(&name)
                        .into_iter()
                        .map(|f| NewRun {
                            id: new_id(now),
                            fn_id: f.id.clone(),
                            parent: None,
                        }),
                )
                .collect();
            let run_ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
            let event_copy = event.clone();
            let op = crate::store::Op::Ingest {
                event_id: id.clone(),
                name: name.clone(),
                event,
                ts,
                runs,
                now,
            };
            let reply = self.inner.store.apply(op);
            pending.push((id, name, run_ids, reply, event_copy));
        }
        let mut resolved = Vec::new();
        for (id, name, run_ids, reply, event) in pending {
            match reply.await? {
                crate::store::Reply::Ingested { new: true } => {
                    resolved.push((name.clone(), event));
                    tracing::info!(event = %name, event_id = %id, runs = run_ids.len(), "event received");
                    sent.runs.extend(run_ids);
                }
                crate::store::Reply::Ingested { new: false } => {
                    tracing::info!(event = %name, event_id = %id, "duplicate event ID: no new runs");
                }
                other => return Err(Error::msg(format!("unexpected store reply {other:?}"))),
            }
            sent.ids.push(id);
        }
        self.resolve_waits(&resolved).await?;
        self.cancel_on(&resolved).await?;
        self.inner.notify.notify_one();
        Ok(sent)
    }

    /// Hand new events to the runs waiting for them (`wait_for_event!`):
    /// the first waiting run whose expression matches, per run.
    async fn resolve_waits(&self, events: &[(String, Value)]) -> Result<(), Error> {
        for (name, event) in events {
            let waits = self.inner.store.waiting(name).await?;
            for w in waits {
                let matched = match &w.expr {
                    None => true,
                    Some(src) => match crate::expr::Expr::compile(src) {
                        Ok(x) => x.matches(&w.trigger, event),
                        Err(e) => {
                            tracing::error!(run_id = %w.run_id, "{e}");
                            false
                        }
                    },
                };
                if matched {
                    let now = self.inner.clock.now_ms();
                    if self
                        .inner
                        .store
                        .resolve(&w.run_id, &w.step_id, Outcome::data(event.clone()), now)
                        .await?
                    {
                        tracing::info!(run_id = %w.run_id, step = %w.step_id, event = %name, "wait resolved by an event");
                    }
                }
            }
        }
        Ok(())
    }

    /// Cancel the runs of functions with a matching `cancel_on`.
    async fn cancel_on(&self, events: &[(String, Value)]) -> Result<(), Error> {
        for (name, event) in events {
            for f in self.inner.fns.values() {
                let Some(c) = f.config().cancel_on else {
                    continue;
                };
                let hit = match c.event.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => c.event == name,
                };
                if !hit {
                    continue;
                }
                let expr = c
                    .expression
                    .map(crate::expr::Expr::compile)
                    .transpose()
                    .map_err(Error::non_retriable)?;
                for (run_id, trigger) in self.inner.store.active_runs(f.id()).await? {
                    if expr.as_ref().is_none_or(|x| x.matches(&trigger, event)) {
                        tracing::info!(run_id = %run_id, event = %name, "run cancelled by cancel_on");
                        self.cancel(&run_id).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Validate an event and fill in its ID and timestamp.
    fn prepare(&self, mut v: Value) -> Result<(String, String, i64, Value), EventRejected> {
        let bytes = serde_json::to_vec(&v)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if bytes > self.inner.max_event_bytes {
            return Err(EventRejected::TooLarge {
                bytes,
                limit: self.inner.max_event_bytes,
            });
        }
        let Some(obj) = v.as_object_mut() else {
            return Err(EventRejected::Malformed(
                "an event is a JSON object with a `name`".into(),
            ));
        };
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::String(_)) | None => {
                return Err(EventRejected::Malformed("the event has no `name`".into()))
            }
            Some(_) => {
                return Err(EventRejected::Malformed(
                    "the event's `name` must be a string".into(),
                ))
            }
        };
        match obj.get("data") {
            None | Some(Value::Null) => {
                obj.insert("data".into(), Value::Object(Default::default()));
            }
            Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(EventRejected::Malformed(
                    "the event's `data` must be an object".into(),
                ))
            }
        }
        let now = self.inner.clock.now_ms();
        let id = match obj.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                let id = new_id(now);
                obj.insert("id".into(), Value::String(id.clone()));
                id
            }
            Some(_) => {
                return Err(EventRejected::Malformed(
                    "the event's `id` must be a string".into(),
                ))
            }
        };
        let ts = match obj.get("ts") {
            Some(Value::Number(n)) if n.as_i64().is_some_and(|t| t > 0) => n.as_i64().unwrap(),
            None | Some(Value::Null) | Some(Value::Number(_)) => {
                obj.insert("ts".into(), Value::from(now));
                now
            }
            Some(_) => {
                return Err(EventRejected::Malformed(
                    "the event's `ts` must be a number (ms since the epoch)".into(),
                ))
            }
        };
        Ok((id, name, ts, v))
    }

    /// List runs, newest first.
    pub async fn runs(&self, filter: RunFilter) -> Result<Vec<RunRecord>, Error> {
        Ok(self.inner.store.list_runs(filter).await?)
    }

    /// One run with its step trace.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunDetail>, Error> {
        let mut detail = self.inner.store.get_run(run_id).await?;
        if let Some(d) = &mut detail {
            let sites = self
                .inner
                .fns
                .get(d.run.fn_id.as_str())
                .map(|f| f.steps())
                .unwrap_or(&[]);
            for s in &mut d.steps {
                let id = StepId::from_readable(s.id.clone());
                s.kind = match id.base() {
                    "~now" => Some("now".into()),
                    "~random" => Some("random".into()),
                    "~uuid" => Some("uuid".into()),
                    base => sites
                        .iter()
                        .find(|site| site.id == base)
                        .map(|site| site.kind.as_str().to_string()),
                };
            }
        }
        Ok(detail)
    }

    /// Cancel a run: a sleeping or queued run at once, a running one at its
    /// next step boundary (its current step's result is not journaled and
    /// no further step runs). Returns the status the run had, or `None` if
    /// there is no such run.
    pub async fn cancel(&self, run_id: &str) -> Result<Option<RunStatus>, Error> {
        let now = self.inner.clock.now_ms();
        let was = self.inner.store.cancel(run_id, now).await?;
        if was.is_some_and(|s| !s.is_final()) {
            tracing::info!(run_id, "run cancelled");
        }
        Ok(was)
    }

    /// Wait until a run ends (completed, failed or cancelled); answers it
    /// with its step trace.
    pub async fn wait_for_run(&self, run_id: &str, timeout: Duration) -> Result<RunDetail, Error> {
        self.wait_for_end(run_id, timeout).await?;
        self.run(run_id)
            .await?
            .ok_or_else(|| Error::non_retriable(format!("no run `{run_id}`")))
    }

    /// Wait until a run ends; answers the run without its trace.
    pub async fn wait_for_end(&self, run_id: &str, timeout: Duration) -> Result<RunRecord, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = self.inner.ended.notified();
            match self.inner.store.get_run_record(run_id).await? {
                Some(r) if r.status.is_final() => return Ok(r),
                Some(_) => {}
                None => return Err(Error::non_retriable(format!("no run `{run_id}`"))),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::msg(format!(
                    "run `{run_id}` did not finish within {timeout:?}"
                )));
            }
            // Runs ended by this engine wake us at once; others (another
            // process, a cancel) are seen at the next look.
            let _ = tokio::time::timeout(Duration::from_millis(50), ended).await;
        }
    }

    /// Runs this engine has driven to their end (completed or failed)
    /// since it started.
    pub fn runs_ended(&self) -> i64 {
        self.inner.runs_ended.load(Ordering::SeqCst)
    }

    /// Register an app's functions from a register request body (what
    /// `POST /fn/register` receives). Answers the app name and how many
    /// functions it has.
    pub fn register_app(&self, body: &Value) -> Result<(String, usize), Error> {
        self.inner.remote.register(body).map_err(|e| {
            Error::non_retriable(format!("durafn: bad register request: {e}"))
                .with_name("BadRegister")
        })
    }

    /// Ask the app at `url` to sync (a `PUT` on its endpoint); the app then
    /// registers its functions with this engine.
    pub async fn sync_app(&self, url: &str) -> Result<(), Error> {
        let mut req = self
            .inner
            .http
            .put(url)
            .header("x-inngest-server-kind", "dev")
            .timeout(Duration::from_secs(30));
        if let Some(key) = &self.inner.signing_key {
            let now = self.inner.clock.now_ms() / 1000;
            req = req.header(
                "x-inngest-signature",
                crate::serve::wire::sign(key, b"", now),
            );
        }
        let r = req
            .send()
            .await
            .map_err(|e| Error::msg(format!("cannot reach the app at {url}: {e}")))?;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(Error::msg(format!(
                "the app at {url} failed to sync ({status}): {body}"
            )));
        }
        Ok(())
    }

    /// The functions of apps served over HTTP.
    pub fn remote_functions(&self) -> Vec<Arc<remote::RemoteFn>> {
        self.inner.remote.all()
    }

    /// Call requests sent to apps since the engine started.
    pub fn http_calls(&self) -> i64 {
        self.inner.http_calls.load(Ordering::Relaxed)
    }

    /// Steps committed by this engine since it started.
    pub fn steps_committed(&self) -> i64 {
        self.inner.steps_committed.load(Ordering::Relaxed)
    }

    /// Stop claiming new runs (runs in flight finish their current call).
    pub fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.notify.notify_one();
    }

    /// Stop, and wait until the runs in flight have stopped. Runs that are
    /// suspended stay in the store for the next engine on it.
    pub async fn close(self) {
        self.shutdown();
        let handle = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        while self.inner.running.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The HTTP API: `POST /e/{key}`, `GET /v1/runs`, `GET /v1/runs/{id}`,
    /// `POST /v1/runs/{id}/cancel` (and `DELETE /v1/runs/{id}`).
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// Serve [`Engine::router`] on `addr` until the process ends.
    pub async fn serve(&self, addr: &str) -> Result<(), Error> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(addr, "serving the event and run API");
        axum::serve(listener, self.router()).await?;
        Ok(())
    }
}

async fn worker(inner: Arc<Inner>) {
    loop {
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        let free = inner
            .concurrency
            .saturating_sub(inner.running.load(Ordering::SeqCst));
        if free > 0 {
            let now = inner.clock.now_ms();
            match inner
                .store
                .claim(
                    now,
                    SystemClock.now_ms(),
                    free,
                    &inner.owner,
                    inner.lease_ms,
                )
                .await
            {
                Ok(claimed) if !claimed.is_empty() => {
                    for c in claimed {
                        inner.running.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(drive(inner.clone(), c));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "claiming runs failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        // From here until the wait, any run that suspends wakes us: the
        // next-wake answer below may not include it yet.
        inner.planned_wake.store(i64::MAX, Ordering::SeqCst);
        let wait = match inner.store.next_wake().await {
            Ok(Some(w)) => (w - inner.clock.now_ms()).clamp(0, 1000) as u64,
            _ => 1000,
        };
        if wait == 0 && free > 0 {
            inner.planned_wake.store(0, Ordering::SeqCst);
            continue;
        }
        inner
            .planned_wake
            .store(inner.clock.now_ms() + wait as i64, Ordering::SeqCst);
        let _ =
            tokio::time::timeout(Duration::from_millis(wait.max(1)), inner.notify.notified()).await;
        inner.planned_wake.store(0, Ordering::SeqCst);
    }
}

/// `send_event!` in an engine's runs: the events go through `send_values`.
struct EngineSender(Engine);

impl crate::ctx::EventSender for EngineSender {
    fn send(&self, events: Vec<Value>) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        Box::pin(async move { Ok(self.0.send_values(events).await?.ids) })
    }
}

/// Commits each new step of one run to the store.
struct RunSink {
    inner: Arc<Inner>,
    run_id: String,
    lease_until: AtomicI64,
}

impl StepSink for RunSink {
    fn commit<'a>(
        &'a self,
        id: &'a StepId,
        outcome: Outcome,
        meta: StepMeta,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // Leases are wall-clock time, whatever the engine's clock.
            let now = SystemClock.now_ms();
            let lease = self.inner.lease_ms;
            let extend = if now > self.lease_until.load(Ordering::Relaxed) - lease / 2 {
                self.lease_until.store(now + lease, Ordering::Relaxed);
                Some(now + lease)
            } else {
                None
            };
            let write = StepWrite {
                run_id: self.run_id.clone(),
                step: id.clone(),
                name: None,
                outcome,
                seq: meta.seq,
                attempts: meta.attempts,
                started_ms: meta.started_ms,
                ended_ms: meta.ended_ms,
            };
            if self
                .inner
                .store
                .append(write, &self.inner.owner, extend)
                .await?
            {
                self.inner.steps_committed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            } else {
                Err(Error::non_retriable(format!(
                    "run {} was cancelled or taken over; step `{id}` is not journaled",
                    self.run_id
                ))
                .with_name("RunNotLeased"))
            }
        })
    }
}

pub(crate) fn error_json(e: &ErrorInfo) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

async fn drive(inner: Arc<Inner>, c: Claimed) {
    let run_id = c.run.id.clone();
    let span = tracing::info_span!("run", run_id = %run_id, fn_id = %c.run.fn_id);
    async {
        if let Err(e) = drive_inner(&inner, c).await {
            tracing::error!(error = %e, "a run's store write failed; it will be claimed again when its lease ends");
        }
    }
    .instrument(span)
    .await;
    // A saturated worker waits for a free slot.
    if inner.running.fetch_sub(1, Ordering::SeqCst) >= inner.concurrency {
        inner.notify.notify_one();
    }
    inner.ended.notify_waiters();
}

async fn drive_inner(inner: &Arc<Inner>, c: Claimed) -> Result<(), Error> {
    let store = &inner.store;
    let run = c.run;
    let now = inner.clock.now_ms();
    if !inner.fns.contains_key(run.fn_id.as_str()) {
        if let Some(rf) = inner.remote.get(&run.fn_id) {
            return remote::drive(inner, Claimed { run, ..c }, rf).await;
        }
    }
    let Some(f) = inner.fns.get(run.fn_id.as_str()).cloned() else {
        let err = ErrorInfo::new(
            "UnknownFunction",
            format!("no function `{}` is registered in this engine; register it and send the event again", run.fn_id),
        );
        tracing::error!("{}", err.message);
        store
            .finish(
                &run.id,
                &inner.owner,
                RunStatus::Failed,
                None,
                Some(error_json(&err)),
                now,
            )
            .await?;
        return Ok(());
    };
    let sink = Arc::new(RunSink {
        inner: inner.clone(),
        run_id: run.id.clone(),
        lease_until: AtomicI64::new(SystemClock.now_ms() + inner.lease_ms),
    });
    let inv = Invocation {
        run_id: run.id.clone(),
        event: c.event,
        journal: c.journal,
        attempt: run.attempt,
        clock: inner.clock.clone(),
        faults: None,
        plan: Default::default(),
        sender: Some(Arc::new(EngineSender(Engine {
            inner: inner.clone(),
            worker: Arc::new(std::sync::Mutex::new(None)),
        }))),
    };
    let res = continuous(&*f, inv, Some(sink)).await;
    let now = inner.clock.now_ms();
    let owner = &inner.owner;
    match res.transition {
        Transition::Done(v) => {
            tracing::info!("run completed");
            if store
                .finish(&run.id, owner, RunStatus::Completed, Some(v), None, now)
                .await?
            {
                inner.runs_ended.fetch_add(1, Ordering::SeqCst);
            }
        }
        Transition::Failed { error, retry } => {
            if error.name == "RunNotLeased" {
                tracing::info!("run stopped: {}", error.message);
                return Ok(());
            }
            let retries = f.config().retries;
            if retry != Retry::Never && run.fn_attempt < retries {
                let delay = match retry {
                    Retry::After(d) => d,
                    _ => inner.backoff.delay(run.fn_attempt),
                };
                tracing::warn!(error = %error, attempt = run.fn_attempt, "run failed; retrying the function");
                let wake_at = now + delay.as_millis() as i64;
                suspend(
                    inner,
                    Suspend {
                        run_id: run.id.clone(),
                        now,
                        wake_at,
                        attempt: run.attempt,
                        fn_attempt: run.fn_attempt + 1,
                        ..Suspend::default()
                    },
                )
                .await?;
            } else {
                tracing::warn!(error = %error, "run failed");
                if store
                    .finish(
                        &run.id,
                        owner,
                        RunStatus::Failed,
                        None,
                        Some(error_json(&error)),
                        now,
                    )
                    .await?
                {
                    inner.runs_ended.fetch_add(1, Ordering::SeqCst);
                    emit_failed(inner, &run.fn_id, &run.id, &error_json(&error)).await;
                }
            }
        }
        Transition::StepErrored {
            id,
            error,
            attempt,
            retry_after,
        } => {
            let delay = retry_after.unwrap_or_else(|| inner.backoff.delay(attempt));
            let wake_at = now + delay.as_millis() as i64;
            suspend(
                inner,
                Suspend {
                    run_id: run.id.clone(),
                    now,
                    wake_at,
                    attempt: attempt + 1,
                    fn_attempt: run.fn_attempt,
                    failed_attempt: Some((id, attempt, error_json(&error), now)),
                    ..Suspend::default()
                },
            )
            .await?;
        }
        Transition::Sleep { id, until_ms } => {
            let wake_at = until_ms;
            suspend(
                inner,
                Suspend {
                    run_id: run.id.clone(),
                    now,
                    wake_at,
                    attempt: 0,
                    fn_attempt: run.fn_attempt,
                    pending_sleep: Some(id),
                    ..Suspend::default()
                },
            )
            .await?;
        }
        Transition::WaitForEvent {
            id,
            event,
            expr,
            until_ms,
        } => {
            suspend(
                inner,
                Suspend {
                    run_id: run.id.clone(),
                    now,
                    wake_at: until_ms,
                    fn_attempt: run.fn_attempt,
                    pending_sleep: Some(id),
                    wait: Some(crate::store::WaitSpec { event, expr }),
                    ..Suspend::default()
                },
            )
            .await?;
        }
        Transition::Invoke {
            id,
            function,
            data,
            until_ms,
        } => {
            let spawn = invoke_spawn(&run.id, &run.fn_id, &id, &function, data, now);
            store
                .suspend(Suspend {
                    run_id: run.id.clone(),
                    now,
                    wake_at: until_ms,
                    fn_attempt: run.fn_attempt,
                    pending_sleep: Some(id),
                    pending_outcome: Some(Outcome::error(ErrorInfo::new(
                        "InngestInvokeTimeoutError",
                        format!(
                            "timed out waiting for the invoked function `{function}` to finish"
                        ),
                    ))),
                    spawn: Some(spawn),
                    ..Suspend::default()
                })
                .await?;
            // The child is due now.
            inner.notify.notify_one();
        }
        t @ (Transition::StepRan { .. }
        | Transition::StepFailed { .. }
        | Transition::StepPlanned { .. }) => {
            return Err(Error::msg(format!(
                "the continuous driver returned a re-entry transition: {t:?}"
            )));
        }
    }
    Ok(())
}

fn trigger_accepts(t: &crate::function::Trigger, event: &Value) -> bool {
    match t {
        crate::function::Trigger::Event {
            expression: Some(x),
            ..
        } => match crate::expr::Expr::compile(x) {
            Ok(x) => x.accepts(event),
            Err(_) => false,
        },
        _ => true,
    }
}

/// Emit `inngest/function.failed` for a run that failed for good, so that
/// failure handlers (functions triggered by it, filtered with `if`) run.
pub(crate) async fn emit_failed(inner: &Arc<Inner>, fn_id: &str, run_id: &str, error: &Value) {
    if fn_id.ends_with("-failure")
        || inner
            .fns
            .get(fn_id)
            .is_some_and(|f| f.triggers().iter().any(|t| t.matches(FAILED_EVENT)))
    {
        return; // a failure handler's own failure starts no other handler
    }
    let engine = Engine {
        inner: inner.clone(),
        worker: Arc::new(std::sync::Mutex::new(None)),
    };
    let trigger = match inner.store.get_run(run_id).await {
        Ok(Some(r)) => r.event,
        _ => Value::Null,
    };
    let event = serde_json::json!({
        "name": FAILED_EVENT,
        "id": format!("failed-{run_id}"),
        "data": {"function_id": fn_id, "run_id": run_id, "error": error, "event": trigger},
    });
    if let Err(e) = engine.send_values(vec![event]).await {
        tracing::error!(error = %e, "could not emit {FAILED_EVENT}");
    }
}

/// The event sent when a run fails for good (Inngest's name).
pub const FAILED_EVENT: &str = "inngest/function.failed";

/// The child run of an `invoke`: its event is `inngest/function.invoked`
/// with the given data (and, for object data, Inngest's `_inngest` block);
/// its event ID is derived from the parent's run and step, so a replayed
/// invoke after a crash starts no second child.
pub(crate) fn invoke_spawn(
    parent: &str,
    parent_fn: &str,
    step: &StepId,
    function: &str,
    data: Value,
    now: i64,
) -> crate::store::Spawn {
    let correlation = format!("{parent}.{}", step.hashed());
    let data = match data {
        Value::Object(mut m) => {
            m.insert(
                "_inngest".into(),
                serde_json::json!({"fn_id": function, "source_fn_id": parent_fn, "correlation_id": correlation}),
            );
            Value::Object(m)
        }
        other => other,
    };
    let event_id = format!("invoke-{correlation}");
    let event = serde_json::json!({"name": "inngest/function.invoked", "data": data, "id": event_id, "ts": now});
    crate::store::Spawn {
        event_id,
        name: "inngest/function.invoked".into(),
        event,
        run: NewRun {
            id: new_id(now),
            fn_id: function.to_string(),
            parent: Some((parent.to_string(), step.to_string())),
        },
    }
}

/// Suspend a run and wake the worker if the run is due before the worker
/// planned to look.
pub(crate) async fn suspend(inner: &Inner, s: Suspend) -> Result<(), Error> {
    let wake_at = s.wake_at;
    inner.store.suspend(s).await?;
    wake_worker_by(inner, wake_at);
    Ok(())
}

/// Wake the worker if a run now wakes before the worker planned to look.
pub(crate) fn wake_worker_by(inner: &Inner, wake_at: i64) {
    if wake_at < inner.planned_wake.load(Ordering::SeqCst) {
        inner.notify.notify_one();
    }
}
