//! durafn benchmarks: programs that print figures, not timed tests.
//!
//! ```text
//! cargo run -p durafn-bench --release -- core      # macro expansion, replay, driver overhead
//! cargo run -p durafn-bench --release -- engine    # seq100, fanout, loop1000, long, replay on SQLite and memory
//! cargo run -p durafn-bench --release -- postgres  # fanout and seq100 with 1, 2 and 4 engine processes on PostgreSQL
//! cargo run -p durafn-bench --release -- compile   # cargo check of 50 durable fns and 200 helpers, with and without the check
//! cargo run -p durafn-bench --release -- load      # two bursts of 100,000 events over HTTP on SQLite: events/s, latency, runs/s, RSS
//! cargo run -p durafn-bench --release -- all
//! ```
//! `--smoke` shrinks every workload (the test suite runs that).
//!
//! Each engine workload runs in a fresh child process of this binary, so its
//! peak RSS is its own.

// The macro's implementation, compiled here as ordinary modules so that its
// expansion can be timed outside the compiler.
#[allow(dead_code)]
#[path = "../../macros/src/check.rs"]
mod check;
#[allow(dead_code)]
#[path = "../../macros/src/ctxt.rs"]
mod ctxt;
#[allow(dead_code)]
#[path = "../../macros/src/effects.rs"]
mod effects;
#[path = "../../macros/src/entry.rs"]
mod entry;
#[path = "../../macros/src/expand.rs"]
mod expand;
#[allow(dead_code)]
#[path = "../../macros/src/index/mod.rs"]
mod index;
#[path = "../../macros/src/parse.rs"]
mod parse;
#[path = "../../macros/src/prim.rs"]
mod prim;

mod compile;
mod load;
mod postgres;
mod retention;
mod workloads;

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let what = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "all".into());
    if let Some(i) = args.iter().position(|a| a == "--pg-engine") {
        // Child mode: one engine process on PostgreSQL, until killed.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(postgres::engine_child(&args[i + 1], &args[i + 2]));
        return;
    }
    if let Some(w) = args
        .iter()
        .position(|a| a == "--workload")
        .and_then(|i| args.get(i + 1))
    {
        // Child mode: one workload, one line of JSON.
        let store = args
            .iter()
            .position(|a| a == "--store")
            .and_then(|i| args.get(i + 1))
            .expect("--store");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(workloads::run(w, store, smoke));
        println!("{}", serde_json::to_string(&out).unwrap());
        return;
    }
    match what.as_str() {
        "core" => core(smoke),
        "engine" => workloads::table(smoke),
        "postgres" => pg_table(smoke),
        "compile" => compile::table(smoke),
        "load" => load::table(smoke),
        "retention" => retention::table(smoke),
        "all" => {
            core(smoke);
            workloads::table(smoke);
            pg_table(smoke);
            compile::table(smoke);
            load::table(smoke);
            retention::table(smoke);
        }
        other => {
            eprintln!("unknown benchmark `{other}`: core, engine, postgres, compile, load, retention or all");
            std::process::exit(2);
        }
    }
}

fn pg_table(smoke: bool) {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(postgres::table(smoke));
}

fn core(smoke: bool) {
    println!("## core (runtime without a store)\n");
    // Macro expansion of a large generated durable fn.
    let sites = if smoke { 50 } else { 1000 };
    let src = large_fn(sites);
    let tokens: proc_macro2::TokenStream = src.parse().expect("generated source parses");
    let args: proc_macro2::TokenStream = "id = \"large\", event = \"bench/large\"".parse().unwrap();
    let rounds = if smoke { 1 } else { 5 };
    let mut best = f64::MAX;
    let mut out_len = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let out = entry::durable_fn(args.clone(), tokens.clone(), None);
        best = best.min(t.elapsed().as_secs_f64());
        out_len = out.to_string().len();
        assert!(
            !out.to_string().contains("compile_error"),
            "the generated fn is valid"
        );
    }
    println!("| measure | value |\n| --- | --- |");
    println!(
        "| macro expansion, fn with {sites} step sites ({} lines) | {:.2} ms ({} bytes out) |",
        src.lines().count(),
        best * 1e3,
        out_len
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = if smoke { 200 } else { 10_000 };
    let (per_replay, per_step) = rt.block_on(workloads::core_driver(n));
    println!(
        "| replay, per journaled step ({n} steps) | {:.3} µs |",
        per_replay * 1e6
    );
    println!(
        "| continuous driver in memory, per new step ({n} steps) | {:.3} µs |",
        per_step * 1e6
    );
    println!();
}

/// A durable fn with `sites` step sites in loops, branches and matches.
fn large_fn(sites: usize) -> String {
    let mut body = String::new();
    for i in 0..sites {
        match i % 4 {
            0 => body.push_str(&format!("    let v{i}: u64 = step!(\"s{i}\", {{ fetch({i}).await? }})?;\n    total += v{i};\n")),
            1 => body.push_str(&format!(
                "    for j in 0..3u64 {{\n        let x: u64 = step!(\"s{i}\", {{ fetch(j).await? + {i} }})?;\n        total += x;\n    }}\n"
            )),
            2 => body.push_str(&format!(
                "    if total % 2 == 0 {{\n        step!(\"s{i}\", {{ total }})?;\n    }} else {{\n        let label = format!(\"odd {{total}}\");\n        let _ = label;\n    }}\n"
            )),
            _ => body.push_str(&format!(
                "    match total % 3 {{\n        0 => {{ step!(\"s{i}\", {{ 1u8 }})?; }}\n        _ => {{ sleep!(\"nap{i}\", Duration::from_secs(1))?; }}\n    }}\n"
            )),
        }
    }
    format!("async fn large(ctx: Ctx, event: Event<Value>) -> Result<u64> {{\n    let mut total = 0u64;\n{body}    Ok(total)\n}}\n")
}
