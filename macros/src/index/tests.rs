//! The index on a package laid out on disk: module files (`mod.rs`,
//! non-`mod.rs` children, `#[path]`, inline modules), roots under `src/`
//! and `tests/`, resolution, traces through helpers and methods, cycles,
//! the depth bound, and rebuilding when a file changes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::*;

struct Pkg(PathBuf);

impl Drop for Pkg {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn pkg(name: &str) -> Pkg {
    let dir = std::env::temp_dir().join(format!("durafn-index-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write(
        &dir,
        "src/lib.rs",
        "use std::sync::atomic::AtomicUsize;
use std::time::Instant as Clock;
mod util;
pub mod billing;
mod inline {
    pub mod deep {
        pub fn pure() -> u32 { 1 }
    }
}
#[path = \"odd/place.rs\"]
mod place;
pub use util::stamp as reexported;
pub fn a() -> u32 { b() }
pub fn b() -> u32 { a() }
pub fn c() -> u32 { b() + d() }
fn d() -> u32 { util::stamp() as u32 }
static COUNTER: AtomicUsize = AtomicUsize::new(0);
#[durable_fn]
async fn top() {}
",
    );
    write(
        &dir,
        "src/util.rs",
        "use std::time::SystemTime;
pub fn stamp() -> u64 { SystemTime::now().elapsed().map(|d| d.as_secs()).unwrap_or(0) }
pub mod inner;
",
    );
    write(
        &dir,
        "src/util/inner.rs",
        "pub fn leaf() -> u64 { std::process::id() as u64 }\n",
    );
    write(
        &dir,
        "src/billing/mod.rs",
        "use std::collections::HashMap;
pub struct Invoice { pub lines: HashMap<String, u32> }
impl Invoice {
    pub fn new() -> Self { Invoice { lines: HashMap::new() } }
    pub fn total(&self) -> u32 { self.helper() }
    fn helper(&self) -> u32 { crate::util::inner::leaf() as u32 }
}
#[durable_fn]
async fn bill() {}
",
    );
    write(
        &dir,
        "src/odd/place.rs",
        "pub fn placed() -> u64 { super::util::stamp() }\n",
    );
    write(
        &dir,
        "tests/flow.rs",
        "fn helper() -> u32 { 2 }\n#[durable_fn]\nasync fn flow() {}\n",
    );
    Pkg(dir)
}

fn target(p: &Pkg, krate: &str) -> Target {
    Target {
        manifest: Some(std::fs::canonicalize(&p.0).unwrap()),
        krate: krate.into(),
        bin: None,
    }
}

fn path(p: &str) -> ItemPath {
    p.split("::").map(str::to_string).collect()
}

fn scope_of(p: &Pkg, file: &str, line: usize, name: &str, krate: &str) -> Scope {
    let origin = Origin {
        file: p.0.join(file),
        line,
    };
    scope_in(&origin, name, &target(p, krate)).expect("the durable fn is found")
}

#[test]
fn a_durable_fn_is_found_in_its_module_under_the_lib_root() {
    let p = pkg("find");
    let s = scope_of(&p, "src/billing/mod.rs", 8, "bill", "pkg");
    assert_eq!(s.module, path("billing"));
    let s = scope_of(&p, "src/lib.rs", 18, "top", "pkg");
    assert!(s.module.is_empty());
    // An integration test is its own crate root.
    let s = scope_of(&p, "tests/flow.rs", 2, "flow", "flow");
    assert!(s.module.is_empty());
    assert!(s.index.is_fn(&path("helper")));
    assert!(!s.index.is_fn(&path("util::stamp")), "not this crate's");
}

#[test]
fn paths_resolve_through_renames_reexports_and_module_files() {
    let p = pkg("resolve");
    let s = scope_of(&p, "src/lib.rs", 18, "top", "pkg");
    let ix = &s.index;
    let root: &[String] = &[];
    assert_eq!(
        ix.resolve(root, &path("Clock::now"), None),
        Resolved::External(path("std::time::Instant::now"))
    );
    assert_eq!(
        ix.resolve(root, &path("reexported"), None),
        Resolved::Crate(path("util::stamp"))
    );
    assert_eq!(
        ix.resolve(root, &path("crate::inline::deep::pure"), None),
        Resolved::Crate(path("inline::deep::pure"))
    );
    assert!(ix.is_fn(&path("inline::deep::pure")));
    assert!(
        ix.is_fn(&path("util::inner::leaf")),
        "a child of a non-mod.rs file"
    );
    assert!(ix.is_fn(&path("place::placed")), "a #[path] module");
    assert!(ix.is_fn(&path("billing::Invoice::total")), "a method");
    assert_eq!(
        ix.field(&path("billing::Invoice"), "lines"),
        Ty::Hash("HashMap".into())
    );
    assert_eq!(
        ix.returns(&path("billing::Invoice::new")),
        Ty::Crate(path("billing::Invoice"))
    );
    let counter = ix.static_at(&path("COUNTER")).expect("a static");
    assert_eq!(counter.kind, crate::effects::Statics::Mutable);
}

#[test]
fn traces_follow_helpers_and_methods_to_the_first_effect() {
    let p = pkg("trace");
    let s = scope_of(&p, "src/lib.rs", 18, "top", "pkg");
    let ix = &s.index;
    let t = ix.trace(&path("d")).expect("d reaches the clock");
    assert_eq!(t.chain, ["d", "stamp"]);
    assert_eq!(t.shown, "SystemTime::now");
    assert_eq!(t.at, "src/util.rs:2");
    assert!(std::ptr::eq(t.effect, &crate::effects::CLOCK));
    // A cycle of pure fns ends; a path through it to an effect is found.
    assert!(ix.trace(&path("a")).is_none());
    assert_eq!(ix.trace(&path("c")).unwrap().chain, ["c", "d", "stamp"]);
    let t = ix.trace(&path("billing::Invoice::total")).unwrap();
    assert_eq!(t.chain, ["Invoice::total", "Invoice::helper", "leaf"]);
    assert_eq!(t.at, "src/util/inner.rs:1");
    let t = ix.trace(&path("place::placed")).unwrap();
    assert_eq!(t.chain, ["placed", "stamp"]);
    assert!(ix.trace(&path("inline::deep::pure")).is_none());
}

#[test]
fn a_chain_longer_than_the_bound_is_not_followed_to_its_end() {
    let p = pkg("deep");
    let mut lib = String::from("#[durable_fn]\nasync fn top() {}\n");
    for i in 0..MAX_DEPTH + 4 {
        lib.push_str(&format!("fn f{i}() -> u32 {{ f{}() }}\n", i + 1));
    }
    lib.push_str(&format!(
        "fn f{}() -> u32 {{ std::process::id() }}\n",
        MAX_DEPTH + 4
    ));
    write(&p.0, "src/lib.rs", &lib);
    let s = scope_of(&p, "src/lib.rs", 1, "top", "pkg");
    assert!(s.index.trace(&path("f0")).is_none());
    assert!(s.index.trace(&path("f5")).is_some());
}

#[test]
fn a_changed_file_rebuilds_the_index() {
    let p = pkg("fresh");
    let s = scope_of(&p, "src/lib.rs", 18, "top", "pkg");
    assert!(s.index.trace(&path("d")).is_some());
    write(
        &p.0,
        "src/util.rs",
        "pub fn stamp() -> u64 { 7 }\npub mod inner;\n",
    );
    let later = SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(p.0.join("src/util.rs"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let s = scope_of(&p, "src/lib.rs", 18, "top", "pkg");
    assert!(s.index.trace(&path("d")).is_none(), "the new stamp is pure");
}

#[test]
fn without_readable_sources_there_is_no_scope() {
    let p = pkg("gone");
    let origin = Origin {
        file: p.0.join("src/missing.rs"),
        line: 1,
    };
    assert!(scope_in(&origin, "top", &target(&p, "pkg")).is_none());
    // A fn the sources do not hold as a durable fn.
    let origin = Origin {
        file: p.0.join("src/lib.rs"),
        line: 1,
    };
    assert!(scope_in(&origin, "no_such_fn", &target(&p, "pkg")).is_none());
}

#[test]
fn durable_bodies_are_skipped_and_what_follows_them_is_indexed() {
    let p = pkg("skip");
    write(
        &p.0,
        "src/lib.rs",
        "#[durafn::durable_fn(id = \"a\", event = \"x/y\")]
pub async fn first(ctx: Ctx, event: Event) -> Result<u32> {
    fn inner() -> u32 { 1 }
    let v = [0u8; 4];
    Ok(step!(\"s\", { inner() })?)
}
fn after() -> u64 { std::process::id() as u64 }
mod nested {
    #[durable_fn]
    async fn second() -> Result<()> { loop { step!(\"t\", { 1 })?; } }
    pub fn pure() -> u32 { 3 }
}
#[inline]
fn kept() -> u64 { after() }
",
    );
    let s = scope_of(&p, "src/lib.rs", 1, "first", "pkg");
    let ix = &s.index;
    assert!(ix.is_fn(&path("after")));
    assert!(ix.is_fn(&path("nested::pure")));
    assert_eq!(ix.trace(&path("kept")).unwrap().chain, ["kept", "after"]);
    assert!(!ix.is_fn(&path("first")), "a durable fn is not a helper");
    assert!(
        !ix.is_fn(&path("inner")),
        "items of a durable body are its own"
    );
    let s = scope_of(&p, "src/lib.rs", 9, "second", "pkg");
    assert_eq!(s.module, path("nested"));
    let tokens: proc_macro2::TokenStream = "#[durable_fn] async fn f() { a(); } fn g() { b(); }"
        .parse()
        .unwrap();
    assert_eq!(
        build::without_durable_bodies(tokens).to_string(),
        "# [durable_fn] async fn f () { } fn g () { b () ; }"
    );
}
