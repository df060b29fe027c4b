//! Stage 3: rewrite the body into a resumable state machine and generate the
//! items the runtime needs.
//!
//! ```text
//! #[durable_fn(id = "import", event = "shop/import")]
//! async fn import(ctx: Ctx, event: Event<Req>) -> Result<usize> {
//!     loop {
//!         let page: Vec<P> = step!("fetch", { fetch(cursor).await? })?;
//!         ..
//!     }
//! }
//! ```
//! becomes
//! ```text
//! #[allow(non_camel_case_types)] struct import;
//! const _: () = {
//!     static __DURAFN_STEPS: [StepSite; 1] = [StepSite::new("fetch", StepKind::Run, 1, 3)];
//!     static __DURAFN_META: FnMeta = FnMeta { id: "import", triggers: &[..], config: FnConfig::DEFAULT, steps: &__DURAFN_STEPS, .. };
//!     impl DurableFn for import {
//!         fn meta(&self) -> &'static FnMeta { &__DURAFN_META }
//!         fn call(&self, __durafn_ctx: Ctx, input: Value) -> BoxFuture<..> {
//!             async fn import(__durafn_ctx: Ctx, event: Event<Req>) -> Result<usize> {
//!                 let ctx: Ctx = __durafn_ctx.clone();
//!                 {
//!                     let mut __durafn_iter_0: u32 = 0;
//!                     loop {
//!                         let __durafn_idx_0 = __durafn_iter_0; __durafn_iter_0 += 1;
//!                         let page: Vec<P> = __durafn_ctx.__step(&__DURAFN_STEPS[0], &[__durafn_idx_0],
//!                             StepOpts::default(), async { Ok::<_, Error>({ fetch(cursor).await? }) }).await?;
//!                         ..
//!                     }
//!                 }
//!             }
//!             call("import", import, __durafn_ctx, input) // decode, run, encode
//!         }
//!     }
//! };
//! ```

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::visit_mut::{self, VisitMut};
use syn::{parse_quote, Expr, ItemFn};

use crate::parse::{kebab, Attr, Sig};
use crate::prim::{self, Kind};

struct Site {
    id: String,
    kind: Kind,
    depth: usize,
    line: usize,
    event: Option<String>,
    expr: Option<String>,
}

struct Rewriter {
    sites: Vec<Site>,
    /// Enclosing loops: (number, whether a site is inside).
    loops: Vec<(u32, bool)>,
    next_loop: u32,
    in_step: u32,
    nested: u32,
}

fn hidden(name: &str) -> syn::Ident {
    syn::Ident::new(name, Span::mixed_site())
}

fn iter_ident(n: u32) -> syn::Ident {
    format_ident!("__durafn_iter_{}", n, span = Span::mixed_site())
}

fn idx_ident(n: u32) -> syn::Ident {
    format_ident!("__durafn_idx_{}", n, span = Span::mixed_site())
}

