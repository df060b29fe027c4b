//! Retention through the engine, on every store: what ended long ago is
//! deleted (runs with their journals, traces and events), what may still
//! be needed is kept (active runs, a child whose parent waits on it), the
//! background task does it on its own, and a SQLite file shrinks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use durafn::prelude::*;
use durafn::store::RunStatus;
use durafn::testing::ManualClock;
use durafn::Engine;
use serde_json::json;

const DAY: Duration = Duration::from_secs(86_400);
const WAIT: Duration = Duration::from_secs(10);

#[durable_fn(id = "report", event = "retention/report")]
async fn report(_ctx: Ctx, event: Event) -> Result<usize> {
    let n = event.data["bytes"].as_u64().unwrap_or(1) as usize;
    let body: String = step!("render", { "r".repeat(n) })?;
    Ok(body.len())
}

#[durable_fn(id = "approval", event = "retention/approval")]
async fn approval(_ctx: Ctx, _event: Event) -> Result<bool> {
    let ok: Option<Event> = wait_for_event!(
        "granted",
        event = "retention/granted",
        timeout = Duration::from_secs(30 * 86_400)
    )?;
    Ok(ok.is_some())
}

/// Invokes a child, then stays active for a month whatever the child did.
#[durable_fn(id = "parent", event = "retention/parent")]
async fn parent(_ctx: Ctx, _event: Event) -> Result<bool> {
    let granted: std::result::Result<bool, StepError> = invoke!("ask", approval, json!({}));
    sleep!("linger", Duration::from_secs(30 * 86_400))?;
    Ok(granted.is_ok())
}

async fn status_becomes(engine: &Engine, run: &str, want: RunStatus) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = engine.run(run).await.unwrap().unwrap().run.status;
        if s == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{run} is {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn what_ended_before_the_window_goes_and_what_may_be_needed_stays() {
    for (name, store, _guard) in common::every_store("retention").await {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let engine = Engine::builder()
            .store(store.clone())
            .clock(clock.clone())
            .register(report)
            .register(approval)
            .register(parent)
            .retention(7 * DAY)
            .build()
            .await
            .unwrap();
        let send = |e: &str| engine.send(Event::new(e, json!({})));
        let done = send("retention/report").await.unwrap().runs[0].clone();
        engine.wait_for_run(&done, WAIT).await.unwrap();
        let waiting = send("retention/approval").await.unwrap().runs[0].clone();
        status_becomes(&engine, &waiting, RunStatus::Sleeping).await;
        let asker = send("retention/parent").await.unwrap().runs[0].clone();
        status_becomes(&engine, &asker, RunStatus::Sleeping).await;
        let child = engine
            .runs(durafn::store::RunFilter {
                function: Some("approval".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.id != waiting)
            .expect("the invoked run")
            .id;
        // The child ends (cancelled); its parent goes on, and stays active.
        engine.cancel(&child).await.unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while !engine
            .run(&asker)
            .await
            .unwrap()
            .unwrap()
            .steps
            .iter()
            .any(|s| s.id == "linger")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: the parent lingers"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        clock.advance(6 * DAY);
        let p = engine.purge(7 * DAY).await.unwrap();
        assert_eq!(p.runs, 0, "{name}: nothing ended a week ago yet");
        clock.advance(2 * DAY);
        let p = engine.purge(7 * DAY).await.unwrap();
        assert_eq!(p.runs, 1, "{name}: {p:?}");
        assert!(
            engine.run(&done).await.unwrap().is_none(),
            "{name}: the run that ended 8 days ago is gone"
        );
        assert!(store.journal(&done).await.unwrap().is_none(), "{name}");
        for kept in [&waiting, &asker, &child] {
            assert!(
                engine.run(kept).await.unwrap().is_some(),
                "{name}: {kept} stays"
            );
        }
        engine.close().await;
    }
}

#[tokio::test]
async fn the_background_task_deletes_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .sqlite(dir.path().join("bg.db"))
        .register(report)
        .retention(Duration::from_millis(400))
        .build()
        .await
        .unwrap();
    let sent = engine
        .send(Event::new("retention/report", json!({})))
        .await
        .unwrap();
    engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while engine.run(&sent.runs[0]).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the run was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine.close().await;
}

/// The size of a SQLite file once its last connection closed: SQLite then
/// copies the write-ahead log into the file and deletes the log.
async fn settled_size(db: &std::path::Path) -> u64 {
    let wal = db.with_extension("db-wal");
    let deadline = std::time::Instant::now() + WAIT;
    while wal.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::metadata(db).unwrap().len()
}

#[tokio::test]
async fn a_sqlite_file_gives_the_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("space.db");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let open = || {
        Engine::builder()
            .sqlite(&db)
            .sqlite_sync(durafn::store::SqliteSync::Normal)
            .clock(clock.clone())
            .register(report)
            .build()
    };
    let engine = open().await.unwrap();
    let mut runs = Vec::new();
    for _ in 0..100 {
        let sent = engine
            .send(Event::new("retention/report", json!({"bytes": 100_000})))
            .await
            .unwrap();
        runs.push(sent.runs[0].clone());
    }
    for r in &runs {
        engine.wait_for_run(r, WAIT).await.unwrap();
    }
    engine.close().await;
    let full = settled_size(&db).await;
    assert!(full > 10_000_000, "100 outputs of 100 kB: {full} bytes");

    let engine = open().await.unwrap();
    clock.advance(8 * DAY);
    let p = engine.purge(7 * DAY).await.unwrap();
    assert_eq!(p.runs, 100);
    engine.close().await;
    let after = settled_size(&db).await;
    assert!(
        after < full / 10,
        "the file shrinks from {full} to {after} bytes"
    );
}
