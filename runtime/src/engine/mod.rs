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
//! The core is three pieces:
//! - [`ingest`]: one path for every event source (the HTTP API,
//!   [`Engine::send`], `send_event!`, cron ticks, invokes, failure events);
//!   one call is one store transaction with everything the events cause.
//! - [`interpreter`]: one place applies a run's
//!   [`Transition`](crate::Transition) to the store, whether the run is a
//!   durable fn in this process or a function of an app over HTTP
//!   ([`remote`]).
//! - the [`Store`](crate::store::Store), with fenced leases that the
//!   [`worker`] claims, heartbeats and gives back.

mod builder;
pub mod cron;
mod gql;
mod http;
mod ingest;
mod interpreter;
mod ops;
mod registry;
pub mod remote;
mod retention;
pub mod server;
mod telemetry;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::ctx::Clock;
use crate::error::Error;
use crate::function::DurableFn;
use crate::step_id::StepId;
use crate::store::{AppRecord, RunDetail, RunFilter, RunRecord, RunStatus, Store};
use crate::transition::Backoff;

pub use builder::EngineBuilder;
pub use http::{Access, Keys};
pub use ingest::{EventRejected, SendError, Sent};
pub use ops::{BulkOp, JobStatus, OpError, Replay, Selection};
pub use registry::RemoteFn;

/// Inngest's limit on one event's size.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 512 * 1024;

/// The event sent when a run fails for good (Inngest's name).
pub const FAILED_EVENT: &str = "inngest/function.failed";

/// Why an app's registration was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterError {
    /// The register request is malformed or out of range.
    Bad(String),
    /// A function ID of the request belongs to another app (or to this
    /// process); nothing changed.
    Taken(String),
    /// The store failed; nothing changed.
    Store(crate::store::StoreError),
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::Bad(m) => write!(f, "durafn: bad register request: {m}"),
            RegisterError::Taken(m) => write!(f, "durafn: {m}"),
            RegisterError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RegisterError {}

/// The durable engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    tasks: Arc<std::sync::Mutex<Tasks>>,
}

/// The engine's background tasks.
#[derive(Default)]
struct Tasks {
    worker: Option<tokio::task::JoinHandle<()>>,
    crons: Vec<tokio::task::JoinHandle<()>>,
    /// The schedulers of apps' cron triggers, by app: replaced when the
    /// app syncs again.
    app_crons: std::collections::HashMap<String, Vec<tokio::task::JoinHandle<()>>>,
    retention: Option<tokio::task::JoinHandle<()>>,
}

impl Engine {
    /// Schedule the cron triggers of `app`'s functions, in place of the
    /// ones it had (a sync may change them). Only an engine whose workers
    /// run schedules anything.
    pub(crate) fn schedule_app_crons(&self, app: &str) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.worker.is_none() {
            return;
        }
        for t in tasks.app_crons.remove(app).unwrap_or_default() {
            t.abort();
        }
        let mut started = Vec::new();
        for f in self.inner.registry.remote_fns() {
            if f.app != app {
                continue;
            }
            for cron in &f.crons {
                started.push(tokio::spawn(cron::run(
                    self.inner.clone(),
                    f.id.clone(),
                    cron.clone(),
                )));
            }
        }
        if !started.is_empty() {
            tasks.app_crons.insert(app.to_string(), started);
        }
    }
}

pub(crate) struct Inner {
    store: Arc<dyn Store>,
    /// Woken when another process made runs due (a shared store).
    store_wake: Option<Arc<Notify>>,
    registry: registry::Registry,
    /// Wakes the worker: new runs, a run due sooner, a free slot, stop.
    notify: Notify,
    /// This process's name on the leases it holds.
    owner: String,
    max_event_bytes: usize,
    concurrency: usize,
    /// One permit per run being driven.
    slots: Arc<Semaphore>,
    backoff: Backoff,
    lease_ms: i64,
    /// How long a run of a function this engine does not know waits for
    /// it to be registered.
    unknown_fn_timeout: Duration,
    clock: Arc<dyn Clock>,
    stopped: AtomicBool,
    steps_committed: AtomicI64,
    runs_ended: AtomicI64,
    /// Woken whenever a run ends.
    ended: Notify,
    /// When the idle worker will look for due runs next (ms).
    planned_wake: AtomicI64,
    http: reqwest::Client,
    signing_key: Option<String>,
    limits: Limits,
    bounds: crate::journal::Bounds,
    /// Call requests sent to apps.
    http_calls: AtomicI64,
    /// Bulk operations started in this process.
    jobs: ops::Jobs,
    /// The OTLP exporter of run traces, when configured.
    telemetry: Option<telemetry::Telemetry>,
}

