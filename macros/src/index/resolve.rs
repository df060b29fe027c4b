//! Name resolution in the index: paths through `use` items (2018 rules:
//! `crate`, `self`, `super`, names of the module, renames, globs,
//! re-exports), and the few types the check cares about.

use super::{Index, Item, ItemPath, Resolved, Ty};
use crate::effects::{self, HASH_TYPES};

/// How many `use` hops a path may take before the resolver gives up.
const MAX_HOPS: usize = 16;

fn joined(a: &[String], b: &[String]) -> ItemPath {
    a.iter().chain(b).cloned().collect()
}

impl Index {
    /// Resolve `segs`, written in `module` (in an impl of `self_ty`).
    pub(super) fn resolve(
        &self,
        module: &[String],
        segs: &[String],
        self_ty: Option<&ItemPath>,
    ) -> Resolved {
        self.resolve_in(module, segs, self_ty, 0)
    }

    /// Resolve a `use` path, or a path spliced from one.
    pub(super) fn resolve_use(&self, module: &[String], segs: &[String]) -> Resolved {
        self.resolve_in(module, segs, None, 0)
    }

    fn resolve_in(
        &self,
        module: &[String],
        segs: &[String],
        self_ty: Option<&ItemPath>,
        hops: usize,
    ) -> Resolved {
        let Some(first) = segs.first() else {
            return Resolved::External(Vec::new());
        };
        if hops > MAX_HOPS {
            return Resolved::External(segs.to_vec());
        }
        match first.as_str() {
            "crate" => return self.canon(&segs[1..], hops),
            "self" => return self.canon(&joined(module, &segs[1..]), hops),
            "super" => {
                let ups = segs.iter().take_while(|s| *s == "super").count();
                let base = &module[..module.len().saturating_sub(ups)];
                return self.canon(&joined(base, &segs[ups..]), hops);
            }
            "Self" => {
                return match self_ty {
                    Some(t) => self.canon(&joined(t, &segs[1..]), hops),
                    None => Resolved::External(segs.to_vec()),
                }
            }
            _ => {}
        }
        let Some(m) = self.modules.get(module) else {
            return Resolved::External(segs.to_vec());
        };
        if m.items.contains_key(first) {
            return self.canon(&joined(module, segs), hops);
        }
        if let Some(u) = m.uses.iter().find(|u| u.name == *first) {
            return self.resolve_in(module, &joined(&u.path, &segs[1..]), None, hops + 1);
        }
        // Globs: an item of a crate module wins; a name from an external
        // module (`use std::fs::*`) counts only when it is a known effect.
        let mut external = None;
        for g in m.uses.iter().filter(|u| u.name.is_empty()) {
            match self.resolve_in(module, &g.path, None, hops + 1) {
                Resolved::Crate(p) => {
                    let has = self.modules.get(&p).is_some_and(|t| {
                        t.items.contains_key(first) || t.uses.iter().any(|u| u.name == *first)
                    });
                    if has {
                        return self.canon(&joined(&p, segs), hops + 1);
                    }
                }
                // Only a fn's name: a capitalized one is a type or a
                // variant (`Ok`), from the prelude more likely than not.
                Resolved::External(p)
                    if segs.len() == 1
                        && first.starts_with(|c: char| c.is_ascii_lowercase())
                        && first != "drop" =>
                {
                    let full = joined(&p, segs);
                    if external.is_none() && effects::of_path(&full).is_some() {
                        external = Some(full);
                    }
                }
                Resolved::External(_) => {}
            }
        }
        Resolved::External(external.unwrap_or_else(|| segs.to_vec()))
    }

