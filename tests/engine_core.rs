//! What the engine core guarantees, each found broken once and kept fixed
//! here: parallel branches replay as a set, a cancelled child resumes its
//! parent, nothing an app sends or a store error does strands a run,
//! every event source resolves waits and fires cancel rules, stored app
//! registrations, heartbeats and fenced leases, and a misbehaving app
//! backs off instead of spinning.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use durafn::prelude::*;
use durafn::store::{MemoryStore, RunFilter, RunStatus, Store};
use durafn::testing::{Driver, TestRun};
use durafn::{Backoff, Engine, EngineBuilder, Journal, Outcome, StepId};
use serde_json::{json, Value};

use common::{listen, register_body, Faults, Faulty};

const FAST: Backoff = Backoff {
    base: Duration::from_millis(5),
    max: Duration::from_millis(20),
};
const WAIT: Duration = Duration::from_secs(15);

/// A store's name, a value on it, and what must live as long (a
/// directory, a schema to drop).
type Guarded<T> = (&'static str, T, Box<dyn std::any::Any>);

async fn engines(b: impl Fn() -> EngineBuilder) -> Vec<Guarded<Engine>> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = b().sqlite(dir.path().join("d.db")).build().await.unwrap();
    let mut all: Vec<Guarded<Engine>> = vec![
        ("memory", b().memory().build().await.unwrap(), Box::new(())),
        ("sqlite", sqlite, Box::new(dir)),
    ];
    if let Some((store, guard)) = common::pg_store("engine-core").await {
        all.push((
            "postgres",
            b().store(store).build().await.unwrap(),
            Box::new(guard),
        ));
    }
    all
}

// ---------------------------------------------------------------------
// Parallel branches replay as a set.

/// Keys of the runs whose branch 0 has failed once.
static FAILED_ONCE: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[durable_fn(id = "fan-flaky", event = "test/fan-flaky")]
async fn fan_flaky(_ctx: Ctx, event: Event) -> Result<Vec<u32>> {
    let key = event.data["fail_once"].as_str().map(str::to_string);
    let key = &key;
    let out: Vec<u32> = parallel!("p", vec![0u32, 1, 2, 3], |i| {
        if i == 0 {
            // Branch 0 fails once, after its siblings have finished.
            tokio::time::sleep(Duration::from_millis(30)).await;
            if let Some(k) = key {
                let mut failed = FAILED_ONCE.lock().unwrap();
                if !failed.contains(k) {
                    failed.push(k.clone());
                    drop(failed);
                    Err(Error::msg("the upstream API timed out"))?;
                }
            }
        }
        i * 10
    })?;
    step!("after", { out.len() })?;
    Ok(out)
}

#[tokio::test]
async fn a_parallel_branch_that_fails_after_its_siblings_finished_is_retried() {
    for (store, engine, _dir) in
        engines(|| Engine::builder().register(fan_flaky).backoff(FAST)).await
    {
        let sent = engine
            .send(Event::new("test/fan-flaky", json!({"fail_once": store})))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(
            run.run.status,
            RunStatus::Completed,
            "{store}: {:?}",
            run.run.error
        );
        assert_eq!(run.run.output, Some(json!([0, 10, 20, 30])), "{store}");
        let p0 = run.steps.iter().find(|s| s.id == "p[0]").unwrap();
        assert_eq!(p0.attempts, 2, "{store}: branch 0 was retried once");
        engine.close().await;
    }
}

#[tokio::test]
async fn a_journal_with_a_later_branch_committed_first_replays_as_a_set() {
    // A crash while branch 0 was in flight, after branches 1 and 2 committed.
    let journal: Journal = [
        (StepId::from("p[2]"), Outcome::data(json!(20))),
        (StepId::from("p[1]"), Outcome::data(json!(10))),
    ]
    .into_iter()
    .collect();
    for driver in [Driver::Continuous, Driver::ReEntry] {
        let out = TestRun::new(fan_flaky)
            .journal(journal.clone())
            .driver(driver)
            .run()
            .await;
        assert_eq!(out.output::<Vec<u32>>(), vec![0, 10, 20, 30], "{driver:?}");
        assert_eq!(
            out.attempts("p[1]"),
            0,
            "{driver:?}: a journaled branch is not run again"
        );
        assert_eq!(out.attempts("p[0]"), 1, "{driver:?}");
    }
}

