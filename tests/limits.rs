//! Limits that fail clearly: a step whose output is over the limit fails
//! without retries, with an error naming the step and the size, and
//! nothing of the output is written; in process, through the test harness
//! and for an app's function driven over HTTP; on every store.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use durafn::prelude::*;
use durafn::serve::Handler;
use durafn::store::{RunStatus, Store};
use durafn::Engine;
use serde_json::json;

static CALLS: AtomicU32 = AtomicU32::new(0);

#[durable_fn(id = "export", event = "limits/export", retries = 3)]
async fn export(_ctx: Ctx, event: Event) -> Result<usize> {
    let n = event.data["bytes"].as_u64().unwrap_or(0) as usize;
    let small = step!("count", { n })?;
    let big: String = step!("render", {
        CALLS.fetch_add(1, Ordering::SeqCst);
        "x".repeat(n)
    })?;
    Ok(small + big.len())
}

#[durable_fn(id = "remote-export", event = "limits/remote")]
async fn remote_export(_ctx: Ctx, event: Event) -> Result<usize> {
    let n = event.data["bytes"].as_u64().unwrap_or(0) as usize;
    let big: String = step!("render", { "y".repeat(n) })?;
    Ok(big.len())
}

/// A store by name, with what must live as long as it (its directory, its
/// schema).
type Backing = (&'static str, Arc<dyn Store>, Box<dyn std::any::Any>);

async fn stores() -> Vec<Backing> {
    let mut v: Vec<Backing> = vec![(
        "memory",
        Arc::new(durafn::store::MemoryStore::new()),
        Box::new(()),
    )];
    let dir = tempfile::tempdir().unwrap();
    let sqlite = durafn::store::SqliteStore::open(
        dir.path().join("limits.db"),
        durafn::store::SqliteSync::Full,
    )
    .unwrap();
    v.push(("sqlite", Arc::new(sqlite), Box::new(dir)));
    if let Some((s, guard)) = common::pg_store("limits").await {
        v.push(("postgres", s, Box::new(guard)));
    }
    v
}

#[tokio::test]
async fn a_step_output_over_the_limit_fails_the_step_once_and_writes_nothing() {
    for (name, store, _guard) in stores().await {
        let engine = Engine::builder()
            .store(store)
            .register(export)
            .max_step_output_bytes(1024)
            .build()
            .await
            .unwrap();
        let before = CALLS.load(Ordering::SeqCst);
        let ok = engine
            .send(Event::new("limits/export", json!({"bytes": 1000})))
            .await
            .unwrap();
        let ok = engine
            .wait_for_run(&ok.runs[0], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            ok.run.status,
            RunStatus::Completed,
            "{name}: under the limit"
        );
        let big = engine
            .send(Event::new("limits/export", json!({"bytes": 5000})))
            .await
            .unwrap();
        let run = engine
            .wait_for_run(&big.runs[0], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(run.run.status, RunStatus::Failed, "{name}");
        let error = run.run.error.clone().unwrap();
        assert_eq!(error["name"], "StepOutputTooLarge", "{name}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("`render`"), "{name}: {message}");
        assert!(message.contains("is 4.9 KiB or more"), "{name}: {message}");
        assert!(
            message.contains("over the limit of 1.0 KiB"),
            "{name}: {message}"
        );
        assert_eq!(
            CALLS.load(Ordering::SeqCst) - before,
            2,
            "{name}: once for each run: not retried"
        );
        let render = run.steps.iter().find(|s| s.id == "render").unwrap();
        assert_eq!(render.status, "failed", "{name}");
        assert_eq!(
            render.output, None,
            "{name}: nothing of the output is written"
        );
        engine.close().await;
    }
}

#[tokio::test]
async fn the_harness_applies_the_default_limit_of_4_mib() {
    let out = durafn::testing::TestRun::new(remote_export)
        .event("limits/remote", json!({"bytes": 5 << 20}))
        .run()
        .await;
    let err = out.result.unwrap_err();
    assert_eq!(err.name, "StepOutputTooLarge", "{err}");
    let fits = durafn::testing::TestRun::new(remote_export)
        .event("limits/remote", json!({"bytes": 3 << 20}))
        .run()
        .await;
    assert_eq!(fits.output::<usize>(), 3 << 20);
}

#[tokio::test]
async fn an_apps_step_output_over_the_engines_limit_fails_its_run() {
    let engine = Engine::builder()
        .memory()
        .max_step_output_bytes(2048)
        .build()
        .await
        .unwrap();
    let executor = common::listen(engine.router()).await;
    let app = common::listen(
        Handler::new("big")
            .dev(true)
            .api_base(&executor)
            .register(remote_export)
            .router_at("/api"),
    )
    .await;
    engine.sync_app(&format!("{app}/api")).await.unwrap();
    for (bytes, status) in [(100, RunStatus::Completed), (10_000, RunStatus::Failed)] {
        let sent = engine
            .send(Event::new("limits/remote", json!({"bytes": bytes})))
            .await
            .unwrap();
        let run = engine
            .wait_for_run(&sent.runs[0], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(run.run.status, status, "{bytes}: {:?}", run.run.error);
        if status == RunStatus::Failed {
            let error = run.run.error.unwrap();
            assert_eq!(error["name"], "StepOutputTooLarge", "{error}");
            assert!(run.steps.iter().all(|s| s.output.is_none()));
        }
    }
}
