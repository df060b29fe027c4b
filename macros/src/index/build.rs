//! Building the index: find the crate root, walk the module tree, record
//! each module's items and `use`s, then summarize every fn.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Token};

use super::{
    modified, FnInfo, Index, Item, ItemPath, Loc, Module, SourceFile, StaticInfo, Ty, Use,
};
use crate::effects;

/// The crate roots that may hold `file`, most likely first, from what
/// cargo tells the compiler (`CARGO_CRATE_NAME`, `CARGO_BIN_NAME`).
pub(super) fn roots(file: &Path, target: &super::Target) -> Vec<PathBuf> {
    let Some(m) = target.manifest.as_deref() else {
        return Vec::new();
    };
    let krate = target.krate.clone();
    let bin = target.bin.clone();
    let names: Vec<String> = [krate.clone(), krate.replace('_', "-")]
        .into_iter()
        .chain(bin.clone())
        .filter(|n| !n.is_empty())
        .collect();
    let mut out = Vec::new();
    for dir in ["tests", "examples", "benches", "src/bin"] {
        for n in &names {
            out.push(m.join(dir).join(format!("{n}.rs")));
            out.push(m.join(dir).join(n).join("main.rs"));
        }
    }
    let (lib, main) = (m.join("src/lib.rs"), m.join("src/main.rs"));
    if bin.is_some() {
        out.extend([main, lib]);
    } else {
        out.extend([lib, main]);
    }
    // A root that is not under the directory of the file is not its root.
    out.retain(|r| r.is_file() && r.parent().is_some_and(|d| file.starts_with(d)));
    out.dedup();
    out
}

struct Builder<'m> {
    index: Index,
    manifest: Option<&'m Path>,
    root_dir: PathBuf,
    /// Fns, impls and structs seen, summarized once every module is known.
    fns: Vec<(ItemPath, usize, syn::ItemFn)>,
    methods: Vec<(ItemPath, usize, syn::ItemImpl)>,
    structs: Vec<(ItemPath, syn::ItemStruct)>,
    aliases: Vec<(ItemPath, syn::Type)>,
}

/// Parse the crate whose root file is `root`. `None` when the root cannot
/// be read or parsed; a module file that cannot be is left out.
pub(super) fn build(root: &Path, manifest: Option<&Path>) -> Option<Index> {
    let _fallback = Fallback::force();
    let mut b = Builder {
        index: Index::default(),
        manifest,
        root_dir: root.parent()?.to_path_buf(),
        fns: Vec::new(),
        methods: Vec::new(),
        structs: Vec::new(),
        aliases: Vec::new(),
    };
    let (file, ast) = b.parse(root)?;
    let dir = b.root_dir.clone();
    b.module(Vec::new(), file, &ast.items, &dir, &dir);
    Some(b.finish())
}

/// The tokens of a file with the bodies of its durable fns emptied: the
/// attribute checks each body where it expands it, the index needs only
/// their names and places, and they are often most of the file's text
/// (parsing is most of what building the index costs).
pub(super) fn without_durable_bodies(tokens: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    use proc_macro2::{Delimiter, Group, TokenTree};
    let mut out = Vec::new();
    // After `#[durable_fn ..]`: the next brace group is the body.
    let mut durable = false;
    let mut hash = false;
    for tt in tokens {
        let tt = match tt {
            TokenTree::Group(g) if hash && g.delimiter() == Delimiter::Bracket => {
                durable |= names_durable_fn(g.stream());
                TokenTree::Group(g)
            }
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
                let stream = match std::mem::take(&mut durable) {
                    true => proc_macro2::TokenStream::new(),
                    false => without_durable_bodies(g.stream()),
                };
                let mut empty = Group::new(Delimiter::Brace, stream);
                empty.set_span(g.span());
                TokenTree::Group(empty)
            }
            TokenTree::Punct(p) if p.as_char() == ';' => {
                // `#[durable_fn] fn f();` has no body: nothing to empty.
                durable = false;
                TokenTree::Punct(p)
            }
            tt => tt,
        };
        hash = matches!(&tt, TokenTree::Punct(p) if p.as_char() == '#');
        out.push(tt);
    }
    out.into_iter().collect()
}