#[tokio::test]
async fn a_real_change_of_shape_around_a_parallel_group_is_still_caught() {
    // The journal holds a step the code no longer reaches before the group.
    let journal: Journal = [
        (StepId::from("p[1]"), Outcome::data(json!(10))),
        (StepId::from("removed-step"), Outcome::data(json!(1))),
    ]
    .into_iter()
    .collect();
    let out = TestRun::new(fan_flaky).journal(journal).run().await;
    let err = out.result.unwrap_err();
    assert!(
        err.name == "NonDeterminism" || err.name == "JournalMismatch",
        "{err:?}"
    );
}

// ---------------------------------------------------------------------
// Cancelling an invoked run resumes its parent at once.

#[durable_fn(id = "sleepy-child", event = "test/sleepy-child")]
async fn sleepy_child(_ctx: Ctx, _event: Event) -> Result<u32> {
    sleep!("nap", Duration::from_secs(3600))?;
    Ok(1)
}

#[durable_fn(id = "invoking-parent", event = "test/invoke-sleepy")]
async fn invoking_parent(_ctx: Ctx, _event: Event) -> Result<String> {
    let r: std::result::Result<u32, StepError> = invoke!("call", sleepy_child, json!({}));
    Ok(match r {
        Ok(v) => format!("ok {v}"),
        Err(e) => format!("{}: {}", e.error.name, e.error.message),
    })
}

#[tokio::test]
async fn cancelling_an_invoked_run_resumes_its_parent_with_an_error() {
    let b = || {
        Engine::builder()
            .register(sleepy_child)
            .register(invoking_parent)
    };
    for (store, engine, _dir) in engines(b).await {
        let sent = engine
            .send(Event::new("test/invoke-sleepy", json!({})))
            .await
            .unwrap();
        let child = loop {
            let runs = engine
                .runs(RunFilter {
                    function: Some("sleepy-child".into()),
                    status: Some(RunStatus::Sleeping),
                    ..RunFilter::default()
                })
                .await
                .unwrap();
            if let Some(c) = runs.first() {
                break c.id.clone();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        engine.cancel(&child).await.unwrap();
        let parent = engine
            .wait_for_run(&sent.runs[0], Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{store}: the parent still waits: {e}"));
        let out = parent.run.output.unwrap();
        assert!(
            out.as_str().unwrap().contains("was cancelled"),
            "{store}: {out}"
        );
        assert!(out.as_str().unwrap().contains(&child), "{store}: {out}");
        engine.close().await;
    }
}

// ---------------------------------------------------------------------
// Nothing an app sends, and no store error, strands a run.

/// An app whose call answers are given by `answer`, counting calls.
async fn fake_app(answer: fn() -> (StatusCode, Value)) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let router = axum::Router::new().route(
        "/api",
        post(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let (status, body) = answer();
                (status, axum::Json(body))
            }
        }),
    );
    (format!("{}/api", listen(router).await), calls)
}

/// Run one event through a function of a fake app that always answers
/// `answer`, with `retries`; answers the failed run's error message, the
/// calls made, and the engine.
async fn failing_app_run(
    answer: fn() -> (StatusCode, Value),
    retries: u64,
) -> (String, usize, Engine) {
    let (url, calls) = fake_app(answer).await;
    let engine = Engine::builder().backoff(FAST).build().await.unwrap();
    engine
        .register_app(&register_body(
            "fake",
            &url,
            "fake-fn",
            "test/fake",
            retries,
        ))
        .await
        .unwrap();
    let sent = engine
        .send(Event::new("test/fake", json!({})))
        .await
        .unwrap();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.status, RunStatus::Failed);
    let msg = run.run.error.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    (msg, calls.load(Ordering::SeqCst), engine)
}

/// Hears every failure: answers the error the failure event carries.
#[durable_fn(id = "failure-log", event = "inngest/function.failed")]
async fn failure_log(_ctx: Ctx, event: Event) -> Result<Value> {
    Ok(event.data["error"].clone())
}

