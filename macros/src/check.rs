//! Stage 2: walk the body and collect every replay-safety violation.
//!
//! The rules (DESIGN 2.1 and 2.3): outside a step, no `.await` on anything
//! but a durafn primitive, also hidden in `join!`/`select!` (R1), no writes
//! to the process's stdout/stderr/stdin (R2), no well-known
//! non-deterministic or effectful calls, also behind an alias or inside a
//! helper fn of the crate (R3), no process-global state (statics with
//! interior mutability, `thread_local!`); inside a step, no mutation of
//! bindings from outside the step, by assignment, mutating method or
//! `&mut` borrow (R4) and no nested primitive (R5); anywhere, unique
//! literal IDs (R6, R7), no primitive in a closure or nested fn (R8), and no
//! loop over a `HashMap`/`HashSet` that holds a step site (hash order). R9
//! (serializable outputs) is a trait bound in the expansion.
//! `unchecked!("reason", ..)` switches the rules on effects off for code
//! the developer vouches for.
//!
//! Paths resolve through the crate index (`index/`) when the crate's
//! sources could be read, and as written otherwise.

use std::collections::HashMap;

use syn::visit::{self, Visit};
use syn::{Expr, Pat};

use crate::ctxt::Ctxt;
use crate::effects::{self, Effect, Statics};
use crate::index::{self, Env, ItemPath, Resolved, Scope, Trace, Ty};
use crate::prim::{self, Kind};

/// A parameter of the durable fn: its pattern and type.
pub type Param<'a> = (&'a Pat, &'a syn::Type);

pub fn body(
    cx: &Ctxt,
    block: &syn::Block,
    params: &[Param<'_>],
    ctx_ident: Option<&syn::Ident>,
    scope: Option<&Scope>,
) {
    let (index, module) = match scope {
        Some(s) => (&*s.index, &s.module[..]),
        None => (index::empty(), &[][..]),
    };
    let mut c = Checker {
        cx,
        index,
        module,
        ctx_ident: ctx_ident.map(|i| i.to_string()),
        scopes: vec![Vec::new()],
        uses: Vec::new(),
        statics: Vec::new(),
        step_base: None,
        closure_depth: 0,
        unchecked: 0,
        ids: Vec::new(),
    };
    for (pat, ty) in params {
        let ty = c.env().ty(ty);
        c.bind_typed(pat, ty);
    }
    c.visit_block(block);
    let mut first: HashMap<String, &syn::LitStr> = HashMap::new();
    for lit in &c.ids {
        let v = lit.value();
        match first.get(v.as_str()) {
            Some(prev) => {
                cx.error_spanned_by(lit, format!(
                    "durafn: the step ID `{v}` is used by two step sites, so their results would overwrite each other in the journal; give each site its own ID (steps inside loops are numbered automatically, `{v}[0]`, `{v}[1]`, ...)"
                ));
                cx.error_spanned_by(prev, format!("durafn: `{v}` is first used here"));
            }
            None => {
                first.insert(v, lit);
            }
        }
    }
}

struct Checker<'a> {
    cx: &'a Ctxt,
    index: &'a index::Index,
    module: &'a [String],
    ctx_ident: Option<String>,
    /// Names bound in each enclosing scope, outermost first, with their
    /// types as far as they are known.
    scopes: Vec<Vec<(String, Ty)>>,
    /// `use` items in the body.
    uses: Vec<(String, ItemPath)>,
    /// `static` items in the body: name, kind of state, declaration.
    statics: Vec<(String, Statics, String)>,
    /// Inside a step body: the index of the first scope that belongs to it.
    step_base: Option<usize>,
    /// Closures, async blocks and nested fns outside any step body.
    closure_depth: u32,
    unchecked: u32,
    ids: Vec<syn::LitStr>,
}

/// `durafn: `{shown}` ({note}) outside a step {verb}{why}; {instead}`.
fn direct(shown: &str, note: Option<&str>, effect: &Effect) -> String {
    let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
    format!(
        "durafn: `{shown}`{note} outside a step {}{}; {}",
        effect.verb, effect.why, effect.instead
    )
}

