//! The GraphQL API of Inngest's dev server, the part that reads runs, with
//! the queries the official Python SDK's integration suite sends, verbatim.

mod common;

use std::time::Duration;

use durafn::prelude::*;
use durafn::Engine;
use serde_json::{json, Value};

fn decline() -> Result<u64> {
    Err(NonRetriable::new("card declined").into())
}

#[durable_fn(id = "checkout", event = "shop/checkout")]
async fn checkout(_ctx: Ctx, event: Event) -> Result<Value> {
    let total: u64 = step!("price", { 42u64 })?;
    let declined: std::result::Result<u64, StepError> =
        step!("charge", retries = 0, { decline()? });
    Ok(json!({"total": total, "declined": declined.is_err(), "order": event.data["order"]}))
}

const GET_RUN: &str = r#"
        query GetRun($run_id: String!) {
            run(runID: $run_id) {
                output
                status
            }
            runTrigger(runID: $run_id) {
                payloads
            }
        }
        "#;

const GET_STEPS: &str = r#"
        query GetHistory($run_id: String!) {
            run(runID: $run_id) {
                trace {
                    childrenSpans {
                        name
                        outputID
                    }
                }
            }
        }
        "#;

const GET_OUTPUT: &str = r#"
        query GetHistory($output_id: String!) {
            runTraceSpanOutputByID(outputID: $output_id) {
                data
                error {
                    message
                    name
                    stack
                }
            }
        }
        "#;

const GET_RUNS_OF_EVENT: &str = r#"
        query GetRunFromEventID($event_id: ID!) {
            event(query: {eventId: $event_id}) {
                functionRuns {
                    id
                }
            }
        }
        "#;

async fn gql(url: &str, query: &str, variables: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{url}/v0/gql"))
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_suites_queries_read_a_run_its_steps_and_its_event() {
    let engine = Engine::builder()
        .memory()
        .register(checkout)
        .build()
        .await
        .unwrap();
    let url = common::listen(engine.router()).await;
    let sent = engine
        .send(Event::new("shop/checkout", json!({"order": 7})))
        .await
        .unwrap();
    let run_id = sent.runs[0].clone();
    engine
        .wait_for_run(&run_id, Duration::from_secs(10))
        .await
        .unwrap();

    let r = gql(&url, GET_RUN, json!({"run_id": run_id})).await;
    assert!(r.get("errors").is_none(), "no `errors` key on success: {r}");
    assert_eq!(r["data"]["run"]["status"], "COMPLETED");
    let output: Value =
        serde_json::from_str(r["data"]["run"]["output"].as_str().expect("JSON text")).unwrap();
    assert_eq!(output, json!({"total": 42, "declined": true, "order": 7}));
    let trigger: Value =
        serde_json::from_str(r["data"]["runTrigger"]["payloads"][0].as_str().unwrap()).unwrap();
    assert_eq!(trigger["name"], "shop/checkout");
    assert_eq!(trigger["data"]["order"], 7);

    let r = gql(&url, GET_STEPS, json!({"run_id": run_id})).await;
    let spans = r["data"]["run"]["trace"]["childrenSpans"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["price", "charge"]);
    let output_of = |i: usize| spans[i]["outputID"].as_str().unwrap().to_string();

    let r = gql(&url, GET_OUTPUT, json!({"output_id": output_of(0)})).await;
    let out = &r["data"]["runTraceSpanOutputByID"];
    assert_eq!(out["data"], "42", "the step's output as JSON text");
    assert_eq!(out["error"], Value::Null);
    let r = gql(&url, GET_OUTPUT, json!({"output_id": output_of(1)})).await;
    let out = &r["data"]["runTraceSpanOutputByID"];
    assert_eq!(out["data"], Value::Null);
    assert_eq!(out["error"]["name"], "NonRetriableError");
    assert_eq!(out["error"]["message"], "card declined");

    let r = gql(&url, GET_RUNS_OF_EVENT, json!({"event_id": sent.ids[0]})).await;
    assert_eq!(
        r["data"]["event"]["functionRuns"],
        json!([{"id": run_id}]),
        "{r}"
    );

    // An unknown run is an error the suite's helper retries on.
    let r = gql(&url, GET_RUN, json!({"run_id": "no-such-run"})).await;
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-run"),
        "{r}"
    );
    // A body that is not a GraphQL request is a JSON 400.
    let bad = reqwest::Client::new()
        .post(format!("{url}/v0/gql"))
        .body("query {")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("GraphQL"),
        "{body}"
    );
}
