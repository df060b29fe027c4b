//! The Inngest SDK wire protocol (request version 2), shared by the
//! handler (SDK side) and the engine's HTTP driver (executor side): call
//! bodies, opcodes, memo values, durations and signatures.
//!
//! Where the spec and the official SDKs differ, this follows the SDKs: the
//! HMAC key is the signing key without its `signkey-<env>-` prefix, as
//! UTF-8 bytes; the message is the body followed by the decimal timestamp;
//! the window is ±5 minutes.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use std::time::Duration;

use crate::error::{ErrorInfo, Retry};
use crate::journal::{Journal, Outcome};
use crate::step_id::StepId;
use crate::transition::{at, FailedAttempt, Policy, Transition, DEFAULT_INVOKE_TIMEOUT};

/// The SDK name sent in `X-Inngest-SDK` and the register body.
pub const SDK: &str = concat!("rust:v", env!("CARGO_PKG_VERSION"));
/// The introspection schema version.
pub const SCHEMA_VERSION: &str = "2024-05-24";
/// How far a signature's timestamp may be from now.
pub const SIGNATURE_WINDOW_SECS: i64 = 5 * 60;

/// `ctx` of a call request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallCtx {
    pub run_id: String,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub disable_immediate_execution: bool,
    #[serde(default)]
    pub use_api: bool,
    #[serde(default)]
    pub stack: Option<Stack>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stack {
    #[serde(default)]
    pub stack: Option<Vec<String>>,
    #[serde(default)]
    pub current: i64,
}

/// The body of a call request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRequest {
    pub event: Value,
    #[serde(default)]
    pub events: Vec<Value>,
    #[serde(default)]
    pub steps: Map<String, Value>,
    pub ctx: CallCtx,
    #[serde(default)]
    pub version: i64,
    #[serde(default)]
    pub use_api: bool,
}

impl CallRequest {
    /// The memo map as a hashed journal, in `ctx.stack` order (or the map's
    /// order when the stack is missing).
    pub fn journal(&self) -> Journal {
        let order: Vec<String> = match self.ctx.stack.as_ref().and_then(|s| s.stack.clone()) {
            Some(s) if !s.is_empty() => s,
            _ => self.steps.keys().cloned().collect(),
        };
        let mut j = Journal::hashed();
        for hash in order {
            if let Some(v) = self.steps.get(&hash) {
                j.insert(StepId::from_readable(hash), memo_to_outcome(v));
            }
        }
        j
    }
}

/// A memo value as the SDKs read it: `{"data": ..}`, `{"error": ..}`,
/// `null`, or any other value taken as data (a `waitForEvent` result is the
/// raw event).
pub fn memo_to_outcome(v: &Value) -> Outcome {
    match v {
        Value::Null => Outcome::null(),
        Value::Object(m)
            if m.contains_key("data") && m.keys().all(|k| k == "data" || k == "type") =>
        {
            Outcome::data(m["data"].clone())
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("error") => {
            Outcome::error(error_info(&m["error"]))
        }
        other => Outcome::data(other.clone()),
    }
}

/// An outcome as a memo value.
pub fn outcome_to_memo(o: &Outcome) -> Value {
    match o {
        Outcome::Data { data } => json!({ "data": data }),
        Outcome::Error { error } => json!({ "error": error }),
        Outcome::Null(()) => Value::Null,
    }
}

/// Read a serialized error (`{name, message, stack?}`, tolerant).
pub fn error_info(v: &Value) -> ErrorInfo {
    ErrorInfo::from_value(v)
}

/// One opcode of a 206 response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Opcode {
    pub op: String,
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(
        default,
        rename = "displayName",
        skip_serializing_if = "Option::is_none"
    )]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub opts: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl Opcode {
    /// The readable name to show for this step.
    pub fn display(&self) -> &str {
        self.display_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.name)
    }

    /// When a sleep ends (ms since the epoch): `opts.duration`, else
    /// `name`, as the Go executor reads it; a time string is a duration
    /// from `now_ms`, an RFC 3339 date (the Python SDK's `sleep_until`) a
    /// point in time.
    pub fn sleep_until_ms(&self, now_ms: i64) -> Option<i64> {
        let s = self
            .opts
            .get("duration")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.name);
        if let Some(d) = parse_duration(s) {
            return Some(at(now_ms, d));
        }
        chrono::DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.timestamp_millis())
    }
}

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
        } => {
            let mut opts = json!({"event": event, "timeout": until(until_ms, now_ms)});
            if let Some(x) = expr {
                opts["if"] = json!(x);
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

/// Format a duration as the protocol's time string (`1h30m`, `250ms`).
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= secs {
            out.push_str(&format!("{}{unit}", s / secs));
            s %= secs;
        }
    }
    out
}

