//! Stage 1: the attribute's arguments and the function's signature.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Lit, Pat, ReturnType, Token, Type};

use crate::ctxt::Ctxt;

/// `#[durable_fn(..)]` arguments.
pub struct Attr {
    pub id: Option<syn::LitStr>,
    pub name: Option<syn::LitStr>,
    pub events: Vec<syn::LitStr>,
    pub retries: Option<syn::LitInt>,
    /// A CEL filter on the triggering events (`if = ".."`).
    pub filter: Option<syn::LitStr>,
    pub crons: Vec<syn::LitStr>,
    pub cancel_on: Option<syn::LitStr>,
    /// `cancel_match = "data.x"` or `cancel_if = ".."`, as CEL.
    pub cancel_expr: Option<String>,
    /// `idempotency = "<CEL key>"`.
    pub idempotency: Option<syn::LitStr>,
    pub rate_limit: Option<RateLimit>,
    pub singleton: Option<Singleton>,
    pub concurrency: Vec<Concurrency>,
    pub throttle: Option<RateLimit>,
    /// `priority = "<CEL giving seconds>"`.
    pub priority: Option<syn::LitStr>,
    /// `timeouts(start = "..", finish = "..")`, in ms.
    pub timeouts: (Option<u64>, Option<u64>),
    /// `on_failure = handler`: a path to another durable fn.
    pub on_failure: Option<syn::Path>,
    /// `debounce(period = "5s", key = "..", timeout = "1m")`.
    pub debounce: Option<Debounce>,
    /// `batch_events(max_size = N, timeout = "5s", key = "..", if = "..")`.
    pub batch: Option<Batch>,
    /// The attribute names `batch_events(..)`, valid or not (the
    /// signature then takes a `Vec`).
    pub batching: bool,
}

pub struct Batch {
    /// Where the attribute names it, for errors.
    pub at: syn::Ident,
    pub max_size: u32,
    pub timeout_ms: u64,
    pub key: Option<syn::LitStr>,
    pub when: Option<syn::LitStr>,
}

pub struct Debounce {
    pub period_ms: u64,
    pub key: Option<syn::LitStr>,
    pub timeout_ms: Option<u64>,
}

/// `concurrency = N` or `concurrency(limit = N, key = "..", scope = "fn")`.
pub struct Concurrency {
    pub limit: u32,
    pub key: Option<syn::LitStr>,
    /// `Fn`, `Env` or `Account`.
    pub scope: &'static str,
}

/// `rate_limit(limit = N, period = "1m", key = "..")`, or
/// `throttle(..)` with `burst = N`.
pub struct RateLimit {
    pub limit: u32,
    pub period_ms: u64,
    pub key: Option<syn::LitStr>,
    /// 1 for a rate limit.
    pub burst: u32,
}

/// `singleton(key = "..", mode = "skip" | "cancel")`.
pub struct Singleton {
    pub key: Option<syn::LitStr>,
    pub cancel: bool,
}

/// One argument: `key = literal`, or `key(k = literal, ..)`.
enum Arg {
    Value(syn::Ident, Box<syn::Expr>),
    List(syn::Ident, Vec<(syn::Ident, syn::Expr)>),
}

const KEYS: &str = "`id = \"..\"`, `name = \"..\"`, `event = \"..\"` (repeatable), `if = \"<CEL on event>\"`, `cron = \"<schedule>\"`, `retries = N`, `cancel_on = \"event\"` with `cancel_match = \"data.field\"` or `cancel_if = \"<CEL>\"`, `idempotency = \"<CEL key>\"`, `rate_limit(limit = N, period = \"1m\", key = \"<CEL>\")`, `singleton(key = \"<CEL>\", mode = \"skip\" | \"cancel\")`, `concurrency = N` or `concurrency(limit = N, key = \"<CEL>\", scope = \"fn\" | \"env\" | \"account\")` (up to two), `throttle(limit = N, period = \"1m\", burst = N, key = \"<CEL>\")`, `priority = \"<CEL giving seconds>\"`, `timeouts(start = \"10m\", finish = \"1h\")`, `on_failure = handler_fn`, `debounce(period = \"5s\", key = \"<CEL>\", timeout = \"1m\")`, `batch_events(max_size = N, timeout = \"5s\", key = \"<CEL>\", if = \"<CEL>\")`";