/// Bounds on what apps and events may ask of the engine.
#[derive(Debug, Clone)]
struct Limits {
    /// Hosts app URLs may name (`None`: any).
    app_hosts: Option<Vec<String>>,
    functions_per_app: usize,
    runs_per_event: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            app_hosts: None,
            functions_per_app: 1000,
            runs_per_event: 100,
        }
    }
}

impl Limits {
    /// Why an app URL is refused, if it is: a scheme other than `http` or
    /// `https`, or a host off the allow-list.
    fn check_app_url(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "`{url}`: an app is reached over `http` or `https`, not `{}`",
                parsed.scheme()
            ));
        }
        let Some(allowed) = &self.app_hosts else {
            return Ok(());
        };
        let host = parsed.host_str().unwrap_or("");
        let with_port = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        match allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(&with_port))
        {
            true => Ok(()),
            false => Err(format!(
                "`{url}`: the host `{with_port}` is not on the server's list of app hosts"
            )),
        }
    }
}

impl Inner {
    /// Wake the worker if a run now wakes before the worker planned to look.
    fn wake_worker_by(&self, wake_at: i64) {
        if wake_at < self.planned_wake.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

/// A new ID: time-ordered (12 hex digits of milliseconds, then 80 random
/// bits).
fn new_id(now_ms: i64) -> String {
    let r: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    format!("{:012x}{:020x}", now_ms as u64 & 0xffff_ffff_ffff, r)
}

impl Engine {
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The durable fns registered in this process.
    pub fn functions(&self) -> Vec<Arc<dyn DurableFn>> {
        self.inner.registry.local_fns()
    }

    /// The functions of apps served over HTTP.
    pub fn remote_functions(&self) -> Vec<Arc<RemoteFn>> {
        self.inner.registry.remote_fns()
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        self.inner.store.clone()
    }

    /// List runs, newest first.
    pub async fn runs(&self, filter: RunFilter) -> Result<Vec<RunRecord>, Error> {
        Ok(self.inner.store.list_runs(filter).await?)
    }

    /// One run with its step trace.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunDetail>, Error> {
        let mut detail = self.inner.store.run(run_id).await?;
        if let Some(d) = &mut detail {
            let sites = match self.inner.registry.get(&d.run.fn_id) {
                Some(registry::Function::Local(f)) => f.steps(),
                _ => &[],
            };
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

    /// Stored events, newest first: up to `limit`, listed after `before`
    /// (an event's received time and ID) when given.
    pub async fn events(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> Result<Vec<crate::store::EventRecord>, Error> {
        Ok(self.inner.store.list_events(limit, before).await?)
    }

    /// Cancel a run: a queued, sleeping or waiting run at once; a running
    /// one loses its lease, so its current step's result is not journaled
    /// and no further step runs. An invoked run's parent resumes at once
    /// with an error that says so. Returns the status the run had, or
    /// `None` if there is no such run.
    pub async fn cancel(&self, run_id: &str) -> Result<Option<RunStatus>, Error> {
        let now = self.inner.clock.now_ms();
        let was = self.inner.store.cancel(run_id, now).await?;
        if was.is_some_and(|s| !s.is_final()) {
            tracing::info!(run_id, "run cancelled");
            if let Some(t) = &self.inner.telemetry {
                if let Some(d) = self.inner.store.run(run_id).await? {
                    let trace = telemetry::RunTrace::of(run_id, &d.event);
                    t.run_span(&d.run, &trace, ("cancelled", None), now);
                }
            }
            // A parent may be due now.
            self.inner.notify.notify_one();
            self.inner.ended.notify_waiters();
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
            match self.inner.store.run_record(run_id).await? {
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
            // process) are seen at the next look.
            let _ = tokio::time::timeout(Duration::from_millis(50), ended).await;
        }
    }

    /// Runs this engine has driven to their end (completed or failed)
    /// since it started.
    pub fn runs_ended(&self) -> i64 {
        self.inner.runs_ended.load(Ordering::SeqCst)
    }

    /// Register an app's functions from a register request body (what
    /// `POST /fn/register` receives). The registration is stored, so runs
    /// of the app survive a restart of the engine. Answers the app name
    /// and how many functions it has.
    pub async fn register_app(
        &self,
        body: &serde_json::Value,
    ) -> Result<(String, usize), RegisterError> {
        let reg = registry::parse_register(body).map_err(RegisterError::Bad)?;
        let limits = &self.inner.limits;
        if reg.fns.len() > limits.functions_per_app {
            return Err(RegisterError::Bad(format!(
                "the app `{}` has {} functions, over the limit of {}",
                reg.app,
                reg.fns.len(),
                limits.functions_per_app
            )));
        }
        limits.check_app_url(&reg.url).map_err(RegisterError::Bad)?;
        for f in &reg.fns {
            limits.check_app_url(&f.url).map_err(RegisterError::Bad)?;
        }
        self.inner
            .registry
            .check_owner(&reg)
            .map_err(RegisterError::Taken)?;
        let app = AppRecord {
            id: reg.app.clone(),
            url: reg.url.clone(),
            body: body.clone(),
            updated_ms: self.inner.clock.now_ms(),
        };
        self.inner
            .store
            .put_app(app.clone())
            .await
            .map_err(RegisterError::Store)?;
        let n = self
            .inner
            .registry
            .load_app(&app)
            .map_err(RegisterError::Bad)?;
        tracing::info!(app = ?reg.app, url = ?reg.url, functions = n, "app synced");
        self.schedule_app_crons(&reg.app);
        // Runs that waited for these functions may go now.
        self.inner.notify.notify_one();
        Ok((reg.app, n))
    }

    /// Ask the app at `url` to sync (a `PUT` on its endpoint); the app then
    /// registers its functions with this engine.
    pub async fn sync_app(&self, url: &str) -> Result<(), Error> {
        self.inner.limits.check_app_url(url).map_err(Error::msg)?;
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

    /// Call requests sent to apps since the engine started.
    pub fn http_calls(&self) -> i64 {
        self.inner.http_calls.load(Ordering::Relaxed)
    }

    /// Delete now, in batches, the runs that ended more than `older_than`
    /// ago (with their journals and traces), the events received before
    /// then that no remaining run started from, and the flow keys that
    /// expired before then; the same as the background task of
    /// [`EngineBuilder::retention`] does. A run with a child still active,
    /// or whose parent is still active, is kept.
    pub async fn purge(
        &self,
        older_than: Duration,
    ) -> Result<crate::store::Purged, crate::store::StoreError> {
        retention::pass(&self.inner, older_than).await
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
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let apps = tasks.app_crons.into_values().flatten();
        for t in tasks.crons.into_iter().chain(apps).chain(tasks.retention) {
            t.abort();
        }
        // The worker sees the stop flag and returns after its current claim.
        if let Some(w) = tasks.worker {
            let _ = w.await;
        }
        // Every run being driven holds a slot until it stops.
        let all = u32::try_from(self.inner.concurrency).unwrap_or(u32::MAX);
        let _ = self.inner.slots.acquire_many(all).await;
        if let Some(t) = &self.inner.telemetry {
            t.flush().await;
        }
    }

    /// The HTTP API: `POST /e/{key}`, `GET /v1/runs`, `GET /v1/runs/{id}`,
    /// `POST /v1/runs/{id}/cancel` (and `DELETE /v1/runs/{id}`), with the
    /// dev server's access: no keys, requests from this machine only (see
    /// [`Access::Local`]).
    pub fn router(&self) -> axum::Router {
        http::router(self.clone(), Access::Local)
    }

    /// The HTTP API with the given access: [`Access::Keys`] for a server
    /// others can reach.
    pub fn router_with(&self, access: Access) -> axum::Router {
        http::router(self.clone(), access)
    }

    /// The HTTP API with the given access, and `pages` (a dashboard, its
    /// handlers taking `State<Engine>`) beside it under the same access
    /// rules: on the dev server, browser requests from other sites are
    /// refused, so a page cannot post to it on the developer's behalf.
    pub fn router_with_pages(&self, access: Access, pages: axum::Router<Engine>) -> axum::Router {
        http::router_with_pages(self.clone(), access, pages)
    }

    /// Serve [`Engine::router`] on `addr` until the process ends, with
    /// the default [`server::ServeOptions`].
    pub async fn serve(&self, addr: &str) -> Result<(), Error> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(addr, "serving the event and run API");
        server::serve(
            listener,
            self.router(),
            server::ServeOptions::default(),
            std::future::pending(),
        )
        .await;
        Ok(())
    }
}
