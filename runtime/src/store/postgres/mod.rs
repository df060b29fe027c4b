//! PostgreSQL: several engine processes on one database.
//!
//! Every process may claim any due run; claims lock rows with `FOR UPDATE
//! SKIP LOCKED`, so two processes never take the same run, and the lease's
//! generation fences a process whose lease was taken over. Each operation
//! is one transaction on a pooled connection (a step's commit is one
//! statement); PostgreSQL's own group commit lets concurrent commits share
//! a WAL flush. Transactions that make runs due send `NOTIFY`; every
//! process listens and wakes its worker at once, polling only as a
//! fallback. Migrations run under an advisory lock at connect.
//!
//! ```no_run
//! # async fn demo() -> Result<(), durafn_runtime::store::StoreError> {
//! let store = durafn_runtime::store::PgStore::connect("postgres://app@db.internal/durafn").await?;
//! # Ok(()) }
//! ```

mod batch;
mod schema;
mod sql;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;
use tokio_postgres::NoTls;

use super::*;

/// Options of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The schema that holds durafn's tables (created if missing).
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long to keep trying to reach the server at connect.
    pub connect_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: "durafn".into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// A PostgreSQL-backed [`Store`].
pub struct PgStore {
    pool: Pool,
    commits: batch::Batcher,
    /// Heartbeats' own connections: a busy pool must not starve a lease.
    beats: Pool,
    schema: String,
    channel: String,
    wake: Arc<Notify>,
    _listener: tokio::task::JoinHandle<()>,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                StoreError::Conflict(e.to_string())
            }
            _ => StoreError::Backend(describe(&e)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Backend(format!("postgres: {other}")),
        }
    }
}

/// A PostgreSQL error with its cause and, where there is one, what to do.
fn describe(e: &tokio_postgres::Error) -> String {
    use tokio_postgres::error::SqlState;
    let hint = match e.code() {
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            "; check the user and password in the database URL"
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
            "; create the database first (`createdb <name>`), or name an existing one in the URL"
        }
        _ => "",
    };
    match e.as_db_error() {
        Some(db) => format!("postgres: {}{hint}", db.message()),
        None => format!("postgres: {e}{hint}"),
    }
}

/// Whether an error is one that waiting may cure (the server is not up yet).
fn retriable_at_connect(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none()
        || e.code() == Some(&tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW)
}

impl PgStore {
    /// Connect to `url` (`postgres://user:password@host:port/database`),
    /// with the default options.
    pub async fn connect(url: &str) -> StoreResult<PgStore> {
        PgStore::connect_with(url, PgOptions::default()).await
    }

    /// Connect, create the schema or migrate it (under an advisory lock),
    /// and start listening for wake-ups. An unreachable server is retried
    /// with backoff up to `connect_timeout`, with a log line per try; wrong
    /// credentials or a missing database fail at once.
    pub async fn connect_with(url: &str, options: PgOptions) -> StoreResult<PgStore> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::backend(format!("`{url}` is not a PostgreSQL URL: {e}")))?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(StoreError::backend(
                "postgres: the URL asks for TLS (sslmode=require), which durafn does not speak \
                 to PostgreSQL yet; connect over a private network or a local TLS-terminating \
                 proxy, with sslmode=disable or sslmode=prefer",
            ));
        }
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut delay = Duration::from_millis(100);
        let (mut client, connection) = loop {
            match config.connect(NoTls).await {
                Ok(pair) => break pair,
                Err(e) if retriable_at_connect(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(
                        "cannot reach PostgreSQL ({}); retrying in {delay:?}",
                        describe(&e)
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(StoreError::Backend(describe(&e))),
            }
        };
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        schema::migrate(&mut client, &options.schema).await?;
        drop(client);
        driver.abort();

        config.options(format!(
            "-c search_path={}",
            schema::quote_ident(&options.schema)
        ));
        let pool = |manager, size| {
            Pool::builder(manager)
                .max_size(size)
                .build()
                .map_err(|e| StoreError::backend(format!("postgres pool: {e}")))
        };
        let manager_config = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let beats = pool(
            Manager::from_config(config.clone(), NoTls, manager_config()),
            2,
        )?;
        let pool = pool(
            Manager::from_config(config.clone(), NoTls, manager_config()),
            options.pool_size.max(2),
        )?;
        let channel = format!("durafn_wake_{}", schema::lock_key_hex(&options.schema));
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(config, channel.clone(), wake.clone()));
        Ok(PgStore {
            commits: batch::Batcher::start(pool.clone()),
            pool,
            beats,
            schema: options.schema,
            channel,
            wake,
            _listener: listener,
        })
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Client> {
        Ok(self.pool.get().await?)
    }

    /// Tell every process listening on this database that runs are due.
    async fn notify(&self, c: &impl deadpool_postgres::GenericClient) -> StoreResult<()> {
        c.execute(&format!("NOTIFY {}", self.channel), &[]).await?;
        Ok(())
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self._listener.abort();
    }
}

/// Keep a `LISTEN` connection open (reconnecting with backoff) and wake
/// `wake` on every notification.
async fn listen(config: tokio_postgres::Config, channel: String, wake: Arc<Notify>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                delay = Duration::from_millis(100);
                let sql = format!("LISTEN {channel}");
                let listening = client.batch_execute(&sql);
                let mut listening = std::pin::pin!(listening);
                let mut ok = false;
                // The connection must be polled for the LISTEN to complete,
                // and then for the notifications.
                loop {
                    tokio::select! {
                        r = &mut listening, if !ok => {
                            if r.is_err() { break; }
                            ok = true;
                            // Something may have become due while we were away.
                            wake.notify_one();
                        }
                        m = std::future::poll_fn(|cx| connection.poll_message(cx)) => match m {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => wake.notify_one(),
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        },
                    }
                }
                tracing::warn!("the PostgreSQL LISTEN connection closed; reconnecting");
            }
            Err(e) => tracing::warn!(
                "cannot listen on PostgreSQL ({}); retrying in {delay:?}",
                describe(&e)
            ),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Run `$body` in a transaction on a pooled connection and commit it.
