//! `patched!` across a deploy, on a real SQLite file: runs started on the
//! old code keep to the old path, runs that reach the change on the new
//! code take the new one, and without `patched!` the same change breaks
//! the runs in flight.

use std::sync::Arc;
use std::time::Duration;

use durafn::prelude::*;
use durafn::store::RunStatus;
use durafn::testing::ManualClock;
use durafn::{DurableFn, Engine};
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

/// The code before the deploy.
#[durable_fn(id = "quote", event = "shop/quote")]
async fn quote_v1(_ctx: Ctx, _event: Event) -> Result<u32> {
    let base = step!("base", { 100u32 })?;
    sleep!("cool-off", HOUR)?;
    Ok(step!("total", { base * 2 })?)
}

/// The deploy: a discount before the cool-off, behind `patched!`.
#[durable_fn(id = "quote", event = "shop/quote")]
async fn quote_v2(_ctx: Ctx, _event: Event) -> Result<u32> {
    let base = step!("base", { 100u32 })?;
    let discount = if patched!("add-discount")? {
        step!("discount", { 5u32 })?
    } else {
        0
    };
    sleep!("cool-off", HOUR)?;
    Ok(step!("total", { base * 2 - discount })?)
}

/// The same change without `patched!`.
#[durable_fn(id = "quote", event = "shop/quote")]
async fn quote_unpatched(_ctx: Ctx, _event: Event) -> Result<u32> {
    let base = step!("base", { 100u32 })?;
    let discount = step!("discount", { 5u32 })?;
    sleep!("cool-off", HOUR)?;
    Ok(step!("total", { base * 2 - discount })?)
}

async fn engine<F: DurableFn>(f: F, db: &std::path::Path, clock: &Arc<ManualClock>) -> Engine {
    Engine::builder()
        .sqlite(db)
        .clock(clock.clone())
        .register(f)
        .build()
        .await
        .unwrap()
}

async fn status_becomes(engine: &Engine, run: &str, want: RunStatus) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = engine.run(run).await.unwrap().unwrap().run.status;
        if s == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{run}: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A run started on v1, sleeping in its cool-off.
async fn in_flight(db: &std::path::Path, clock: &Arc<ManualClock>) -> String {
    let e = engine(quote_v1, db, clock).await;
    let sent = e.send(Event::new("shop/quote", json!({}))).await.unwrap();
    status_becomes(&e, &sent.runs[0], RunStatus::Sleeping).await;
    e.close().await;
    sent.runs[0].clone()
}

#[tokio::test]
async fn patched_keeps_old_runs_on_the_old_path_and_new_runs_on_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("quote.db");
    let clock = Arc::new(ManualClock::new(1_767_263_400_000));
    let old = in_flight(&db, &clock).await;

    let e = engine(quote_v2, &db, &clock).await;
    let new = e
        .send(Event::new("shop/quote", json!({})))
        .await
        .unwrap()
        .runs[0]
        .clone();
    status_becomes(&e, &new, RunStatus::Sleeping).await;
    clock.advance(HOUR);
    let old = e.wait_for_run(&old, Duration::from_secs(10)).await.unwrap();
    assert_eq!(old.run.output, Some(json!(200)), "{:?}", old.run.error);
    let ids: Vec<&str> = old.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["base", "cool-off", "total"],
        "the old path, nothing new journaled"
    );
    let new = e.wait_for_run(&new, Duration::from_secs(10)).await.unwrap();
    assert_eq!(new.run.output, Some(json!(195)), "{:?}", new.run.error);
    let ids: Vec<&str> = new.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["base", "add-discount", "discount", "cool-off", "total"],
        "the patch is journaled like a step"
    );
    e.close().await;
}

#[tokio::test]
async fn without_patched_the_same_change_breaks_the_runs_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("quote.db");
    let clock = Arc::new(ManualClock::new(1_767_263_400_000));
    let old = in_flight(&db, &clock).await;
    let e = engine(quote_unpatched, &db, &clock).await;
    clock.advance(HOUR);
    let old = e.wait_for_run(&old, Duration::from_secs(10)).await.unwrap();
    assert_eq!(old.run.status, RunStatus::Failed);
    assert_eq!(old.run.error.unwrap()["name"], "NonDeterminism");
    e.close().await;
}
