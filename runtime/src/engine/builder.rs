//! Building an [`Engine`]: the store, the functions, the limits.

use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::{new_id, registry::Registry, Engine, Inner, Tasks, DEFAULT_MAX_EVENT_BYTES};
use crate::ctx::{Clock, SystemClock};
use crate::error::Error;
use crate::function::{DurableFn, Trigger};
use crate::store::{MemoryStore, Store};
use crate::transition::Backoff;

/// Builds an [`Engine`].
pub struct EngineBuilder {
    store: StoreChoice,
    fns: Vec<Arc<dyn DurableFn>>,
    max_event_bytes: usize,
    concurrency: usize,
    backoff: Backoff,
    lease: Duration,
    unknown_fn_timeout: Duration,
    clock: Arc<dyn Clock>,
    start_workers: bool,
    signing_key: Option<String>,
    limits: super::Limits,
    /// PEM certificates trusted for apps served over HTTPS, beside the
    /// public roots.
    app_roots: Vec<Vec<u8>>,
    bounds: crate::journal::Bounds,
    retention: Option<Duration>,
}

enum StoreChoice {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf, crate::store::SqliteSync),
    #[cfg(feature = "postgres")]
    Postgres(String, crate::store::PgOptions),
    Custom(Arc<dyn Store>),
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            store: StoreChoice::Memory,
            fns: Vec::new(),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            concurrency: 1024,
            backoff: Backoff::default(),
            lease: Duration::from_secs(60),
            unknown_fn_timeout: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
            start_workers: true,
            signing_key: None,
            limits: super::Limits::default(),
            app_roots: Vec::new(),
            bounds: Default::default(),
            retention: None,
        }
    }
}

