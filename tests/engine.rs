//! The engine through its public API, on the memory store and on SQLite:
//! events in, runs out, retries, durable sleeps across a restart,
//! cancellation, the run API over HTTP, and bad input.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durafn::prelude::*;
use durafn::store::{RunFilter, RunStatus};
use durafn::{Backoff, Engine, EngineBuilder};
use serde_json::{json, Value};

const FAST: Backoff = Backoff {
    base: Duration::from_millis(5),
    max: Duration::from_millis(20),
};

#[derive(Deserialize)]
struct Order {
    items: u32,
}

#[durable_fn(id = "fulfil", event = "shop/order.*")]
async fn fulfil(_ctx: Ctx, event: Event<Order>) -> Result<u32> {
    let mut packed = 0;
    for i in 0..event.data.items {
        packed += step!("pack", { i + 1 })?;
    }
    step!("ship", { packed })?;
    Ok(packed)
}

#[derive(Debug)]
struct Transient;
impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream timed out")
    }
}
impl std::error::Error for Transient {}

/// Attempts of `flaky`'s step, per run (other tests send `test/flaky` too).
static FLAKY: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn flaky_attempts(run: &str) -> usize {
    FLAKY.lock().unwrap().iter().filter(|r| *r == run).count()
}

#[durable_fn(id = "flaky", event = "test/flaky", retries = 3)]
async fn flaky(ctx: Ctx, _event: Event) -> Result<u32> {
    let v = step!("call", {
        FLAKY.lock().unwrap().push(ctx.run_id().to_string());
        if flaky_attempts(ctx.run_id()) <= 2 {
            Err(Transient)?;
        }
        7u32
    })?;
    Ok(v)
}

#[durable_fn(id = "doomed", event = "test/doomed", retries = 1)]
async fn doomed(_ctx: Ctx, _event: Event) -> Result<u32> {
    let v: u32 = step!("never-works", {
        Err(Transient)?;
        1u32
    })?;
    Ok(v)
}

#[durable_fn(id = "napper", event = "test/nap")]
async fn napper(_ctx: Ctx, event: Event) -> Result<String> {
    step!("before", { 1u8 })?;
    let ms = event.data["ms"].as_u64().unwrap_or(10);
    sleep!("nap", Duration::from_millis(ms))?;
    let v = step!("after", { "woke".to_string() })?;
    Ok(v)
}

fn builder() -> EngineBuilder {
    Engine::builder()
        .register(fulfil)
        .register(flaky)
        .register(doomed)
        .register(napper)
        .register(long_steps)
        .backoff(FAST)
}

async fn engines() -> Vec<(&'static str, Engine, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = builder()
        .sqlite(dir.path().join("durafn.db"))
        .build()
        .await
        .unwrap();
    let mem = builder().memory().build().await.unwrap();
    vec![
        ("memory", mem, tempfile::tempdir().unwrap()),
        ("sqlite", sqlite, dir),
    ]
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_event_runs_every_matching_function_and_keeps_a_trace() {
    for (store, engine, _dir) in engines().await {
        let sent = engine
            .send(Event::new("shop/order.created", json!({"items": 3})))
            .await
            .unwrap();
        assert_eq!(sent.ids.len(), 1);
        assert_eq!(sent.runs.len(), 1, "{store}: the wildcard trigger matches");
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.status, RunStatus::Completed, "{store}");
        assert_eq!(run.run.output, Some(json!(6)));
        let ids: Vec<&str> = run.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["pack[0]", "pack[1]", "pack[2]", "ship"], "{store}");
        for s in &run.steps {
            assert_eq!(s.status, "completed");
            assert_eq!(s.attempts, 1);
            assert!(s.started_ms.unwrap() <= s.ended_ms.unwrap());
        }
        assert_eq!(run.steps[3].output, Some(json!(6)));
        assert_eq!(run.event["data"]["items"], json!(3));

        // No function listens to this one.
        let none = engine
            .send(Event::new("other/thing", json!({})))
            .await
            .unwrap();
        assert!(none.runs.is_empty());
        // The same event ID again starts nothing.
        let a = engine
            .send(Event::new("shop/order.created", json!({"items": 1})).with_id("order-1"))
            .await
            .unwrap();
        let b = engine
            .send(Event::new("shop/order.created", json!({"items": 1})).with_id("order-1"))
            .await
            .unwrap();
        assert_eq!(a.runs.len(), 1);
        assert!(
            b.runs.is_empty(),
            "{store}: duplicate event IDs are idempotent"
        );
        assert_eq!(b.ids, ["order-1"]);
        engine.wait_for_run(&a.runs[0], WAIT).await.unwrap();
        let listed = engine
            .runs(RunFilter {
                function: Some("fulfil".into()),
                status: Some(RunStatus::Completed),
                ..RunFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 2, "{store}");
    }
}

