//! The rest of the step toolbox through the engine (memory and SQLite):
//! wait for event (match and CEL `if`), send event, invoke, and their
//! durability across a restart.

use std::time::Duration;

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
}

async fn engines() -> Vec<(&'static str, Engine, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = builder()
        .sqlite(dir.path().join("d.db"))
        .build()
        .await
        .unwrap();
    vec![
        (
            "memory",
            builder().memory().build().await.unwrap(),
            tempfile::tempdir().unwrap(),
        ),
        ("sqlite", sqlite, dir),
    ]
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
