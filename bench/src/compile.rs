//! What the compile-time check costs: `cargo check` of a generated crate
//! with 50 durable fns and 200 helper fns in 10 modules, with
//! `#[durable_fn]` (the check reads the crate, resolves paths and follows
//! helpers) and without it (the same bodies, `step!` a plain block).
//!
//! The crates live under `target/bench-compile/` and share one target
//! directory, so dependencies are checked once (the first run); each round
//! then touches the crate root and checks the crate alone, the two variants
//! alternately. A third crate, with a helper that reads the clock called
//! outside a step, must fail with the chain in the message: the check works
//! on a library crate laid out by cargo, not only on test files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

const MODULES: usize = 10;

struct Shape {
    fns_per_module: usize,
    helpers_per_module: usize,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the bench is in the workspace")
        .to_path_buf()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Generate a package `name` in `dir`; `durable` says whether the fns carry
/// the attribute; `probe` adds a module whose durable fn calls an
/// effectful helper outside a step.
fn generate(dir: &Path, name: &str, shape: &Shape, durable: bool, probe: bool, fast_macros: bool) {
    let ws = workspace();
    // What many projects set so that proc macros run optimized in debug
    // builds.
    let profile = match fast_macros {
        true => "\n[profile.dev.build-override]\nopt-level = 3\n",
        false => "",
    };
    write(
        &dir.join("Cargo.toml"),
        &format!(
            "[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [dependencies]\ndurafn = {{ path = {:?}, default-features = false }}\n\
             serde = {{ version = \"1\", features = [\"derive\"] }}\n\n[workspace]\n{profile}",
            ws.display()
        ),
    );
    // The workspace's lock: the same versions, offline.
    std::fs::copy(ws.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let mut lib = String::from("#![allow(dead_code, unused)]\n");
    if !durable {
        // Without the attribute a step is its block.
        lib.push_str(
            "macro_rules! step {\n    ($id:literal, $body:expr) => {\n        \
             ::core::result::Result::<_, ::durafn::prelude::Error>::Ok($body)\n    };\n}\n",
        );
    }
    lib.push_str(prelude(durable));
    lib.push_str(
        "\n#[derive(Deserialize)]\npub struct Order {\n    \
         pub skus: Vec<String>,\n    pub qty: u32,\n}\n\n",
    );
    for m in 0..MODULES {
        lib.push_str(&format!("pub mod m{m};\n"));
        write(
            &dir.join(format!("src/m{m}.rs")),
            &module(m, shape, durable),
        );
    }
    if probe {
        lib.push_str("pub mod probe;\n");
        write(
            &dir.join("src/probe.rs"),
            "use durafn::prelude::*;\n\n\
             fn stamp() -> u64 {\n    \
             std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)\n}\n\n\
             fn label() -> String {\n    format!(\"at {}\", stamp())\n}\n\n\
             #[durable_fn(id = \"probe\", event = \"bench/probe\")]\n\
             pub async fn probe(_ctx: Ctx, _event: Event) -> Result<usize> {\n    \
             let l = label();\n    Ok(step!(\"len\", { l.len() })?)\n}\n",
        );
    }
    write(&dir.join("src/lib.rs"), &lib);
}

/// Without the attribute, durafn's `step!` must not be in scope.
fn prelude(durable: bool) -> &'static str {
    match durable {
        true => "use durafn::prelude::*;\n",
        false => "use durafn::prelude::{Ctx, Deserialize, Event, Result};\n",
    }
}

fn module(m: usize, shape: &Shape, durable: bool) -> String {
    let next = (m + 1) % MODULES;
    let h = shape.helpers_per_module;
    let mut s = String::from(prelude(durable));
    s.push_str(
        "use std::collections::BTreeMap;\nuse crate::Order;\n\n\
         pub struct Cart {\n    items: Vec<u32>,\n}\n\n\
         impl Cart {\n    pub fn new(items: Vec<u32>) -> Self {\n        Cart { items }\n    }\n\n    \
         pub fn total(&self) -> u32 {\n        self.items.iter().map(|x| helper0(*x)).sum()\n    }\n}\n\n",
    );
    // Pure helpers that call each other and the next module's.
    for i in 0..h {
        let body = if i + 1 < h {
            format!(
                "helper{}(x.wrapping_mul(31).rotate_left({})) ^ (x >> 3)",
                i + 1,
                i % 31
            )
        } else if m + 1 < MODULES {
            format!("crate::m{next}::leaf(x)")
        } else {
            "x.wrapping_add(7)".to_string()
        };
        s.push_str(&format!(
            "pub fn helper{i}(x: u32) -> u32 {{\n    {body}\n}}\n\n"
        ));
    }
    s.push_str("pub fn leaf(x: u32) -> u32 {\n    x.rotate_right(5)\n}\n\n");
    // An effectful helper, called inside steps only.
    s.push_str(
        "pub fn stamp() -> u64 {\n    std::time::SystemTime::now()\n        \
         .duration_since(std::time::UNIX_EPOCH)\n        .map(|d| d.as_secs())\n        .unwrap_or(0)\n}\n\n",
    );
    for f in 0..shape.fns_per_module {
        let attr = match durable {
            true => format!("#[durable_fn(id = \"f-{m}-{f}\", event = \"bench/f\")]\n"),
            false => String::new(),
        };
        s.push_str(&format!(
            "{attr}pub async fn f{f}(_ctx: Ctx, event: Event<Order>) -> Result<u32> {{\n    \
             let cart = Cart::new(vec![1, 2, {f}]);\n    \
             let base = helper{h0}(event.data.qty) + cart.total();\n    \
             let mut sum = 0u32;\n    \
             for (i, sku) in event.data.skus.iter().enumerate() {{\n        \
             let v: u32 = step!(\"line\", {{ helper{h1}(sku.len() as u32) + i as u32 }})?;\n        \
             sum = sum.wrapping_add(v);\n    }}\n    \
             let t: u64 = step!(\"stamp\", {{ stamp() }})?;\n    \
             let by: BTreeMap<u32, u32> = (0..3).map(|i| (i, helper{h2}(i))).collect();\n    \
             for (k, v) in &by {{\n        step!(\"tree\", {{ k + v }})?;\n    }}\n    \
             Ok(base.wrapping_add(sum).wrapping_add(t as u32))\n}}\n\n",
            h0 = f % h,
            h1 = (f + 1) % h,
            h2 = (f + 2) % h,
        ));
    }
    s
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env_remove("RUSTFLAGS");
    c
}

/// `cargo check` of the package in `dir`: how long it took, and its
/// output when it failed.
fn check(dir: &Path, target: &Path) -> (Duration, Result<(), String>) {
    check_with(dir, target, &[])
}

fn check_with(dir: &Path, target: &Path, env: &[(&str, &str)]) -> (Duration, Result<(), String>) {
    let t = Instant::now();
    let out = cargo()
        .args(["check", "--offline", "--quiet", "--message-format", "short"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .envs(env.iter().copied())
        .output()
        .expect("run cargo");
    let took = t.elapsed();
    match out.status.success() {
        true => (took, Ok(())),
        false => (took, Err(String::from_utf8_lossy(&out.stderr).into_owned())),
    }
}

/// Forget the package's own check output (its dependencies stay), so that
/// the next check is of the whole crate from scratch.
fn clean(dir: &Path, target: &Path, name: &str) {
    let out = cargo()
        .args(["clean", "--offline", "--quiet", "-p", name])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "cargo clean -p {name} failed");
}

/// Make the crate's own sources newer than its last check.
fn touch(dir: &Path) {
    let f = std::fs::File::options()
        .write(true)
        .open(dir.join("src/lib.rs"))
        .unwrap();
    f.set_modified(SystemTime::now()).unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn table(smoke: bool) {
    println!("## compile cost of the check\n");
    let shape = match smoke {
        true => Shape {
            fns_per_module: 1,
            helpers_per_module: 2,
        },
        false => Shape {
            fns_per_module: 5,
            helpers_per_module: 20,
        },
    };
    let root = workspace().join("target/bench-compile");
    let target = root.join("target");
    let (with, without, probe) = (root.join("with"), root.join("without"), root.join("probe"));
    let (with_fast, without_fast) = (root.join("with-fast"), root.join("without-fast"));
    generate(&with, "bench_with", &shape, true, false, false);
    generate(&without, "bench_without", &shape, false, false, false);
    generate(&probe, "bench_probe", &shape, true, true, false);
    if !smoke {
        generate(&with_fast, "bench_with_fast", &shape, true, false, true);
        generate(
            &without_fast,
            "bench_without_fast",
            &shape,
            false,
            false,
            true,
        );
        for dir in [&with_fast, &without_fast] {
            if let (_, Err(e)) = check(dir, &target) {
                panic!(
                    "the generated crate in {} does not check:\n{e}",
                    dir.display()
                );
            }
        }
    }
    // Dependencies first, and a check that both variants compile.
    for dir in [&with, &without] {
        if let (_, Err(e)) = check(dir, &target) {
            panic!(
                "the generated crate in {} does not check:\n{e}",
                dir.display()
            );
        }
    }
    match check(&probe, &target) {
        (_, Ok(())) => {
            panic!("the probe crate (a clock read through two helpers) passed the check")
        }
        (_, Err(e)) => assert!(
            e.contains("through `label` → `stamp`") && e.contains("src/probe.rs"),
            "the probe's error names the chain:\n{e}"
        ),
    }
    let rounds = if smoke { 1 } else { 7 };
    let (mut a, mut body_only, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        touch(&with);
        a.push(check(&with, &target).0);
        touch(&with);
        body_only.push(check_with(&with, &target, &[("DURAFN_INDEX", "off")]).0);
        touch(&without);
        b.push(check(&without, &target).0);
    }
    // The crate from scratch (its dependencies checked): what a first
    // build, a CI run or a change to a dependency costs.
    let (mut fresh_a, mut fresh_b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        clean(&with, &target, "bench_with");
        fresh_a.push(check(&with, &target).0);
        clean(&without, &target, "bench_without");
        fresh_b.push(check(&without, &target).0);
    }
    let (fresh_a, fresh_b) = (median(fresh_a), median(fresh_b));
    let (a, body_only, b) = (median(a), median(body_only), median(b));
    let fns = MODULES * shape.fns_per_module;
    let helpers = MODULES * shape.helpers_per_module;
    let ratio = |x: Duration| x.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!("| cargo check after touching the crate root, {fns} durable fns and {helpers} helpers in {MODULES} modules (median of {rounds}) | time | vs. without |\n| --- | --- | --- |");
    println!(
        "| with `#[durable_fn]` | {:.2} s | {:.2}× |",
        a.as_secs_f64(),
        ratio(a)
    );
    println!(
        "| with `#[durable_fn]`, the crate index off (`DURAFN_INDEX=off`: the body-only check) | {:.2} s | {:.2}× |",
        body_only.as_secs_f64(),
        ratio(body_only)
    );
    println!(
        "| without (the same bodies as plain async fns) | {:.2} s | 1.00× |",
        b.as_secs_f64()
    );
    println!(
        "| from scratch (the crate's own check output removed), with `#[durable_fn]` | {:.2} s | {:.2}× |",
        fresh_a.as_secs_f64(),
        fresh_a.as_secs_f64() / fresh_b.as_secs_f64().max(1e-9)
    );
    println!(
        "| from scratch, without | {:.2} s | 1.00× |",
        fresh_b.as_secs_f64()
    );
    if !smoke {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            touch(&with_fast);
            a.push(check(&with_fast, &target).0);
            touch(&without_fast);
            b.push(check(&without_fast, &target).0);
        }
        let (a, b) = (median(a), median(b));
        println!(
            "| with, proc macros optimized (`[profile.dev.build-override] opt-level = 3`) | {:.2} s | {:.2}× (vs. {:.2} s) |",
            a.as_secs_f64(),
            a.as_secs_f64() / b.as_secs_f64().max(1e-9),
            b.as_secs_f64()
        );
    }
    println!();
    println!("The probe crate (a clock read two helpers deep, in `src/probe.rs`) fails the check with the chain in the message.\n");
}
