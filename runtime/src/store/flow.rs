//! Flow control decided when an event starts a run: idempotency, rate
//! limits and singletons (Inngest's semantics).
//!
//! The engine evaluates each function's key expressions on the event and
//! hands the store a [`RunFlow`] per run; the store decides, inside the
//! ingest transaction, whether the run starts. A run that does not is
//! stored as [`RunStatus::Skipped`](super::RunStatus::Skipped) with the
//! reason as its error, so the run API says why. The rules are pure
//! functions here; each store only reads and writes the state they need:
//!
//! - **idempotency**: a key per function, held for 24 hours from the run it
//!   started; an event with a held key starts no run.
//! - **rate limit**: at most `limit` runs per `period` per key (GCRA, as
//!   Inngest: the state is one timestamp per key, and the limit is smooth,
//!   not a fixed window); an event over it starts no run.
//! - **singleton**: at most one active run per key; `skip` starts no new
//!   run while one is active, `cancel` cancels the active one and starts
//!   the new one.
//!
//! Concurrency limits are not decided at ingest but at claim: a run whose
//! key has `limit` runs running (leased, lease not run out) stays queued
//! until one of them suspends or ends. Its keys are evaluated at ingest
//! and kept with the run.
//!
//! The checks run in that order, and a run skipped by one of them changes
//! no state of the others (a rate-limited event does not hold an
//! idempotency key). Two more rules set when a started run becomes due:
//!
//! - **throttle**: at most `limit` runs start per `period` per key, `burst`
//!   of them at once (GCRA again); a run over it is queued until its slot,
//!   never dropped.
//! - **priority**: a factor in seconds (-600 to 600) that moves the run
//!   ahead of runs queued up to that long before it, or delays it.
//!
//! And two that merge runs: **debounce** queues the run `period` after
//! its event; an event with the same key while it is still queued joins it
//! (the run will get the newest event) and moves it to `period` after that
//! event, but never later than `timeout` after the first. **Batching**
//! queues the run `timeout` after its first event; events with the same
//! key join it (the run gets them all, in order) until it holds
//! `max_size`, which makes it due at once, or its timeout passes. A full
//! or timed-out batch takes no more events: the next event opens another.

use serde_json::Value;

use crate::error::ErrorInfo;

/// How long an idempotency key is held (Inngest: 24 hours).
pub const IDEMPOTENCY_MS: i64 = 24 * 3600 * 1000;

/// The flow-control rules that apply to one new run, with its keys
/// evaluated on the event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFlow {
    /// The idempotency key.
    pub idempotency: Option<String>,
    pub rate_limit: Option<RateLimit>,
    pub singleton: Option<Singleton>,
    /// Up to [`MAX_CONCURRENCY`] limits, checked when the run is claimed.
    pub concurrency: Vec<Concurrency>,
    pub throttle: Option<Throttle>,
    /// How far ahead (positive) or behind (negative) of its arrival the run
    /// is queued, in ms, within [`MAX_PRIORITY_MS`].
    pub priority_ms: i64,
    pub timeouts: Timeouts,
    pub debounce: Option<Debounce>,
    pub batch: Option<Batch>,
}

/// Events gathered into one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub key: String,
    /// At most this many events; 1 runs the event alone, at once.
    pub max_size: u32,
    /// The longest the first event waits for the batch to fill.
    pub timeout_ms: i64,
}

/// Whether a batch run created at `created_ms` holding `size` events still
/// takes events at `now`.
pub fn batch_open(b: &Batch, created_ms: i64, size: u32, now: i64) -> bool {
    size < b.max_size && created_ms.saturating_add(b.timeout_ms) > now
}

/// Only the last event of a burst starts a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debounce {
    pub key: String,
    pub period_ms: i64,
    /// The longest a burst may delay its run, from its first event.
    pub timeout_ms: Option<i64>,
}

/// How long a run may wait to start, and to finish once started; a run
/// past either is cancelled with [`START_TIMEOUT`] or [`FINISH_TIMEOUT`]
/// as its error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub start_ms: Option<i64>,
    pub finish_ms: Option<i64>,
}

/// The error of a run cancelled because it did not start in time.
pub const START_TIMEOUT: &str = "StartTimeout";
/// The error of a run cancelled because it did not finish in time.
pub const FINISH_TIMEOUT: &str = "FinishTimeout";

/// The error stored on a run a timeout cancelled.
pub fn timeout_error(name: &str, fn_id: &str) -> ErrorInfo {
    let what = match name {
        START_TIMEOUT => "did not start within its `timeouts.start`",
        _ => "did not finish within its `timeouts.finish`",
    };
    ErrorInfo::new(
        name,
        format!("the run of `{fn_id}` {what}, and was cancelled"),
    )
}

