//! The crate index (DESIGN 2.3): what the check needs to see past the body
//! of a durable fn.
//!
//! The attribute knows where it sits (`Span::local_file`). From there the
//! index finds the crate's root file, parses the module tree (`mod` items,
//! `#[path]`, inline modules) with syn, and records per module its `use`
//! items (renames, groups, globs), its fns and methods, its statics (and
//! what kind of state they hold) and its structs' field types. Each fn is
//! summarized once: the effects its body has and the crate fns it calls,
//! with their lines. A durable fn's body is then checked with paths
//! resolved through the `use` items in scope, and each crate fn it calls
//! outside a step is traced through the summaries to the first effect it
//! reaches (depth-bounded, cycle-safe).
//!
//! The index is plain data: it is built once per compiler process and kept
//! while the files it read are unchanged. The sources are parsed by
//! proc-macro2's own lexer (its fallback mode), because tokens the compiler
//! lexes from a string all carry the attribute's span and no line numbers.
//! When anything cannot be read, there is no index and the check sees the
//! body alone, as before.

mod build;
mod resolve;
pub use build::{block_uses, type_idents};
pub use resolve::Env;
mod summary;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::effects::{Effect, Statics};

/// A path from the crate root (`["util", "stamp"]`), or an external path as
/// written (`["std", "time", "Instant", "now"]`).
pub type ItemPath = Vec<String>;

/// Where a durable fn sits: its file, and the line of its attribute.
#[derive(Clone, Debug)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

/// A source location, for messages.
#[derive(Clone, Copy, Debug)]
pub struct Loc {
    pub file: usize,
    pub line: usize,
}

#[derive(Debug)]
struct SourceFile {
    path: PathBuf,
    modified: Option<SystemTime>,
    /// How messages name it: relative to the package, when it is inside.
    shown: String,
}

#[derive(Debug, Default)]
pub struct Module {
    uses: Vec<Use>,
    items: HashMap<String, Item>,
}

/// One name a `use` item brings in scope (`name` empty for a glob).
#[derive(Debug, Clone)]
struct Use {
    name: String,
    path: ItemPath,
}

#[derive(Debug, Clone)]
enum Item {
    Mod,
    Fn,
    Type,
    Static(StaticInfo),
    Other,
}

#[derive(Debug, Clone)]
pub struct StaticInfo {
    pub kind: Statics,
    /// `COUNTER: AtomicUsize`, for messages.
    pub shown: String,
    pub at: Loc,
}

/// A type, as far as the check needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    /// A collection with a per-process iteration order (`HashMap`).
    Hash(String),
    /// A struct, enum or alias of this crate.
    Crate(ItemPath),
    /// `Event<T>`: its `data` field is a `T`.
    Event(Box<Ty>),
    Unknown,
}

/// What one fn's body does, found when the index is built.
#[derive(Debug)]
struct FnInfo {
    /// `stamp_secs`, or `Client::fetch` for a method.
    shown: String,
    facts: Vec<Fact>,
    /// The type it returns (through `Result`, `Option`), when it is one of
    /// the crate's: lets a method call on the result be followed.
    returns: Ty,
    durable: bool,
}

#[derive(Debug)]
struct Fact {
    what: Does,
    /// The path or method as written, or the static's declaration.
    shown: String,
    at: Loc,
}

#[derive(Debug)]
enum Does {
    Effect(&'static Effect),
    Call(ItemPath),
}

/// The first effect a call reaches, and the fns it goes through.
#[derive(Debug, Clone)]
pub struct Trace {
    pub chain: Vec<String>,
    pub effect: &'static Effect,
    pub shown: String,
    pub at: String,
}

/// How deep a chain of helpers is followed.
const MAX_DEPTH: usize = 12;

#[derive(Debug, Default)]
pub struct Index {
    files: Vec<SourceFile>,
    modules: HashMap<ItemPath, Module>,
    fns: HashMap<ItemPath, FnInfo>,
    fields: HashMap<ItemPath, HashMap<String, Ty>>,
    /// `type` aliases whose target the check knows.
    aliases: HashMap<ItemPath, Ty>,
    /// `macro_rules!` names defined anywhere in the crate.
    macros: HashSet<String>,
    /// Durable fns: file, module, name, line of the attribute.
    durable: Vec<(usize, ItemPath, String, usize)>,
    traces: Mutex<HashMap<ItemPath, Option<Trace>>>,
}

/// A durable fn's place in the index: the module whose `use` items are in
/// scope in its body.
#[derive(Clone)]
pub struct Scope {
    pub index: Arc<Index>,
    pub module: ItemPath,
}

impl Index {
    fn fresh(&self) -> bool {
        self.files
            .iter()
            .all(|f| modified(&f.path) == f.modified && f.modified.is_some())
    }

    fn shown(&self, at: Loc) -> String {
        format!("{}:{}", self.files[at.file].shown, at.line)
    }

    /// The module holding the durable fn `name` whose attribute is on
    /// `line` of `file`.
    fn module_of(&self, file: &Path, name: &str, line: usize) -> Option<ItemPath> {
        let fi = self.files.iter().position(|f| f.path == file)?;
        let mut found: Vec<&(usize, ItemPath, String, usize)> = self
            .durable
            .iter()
            .filter(|(f, _, n, _)| *f == fi && n == name)
            .collect();
        found.sort_by_key(|(_, _, _, l)| l.abs_diff(line));
        found.first().map(|(_, m, _, _)| m.clone())
    }

    /// Whether `name!` is a macro of this crate (not std's or tokio's).
    pub fn defines_macro(&self, name: &str) -> bool {
        self.macros.contains(name)
    }

