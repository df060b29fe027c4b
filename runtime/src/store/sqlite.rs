//! The embedded default: one SQLite file in WAL mode.
//!
//! A single writer thread owns the connection. Ops queue up while a
//! transaction commits; the next transaction takes all of them (group
//! commit), so concurrent runs share one fsync. If an op fails, the batch
//! is rolled back and its ops are applied again one transaction each, so
//! one failing op does not undo the others.
//!
//! Journals are append-only rows keyed by `(run_id, seq)`: a step's commit
//! is one sequential insert, and a run's journal is one range scan.
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
    pending_outcome TEXT,
    parent_run TEXT,
    parent_step TEXT,
    lease_owner TEXT,
    lease_until INTEGER,
    output TEXT,
    error TEXT,
    created_ms INTEGER NOT NULL,
    ended_ms INTEGER
);
CREATE INDEX runs_due ON runs(status, wake_at);
CREATE INDEX runs_fn ON runs(fn_id, created_ms);
CREATE TABLE journal (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step_id TEXT NOT NULL,
    name TEXT, -- readable name when step_id is hashed
    kind INTEGER NOT NULL, -- 0 data, 1 error, 2 null
    payload TEXT,
    attempts INTEGER NOT NULL,
    started_ms INTEGER,
    ended_ms INTEGER,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE waits (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    expr TEXT,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;
CREATE INDEX waits_event ON waits(event_name);
CREATE TABLE step_attempts (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    status TEXT NOT NULL, -- retrying, sleeping
    name TEXT,
    attempts INTEGER NOT NULL,
    error TEXT,
    started_ms INTEGER,
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
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={}; PRAGMA locking_mode=EXCLUSIVE; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=2000; PRAGMA cache_size=-8000;",
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
    // While several runs are committing at once, wait this long for more
    // of them before paying for one fsync (adaptive group commit: a single
    // sequential run never waits).
    const WINDOW: std::time::Duration = std::time::Duration::from_micros(300);
    let mut last_batch = 1;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let deadline = std::time::Instant::now()
            + if last_batch > 1 {
                WINDOW
            } else {
                std::time::Duration::ZERO
            };
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
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
        let (ops, reply_to): (Vec<Op>, Vec<_>) = batch.into_iter().unzip();
        match commit_batch(&mut conn, &ops) {
            Ok(replies) => {
                for (tx, r) in reply_to.into_iter().zip(replies) {
                    let _ = tx.send(Ok(r));
                }
            }
            Err(e) if ops.len() == 1 => {
                if let Some(tx) = reply_to.into_iter().next() {
                    let _ = tx.send(Err(e));
                }
            }
            Err(_) => {
                // Isolate the failing op: one transaction each.
                for (op, tx) in ops.iter().zip(reply_to) {
                    let r =
                        commit_batch(&mut conn, std::slice::from_ref(op)).map(|mut r| r.remove(0));
                    let _ = tx.send(r);
                }
            }
        }
    }
}

fn commit_batch(conn: &mut Connection, ops: &[Op]) -> StoreResult<Vec<Reply>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut replies = Vec::with_capacity(ops.len());
    for op in ops {
        match apply(&tx, op) {
            Ok(r) => replies.push(r),
            Err(e) => {
                tracing::warn!(error = %e, "a store op failed; its batch is rolled back");
                return Err(e);
            }
        }
    }
    tx.commit()?;
    Ok(replies)
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

const DATA: i64 = 0;
const ERROR: i64 = 1;
const NULL: i64 = 2;

fn encode(o: &Outcome) -> StoreResult<(i64, Option<String>)> {
    Ok(match o {
        Outcome::Data { data } => (DATA, Some(data.to_string())),
        Outcome::Error { error } => (ERROR, Some(serde_json::to_string(error)?)),
        Outcome::Null(()) => (NULL, None),
    })
}

fn decode(run_id: &str, id: &str, kind: i64, payload: Option<String>) -> StoreResult<Outcome> {
    let corrupt =
        |e: String| StoreError(format!("corrupt journal entry `{id}` of run {run_id}: {e}"));
    Ok(match (kind, payload) {
        (DATA, Some(p)) => {
            Outcome::data(serde_json::from_str(&p).map_err(|e| corrupt(e.to_string()))?)
        }
        (ERROR, Some(p)) => {
            Outcome::error(serde_json::from_str(&p).map_err(|e| corrupt(e.to_string()))?)
        }
        (NULL, _) => Outcome::null(),
        (k, _) => return Err(corrupt(format!("unknown kind {k}"))),
    })
}

fn load_journal(tx: &Connection, run_id: &str) -> StoreResult<Journal> {
    let mut st = tx.prepare_cached(
        "SELECT step_id, kind, payload FROM journal WHERE run_id = ?1 ORDER BY seq",
    )?;
    let mut rows = st.query([run_id])?;
    let mut j = Journal::new();
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let outcome = decode(run_id, &id, r.get(1)?, r.get(2)?)?;
        j.insert(StepId::from_readable(id), outcome);
    }
    Ok(j)
}

