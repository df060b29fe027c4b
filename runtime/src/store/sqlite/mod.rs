//! The embedded default: one SQLite file in WAL mode.
//!
//! A single writer thread owns the write connection. Writes queue up while
//! a transaction commits; the next transaction takes all of them (group
//! commit), so concurrent runs share one fsync. Each write runs under its
//! own savepoint: one that fails is rolled back alone and the others
//! commit. Reads use their own connections on the blocking pool, so they
//! never wait behind the writer.
//!
//! Journals are append-only rows keyed by `(run_id, seq)`: a step's commit
//! is one sequential insert, and a run's journal is one range scan.
//!
//! One engine process per file: a lock on `<file>.lock` refuses a second
//! one with a clear error, and the `unix-excl` VFS keeps the file to this
//! process. PostgreSQL is the store for several engine processes.

mod read;
mod schema;
mod sql;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::oneshot;

use super::*;

/// How hard a commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// fsync on every commit: survives power loss (SQLite `synchronous=FULL`).
    Full,
    /// No fsync on commit: survives a crash or `kill -9` of the process, not
    /// a power loss (SQLite `synchronous=NORMAL` in WAL mode).
    Normal,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::Conflict(e.to_string()),
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

/// SQLite's `unix-excl` VFS: this process holds the file exclusively, so
/// the connections of this process (the writer and its readers) share the
/// WAL index without a file lock per transaction (six `fcntl` calls a
/// commit otherwise, a quarter of a commit's cost without fsync), and any
/// other process is refused.
const VFS: &str = "unix-excl";

/// A write, run by the writer thread inside the open transaction.
trait Write: Send {
    /// Apply the write; whether it may be committed.
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Whether a failure of the write leaves nothing behind without a
    /// savepoint of its own (one statement, or a refusal before the first
    /// write): the hot path of a step's commit needs none.
    fn atomic(&self) -> bool;
    /// Answer the caller once the transaction's fate is known.
    fn complete(self: Box<Self>, commit: StoreResult<()>);
}

struct Job<R, F> {
    f: Option<F>,
    atomic: bool,
    result: Option<StoreResult<R>>,
    reply: oneshot::Sender<StoreResult<R>>,
}

impl<R, F> Write for Job<R, F>
where
    R: Send,
    F: FnOnce(&Connection) -> StoreResult<R> + Send,
{
    fn apply(&mut self, conn: &Connection) -> bool {
        let f = self.f.take().expect("a write is applied once");
        let r = f(conn);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn atomic(&self) -> bool {
        self.atomic
    }

    fn complete(self: Box<Self>, commit: StoreResult<()>) {
        let r = match (commit, self.result) {
            (Ok(()), Some(r)) => r,
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::backend("the write was not applied")),
        };
        let _ = self.reply.send(r);
    }
}

/// A SQLite-backed [`Store`].
pub struct SqliteStore {
    writes: mpsc::Sender<Box<dyn Write>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    /// The writer thread, joined when the store is dropped.
    writer: Option<thread::JoinHandle<()>>,
    /// Held for the store's life: one engine process per file.
    _lock: File,
}

