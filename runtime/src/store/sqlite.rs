//! The embedded default: one SQLite file in WAL mode.
//!
//! A single writer thread owns the connection. Ops queue up while a
//! transaction commits; the next transaction takes all of them (group
//! commit), so concurrent runs share one fsync. Each op runs in its own
//! savepoint, so one failing op does not undo the others.
//!
//! The file is opened in exclusive locking mode: one engine process per
//! file (a second one gets a clear "locked" error). PostgreSQL is the store
//! for several engine processes.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::oneshot;

use super::memory::split_outcome;
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

type Job = (Op, oneshot::Sender<StoreResult<Reply>>);

/// A SQLite-backed [`Store`].
pub struct SqliteStore {
    tx: mpsc::Sender<Job>,
    path: PathBuf,
}

/// Schema migrations, applied in order; `PRAGMA user_version` is the count
/// applied so far.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    event TEXT NOT NULL,
    ts INTEGER NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    fn_id TEXT NOT NULL,
    event_id TEXT NOT NULL REFERENCES events(id),
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    fn_attempt INTEGER NOT NULL DEFAULT 0,
    wake_at INTEGER,
    pending_sleep TEXT,
    lease_owner TEXT,
    lease_until INTEGER,
    output TEXT,
    error TEXT,
    created_ms INTEGER NOT NULL,
    ended_ms INTEGER
);
CREATE INDEX runs_due ON runs(status, wake_at);
CREATE INDEX runs_fn ON runs(fn_id, created_ms);
CREATE TABLE steps (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step_id TEXT NOT NULL,
    seq INTEGER,
    status TEXT NOT NULL,
    outcome TEXT,
    attempts INTEGER NOT NULL,
    error TEXT,
    started_ms INTEGER,
    ended_ms INTEGER,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;
"#];

impl SqliteStore {
    /// Open (or create) the file, migrate it, and start the writer thread.
    pub fn open(path: impl AsRef<Path>, sync: Sync) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={}; PRAGMA locking_mode=EXCLUSIVE; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=2000;",
            if sync == Sync::Full { "FULL" } else { "NORMAL" }
        ))
        .map_err(|e| StoreError(format!("cannot set up {}: {e}", path.display())))?;
        migrate(&mut conn).map_err(|e| StoreError(format!("{}: {}", path.display(), e.0)))?;
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("durafn-sqlite".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(SqliteStore { tx, path })
    }
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError(format!(
            "the database has schema version {version}, newer than this durafn knows ({}); upgrade durafn",
            MIGRATIONS.len()
        )));
    }
    if version < MIGRATIONS.len() {
        let tx = conn.transaction()?;
        for m in &MIGRATIONS[version..] {
            tx.execute_batch(m)?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    const MAX_BATCH: usize = 1024;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut replies: Vec<StoreResult<Reply>> = Vec::with_capacity(batch.len());
        let committed = (|| -> StoreResult<()> {
            let mut tx =
                conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (op, _) in &batch {
                let mut sp = tx.savepoint()?;
                match apply(&sp, op.clone()) {
                    Ok(r) => {
                        sp.commit()?;
                        replies.push(Ok(r));
                    }
                    Err(e) => {
                        sp.rollback()?;
                        drop(sp);
                        replies.push(Err(e));
                    }
                }
            }
            let _ = &mut tx;
            tx.commit()?;
            Ok(())
        })();
        match committed {
            Ok(()) => {
                for ((_, reply_to), r) in batch.into_iter().zip(replies) {
                    let _ = reply_to.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sqlite commit failed");
                for (_, reply_to) in batch {
                    let _ = reply_to.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Store for SqliteStore {
    fn apply(&self, op: Op) -> BoxFuture<'_, StoreResult<Reply>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send((op, tx));
        Box::pin(async move {
            if sent.is_err() {
                return Err(StoreError("the sqlite writer thread stopped".into()));
            }
            rx.await
                .map_err(|_| StoreError("the sqlite writer thread stopped".into()))?
        })
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

fn to_json(v: &Value) -> String {
    v.to_string()
}

fn from_json(s: Option<String>) -> StoreResult<Option<Value>> {
    s.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(StoreError::from)
}

fn status_of(s: &str) -> StoreResult<RunStatus> {
    RunStatus::parse(s).ok_or_else(|| StoreError(format!("corrupt run status `{s}`")))
}

const RUN_COLS: &str = "id, fn_id, event_id, status, attempt, fn_attempt, wake_at, pending_sleep, output, error, created_ms, ended_ms";

fn run_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(RunRecord, String, Option<String>, Option<String>)> {
    Ok((
        RunRecord {
            id: r.get(0)?,
            fn_id: r.get(1)?,
            event_id: r.get(2)?,
            status: RunStatus::Queued,
            attempt: r.get(4)?,
            fn_attempt: r.get(5)?,
            wake_at: r.get(6)?,
            pending_sleep: r.get(7)?,
            output: None,
            error: None,
            created_ms: r.get(10)?,
            ended_ms: r.get(11)?,
        },
        r.get(3)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn finish_row(row: (RunRecord, String, Option<String>, Option<String>)) -> StoreResult<RunRecord> {
    let (mut rec, status, output, error) = row;
    rec.status = status_of(&status)?;
    rec.output = from_json(output)?;
    rec.error = from_json(error)?;
    Ok(rec)
}

fn load_run(tx: &Connection, id: &str) -> StoreResult<Option<RunRecord>> {
    let mut st = tx.prepare_cached(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"))?;
    let row = st.query_row([id], run_row).optional()?;
    row.map(finish_row).transpose()
}

fn load_journal(tx: &Connection, run_id: &str) -> StoreResult<Journal> {
    let mut st = tx.prepare_cached(
        "SELECT step_id, outcome FROM steps WHERE run_id = ?1 AND outcome IS NOT NULL ORDER BY seq",
    )?;
    let mut rows = st.query([run_id])?;
    let mut j = Journal::new();
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let outcome: String = r.get(1)?;
        let outcome: Outcome = serde_json::from_str(&outcome).map_err(|e| {
            StoreError(format!("corrupt journal entry `{id}` of run {run_id}: {e}"))
        })?;
        j.insert(StepId::from_readable(id), outcome);
    }
    Ok(j)
}

fn apply(tx: &Connection, op: Op) -> StoreResult<Reply> {
    match op {
        Op::Ingest {
            event_id,
            name,
            event,
            ts,
            runs,
            now,
        } => {
            let n = tx
                .prepare_cached("INSERT OR IGNORE INTO events (id, name, event, ts, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![event_id, name, to_json(&event), ts, now])?;
            if n == 0 {
                return Ok(Reply::Ingested { new: false });
            }
            let mut st = tx.prepare_cached(
                "INSERT INTO runs (id, fn_id, event_id, status, wake_at, created_ms) VALUES (?1, ?2, ?3, 'queued', ?4, ?4)",
            )?;
            for r in runs {
                st.execute(params![r.id, r.fn_id, event_id, now])?;
            }
            Ok(Reply::Ingested { new: true })
        }
        Op::Claim {
            now,
            limit,
            owner,
            lease_ms,
        } => {
            let ids: Vec<String> = {
                let mut st = tx.prepare_cached(
                    "SELECT id FROM runs WHERE status IN ('queued', 'sleeping') AND wake_at <= ?1
                     UNION ALL
                     SELECT id FROM runs WHERE status = 'running' AND lease_until < ?1
                     LIMIT ?2",
                )?;
                let rows = st.query_map(params![now, limit as i64], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(mut run) = load_run(tx, &id)? else {
                    continue;
                };
                if let Some(sleep) = run.pending_sleep.take() {
                    let outcome = serde_json::to_string(&Outcome::null())?;
                    let seq: i64 = tx
                        .prepare_cached(
                            "SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE run_id = ?1",
                        )?
                        .query_row([&id], |r| r.get(0))?;
                    tx.prepare_cached(
                        "INSERT INTO steps (run_id, step_id, seq, status, outcome, attempts, started_ms, ended_ms)
                         VALUES (?1, ?2, ?3, 'completed', ?4, 1, ?5, ?5)
                         ON CONFLICT (run_id, step_id) DO UPDATE SET seq = ?3, status = 'completed', outcome = ?4, ended_ms = ?5",
                    )?
                    .execute(params![id, sleep, seq, outcome, now])?;
                }
                tx.prepare_cached(
                    "UPDATE runs SET status = 'running', lease_owner = ?2, lease_until = ?3, wake_at = NULL, pending_sleep = NULL WHERE id = ?1",
                )?
                .execute(params![id, owner, now + lease_ms])?;
                run.status = RunStatus::Running;
                run.wake_at = None;
                let event: String = tx
                    .prepare_cached("SELECT e.event FROM events e JOIN runs r ON r.event_id = e.id WHERE r.id = ?1")?
                    .query_row([&id], |r| r.get(0))?;
                let event: Value = serde_json::from_str(&event)?;
                let journal = load_journal(tx, &id)?;
                out.push(Claimed {
                    run,
                    event,
                    journal,
                });
            }
            Ok(Reply::Claimed(out))
        }
        Op::Append {
            write,
            owner,
            extend_lease_to,
        } => {
            let n = tx
                .prepare_cached(
                    "UPDATE runs SET lease_until = COALESCE(?3, lease_until) WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
                )?
                .execute(params![write.run_id, owner, extend_lease_to])?;
            if n == 0 {
                return Ok(Reply::Rejected(
                    "the run is not running under this lease".into(),
                ));
            }
            let status = match write.outcome {
                Outcome::Error { .. } => "failed",
                _ => "completed",
            };
            let (_, error) = split_outcome(&write.outcome);
            tx.prepare_cached(
                "INSERT INTO steps (run_id, step_id, seq, status, outcome, attempts, error, started_ms, ended_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (run_id, step_id) DO UPDATE SET seq = ?3, status = ?4, outcome = ?5, attempts = ?6, error = ?7, ended_ms = ?9",
            )?
            .execute(params![
                write.run_id,
                write.step.as_str(),
                write.seq as i64,
                status,
                serde_json::to_string(&write.outcome)?,
                write.attempts,
                error.map(|e| e.to_string()),
                write.started_ms,
                write.ended_ms
            ])?;
            Ok(Reply::Done)
        }
        Op::Suspend(s) => {
            let n = tx
                .prepare_cached(
                    "UPDATE runs SET status = 'sleeping', wake_at = ?2, attempt = ?3, fn_attempt = ?4, pending_sleep = ?5, lease_owner = NULL, lease_until = NULL
                     WHERE id = ?1 AND status = 'running'",
                )?
                .execute(params![s.run_id, s.wake_at, s.attempt, s.fn_attempt, s.pending_sleep.as_ref().map(|p| p.as_str())])?;
            if n == 0 {
                return Ok(Reply::Rejected("the run is not running".into()));
            }
            if let Some((step, attempt, error, started)) = &s.failed_attempt {
                tx.prepare_cached(
                    "INSERT INTO steps (run_id, step_id, status, attempts, error, started_ms) VALUES (?1, ?2, 'retrying', ?3, ?4, ?5)
                     ON CONFLICT (run_id, step_id) DO UPDATE SET status = 'retrying', attempts = ?3, error = ?4",
                )?
                .execute(params![s.run_id, step.as_str(), attempt + 1, error.to_string(), started])?;
            }
            if let Some(sleep) = &s.pending_sleep {
                tx.prepare_cached(
                    "INSERT INTO steps (run_id, step_id, status, attempts, started_ms) VALUES (?1, ?2, 'sleeping', 1, ?3)
                     ON CONFLICT (run_id, step_id) DO NOTHING",
                )?
                .execute(params![s.run_id, sleep.as_str(), s.now])?;
            }
            Ok(Reply::Done)
        }
        Op::Finish {
            run_id,
            owner,
            status,
            output,
            error,
            now,
        } => {
            let n = tx
                .prepare_cached(
                    "UPDATE runs SET status = ?3, output = ?4, error = ?5, ended_ms = ?6, lease_owner = NULL, lease_until = NULL, wake_at = NULL
                     WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
                )?
                .execute(params![run_id, owner, status.as_str(), output.map(|v| v.to_string()), error.map(|v| v.to_string()), now])?;
            Ok(if n == 0 {
                Reply::Rejected("the run is not running under this lease".into())
            } else {
                Reply::Done
            })
        }
        Op::Cancel { run_id, now } => {
            let was: Option<String> = tx
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
                .query_row([&run_id], |r| r.get(0))
                .optional()?;
            let Some(was) = was else {
                return Ok(Reply::Cancelled { was: None });
            };
            let was = status_of(&was)?;
            if !was.is_final() {
                tx.prepare_cached(
                    "UPDATE runs SET status = 'cancelled', ended_ms = ?2, wake_at = NULL, lease_owner = NULL, lease_until = NULL WHERE id = ?1",
                )?
                .execute(params![run_id, now])?;
            }
            Ok(Reply::Cancelled { was: Some(was) })
        }
        Op::ListRuns(f) => {
            let mut st = tx.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM runs WHERE (?1 IS NULL OR fn_id = ?1) AND (?2 IS NULL OR status = ?2) ORDER BY created_ms DESC, rowid DESC LIMIT ?3"
            ))?;
            let rows = st.query_map(
                params![
                    f.function,
                    f.status.map(|s| s.as_str()),
                    f.limit.unwrap_or(100) as i64
                ],
                run_row,
            )?;
            let mut out = Vec::new();
            for r in rows {
                out.push(finish_row(r?)?);
            }
            Ok(Reply::Runs(out))
        }
        Op::GetRun { run_id } => {
            let Some(run) = load_run(tx, &run_id)? else {
                return Ok(Reply::Run(None));
            };
            let event: String = tx
                .prepare_cached("SELECT event FROM events WHERE id = ?1")?
                .query_row([&run.event_id], |r| r.get(0))?;
            let mut st = tx.prepare_cached(
                "SELECT step_id, status, attempts, started_ms, ended_ms, outcome, error FROM steps WHERE run_id = ?1 ORDER BY seq IS NULL, seq, started_ms",
            )?;
            let rows = st.query_map([&run_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })?;
            let mut steps = Vec::new();
            for r in rows {
                let (id, status, attempts, started_ms, ended_ms, outcome, error) = r?;
                let outcome: Option<Outcome> =
                    outcome.map(|o| serde_json::from_str(&o)).transpose()?;
                let output = match outcome {
                    Some(Outcome::Data { data }) => Some(data),
                    _ => None,
                };
                steps.push(StepRecord {
                    id,
                    status,
                    attempts,
                    started_ms,
                    ended_ms,
                    output,
                    error: from_json(error)?,
                });
            }
            Ok(Reply::Run(Some(Box::new(RunDetail {
                run,
                event: serde_json::from_str(&event)?,
                steps,
            }))))
        }
        Op::NextWake => {
            let w: Option<i64> = tx
                .prepare_cached(
                    "SELECT MIN(wake_at) FROM runs WHERE status IN ('queued', 'sleeping')",
                )?
                .query_row([], |r| r.get(0))?;
            Ok(Reply::NextWake(w))
        }
        Op::ReleaseLeases => {
            tx.execute(
                "UPDATE runs SET lease_until = 0 WHERE status = 'running'",
                [],
            )?;
            Ok(Reply::Done)
        }
    }
}
