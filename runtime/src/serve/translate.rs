//! Transitions on the wire, both ways: what the handler answers for a
//! call's transition, and what the executor reads back from an app's
//! answer. Kept side by side so that the two cannot drift apart.

use std::time::Duration;

use serde_json::{json, Value};

use super::wire::{error_info, format_duration, parse_duration, Opcode};
use crate::error::{ErrorInfo, Retry};
use crate::step_id::StepId;
use crate::transition::{at, FailedAttempt, Policy, Transition, DEFAULT_INVOKE_TIMEOUT};

/// A call's answer, as the handler sends it and the executor reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// The opcodes (206), the output (200) or the error (4xx, 5xx).
    pub body: Value,
    /// `X-Inngest-No-Retry`.
    pub no_retry: Option<bool>,
    /// `Retry-After`.
    pub retry_after: Option<Duration>,
}

fn op(kind: &str, id: &StepId) -> Opcode {
    Opcode {
        op: kind.into(),
        id: id.hashed(),
        name: id.to_string(),
        display_name: Some(id.to_string()),
        opts: json!({}),
        ..Opcode::default()
    }
}

fn ops(ops: Vec<Opcode>) -> Value {
    serde_json::to_value(ops).unwrap_or(Value::Null)
}

fn until(until_ms: i64, now_ms: i64) -> String {
    format_duration(Duration::from_millis(
        until_ms.saturating_sub(now_ms).max(0) as u64,
    ))
}

/// The handler's side: a transition as the protocol's answer. Function IDs
/// of invokes are prefixed with the app's ID, as registered.
pub fn reply_for(t: Transition, app_id: &str, now_ms: i64) -> Reply {
    let partial = |body: Value| Reply {
        status: 206,
        body,
        no_retry: None,
        retry_after: None,
    };
    match t {
        Transition::StepRan { id, output } => partial(ops(vec![Opcode {
            data: Some(output),
            ..op("StepRun", &id)
        }])),
        Transition::StepPlanned { id } => partial(ops(vec![op("StepPlanned", &id)])),
        Transition::StepErrored(failures) => {
            let retry_after = failures.iter().filter_map(|f| f.retry_after).max();
            let list = failures
                .into_iter()
                .map(|f| Opcode {
                    error: serde_json::to_value(&f.error).ok(),
                    ..op("StepError", &f.id)
                })
                .collect();
            Reply {
                no_retry: Some(false),
                retry_after,
                ..partial(ops(list))
            }
        }
        Transition::StepFailed { id, error } => Reply {
            no_retry: Some(true),
            ..partial(ops(vec![Opcode {
                error: serde_json::to_value(&error).ok(),
                ..op("StepFailed", &id)
            }]))
        },
        Transition::Sleep { id, until_ms } => partial(ops(vec![Opcode {
            opts: json!({"duration": until(until_ms, now_ms)}),
            ..op("Sleep", &id)
        }])),
        Transition::WaitForEvent {
            id,
            event,
            expr,
            until_ms,
            since_ms,
            seen,
        } => {
            let mut opts = json!({"event": event, "timeout": until(until_ms, now_ms)});
            if let Some(x) = expr {
                opts["if"] = json!(x);
            }
            if let Some(since) = since_ms {
                // durafn's own options: executors that do not know them
                // wait as Inngest does.
                opts["lookback"] = json!(until(now_ms, since));
                if !seen.is_empty() {
                    opts["lookback_seen"] = json!(seen);
                }
            }
            partial(ops(vec![Opcode {
                opts,
                ..op("WaitForEvent", &id)
            }]))
        }
        Transition::Invoke {
            id,
            function,
            data,
            until_ms,
        } => partial(ops(vec![Opcode {
            opts: json!({
                "function_id": format!("{app_id}-{function}"),
                "payload": {"data": data},
                "timeout": until(until_ms, now_ms),
            }),
            ..op("InvokeFunction", &id)
        }])),
        Transition::Done(v) => Reply {
            status: 200,
            body: v,
            no_retry: None,
            retry_after: None,
        },
        Transition::Failed { error, retry } => Reply {
            status: if retry == Retry::Never { 400 } else { 500 },
            body: serde_json::to_value(&error).unwrap_or(Value::Null),
            no_retry: Some(retry == Retry::Never),
            retry_after: match retry {
                Retry::After(d) => Some(d),
                _ => None,
            },
        },
    }
}