/// Parse a time string: Go-style units plus `d` and `w` (`1h30m`, `300ms`, `1d`).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    // Out of range (or not finite) is no duration: an app's bad input must
    // not panic the executor.
    std::time::Duration::try_from_secs_f64(total).ok()
}

fn normalize_key(key: &str) -> &str {
    // `signkey-<env>-<hex>` → `<hex>`
    if let Some(rest) = key.strip_prefix("signkey-") {
        if let Some(i) = rest.find('-') {
            if rest[..i]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return &rest[i + 1..];
            }
        }
    }
    key
}

fn mac(key: &str, body: &[u8], t: i64) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(normalize_key(key).as_bytes())
        .expect("HMAC takes any key length");
    m.update(body);
    m.update(t.to_string().as_bytes());
    hex(&m.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `X-Inngest-Signature` value for `body` at unix time `t`.
pub fn sign(key: &str, body: &[u8], t: i64) -> String {
    format!("t={t}&s={}", mac(key, body, t))
}

/// Check an `X-Inngest-Signature` header against each key in turn.
pub fn verify(header: Option<&str>, body: &[u8], keys: &[&str], now_s: i64) -> Result<(), String> {
    let header = header.ok_or("no X-Inngest-Signature header")?;
    let mut t = None;
    let mut s = None;
    for part in header.split('&') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("s", v)) => s = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(s)) = (t, s) else {
        return Err("malformed X-Inngest-Signature header".into());
    };
    if (now_s - t).abs() > SIGNATURE_WINDOW_SECS {
        return Err(format!(
            "the signature's timestamp is {}s away from now (limit {SIGNATURE_WINDOW_SECS}s)",
            now_s - t
        ));
    }
    for key in keys {
        let expected = mac(key, body, t);
        let mut eq = expected.len() == s.len();
        for (a, b) in expected.bytes().zip(s.bytes()) {
            eq &= a == b;
        }
        if eq {
            return Ok(());
        }
    }
    Err("the signature does not match".into())
}

/// `signkey-<env>-` + hex(SHA-256(hex-decoded key)): the bearer token an SDK
/// sends to the executor.
pub fn hashed_signing_key(key: &str) -> String {
    let prefix = &key[..key.len() - normalize_key(key).len()];
    let raw = normalize_key(key);
    let decoded: Vec<u8> = (0..raw.len() / 2)
        .filter_map(|i| u8::from_str_radix(raw.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let bytes: &[u8] = if decoded.len() * 2 == raw.len() {
        &decoded
    } else {
        raw.as_bytes()
    };
    format!("{prefix}{}", hex(&Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        assert_eq!(
            parse_duration("1h30m"),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("300ms"),
            Some(std::time::Duration::from_millis(300))
        );
        assert_eq!(
            parse_duration("1d"),
            Some(std::time::Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_duration("1h30m0s"),
            Some(std::time::Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("soon"), None);
        for d in [5_400_000_u64, 250, 86_400_000, 61_000] {
            let d = std::time::Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
        assert_eq!(
            format_duration(std::time::Duration::from_secs(5400)),
            "1h30m"
        );
    }

    #[test]
    fn signatures_follow_the_official_sdks() {
        let key = "signkey-test-12345678";
        let body = br#"{"a":1}"#;
        let header = sign(key, body, 1_700_000_000);
        // The same key without its prefix signs the same way.
        assert_eq!(header, sign("12345678", body, 1_700_000_000));
        assert!(verify(Some(&header), body, &[key], 1_700_000_100).is_ok());
        assert!(
            verify(
                Some(&header),
                body,
                &["signkey-test-other", key],
                1_700_000_000
            )
            .is_ok(),
            "fallback key"
        );
        assert!(
            verify(Some(&header), b"{}", &[key], 1_700_000_000).is_err(),
            "other body"
        );
        assert!(
            verify(Some(&header), body, &[key], 1_700_000_000 + 301).is_err(),
            "outside the window"
        );
        assert!(verify(None, body, &[key], 1_700_000_000).is_err());
        // HMAC-SHA256(key = "12345678" as UTF-8, msg = body + "1700000000"), computed independently.
        let expected = {
            let mut m = Hmac::<Sha256>::new_from_slice(b"12345678").unwrap();
            m.update(b"{\"a\":1}1700000000");
            hex(&m.finalize().into_bytes())
        };
        assert_eq!(header, format!("t=1700000000&s={expected}"));
    }

    #[test]
    fn memo_values_as_the_sdks_read_them() {
        assert_eq!(
            memo_to_outcome(&json!({"data": 1})),
            Outcome::data(json!(1))
        );
        assert_eq!(memo_to_outcome(&Value::Null), Outcome::null());
        assert_eq!(
            memo_to_outcome(&json!({"error": {"name": "E", "message": "m"}})),
            Outcome::error(ErrorInfo::new("E", "m"))
        );
        let ev = json!({"name": "a", "data": {}});
        assert_eq!(memo_to_outcome(&ev), Outcome::data(ev.clone()));
    }
}