macro_rules! in_tx {
    ($self:ident, |$tx:ident| $body:expr) => {{
        let mut client = $self.client().await?;
        let $tx = client.transaction().await?;
        let r = $body;
        $tx.commit().await?;
        r
    }};
}

impl Store for PgStore {
    fn describe(&self) -> String {
        format!("postgres:{}", self.schema)
    }

    fn ingest(&self, batch: IngestBatch) -> BoxFuture<'_, StoreResult<IngestReceipt>> {
        Box::pin(async move {
            Ok(in_tx!(self, |tx| {
                let mut receipt = IngestReceipt::default();
                sql::ingest(&tx, &batch.events, batch.now_ms, &mut receipt).await?;
                if receipt.events.iter().any(|e| e.new) {
                    self.notify(&tx).await?;
                }
                receipt
            }))
        })
    }

    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, StoreResult<Vec<ClaimedRun>>> {
        Box::pin(async move { Ok(in_tx!(self, |tx| sql::claim(&tx, &req).await?)) })
    }

    fn heartbeat(&self, lease: &Lease, until_ms: i64) -> BoxFuture<'_, StoreResult<()>> {
        let lease = lease.clone();
        Box::pin(async move {
            let client = self.beats.get().await?;
            sql::heartbeat(&client, &lease, until_ms).await
        })
    }

    fn commit_step(&self, lease: &Lease, commit: StepCommit) -> BoxFuture<'_, StoreResult<()>> {
        let lease = lease.clone();
        Box::pin(async move { self.commits.commit(lease, commit).await })
    }

    fn suspend(
        &self,
        lease: &Lease,
        suspension: Suspension,
        now_ms: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let lease = lease.clone();
        Box::pin(async move {
            in_tx!(self, |tx| {
                if sql::suspend(&tx, &lease, &suspension, now_ms).await? {
                    self.notify(&tx).await?;
                }
            });
            Ok(())
        })
    }

    fn finish(
        &self,
        lease: &Lease,
        finish: Finish,
        now_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Finished>> {
        let lease = lease.clone();
        Box::pin(async move {
            Ok(in_tx!(self, |tx| {
                let finished = sql::finish(&tx, &lease, &finish, now_ms).await?;
                if !finished.woke.is_empty() {
                    self.notify(&tx).await?;
                }
                finished
            }))
        })
    }

    fn cancel(&self, run_id: &str, now_ms: i64) -> BoxFuture<'_, StoreResult<Option<RunStatus>>> {
        let run_id = run_id.to_string();
        Box::pin(async move {
            Ok(in_tx!(self, |tx| {
                let (was, woke) = sql::cancel(&tx, &run_id, now_ms).await?;
                if woke {
                    self.notify(&tx).await?;
                }
                was
            }))
        })
    }

    fn restart(&self, restart: Restart) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            Ok(in_tx!(self, |tx| {
                let made = sql::restart(&tx, &restart).await?;
                if made {
                    self.notify(&tx).await?;
                }
                made
            }))
        })
    }

    fn release_leases(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let client = self.client().await?;
            client
                .execute(
                    "UPDATE runs SET lease_until = 0 WHERE status = 'running'",
                    &[],
                )
                .await?;
            Ok(())
        })
    }

    fn put_app(&self, app: AppRecord) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let client = self.client().await?;
            sql::put_app(&client, &app).await
        })
    }

    fn apps(&self) -> BoxFuture<'_, StoreResult<Vec<AppRecord>>> {
        Box::pin(async move { sql::apps(&self.client().await?).await })
    }

    fn run(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<RunDetail>>> {
        let run_id = run_id.to_string();
        Box::pin(async move { sql::run_detail(&self.client().await?, &run_id).await })
    }

    fn run_record(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<RunRecord>>> {
        let run_id = run_id.to_string();
        Box::pin(async move { sql::load_run(&self.client().await?, &run_id).await })
    }

    fn journal(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<Journal>>> {
        let run_id = run_id.to_string();
        Box::pin(async move {
            let c = self.client().await?;
            match sql::load_run(&c, &run_id).await? {
                Some(_) => Ok(sql::journals(&c, std::slice::from_ref(&run_id))
                    .await?
                    .remove(&run_id)
                    .or_else(|| Some(Journal::new()))),
                None => Ok(None),
            }
        })
    }

    fn purge(&self, before_ms: i64, limit: usize) -> BoxFuture<'_, StoreResult<Purged>> {
        Box::pin(async move { Ok(in_tx!(self, |tx| sql::purge(&tx, before_ms, limit).await?)) })
    }

    fn list_runs(&self, filter: RunFilter) -> BoxFuture<'_, StoreResult<Vec<RunRecord>>> {
        Box::pin(async move { sql::list_runs(&self.client().await?, &filter).await })
    }

    fn list_events(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> BoxFuture<'_, StoreResult<Vec<EventRecord>>> {
        Box::pin(
            async move { sql::list_events(&self.client().await?, limit, before.as_ref()).await },
        )
    }

    fn next_wake(
        &self,
        functions: Vec<String>,
        unknown_timeout_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Option<i64>>> {
        Box::pin(async move {
            sql::next_wake(&self.client().await?, &functions, unknown_timeout_ms).await
        })
    }

    fn wakeups(&self) -> Option<Arc<Notify>> {
        Some(self.wake.clone())
    }
}