fn parse_pairs(input: syn::parse::ParseStream) -> syn::Result<Vec<(syn::Ident, syn::Expr)>> {
    use syn::ext::IdentExt;
    let mut out = Vec::new();
    while !input.is_empty() {
        let key = syn::Ident::parse_any(input)?;
        input.parse::<Token![=]>()?;
        let value: syn::Expr = input.parse()?;
        out.push((key, value));
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(out)
}

fn parse_args(input: syn::parse::ParseStream) -> syn::Result<Vec<Arg>> {
    use syn::ext::IdentExt;
    let mut out = Vec::new();
    while !input.is_empty() {
        let key = syn::Ident::parse_any(input)?;
        if input.peek(syn::token::Paren) {
            let inner;
            syn::parenthesized!(inner in input);
            out.push(Arg::List(key, parse_pairs(&inner)?));
        } else {
            input.parse::<Token![=]>()?;
            out.push(Arg::Value(key, Box::new(input.parse()?)));
        }
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(out)
}

/// The literal an argument's value must be.
fn literal(e: &syn::Expr) -> Option<&Lit> {
    match e {
        syn::Expr::Lit(l) => Some(&l.lit),
        syn::Expr::Group(g) => literal(&g.expr),
        _ => None,
    }
}

/// A period such as `"1m"`, `"30s"`, `"1h30m"`, `"500ms"`, `"2d"`, in ms
/// (the runtime reads the same strings from apps' sync payloads).
pub fn period_ms(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
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
            "w" => 604_800_000,
            _ => return None,
        };
        rest = &rest[unit..];
        total = total.checked_add(n.checked_mul(ms)?)?;
    }
    Some(total)
}

/// The longest rate-limit period (Inngest's bound).
const MAX_PERIOD_MS: u64 = 24 * 3_600_000;

/// `rate_limit(..)` (`burst` refused, periods to 24h) or `throttle(..)`
/// (`burst` allowed, periods to 7 days): limit, period, burst, key.
fn per_period(
    cx: &Ctxt,
    at: &syn::Ident,
    pairs: &[(syn::Ident, syn::Expr)],
    throttle: bool,
) -> Option<RateLimit> {
    let what = at.to_string();
    let (max_ms, max_shown) = match throttle {
        true => (7 * 24 * 3_600_000, "7d"),
        false => (MAX_PERIOD_MS, "24h"),
    };
    let (mut limit, mut period, mut key, mut burst) = (None, None, None, 1);
    let given = |name: &str| pairs.iter().any(|(k, _)| k == name);
    for (k, v) in pairs {
        match (k.to_string().as_str(), literal(v)) {
            ("limit", Some(Lit::Int(i))) => match i.base10_parse::<u32>() {
                Ok(n) if n >= 1 => limit = Some(n),
                _ => cx.error_spanned_by(i, "durafn: `limit` is a whole number of runs, at least 1"),
            },
            ("burst", Some(Lit::Int(i))) if throttle => match i.base10_parse::<u32>() {
                Ok(n) if n >= 1 => burst = n,
                _ => cx.error_spanned_by(i, "durafn: `burst` is a whole number of runs started at once, at least 1"),
            },
            ("period", Some(Lit::Str(s))) => match period_ms(&s.value()) {
                Some(ms) if (1000..=max_ms).contains(&ms) => period = Some(ms),
                Some(_) => cx.error_spanned_by(s, format!("durafn: a `{what}` period is from 1s to {max_shown}")),
                None => cx.error_spanned_by(s, "durafn: `period` is a duration such as \"30s\", \"1m\", \"1h30m\" or \"500ms\""),
            },
            ("key", Some(Lit::Str(s))) => key = Some(s.clone()),
            ("limit", _) => cx.error_spanned_by(v, "durafn: `limit` takes an integer literal (the macro writes it into the function's configuration)"),
            ("burst", _) if throttle => cx.error_spanned_by(v, "durafn: `burst` takes an integer literal"),
            ("period" | "key", _) => cx.error_spanned_by(v, format!("durafn: `{k}` takes a string literal (the macro checks it at compile time)")),
            _ => {
                let burst = if throttle { ", optionally `burst = N`" } else { "" };
                cx.error_spanned_by(k, format!("durafn: unknown `{what}` argument `{k}`; it takes `limit = N`, `period = \"1m\"`{burst} and optionally `key = \"<CEL on event>\"`"))
            }
        }
    }
    match (limit, period) {
        (Some(limit), Some(period_ms)) => Some(RateLimit {
            limit,
            period_ms,
            key,
            burst,
        }),
        // A bad value has its own error already.
        _ if given("limit") && given("period") => None,
        _ => {
            cx.error_spanned_by(at, format!("durafn: `{what}` needs `limit = N` and `period = \"..\"`, as in `{what}(limit = 10, period = \"1m\")`"));
            None
        }
    }
}