/// One transition read from an app's answer, with the step's readable name
/// when the app sent one.
#[derive(Debug, Clone, PartialEq)]
pub struct WireStep {
    pub transition: Transition,
    pub name: Option<String>,
    /// A planned step of a group in race mode (`opts.parallelMode:
    /// "race"`): the executor asks the app what comes next as soon as it
    /// ends, not once the whole group has.
    pub race: bool,
}

/// The executor's side: an app's answer to a call as transitions, in the
/// order of its opcodes. `attempt` is the attempt the call ran and
/// `retries` the function's; a `StepError` on the last attempt is a
/// `StepFailed`, as the executor decides it.
pub fn transitions_of(
    status: u16,
    reply: &Reply,
    body_text: &str,
    attempt: u32,
    retries: u32,
    now_ms: i64,
) -> Vec<WireStep> {
    let bare = |t: Transition| {
        vec![WireStep {
            transition: t,
            name: None,
            race: false,
        }]
    };
    let failed = |name: &str, message: String, retry: Retry| {
        bare(Transition::Failed {
            error: ErrorInfo::new(name, message),
            retry,
        })
    };
    match status {
        200 => bare(Transition::Done(reply.body.clone())),
        206 => {
            let parsed: Vec<Opcode> = match &reply.body {
                Value::Array(a) => a
                    .iter()
                    .filter_map(|v| serde_json::from_value(v.clone()).ok())
                    .collect(),
                v @ Value::Object(_) => serde_json::from_value(v.clone()).into_iter().collect(),
                _ => Vec::new(),
            };
            if parsed.is_empty() {
                let shown: String = body_text.chars().take(200).collect();
                return failed(
                    "NoOpcode",
                    format!(
                        "durafn: the app answered 206 without an opcode it could read: `{shown}`"
                    ),
                    Retry::Backoff,
                );
            }
            let no_retry = reply.no_retry == Some(true);
            let mut out = Vec::with_capacity(parsed.len());
            for o in parsed {
                match opcode_transition(&o, no_retry, reply.retry_after, attempt, retries, now_ms) {
                    Ok(t) => out.push(WireStep {
                        transition: t,
                        name: Some(o.display().to_string()).filter(|n| !n.is_empty()),
                        race: o.opts.get("parallelMode").and_then(Value::as_str) == Some("race"),
                    }),
                    Err(t) => return bare(t),
                }
            }
            out
        }
        _ => {
            let error = match &reply.body {
                v @ Value::Object(_) => error_info(v),
                _ if status == 0 => ErrorInfo::new("Unreachable", body_text.to_string()),
                _ => ErrorInfo::new(
                    "Error",
                    format!(
                        "the app answered {status}: {}",
                        body_text.chars().take(500).collect::<String>()
                    ),
                ),
            };
            let retry = match (reply.no_retry, reply.retry_after) {
                (Some(true), _) => Retry::Never,
                (_, Some(d)) => Retry::After(d),
                _ => Retry::Backoff,
            };
            bare(Transition::Failed { error, retry })
        }
    }
}

