//! Helpers shared by the integration tests.

#![allow(dead_code)] // not every test binary uses every helper

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use durafn::__private::BoxFuture;
use durafn::store::*;

/// Called with each step commit.
pub type CommitHook = Box<dyn Fn(&StepCommit) + Send + Sync>;

/// Hooks a test can set on a [`Faulty`] store.
#[derive(Default)]
pub struct Faults {
    /// Fail this many step commits with a backend error.
    pub fail_commits: AtomicU32,
    /// Fail this many finishes with a backend error.
    pub fail_finishes: AtomicU32,
    /// Accept heartbeats without extending the lease (a stalled process).
    pub drop_heartbeats: AtomicBool,
    /// Claim nothing (a stalled process).
    pub drop_claims: AtomicBool,
    /// Called before each step commit is passed on.
    pub before_commit: Option<CommitHook>,
}

/// A store that passes every operation to another, with faults injected.
pub struct Faulty {
    pub inner: Arc<dyn Store>,
    pub faults: Arc<Faults>,
}

impl Faulty {
    pub fn wrap(inner: Arc<dyn Store>, faults: Arc<Faults>) -> Arc<dyn Store> {
        Arc::new(Faulty { inner, faults })
    }
}

impl Store for Faulty {
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
    fn ingest(&self, batch: IngestBatch) -> BoxFuture<'_, StoreResult<IngestReceipt>> {
        self.inner.ingest(batch)
    }
    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, StoreResult<Vec<ClaimedRun>>> {
        if self.faults.drop_claims.load(Ordering::SeqCst) {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        self.inner.claim(req)
    }
    fn heartbeat(&self, lease: &Lease, until_ms: i64) -> BoxFuture<'_, StoreResult<()>> {
        if self.faults.drop_heartbeats.load(Ordering::SeqCst) {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.inner.heartbeat(lease, until_ms)
    }
    fn commit_step(&self, lease: &Lease, commit: StepCommit) -> BoxFuture<'_, StoreResult<()>> {
        if let Some(hook) = &self.faults.before_commit {
            hook(&commit);
        }
        if take(&self.faults.fail_commits) {
            return disk_full();
        }
        self.inner.commit_step(lease, commit)
    }
    fn suspend(&self, lease: &Lease, s: Suspension, now_ms: i64) -> BoxFuture<'_, StoreResult<()>> {
        self.inner.suspend(lease, s, now_ms)
    }
    fn finish(
        &self,
        lease: &Lease,
        f: Finish,
        now_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Finished>> {
        if take(&self.faults.fail_finishes) {
            return disk_full();
        }
        self.inner.finish(lease, f, now_ms)
    }
    fn cancel(&self, run_id: &str, now_ms: i64) -> BoxFuture<'_, StoreResult<Option<RunStatus>>> {
        self.inner.cancel(run_id, now_ms)
    }
    fn restart(&self, r: Restart) -> BoxFuture<'_, StoreResult<bool>> {
        self.inner.restart(r)
    }
    fn release_leases(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.inner.release_leases()
    }
    fn put_app(&self, app: AppRecord) -> BoxFuture<'_, StoreResult<()>> {
        self.inner.put_app(app)
    }
    fn apps(&self) -> BoxFuture<'_, StoreResult<Vec<AppRecord>>> {
        self.inner.apps()
    }
    fn run(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<RunDetail>>> {
        self.inner.run(run_id)
    }
    fn run_record(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<RunRecord>>> {
        self.inner.run_record(run_id)
    }
    fn journal(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<durafn::Journal>>> {
        self.inner.journal(run_id)
    }
    fn list_runs(&self, filter: RunFilter) -> BoxFuture<'_, StoreResult<Vec<RunRecord>>> {
        self.inner.list_runs(filter)
    }
    fn purge(&self, before_ms: i64, limit: usize) -> BoxFuture<'_, StoreResult<Purged>> {
        self.inner.purge(before_ms, limit)
    }
    fn list_events(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> BoxFuture<'_, StoreResult<Vec<EventRecord>>> {
        self.inner.list_events(limit, before)
    }
    fn next_wake(
        &self,
        functions: Vec<String>,
        unknown_timeout_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Option<i64>>> {
        self.inner.next_wake(functions, unknown_timeout_ms)
    }
}

fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn disk_full<T: Send + 'static>() -> BoxFuture<'static, StoreResult<T>> {
    Box::pin(std::future::ready(Err(StoreError::backend(
        "injected: the disk is full",
    ))))
}

/// Serve `router` on a free loopback port; answers its base URL.
pub async fn listen(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// A register request for one function of a fake app at `url`.
pub fn register_body(
    app: &str,
    url: &str,
    fn_id: &str,
    event: &str,
    retries: u64,
) -> serde_json::Value {
    serde_json::json!({
        "url": url,
        "appName": app,
        "functions": [{
            "id": fn_id,
            "name": fn_id,
            "triggers": [{"event": event}],
            "steps": {"step": {
                "id": "step", "name": "step",
                "runtime": {"type": "http", "url": format!("{url}?fnId={fn_id}&stepId=step")},
                "retries": {"attempts": retries},
            }},
        }],
    })
}

/// The PostgreSQL server of the tests: `DATABASE_URL`, else the local one.
/// `None` (with a loud line) when it cannot be reached, except under CI,
/// where that fails the test.
pub async fn pg_url() -> Option<String> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((_client, conn)) => {
            drop(conn);
            Some(url)
        }
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("PostgreSQL at {url} is not reachable ({e}), and CI must run these tests")
        }
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED: PostgreSQL at {url} is not reachable ({e}); set DATABASE_URL ***\n"
            );
            None
        }
    }
}

