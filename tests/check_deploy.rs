//! Checking a deploy against a real SQLite file written by the old build:
//! the runs in flight are replayed against each candidate build, running
//! no step, and exactly the runs that would break are reported.

mod common;

use std::sync::Arc;
use std::time::Duration;

use durafn::prelude::*;
use durafn::store::{RunStatus, SqliteStore, SqliteSync};
use durafn::{DurableFn, Engine};
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

#[durable_fn(id = "import", event = "import/go")]
async fn old_build(_ctx: Ctx, _event: Event) -> Result<u32> {
    let n = step!("count", { 2u32 })?;
    let mut total = 0;
    for i in 0..n {
        total += step!("fetch-page", { i + 1 })?;
    }
    sleep!("settle", HOUR)?;
    Ok(step!("finish", { total })?)
}

/// Other code, the same steps.
#[durable_fn(id = "import", event = "import/go")]
async fn refactored(_ctx: Ctx, _event: Event) -> Result<u32> {
    let n = step!("count", { 2u32 })?;
    let mut pages = Vec::new();
    for i in 0..n {
        pages.push(step!("fetch-page", { i + 1 })?);
    }
    sleep!("settle", HOUR)?;
    let total: u32 = pages.iter().sum();
    Ok(step!("finish", { total })?)
}

#[durable_fn(id = "import", event = "import/go")]
async fn renamed(_ctx: Ctx, _event: Event) -> Result<u32> {
    let n = step!("count", { 2u32 })?;
    let mut total = 0;
    for i in 0..n {
        total += step!("fetch", { i + 1 })?;
    }
    sleep!("settle", HOUR)?;
    Ok(step!("finish", { total })?)
}

#[durable_fn(id = "import", event = "import/go")]
async fn added_behind_patched(_ctx: Ctx, _event: Event) -> Result<u32> {
    let n = step!("count", { 2u32 })?;
    let mut total = 0;
    for i in 0..n {
        total += step!("fetch-page", { i + 1 })?;
    }
    if patched!("audit-pages")? {
        step!("audit", { total })?;
    }
    sleep!("settle", HOUR)?;
    Ok(step!("finish", { total })?)
}

#[durable_fn(id = "import", event = "import/go")]
async fn added_plainly(_ctx: Ctx, _event: Event) -> Result<u32> {
    let n = step!("count", { 2u32 })?;
    let mut total = 0;
    for i in 0..n {
        total += step!("fetch-page", { i + 1 })?;
    }
    step!("audit", { total })?;
    sleep!("settle", HOUR)?;
    Ok(step!("finish", { total })?)
}

/// The loop now fetches pages two at a time, in a nested loop.
#[durable_fn(id = "import", event = "import/go")]
async fn loop_changed(_ctx: Ctx, _event: Event) -> Result<u32> {
    let n = step!("count", { 2u32 })?;
    let mut total = 0;
    for i in 0..n {
        for j in 0..2u32 {
            total += step!("fetch-page", { i * 2 + j })?;
        }
    }
    sleep!("settle", HOUR)?;
    Ok(step!("finish", { total })?)
}