#[tokio::test]
async fn an_apps_errors_are_kept_and_handed_back_as_the_app_sent_them() {
    // The app fails a step with fields of its own, then fails the run with
    // what the engine handed back for that step.
    let error = json!({
        "name": "StepError", "message": "card declined", "stack": "at charge (app.py:3)",
        "code": "step_errored", "data": {"card": "4242"}
    });
    let sent = error.clone();
    let router = axum::Router::new().route(
        "/api",
        post(move |axum::Json(req): axum::Json<Value>| {
            let sent = sent.clone();
            async move {
                let steps = req["steps"].as_object().cloned().unwrap_or_default();
                match steps.values().next() {
                    None => (
                        StatusCode::PARTIAL_CONTENT,
                        [("x-inngest-no-retry", "false")],
                        axum::Json(json!([{
                            "op": "StepFailed", "id": "c4", "name": "charge",
                            "error": sent
                        }])),
                    ),
                    Some(journaled) => (
                        StatusCode::BAD_REQUEST,
                        [("x-inngest-no-retry", "true")],
                        axum::Json(json!({
                            "name": "Handed", "message": "what the engine handed back",
                            "code": "function_failed", "handed": journaled
                        })),
                    ),
                }
            }
        }),
    );
    let url = format!("{}/api", listen(router).await);
    let engine = Engine::builder()
        .backoff(FAST)
        .register(failure_log)
        .build()
        .await
        .unwrap();
    engine
        .register_app(&register_body("pay", &url, "pay", "test/pay", 0))
        .await
        .unwrap();
    let sent = engine
        .send(Event::new("test/pay", json!({})))
        .await
        .unwrap();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.status, RunStatus::Failed);
    let failed = run.run.error.unwrap();
    assert_eq!(failed["code"], "function_failed", "{failed}");
    assert_eq!(
        failed["handed"],
        json!({ "error": error }),
        "the next call got the step's error with all its fields"
    );
    assert_eq!(
        run.steps[0].error.as_ref(),
        Some(&error),
        "and the trace shows it"
    );
    // The failure event words the error as Inngest's executor does.
    let deadline = std::time::Instant::now() + WAIT;
    let heard = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no failure event heard"
        );
        let runs = engine
            .runs(RunFilter {
                function: Some("failure-log".into()),
                status: Some(RunStatus::Completed),
                ..RunFilter::default()
            })
            .await
            .unwrap();
        if let Some(r) = runs.first() {
            break r.output.clone().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        heard,
        json!({
            "name": "Handed", "message": "what the engine handed back",
            "error": "invalid status code: 400"
        })
    );
}

static HICCUPS: AtomicUsize = AtomicUsize::new(0);

/// Fails once after each of its two steps: with one retry, it completes
/// only if each part between steps has its own attempts.
#[durable_fn(id = "hiccups", event = "test/hiccups", retries = 1)]
async fn hiccups(_ctx: Ctx, _event: Event) -> Result<u32> {
    let one = step!("one", { 1u32 })?;
    if unchecked!(
        "the test's fault injection",
        HICCUPS.fetch_add(1, Ordering::SeqCst)
    ) == 0
    {
        return Err(Error::msg("hiccup after one"));
    }
    let two = step!("two", { 2u32 })?;
    if unchecked!(
        "the test's fault injection",
        HICCUPS.fetch_add(1, Ordering::SeqCst)
    ) == 2
    {
        return Err(Error::msg("hiccup after two"));
    }
    Ok(one + two)
}

#[tokio::test]
async fn a_completed_step_gives_the_function_its_retries_back() {
    for (store, engine, _guard) in
        engines(|| Engine::builder().backoff(FAST).register(hiccups)).await
    {
        HICCUPS.store(0, Ordering::SeqCst);
        let sent = engine
            .send(Event::new("test/hiccups", json!({})))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(
            (run.run.status, run.run.output.clone()),
            (RunStatus::Completed, Some(json!(3))),
            "{store}: {:?}",
            run.run.error
        );
        engine.close().await;
    }
}