impl EngineBuilder {
    /// Keep everything in one SQLite file (created if missing): the
    /// embedded default, with an fsync on every commit.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.store = StoreChoice::Sqlite(path.into(), crate::store::SqliteSync::Full);
        self
    }

    /// SQLite without an fsync per commit: commits survive a crash of the
    /// process, not a power loss.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_sync(mut self, sync: crate::store::SqliteSync) -> Self {
        if let StoreChoice::Sqlite(_, s) = &mut self.store {
            *s = sync;
        }
        self
    }

    /// Keep everything in PostgreSQL (`postgres://user:password@host/db`):
    /// several engine processes on one database share the work. The
    /// schema (`durafn` by default) is created or migrated on
    /// [`build`](Self::build).
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.store = StoreChoice::Postgres(url.into(), crate::store::PgOptions::default());
        self
    }

    /// PostgreSQL with options (schema, pool size, connect timeout).
    #[cfg(feature = "postgres")]
    pub fn postgres_with(
        mut self,
        url: impl Into<String>,
        options: crate::store::PgOptions,
    ) -> Self {
        self.store = StoreChoice::Postgres(url.into(), options);
        self
    }

    /// Keep everything in memory (tests).
    pub fn memory(mut self) -> Self {
        self.store = StoreChoice::Memory;
        self
    }

    /// Use another store. Several engines may share it: leases keep each
    /// run with one of them at a time.
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
        self.concurrency = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// Retry backoff (default 1 s doubling, at most 1 h, with jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a claimed run stays leased without a heartbeat (default
    /// 60 s). A running step heartbeats its lease every third of this;
    /// a process that stalls longer loses the run to another one.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// How long a run of a function that no registered code or app has
    /// (yet) waits for it before failing with `UnknownFunction` (default
    /// 60 s): an app that syncs after a restart picks its queued runs up.
    pub fn unknown_function_timeout(mut self, timeout: Duration) -> Self {
        self.unknown_fn_timeout = timeout;
        self
    }

    /// The clock for timers and `ctx.now()` (tests). Leases always use
    /// the system clock.
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

    /// Open the store, load the stored app registrations and start the
    /// worker loop (needs a Tokio runtime).
    /// Accept app URLs (syncs, registrations) only on these hosts (a
    /// name, or `name:port`); any host when never called.
    pub fn allow_app_hosts<S: Into<String>>(mut self, hosts: impl IntoIterator<Item = S>) -> Self {
        self.limits
            .app_hosts
            .get_or_insert_with(Vec::new)
            .extend(hosts.into_iter().map(Into::into));
        self
    }

    /// Trust this PEM certificate (a private CA, or an app's self-signed
    /// certificate) for apps served over HTTPS, besides the public roots
    /// (webpki's). A certificate that does not parse fails `build()`.
    pub fn trust_app_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.app_roots.push(pem.into());
        self
    }

    /// The largest step output journaled (default 4 MiB, as Inngest): a
    /// step that returns more fails with `StepOutputTooLarge`, without
    /// retries, and nothing of it is written.
    pub fn max_step_output_bytes(mut self, n: usize) -> Self {
        self.bounds.step_output = n;
        self
    }

    /// Delete in the background what is older than `keep`: runs that
    /// ended (with their journals and traces), events that no remaining
    /// run started from, and expired flow keys (idempotency keys, rate
    /// limits), in small batches. A run with a child still active, or
    /// whose parent is still active, is kept. An event ID is deduplicated
    /// only while its event is kept. Off by default: everything is kept.
    pub fn retention(mut self, keep: Duration) -> Self {
        self.retention = Some(keep);
        self
    }

    /// The largest journal of a run, all its step outputs and errors
    /// together (default 32 MiB, as Inngest): a step whose output would
    /// take the journal over fails with `JournalTooLarge`, without
    /// retries, and nothing of the output is written.
    pub fn max_journal_bytes(mut self, n: usize) -> Self {
        self.bounds.journal = n;
        self
    }

    /// The most functions one app may register (default 1,000).
    pub fn max_functions_per_app(mut self, n: usize) -> Self {
        self.limits.functions_per_app = n;
        self
    }

    /// The most runs one event may start (default 100): an event that
    /// would start more is refused, and nothing of its request is stored.
    pub fn max_runs_per_event(mut self, n: usize) -> Self {
        self.limits.runs_per_event = n;
        self
    }

    pub async fn build(self) -> Result<Engine, Error> {
        let registry = Registry::new(self.fns)?;
        let mut http = reqwest::Client::builder();
        for pem in &self.app_roots {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    Error::msg("durafn: a trusted app certificate is not a PEM certificate (`-----BEGIN CERTIFICATE-----`)")
                })?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| Error::msg(format!("durafn: cannot set up HTTPS to apps: {e}")))?;
        let (store, single_process): (Arc<dyn Store>, bool) = match self.store {
            StoreChoice::Memory => (Arc::new(MemoryStore::new()), true),
            #[cfg(feature = "sqlite")]
            StoreChoice::Sqlite(path, sync) => {
                let s = tokio::task::spawn_blocking(move || {
                    crate::store::SqliteStore::open(path, sync)
                })
                .await
                .map_err(Error::msg)??;
                (Arc::new(s), true)
            }
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres(url, options) => (
                Arc::new(crate::store::PgStore::connect_with(&url, options).await?),
                false,
            ),
            StoreChoice::Custom(s) => (s, false),
        };
        if single_process {
            // This process is the only engine on the store: runs that a
            // previous process was running are free to take at once.
            store.release_leases().await?;
        }
        for app in store.apps().await? {
            if let Err(e) = registry.load_app(&app) {
                tracing::error!(app = ?app.id, error = %e.escape_debug(), "a stored registration does not load");
            }
        }
        let now = self.clock.now_ms();
        let inner = Arc::new(Inner {
            store_wake: store.wakeups(),
            store,
            registry,
            notify: Notify::new(),
            owner: format!("engine-{}", new_id(now)),
            max_event_bytes: self.max_event_bytes,
            concurrency: self.concurrency,
            slots: Arc::new(Semaphore::new(self.concurrency)),
            backoff: self.backoff,
            lease_ms: i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX),
            unknown_fn_timeout: self.unknown_fn_timeout,
            clock: self.clock,
            stopped: AtomicBool::new(false),
            steps_committed: AtomicI64::new(0),
            runs_ended: AtomicI64::new(0),
            ended: Notify::new(),
            planned_wake: AtomicI64::new(0),
            http,
            signing_key: self.signing_key,
            limits: self.limits,
            bounds: self.bounds,
            http_calls: AtomicI64::new(0),
            jobs: Default::default(),
            telemetry: super::telemetry::Telemetry::from_env(),
        });
        let mut tasks = Tasks::default();
        if self.start_workers {
            tasks.worker = Some(tokio::spawn(super::worker::run(inner.clone())));
            for f in inner.registry.local_fns() {
                for t in f.triggers() {
                    if let Trigger::Cron { cron } = t {
                        tasks.crons.push(tokio::spawn(super::cron::run(
                            inner.clone(),
                            f.id().to_string(),
                            cron.to_string(),
                        )));
                    }
                }
            }
        }
        if let Some(keep) = self.retention.filter(|_| self.start_workers) {
            tasks.retention = Some(tokio::spawn(super::retention::run(inner.clone(), keep)));
        }
        tracing::info!(store = %inner.store.describe(), functions = inner.registry.local_fns().len(), "engine started");
        let engine = Engine {
            inner,
            tasks: Arc::new(std::sync::Mutex::new(tasks)),
        };
        // The apps known from the store keep their schedules.
        let mut apps: Vec<String> = engine
            .inner
            .registry
            .remote_fns()
            .iter()
            .map(|f| f.app.clone())
            .collect();
        apps.sort_unstable();
        apps.dedup();
        for app in apps {
            engine.schedule_app_crons(&app);
        }
        Ok(engine)
    }
}