fn debounce(cx: &Ctxt, at: &syn::Ident, pairs: &[(syn::Ident, syn::Expr)]) -> Option<Debounce> {
    let (mut period, mut key, mut timeout) = (None, None, None);
    for (k, v) in pairs {
        match (k.to_string().as_str(), literal(v)) {
            ("period" | "timeout", Some(Lit::Str(s))) => match period_ms(&s.value()) {
                Some(ms) if k == "timeout" && ms >= 1000 => timeout = Some(ms),
                Some(ms) if (1000..=7 * 24 * 3_600_000).contains(&ms) => period = Some(ms),
                Some(_) => cx.error_spanned_by(s, "durafn: a debounce `period` is from 1s to 7d, and a `timeout` at least 1s"),
                None => cx.error_spanned_by(s, "durafn: a debounce period is a duration such as \"5s\", \"1m\" or \"1h30m\""),
            },
            ("key", Some(Lit::Str(s))) => key = Some(s.clone()),
            ("period" | "timeout" | "key", _) => cx.error_spanned_by(v, format!("durafn: `{k}` takes a string literal (the macro checks it at compile time)")),
            _ => cx.error_spanned_by(k, format!("durafn: unknown `debounce` argument `{k}`; it takes `period = \"5s\"` and optionally `key = \"<CEL on event>\"` and `timeout = \"1m\"` (the longest a burst may delay its run)")),
        }
    }
    match period {
        Some(period_ms) => Some(Debounce {
            period_ms,
            key,
            timeout_ms: timeout,
        }),
        None if pairs.iter().any(|(k, _)| k == "period") => None,
        None => {
            cx.error_spanned_by(at, "durafn: `debounce` needs a `period`, as in `debounce(period = \"5s\", key = \"event.data.user\")`");
            None
        }
    }
}

/// The largest batch (the runtime checks the same bound on synced apps).
const MAX_BATCH_SIZE: u32 = 1000;

fn batch(cx: &Ctxt, at: &syn::Ident, pairs: &[(syn::Ident, syn::Expr)]) -> Option<Batch> {
    let (mut max_size, mut timeout, mut key, mut when) = (None, None, None, None);
    for (k, v) in pairs {
        match (k.to_string().as_str(), literal(v)) {
            ("max_size", Some(Lit::Int(i))) => match i.base10_parse::<u32>() {
                Ok(n) if (1..=MAX_BATCH_SIZE).contains(&n) => max_size = Some(n),
                _ => cx.error_spanned_by(i, format!("durafn: `max_size` is a whole number of events, from 1 to {MAX_BATCH_SIZE}")),
            },
            ("timeout", Some(Lit::Str(s))) => match period_ms(&s.value()) {
                Some(ms) if (1000..=24 * 3_600_000).contains(&ms) => timeout = Some(ms),
                Some(_) => cx.error_spanned_by(s, "durafn: a batch `timeout` is from 1s to 24h"),
                None => cx.error_spanned_by(s, "durafn: a batch `timeout` is a duration such as \"5s\", \"1m\" or \"1h30m\""),
            },
            ("key", Some(Lit::Str(s))) => key = Some(s.clone()),
            ("if", Some(Lit::Str(s))) => when = Some(s.clone()),
            ("max_size", _) => cx.error_spanned_by(v, "durafn: `max_size` takes an integer literal"),
            ("timeout" | "key" | "if", _) => cx.error_spanned_by(v, format!("durafn: `{k}` takes a string literal (the macro checks it at compile time)")),
            _ => cx.error_spanned_by(k, format!("durafn: unknown `batch_events` argument `{k}`; it takes `max_size = N`, `timeout = \"5s\"` and optionally `key = \"<CEL on event>\"` (one batch per value) and `if = \"<CEL on event>\"` (events it rejects run alone)")),
        }
    }
    match (max_size, timeout) {
        (Some(max_size), Some(timeout_ms)) => Some(Batch {
            at: at.clone(),
            max_size,
            timeout_ms,
            key,
            when,
        }),
        _ if pairs.iter().any(|(k, _)| k == "max_size")
            && pairs.iter().any(|(k, _)| k == "timeout") =>
        {
            None
        }
        _ => {
            cx.error_spanned_by(at, "durafn: `batch_events` needs `max_size` and `timeout`, as in `batch_events(max_size = 100, timeout = \"5s\")`");
            None
        }
    }
}

