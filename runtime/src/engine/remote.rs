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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::interpreter::{Flow, RunDriver};
pub use super::registry::RemoteFn;
use crate::ctx::{Abandon, StepMeta};
use crate::journal::{Journal, Outcome};
use crate::serve::wire::{self, Reply, WireStep};
use crate::store::ClaimedRun;
use crate::transition::Transition;

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

/// The call request body: the event, the memoized steps in order, the
/// attempt.
fn call_body(c: &ClaimedRun, journal: &Journal, attempt: u32, plan: bool) -> Value {
    let steps: serde_json::Map<String, Value> = journal
        .iter()
        .map(|(id, o)| (id.to_string(), wire::outcome_to_memo(o)))
        .collect();
    let stack: Vec<String> = journal.order().iter().map(|s| s.to_string()).collect();
    json!({
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
    })
}

/// One call: the app's answer, or a reply with status 0 when it cannot be
/// reached.
async fn call(driver: &RunDriver, url: &str, body: &Value) -> (u16, Reply, String) {
    let inner = &driver.inner;
    // serde_json's maps are sorted and compact: the canonical (JCS) form
    // the official SDKs verify signatures against.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
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

/// Drive one claimed run of an app's function until it suspends or ends.
pub(crate) async fn drive(
    driver: &RunDriver,
    f: Arc<RemoteFn>,
    c: ClaimedRun,
) -> Result<(), Abandon> {
    let inner = &driver.inner;
    let mut journal = c.journal.clone();
    let mut attempts: HashMap<String, u32> = c.attempts.clone();
    let mut planned: VecDeque<String> = VecDeque::new();
    let mut target: Option<String> = None;
    let mut plan = false;
    loop {
        // The wire carries one attempt per call: the targeted step's, else
        // that of the step being retried, else the function's own (a
        // retry after the function itself failed).
        let attempt = match &target {
            Some(t) => attempts.get(t).copied().unwrap_or(0),
            None => attempts
                .values()
                .copied()
                .max()
                .unwrap_or(driver.fn_attempt()),
        };
        let url = with_step(&f.url, target.as_deref().unwrap_or("step"));
        let started = inner.clock.now_ms();
        let (status, reply, text) =
            call(driver, &url, &call_body(&c, &journal, attempt, plan)).await;
        let now = inner.clock.now_ms();
        driver.note_status(status);
        let steps = wire::transitions_of(status, &reply, &text, attempt, f.retries, now);
        if steps.len() > 1 {
            plan = true;
        }
        let meta = StepMeta {
            attempts: attempt + 1,
            started_ms: started,
            ended_ms: now,
        };
        for WireStep { transition, name } in steps {
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
            let journaled = match &transition {
                Transition::StepRan { id, output } => {
                    Some((id.clone(), Outcome::data(output.clone())))
                }
                Transition::StepFailed { id, error } => {
                    Some((id.clone(), Outcome::error(error.clone())))
                }
                _ => None,
            };
            if let Transition::Failed { error, .. } = &transition {
                tracing::warn!(status, error = %error.to_string().escape_debug(), "the call failed");
            }
            match driver.apply(transition, name, meta).await? {
                Flow::Continue => {
                    if let Some((id, outcome)) = journaled {
                        planned.retain(|p| p != id.as_str());
                        attempts.remove(id.as_str());
                        journal.insert(id, outcome);
                    }
                }
                Flow::Plan(id) => {
                    plan = true;
                    let known = journal.contains(&crate::StepId::from_readable(id.clone()));
                    if !known && !planned.contains(&id) {
                        planned.push_back(id);
                    }
                }
                Flow::Stop => return Ok(()),
            }
        }
        target = planned.pop_front();
        if target.is_none() {
            plan = false;
        }
    }
}
