//! The schema, and its migrations.

use rusqlite::Connection;

use super::super::{StoreError, StoreResult};

/// Schema migrations, applied in order; `PRAGMA user_version` is the count
/// applied so far.
const MIGRATIONS: &[&str] = &[
    r#"
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
    status TEXT NOT NULL, -- retrying, sleeping, waiting, invoking, done
    name TEXT,
    attempts INTEGER NOT NULL,
    error TEXT,
    started_ms INTEGER,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;
"#,
    // Fenced leases, stored app registrations, indexes for ingest.
    r#"
ALTER TABLE runs ADD COLUMN lease_gen INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_event ON runs(event_id);
CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
"#,
    // Flow control: idempotency keys, rate-limit state, singleton keys
    // (decided at ingest), concurrency keys (at claim).
    r#"
ALTER TABLE runs ADD COLUMN singleton TEXT;
CREATE INDEX runs_singleton ON runs(fn_id, singleton) WHERE singleton IS NOT NULL;
-- Concurrency limits: up to two keys per run, each with its limit.
ALTER TABLE runs ADD COLUMN ck1 TEXT;
ALTER TABLE runs ADD COLUMN cl1 INTEGER;
ALTER TABLE runs ADD COLUMN ck2 TEXT;
ALTER TABLE runs ADD COLUMN cl2 INTEGER;
CREATE INDEX runs_ck1 ON runs(ck1, status, lease_until) WHERE ck1 IS NOT NULL;
CREATE INDEX runs_ck2 ON runs(ck2, status, lease_until) WHERE ck2 IS NOT NULL;
-- Timeouts: start by (until first claimed), the finish timeout and,
-- once started, its deadline.
ALTER TABLE runs ADD COLUMN start_by INTEGER;
ALTER TABLE runs ADD COLUMN finish_ms INTEGER;
ALTER TABLE runs ADD COLUMN finish_by INTEGER;
CREATE INDEX runs_start_by ON runs(start_by) WHERE start_by IS NOT NULL;
CREATE INDEX runs_finish_by ON runs(finish_by) WHERE finish_by IS NOT NULL;
-- Debounce: the key a queued run takes events for.
ALTER TABLE runs ADD COLUMN debounce TEXT;
CREATE INDEX runs_debounce ON runs(fn_id, debounce) WHERE debounce IS NOT NULL;
CREATE TABLE flow_keys (
    fn_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (fn_id, kind, key)
) WITHOUT ROWID;
"#,
    // Batches: a batch run's events in order, its size, and the key it
    // takes events for (set on the newest batch of a key only).
    r#"
ALTER TABLE runs ADD COLUMN batch TEXT;
ALTER TABLE runs ADD COLUMN batch_size INTEGER;
CREATE INDEX runs_batch ON runs(fn_id, batch) WHERE batch IS NOT NULL;
CREATE TABLE run_events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"#,
    // Versions: the hash of the step table a run started on.
    r#"
ALTER TABLE runs ADD COLUMN version TEXT;
"#,
    // Waits that look back, and retention: events by name and by age,
    // runs by end and by parent, batch events by event, expiring flow keys.
    r#"
CREATE INDEX events_name ON events(name, received_ms);
CREATE INDEX events_received ON events(received_ms);
CREATE INDEX runs_ended ON runs(ended_ms) WHERE ended_ms IS NOT NULL;
CREATE INDEX runs_parent ON runs(parent_run) WHERE parent_run IS NOT NULL;
CREATE INDEX run_events_event ON run_events(event_id);
CREATE INDEX flow_keys_expiry ON flow_keys(value) WHERE kind IN ('idempotency', 'rate_limit', 'throttle');
"#,
    // Operations: the run a rerun or replay was made from, and the
    // operations made on each run.
    r#"
ALTER TABLE runs ADD COLUMN origin TEXT;
CREATE TABLE run_ops (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    op TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"#,
];

pub(super) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::backend(format!(
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