/// The bound of a priority factor (Inngest's default: 600 s).
pub const MAX_PRIORITY_MS: i64 = 600_000;

/// At most `limit` runs start per `period_ms` per key, `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttle {
    pub key: String,
    pub limit: u32,
    pub period_ms: i64,
    pub burst: u32,
}

/// GCRA as a scheduler: when a run arriving at `now` may start, and the
/// key's new theoretical arrival time.
pub fn throttle(tat: Option<i64>, now: i64, t: &Throttle) -> (i64, i64) {
    let interval = (t.period_ms / i64::from(t.limit.max(1))).max(1);
    let tat = tat.unwrap_or(now).max(now);
    let tolerance = interval.saturating_mul(i64::from(t.burst.max(1)) - 1);
    ((tat - tolerance).max(now), tat.saturating_add(interval))
}

impl RunFlow {
    /// Whether no rule can refuse the run at ingest.
    pub fn admits_all(&self) -> bool {
        self.idempotency.is_none()
            && self.rate_limit.is_none()
            && self.singleton.is_none()
            && self.throttle.is_none()
            && self.debounce.is_none()
            && self.batch.is_none()
    }
}

/// How many concurrency limits one function may have (Inngest: two).
pub const MAX_CONCURRENCY: usize = 2;

/// At most `limit` runs with this key running at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    /// The key with its scope: `fn:<function>:<value>`, `env:<value>` or
    /// `account:<value>`; runs of any function with the same key share the
    /// limit.
    pub key: String,
    pub limit: u32,
}

pub use crate::function::ConcurrencyScope as Scope;

/// The stored key of a concurrency limit.
pub fn concurrency_key(scope: Scope, fn_id: &str, value: &str) -> String {
    match scope {
        Scope::Fn => format!("fn:{fn_id}:{value}"),
        Scope::Env => format!("env:{value}"),
        Scope::Account => format!("account:{value}"),
    }
}

/// Whether a run with these limits may be claimed, given how many runs
/// run now per key (`running`) and how many this claim took already
/// (`taken`); on yes, count it as taken.
pub fn fits(
    limits: &[Concurrency],
    running: impl Fn(&str) -> u64,
    taken: &mut std::collections::HashMap<String, u64>,
) -> bool {
    let ok = limits
        .iter()
        .all(|c| running(&c.key) + taken.get(&c.key).copied().unwrap_or(0) < u64::from(c.limit));
    if ok {
        for c in limits {
            *taken.entry(c.key.clone()).or_default() += 1;
        }
    }
    ok
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// The key's value (empty: one limit for the whole function).
    pub key: String,
    pub limit: u32,
    pub period_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Singleton {
    pub key: String,
    pub mode: SingletonMode,
}

pub use crate::function::SingletonMode;

/// What a flow key row holds, by kind: the kinds share one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Value: when the key is released (ms).
    Idempotency,
    /// Value: the GCRA theoretical arrival time (ms).
    RateLimit,
    /// No value: the row is what concurrent ingests lock.
    Singleton,
    /// Value: the GCRA theoretical arrival time (ms).
    Throttle,
    /// No value: the row is what concurrent ingests lock.
    Debounce,
    /// No value: the row is what concurrent ingests lock.
    Batch,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Idempotency => "idempotency",
            KeyKind::RateLimit => "rate_limit",
            KeyKind::Singleton => "singleton",
            KeyKind::Throttle => "throttle",
            KeyKind::Debounce => "debounce",
            KeyKind::Batch => "batch",
        }
    }
}

/// The flow keys a run touches: (kind, key), in a fixed order (stores that
/// lock rows lock them sorted, so that two ingests cannot deadlock).
pub fn keys(flow: &RunFlow) -> Vec<(KeyKind, &str)> {
    let mut out = Vec::new();
    if let Some(k) = &flow.idempotency {
        out.push((KeyKind::Idempotency, k.as_str()));
    }
    if let Some(r) = &flow.rate_limit {
        out.push((KeyKind::RateLimit, r.key.as_str()));
    }
    if let Some(s) = &flow.singleton {
        out.push((KeyKind::Singleton, s.key.as_str()));
    }
    if let Some(t) = &flow.throttle {
        out.push((KeyKind::Throttle, t.key.as_str()));
    }
    if let Some(d) = &flow.debounce {
        out.push((KeyKind::Debounce, d.key.as_str()));
    }
    if let Some(b) = &flow.batch {
        out.push((KeyKind::Batch, b.key.as_str()));
    }
    out
}

