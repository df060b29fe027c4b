//! OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, each run is a
//! trace with a span for the run and one per step attempt (run ID,
//! function, step, attempt, outcome, error), and an invoked run joins its
//! parent's trace under the parent's span. An OTLP/HTTP receiver (JSON)
//! runs in this process. Alone in its test binary: it sets the variables.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use durafn::prelude::*;
use durafn::store::RunStatus;
use serde_json::{json, Value};

static FLAKY: AtomicU32 = AtomicU32::new(0);

#[durable_fn(id = "square", event = "otel/square")]
async fn square(_ctx: Ctx, event: Event) -> Result<i64> {
    let n = event.data["n"].as_i64().unwrap_or(0);
    Ok(step!("multiply", { n * n })?)
}

#[durable_fn(id = "import", event = "otel/import", retries = 2)]
async fn import(_ctx: Ctx, _event: Event) -> Result<i64> {
    let mut total = 0;
    for page in 0..3i64 {
        total += step!("fetch-products", {
            if page == 1 && FLAKY.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(durafn::Error::msg("the shop timed out"));
            }
            page * 10
        })?;
    }
    let squared: i64 = invoke!("square-it", square, json!({"n": 3}))?;
    Ok(total + squared)
}

#[durable_fn(id = "nap", event = "otel/nap")]
async fn nap(_ctx: Ctx, _event: Event) -> Result<()> {
    sleep!("long", Duration::from_secs(3600))?;
    Ok(())
}

fn attr(span: &Value, key: &str) -> Option<String> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .and_then(|a| a["value"]["stringValue"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_a_trace_with_a_span_per_step_attempt() {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let receiver = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    sink.lock().unwrap().push(v);
                }
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
    std::env::set_var("OTEL_SERVICE_NAME", "shop");

    let engine = durafn::Engine::builder()
        .memory()
        .backoff(durafn::Backoff::NONE)
        .register(import)
        .register(square)
        .register(nap)
        .build()
        .await
        .unwrap();
    let sent = engine
        .send(Event::new("otel/import", json!({})))
        .await
        .unwrap();
    let run = engine
        .wait_for_run(&sent.runs[0], Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(run.run.status, RunStatus::Completed, "{:?}", run.run.error);
    assert_eq!(run.run.output, Some(json!(39)));
    // A run cancelled while it sleeps ends its trace too.
    let napping = engine
        .send(Event::new("otel/nap", json!({})))
        .await
        .unwrap();
    let nap_id = napping.runs[0].clone();
    for _ in 0..200 {
        let r = engine.run(&nap_id).await.unwrap().unwrap();
        if r.run.status == RunStatus::Sleeping {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.cancel(&nap_id).await.unwrap();
    engine.close().await;

    let spans: Vec<Value> = received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
        .collect();
    let named =
        |name: &str| -> Vec<&Value> { spans.iter().filter(|s| s["name"] == name).collect() };
    let root = named("run import");
    assert_eq!(root.len(), 1, "{spans:#?}");
    let root = root[0];
    let trace = root["traceId"].as_str().unwrap();
    assert_eq!(
        attr(root, "durafn.run_id").as_deref(),
        Some(run.run.id.as_str())
    );
    assert_eq!(attr(root, "durafn.outcome").as_deref(), Some("completed"));
    for page in 0..3 {
        let name = format!("fetch-products[{page}]");
        let attempts = named(&name);
        let done: Vec<_> = attempts
            .iter()
            .filter(|s| attr(s, "durafn.outcome").as_deref() == Some("completed"))
            .collect();
        assert_eq!(done.len(), 1, "{name}: {attempts:#?}");
        assert_eq!(done[0]["traceId"], trace);
        assert_eq!(
            done[0]["parentSpanId"], root["spanId"],
            "{name} under its run"
        );
        assert_eq!(attr(done[0], "durafn.function").as_deref(), Some("import"));
        assert_eq!(attr(done[0], "durafn.step").as_deref(), Some(name.as_str()));
    }
    // The page that failed once: a failed attempt, then the one that worked.
    let page1 = named("fetch-products[1]");
    let failed: Vec<_> = page1
        .iter()
        .filter(|s| attr(s, "durafn.outcome").as_deref() == Some("retrying"))
        .collect();
    assert_eq!(failed.len(), 1, "{page1:#?}");
    assert_eq!(attr(failed[0], "durafn.attempt").as_deref(), Some("0"));
    assert!(attr(failed[0], "durafn.error")
        .unwrap()
        .contains("the shop timed out"));
    assert_eq!(failed[0]["status"]["code"], 2, "an error status");
    let retried = page1
        .iter()
        .find(|s| attr(s, "durafn.outcome").as_deref() == Some("completed"))
        .unwrap();
    assert_eq!(attr(retried, "durafn.attempt").as_deref(), Some("1"));
    // The invoked run joins the trace, under its parent's span.
    let child = named("run square");
    assert_eq!(child.len(), 1, "{spans:#?}");
    assert_eq!(child[0]["traceId"], trace);
    assert_eq!(child[0]["parentSpanId"], root["spanId"]);
    let cancelled = named("run nap");
    assert_eq!(cancelled.len(), 1, "{spans:#?}");
    assert_eq!(
        attr(cancelled[0], "durafn.outcome").as_deref(),
        Some("cancelled")
    );
    assert_eq!(
        attr(cancelled[0], "durafn.run_id").as_deref(),
        Some(nap_id.as_str())
    );
    let multiply = named("multiply");
    assert_eq!(multiply[0]["traceId"], trace);
    assert_eq!(multiply[0]["parentSpanId"], child[0]["spanId"]);
}
