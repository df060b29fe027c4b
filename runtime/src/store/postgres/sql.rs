//! The SQL of each operation. Every write runs in one transaction (a step's
//! commit is one statement); row locks keep the lease checks true until the
//! commit: a write for a run takes the run's row (`FOR SHARE` for a step,
//! `FOR UPDATE` by its `UPDATE` otherwise), and a claim skips locked rows.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::super::*;
use crate::step_id::StepId;

type Params<'a> = [&'a (dyn ToSql + Sync)];

async fn exec(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> StoreResult<u64> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, params).await?)
}

async fn query(c: &impl GenericClient, sql: &str, params: &Params<'_>) -> StoreResult<Vec<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, params).await?)
}

async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> StoreResult<Option<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&st, params).await?)
}

fn json(s: Option<String>) -> StoreResult<Option<Value>> {
    s.map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(StoreError::from)
}

fn status_of(s: &str) -> StoreResult<RunStatus> {
    RunStatus::parse(s).ok_or_else(|| StoreError::backend(format!("corrupt run status `{s}`")))
}

const DATA: i16 = 0;
const ERROR: i16 = 1;
const NULL: i16 = 2;

fn encode(o: &Outcome) -> StoreResult<(i16, Option<String>)> {
    Ok(match o {
        Outcome::Data { data } => (DATA, Some(data.to_string())),
        Outcome::Error { error } => (ERROR, Some(serde_json::to_string(error)?)),
        Outcome::Null(()) => (NULL, None),
    })
}

fn decode(run_id: &str, id: &str, kind: i16, payload: Option<String>) -> StoreResult<Outcome> {
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

pub(super) const RUN_COLS: &str =
    "id, fn_id, event_id, status, fn_attempt, wake_at, pending_step, output, error, created_ms, ended_ms, version, origin";

pub(super) fn run_record(r: &Row) -> StoreResult<RunRecord> {
    Ok(RunRecord {
        id: r.get(0),
        fn_id: r.get(1),
        event_id: r.get(2),
        status: status_of(r.get(3))?,
        fn_attempt: r.get::<_, i32>(4) as u32,
        wake_at: r.get(5),
        pending_step: r.get(6),
        output: json(r.get(7))?,
        error: json(r.get(8))?,
        created_ms: r.get(9),
        ended_ms: r.get(10),
        version: r.get(11),
        // Metadata: an origin that does not parse is left out.
        origin: r
            .get::<_, Option<String>>(12)
            .and_then(|o| serde_json::from_str(&o).ok()),
    })
}

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        run_id: lease.run_id.clone(),
    }
}

async fn append(c: &impl GenericClient, run_id: &str, s: &StepCommit) -> StoreResult<()> {
    let (kind, payload) = encode(&s.outcome)?;
    exec(
        c,
        "INSERT INTO journal (run_id, step_id, name, kind, payload, attempts, started_ms, ended_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &run_id,
            &s.step,
            &s.name,
            &kind,
            &payload,
            &(s.attempts as i32),
            &s.started_ms,
            &s.ended_ms,
        ],
    )
    .await?;
    Ok(())
}

/// Journal `outcome` for a pending step and forget its wait.
async fn journal_pending(
    c: &impl GenericClient,
    run_id: &str,
    step: &str,
    outcome: Outcome,
    now: i64,
) -> StoreResult<()> {
    let row = query_opt(
        c,
        "DELETE FROM step_attempts WHERE run_id = $1 AND step_id = $2 RETURNING started_ms, name",
        &[&run_id, &step],
    )
    .await?;
    let (started, name): (Option<i64>, Option<String>) =
        row.map_or((None, None), |r| (r.get(0), r.get(1)));
    let commit = StepCommit {
        step: step.to_string(),
        name,
        outcome,
        attempts: 1,
        started_ms: started.unwrap_or(now),
        ended_ms: now,
        reset_fn_attempt: false,
    };
    append(c, run_id, &commit).await?;
    exec(
        c,
        "DELETE FROM waits WHERE run_id = $1 AND step_id = $2",
        &[&run_id, &step],
    )
    .await?;
    Ok(())
}

/// Resolve a run's pending step now, if it is still pending.
async fn resolve(
    c: &impl GenericClient,
    run_id: &str,
    step: &str,
    outcome: Outcome,
    now: i64,
) -> StoreResult<bool> {
    let n = exec(
        c,
        "UPDATE runs SET pending_step = NULL, pending_outcome = NULL, wake_at = $3
         WHERE id = $1 AND pending_step = $2 AND status = 'sleeping'",
        &[&run_id, &step, &now],
    )
    .await?;
    if n == 0 {
        return Ok(false);
    }
    journal_pending(c, run_id, step, outcome, now).await?;
    Ok(true)
}

/// The advisory lock of an event name (`n`) in this schema: ingests take it
/// shared, a wait that looks back takes it exclusively before storing
/// itself. Under READ COMMITTED, an ingest and a wait in flight at once
/// could otherwise each miss the other's row: the event not seeing the
/// wait, the wait not looking back at the event.
const WAIT_LOCK: &str = "hashtextextended('durafn-wait:' || current_schema() || ':' || n, 0)";

/// A wait with a lookback: resolve it with the first matching event
/// received from `since` on, if one is stored (not the run's trigger, not
/// one in `seen`). Answers whether it did.
async fn look_back(
    c: &impl GenericClient,
    run_id: &str,
    step: &str,
    (event, expr): (&str, Option<&str>),
    (since, seen): (i64, &[String]),
    now: i64,
) -> StoreResult<bool> {
    let trigger: String = query(
        c,
        "SELECT e.payload FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id = $1",
        &[&run_id],
    )
    .await?
    .first()
    .map(|r| r.get(0))
    .ok_or_else(|| StoreError::backend(format!("run {run_id} has no trigger event")))?;
    let trigger: Value = serde_json::from_str(&trigger)?;
    for r in query(
        c,
        "SELECT e.payload FROM events e WHERE e.name = $1 AND e.received_ms >= $2
         AND e.id NOT IN (SELECT event_id FROM runs WHERE id = $3
                          UNION ALL SELECT event_id FROM run_events WHERE run_id = $3)
         AND NOT (e.id = ANY($4))
         ORDER BY e.received_ms, e.seq NULLS FIRST LIMIT 1000",
        &[&event, &since, &run_id, &seen],
    )
    .await?
    {
        let payload: Value = serde_json::from_str(&r.get::<_, String>(0))?;
        if expr_matches(expr, &trigger, &payload) {
            return resolve(c, run_id, step, Outcome::data(payload), now).await;
        }
    }
    Ok(false)
}