/// A fresh schema name for one test.
pub fn fresh_schema(test: &str) -> String {
    format!(
        "durafn_test_{}_{}_{:08x}",
        test.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(20)
            .collect::<String>(),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Drops a test's schema when dropped, whether the test passed or not.
pub struct DropSchema {
    pub url: String,
    pub schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    let driver = tokio::spawn(conn);
                    // The engines of the test may still hold connections
                    // with locks in the schema (a transaction whose future
                    // was dropped rolls back only when its connection task
                    // runs, on the runtime this drop blocks): end them, and
                    // retry a drop that waited too long for a lock.
                    let holders = "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
                         JOIN pg_class c ON c.oid = l.relation \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()";
                    let _ = client.batch_execute("SET lock_timeout = '2s'").await;
                    for _ in 0..10 {
                        let _ = client.query(holders, &[&schema]).await;
                        let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                        if client.batch_execute(&drop).await.is_ok() {
                            break;
                        }
                    }
                    drop(client);
                    let _ = driver.await;
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL store in a fresh schema, dropped with the guard.
pub async fn pg_store(test: &str) -> Option<(Arc<dyn Store>, DropSchema)> {
    let url = pg_url().await?;
    let schema = fresh_schema(test);
    let guard = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let options = PgOptions {
        schema,
        ..PgOptions::default()
    };
    let store = PgStore::connect_with(&url, options).await.expect("connect");
    Some((Arc::new(store), guard))
}

/// A store by name, with what must live as long as it (its directory, its
/// schema).
#[allow(dead_code)]
pub type Backing = (&'static str, Arc<dyn Store>, Box<dyn std::any::Any>);

/// A fresh store of each kind: memory, a SQLite file (fsync on every
/// commit) and, when the server is reachable, a PostgreSQL schema named
/// after `test`.
#[allow(dead_code)]
pub async fn every_store(test: &str) -> Vec<Backing> {
    let mut v: Vec<Backing> = vec![("memory", Arc::new(MemoryStore::new()), Box::new(()))];
    let dir = tempfile::tempdir().unwrap();
    let sqlite =
        SqliteStore::open(dir.path().join(format!("{test}.db")), SqliteSync::Full).unwrap();
    v.push(("sqlite", Arc::new(sqlite), Box::new(dir)));
    if let Some((s, guard)) = pg_store(test).await {
        v.push(("postgres", s, Box::new(guard)));
    }
    v
}

/// Serve `app` (in dev mode, pointed at `engine`'s HTTP API) at `/api`
/// and sync it with `engine`, as `durafn dev -u` would.
#[allow(dead_code)]
pub async fn sync_handler(engine: &durafn::Engine, app: durafn::serve::Handler) {
    let executor = listen(engine.router()).await;
    let url = listen(app.dev(true).api_base(&executor).router_at("/api")).await;
    engine.sync_app(&format!("{url}/api")).await.unwrap();
}

/// Send `event` to `engine` and wait up to `secs` seconds for the run it
/// starts to end.
#[allow(dead_code)]
pub async fn run_to_end(
    engine: &durafn::Engine,
    event: durafn::Event,
    secs: u64,
) -> durafn::store::RunDetail {
    let sent = engine.send(event).await.unwrap();
    engine
        .wait_for_run(&sent.runs[0], std::time::Duration::from_secs(secs))
        .await
        .unwrap()
}
