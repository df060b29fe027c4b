//! The generated HTTP handler (the SDK side of the Inngest protocol) and
//! the engine driving it over HTTP (the executor side), in one process on
//! loopback.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use durafn::prelude::*;
use durafn::serve::{wire, Handler};
use durafn::store::RunStatus;
use durafn::{Backoff, Engine, StepId};
use serde_json::{json, Value};

static PAGES: AtomicU32 = AtomicU32::new(0);

#[derive(Deserialize)]
struct Req {
    pages: u32,
}

#[durable_fn(id = "pager", event = "test/pages")]
async fn pager(_ctx: Ctx, event: Event<Req>) -> Result<u32> {
    let mut total = 0;
    for p in 0..event.data.pages {
        total += step!("page", {
            PAGES.fetch_add(1, Ordering::SeqCst);
            p + 1
        })?;
    }
    sleep!("cool", Duration::from_millis(50))?;
    let doubled = step!("double", { total * 2 })?;
    Ok(doubled)
}

static COUNTED: AtomicU32 = AtomicU32::new(0);

/// Like `pager`, with its own counter (tests run concurrently).
#[durable_fn(id = "counted", event = "test/counted")]
async fn counted(_ctx: Ctx, event: Event<Req>) -> Result<u32> {
    let mut total = 0;
    for p in 0..event.data.pages {
        total += step!("page", {
            COUNTED.fetch_add(1, Ordering::SeqCst);
            p + 1
        })?;
    }
    sleep!("cool", Duration::from_millis(50))?;
    let doubled = step!("double", { total * 2 })?;
    Ok(doubled)
}

#[derive(Debug)]
struct Down;
impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("503 from upstream")
    }
}
impl std::error::Error for Down {}

#[durable_fn(id = "flaky", event = "test/flaky", retries = 2)]
async fn flaky(ctx: Ctx, _event: Event) -> Result<u32> {
    let v = step!("call", {
        // The first attempt fails.
        if ctx.step_info().map(|(_, attempt)| attempt) == Some(0) {
            Err(Down)?;
        }
        5u32
    })?;
    Ok(v)
}