/// Why a run was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Idempotent,
    RateLimited,
    Singleton,
}

impl Skip {
    /// The error stored on the skipped run.
    pub fn error(self, fn_id: &str, flow: &RunFlow) -> ErrorInfo {
        let shown = |k: &str| match k {
            "" => "the function-wide key".to_string(),
            k => format!("key {k:?}"),
        };
        match self {
            Skip::Idempotent => ErrorInfo::new(
                "Idempotent",
                format!(
                    "an earlier event with idempotency {} started a run of `{fn_id}` less than 24 hours ago",
                    shown(flow.idempotency.as_deref().unwrap_or(""))
                ),
            ),
            Skip::RateLimited => {
                let r = flow.rate_limit.as_ref();
                ErrorInfo::new(
                    "RateLimited",
                    format!(
                        "`{fn_id}` is rate limited to {} runs per {} ms for {}",
                        r.map_or(0, |r| r.limit),
                        r.map_or(0, |r| r.period_ms),
                        shown(r.map_or("", |r| r.key.as_str()))
                    ),
                )
            }
            Skip::Singleton => ErrorInfo::new(
                "Singleton",
                format!(
                    "a run of `{fn_id}` with singleton {} is active (mode `skip`)",
                    shown(flow.singleton.as_ref().map_or("", |s| s.key.as_str()))
                ),
            ),
        }
    }
}

/// Whether an idempotency key released at `held_until` (if held at all)
/// still holds at `now`.
pub fn idempotency_held(held_until: Option<i64>, now: i64) -> bool {
    held_until.is_some_and(|t| t > now)
}

/// GCRA: the new theoretical arrival time if a run is allowed at `now`,
/// given the key's current one (`None` for a new key); `None` if the run
/// is over the limit. `limit` runs fit in any window of `period_ms`.
pub fn gcra(tat: Option<i64>, now: i64, limit: u32, period_ms: i64) -> Option<i64> {
    let limit = i64::from(limit.max(1));
    let interval = (period_ms / limit).max(1);
    let next = tat.unwrap_or(now).max(now).saturating_add(interval);
    (next - now <= period_ms).then_some(next)
}

/// The decision for a run, given what the store read for its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Start the run, due at `due_ms`; write these key values (kind,
    /// key, value), and with a singleton in `cancel` mode, cancel the
    /// active runs.
    Start {
        writes: Vec<(KeyKind, String, i64)>,
        cancel_active: bool,
        due_ms: i64,
    },
    /// The event joins the queued run `run_id` of its debounce key, which
    /// now waits until `due_ms` and will get this event; write these key
    /// values.
    Join {
        writes: Vec<(KeyKind, String, i64)>,
        run_id: String,
        due_ms: i64,
    },
    /// The event joins the open batch run `run_id`, which then holds
    /// `size` events; a full batch is closed and due at `due_ms` (else its
    /// due time stays).
    Append {
        writes: Vec<(KeyKind, String, i64)>,
        run_id: String,
        size: u32,
        full: bool,
        due_ms: Option<i64>,
    },
    Skip(Skip),
}

/// What happened to a new run, as a store answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Stored, queued until the time given.
    Queued(i64),
    /// Not stored: its event joined this queued run (debounce).
    Joined(String),
    /// Not stored: its event joined this open batch.
    Batched(String),
    Skipped(Skip),
}

/// What a store read for a run's keys.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// The idempotency key's release time.
    pub held_until: Option<i64>,
    /// The rate limit's theoretical arrival time.
    pub tat: Option<i64>,
    /// Whether a run with the same singleton key is active.
    pub active_singleton: bool,
    /// The throttle's theoretical arrival time.
    pub throttle_tat: Option<i64>,
    /// The queued run of the debounce key, with when it was created.
    pub pending_debounce: Option<(String, i64)>,
    /// The open batch of the batch key, with how many events it holds.
    pub open_batch: Option<(String, u32)>,
}

/// When a run that flow control lets start becomes due.
pub fn due_at(flow: &RunFlow, start: i64) -> i64 {
    start.saturating_sub(flow.priority_ms.clamp(-MAX_PRIORITY_MS, MAX_PRIORITY_MS))
}

