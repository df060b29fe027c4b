//! The schema, and its migrations, applied under an advisory lock so that
//! processes starting together do not race.

use tokio_postgres::Client;

use super::super::{StoreError, StoreResult};

/// Migrations, applied in order; `schema_version.version` is the count
/// applied so far. JSON is kept as text, byte for byte as written.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    ts BIGINT NOT NULL,
    received_ms BIGINT NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    fn_id TEXT NOT NULL,
    event_id TEXT NOT NULL REFERENCES events(id),
    status TEXT NOT NULL,
    fn_attempt INTEGER NOT NULL DEFAULT 0,
    wake_at BIGINT,
    pending_step TEXT,
    pending_outcome TEXT,
    parent_run TEXT,
    parent_step TEXT,
    lease_owner TEXT,
    lease_until BIGINT,
    lease_gen BIGINT NOT NULL DEFAULT 0,
    output TEXT,
    error TEXT,
    created_ms BIGINT NOT NULL,
    ended_ms BIGINT
);
CREATE INDEX runs_due ON runs (wake_at) WHERE status IN ('queued', 'sleeping');
CREATE INDEX runs_leased ON runs (lease_until) WHERE status = 'running';
CREATE INDEX runs_fn ON runs (fn_id, created_ms);
CREATE INDEX runs_created ON runs (created_ms);
CREATE INDEX runs_event ON runs (event_id);
CREATE TABLE journal (
    run_id TEXT NOT NULL,
    seq BIGSERIAL,
    step_id TEXT NOT NULL,
    name TEXT,
    kind SMALLINT NOT NULL,
    payload TEXT,
    attempts INTEGER NOT NULL,
    started_ms BIGINT,
    ended_ms BIGINT,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE waits (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    expr TEXT,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX waits_event ON waits (event_name, created_ms);
CREATE TABLE step_attempts (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    status TEXT NOT NULL,
    name TEXT,
    attempts INTEGER NOT NULL,
    error TEXT,
    started_ms BIGINT,
    PRIMARY KEY (run_id, step_id)
);
CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
"#,
    // Flow control: idempotency keys, rate-limit state, singleton keys
    // (decided at ingest), concurrency keys (at claim). A row of
    // `flow_keys` is also what concurrent ingests and claims lock for its
    // key.
    r#"
ALTER TABLE runs ADD COLUMN singleton TEXT;
CREATE INDEX runs_singleton ON runs (fn_id, singleton)
    WHERE singleton IS NOT NULL AND status IN ('queued', 'running', 'sleeping');
-- Concurrency limits: up to two keys per run, each with its limit.
ALTER TABLE runs ADD COLUMN ck1 TEXT, ADD COLUMN cl1 INTEGER, ADD COLUMN ck2 TEXT, ADD COLUMN cl2 INTEGER;
CREATE INDEX runs_ck1 ON runs (ck1) WHERE ck1 IS NOT NULL AND status = 'running';
CREATE INDEX runs_ck2 ON runs (ck2) WHERE ck2 IS NOT NULL AND status = 'running';
-- Timeouts: start by (until first claimed), the finish timeout and,
-- once started, its deadline.
ALTER TABLE runs ADD COLUMN start_by BIGINT, ADD COLUMN finish_ms BIGINT, ADD COLUMN finish_by BIGINT;
CREATE INDEX runs_start_by ON runs (start_by) WHERE start_by IS NOT NULL;
CREATE INDEX runs_finish_by ON runs (finish_by) WHERE finish_by IS NOT NULL;
-- Debounce: the key a queued run takes events for.
ALTER TABLE runs ADD COLUMN debounce TEXT;
CREATE INDEX runs_debounce ON runs (fn_id, debounce) WHERE debounce IS NOT NULL AND status = 'queued';
CREATE TABLE flow_keys (
    fn_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value BIGINT,
    PRIMARY KEY (fn_id, kind, key)
);
"#,
    // Batches: a batch run's events in order, its size, and the key it
    // takes events for (set on the newest batch of a key only).
    r#"
ALTER TABLE runs ADD COLUMN batch TEXT, ADD COLUMN batch_size INTEGER;
CREATE INDEX runs_batch ON runs (fn_id, batch) WHERE batch IS NOT NULL;
CREATE TABLE run_events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"#,
    // Versions: the hash of the step table a run started on.
    r#"
ALTER TABLE runs ADD COLUMN version TEXT;
"#,
    // Waits that look back, and retention: events by name and by age, in
    // the order received; runs by end and by parent, batch events by
    // event, expiring flow keys.
    r#"
-- A column without a default is added without rewriting the table; the
-- events stored before it have none and sort first.
CREATE SEQUENCE events_seq;
ALTER TABLE events ADD COLUMN seq BIGINT;
ALTER TABLE events ALTER COLUMN seq SET DEFAULT nextval('events_seq');
CREATE INDEX events_name ON events (name, received_ms, seq);
CREATE INDEX events_received ON events (received_ms);
CREATE INDEX runs_ended ON runs (ended_ms) WHERE ended_ms IS NOT NULL;
CREATE INDEX runs_parent ON runs (parent_run) WHERE parent_run IS NOT NULL;
CREATE INDEX run_events_event ON run_events (event_id);
CREATE INDEX flow_keys_expiry ON flow_keys (value) WHERE kind IN ('idempotency', 'rate_limit', 'throttle');
"#,
    // Operations: the run a rerun or replay was made from, and the
    // operations made on each run.
    r#"
ALTER TABLE runs ADD COLUMN origin TEXT;
CREATE TABLE run_ops (
    run_id TEXT NOT NULL,
    seq BIGSERIAL,
    op TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"#,
];

/// Create the schema and apply the migrations it lacks, holding an
/// advisory lock (keyed by the schema's name) for the whole of it.
pub(super) async fn migrate(c: &mut Client, schema: &str) -> StoreResult<()> {
    let key = lock_key(schema);
    c.execute("SELECT pg_advisory_lock($1)", &[&key]).await?;
    let result = apply(c, schema).await;
    let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&key]).await;
    result
}

async fn apply(c: &mut Client, schema: &str) -> StoreResult<()> {
    let quoted = quote_ident(schema);
    c.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted};
         CREATE TABLE IF NOT EXISTS {quoted}.schema_version (version INTEGER NOT NULL);"
    ))
    .await?;
    let row = c
        .query_opt(&format!("SELECT version FROM {quoted}.schema_version"), &[])
        .await?;
    let version = row.map_or(0, |r| r.get::<_, i32>(0)) as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::backend(format!(
            "the database has durafn schema version {version} in schema `{schema}`, newer than this durafn knows ({}); upgrade durafn",
            MIGRATIONS.len()
        )));
    }
    if version == MIGRATIONS.len() {
        return Ok(());
    }
    let tx = c.transaction().await?;
    tx.batch_execute(&format!("SET LOCAL search_path TO {quoted}"))
        .await?;
    for m in &MIGRATIONS[version..] {
        tx.batch_execute(m).await?;
    }
    tx.execute(&format!("DELETE FROM {quoted}.schema_version"), &[])
        .await?;
    tx.execute(
        &format!("INSERT INTO {quoted}.schema_version (version) VALUES ($1)"),
        &[&(MIGRATIONS.len() as i32)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The advisory lock of a schema's migrations.
fn lock_key(schema: &str) -> i64 {
    // FNV-1a: stable across processes and builds.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("durafn-migrate:{schema}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// A short, stable tag of a schema, for names derived from it.
pub(super) fn lock_key_hex(schema: &str) -> String {
    format!("{:016x}", lock_key(schema) as u64)
}

/// A schema name as a quoted identifier.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