    /// A path from the crate root, with re-exports followed.
    fn canon(&self, path: &[String], hops: usize) -> Resolved {
        let mut cur: ItemPath = Vec::new();
        for (i, seg) in path.iter().enumerate() {
            let Some(m) = self.modules.get(&cur) else {
                return Resolved::Crate(path.to_vec());
            };
            match m.items.get(seg) {
                Some(Item::Mod) => cur.push(seg.clone()),
                Some(_) => return Resolved::Crate(joined(&cur, &path[i..])),
                None => {
                    if let Some(u) = m.uses.iter().find(|u| u.name == *seg) {
                        return self.resolve_in(
                            &cur,
                            &joined(&u.path, &path[i + 1..]),
                            None,
                            hops + 1,
                        );
                    }
                    for g in m.uses.iter().filter(|u| u.name.is_empty()) {
                        if let Resolved::Crate(p) = self.resolve_in(&cur, &g.path, None, hops + 1) {
                            if self
                                .modules
                                .get(&p)
                                .is_some_and(|t| t.items.contains_key(seg))
                            {
                                return self.canon(&joined(&p, &path[i..]), hops + 1);
                            }
                        }
                    }
                    return Resolved::Crate(path.to_vec());
                }
            }
        }
        Resolved::Crate(cur)
    }

    fn is_type(&self, path: &[String]) -> bool {
        let Some((name, module)) = path.split_last() else {
            return false;
        };
        self.modules
            .get(module)
            .and_then(|m| m.items.get(name))
            .is_some_and(|i| matches!(i, Item::Type))
    }

    /// The type `ty` denotes in `module`, as far as the check needs.
    pub(super) fn ty_of(
        &self,
        module: &[String],
        ty: &syn::Type,
        self_ty: Option<&ItemPath>,
    ) -> Ty {
        match ty {
            syn::Type::Reference(r) => self.ty_of(module, &r.elem, self_ty),
            syn::Type::Paren(p) => self.ty_of(module, &p.elem, self_ty),
            syn::Type::Group(g) => self.ty_of(module, &g.elem, self_ty),
            syn::Type::Path(p) if p.qself.is_none() => {
                let Some(last) = p.path.segments.last() else {
                    return Ty::Unknown;
                };
                let args: Vec<&syn::Type> = match &last.arguments {
                    syn::PathArguments::AngleBracketed(a) => a
                        .args
                        .iter()
                        .filter_map(|g| match g {
                            syn::GenericArgument::Type(t) => Some(t),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let segs: Vec<String> = p
                    .path
                    .segments
                    .iter()
                    .map(|s| s.ident.to_string())
                    .collect();
                let resolved = match p.path.leading_colon {
                    Some(_) => Resolved::External(segs.clone()),
                    None => self.resolve(module, &segs, self_ty),
                };
                if let Resolved::Crate(c) = resolved {
                    if let Some(t) = self.aliases.get(&c) {
                        return t.clone();
                    }
                    return match self.is_type(&c) {
                        true => Ty::Crate(c),
                        false => Ty::Unknown,
                    };
                }
                let name = last.ident.to_string();
                if HASH_TYPES.contains(&name.as_str()) {
                    // One more type argument is the hasher: one of the
                    // caller's choosing may well iterate the same everywhere.
                    let plain = if name.ends_with("Set") { 1 } else { 2 };
                    return match args.len() <= plain {
                        true => Ty::Hash(name),
                        false => Ty::Unknown,
                    };
                }
                match (name.as_str(), args.first()) {
                    ("Box" | "Arc" | "Rc", Some(inner)) => self.ty_of(module, inner, self_ty),
                    ("Event", inner) => Ty::Event(Box::new(
                        inner.map_or(Ty::Unknown, |t| self.ty_of(module, t, self_ty)),
                    )),
                    _ => Ty::Unknown,
                }
            }
            _ => Ty::Unknown,
        }
    }

    /// What a fn returns, through `Result` and `Option` (so that
    /// `Client::new(..)?` is a `Client`).
    pub(super) fn returns_of(
        &self,
        module: &[String],
        sig: &syn::Signature,
        self_ty: Option<&ItemPath>,
    ) -> Ty {
        let syn::ReturnType::Type(_, ty) = &sig.output else {
            return Ty::Unknown;
        };
        let mut ty: &syn::Type = ty;
        while let syn::Type::Path(p) = ty {
            let Some(last) = p.path.segments.last() else {
                break;
            };
            let wrapper = matches!(last.ident.to_string().as_str(), "Result" | "Option");
            let first = match &last.arguments {
                syn::PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
                    syn::GenericArgument::Type(t) => Some(t),
                    _ => None,
                }),
                _ => None,
            };
            match (wrapper, first) {
                (true, Some(inner)) => ty = inner,
                _ => break,
            }
        }
        self.ty_of(module, ty, self_ty)
    }
}

/// Where a path or an expression is looked at: a module of the index, the
/// impl it is in, and the `use` items of the enclosing body.
pub struct Env<'a> {
    pub index: &'a Index,
    pub module: &'a [String],
    pub self_ty: Option<&'a ItemPath>,
    pub uses: &'a [(String, ItemPath)],
}

