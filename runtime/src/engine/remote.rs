//! Functions that live in other processes, driven over HTTP with the
//! Inngest SDK protocol: one call request per step, exactly as the seed's
//! model describes. Apps register with `POST /fn/register` (what an SDK
//! sends when its endpoint gets a `PUT`); `Engine::sync_app` sends that
//! `PUT`. Registrations are stored, so an executor that restarts knows its
//! apps before they sync again.
//!
//! This module only speaks the protocol: the app's answer is translated
//! into [`Transition`](crate::Transition)s by [`wire::transitions_of`] and
//! applied by the same interpreter as a durable fn of this process.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::interpreter::{Flow, RunDriver};
pub use super::registry::RemoteFn;
use super::Inner;
use crate::ctx::{Abandon, StepMeta};
use crate::journal::{Journal, Outcome};
use crate::serve::wire::{self, Reply, WireStep};
use crate::store::ClaimedRun;
use crate::transition::Transition;
use crate::StepId;

fn with_step(url: &str, step: &str) -> String {
    match url.split_once('?') {
        Some((base, query)) => {
            let mut parts: Vec<String> = query
                .split('&')
                .filter(|p| !p.starts_with("stepId=") && !p.is_empty())
                .map(str::to_string)
                .collect();
            parts.push(format!("stepId={step}"));
            format!("{base}?{}", parts.join("&"))
        }
        None => format!("{url}?stepId={step}"),
    }
}

/// The call request body: the event, the batch, the memoized steps in
/// order, the attempt; serialized, as it is signed and sent. A body over
/// [`MAX_CALL_BODY`] carries only the event, with `use_api`: the app reads
/// the batch and the steps from `GET /v0/runs/{id}/batch` and `/actions`.
fn call_body(c: &ClaimedRun, journal: &Journal, attempt: u32, plan: bool) -> Vec<u8> {
    let steps = wire::memo_map(journal);
    let stack: Vec<String> = journal.order().iter().map(|s| s.to_string()).collect();
    let mut body = json!({
        "event": c.event,
        "events": match c.events.is_empty() {
            true => std::slice::from_ref(&c.event),
            false => c.events.as_slice(),
        },
        "steps": steps,
        "ctx": {
            "run_id": c.run.id,
            "attempt": attempt,
            "disable_immediate_execution": plan,
            "use_api": false,
            "stack": {"stack": stack, "current": stack.len()},
        },
        "version": 2,
        "use_api": false,
    });
    // serde_json's maps are sorted and compact: the canonical (JCS) form
    // the official SDKs verify signatures against.
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    if bytes.len() <= MAX_CALL_BODY {
        return bytes;
    }
    if let Some(o) = body.as_object_mut() {
        o.remove("events");
    }
    body["steps"] = json!({});
    body["use_api"] = json!(true);
    body["ctx"]["use_api"] = json!(true);
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The largest call body sent: an app's default limit (Vercel's, and the
/// handler's, [`DEFAULT_MAX_BODY`](crate::serve::DEFAULT_MAX_BODY)).
const MAX_CALL_BODY: usize = crate::serve::DEFAULT_MAX_BODY;

/// One call: the app's answer, or a reply with status 0 when it cannot be
/// reached.
async fn call(inner: &Inner, url: &str, bytes: Vec<u8>) -> (u16, Reply, String) {
    let mut req = inner
        .http
        .post(url)
        .header("content-type", "application/json")
        .header("x-inngest-server-kind", "dev")
        .timeout(Duration::from_secs(300));
    if let Some(key) = &inner.signing_key {
        req = req.header(
            "x-inngest-signature",
            wire::sign(key, &bytes, inner.clock.now_ms() / 1000),
        );
    }
    let sent = req.body(bytes).send().await;
    inner.http_calls.fetch_add(1, Ordering::Relaxed);
    let r = match sent {
        Ok(r) => r,
        Err(e) => {
            let text = format!("cannot reach {url}: {e}");
            let reply = Reply {
                status: 0,
                body: Value::Null,
                no_retry: None,
                retry_after: None,
            };
            return (0, reply, text);
        }
    };
    let status = r.status().as_u16();
    let h = r.headers();
    let no_retry = h
        .get("x-inngest-no-retry")
        .and_then(|v| v.to_str().ok())
        .map(|v| v == "true");
    let retry_after = h
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| wire::retry_after(v, inner.clock.now_ms()));
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.clone())
    });
    let reply = Reply {
        status,
        body,
        no_retry,
        retry_after,
    };
    (status, reply, text)
}

