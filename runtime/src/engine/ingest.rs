//! Ingest: the one path of every event into the store.
//!
//! The HTTP API, [`Engine::send`], `send_event!`, cron ticks, invokes and
//! failure events all become [`NewEvent`]s here: the event with the runs
//! its triggers start and the cancel rules it may fire. One call is one
//! store transaction, which also resolves the waits the events match; a
//! failure stores nothing.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{new_id, Engine, Inner, FAILED_EVENT};
use crate::error::{Error, ErrorInfo};
use crate::step_id::StepId;
use crate::store::{IngestBatch, IngestReceipt, NewEvent, NewRun, Parent, StoreError};

/// What [`Engine::send`] answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    /// The event IDs, in order.
    pub ids: Vec<String>,
    /// The runs started, in order.
    pub runs: Vec<String>,
    /// Runs flow control skipped (idempotency, a rate limit, a singleton):
    /// stored with status `skipped` and the reason as their error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// Queued runs the events joined (debounce): no new run, the queued
    /// one will get the newest event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub debounced: Vec<String>,
    /// Open batches the events joined (`batch_events`): no new run, the
    /// batch's run will get them with the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batched: Vec<String>,
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRejected {
    Malformed(String),
    TooLarge {
        bytes: usize,
        limit: usize,
    },
    /// The event would start more runs than the engine allows.
    TooManyRuns {
        runs: usize,
        limit: usize,
    },
}

/// The deepest nesting of arrays and objects an event may have: the
/// official SDKs' JSON parsers stop at about 128, and an event they
/// cannot parse could never run.
pub const MAX_EVENT_DEPTH: usize = 64;

/// How deeply a value nests arrays and objects, counting up to `limit + 1`.
fn depth(v: &Value, limit: usize) -> usize {
    if limit == 0 {
        return 1;
    }
    match v {
        Value::Array(a) => 1 + a.iter().map(|x| depth(x, limit - 1)).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(|x| depth(x, limit - 1)).max().unwrap_or(0),
        _ => 0,
    }
}

impl fmt::Display for EventRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventRejected::Malformed(m) => f.write_str(m),
            EventRejected::TooLarge { bytes, limit } => write!(
                f,
                "the event is {bytes} bytes, over the limit of {limit} bytes"
            ),
            EventRejected::TooManyRuns { runs, limit } => write!(
                f,
                "the event would start {runs} runs, over the limit of {limit} runs per event"
            ),
        }
    }
}

/// Why sending events failed; nothing of the request was stored.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Event `index` of the request is refused.
    Rejected { index: usize, why: EventRejected },
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Rejected { index: 0, why } => write!(f, "{why}"),
            SendError::Rejected { index, why } => write!(f, "event {index}: {why}"),
            SendError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {}

impl Engine {
    /// Send one event: store it and start a run of every function it
    /// triggers. An event with an `id` already seen starts nothing
    /// (idempotency) and answers the same ID.
    pub async fn send<T: Serialize>(&self, event: crate::Event<T>) -> Result<Sent, Error> {
        let v = serde_json::to_value(&event)
            .map_err(|e| Error::non_retriable(format!("the event does not serialize: {e}")))?;
        Ok(self.send_values(vec![v]).await?)
    }

    /// Send events given as JSON (the HTTP API's path): each must be an
    /// object with a non-empty string `name`. All of them, with the runs
    /// they start, the waits they resolve and the runs they cancel, are
    /// stored in one transaction, or none.
    pub async fn send_values(&self, events: Vec<Value>) -> Result<Sent, SendError> {
        send_values(&self.inner, events).await
    }
}

pub(super) async fn send_values(inner: &Inner, events: Vec<Value>) -> Result<Sent, SendError> {
    let now = inner.clock.now_ms();
    let mut planned = Vec::with_capacity(events.len());
    for (index, v) in events.into_iter().enumerate() {
        let (id, name, ts, payload) =
            prepare(inner, v, now).map_err(|why| SendError::Rejected { index, why })?;
        let runs = inner.registry.runs_for(&name, &payload, || new_id(now));
        let limit = inner.limits.runs_per_event;
        if runs.len() > limit {
            return Err(SendError::Rejected {
                index,
                why: EventRejected::TooManyRuns {
                    runs: runs.len(),
                    limit,
                },
            });
        }
        planned.push(plan(inner, id, name, ts, payload, runs));
    }
    let receipt = ingest(inner, planned, now)
        .await
        .map_err(SendError::Store)?;
    let mut sent = Sent {
        ids: Vec::with_capacity(receipt.events.len()),
        runs: Vec::new(),
        skipped: Vec::new(),
        debounced: Vec::new(),
        batched: Vec::new(),
    };
    for e in receipt.events {
        sent.ids.push(e.id);
        sent.skipped.extend(e.skipped);
        sent.debounced.extend(e.debounced);
        sent.batched.extend(e.batched);
        sent.runs.extend(e.runs);
    }
    Ok(sent)
}

/// An event with the runs it starts and the cancel rules its name fires.
pub(super) fn plan(
    inner: &Inner,
    id: String,
    name: String,
    ts: i64,
    payload: Value,
    runs: Vec<NewRun>,
) -> NewEvent {
    NewEvent {
        cancels: inner.registry.cancel_rules(&name),
        id,
        name,
        ts,
        payload,
        runs,
    }
}

