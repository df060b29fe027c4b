//! Flow control through the engine's public API, with the attribute's
//! options, on every store and with the manual clock: idempotency, rate
//! limits and singletons, across a restart of the engine; options synced by
//! an app; and bad configuration refused clearly.

mod common;

use std::sync::Arc;
use std::time::Duration;

use durafn::prelude::*;
use durafn::store::{RunStatus, Store};
use durafn::testing::ManualClock;
use durafn::{Engine, EngineBuilder};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);
/// 2026-01-01T10:30:00Z.
const START: i64 = 1_767_263_400_000;

#[derive(Deserialize)]
struct Payment {
    order_id: String,
}

#[durable_fn(
    id = "charge",
    event = "shop/order.paid",
    idempotency = "event.data.order_id"
)]
async fn charge(_ctx: Ctx, event: Event<Payment>) -> Result<String> {
    let id = event.data.order_id.clone();
    Ok(step!("charge", { format!("charged {id}") })?)
}

#[durable_fn(
    id = "sync-user",
    event = "user/updated",
    rate_limit(limit = 2, period = "1m", key = "event.data.user")
)]
async fn sync_user(_ctx: Ctx, _event: Event) -> Result<u8> {
    Ok(step!("push", { 1u8 })?)
}

#[durable_fn(
    id = "report",
    event = "report/requested",
    singleton(key = "event.data.account", mode = "skip")
)]
async fn report(_ctx: Ctx, _event: Event) -> Result<u8> {
    step!("gather", { 1u8 })?;
    sleep!("cool-down", Duration::from_secs(3600))?;
    Ok(step!("send", { 2u8 })?)
}

#[durable_fn(
    id = "refresh",
    event = "cache/refresh",
    singleton(key = "event.data.key", mode = "cancel")
)]
async fn refresh(_ctx: Ctx, _event: Event) -> Result<u8> {
    sleep!("settle", Duration::from_secs(600))?;
    Ok(step!("rebuild", { 3u8 })?)
}

/// Steps in flight and the most seen at once, per key.
static IN_FLIGHT: std::sync::Mutex<Vec<(String, u32, u32)>> = std::sync::Mutex::new(Vec::new());

async fn busy(key: &str) {
    let bump = |d: i32| {
        let mut v = IN_FLIGHT.lock().unwrap();
        let i = match v.iter().position(|(k, _, _)| k == key) {
            Some(i) => i,
            None => {
                v.push((key.to_string(), 0, 0));
                v.len() - 1
            }
        };
        v[i].1 = v[i].1.checked_add_signed(d).unwrap();
        v[i].2 = v[i].2.max(v[i].1);
    };
    bump(1);
    tokio::time::sleep(Duration::from_millis(25)).await;
    bump(-1);
}

fn most_at_once(key: &str) -> u32 {
    let v = IN_FLIGHT.lock().unwrap();
    v.iter().find(|(k, _, _)| k == key).map_or(0, |e| e.2)
}

#[durable_fn(
    id = "per-customer",
    event = "job/queued",
    concurrency(limit = 2, key = "event.data.customer")
)]
async fn per_customer(_ctx: Ctx, event: Event) -> Result<()> {
    let key = event.data["customer"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    step!("work", { busy(&key).await })?;
    step!("more", { busy(&key).await })?;
    Ok(())
}

// Two functions share an account-wide limit through the same key.
#[durable_fn(
    id = "export-a",
    event = "export/requested",
    concurrency(limit = 1, key = "event.data.account", scope = "account"),
    concurrency = 10
)]
async fn export_a(_ctx: Ctx, event: Event) -> Result<()> {
    let key = format!(
        "account {}",
        event.data["account"].as_str().unwrap_or_default()
    );
    step!("export", { busy(&key).await })?;
    Ok(())
}

#[durable_fn(
    id = "export-b",
    event = "export/requested",
    concurrency(limit = 1, key = "event.data.account", scope = "account")
)]
async fn export_b(_ctx: Ctx, event: Event) -> Result<()> {
    let key = format!(
        "account {}",
        event.data["account"].as_str().unwrap_or_default()
    );
    step!("export", { busy(&key).await })?;
    Ok(())
}

