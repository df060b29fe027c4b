//! The functions an engine runs: durable fns registered in this process and
//! functions of apps served over HTTP, with their triggers and cancel rules
//! compiled once, at registration.
//!
//! App registrations are kept in the store, so that runs queued for an app
//! survive a restart of the executor before the app syncs again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::error::Error;
use crate::expr::Expr;
use crate::function::{DurableFn, FnConfig, SingletonMode, Trigger};
use crate::store::flow::{self, RunFlow};
use crate::store::{AppRecord, CancelRule, NewRun};
use crate::transition::{Policy, MAX_RETRIES};

use super::FAILED_EVENT;

/// An event-name pattern: exact, or `prefix/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern(String);

impl Pattern {
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }
}

/// An event trigger with its compiled filter.
#[derive(Debug, Clone)]
struct EventTrigger {
    pattern: Pattern,
    filter: Option<Expr>,
}

impl EventTrigger {
    fn accepts(&self, name: &str, event: &Value) -> bool {
        self.pattern.matches(name) && self.filter.as_ref().is_none_or(|x| x.accepts(event))
    }
}

/// A `cancel_on` rule.
#[derive(Debug, Clone)]
struct CancelOn {
    pattern: Pattern,
    expr: Option<String>,
}

/// A function's flow control decided at ingest, its key expressions
/// compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Flow {
    idempotency: Option<Expr>,
    /// (limit, period in ms, key)
    rate_limit: Option<(u32, i64, Option<Expr>)>,
    singleton: Option<(Option<Expr>, SingletonMode)>,
    concurrency: Vec<(flow::Scope, u32, Option<Expr>)>,
    /// (limit, period in ms, burst, key)
    throttle: Option<(u32, i64, u32, Option<Expr>)>,
    priority: Option<Expr>,
    timeouts: flow::Timeouts,
    /// (period, timeout, key)
    debounce: Option<(i64, Option<i64>, Option<Expr>)>,
    batch: Option<BatchRule>,
}

/// `batch_events`, its expressions compiled.
#[derive(Debug, Clone)]
struct BatchRule {
    max_size: u32,
    timeout_ms: i64,
    key: Option<Expr>,
    /// Events it rejects run alone.
    when: Option<Expr>,
}

/// The largest batch a function may take.
pub const MAX_BATCH_SIZE: u64 = 1000;
/// The longest a batch may wait for its events: 1 s to 24 h.
const BATCH_TIMEOUT_MS: std::ops::RangeInclusive<i64> = 1000..=86_400_000;

/// Why a batch setting cannot be used, if it cannot.
fn check_batch(max_size: u64, timeout_ms: i64) -> Result<(), String> {
    if !(1..=MAX_BATCH_SIZE).contains(&max_size) {
        return Err(format!(
            "`max_size` must be from 1 to {MAX_BATCH_SIZE}, not {max_size}"
        ));
    }
    if !BATCH_TIMEOUT_MS.contains(&timeout_ms) {
        return Err("`timeout` must be from 1s to 24h".into());
    }
    Ok(())
}