impl Drop for SqliteStore {
    /// Close the readers, then let the writer finish the writes queued and
    /// close last: SQLite then copies the write-ahead log into the file
    /// and deletes it, and the file is whole on its own before the lock
    /// lets another process open it.
    fn drop(&mut self) {
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.writes = mpsc::channel().0;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        // A read that ended meanwhile put its connection back.
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl SqliteStore {
    /// Open (or create) the file, migrate it, and start the writer thread.
    pub fn open(path: impl AsRef<Path>, sync: Sync) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let lock = lock_file(&path)?;
        let mut conn = Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), VFS)
            .map_err(|e| StoreError::backend(format!("cannot open {}: {e}", path.display())))?;
        conn.execute_batch(&format!(
            // Incremental vacuum takes effect on a new file only (before
            // its first table): retention gives space back to the disk.
            "PRAGMA auto_vacuum=INCREMENTAL; PRAGMA journal_mode=WAL; PRAGMA synchronous={}; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000; PRAGMA cache_size=-8000;",
            if sync == Sync::Full { "FULL" } else { "NORMAL" }
        ))
        .map_err(|e| StoreError::backend(format!("cannot set up {}: {e}", path.display())))?;
        // Every statement of the store stays prepared (the default of 16 is
        // fewer than the writer uses, which would re-prepare in a cycle).
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)
            .map_err(|e| StoreError::backend(format!("{}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel::<Box<dyn Write>>();
        let writer = thread::Builder::new()
            .name("durafn-sqlite".into())
            .spawn(move || writer(conn, rx))
            .map_err(StoreError::backend)?;
        Ok(SqliteStore {
            writes: tx,
            readers: Arc::default(),
            path,
            writer: Some(writer),
            _lock: lock,
        })
    }

    /// Queue a write for the next group commit. It is queued before the
    /// future is first polled.
    fn write<R, F>(&self, f: F) -> BoxFuture<'static, StoreResult<R>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        self.queue(false, f)
    }

    /// A write that is atomic on its own (see [`Write::atomic`]).
    fn write_atomic<R, F>(&self, f: F) -> BoxFuture<'static, StoreResult<R>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        self.queue(true, f)
    }

    fn queue<R, F>(&self, atomic: bool, f: F) -> BoxFuture<'static, StoreResult<R>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(Job {
            f: Some(f),
            atomic,
            result: None,
            reply,
        });
        let sent = self.writes.send(job).is_ok();
        Box::pin(async move {
            let stopped = || StoreError::backend("the sqlite writer thread stopped");
            if !sent {
                return Err(stopped());
            }
            rx.await.map_err(|_| stopped())?
        })
    }

    /// Run a read on a connection of its own, off the async threads.
    fn read<R, F>(&self, f: F) -> BoxFuture<'static, StoreResult<R>>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let taken = readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let conn = match taken {
                    Some(c) => c,
                    None => open_reader(&path)?,
                };
                let r = f(&conn);
                let mut pool = readers.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < 4 {
                    pool.push(conn);
                }
                r
            })
            .await
            .map_err(StoreError::backend)?
        })
    }
}