/// Decide a run's fate from what the store read for its keys.
pub fn admit(flow: &RunFlow, now: i64, read: Read) -> Admit {
    let Read {
        held_until,
        tat,
        active_singleton,
        throttle_tat,
        pending_debounce,
        open_batch,
    } = read;
    let mut writes = Vec::new();
    if let Some(k) = &flow.idempotency {
        if idempotency_held(held_until, now) {
            return Admit::Skip(Skip::Idempotent);
        }
        writes.push((KeyKind::Idempotency, k.clone(), now + IDEMPOTENCY_MS));
    }
    if let Some(r) = &flow.rate_limit {
        match gcra(tat, now, r.limit, r.period_ms) {
            Some(next) => writes.push((KeyKind::RateLimit, r.key.clone(), next)),
            None => return Admit::Skip(Skip::RateLimited),
        }
    }
    if let (Some(d), Some((run_id, created))) = (&flow.debounce, pending_debounce) {
        let mut due = now.saturating_add(d.period_ms);
        if let Some(t) = d.timeout_ms {
            due = due.min(created.saturating_add(t));
        }
        return Admit::Join {
            writes,
            run_id,
            due_ms: due,
        };
    }
    if let (Some(b), Some((run_id, size))) = (&flow.batch, open_batch) {
        let size = size.saturating_add(1);
        let full = size >= b.max_size;
        // A throttled batch keeps the start its throttle gave it.
        let due_ms = (full && flow.throttle.is_none()).then_some(now);
        return Admit::Append {
            writes,
            run_id,
            size,
            full,
            due_ms,
        };
    }
    let mut cancel_active = false;
    if let Some(s) = &flow.singleton {
        if active_singleton {
            match s.mode {
                SingletonMode::Skip => return Admit::Skip(Skip::Singleton),
                SingletonMode::Cancel => cancel_active = true,
            }
        }
    }
    let mut start = match (&flow.debounce, &flow.batch) {
        (Some(d), _) => now.saturating_add(d.period_ms),
        (None, Some(b)) if b.max_size > 1 => now.saturating_add(b.timeout_ms),
        _ => now,
    };
    if let Some(t) = &flow.throttle {
        let (at, next) = throttle(throttle_tat, start, t);
        writes.push((KeyKind::Throttle, t.key.clone(), next));
        start = at;
    }
    Admit::Start {
        writes,
        cancel_active,
        due_ms: due_at(flow, start),
    }
}

/// A key expression's value on an event, as a key: a string as is, other
/// values as JSON. `None` when it cannot be evaluated or is `null`.
pub fn key_of(expr: &crate::expr::Expr, event: &Value) -> Option<String> {
    match expr.eval(event)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        v => Some(v.to_string()),
    }
}