#[durable_fn(
    id = "mailer",
    event = "mail/send",
    throttle(limit = 2, period = "1m", key = "event.data.domain"),
    priority = "event.data.urgent ? 120 : (event.data.bulk ? -60 : 0)"
)]
async fn mailer(_ctx: Ctx, _event: Event) -> Result<u8> {
    Ok(step!("send", { 1u8 })?)
}

#[durable_fn(
    id = "nightly",
    event = "report/nightly",
    timeouts(start = "1m", finish = "10m")
)]
async fn nightly(_ctx: Ctx, _event: Event) -> Result<u8> {
    step!("gather", { 1u8 })?;
    sleep!("wait-for-data", Duration::from_secs(3600))?;
    Ok(step!("send", { 2u8 })?)
}

/// The failure handler of `fragile-import`: registered with it.
#[durable_fn(id = "import-failed")]
async fn import_failed(_ctx: Ctx, event: Event<durafn::FunctionFailed>) -> Result<String> {
    let f = &event.data;
    Ok(format!(
        "{} failed ({}) on page {}",
        f.function_id, f.error["message"], f.event["data"]["page"]
    ))
}

#[derive(Debug)]
struct Upstream;
impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the shop API is down")
    }
}
impl std::error::Error for Upstream {}

#[durable_fn(id = "fragile-import", event = "import/start", retries = 0, on_failure = import_failed)]
async fn fragile_import(_ctx: Ctx, _event: Event) -> Result<()> {
    step!("fetch", {
        Err(Upstream)?;
    })?;
    Ok(())
}

#[durable_fn(
    id = "reindex",
    event = "doc/edited",
    debounce(period = "10s", key = "event.data.doc", timeout = "1m")
)]
async fn reindex(_ctx: Ctx, event: Event) -> Result<u64> {
    let rev = event.data["rev"].as_u64().unwrap_or(0);
    Ok(step!("index", { rev })?)
}

#[derive(Deserialize)]
struct Activity {
    n: u64,
}

#[durable_fn(
    id = "record-activity",
    event = "activity/recorded",
    batch_events(max_size = 3, timeout = "5s", key = "event.data.account")
)]
async fn record_activity(_ctx: Ctx, events: Vec<Event<Activity>>) -> Result<Vec<u64>> {
    let ns: Vec<u64> = events.iter().map(|e| e.data.n).collect();
    Ok(step!("write-batch", { ns })?)
}

fn builder(clock: &Arc<ManualClock>) -> EngineBuilder {
    Engine::builder()
        .clock(clock.clone())
        .register(charge)
        .register(sync_user)
        .register(report)
        .register(refresh)
        .register(per_customer)
        .register(export_a)
        .register(export_b)
        .register(mailer)
        .register(nightly)
        .register(fragile_import)
        .register(reindex)
        .register(record_activity)
}

/// How a test reopens its store: a new engine on the same data.
enum Backing {
    Memory(Arc<dyn Store>),
    Sqlite(tempfile::TempDir),
    Postgres(Arc<dyn Store>, #[allow(dead_code)] common::DropSchema),
}

impl Backing {
    async fn all(test: &str) -> Vec<(&'static str, Backing)> {
        let mut v = vec![
            (
                "memory",
                Backing::Memory(Arc::new(durafn::store::MemoryStore::new())),
            ),
            ("sqlite", Backing::Sqlite(tempfile::tempdir().unwrap())),
        ];
        if let Some((store, guard)) = common::pg_store(test).await {
            v.push(("postgres", Backing::Postgres(store, guard)));
        }
        v
    }