/// An invoked run ended: resolve its parent's step with its result.
/// Answers the parent if it resumed.
async fn notify_parent(
    c: &impl GenericClient,
    run_id: &str,
    now: i64,
) -> StoreResult<Option<String>> {
    let Some(row) = query_opt(
        c,
        "SELECT fn_id, status, output, error, parent_run, parent_step FROM runs
         WHERE id = $1 AND parent_run IS NOT NULL",
        &[&run_id],
    )
    .await?
    else {
        return Ok(None);
    };
    let fn_id: String = row.get(0);
    let status = status_of(row.get(1))?;
    let (output, error) = (json(row.get(2))?, json(row.get(3))?);
    let (parent, step): (String, String) = (row.get(4), row.get(5));
    let Some(o) = child_outcome(run_id, &fn_id, status, output.as_ref(), error.as_ref()) else {
        return Ok(None);
    };
    Ok(resolve(c, &parent, &step, o, now).await?.then_some(parent))
}

async fn cancel_run(
    c: &impl GenericClient,
    run_id: &str,
    now: i64,
) -> StoreResult<Option<RunStatus>> {
    let Some(row) = query_opt(
        c,
        "SELECT status FROM runs WHERE id = $1 FOR UPDATE",
        &[&run_id],
    )
    .await?
    else {
        return Ok(None);
    };
    let was = status_of(row.get(0))?;
    if !was.is_final() {
        exec(
            c,
            "UPDATE runs SET status = 'cancelled', ended_ms = $2, wake_at = NULL, pending_step = NULL,
             lease_owner = NULL, lease_until = NULL WHERE id = $1",
            &[&run_id, &now],
        )
        .await?;
        exec(c, "DELETE FROM waits WHERE run_id = $1", &[&run_id]).await?;
    }
    Ok(Some(was))
}