/// Store events with all they cause, in one transaction, and wake the
/// worker for the runs they started or resumed.
pub(super) async fn ingest(
    inner: &Inner,
    events: Vec<NewEvent>,
    now: i64,
) -> Result<IngestReceipt, StoreError> {
    let receipt = inner
        .store
        .ingest(IngestBatch {
            now_ms: now,
            events,
        })
        .await?;
    for e in &receipt.events {
        if e.new {
            tracing::info!(event_id = ?e.id, runs = e.runs.len(), "event received");
        } else {
            tracing::info!(event_id = ?e.id, "duplicate event ID: no new runs");
        }
    }
    for (run_id, step) in &receipt.resolved {
        tracing::info!(run_id = %run_id, step = ?step, "wait resolved by an event");
    }
    for run_id in &receipt.cancelled {
        tracing::info!(run_id = %run_id, "run cancelled by cancel_on");
    }
    if !receipt.cancelled.is_empty() {
        inner.ended.notify_waiters();
    }
    inner.notify.notify_one();
    Ok(receipt)
}

/// Validate an event and fill in its ID and timestamp.
fn prepare(
    inner: &Inner,
    mut v: Value,
    now: i64,
) -> Result<(String, String, i64, Value), EventRejected> {
    let bytes = serde_json::to_vec(&v)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if bytes > inner.max_event_bytes {
        return Err(EventRejected::TooLarge {
            bytes,
            limit: inner.max_event_bytes,
        });
    }
    if depth(&v, MAX_EVENT_DEPTH) > MAX_EVENT_DEPTH {
        return Err(EventRejected::Malformed(format!(
            "the event nests arrays and objects deeper than {MAX_EVENT_DEPTH} levels"
        )));
    }
    let Some(obj) = v.as_object_mut() else {
        return Err(EventRejected::Malformed(
            "an event is a JSON object with a `name`".into(),
        ));
    };
    let name = match obj.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) | None => {
            return Err(EventRejected::Malformed("the event has no `name`".into()))
        }
        Some(_) => {
            return Err(EventRejected::Malformed(
                "the event's `name` must be a string".into(),
            ))
        }
    };
    match obj.get("data") {
        None | Some(Value::Null) => {
            obj.insert("data".into(), Value::Object(Default::default()));
        }
        Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(EventRejected::Malformed(
                "the event's `data` must be an object".into(),
            ))
        }
    }
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            let id = new_id(now);
            obj.insert("id".into(), Value::String(id.clone()));
            id
        }
        Some(_) => {
            return Err(EventRejected::Malformed(
                "the event's `id` must be a string".into(),
            ))
        }
    };
    let ts = match obj.get("ts") {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|t| t > 0) => n.as_i64().unwrap_or(now),
        None | Some(Value::Null) | Some(Value::Number(_)) => {
            obj.insert("ts".into(), Value::from(now));
            now
        }
        Some(_) => {
            return Err(EventRejected::Malformed(
                "the event's `ts` must be a number (ms since the epoch)".into(),
            ))
        }
    };
    Ok((id, name, ts, v))
}

/// The child run of an `invoke`: its event is `inngest/function.invoked`
/// with the given data (and, for object data, Inngest's `_inngest` block);
/// its event ID is derived from the parent's run and step, so a replayed
/// invoke after a crash starts no second child.
pub(super) fn invoke_event(
    inner: &Inner,
    (parent, parent_fn, traceparent): (&str, &str, &str),
    step: &StepId,
    function: &str,
    data: Value,
    now: i64,
) -> NewEvent {
    let correlation = format!("{parent}.{}", step.hashed());
    let data = match data {
        Value::Object(mut m) => {
            m.insert(
                "_inngest".into(),
                json!({"fn_id": function, "source_fn_id": parent_fn, "correlation_id": correlation, "traceparent": traceparent}),
            );
            Value::Object(m)
        }
        other => other,
    };
    let name = "inngest/function.invoked".to_string();
    let id = format!("invoke-{correlation}");
    let payload = json!({"name": name, "data": data, "id": id, "ts": now});
    let run = NewRun {
        id: new_id(now),
        fn_id: function.to_string(),
        parent: Some(Parent {
            run_id: parent.to_string(),
            step: step.to_string(),
        }),
        // An invoked run is started by its parent, which waits for it:
        // flow control that could skip it does not apply.
        flow: Default::default(),
        version: inner.registry.version(function),
    };
    plan(inner, id, name, now, payload, vec![run])
}

/// `inngest/function.failed` for a run that failed for good, with the runs
/// of the failure handlers it triggers.
pub(super) fn failure_event(
    inner: &Inner,
    fn_id: &str,
    run_id: &str,
    (error, app_status): (&ErrorInfo, Option<u16>),
    trigger: &Value,
    now: i64,
) -> NewEvent {
    let id = format!("failed-{run_id}");
    // As Inngest's executor words it: the error's name, message and stack
    // (not an SDK's own fields), and for an app's run, the status it
    // answered with.
    let mut shown = json!({"name": error.name, "message": error.message});
    if let Some(stack) = &error.stack {
        shown["stack"] = json!(stack);
    }
    if let Some(status) = app_status {
        shown["error"] = json!(format!("invalid status code: {status}"));
    }
    let payload = json!({
        "name": FAILED_EVENT,
        "id": id,
        "ts": now,
        "data": {"function_id": fn_id, "run_id": run_id, "error": shown, "event": trigger},
    });
    let runs = inner
        .registry
        .runs_for(FAILED_EVENT, &payload, || new_id(now));
    plan(inner, id, FAILED_EVENT.to_string(), now, payload, runs)
}

/// `send_event!` in an engine's runs: the events go through ingest.
pub(super) struct EngineSender(pub Arc<Inner>);

impl crate::ctx::EventSender for EngineSender {
    fn send(
        &self,
        events: Vec<Value>,
    ) -> crate::function::BoxFuture<'_, Result<Vec<String>, Error>> {
        Box::pin(async move { Ok(send_values(&self.0, events).await?.ids) })
    }
}