impl Flow {
    fn of(c: &FnConfig) -> Result<Flow, String> {
        let key = |what: &str, x: Option<&str>| {
            x.map(|src| Expr::cached(src).map_err(|e| format!("{what} key: {e}")))
                .transpose()
        };
        Flow {
            idempotency: key("idempotency", c.idempotency)?,
            rate_limit: match c.rate_limit {
                Some(r) => Some((
                    r.limit.max(1),
                    i64::try_from(r.period_ms).unwrap_or(i64::MAX).max(1),
                    key("rate_limit", r.key)?,
                )),
                None => None,
            },
            singleton: match c.singleton {
                Some(s) => Some((key("singleton", s.key)?, s.mode)),
                None => None,
            },
            concurrency: {
                if c.concurrency.len() > flow::MAX_CONCURRENCY {
                    return Err(format!(
                        "{} concurrency limits; a function has at most {}",
                        c.concurrency.len(),
                        flow::MAX_CONCURRENCY
                    ));
                }
                c.concurrency
                    .iter()
                    .map(|l| {
                        if l.scope != flow::Scope::Fn && l.key.is_none() {
                            return Err(
                                "a concurrency limit with scope `env` or `account` needs a `key`"
                                    .to_string(),
                            );
                        }
                        Ok((l.scope, l.limit.max(1), key("concurrency", l.key)?))
                    })
                    .collect::<Result<_, String>>()?
            },
            throttle: match c.throttle {
                Some(t) => Some((
                    t.limit.max(1),
                    i64::try_from(t.period_ms).unwrap_or(i64::MAX).max(1),
                    t.burst.max(1),
                    key("throttle", t.key)?,
                )),
                None => None,
            },
            priority: c
                .priority
                .map(|src| Expr::cached(src).map_err(|e| format!("priority: {e}")))
                .transpose()?,
            timeouts: flow::Timeouts {
                start_ms: c
                    .timeouts
                    .start_ms
                    .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                finish_ms: c
                    .timeouts
                    .finish_ms
                    .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
            },
            debounce: match c.debounce {
                Some(d) => Some((
                    i64::try_from(d.period_ms).unwrap_or(i64::MAX).max(1),
                    d.timeout_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                    key("debounce", d.key)?,
                )),
                None => None,
            },
            batch: match c.batch_events {
                Some(b) => {
                    let timeout_ms = i64::try_from(b.timeout_ms).unwrap_or(i64::MAX);
                    check_batch(u64::from(b.max_size), timeout_ms)
                        .map_err(|e| format!("batch_events: {e}"))?;
                    Some(BatchRule {
                        max_size: b.max_size,
                        timeout_ms,
                        key: key("batch_events", b.key)?,
                        when: b
                            .when
                            .map(|src| {
                                Expr::cached(src).map_err(|e| format!("batch_events if: {e}"))
                            })
                            .transpose()?,
                    })
                }
                None => None,
            },
        }
        .batchable(c.cancel_on.is_some())
    }

    /// Refuse the options a batch cannot honour (Inngest refuses the same
    /// ones): each is decided per event, and a batch's run has many.
    fn batchable(self, cancel_on: bool) -> Result<Flow, String> {
        if self.batch.is_none() {
            return Ok(self);
        }
        let clashes = [
            ("idempotency", self.idempotency.is_some()),
            ("rate_limit", self.rate_limit.is_some()),
            ("singleton", self.singleton.is_some()),
            ("debounce", self.debounce.is_some()),
            ("priority", self.priority.is_some()),
            ("cancel_on", cancel_on),
        ];
        match clashes.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(format!(
                "batch_events cannot be combined with {name}: it decides per event, and a batch's run has many"
            )),
            None => Ok(self),
        }
    }

    /// The rules for a run started by `event`, its keys evaluated. A key
    /// that cannot be evaluated (a missing field) is the function-wide
    /// key for a rate limit or a singleton, and no key (no deduplication)
    /// for idempotency.
    fn for_event(&self, fn_id: &str, event: &Value) -> RunFlow {
        let key = |x: &Option<Expr>| {
            x.as_ref()
                .and_then(|x| flow::key_of(x, event))
                .unwrap_or_default()
        };
        RunFlow {
            idempotency: self
                .idempotency
                .as_ref()
                .and_then(|x| flow::key_of(x, event)),
            rate_limit: self
                .rate_limit
                .as_ref()
                .map(|(limit, period_ms, k)| flow::RateLimit {
                    key: key(k),
                    limit: *limit,
                    period_ms: *period_ms,
                }),
            singleton: self.singleton.as_ref().map(|(k, mode)| flow::Singleton {
                key: key(k),
                mode: *mode,
            }),
            concurrency: self
                .concurrency
                .iter()
                .map(|(scope, limit, k)| flow::Concurrency {
                    key: flow::concurrency_key(*scope, fn_id, &key(k)),
                    limit: *limit,
                })
                .collect(),
            throttle: self
                .throttle
                .as_ref()
                .map(|(limit, period_ms, burst, k)| flow::Throttle {
                    key: key(k),
                    limit: *limit,
                    period_ms: *period_ms,
                    burst: *burst,
                }),
            priority_ms: self.priority.as_ref().map_or(0, |x| priority_ms(x, event)),
            timeouts: self.timeouts,
            debounce: self
                .debounce
                .as_ref()
                .map(|(period_ms, timeout_ms, k)| flow::Debounce {
                    key: key(k),
                    period_ms: *period_ms,
                    timeout_ms: *timeout_ms,
                }),
            batch: self.batch.as_ref().map(|b| {
                let alone = b.when.as_ref().is_some_and(|x| !x.accepts(event));
                flow::Batch {
                    key: key(&b.key),
                    max_size: if alone { 1 } else { b.max_size },
                    timeout_ms: b.timeout_ms,
                }
            }),
        }
    }
}