/// Store events with what they start, resolve and cancel.
pub(super) async fn ingest(
    c: &impl GenericClient,
    events: &[NewEvent],
    now: i64,
    receipt: &mut IngestReceipt,
) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    // Before anything else: a wait that looks back for one of these names
    // takes its lock exclusively, so that it and this ingest see each
    // other (see `look_back`).
    query(
        c,
        &format!("SELECT pg_advisory_xact_lock_shared({WAIT_LOCK}) FROM unnest($1::text[]) AS n"),
        &[&names],
    )
    .await?;
    let payloads: Vec<String> = events.iter().map(|e| e.payload.to_string()).collect();
    let ts: Vec<i64> = events.iter().map(|e| e.ts).collect();
    let inserted: HashSet<String> = query(
        c,
        "INSERT INTO events (id, name, payload, ts, received_ms)
         SELECT i, n, p, t, $5 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[]) AS u(i, n, p, t)
         ON CONFLICT (id) DO NOTHING RETURNING id",
        &[&ids, &names, &payloads, &ts, &now],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    // The runs waiting for these names, in the order they began to wait.
    let mut wanted: Vec<&str> = names.clone();
    wanted.sort_unstable();
    wanted.dedup();
    // Event name → (run, step, expression, the run's trigger).
    type Waiting = (String, String, Option<String>, Value);
    let mut waits: HashMap<String, Vec<Waiting>> = HashMap::new();
    for r in query(
        c,
        "SELECT w.event_name, w.run_id, w.step_id, w.expr, e.payload FROM waits w
         JOIN runs r ON r.id = w.run_id JOIN events e ON e.id = r.event_id
         WHERE w.event_name = ANY($1) AND r.status = 'sleeping' ORDER BY w.created_ms",
        &[&wanted],
    )
    .await?
    {
        let trigger: String = r.get(4);
        waits.entry(r.get(0)).or_default().push((
            r.get(1),
            r.get(2),
            r.get(3),
            serde_json::from_str(&trigger)?,
        ));
    }
    let any_cancels = events.iter().any(|e| !e.cancels.is_empty());
    let any_flow = lock_flow_keys(c, events).await?;
    let mut seen = HashSet::new();
    let mut later_runs: Vec<(&NewRun, &str, i64)> = Vec::new();
    for e in events {
        if !inserted.contains(&e.id) || !seen.insert(e.id.as_str()) {
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
            let active = query(
                c,
                "SELECT r.id, e.payload FROM runs r JOIN events e ON e.id = r.event_id
                 WHERE r.fn_id = $1 AND r.status IN ('queued', 'running', 'sleeping')
                 ORDER BY r.created_ms",
                &[&rule.fn_id],
            )
            .await?;
            for row in active {
                let (id, trigger): (String, String) = (row.get(0), row.get(1));
                let trigger: Value = serde_json::from_str(&trigger)?;
                if expr_matches(rule.expr.as_deref(), &trigger, &e.payload)
                    && cancel_run(c, &id, now)
                        .await?
                        .is_some_and(|s| !s.is_final())
                {
                    notify_parent(c, &id, now).await?;
                    receipt.cancelled.push(id);
                }
            }
        }
        if let Some(list) = waits.get_mut(&e.name) {
            for (run_id, step, expr, trigger) in list.iter() {
                if expr_matches(expr.as_deref(), trigger, &e.payload)
                    && resolve(c, run_id, step, Outcome::data(e.payload.clone()), now).await?
                {
                    receipt.resolved.push((run_id.clone(), step.clone()));
                }
            }
        }
        let (mut started, mut skipped, mut runs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut debounced, mut batched) = (Vec::new(), Vec::new());
        for r in &e.runs {
            let admitted = match r.flow.admits_all() {
                true => flow::Admitted::Queued(flow::due_at(&r.flow, now)),
                false => admit(c, r, now, &e.id, receipt).await?,
            };
            match admitted {
                flow::Admitted::Joined(into) => debounced.push(into),
                flow::Admitted::Batched(into) => batched.push(into),
                flow::Admitted::Queued(due) => {
                    started.push(r.id.clone());
                    runs.push((r, e.id.as_str(), due));
                }
                flow::Admitted::Skipped(skip) => {
                    insert_skipped(c, r, &e.id, skip, now).await?;
                    skipped.push(r.id.clone());
                }
            }
        }
        let runs = runs.into_iter();
        // Later cancel rules and flow checks of the batch must see this
        // event's runs.
        if any_cancels || any_flow {
            insert_runs(c, runs, now).await?;
        } else {
            later_runs.extend(runs);
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
    insert_runs(c, later_runs.into_iter(), now).await?;
    Ok(())
}

/// Lock the flow keys the batch's runs touch, creating their rows, in
/// sorted order (two ingests then never wait on each other in a cycle).
/// Answers whether any run has flow control.
async fn lock_flow_keys(c: &impl GenericClient, events: &[NewEvent]) -> StoreResult<bool> {
    let mut keys: Vec<(&str, &'static str, &str)> = events
        .iter()
        .flat_map(|e| &e.runs)
        .flat_map(|r| {
            flow::keys(&r.flow)
                .into_iter()
                .map(|(kind, key)| (r.fn_id.as_str(), kind.as_str(), key))
        })
        .collect();
    if keys.is_empty() {
        return Ok(false);
    }
    keys.sort_unstable();
    keys.dedup();
    let fns: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let kinds: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.2).collect();
    exec(
        c,
        "INSERT INTO flow_keys (fn_id, kind, key)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])
         ON CONFLICT DO NOTHING",
        &[&fns, &kinds, &names],
    )
    .await?;
    query(
        c,
        "SELECT 1 FROM flow_keys k JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS u(f, t, n)
         ON k.fn_id = u.f AND k.kind = u.t AND k.key = u.n
         ORDER BY k.fn_id, k.kind, k.key FOR UPDATE OF k",
        &[&fns, &kinds, &names],
    )
    .await?;
    Ok(true)
}

/// Flow control for a new run (see [`flow`]), its keys locked: `None` to
/// start it, with its keys written and, for a singleton in `cancel` mode,
/// the active runs cancelled; else why it is skipped.
async fn admit(
    c: &impl GenericClient,
    r: &NewRun,
    now: i64,
    event_id: &str,
    receipt: &mut IngestReceipt,
) -> StoreResult<flow::Admitted> {
    let read = |kind: flow::KeyKind, key: Option<String>| async move {
        let Some(key) = key else {
            return Ok::<_, StoreError>(None);
        };
        Ok(query_opt(
            c,
            "SELECT value FROM flow_keys WHERE fn_id = $1 AND kind = $2 AND key = $3",
            &[&r.fn_id, &kind.as_str(), &key],
        )
        .await?
        .and_then(|row| row.get::<_, Option<i64>>(0)))
    };
    let held = read(flow::KeyKind::Idempotency, r.flow.idempotency.clone()).await?;
    let tat = read(
        flow::KeyKind::RateLimit,
        r.flow.rate_limit.as_ref().map(|l| l.key.clone()),
    )
    .await?;
    let active: Vec<String> = match &r.flow.singleton {
        Some(s) => query(
            c,
            "SELECT id FROM runs WHERE fn_id = $1 AND singleton = $2
             AND status IN ('queued', 'running', 'sleeping') ORDER BY created_ms",
            &[&r.fn_id, &s.key],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect(),
        None => Vec::new(),
    };
    let throttle_tat = read(
        flow::KeyKind::Throttle,
        r.flow.throttle.as_ref().map(|t| t.key.clone()),
    )
    .await?;
    let pending_debounce = match &r.flow.debounce {
        Some(d) => query_opt(
            c,
            "SELECT id, created_ms FROM runs WHERE fn_id = $1 AND debounce = $2 AND status = 'queued'
             ORDER BY created_ms LIMIT 1",
            &[&r.fn_id, &d.key],
        )
        .await?
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1))),
        None => None,
    };
    let open_batch = match &r.flow.batch {
        Some(b) => query_opt(
            c,
            "SELECT id, status, batch_size, created_ms FROM runs WHERE fn_id = $1 AND batch = $2",
            &[&r.fn_id, &b.key],
        )
        .await?
        .map(|row| {
            (
                row.get::<_, String>(0),
                row.get::<_, String>(1),
                row.get::<_, Option<i32>>(2).unwrap_or(0) as u32,
                row.get::<_, i64>(3),
            )
        })
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
    let (writes, outcome) = match flow::admit(&r.flow, now, state) {
        flow::Admit::Skip(skip) => return Ok(flow::Admitted::Skipped(skip)),
        flow::Admit::Join {
            writes,
            run_id,
            due_ms,
        } => {
            exec(
                c,
                "UPDATE runs SET event_id = $2, wake_at = $3 WHERE id = $1",
                &[&run_id, &event_id, &due_ms],
            )
            .await?;
            (writes, flow::Admitted::Joined(run_id))
        }
        flow::Admit::Append {
            writes,
            run_id,
            size,
            full,
            due_ms,
        } => {
            exec(
                c,
                "INSERT INTO run_events (run_id, seq, event_id) VALUES ($1, $2, $3)",
                &[&run_id, &(size as i32 - 1), &event_id],
            )
            .await?;
            exec(
                c,
                "UPDATE runs SET batch_size = $2, wake_at = COALESCE($3, wake_at),
                 batch = CASE WHEN $4 THEN NULL ELSE batch END WHERE id = $1",
                &[&run_id, &(size as i32), &due_ms, &full],
            )
            .await?;
            (writes, flow::Admitted::Batched(run_id))
        }
        flow::Admit::Start {
            writes,
            cancel_active,
            due_ms,
        } => {
            if let Some(b) = &r.flow.batch {
                // The new batch is the key's open one: the older one takes
                // no more events.
                exec(
                    c,
                    "UPDATE runs SET batch = NULL WHERE fn_id = $1 AND batch = $2",
                    &[&r.fn_id, &b.key],
                )
                .await?;
            }
            if cancel_active {
                for id in active {
                    if cancel_run(c, &id, now)
                        .await?
                        .is_some_and(|s| !s.is_final())
                    {
                        notify_parent(c, &id, now).await?;
                        receipt.cancelled.push(id);
                    }
                }
            }
            (writes, flow::Admitted::Queued(due_ms))
        }
    };
    for (kind, key, value) in writes {
        exec(
            c,
            "UPDATE flow_keys SET value = $4 WHERE fn_id = $1 AND kind = $2 AND key = $3",
            &[&r.fn_id, &kind.as_str(), &key, &value],
        )
        .await?;
    }
    Ok(outcome)
}

