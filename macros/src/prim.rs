//! The durafn primitives as they appear in a body (`step!`, `sleep!`, …):
//! recognizing them and parsing their arguments. Shared by check and expand.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Expr, Macro, Token};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Step,
    Sleep,
    SleepUntil,
    WaitForEvent,
    SendEvent,
    Invoke,
    Parallel,
    Patched,
    Unchecked,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Step => "step!",
            Kind::Sleep => "sleep!",
            Kind::SleepUntil => "sleep_until!",
            Kind::WaitForEvent => "wait_for_event!",
            Kind::SendEvent => "send_event!",
            Kind::Invoke => "invoke!",
            Kind::Parallel => "parallel!",
            Kind::Patched => "patched!",
            Kind::Unchecked => "unchecked!",
        }
    }

    /// Whether it is a step site (journaled), as opposed to the escape hatch.
    pub fn is_site(self) -> bool {
        self != Kind::Unchecked
    }

    fn usage(self) -> &'static str {
        match self {
            Kind::Step => "durafn: write `step!(\"step-id\", { body })` (options go between the ID and the body: `step!(\"id\", retries = 2, { .. })`)",
            Kind::Sleep => "durafn: write `sleep!(\"sleep-id\", duration)`",
            Kind::SleepUntil => "durafn: write `sleep_until!(\"sleep-id\", system_time)`",
            Kind::WaitForEvent => "durafn: write `wait_for_event!(\"id\", event = \"app/invoice.paid\", timeout = Duration::from_secs(3600), match = \"data.invoice_id\")` (or `if = \"<CEL over event and async>\"`)",
            Kind::SendEvent => "durafn: write `send_event!(\"id\", event)` or `send_event!(\"id\", vec![event, ..])`",
            Kind::Invoke => "durafn: write `invoke!(\"id\", other_fn, data)` (optionally `timeout = duration` before the function)",
            Kind::Parallel => "durafn: write `parallel!(\"id\", items, |item| { body })`: one step per item, run concurrently, IDs `id[0]`, `id[1]`, ...",
            Kind::Patched => "durafn: write `if patched!(\"change-id\")? { new code } else { old code }`: true for runs that reach it on this code, false for runs whose journal was written by code without it",
            Kind::Unchecked => "durafn: write `unchecked!(\"why this is replay-safe\", expression)`",
        }
    }

    /// How many positional arguments follow the ID.
    fn positionals(self) -> usize {
        match self {
            Kind::WaitForEvent | Kind::Patched => 0,
            Kind::Invoke | Kind::Parallel => 2,
            _ => 1,
        }
    }

    /// The options it takes.
    pub fn options(self) -> &'static [&'static str] {
        match self {
            Kind::Step => &["retries"],
            Kind::WaitForEvent => &["event", "timeout", "match", "if", "lookback"],
            Kind::Invoke => &["timeout"],
            _ => &[],
        }
    }
}

/// Which primitive a macro invocation is, by the last segment of its path
/// (`step!`, `durafn::step!`).
pub fn kind_of(mac: &Macro) -> Option<Kind> {
    let last = mac.path.segments.last()?;
    Some(match last.ident.to_string().as_str() {
        "step" => Kind::Step,
        "sleep" => Kind::Sleep,
        "sleep_until" => Kind::SleepUntil,
        "wait_for_event" => Kind::WaitForEvent,
        "send_event" => Kind::SendEvent,
        "invoke" => Kind::Invoke,
        "parallel" => Kind::Parallel,
        "patched" => Kind::Patched,
        "unchecked" => Kind::Unchecked,
        _ => return None,
    })
}

/// A parsed primitive invocation.
pub struct Prim {
    pub span: Span,
    /// The first argument: the step ID (or the escape hatch's reason).
    pub id: Expr,
    /// `key = value` options (keys may be keywords: `match`, `if`).
    pub opts: Vec<(syn::Ident, Expr)>,
    /// The positional arguments after the ID: the body, the duration, the
    /// instant, the events, or the function and its data.
    pub args: Vec<Expr>,
}

impl Prim {
    /// The ID as a string literal, if it is one.
    pub fn lit(&self) -> Option<&syn::LitStr> {
        lit_str(&self.id)
    }

    /// The last positional argument (a step's body).
    pub fn arg(&self) -> &Expr {
        self.args.last().expect("checked by parse")
    }

    pub fn opt(&self, key: &str) -> Option<&Expr> {
        self.opts.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

pub fn lit_str(e: &Expr) -> Option<&syn::LitStr> {
    match e {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s),
        _ => None,
    }
}

enum Arg {
    Pos(Expr),
    Opt(syn::Ident, Expr),
}

fn parse_args(input: ParseStream) -> syn::Result<Vec<Arg>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        if input.peek(syn::Ident::peek_any) && input.peek2(Token![=]) && !input.peek2(Token![==]) {
            let key = syn::Ident::parse_any(input)?;
            input.parse::<Token![=]>()?;
            out.push(Arg::Opt(key, input.parse()?));
        } else {
            out.push(Arg::Pos(input.parse()?));
        }
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(out)
}

pub fn parse(mac: &Macro, kind: Kind) -> syn::Result<Prim> {
    let usage = kind.usage();
    let args = parse_args
        .parse2(mac.tokens.clone())
        .map_err(|e| syn::Error::new(e.span(), format!("{usage} ({e})")))?;
    let mut it = args.into_iter();
    let id = match it.next() {
        Some(Arg::Pos(e)) => e,
        _ => return Err(syn::Error::new(mac.span(), usage)),
    };
    let mut opts = Vec::new();
    let mut pos = Vec::new();
    for a in it {
        match a {
            Arg::Opt(k, v) => {
                if !kind.options().contains(&k.to_string().as_str()) {
                    let valid = match kind.options() {
                        [] => "it takes no options".to_string(),
                        o => format!(
                            "its options are {}",
                            o.iter()
                                .map(|o| format!("`{o}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    return Err(syn::Error::new(
                        k.span(),
                        format!(
                            "durafn: unknown option `{k}` for `{}`; {valid}",
                            kind.name()
                        ),
                    ));
                }
                opts.push((k, v));
            }
            Arg::Pos(e) => pos.push(e),
        }
    }
    if pos.len() != kind.positionals() {
        return Err(syn::Error::new(mac.span(), usage));
    }
    Ok(Prim {
        span: mac.span(),
        id,
        opts,
        args: pos,
    })
}

/// The arguments of an expression-like macro (`format!`, `vec!`,
/// `assert!`) when they parse as expressions; none otherwise.
pub fn expr_args(mac: &Macro) -> Vec<Expr> {
    mac.parse_body_with(syn::punctuated::Punctuated::<Expr, Token![,]>::parse_terminated)
        .map(|args| args.into_iter().collect())
        .unwrap_or_default()
}