/// A priority expression's factor on `event`, in ms: whole seconds,
/// bounded; 0 when it does not evaluate to a number.
fn priority_ms(x: &Expr, event: &Value) -> i64 {
    let secs = match x.eval(event) {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f.clamp(-1e6, 1e6) as i64))
            .unwrap_or(0),
        _ => 0,
    };
    secs.clamp(-600, 600) * 1000
}

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
    /// Cron schedules that trigger it.
    pub crons: Vec<String>,
    pub retries: u32,
    triggers: Vec<EventTrigger>,
    cancel: Vec<CancelOn>,
    flow: Flow,
}

/// What a run's function is.
#[derive(Clone)]
pub(crate) enum Function {
    Local(Arc<dyn DurableFn>),
    Remote(Arc<RemoteFn>),
}

struct Entry {
    f: Function,
    triggers: Vec<EventTrigger>,
    cancel: Vec<CancelOn>,
    retries: u32,
    /// Triggered by failures: its own failure announces nothing.
    failure_handler: bool,
    flow: Flow,
    /// The hash of the step table (in-process functions: an app's step
    /// table is not known ahead of its calls).
    version: Option<String>,
}

impl Entry {
    fn local(f: Arc<dyn DurableFn>) -> Result<Entry, Error> {
        let bad = |what: &str, e: String| {
            Error::non_retriable(format!("function `{}`, {what}: {e}", f.id()))
                .with_name("BadExpression")
        };
        let mut triggers = Vec::new();
        for t in f.triggers() {
            match t {
                Trigger::Event { event, expression } => triggers.push(EventTrigger {
                    pattern: Pattern(event.to_string()),
                    filter: expression
                        .map(Expr::cached)
                        .transpose()
                        .map_err(|e| bad("trigger `if`", e))?,
                }),
                Trigger::Cron { cron } => {
                    super::cron::parse(cron).map_err(|e| bad("cron", e))?;
                }
            }
        }
        let mut cancel = Vec::new();
        if let Some(c) = f.config().cancel_on {
            if let Some(x) = c.expression {
                Expr::cached(x).map_err(|e| bad("cancel_on", e))?;
            }
            cancel.push(CancelOn {
                pattern: Pattern(c.event.to_string()),
                expr: c.expression.map(str::to_string),
            });
        }
        for site in f.steps() {
            if let Some(src) = site.expr {
                Expr::cached(src).map_err(|e| {
                    Error::non_retriable(format!(
                        "function `{}`, step `{}` (line {}): {e}",
                        f.id(),
                        site.id,
                        site.line
                    ))
                    .with_name("BadExpression")
                })?;
            }
        }
        let flow = Flow::of(&f.config()).map_err(|e| bad("flow control", e))?;
        Ok(Entry {
            flow,
            version: Some(f.version()),
            failure_handler: f.triggers().iter().any(|t| t.matches(FAILED_EVENT)),
            retries: f.config().retries.min(MAX_RETRIES),
            f: Function::Local(f),
            triggers,
            cancel,
        })
    }