/// Store a run that flow control skipped: ended, with the reason.
async fn insert_skipped(
    c: &impl GenericClient,
    r: &NewRun,
    event: &str,
    skip: flow::Skip,
    now: i64,
) -> StoreResult<()> {
    let error = serde_json::to_string(&skip.error(&r.fn_id, &r.flow))?;
    exec(
        c,
        "INSERT INTO runs (id, fn_id, event_id, status, created_ms, ended_ms, error, parent_run, parent_step, version)
         VALUES ($1, $2, $3, 'skipped', $4, $4, $5, $6, $7, $8)",
        &[
            &r.id,
            &r.fn_id,
            &event,
            &now,
            &error,
            &r.parent.as_ref().map(|p| p.run_id.as_str()),
            &r.parent.as_ref().map(|p| p.step.as_str()),
            &r.version,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_runs<'a>(
    c: &impl GenericClient,
    runs: impl Iterator<Item = (&'a NewRun, &'a str, i64)>,
    now: i64,
) -> StoreResult<()> {
    let (mut ids, mut fns, mut events, mut parents, mut steps, mut singletons) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut ck1, mut cl1, mut ck2, mut cl2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut dues, mut start_by, mut finish_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut debounces, mut batches, mut batch_sizes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut batch_runs, mut batch_events) = (Vec::new(), Vec::new());
    let mut versions = Vec::new();
    for (r, event, due) in runs {
        versions.push(r.version.as_deref());
        if let Some(b) = &r.flow.batch {
            batch_runs.push(r.id.as_str());
            batch_events.push(event);
            batches.push((b.max_size > 1).then_some(b.key.as_str()));
            batch_sizes.push(Some(1i32));
        } else {
            batches.push(None);
            batch_sizes.push(None);
        }
        dues.push(due);
        start_by.push(r.flow.timeouts.start_ms.map(|t| now.saturating_add(t)));
        finish_ms.push(r.flow.timeouts.finish_ms);
        ids.push(r.id.as_str());
        fns.push(r.fn_id.as_str());
        events.push(event);
        parents.push(r.parent.as_ref().map(|p| p.run_id.as_str()));
        steps.push(r.parent.as_ref().map(|p| p.step.as_str()));
        singletons.push(r.flow.singleton.as_ref().map(|s| s.key.as_str()));
        debounces.push(r.flow.debounce.as_ref().map(|d| d.key.as_str()));
        let limit = |i: usize| r.flow.concurrency.get(i);
        ck1.push(limit(0).map(|c| c.key.as_str()));
        cl1.push(limit(0).map(|c| c.limit as i32));
        ck2.push(limit(1).map(|c| c.key.as_str()));
        cl2.push(limit(1).map(|c| c.limit as i32));
    }
    if ids.is_empty() {
        return Ok(());
    }
    exec(
        c,
        "INSERT INTO runs (id, fn_id, event_id, status, wake_at, created_ms, parent_run, parent_step, singleton,
                           ck1, cl1, ck2, cl2, start_by, finish_ms, debounce, batch, batch_size, version)
         SELECT i, f, e, 'queued', w, $6, p, s, g, k1, l1, k2, l2, sb, fm, d, b, bs, v
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $7::text[],
                     $8::text[], $9::int4[], $10::text[], $11::int4[], $12::int8[],
                     $13::int8[], $14::int8[], $15::text[], $16::text[], $17::int4[], $18::text[])
              AS u(i, f, e, p, s, g, k1, l1, k2, l2, w, sb, fm, d, b, bs, v)",
        &[
            &ids, &fns, &events, &parents, &steps, &now, &singletons, &ck1, &cl1, &ck2, &cl2,
            &dues, &start_by, &finish_ms, &debounces, &batches, &batch_sizes, &versions,
        ],
    )
    .await
    .map_err(|e| match e {
        StoreError::Conflict(_) => StoreError::Conflict("a run with one of these IDs exists already".into()),
        other => other,
    })?;
    if !batch_runs.is_empty() {
        exec(
            c,
            "INSERT INTO run_events (run_id, seq, event_id)
             SELECT r, 0, e FROM UNNEST($1::text[], $2::text[]) AS u(r, e)",
            &[&batch_runs, &batch_events],
        )
        .await?;
    }
    Ok(())
}

/// The SQL condition that a candidate's concurrency keys have room (`$5`:
/// now on the lease clock).
const ROOM: &str = "AND (ck1 IS NULL OR (SELECT count(*) FROM runs r2 WHERE r2.ck1 = runs.ck1 AND r2.status = 'running' AND r2.lease_until >= $5)
                          + (SELECT count(*) FROM runs r2 WHERE r2.ck2 = runs.ck1 AND r2.status = 'running' AND r2.lease_until >= $5) < cl1)
             AND (ck2 IS NULL OR (SELECT count(*) FROM runs r2 WHERE r2.ck1 = runs.ck2 AND r2.status = 'running' AND r2.lease_until >= $5)
                          + (SELECT count(*) FROM runs r2 WHERE r2.ck2 = runs.ck2 AND r2.status = 'running' AND r2.lease_until >= $5) < cl2)";

/// The candidates a claim may take under their concurrency limits, in
/// order. The keys' rows are locked before the running runs are counted,
/// so two processes claiming at once cannot both take a key's last slot;
/// a key locked by another claim is left to it.
async fn within_limits(
    c: &impl GenericClient,
    picked: Vec<Row>,
    lease_now: i64,
) -> StoreResult<Vec<Row>> {
    let limits = |r: &Row| -> Vec<flow::Concurrency> {
        [(3, 4), (5, 6)]
            .into_iter()
            .filter_map(|(k, l)| {
                Some(flow::Concurrency {
                    key: r.get::<_, Option<String>>(k)?,
                    limit: r.get::<_, Option<i32>>(l)?.max(0) as u32,
                })
            })
            .collect()
    };
    let mut keys: Vec<String> = picked
        .iter()
        .flat_map(|r| limits(r).into_iter().map(|l| l.key))
        .collect();
    if keys.is_empty() {
        return Ok(picked);
    }
    keys.sort_unstable();
    keys.dedup();
    exec(
        c,
        "INSERT INTO flow_keys (fn_id, kind, key)
         SELECT '', 'concurrency', k FROM UNNEST($1::text[]) AS u(k) ON CONFLICT DO NOTHING",
        &[&keys],
    )
    .await?;
    // A key another process is claiming for is skipped, not waited for:
    // that process counts and takes its runs; this one takes the others.
    let locked: HashSet<String> = query(
        c,
        "SELECT key FROM flow_keys WHERE fn_id = '' AND kind = 'concurrency' AND key = ANY($1)
         FOR UPDATE SKIP LOCKED",
        &[&keys],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let mut running: HashMap<String, u64> = HashMap::new();
    for r in query(
        c,
        "SELECT k, count(*) FROM (
             SELECT ck1 AS k FROM runs WHERE ck1 = ANY($1) AND status = 'running' AND lease_until >= $2
             UNION ALL
             SELECT ck2 FROM runs WHERE ck2 = ANY($1) AND status = 'running' AND lease_until >= $2
         ) AS u GROUP BY k",
        &[&keys, &lease_now],
    )
    .await?
    {
        running.insert(r.get(0), r.get::<_, i64>(1) as u64);
    }
    let mut taken = HashMap::new();
    Ok(picked
        .into_iter()
        .filter(|r| {
            let limits = limits(r);
            limits.iter().all(|l| locked.contains(&l.key))
                && flow::fits(
                    &limits,
                    |k| running.get(k).copied().unwrap_or(0),
                    &mut taken,
                )
        })
        .collect())
}