fn timeouts(cx: &Ctxt, pairs: &[(syn::Ident, syn::Expr)]) -> (Option<u64>, Option<u64>) {
    let (mut start, mut finish) = (None, None);
    for (k, v) in pairs {
        let slot = match k.to_string().as_str() {
            "start" => &mut start,
            "finish" => &mut finish,
            _ => {
                cx.error_spanned_by(k, format!("durafn: unknown `timeouts` argument `{k}`; it takes `start = \"..\"` (how long a run may wait to start) and `finish = \"..\"` (how long it may take once started)"));
                continue;
            }
        };
        match literal(v) {
            Some(Lit::Str(s)) => match period_ms(&s.value()) {
                Some(ms) if ms >= 1 => *slot = Some(ms),
                _ => cx.error_spanned_by(
                    s,
                    "durafn: a timeout is a duration such as \"30s\", \"10m\" or \"1h30m\"",
                ),
            },
            _ => cx.error_spanned_by(
                v,
                format!(
                    "durafn: `{k}` takes a string literal (the macro checks it at compile time)"
                ),
            ),
        }
    }
    (start, finish)
}

fn concurrency(
    cx: &Ctxt,
    at: &syn::Ident,
    pairs: &[(syn::Ident, syn::Expr)],
) -> Option<Concurrency> {
    let (mut limit, mut key, mut scope) = (None, None, "Fn");
    for (k, v) in pairs {
        match (k.to_string().as_str(), literal(v)) {
            ("limit", Some(Lit::Int(i))) => match i.base10_parse::<u32>() {
                Ok(n) if n >= 1 => limit = Some(n),
                _ => cx.error_spanned_by(i, "durafn: `limit` is a whole number of runs, at least 1"),
            },
            ("key", Some(Lit::Str(s))) => key = Some(s.clone()),
            ("scope", Some(Lit::Str(s))) => match s.value().as_str() {
                "fn" => scope = "Fn",
                "env" => scope = "Env",
                "account" => scope = "Account",
                _ => cx.error_spanned_by(s, "durafn: a concurrency `scope` is \"fn\" (this function's runs), \"env\" or \"account\" (every function's runs with the same key)"),
            },
            ("limit", _) => cx.error_spanned_by(v, "durafn: `limit` takes an integer literal"),
            ("key" | "scope", _) => cx.error_spanned_by(v, format!("durafn: `{k}` takes a string literal")),
            _ => cx.error_spanned_by(k, format!("durafn: unknown `concurrency` argument `{k}`; it takes `limit = N` and optionally `key = \"<CEL on event>\"` and `scope = \"fn\" | \"env\" | \"account\"`")),
        }
    }
    if scope != "Fn" && key.is_none() {
        cx.error_spanned_by(at, "durafn: a concurrency limit with scope \"env\" or \"account\" is shared by every function through its key: add `key = \"..\"`");
        return None;
    }
    match limit {
        Some(limit) => Some(Concurrency { limit, key, scope }),
        None if pairs.iter().any(|(k, _)| k == "limit") => None,
        None => {
            cx.error_spanned_by(at, "durafn: `concurrency(..)` needs `limit = N`, as in `concurrency(limit = 5, key = \"event.data.customer_id\")`");
            None
        }
    }
}