    async fn engine(&self, clock: &Arc<ManualClock>) -> Engine {
        let b = builder(clock);
        let b = match self {
            Backing::Memory(s) | Backing::Postgres(s, _) => b.store(s.clone()),
            Backing::Sqlite(dir) => b.sqlite(dir.path().join("flow.db")),
        };
        b.build().await.unwrap()
    }
}

async fn send(engine: &Engine, name: &str, data: Value) -> durafn::Sent {
    engine.send(Event::new(name, data)).await.unwrap()
}

/// The error name a skipped run carries.
async fn why(engine: &Engine, run: &str) -> String {
    let r = engine.run(run).await.unwrap().expect("stored");
    assert_eq!(r.run.status, RunStatus::Skipped);
    r.run.error.as_ref().unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn status_becomes(engine: &Engine, run: &str, want: RunStatus) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = engine.run(run).await.unwrap().unwrap().run.status;
        if s == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{run} is {s:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_idempotency_key_starts_one_run_a_day_across_restarts() {
    for (store, backing) in Backing::all("flow_idem").await {
        let clock = Arc::new(ManualClock::new(START));
        let engine = backing.engine(&clock).await;
        let first = send(&engine, "shop/order.paid", json!({"order_id": "o-1"})).await;
        assert_eq!(first.runs.len(), 1, "{store}");
        let again = send(&engine, "shop/order.paid", json!({"order_id": "o-1"})).await;
        assert!(again.runs.is_empty(), "{store}");
        assert_eq!(why(&engine, &again.skipped[0]).await, "Idempotent");
        let other = send(&engine, "shop/order.paid", json!({"order_id": "o-2"})).await;
        assert_eq!(other.runs.len(), 1, "{store}: another key");
        let run = engine.wait_for_run(&first.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.output, Some(json!("charged o-1")));
        engine.close().await;

        // A new engine on the same data still holds the key.
        clock.advance(Duration::from_secs(23 * 3600));
        let engine = backing.engine(&clock).await;
        let again = send(&engine, "shop/order.paid", json!({"order_id": "o-1"})).await;
        assert!(again.runs.is_empty(), "{store}: held across the restart");
        // A day after the first run, the key is free.
        clock.advance(Duration::from_secs(3600));
        let later = send(&engine, "shop/order.paid", json!({"order_id": "o-1"})).await;
        assert_eq!(later.runs.len(), 1, "{store}: free after 24 hours");
        engine.wait_for_run(&later.runs[0], WAIT).await.unwrap();
        engine.close().await;
    }
}

#[tokio::test]
async fn a_rate_limit_skips_events_over_it_per_key_across_restarts() {
    for (store, backing) in Backing::all("flow_rate").await {
        let clock = Arc::new(ManualClock::new(START));
        let engine = backing.engine(&clock).await;
        let mut started = 0;
        let mut skipped = Vec::new();
        for _ in 0..3 {
            let s = send(&engine, "user/updated", json!({"user": "ada"})).await;
            started += s.runs.len();
            skipped.extend(s.skipped);
        }
        assert_eq!((started, skipped.len()), (2, 1), "{store}: two a minute");
        assert_eq!(why(&engine, &skipped[0]).await, "RateLimited");
        let grace = send(&engine, "user/updated", json!({"user": "grace"})).await;
        assert_eq!(grace.runs.len(), 1, "{store}: another key");
        engine.close().await;

        let engine = backing.engine(&clock).await;
        let s = send(&engine, "user/updated", json!({"user": "ada"})).await;
        assert!(
            s.runs.is_empty(),
            "{store}: still over the limit after a restart"
        );
        clock.advance(Duration::from_secs(30));
        let s = send(&engine, "user/updated", json!({"user": "ada"})).await;
        assert_eq!(s.runs.len(), 1, "{store}: half a minute frees one slot");
        engine.wait_for_run(&s.runs[0], WAIT).await.unwrap();
        engine.close().await;
    }
}

#[tokio::test]
async fn a_singleton_skips_while_a_run_is_active_or_cancels_it() {
    for (store, backing) in Backing::all("flow_single").await {
        let clock = Arc::new(ManualClock::new(START));
        let engine = backing.engine(&clock).await;
        let first = send(&engine, "report/requested", json!({"account": "a1"})).await;
        let run = first.runs[0].clone();
        status_becomes(&engine, &run, RunStatus::Sleeping).await;
        let second = send(&engine, "report/requested", json!({"account": "a1"})).await;
        assert!(second.runs.is_empty(), "{store}");
        assert_eq!(why(&engine, &second.skipped[0]).await, "Singleton");
        let other = send(&engine, "report/requested", json!({"account": "a2"})).await;
        assert_eq!(other.runs.len(), 1, "{store}: another key");
        engine.close().await;

        // After a restart the sleeping run still holds the key; once it
        // ends, the key is free.
        let engine = backing.engine(&clock).await;
        let third = send(&engine, "report/requested", json!({"account": "a1"})).await;
        assert!(third.runs.is_empty(), "{store}: held across the restart");
        clock.advance(Duration::from_secs(3601));
        let done = engine.wait_for_run(&run, WAIT).await.unwrap();
        assert_eq!(done.run.status, RunStatus::Completed, "{store}");
        let fourth = send(&engine, "report/requested", json!({"account": "a1"})).await;
        assert_eq!(fourth.runs.len(), 1, "{store}: free once the run ended");

        // Mode cancel: the sleeping run is cancelled, the new one starts.
        let old = send(&engine, "cache/refresh", json!({"key": "k"})).await;
        status_becomes(&engine, &old.runs[0], RunStatus::Sleeping).await;
        let new = send(&engine, "cache/refresh", json!({"key": "k"})).await;
        assert_eq!(new.runs.len(), 1, "{store}");
        let old = engine.wait_for_run(&old.runs[0], WAIT).await.unwrap();
        assert_eq!(old.run.status, RunStatus::Cancelled, "{store}");
        assert!(old.steps.iter().all(|s| s.id != "rebuild"));
        status_becomes(&engine, &new.runs[0], RunStatus::Sleeping).await;
        engine.close().await;
    }
}

#[tokio::test]
async fn concurrency_bounds_the_runs_of_a_key_running_at_once() {
    for (store, backing) in Backing::all("flow_conc").await {
        let clock = Arc::new(ManualClock::new(START));
        let engine = backing.engine(&clock).await;
        let mut runs = Vec::new();
        for (customer, n) in [("a", 8), ("b", 4)] {
            for _ in 0..n {
                let c = format!("{store}-{customer}");
                runs.extend(
                    send(&engine, "job/queued", json!({"customer": c}))
                        .await
                        .runs,
                );
            }
        }
        for account in ["x", "y"] {
            for _ in 0..3 {
                let a = format!("{store}-{account}");
                runs.extend(
                    send(&engine, "export/requested", json!({"account": a}))
                        .await
                        .runs,
                );
            }
        }
        assert_eq!(runs.len(), 12 + 12);
        for r in &runs {
            let done = engine.wait_for_run(r, WAIT).await.unwrap();
            assert_eq!(done.run.status, RunStatus::Completed, "{store}");
        }
        assert_eq!(most_at_once(&format!("{store}-a")), 2, "{store}");
        assert_eq!(most_at_once(&format!("{store}-b")), 2, "{store}");
        for account in ["x", "y"] {
            let key = format!("account {store}-{account}");
            assert_eq!(most_at_once(&key), 1, "{store}: {key}");
        }
        engine.close().await;
    }
}

#[tokio::test]
async fn a_throttle_queues_runs_and_priority_moves_them_across_restarts() {
    for (store, backing) in Backing::all("flow_throttle").await {
        let clock = Arc::new(ManualClock::new(START));
        let engine = backing.engine(&clock).await;
        let mail = |domain: &str| json!({"domain": domain, "urgent": false, "bulk": false});
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.extend(send(&engine, "mail/send", mail("a.com")).await.runs);
        }
        assert_eq!(runs.len(), 3, "{store}: a throttle drops nothing");
        engine.wait_for_run(&runs[0], WAIT).await.unwrap();
        let record = |id: String| {
            let engine = engine.clone();
            async move { engine.run(&id).await.unwrap().unwrap().run }
        };
        let second = record(runs[1].clone()).await;
        assert_eq!(second.status, RunStatus::Queued, "{store}");
        assert_eq!(
            second.wake_at,
            Some(START + 30_000),
            "{store}: one every 30 s"
        );
        assert_eq!(record(runs[2].clone()).await.wake_at, Some(START + 60_000));
        // Urgent mail is queued 120 s ahead, bulk mail 60 s behind.
        let urgent = send(
            &engine,
            "mail/send",
            json!({"domain": "b.com", "urgent": true, "bulk": false}),
        )
        .await;
        let bulk = send(
            &engine,
            "mail/send",
            json!({"domain": "c.com", "urgent": false, "bulk": true}),
        )
        .await;
        engine.wait_for_run(&urgent.runs[0], WAIT).await.unwrap();
        assert_eq!(record(urgent.runs[0].clone()).await.wake_at, None);
        assert_eq!(
            record(bulk.runs[0].clone()).await.wake_at,
            Some(START + 60_000),
            "{store}"
        );
        engine.close().await;

        // After a restart the key's schedule holds: the next run comes
        // after the queued ones, and each runs in its turn.
        let engine = backing.engine(&clock).await;
        let fourth = send(&engine, "mail/send", mail("a.com")).await.runs[0].clone();
        let run = engine.run(&fourth).await.unwrap().unwrap().run;
        assert_eq!(run.wake_at, Some(START + 90_000), "{store}");
        clock.advance(Duration::from_secs(30));
        let done = engine.wait_for_run(&runs[1], WAIT).await.unwrap();
        assert_eq!(done.run.status, RunStatus::Completed, "{store}");
        assert_eq!(
            engine.run(&runs[2]).await.unwrap().unwrap().run.status,
            RunStatus::Queued
        );
        clock.advance(Duration::from_secs(60));
        for id in [&runs[2], &fourth, &bulk.runs[0]] {
            engine.wait_for_run(id, WAIT).await.unwrap();
        }
        engine.close().await;
    }
}

#[tokio::test]
async fn a_run_past_its_finish_timeout_is_cancelled_across_restarts() {
    for (store, backing) in Backing::all("flow_timeouts").await {
        let clock = Arc::new(ManualClock::new(START));
        let engine = backing.engine(&clock).await;
        let run = send(&engine, "report/nightly", json!({})).await.runs[0].clone();
        status_becomes(&engine, &run, RunStatus::Sleeping).await;
        engine.close().await;
        let engine = backing.engine(&clock).await;
        clock.advance(Duration::from_secs(601));
        let done = engine.wait_for_run(&run, WAIT).await.unwrap();
        assert_eq!(done.run.status, RunStatus::Cancelled, "{store}");
        assert_eq!(done.run.error.unwrap()["name"], "FinishTimeout", "{store}");
        assert!(done.steps.iter().all(|s| s.id != "send"), "{store}");
        engine.close().await;
    }
}

#[tokio::test]
async fn on_failure_runs_the_handler_with_the_error_and_the_original_event() {
    for (store, backing) in Backing::all("flow_on_failure").await {
        let clock = Arc::new(ManualClock::new(START));
        let engine = backing.engine(&clock).await;
        assert!(
            engine.functions().iter().any(|f| f.id() == "import-failed"),
            "{store}: the handler is registered with the function"
        );
        let run = send(&engine, "import/start", json!({"page": 5})).await.runs;
        assert_eq!(run.len(), 1, "{store}: only the import starts");
        let failed = engine.wait_for_run(&run[0], WAIT).await.unwrap();
        assert_eq!(failed.run.status, RunStatus::Failed, "{store}");
        let deadline = std::time::Instant::now() + WAIT;
        let handler = loop {
            let runs = engine
                .runs(durafn::store::RunFilter {
                    function: Some("import-failed".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            if let Some(r) = runs.first() {
                break r.id.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{store}: no handler run"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let done = engine.wait_for_run(&handler, WAIT).await.unwrap();
        assert_eq!(
            done.run.output,
            Some(json!(
                "fragile-import failed (\"the shop API is down\") on page 5"
            )),
            "{store}"
        );
        // The handler's own trigger is that function's failures only; a
        // cancelled run (of it or another function) is no failure.
        let other = send(&engine, "report/nightly", json!({})).await.runs[0].clone();
        engine.cancel(&other).await.unwrap();
        engine.wait_for_run(&other, WAIT).await.unwrap();
        let handlers = engine
            .runs(durafn::store::RunFilter {
                function: Some("import-failed".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(handlers.len(), 1, "{store}");
        engine.close().await;
    }
}

#[tokio::test]
async fn a_debounce_runs_once_for_a_burst_with_the_last_event_across_restarts() {
    for (store, backing) in Backing::all("flow_debounce").await {
        let clock = Arc::new(ManualClock::new(START));
        let engine = backing.engine(&clock).await;
        let mut started = Vec::new();
        for rev in 1..=10 {
            let s = send(&engine, "doc/edited", json!({"doc": "a", "rev": rev})).await;
            started.extend(s.runs);
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(started.len(), 1, "{store}: one run for the burst");
        let other = send(&engine, "doc/edited", json!({"doc": "b", "rev": 1})).await;
        assert_eq!(other.runs.len(), 1, "{store}: another key");
        engine.close().await;

        let engine = backing.engine(&clock).await;
        let again = send(&engine, "doc/edited", json!({"doc": "a", "rev": 11})).await;
        assert_eq!(again.debounced, started, "{store}: joins across a restart");
        assert_eq!(
            engine.run(&started[0]).await.unwrap().unwrap().run.status,
            RunStatus::Queued
        );
        clock.advance(Duration::from_secs(10));
        let done = engine.wait_for_run(&started[0], WAIT).await.unwrap();
        assert_eq!(done.run.output, Some(json!(11)), "{store}: the last event");
        engine.close().await;
    }
}

#[tokio::test]
async fn a_batch_runs_once_with_its_events_when_full_or_timed_out_across_restarts() {
    for (store, backing) in Backing::all("flow_batch").await {
        let clock = Arc::new(ManualClock::new(START));
        let engine = backing.engine(&clock).await;
        let activity = |account: &str, n: u64| json!({"account": account, "n": n});
        let first = send(&engine, "activity/recorded", activity("a", 1)).await;
        assert_eq!(
            first.runs.len(),
            1,
            "{store}: the first event opens a batch"
        );
        let run = first.runs[0].clone();
        clock.advance(Duration::from_secs(1));
        let second = send(&engine, "activity/recorded", activity("a", 2)).await;
        assert_eq!(
            second.batched,
            std::slice::from_ref(&run),
            "{store}: joins it"
        );
        assert!(second.runs.is_empty());
        let alone = send(&engine, "activity/recorded", activity("b", 7)).await;
        assert_eq!(alone.runs.len(), 1, "{store}: another key, another batch");
        engine.close().await;

        let engine = backing.engine(&clock).await;
        assert_eq!(
            engine.run(&run).await.unwrap().unwrap().run.status,
            RunStatus::Queued,
            "{store}: waiting to fill"
        );
        let third = send(&engine, "activity/recorded", activity("a", 3)).await;
        assert_eq!(
            third.batched,
            std::slice::from_ref(&run),
            "{store}: across a restart"
        );
        let done = engine.wait_for_run(&run, WAIT).await.unwrap();
        assert_eq!(
            done.run.output,
            Some(json!([1, 2, 3])),
            "{store}: full, it runs at once with its events in order"
        );
        assert_eq!(done.events.len(), 3, "{store}: the run shows its batch");
        let next = send(&engine, "activity/recorded", activity("a", 4)).await;
        assert_eq!(next.runs.len(), 1, "{store}: a full batch takes no more");
        assert_eq!(
            engine
                .run(&alone.runs[0])
                .await
                .unwrap()
                .unwrap()
                .run
                .status,
            RunStatus::Queued
        );
        clock.advance(Duration::from_secs(5));
        let done = engine.wait_for_run(&alone.runs[0], WAIT).await.unwrap();
        assert_eq!(
            done.run.output,
            Some(json!([7])),
            "{store}: at its timeout with what it has"
        );
        engine.close().await;
    }
}

#[tokio::test]
async fn the_test_harness_gives_a_batching_function_its_events() {
    let out = durafn::testing::TestRun::new(record_activity)
        .batch(
            "activity/recorded",
            [
                json!({"account": "a", "n": 4}),
                json!({"account": "a", "n": 5}),
            ],
        )
        .run()
        .await;
    assert_eq!(out.output::<Vec<u64>>(), [4, 5]);
    let one = durafn::testing::TestRun::new(record_activity)
        .event("activity/recorded", json!({"account": "a", "n": 6}))
        .run()
        .await;
    assert_eq!(one.output::<Vec<u64>>(), [6], "one event: a batch of one");
}

#[durable_fn(id = "bad-key", event = "x/y", idempotency = "event.data.(")]
async fn bad_key(_ctx: Ctx, _event: Event) -> Result<()> {
    Ok(())
}

#[tokio::test]
async fn a_key_that_is_not_cel_fails_the_build_clearly() {
    let err = Engine::builder()
        .register(bad_key)
        .memory()
        .build()
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("bad-key"), "{msg}");
    assert!(msg.contains("idempotency key"), "{msg}");
    assert!(msg.contains("not a valid CEL expression"), "{msg}");
}

/// A register request whose function has flow options (as the official
/// SDKs sync them).
fn synced(options: Value) -> Value {
    let mut body = common::register_body("app", "http://127.0.0.1:9/api", "f", "a/b", 0);
    let f = body["functions"][0].as_object_mut().unwrap();
    for (k, v) in options.as_object().unwrap() {
        f.insert(k.clone(), v.clone());
    }
    body
}

#[tokio::test]
async fn flow_options_synced_by_an_app_apply_and_bad_ones_are_refused() {
    let clock = Arc::new(ManualClock::new(START));
    let engine = builder(&clock).memory().build().await.unwrap();
    engine
        .register_app(&synced(json!({
            "idempotency": "event.data.id",
            "rateLimit": {"limit": 5, "period": "1h"},
            "singleton": {"key": "event.data.id", "mode": "skip"},
            "concurrency": [{"limit": 2, "key": "event.data.id"}, {"limit": 5, "scope": "env", "key": "'all'"}],
            "throttle": {"limit": 10, "period": "1m", "burst": 2},
            "priority": {"run": "event.data.id > 5 ? 60 : 0"},
            "timeouts": {"start": "10s", "finish": "1h"},
            "debounce": {"period": "1s", "key": "event.data.id", "timeout": "1m"},
        })))
        .await
        .unwrap();
    let a = send(&engine, "a/b", json!({"id": 1})).await;
    assert_eq!(a.runs.len(), 1);
    let b = send(&engine, "a/b", json!({"id": 1})).await;
    assert_eq!(why(&engine, &b.skipped[0]).await, "Idempotent");
    // Batching, with `if`: events it rejects run alone.
    engine
        .register_app(&synced(json!({
            "batchEvents": {"maxSize": 2, "timeout": "5s", "key": "event.data.k", "if": "event.data.id > 5"},
        })))
        .await
        .unwrap();
    let opened = send(&engine, "a/b", json!({"id": 9, "k": "x"})).await;
    assert_eq!(opened.runs.len(), 1);
    let alone = send(&engine, "a/b", json!({"id": 1, "k": "x"})).await;
    assert_eq!(alone.runs.len(), 1, "rejected by `if`: a run of its own");
    let joined = send(&engine, "a/b", json!({"id": 8, "k": "x"})).await;
    assert_eq!(joined.batched, opened.runs);
    for (options, expect) in [
        (
            json!({"rateLimit": {"limit": 0, "period": "1m"}}),
            "`limit`",
        ),
        (
            json!({"rateLimit": {"limit": 1, "period": "soon"}}),
            "not a period",
        ),
        (
            json!({"rateLimit": {"limit": 1, "period": "2d"}}),
            "from 1s to 24h",
        ),
        (json!({"singleton": {"mode": "queue"}}), "`mode`"),
        (json!({"idempotency": "event.data.("}), "not a valid CEL"),
        (json!({"idempotency": 7}), "CEL string"),
        (
            json!({"concurrency": [{"limit": 1}, {"limit": 2}, {"limit": 3}]}),
            "at most 2",
        ),
        (
            json!({"concurrency": {"limit": 1, "scope": "env"}}),
            "needs a `key`",
        ),
        (
            json!({"concurrency": {"limit": 1, "scope": "galaxy"}}),
            "`galaxy`",
        ),
        (json!({"concurrency": 0}), "`limit`"),
        (
            json!({"throttle": {"limit": 1, "period": "8d"}}),
            "from 1s to 7d",
        ),
        (
            json!({"throttle": {"limit": 1, "period": "1m", "burst": 0}}),
            "`burst`",
        ),
        (
            json!({"priority": {"run": "event.data.("}}),
            "not a valid CEL",
        ),
        (
            json!({"batchEvents": {"maxSize": 0, "timeout": "5s"}}),
            "`max_size` must be from 1",
        ),
        (
            json!({"batchEvents": {"maxSize": 10, "timeout": "2d"}}),
            "from 1s to 24h",
        ),
        (json!({"batchEvents": {"maxSize": 10}}), "`timeout`"),
        (
            json!({"batchEvents": {"maxSize": 10, "timeout": "5s"}, "idempotency": "event.data.id"}),
            "cannot be combined with idempotency",
        ),
    ] {
        let err = engine
            .register_app(&synced(options.clone()))
            .await
            .err()
            .unwrap_or_else(|| panic!("{options} accepted"));
        let msg = err.to_string();
        assert!(msg.contains(expect), "{options}: {msg}");
        assert!(msg.contains("function `f`"), "{options}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_engines_on_one_postgres_database_share_the_limits() {
    let Some(url) = common::pg_url().await else {
        return;
    };
    let schema = common::fresh_schema("flow_two");
    let _guard = common::DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let clock = Arc::new(ManualClock::new(START));
    let engine = || async {
        let options = durafn::store::PgOptions {
            schema: schema.clone(),
            ..Default::default()
        };
        let store = durafn::store::PgStore::connect_with(&url, options)
            .await
            .unwrap();
        builder(&clock)
            .store(Arc::new(store) as Arc<dyn Store>)
            .build()
            .await
            .unwrap()
    };
    let (first, second) = (engine().await, engine().await);
    // Both engines take events and claim runs; the key's limit of 2 holds
    // across them.
    let mut runs = Vec::new();
    for i in 0..12 {
        let engine = if i % 2 == 0 { &first } else { &second };
        let data = json!({"customer": "two-engines", "order_id": format!("o{}", i % 6)});
        runs.extend(send(engine, "job/queued", data.clone()).await.runs);
        runs.extend(send(engine, "shop/order.paid", data).await.runs);
    }
    assert_eq!(runs.len(), 12 + 6, "one charge per order ID across engines");
    for r in &runs {
        let done = first.wait_for_run(r, WAIT).await.unwrap();
        assert_eq!(done.run.status, RunStatus::Completed);
    }
    assert_eq!(most_at_once("two-engines"), 2);
    first.close().await;
    second.close().await;
}

#[tokio::test]
async fn a_served_function_syncs_its_failure_handler_and_options() {
    // The same attribute options as in process, over the wire: the failure
    // handler is served beside its function and runs for its failures.
    let engine = Engine::builder().memory().build().await.unwrap();
    let app = durafn::serve::Handler::new("shop").register(fragile_import);
    common::sync_handler(&engine, app).await;
    let mut ids: Vec<String> = engine
        .remote_functions()
        .iter()
        .map(|f| f.id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["shop-fragile-import", "shop-fragile-import-failure"]);
    let run = common::run_to_end(&engine, Event::new("import/start", json!({"page": 5})), 10).await;
    assert_eq!(run.run.status, RunStatus::Failed);
    let mut handled = None;
    for _ in 0..200 {
        let runs = engine
            .runs(durafn::store::RunFilter {
                function: Some("shop-fragile-import-failure".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        handled = runs
            .into_iter()
            .find(|r| r.status == RunStatus::Completed)
            .and_then(|r| r.output);
        if handled.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        handled,
        Some(json!(
            "shop-fragile-import failed (\"the shop API is down\") on page 5"
        ))
    );
}