fn lock_file(path: &Path) -> StoreResult<File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::backend(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::backend(format!(
            "{} is in use by another engine process; one engine process per SQLite file (use PostgreSQL for several)",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::backend(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

fn open_reader(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        VFS,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Box<dyn Write>>) {
    // While several runs are committing at once, wait this long for more
    // of them before paying for one fsync (adaptive group commit: a single
    // sequential run never waits).
    const WINDOW: Duration = Duration::from_micros(300);
    const MAX_BATCH: usize = 1024;
    let mut last_batch = 1;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now()
            + if last_batch > 1 {
                WINDOW
            } else {
                Duration::ZERO
            };
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left) {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
        }
        last_batch = batch.len();
        commit_batch(&mut conn, batch);
    }
    // The store is dropped: move the log into the file now, so that closing
    // this last connection deletes the log.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "sqlite: the final checkpoint failed; the next open replays the log");
    }
}

/// One transaction for the batch; each write under a savepoint of its own,
/// unless it is atomic alone or the only one (its failure then rolls the
/// transaction back).
fn commit_batch(conn: &mut Connection, mut batch: Vec<Box<dyn Write>>) {
    let single = batch.len() == 1;
    // Prepared once: parsing these for every transaction shows in the
    // cost of a commit without fsync.
    let run = |sql: &str| -> StoreResult<()> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    let result = (|| -> StoreResult<()> {
        run("BEGIN IMMEDIATE")?;
        let mut any = false;
        for w in &mut batch {
            if single || w.atomic() {
                if w.apply(conn) {
                    any = true;
                } else if conn.is_autocommit() {
                    // SQLite rolled the whole transaction back (I/O, a full
                    // disk): the writes before this one are gone too.
                    return Err(StoreError::backend("the transaction was rolled back"));
                }
                continue;
            }
            run("SAVEPOINT w")?;
            if w.apply(conn) {
                run("RELEASE w")?;
                any = true;
            } else {
                run("ROLLBACK TO w")?;
                run("RELEASE w")?;
            }
        }
        run(if any { "COMMIT" } else { "ROLLBACK" })
    })();
    if let Err(e) = &result {
        tracing::error!(error = %e, "a sqlite transaction failed; its writes are lost");
        let _ = conn.execute_batch("ROLLBACK");
    }
    for w in batch {
        w.complete(result.clone());
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn ingest(&self, batch: IngestBatch) -> BoxFuture<'_, StoreResult<IngestReceipt>> {
        self.write(move |c| {
            let mut receipt = IngestReceipt::default();
            sql::ingest(c, &batch.events, batch.now_ms, &mut receipt)?;
            Ok(receipt)
        })
    }

    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, StoreResult<Vec<ClaimedRun>>> {
        self.write(move |c| sql::claim(c, &req))
    }

    fn heartbeat(&self, lease: &Lease, until_ms: i64) -> BoxFuture<'_, StoreResult<()>> {
        let lease = lease.clone();
        self.write_atomic(move |c| sql::heartbeat(c, &lease, until_ms))
    }

    fn commit_step(&self, lease: &Lease, commit: StepCommit) -> BoxFuture<'_, StoreResult<()>> {
        let lease = lease.clone();
        // One fenced insert; a retried step also marks its attempts done.
        if commit.attempts > 1 || commit.reset_fn_attempt {
            self.write(move |c| sql::commit_step(c, &lease, &commit))
        } else {
            self.write_atomic(move |c| sql::commit_step(c, &lease, &commit))
        }
    }

    fn suspend(
        &self,
        lease: &Lease,
        suspension: Suspension,
        now_ms: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let lease = lease.clone();
        self.write(move |c| sql::suspend(c, &lease, &suspension, now_ms))
    }

    fn finish(
        &self,
        lease: &Lease,
        finish: Finish,
        now_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Finished>> {
        let lease = lease.clone();
        self.write(move |c| sql::finish(c, &lease, &finish, now_ms))
    }

    fn cancel(&self, run_id: &str, now_ms: i64) -> BoxFuture<'_, StoreResult<Option<RunStatus>>> {
        let run_id = run_id.to_string();
        self.write(move |c| sql::cancel_by_request(c, &run_id, now_ms))
    }

    fn restart(&self, restart: Restart) -> BoxFuture<'_, StoreResult<bool>> {
        self.write(move |c| sql::restart(c, &restart))
    }

    fn release_leases(&self) -> BoxFuture<'_, StoreResult<()>> {
        self.write(|c| {
            c.execute(
                "UPDATE runs SET lease_until = 0 WHERE status = 'running'",
                [],
            )?;
            Ok(())
        })
    }

    fn put_app(&self, app: AppRecord) -> BoxFuture<'_, StoreResult<()>> {
        self.write(move |c| sql::put_app(c, &app))
    }

    fn apps(&self) -> BoxFuture<'_, StoreResult<Vec<AppRecord>>> {
        self.read(read::apps)
    }

    fn run(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<RunDetail>>> {
        let run_id = run_id.to_string();
        self.read(move |c| read::run_detail(c, &run_id))
    }

    fn run_record(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<RunRecord>>> {
        let run_id = run_id.to_string();
        self.read(move |c| sql::load_run(c, &run_id))
    }

    fn journal(&self, run_id: &str) -> BoxFuture<'_, StoreResult<Option<Journal>>> {
        let run_id = run_id.to_string();
        self.read(move |c| match sql::load_run(c, &run_id)? {
            Some(_) => sql::load_journal(c, &run_id).map(Some),
            None => Ok(None),
        })
    }

    fn list_runs(&self, filter: RunFilter) -> BoxFuture<'_, StoreResult<Vec<RunRecord>>> {
        self.read(move |c| read::list_runs(c, &filter))
    }

    fn purge(&self, before_ms: i64, limit: usize) -> BoxFuture<'_, StoreResult<Purged>> {
        self.write(move |c| sql::purge(c, before_ms, limit))
    }

    fn list_events(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> BoxFuture<'_, StoreResult<Vec<EventRecord>>> {
        self.read(move |c| read::list_events(c, limit, before.as_ref()))
    }

    fn next_wake(
        &self,
        functions: Vec<String>,
        unknown_timeout_ms: i64,
    ) -> BoxFuture<'_, StoreResult<Option<i64>>> {
        self.read(move |c| {
            let known = sql::function_list(&functions);
            let w: Option<i64> = c
                .prepare_cached(
                    "SELECT MIN(CASE WHEN instr(?1, char(10) || fn_id || char(10)) > 0 THEN wake_at
                                ELSE MAX(wake_at, created_ms + ?2) END)
                     FROM runs WHERE status IN ('queued', 'sleeping')",
                )?
                .query_row(params![known, unknown_timeout_ms], |r| r.get(0))?;
            Ok(w)
        })
    }
}