/// At most this many calls of one run in flight at once.
const CALLS_IN_FLIGHT: usize = 32;

/// What a call asked the app.
enum Asked {
    /// What comes next (no step targeted).
    Discover,
    /// Run this planned step; `race`: ask what comes next once it ends.
    Step { id: String, race: bool },
}

/// A call's answer, with what it asked and when.
struct Answer {
    asked: Asked,
    attempt: u32,
    started: i64,
    ended: i64,
    status: u16,
    reply: Reply,
    text: String,
}

/// A transition that was read and not applied yet, with its step's name
/// and timing.
type Held = (Transition, Option<String>, StepMeta);

/// Drive one claimed run of an app's function until it suspends or ends.
///
/// As Inngest's executor does: the planned steps of a parallel group are
/// called concurrently; the app is asked what comes next once they all
/// ended (or, for a group in race mode, as each ends). A sleep, wait or
/// invoke reported beside planned steps is held until those steps ended,
/// and then suspends the run; one that ends the run, or retries it, waits
/// for the calls in flight and journals their steps first. Each answer is
/// applied by the interpreter, one at a time, in the order they arrive.
pub(crate) async fn drive(
    driver: &RunDriver,
    f: Arc<RemoteFn>,
    c: ClaimedRun,
) -> Result<(), Abandon> {
    let inner = &driver.inner;
    let mut journal = c.journal.clone();
    let mut attempts: HashMap<String, u32> = c.attempts.clone();
    let mut queue: VecDeque<(String, bool)> = VecDeque::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut discovering = false;
    // Ask what comes next as soon as no discovery is in flight.
    let mut owed = false;
    // A sleep, wait or invoke, applied once no step is left to call.
    let mut held: Option<Held> = None;
    // The retry or end of the run, applied once no call is in flight.
    let mut last: Option<Held> = None;
    let mut calls: JoinSet<Answer> = JoinSet::new();
    // The readable names of steps that failed, by journal key.
    let mut failed_names: HashMap<String, String> = HashMap::new();
    loop {
        if last.is_none() {
            while running.len() < CALLS_IN_FLIGHT {
                let Some((id, race)) = queue.pop_front() else {
                    break;
                };
                if journal.contains(&StepId::from_readable(id.clone())) || running.contains(&id) {
                    continue;
                }
                let attempt = attempts.get(&id).copied().unwrap_or(0);
                let body = call_body(&c, &journal, attempt, true);
                let url = with_step(&f.url, &id);
                running.insert(id.clone());
                spawn(
                    &mut calls,
                    inner,
                    url,
                    body,
                    attempt,
                    Asked::Step { id, race },
                );
            }
            let idle = running.is_empty() && queue.is_empty();
            if idle && !discovering {
                if let Some((t, name, meta)) = held.take() {
                    driver.apply(t, name, meta).await?;
                    return Ok(());
                }
            }
            if !discovering && (idle || owed) {
                owed = false;
                discovering = true;
                // The wire carries one attempt per call: that of the step
                // being retried, else the function's own (a retry after
                // the function itself failed).
                let attempt = attempts
                    .values()
                    .copied()
                    .max()
                    .unwrap_or(driver.fn_attempt());
                let body = call_body(&c, &journal, attempt, !idle);
                let url = with_step(&f.url, "step");
                spawn(&mut calls, inner, url, body, attempt, Asked::Discover);
            }
        }
        let Some(answer) = calls.join_next().await else {
            // Nothing in flight: only the run's end or retry is left.
            if let Some((t, name, meta)) = last.take() {
                driver.apply_named(t, name, &failed_names, meta).await?;
            }
            return Ok(());
        };
        let answer =
            answer.map_err(|e| Abandon::Store(format!("a call to the app failed: {e}")))?;
        match &answer.asked {
            Asked::Discover => discovering = false,
            Asked::Step { id, race } => {
                running.remove(id);
                owed |= *race;
            }
        }
        driver.note_status(answer.status);
        let steps = wire::transitions_of(
            answer.status,
            &answer.reply,
            &answer.text,
            answer.attempt,
            f.retries,
            answer.ended,
        );
        let meta = StepMeta {
            attempts: answer.attempt + 1,
            started_ms: answer.started,
            ended_ms: answer.ended,
        };
        for WireStep {
            transition,
            name,
            race,
        } in steps
        {
            // An app's step output over a bound is journaled as the step's
            // failure: the app's next call replays it as an error.
            let transition = match transition {
                Transition::StepRan { id, output } => {
                    let step = name.as_deref().unwrap_or(id.as_str());
                    match inner.bounds.admit(step, &output, journal.bytes()) {
                        Ok(_) => Transition::StepRan { id, output },
                        Err(error) => Transition::StepFailed { error, id },
                    }
                }
                other => other,
            };
            match transition {
                t @ (Transition::Sleep { .. }
                | Transition::WaitForEvent { .. }
                | Transition::Invoke { .. }) => {
                    // One at a time: another is asked for again later.
                    if held.is_none() {
                        held = Some((t, name, meta));
                    }
                    continue;
                }
                t @ (Transition::StepErrored(_)
                | Transition::Failed { .. }
                | Transition::Done(_)) => {
                    if let Transition::Failed { error, .. } = &t {
                        tracing::warn!(status = answer.status, error = %error.to_string().escape_debug(), "the call failed");
                    }
                    if let (Transition::StepErrored(failed), Some(n)) = (&t, &name) {
                        for f in failed {
                            failed_names.insert(f.id.to_string(), n.clone());
                        }
                    }
                    last = Some(match (last.take(), t) {
                        // Steps that failed side by side retry together,
                        // each under its own name.
                        (
                            Some((Transition::StepErrored(mut a), n, m)),
                            Transition::StepErrored(b),
                        ) => {
                            a.extend(b);
                            (Transition::StepErrored(a), n, m)
                        }
                        // The function returned: nothing is left to retry.
                        (_, t @ Transition::Done(_)) => (t, name, meta),
                        (Some(first), _) => first,
                        (None, t) => (t, name, meta),
                    });
                    held = None;
                    queue.clear();
                    continue;
                }
                t => {
                    let journaled = match &t {
                        Transition::StepRan { id, output } => {
                            Some((id.clone(), Outcome::data(output.clone())))
                        }
                        Transition::StepFailed { id, error } => {
                            Some((id.clone(), Outcome::error(error.clone())))
                        }
                        _ => None,
                    };
                    match driver.apply(t, name, meta).await? {
                        Flow::Continue => {
                            if let Some((id, outcome)) = journaled {
                                queue.retain(|(p, _)| p != id.as_str());
                                attempts.remove(id.as_str());
                                journal.insert(id, outcome);
                            }
                        }
                        Flow::Plan(id) if last.is_none() => {
                            if !queue.iter().any(|(p, _)| *p == id) {
                                queue.push_back((id, race));
                            }
                        }
                        Flow::Plan(_) => {}
                        Flow::Stop => return Ok(()),
                    }
                }
            }
        }
    }
}

/// Start one call.
fn spawn(
    calls: &mut JoinSet<Answer>,
    inner: &Arc<Inner>,
    url: String,
    body: Vec<u8>,
    attempt: u32,
    asked: Asked,
) {
    let inner = inner.clone();
    calls.spawn(async move {
        let started = inner.clock.now_ms();
        let (status, reply, text) = call(&inner, &url, body).await;
        Answer {
            asked,
            attempt,
            started,
            ended: inner.clock.now_ms(),
            status,
            reply,
            text,
        }
    });
}
