//! What one fn of the crate does, found once when the index is built: the
//! effects in its body and the crate fns it calls, in source order, with
//! their lines. A durable fn that calls it outside a step is traced
//! through these.

use std::collections::HashMap;

use syn::visit::{self, Visit};
use syn::Expr;

use super::build::line_of;
use super::resolve::Env;
use super::{Does, Fact, Index, ItemPath, Loc, Resolved, Ty};
use crate::effects::{self, Statics};

pub(super) fn facts(
    index: &Index,
    module: &[String],
    self_ty: Option<&ItemPath>,
    file: usize,
    sig: &syn::Signature,
    block: &syn::Block,
) -> Vec<Fact> {
    let env = Env {
        index,
        module,
        self_ty,
        uses: &[],
    };
    let mut s = Summary {
        env,
        file,
        locals: HashMap::new(),
        facts: Vec::new(),
    };
    for input in &sig.inputs {
        match input {
            syn::FnArg::Receiver(_) => {
                let ty = self_ty.map_or(Ty::Unknown, |t| Ty::Crate(t.clone()));
                s.locals.insert("self".into(), ty);
            }
            syn::FnArg::Typed(t) => {
                let ty = s.env.ty(&t.ty);
                s.bind(&t.pat, ty);
            }
        }
    }
    s.visit_block(block);
    s.facts
}

struct Summary<'a> {
    env: Env<'a>,
    file: usize,
    /// Every name bound anywhere in the fn (a flat approximation of
    /// scopes: a name bound as a local is never taken for an item).
    locals: HashMap<String, Ty>,
    facts: Vec<Fact>,
}

impl Summary<'_> {
    fn bind(&mut self, pat: &syn::Pat, ty: Ty) {
        match pat {
            syn::Pat::Ident(i) if i.subpat.is_none() => {
                self.locals.insert(i.ident.to_string(), ty);
            }
            syn::Pat::Type(t) => {
                let ty = self.env.ty(&t.ty);
                self.bind(&t.pat, ty);
            }
            other => {
                struct Names<'m>(&'m mut HashMap<String, Ty>);
                impl<'ast> Visit<'ast> for Names<'_> {
                    fn visit_pat_ident(&mut self, i: &'ast syn::PatIdent) {
                        self.0.insert(i.ident.to_string(), Ty::Unknown);
                        visit::visit_pat_ident(self, i);
                    }
                }
                Names(&mut self.locals).visit_pat(other);
            }
        }
    }

    fn fact(&mut self, what: Does, shown: String, span: proc_macro2::Span) {
        self.facts.push(Fact {
            what,
            shown,
            at: Loc {
                file: self.file,
                line: line_of(span),
            },
        });
    }

    fn ty_of(&self, e: &Expr) -> Ty {
        let locals = &self.locals;
        self.env.expr_ty(e, &|n| locals.get(n).cloned())
    }
}

fn shown(path: &syn::Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

impl<'ast> Visit<'ast> for Summary<'_> {
    fn visit_local(&mut self, l: &'ast syn::Local) {
        if let Some(init) = &l.init {
            self.visit_expr(&init.expr);
            if let Some((_, d)) = &init.diverge {
                self.visit_expr(d);
            }
        }
        let ty = l.init.as_ref().map_or(Ty::Unknown, |i| self.ty_of(&i.expr));
        self.bind(&l.pat, ty);
    }

    fn visit_pat(&mut self, p: &'ast syn::Pat) {
        // Closure parameters, `for` and `match` patterns.
        self.bind(p, Ty::Unknown);
    }

    fn visit_item(&mut self, _: &'ast syn::Item) {
        // Items nested in a body are not part of it.
    }

    fn visit_expr_path(&mut self, e: &'ast syn::ExprPath) {
        if e.qself.is_some() {
            return;
        }
        if let Some(i) = e.path.get_ident() {
            if self.locals.contains_key(&i.to_string()) {
                return;
            }
        }
        let span = e.path.segments[0].ident.span();
        match self.env.resolve(&e.path) {
            Resolved::Crate(p) => {
                let index = self.env.index;
                if index.is_fn(&p) {
                    self.fact(Does::Call(p), shown(&e.path), span);
                } else if let Some(s) = index.static_at(&p) {
                    if s.kind == Statics::Mutable {
                        let what = Does::Effect(&effects::GLOBAL);
                        self.fact(what, s.shown.clone(), span);
                    }
                }
            }
            Resolved::External(p) => {
                if let Some(effect) = effects::of_path(&p) {
                    self.fact(Does::Effect(effect), shown(&e.path), span);
                }
            }
        }
    }

    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        // The receiver runs first: its facts come first.
        self.visit_expr(&m.receiver);
        let method = m.method.to_string();
        let span = m.method.span();
        let own = match self.ty_of(&m.receiver) {
            Ty::Crate(t) => {
                let mut p = t;
                p.push(method.clone());
                self.env.index.is_fn(&p).then_some(p)
            }
            _ => None,
        };
        if let Some(p) = own {
            let shown = self.env.index.fn_shown(&p).unwrap_or(&method).to_string();
            self.fact(Does::Call(p), shown, span);
        } else if let Some(effect) = effects::of_method(&method) {
            self.fact(Does::Effect(effect), format!(".{method}()"), span);
        } else if method == "set" {
            if let Expr::Path(p) = &*m.receiver {
                if let Resolved::Crate(path) = self.env.resolve(&p.path) {
                    if let Some(s) = self.env.index.static_at(&path) {
                        if s.kind == Statics::SetOnce {
                            let shown = s.shown.clone();
                            self.fact(Does::Effect(&effects::GLOBAL), shown, span);
                        }
                    }
                }
            }
        }
        for a in &m.args {
            self.visit_expr(a);
        }
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        let name = mac
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        if effects::PRINT_MACROS.contains(&name.as_str()) && mac.path.segments.len() <= 2 {
            let span = mac.path.segments[0].ident.span();
            self.fact(Does::Effect(&effects::STDIO), format!("{name}!"), span);
        }
        // The arguments of expression-like macros (`format!`, `vec!`).
        for a in &crate::prim::expr_args(mac) {
            self.visit_expr(a);
        }
    }
}
