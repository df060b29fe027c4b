//! The rest of the step toolbox through the engine (memory and SQLite):
//! wait for event (match, CEL `if` and lookback), send event, invoke, and
//! their durability across a restart.

use std::sync::Arc;
use std::time::Duration;

mod common;

use durafn::prelude::*;
use durafn::store::RunStatus;
use durafn::{Engine, EngineBuilder};
use serde_json::json;

#[derive(Deserialize)]
#[allow(dead_code)] // `order_id` is read by the wait's `match`, not by Rust
struct Order {
    order_id: u64,
    #[serde(default)]
    wait_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Paid {
    order_id: u64,
    amount: u64,
}

#[durable_fn(id = "await-payment", event = "shop/order.placed")]
async fn await_payment(_ctx: Ctx, event: Event<Order>) -> Result<Option<u64>> {
    let wait = Duration::from_millis(if event.data.wait_ms == 0 {
        10_000
    } else {
        event.data.wait_ms
    });
    let paid: Option<Event<Paid>> = wait_for_event!("paid", event = "shop/invoice.paid", timeout = wait, match = "data.order_id")?;
    let amount = paid.map(|e| e.data.amount);
    step!("record", { amount })?;
    Ok(amount)
}

/// Takes a payment sent up to 5 minutes before the wait began.
#[durable_fn(id = "checkout", event = "shop/order.checked-out")]
async fn checkout(_ctx: Ctx, event: Event<Order>) -> Result<Option<u64>> {
    let wait = Duration::from_millis(event.data.wait_ms.max(1));
    let paid: Option<Event<Paid>> = wait_for_event!(
        "paid",
        event = "shop/invoice.paid",
        timeout = wait,
        match = "data.order_id",
        lookback = Duration::from_secs(300)
    )?;
    Ok(paid.map(|e| e.data.amount))
}

/// Two waits for payments that look back: each takes another one.
#[durable_fn(id = "instalments", event = "shop/instalments.due")]
async fn instalments(_ctx: Ctx, _event: Event<Order>) -> Result<Vec<u64>> {
    let mut paid = Vec::new();
    for _ in 0..2 {
        let p: Option<Event<Paid>> = wait_for_event!(
            "paid",
            event = "shop/invoice.paid",
            timeout = Duration::from_secs(60),
            match = "data.order_id",
            lookback = Duration::from_secs(300)
        )?;
        paid.extend(p.map(|e| e.data.amount));
    }
    Ok(paid)
}

#[derive(Deserialize)]
#[allow(dead_code)] // `user` is read by the wait's `if`
struct Bid {
    user: String,
}

#[durable_fn(id = "big-bid", event = "auction/opened")]
async fn big_bid(_ctx: Ctx, _event: Event<Bid>) -> Result<u64> {
    let bid: Option<Event<serde_json::Value>> = wait_for_event!(
        "bid",
        event = "auction/bid",
        timeout = Duration::from_secs(10),
        if = "async.data.amount > 100 && event.data.user == async.data.user"
    )?;
    Ok(bid
        .map(|b| b.data["amount"].as_u64().unwrap_or(0))
        .unwrap_or(0))
}

#[derive(Serialize, Deserialize)]
struct N {
    n: i64,
}

#[durable_fn(id = "double", event = "math/double")]
async fn double(_ctx: Ctx, event: Event<N>) -> Result<i64> {
    if event.data.n < 0 {
        return Err(NonRetriable::new("negative input").into());
    }
    let v = step!("compute", { event.data.n * 2 })?;
    Ok(v)
}

#[durable_fn(id = "calculator", event = "math/calc")]
async fn calculator(_ctx: Ctx, event: Event<N>) -> Result<String> {
    let doubled: i64 = invoke!("double-it", double, N { n: event.data.n })?;
    let failed: std::result::Result<i64, StepError> =
        invoke!("double-negative", double, N { n: -1 });
    let err = failed.unwrap_err();
    Ok(format!("{doubled} / {}", err.error.message))
}

#[durable_fn(id = "announcer", event = "news/publish")]
async fn announcer(_ctx: Ctx, event: Event) -> Result<usize> {
    let title = event.data["title"].as_str().unwrap_or_default().to_string();
    let ids = send_event!(
        "announce",
        vec![
            Event::new("news/published", json!({"title": title})),
            Event::new("news/published", json!({"title": "again"}))
        ]
    )?;
    Ok(ids.len())
}

#[durable_fn(id = "listener", event = "news/published")]
async fn listener(_ctx: Ctx, event: Event) -> Result<String> {
    Ok(event.data["title"].as_str().unwrap_or_default().to_string())
}

fn builder() -> EngineBuilder {
    Engine::builder()
        .register(await_payment)
        .register(big_bid)
        .register(double)
        .register(calculator)
        .register(announcer)
        .register(listener)
        .register(shipment)
        .register(fan_out)
        .register(checkout)
        .register(instalments)
}

/// The engine on each store: memory, SQLite, and PostgreSQL (a fresh
/// schema, when the server is reachable). The guard keeps what the store
/// needs until the test ends.
/// A store's name, a value on it, and what must live as long (a
/// directory, a schema to drop).
type Guarded<T> = (&'static str, T, Box<dyn std::any::Any>);

async fn engines() -> Vec<Guarded<Engine>> {
    engines_of(builder).await
}

async fn engines_of(builder: impl Fn() -> EngineBuilder) -> Vec<Guarded<Engine>> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = builder()
        .sqlite(dir.path().join("d.db"))
        .build()
        .await
        .unwrap();
    let mut all: Vec<Guarded<Engine>> = vec![
        (
            "memory",
            builder().memory().build().await.unwrap(),
            Box::new(()),
        ),
        ("sqlite", sqlite, Box::new(dir)),
    ];
    if let Some((store, guard)) = common::pg_store("toolbox").await {
        let engine = builder().store(store).build().await.unwrap();
        all.push(("postgres", engine, Box::new(guard)));
    }
    all
}

const WAIT: Duration = Duration::from_secs(10);

async fn until_status(engine: &Engine, id: &str, status: RunStatus) {
    let deadline = std::time::Instant::now() + WAIT;
    while engine.run(id).await.unwrap().unwrap().run.status != status {
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} never became {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_matching_event_resumes_a_wait_and_others_do_not() {
    for (store, engine, _d) in engines().await {
        let sent = engine
            .send(Event::new("shop/order.placed", json!({"order_id": 1})))
            .await
            .unwrap();
        let id = &sent.runs[0];
        until_status(&engine, id, RunStatus::Sleeping).await;
        let trace = engine.run(id).await.unwrap().unwrap();
        assert_eq!(trace.steps[0].status, "waiting", "{store}");
        // Another order's payment does not match.
        engine
            .send(Event::new(
                "shop/invoice.paid",
                json!({"order_id": 2, "amount": 5}),
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            engine.run(id).await.unwrap().unwrap().run.status,
            RunStatus::Sleeping,
            "{store}"
        );
        engine
            .send(Event::new(
                "shop/invoice.paid",
                json!({"order_id": 1, "amount": 99}),
            ))
            .await
            .unwrap();
        let run = engine.wait_for_run(id, WAIT).await.unwrap();
        assert_eq!(run.run.output, Some(json!(99)), "{store}");
        assert_eq!(run.steps[0].id, "paid");
        assert_eq!(run.steps[0].kind.as_deref(), Some("wait_for_event"));
        assert_eq!(run.steps[1].kind.as_deref(), Some("run"));
        assert_eq!(
            run.steps[0].output.as_ref().unwrap()["name"],
            "shop/invoice.paid",
            "the trace shows the event that ended the wait"
        );
    }
}

#[tokio::test]
async fn only_events_after_the_wait_count_and_the_timeout_gives_none() {
    for (store, engine, _d) in engines().await {
        // Paid before the order is even placed: does not count.
        engine
            .send(Event::new(
                "shop/invoice.paid",
                json!({"order_id": 3, "amount": 7}),
            ))
            .await
            .unwrap();
        let sent = engine
            .send(Event::new(
                "shop/order.placed",
                json!({"order_id": 3, "wait_ms": 200}),
            ))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.status, RunStatus::Completed, "{store}");
        assert_eq!(run.run.output, Some(json!(null)), "{store}: timed out");
    }
}

#[tokio::test]
async fn a_wait_with_lookback_takes_a_matching_event_sent_just_before_it() {
    let clock = Arc::new(durafn::testing::ManualClock::new(1_700_000_000_000));
    let at = clock.clone();
    for (store, engine, _d) in engines_of(|| builder().clock(at.clone())).await {
        let paid = |order: u64, amount: u64| {
            Event::new(
                "shop/invoice.paid",
                json!({"order_id": order, "amount": amount}),
            )
        };
        // Too early: out of the window by the time the wait begins.
        engine.send(paid(4, 1)).await.unwrap();
        clock.advance(Duration::from_secs(301));
        engine.send(paid(5, 2)).await.unwrap();
        engine.send(paid(4, 3)).await.unwrap();
        engine.send(paid(4, 4)).await.unwrap();
        let sent = engine
            .send(Event::new(
                "shop/order.checked-out",
                json!({"order_id": 4, "wait_ms": 60_000}),
            ))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(
            run.run.output,
            Some(json!(3)),
            "{store}: the first matching payment in the window"
        );
        // Nothing in the window: the wait goes on as any other.
        clock.advance(Duration::from_secs(301));
        let sent = engine
            .send(Event::new(
                "shop/order.checked-out",
                json!({"order_id": 4, "wait_ms": 60_000}),
            ))
            .await
            .unwrap();
        until_status(&engine, &sent.runs[0], RunStatus::Sleeping).await;
        engine.send(paid(4, 5)).await.unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.output, Some(json!(5)), "{store}");
        // Two waits in one run take two payments, not the same one twice.
        engine.send(paid(9, 10)).await.unwrap();
        engine.send(paid(9, 20)).await.unwrap();
        let sent = engine
            .send(Event::new("shop/instalments.due", json!({"order_id": 9})))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.output, Some(json!([10, 20])), "{store}");
    }
}

#[tokio::test]
async fn an_apps_wait_with_lookback_looks_back_over_the_wire() {
    let engine = Engine::builder().memory().build().await.unwrap();
    common::sync_handler(
        &engine,
        durafn::serve::Handler::new("shop").register(checkout),
    )
    .await;
    engine
        .send(Event::new(
            "shop/invoice.paid",
            json!({"order_id": 8, "amount": 80}),
        ))
        .await
        .unwrap();
    let sent = engine
        .send(Event::new(
            "shop/order.checked-out",
            json!({"order_id": 8, "wait_ms": 60_000}),
        ))
        .await
        .unwrap();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.output, Some(json!(80)));
}