/// Journal `outcome` for a pending step and forget its wait.
fn journal_pending(
    tx: &Connection,
    run_id: &str,
    step: &str,
    outcome: &Outcome,
    now: i64,
) -> StoreResult<()> {
    let seq: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq) + 1, 0) FROM journal WHERE run_id = ?1")?
        .query_row([run_id], |r| r.get(0))?;
    let (started, name): (Option<i64>, Option<String>) = tx
        .prepare_cached(
            "SELECT started_ms, name FROM step_attempts WHERE run_id = ?1 AND step_id = ?2",
        )?
        .query_row([run_id, step], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((None, None));
    let (kind, payload) = encode(outcome)?;
    tx.prepare_cached(INSERT_JOURNAL)?.execute(params![
        run_id,
        seq,
        step,
        kind,
        payload,
        1,
        started.unwrap_or(now),
        now,
        name
    ])?;
    tx.prepare_cached("DELETE FROM step_attempts WHERE run_id = ?1 AND step_id = ?2")?
        .execute([run_id, step])?;
    tx.prepare_cached("DELETE FROM waits WHERE run_id = ?1 AND step_id = ?2")?
        .execute([run_id, step])?;
    Ok(())
}

/// Resolve a run's pending step now, if it is still pending.
fn resolve(
    tx: &Connection,
    run_id: &str,
    step: &str,
    outcome: &Outcome,
    now: i64,
) -> StoreResult<bool> {
    let n = tx
        .prepare_cached(
            "UPDATE runs SET pending_sleep = NULL, pending_outcome = NULL, wake_at = ?3
             WHERE id = ?1 AND pending_sleep = ?2 AND status = 'sleeping'",
        )?
        .execute(params![run_id, step, now])?;
    if n == 0 {
        return Ok(false);
    }
    journal_pending(tx, run_id, step, outcome, now)?;
    Ok(true)
}

/// The outcome a finished child run hands to its parent, if it ended.
fn child_outcome(
    status: &str,
    output: Option<String>,
    error: Option<String>,
) -> StoreResult<Option<Outcome>> {
    Ok(match status {
        "completed" => Some(Outcome::data(from_json(output)?.unwrap_or(Value::Null))),
        "failed" | "cancelled" => Some(Outcome::error(
            from_json(error)?
                .map(|e| crate::serve::wire::error_info(&e))
                .unwrap_or_else(|| {
                    crate::error::ErrorInfo::new("Cancelled", "the invoked run was cancelled")
                }),
        )),
        _ => None,
    })
}