/// Whether an attribute's tokens (`durable_fn(..)`, `durafn::durable_fn`)
/// name the attribute.
fn names_durable_fn(attr: proc_macro2::TokenStream) -> bool {
    use proc_macro2::TokenTree;
    for tt in attr {
        match tt {
            TokenTree::Ident(i) if i == "durable_fn" => return true,
            TokenTree::Ident(_) | TokenTree::Punct(_) => {}
            _ => return false,
        }
    }
    false
}

/// proc-macro2's own lexer while it lives: the compiler's gives tokens
/// parsed from a string no lines.
struct Fallback;

impl Fallback {
    fn force() -> Fallback {
        proc_macro2::fallback::force();
        Fallback
    }
}

impl Drop for Fallback {
    fn drop(&mut self) {
        proc_macro2::fallback::unforce();
    }
}

fn has_attr(attrs: &[Attribute], name: &str) -> bool {
    attrs
        .iter()
        .any(|a| a.path().segments.last().is_some_and(|s| s.ident == name))
}

fn path_attr(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// `#[cfg(test)]`: left out, so that test-only items do not shadow the
/// real ones.
fn test_only(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

impl Builder<'_> {
    fn parse(&mut self, path: &Path) -> Option<(usize, syn::File)> {
        let path = std::fs::canonicalize(path).ok()?;
        let text = std::fs::read_to_string(&path).ok()?;
        let tokens: proc_macro2::TokenStream = text.parse().ok()?;
        let ast: syn::File = syn::parse2(without_durable_bodies(tokens)).ok()?;
        let shown = self
            .manifest
            .and_then(|m| path.strip_prefix(m).ok())
            .or_else(|| path.strip_prefix(&self.root_dir).ok())
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        self.index.files.push(SourceFile {
            modified: modified(&path),
            path,
            shown,
        });
        Some((self.index.files.len() - 1, ast))
    }

    /// Record module `path` from `items` of `file`. `dir` holds its child
    /// module files; `file_dir` is the file's own directory (where
    /// `#[path]` is relative to).
    fn module(
        &mut self,
        path: ItemPath,
        file: usize,
        items: &[syn::Item],
        dir: &Path,
        file_dir: &Path,
    ) {
        if self.index.modules.contains_key(&path) || path.len() > 32 {
            return;
        }
        self.index.modules.insert(path.clone(), Module::default());
        let mut m = Module::default();
        for item in items {
            self.item(&path, file, item, dir, file_dir, &mut m);
        }
        let slot = self.index.modules.get_mut(&path).expect("inserted above");
        slot.uses.extend(m.uses);
        for (k, v) in m.items {
            slot.items.entry(k).or_insert(v);
        }
    }

    fn item(
        &mut self,
        path: &ItemPath,
        file: usize,
        item: &syn::Item,
        dir: &Path,
        file_dir: &Path,
        m: &mut Module,
    ) {
        use syn::Item as I;
        let name = |i: &syn::Ident| i.to_string();
        match item {
            I::Use(u) => use_tree(&u.tree, Vec::new(), &mut m.uses),
            I::Fn(f) if !test_only(&f.attrs) => {
                m.items.insert(name(&f.sig.ident), Item::Fn);
                if has_attr(&f.attrs, "durable_fn") {
                    let line = f
                        .attrs
                        .iter()
                        .map(|a| line_of(a.pound_token.span))
                        .min()
                        .unwrap_or(0);
                    self.index
                        .durable
                        .push((file, path.clone(), name(&f.sig.ident), line));
                }
                self.fns.push((path.clone(), file, f.clone()));
            }
            I::Mod(md) if !test_only(&md.attrs) => {
                let n = name(&md.ident);
                m.items.insert(n.clone(), Item::Mod);
                let mut child = path.clone();
                child.push(n.clone());
                match &md.content {
                    Some((_, items)) => {
                        let sub = match path_attr(&md.attrs) {
                            Some(p) => dir.join(p),
                            None => dir.join(&n),
                        };
                        self.module(child, file, items, &sub, file_dir);
                    }
                    None => {
                        let candidates = match path_attr(&md.attrs) {
                            Some(p) => vec![file_dir.join(p)],
                            None => vec![dir.join(format!("{n}.rs")), dir.join(&n).join("mod.rs")],
                        };
                        let Some(found) = candidates.into_iter().find(|c| c.is_file()) else {
                            return;
                        };
                        let Some((fi, ast)) = self.parse(&found) else {
                            return;
                        };
                        let fdir = found.parent().map(Path::to_path_buf).unwrap_or_default();
                        let mod_rs = found.file_name().is_some_and(|f| f == "mod.rs")
                            || path_attr(&md.attrs).is_some();
                        let sub = if mod_rs { fdir.clone() } else { fdir.join(&n) };
                        self.module(child, fi, &ast.items, &sub, &fdir);
                    }
                }
            }
            I::Struct(s) => {
                m.items.insert(name(&s.ident), Item::Type);
                let mut p = path.clone();
                p.push(name(&s.ident));
                self.structs.push((p, s.clone()));
            }
            I::Enum(e) => {
                m.items.insert(name(&e.ident), Item::Type);
            }
            I::Type(t) => {
                m.items.insert(name(&t.ident), Item::Type);
                let mut p = path.clone();
                p.push(name(&t.ident));
                self.aliases.push((p, (*t.ty).clone()));
            }
            I::Union(u) => {
                m.items.insert(name(&u.ident), Item::Type);
            }
            I::Trait(t) => {
                m.items.insert(name(&t.ident), Item::Other);
            }
            I::Const(c) => {
                m.items.insert(name(&c.ident), Item::Other);
            }
            I::Static(s) => {
                let info = static_info(&s.ident, &s.ty, file);
                m.items.insert(name(&s.ident), Item::Static(info));
            }
            I::Impl(i) if !test_only(&i.attrs) => {
                self.methods.push((path.clone(), file, i.clone()))
            }
            I::Macro(mac) => {
                let mname = mac.mac.path.segments.last().map(|s| s.ident.to_string());
                if let Some(ident) = &mac.ident {
                    if mname.as_deref() == Some("macro_rules") {
                        self.index.macros.insert(ident.to_string());
                    }
                } else if mname.as_deref() == Some("thread_local") {
                    if let Ok(locals) = mac.mac.parse_body::<ThreadLocals>() {
                        for (ident, ty) in locals.0 {
                            let info = static_info(&ident, &ty, file);
                            m.items.insert(ident.to_string(), Item::Static(info));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn finish(mut self) -> Index {
        for (path, ty) in std::mem::take(&mut self.aliases) {
            let module = &path[..path.len() - 1];
            let t = self.index.ty_of(module, &ty, None);
            if t != Ty::Unknown {
                self.index.aliases.insert(path, t);
            }
        }
        for (path, s) in std::mem::take(&mut self.structs) {
            let module = &path[..path.len() - 1];
            let fields: HashMap<String, Ty> = s
                .fields
                .iter()
                .filter_map(|f| {
                    let name = f.ident.as_ref()?.to_string();
                    Some((name, self.index.ty_of(module, &f.ty, None)))
                })
                .collect();
            self.index.fields.insert(path, fields);
        }
        // Signatures first (what each fn returns), then bodies, which may
        // call any fn and use what it returns.
        let mut bodies = Vec::new();
        for (module, file, f) in std::mem::take(&mut self.fns) {
            let mut key = module.clone();
            key.push(f.sig.ident.to_string());
            let shown = f.sig.ident.to_string();
            bodies.push((key, module, file, None, f.sig, f.block, f.attrs, shown));
        }
        for (module, file, imp) in std::mem::take(&mut self.methods) {
            let Ty::Crate(self_ty) = self.index.ty_of(&module, &imp.self_ty, None) else {
                continue;
            };
            let type_name = self_ty.last().cloned().unwrap_or_default();
            for item in imp.items {
                let syn::ImplItem::Fn(f) = item else { continue };
                let mut key = self_ty.clone();
                key.push(f.sig.ident.to_string());
                let shown = format!("{type_name}::{}", f.sig.ident);
                let block = Box::new(f.block);
                bodies.push((
                    key,
                    module.clone(),
                    file,
                    Some(self_ty.clone()),
                    f.sig,
                    block,
                    f.attrs,
                    shown,
                ));
            }
        }
        for (key, module, _, self_ty, sig, _, attrs, shown) in &bodies {
            if self.index.fns.contains_key(key) {
                continue;
            }
            let returns = self.index.returns_of(module, sig, self_ty.as_ref());
            self.index.fns.insert(
                key.clone(),
                FnInfo {
                    shown: shown.clone(),
                    facts: Vec::new(),
                    returns,
                    durable: has_attr(attrs, "durable_fn"),
                },
            );
        }
        for (key, module, file, self_ty, sig, block, attrs, _) in &bodies {
            // A durable fn is never traced into: its effects are checked
            // where it is expanded.
            if has_attr(attrs, "durable_fn") {
                continue;
            }
            let facts =
                super::summary::facts(&self.index, module, self_ty.as_ref(), *file, sig, block);
            if let Some(f) = self.index.fns.get_mut(key) {
                if f.facts.is_empty() {
                    f.facts = facts;
                }
            }
        }
        self.index
    }
}

fn static_info(ident: &syn::Ident, ty: &syn::Type, file: usize) -> StaticInfo {
    let names = type_idents(ty);
    let shown = quote::quote!(#ty)
        .to_string()
        .replace(" < ", "<")
        .replace(" >", ">")
        .replace("< ", "<")
        .replace(" ,", ",");
    StaticInfo {
        kind: effects::statics(&names),
        shown: format!("{ident}: {shown}"),
        at: Loc {
            file,
            line: line_of(ident.span()),
        },
    }
}

/// The identifiers of a type, outermost first (`LazyLock<Mutex<Vec<u8>>>`
/// gives `LazyLock, Mutex, Vec, u8`).
pub fn type_idents(ty: &syn::Type) -> Vec<String> {
    struct V(Vec<String>);
    impl<'ast> syn::visit::Visit<'ast> for V {
        fn visit_path_segment(&mut self, s: &'ast syn::PathSegment) {
            self.0.push(s.ident.to_string());
            syn::visit::visit_path_segment(self, s);
        }
    }
    let mut v = V(Vec::new());
    syn::visit::Visit::visit_type(&mut v, ty);
    v.0
}

pub(super) fn line_of(span: proc_macro2::Span) -> usize {
    span.start().line
}

/// Flatten a `use` tree into names and the paths they stand for.
fn use_tree(tree: &syn::UseTree, mut prefix: ItemPath, out: &mut Vec<Use>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_tree(&p.tree, prefix, out);
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                if let Some(last) = prefix.last().cloned() {
                    out.push(Use {
                        name: last,
                        path: prefix,
                    });
                }
            } else {
                prefix.push(name.clone());
                out.push(Use { name, path: prefix });
            }
        }
        syn::UseTree::Rename(r) => {
            let name = r.rename.to_string();
            if r.ident != "self" {
                prefix.push(r.ident.to_string());
            }
            if name != "_" {
                out.push(Use { name, path: prefix });
            }
        }
        syn::UseTree::Glob(_) => out.push(Use {
            name: String::new(),
            path: prefix,
        }),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_tree(t, prefix.clone(), out);
            }
        }
    }
}

/// The body of `thread_local! { static A: T = e; .. }`.
struct ThreadLocals(Vec<(syn::Ident, syn::Type)>);

impl Parse for ThreadLocals {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut out = Vec::new();
        while !input.is_empty() {
            input.call(Attribute::parse_outer)?;
            input.parse::<syn::Visibility>()?;
            input.parse::<Token![static]>()?;
            let ident: syn::Ident = input.parse()?;
            input.parse::<Token![:]>()?;
            let ty: syn::Type = input.parse()?;
            input.parse::<Token![=]>()?;
            input.parse::<syn::Expr>()?;
            out.push((ident, ty));
            if input.is_empty() {
                break;
            }
            input.parse::<Token![;]>()?;
        }
        Ok(ThreadLocals(out))
    }
}

/// `use` items in a block (a fn body), as (name, path) pairs.
pub fn block_uses(u: &syn::ItemUse) -> Vec<(String, ItemPath)> {
    let mut out = Vec::new();
    use_tree(&u.tree, Vec::new(), &mut out);
    out.into_iter()
        .filter(|u| !u.name.is_empty())
        .map(|u| (u.name, u.path))
        .collect()
}
