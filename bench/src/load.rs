//! A burst of events over HTTP against a function registered with an
//! engine on SQLite (fsync on every commit): events/s and ingest latency
//! as 64 clients post them one by one, runs/s to completion, and memory.
//! Two bursts of the same size: if the engine kept anything per event
//! after its run ended, the second would grow the process as much as the
//! first did.

use std::sync::Arc;
use std::time::{Duration, Instant};

use durafn::prelude::*;
use durafn::Engine;
use serde_json::json;

use crate::workloads::{peak_rss_kb, rss_kb};

#[durable_fn(id = "load-welcome", event = "load/signup")]
async fn welcome(_ctx: Ctx, event: Event) -> Result<u64> {
    let i = event.data["i"].as_u64().unwrap_or(0);
    Ok(step!("welcome", { i })?)
}

const CLIENTS: usize = 64;

struct Burst {
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    runs_per_s: f64,
    rss_after_mb: f64,
}

pub fn table(smoke: bool) {
    let n = if smoke { 1_000 } else { 100_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::builder()
            .sqlite(dir.path().join("load.db"))
            .register(welcome)
            .build()
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/e/load", listener.local_addr().unwrap());
        let router = engine.router();
        tokio::spawn(durafn::engine::server::serve(
            listener,
            router,
            Default::default(),
            std::future::pending(),
        ));
        let rss_start = rss_kb() as f64 / 1024.0;
        println!("## load: bursts of {n} events over HTTP, {CLIENTS} clients, one event per request, SQLite with fsync\n");
        println!("| burst | events/s | ingest p50 | ingest p99 | runs/s to completion | RSS after |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for b in 1..=2 {
            let r = burst(&engine, &url, n, (b - 1) * n).await;
            println!(
                "| {b} | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {:.0} MB |",
                r.events_per_s, r.p50_ms, r.p99_ms, r.runs_per_s, r.rss_after_mb
            );
        }
        println!(
            "\nRSS at the start {rss_start:.0} MB, peak {:.0} MB.\n",
            peak_rss_kb() as f64 / 1024.0
        );
        engine.close().await;
    });
}

async fn burst(engine: &Engine, url: &str, n: usize, first: usize) -> Burst {
    let http = reqwest::Client::new();
    let ended_before = engine.runs_ended();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, next) = (http.clone(), url.to_string(), next.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return latencies;
                }
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .json(&json!({"name": "load/signup", "data": {"i": first + i}}))
                    .send()
                    .await
                    .expect("the engine answers");
                assert!(r.status().is_success(), "{}", r.status());
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(n);
    for c in clients {
        latencies.extend(c.await.unwrap());
    }
    let ingest = t0.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let deadline = Instant::now() + Duration::from_secs(600);
    while engine.runs_ended() - ended_before < n as i64 {
        assert!(
            Instant::now() < deadline,
            "the runs did not end within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = t0.elapsed();
    Burst {
        events_per_s: n as f64 / ingest.as_secs_f64(),
        p50_ms: at(0.50).as_secs_f64() * 1000.0,
        p99_ms: at(0.99).as_secs_f64() * 1000.0,
        runs_per_s: n as f64 / done.as_secs_f64(),
        rss_after_mb: rss_kb() as f64 / 1024.0,
    }
}