#[tokio::test]
async fn a_cel_if_filters_events() {
    for (store, engine, _d) in engines().await {
        let sent = engine
            .send(Event::new("auction/opened", json!({"user": "ann"})))
            .await
            .unwrap();
        until_status(&engine, &sent.runs[0], RunStatus::Sleeping).await;
        engine
            .send(Event::new(
                "auction/bid",
                json!({"user": "bob", "amount": 500}),
            ))
            .await
            .unwrap();
        engine
            .send(Event::new(
                "auction/bid",
                json!({"user": "ann", "amount": 50}),
            ))
            .await
            .unwrap();
        engine
            .send(Event::new(
                "auction/bid",
                json!({"user": "ann", "amount": 150}),
            ))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.output, Some(json!(150)), "{store}");
    }
}

#[durable_fn(id = "bad-cel", event = "x/y")]
async fn bad_cel(_ctx: Ctx, _event: Event) -> Result<()> {
    let _: Option<Event> = wait_for_event!("w", event = "a/b", timeout = Duration::from_secs(1), if = "async.data.amount >")?;
    Ok(())
}

#[tokio::test]
async fn a_bad_expression_is_refused_at_registration() {
    let err = Engine::builder()
        .memory()
        .register(bad_cel)
        .build()
        .await
        .err()
        .expect("refused");
    assert_eq!(err.name(), "BadExpression");
    assert!(
        err.message().contains("`bad-cel`, step `w`"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("not a valid CEL expression"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn invoke_resumes_with_the_result_or_the_error() {
    for (store, engine, _d) in engines().await {
        let sent = engine
            .send(Event::new("math/calc", json!({"n": 21})))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(
            run.run.status,
            RunStatus::Completed,
            "{store}: {:?}",
            run.run.error
        );
        assert_eq!(
            run.run.output,
            Some(json!("42 / negative input")),
            "{store}"
        );
        let ids: Vec<&str> = run.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["double-it", "double-negative"]);
        assert_eq!(run.steps[0].kind.as_deref(), Some("invoke"));
        assert_eq!(
            run.steps[1].status, "failed",
            "{store}: the child's error is the step's error"
        );
        // The invoked runs exist on their own, with the invoked event.
        let children = engine
            .runs(durafn::store::RunFilter {
                function: Some("double".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(children.len(), 2, "{store}");
        let child = engine.run(&children[1].id).await.unwrap().unwrap();
        assert_eq!(child.event["name"], "inngest/function.invoked");
    }
}

#[tokio::test]
async fn send_event_triggers_other_functions_once() {
    for (store, engine, _d) in engines().await {
        let sent = engine
            .send(Event::new("news/publish", json!({"title": "hello"})))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.output, Some(json!(2)), "{store}");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let runs = engine
                .runs(durafn::store::RunFilter {
                    function: Some("listener".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            if runs.len() == 2 && runs.iter().all(|r| r.status == RunStatus::Completed) {
                let mut titles: Vec<String> = runs
                    .iter()
                    .map(|r| r.output.clone().unwrap().as_str().unwrap().to_string())
                    .collect();
                titles.sort();
                assert_eq!(titles, ["again", "hello"], "{store}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{store}: listeners did not run: {runs:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn a_wait_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.db");
    let engine = builder().sqlite(&path).build().await.unwrap();
    let sent = engine
        .send(Event::new("shop/order.placed", json!({"order_id": 9})))
        .await
        .unwrap();
    until_status(&engine, &sent.runs[0], RunStatus::Sleeping).await;
    engine.close().await;
    let engine = builder().sqlite(&path).build().await.unwrap();
    engine
        .send(Event::new(
            "shop/invoice.paid",
            json!({"order_id": 9, "amount": 12}),
        ))
        .await
        .unwrap();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.output, Some(json!(12)));
}

#[durable_fn(
    id = "big-orders",
    event = "shop/order.*",
    if = "event.data.total > 100"
)]
async fn big_orders(_ctx: Ctx, event: Event) -> Result<u64> {
    Ok(event.data["total"].as_u64().unwrap_or(0))
}

#[tokio::test]
async fn a_trigger_if_filters_which_events_start_runs() {
    let engine = Engine::builder()
        .memory()
        .register(big_orders)
        .build()
        .await
        .unwrap();
    let small = engine
        .send(Event::new("shop/order.created", json!({"total": 5})))
        .await
        .unwrap();
    let big = engine
        .send(Event::new("shop/order.created", json!({"total": 500})))
        .await
        .unwrap();
    assert!(small.runs.is_empty());
    assert_eq!(big.runs.len(), 1);
}

#[durable_fn(
    id = "shipment",
    event = "shop/order.paid",
    cancel_on = "shop/order.cancelled",
    cancel_match = "data.order_id"
)]
async fn shipment(_ctx: Ctx, _event: Event) -> Result<()> {
    step!("pack", { 1u8 })?;
    sleep!("wait-for-courier", Duration::from_secs(3600))?;
    step!("ship", { 2u8 })?;
    Ok(())
}

#[tokio::test]
async fn cancel_on_cancels_matching_runs_at_once() {
    for (store, engine, _d) in engines().await {
        let a = engine
            .send(Event::new("shop/order.paid", json!({"order_id": 1})))
            .await
            .unwrap();
        let b = engine
            .send(Event::new("shop/order.paid", json!({"order_id": 2})))
            .await
            .unwrap();
        until_status(&engine, &a.runs[0], RunStatus::Sleeping).await;
        until_status(&engine, &b.runs[0], RunStatus::Sleeping).await;
        engine
            .send(Event::new("shop/order.cancelled", json!({"order_id": 1})))
            .await
            .unwrap();
        let run = engine.wait_for_run(&a.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.status, RunStatus::Cancelled, "{store}");
        assert!(
            run.steps.iter().all(|s| s.id != "ship"),
            "{store}: no step after the cancel"
        );
        assert_eq!(
            engine.run(&b.runs[0]).await.unwrap().unwrap().run.status,
            RunStatus::Sleeping,
            "{store}: order 2 goes on"
        );
    }
}

#[durable_fn(id = "fragile", event = "test/fragile", retries = 0)]
async fn fragile(_ctx: Ctx, _event: Event) -> Result<()> {
    step!("break", {
        Err(NonRetriable::new("it broke"))?;
    })?;
    Ok(())
}

#[durable_fn(
    id = "fragile-failure",
    event = "inngest/function.failed",
    if = "event.data.function_id == 'fragile'"
)]
async fn fragile_failure(_ctx: Ctx, event: Event) -> Result<String> {
    let msg = event.data["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let original = event.data["event"]["data"]["who"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(format!("{original}: {msg}"))
}

#[tokio::test]
async fn a_failure_handler_gets_the_error_and_the_original_event() {
    let engine = Engine::builder()
        .memory()
        .register(fragile)
        .register(fragile_failure)
        .build()
        .await
        .unwrap();
    let sent = engine
        .send(Event::new("test/fragile", json!({"who": "ann"})))
        .await
        .unwrap();
    let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
    assert_eq!(run.run.status, RunStatus::Failed);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let handled = engine
            .runs(durafn::store::RunFilter {
                function: Some("fragile-failure".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        if let Some(r) = handled.first().filter(|r| r.status == RunStatus::Completed) {
            assert_eq!(r.output, Some(json!("ann: it broke")));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failure handler did not run"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[durable_fn(id = "hourly", cron = "TZ=Europe/Paris 0 * * * *")]
async fn hourly(_ctx: Ctx, event: Event) -> Result<String> {
    Ok(event.data["cron"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn cron_ticks_and_a_missed_tick_runs_once_on_start() {
    use durafn::testing::ManualClock;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cron.db");
    // 10:30 UTC.
    let clock = std::sync::Arc::new(ManualClock::new(1_767_263_400_000));
    let count = |e: Engine| async move {
        e.runs(durafn::store::RunFilter {
            function: Some("hourly".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
    };
    let engine = Engine::builder()
        .sqlite(&path)
        .clock(clock.clone())
        .register(hourly)
        .build()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(engine.clone()).await,
        0,
        "no tick yet, and never ran before: nothing to catch up"
    );
    clock.set(1_767_265_201_000); // 11:00:01
    let deadline = std::time::Instant::now() + WAIT;
    while count(engine.clone()).await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the 11:00 tick did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runs = engine.runs(Default::default()).await.unwrap();
    engine.wait_for_run(&runs[0].id, WAIT).await.unwrap();
    engine.close().await;

    // Down from 11:00 to 14:30: three ticks missed; one runs on start.
    clock.set(1_767_277_800_000);
    let engine = Engine::builder()
        .sqlite(&path)
        .clock(clock.clone())
        .register(hourly)
        .build()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while count(engine.clone()).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the missed tick did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(engine.clone()).await, 2, "only one missed tick runs");
    let last = &engine.runs(Default::default()).await.unwrap()[0];
    let detail = engine.wait_for_run(&last.id, WAIT).await.unwrap();
    assert_eq!(detail.event["name"], "inngest/scheduled.timer");
    assert_eq!(
        detail.event["ts"],
        json!(1_767_276_000_000i64),
        "the 14:00 tick"
    );
    assert_eq!(detail.run.output, Some(json!("TZ=Europe/Paris 0 * * * *")));
}

static IN_FLIGHT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static MAX_IN_FLIGHT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[durable_fn(id = "fan-out", event = "test/fanout")]
async fn fan_out(_ctx: Ctx, event: Event) -> Result<Vec<u64>> {
    let n = event.data["n"].as_u64().unwrap_or(0);
    let base = 10u64;
    let base = &base;
    let squares: Vec<u64> = parallel!("square", 0..n, |i| {
        use std::sync::atomic::Ordering::SeqCst;
        let now = IN_FLIGHT.fetch_add(1, SeqCst) + 1;
        MAX_IN_FLIGHT.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        IN_FLIGHT.fetch_sub(1, SeqCst);
        i * i + *base
    })?;
    step!("sum", { squares.iter().sum::<u64>() })?;
    Ok(squares)
}

#[tokio::test]
async fn parallel_steps_run_concurrently_with_indexed_ids() {
    for (store, engine, _d) in engines().await {
        MAX_IN_FLIGHT.store(0, std::sync::atomic::Ordering::SeqCst);
        let sent = engine
            .send(Event::new("test/fanout", json!({"n": 5})))
            .await
            .unwrap();
        let run = engine.wait_for_run(&sent.runs[0], WAIT).await.unwrap();
        assert_eq!(run.run.output, Some(json!([10, 11, 14, 19, 26])), "{store}");
        let mut ids: Vec<&str> = run.steps.iter().map(|s| s.id.as_str()).collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                "square[0]",
                "square[1]",
                "square[2]",
                "square[3]",
                "square[4]",
                "sum"
            ]
        );
        assert_eq!(run.steps[0].kind.as_deref(), Some("parallel"));
        assert!(
            MAX_IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst) > 1,
            "{store}: the branches overlapped"
        );
    }
}

#[tokio::test]
async fn a_failed_branch_is_retried_alone() {
    use durafn::testing::{Driver, TestRun};
    for driver in [Driver::Continuous, Driver::ReEntry] {
        let out = TestRun::new(fan_out)
            .event("test/fanout", json!({"n": 4}))
            .driver(driver)
            .fail_step("square[2]", 1)
            .run()
            .await;
        assert_eq!(out.output::<Vec<u64>>(), vec![10, 11, 14, 19], "{driver:?}");
        assert_eq!(out.attempts("square[2]"), 2, "{driver:?}");
        for ok in ["square[0]", "square[1]", "square[3]"] {
            assert_eq!(out.attempts(ok), 1, "{driver:?}: {ok} ran once");
        }
    }
}