impl Env<'_> {
    pub fn resolve(&self, path: &syn::Path) -> Resolved {
        let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if path.leading_colon.is_some() || segs.is_empty() {
            return Resolved::External(segs);
        }
        if let Some((_, to)) = self.uses.iter().rev().find(|(n, _)| *n == segs[0]) {
            return self.index.resolve_use(self.module, &joined(to, &segs[1..]));
        }
        self.index.resolve(self.module, &segs, self.self_ty)
    }

    pub fn ty(&self, ty: &syn::Type) -> Ty {
        self.index.ty_of(self.module, ty, self.self_ty)
    }

    /// The type of an expression, from what the index knows: locals (by
    /// `local`), fields of the crate's structs, what crate fns return,
    /// `HashMap::new()`, `collect::<HashMap<..>>()`.
    pub fn expr_ty(&self, e: &syn::Expr, local: &dyn Fn(&str) -> Option<Ty>) -> Ty {
        use syn::Expr as E;
        match e {
            E::Path(p) if p.qself.is_none() => match p.path.get_ident() {
                Some(i) => local(&i.to_string()).unwrap_or(Ty::Unknown),
                None => Ty::Unknown,
            },
            E::Field(f) => {
                let syn::Member::Named(name) = &f.member else {
                    return Ty::Unknown;
                };
                match self.expr_ty(&f.base, local) {
                    Ty::Crate(t) => self.index.field(&t, &name.to_string()),
                    Ty::Event(inner) if name == "data" => *inner,
                    _ => Ty::Unknown,
                }
            }
            E::Reference(r) => self.expr_ty(&r.expr, local),
            E::Paren(p) => self.expr_ty(&p.expr, local),
            E::Group(g) => self.expr_ty(&g.expr, local),
            E::Try(t) => self.expr_ty(&t.expr, local),
            E::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => self.expr_ty(&u.expr, local),
            E::Call(c) => {
                let E::Path(p) = &*c.func else {
                    return Ty::Unknown;
                };
                match self.resolve(&p.path) {
                    Resolved::Crate(path) if self.index.fns.contains_key(&path) => {
                        self.index.returns(&path)
                    }
                    Resolved::Crate(path) if self.index.is_type(&path) => Ty::Crate(path),
                    Resolved::Crate(_) => Ty::Unknown,
                    Resolved::External(path) => {
                        let n = path.len();
                        let ctor = ["new", "with_capacity", "default", "from", "from_iter"];
                        match n >= 2
                            && HASH_TYPES.contains(&path[n - 2].as_str())
                            && ctor.contains(&path[n - 1].as_str())
                        {
                            true => Ty::Hash(path[n - 2].clone()),
                            false => Ty::Unknown,
                        }
                    }
                }
            }
            E::Struct(s) => match self.resolve(&s.path) {
                Resolved::Crate(path) if self.index.is_type(&path) => Ty::Crate(path),
                _ => Ty::Unknown,
            },
            E::MethodCall(m) => {
                let method = m.method.to_string();
                if method == "collect" {
                    let target = m.turbofish.as_ref().and_then(|t| {
                        t.args.iter().find_map(|a| match a {
                            syn::GenericArgument::Type(t) => Some(t),
                            _ => None,
                        })
                    });
                    return target.map_or(Ty::Unknown, |t| self.ty(t));
                }
                match self.expr_ty(&m.receiver, local) {
                    Ty::Crate(t) => self.index.returns(&joined(&t, &[method])),
                    ty @ Ty::Hash(_) if method == "clone" => ty,
                    _ => Ty::Unknown,
                }
            }
            _ => Ty::Unknown,
        }
    }
}