/// The message for a call that reaches an effect through helpers.
fn through(shown: &str, t: &Trace) -> String {
    let chain: Vec<String> = t.chain.iter().map(|c| format!("`{c}`")).collect();
    format!(
        "durafn: `{shown}` outside a step {} (`{}` at {}, through {}){}; {}, or call `{shown}` inside a `step!`",
        t.effect.verb,
        t.shown,
        t.at,
        chain.join(" → "),
        t.effect.why,
        t.effect.instead
    )
}

fn path_shown(p: &syn::Path) -> String {
    path_strings(p).join("::")
}

const MUTATING_METHODS: &[&str] = &[
    "push",
    "push_str",
    "push_back",
    "push_front",
    "insert",
    "extend",
    "extend_from_slice",
    "append",
    "clear",
    "remove",
    "pop",
    "pop_back",
    "pop_front",
    "truncate",
    "retain",
    "retain_mut",
    "sort",
    "sort_by",
    "sort_by_key",
    "sort_unstable",
    "sort_unstable_by",
    "sort_unstable_by_key",
    "dedup",
    "dedup_by_key",
    "drain",
    "reverse",
    "swap",
    "swap_remove",
    "split_off",
    "resize",
    "fill",
    "take",
    "replace",
    "set",
    "get_or_insert",
    "get_or_insert_with",
    "entry",
    "get_mut",
    "iter_mut",
    "fetch_add",
    "fetch_sub",
    "store",
];

/// Methods that hand out access to their receiver, looked through when
/// finding the binding a mutation reaches (`all.lock().unwrap().push(..)`).
const PASS_THROUGH: &[&str] = &[
    "as_mut",
    "borrow_mut",
    "lock",
    "write",
    "unwrap",
    "expect",
    "get_mut",
    "last_mut",
    "first_mut",
    "entry",
    "or_insert",
    "or_default",
];

fn bindings(p: &Pat, out: &mut Vec<String>) {
    struct B<'o>(&'o mut Vec<String>);
    impl<'ast> Visit<'ast> for B<'_> {
        fn visit_pat_ident(&mut self, i: &'ast syn::PatIdent) {
            self.0.push(i.ident.to_string());
            visit::visit_pat_ident(self, i);
        }
    }
    B(out).visit_pat(p);
}

/// The binding an assignment or method call ultimately mutates.
fn root_ident(e: &Expr) -> Option<&syn::Ident> {
    match e {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident(),
        Expr::Field(f) => root_ident(&f.base),
        Expr::Index(i) => root_ident(&i.expr),
        Expr::Paren(p) => root_ident(&p.expr),
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => root_ident(&u.expr),
        Expr::MethodCall(m) if PASS_THROUGH.contains(&m.method.to_string().as_str()) => {
            root_ident(&m.receiver)
        }
        _ => None,
    }
}

/// Visit an expression parsed out of a macro's tokens (it lives shorter
/// than the function's syntax tree).
fn visit_local_expr(c: &mut Checker<'_>, e: &Expr) {
    <Checker<'_> as Visit<'_>>::visit_expr(c, e);
}

fn path_strings(p: &syn::Path) -> Vec<String> {
    p.segments.iter().map(|s| s.ident.to_string()).collect()
}