impl Rewriter {
    fn primitive(&mut self, mac: &syn::Macro, kind: Kind) -> Expr {
        let Ok(mut p) = prim::parse(mac, kind) else {
            // Reported by the check; a placeholder of the right shape keeps
            // the rest of the function compiling.
            return match kind {
                Kind::Sleep | Kind::SleepUntil => {
                    parse_quote!(::durafn::__private::misplaced_sleep())
                }
                Kind::Unchecked => parse_quote!(::core::unreachable!()),
                _ => parse_quote!(::durafn::__private::misplaced()),
            };
        };
        if kind == Kind::Unchecked {
            let arg = p.args.last_mut().expect("checked by parse");
            self.visit_expr_mut(arg);
            if self.in_step > 0 || self.nested > 0 {
                return parse_quote!({ #arg });
            }
            // What it awaits is vouched for: the run-time check for awaits
            // outside steps lets it be.
            let ctx = hidden("__durafn_ctx");
            let vouched = hidden("__durafn_vouched");
            return Expr::Verbatim(quote!({
                let #vouched = #ctx.__vouch();
                #arg
            }));
        }
        let bad_event =
            kind == Kind::WaitForEvent && p.opt("event").and_then(prim::lit_str).is_none();
        let misplaced = self.in_step > 0 || self.nested > 0 || p.lit().is_none() || bad_event;
        let step_body = kind == Kind::Step || kind == Kind::Parallel;
        for a in &mut p.args {
            self.in_step += u32::from(step_body);
            self.visit_expr_mut(a);
            self.in_step -= u32::from(step_body);
        }
        if misplaced {
            // Reported by the check (R5, R7, R8). A placeholder of the same
            // type keeps the rest of the function compiling.
            let id = &p.id;
            let args: Vec<&Expr> = p.args.iter().chain(p.opts.iter().map(|(_, v)| v)).collect();
            let out = hidden("__durafn_out");
            return match kind {
                Kind::Step => {
                    let arg = p.arg();
                    parse_quote!({
                    let _ = &#id;
                    ::durafn::__private::misplaced_step(async {
                        let #out = #arg;
                        ::core::result::Result::Ok::<_, ::durafn::__private::Error>(#out)
                    })
                    })
                }
                Kind::Sleep | Kind::SleepUntil => parse_quote!({
                    let _ = (&#id, #(&#args),*);
                    ::durafn::__private::misplaced_sleep()
                }),
                _ => parse_quote!({
                    let _ = (&#id, #(&#args),*);
                    ::durafn::__private::misplaced()
                }),
            };
        }
        for l in &mut self.loops {
            l.1 = true;
        }
        let index = self.sites.len();
        let span = p.lit().map(|l| l.span()).unwrap_or(p.span);
        let event = p.opt("event").and_then(prim::lit_str).map(|l| l.value());
        let expr = match (
            p.opt("match").and_then(prim::lit_str),
            p.opt("if").and_then(prim::lit_str),
        ) {
            (Some(m), _) => Some(format!("event.{0} == async.{0}", m.value())),
            (None, Some(x)) => Some(x.value()),
            _ => None,
        };
        self.sites.push(Site {
            id: p.lit().map(|l| l.value()).unwrap_or_else(|| "?".into()),
            kind,
            // A parallel site's IDs carry one more index: the item's.
            depth: self.loops.len() + usize::from(kind == Kind::Parallel),
            line: p.span.start().line,
            event: event.clone(),
            expr: expr.clone(),
        });
        let ctx = hidden("__durafn_ctx");
        let steps = hidden("__DURAFN_STEPS");
        let indices: Vec<syn::Ident> = self.loops.iter().map(|(n, _)| idx_ident(*n)).collect();
        let args = &p.args;
        let call = match kind {
            Kind::Step => {
                let arg = p.arg();
                let out = hidden("__durafn_out");
                let retries = match p.opts.iter().find(|(k, _)| k == "retries") {
                    Some((_, v)) => quote!(::core::option::Option::Some(#v)),
                    None => quote!(::core::option::Option::None),
                };
                quote_spanned! {span=>
                    #ctx.__step(
                        &#steps[#index],
                        &[#(#indices),*],
                        ::durafn::__private::StepOpts { retries: #retries },
                        async {
                            let #out = #arg;
                            ::core::result::Result::Ok::<_, ::durafn::__private::Error>(#out)
                        },
                    )
                }
            }
            Kind::Sleep => quote_spanned! {span=>
                #ctx.__sleep(&#steps[#index], &[#(#indices),*], #(#args)*)
            },
            Kind::SleepUntil => quote_spanned! {span=>
                #ctx.__sleep_until(&#steps[#index], &[#(#indices),*], #(#args)*)
            },
            Kind::WaitForEvent => {
                let event = event.unwrap_or_default();
                let expr = match expr {
                    Some(x) => quote!(::core::option::Option::Some(#x)),
                    None => quote!(::core::option::Option::None),
                };
                let timeout = p
                    .opt("timeout")
                    .map(|t| quote!(#t))
                    .unwrap_or_else(|| quote!(::durafn::__private::Duration::ZERO));
                let lookback = match p.opt("lookback") {
                    // A literal is refused by the check already.
                    Some(syn::Expr::Lit(_)) | None => quote!(::core::option::Option::None),
                    Some(d) => quote!(::core::option::Option::Some(#d)),
                };
                quote_spanned! {span=>
                    #ctx.__wait_for_event(&#steps[#index], &[#(#indices),*], #event, #expr, #timeout, #lookback)
                }
            }
            Kind::Patched => quote_spanned! {span=>
                #ctx.__patched(&#steps[#index], &[#(#indices),*])
            },
            Kind::SendEvent => quote_spanned! {span=>
                #ctx.__send_event(&#steps[#index], &[#(#indices),*], #(#args)*)
            },
            Kind::Invoke => {
                let (function, data) = (&p.args[0], &p.args[1]);
                let timeout = match p.opt("timeout") {
                    Some(t) => quote!(::core::option::Option::Some(#t)),
                    None => quote!(::core::option::Option::None),
                };
                quote_spanned! {span=>
                    #ctx.__invoke(&#steps[#index], &[#(#indices),*], &#function, #data, #timeout)
                }
            }
            Kind::Parallel => {
                let items = &p.args[0];
                let Expr::Closure(c) = &p.args[1] else {
                    let body = &p.args[1];
                    return parse_quote!({
                        let _ = (&#items, &#body);
                        ::durafn::__private::misplaced()
                    });
                };
                let (pat, body) = (&c.inputs[0], &c.body);
                let out = hidden("__durafn_out");
                quote_spanned! {span=>
                    #ctx.__parallel(
                        &#steps[#index],
                        &[#(#indices),*],
                        ::durafn::__private::to_vec(#items),
                        |#pat| async move {
                            let #out = #body;
                            ::core::result::Result::Ok::<_, ::durafn::__private::Error>(#out)
                        },
                    )
                }
            }
            Kind::Unchecked => unreachable!(),
        };
        // Emitted as is: its parts are visited already, and parsing the
        // whole step body again would cost a parse per step.
        Expr::Verbatim(quote_spanned!(span=> #call.await))
    }

    fn enter_loop(&mut self) -> u32 {
        let n = self.next_loop;
        self.next_loop += 1;
        self.loops.push((n, false));
        n
    }

    /// Leave a loop; if a site is inside, return the statements that read
    /// and bump its counter, to put at the top of each iteration.
    fn leave_loop(&mut self) -> Option<(syn::Ident, Vec<syn::Stmt>)> {
        let (n, has) = self.loops.pop().expect("in a loop");
        if !has {
            return None;
        }
        let (iter, idx) = (iter_ident(n), idx_ident(n));
        let stmts = vec![
            parse_quote!(let #idx: u32 = #iter;),
            parse_quote!(#iter += 1;),
        ];
        Some((iter, stmts))
    }
}

/// The loop `e` (visited already) with its iteration counter. Emitted as
/// tokens rather than parsed again: a loop's body can be most of the fn.
fn with_counter(iter: syn::Ident, e: &impl quote::ToTokens) -> Expr {
    Expr::Verbatim(quote!({
        #[allow(unused_assignments)]
        let mut #iter: u32 = 0;
        #e
    }))
}

impl VisitMut for Rewriter {
    fn visit_expr_mut(&mut self, e: &mut Expr) {
        match e {
            Expr::Macro(m) => {
                if let Some(kind) = prim::kind_of(&m.mac) {
                    *e = self.primitive(&m.mac, kind);
                } else {
                    visit_mut::visit_expr_mut(self, e);
                }
            }
            Expr::Loop(l) => {
                self.enter_loop();
                self.visit_block_mut(&mut l.body);
                if let Some((iter, stmts)) = self.leave_loop() {
                    l.body.stmts.splice(0..0, stmts);
                    *e = with_counter(iter, e);
                }
            }
            Expr::ForLoop(f) => {
                self.visit_expr_mut(&mut f.expr);
                self.enter_loop();
                self.visit_block_mut(&mut f.body);
                if let Some((iter, stmts)) = self.leave_loop() {
                    f.body.stmts.splice(0..0, stmts);
                    *e = with_counter(iter, e);
                }
            }
            Expr::While(w) => {
                self.enter_loop();
                self.visit_expr_mut(&mut w.cond);
                self.visit_block_mut(&mut w.body);
                if let Some((iter, stmts)) = self.leave_loop() {
                    // `while C { B }` → `loop { <index>; if C { B } else { break } }`,
                    // so that a step in the condition gets the iteration's index too.
                    let (attrs, label, cond, body) = (&w.attrs, &w.label, &w.cond, &w.body);
                    let lp = quote! {
                        #(#attrs)* #label loop {
                            #(#stmts)*
                            if #cond #body else { break }
                        }
                    };
                    *e = with_counter(iter, &lp);
                }
            }
            Expr::Await(a) if matches!(&*a.base, Expr::Macro(m) if prim::kind_of(&m.mac).is_some()) =>
            {
                // `step!(..).await`: reported by the check; the primitive
                // already awaits, so drop the extra `.await`.
                let mut base = (*a.base).clone();
                self.visit_expr_mut(&mut base);
                *e = base;
            }
            Expr::Closure(_) | Expr::Async(_) => {
                self.nested += 1;
                visit_mut::visit_expr_mut(self, e);
                self.nested -= 1;
            }
            _ => visit_mut::visit_expr_mut(self, e),
        }
    }

    fn visit_stmt_mut(&mut self, s: &mut syn::Stmt) {
        if let syn::Stmt::Macro(m) = s {
            if prim::kind_of(&m.mac).is_some() {
                let mut e = Expr::Macro(syn::ExprMacro {
                    attrs: m.attrs.clone(),
                    mac: m.mac.clone(),
                });
                self.visit_expr_mut(&mut e);
                *s = syn::Stmt::Expr(e, m.semi_token);
                return;
            }
        }
        visit_mut::visit_stmt_mut(self, s);
    }

    fn visit_item_fn_mut(&mut self, f: &mut syn::ItemFn) {
        self.nested += 1;
        visit_mut::visit_item_fn_mut(self, f);
        self.nested -= 1;
    }
}

pub fn expand(f: &ItemFn, attr: &Attr, sig: &Sig<'_>) -> TokenStream {
    let mut block = (*f.block).clone();
    let mut rw = Rewriter {
        sites: Vec::new(),
        loops: Vec::new(),
        next_loop: 0,
        in_step: 0,
        nested: 0,
    };
    rw.visit_block_mut(&mut block);

    let name = &f.sig.ident;
    let vis = &f.vis;
    let id = attr
        .id
        .as_ref()
        .map(|l| l.value())
        .unwrap_or_else(|| kebab(name));
    let display = attr
        .name
        .as_ref()
        .map(|l| l.value())
        .unwrap_or_else(|| id.clone());
    let (docs, attrs): (Vec<_>, Vec<_>) = f.attrs.iter().partition(|a| a.path().is_ident("doc"));

    let n_sites = rw.sites.len();
    let sites = rw.sites.iter().map(|s| {
        let (sid, depth, line) = (&s.id, s.depth as u32, s.line as u32);
        let kind = match s.kind {
            Kind::Step => quote!(Run),
            Kind::Sleep => quote!(Sleep),
            Kind::SleepUntil => quote!(SleepUntil),
            Kind::WaitForEvent => quote!(WaitForEvent),
            Kind::SendEvent => quote!(SendEvent),
            Kind::Invoke => quote!(Invoke),
            Kind::Parallel => quote!(Parallel),
            Kind::Patched => quote!(Patched),
            Kind::Unchecked => unreachable!(),
        };
        let opt = |v: &Option<String>| match v {
            Some(v) => quote!(::core::option::Option::Some(#v)),
            None => quote!(::core::option::Option::None),
        };
        if s.event.is_none() && s.expr.is_none() {
            return quote!(::durafn::__private::StepSite::new(#sid, ::durafn::__private::StepKind::#kind, #depth, #line));
        }
        let (event, expr) = (opt(&s.event), opt(&s.expr));
        quote! {
            ::durafn::__private::StepSite {
                id: #sid,
                kind: ::durafn::__private::StepKind::#kind,
                loop_depth: #depth,
                line: #line,
                event: #event,
                expr: #expr,
            }
        }
    });
    let filter = match &attr.filter {
        Some(f) => quote!(::core::option::Option::Some(#f)),
        None => quote!(::core::option::Option::None),
    };
    let triggers = attr
        .events
        .iter()
        .map(|e| quote!(::durafn::__private::Trigger::Event { event: #e, expression: #filter }))
        .chain(
            attr.crons
                .iter()
                .map(|c| quote!(::durafn::__private::Trigger::Cron { cron: #c })),
        )
        .collect::<Vec<_>>();

    let config = config(attr);
    let on_failure = attr.on_failure.as_ref().map(|h| {
        quote! {
            fn on_failure(&self) -> ::core::option::Option<::std::sync::Arc<dyn ::durafn::__private::DurableFn>> {
                ::core::option::Option::Some(::durafn::__private::failure_handler(#h))
            }
        }
    });

    let ctx = hidden("__durafn_ctx");
    let input = hidden("__durafn_input");
    let steps = hidden("__DURAFN_STEPS");
    let meta = hidden("__DURAFN_META");
    let (ctx_pat, event_pat, event_ty, ret) = (sig.ctx_pat, sig.event_pat, sig.event_ty, sig.ret);
    let stmts = &block.stmts;
    let doc = format!(" The durable fn `{id}`: pass it to the engine or the test harness (it implements `DurableFn`).");

    // Kept small: what every durable fn shares is generic code in the
    // runtime (`FnMeta`'s readers, `__private::call`), so each function
    // adds two statics, one impl and its body to the crate.
    quote! {
        #(#docs)*
        #[doc = ""]
        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #name;

        const _: () = {
            static #steps: [::durafn::__private::StepSite; #n_sites] = [#(#sites),*];
            static #meta: ::durafn::__private::FnMeta = ::durafn::__private::FnMeta {
                id: #id,
                name: #display,
                triggers: &[#(#triggers),*],
                config: #config,
                steps: &#steps,
            };

            #[automatically_derived]
            impl ::durafn::__private::DurableFn for #name {
                fn meta(&self) -> &'static ::durafn::__private::FnMeta {
                    &#meta
                }
                #on_failure
                fn call(
                    &self,
                    #ctx: ::durafn::__private::Ctx,
                    #input: ::durafn::__private::Value,
                ) -> ::durafn::__private::BoxFuture<'static, ::core::result::Result<::durafn::__private::Value, ::durafn::__private::Error>> {
                    #(#attrs)*
                    #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::explicit_counter_loop)]
                    async fn #name(#ctx: ::durafn::__private::Ctx, #event_pat: #event_ty) -> #ret {
                        #[allow(unused_variables)]
                        let #ctx_pat: ::durafn::__private::Ctx = ::core::clone::Clone::clone(&#ctx);
                        #(#stmts)*
                    }
                    ::durafn::__private::call(#id, #name, #ctx, #input)
                }
            }
        };
    }
}

/// The function's `FnConfig`: the default with the fields the attribute
/// sets.
fn config(attr: &Attr) -> TokenStream {
    let some = |v: Option<TokenStream>| match v {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    };
    let some_str = |s: &Option<syn::LitStr>| some(s.as_ref().map(|s| quote!(#s)));
    let some_u64 = |v: Option<u64>| some(v.map(|v| quote!(#v)));
    let mut fields = Vec::new();
    if let Some(r) = &attr.retries {
        fields.push(quote!(retries: #r));
    }
    if let Some(e) = &attr.cancel_on {
        let x = some(attr.cancel_expr.as_ref().map(|x| quote!(#x)));
        fields.push(quote!(cancel_on: ::core::option::Option::Some(::durafn::__private::CancelOn { event: #e, expression: #x })));
    }
    if attr.idempotency.is_some() {
        let v = some_str(&attr.idempotency);
        fields.push(quote!(idempotency: #v));
    }
    if let Some(r) = &attr.rate_limit {
        let (limit, period, key) = (r.limit, r.period_ms, some_str(&r.key));
        fields.push(
            quote!(rate_limit: ::core::option::Option::Some(::durafn::__private::RateLimitConfig {
                limit: #limit, period_ms: #period, key: #key,
            })),
        );
    }
    if let Some(s) = &attr.singleton {
        let key = some_str(&s.key);
        let mode = match s.cancel {
            true => quote!(Cancel),
            false => quote!(Skip),
        };
        fields.push(
            quote!(singleton: ::core::option::Option::Some(::durafn::__private::SingletonConfig {
                key: #key, mode: ::durafn::__private::SingletonMode::#mode,
            })),
        );
    }
    if !attr.concurrency.is_empty() {
        let limits = attr.concurrency.iter().map(|c| {
            let (limit, key) = (c.limit, some_str(&c.key));
            let scope = syn::Ident::new(c.scope, Span::call_site());
            quote!(::durafn::__private::ConcurrencyConfig {
                limit: #limit, key: #key, scope: ::durafn::__private::ConcurrencyScope::#scope,
            })
        });
        fields.push(quote!(concurrency: &[#(#limits),*]));
    }
    if let Some(t) = &attr.throttle {
        let (limit, period, burst, key) = (t.limit, t.period_ms, t.burst, some_str(&t.key));
        fields.push(
            quote!(throttle: ::core::option::Option::Some(::durafn::__private::ThrottleConfig {
                limit: #limit, period_ms: #period, burst: #burst, key: #key,
            })),
        );
    }
    if attr.priority.is_some() {
        let v = some_str(&attr.priority);
        fields.push(quote!(priority: #v));
    }
    if attr.timeouts != (None, None) {
        let (start_ms, finish_ms) = (some_u64(attr.timeouts.0), some_u64(attr.timeouts.1));
        fields.push(quote!(timeouts: ::durafn::__private::TimeoutsConfig {
            start_ms: #start_ms,
            finish_ms: #finish_ms,
        }));
    }
    if let Some(d) = &attr.debounce {
        let (period, key, timeout) = (d.period_ms, some_str(&d.key), some_u64(d.timeout_ms));
        fields.push(
            quote!(debounce: ::core::option::Option::Some(::durafn::__private::DebounceConfig {
                period_ms: #period, key: #key, timeout_ms: #timeout,
            })),
        );
    }
    if let Some(b) = &attr.batch {
        let (max_size, timeout, key, when) = (
            b.max_size,
            b.timeout_ms,
            some_str(&b.key),
            some_str(&b.when),
        );
        fields.push(
            quote!(batch_events: ::core::option::Option::Some(::durafn::__private::BatchConfig {
                max_size: #max_size, timeout_ms: #timeout, key: #key, when: #when,
            })),
        );
    }
    match fields.is_empty() {
        true => quote!(::durafn::__private::FnConfig::DEFAULT),
        false => quote!(::durafn::__private::FnConfig {
            #(#fields,)*
            ..::durafn::__private::FnConfig::DEFAULT
        }),
    }
}