/// Cancel the runs whose start or finish timeout passed, with the timeout
/// as their error.
async fn sweep_timeouts(c: &impl GenericClient, now: i64) -> StoreResult<()> {
    for (kind, sql) in [
        (
            flow::START_TIMEOUT,
            "SELECT id, fn_id FROM runs WHERE start_by <= $1 AND status IN ('queued', 'sleeping')
             FOR UPDATE SKIP LOCKED",
        ),
        (
            flow::FINISH_TIMEOUT,
            "SELECT id, fn_id FROM runs WHERE finish_by <= $1 AND status IN ('queued', 'running', 'sleeping')
             FOR UPDATE SKIP LOCKED",
        ),
    ] {
        for row in query(c, sql, &[&now]).await? {
            let (id, fn_id): (String, String) = (row.get(0), row.get(1));
            if cancel_run(c, &id, now).await?.is_some_and(|s| !s.is_final()) {
                notify_parent(c, &id, now).await?;
                let error = serde_json::to_string(&flow::timeout_error(kind, &fn_id))?;
                exec(c, "UPDATE runs SET error = $2 WHERE id = $1", &[&id, &error]).await?;
            }
        }
    }
    Ok(())
}

pub(super) async fn claim(
    c: &impl GenericClient,
    req: &ClaimRequest,
) -> StoreResult<Vec<ClaimedRun>> {
    sweep_timeouts(c, req.now_ms).await?;
    let limit = req.limit as i64;
    let mut picked = query(
        c,
        &format!(
            "SELECT id, pending_step, pending_outcome, ck1, cl1, ck2, cl2 FROM runs
             WHERE status IN ('queued', 'sleeping') AND wake_at <= $1
             AND (fn_id = ANY($2) OR created_ms <= $3) {ROOM}
             ORDER BY wake_at LIMIT $4 FOR UPDATE SKIP LOCKED"
        ),
        &[
            &req.now_ms,
            &req.functions,
            &req.unknown_before_ms,
            &limit,
            &req.lease_now_ms,
        ],
    )
    .await?;
    if picked.len() < req.limit {
        let room = limit - picked.len() as i64;
        picked.extend(
            query(
                c,
                &format!(
                    "SELECT id, pending_step, pending_outcome, ck1, cl1, ck2, cl2 FROM runs
                     WHERE status = 'running' AND lease_until < $1
                     AND (fn_id = ANY($2) OR created_ms <= $3) {ROOM}
                     LIMIT $4 FOR UPDATE SKIP LOCKED"
                ),
                &[
                    &req.lease_now_ms,
                    &req.functions,
                    &req.unknown_before_ms,
                    &room,
                    &req.lease_now_ms,
                ],
            )
            .await?,
        );
    }
    let picked = within_limits(c, picked, req.lease_now_ms).await?;
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::with_capacity(picked.len());
    for row in &picked {
        let id: String = row.get(0);
        if let Some(step) = row.get::<_, Option<String>>(1) {
            // The wake time came first: journal the default outcome (`null`
            // for a sleep or a wait that timed out).
            let outcome = match row.get::<_, Option<String>>(2) {
                Some(o) => serde_json::from_str(&o)?,
                None => Outcome::null(),
            };
            journal_pending(c, &id, &step, outcome, req.now_ms).await?;
        }
        ids.push(id);
    }
    let until_ms = req.lease_now_ms.saturating_add(req.lease_ms);
    let rows = query(
        c,
        &format!(
            "UPDATE runs SET status = 'running', lease_owner = $2, lease_until = $3, lease_gen = lease_gen + 1,
             wake_at = NULL, pending_step = NULL, pending_outcome = NULL,
             start_by = NULL, finish_by = COALESCE(finish_by, $4 + finish_ms)
             WHERE id = ANY($1) RETURNING {RUN_COLS}, lease_gen, batch_size"
        ),
        &[&ids, &req.owner, &until_ms, &req.now_ms],
    )
    .await?;
    let mut runs = Vec::with_capacity(rows.len());
    let mut batched = Vec::new();
    for r in &rows {
        let run = run_record(r)?;
        if r.get::<_, Option<i32>>(14).is_some() {
            batched.push(run.id.clone());
        }
        runs.push((run, r.get::<_, i64>(13)));
    }
    let mut batches = batch_events(c, &batched).await?;
    let event_ids: Vec<&str> = runs.iter().map(|(r, _)| r.event_id.as_str()).collect();
    let mut events: HashMap<String, Value> = HashMap::new();
    for r in query(
        c,
        "SELECT id, payload FROM events WHERE id = ANY($1)",
        &[&event_ids],
    )
    .await?
    {
        let payload: String = r.get(1);
        events.insert(r.get(0), serde_json::from_str(&payload)?);
    }
    let mut journals = journals(c, &ids).await?;
    let mut attempts: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for r in query(
        c,
        "SELECT run_id, step_id, attempts FROM step_attempts WHERE run_id = ANY($1) AND status = 'retrying'",
        &[&ids],
    )
    .await?
    {
        attempts
            .entry(r.get(0))
            .or_default()
            .insert(r.get(1), r.get::<_, i32>(2) as u32);
    }
    let mut out = Vec::with_capacity(runs.len());
    for (run, generation) in runs {
        let event = events
            .get(&run.event_id)
            .cloned()
            .ok_or_else(|| StoreError::backend(format!("run {} has no event", run.id)))?;
        out.push(ClaimedRun {
            lease: Lease {
                run_id: run.id.clone(),
                owner: req.owner.clone(),
                generation: generation as u64,
                until_ms,
            },
            event,
            events: batches.remove(&run.id).unwrap_or_default(),
            journal: journals.remove(&run.id).unwrap_or_default(),
            attempts: attempts.remove(&run.id).unwrap_or_default(),
            run,
        });
    }
    Ok(out)
}

pub(super) async fn heartbeat(
    c: &impl GenericClient,
    lease: &Lease,
    until_ms: i64,
) -> StoreResult<()> {
    let n = exec(
        c,
        "UPDATE runs SET lease_until = $4
         WHERE id = $1 AND status = 'running' AND lease_owner = $2 AND lease_gen = $3",
        &[
            &lease.run_id,
            &lease.owner,
            &(lease.generation as i64),
            &until_ms,
        ],
    )
    .await?;
    if n == 0 {
        return Err(lease_lost(lease));
    }
    Ok(())
}