impl Checker<'_> {
    fn env(&self) -> Env<'_> {
        Env {
            index: self.index,
            module: self.module,
            self_ty: None,
            uses: &self.uses,
        }
    }

    fn in_step(&self) -> bool {
        self.step_base.is_some()
    }

    /// The rules on effects apply: outside step bodies and outside
    /// `unchecked!`.
    fn outside_rules(&self) -> bool {
        !self.in_step() && self.unchecked == 0
    }

    fn local(&self, name: &str) -> Option<&Ty> {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.iter().rev().find(|(n, _)| n == name).map(|(_, t)| t))
    }

    fn is_local(&self, name: &str) -> bool {
        self.local(name).is_some()
    }

    /// Declared outside the current step body (and not shadowed inside it).
    fn declared_outside_step(&self, name: &str) -> bool {
        let Some(base) = self.step_base else {
            return false;
        };
        for (i, scope) in self.scopes.iter().enumerate().rev() {
            if scope.iter().any(|(n, _)| n == name) {
                return i < base;
            }
        }
        false
    }

    fn bind(&mut self, p: &Pat) {
        self.bind_typed(p, Ty::Unknown);
    }

    /// Bind the names of `p`; a plain name gets `ty`, or the type written
    /// in the pattern.
    fn bind_typed(&mut self, p: &Pat, ty: Ty) {
        let entries = match p {
            Pat::Ident(i) if i.subpat.is_none() => vec![(i.ident.to_string(), ty)],
            Pat::Type(t) => {
                let ty = self.env().ty(&t.ty);
                return self.bind_typed(&t.pat, ty);
            }
            other => {
                let mut names = Vec::new();
                bindings(other, &mut names);
                names.into_iter().map(|n| (n, Ty::Unknown)).collect()
            }
        };
        self.scopes.last_mut().expect("a scope").extend(entries);
    }

    fn scoped(&mut self, names: Vec<String>, f: impl FnOnce(&mut Self)) {
        self.scopes
            .push(names.into_iter().map(|n| (n, Ty::Unknown)).collect());
        f(self);
        self.scopes.pop();
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self)) {
        if self.in_step() {
            f(self)
        } else {
            self.closure_depth += 1;
            f(self);
            self.closure_depth -= 1;
        }
    }

    fn expr_ty(&self, e: &Expr) -> Ty {
        self.env()
            .expr_ty(e, &|n| Some(self.local(n).cloned().unwrap_or(Ty::Unknown)))
    }

    /// A collection with a per-process order that `e` iterates, through
    /// `&`, `.iter()`, `.keys()`, `.map(..)`, `.collect::<Vec<_>>()`:
    /// its type's name and how it is written.
    fn hash_source(&self, e: &Expr) -> Option<(String, String)> {
        let mut cur = e;
        loop {
            if let Ty::Hash(name) = self.expr_ty(cur) {
                return Some((
                    name,
                    quote::quote!(#cur)
                        .to_string()
                        .replace(" . ", ".")
                        .replace("& ", "&"),
                ));
            }
            cur = match cur {
                Expr::Reference(r) => &r.expr,
                Expr::Paren(p) => &p.expr,
                Expr::Group(g) => &g.expr,
                Expr::MethodCall(m)
                    if effects::ORDER_KEEPING.contains(&m.method.to_string().as_str()) =>
                {
                    // `collect` into a sorted or hashed collection sets an
                    // order of its own; into a `Vec` (or unsaid), keeps it.
                    let into = m.turbofish.as_ref().and_then(|t| t.args.first());
                    if let Some(syn::GenericArgument::Type(syn::Type::Path(p))) = into {
                        if p.path.segments.last().is_some_and(|s| s.ident != "Vec") {
                            return None;
                        }
                    }
                    &m.receiver
                }
                _ => return None,
            };
        }
    }

    /// The hash-order rule: a loop (or `parallel!`) over `source` whose
    /// body holds a step site.
    fn hash_order(&self, source: &Expr, site: Option<String>, what: &str) {
        if !self.outside_rules() {
            return;
        }
        let Some(site) = site else { return };
        let Some((ty, shown)) = self.hash_source(source) else {
            return;
        };
        self.cx.error_spanned_by(source, format!(
            "durafn: {what} `{shown}`, a `{ty}`, whose order differs between processes (its hasher is seeded at random), and the steps it makes are numbered in that order: on replay `{site}[1]` would return the journaled result of another element; iterate a `BTreeMap`/`BTreeSet` or an `IndexMap`, or sort first (`let mut keys: Vec<_> = map.keys().collect(); keys.sort();`)"
        ));
    }

    /// A path used outside a step: an effect (as written or through an
    /// alias), a crate fn that reaches one, or process-global state.
    fn path_use(&self, e: &syn::ExprPath) {
        let written = path_strings(&e.path);
        if written.len() == 1 {
            if self.is_local(&written[0]) {
                return;
            }
            if let Some((_, kind, decl)) =
                self.statics.iter().rev().find(|(n, _, _)| *n == written[0])
            {
                if *kind == Statics::Mutable {
                    let note = format!("`{decl}`, declared in the durable fn");
                    self.cx
                        .error_spanned_by(e, direct(&written[0], Some(&note), &effects::GLOBAL));
                }
                return;
            }
        }
        let shown = written.join("::");
        match self.env().resolve(&e.path) {
            Resolved::Crate(p) => {
                if self.index.is_fn(&p) {
                    if let Some(t) = self.index.trace(&p) {
                        self.cx.error_spanned_by(e, through(&shown, &t));
                    }
                } else if let Some(st) = self.index.static_at(&p) {
                    if st.kind == Statics::Mutable {
                        let note = self.index.show_static(st);
                        self.cx
                            .error_spanned_by(e, direct(&shown, Some(&note), &effects::GLOBAL));
                    }
                }
            }
            Resolved::External(p) => {
                if let Some(effect) = effects::of_path(&p) {
                    let note = format!("that is `{}`", p.join("::"));
                    let note = (!p.ends_with(&written)).then_some(note.as_str());
                    self.cx.error_spanned_by(e, direct(&shown, note, effect));
                }
            }
        }
    }

    /// A method call outside a step: a crate method that reaches an
    /// effect, a method that is one (`.elapsed()`), or `set` on a
    /// `OnceLock` static.
    fn method_use(&self, m: &syn::ExprMethodCall) {
        let method = m.method.to_string();
        let span = m.method.span();
        if let Ty::Crate(t) = self.expr_ty(&m.receiver) {
            let mut p = t;
            p.push(method.clone());
            if self.index.is_fn(&p) {
                if let Some(trace) = self.index.trace(&p) {
                    let shown = self.index.fn_shown(&p).unwrap_or(&method);
                    self.cx.error_at(span, through(shown, &trace));
                }
                return;
            }
        }
        if let Some(effect) = effects::of_method(&method) {
            self.cx
                .error_at(span, direct(&format!(".{method}()"), None, effect));
        } else if method == "set" {
            if let Expr::Path(p) = &*m.receiver {
                if let Resolved::Crate(path) = self.env().resolve(&p.path) {
                    if let Some(st) = self.index.static_at(&path) {
                        if st.kind == Statics::SetOnce {
                            let shown = format!("{}.set", path_shown(&p.path));
                            let note = self.index.show_static(st);
                            self.cx
                                .error_at(span, direct(&shown, Some(&note), &effects::GLOBAL));
                        }
                    }
                }
            }
        }
    }

    fn mutation(&self, target: &Expr, at: &dyn quote::ToTokens, how: &str) {
        if self.unchecked > 0 {
            return;
        }
        if let Some(ident) = root_ident(target) {
            let name = ident.to_string();
            if self.declared_outside_step(&name) {
                self.cx.error_spanned_by(at, format!(
                    "durafn: {how} `{name}`, which is declared outside the step; on replay the step body does not run, so the change would be lost; return the value from the step instead (`let {name} = step!(..)?;`) and change `{name}` outside it"
                ));
            }
        }
    }

    fn primitive(&mut self, mac: &syn::Macro, kind: Kind) {
        let name = kind.name();
        if kind.is_site() {
            if self.in_step() {
                self.cx.error_spanned_by(mac, format!(
                    "durafn: `{name}` inside a step body is not journaled on its own, and on replay the outer body does not run, so it would be skipped; move it out of the step, after it"
                ));
            } else if self.closure_depth > 0 {
                self.cx.error_spanned_by(mac, format!(
                    "durafn: `{name}` inside a closure, async block or nested fn runs in an order the journal cannot follow (later, twice or never); call it directly in the durable fn's body (in a loop, each iteration gets its own ID)"
                ));
            }
        }
        let p = match prim::parse(mac, kind) {
            Ok(p) => p,
            Err(e) => {
                self.cx.syn_error(e);
                return;
            }
        };
        match (kind, p.lit()) {
            (Kind::Unchecked, Some(reason)) if !reason.value().trim().is_empty() => {}
            (Kind::Unchecked, _) => self.cx.error_spanned_by(&p.id, "durafn: `unchecked!` needs a non-empty string literal saying why the code is replay-safe: `unchecked!(\"reads a constant file shipped with the binary\", ..)`"),
            (_, Some(lit)) => {
                let v = lit.value();
                if v.is_empty() || v.starts_with('~') || v.ends_with(']') {
                    self.cx.error_spanned_by(lit, "durafn: a step ID is a non-empty name that does not start with `~` or end with `]` (those are reserved for internal steps and loop indices)");
                } else {
                    self.ids.push(lit.clone());
                }
            }
            (_, None) => self.cx.error_spanned_by(&p.id, format!(
                "durafn: the ID of `{name}` must be a string literal, so that it is checked at compile time and the same on every replay; write a literal (steps in loops are numbered automatically: `\"fetch\"` gives `fetch[0]`, `fetch[1]`, ...)"
            )),
        }
        if kind == Kind::WaitForEvent {
            self.wait_options(&p);
        }
        for (_, value) in &p.opts {
            visit_local_expr(self, value);
        }
        // The ID expression and options run outside the step.
        visit_local_expr(self, &p.id);
        match kind {
            Kind::Step => {
                let saved = self.step_base.replace(self.scopes.len());
                let saved_depth = std::mem::take(&mut self.closure_depth);
                self.scoped(Vec::new(), |c| visit_local_expr(c, p.arg()));
                self.closure_depth = saved_depth;
                self.step_base = saved;
            }
            Kind::Unchecked => {
                self.unchecked += 1;
                visit_local_expr(self, p.arg());
                self.unchecked -= 1;
            }
            Kind::Parallel => {
                visit_local_expr(self, &p.args[0]);
                let id = p.lit().map(|l| l.value());
                self.hash_order(&p.args[0], id, "`parallel!` takes its items from");
                match &p.args[1] {
                    Expr::Closure(c) if c.inputs.len() == 1 => {
                        // The body is a step body; the item is its own.
                        let mut names = Vec::new();
                        bindings(&c.inputs[0], &mut names);
                        let saved = self.step_base.replace(self.scopes.len());
                        let saved_depth = std::mem::take(&mut self.closure_depth);
                        self.scoped(names, |c2| visit_local_expr(c2, &c.body));
                        self.closure_depth = saved_depth;
                        self.step_base = saved;
                    }
                    other => self.cx.error_spanned_by(other, "durafn: the last argument of `parallel!` is the step body for one item, written `|item| { .. }`"),
                }
            }
            _ => {
                for a in &p.args {
                    visit_local_expr(self, a);
                }
            }
        }
    }

    /// `wait_for_event!`: an event name literal, a timeout, and at most one
    /// of `match` (a field path) and `if` (CEL, checked at registration).
    fn wait_options(&self, p: &prim::Prim) {
        match p.opt("event").map(|e| (e, prim::lit_str(e))) {
            Some((_, Some(lit))) if !lit.value().trim().is_empty() => {}
            Some((e, _)) => self.cx.error_spanned_by(
                e,
                "durafn: `event` is the name of the awaited event, a non-empty string literal",
            ),
            None => self.cx.error_at(
                p.span,
                "durafn: `wait_for_event!` needs `event = \"name\"`: the event to wait for",
            ),
        }
        if p.opt("timeout").is_none() {
            self.cx.error_at(p.span, "durafn: `wait_for_event!` needs `timeout = duration`: a wait without one could hold the run forever");
        }
        if let (Some(m), Some(_)) = (p.opt("match"), p.opt("if")) {
            self.cx
                .error_spanned_by(m, "durafn: give `match` or `if`, not both");
        }
        if let Some(m) = p.opt("match") {
            match prim::lit_str(m) {
                Some(l) if l.value().split('.').all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) => {}
                _ => self.cx.error_spanned_by(m, "durafn: `match` is a field path string such as `\"data.invoice_id\"`: the trigger's and the awaited event's values there must be equal"),
            }
        }
        if let Some(d @ syn::Expr::Lit(_)) = p.opt("lookback") {
            self.cx.error_spanned_by(d, "durafn: `lookback` is a `Duration` (`lookback = Duration::from_secs(300)`): how long before the wait a matching event may have arrived");
        }
        if let Some(x) = p.opt("if") {
            if prim::lit_str(x).is_none() {
                self.cx.error_spanned_by(x, "durafn: `if` is a CEL expression in a string literal, over `event` (the run's trigger) and `async` (the awaited event)");
            }
        }
    }
}