/// One opcode as a transition; `Err` with the failure of the whole call
/// when the opcode cannot be followed.
fn opcode_transition(
    o: &Opcode,
    no_retry: bool,
    retry_after: Option<Duration>,
    attempt: u32,
    retries: u32,
    now_ms: i64,
) -> Result<Transition, Transition> {
    let id = StepId::from_readable(o.id.clone());
    let opt_str = |k: &str| {
        o.opts
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let bad = |what: String| Transition::Failed {
        error: ErrorInfo::new(
            "BadOpcode",
            format!("durafn: step `{}`: {what}", o.display()),
        ),
        retry: Retry::Backoff,
    };
    let timeout = |default: Option<Duration>| match opt_str("timeout") {
        Some(s) => parse_duration(s)
            .map(|d| at(now_ms, d))
            .ok_or_else(|| bad(format!("`{s}` is not a duration the executor can wait"))),
        None => Ok(at(now_ms, default.unwrap_or_default())),
    };
    let error = || {
        o.error
            .as_ref()
            .map(error_info)
            .unwrap_or_else(|| ErrorInfo::new("Error", "step failed"))
    };
    Ok(match o.op.as_str() {
        "StepRun" => Transition::StepRan {
            id,
            output: o.data.clone().unwrap_or(Value::Null),
        },
        "StepPlanned" => Transition::StepPlanned { id },
        "StepFailed" => Transition::StepFailed { id, error: error() },
        "StepError" => {
            let retry = if no_retry {
                Retry::Never
            } else {
                Retry::Backoff
            };
            if Policy::attempt_is_final(retry, attempt, retries) {
                Transition::StepFailed { id, error: error() }
            } else {
                Transition::StepErrored(vec![FailedAttempt {
                    id,
                    error: error(),
                    attempt,
                    retry_after,
                }])
            }
        }
        "Sleep" => match o.sleep_until_ms(now_ms) {
            Some(until_ms) => Transition::Sleep { id, until_ms },
            None => {
                return Err(bad(format!(
                    "the sleep's duration `{}` is not one the executor can wait",
                    opt_str("duration").unwrap_or(&o.name)
                )))
            }
        },
        "WaitForEvent" => Transition::WaitForEvent {
            event: opt_str("event").unwrap_or(&o.name).to_string(),
            expr: opt_str("if").map(str::to_string),
            until_ms: timeout(None)?,
            since_ms: match opt_str("lookback") {
                Some(s) => Some(
                    now_ms.saturating_sub(
                        parse_duration(s)
                            .ok_or_else(|| {
                                bad(format!("`{s}` is not a lookback the executor knows"))
                            })?
                            .as_millis() as i64,
                    ),
                ),
                None => None,
            },
            seen: o
                .opts
                .get("lookback_seen")
                .and_then(Value::as_array)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            id,
        },
        "InvokeFunction" => Transition::Invoke {
            function: opt_str("function_id").unwrap_or_default().to_string(),
            data: o
                .opts
                .pointer("/payload/data")
                .cloned()
                .unwrap_or_else(|| json!({})),
            until_ms: timeout(Some(DEFAULT_INVOKE_TIMEOUT))?,
            id,
        },
        other => {
            return Err(Transition::Failed {
                error: ErrorInfo::new(
                    "Unsupported",
                    format!(
                        "durafn does not drive `{other}` steps yet (step `{}`)",
                        o.display()
                    ),
                ),
                retry: Retry::Never,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn round_trip(t: Transition) -> Transition {
        let reply = reply_for(t, "app", NOW);
        let text = reply.body.to_string();
        let mut steps = transitions_of(reply.status, &reply, &text, 1, 4, NOW);
        assert_eq!(steps.len(), 1, "{reply:?}");
        steps.remove(0).transition
    }

    #[test]
    fn every_transition_reads_back_as_it_was_written() {
        let id = StepId::new("fetch", &[2]);
        let wire_id = StepId::from_readable(id.hashed());
        let error = ErrorInfo::new("E", "boom");
        let cases = [
            (
                Transition::StepRan {
                    id: id.clone(),
                    output: json!({"n": 1}),
                },
                Transition::StepRan {
                    id: wire_id.clone(),
                    output: json!({"n": 1}),
                },
            ),
            (
                Transition::StepFailed {
                    id: id.clone(),
                    error: error.clone(),
                },
                Transition::StepFailed {
                    id: wire_id.clone(),
                    error: error.clone(),
                },
            ),
            (
                Transition::StepErrored(vec![FailedAttempt {
                    id: id.clone(),
                    error: error.clone(),
                    attempt: 1,
                    retry_after: Some(Duration::from_secs(30)),
                }]),
                Transition::StepErrored(vec![FailedAttempt {
                    id: wire_id.clone(),
                    error: error.clone(),
                    attempt: 1,
                    retry_after: Some(Duration::from_secs(30)),
                }]),
            ),
            (
                Transition::StepPlanned { id: id.clone() },
                Transition::StepPlanned {
                    id: wire_id.clone(),
                },
            ),
            (
                Transition::Sleep {
                    id: id.clone(),
                    until_ms: NOW + 90_000,
                },
                Transition::Sleep {
                    id: wire_id.clone(),
                    until_ms: NOW + 90_000,
                },
            ),
            (
                Transition::WaitForEvent {
                    id: id.clone(),
                    event: "shop/paid".into(),
                    expr: Some("async.data.n == 1".into()),
                    until_ms: NOW + 3_600_000,
                    since_ms: Some(NOW - 600_000),
                    seen: vec!["evt-1".into()],
                },
                Transition::WaitForEvent {
                    id: wire_id.clone(),
                    event: "shop/paid".into(),
                    expr: Some("async.data.n == 1".into()),
                    until_ms: NOW + 3_600_000,
                    since_ms: Some(NOW - 600_000),
                    seen: vec!["evt-1".into()],
                },
            ),
            (
                Transition::Invoke {
                    id: id.clone(),
                    function: "double".into(),
                    data: json!({"n": 2}),
                    until_ms: NOW + 60_000,
                },
                Transition::Invoke {
                    id: wire_id.clone(),
                    function: "app-double".into(),
                    data: json!({"n": 2}),
                    until_ms: NOW + 60_000,
                },
            ),
            (
                Transition::Done(json!([1, 2])),
                Transition::Done(json!([1, 2])),
            ),
        ];
        for (sent, read) in cases {
            assert_eq!(round_trip(sent.clone()), read, "{sent:?}");
        }
        for retry in [
            Retry::Never,
            Retry::Backoff,
            Retry::After(Duration::from_secs(7)),
        ] {
            let t = Transition::Failed {
                error: error.clone(),
                retry,
            };
            assert_eq!(round_trip(t.clone()), t);
        }
    }

    #[test]
    fn the_last_attempt_of_a_step_error_is_final() {
        let id = StepId::new("s", &[]);
        let reply = reply_for(
            Transition::StepErrored(vec![FailedAttempt {
                id: id.clone(),
                error: ErrorInfo::new("E", "x"),
                attempt: 4,
                retry_after: None,
            }]),
            "app",
            NOW,
        );
        let steps = transitions_of(206, &reply, "", 4, 4, NOW);
        assert!(
            matches!(&steps[0].transition, Transition::StepFailed { .. }),
            "{steps:?}"
        );
    }

    #[test]
    fn an_answer_without_an_opcode_or_with_a_bad_duration_fails_the_call() {
        for body in [
            json!([]),
            json!("nothing"),
            json!([{"op": "Sleep", "id": "x", "opts": {"duration": "1e999h"}}]),
        ] {
            let reply = Reply {
                status: 206,
                body: body.clone(),
                no_retry: None,
                retry_after: None,
            };
            let steps = transitions_of(206, &reply, &body.to_string(), 0, 4, NOW);
            assert!(
                matches!(
                    &steps[0].transition,
                    Transition::Failed {
                        retry: Retry::Backoff,
                        ..
                    }
                ),
                "{body}: {steps:?}"
            );
        }
    }
}
