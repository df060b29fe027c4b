//! Run operations: rerun, replay from a step, replay with an edited step
//! output, bulk cancel and bulk rerun; through the engine on every store,
//! over the run API, and for an app's function driven over HTTP.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use durafn::engine::{BulkOp, OpError, Replay, Selection};
use durafn::prelude::*;
use durafn::store::{RunFilter, RunStatus};
use durafn::Engine;
use serde_json::{json, Value};

/// Page 5 of the import fails while the bug is in.
static BUG: AtomicBool = AtomicBool::new(true);
/// How often each page was fetched.
static FETCHED: [AtomicU32; 7] = [const { AtomicU32::new(0) }; 7];

#[durable_fn(id = "import", event = "ops/import", retries = 0)]
async fn import(_ctx: Ctx, _event: Event) -> Result<usize> {
    let mut total = 0;
    for page in 0..7usize {
        let n: usize = step!("fetch-products", {
            FETCHED.get(page).map(|n| n.fetch_add(1, Ordering::SeqCst));
            if page == 5 && BUG.load(Ordering::SeqCst) {
                return Err(durafn::Error::msg("page 5: unexpected end of JSON"));
            }
            page * 10
        })?;
        total += n;
    }
    Ok(total)
}

static CHARGED: AtomicU32 = AtomicU32::new(0);

/// An upstream API quoted a negative price; charging it fails.
#[durable_fn(id = "checkout", event = "ops/checkout", retries = 0)]
async fn checkout(_ctx: Ctx, event: Event) -> Result<i64> {
    let quoted = event.data["quote"].as_i64().unwrap_or(0);
    let price: i64 = step!("quote", { quoted })?;
    let charged: i64 = step!("charge", {
        if price < 0 {
            return Err(durafn::Error::msg(format!("cannot charge {price}")));
        }
        CHARGED.fetch_add(1, Ordering::SeqCst);
        price
    })?;
    Ok(charged)
}

#[durable_fn(id = "nap", event = "ops/nap")]
async fn nap(_ctx: Ctx, _event: Event) -> Result<()> {
    sleep!("long", Duration::from_secs(3600))?;
    Ok(())
}

#[durable_fn(id = "other-nap", event = "ops/other-nap")]
async fn other_nap(_ctx: Ctx, _event: Event) -> Result<()> {
    sleep!("long", Duration::from_secs(3600))?;
    Ok(())
}

fn fetched() -> Vec<u32> {
    FETCHED.iter().map(|n| n.load(Ordering::SeqCst)).collect()
}

async fn ended(engine: &Engine, id: &str) -> durafn::store::RunDetail {
    engine
        .wait_for_run(id, Duration::from_secs(20))
        .await
        .unwrap()
}

/// The run `id` once it has ended, which must be completed.
async fn completed(engine: &Engine, id: &str, case: &str) -> durafn::store::RunDetail {
    let done = ended(engine, id).await;
    assert_eq!(
        done.run.status,
        RunStatus::Completed,
        "{case}: {:?}",
        done.run.error
    );
    done
}

/// The statics above are shared: the cases that use them run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_failed_import_replayed_from_its_failed_page_runs_only_what_follows() {
    let _serial = SERIAL.lock().await;
    for (name, store, _guard) in common::every_store("ops_replay").await {
        let engine = Engine::builder()
            .store(store)
            .register(import)
            .build()
            .await
            .unwrap();
        BUG.store(true, Ordering::SeqCst);
        for n in &FETCHED {
            n.store(0, Ordering::SeqCst);
        }
        let sent = engine
            .send(Event::new("ops/import", json!({})))
            .await
            .unwrap();
        let failed = ended(&engine, &sent.runs[0]).await;
        assert_eq!(failed.run.status, RunStatus::Failed, "{name}");
        assert_eq!(fetched(), [1, 1, 1, 1, 1, 1, 0], "{name}");
        // The bug is fixed; replay from the failed page.
        BUG.store(false, Ordering::SeqCst);
        let new = engine
            .replay(&failed.run.id, Replay::from("fetch-products[5]"))
            .await
            .unwrap();
        let done = completed(&engine, &new, name).await;
        assert_eq!(done.run.output, Some(json!(210)), "{name}");
        assert_eq!(
            fetched(),
            [1, 1, 1, 1, 1, 2, 1],
            "{name}: pages 0 to 4 came from the journal"
        );
        let ids: Vec<&str> = done.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids.len(),
            7,
            "{name}: all seven pages in the new run's trace"
        );
        let origin = done.run.origin.clone().expect("it names its origin");
        assert_eq!(origin.run_id, failed.run.id, "{name}");
        assert_eq!(origin.kind, "replay");
        assert_eq!(origin.from_step.as_deref(), Some("fetch-products[5]"));
        // The old run is unchanged but for the operation recorded on it.
        let old = engine.run(&failed.run.id).await.unwrap().unwrap();
        assert_eq!(old.run.status, RunStatus::Failed);
        assert_eq!(old.ops.len(), 1, "{name}");
        assert_eq!(old.ops[0].op, "replay");
        assert_eq!(old.ops[0].made.as_deref(), Some(new.as_str()));
        // A rerun starts again from the first page.
        let again = engine.rerun(&failed.run.id).await.unwrap();
        let done = ended(&engine, &again).await;
        assert_eq!(done.run.status, RunStatus::Completed, "{name}");
        assert_eq!(fetched(), [2, 2, 2, 2, 2, 3, 2], "{name}");
        assert_eq!(done.run.origin.unwrap().kind, "rerun");
        assert_eq!(done.run.event_id, failed.run.event_id, "the same event");
        engine.close().await;
    }
}