#[tokio::test]
async fn a_sleep_too_long_to_represent_fails_the_attempt_and_the_engine_still_closes() {
    let answer = || {
        (
            StatusCode::PARTIAL_CONTENT,
            json!([{"op": "Sleep", "id": "abc", "name": "nap",
                    "opts": {"duration": "99999999999999999999999h"}}]),
        )
    };
    let (msg, calls, engine) = failing_app_run(answer, 1).await;
    assert!(msg.contains("99999999999999999999999h"), "{msg}");
    assert_eq!(calls, 2, "one retry, then failed");
    tokio::time::timeout(Duration::from_secs(10), engine.close())
        .await
        .expect("close returns");
}

#[tokio::test]
async fn retries_beyond_the_limit_are_refused_at_registration() {
    let engine = Engine::builder().build().await.unwrap();
    let url = listen(engine.router()).await;
    let body = register_body(
        "fake",
        "http://127.0.0.1:1/api",
        "fake-f",
        "test/x",
        4_294_967_296,
    );
    let r = reqwest::Client::new()
        .post(format!("{url}/fn/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("retries.attempts"), "{msg}");
    assert!(engine.remote_functions().is_empty());
}

#[durable_fn(id = "two-steps", event = "test/two-steps")]
async fn two_steps(_ctx: Ctx, _event: Event) -> Result<u32> {
    let a = step!("a", { 1u32 })?;
    let b = step!("b", { 2u32 })?;
    Ok(a + b)
}

#[tokio::test]
async fn a_store_error_mid_run_does_not_strand_the_run() {
    let faults = Arc::new(Faults::default());
    faults.fail_commits.store(1, Ordering::SeqCst);
    faults.fail_finishes.store(1, Ordering::SeqCst);
    let store = Faulty::wrap(Arc::new(MemoryStore::new()), faults.clone());
    let engine = Engine::builder()
        .store(store)
        .register(two_steps)
        .backoff(FAST)
        .build()
        .await
        .unwrap();
    let sent = engine
        .send(Event::new("test/two-steps", json!({})))
        .await
        .unwrap();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.status, RunStatus::Completed);
    assert_eq!(run.run.output, Some(json!(3)));
    assert_eq!(
        faults.fail_commits.load(Ordering::SeqCst),
        0,
        "the fault was hit"
    );
    assert_eq!(
        faults.fail_finishes.load(Ordering::SeqCst),
        0,
        "the fault was hit"
    );
    assert_eq!(
        run.run.fn_attempt, 0,
        "a store error spends no attempt of the function"
    );
    tokio::time::timeout(Duration::from_secs(10), engine.close())
        .await
        .expect("close returns");
}

// ---------------------------------------------------------------------
// Every event source goes through ingest: cron ticks resolve waits and
// fire cancel rules.

#[durable_fn(id = "every-second", cron = "* * * * * *")]
async fn every_second(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[durable_fn(id = "await-tick", event = "test/await-tick")]
async fn await_tick(_ctx: Ctx, _event: Event) -> Result<Option<String>> {
    let tick: Option<Event> = wait_for_event!(
        "tick",
        event = "inngest/scheduled.timer",
        timeout = Duration::from_secs(8)
    )?;
    Ok(tick.map(|t| t.data["cron"].as_str().unwrap_or_default().to_string()))
}

#[durable_fn(
    id = "until-tick",
    event = "test/until-tick",
    cancel_on = "inngest/scheduled.timer"
)]
async fn until_tick(_ctx: Ctx, _event: Event) -> Result<()> {
    sleep!("long", Duration::from_secs(3600))?;
    Ok(())
}

#[tokio::test]
async fn a_cron_tick_resolves_waits_and_cancels_runs_like_any_event() {
    let b = || {
        Engine::builder()
            .register(every_second)
            .register(await_tick)
            .register(until_tick)
    };
    for (store, engine, _dir) in engines(b).await {
        let waiting = engine
            .send(Event::new("test/await-tick", json!({})))
            .await
            .unwrap();
        let sleeping = engine
            .send(Event::new("test/until-tick", json!({})))
            .await
            .unwrap();
        let run = engine.wait_for_run(&waiting.runs[0], WAIT).await.unwrap();
        assert_eq!(
            run.run.output,
            Some(json!("* * * * * *")),
            "{store}: the tick resumed the wait"
        );
        let run = engine.wait_for_run(&sleeping.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.status, RunStatus::Cancelled, "{store}");
        engine.close().await;
    }
}

