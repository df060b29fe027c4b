//! What the macro generates for each `#[durable_fn]`: a value implementing
//! [`DurableFn`], with the function's triggers, config and static table of
//! step sites (the explicit state machine of the function).

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde_json::Value;

use crate::ctx::Ctx;
use crate::error::Error;
use crate::journal::Journal;

/// The version of a step table: 12 hex digits of the SHA-1 of each site's
/// ID, kind and loop depth, in order.
pub fn version_of(sites: &[StepSite]) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    for s in sites {
        h.update(s.id.as_bytes());
        h.update([0x1f]);
        h.update(s.kind.as_str().as_bytes());
        h.update([0x1f]);
        h.update(s.loop_depth.to_le_bytes());
        h.update([0x1e]);
    }
    h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn a_version_follows_the_step_table_not_the_lines() {
        let v1 = version_of(&[
            StepSite::new("fetch", StepKind::Run, 1, 10),
            StepSite::new("nap", StepKind::Sleep, 0, 12),
        ]);
        assert_eq!(v1.len(), 12);
        let moved = version_of(&[
            StepSite::new("fetch", StepKind::Run, 1, 40),
            StepSite::new("nap", StepKind::Sleep, 0, 52),
        ]);
        assert_eq!(v1, moved, "moving code keeps the version");
        for changed in [
            vec![
                StepSite::new("fetch-all", StepKind::Run, 1, 10),
                StepSite::new("nap", StepKind::Sleep, 0, 12),
            ],
            vec![
                StepSite::new("fetch", StepKind::Run, 0, 10),
                StepSite::new("nap", StepKind::Sleep, 0, 12),
            ],
            vec![
                StepSite::new("fetch", StepKind::Invoke, 1, 10),
                StepSite::new("nap", StepKind::Sleep, 0, 12),
            ],
            vec![
                StepSite::new("nap", StepKind::Sleep, 0, 12),
                StepSite::new("fetch", StepKind::Run, 1, 10),
            ],
            vec![StepSite::new("fetch", StepKind::Run, 1, 10)],
        ] {
            assert_ne!(version_of(&changed), v1, "{changed:?}");
        }
    }
}

/// A boxed, `Send` future, as returned by [`DurableFn::call`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The kind of a step site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// `step!`
    Run,
    /// `sleep!`
    Sleep,
    /// `sleep_until!`
    SleepUntil,
    /// `wait_for_event!`
    WaitForEvent,
    /// `send_event!`
    SendEvent,
    /// `invoke!`
    Invoke,
    /// `parallel!`: one step per item.
    Parallel,
    /// `patched!`: which side of a change a run takes.
    Patched,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Run => "run",
            StepKind::Sleep => "sleep",
            StepKind::SleepUntil => "sleep_until",
            StepKind::WaitForEvent => "wait_for_event",
            StepKind::SendEvent => "send_event",
            StepKind::Invoke => "invoke",
            StepKind::Parallel => "parallel",
            StepKind::Patched => "patched",
        }
    }
}

/// One step site of a function: a `step!`, `sleep!`, … in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepSite {
    /// The literal ID.
    pub id: &'static str,
    pub kind: StepKind,
    /// How many loops enclose the site (how many indices its IDs carry).
    pub loop_depth: u32,
    /// The source line of the site.
    pub line: u32,
    /// `wait_for_event!`: the event name awaited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'static str>,
    /// `wait_for_event!`: the match expression (CEL), checked when the
    /// function is registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expr: Option<&'static str>,
}

impl StepSite {
    /// A site with no event or expression: every kind but
    /// `wait_for_event!` (what `#[durable_fn]` writes for most sites).
    pub const fn new(id: &'static str, kind: StepKind, loop_depth: u32, line: u32) -> StepSite {
        StepSite {
            id,
            kind,
            loop_depth,
            line,
            event: None,
            expr: None,
        }
    }
}

/// What starts a run of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Trigger {
    /// An event name; `prefix/*` matches every event under `prefix/`. An
    /// optional CEL `expression` over `event` filters which events count.
    Event {
        event: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        expression: Option<&'static str>,
    },
    /// A cron schedule (`sec min hour day month weekday`, or five fields
    /// without seconds), optionally prefixed with `TZ=Area/City `.
    Cron { cron: &'static str },
}

impl Trigger {
    /// Whether an event with this name triggers the function (before any
    /// expression filter).
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Trigger::Event { event, .. } => match event.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => *event == name,
            },
            // Cron runs are started by the engine's scheduler for this
            // function only, never by a broadcast event.
            Trigger::Cron { .. } => false,
        }
    }
}

