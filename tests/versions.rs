//! A function's version is the hash of its step table; each run records
//! the version it started on, and the run API shows it.

use std::time::Duration;

use durafn::prelude::*;
use durafn::{DurableFn, Engine};
use serde_json::json;

#[durable_fn(id = "pricing", event = "shop/priced")]
async fn pricing(_ctx: Ctx, _event: Event) -> Result<u32> {
    let base = step!("base-price", { 10u32 })?;
    Ok(step!("discount", { base - 1 })?)
}

/// The same function after a deploy that added a step.
#[durable_fn(id = "pricing", event = "shop/priced")]
async fn pricing_v2(_ctx: Ctx, _event: Event) -> Result<u32> {
    let base = step!("base-price", { 10u32 })?;
    let tax = step!("tax", { 2u32 })?;
    Ok(step!("discount", { base + tax - 1 })?)
}

/// Start a run of `f` on the database, wait for it, check the version it
/// records, as the run API shows it; its ID.
async fn run_once<F: DurableFn + Copy>(f: F, db: &std::path::Path) -> String {
    let engine = Engine::builder()
        .sqlite(db)
        .register(f)
        .build()
        .await
        .unwrap();
    let sent = engine
        .send(Event::new("shop/priced", json!({})))
        .await
        .unwrap();
    let run = engine
        .wait_for_run(&sent.runs[0], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(run.run.version, Some(f.version()));
    // What the run API answers (`{"data": <this>}`).
    let shown = serde_json::to_value(&run).unwrap();
    assert_eq!(shown["version"], json!(f.version()));
    engine.close().await;
    sent.runs[0].clone()
}

#[tokio::test]
async fn each_run_records_the_version_it_started_on() {
    assert_ne!(pricing.version(), pricing_v2.version());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v.db");
    let first = run_once(pricing, &db).await;
    let second = run_once(pricing_v2, &db).await;
    // Each run keeps its own version in the same store.
    let engine = Engine::builder().sqlite(&db).build().await.unwrap();
    let first = engine.run(&first).await.unwrap().unwrap();
    assert_eq!(first.run.version, Some(pricing.version()));
    let second = engine.run(&second).await.unwrap().unwrap();
    assert_eq!(second.run.version, Some(pricing_v2.version()));
}
