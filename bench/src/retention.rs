//! Retention on SQLite (fsync on every commit): how fast it deletes, how
//! long one batch holds the writer (the longest a commit can wait behind
//! it), and what it costs a workload that runs meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use durafn::prelude::*;
use durafn::store::Store;
use durafn::testing::ManualClock;
use durafn::Clock;
use durafn::Engine;
use serde_json::json;

#[durable_fn(id = "retention-work", event = "retention/work")]
async fn work(_ctx: Ctx, _event: Event) -> Result<usize> {
    let mut n = 0;
    for _ in 0..STEPS {
        let part: String = step!("part", { "x".repeat(1000) })?;
        n += part.len();
    }
    Ok(n)
}

const STEPS: usize = 5;
const BATCH: usize = 50;
const DAY: Duration = Duration::from_secs(86_400);

async fn drive(engine: &Engine, n: usize) -> f64 {
    let before = engine.runs_ended();
    let t0 = Instant::now();
    for _ in 0..n {
        engine
            .send(Event::new("retention/work", json!({})))
            .await
            .unwrap();
    }
    while engine.runs_ended() - before < n as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (n * STEPS) as f64 / t0.elapsed().as_secs_f64()
}

struct Pass {
    runs: usize,
    took: Duration,
    /// Each batch's time, sorted.
    batches: Vec<Duration>,
}

/// Delete what ended before `before`, batch after batch.
async fn purge(store: &Arc<dyn Store>, before: i64) -> Pass {
    let t0 = Instant::now();
    let mut batches = Vec::new();
    let mut runs = 0;
    loop {
        let t = Instant::now();
        let p = store.purge(before, BATCH).await.unwrap();
        batches.push(t.elapsed());
        runs += p.runs;
        if !p.full(BATCH) {
            break;
        }
        tokio::task::yield_now().await;
    }
    batches.sort_unstable();
    Pass {
        runs,
        took: t0.elapsed(),
        batches,
    }
}

pub fn table(smoke: bool) {
    let (old, fresh) = if smoke { (400, 100) } else { (20_000, 4_000) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            durafn::store::SqliteStore::open(
                dir.path().join("retention.db"),
                durafn::store::SqliteSync::Full,
            )
            .unwrap(),
        );
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let engine = Engine::builder()
            .store(store.clone())
            .clock(clock.clone())
            .register(work)
            .build()
            .await
            .unwrap();
        // Two generations of old runs: one deleted alone, one while a
        // workload runs.
        drive(&engine, old).await;
        clock.advance(DAY);
        drive(&engine, old).await;
        clock.advance(8 * DAY);
        let alone = drive(&engine, fresh).await;
        let day_ms = DAY.as_millis() as i64;
        let first = purge(&store, clock.now_ms() - 8 * day_ms).await;
        // The engine's own pass: batches paced to leave the store to runs.
        let second = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let p = engine.purge(7 * DAY).await.unwrap();
                (p.runs, t0.elapsed())
            })
        };
        let during = drive(&engine, fresh).await;
        let (second_runs, second_took) = second.await.unwrap();
        // Alone again: the store grew meanwhile, compare with both.
        let alone = (alone + drive(&engine, fresh).await) / 2.0;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("## retention: runs of {STEPS} steps (1 kB each) deleted in batches of {BATCH} runs, SQLite with fsync\n");
        println!("| | figure |");
        println!("| --- | --- |");
        println!(
            "| {} runs deleted, batch after batch | in {:.2} s ({:.0} runs/s); a batch holds the store p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
            first.runs,
            first.took.as_secs_f64(),
            first.runs as f64 / first.took.as_secs_f64(),
            ms(first.batches[first.batches.len() / 2]),
            ms(first.batches[first.batches.len() * 99 / 100]),
            ms(*first.batches.last().unwrap())
        );
        println!(
            "| {second_runs} runs deleted by the engine's paced pass, during the workload | in {:.2} s ({:.0} runs/s) |",
            second_took.as_secs_f64(),
            second_runs as f64 / second_took.as_secs_f64()
        );
        println!("| workload of {fresh} runs alone (before and after) | {alone:.0} steps/s |");
        println!("| the same while deleting | {during:.0} steps/s ({:+.0}%) |\n", (during / alone - 1.0) * 100.0);
        engine.close().await;
    });
}
