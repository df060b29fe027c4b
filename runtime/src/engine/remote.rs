//! Functions that live in other processes, driven over HTTP with the
//! Inngest SDK protocol: one call request per step, exactly as the seed's
//! model describes. Apps register with `POST /fn/register` (what an SDK
//! sends when its endpoint gets a `PUT`); `Engine::sync_app` sends that
//! `PUT`.
//!
//! Registrations are kept in memory: an executor that restarts learns its
//! apps again when they sync (`durafn dev -u URL` syncs at start).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};

use super::{error_json, Inner};
use crate::error::{Error, ErrorInfo};
use crate::journal::{Journal, Outcome};
use crate::serve::wire::{self, Opcode};
use crate::step_id::StepId;
use crate::store::{Claimed, RunStatus, StepWrite, Suspend};

/// A function registered by an app.
#[derive(Debug, Clone)]
pub struct RemoteFn {
    /// The composite ID (`<app>-<fn>`).
    pub id: String,
    pub name: String,
    pub app: String,
    /// The call URL (`...?fnId=..&stepId=step`).
    pub url: String,
    /// Trigger event names (`prefix/*` wildcards allowed).
    pub events: Vec<String>,
    pub retries: u32,
}

impl RemoteFn {
    pub fn matches(&self, name: &str) -> bool {
        self.events.iter().any(|e| match e.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => e == name,
        })
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    fns: RwLock<HashMap<String, Arc<RemoteFn>>>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<Arc<RemoteFn>> {
        self.fns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn matching(&self, name: &str) -> Vec<Arc<RemoteFn>> {
        self.fns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|f| f.matches(name))
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<RemoteFn>> {
        let mut v: Vec<_> = self
            .fns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Apply a register request body; answers whether anything changed.
    pub fn register(&self, body: &Value) -> Result<(String, usize), String> {
        // Go decodes JSON field names case-insensitively, and the official
        // SDKs rely on it: the Python SDK sends `appname`.
        let app = body
            .as_object()
            .and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("appName"))
                    .map(|(_, v)| v)
            })
            .and_then(Value::as_str)
            .ok_or("the register request has no `appName`")?;
        let url = body
            .get("url")
            .and_then(Value::as_str)
            .ok_or("the register request has no `url`")?;
        let fns = body
            .get("functions")
            .and_then(Value::as_array)
            .ok_or("the register request has no `functions` array")?;
        let mut parsed = Vec::new();
        for f in fns {
            let id = f
                .get("id")
                .and_then(Value::as_str)
                .ok_or("a function has no `id`")?;
            let step = f
                .pointer("/steps/step")
                .ok_or_else(|| format!("function `{id}` has no `steps.step`"))?;
            let call_url = step
                .pointer("/runtime/url")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("function `{id}` has no `steps.step.runtime.url`"))?;
            let retries = step
                .pointer("/retries/attempts")
                .and_then(Value::as_u64)
                .unwrap_or(3) as u32;
            let events = f
                .get("triggers")
                .and_then(Value::as_array)
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| t.get("event").and_then(Value::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            parsed.push(RemoteFn {
                id: id.to_string(),
                name: f
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or(id)
                    .to_string(),
                app: app.to_string(),
                url: call_url.to_string(),
                events,
                retries,
            });
        }
        let mut map = self.fns.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, f| f.app != app);
        let n = parsed.len();
        for f in parsed {
            map.insert(f.id.clone(), Arc::new(f));
        }
        tracing::info!(app, url, functions = n, "app synced");
        Ok((app.to_string(), n))
    }
}

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

enum Next {
    Again,
    Stop,
}