/// A step's commit: the fence and the write in one statement (the run's
/// row is held `FOR SHARE` until the commit, so no claim can slip between).
pub(super) async fn commit_step(
    c: &impl GenericClient,
    lease: &Lease,
    s: &StepCommit,
) -> StoreResult<()> {
    let (kind, payload) = encode(&s.outcome)?;
    let n = exec(
        c,
        "WITH held AS (
            SELECT id FROM runs WHERE id = $1 AND status = 'running' AND lease_owner = $9 AND lease_gen = $10
            FOR SHARE
         )
         INSERT INTO journal (run_id, step_id, name, kind, payload, attempts, started_ms, ended_ms)
         SELECT id, $2, $3, $4, $5, $6, $7, $8 FROM held",
        &[
            &lease.run_id,
            &s.step,
            &s.name,
            &kind,
            &payload,
            &(s.attempts as i32),
            &s.started_ms,
            &s.ended_ms,
            &lease.owner,
            &(lease.generation as i64),
        ],
    )
    .await?;
    if n == 0 {
        return Err(lease_lost(lease));
    }
    if s.attempts > 1 {
        // Not atomic with the insert outside a transaction, and harmless:
        // a `retrying` row of a journaled step is ignored on claim.
        exec(
            c,
            "UPDATE step_attempts SET status = 'done' WHERE run_id = $1 AND step_id = $2",
            &[&lease.run_id, &s.step],
        )
        .await?;
    }
    if s.reset_fn_attempt {
        // The same: a reset lost to a crash costs the run retries, no more.
        exec(
            c,
            "UPDATE runs SET fn_attempt = 0 WHERE id = $1",
            &[&lease.run_id],
        )
        .await?;
    }
    Ok(())
}

/// Suspend a run; answers whether a run became due at once (an invoked
/// child, or a parent a finished child resolves).
pub(super) async fn suspend(
    c: &impl GenericClient,
    lease: &Lease,
    s: &Suspension,
    now: i64,
) -> StoreResult<bool> {
    if let Suspension::Wait {
        event,
        since_ms: Some(_),
        ..
    } = s
    {
        // First, before any row lock: wait for the ingests of this name
        // under way, and hold back new ones until this wait is stored.
        let n = event.as_str();
        query(
            c,
            &format!("SELECT pg_advisory_xact_lock({WAIT_LOCK}) FROM (SELECT $1::text AS n) AS w"),
            &[&n],
        )
        .await?;
    }
    let id = lease.run_id.as_str();
    let (status, wake_at, pending, fn_attempt) = match s {
        Suspension::Retry {
            wake_at,
            fn_attempt,
            ..
        } => ("sleeping", *wake_at, None, Some(*fn_attempt as i32)),
        Suspension::Delay { wake_at } => ("queued", *wake_at, None, None),
        Suspension::Sleep { step, until_ms }
        | Suspension::Wait { step, until_ms, .. }
        | Suspension::Invoke { step, until_ms, .. } => ("sleeping", *until_ms, Some(step), None),
    };
    let n = exec(
        c,
        "UPDATE runs SET status = $4, wake_at = $5, pending_step = $6, pending_outcome = NULL,
         fn_attempt = COALESCE($7, fn_attempt), lease_owner = NULL, lease_until = NULL
         WHERE id = $1 AND status = 'running' AND lease_owner = $2 AND lease_gen = $3",
        &[
            &id,
            &lease.owner,
            &(lease.generation as i64),
            &status,
            &wake_at,
            &pending.map(|p| &p.step),
            &fn_attempt,
        ],
    )
    .await?;
    if n == 0 {
        return Err(lease_lost(lease));
    }
    if let Some(p) = pending {
        exec(
            c,
            "INSERT INTO step_attempts (run_id, step_id, status, attempts, started_ms, name)
             VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (run_id, step_id) DO NOTHING",
            &[&id, &p.step, &pending_status(s), &now, &p.name],
        )
        .await?;
    }
    let mut woke = wake_at <= now;
    match s {
        Suspension::Retry { failures, .. } => {
            for f in failures {
                exec(
                    c,
                    "INSERT INTO step_attempts (run_id, step_id, status, name, attempts, error, started_ms)
                     VALUES ($1, $2, 'retrying', $3, $4, $5, $6)
                     ON CONFLICT (run_id, step_id) DO UPDATE SET status = 'retrying', attempts = $4, error = $5",
                    &[
                        &id,
                        &f.step,
                        &f.name,
                        &(f.attempts as i32),
                        &serde_json::to_string(&f.error)?,
                        &f.started_ms,
                    ],
                )
                .await?;
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
            exec(
                c,
                "INSERT INTO waits (run_id, step_id, event_name, expr, created_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (run_id, step_id) DO UPDATE SET event_name = $3, expr = $4, created_ms = $5",
                &[&id, &step.step, event, expr, &now],
            )
            .await?;
            if let Some(since) = since_ms {
                woke |= look_back(
                    c,
                    id,
                    &step.step,
                    (event, expr.as_deref()),
                    (*since, seen),
                    now,
                )
                .await?;
            }
        }
        Suspension::Invoke {
            timeout_error,
            child,
            ..
        } => {
            exec(
                c,
                "UPDATE runs SET pending_outcome = $2 WHERE id = $1",
                &[
                    &id,
                    &serde_json::to_string(&Outcome::error(timeout_error.clone()))?,
                ],
            )
            .await?;
            let mut receipt = IngestReceipt::default();
            ingest(c, std::slice::from_ref(child), now, &mut receipt).await?;
            woke = true;
            if receipt.events.first().is_some_and(|e| !e.new) {
                // Invoked before a crash: hand over the result of a child
                // that ended meanwhile.
                let ended = query_opt(
                    c,
                    "SELECT id FROM runs WHERE event_id = $1 AND parent_run = $2
                     AND status IN ('completed', 'failed', 'cancelled')",
                    &[&child.id, &id],
                )
                .await?;
                if let Some(row) = ended {
                    let child_run: String = row.get(0);
                    notify_parent(c, &child_run, now).await?;
                }
            }
        }
    }
    Ok(woke)
}

pub(super) async fn finish(
    c: &impl GenericClient,
    lease: &Lease,
    f: &Finish,
    now: i64,
) -> StoreResult<Finished> {
    let (status, output, error, event) = match f {
        Finish::Completed { output } => ("completed", Some(output.to_string()), None, None),
        Finish::Failed { error, event } => (
            "failed",
            None,
            Some(serde_json::to_string(error)?),
            event.as_ref(),
        ),
    };
    let ended = query_opt(
        c,
        "UPDATE runs SET status = $4, output = $5, error = $6, ended_ms = $7,
         lease_owner = NULL, lease_until = NULL, wake_at = NULL
         WHERE id = $1 AND status = 'running' AND lease_owner = $2 AND lease_gen = $3
         RETURNING parent_run",
        &[
            &lease.run_id,
            &lease.owner,
            &(lease.generation as i64),
            &status,
            &output,
            &error,
            &now,
        ],
    )
    .await?;
    let Some(ended) = ended else {
        return Err(lease_lost(lease));
    };
    let mut woke = Vec::new();
    if ended.get::<_, Option<String>>(0).is_some() {
        woke.extend(notify_parent(c, &lease.run_id, now).await?);
    }
    if let Some(e) = event {
        let mut receipt = IngestReceipt::default();
        ingest(c, std::slice::from_ref(e), now, &mut receipt).await?;
        woke.extend(receipt.events.into_iter().flat_map(|e| e.runs));
    }
    Ok(Finished { woke })
}

/// Cancel a run; answers its status before and whether a parent resumed.
pub(super) async fn cancel(
    c: &impl GenericClient,
    run_id: &str,
    now: i64,
) -> StoreResult<(Option<RunStatus>, bool)> {
    let was = cancel_run(c, run_id, now).await?;
    let woke = match was {
        Some(s) if !s.is_final() => {
            record_op(c, run_id, &RunOp::cancel(now)).await?;
            notify_parent(c, run_id, now).await?.is_some()
        }
        _ => false,
    };
    Ok((was, woke))
}

async fn record_op(c: &impl GenericClient, run_id: &str, op: &RunOp) -> StoreResult<()> {
    exec(
        c,
        "INSERT INTO run_ops (run_id, op) VALUES ($1, $2)",
        &[&run_id, &serde_json::to_string(op)?],
    )
    .await?;
    Ok(())
}

async fn ops(c: &impl GenericClient, run_id: &str) -> StoreResult<Vec<RunOp>> {
    let rows = query(
        c,
        "SELECT op FROM run_ops WHERE run_id = $1 ORDER BY seq",
        &[&run_id],
    )
    .await?;
    rows.iter()
        .map(|r| Ok(serde_json::from_str(r.get::<_, &str>(0))?))
        .collect()
}

/// A run made from another: see [`Store::restart`].
pub(super) async fn restart(c: &impl GenericClient, r: &Restart) -> StoreResult<bool> {
    let from = r.origin.run_id.as_str();
    let Some(row) = query_opt(
        c,
        "SELECT event_id, batch_size FROM runs WHERE id = $1",
        &[&from],
    )
    .await?
    else {
        return Ok(false);
    };
    let (event_id, batch_size): (String, Option<i32>) = (row.get(0), row.get(1));
    let now = r.now_ms;
    let n = &r.run;
    let limit = |i: usize| n.flow.concurrency.get(i).map(|c| c.limit as i32);
    let key = |i: usize| n.flow.concurrency.get(i).map(|c| c.key.as_str());
    exec(
        c,
        "INSERT INTO runs (id, fn_id, event_id, status, wake_at, created_ms, ck1, cl1, ck2, cl2,
                           start_by, finish_ms, version, origin, batch_size)
         VALUES ($1, $2, $3, 'queued', $4, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &n.id,
            &n.fn_id,
            &event_id,
            &now,
            &key(0),
            &limit(0),
            &key(1),
            &limit(1),
            &n.flow.timeouts.start_ms.map(|t| now.saturating_add(t)),
            &n.flow.timeouts.finish_ms,
            &n.version,
            &serde_json::to_string(&r.origin)?,
            &batch_size,
        ],
    )
    .await
    .map_err(|e| match e {
        StoreError::Conflict(_) => {
            StoreError::Conflict(format!("a run with the ID `{}` exists already", n.id))
        }
        other => other,
    })?;
    exec(
        c,
        "INSERT INTO run_events (run_id, seq, event_id)
         SELECT $1, seq, event_id FROM run_events WHERE run_id = $2",
        &[&n.id, &from],
    )
    .await?;
    for s in &r.journal {
        append(c, &n.id, s).await?;
    }
    record_op(c, from, &RunOp::made(&r.origin, &n.id, now)).await?;
    Ok(true)
}