// ---------------------------------------------------------------------
// App registrations are stored; a run of a function not known yet waits.

#[tokio::test]
async fn app_registrations_survive_a_restart_of_the_engine() {
    let (url, calls) = fake_app(|| (StatusCode::OK, json!("done"))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let first = Engine::builder()
        .sqlite(&path)
        .without_workers()
        .build()
        .await
        .unwrap();
    first
        .register_app(&register_body("fake", &url, "fake-job", "test/job", 0))
        .await
        .unwrap();
    let sent = first.send(Event::new("test/job", json!({}))).await.unwrap();
    first.close().await;
    // The app has not synced with the new engine.
    let engine = Engine::builder().sqlite(&path).build().await.unwrap();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.status, RunStatus::Completed, "{:?}", run.run.error);
    assert_eq!(run.run.output, Some(json!("done")));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    engine.close().await;
}

#[durable_fn(id = "quick-child", event = "test/quick-child")]
async fn quick_child(_ctx: Ctx, _event: Event) -> Result<u32> {
    Ok(1)
}

#[durable_fn(id = "late-parent", event = "test/late-parent")]
async fn late_parent(_ctx: Ctx, _event: Event) -> Result<String> {
    let r: std::result::Result<u32, StepError> = invoke!("call", quick_child, json!({}));
    Ok(match r {
        Ok(v) => format!("ok {v}"),
        Err(e) => e.error.name,
    })
}

