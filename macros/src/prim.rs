//! The durafn primitives as they appear in a body (`step!`, `sleep!`, …):
//! recognizing them and parsing their arguments. Shared by check and expand.

use proc_macro2::Span;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Macro, Token};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Step,
    Sleep,
    SleepUntil,
    Unchecked,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Step => "step!",
            Kind::Sleep => "sleep!",
            Kind::SleepUntil => "sleep_until!",
            Kind::Unchecked => "unchecked!",
        }
    }

    /// Whether it is a step site (journaled), as opposed to the escape hatch.
    pub fn is_site(self) -> bool {
        self != Kind::Unchecked
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
        "unchecked" => Kind::Unchecked,
        _ => return None,
    })
}

/// A parsed primitive invocation.
pub struct Prim {
    pub span: Span,
    /// The first argument: the step ID (or the escape hatch's reason).
    pub id: Expr,
    /// `key = value` options between the ID and the last argument.
    pub opts: Vec<(syn::Ident, Expr)>,
    /// The last argument: the body, the duration or the instant.
    pub arg: Expr,
}

impl Prim {
    /// The ID as a string literal, if it is one.
    pub fn lit(&self) -> Option<&syn::LitStr> {
        match &self.id {
            Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s),
            _ => None,
        }
    }
}

pub fn parse(mac: &Macro, kind: Kind) -> syn::Result<Prim> {
    let args = Punctuated::<Expr, Token![,]>::parse_terminated.parse2(mac.tokens.clone())?;
    let usage = match kind {
        Kind::Step => "durafn: write `step!(\"step-id\", { body })` (options go between the ID and the body: `step!(\"id\", retries = 2, { .. })`)",
        Kind::Sleep => "durafn: write `sleep!(\"sleep-id\", duration)`",
        Kind::SleepUntil => "durafn: write `sleep_until!(\"sleep-id\", system_time)`",
        Kind::Unchecked => "durafn: write `unchecked!(\"why this is replay-safe\", expression)`",
    };
    let n = args.len();
    if n < 2 {
        return Err(syn::Error::new(mac.span(), usage));
    }
    let mut it = args.into_iter();
    let id = it.next().unwrap();
    let mut opts = Vec::new();
    for _ in 0..n - 2 {
        match it.next().unwrap() {
            Expr::Assign(a) => match &*a.left {
                Expr::Path(p) if p.path.get_ident().is_some() => {
                    opts.push((p.path.get_ident().unwrap().clone(), *a.right))
                }
                other => return Err(syn::Error::new(other.span(), usage)),
            },
            other => return Err(syn::Error::new(other.span(), usage)),
        }
    }
    let arg = it.next().unwrap();
    Ok(Prim {
        span: mac.span(),
        id,
        opts,
        arg,
    })
}