async fn listen(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn call_body(event: Value, steps: Value, stack: Vec<String>) -> Value {
    json!({
        "event": event,
        "events": [event],
        "steps": steps,
        "ctx": {"run_id": "r1", "attempt": 0, "disable_immediate_execution": false, "use_api": false,
                "stack": {"stack": stack, "current": 0}},
        "version": 2,
    })
}

fn ev() -> Value {
    json!({"name": "test/pages", "data": {"pages": 2}, "id": "e1", "ts": 1})
}

#[tokio::test]
async fn the_handler_speaks_the_protocol() {
    let app = listen(
        Handler::new("app")
            .dev(true)
            .register(pager)
            .register(flaky)
            .router_at("/api/durafn"),
    )
    .await;
    let url = format!("{app}/api/durafn");
    let http = reqwest::Client::new();

    // Introspection.
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["x-inngest-sdk"]
        .to_str()
        .unwrap()
        .starts_with("rust:v"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["schema_version"], "2024-05-24");
    assert_eq!(body["function_count"], 2);
    assert_eq!(body["mode"], "dev");

    // First call: runs `page[0]` and answers 206 [StepRun] with its hash.
    let r = http
        .post(format!("{url}?fnId=app-pager&stepId=step"))
        .json(&call_body(ev(), json!({}), vec![]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let ops: Vec<Value> = r.json().await.unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["op"], "StepRun");
    assert_eq!(ops[0]["id"], StepId::from("page[0]").hashed());
    assert_eq!(ops[0]["displayName"], "page[0]");
    assert_eq!(ops[0]["data"], 1);

    // With both pages memoized (in stack order), the next op is the sleep.
    let h0 = StepId::from("page[0]").hashed();
    let h1 = StepId::from("page[1]").hashed();
    let steps = json!({ h0.clone(): {"data": 1}, h1.clone(): {"data": 2} });
    let r = http
        .post(format!("{url}?fnId=app-pager&stepId=step"))
        .json(&call_body(
            ev(),
            steps.clone(),
            vec![h0.clone(), h1.clone()],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let ops: Vec<Value> = r.json().await.unwrap();
    assert_eq!(ops[0]["op"], "Sleep");
    let d = wire::parse_duration(ops[0]["opts"]["duration"].as_str().unwrap()).unwrap();
    assert!(d <= Duration::from_millis(50));

    // Immediate execution disabled: the next step is planned, then run when targeted.
    let hc = StepId::from("cool").hashed();
    let mut steps3 = steps.clone();
    steps3[&hc] = Value::Null;
    let stack3 = vec![h0.clone(), h1.clone(), hc.clone()];
    let mut body = call_body(ev(), steps3.clone(), stack3.clone());
    body["ctx"]["disable_immediate_execution"] = json!(true);
    let r = http
        .post(format!("{url}?fnId=app-pager&stepId=step"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let ops: Vec<Value> = r.json().await.unwrap();
    assert_eq!(ops[0]["op"], "StepPlanned");
    let hd = StepId::from("double").hashed();
    assert_eq!(ops[0]["id"], hd);
    let r = http
        .post(format!("{url}?fnId=app-pager&stepId={hd}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let ops: Vec<Value> = r.json().await.unwrap();
    assert_eq!(ops[0]["op"], "StepRun");
    assert_eq!(ops[0]["data"], 6);

    // Everything memoized: 200 with the result.
    let mut steps4 = steps3.clone();
    steps4[&hd] = json!({"data": 6});
    let mut stack4 = stack3.clone();
    stack4.push(hd.clone());
    let r = http
        .post(format!("{url}?fnId=app-pager&stepId=step"))
        .json(&call_body(ev(), steps4, stack4))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!(6));

    // A retriable step error: 206 [StepError] with X-Inngest-No-Retry: false.
    let fev = json!({"name": "test/flaky", "data": {}, "id": "e2", "ts": 1});
    let r = http
        .post(format!("{url}?fnId=app-flaky&stepId=step"))
        .json(&call_body(fev.clone(), json!({}), vec![]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-inngest-no-retry"], "false");
    let ops: Vec<Value> = r.json().await.unwrap();
    assert_eq!(ops[0]["op"], "StepError");
    assert_eq!(ops[0]["error"]["message"], "503 from upstream");
}

#[tokio::test]
async fn the_handler_refuses_bad_input_clearly() {
    let app = listen(
        Handler::new("app")
            .dev(true)
            .max_body(64 * 1024)
            .register(pager)
            .router_at("/api/durafn"),
    )
    .await;
    let url = format!("{app}/api/durafn");
    let http = reqwest::Client::new();

    let r = http
        .post(format!("{url}?fnId=app-nope&stepId=step"))
        .json(&call_body(ev(), json!({}), vec![]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-inngest-no-retry"], "true");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no function `app-nope`"),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("app-pager"),
        "{body}"
    );

    let r = http
        .post(format!("{url}?fnId=app-pager&stepId=step"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-inngest-no-retry"], "true");

    let big = json!({"name": "test/pages", "data": {"pad": "x".repeat(100 * 1024)}});
    let r = http
        .post(format!("{url}?fnId=app-pager&stepId=step"))
        .json(&call_body(big, json!({}), vec![]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // A memo map from another shape of the function: a journaled step the
    // code never reaches before a new one.
    let other = StepId::from("page[7]").hashed();
    let r = http
        .post(format!("{url}?fnId=app-pager&stepId=step"))
        .json(&call_body(
            ev(),
            json!({ other.clone(): {"data": 1} }),
            vec![other.clone()],
        ))
        .send()
        .await
        .unwrap();
    // Not retriable: 400 with `X-Inngest-No-Retry`, like every final error.
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-inngest-no-retry"], "true");
    let body: Value = r.json().await.unwrap();
    let msg = body["message"].as_str().unwrap();
    assert_eq!(body["name"], "NonDeterminism");
    assert!(msg.contains("expects step `page[7]`"), "{msg}");
    assert!(msg.contains("new step `page[0]`"), "{msg}");
}

#[tokio::test]
async fn outside_dev_mode_only_signed_requests_run() {
    let key = "signkey-test-8f3c1a";
    PAGES.store(0, Ordering::SeqCst);
    let app = listen(
        Handler::new("app")
            .dev(false)
            .signing_key(key, Some("signkey-test-0ld".into()))
            .register(pager)
            .router_at("/x"),
    )
    .await;
    let url = format!("{app}/x?fnId=app-pager&stepId=step");
    let http = reqwest::Client::new();
    let body = serde_json::to_vec(&call_body(ev(), json!({}), vec![])).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    for (what, sig) in [
        ("missing", None),
        (
            "wrong key",
            Some(wire::sign("signkey-test-other", &body, now)),
        ),
        ("stale", Some(wire::sign(key, &body, now - 600))),
        ("other body", Some(wire::sign(key, b"{}", now))),
    ] {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(s) = sig {
            req = req.header("x-inngest-signature", s);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
    }
    assert_eq!(PAGES.load(Ordering::SeqCst), 0, "nothing ran");
    for k in [key, "signkey-test-0ld"] {
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-inngest-signature", wire::sign(k, &body, now))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206, "signed with {k}");
    }
    // Introspection: the unauthenticated body, more when signed.
    let plain: Value = http
        .get(format!("{app}/x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(plain.get("authentication_succeeded").is_none());
    let signed: Value = http
        .get(format!("{app}/x"))
        .header("x-inngest-signature", wire::sign(key, b"", now))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(signed["authentication_succeeded"], true);
}

#[tokio::test]
async fn the_engine_drives_an_app_over_http_one_call_per_step() {
    let key = "signkey-dev-abc123";
    let engine = Engine::builder()
        .memory()
        .signing_key(key)
        .backoff(Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(20),
        })
        .build()
        .await
        .unwrap();
    let executor = listen(engine.router()).await;
    let app = listen(
        Handler::new("app")
            .dev(false)
            .signing_key(key, None)
            .api_base(&executor)
            .register(counted)
            .register(flaky)
            .router_at("/api/durafn"),
    )
    .await;
    engine.sync_app(&format!("{app}/api/durafn")).await.unwrap();
    let ids: Vec<String> = engine
        .remote_functions()
        .iter()
        .map(|f| f.id.clone())
        .collect();
    assert_eq!(ids, ["app-counted", "app-flaky"]);

    let calls_before = engine.http_calls();
    let sent = engine
        .send(Event::new("test/counted", json!({"pages": 3})))
        .await
        .unwrap();
    let run = engine
        .wait_for_run(&sent.runs[0], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(run.run.status, RunStatus::Completed, "{:?}", run.run.error);
    assert_eq!(run.run.output, Some(json!(12)));
    let names: Vec<&str> = run
        .steps
        .iter()
        .map(|s| s.name.as_deref().unwrap_or(&s.id))
        .collect();
    assert_eq!(names, ["page[0]", "page[1]", "page[2]", "cool", "double"]);
    assert_eq!(run.steps[0].id, StepId::from("page[0]").hashed());
    assert_eq!(COUNTED.load(Ordering::SeqCst), 3, "each page fetched once");
    // One call per step that runs in the app, one after the sleep, one to finish.
    assert_eq!(engine.http_calls() - calls_before, 3 + 1 + 1 + 1);

    // A failed attempt is retried by the executor.
    let sent = engine
        .send(Event::new("test/flaky", json!({})))
        .await
        .unwrap();
    let run = engine
        .wait_for_run(&sent.runs[0], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(run.run.status, RunStatus::Completed, "{:?}", run.run.error);
    assert_eq!(run.steps[0].attempts, 2);
    assert_eq!(run.run.output, Some(json!(5)));
}