/// The event a cron trigger sends (Inngest's name).
pub const CRON_EVENT: &str = "inngest/scheduled.timer";

/// Cancel a function's runs when an event arrives (`cancel_on = ".."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CancelOn {
    pub event: &'static str,
    /// CEL over `event` (the run's trigger) and `async` (the incoming event).
    pub expression: Option<&'static str>,
}

/// At most `limit` runs per `period_ms`, per value of `key` (`rate_limit(..)`
/// on the attribute); events over it start no run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimitConfig {
    pub limit: u32,
    pub period_ms: u64,
    /// CEL over `event`; one limit for the whole function when `None`.
    pub key: Option<&'static str>,
}

/// At most `limit` runs start per `period_ms` per value of `key`, `burst`
/// of them at once (`throttle(..)` on the attribute); runs over it wait
/// their turn in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ThrottleConfig {
    pub limit: u32,
    pub period_ms: u64,
    pub burst: u32,
    /// CEL over `event`; one throttle for the whole function when `None`.
    pub key: Option<&'static str>,
}

/// How long a run may wait in the queue to start, and how long it may
/// take to finish once started (`timeouts(..)` on the attribute); a run
/// past either is cancelled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TimeoutsConfig {
    pub start_ms: Option<u64>,
    pub finish_ms: Option<u64>,
}

/// Only the last event of a burst starts a run (`debounce(..)` on the
/// attribute): the run waits `period_ms` after each event of its key, at
/// most `timeout_ms` after the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DebounceConfig {
    pub period_ms: u64,
    /// CEL over `event`; one burst for the whole function when `None`.
    pub key: Option<&'static str>,
    pub timeout_ms: Option<u64>,
}

/// Events gathered into one run (`batch_events(..)` on the attribute): a
/// batch opens with its first event and its run starts when it holds
/// `max_size` events or `timeout_ms` after the first, whichever comes
/// first. The function takes `Vec<Event<T>>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchConfig {
    pub max_size: u32,
    pub timeout_ms: u64,
    /// CEL over `event`: one batch per value; one for the whole function
    /// when `None`.
    pub key: Option<&'static str>,
    /// CEL over `event`: an event it rejects is not batched, and runs
    /// alone at once.
    pub when: Option<&'static str>,
}

/// At most one active run per value of `key` (`singleton(..)` on the
/// attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SingletonConfig {
    /// CEL over `event`; one for the whole function when `None`.
    pub key: Option<&'static str>,
    pub mode: SingletonMode,
}

/// What a new run does when a run with its singleton key is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SingletonMode {
    /// The new run is skipped.
    Skip,
    /// The active run is cancelled and the new one starts.
    Cancel,
}

/// At most `limit` runs running at once per value of `key`
/// (`concurrency(..)` on the attribute). Sleeping and waiting runs do not
/// count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConcurrencyConfig {
    pub limit: u32,
    /// CEL over `event`; one limit for the whole function (or scope) when
    /// `None`.
    pub key: Option<&'static str>,
    pub scope: ConcurrencyScope,
}

/// Which runs a concurrency key counts across (Inngest's scopes). One
/// durafn store is one environment: `env` and `account` keys are shared by
/// every function of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyScope {
    /// The function's own runs.
    Fn,
    /// Runs of every function with the same key, in this environment.
    Env,
    /// Runs of every function with the same key, in every environment.
    Account,
}

/// Per-function settings from the attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FnConfig {
    /// Retries after the first attempt, per step (Inngest's default: 4).
    pub retries: u32,
    /// Cancel runs when this event arrives.
    pub cancel_on: Option<CancelOn>,
    /// CEL over `event`: a second event with the same key within 24 hours
    /// starts no run.
    pub idempotency: Option<&'static str>,
    pub rate_limit: Option<RateLimitConfig>,
    pub singleton: Option<SingletonConfig>,
    /// Up to two limits.
    pub concurrency: &'static [ConcurrencyConfig],
    pub throttle: Option<ThrottleConfig>,
    /// CEL over `event` giving seconds (-600 to 600) to move a run ahead in
    /// the queue (negative: behind).
    pub priority: Option<&'static str>,
    pub timeouts: TimeoutsConfig,
    pub debounce: Option<DebounceConfig>,
    pub batch_events: Option<BatchConfig>,
}

