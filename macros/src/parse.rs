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
}

const KEYS: &str = "`id = \"..\"`, `name = \"..\"`, `event = \"..\"` (repeatable), `if = \"<CEL on event>\"`, `cron = \"<schedule>\"`, `retries = N`, `cancel_on = \"event\"` with `cancel_match = \"data.field\"` or `cancel_if = \"<CEL>\"`";

fn parse_pairs(input: syn::parse::ParseStream) -> syn::Result<Vec<(syn::Ident, syn::Lit)>> {
    use syn::ext::IdentExt;
    let mut out = Vec::new();
    while !input.is_empty() {
        let key = syn::Ident::parse_any(input)?;
        input.parse::<Token![=]>()?;
        let lit: syn::Lit = input.parse()?;
        out.push((key, lit));
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(out)
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
    };
    let pairs = match parse_pairs.parse2(args) {
        Ok(m) => m,
        Err(e) => {
            cx.error_at(
                e.span(),
                format!("durafn: cannot parse the attribute's arguments ({e}); expected {KEYS}"),
            );
            return attr;
        }
    };
    for (key_ident, lit) in pairs {
        let key = key_ident.to_string();
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
            ("retries", Lit::Int(i)) => match i.base10_parse::<u32>() {
                Ok(n) if n <= 20 => attr.retries = Some(i.clone()),
                _ => cx.error_spanned_by(i, "durafn: `retries` is a whole number from 0 to 20 (retries after the first attempt)"),
            },
            ("id" | "name" | "event" | "if" | "cron" | "cancel_on" | "cancel_match" | "cancel_if", _) => {
                cx.error_spanned_by(&lit, format!("durafn: `{key}` takes a string literal"))
            }
            ("retries", _) => cx.error_spanned_by(&lit, "durafn: `retries` takes an integer literal"),
            _ => cx.error_spanned_by(&key_ident, format!("durafn: unknown argument `{key}`; the arguments are {KEYS}")),
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

pub fn signature<'a>(cx: &Ctxt, f: &'a ItemFn) -> Option<Sig<'a>> {
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
    match last_segment(&event.ty) {
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
