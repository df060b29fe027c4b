//! The reads, on a reader connection of their own.

use rusqlite::{params, Connection};

use super::super::*;
use super::sql::{decode, finish_row, from_json, load_run, run_row, RUN_COLS};

pub(super) fn apps(c: &Connection) -> StoreResult<Vec<AppRecord>> {
    let rows: Vec<(String, String, String, i64)> = c
        .prepare_cached("SELECT id, url, body, updated_ms FROM apps ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(|(id, url, body, updated_ms)| {
            Ok(AppRecord {
                id,
                url,
                body: serde_json::from_str(&body)?,
                updated_ms,
            })
        })
        .collect()
}

pub(super) fn list_runs(c: &Connection, f: &RunFilter) -> StoreResult<Vec<RunRecord>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {RUN_COLS} FROM runs WHERE (?1 IS NULL OR fn_id = ?1) AND (?2 IS NULL OR status = ?2)
         AND (?4 IS NULL OR created_ms < ?4 OR (created_ms = ?4 AND id < ?5))
         AND (?6 IS NULL OR event_id = ?6 OR id IN (SELECT run_id FROM run_events WHERE event_id = ?6))
         ORDER BY created_ms DESC, id DESC LIMIT ?3"
    ))?;
    let rows = st.query_map(
        params![
            f.function,
            f.status.map(|s| s.as_str()),
            f.limit.unwrap_or(100) as i64,
            f.after.as_ref().map(|a| a.0),
            f.after.as_ref().map(|a| a.1.as_str()),
            f.event,
        ],
        run_row,
    )?;
    let mut out = Vec::new();
    for r in rows {
        out.push(finish_row(r?)?);
    }
    Ok(out)
}

pub(super) fn list_events(
    c: &Connection,
    limit: usize,
    before: Option<&(i64, String)>,
) -> StoreResult<Vec<EventRecord>> {
    let mut st = c.prepare_cached(
        "SELECT id, name, event, received_ms FROM events
         WHERE ?2 IS NULL OR received_ms < ?2 OR (received_ms = ?2 AND id < ?3)
         ORDER BY received_ms DESC, id DESC LIMIT ?1",
    )?;
    let rows = st.query_map(
        params![
            limit as i64,
            before.map(|b| b.0),
            before.map(|b| b.1.as_str())
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for r in rows {
        let (id, name, event, received_ms) = r?;
        out.push(EventRecord {
            id,
            name,
            received_ms,
            event: serde_json::from_str(&event)?,
        });
    }
    Ok(out)
}

pub(super) fn run_detail(c: &Connection, run_id: &str) -> StoreResult<Option<RunDetail>> {
    let Some(run) = load_run(c, run_id)? else {
        return Ok(None);
    };
    let event: String = c
        .prepare_cached("SELECT event FROM events WHERE id = ?1")?
        .query_row([&run.event_id], |r| r.get(0))?;
    let mut steps = Vec::new();
    let mut st = c.prepare_cached(
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
            Outcome::Error { error } => ("failed", None, Some(serde_json::to_value(error)?)),
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
    // Steps in progress: retrying, sleeping, waiting or invoking.
    let mut st = c.prepare_cached(
        "SELECT step_id, status, attempts, error, started_ms, name FROM step_attempts a
         WHERE run_id = ?1 AND status != 'done'
         AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.run_id = a.run_id AND j.step_id = a.step_id)",
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
    Ok(Some(RunDetail {
        events: super::sql::batch_events(c, run_id)?,
        run,
        event: serde_json::from_str(&event)?,
        steps,
        ops: super::sql::ops(c, run_id)?,
    }))
}
