//! The SQL of each store operation, run inside the writer's transaction
//! (writes) or on a reader connection (reads).

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::super::*;
use crate::step_id::StepId;

pub(super) fn from_json(s: Option<String>) -> StoreResult<Option<Value>> {
    s.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(StoreError::from)
}

pub(super) fn status_of(s: &str) -> StoreResult<RunStatus> {
    RunStatus::parse(s).ok_or_else(|| StoreError::backend(format!("corrupt run status `{s}`")))
}

pub(super) const RUN_COLS: &str =
    "id, fn_id, event_id, status, fn_attempt, wake_at, pending_sleep, output, error, created_ms, ended_ms, version, origin";

type RawRun = (RunRecord, String, Option<String>, Option<String>);

pub(super) fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
    Ok((
        RunRecord {
            id: r.get(0)?,
            fn_id: r.get(1)?,
            event_id: r.get(2)?,
            status: RunStatus::Queued,
            fn_attempt: r.get(4)?,
            wake_at: r.get(5)?,
            pending_step: r.get(6)?,
            output: None,
            error: None,
            created_ms: r.get(9)?,
            ended_ms: r.get(10)?,
            version: r.get(11)?,
            // Metadata: an origin that does not parse is left out.
            origin: r
                .get::<_, Option<String>>(12)?
                .and_then(|o| serde_json::from_str(&o).ok()),
        },
        r.get(3)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

pub(super) fn finish_row((mut rec, status, output, error): RawRun) -> StoreResult<RunRecord> {
    rec.status = status_of(&status)?;
    rec.output = from_json(output)?;
    rec.error = from_json(error)?;
    Ok(rec)
}

pub(super) fn load_run(c: &Connection, id: &str) -> StoreResult<Option<RunRecord>> {
    let mut st = c.prepare_cached(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"))?;
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

pub(super) fn decode(
    run_id: &str,
    id: &str,
    kind: i64,
    payload: Option<String>,
) -> StoreResult<Outcome> {
    let corrupt = |e: String| {
        StoreError::backend(format!("corrupt journal entry `{id}` of run {run_id}: {e}"))
    };
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

pub(super) fn load_journal(c: &Connection, run_id: &str) -> StoreResult<Journal> {
    let mut st = c.prepare_cached(
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

/// Appends to a run's journal at the next free position.
const INSERT_JOURNAL: &str =
    "INSERT INTO journal (run_id, seq, step_id, kind, payload, attempts, started_ms, ended_ms, name)
     VALUES (?1, (SELECT COALESCE(MAX(seq) + 1, 0) FROM journal WHERE run_id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

fn append(c: &Connection, run_id: &str, s: &StepCommit) -> StoreResult<()> {
    let (kind, payload) = encode(&s.outcome)?;
    c.prepare_cached(INSERT_JOURNAL)?.execute(params![
        run_id,
        s.step,
        kind,
        payload,
        s.attempts,
        s.started_ms,
        s.ended_ms,
        s.name
    ])?;
    Ok(())
}

/// Refuse a write for a run that is not leased under `lease`.
fn check_lease(c: &Connection, lease: &Lease) -> StoreResult<()> {
    let held = c
        .prepare_cached(
            "SELECT 1 FROM runs WHERE id = ?1 AND status = 'running' AND lease_owner = ?2 AND lease_gen = ?3",
        )?
        .exists(params![lease.run_id, lease.owner, lease.generation as i64])?;
    if held {
        Ok(())
    } else {
        Err(StoreError::LeaseLost {
            run_id: lease.run_id.clone(),
        })
    }
}

/// Journal `outcome` for a pending step and forget its wait.
fn journal_pending(
    c: &Connection,
    run_id: &str,
    step: &str,
    outcome: Outcome,
    now: i64,
) -> StoreResult<()> {
    let (started, name): (Option<i64>, Option<String>) = c
        .prepare_cached(
            "SELECT started_ms, name FROM step_attempts WHERE run_id = ?1 AND step_id = ?2",
        )?
        .query_row([run_id, step], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((None, None));
    append(
        c,
        run_id,
        &StepCommit {
            step: step.to_string(),
            name,
            outcome,
            attempts: 1,
            started_ms: started.unwrap_or(now),
            ended_ms: now,
            reset_fn_attempt: false,
        },
    )?;
    c.prepare_cached("DELETE FROM step_attempts WHERE run_id = ?1 AND step_id = ?2")?
        .execute([run_id, step])?;
    c.prepare_cached("DELETE FROM waits WHERE run_id = ?1 AND step_id = ?2")?
        .execute([run_id, step])?;
    Ok(())
}

/// Resolve a run's pending step now, if it is still pending.
fn resolve(
    c: &Connection,
    run_id: &str,
    step: &str,
    outcome: Outcome,
    now: i64,
) -> StoreResult<bool> {
    let n = c
        .prepare_cached(
            "UPDATE runs SET pending_sleep = NULL, pending_outcome = NULL, wake_at = ?3
             WHERE id = ?1 AND pending_sleep = ?2 AND status = 'sleeping'",
        )?
        .execute(params![run_id, step, now])?;
    if n == 0 {
        return Ok(false);
    }
    journal_pending(c, run_id, step, outcome, now)?;
    Ok(true)
}

/// What a wait with a lookback looks for.
struct Look<'a> {
    event: &'a str,
    expr: Option<&'a str>,
    since: i64,
    /// Events an earlier wait of the run took.
    seen: &'a [String],
}

/// A wait with a lookback: resolve it with the first matching event
/// received from `since` on, if one is stored (not the run's trigger, not
/// one it saw).
fn look_back(c: &Connection, run_id: &str, step: &str, w: &Look, now: i64) -> StoreResult<()> {
    let trigger: String = c
        .prepare_cached(
            "SELECT e.event FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id = ?1",
        )?
        .query_row([run_id], |r| r.get(0))?;
    let trigger: Value = serde_json::from_str(&trigger)?;
    let mut st = c.prepare_cached(
        "SELECT e.id, e.event FROM events e WHERE e.name = ?1 AND e.received_ms >= ?2
         AND e.id NOT IN (SELECT event_id FROM runs WHERE id = ?3
                          UNION ALL SELECT event_id FROM run_events WHERE run_id = ?3)
         ORDER BY e.received_ms, e.rowid LIMIT 1000",
    )?;
    let mut rows = st.query(params![w.event, w.since, run_id])?;
    while let Some(r) = rows.next()? {
        if w.seen.contains(&r.get::<_, String>(0)?) {
            continue;
        }
        let payload: Value = serde_json::from_str(&r.get::<_, String>(1)?)?;
        if expr_matches(w.expr, &trigger, &payload) {
            resolve(c, run_id, step, Outcome::data(payload), now)?;
            break;
        }
    }
    Ok(())
}

/// An invoked run ended: resolve its parent's step with its result.
/// Answers the parent if it resumed.
fn notify_parent(c: &Connection, run_id: &str, now: i64) -> StoreResult<Option<String>> {
    type Row = (String, String, Option<String>, Option<String>);
    let row: Option<(Row, Option<String>, Option<String>)> = c
        .prepare_cached(
            "SELECT fn_id, status, output, error, parent_run, parent_step FROM runs WHERE id = ?1",
        )?
        .query_row([run_id], |r| {
            Ok((
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?),
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let Some(((fn_id, status, output, error), Some(parent), Some(step))) = row else {
        return Ok(None);
    };
    let (output, error) = (from_json(output)?, from_json(error)?);
    let status = status_of(&status)?;
    let Some(o) = child_outcome(run_id, &fn_id, status, output.as_ref(), error.as_ref()) else {
        return Ok(None);
    };
    Ok(resolve(c, &parent, &step, o, now)?.then_some(parent))
}

pub(super) fn ingest(
    c: &Connection,
    events: &[NewEvent],
    now: i64,
    receipt: &mut IngestReceipt,
) -> StoreResult<()> {
    for e in events {
        let n = c
            .prepare_cached(
                "INSERT OR IGNORE INTO events (id, name, event, ts, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![e.id, e.name, e.payload.to_string(), e.ts, now])?;
        if n == 0 {
            receipt.events.push(EventReceipt {
                id: e.id.clone(),
                new: false,
                runs: Vec::new(),
                skipped: Vec::new(),
                debounced: Vec::new(),
                batched: Vec::new(),
            });
            continue;
        }
        for rule in &e.cancels {
            let active: Vec<(String, String)> = c
                .prepare_cached(
                    "SELECT r.id, e.event FROM runs r JOIN events e ON e.id = r.event_id
                     WHERE r.fn_id = ?1 AND r.status IN ('queued', 'running', 'sleeping')
                     ORDER BY r.created_ms",
                )?
                .query_map([&rule.fn_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (id, trigger) in active {
                let trigger: Value = serde_json::from_str(&trigger)?;
                if expr_matches(rule.expr.as_deref(), &trigger, &e.payload) {
                    cancel(c, &id, now)?;
                    receipt.cancelled.push(id);
                }
            }
        }
        let waits: Vec<(String, String, Option<String>, String)> = c
            .prepare_cached(
                "SELECT w.run_id, w.step_id, w.expr, e.event FROM waits w
                 JOIN runs r ON r.id = w.run_id JOIN events e ON e.id = r.event_id
                 WHERE w.event_name = ?1 AND r.status = 'sleeping' ORDER BY w.created_ms",
            )?
            .query_map([&e.name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (run_id, step, expr, trigger) in waits {
            let trigger: Value = serde_json::from_str(&trigger)?;
            if expr_matches(expr.as_deref(), &trigger, &e.payload)
                && resolve(c, &run_id, &step, Outcome::data(e.payload.clone()), now)?
            {
                receipt.resolved.push((run_id, step));
            }
        }
        let (mut started, mut skipped, mut debounced, mut batched) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in &e.runs {
            let admitted = admit(c, r, now, &e.id, receipt)?;
            let (status, wake_at, ended, error, singleton) = match &admitted {
                flow::Admitted::Joined(into) => {
                    debounced.push(into.clone());
                    continue;
                }
                flow::Admitted::Batched(into) => {
                    batched.push(into.clone());
                    continue;
                }
                flow::Admitted::Queued(due) => (
                    "queued",
                    Some(*due),
                    None,
                    None,
                    r.flow.singleton.as_ref().map(|s| s.key.as_str()),
                ),
                flow::Admitted::Skipped(skip) => (
                    "skipped",
                    None,
                    Some(now),
                    Some(serde_json::to_string(&skip.error(&r.fn_id, &r.flow))?),
                    None,
                ),
            };
            let queued = matches!(admitted, flow::Admitted::Queued(_));
            match queued {
                true => started.push(r.id.clone()),
                false => skipped.push(r.id.clone()),
            }
            if let (true, Some(b)) = (queued, &r.flow.batch) {
                // The new batch is the key's open one: the older one takes
                // no more events.
                c.prepare_cached("UPDATE runs SET batch = NULL WHERE fn_id = ?1 AND batch = ?2")?
                    .execute(params![r.fn_id, b.key])?;
            }
            c.prepare_cached(
                "INSERT INTO runs (id, fn_id, event_id, status, wake_at, created_ms, parent_run, parent_step,
                                   ended_ms, error, singleton, ck1, cl1, ck2, cl2, start_by, finish_ms, debounce,
                                   batch, batch_size, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
            )?
            .execute(params![
                r.id,
                r.fn_id,
                e.id,
                status,
                wake_at,
                now,
                r.parent.as_ref().map(|p| &p.run_id),
                r.parent.as_ref().map(|p| &p.step),
                ended,
                error,
                singleton,
                r.flow.concurrency.first().map(|c| &c.key),
                r.flow.concurrency.first().map(|c| c.limit),
                r.flow.concurrency.get(1).map(|c| &c.key),
                r.flow.concurrency.get(1).map(|c| c.limit),
                match queued {
                    true => r.flow.timeouts.start_ms.map(|t| now.saturating_add(t)),
                    false => None,
                },
                r.flow.timeouts.finish_ms,
                match queued {
                    true => r.flow.debounce.as_ref().map(|d| d.key.as_str()),
                    false => None,
                },
                match queued {
                    true => r
                        .flow
                        .batch
                        .as_ref()
                        .filter(|b| b.max_size > 1)
                        .map(|b| b.key.as_str()),
                    false => None,
                },
                r.flow.batch.as_ref().map(|_| 1),
                r.version,
            ])
            .map_err(|err| match StoreError::from(err) {
                StoreError::Conflict(_) => {
                    StoreError::Conflict(format!("a run with the ID `{}` exists already", r.id))
                }
                other => other,
            })?;
            if r.flow.batch.is_some() {
                c.prepare_cached(
                    "INSERT INTO run_events (run_id, seq, event_id) VALUES (?1, 0, ?2)",
                )?
                .execute(params![r.id, e.id])?;
            }
        }
        receipt.events.push(EventReceipt {
            id: e.id.clone(),
            new: true,
            runs: started,
            skipped,
            debounced,
            batched,
        });
    }
    Ok(())
}

/// Flow control for a new run (see [`flow`]): when it is due, with its keys
/// written and, for a singleton in `cancel` mode, the active run
/// cancelled; else why it is skipped.
fn admit(
    c: &Connection,
    r: &NewRun,
    now: i64,
    event_id: &str,
    receipt: &mut IngestReceipt,
) -> StoreResult<flow::Admitted> {
    if r.flow.admits_all() {
        return Ok(flow::Admitted::Queued(flow::due_at(&r.flow, now)));
    }
    let read = |kind: flow::KeyKind, key: Option<&str>| -> StoreResult<Option<i64>> {
        let Some(key) = key else { return Ok(None) };
        Ok(c.prepare_cached(
            "SELECT value FROM flow_keys WHERE fn_id = ?1 AND kind = ?2 AND key = ?3",
        )?
        .query_row(params![r.fn_id, kind.as_str(), key], |row| row.get(0))
        .optional()?)
    };
    let held = read(flow::KeyKind::Idempotency, r.flow.idempotency.as_deref())?;
    let tat = read(
        flow::KeyKind::RateLimit,
        r.flow.rate_limit.as_ref().map(|l| l.key.as_str()),
    )?;
    let active: Vec<String> = match &r.flow.singleton {
        Some(s) => c
            .prepare_cached(
                "SELECT id FROM runs WHERE fn_id = ?1 AND singleton = ?2
                 AND status IN ('queued', 'running', 'sleeping') ORDER BY created_ms",
            )?
            .query_map(params![r.fn_id, s.key], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?,
        None => Vec::new(),
    };
    let throttle_tat = read(
        flow::KeyKind::Throttle,
        r.flow.throttle.as_ref().map(|t| t.key.as_str()),
    )?;
    let pending_debounce = match &r.flow.debounce {
        Some(d) => c
            .prepare_cached(
                "SELECT id, created_ms FROM runs WHERE fn_id = ?1 AND debounce = ?2 AND status = 'queued'
                 ORDER BY created_ms LIMIT 1",
            )?
            .query_row(params![r.fn_id, d.key], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?,
        None => None,
    };
    let open_batch = match &r.flow.batch {
        Some(b) => c
            .prepare_cached(
                "SELECT id, status, batch_size, created_ms FROM runs WHERE fn_id = ?1 AND batch = ?2",
            )?
            .query_row(params![r.fn_id, b.key], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, u32>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .optional()?
            .filter(|(_, status, size, created)| {
                status == "queued" && flow::batch_open(b, *created, *size, now)
            })
            .map(|(id, _, size, _)| (id, size)),
        None => None,
    };
    let state = flow::Read {
        held_until: held,
        tat,
        active_singleton: !active.is_empty(),
        throttle_tat,
        pending_debounce,
        open_batch,
    };
    let write = |writes: Vec<(flow::KeyKind, String, i64)>| -> StoreResult<()> {
        for (kind, key, value) in writes {
            c.prepare_cached(
                "INSERT INTO flow_keys (fn_id, kind, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (fn_id, kind, key) DO UPDATE SET value = ?4",
            )?
            .execute(params![r.fn_id, kind.as_str(), key, value])?;
        }
        Ok(())
    };
    match flow::admit(&r.flow, now, state) {
        flow::Admit::Skip(skip) => Ok(flow::Admitted::Skipped(skip)),
        flow::Admit::Join {
            writes,
            run_id,
            due_ms,
        } => {
            write(writes)?;
            c.prepare_cached("UPDATE runs SET event_id = ?2, wake_at = ?3 WHERE id = ?1")?
                .execute(params![run_id, event_id, due_ms])?;
            Ok(flow::Admitted::Joined(run_id))
        }
        flow::Admit::Append {
            writes,
            run_id,
            size,
            full,
            due_ms,
        } => {
            write(writes)?;
            c.prepare_cached("INSERT INTO run_events (run_id, seq, event_id) VALUES (?1, ?2, ?3)")?
                .execute(params![run_id, size - 1, event_id])?;
            c.prepare_cached(
                "UPDATE runs SET batch_size = ?2, wake_at = COALESCE(?3, wake_at),
                 batch = CASE WHEN ?4 THEN NULL ELSE batch END WHERE id = ?1",
            )?
            .execute(params![run_id, size, due_ms, full])?;
            Ok(flow::Admitted::Batched(run_id))
        }
        flow::Admit::Start {
            writes,
            cancel_active,
            due_ms,
        } => {
            write(writes)?;
            if cancel_active {
                for id in active {
                    cancel(c, &id, now)?;
                    receipt.cancelled.push(id);
                }
            }
            Ok(flow::Admitted::Queued(due_ms))
        }
    }
}

/// Function IDs as one string for `instr(list, char(10) || fn_id ||
/// char(10))`: a membership test without the temporary table that `IN
/// (SELECT .. FROM json_each(..))` builds on every execution. IDs hold no
/// newline (registration refuses them).
pub(super) fn function_list(ids: &[String]) -> String {
    let mut s = String::from("\n");
    for id in ids {
        s.push_str(id);
        s.push('\n');
    }
    s
}

/// A claim candidate: its ID and its concurrency keys with their limits.
type CandidateRow = (
    String,
    Option<String>,
    Option<u32>,
    Option<String>,
    Option<u32>,
);

/// The SQL condition that a candidate's concurrency keys have room (`?5`:
/// now on the lease clock). Running runs are counted per key through the
/// `runs_ck1`/`runs_ck2` indexes.
const ROOM: &str = "AND (ck1 IS NULL OR (SELECT count(*) FROM runs r2 WHERE r2.ck1 = runs.ck1 AND r2.status = 'running' AND r2.lease_until >= ?5)
                          + (SELECT count(*) FROM runs r2 WHERE r2.ck2 = runs.ck1 AND r2.status = 'running' AND r2.lease_until >= ?5) < cl1)
             AND (ck2 IS NULL OR (SELECT count(*) FROM runs r2 WHERE r2.ck1 = runs.ck2 AND r2.status = 'running' AND r2.lease_until >= ?5)
                          + (SELECT count(*) FROM runs r2 WHERE r2.ck2 = runs.ck2 AND r2.status = 'running' AND r2.lease_until >= ?5) < cl2)";

/// One claim's view of the concurrency keys: running runs per key (read
/// once per key) and the runs this claim took.
#[derive(Default)]
struct Limits {
    running: HashMap<String, u64>,
    taken: HashMap<String, u64>,
}

impl Limits {
    fn fits(
        &mut self,
        c: &Connection,
        lease_now: i64,
        keys: [(Option<String>, Option<u32>); 2],
    ) -> StoreResult<bool> {
        let limits: Vec<flow::Concurrency> = keys
            .into_iter()
            .filter_map(|(k, l)| Some(flow::Concurrency { key: k?, limit: l? }))
            .collect();
        if limits.is_empty() {
            return Ok(true);
        }
        for l in &limits {
            if !self.running.contains_key(&l.key) {
                let n: i64 = c
                    .prepare_cached(
                        "SELECT (SELECT count(*) FROM runs WHERE ck1 = ?1 AND status = 'running' AND lease_until >= ?2)
                              + (SELECT count(*) FROM runs WHERE ck2 = ?1 AND status = 'running' AND lease_until >= ?2)",
                    )?
                    .query_row(params![l.key, lease_now], |r| r.get(0))?;
                self.running.insert(l.key.clone(), n as u64);
            }
        }
        let running = &self.running;
        Ok(flow::fits(
            &limits,
            |k| running.get(k).copied().unwrap_or(0),
            &mut self.taken,
        ))
    }
}

/// Cancel the runs whose start or finish timeout passed, with the timeout
/// as their error.
fn sweep_timeouts(c: &Connection, now: i64) -> StoreResult<()> {
    for (kind, sql) in [
        (
            flow::START_TIMEOUT,
            "SELECT id, fn_id FROM runs WHERE start_by <= ?1 AND status IN ('queued', 'sleeping')",
        ),
        (
            flow::FINISH_TIMEOUT,
            "SELECT id, fn_id FROM runs WHERE finish_by <= ?1 AND status IN ('queued', 'running', 'sleeping')",
        ),
    ] {
        let due: Vec<(String, String)> = c
            .prepare_cached(sql)?
            .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (id, fn_id) in due {
            cancel(c, &id, now)?;
            let error = serde_json::to_string(&flow::timeout_error(kind, &fn_id))?;
            c.prepare_cached("UPDATE runs SET error = ?2 WHERE id = ?1")?
                .execute(params![id, error])?;
        }
    }
    Ok(())
}

pub(super) fn claim(c: &Connection, req: &ClaimRequest) -> StoreResult<Vec<ClaimedRun>> {
    sweep_timeouts(c, req.now_ms)?;
    // Runs of the claimant's functions, or of others once overdue; in the
    // order of the `runs_due` index (queued, then sleeping, each by wake
    // time): an `ORDER BY` across both would sort in a temporary table.
    let known = function_list(&req.functions);
    // A run whose concurrency key is full is passed over (it stays queued);
    // the check in SQL skips full keys, `fits` counts this claim's own.
    let mut limits = Limits::default();
    let mut ids: Vec<String> = Vec::new();
    // Due runs, then running runs whose lease ran out.
    for which in [
        "status IN ('queued', 'sleeping') AND wake_at <= ?1",
        "status = 'running' AND lease_until < ?5",
    ] {
        if ids.len() >= req.limit {
            break;
        }
        let candidates = c
            .prepare_cached(&format!(
                "SELECT id, ck1, cl1, ck2, cl2 FROM runs WHERE {which}
                 AND (instr(?3, char(10) || fn_id || char(10)) > 0 OR created_ms <= ?4) {ROOM}
                 LIMIT ?2"
            ))?
            .query_map(
                params![
                    req.now_ms,
                    (req.limit - ids.len()) as i64,
                    known,
                    req.unknown_before_ms,
                    req.lease_now_ms
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?
            .collect::<rusqlite::Result<Vec<CandidateRow>>>()?;
        for (id, ck1, cl1, ck2, cl2) in candidates {
            if limits.fits(c, req.lease_now_ms, [(ck1, cl1), (ck2, cl2)])? {
                ids.push(id);
            }
        }
    }
    let until_ms = req.lease_now_ms.saturating_add(req.lease_ms);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let (pending, default): (Option<String>, Option<String>) = c
            .prepare_cached("SELECT pending_sleep, pending_outcome FROM runs WHERE id = ?1")?
            .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        if let Some(step) = pending {
            // The wake time came first: journal the default outcome (`null`
            // for a sleep or a wait that timed out).
            let outcome = match default {
                Some(o) => serde_json::from_str(&o)?,
                None => Outcome::null(),
            };
            journal_pending(c, &id, &step, outcome, req.now_ms)?;
        }
        // No `RETURNING`: SQLite buffers it in a temporary table.
        c.prepare_cached(
            "UPDATE runs SET status = 'running', lease_owner = ?2, lease_until = ?3, lease_gen = lease_gen + 1,
             wake_at = NULL, pending_sleep = NULL, pending_outcome = NULL,
             start_by = NULL, finish_by = COALESCE(finish_by, ?4 + finish_ms) WHERE id = ?1",
        )?
        .execute(params![id, req.owner, until_ms, req.now_ms])?;
        let (raw, generation, batch_size): (RawRun, i64, Option<i64>) = c
            .prepare_cached(&format!(
                "SELECT {RUN_COLS}, lease_gen, batch_size FROM runs WHERE id = ?1"
            ))?
            .query_row([&id], |r| Ok((run_row(r)?, r.get(13)?, r.get(14)?)))?;
        let run = finish_row(raw)?;
        let event: String = c
            .prepare_cached("SELECT event FROM events WHERE id = ?1")?
            .query_row([&run.event_id], |r| r.get(0))?;
        let attempts = c
            .prepare_cached(
                "SELECT step_id, attempts FROM step_attempts WHERE run_id = ?1 AND status = 'retrying'",
            )?
            .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        out.push(ClaimedRun {
            lease: Lease {
                run_id: id.clone(),
                owner: req.owner.clone(),
                generation: generation as u64,
                until_ms,
            },
            event: serde_json::from_str(&event)?,
            events: match batch_size {
                Some(_) => batch_events(c, &id)?,
                None => Vec::new(),
            },
            journal: load_journal(c, &id)?,
            attempts,
            run,
        });
    }
    Ok(out)
}

/// A batch run's events, in order (none for other runs).
pub(super) fn batch_events(c: &Connection, run_id: &str) -> StoreResult<Vec<Value>> {
    let raw: Vec<String> = c
        .prepare_cached(
            "SELECT e.event FROM run_events b JOIN events e ON e.id = b.event_id
             WHERE b.run_id = ?1 ORDER BY b.seq",
        )?
        .query_map([run_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    raw.iter().map(|e| Ok(serde_json::from_str(e)?)).collect()
}

pub(super) fn heartbeat(c: &Connection, lease: &Lease, until_ms: i64) -> StoreResult<()> {
    let n = c
        .prepare_cached(
            "UPDATE runs SET lease_until = ?4
             WHERE id = ?1 AND status = 'running' AND lease_owner = ?2 AND lease_gen = ?3",
        )?
        .execute(params![
            lease.run_id,
            lease.owner,
            lease.generation as i64,
            until_ms
        ])?;
    if n == 0 {
        return Err(StoreError::LeaseLost {
            run_id: lease.run_id.clone(),
        });
    }
    Ok(())
}

pub(super) fn commit_step(c: &Connection, lease: &Lease, s: &StepCommit) -> StoreResult<()> {
    // Two plain statements: an `INSERT .. SELECT` guarded by the lease
    // reads the journal it writes, which makes SQLite buffer it in a
    // temporary table (several times the cost).
    check_lease(c, lease)?;
    append(c, &lease.run_id, s)?;
    if s.attempts > 1 {
        c.prepare_cached(
            "UPDATE step_attempts SET status = 'done' WHERE run_id = ?1 AND step_id = ?2",
        )?
        .execute([&lease.run_id, &s.step])?;
    }
    if s.reset_fn_attempt {
        c.prepare_cached("UPDATE runs SET fn_attempt = 0 WHERE id = ?1")?
            .execute([&lease.run_id])?;
    }
    Ok(())
}

pub(super) fn suspend(c: &Connection, lease: &Lease, s: &Suspension, now: i64) -> StoreResult<()> {
    check_lease(c, lease)?;
    let id = &lease.run_id;
    let (status, wake_at, pending) = match s {
        Suspension::Retry { wake_at, .. } => ("sleeping", *wake_at, None),
        Suspension::Delay { wake_at } => ("queued", *wake_at, None),
        Suspension::Sleep { step, until_ms }
        | Suspension::Wait { step, until_ms, .. }
        | Suspension::Invoke { step, until_ms, .. } => ("sleeping", *until_ms, Some(step)),
    };
    c.prepare_cached(
        "UPDATE runs SET status = ?2, wake_at = ?3, pending_sleep = ?4, pending_outcome = NULL,
         lease_owner = NULL, lease_until = NULL WHERE id = ?1",
    )?
    .execute(params![id, status, wake_at, pending.map(|p| &p.step)])?;
    if let Some(p) = pending {
        c.prepare_cached(
            "INSERT INTO step_attempts (run_id, step_id, status, attempts, started_ms, name) VALUES (?1, ?2, ?3, 1, ?4, ?5)
             ON CONFLICT (run_id, step_id) DO NOTHING",
        )?
        .execute(params![id, p.step, pending_status(s), now, p.name])?;
    }
    match s {
        Suspension::Retry {
            failures,
            fn_attempt,
            ..
        } => {
            c.prepare_cached("UPDATE runs SET fn_attempt = ?2 WHERE id = ?1")?
                .execute(params![id, fn_attempt])?;
            for f in failures {
                c.prepare_cached(
                    "INSERT INTO step_attempts (run_id, step_id, status, name, attempts, error, started_ms)
                     VALUES (?1, ?2, 'retrying', ?3, ?4, ?5, ?6)
                     ON CONFLICT (run_id, step_id) DO UPDATE SET status = 'retrying', attempts = ?4, error = ?5",
                )?
                .execute(params![
                    id,
                    f.step,
                    f.name,
                    f.attempts,
                    serde_json::to_string(&f.error)?,
                    f.started_ms
                ])?;
            }
        }
        Suspension::Sleep { .. } | Suspension::Delay { .. } => {}
        Suspension::Wait {
            step,
            event,
            expr,
            since_ms,
            seen,
            ..
        } => {
            c.prepare_cached(
                "INSERT OR REPLACE INTO waits (run_id, step_id, event_name, expr, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, step.step, event, expr, now])?;
            if let Some(since) = since_ms {
                let wait = Look {
                    event,
                    expr: expr.as_deref(),
                    since: *since,
                    seen,
                };
                look_back(c, id, &step.step, &wait, now)?;
            }
        }
        Suspension::Invoke {
            timeout_error,
            child,
            ..
        } => {
            c.prepare_cached("UPDATE runs SET pending_outcome = ?2 WHERE id = ?1")?
                .execute(params![
                    id,
                    serde_json::to_string(&Outcome::error(timeout_error.clone()))?
                ])?;
            let mut receipt = IngestReceipt::default();
            ingest(c, std::slice::from_ref(child), now, &mut receipt)?;
            if receipt.events.first().is_some_and(|e| !e.new) {
                // Invoked before a crash: hand over the result of a child
                // that ended meanwhile.
                let ended: Option<String> = c
                    .prepare_cached(
                        "SELECT id FROM runs WHERE event_id = ?1 AND parent_run = ?2
                         AND status IN ('completed', 'failed', 'cancelled')",
                    )?
                    .query_row([&child.id, id], |r| r.get(0))
                    .optional()?;
                if let Some(child_run) = ended {
                    notify_parent(c, &child_run, now)?;
                }
            }
        }
    }
    Ok(())
}

pub(super) fn finish(c: &Connection, lease: &Lease, f: &Finish, now: i64) -> StoreResult<Finished> {
    let (status, output, error, event) = match f {
        Finish::Completed { output } => ("completed", Some(output.to_string()), None, None),
        Finish::Failed { error, event } => (
            "failed",
            None,
            Some(serde_json::to_string(error)?),
            event.as_ref(),
        ),
    };
    // The fence and the end in one statement.
    let n = c
        .prepare_cached(
            "UPDATE runs SET status = ?2, output = ?3, error = ?4, ended_ms = ?5,
             lease_owner = NULL, lease_until = NULL, wake_at = NULL
             WHERE id = ?1 AND status = 'running' AND lease_owner = ?6 AND lease_gen = ?7",
        )?
        .execute(params![
            lease.run_id,
            status,
            output,
            error,
            now,
            lease.owner,
            lease.generation as i64
        ])?;
    if n == 0 {
        return Err(StoreError::LeaseLost {
            run_id: lease.run_id.clone(),
        });
    }
    let mut woke: Vec<String> = notify_parent(c, &lease.run_id, now)?.into_iter().collect();
    if let Some(e) = event {
        let mut receipt = IngestReceipt::default();
        ingest(c, std::slice::from_ref(e), now, &mut receipt)?;
        woke.extend(receipt.events.into_iter().flat_map(|e| e.runs));
    }
    Ok(Finished { woke })
}

pub(super) fn cancel(c: &Connection, run_id: &str, now: i64) -> StoreResult<Option<RunStatus>> {
    let was: Option<String> = c
        .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .optional()?;
    let Some(was) = was else {
        return Ok(None);
    };
    let was = status_of(&was)?;
    if !was.is_final() {
        c.prepare_cached(
            "UPDATE runs SET status = 'cancelled', ended_ms = ?2, wake_at = NULL, pending_sleep = NULL,
             lease_owner = NULL, lease_until = NULL WHERE id = ?1",
        )?
        .execute(params![run_id, now])?;
        c.prepare_cached("DELETE FROM waits WHERE run_id = ?1")?
            .execute([run_id])?;
        notify_parent(c, run_id, now)?;
    }
    Ok(Some(was))
}

/// A person's cancel ([`Store::cancel`]): the cancel, recorded on the run.
/// Cancel rules, singletons and timeouts cancel without a record.
pub(super) fn cancel_by_request(
    c: &Connection,
    run_id: &str,
    now: i64,
) -> StoreResult<Option<RunStatus>> {
    let was = cancel(c, run_id, now)?;
    if was.is_some_and(|s| !s.is_final()) {
        record_op(c, run_id, &RunOp::cancel(now))?;
    }
    Ok(was)
}

fn record_op(c: &Connection, run_id: &str, op: &RunOp) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO run_ops (run_id, seq, op)
         VALUES (?1, (SELECT COALESCE(MAX(seq) + 1, 0) FROM run_ops WHERE run_id = ?1), ?2)",
    )?
    .execute(params![run_id, serde_json::to_string(op)?])?;
    Ok(())
}

pub(super) fn ops(c: &Connection, run_id: &str) -> StoreResult<Vec<RunOp>> {
    let mut st = c.prepare_cached("SELECT op FROM run_ops WHERE run_id = ?1 ORDER BY seq")?;
    let rows = st.query_map([run_id], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for op in rows {
        out.push(serde_json::from_str(&op?)?);
    }
    Ok(out)
}

pub(super) fn restart(c: &Connection, r: &Restart) -> StoreResult<bool> {
    let from = &r.origin.run_id;
    let found: Option<(String, Option<i64>)> = c
        .prepare_cached("SELECT event_id, batch_size FROM runs WHERE id = ?1")?
        .query_row([from], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((event_id, batch_size)) = found else {
        return Ok(false);
    };
    let now = r.now_ms;
    let n = &r.run;
    c.prepare_cached(
        "INSERT INTO runs (id, fn_id, event_id, status, wake_at, created_ms, ck1, cl1, ck2, cl2,
                           start_by, finish_ms, version, origin, batch_size)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        n.id,
        n.fn_id,
        event_id,
        now,
        n.flow.concurrency.first().map(|c| &c.key),
        n.flow.concurrency.first().map(|c| c.limit),
        n.flow.concurrency.get(1).map(|c| &c.key),
        n.flow.concurrency.get(1).map(|c| c.limit),
        n.flow.timeouts.start_ms.map(|t| now.saturating_add(t)),
        n.flow.timeouts.finish_ms,
        n.version,
        serde_json::to_string(&r.origin)?,
        batch_size,
    ])
    .map_err(|err| match StoreError::from(err) {
        StoreError::Conflict(_) => {
            StoreError::Conflict(format!("a run with the ID `{}` exists already", n.id))
        }
        other => other,
    })?;
    c.prepare_cached(
        "INSERT INTO run_events (run_id, seq, event_id)
         SELECT ?1, seq, event_id FROM run_events WHERE run_id = ?2",
    )?
    .execute(params![n.id, from])?;
    for s in &r.journal {
        append(c, &n.id, s)?;
    }
    record_op(c, from, &RunOp::made(&r.origin, &n.id, now))?;
    Ok(true)
}

pub(super) fn put_app(c: &Connection, app: &AppRecord) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO apps (id, url, body, updated_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET url = ?2, body = ?3, updated_ms = ?4",
    )?
    .execute(params![
        app.id,
        app.url,
        app.body.to_string(),
        app.updated_ms
    ])?;
    Ok(())
}

/// Retention: see [`Store::purge`].
pub(super) fn purge(c: &Connection, before: i64, limit: usize) -> StoreResult<Purged> {
    let limit = limit as i64;
    let runs: Vec<String> = c
        .prepare_cached(
            "SELECT r.id FROM runs r WHERE r.ended_ms < ?1
             AND r.status IN ('completed', 'failed', 'cancelled', 'skipped')
             AND NOT EXISTS (SELECT 1 FROM runs k WHERE k.parent_run = r.id
                             AND k.status IN ('queued', 'running', 'sleeping'))
             AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.id = r.parent_run
                             AND p.status IN ('queued', 'running', 'sleeping'))
             ORDER BY r.ended_ms LIMIT ?2",
        )?
        .query_map(params![before, limit], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in &runs {
        for table in [
            "DELETE FROM journal WHERE run_id = ?1",
            "DELETE FROM step_attempts WHERE run_id = ?1",
            "DELETE FROM waits WHERE run_id = ?1",
            "DELETE FROM run_events WHERE run_id = ?1",
            "DELETE FROM run_ops WHERE run_id = ?1",
            "DELETE FROM runs WHERE id = ?1",
        ] {
            c.prepare_cached(table)?.execute([id])?;
        }
    }
    let events = c
        .prepare_cached(
            "DELETE FROM events WHERE id IN (
                 SELECT e.id FROM events e WHERE e.received_ms < ?1
                 AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id)
                 AND NOT EXISTS (SELECT 1 FROM run_events b WHERE b.event_id = e.id)
                 ORDER BY e.received_ms LIMIT ?2)",
        )?
        .execute(params![before, limit])?;
    let keys = c
        .prepare_cached(
            "DELETE FROM flow_keys WHERE (fn_id, kind, key) IN (
                 SELECT fn_id, kind, key FROM flow_keys
                 WHERE kind IN ('idempotency', 'rate_limit', 'throttle') AND value < ?1
                 LIMIT ?2)",
        )?
        .execute(params![before, limit])?;
    // Give free pages back to the file system while more than a quarter
    // of the file is free, a few at a time (each moves pages around):
    // below that, SQLite reuses them for new rows. Only a file made with
    // incremental auto-vacuum can (2: `INCREMENTAL`); on an older one,
    // SQLite reuses the pages and the file keeps its size.
    let page = |p: &str| c.query_row(p, [], |r| r.get::<_, i64>(0));
    let reclaiming = page("PRAGMA auto_vacuum")? == 2
        && page("PRAGMA freelist_count")? > page("PRAGMA page_count")? / 4;
    if reclaiming {
        // Each step of the pragma frees one page.
        let mut vacuum = c.prepare_cached("PRAGMA incremental_vacuum(32)")?;
        let mut pages = vacuum.query([])?;
        while pages.next()?.is_some() {}
    }
    Ok(Purged {
        runs: runs.len(),
        events,
        keys,
        reclaiming,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file made before incremental auto-vacuum cannot give pages back:
    /// retention must not report space to reclaim forever.
    #[test]
    fn a_file_without_incremental_vacuum_does_not_reclaim_forever() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        let big = "x".repeat(20_000);
        for i in 0..200 {
            c.execute(
                "INSERT INTO events (id, name, event, ts, received_ms) VALUES (?1, 'e', ?2, 0, 0)",
                params![format!("e{i}"), big],
            )
            .unwrap();
        }
        let first = purge(&c, 1, 1000).unwrap();
        assert_eq!(first.events, 200);
        assert!(!first.reclaiming, "{first:?}");
        let free: i64 = c
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        assert!(
            free > 100,
            "the pages are free, for SQLite to reuse: {free}"
        );
    }
}