    fn remote(f: Arc<RemoteFn>) -> Entry {
        Entry {
            flow: f.flow.clone(),
            version: None,
            failure_handler: f.triggers.iter().any(|t| t.pattern.matches(FAILED_EVENT)),
            triggers: f.triggers.clone(),
            cancel: f.cancel.clone(),
            retries: f.retries,
            f: Function::Remote(f),
        }
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    local: HashMap<&'static str, Entry>,
    remote: RwLock<HashMap<String, Entry>>,
}

impl Registry {
    /// The registry of a process's own durable fns; bad expressions and
    /// duplicate IDs are refused here.
    pub fn new(mut fns: Vec<Arc<dyn DurableFn>>) -> Result<Registry, Error> {
        // Failure handlers (`on_failure`) are registered with the functions
        // that name them, once each.
        let mut handled: Vec<(String, Arc<dyn DurableFn>)> = Vec::new();
        for f in &fns {
            if let Some(h) = f.on_failure() {
                handled.push((f.id().to_string(), h));
            }
        }
        for (_, h) in &handled {
            if !fns.iter().any(|f| f.id() == h.id()) {
                fns.push(h.clone());
            }
        }
        let mut local = HashMap::new();
        for f in fns {
            if f.id().is_empty() || f.id().chars().any(char::is_control) {
                return Err(Error::non_retriable(format!(
                    "the function ID {:?} is empty or holds a control character",
                    f.id()
                )));
            }
            let entry = Entry::local(f.clone())?;
            if let Some(prev) = local.insert(f.id(), entry) {
                let Function::Local(prev) = prev.f else {
                    unreachable!("local entries")
                };
                return Err(Error::non_retriable(format!(
                    "two functions registered with the ID `{}` ({} and {})",
                    f.id(),
                    prev.name(),
                    f.name()
                )));
            }
        }
        for (failing, h) in handled {
            let entry = local.get_mut(h.id()).expect("registered above");
            let filter = Expr::compile(&format!(
                "event.data.function_id == {}",
                serde_json::Value::String(failing)
            ))
            .map_err(Error::non_retriable)?;
            entry.triggers.push(EventTrigger {
                pattern: Pattern(FAILED_EVENT.to_string()),
                filter: Some(filter),
            });
            entry.failure_handler = true;
        }
        Ok(Registry {
            local,
            remote: RwLock::default(),
        })
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&Entry) -> T) -> Option<T> {
        if let Some(e) = self.local.get(id) {
            return Some(f(e));
        }
        self.remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(f)
    }

    pub fn get(&self, id: &str) -> Option<Function> {
        self.with(id, |e| e.f.clone())
    }

    /// The rules a run of `fn_id` is driven by.
    pub fn policy(&self, fn_id: &str, backoff: crate::transition::Backoff) -> Policy {
        self.with(fn_id, |e| Policy {
            retries: e.retries,
            backoff,
            notify_failure: !e.failure_handler,
        })
        .unwrap_or(Policy {
            retries: 0,
            backoff,
            notify_failure: true,
        })
    }

    /// The IDs of every function this engine can run.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.local.keys().map(|id| id.to_string()).collect();
        ids.extend(
            self.remote
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        ids
    }

    pub fn local_fns(&self) -> Vec<Arc<dyn DurableFn>> {
        self.local
            .values()
            .filter_map(|e| match &e.f {
                Function::Local(f) => Some(f.clone()),
                Function::Remote(_) => None,
            })
            .collect()
    }

    pub fn remote_fns(&self) -> Vec<Arc<RemoteFn>> {
        let mut v: Vec<_> = self
            .remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|e| match &e.f {
                Function::Remote(f) => Some(f.clone()),
                Function::Local(_) => None,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The runs an event starts: one per function with a matching trigger.
    pub fn runs_for(
        &self,
        name: &str,
        event: &Value,
        mut new_id: impl FnMut() -> String,
    ) -> Vec<NewRun> {
        let mut ids: Vec<(String, RunFlow, Option<String>)> = self
            .local
            .iter()
            .filter(|(_, e)| e.triggers.iter().any(|t| t.accepts(name, event)))
            .map(|(id, e)| {
                (
                    id.to_string(),
                    e.flow.for_event(id, event),
                    e.version.clone(),
                )
            })
            .collect();
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        let mut remote: Vec<(String, RunFlow, Option<String>)> = self
            .remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, e)| e.triggers.iter().any(|t| t.accepts(name, event)))
            .map(|(id, e)| (id.clone(), e.flow.for_event(id, event), e.version.clone()))
            .collect();
        remote.sort_by(|a, b| a.0.cmp(&b.0));
        ids.into_iter()
            .chain(remote)
            .map(|(fn_id, flow, version)| NewRun {
                id: new_id(),
                fn_id,
                parent: None,
                flow,
                version,
            })
            .collect()
    }

