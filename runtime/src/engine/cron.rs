//! Cron triggers: a scheduler task per cron trigger starts a run of its
//! function at each tick, with Inngest's `inngest/scheduled.timer` event.
//!
//! Each tick's event ID is derived from the function and the tick time, so
//! a tick is started at most once, across restarts and across several
//! engines on one store. On start, if the function has run on its schedule
//! before, the latest tick that passed while the engine was down runs once
//! (not every missed tick).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use super::{ingest, new_id, Inner};
use crate::function::CRON_EVENT;
use crate::store::{NewRun, RunFilter};

/// A parsed schedule: `[TZ=Area/City ]` + 5 fields (minute precision) or 6
/// (with seconds).
pub struct Schedule {
    tz: chrono_tz::Tz,
    schedule: cron::Schedule,
}

pub fn parse(src: &str) -> Result<Schedule, String> {
    let src = src.trim();
    let (tz, rest) = match src
        .strip_prefix("TZ=")
        .or_else(|| src.strip_prefix("CRON_TZ="))
    {
        Some(r) => {
            let (tz, rest) = r
                .split_once(' ')
                .ok_or_else(|| format!("durafn: `{src}` has a time zone but no schedule"))?;
            (
                chrono_tz::Tz::from_str(tz)
                    .map_err(|_| format!("durafn: unknown time zone `{tz}` in `{src}`"))?,
                rest.trim(),
            )
        }
        None => (chrono_tz::UTC, src),
    };
    let fields = rest.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {rest}"),
        6 | 7 => rest.to_string(),
        _ => {
            return Err(format!(
                "durafn: `{src}` is not a cron schedule (5 fields, or 6 with seconds)"
            ))
        }
    };
    let schedule = cron::Schedule::from_str(&full)
        .map_err(|e| format!("durafn: `{src}` is not a valid cron schedule: {e}"))?;
    Ok(Schedule { tz, schedule })
}

impl Schedule {
    fn at(&self, ms: i64) -> DateTime<chrono_tz::Tz> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .unwrap_or_default()
            .with_timezone(&self.tz)
    }

    /// The latest tick at or before `ms`.
    pub fn previous(&self, ms: i64) -> Option<i64> {
        self.schedule
            .after(&self.at(ms + 1))
            .next_back()
            .map(|t| t.timestamp_millis())
    }

    /// The first tick after `ms`.
    pub fn next(&self, ms: i64) -> Option<i64> {
        self.schedule
            .after(&self.at(ms))
            .next()
            .map(|t| t.timestamp_millis())
    }
}

/// Start the tick's run through ingest, like any other event: the tick's
/// event also resolves waits for it and fires `cancel_on` rules.
async fn fire(inner: &Arc<Inner>, fn_id: &str, src: &str, tick: i64) {
    let id = format!("cron-{fn_id}-{tick}");
    let now = inner.clock.now_ms();
    let payload =
        json!({"name": CRON_EVENT, "id": id, "ts": tick, "data": {"cron": src, "fn_id": fn_id}});
    let run = NewRun {
        id: new_id(now),
        fn_id: fn_id.to_string(),
        parent: None,
        flow: inner.registry.flow_for(fn_id, &payload),
        version: inner.registry.version(fn_id),
    };
    let event = ingest::plan(inner, id, CRON_EVENT.to_string(), tick, payload, vec![run]);
    match ingest::ingest(inner, vec![event], now).await {
        Ok(r) if r.events.iter().any(|e| e.new) => tracing::info!(fn_id, tick, "cron tick"),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, fn_id, "could not start a cron run"),
    }
}

/// The scheduler of one cron trigger.
pub(crate) async fn run(inner: Arc<Inner>, fn_id: String, src: String) {
    let Ok(schedule) = parse(&src) else { return };
    // A tick missed while no engine ran: once, if the schedule ran before.
    let filter = RunFilter {
        function: Some(fn_id.clone()),
        limit: Some(100),
        ..RunFilter::default()
    };
    let ran_before = inner
        .store
        .list_runs(filter)
        .await
        .map(|runs| {
            runs.iter()
                .any(|r| r.event_id.starts_with(&format!("cron-{fn_id}-")))
        })
        .unwrap_or(false);
    let mut last = inner.clock.now_ms();
    if ran_before {
        if let Some(prev) = schedule.previous(last) {
            fire(&inner, &fn_id, &src, prev).await;
        }
    }
    loop {
        if inner.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Some(next) = schedule.next(last) else {
            return;
        };
        loop {
            let now = inner.clock.now_ms();
            if now >= next || inner.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis((next - now).clamp(1, 1000) as u64)).await;
        }
        if inner.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        fire(&inner, &fn_id, &src, next).await;
        last = next;
    }
}