#[tokio::test]
async fn failed_attempts_are_retried_with_backoff_and_traced() {
    for (store, engine, _dir) in engines().await {
        let sent = engine
            .send(Event::new("test/flaky", json!({})))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.status, RunStatus::Completed, "{store}: {run:?}");
        assert_eq!(run.run.output, Some(json!(7)));
        assert_eq!(run.steps.len(), 1);
        assert_eq!(
            run.steps[0].attempts, 3,
            "{store}: two failures, then success"
        );
        assert_eq!(flaky_attempts(&sent.runs[0]), 3);

        let sent = engine
            .send(Event::new("test/doomed", json!({})))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.status, RunStatus::Failed, "{store}");
        assert_eq!(run.steps[0].status, "failed");
        assert_eq!(run.steps[0].attempts, 2, "{store}: retries = 1");
        let err = run.run.error.unwrap();
        assert_eq!(err["message"], "upstream timed out");
    }
}

#[tokio::test]
async fn a_sleep_survives_a_restart_and_wakes_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("durafn.db");
    let engine = builder().sqlite(&path).build().await.unwrap();
    let sent = engine
        .send(Event::new("test/nap", json!({"ms": 700})))
        .await
        .unwrap();
    let run_id = sent.runs[0].clone();
    // Wait until the run sleeps, then stop the engine.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = engine.run(&run_id).await.unwrap().unwrap();
        if r.run.status == RunStatus::Sleeping {
            assert_eq!(r.steps.last().unwrap().status, "sleeping");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the run never slept");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let slept_at = std::time::Instant::now();
    engine.close().await;

    // A new engine on the same file wakes the run when its time comes.
    let engine = builder().sqlite(&path).build().await.unwrap();
    let run = engine.wait_for_run(&run_id, WAIT).await.unwrap();
    assert!(
        slept_at.elapsed() >= Duration::from_millis(600),
        "woke too early: {:?}",
        slept_at.elapsed()
    );
    assert_eq!(run.run.status, RunStatus::Completed);
    assert_eq!(run.run.output, Some(json!("woke")));
    let ids: Vec<&str> = run.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["before", "nap", "after"]);
    engine.close().await;

    // Overdue sleeps wake at once.
    let engine = builder().sqlite(&path).build().await.unwrap();
    let sent = engine
        .send(Event::new("test/nap", json!({"ms": 300})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    engine.close().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let engine = builder().sqlite(&path).build().await.unwrap();
    let started = std::time::Instant::now();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.status, RunStatus::Completed);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_sleeping_run_cancels_at_once_and_runs_no_more_steps() {
    for (store, engine, _dir) in engines().await {
        let sent = engine
            .send(Event::new("test/nap", json!({"ms": 60_000})))
            .await
            .unwrap();
        let id = &sent.runs[0];
        let deadline = std::time::Instant::now() + WAIT;
        while engine.run(id).await.unwrap().unwrap().run.status != RunStatus::Sleeping {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(engine.cancel(id).await.unwrap(), Some(RunStatus::Sleeping));
        let run = engine.wait_for_run(id, WAIT).await.unwrap();
        assert_eq!(run.run.status, RunStatus::Cancelled, "{store}");
        assert!(run.steps.iter().all(|s| s.id != "after"));
        assert_eq!(engine.cancel("no-such-run").await.unwrap(), None);
    }
}

#[tokio::test]
async fn the_http_api_takes_events_and_shows_runs_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let engine = builder()
        .sqlite(dir.path().join("d.db"))
        .max_event_bytes(1024)
        .build()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = engine.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    // One event, then an array.
    let r = http
        .post(format!("{base}/e/dev-key"))
        .json(&json!({"name": "shop/order.paid", "data": {"items": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 200);
    assert_eq!(body["ids"].as_array().unwrap().len(), 1);
    let r = http
        .post(format!("{base}/e/dev-key"))
        .json(&json!([{"name": "shop/order.paid", "data": {"items": 1}, "id": "fixed"}, {"name": "test/flaky"}]))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["ids"][0], "fixed");

    // Bad input: each a 4xx with a JSON message; nothing stored is lost.
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            http.post(format!("{base}/e/k")).body("{not json"),
            400,
            "not valid JSON",
        ),
        (
            http.post(format!("{base}/e/k")).json(&json!({"data": {}})),
            400,
            "no `name`",
        ),
        (
            http.post(format!("{base}/e/k")).json(&json!({"name": 5})),
            400,
            "must be a string",
        ),
        (
            http.post(format!("{base}/e/k"))
                .json(&json!({"name": "a", "data": [1]})),
            400,
            "`data` must be an object",
        ),
        (
            http.post(format!("{base}/e/k")).json(&json!([])),
            400,
            "empty array",
        ),
        (
            http.post(format!("{base}/e/k"))
                .json(&json!({"name": "big", "data": {"x": "y".repeat(2000)}})),
            413,
            "over the limit",
        ),
        (http.get(format!("{base}/v1/runs/nope")), 404, "no run"),
        (
            http.get(format!("{base}/v1/runs?status=bogus")),
            400,
            "unknown status",
        ),
        (http.get(format!("{base}/nowhere")), 404, "no such endpoint"),
    ];
    for (req, status, needle) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{needle}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }

    // An event whose data does not fit the function's type: a failed run
    // with a clear error, not a crash.
    let r = http
        .post(format!("{base}/e/k"))
        .json(&json!({"name": "shop/order.bad", "data": {"items": "many"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The run API.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let runs: Value = http
        .get(format!("{base}/v1/runs?function=fulfil"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let runs = runs["data"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 3);
    for r in &runs {
        let id = r["id"].as_str().unwrap();
        let detail = engine.wait_for_run(id, WAIT).await.unwrap();
        let shown: Value = http
            .get(format!("{base}/v1/runs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(shown["data"]["status"], detail.run.status.as_str());
        if detail.run.status == RunStatus::Failed {
            let msg = detail.run.error.unwrap()["message"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                msg.contains("does not fit the event type of `fulfil`"),
                "{msg}"
            );
        } else {
            assert_eq!(
                shown["data"]["steps"].as_array().unwrap().last().unwrap()["id"],
                "ship"
            );
        }
    }
    let failed: Value = http
        .get(format!("{base}/v1/runs?status=failed"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);

    // Cancel over HTTP.
    let sent = engine
        .send(Event::new("test/nap", json!({"ms": 60_000})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = http
        .post(format!("{base}/v1/runs/{}/cancel", sent.runs[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!(
            "{base}/v1/runs/{}/cancel",
            runs[0]["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a finished run cannot be cancelled");
}

#[tokio::test]
async fn a_database_from_a_newer_durafn_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = builder()
        .sqlite(&path)
        .build()
        .await
        .err()
        .expect("refused");
    assert!(err.message().contains("schema version 99"), "{err}");
}

#[tokio::test]
async fn a_run_of_a_function_this_engine_does_not_have_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    // Stored by an engine that knows `napper` but runs nothing.
    let first = builder()
        .sqlite(&path)
        .without_workers()
        .build()
        .await
        .unwrap();
    let sent = first.send(Event::new("test/nap", json!({}))).await.unwrap();
    first.close().await;
    let engine = Engine::builder()
        .sqlite(&path)
        .register(fulfil)
        .unknown_function_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.status, RunStatus::Failed);
    let error = run.run.error.unwrap();
    assert_eq!(error["name"], "UnknownFunction");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("no function `napper`"), "{message}");
    assert!(message.contains("waited 300ms"), "{message}");
}

static SLOW_RUNS: AtomicU32 = AtomicU32::new(0);

#[durable_fn(id = "slow-step", event = "test/slow")]
async fn slow_step(_ctx: Ctx, _event: Event) -> Result<u32> {
    let v = step!("slow", {
        SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        1u32
    })?;
    Ok(v)
}

#[tokio::test]
async fn a_step_longer_than_the_lease_is_not_run_twice_by_its_own_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder()
        .sqlite(dir.path().join("d.db"))
        .register(slow_step)
        .lease(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let sent = engine
        .send(Event::new("test/slow", json!({})))
        .await
        .unwrap();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.status, RunStatus::Completed);
    assert_eq!(
        SLOW_RUNS.load(Ordering::SeqCst),
        1,
        "the lease ran out mid-step, yet the step ran once"
    );
}

static AFTER_CANCEL: AtomicU32 = AtomicU32::new(0);

#[durable_fn(id = "long-steps", event = "test/long-steps")]
async fn long_steps(_ctx: Ctx, _event: Event) -> Result<()> {
    step!("first", {
        tokio::time::sleep(Duration::from_millis(300)).await;
        1u8
    })?;
    step!("second", {
        AFTER_CANCEL.fetch_add(1, Ordering::SeqCst);
        2u8
    })?;
    Ok(())
}

#[tokio::test]
async fn a_running_run_cancelled_mid_step_runs_no_further_step() {
    for (store, engine, _dir) in engines().await {
        AFTER_CANCEL.store(0, Ordering::SeqCst);
        let sent = engine
            .send(Event::new("test/long-steps", json!({})))
            .await
            .unwrap();
        let id = &sent.runs[0];
        let deadline = std::time::Instant::now() + WAIT;
        while engine.run(id).await.unwrap().unwrap().run.status != RunStatus::Running {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(
            engine.cancel(id).await.unwrap(),
            Some(RunStatus::Running),
            "{store}"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let run = engine.run(id).await.unwrap().unwrap();
        assert_eq!(run.run.status, RunStatus::Cancelled, "{store}");
        assert!(
            run.steps.is_empty(),
            "{store}: the step in flight is not journaled: {:?}",
            run.steps
        );
        assert_eq!(
            AFTER_CANCEL.load(Ordering::SeqCst),
            0,
            "{store}: no step ran after the cancel"
        );
    }
}

#[tokio::test]
async fn a_bad_register_request_gets_a_json_400() {
    let engine = Engine::builder().memory().build().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = engine.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let http = reqwest::Client::new();
    for (body, needle) in [
        ("{oops".to_string(), "not valid JSON"),
        (json!({"url": "http://x"}).to_string(), "no `appName`"),
        (
            json!({"appName": "a", "url": "http://x", "functions": [{"id": "f"}]}).to_string(),
            "no `steps.step`",
        ),
    ] {
        let r = http
            .post(format!("http://{addr}/fn/register"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{needle}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{v}");
    }
    assert!(
        engine.remote_functions().is_empty(),
        "nothing half-registered"
    );
}