pub(super) async fn put_app(c: &impl GenericClient, app: &AppRecord) -> StoreResult<()> {
    exec(
        c,
        "INSERT INTO apps (id, url, body, updated_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET url = $2, body = $3, updated_ms = $4",
        &[&app.id, &app.url, &app.body.to_string(), &app.updated_ms],
    )
    .await?;
    Ok(())
}

pub(super) async fn apps(c: &impl GenericClient) -> StoreResult<Vec<AppRecord>> {
    query(
        c,
        "SELECT id, url, body, updated_ms FROM apps ORDER BY id",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        let body: String = r.get(2);
        Ok(AppRecord {
            id: r.get(0),
            url: r.get(1),
            body: serde_json::from_str(&body)?,
            updated_ms: r.get(3),
        })
    })
    .collect()
}

pub(super) async fn load_run(c: &impl GenericClient, id: &str) -> StoreResult<Option<RunRecord>> {
    query_opt(
        c,
        &format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"),
        &[&id],
    )
    .await?
    .map(|r| run_record(&r))
    .transpose()
}

pub(super) async fn list_runs(
    c: &impl GenericClient,
    f: &RunFilter,
) -> StoreResult<Vec<RunRecord>> {
    let status = f.status.map(|s| s.as_str());
    let limit = f.limit.unwrap_or(100) as i64;
    query(
        c,
        &format!(
            "SELECT {RUN_COLS} FROM runs WHERE ($1::text IS NULL OR fn_id = $1) AND ($2::text IS NULL OR status = $2)
             AND ($4::int8 IS NULL OR (created_ms, id) < ($4, $5::text))
             AND ($6::text IS NULL OR event_id = $6 OR id IN (SELECT run_id FROM run_events WHERE event_id = $6))
             ORDER BY created_ms DESC, id DESC LIMIT $3"
        ),
        &[
            &f.function,
            &status,
            &limit,
            &f.after.as_ref().map(|a| a.0),
            &f.after.as_ref().map(|a| a.1.as_str()),
            &f.event,
        ],
    )
    .await?
    .iter()
    .map(run_record)
    .collect()
}

/// The journals of these runs, each in order.
pub(super) async fn journals(
    c: &impl GenericClient,
    ids: &[String],
) -> StoreResult<HashMap<String, Journal>> {
    let mut journals: HashMap<String, Journal> = HashMap::new();
    for r in query(
        c,
        "SELECT run_id, step_id, kind, payload FROM journal WHERE run_id = ANY($1) ORDER BY run_id, seq",
        &[&ids],
    )
    .await?
    {
        let (run_id, step): (String, String) = (r.get(0), r.get(1));
        let outcome = decode(&run_id, &step, r.get(2), r.get(3))?;
        journals
            .entry(run_id)
            .or_default()
            .insert(StepId::from_readable(step), outcome);
    }
    Ok(journals)
}