#[tokio::test]
async fn a_run_of_a_function_registered_later_waits_for_it() {
    // Two engines on one store: the first does not have the invoked
    // function; the second, which has both, starts a moment later.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = Engine::builder()
        .store(store.clone())
        .register(late_parent)
        .unknown_function_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let sent = first
        .send(Event::new("test/late-parent", json!({})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let child = first
        .runs(RunFilter {
            function: Some("quick-child".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(child.len(), 1);
    assert!(
        !child[0].status.is_final(),
        "the child waits for its function: {:?}",
        child[0]
    );
    let second = Engine::builder()
        .store(store.clone())
        .unknown_function_timeout(Duration::from_secs(30))
        .register(quick_child)
        .register(late_parent)
        .build()
        .await
        .unwrap();
    let run = first.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.output, Some(json!("ok 1")));
    first.close().await;
    second.close().await;
}

// ---------------------------------------------------------------------
// Leases: heartbeats while a step runs, fencing after a takeover.

/// (run, step) of every step body execution.
static BODIES: Mutex<Vec<(String, &'static str)>> = Mutex::new(Vec::new());

fn bodies(run: &str, step: &str) -> usize {
    let all = BODIES.lock().unwrap();
    all.iter().filter(|(r, s)| r == run && *s == step).count()
}

#[durable_fn(id = "slow-then-fast", event = "test/slow-then-fast")]
async fn slow_then_fast(ctx: Ctx, _event: Event) -> Result<u32> {
    step!("slow", {
        BODIES
            .lock()
            .unwrap()
            .push((ctx.run_id().to_string(), "slow"));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        1u32
    })?;
    step!("second", {
        BODIES
            .lock()
            .unwrap()
            .push((ctx.run_id().to_string(), "second"));
        2u32
    })?;
    Ok(3)
}

/// Two engines on one store with short leases (600 ms: short enough to run
/// out while the 1.2 s step runs, long enough that a heartbeat delayed by a
/// loaded machine does not lose one); the first claims the run.
async fn two_engines(
    store: Arc<dyn Store>,
    first_store: Arc<dyn Store>,
) -> (Engine, Engine, String) {
    let b = |s: Arc<dyn Store>| {
        Engine::builder()
            .store(s)
            .register(slow_then_fast)
            .lease(Duration::from_millis(600))
    };
    let first = b(first_store).build().await.unwrap();
    let sent = first
        .send(Event::new("test/slow-then-fast", json!({})))
        .await
        .unwrap();
    while bodies(&sent.runs[0], "slow") == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let second = b(store).build().await.unwrap();
    (first, second, sent.runs[0].clone())
}

#[tokio::test]
async fn a_step_longer_than_the_lease_is_heartbeated_and_runs_once_across_engines() {
    for (name, store, _guard) in shared_stores().await {
        let (first, second, run) = two_engines(store.clone(), store).await;
        let done = first.wait_for_run(&run, WAIT).await.unwrap();
        assert_eq!(done.run.status, RunStatus::Completed, "{name}");
        assert_eq!(
            bodies(&run, "slow"),
            1,
            "{name}: the lease was heartbeated, so the other engine never took the run"
        );
        first.close().await;
        second.close().await;
    }
}

/// A store for several engines of this process: memory, one SQLite file
/// opened once, and PostgreSQL when reachable.
async fn shared_stores() -> Vec<Guarded<Arc<dyn Store>>> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = durafn::store::SqliteStore::open(
        dir.path().join("d.db"),
        durafn::store::SqliteSync::Normal,
    )
    .unwrap();
    let mut all: Vec<Guarded<Arc<dyn Store>>> = vec![
        ("memory", Arc::new(MemoryStore::new()), Box::new(())),
        ("sqlite", Arc::new(sqlite), Box::new(dir)),
    ];
    if let Some((store, guard)) = common::pg_store("shared").await {
        all.push(("postgres", store, Box::new(guard)));
    }
    all
}

#[tokio::test]
async fn a_stalled_engine_loses_its_run_and_cannot_commit() {
    for (name, store, _guard) in shared_stores().await {
        let faults = Arc::new(Faults::default());
        faults.drop_heartbeats.store(true, Ordering::SeqCst);
        // The first engine stalls once it has claimed the run: its heartbeats
        // never arrive and it claims nothing more.
        let (first, second, run) =
            two_engines(store.clone(), Faulty::wrap(store.clone(), faults.clone())).await;
        faults.drop_claims.store(true, Ordering::SeqCst);
        let done = second.wait_for_run(&run, WAIT).await.unwrap();
        assert_eq!(done.run.status, RunStatus::Completed, "{name}");
        // Let the first engine's slow step finish and try to commit.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            bodies(&run, "slow"),
            2,
            "{name}: the second engine ran the step again"
        );
        assert_eq!(
            bodies(&run, "second"),
            1,
            "{name}: the fenced engine stopped: it ran no further step"
        );
        let trace = store.run(&run).await.unwrap().unwrap();
        let ids: Vec<&str> = trace.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["slow", "second"], "{name}: each step journaled once");
        first.close().await;
        second.close().await;
    }
}

// ---------------------------------------------------------------------
// An app that answers 206 without an opcode gets a failed attempt.

#[tokio::test]
async fn a_partial_answer_without_an_opcode_fails_the_attempt_and_backs_off() {
    let (msg, calls, engine) =
        failing_app_run(|| (StatusCode::PARTIAL_CONTENT, json!([])), 2).await;
    assert!(msg.contains("206 without an opcode"), "{msg}");
    assert_eq!(calls, 3, "two retries, no spinning");
    engine.close().await;
}

#[tokio::test]
async fn steps_of_a_group_that_fail_side_by_side_keep_their_own_names() {
    // Two planned steps fail on their first attempt, called concurrently;
    // each is retried under its own name, then both complete.
    let router = axum::Router::new().route(
        "/api",
        post(
            |axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
             axum::Json(req): axum::Json<Value>| async move {
                let steps = req["steps"].as_object().cloned().unwrap_or_default();
                let attempt = req["ctx"]["attempt"].as_u64().unwrap_or(0);
                let plan = json!([
                    {"op": "StepPlanned", "id": "h-a", "name": "fetch-a", "displayName": "fetch-a"},
                    {"op": "StepPlanned", "id": "h-b", "name": "fetch-b", "displayName": "fetch-b"},
                ]);
                let (status, body) = match q.get("stepId").map(String::as_str) {
                    Some(id @ ("h-a" | "h-b")) => {
                        let name = if id == "h-a" { "fetch-a" } else { "fetch-b" };
                        match attempt {
                            0 => (StatusCode::PARTIAL_CONTENT, json!([{"op": "StepError", "id": id, "name": name,
                                "error": {"name": "Error", "message": format!("{name} timed out")}}])),
                            _ => (StatusCode::PARTIAL_CONTENT, json!([{"op": "StepRun", "id": id, "name": name, "data": name}])),
                        }
                    }
                    _ if steps.len() == 2 => (StatusCode::OK, json!("both")),
                    _ => (StatusCode::PARTIAL_CONTENT, plan),
                };
                (status, axum::Json(body))
            },
        ),
    );
    let url = format!("{}/api", listen(router).await);
    let engine = Engine::builder().backoff(FAST).build().await.unwrap();
    engine
        .register_app(&register_body("pair", &url, "pair-fn", "test/pair", 3))
        .await
        .unwrap();
    let sent = engine
        .send(Event::new("test/pair", json!({})))
        .await
        .unwrap();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.status, RunStatus::Completed, "{:?}", run.run.error);
    let mut steps: Vec<(String, Option<String>, u32)> = run
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.name.clone(), s.attempts))
        .collect();
    steps.sort();
    assert_eq!(
        steps,
        [
            ("h-a".to_string(), Some("fetch-a".to_string()), 2),
            ("h-b".to_string(), Some("fetch-b".to_string()), 2),
        ]
    );
}

