//! The Inngest SDK wire protocol (request version 2), shared by the
//! handler (SDK side) and the engine's HTTP driver (executor side): call
//! bodies, opcodes, memo values, durations and signatures.
//!
//! Where the spec and the official SDKs differ, this follows the SDKs: the
//! HMAC key is the signing key without its `signkey-<env>-` prefix, as
//! UTF-8 bytes; the message is the body followed by the decimal timestamp;
//! the window is ±5 minutes.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ErrorInfo;
use crate::journal::{Journal, Outcome};
use crate::step_id::StepId;
use crate::transition::at;

pub use super::signature::{hashed_signing_key, same_secret, sign, verify};
pub use super::translate::{reply_for, transitions_of, Reply, WireStep};

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

/// A journal as a call request's `steps` memo map (and `GET
/// /v0/runs/{id}/actions`'s answer).
pub fn memo_map(journal: &Journal) -> Map<String, Value> {
    journal
        .iter()
        .map(|(id, o)| (id.to_string(), outcome_to_memo(o)))
        .collect()
}

/// One path segment, percent-encoded (RFC 3986 unreserved characters
/// kept).
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

/// A function's attribute options as an official SDK syncs them: the
/// fields of a function in the register body (`cancel`, `idempotency`,
/// `rateLimit`, `singleton`, `concurrency`, `throttle`, `priority`,
/// `timeouts`, `debounce`, `batchEvents`), so that the executor applies the
/// same flow control to a served function as to one in its own process.
pub fn function_options(c: &crate::function::FnConfig) -> Map<String, Value> {
    use crate::function::{ConcurrencyScope, SingletonMode};
    let period = |ms: u64| format_duration(std::time::Duration::from_millis(ms));
    let mut m = Map::new();
    if let Some(x) = &c.cancel_on {
        let mut cancel = json!({"event": x.event});
        if let Some(e) = x.expression {
            cancel["if"] = json!(e);
        }
        m.insert("cancel".into(), json!([cancel]));
    }
    if let Some(key) = c.idempotency {
        m.insert("idempotency".into(), json!(key));
    }
    if let Some(r) = &c.rate_limit {
        let mut v = json!({"limit": r.limit, "period": period(r.period_ms)});
        if let Some(k) = r.key {
            v["key"] = json!(k);
        }
        m.insert("rateLimit".into(), v);
    }
    if let Some(s) = &c.singleton {
        let mode = match s.mode {
            SingletonMode::Skip => "skip",
            SingletonMode::Cancel => "cancel",
        };
        let mut v = json!({ "mode": mode });
        if let Some(k) = s.key {
            v["key"] = json!(k);
        }
        m.insert("singleton".into(), v);
    }
    if !c.concurrency.is_empty() {
        let limits: Vec<Value> = c
            .concurrency
            .iter()
            .map(|l| {
                let scope = match l.scope {
                    ConcurrencyScope::Fn => "fn",
                    ConcurrencyScope::Env => "env",
                    ConcurrencyScope::Account => "account",
                };
                let mut v = json!({"limit": l.limit, "scope": scope});
                if let Some(k) = l.key {
                    v["key"] = json!(k);
                }
                v
            })
            .collect();
        m.insert("concurrency".into(), json!(limits));
    }
    if let Some(t) = &c.throttle {
        let mut v = json!({"limit": t.limit, "period": period(t.period_ms), "burst": t.burst});
        if let Some(k) = t.key {
            v["key"] = json!(k);
        }
        m.insert("throttle".into(), v);
    }
    if let Some(p) = c.priority {
        m.insert("priority".into(), json!({ "run": p }));
    }
    let mut timeouts = Map::new();
    if let Some(ms) = c.timeouts.start_ms {
        timeouts.insert("start".into(), json!(period(ms)));
    }
    if let Some(ms) = c.timeouts.finish_ms {
        timeouts.insert("finish".into(), json!(period(ms)));
    }
    if !timeouts.is_empty() {
        m.insert("timeouts".into(), Value::Object(timeouts));
    }
    if let Some(d) = &c.debounce {
        let mut v = json!({"period": period(d.period_ms)});
        if let Some(k) = d.key {
            v["key"] = json!(k);
        }
        if let Some(ms) = d.timeout_ms {
            v["timeout"] = json!(period(ms));
        }
        m.insert("debounce".into(), v);
    }
    if let Some(b) = &c.batch_events {
        let mut v = json!({"maxSize": b.max_size, "timeout": period(b.timeout_ms)});
        if let Some(k) = b.key {
            v["key"] = json!(k);
        }
        if let Some(w) = b.when {
            v["if"] = json!(w);
        }
        m.insert("batchEvents".into(), v);
    }
    m
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

/// A `Retry-After` header as a wait from `now_ms`: seconds (`120`), a
/// timestamp as the official SDKs send it (`2026-11-26T06:50:00.123Z`), or
/// an HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`). A time already past
/// waits nothing; anything else is `None` (the usual backoff applies).
pub fn retry_after(v: &str, now_ms: i64) -> Option<std::time::Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc3339(v)
        .or_else(|_| chrono::DateTime::parse_from_rfc2822(v))
        .ok()?
        .timestamp_millis();
    Some(std::time::Duration::from_millis(
        at.saturating_sub(now_ms).max(0) as u64,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_timestamps_and_http_dates() {
        let now = 1_700_000_000_000; // 2023-11-14T22:13:20Z
        let d = |v: &str| retry_after(v, now).map(|d| d.as_millis());
        assert_eq!(d("120"), Some(120_000));
        assert_eq!(d("2023-11-14T22:13:22.500Z"), Some(2_500));
        assert_eq!(d("Tue, 14 Nov 2023 22:13:30 GMT"), Some(10_000));
        assert_eq!(d("2023-11-14T22:00:00Z"), Some(0), "past: at once");
        assert_eq!(d("soon"), None);
    }

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