/// Drive one claimed run of a remote function until it ends or suspends.
pub(crate) async fn drive(inner: &Arc<Inner>, c: Claimed, f: Arc<RemoteFn>) -> Result<(), Error> {
    let store = &inner.store;
    let owner = &inner.owner;
    let run = c.run;
    let mut journal: Journal = c.journal;
    let mut attempt = run.attempt;
    let mut planned: VecDeque<String> = VecDeque::new();
    let mut target: Option<String> = None;
    let mut force_plan = false;
    loop {
        let steps: serde_json::Map<String, Value> = journal
            .iter()
            .map(|(id, o)| (id.to_string(), wire::outcome_to_memo(o)))
            .collect();
        let stack: Vec<String> = journal.order().iter().map(|s| s.to_string()).collect();
        let body = json!({
            "event": c.event,
            "events": [c.event],
            "steps": steps,
            "ctx": {
                "run_id": run.id,
                "attempt": attempt,
                "disable_immediate_execution": force_plan,
                "use_api": false,
                "stack": {"stack": stack, "current": stack.len()},
            },
            "version": 2,
            "use_api": false,
        });
        // serde_json's maps are sorted and compact: the canonical (JCS) form
        // the official SDKs verify signatures against.
        let bytes = serde_json::to_vec(&body)?;
        let url = with_step(&f.url, target.as_deref().unwrap_or("step"));
        let mut req = inner
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-inngest-server-kind", "dev")
            .timeout(Duration::from_secs(300));
        if let Some(key) = &inner.signing_key {
            req = req.header(
                "x-inngest-signature",
                wire::sign(key, &bytes, inner.clock.now_ms() / 1000),
            );
        }
        let started = inner.clock.now_ms();
        let sent = req.body(bytes).send().await;
        inner
            .http_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (status, no_retry, retry_after, text) = match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                let h = r.headers();
                let no_retry =
                    h.get("x-inngest-no-retry").and_then(|v| v.to_str().ok()) == Some("true");
                let retry_after = h
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                (
                    status,
                    no_retry,
                    retry_after,
                    r.text().await.unwrap_or_default(),
                )
            }
            Err(e) => (0, false, None, format!("cannot reach {url}: {e}")),
        };
        let now = inner.clock.now_ms();
        match status {
            206 => {
                let ops: Vec<Opcode> = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Array(a)) => a
                        .into_iter()
                        .filter_map(|v| serde_json::from_value(v).ok())
                        .collect(),
                    Ok(v @ Value::Object(_)) => serde_json::from_value(v).into_iter().collect(),
                    _ => Vec::new(),
                };
                if ops.len() > 1 {
                    force_plan = true;
                }
                let mut next = Next::Again;
                for op in ops {
                    let id = StepId::from_readable(op.id.clone());
                    let name = Some(op.display().to_string());
                    match op.op.as_str() {
                        "StepPlanned" => {
                            if !planned.contains(&op.id) && !journal.contains(&id) {
                                planned.push_back(op.id.clone());
                            }
                            force_plan = true;
                        }
                        "StepRun" | "StepFailed" | "StepError" => {
                            let error = op.error.as_ref().map(wire::error_info);
                            let final_error =
                                op.op == "StepFailed" || no_retry || attempt >= f.retries;
                            if op.op == "StepError" && !final_error {
                                let info =
                                    error.unwrap_or_else(|| ErrorInfo::new("Error", "step failed"));
                                let delay =
                                    retry_after.unwrap_or_else(|| inner.backoff.delay(attempt));
                                let wake_at = now + delay.as_millis() as i64;
                                super::suspend(
                                    inner,
                                    Suspend {
                                        run_id: run.id.clone(),
                                        now,
                                        wake_at,
                                        attempt: attempt + 1,
                                        fn_attempt: run.fn_attempt,
                                        failed_attempt: Some((
                                            id,
                                            attempt,
                                            error_json(&info),
                                            started,
                                        )),
                                        ..Suspend::default()
                                    },
                                )
                                .await?;
                                return Ok(());
                            }
                            let outcome = match (op.op.as_str(), error) {
                                ("StepRun", _) => {
                                    Outcome::data(op.data.clone().unwrap_or(Value::Null))
                                }
                                (_, e) => Outcome::error(
                                    e.unwrap_or_else(|| ErrorInfo::new("Error", "step failed")),
                                ),
                            };
                            let write = StepWrite {
                                run_id: run.id.clone(),
                                step: id.clone(),
                                name,
                                outcome: outcome.clone(),
                                seq: journal.len() as u64,
                                attempts: attempt + 1,
                                started_ms: started,
                                ended_ms: now,
                            };
                            if !store
                                .append(write, owner, Some(now + inner.lease_ms))
                                .await?
                            {
                                tracing::info!("run stopped: cancelled or taken over");
                                return Ok(());
                            }
                            inner
                                .steps_committed
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            journal.insert(id, outcome);
                            planned.retain(|p| *p != op.id);
                            attempt = 0;
                        }
                        "Sleep" => {
                            let wake_at = op.sleep_until_ms(now).unwrap_or(now);
                            super::suspend(
                                inner,
                                Suspend {
                                    run_id: run.id.clone(),
                                    now,
                                    wake_at,
                                    attempt: 0,
                                    fn_attempt: run.fn_attempt,
                                    pending_sleep: Some(id),
                                    sleep_name: name.clone(),
                                    ..Suspend::default()
                                },
                            )
                            .await?;
                            next = Next::Stop;
                        }
                        "WaitForEvent" => {
                            let event = op
                                .opts
                                .get("event")
                                .and_then(Value::as_str)
                                .filter(|e| !e.is_empty())
                                .unwrap_or(&op.name)
                                .to_string();
                            let timeout = op
                                .opts
                                .get("timeout")
                                .and_then(Value::as_str)
                                .and_then(wire::parse_duration)
                                .unwrap_or_default();
                            let expr = op
                                .opts
                                .get("if")
                                .and_then(Value::as_str)
                                .filter(|x| !x.is_empty())
                                .map(str::to_string);
                            let wake_at = now + timeout.as_millis() as i64;
                            super::suspend(
                                inner,
                                Suspend {
                                    run_id: run.id.clone(),
                                    now,
                                    wake_at,
                                    fn_attempt: run.fn_attempt,
                                    pending_sleep: Some(id),
                                    sleep_name: name.clone(),
                                    wait: Some(crate::store::WaitSpec { event, expr }),
                                    ..Suspend::default()
                                },
                            )
                            .await?;
                            next = Next::Stop;
                        }
                        "InvokeFunction" => {
                            let function = op
                                .opts
                                .get("function_id")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string();
                            let data = op
                                .opts
                                .pointer("/payload/data")
                                .cloned()
                                .unwrap_or_else(|| json!({}));
                            let timeout = op
                                .opts
                                .get("timeout")
                                .and_then(Value::as_str)
                                .and_then(wire::parse_duration)
                                .unwrap_or(Duration::from_secs(7 * 86_400));
                            let wake_at = now + timeout.as_millis() as i64;
                            let spawn =
                                super::invoke_spawn(&run.id, &run.fn_id, &id, &function, data, now);
                            super::suspend(
                                inner,
                                Suspend {
                                    run_id: run.id.clone(),
                                    now,
                                    wake_at,
                                    fn_attempt: run.fn_attempt,
                                    pending_sleep: Some(id),
                                    sleep_name: name.clone(),
                                    pending_outcome: Some(Outcome::error(ErrorInfo::new(
                                        "InngestInvokeTimeoutError",
                                        "Timed out waiting for invoked function to complete",
                                    ))),
                                    spawn: Some(spawn),
                                    ..Suspend::default()
                                },
                            )
                            .await?;
                            inner.notify.notify_one();
                            next = Next::Stop;
                        }
                        other => {
                            let err = ErrorInfo::new(
                                "Unsupported",
                                format!(
                                    "durafn dev does not drive `{other}` steps yet (step `{}`)",
                                    op.display()
                                ),
                            );
                            store
                                .finish(
                                    &run.id,
                                    owner,
                                    RunStatus::Failed,
                                    None,
                                    Some(error_json(&err)),
                                    now,
                                )
                                .await?;
                            return Ok(());
                        }
                    }
                }
                if let Next::Stop = next {
                    return Ok(());
                }
                target = planned.pop_front();
                if target.is_none() {
                    force_plan = false;
                }
            }
            200 => {
                let output: Value = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
                    Value::Null
                } else {
                    Value::String(text)
                });
                tracing::info!("run completed");
                if store
                    .finish(
                        &run.id,
                        owner,
                        RunStatus::Completed,
                        Some(output),
                        None,
                        now,
                    )
                    .await?
                {
                    inner
                        .runs_ended
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                return Ok(());
            }
            _ => {
                let info = match serde_json::from_str::<Value>(&text) {
                    Ok(v) if v.is_object() => wire::error_info(&v),
                    _ => ErrorInfo::new("Error", format!("the app answered {status}: {text}")),
                };
                if !no_retry && run.fn_attempt < f.retries {
                    let delay = retry_after.unwrap_or_else(|| inner.backoff.delay(run.fn_attempt));
                    let wake_at = now + delay.as_millis() as i64;
                    tracing::warn!(status, error = %info, "call failed; retrying");
                    super::suspend(
                        inner,
                        Suspend {
                            run_id: run.id.clone(),
                            now,
                            wake_at,
                            attempt,
                            fn_attempt: run.fn_attempt + 1,
                            ..Suspend::default()
                        },
                    )
                    .await?;
                } else {
                    tracing::warn!(status, error = %info, "run failed");
                    if store
                        .finish(
                            &run.id,
                            owner,
                            RunStatus::Failed,
                            None,
                            Some(error_json(&info)),
                            now,
                        )
                        .await?
                    {
                        inner
                            .runs_ended
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                return Ok(());
            }
        }
    }
}