/// An engine on `db` with an app whose one function, `clock-tick`, runs
/// every second; the sync body, to sync again, and the app's call count.
async fn ticking_app(db: &std::path::Path) -> (Engine, Value, Arc<AtomicUsize>) {
    let (url, calls) = fake_app(|| (StatusCode::OK, json!("ticked"))).await;
    let engine = Engine::builder().sqlite(db).build().await.unwrap();
    let mut body = register_body("clock", &url, "clock-tick", "unused/event", 0);
    body["functions"][0]["triggers"] = json!([{"cron": "* * * * * *"}]);
    engine.register_app(&body).await.unwrap();
    (engine, body, calls)
}

/// The runs of `clock-tick`, those with `status` when given.
async fn ticks(engine: &Engine, status: Option<RunStatus>) -> Vec<durafn::store::RunRecord> {
    engine
        .runs(RunFilter {
            function: Some("clock-tick".into()),
            status,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn an_apps_cron_trigger_runs_on_its_schedule_and_a_new_sync_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, mut body, calls) = ticking_app(&dir.path().join("cron.db")).await;
    let completed = Some(RunStatus::Completed);
    let mut done = Vec::new();
    for _ in 0..60 {
        done = ticks(&engine, completed).await;
        if done.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done.len() >= 2, "two ticks within six seconds: {done:?}");
    let detail = engine.run(&done[0].id).await.unwrap().unwrap();
    assert_eq!(detail.event["name"], "inngest/scheduled.timer");
    assert_eq!(detail.run.output, Some(json!("ticked")));
    // Synced again without the schedule: no more ticks.
    body["functions"][0]["triggers"] = json!([{"event": "unused/event"}]);
    engine.register_app(&body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let settled = ticks(&engine, completed).await.len();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        ticks(&engine, completed).await.len(),
        settled,
        "the schedule is gone"
    );
    assert!(calls.load(Ordering::SeqCst) >= 2);
    // A schedule that cannot be read is refused with the sync.
    body["functions"][0]["triggers"] = json!([{"cron": "every day"}]);
    let refused = engine.register_app(&body).await.unwrap_err().to_string();
    assert!(refused.contains("cron"), "{refused}");
    engine.close().await;
}

#[tokio::test]
async fn an_apps_cron_schedule_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cron.db");
    let (engine, _body, _calls) = ticking_app(&db).await;
    engine.close().await;
    let store = durafn::store::SqliteStore::open(&db, durafn::store::SqliteSync::Full).unwrap();
    let before = store.list_runs(RunFilter::default()).await.unwrap().len();
    drop(store);
    // A new engine on the same file knows the app, and its schedule.
    let engine = Engine::builder().sqlite(&db).build().await.unwrap();
    let started = std::time::Instant::now();
    loop {
        if ticks(&engine, None).await.len() > before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "no tick after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.close().await;
}