#[tokio::test]
async fn a_replay_with_an_edited_output_fixes_what_an_upstream_api_got_wrong() {
    let _serial = SERIAL.lock().await;
    let engine = Engine::builder()
        .memory()
        .register(checkout)
        .build()
        .await
        .unwrap();
    let sent = engine
        .send(Event::new("ops/checkout", json!({"quote": -5})))
        .await
        .unwrap();
    let failed = ended(&engine, &sent.runs[0]).await;
    assert_eq!(failed.run.status, RunStatus::Failed);
    let charged = CHARGED.load(Ordering::SeqCst);
    // The quote's output edited; replay from the step after it.
    let new = engine
        .replay(&failed.run.id, Replay::default().edit("quote", json!(42)))
        .await
        .unwrap();
    let done = completed(&engine, &new, "replayed").await;
    assert_eq!(done.run.output, Some(json!(42)));
    assert_eq!(CHARGED.load(Ordering::SeqCst), charged + 1);
    let origin = done.run.origin.unwrap();
    assert_eq!(origin.edited_step.as_deref(), Some("quote"));
    assert_eq!(origin.from_step.as_deref(), Some("charge"));
    assert_eq!(done.steps[0].output, Some(json!(42)));

    // What cannot be done is refused, and nothing is made.
    let before = engine.runs(RunFilter::default()).await.unwrap().len();
    let refused = [
        (Replay::from("nope"), "no journaled step `nope`"),
        (
            Replay::from("quote").edit("charge", json!(1)),
            "is not kept",
        ),
        (Replay::default(), "needs the step"),
    ];
    for (replay, why) in refused {
        match engine.replay(&failed.run.id, replay).await {
            Err(OpError::Bad(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    assert!(matches!(
        engine.rerun("no-such-run").await,
        Err(OpError::NoRun(_))
    ));
    assert_eq!(
        engine.runs(RunFilter::default()).await.unwrap().len(),
        before
    );
}

async fn wait_job(engine: &Engine, id: &str) -> durafn::engine::JobStatus {
    for _ in 0..400 {
        let job = engine.job(id).expect("the job");
        if job.finished {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the job did not finish");
}

#[tokio::test]
async fn bulk_cancel_and_rerun_touch_the_runs_selected_and_report_progress() {
    let engine = Engine::builder()
        .memory()
        .register(nap)
        .register(other_nap)
        .build()
        .await
        .unwrap();
    let mut naps = Vec::new();
    for _ in 0..5 {
        naps.extend(
            engine
                .send(Event::new("ops/nap", json!({})))
                .await
                .unwrap()
                .runs,
        );
    }
    let others = engine
        .send(Event::new("ops/other-nap", json!({})))
        .await
        .unwrap()
        .runs;
    let sleeping = |fn_id: &'static str| {
        let engine = engine.clone();
        async move {
            engine
                .runs(RunFilter {
                    function: Some(fn_id.into()),
                    status: Some(RunStatus::Sleeping),
                    ..Default::default()
                })
                .await
                .unwrap()
                .len()
        }
    };
    for _ in 0..200 {
        if sleeping("nap").await == 5 && sleeping("other-nap").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let job = engine.bulk(
        BulkOp::Cancel,
        Selection {
            function: Some("nap".into()),
            ..Default::default()
        },
    );
    let job = wait_job(&engine, &job.id).await;
    assert_eq!((job.matched, job.done, job.skipped), (5, 5, 0), "{job:?}");
    for id in &naps {
        let r = engine.run(id).await.unwrap().unwrap();
        assert_eq!(r.run.status, RunStatus::Cancelled);
        assert_eq!(r.ops[0].op, "cancel");
    }
    assert_eq!(sleeping("other-nap").await, 1, "another function's run");
    // Cancelling again: every run has ended, each is skipped with why.
    let job = engine.bulk(
        BulkOp::Cancel,
        Selection {
            function: Some("nap".into()),
            ..Default::default()
        },
    );
    let job = wait_job(&engine, &job.id).await;
    assert_eq!((job.done, job.skipped), (0, 5));
    assert!(job.errors[0].contains("ended (cancelled)"), "{job:?}");
    // Rerun the cancelled ones created in a time range.
    let job = engine.bulk(
        BulkOp::Rerun,
        Selection {
            function: Some("nap".into()),
            status: Some(RunStatus::Cancelled),
            since_ms: Some(0),
            until_ms: Some(i64::MAX),
        },
    );
    let job = wait_job(&engine, &job.id).await;
    assert_eq!(job.done, 5, "{job:?}");
    for _ in 0..200 {
        if sleeping("nap").await == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sleeping("nap").await, 5, "five new runs");
    // A range that holds nothing.
    let job = engine.bulk(
        BulkOp::Cancel,
        Selection {
            function: Some("nap".into()),
            until_ms: Some(1),
            ..Default::default()
        },
    );
    assert_eq!(wait_job(&engine, &job.id).await.matched, 0);
    drop(others);
}

#[tokio::test]
async fn the_run_api_reruns_replays_and_runs_bulk_jobs() {
    let _serial = SERIAL.lock().await;
    let engine = Engine::builder()
        .memory()
        .register(checkout)
        .build()
        .await
        .unwrap();
    let url = common::listen(engine.router()).await;
    let sent = engine
        .send(Event::new("ops/checkout", json!({"quote": -1})))
        .await
        .unwrap();
    let failed = ended(&engine, &sent.runs[0]).await.run.id;
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let r = http.post(format!("{url}{path}")).json(&body);
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = post(
        format!("/v1/runs/{failed}/replay"),
        json!({"edit": {"step": "quote", "output": 7}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let new = body["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(ended(&engine, &new).await.run.output, Some(json!(7)));
    let (status, body) = post(format!("/v1/runs/{failed}/rerun"), json!(null)).await;
    assert_eq!(status, 201, "{body}");
    let rerun = body["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(ended(&engine, &rerun).await.run.status, RunStatus::Failed);
    let r = http
        .get(format!("{url}/v1/runs/{failed}"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let ops: Vec<&str> = r["data"]["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["replay", "rerun"]);
    for (path, body, code, says) in [
        (
            format!("/v1/runs/{failed}/replay"),
            json!({"from": "nope"}),
            422,
            "no journaled step",
        ),
        (
            format!("/v1/runs/{failed}/replay"),
            json!({"form": "quote"}),
            400,
            "unknown field",
        ),
        (
            "/v1/runs/nope/replay".to_string(),
            json!({"from": "quote"}),
            404,
            "no run",
        ),
        (
            "/v1/runs/nope/rerun".to_string(),
            json!(null),
            404,
            "no run",
        ),
        (
            "/v1/bulk".to_string(),
            json!({"op": "cancel"}),
            400,
            "needs a selection",
        ),
        (
            "/v1/bulk".to_string(),
            json!({"op": "delete", "function": "checkout"}),
            400,
            "unknown variant",
        ),
    ] {
        let (status, answer) = post(path.clone(), body).await;
        assert_eq!(status, code, "{path}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    let (status, body) = post(
        "/v1/bulk".into(),
        json!({"op": "rerun", "function": "checkout", "status": "failed"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let job = body["data"]["id"].as_str().unwrap().to_string();
    let mut last = Value::Null;
    for _ in 0..200 {
        last = http
            .get(format!("{url}/v1/bulk/{job}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if last["data"]["finished"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(last["data"]["done"], 2, "the two failed runs: {last}");
    let missing = http
        .get(format!("{url}/v1/bulk/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[durable_fn(id = "served-import", event = "ops/served")]
async fn served_import(_ctx: Ctx, event: Event) -> Result<i64> {
    let base = event.data["base"].as_i64().unwrap_or(0);
    let a: i64 = step!("first", { base })?;
    let b: i64 = step!("second", {
        if a < 0 {
            return Err(durafn::Error::non_retriable("negative"));
        }
        a + 1
    })?;
    Ok(b)
}

#[tokio::test]
async fn an_apps_run_is_replayed_by_its_step_names() {
    let engine = Engine::builder().memory().build().await.unwrap();
    let app = durafn::serve::Handler::new("app").register(served_import);
    common::sync_handler(&engine, app).await;
    let sent = engine
        .send(Event::new("ops/served", json!({"base": -3})))
        .await
        .unwrap();
    let failed = ended(&engine, &sent.runs[0]).await;
    assert_eq!(failed.run.status, RunStatus::Failed);
    // Its steps are keyed by hashes; the names find them.
    assert_ne!(failed.steps[0].id, "first");
    let new = engine
        .replay(&failed.run.id, Replay::default().edit("first", json!(10)))
        .await
        .unwrap();
    let done = completed(&engine, &new, "replayed").await;
    assert_eq!(done.run.output, Some(json!(11)));
    let origin = done.run.origin.unwrap();
    assert_eq!(origin.edited_step.as_deref(), Some("first"), "by its name");
    assert_eq!(origin.from_step.as_deref(), Some("second"));
}
