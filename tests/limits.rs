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
        let run = common::run_to_end(
            &engine,
            Event::new("limits/export", json!({"bytes": 5000})),
            10,
        )
        .await;
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
        let run = common::run_to_end(
            &engine,
            Event::new("limits/remote", json!({"bytes": bytes})),
            10,
        )
        .await;
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
        let run =
            common::run_to_end(&engine, Event::new("limits/pages", json!({"pages": 5})), 10).await;
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
        let run = common::run_to_end(
            &engine,
            Event::new("limits/remote-pages", json!({"pages": n})),
            10,
        )
        .await;
        assert_eq!(run.run.status, status, "{n}: {:?}", run.run.error);
        if status == RunStatus::Failed {
            let error = run.run.error.unwrap();
            assert_eq!(error["name"], "JournalTooLarge", "{error}");
            assert_eq!(run.steps.len(), 4);
            assert!(run.steps[3].output.is_none());
        }
    }
}

#[durable_fn(
    id = "big-batch",
    event = "limits/big-batch",
    batch_events(max_size = 6, timeout = "1s")
)]
async fn big_batch(_ctx: Ctx, events: Vec<Event>) -> Result<Vec<usize>> {
    let sizes: Vec<usize> = events
        .iter()
        .map(|e| e.data["blob"].as_str().map_or(0, str::len))
        .collect();
    let first: String = step!("first", {
        events[0].data["blob"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })?;
    let again: usize = step!("again", { first.len() })?;
    Ok(sizes.into_iter().chain([first.len(), again]).collect())
}

#[tokio::test]
async fn a_call_too_large_for_the_app_says_use_api_and_the_app_reads_its_batch_and_steps() {
    // Six events of 700 KB and a step output of 700 KB: a call body of
    // about 4.9 MB, over the 4 MiB an app takes by default. This app takes
    // 2 MiB, so only a call that leaves out the batch and the steps (and
    // an app that then reads them from the executor's API) gets through.
    let engine = Engine::builder()
        .memory()
        .max_event_bytes(1 << 20)
        .build()
        .await
        .unwrap();
    let app = Handler::new("bulky").register(big_batch).max_body(2 << 20);
    common::sync_handler(&engine, app).await;
    let mut runs = Vec::new();
    for i in 0..6u8 {
        let blob = char::from(b'a' + i)
            .to_string()
            .repeat(700_000 + usize::from(i));
        let sent = engine
            .send(Event::new("limits/big-batch", json!({ "blob": blob })))
            .await
            .unwrap();
        runs.extend(sent.runs);
    }
    runs.dedup();
    assert_eq!(runs.len(), 1, "one batch: {runs:?}");
    let run = engine
        .wait_for_run(&runs[0], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(run.run.status, RunStatus::Completed, "{:?}", run.run.error);
    assert_eq!(
        run.run.output,
        Some(json!([
            700_000, 700_001, 700_002, 700_003, 700_004, 700_005, 700_000, 700_000
        ]))
    );
}

#[tokio::test]
async fn the_run_api_gives_an_app_a_runs_batch_and_steps() {
    let engine = Engine::builder()
        .memory()
        .register(remote_export)
        .build()
        .await
        .unwrap();
    let url = common::listen(engine.router()).await;
    let run = common::run_to_end(
        &engine,
        Event::new("limits/remote", json!({"bytes": 3})),
        10,
    )
    .await;
    assert_eq!(run.run.status, RunStatus::Completed);
    let http = reqwest::Client::new();
    let get = |what: &str| {
        let r = http.get(format!("{url}/v0/runs/{}/{what}", run.run.id));
        async move {
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, batch) = get("batch").await;
    assert_eq!(status, 200);
    assert_eq!(batch.as_array().unwrap().len(), 1, "{batch}");
    assert_eq!(batch[0]["data"]["bytes"], 3);
    let (status, steps) = get("actions").await;
    assert_eq!(status, 200);
    assert_eq!(steps["render"], json!({"data": "yyy"}), "{steps}");
    let r = http
        .get(format!("{url}/v0/runs/nope/batch"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());
}
