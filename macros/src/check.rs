//! Stage 2: walk the body and collect every replay-safety violation.
//!
//! The rules (DESIGN 2.1): outside a step, no `.await` on anything but a
//! durafn primitive (R1), no writes to the process's stdout/stderr/stdin
//! (R2), no well-known non-deterministic or effectful calls (R3); inside a
//! step, no mutation of bindings from outside the step (R4) and no nested
//! primitive (R5); anywhere, unique literal IDs (R6, R7) and no primitive in
//! a closure or nested fn (R8). R9 (serializable outputs) is a trait bound
//! in the expansion. `unchecked!("reason", ..)` switches R1–R4 off for code
//! the developer vouches for.
//!
//! The check is token-level: it sees paths as written, not what a `use`
//! imported, and it does not look into called functions.

use std::collections::HashMap;

use proc_macro2::Span;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit::{self, Visit};
use syn::{Expr, Pat, Token};

use crate::ctxt::Ctxt;
use crate::prim::{self, Kind};

pub fn body(cx: &Ctxt, block: &syn::Block, params: &[&Pat], ctx_ident: Option<&syn::Ident>) {
    let mut base = Vec::new();
    for p in params {
        bindings(p, &mut base);
    }
    let mut c = Checker {
        cx,
        ctx_ident: ctx_ident.map(|i| i.to_string()),
        scopes: vec![base],
        step_base: None,
        closure_depth: 0,
        unchecked: 0,
        ids: Vec::new(),
    };
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
    ctx_ident: Option<String>,
    /// Names bound in each enclosing scope, outermost first.
    scopes: Vec<Vec<String>>,
    /// Inside a step body: the index of the first scope that belongs to it.
    step_base: Option<usize>,
    /// Closures, async blocks and nested fns outside any step body.
    closure_depth: u32,
    unchecked: u32,
    ids: Vec<syn::LitStr>,
}

/// What a flagged call does, and what to write instead.
struct Effect {
    what: &'static str,
    instead: &'static str,
}

const CLOCK: Effect = Effect {
    what: "reads the clock, which returns a different value on every replay, so the run may take another path",
    instead: "use `ctx.now().await`, which is journaled and returns the same time on replay",
};
const RANDOM: Effect = Effect {
    what: "draws a random value, which differs on every replay, so the run may take another path",
    instead: "use `ctx.random().await` or `ctx.uuid().await`, which are journaled",
};
const FS: Effect = Effect {
    what: "touches the file system again on every replay",
    instead: "move it into `step!(\"name\", { .. })` so it runs once and its result is journaled",
};
const NET: Effect = Effect {
    what: "opens a network connection again on every replay",
    instead: "move it into `step!(\"name\", { .. })` so it runs once and its result is journaled",
};
const PROCESS: Effect = Effect {
    what: "reads or changes the process environment, which can differ between replays (another process, another deploy)",
    instead: "move it into `step!(\"name\", { .. })` so its result is journaled, or pass the value in the event",
};
const SPAWN: Effect = Effect {
    what: "starts a thread or task again on every replay, and the journal cannot see its work",
    instead: "do the work in a `step!` (several steps in a loop each get their own ID)",
};
const SLEEP: Effect = Effect {
    what: "waits in process memory only, so the wait is lost on a crash or deploy",
    instead: "use `sleep!(\"name\", duration)`, a durable timer that survives restarts",
};
const STDIO: Effect = Effect {
    what:
        "uses the process's standard input or output, so it prints or reads again on every replay",
    instead: "use `ctx.log(..)`, which prints once, or move it into a step",
};

/// Path suffixes of well-known effects. `*` matches any last segment.
const EFFECTS: &[(&[&str], &Effect)] = &[
    (&["Instant", "now"], &CLOCK),
    (&["SystemTime", "now"], &CLOCK),
    (&["Utc", "now"], &CLOCK),
    (&["Local", "now"], &CLOCK),
    (&["OffsetDateTime", "now_utc"], &CLOCK),
    (&["OffsetDateTime", "now_local"], &CLOCK),
    (&["Timestamp", "now"], &CLOCK),
    (&["Zoned", "now"], &CLOCK),
    (&["rand", "random"], &RANDOM),
    (&["rand", "rng"], &RANDOM),
    (&["thread_rng"], &RANDOM),
    (&["random"], &RANDOM),
    (&["Uuid", "new_v4"], &RANDOM),
    (&["Uuid", "now_v7"], &RANDOM),
    (&["OsRng"], &RANDOM),
    (&["fs", "*"], &FS),
    (&["File", "open"], &FS),
    (&["File", "create"], &FS),
    (&["File", "options"], &FS),
    (&["OpenOptions", "new"], &FS),
    (&["TcpStream", "connect"], &NET),
    (&["TcpListener", "bind"], &NET),
    (&["UdpSocket", "bind"], &NET),
    (&["UnixStream", "connect"], &NET),
    (&["Command", "new"], &PROCESS),
    (&["env", "var"], &PROCESS),
    (&["env", "var_os"], &PROCESS),
    (&["env", "vars"], &PROCESS),
    (&["env", "set_var"], &PROCESS),
    (&["env", "remove_var"], &PROCESS),
    (&["env", "args"], &PROCESS),
    (&["env", "current_dir"], &PROCESS),
    (&["thread", "spawn"], &SPAWN),
    (&["tokio", "spawn"], &SPAWN),
    (&["task", "spawn"], &SPAWN),
    (&["task", "spawn_local"], &SPAWN),
    (&["spawn_blocking"], &SPAWN),
    (&["spawn"], &SPAWN),
    (&["thread", "sleep"], &SLEEP),
    (&["time", "sleep"], &SLEEP),
    (&["time", "sleep_until"], &SLEEP),
    (&["io", "stdout"], &STDIO),
    (&["io", "stderr"], &STDIO),
    (&["io", "stdin"], &STDIO),
    (&["stdout"], &STDIO),
    (&["stderr"], &STDIO),
    (&["stdin"], &STDIO),
];

