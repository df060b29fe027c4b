//! The workloads. Engine workloads run in a child process each (see main).

use std::sync::Arc;
use std::time::{Duration, Instant};

use durafn::driver::{continuous, Invocation};
use durafn::prelude::*;
use durafn::store::{SqliteStore, SqliteSync, Store};
use durafn::testing::{Driver, TestRun};
use durafn::{Engine, EngineBuilder, StepMeta, StepSink};
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Size {
    n: u64,
}

#[durable_fn(id = "chain", event = "bench/chain")]
pub async fn chain(_ctx: Ctx, event: Event<Size>) -> Result<u64> {
    let mut sum = 0;
    for i in 0..event.data.n {
        sum += step!("step", { i })?;
    }
    Ok(sum)
}

/// `chain` with a concurrency limit of 10 runs per key.
#[durable_fn(
    id = "chain-limited",
    event = "bench/chain-limited",
    concurrency(limit = 10, key = "event.data.key")
)]
pub async fn chain_limited(_ctx: Ctx, event: Event<Size>) -> Result<u64> {
    let mut sum = 0;
    for i in 0..event.data.n {
        sum += step!("step", { i })?;
    }
    Ok(sum)
}

/// `chain` again, served over HTTP by the bench's own app.
#[durable_fn(id = "chain-http", event = "bench/http-chain")]
async fn chain_http(_ctx: Ctx, event: Event<Size>) -> Result<u64> {
    let mut sum = 0;
    for i in 0..event.data.n {
        sum += step!("step", { i })?;
    }
    Ok(sum)
}

#[derive(Clone, Serialize, Deserialize)]
struct Item {
    id: u64,
    title: String,
}

#[durable_fn(id = "loop-objects", event = "bench/objects")]
async fn loop_objects(_ctx: Ctx, event: Event<Size>) -> Result<usize> {
    let mut all: Vec<Item> = Vec::new();
    for page in 0..event.data.n {
        let items: Vec<Item> = step!("page", {
            (0..50)
                .map(|i| Item {
                    id: page * 50 + i,
                    title: format!("product {}", page * 50 + i),
                })
                .collect::<Vec<_>>()
        })?;
        all.extend(items);
    }
    Ok(all.len())
}

#[durable_fn(id = "resume", event = "bench/resume")]
async fn resume(_ctx: Ctx, event: Event<Size>) -> Result<u64> {
    let mut sum = 0;
    for i in 0..event.data.n {
        sum += step!("step", { i })?;
    }
    sleep!("pause", Duration::from_secs(3600))?;
    step!("after", { 0u8 })?;
    Ok(sum)
}

fn ev(name: &str, n: u64) -> Value {
    json!({"name": name, "data": {"n": n}, "id": "bench", "ts": 1})
}

/// Replay cost per journaled step and continuous cost per new step, in
/// memory (no store).
pub async fn core_driver(n: u64) -> (f64, f64) {
    // New steps, continuous driver, no store.
    let t = Instant::now();
    let out = TestRun::new(chain)
        .raw_event(ev("bench/chain", n))
        .driver(Driver::Continuous)
        .run()
        .await;
    let per_step = t.elapsed().as_secs_f64() / n as f64;
    assert_eq!(out.journal.len() as u64, n);
    // Replay of the finished journal.
    let mut best = f64::MAX;
    for _ in 0..5 {
        let inv = Invocation::new("r", ev("bench/chain", n)).with_journal(out.journal.clone());
        let t = Instant::now();
        let res = continuous(&chain, inv, None).await.expect("no sink");
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(res.replayed as u64, n);
    }
    (best / n as f64, per_step)
}

pub(crate) fn peak_rss_kb() -> u64 {
    status_kb("VmHWM:")
}