/// Appends to a run's journal. The position is the next free one in the
/// store (the caller's `?2` is only a hint), so a write that failed earlier
/// leaves no gap for a later one to collide with.
const INSERT_JOURNAL: &str =
    "INSERT INTO journal (run_id, seq, step_id, kind, payload, attempts, started_ms, ended_ms, name)
     VALUES (?1, MAX(?2, (SELECT COALESCE(MAX(seq) + 1, 0) FROM journal WHERE run_id = ?1)), ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

fn apply(tx: &Connection, op: &Op) -> StoreResult<Reply> {
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
                .execute(params![event_id, name, to_json(event), ts, now])?;
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
            lease_now,
            limit,
            owner,
            lease_ms,
        } => {
            let ids: Vec<String> = {
                let mut st = tx.prepare_cached(
                    "SELECT id FROM runs WHERE status IN ('queued', 'sleeping') AND wake_at <= ?1
                     UNION ALL
                     SELECT id FROM runs WHERE status = 'running' AND lease_until < ?3 AND lease_owner != ?4
                     LIMIT ?2",
                )?;
                let rows =
                    st.query_map(params![now, *limit as i64, lease_now, owner], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(mut run) = load_run(tx, &id)? else {
                    continue;
                };
                if let Some(sleep) = run.pending_sleep.take() {
                    // The wake time came first: journal the default outcome
                    // (`null` for a sleep or a wait that timed out).
                    let default: Option<String> = tx
                        .prepare_cached("SELECT pending_outcome FROM runs WHERE id = ?1")?
                        .query_row([&id], |r| r.get(0))?;
                    let outcome = match default {
                        Some(o) => serde_json::from_str(&o)?,
                        None => Outcome::null(),
                    };
                    journal_pending(tx, &id, &sleep, &outcome, *now)?;
                }
                tx.prepare_cached(
                    "UPDATE runs SET status = 'running', lease_owner = ?2, lease_until = ?3, wake_at = NULL, pending_sleep = NULL, pending_outcome = NULL WHERE id = ?1",
                )?
                .execute(params![id, owner, lease_now + lease_ms])?;
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
            let leased = match extend_lease_to {
                Some(until) => {
                    tx.prepare_cached(
                        "UPDATE runs SET lease_until = ?3 WHERE id = ?1 AND status = 'running' AND lease_owner = ?2",
                    )?
                    .execute(params![write.run_id, owner, until])?
                        > 0
                }
                None => tx
                    .prepare_cached("SELECT 1 FROM runs WHERE id = ?1 AND status = 'running' AND lease_owner = ?2")?
                    .exists(params![write.run_id, owner])?,
            };
            if !leased {
                return Ok(Reply::Rejected(
                    "the run is not running under this lease".into(),
                ));
            }
            let (kind, payload) = encode(&write.outcome)?;
            tx.prepare_cached(INSERT_JOURNAL)?.execute(params![
                write.run_id,
                write.seq as i64,
                write.step.as_str(),
                kind,
                payload,
                write.attempts,
                write.started_ms,
                write.ended_ms,
                write.name
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
                    "INSERT INTO step_attempts (run_id, step_id, status, attempts, error, started_ms) VALUES (?1, ?2, 'retrying', ?3, ?4, ?5)
                     ON CONFLICT (run_id, step_id) DO UPDATE SET status = 'retrying', attempts = ?3, error = ?4",
                )?
                .execute(params![s.run_id, step.as_str(), attempt + 1, error.to_string(), started])?;
            }
            if let Some(sleep) = &s.pending_sleep {
                let status = if s.wait.is_some() {
                    "waiting"
                } else if s.spawn.is_some() {
                    "invoking"
                } else {
                    "sleeping"
                };
                tx.prepare_cached(
                    "INSERT INTO step_attempts (run_id, step_id, status, attempts, started_ms, name) VALUES (?1, ?2, ?5, 1, ?3, ?4)
                     ON CONFLICT (run_id, step_id) DO NOTHING",
                )?
                .execute(params![s.run_id, sleep.as_str(), s.now, s.sleep_name, status])?;
                if let Some(o) = &s.pending_outcome {
                    tx.prepare_cached("UPDATE runs SET pending_outcome = ?2 WHERE id = ?1")?
                        .execute(params![s.run_id, serde_json::to_string(o)?])?;
                }
                if let Some(w) = &s.wait {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO waits (run_id, step_id, event_name, expr, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![s.run_id, sleep.as_str(), w.event, w.expr, s.now])?;
                }
                if let Some(sp) = &s.spawn {
                    let new = tx
                        .prepare_cached("INSERT OR IGNORE INTO events (id, name, event, ts, received_ms) VALUES (?1, ?2, ?3, ?4, ?4)")?
                        .execute(params![sp.event_id, sp.name, to_json(&sp.event), s.now])?;
                    if new == 1 {
                        tx.prepare_cached(
                            "INSERT INTO runs (id, fn_id, event_id, status, wake_at, created_ms, parent_run, parent_step) VALUES (?1, ?2, ?3, 'queued', ?4, ?4, ?5, ?6)",
                        )?
                        .execute(params![sp.run.id, sp.run.fn_id, sp.event_id, s.now, s.run_id, sleep.as_str()])?;
                    } else {
                        // Invoked before a crash: if the child already ended,
                        // hand its result over now.
                        let child: Option<(String, Option<String>, Option<String>)> = tx
                            .prepare_cached("SELECT status, output, error FROM runs WHERE event_id = ?1 AND parent_run = ?2")?
                            .query_row(params![sp.event_id, s.run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                            .optional()?;
                        if let Some((status, output, error)) = child {
                            if let Some(o) = child_outcome(&status, output, error)? {
                                resolve(tx, &s.run_id, sleep.as_str(), &o, s.now)?;
                            }
                        }
                    }
                }
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
                .execute(params![
                    run_id,
                    owner,
                    status.as_str(),
                    output.as_ref().map(|v| v.to_string()),
                    error.as_ref().map(|v| v.to_string()),
                    now
                ])?;
            if n == 1 {
                let parent: Option<(Option<String>, Option<String>)> = tx
                    .prepare_cached("SELECT parent_run, parent_step FROM runs WHERE id = ?1")?
                    .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((Some(parent), Some(step))) = parent {
                    let outcome = match (output, error) {
                        (_, Some(e)) => Outcome::error(crate::serve::wire::error_info(e)),
                        (o, None) => Outcome::data(o.clone().unwrap_or(Value::Null)),
                    };
                    resolve(tx, &parent, &step, &outcome, *now)?;
                }
            }
            Ok(if n == 0 {
                Reply::Rejected("the run is not running under this lease".into())
            } else {
                Reply::Done
            })
        }
        Op::Cancel { run_id, now } => {
            let was: Option<String> = tx
                .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
                .query_row([run_id], |r| r.get(0))
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
            let Some(run) = load_run(tx, run_id)? else {
                return Ok(Reply::Run(None));
            };
            let event: String = tx
                .prepare_cached("SELECT event FROM events WHERE id = ?1")?
                .query_row([&run.event_id], |r| r.get(0))?;
            let mut steps = Vec::new();
            let mut st = tx.prepare_cached(
                "SELECT j.step_id, j.kind, j.payload, j.attempts, COALESCE(a.started_ms, j.started_ms), j.ended_ms, a.error, j.name
                 FROM journal j LEFT JOIN step_attempts a ON a.run_id = j.run_id AND a.step_id = j.step_id
                 WHERE j.run_id = ?1 ORDER BY j.seq",
            )?;
            let mut rows = st.query([run_id])?;
            while let Some(r) = rows.next()? {
                let id: String = r.get(0)?;
                let outcome = decode(run_id, &id, r.get(1)?, r.get(2)?)?;
                let retry_error: Option<String> = r.get(6)?;
                let (status, output, error) = match outcome {
                    Outcome::Data { data } => ("completed", Some(data), from_json(retry_error)?),
                    Outcome::Error { error } => {
                        ("failed", None, Some(serde_json::to_value(error)?))
                    }
                    Outcome::Null(()) => ("completed", None, None),
                };
                steps.push(StepRecord {
                    id,
                    name: r.get(7)?,
                    kind: None,
                    status: status.into(),
                    attempts: r.get(3)?,
                    started_ms: r.get(4)?,
                    ended_ms: r.get(5)?,
                    output,
                    error,
                });
            }
            // Steps in progress: retrying, or sleeping.
            let mut st = tx.prepare_cached(
                "SELECT step_id, status, attempts, error, started_ms, name FROM step_attempts a
                 WHERE run_id = ?1 AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.run_id = a.run_id AND j.step_id = a.step_id)",
            )?;
            let mut rows = st.query([run_id])?;
            while let Some(r) = rows.next()? {
                steps.push(StepRecord {
                    id: r.get(0)?,
                    name: r.get(5)?,
                    kind: None,
                    status: r.get(1)?,
                    attempts: r.get(2)?,
                    started_ms: r.get(4)?,
                    ended_ms: None,
                    output: None,
                    error: from_json(r.get(3)?)?,
                });
            }
            Ok(Reply::Run(Some(Box::new(RunDetail {
                run,
                event: serde_json::from_str(&event)?,
                steps,
            }))))
        }
        Op::GetRunRecord { run_id } => Ok(Reply::Record(load_run(tx, run_id)?)),
        Op::NextWake => {
            let w: Option<i64> = tx
                .prepare_cached(
                    "SELECT MIN(wake_at) FROM runs WHERE status IN ('queued', 'sleeping')",
                )?
                .query_row([], |r| r.get(0))?;
            Ok(Reply::NextWake(w))
        }
        Op::Waiting { event } => {
            let mut st = tx.prepare_cached(
                "SELECT w.run_id, w.step_id, w.expr, e.event, w.created_ms FROM waits w
                 JOIN runs r ON r.id = w.run_id JOIN events e ON e.id = r.event_id
                 WHERE w.event_name = ?1 AND r.status = 'sleeping' ORDER BY w.created_ms",
            )?;
            let mut rows = st.query([event])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let trigger: String = r.get(3)?;
                out.push(WaitRow {
                    run_id: r.get(0)?,
                    step_id: r.get(1)?,
                    expr: r.get(2)?,
                    trigger: serde_json::from_str(&trigger)?,
                    created_ms: r.get(4)?,
                });
            }
            Ok(Reply::Waits(out))
        }
        Op::Resolve {
            run_id,
            step_id,
            outcome,
            now,
        } => Ok(if resolve(tx, run_id, step_id, outcome, *now)? {
            Reply::Done
        } else {
            Reply::Rejected("the step is no longer pending".into())
        }),
        Op::Active { fn_id } => {
            let mut st = tx.prepare_cached(
                "SELECT r.id, e.event FROM runs r JOIN events e ON e.id = r.event_id
                 WHERE r.fn_id = ?1 AND r.status IN ('queued', 'running', 'sleeping')",
            )?;
            let mut rows = st.query([fn_id])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let event: String = r.get(1)?;
                out.push((r.get(0)?, serde_json::from_str(&event)?));
            }
            Ok(Reply::Active(out))
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