impl FnConfig {
    /// The settings of a function whose attribute sets none.
    pub const DEFAULT: FnConfig = FnConfig {
        retries: DEFAULT_RETRIES,
        cancel_on: None,
        idempotency: None,
        rate_limit: None,
        singleton: None,
        concurrency: &[],
        throttle: None,
        priority: None,
        timeouts: TimeoutsConfig {
            start_ms: None,
            finish_ms: None,
        },
        debounce: None,
        batch_events: None,
    };
}

impl Default for FnConfig {
    fn default() -> Self {
        FnConfig::DEFAULT
    }
}

/// Retries after the first attempt when the attribute sets none.
pub const DEFAULT_RETRIES: u32 = 4;

/// What `#[durable_fn]` knows of a function at compile time: one static
/// per function, which [`DurableFn`]'s methods read.
#[derive(Debug, Clone, Copy)]
pub struct FnMeta {
    pub id: &'static str,
    pub name: &'static str,
    pub triggers: &'static [Trigger],
    pub config: FnConfig,
    pub steps: &'static [StepSite],
}

/// A durable function. `#[durable_fn]` implements it on a unit struct named
/// like the function, so the function itself is the value you register:
/// `engine.register(import_products)`.
#[diagnostic::on_unimplemented(
    message = "durafn: `{Self}` is not a durable fn",
    label = "not a `#[durable_fn]`",
    note = "what you register with an engine, invoke with `invoke!` or name in `on_failure` is an `async fn` marked `#[durable_fn]`"
)]
pub trait DurableFn: Send + Sync + 'static {
    /// What the attribute says of the function: the methods below read it.
    fn meta(&self) -> &'static FnMeta;
    /// The stable function ID (`id = "…"`, or the fn name in kebab-case).
    fn id(&self) -> &'static str {
        self.meta().id
    }
    /// A human-readable name.
    fn name(&self) -> &'static str {
        self.meta().name
    }
    fn triggers(&self) -> &'static [Trigger] {
        self.meta().triggers
    }
    fn config(&self) -> FnConfig {
        self.meta().config
    }
    /// The step sites, in source order.
    fn steps(&self) -> &'static [StepSite] {
        self.meta().steps
    }
    /// The durable fn run when a run of this one fails for good
    /// (`on_failure = handler` on the attribute): it gets the
    /// `inngest/function.failed` event, whose data is a [`FunctionFailed`].
    /// Registering this function registers the handler too.
    fn on_failure(&self) -> Option<std::sync::Arc<dyn DurableFn>> {
        None
    }
    /// The function's version: a hash of its step table (the sites' IDs,
    /// kinds and loop depths, in order; not their lines, so moving code
    /// does not change it). A run records the version it started on.
    fn version(&self) -> String {
        version_of(self.steps())
    }
    /// Run the body once against `ctx` with the triggering event as JSON.
    /// Drive it with [`crate::driver`], not directly.
    fn call(&self, ctx: Ctx, event: Value) -> BoxFuture<'static, Result<Value, Error>>;
}

/// The data of `inngest/function.failed`, the event a failure handler
/// gets: `Event<FunctionFailed>`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FunctionFailed {
    /// The ID of the function whose run failed.
    pub function_id: String,
    pub run_id: String,
    /// The run's error (`name`, `message`).
    pub error: Value,
    /// The event that started the failed run.
    pub event: Value,
}

/// `on_failure = handler`: the handler as a registrable function.
#[doc(hidden)]
pub fn failure_handler<F: DurableFn>(handler: F) -> std::sync::Arc<dyn DurableFn> {
    std::sync::Arc::new(handler)
}

/// Check that every journaled step belongs to a site of `f` with the same
/// loop depth: a journal written by a different shape of the function (a
/// renamed step, a step moved into a loop) is refused up front.
pub fn check_journal_shape(f: &dyn DurableFn, journal: &Journal) -> Result<(), Error> {
    let sites = f.steps();
    for id in journal.order() {
        if id.as_str().starts_with('~') {
            continue; // ctx.now()/random()/uuid()
        }
        let (base, depth) = (id.base(), id.depth() as u32);
        if !sites.iter().any(|s| s.id == base && s.loop_depth == depth) {
            let known: Vec<String> = sites
                .iter()
                .map(|s| format!("{}{}", s.id, "[_]".repeat(s.loop_depth as usize)))
                .collect();
            return Err(Error::non_retriable(format!(
                "durafn: the journal does not fit function `{}`: it holds step `{}`, but the function has no such step site (its sites: {}); the journal was written by a different version of the function",
                f.id(),
                id,
                known.join(", ")
            ))
            .with_name("JournalMismatch"));
        }
    }
    Ok(())
}