#[durable_fn(id = "other", event = "other/go")]
async fn other(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[tokio::test]
async fn check_deploy_reports_exactly_the_runs_a_build_would_break() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("prod.db");
    // The old build leaves two runs sleeping in `settle`.
    let engine = Engine::builder()
        .sqlite(&db)
        .register(old_build)
        .build()
        .await
        .unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let sent = engine
            .send(Event::new("import/go", json!({})))
            .await
            .unwrap();
        runs.push(sent.runs[0].clone());
    }
    for run in &runs {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while engine.run(run).await.unwrap().unwrap().run.status != RunStatus::Sleeping {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    engine.close().await;

    let store = SqliteStore::open(&db, SqliteSync::Full).unwrap();
    let check = |f: Arc<dyn DurableFn>| {
        let store = &store;
        async move { durafn::deploy::check(store, &[f]).await.unwrap() }
    };
    for (build, f) in [
        ("the same build", Arc::new(old_build) as Arc<dyn DurableFn>),
        ("other code, same steps", Arc::new(refactored)),
        (
            "a step added behind patched!",
            Arc::new(added_behind_patched),
        ),
    ] {
        let report = check(f).await;
        assert!(report.ok(), "{build}:\n{report}");
        assert_eq!(report.checked, 2, "{build}");
    }
    for (build, f, name, expected, found) in [
        (
            "a step renamed",
            Arc::new(renamed) as Arc<dyn DurableFn>,
            "JournalMismatch",
            "fetch-page[0]",
            "fetch[_]",
        ),
        (
            "a step added plainly",
            Arc::new(added_plainly),
            "NonDeterminism",
            "settle",
            "audit",
        ),
        (
            "a loop changed",
            Arc::new(loop_changed),
            "JournalMismatch",
            "fetch-page[0]",
            "fetch-page[_][_]",
        ),
    ] {
        let report = check(f).await;
        assert!(!report.ok(), "{build}");
        let mut broken: Vec<&str> = report.breaking.iter().map(|b| b.run_id.as_str()).collect();
        broken.sort_unstable();
        let mut want: Vec<&str> = runs.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(broken, want, "{build}:\n{report}");
        assert_eq!(report.per_function["import"], (2, 2), "{build}");
        for b in &report.breaking {
            assert_eq!(b.name, name, "{build}: {b:?}");
            assert!(b.message.contains(expected), "{build}: {}", b.message);
            assert!(b.message.contains(found), "{build}: {}", b.message);
            assert_eq!(b.version, Some(old_build.version()), "{build}");
        }
        let text = report.to_string();
        assert!(text.contains("2 would break"), "{build}: {text}");
    }
    // A run exported becomes a regression test of each build.
    let doc = durafn::deploy::export(&store, &runs[0])
        .await
        .unwrap()
        .expect("exported");
    let file = dir.path().join("run.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    use durafn::testing::replay;
    assert_eq!(replay(old_build, &file).await, Ok(()));
    assert_eq!(replay(refactored, &file).await, Ok(()));
    assert_eq!(replay(added_behind_patched, &file).await, Ok(()));
    assert_eq!(
        replay(renamed, &file).await.unwrap_err().name,
        "JournalMismatch"
    );
    assert_eq!(
        replay(added_plainly, &file).await.unwrap_err().name,
        "NonDeterminism"
    );
    assert_eq!(replay(other, &file).await.unwrap_err().name, "BadExport");
    // The same check as the user's binary runs it.
    drop(store);
    let args =
        |db: &std::path::Path| ["check-deploy", "--db", db.to_str().unwrap()].map(String::from);
    assert_eq!(
        durafn::deploy::cli(args(&db), vec![Arc::new(refactored)]).await,
        0
    );
    assert_eq!(
        durafn::deploy::cli(args(&db), vec![Arc::new(renamed)]).await,
        1
    );
    assert_eq!(
        durafn::deploy::cli(args(&dir.path().join("none.db")), vec![Arc::new(renamed)]).await,
        2,
        "no such database"
    );
    assert_eq!(durafn::deploy::cli(["check".to_string()], vec![]).await, 2);
    let store = SqliteStore::open(&db, SqliteSync::Full).unwrap();
    // A build without the function drops its runs in flight.
    let report = durafn::deploy::check(&store, &[Arc::new(other)])
        .await
        .unwrap();
    assert!(!report.ok());
    assert_eq!(report.missing.len(), 2);
    // Nothing was written: the runs still sleep where they were.
    drop(store);
    let engine = Engine::builder()
        .sqlite(&db)
        .register(old_build)
        .build()
        .await
        .unwrap();
    for run in &runs {
        let d = engine.run(run).await.unwrap().unwrap();
        assert_eq!(d.run.status, RunStatus::Sleeping);
        assert_eq!(d.steps.len(), 4, "count, two pages, settle");
    }
    // The run API serves the same export (`durafn export <run-id>`).
    let url = common::listen(engine.router()).await;
    let served: serde_json::Value = reqwest::get(format!("{url}/v1/runs/{}/export", runs[0]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, doc);
}