    /// The version of `fn_id` runs start on now.
    pub fn version(&self, fn_id: &str) -> Option<String> {
        self.with(fn_id, |e| e.version.clone()).flatten()
    }

    /// The flow control of a run of `fn_id` started by `event` (cron ticks).
    pub fn flow_for(&self, fn_id: &str, event: &Value) -> RunFlow {
        self.with(fn_id, |e| e.flow.for_event(fn_id, event))
            .unwrap_or_default()
    }

    /// The functions whose runs an event named `name` may cancel.
    pub fn cancel_rules(&self, name: &str) -> Vec<CancelRule> {
        let rules = |id: &str, e: &Entry| -> Vec<CancelRule> {
            e.cancel
                .iter()
                .filter(|c| c.pattern.matches(name))
                .map(|c| CancelRule {
                    fn_id: id.to_string(),
                    expr: c.expr.clone(),
                })
                .collect()
        };
        let mut out: Vec<CancelRule> = self.local.iter().flat_map(|(id, e)| rules(id, e)).collect();
        out.extend(
            self.remote
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .flat_map(|(id, e)| rules(id, e)),
        );
        out
    }

    /// Take an app's registration (stored, or just received), replacing
    /// its previous functions.
    /// Refuse a registration that names a function of another app, or
    /// one of this process's durable fns: an app cannot take them over.
    pub fn check_owner(&self, reg: &Registration) -> Result<(), String> {
        let map = self.remote.read().unwrap_or_else(|p| p.into_inner());
        for f in &reg.fns {
            if self.local.contains_key(f.id.as_str()) {
                return Err(format!(
                    "the function ID `{}` is a durable fn of this engine; the app `{}` cannot register it",
                    f.id, reg.app
                ));
            }
            if let Some(Entry {
                f: Function::Remote(owner),
                ..
            }) = map.get(&f.id)
            {
                if owner.app != reg.app {
                    return Err(format!(
                        "the function ID `{}` belongs to the app `{}`; the app `{}` cannot register it (remove it from `{}` first)",
                        f.id, owner.app, reg.app, owner.app
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn load_app(&self, app: &AppRecord) -> Result<usize, String> {
        let parsed = parse_register(&app.body)?;
        let mut map = self.remote.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| !matches!(&e.f, Function::Remote(f) if f.app == parsed.app));
        let n = parsed.fns.len();
        for f in parsed.fns {
            map.insert(f.id.clone(), Entry::remote(Arc::new(f)));
        }
        Ok(n)
    }
}

/// A register request, parsed.
pub(crate) struct Registration {
    pub app: String,
    pub url: String,
    pub fns: Vec<RemoteFn>,
}

/// Parse a register request body (what an SDK sends to `/fn/register`).
pub(crate) fn parse_register(body: &Value) -> Result<Registration, String> {
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
        .filter(|a| !a.is_empty())
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
            .filter(|id| !id.is_empty())
            .ok_or("a function has no `id`")?;
        if id.chars().any(char::is_control) {
            return Err(format!("the function ID {id:?} holds a control character"));
        }
        let step = f
            .pointer("/steps/step")
            .ok_or_else(|| format!("function `{id}` has no `steps.step`"))?;
        let call_url = step
            .pointer("/runtime/url")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("function `{id}` has no `steps.step.runtime.url`"))?;
        let retries = match step.pointer("/retries/attempts") {
            None | Some(Value::Null) => crate::function::DEFAULT_RETRIES,
            Some(v) => v
                .as_u64()
                .filter(|n| *n <= u64::from(MAX_RETRIES))
                .map(|n| n as u32)
                .ok_or_else(|| {
                    format!("function `{id}`: `retries.attempts` is {v}; it must be a whole number from 0 to {MAX_RETRIES}")
                })?,
        };
        let mut events = Vec::new();
        let mut triggers = Vec::new();
        let mut crons = Vec::new();
        for t in f
            .get("triggers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(cron) = t.get("cron").and_then(Value::as_str) {
                super::cron::parse(cron).map_err(|e| format!("function `{id}`, cron: {e}"))?;
                crons.push(cron.to_string());
                continue;
            }
            let Some(event) = t.get("event").and_then(Value::as_str) else {
                continue;
            };
            let filter = t
                .get("expression")
                .and_then(Value::as_str)
                .filter(|x| !x.trim().is_empty())
                .map(Expr::cached)
                .transpose()
                .map_err(|e| format!("function `{id}`, trigger `{event}`: {e}"))?;
            events.push(event.to_string());
            triggers.push(EventTrigger {
                pattern: Pattern(event.to_string()),
                filter,
            });
        }
        let mut cancel = Vec::new();
        for c in f
            .get("cancel")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(event) = c.get("event").and_then(Value::as_str) else {
                continue;
            };
            let expr = c
                .get("if")
                .and_then(Value::as_str)
                .filter(|x| !x.trim().is_empty())
                .map(str::to_string);
            if let Some(x) = &expr {
                Expr::cached(x)
                    .map_err(|e| format!("function `{id}`, cancel on `{event}`: {e}"))?;
            }
            cancel.push(CancelOn {
                pattern: Pattern(event.to_string()),
                expr,
            });
        }
        let flow = remote_flow(id, f)?;
        parsed.push(RemoteFn {
            flow,
            crons,
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
            triggers,
            cancel,
        });
    }
    Ok(Registration {
        app: app.to_string(),
        url: url.to_string(),
        fns: parsed,
    })
}

/// `{limit, period}` of a synced rate limit or throttle, checked: a limit
/// of at least 1, a period from 1 s to `max_ms`.
fn limit_per_period(v: &Value, max_ms: i64) -> Result<(u64, i64), String> {
    let limit = v
        .get("limit")
        .and_then(Value::as_u64)
        .filter(|n| *n >= 1 && *n <= u64::from(u32::MAX))
        .ok_or("`limit` must be a whole number of at least 1")?;
    let period = v
        .get("period")
        .and_then(Value::as_str)
        .ok_or_else(|| "`period` must be a duration string such as \"1m\"".to_string())
        .and_then(flow::parse_period)?;
    if !(1000..=max_ms).contains(&period) {
        let shown = match max_ms {
            86_400_000 => "24h".to_string(),
            ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
            ms => format!("{ms} ms"),
        };
        return Err(format!("`period` must be from 1s to {shown}"));
    }
    Ok((limit, period))
}

/// The flow control an official SDK syncs: `idempotency` (a CEL key),
/// `rateLimit: {limit, period, key}`, `singleton: {key, mode}`.
fn remote_flow(id: &str, f: &Value) -> Result<Flow, String> {
    let bad = |what: &str, e: String| format!("function `{id}`, `{what}`: {e}");
    let key = |what: &str, v: Option<&Value>| -> Result<Option<Expr>, String> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Expr::cached(s).map(Some).map_err(|e| bad(what, e)),
            Some(other) => Err(bad(
                what,
                format!("the key must be a CEL string, not {other}"),
            )),
        }
    };
    let idempotency = key("idempotency", f.get("idempotency"))?;
    let rate_limit = match f.get("rateLimit") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let (limit, period) =
                limit_per_period(r, 24 * 3_600_000).map_err(|e| bad("rateLimit", e))?;
            Some((limit as u32, period, key("rateLimit.key", r.get("key"))?))
        }
    };
    let singleton = match f.get("singleton") {
        None | Some(Value::Null) => None,
        Some(s) => {
            let mode = match s.get("mode").and_then(Value::as_str) {
                Some("skip") => SingletonMode::Skip,
                Some("cancel") => SingletonMode::Cancel,
                _ => {
                    return Err(bad(
                        "singleton",
                        "`mode` must be \"skip\" or \"cancel\"".into(),
                    ))
                }
            };
            Some((key("singleton.key", s.get("key"))?, mode))
        }
    };
    // `concurrency`: a number, an object, or a list of objects.
    let limits: Vec<&Value> = match f.get("concurrency") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
    };
    if limits.len() > flow::MAX_CONCURRENCY {
        return Err(bad(
            "concurrency",
            format!(
                "{} limits; a function has at most {}",
                limits.len(),
                flow::MAX_CONCURRENCY
            ),
        ));
    }
    let mut concurrency = Vec::new();
    for l in limits {
        let limit = match l {
            Value::Number(_) => l.as_u64(),
            _ => l.get("limit").and_then(Value::as_u64),
        };
        let limit = limit
            .filter(|n| *n >= 1 && *n <= u64::from(u32::MAX))
            .ok_or_else(|| {
                bad(
                    "concurrency",
                    "`limit` must be a whole number of at least 1".into(),
                )
            })?;
        let scope = match l.get("scope").and_then(Value::as_str) {
            None | Some("fn") => flow::Scope::Fn,
            Some("env") => flow::Scope::Env,
            Some("account") => flow::Scope::Account,
            Some(other) => {
                return Err(bad(
                    "concurrency",
                    format!("the scope `{other}` is not `fn`, `env` or `account`"),
                ))
            }
        };
        let key = key("concurrency.key", l.get("key"))?;
        if scope != flow::Scope::Fn && key.is_none() {
            return Err(bad(
                "concurrency",
                "a limit with scope `env` or `account` needs a `key`".into(),
            ));
        }
        concurrency.push((scope, limit as u32, key));
    }
    let throttle = match f.get("throttle") {
        None | Some(Value::Null) => None,
        Some(t) => {
            let (limit, period) =
                limit_per_period(t, 7 * 24 * 3_600_000).map_err(|e| bad("throttle", e))?;
            let burst = match t.get("burst") {
                None | Some(Value::Null) => 1,
                Some(b) => b
                    .as_u64()
                    .filter(|n| *n >= 1 && *n <= u64::from(u32::MAX))
                    .ok_or_else(|| {
                        bad(
                            "throttle",
                            "`burst` must be a whole number of at least 1".into(),
                        )
                    })?,
            };
            Some((
                limit as u32,
                period,
                burst as u32,
                key("throttle.key", t.get("key"))?,
            ))
        }
    };
    let priority = match f.pointer("/priority/run") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(Expr::cached(s).map_err(|e| bad("priority.run", e))?),
        Some(other) => {
            return Err(bad(
                "priority.run",
                format!("must be a CEL string, not {other}"),
            ))
        }
    };
    let timeout = |which: &str| -> Result<Option<i64>, String> {
        match f.get("timeouts").and_then(|t| t.get(which)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(p)) => flow::parse_period(p)
                .map(Some)
                .map_err(|e| bad(&format!("timeouts.{which}"), e)),
            Some(other) => Err(bad(
                &format!("timeouts.{which}"),
                format!("must be a duration string such as \"10m\", not {other}"),
            )),
        }
    };
    let timeouts = flow::Timeouts {
        start_ms: timeout("start")?,
        finish_ms: timeout("finish")?,
    };
    let debounce = match f.get("debounce") {
        None | Some(Value::Null) => None,
        Some(d) => {
            let period = |what: &str| -> Result<Option<i64>, String> {
                match d.get(what) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(p)) => flow::parse_period(p)
                        .map(Some)
                        .map_err(|e| bad(&format!("debounce.{what}"), e)),
                    Some(other) => Err(bad(
                        &format!("debounce.{what}"),
                        format!("must be a duration string such as \"5s\", not {other}"),
                    )),
                }
            };
            let p =
                period("period")?.ok_or_else(|| bad("debounce", "`period` is required".into()))?;
            if !(1000..=7 * 24 * 3_600_000).contains(&p) {
                return Err(bad("debounce", "`period` must be from 1s to 7d".into()));
            }
            Some((p, period("timeout")?, key("debounce.key", d.get("key"))?))
        }
    };
    let batch = match f.get("batchEvents") {
        None | Some(Value::Null) => None,
        Some(b) => {
            let max_size = b
                .get("maxSize")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("batchEvents", "`maxSize` must be a whole number".into()))?;
            let timeout_ms = match b.get("timeout") {
                Some(Value::String(p)) => {
                    flow::parse_period(p).map_err(|e| bad("batchEvents.timeout", e))?
                }
                _ => {
                    return Err(bad(
                        "batchEvents",
                        "`timeout` must be a duration string such as \"5s\"".into(),
                    ))
                }
            };
            check_batch(max_size, timeout_ms).map_err(|e| bad("batchEvents", e))?;
            Some(BatchRule {
                max_size: max_size as u32,
                timeout_ms,
                key: key("batchEvents.key", b.get("key"))?,
                when: key("batchEvents.if", b.get("if"))?,
            })
        }
    };
    let cancel_on = f
        .get("cancel")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    Flow {
        idempotency,
        rate_limit,
        singleton,
        concurrency,
        throttle,
        priority,
        timeouts,
        debounce,
        batch,
    }
    .batchable(cancel_on)
    .map_err(|e| format!("function `{id}`: {e}"))
}

