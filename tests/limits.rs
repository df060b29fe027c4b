//! Limits that fail clearly: a step whose output is over the limit, or
//! would take its run's journal over the journal's limit, fails without
//! retries, with an error naming the step and the sizes, and nothing of
//! the output is written; in process, through the test harness and for an
//! app's function driven over HTTP; on every store.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durafn::prelude::*;
use durafn::serve::Handler;
use durafn::store::RunStatus;
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

static PAGES: AtomicU32 = AtomicU32::new(0);

/// Pages of 3,000 bytes each (2,998 characters and the quotes), with a
/// sleep after the second, so that the rest of the run starts from the
/// journal as the store gives it back.
#[durable_fn(id = "pages", event = "limits/pages", retries = 3)]
async fn pages(_ctx: Ctx, event: Event) -> Result<usize> {
    let n = event.data["pages"].as_u64().unwrap_or(0) as u32;
    let mut total = 0;
    for i in 0..n {
        let page: String = step!("page", {
            PAGES.fetch_add(1, Ordering::SeqCst);
            format!("{i}").repeat(2998)
        })?;
        total += page.len();
        if i == 1 {
            sleep!("breathe", Duration::from_millis(1))?;
        }
    }
    Ok(total)
}

#[durable_fn(id = "remote-pages", event = "limits/remote-pages")]
async fn remote_pages(_ctx: Ctx, event: Event) -> Result<usize> {
    let n = event.data["pages"].as_u64().unwrap_or(0) as u32;
    let mut total = 0;
    for _ in 0..n {
        let page: String = step!("page", { "z".repeat(2998) })?;
        total += page.len();
    }
    Ok(total)
}

#[tokio::test]
async fn a_step_output_over_the_limit_fails_the_step_once_and_writes_nothing() {
    for (name, store, _guard) in common::every_store("limits").await {
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
    common::sync_handler(&engine, Handler::new("big").register(remote_export)).await;
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

#[tokio::test]
async fn a_step_that_would_take_the_journal_over_its_limit_fails_once_and_writes_nothing() {
    for (name, store, _guard) in common::every_store("limits").await {
        let engine = Engine::builder()
            .store(store)
            .register(pages)
            .max_journal_bytes(10_000)
            .build()
            .await
            .unwrap();
        let fits = engine
            .send(Event::new("limits/pages", json!({"pages": 3})))
            .await
            .unwrap();
        let fits = engine
            .wait_for_run(&fits.runs[0], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            fits.run.status,
            RunStatus::Completed,
            "{name}: 9,000 bytes fit: {:?}",
            fits.run.error
        );
        let before = PAGES.load(Ordering::SeqCst);
        let big = engine
            .send(Event::new("limits/pages", json!({"pages": 5})))
            .await
            .unwrap();
        let run = engine
            .wait_for_run(&big.runs[0], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(run.run.status, RunStatus::Failed, "{name}");
        let error = run.run.error.clone().unwrap();
        assert_eq!(error["name"], "JournalTooLarge", "{name}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("`page[3]`"), "{name}: {message}");
        assert!(
            message.contains(
                "(2.9 KiB) would take the run's journal from 8.8 KiB over its limit of 9.8 KiB"
            ),
            "{name}: {message}"
        );
        assert_eq!(
            PAGES.load(Ordering::SeqCst) - before,
            4,
            "{name}: pages 0 to 3, page 3 once: not retried"
        );
        let ids: Vec<(&str, &str, bool)> = run
            .steps
            .iter()
            .map(|s| (s.id.as_str(), s.status.as_str(), s.output.is_some()))
            .collect();
        assert_eq!(
            ids,
            [
                ("page[0]", "completed", true),
                ("page[1]", "completed", true),
                ("breathe[1]", "completed", false),
                ("page[2]", "completed", true),
                ("page[3]", "failed", false),
            ],
            "{name}"
        );
        engine.close().await;
    }
}

#[tokio::test]
async fn an_apps_journal_over_the_engines_limit_fails_its_run() {
    let engine = Engine::builder()
        .memory()
        .max_journal_bytes(10_000)
        .build()
        .await
        .unwrap();
    common::sync_handler(&engine, Handler::new("pages").register(remote_pages)).await;
    for (n, status) in [(3, RunStatus::Completed), (4, RunStatus::Failed)] {
        let sent = engine
            .send(Event::new("limits/remote-pages", json!({"pages": n})))
            .await
            .unwrap();
        let run = engine
            .wait_for_run(&sent.runs[0], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(run.run.status, status, "{n}: {:?}", run.run.error);
        if status == RunStatus::Failed {
            let error = run.run.error.unwrap();
            assert_eq!(error["name"], "JournalTooLarge", "{error}");
            assert_eq!(run.steps.len(), 4);
            assert!(run.steps[3].output.is_none());
        }
    }
}