    /// The static at `path`, if it is one.
    pub fn static_at(&self, path: &[String]) -> Option<&StaticInfo> {
        let (name, module) = path.split_last()?;
        match self.modules.get(module)?.items.get(name)? {
            Item::Static(s) => Some(s),
            _ => None,
        }
    }

    pub fn show_static(&self, s: &StaticInfo) -> String {
        format!("`{}`, declared at {}", s.shown, self.shown(s.at))
    }

    /// Whether `path` is a (non-durable) fn or method of the crate.
    pub fn is_fn(&self, path: &[String]) -> bool {
        self.fns.get(path).is_some_and(|f| !f.durable)
    }

    pub fn fn_shown(&self, path: &[String]) -> Option<&str> {
        self.fns.get(path).map(|f| f.shown.as_str())
    }

    pub fn returns(&self, path: &[String]) -> Ty {
        self.fns
            .get(path)
            .map_or(Ty::Unknown, |f| f.returns.clone())
    }

    pub fn field(&self, ty: &[String], name: &str) -> Ty {
        self.fields
            .get(ty)
            .and_then(|f| f.get(name))
            .cloned()
            .unwrap_or(Ty::Unknown)
    }

    /// The first effect that calling the crate fn `path` reaches, through
    /// at most [`MAX_DEPTH`] helpers, each fn visited once.
    pub fn trace(&self, path: &[String]) -> Option<Trace> {
        if let Some(t) = self.traces.lock().ok()?.get(path) {
            return t.clone();
        }
        let mut seen = HashSet::new();
        let mut chain = Vec::new();
        let t = self.walk(path, &mut seen, &mut chain);
        if let Ok(mut m) = self.traces.lock() {
            m.insert(path.to_vec(), t.clone());
        }
        t
    }

    fn walk<'a>(
        &'a self,
        path: &'a [String],
        seen: &mut HashSet<&'a [String]>,
        chain: &mut Vec<String>,
    ) -> Option<Trace> {
        if chain.len() >= MAX_DEPTH || !seen.insert(path) {
            return None;
        }
        let f = self.fns.get(path).filter(|f| !f.durable)?;
        chain.push(f.shown.clone());
        for fact in &f.facts {
            match &fact.what {
                Does::Effect(effect) => {
                    return Some(Trace {
                        chain: chain.clone(),
                        effect,
                        shown: fact.shown.clone(),
                        at: self.shown(fact.at),
                    })
                }
                Does::Call(callee) => {
                    if let Some(t) = self.walk(callee, seen, chain) {
                        return Some(t);
                    }
                }
            }
        }
        chain.pop();
        None
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Indexes by crate root, kept for the life of the compiler process (one
/// crate, many durable fns) while their files are unchanged.
static CACHE: Mutex<Vec<(PathBuf, Arc<Index>)>> = Mutex::new(Vec::new());

/// The scope of the durable fn `name` at `origin`, or `None` when the
/// sources cannot be read or do not hold it (the check then sees the body
/// alone).
///
/// `DURAFN_INDEX=off` in the compiler's environment turns the index off
/// (the body-only check): a way out should it misbehave, and how the
/// benchmark measures its share of the compile time.
pub fn scope(origin: &Origin, name: &str) -> Option<Scope> {
    if std::env::var_os("DURAFN_INDEX").is_some_and(|v| v == "off") {
        return None;
    }
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let target = Target {
        manifest: manifest.and_then(|m| std::fs::canonicalize(m).ok()),
        krate: std::env::var("CARGO_CRATE_NAME").unwrap_or_default(),
        bin: std::env::var("CARGO_BIN_NAME").ok(),
    };
    scope_in(origin, name, &target)
}

/// What cargo says of the crate being compiled.
pub struct Target {
    /// The package's directory (`CARGO_MANIFEST_DIR`).
    pub manifest: Option<PathBuf>,
    /// `CARGO_CRATE_NAME`.
    pub krate: String,
    /// `CARGO_BIN_NAME`, for a binary.
    pub bin: Option<String>,
}

pub fn scope_in(origin: &Origin, name: &str, target: &Target) -> Option<Scope> {
    let file = std::fs::canonicalize(&origin.file).ok()?;
    let manifest = target.manifest.clone();
    let mut roots = build::roots(&file, target);
    // The file itself, as a crate root: single-file crates, and a last try.
    roots.push(file.clone());
    for root in roots {
        let Some(index) = cached(&root, manifest.as_deref()) else {
            continue;
        };
        if let Some(module) = index.module_of(&file, name, origin.line) {
            return Some(Scope { index, module });
        }
    }
    None
}

fn cached(root: &Path, manifest: Option<&Path>) -> Option<Arc<Index>> {
    let mut cache = CACHE.lock().ok()?;
    if let Some((_, index)) = cache.iter().find(|(r, _)| r == root) {
        if index.fresh() {
            return Some(index.clone());
        }
    }
    // A bug in the index must not fail the user's build: without it the
    // check sees the body alone.
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        build::build(root, manifest)
    }));
    let index = Arc::new(built.ok()??);
    cache.retain(|(r, _)| r != root);
    cache.push((root.to_path_buf(), index.clone()));
    Some(index)
}

/// An index of nothing: without the crate's sources, paths resolve to
/// themselves and the check sees the body alone.
pub fn empty() -> &'static Index {
    static EMPTY: std::sync::OnceLock<Index> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Index::default)
}

/// What a path names.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// An item of this crate (or a path into one: `Type::method`).
    Crate(ItemPath),
    /// Anything else: std, a dependency, the prelude.
    External(ItemPath),
}

#[cfg(test)]
mod tests;