/// A period such as `"1m"`, `"30s"`, `"1h30m"`, `"500ms"`, `"2d"` in
/// milliseconds (Inngest's duration strings).
pub fn parse_period(s: &str) -> Result<i64, String> {
    let bad = || format!("`{s}` is not a period like \"30s\", \"1m\", \"1h30m\" or \"500ms\"");
    let mut total: i64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..unit] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_limit_per_period_then_refills_smoothly() {
        let (limit, period) = (3, 60_000);
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra(tat, 0, limit, period).expect("within the limit"));
        }
        assert_eq!(
            gcra(tat, 0, limit, period),
            None,
            "the fourth in the window"
        );
        assert_eq!(gcra(tat, 19_999, limit, period), None);
        assert!(gcra(tat, 20_000, limit, period).is_some(), "one slot back");
        assert!(gcra(tat, 60_000, limit, period).is_some());
    }

    #[test]
    fn admission_checks_in_order_and_writes_only_when_started() {
        let flow = RunFlow {
            idempotency: Some("k".into()),
            rate_limit: Some(RateLimit {
                key: "".into(),
                limit: 1,
                period_ms: 1000,
            }),
            singleton: Some(Singleton {
                key: "s".into(),
                mode: SingletonMode::Cancel,
            }),
            concurrency: Vec::new(),
            throttle: None,
            priority_ms: 0,
            timeouts: Timeouts::default(),
            debounce: None,
            batch: None,
        };
        let read = |held_until, tat, active_singleton| Read {
            held_until,
            tat,
            active_singleton,
            ..Read::default()
        };
        assert_eq!(
            admit(&flow, 10, read(Some(11), None, false)),
            Admit::Skip(Skip::Idempotent)
        );
        assert_eq!(
            admit(&flow, 10, read(Some(10), Some(1010), false)),
            Admit::Skip(Skip::RateLimited)
        );
        let Admit::Start {
            writes,
            cancel_active,
            due_ms,
        } = admit(&flow, 10, read(None, None, true))
        else {
            panic!("starts")
        };
        assert_eq!(due_ms, 10);
        assert!(cancel_active);
        assert_eq!(
            writes,
            [
                (KeyKind::Idempotency, "k".to_string(), 10 + IDEMPOTENCY_MS),
                (KeyKind::RateLimit, String::new(), 1010)
            ]
        );
        let skip = RunFlow {
            singleton: Some(Singleton {
                key: "s".into(),
                mode: SingletonMode::Skip,
            }),
            ..RunFlow::default()
        };
        assert_eq!(
            admit(&skip, 0, read(None, None, true)),
            Admit::Skip(Skip::Singleton)
        );
    }

    #[test]
    fn a_throttle_spaces_starts_after_its_burst_and_priority_moves_them() {
        let t = Throttle {
            key: String::new(),
            limit: 10,
            period_ms: 60_000,
            burst: 3,
        };
        let mut tat = None;
        let mut starts = Vec::new();
        for _ in 0..5 {
            let (at, next) = throttle(tat, 0, &t);
            starts.push(at);
            tat = Some(next);
        }
        assert_eq!(
            starts,
            [0, 0, 0, 6_000, 12_000],
            "three at once, then one every 6 s"
        );
        let (at, _) = throttle(tat, 100_000, &t);
        assert_eq!(at, 100_000, "a quiet key starts at once");
        let mut flow = RunFlow {
            priority_ms: 120_000,
            ..RunFlow::default()
        };
        assert_eq!(due_at(&flow, 1_000_000), 880_000);
        flow.priority_ms = -5_000_000;
        assert_eq!(due_at(&flow, 1_000_000), 1_600_000, "bounded to 600 s");
    }

    #[test]
    fn a_debounce_joins_the_queued_run_until_its_timeout() {
        let flow = RunFlow {
            debounce: Some(Debounce {
                key: "k".into(),
                period_ms: 5_000,
                timeout_ms: Some(12_000),
            }),
            ..RunFlow::default()
        };
        let fresh = admit(&flow, 100, Read::default());
        assert!(
            matches!(fresh, Admit::Start { due_ms: 5_100, .. }),
            "{fresh:?}"
        );
        let pending = Read {
            pending_debounce: Some(("r1".into(), 100)),
            ..Read::default()
        };
        let join = admit(&flow, 3_000, pending.clone());
        assert!(
            matches!(&join, Admit::Join { run_id, due_ms: 8_000, .. } if run_id == "r1"),
            "{join:?}"
        );
        let capped = admit(&flow, 10_000, pending);
        assert!(
            matches!(capped, Admit::Join { due_ms: 12_100, .. }),
            "{capped:?}"
        );
    }

    #[test]
    fn a_batch_fills_until_its_size_then_is_due_at_once() {
        let mut flow = RunFlow {
            batch: Some(Batch {
                key: "k".into(),
                max_size: 3,
                timeout_ms: 5_000,
            }),
            ..RunFlow::default()
        };
        let first = admit(&flow, 100, Read::default());
        assert!(
            matches!(first, Admit::Start { due_ms: 5_100, .. }),
            "{first:?}"
        );
        let open = |size| Read {
            open_batch: Some(("b1".into(), size)),
            ..Read::default()
        };
        assert_eq!(
            admit(&flow, 200, open(1)),
            Admit::Append {
                writes: Vec::new(),
                run_id: "b1".into(),
                size: 2,
                full: false,
                due_ms: None
            }
        );
        assert_eq!(
            admit(&flow, 300, open(2)),
            Admit::Append {
                writes: Vec::new(),
                run_id: "b1".into(),
                size: 3,
                full: true,
                due_ms: Some(300)
            },
            "the third event fills it: due now"
        );
        let b = flow.batch.as_ref().expect("set");
        assert!(batch_open(b, 100, 2, 5_099));
        assert!(!batch_open(b, 100, 2, 5_100), "timed out");
        assert!(!batch_open(b, 100, 3, 200), "full");
        flow.batch = Some(Batch {
            max_size: 1,
            ..b.clone()
        });
        assert!(
            matches!(
                admit(&flow, 100, Read::default()),
                Admit::Start { due_ms: 100, .. }
            ),
            "a batch of one runs at once"
        );
    }

    #[test]
    fn periods() {
        assert_eq!(parse_period("30s"), Ok(30_000));
        assert_eq!(parse_period("1h30m"), Ok(5_400_000));
        assert_eq!(parse_period("500ms"), Ok(500));
        assert_eq!(parse_period("2d"), Ok(172_800_000));
        for bad in ["", "1", "m", "1 minute", "-1s", "1x"] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }
}