pub(crate) fn rss_kb() -> u64 {
    status_kb("VmRSS:")
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn engine(store: &str, dir: &std::path::Path) -> Engine {
    let b: EngineBuilder = Engine::builder()
        .register(chain)
        .register(chain_limited)
        .register(loop_objects)
        .register(resume);
    let b = match store {
        "memory" => b.memory(),
        "sqlite" => b.sqlite(dir.join("bench.db")),
        "sqlite-normal" => b
            .sqlite(dir.join("bench.db"))
            .sqlite_sync(SqliteSync::Normal),
        other => panic!("unknown store {other}"),
    };
    b.build().await.expect("engine")
}

async fn one_run(engine: &Engine, name: &str, n: u64) -> Duration {
    let t = Instant::now();
    let sent = engine
        .send(Event::new(name, json!({"n": n})))
        .await
        .unwrap();
    let run = engine
        .wait_for_end(&sent.runs[0], Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        run.status,
        durafn::store::RunStatus::Completed,
        "{:?}",
        run.error
    );
    t.elapsed()
}

/// Send the events at once and wait until every run they start ended:
/// steps per second, for runs of `steps` steps each.
async fn fan_out(engine: &Engine, events: Vec<Value>, steps: u64) -> Value {
    let runs = events.len() as u64;
    let before = engine.runs_ended();
    let t = Instant::now();
    engine.send_values(events).await.unwrap();
    while engine.runs_ended() - before < runs as i64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    json!({"steps_per_s": (runs * steps) as f64 / secs, "total_ms": secs * 1e3})
}

/// Run one workload; answers a JSON object of figures.
pub async fn run(workload: &str, store: &str, smoke: bool) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(store, dir.path()).await;
    let scale = |full: u64, small: u64| if smoke { small } else { full };
    match workload {
        "seq100" => {
            let n = 100;
            // Warm up the engine and the file once.
            one_run(&engine, "bench/chain", 5).await;
            let mut best = Duration::MAX;
            for _ in 0..scale(5, 1) {
                best = best.min(one_run(&engine, "bench/chain", n).await);
            }
            json!({"ms_per_step": best.as_secs_f64() * 1e3 / n as f64, "total_ms": best.as_secs_f64() * 1e3})
        }
        "fanout" => {
            let (runs, steps) = (scale(200, 20), 10);
            let events = (0..runs)
                .map(|_| json!({"name": "bench/chain", "data": {"n": steps}}))
                .collect();
            fan_out(&engine, events, steps).await
        }
        "fanout-keys" | "fanout-limited" => {
            // 100 keys, 20 runs of 10 steps each: with the limit, at most
            // 10 runs of a key run at once.
            let (keys, per_key, steps) = (100, scale(20, 2), 10);
            let name = match workload {
                "fanout-keys" => "bench/chain",
                _ => "bench/chain-limited",
            };
            let events = (0..keys * per_key)
                .map(|i| json!({"name": name, "data": {"n": steps, "key": format!("k{}", i % keys)}}))
                .collect();
            fan_out(&engine, events, steps).await
        }
        "loop1000" => {
            let n = scale(1000, 50);
            let base = rss_kb();
            let d = one_run(&engine, "bench/objects", n).await;
            json!({"total_ms": d.as_secs_f64() * 1e3, "peak_rss_mb": peak_rss_kb() as f64 / 1024.0, "start_rss_mb": base as f64 / 1024.0})
        }
        "long" => {
            let n = scale(100_000, 2_000);
            let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (eng, s2) = (engine.clone(), samples.clone());
            let monitor = tokio::spawn(async move {
                let mut next = n / 4;
                loop {
                    let done = eng.steps_committed() as u64;
                    if done >= next {
                        s2.lock().unwrap().push((done, rss_kb()));
                        next += n / 4;
                    }
                    if done >= n {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            let d = one_run(&engine, "bench/chain", n).await;
            let _ = monitor.await;
            let samples: Vec<Value> = samples
                .lock()
                .unwrap()
                .iter()
                .map(|(steps, kb)| json!({"steps": steps, "rss_mb": *kb as f64 / 1024.0}))
                .collect();
            json!({"total_s": d.as_secs_f64(), "steps": n, "rss": samples, "peak_rss_mb": peak_rss_kb() as f64 / 1024.0})
        }
        "http100" => {
            // The app: the generated handler, on loopback in this process.
            let app = durafn::serve::Handler::new("bench")
                .dev(true)
                .register(chain_http)
                .router_at("/api/durafn");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            // Register the app as its sync would.
            let body = serde_json::json!({
                "url": format!("http://{addr}/api/durafn"),
                "appName": "bench",
                "functions": [{"id": "bench-chain-http", "name": "chain-http", "triggers": [{"event": "bench/http-chain"}],
                  "steps": {"step": {"runtime": {"url": format!("http://{addr}/api/durafn?fnId=bench-chain-http&stepId=step")}, "retries": {"attempts": 3}}}}]
            });
            engine.register_app(&body).await.unwrap();
            let n = 100;
            one_run(&engine, "bench/http-chain", 5).await;
            let mut best = Duration::MAX;
            for _ in 0..scale(5, 1) {
                best = best.min(one_run(&engine, "bench/http-chain", n).await);
            }
            json!({"ms_per_step": best.as_secs_f64() * 1e3 / n as f64, "total_ms": best.as_secs_f64() * 1e3})
        }
        "replay" => {
            let n = scale(10_000, 500);
            replay(engine, store, dir.path(), n).await
        }
        other => panic!("unknown workload {other}"),
    }
}

/// A sink that notes when the first new step is committed.
struct FirstCommit(std::sync::Mutex<Option<Instant>>);

impl StepSink for FirstCommit {
    fn record(
        &self,
        _step: durafn::Transition,
        _m: StepMeta,
    ) -> durafn::__private::BoxFuture<'_, std::result::Result<(), durafn::Abandon>> {
        let mut t = self.0.lock().unwrap();
        if t.is_none() {
            *t = Some(Instant::now());
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Resume a run that has `n` journaled steps: claim it from the store
/// (loading its journal) and replay it up to its next new step.
async fn replay(engine: Engine, store: &str, dir: &std::path::Path, n: u64) -> Value {
    let sent = engine
        .send(Event::new("bench/resume", json!({"n": n})))
        .await
        .unwrap();
    let id = sent.runs[0].clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let r = engine.run(&id).await.unwrap().unwrap();
        if r.run.status == durafn::store::RunStatus::Sleeping {
            break;
        }
        assert!(
            Instant::now() < deadline && !r.run.status.is_final(),
            "the run never slept: {:?}",
            r.run.status
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let store_handle: Arc<dyn Store> = if store == "memory" {
        engine.shutdown();
        engine.store()
    } else {
        engine.close().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sync = if store == "sqlite" {
            SqliteSync::Full
        } else {
            SqliteSync::Normal
        };
        Arc::new(SqliteStore::open(dir.join("bench.db"), sync).unwrap())
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    // An hour later: the sleep is due.
    let now = durafn::Clock::now_ms(&durafn::SystemClock) + 3_700_000;
    let t = Instant::now();
    let mut claimed = store_handle
        .claim(durafn::store::ClaimRequest {
            owner: "bench".into(),
            now_ms: now,
            lease_now_ms: now,
            lease_ms: 60_000,
            limit: 1,
            functions: vec!["resume".into()],
            unknown_before_ms: i64::MIN,
        })
        .await
        .unwrap();
    let load = t.elapsed();
    let c = claimed.pop().expect("the run is due");
    assert_eq!(c.journal.len() as u64, n + 1);
    let sink = Arc::new(FirstCommit(std::sync::Mutex::new(None)));
    let inv = Invocation::new(c.run.id.clone(), c.event).with_journal(c.journal);
    let t2 = Instant::now();
    let res = continuous(&resume, inv, Some(sink.clone()))
        .await
        .expect("the sink refuses nothing");
    let replayed = sink
        .0
        .lock()
        .unwrap()
        .expect("the run reached its next step")
        - t2;
    assert!(matches!(res.transition, durafn::Transition::Done(_)));
    json!({
        "steps": n,
        "load_ms": load.as_secs_f64() * 1e3,
        "replay_ms": replayed.as_secs_f64() * 1e3,
        "total_ms": (load + replayed).as_secs_f64() * 1e3,
    })
}

/// Run every engine workload on every store, each in a child process, and
/// print a table.
pub fn table(smoke: bool) {
    let exe = std::env::current_exe().unwrap();
    println!("## engine (durable on SQLite with fsync per commit; SQLite without fsync; memory)\n");
    println!("| workload | sqlite (fsync) | sqlite (no fsync) | memory |");
    println!("| --- | --- | --- | --- |");
    for w in [
        "seq100",
        "http100",
        "fanout",
        "fanout-keys",
        "fanout-limited",
        "loop1000",
        "long",
        "replay",
    ] {
        let mut cells = Vec::new();
        for store in ["sqlite", "sqlite-normal", "memory"] {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["--workload", w, "--store", store]);
            if smoke {
                cmd.arg("--smoke");
            }
            let out = cmd.output().expect("run the workload");
            if !out.status.success() {
                eprintln!(
                    "{w} on {store} failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::process::exit(1);
            }
            let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).expect("figures");
            cells.push(format_cell(w, &v));
        }
        println!("| {w} | {} |", cells.join(" | "));
    }
    println!();
}

fn format_cell(w: &str, v: &Value) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    match w {
        "seq100" | "http100" => format!("{:.3} ms/step", f("ms_per_step")),
        "fanout" | "fanout-keys" | "fanout-limited" => format!("{:.0} steps/s", f("steps_per_s")),
        "loop1000" => format!(
            "{:.0} ms, peak RSS {:.1} MB",
            f("total_ms"),
            f("peak_rss_mb")
        ),
        "long" => {
            let rss: Vec<String> = v["rss"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| format!("{:.0}", s["rss_mb"].as_f64().unwrap_or(0.0)))
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{:.2} s for {} steps, RSS at ¼ ½ ¾ 1: {} MB",
                f("total_s"),
                v["steps"],
                rss.join(" ")
            )
        }
        "replay" => format!(
            "{:.1} ms ({:.1} load + {:.1} replay) for {} steps",
            f("total_ms"),
            f("load_ms"),
            f("replay_ms"),
            v["steps"]
        ),
        _ => v.to_string(),
    }
}