impl RemoteFn {
    pub fn matches(&self, name: &str) -> bool {
        self.triggers.iter().any(|t| t.pattern.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::{
        BatchConfig, ConcurrencyConfig, ConcurrencyScope, DebounceConfig, RateLimitConfig,
        SingletonConfig, ThrottleConfig, TimeoutsConfig,
    };

    /// What a served function syncs is read back as the same flow control
    /// the attribute gives it in process.
    #[test]
    fn a_served_functions_options_sync_as_its_attribute_sets_them() {
        let every = FnConfig {
            cancel_on: Some(crate::function::CancelOn {
                event: "order/cancelled",
                expression: Some("event.data.id == async.data.id"),
            }),
            idempotency: Some("event.data.id"),
            rate_limit: Some(RateLimitConfig {
                limit: 5,
                period_ms: 60_000,
                key: Some("event.data.user"),
            }),
            singleton: Some(SingletonConfig {
                key: Some("event.data.account"),
                mode: SingletonMode::Cancel,
            }),
            concurrency: &[
                ConcurrencyConfig {
                    limit: 2,
                    key: None,
                    scope: ConcurrencyScope::Fn,
                },
                ConcurrencyConfig {
                    limit: 10,
                    key: Some("event.data.shop"),
                    scope: ConcurrencyScope::Env,
                },
            ],
            throttle: Some(ThrottleConfig {
                limit: 3,
                period_ms: 1_500,
                burst: 2,
                key: Some("event.data.shop"),
            }),
            priority: Some("event.data.vip ? 120 : 0"),
            timeouts: TimeoutsConfig {
                start_ms: Some(90_000),
                finish_ms: Some(3_600_000),
            },
            debounce: Some(DebounceConfig {
                period_ms: 5_000,
                key: Some("event.data.doc"),
                timeout_ms: Some(60_000),
            }),
            ..FnConfig::DEFAULT
        };
        let batch = FnConfig {
            batch_events: Some(BatchConfig {
                max_size: 50,
                timeout_ms: 2_500,
                key: Some("event.data.account"),
                when: Some("event.data.kind == 'click'"),
            }),
            ..FnConfig::DEFAULT
        };
        for c in [every, batch, FnConfig::DEFAULT] {
            let synced = Value::Object(crate::serve::wire::function_options(&c));
            let local = format!("{:?}", Flow::of(&c).unwrap());
            let remote = format!("{:?}", remote_flow("f", &synced).unwrap());
            assert_eq!(local, remote, "{synced}");
        }
        let cancel = crate::serve::wire::function_options(&every)["cancel"].clone();
        assert_eq!(
            cancel,
            serde_json::json!([{"event": "order/cancelled", "if": "event.data.id == async.data.id"}])
        );
    }
}