impl<'ast> Visit<'ast> for Checker<'_> {
    fn visit_block(&mut self, b: &'ast syn::Block) {
        self.scoped(Vec::new(), |c| visit::visit_block(c, b));
    }

    fn visit_local(&mut self, l: &'ast syn::Local) {
        for attr in &l.attrs {
            self.visit_attribute(attr);
        }
        if let Some(init) = &l.init {
            self.visit_expr(&init.expr);
            if let Some((_, diverge)) = &init.diverge {
                self.visit_expr(diverge);
            }
        }
        self.visit_pat(&l.pat);
        let ty = l
            .init
            .as_ref()
            .map_or(Ty::Unknown, |i| self.expr_ty(&i.expr));
        self.bind_typed(&l.pat, ty);
    }

    fn visit_expr_let(&mut self, e: &'ast syn::ExprLet) {
        self.visit_expr(&e.expr);
        self.bind(&e.pat);
    }

    fn visit_arm(&mut self, arm: &'ast syn::Arm) {
        let mut names = Vec::new();
        bindings(&arm.pat, &mut names);
        self.scoped(names, |c| visit::visit_arm(c, arm));
    }

    fn visit_expr_for_loop(&mut self, f: &'ast syn::ExprForLoop) {
        self.visit_expr(&f.expr);
        self.hash_order(&f.expr, first_site(&f.body), "this loop iterates");
        let mut names = Vec::new();
        bindings(&f.pat, &mut names);
        self.scoped(names, |c| c.visit_block(&f.body));
    }

    fn visit_expr_closure(&mut self, cl: &'ast syn::ExprClosure) {
        let mut names = Vec::new();
        for p in &cl.inputs {
            bindings(p, &mut names);
        }
        self.nested(|c| c.scoped(names, |c| c.visit_expr(&cl.body)));
    }

    fn visit_expr_async(&mut self, a: &'ast syn::ExprAsync) {
        self.nested(|c| c.visit_block(&a.block));
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.scopes
            .last_mut()
            .expect("a scope")
            .push((f.sig.ident.to_string(), Ty::Unknown));
        let mut names = Vec::new();
        for input in &f.sig.inputs {
            if let syn::FnArg::Typed(t) = input {
                bindings(&t.pat, &mut names);
            }
        }
        self.nested(|c| c.scoped(names, |c| c.visit_block(&f.block)));
    }

    fn visit_item_static(&mut self, s: &'ast syn::ItemStatic) {
        if let syn::StaticMutability::Mut(m) = &s.mutability {
            if self.unchecked == 0 {
                self.cx.error_at(m.span.join(s.ident.span()).unwrap_or(m.span), "durafn: a `static mut` is process state that replay does not restore, so a replayed run sees another value; keep state in local variables and return it from steps");
            }
        }
        let ty = &s.ty;
        let kind = effects::statics(&index::type_idents(ty));
        let decl = format!("{}: {}", s.ident, quote::quote!(#ty))
            .replace(" < ", "<")
            .replace(" >", ">");
        self.statics.push((s.ident.to_string(), kind, decl));
        visit::visit_item_static(self, s);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.uses.extend(index::block_uses(u));
    }

    fn visit_expr_reference(&mut self, r: &'ast syn::ExprReference) {
        if self.in_step() && r.mutability.is_some() {
            self.mutation(&r.expr, r, "this step body takes `&mut` of");
        }
        visit::visit_expr_reference(self, r);
    }

    fn visit_expr_unsafe(&mut self, u: &'ast syn::ExprUnsafe) {
        if self.outside_rules() {
            self.cx.error_spanned_by(u.unsafe_token, "durafn: an `unsafe` block outside a step can have effects the journal cannot see, and they repeat on every replay; move it into a `step!`, or vouch for it with `unchecked!(\"why it is replay-safe\", ..)`");
        }
        visit::visit_expr_unsafe(self, u);
    }

    fn visit_expr_await(&mut self, e: &'ast syn::ExprAwait) {
        if let Expr::Macro(m) = &*e.base {
            if let Some(kind) = prim::kind_of(&m.mac).filter(|k| k.is_site()) {
                self.cx.error_spanned_by(
                    e.await_token,
                    format!(
                        "durafn: `{}` already awaits; remove this `.await`",
                        kind.name()
                    ),
                );
                self.visit_expr(&e.base);
                return;
            }
        }
        if self.outside_rules() {
            let on_ctx = match &*e.base {
                Expr::MethodCall(m) => {
                    matches!(root_ident(&m.receiver), Some(i) if Some(i.to_string()) == self.ctx_ident)
                }
                _ => false,
            };
            if !on_ctx {
                self.cx.error_spanned_by(e.await_token, "durafn: `.await` outside a step runs again on every replay, so its effect repeats and its result may differ; move it into `step!(\"name\", { .. })`, which runs it once and journals the result");
            }
        }
        // An awaited call on an outside binding is an effect on an outside
        // service (`db.insert(row).await`), not a mutation of local state.
        if let Expr::MethodCall(m) = &*e.base {
            self.visit_expr(&m.receiver);
            for a in &m.args {
                self.visit_expr(a);
            }
            return;
        }
        visit::visit_expr_await(self, e);
    }

    fn visit_expr_assign(&mut self, e: &'ast syn::ExprAssign) {
        if self.in_step() {
            self.mutation(&e.left, &e.left, "this step body assigns to");
        }
        visit::visit_expr_assign(self, e);
    }

    fn visit_expr_binary(&mut self, e: &'ast syn::ExprBinary) {
        use syn::BinOp::*;
        let compound = matches!(
            e.op,
            AddAssign(_)
                | SubAssign(_)
                | MulAssign(_)
                | DivAssign(_)
                | RemAssign(_)
                | BitXorAssign(_)
                | BitAndAssign(_)
                | BitOrAssign(_)
                | ShlAssign(_)
                | ShrAssign(_)
        );
        if compound && self.in_step() {
            self.mutation(&e.left, &e.left, "this step body assigns to");
        }
        visit::visit_expr_binary(self, e);
    }

    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        let method = m.method.to_string();
        if self.in_step() && MUTATING_METHODS.contains(&method.as_str()) {
            self.mutation(
                &m.receiver,
                &m.receiver,
                &format!("this step body calls `.{method}(..)` on"),
            );
        }
        if self.outside_rules() {
            self.method_use(m);
        }
        visit::visit_expr_method_call(self, m);
    }

    fn visit_expr_path(&mut self, e: &'ast syn::ExprPath) {
        if self.outside_rules() && e.qself.is_none() {
            self.path_use(e);
        }
        visit::visit_expr_path(self, e);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        if let Some(kind) = prim::kind_of(mac) {
            self.primitive(mac, kind);
            return;
        }
        let name = mac
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        let std_like = mac.path.segments.len() <= 2 && !self.index.defines_macro(&name);
        if self.outside_rules() && std_like && effects::PRINT_MACROS.contains(&name.as_str()) {
            self.cx.error_spanned_by(mac, format!(
                "durafn: `{name}!` outside a step writes to the process's output again on every replay; use `ctx.log(..)`, which prints once per run, or move it into a step"
            ));
        }
        if self.outside_rules() && std_like && effects::AWAIT_MACROS.contains(&name.as_str()) {
            self.cx.error_spanned_by(mac, format!(
                "durafn: `{name}!` outside a step awaits the futures it is given (an `.await` hidden in a macro is still an `.await`), so their effects repeat on every replay and their results may differ; make each one a step (`parallel!` runs a step per item concurrently), or put the whole `{name}!` in a `step!`"
            ));
        }
        // Look into the arguments of expression-like macros (`format!`,
        // `vec!`, `assert!`), best effort.
        for a in &prim::expr_args(mac) {
            visit_local_expr(self, a);
        }
    }
}

/// The ID of the first step site in `block` that runs as part of it (not
/// in a closure, where R8 applies).
fn first_site(block: &syn::Block) -> Option<String> {
    struct Find(Option<String>);
    impl<'ast> Visit<'ast> for Find {
        fn visit_macro(&mut self, mac: &'ast syn::Macro) {
            if self.0.is_some() {
                return;
            }
            if let Some(kind) = prim::kind_of(mac).filter(|k| k.is_site()) {
                if let Ok(p) = prim::parse(mac, kind) {
                    self.0 = Some(
                        p.lit()
                            .map_or_else(|| kind.name().to_string(), |l| l.value()),
                    );
                }
                return;
            }
            for a in &prim::expr_args(mac) {
                <Find as Visit<'_>>::visit_expr(self, a);
            }
        }
        fn visit_expr_closure(&mut self, _: &'ast syn::ExprClosure) {}
        fn visit_expr_async(&mut self, _: &'ast syn::ExprAsync) {}
        fn visit_item(&mut self, _: &'ast syn::Item) {}
    }
    let mut f = Find(None);
    f.visit_block(block);
    f.0
}