const PRINT_MACROS: &[&str] = &["println", "print", "eprintln", "eprint", "dbg"];

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
    fn in_step(&self) -> bool {
        self.step_base.is_some()
    }

    /// R1–R3 apply: outside step bodies and outside `unchecked!`.
    fn outside_rules(&self) -> bool {
        !self.in_step() && self.unchecked == 0
    }

    fn is_local(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.iter().any(|n| n == name))
    }

    /// Declared outside the current step body (and not shadowed inside it).
    fn declared_outside_step(&self, name: &str) -> bool {
        let Some(base) = self.step_base else {
            return false;
        };
        for (i, scope) in self.scopes.iter().enumerate().rev() {
            if scope.iter().any(|n| n == name) {
                return i < base;
            }
        }
        false
    }

    fn bind(&mut self, p: &Pat) {
        let mut names = Vec::new();
        bindings(p, &mut names);
        self.scopes.last_mut().expect("a scope").extend(names);
    }

    fn scoped(&mut self, names: Vec<String>, f: impl FnOnce(&mut Self)) {
        self.scopes.push(names);
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

    fn mutation(&self, target: &Expr, span: Span, how: &str) {
        if self.unchecked > 0 {
            return;
        }
        if let Some(ident) = root_ident(target) {
            let name = ident.to_string();
            if self.declared_outside_step(&name) {
                self.cx.error_at(span, format!(
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
        self.bind(&l.pat);
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
            .push(f.sig.ident.to_string());
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
        visit::visit_item_static(self, s);
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
            self.mutation(&e.left, e.span(), "this step body assigns to");
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
            self.mutation(&e.left, e.span(), "this step body assigns to");
        }
        visit::visit_expr_binary(self, e);
    }

    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        let method = m.method.to_string();
        if self.in_step() && MUTATING_METHODS.contains(&method.as_str()) {
            self.mutation(
                &m.receiver,
                m.span(),
                &format!("this step body calls `.{method}(..)` on"),
            );
        }
        visit::visit_expr_method_call(self, m);
    }

    fn visit_expr_path(&mut self, e: &'ast syn::ExprPath) {
        if self.outside_rules() && e.qself.is_none() {
            let segs = path_strings(&e.path);
            let local = segs.len() == 1 && self.is_local(&segs[0]);
            if !local {
                for (pat, effect) in EFFECTS {
                    if segs.len() < pat.len()
                        || (pat.len() == 1
                            && segs.len() != 1
                            && !["thread_rng", "spawn_blocking", "OsRng"].contains(&pat[0]))
                    {
                        continue;
                    }
                    let tail = &segs[segs.len() - pat.len()..];
                    let hit = tail
                        .iter()
                        .zip(pat.iter())
                        .all(|(s, p)| *p == "*" || s == p);
                    if hit {
                        let shown = segs.join("::");
                        self.cx.error_spanned_by(
                            e,
                            format!(
                                "durafn: `{shown}` outside a step {}; {}",
                                effect.what, effect.instead
                            ),
                        );
                        break;
                    }
                }
            }
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
        if self.outside_rules()
            && PRINT_MACROS.contains(&name.as_str())
            && mac.path.segments.len() <= 2
        {
            self.cx.error_spanned_by(mac, format!(
                "durafn: `{name}!` outside a step writes to the process's output again on every replay; use `ctx.log(..)`, which prints once per run, or move it into a step"
            ));
        }
        // Look into the arguments of expression-like macros (`format!`,
        // `vec!`, `assert!`), best effort.
        if let Ok(args) = mac.parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated) {
            for a in &args {
                visit_local_expr(self, a);
            }
        }
    }
}