fn singleton(cx: &Ctxt, at: &syn::Ident, pairs: &[(syn::Ident, syn::Expr)]) -> Option<Singleton> {
    let (mut key, mut mode) = (None, None);
    for (k, v) in pairs {
        match (k.to_string().as_str(), literal(v)) {
            ("key", Some(Lit::Str(s))) => key = Some(s.clone()),
            ("mode", Some(Lit::Str(s))) => match s.value().as_str() {
                "skip" => mode = Some(false),
                "cancel" => mode = Some(true),
                _ => cx.error_spanned_by(s, "durafn: a singleton's `mode` is \"skip\" (a new run is skipped while one is active) or \"cancel\" (the active run is cancelled)"),
            },
            ("key" | "mode", _) => cx.error_spanned_by(v, format!("durafn: `{k}` takes a string literal")),
            _ => cx.error_spanned_by(k, format!("durafn: unknown `singleton` argument `{k}`; it takes `mode = \"skip\" | \"cancel\"` and optionally `key = \"<CEL on event>\"`")),
        }
    }
    match mode {
        Some(cancel) => Some(Singleton { key, cancel }),
        None if pairs.iter().any(|(k, _)| k == "mode") => None,
        None => {
            cx.error_spanned_by(at, "durafn: `singleton` needs a `mode`: `singleton(mode = \"skip\")` or `singleton(mode = \"cancel\")`");
            None
        }
    }
}