/// The events of these batch runs, in order.
async fn batch_events(
    c: &impl GenericClient,
    run_ids: &[String],
) -> StoreResult<HashMap<String, Vec<Value>>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    if run_ids.is_empty() {
        return Ok(out);
    }
    for r in query(
        c,
        "SELECT b.run_id, e.payload FROM run_events b JOIN events e ON e.id = b.event_id
         WHERE b.run_id = ANY($1) ORDER BY b.run_id, b.seq",
        &[&run_ids],
    )
    .await?
    {
        let payload: String = r.get(1);
        out.entry(r.get(0))
            .or_default()
            .push(serde_json::from_str(&payload)?);
    }
    Ok(out)
}

pub(super) async fn run_detail(
    c: &impl GenericClient,
    run_id: &str,
) -> StoreResult<Option<RunDetail>> {
    let Some(run) = load_run(c, run_id).await? else {
        return Ok(None);
    };
    let event: String = query_opt(
        c,
        "SELECT payload FROM events WHERE id = $1",
        &[&run.event_id],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or_else(|| StoreError::backend(format!("run {run_id} has no event")))?;
    let mut steps = Vec::new();
    for r in query(
        c,
        "SELECT j.step_id, j.kind, j.payload, j.attempts, COALESCE(a.started_ms, j.started_ms), j.ended_ms, a.error, j.name
         FROM journal j LEFT JOIN step_attempts a ON a.run_id = j.run_id AND a.step_id = j.step_id
         WHERE j.run_id = $1 ORDER BY j.seq",
        &[&run_id],
    )
    .await?
    {
        let id: String = r.get(0);
        let outcome = decode(run_id, &id, r.get(1), r.get(2))?;
        let (status, output, error) = match outcome {
            Outcome::Data { data } => ("completed", Some(data), json(r.get(6))?),
            Outcome::Error { error } => ("failed", None, Some(serde_json::to_value(error)?)),
            Outcome::Null(()) => ("completed", None, None),
        };
        steps.push(StepRecord {
            id,
            name: r.get(7),
            kind: None,
            status: status.into(),
            attempts: r.get::<_, i32>(3) as u32,
            started_ms: r.get(4),
            ended_ms: r.get(5),
            output,
            error,
        });
    }
    for r in query(
        c,
        "SELECT step_id, status, attempts, error, started_ms, name FROM step_attempts a
         WHERE run_id = $1 AND status != 'done'
         AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.run_id = a.run_id AND j.step_id = a.step_id)",
        &[&run_id],
    )
    .await?
    {
        steps.push(StepRecord {
            id: r.get(0),
            name: r.get(5),
            kind: None,
            status: r.get(1),
            attempts: r.get::<_, i32>(2) as u32,
            started_ms: r.get(4),
            ended_ms: None,
            output: None,
            error: json(r.get(3))?,
        });
    }
    let mut events = batch_events(c, &[run_id.to_string()]).await?;
    Ok(Some(RunDetail {
        events: events.remove(run_id).unwrap_or_default(),
        run,
        event: serde_json::from_str(&event)?,
        steps,
        ops: ops(c, run_id).await?,
    }))
}

pub(super) async fn list_events(
    c: &impl GenericClient,
    limit: usize,
    before: Option<&(i64, String)>,
) -> StoreResult<Vec<EventRecord>> {
    let rows = query(
        c,
        "SELECT id, name, payload, received_ms FROM events
         WHERE $2::int8 IS NULL OR received_ms < $2 OR (received_ms = $2 AND id < $3)
         ORDER BY received_ms DESC, id DESC LIMIT $1",
        &[
            &(limit as i64),
            &before.map(|b| b.0),
            &before.map(|b| b.1.as_str()),
        ],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(EventRecord {
                id: r.get(0),
                name: r.get(1),
                event: serde_json::from_str(r.get::<_, &str>(2))?,
                received_ms: r.get(3),
            })
        })
        .collect()
}

pub(super) async fn next_wake(
    c: &impl GenericClient,
    functions: &[String],
    unknown_timeout_ms: i64,
) -> StoreResult<Option<i64>> {
    let row = query_opt(
        c,
        "SELECT MIN(CASE WHEN fn_id = ANY($1) THEN wake_at ELSE GREATEST(wake_at, created_ms + $2) END)
         FROM runs WHERE status IN ('queued', 'sleeping')",
        &[&functions, &unknown_timeout_ms],
    )
    .await?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Retention: see [`Store::purge`]. Runs another process holds a lock on
/// are left for the next batch.
pub(super) async fn purge(
    c: &impl GenericClient,
    before: i64,
    limit: usize,
) -> StoreResult<Purged> {
    let limit = limit as i64;
    let runs: Vec<String> = query(
        c,
        "SELECT r.id FROM runs r WHERE r.ended_ms < $1
         AND r.status IN ('completed', 'failed', 'cancelled', 'skipped')
         AND NOT EXISTS (SELECT 1 FROM runs k WHERE k.parent_run = r.id
                         AND k.status IN ('queued', 'running', 'sleeping'))
         AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.id = r.parent_run
                         AND p.status IN ('queued', 'running', 'sleeping'))
         ORDER BY r.ended_ms LIMIT $2 FOR UPDATE SKIP LOCKED",
        &[&before, &limit],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    for table in [
        "DELETE FROM journal WHERE run_id = ANY($1)",
        "DELETE FROM step_attempts WHERE run_id = ANY($1)",
        "DELETE FROM waits WHERE run_id = ANY($1)",
        "DELETE FROM run_events WHERE run_id = ANY($1)",
        "DELETE FROM run_ops WHERE run_id = ANY($1)",
        "DELETE FROM runs WHERE id = ANY($1)",
    ] {
        exec(c, table, &[&runs]).await?;
    }
    let events = exec(
        c,
        "DELETE FROM events WHERE id IN (
             SELECT e.id FROM events e WHERE e.received_ms < $1
             AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id)
             AND NOT EXISTS (SELECT 1 FROM run_events b WHERE b.event_id = e.id)
             ORDER BY e.received_ms LIMIT $2 FOR UPDATE SKIP LOCKED)",
        &[&before, &limit],
    )
    .await? as usize;
    let keys = exec(
        c,
        "DELETE FROM flow_keys WHERE (fn_id, kind, key) IN (
             SELECT fn_id, kind, key FROM flow_keys
             WHERE kind IN ('idempotency', 'rate_limit', 'throttle') AND value < $1
             LIMIT $2 FOR UPDATE SKIP LOCKED)",
        &[&before, &limit],
    )
    .await? as usize;
    // PostgreSQL's autovacuum makes the space reusable.
    Ok(Purged {
        runs: runs.len(),
        events,
        keys,
        reclaiming: false,
    })
}