fn field_path(s: &str) -> bool {
    s.split('.')
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

pub fn attr(cx: &Ctxt, args: TokenStream) -> Attr {
    let mut attr = Attr {
        id: None,
        name: None,
        events: Vec::new(),
        retries: None,
        filter: None,
        crons: Vec::new(),
        cancel_on: None,
        cancel_expr: None,
        idempotency: None,
        rate_limit: None,
        singleton: None,
        concurrency: Vec::new(),
        throttle: None,
        priority: None,
        timeouts: (None, None),
        on_failure: None,
        debounce: None,
        batch: None,
        batching: false,
    };
    let args = match parse_args.parse2(args) {
        Ok(m) => m,
        Err(e) => {
            cx.error_at(
                e.span(),
                format!("durafn: cannot parse the attribute's arguments ({e}); expected {KEYS}"),
            );
            return attr;
        }
    };
    let mut pairs = Vec::new();
    for arg in args {
        match arg {
            Arg::List(k, inner) => match k.to_string().as_str() {
                "rate_limit" => attr.rate_limit = per_period(cx, &k, &inner, false),
                "throttle" => attr.throttle = per_period(cx, &k, &inner, true),
                "timeouts" => attr.timeouts = timeouts(cx, &inner),
                "debounce" => attr.debounce = debounce(cx, &k, &inner),
                "batch_events" => {
                    attr.batching = true;
                    attr.batch = batch(cx, &k, &inner)
                }
                "singleton" => attr.singleton = singleton(cx, &k, &inner),
                "concurrency" => attr.concurrency.extend(concurrency(cx, &k, &inner)),
                other => cx.error_spanned_by(
                    &k,
                    format!(
                        "durafn: `{other}` takes `= value`, not a list; the arguments are {KEYS}"
                    ),
                ),
            },
            Arg::Value(k, v) => match k.to_string().as_str() {
                "concurrency" => match literal(&v) {
                    Some(Lit::Int(i)) => match i.base10_parse::<u32>() {
                        Ok(limit) if limit >= 1 => attr.concurrency.push(Concurrency { limit, key: None, scope: "Fn" }),
                        _ => cx.error_spanned_by(i, "durafn: `concurrency` is a whole number of runs, at least 1"),
                    },
                    _ => cx.error_spanned_by(&v, "durafn: `concurrency` takes an integer literal (`concurrency = 5`) or a list: `concurrency(limit = 5, key = \"event.data.customer_id\", scope = \"fn\")`"),
                },
                "on_failure" => match &*v {
                    syn::Expr::Path(p) if p.qself.is_none() => attr.on_failure = Some(p.path.clone()),
                    _ => cx.error_spanned_by(&v, "durafn: `on_failure` names another durable fn: `on_failure = import_failed`"),
                },
                "rate_limit" | "singleton" | "throttle" | "timeouts" | "debounce" | "batch_events" => cx.error_spanned_by(
                    &k,
                    format!("durafn: `{k}` takes a list: `{k}(..)`; the arguments are {KEYS}"),
                ),
                _ => pairs.push((k, *v)),
            },
        }
    }
    for (key_ident, value) in pairs {
        let key = key_ident.to_string();
        let Some(lit) = literal(&value).cloned() else {
            cx.error_spanned_by(
                &value,
                format!("durafn: `{key}` takes a literal (the macro reads it at compile time)"),
            );
            continue;
        };
        match (key.as_str(), &lit) {
            ("id", Lit::Str(s)) => {
                if s.value().is_empty() {
                    cx.error_spanned_by(s, "durafn: the function ID must not be empty");
                }
                attr.id = Some(s.clone())
            }
            ("name", Lit::Str(s)) => attr.name = Some(s.clone()),
            ("event", Lit::Str(s)) => {
                let v = s.value();
                if v.is_empty() || (v.contains('*') && !v.ends_with('*')) {
                    cx.error_spanned_by(s, "durafn: an event trigger is an event name (`shop/order.created`) or a prefix ending in `*` (`shop/*`)");
                }
                attr.events.push(s.clone())
            }
            ("if", Lit::Str(s)) => attr.filter = Some(s.clone()),
            ("cron", Lit::Str(s)) => attr.crons.push(s.clone()),
            ("cancel_on", Lit::Str(s)) => attr.cancel_on = Some(s.clone()),
            ("cancel_match", Lit::Str(s)) => {
                if !field_path(&s.value()) {
                    cx.error_spanned_by(s, "durafn: `cancel_match` is a field path such as `\"data.order_id\"`");
                }
                attr.cancel_expr = Some(format!("event.{0} == async.{0}", s.value()));
            }
            ("cancel_if", Lit::Str(s)) => attr.cancel_expr = Some(s.value()),
            ("idempotency", Lit::Str(s)) => attr.idempotency = Some(s.clone()),
            ("priority", Lit::Str(s)) => attr.priority = Some(s.clone()),
            ("retries", Lit::Int(i)) => match i.base10_parse::<u32>() {
                Ok(n) if n <= 20 => attr.retries = Some(i.clone()),
                _ => cx.error_spanned_by(i, "durafn: `retries` is a whole number from 0 to 20 (retries after the first attempt)"),
            },
            ("id" | "name" | "event" | "if" | "cron" | "cancel_on" | "cancel_match" | "cancel_if" | "idempotency" | "priority", _) => {
                cx.error_spanned_by(&lit, format!("durafn: `{key}` takes a string literal"))
            }
            ("retries", _) => cx.error_spanned_by(&lit, "durafn: `retries` takes an integer literal"),
            _ => cx.error_spanned_by(&key_ident, format!("durafn: unknown argument `{key}`; the arguments are {KEYS}")),
        }
    }
    if attr.concurrency.len() > 2 {
        cx.error_at(
            proc_macro2::Span::call_site(),
            "durafn: a function has at most two `concurrency` limits (as in Inngest)",
        );
    }
    if let Some(b) = &attr.batch {
        let clashes = [
            ("idempotency", attr.idempotency.is_some()),
            ("rate_limit", attr.rate_limit.is_some()),
            ("singleton", attr.singleton.is_some()),
            ("debounce", attr.debounce.is_some()),
            ("priority", attr.priority.is_some()),
            ("cancel_on", attr.cancel_on.is_some()),
        ];
        for (name, _) in clashes.iter().filter(|(_, set)| *set) {
            cx.error_spanned_by(&b.at, format!("durafn: `batch_events` cannot be combined with `{name}`: `{name}` is decided per event, and a batch's run has many; keep one of the two (Inngest refuses the same)"));
        }
    }
    if attr.filter.is_some() && attr.events.is_empty() {
        cx.error_at(
            proc_macro2::Span::call_site(),
            "durafn: `if` filters event triggers; add `event = \"..\"`",
        );
    }
    if attr.cancel_expr.is_some() && attr.cancel_on.is_none() {
        cx.error_at(
            proc_macro2::Span::call_site(),
            "durafn: `cancel_match`/`cancel_if` go with `cancel_on = \"event\"`",
        );
    }
    attr
}

/// The parts of the signature the expansion needs.
pub struct Sig<'a> {
    pub ctx_pat: &'a Pat,
    pub event_pat: &'a Pat,
    pub event_ty: &'a Type,
    pub ret: &'a Type,
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        _ => None,
    }
}

/// The `T` of `Vec<T>`, if the type is one.
fn vec_item(ty: &Type) -> Option<&Type> {
    let s = last_segment(ty).filter(|s| s.ident == "Vec")?;
    match &s.arguments {
        syn::PathArguments::AngleBracketed(a) if a.args.len() == 1 => match &a.args[0] {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

/// `batching`: the attribute has `batch_events(..)`, and the function
/// takes its batch as `Vec<Event<T>>`.
pub fn signature<'a>(cx: &Ctxt, f: &'a ItemFn, batching: bool) -> Option<Sig<'a>> {
    let sig = &f.sig;
    let shape = "durafn: a durable fn has the shape `async fn name(ctx: Ctx, event: Event<T>) -> Result<R>`";
    let mut ok = true;
    if sig.asyncness.is_none() {
        cx.error_spanned_by(sig.fn_token, format!("{shape}; add `async`"));
        ok = false;
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error_spanned_by(&sig.generics, format!("{shape}: it cannot be generic, because the engine must know its event and output types to journal them"));
        ok = false;
    }
    if let Some(c) = &sig.constness {
        cx.error_spanned_by(c, format!("{shape}; remove `const`"));
        ok = false;
    }
    if let Some(u) = &sig.unsafety {
        cx.error_spanned_by(u, format!("{shape}; remove `unsafe`"));
        ok = false;
    }
    if let Some(v) = &sig.variadic {
        cx.error_spanned_by(v, shape);
        ok = false;
    }
    let ret = match &sig.output {
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => {
            cx.error_spanned_by(
                &sig.ident,
                format!("{shape}: add the return type, e.g. `-> Result<()>`"),
            );
            None
        }
    };
    if let Some(ret) = ret {
        if last_segment(ret).is_none_or(|s| s.ident != "Result") {
            cx.error_spanned_by(ret, format!("{shape}: return `Result<R>` (durafn's `Result`), so that failures can be journaled and retried"));
            ok = false;
        }
    }
    let typed: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(t),
            FnArg::Receiver(r) => {
                cx.error_spanned_by(r, format!("{shape}: it cannot take `self`"));
                None
            }
        })
        .collect();
    if typed.len() != 2 {
        let span = if sig.inputs.is_empty() {
            sig.paren_token.span.join()
        } else {
            sig.inputs.span()
        };
        cx.error_at(
            span,
            format!(
                "{shape}: it takes exactly two arguments, the context and the triggering event"
            ),
        );
        return None;
    }
    let (ctx, event) = (typed[0], typed[1]);
    if last_segment(&ctx.ty).is_none_or(|s| s.ident != "Ctx") {
        cx.error_spanned_by(
            &ctx.ty,
            format!("{shape}: the first argument is the context, of type `Ctx`"),
        );
        ok = false;
    }
    let single = match vec_item(&event.ty) {
        Some(item) if batching => item,
        Some(_) => {
            cx.error_spanned_by(
                &event.ty,
                "durafn: a function takes a list of events only with `batch_events(..)`: take `event: Event<T>`, or add `batch_events(max_size = 100, timeout = \"5s\")` to get up to 100 events per run",
            );
            return None;
        }
        None if batching => {
            cx.error_spanned_by(
                &event.ty,
                "durafn: a function with `batch_events(..)` runs once per batch and receives all its events: take `events: Vec<Event<T>>`",
            );
            return None;
        }
        None => &*event.ty,
    };
    match last_segment(single) {
        Some(s) if s.ident == "Event" => match &s.arguments {
            syn::PathArguments::None => {}
            syn::PathArguments::AngleBracketed(a) if a.args.len() == 1 => match &a.args[0] {
                syn::GenericArgument::Type(_) => {}
                other => {
                    cx.error_spanned_by(
                        other,
                        format!("{shape}: `Event<T>` takes the type of the event's data"),
                    );
                    ok = false;
                }
            },
            other => {
                cx.error_spanned_by(
                    other,
                    format!("{shape}: `Event<T>` takes one type, the event's data"),
                );
                ok = false;
            }
        },
        _ => {
            cx.error_spanned_by(
                &event.ty,
                format!("{shape}: the second argument is the triggering event, of type `Event<T>`"),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    Some(Sig {
        ctx_pat: &ctx.pat,
        event_pat: &event.pat,
        event_ty: &event.ty,
        ret: ret?,
    })
}

/// `import_products` → `import-products`.
pub fn kebab(ident: &syn::Ident) -> String {
    ident
        .to_string()
        .trim_start_matches("r#")
        .trim_matches('_')
        .replace('_', "-")
}

/// The identifier bound by a simple pattern (`ctx`, `mut ctx`), if any.
pub fn pat_ident(p: &Pat) -> Option<&syn::Ident> {
    match p {
        Pat::Ident(i) => Some(&i.ident),
        _ => None,
    }
}
