//! Who may use the engine's HTTP API, and what it answers to bad requests:
//! the dev server's access (this machine only, no cross-site browser
//! requests), the production server's keys, registration rules and the
//! limits that bound what one request can ask.

mod common;

use durafn::engine::{Access, Keys};
use durafn::prelude::*;
use durafn::Engine;
use serde_json::{json, Value};

#[durable_fn(id = "greet", event = "app/signup")]
async fn greet(_ctx: Ctx, _event: Event) -> Result<u8> {
    Ok(step!("hello", { 1u8 })?)
}

#[durable_fn(id = "audit", event = "app/signup")]
async fn audit(_ctx: Ctx, _event: Event) -> Result<u8> {
    Ok(step!("log", { 2u8 })?)
}

const SIGNING_KEY: &str =
    "signkey-prod-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const OLD_KEY: &str = "signkey-prod-ffeeddccbbaa99887766554433221100";

async fn engine() -> Engine {
    Engine::builder()
        .register(greet)
        .register(audit)
        .memory()
        .build()
        .await
        .unwrap()
}

/// An answer's status and JSON body (panics on a body that is not JSON).
async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: the body is not JSON ({e}): {text:?}"));
    (status, body)
}

fn event() -> Value {
    json!({"name": "app/signup", "data": {"user": "ann"}})
}

#[tokio::test]
async fn the_dev_access_answers_this_machine_and_refuses_other_sites() {
    let engine = engine().await;
    let url = common::listen(engine.router()).await;
    let port = url.rsplit(':').next().unwrap().to_string();
    let http = reqwest::Client::new();
    let (status, _) = answer(http.post(format!("{url}/e/dev")).json(&event())).await;
    assert_eq!(status, 200, "127.0.0.1 is this machine");
    for host in [
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "10.0.0.7".into(),
    ] {
        let (status, body) = answer(http.get(format!("{url}/v1/runs")).header("host", &host)).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    // A name that resolves here could be a rebound attacker's domain.
    for host in [
        "evil.example",
        "evil.example:8288",
        "127.0.0.1.nip.io:8288",
        "localhost:x",
    ] {
        let (status, body) = answer(
            http.post(format!("{url}/e/dev"))
                .header("host", host)
                .json(&event()),
        )
        .await;
        assert_eq!(status, 403, "{host}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("DNS rebinding"),
            "{body}"
        );
    }
    // A page of another site cannot send, read or cancel.
    for origin in ["https://evil.example", "null", "http://localhost:1"] {
        let (status, body) = answer(
            http.post(format!("{url}/e/dev"))
                .header("origin", origin)
                .json(&event()),
        )
        .await;
        assert_eq!(status, 403, "{origin}: {body}");
        let (status, _) = answer(http.get(format!("{url}/v1/runs")).header("origin", origin)).await;
        assert_eq!(status, 403, "{origin}");
    }
    let (status, _) = answer(
        http.post(format!("{url}/v1/runs/x/cancel"))
            .header("sec-fetch-site", "cross-site"),
    )
    .await;
    assert_eq!(status, 403, "a cross-site fetch without Origin");
    // The server's own pages may.
    let (status, _) = answer(
        http.get(format!("{url}/v1/runs"))
            .header("origin", format!("http://127.0.0.1:{port}")),
    )
    .await;
    assert_eq!(status, 200);
    let runs = engine.runs(Default::default()).await.unwrap();
    assert_eq!(runs.len(), 2, "only the first event started runs");
}

#[tokio::test]
async fn the_production_access_wants_a_key_on_every_request() {
    let engine = engine().await;
    let keys = Keys {
        event_keys: vec!["ek-1".into(), "ek-2".into()],
        signing_keys: vec![SIGNING_KEY.into(), OLD_KEY.into()],
        api_token: "tok".into(),
    };
    let url = common::listen(engine.router_with(Access::Keys(keys))).await;
    let http = reqwest::Client::new();
    let (status, _) = answer(
        http.get(format!("{url}/health"))
            .header("host", "durafn.internal"),
    )
    .await;
    assert_eq!(status, 200, "health is open, and any Host is fine");
    let (status, body) = answer(http.post(format!("{url}/e/wrong")).json(&event())).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("event key"));
    let (status, _) = answer(http.post(format!("{url}/e/ek-2")).json(&event())).await;
    assert_eq!(status, 200);
    let (status, body) = answer(http.get(format!("{url}/v1/runs"))).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("DURAFN_API_TOKEN"));
    let (status, _) = answer(http.get(format!("{url}/v1/runs")).bearer_auth("tak")).await;
    assert_eq!(status, 401);
    let (status, body) = answer(http.get(format!("{url}/v1/runs")).bearer_auth("tok")).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let run = body["data"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = answer(
        http.post(format!("{url}/v1/runs/x/cancel"))
            .bearer_auth("ek-1"),
    )
    .await;
    assert_eq!(status, 401, "an event key is not the API token");
    // Syncs carry the hashed signing key, as the official SDKs send it.
    let sync = common::register_body("shop", "http://127.0.0.1:9/api", "shop-f", "a/b", 0);
    let (status, body) = answer(http.post(format!("{url}/fn/register")).json(&sync)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("signing key"));
    let (status, _) = answer(
        http.post(format!("{url}/fn/register"))
            .bearer_auth(SIGNING_KEY)
            .json(&sync),
    )
    .await;
    assert_eq!(status, 401, "the key itself is not its hash");
    for key in [SIGNING_KEY, OLD_KEY] {
        let (status, body) = answer(
            http.post(format!("{url}/fn/register"))
                .bearer_auth(durafn::serve::wire::hashed_signing_key(key))
                .json(&sync),
        )
        .await;
        assert_eq!(status, 200, "{key}: {body}");
    }
    assert_eq!(engine.remote_functions().len(), 1);
    // An app reads a run's batch and steps with the hashed signing key too,
    // not with the API token.
    let batch = format!("{url}/v0/runs/{run}/batch");
    let (status, body) = answer(http.get(&batch).bearer_auth("tok")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("signing key"));
    let hashed = durafn::serve::wire::hashed_signing_key(SIGNING_KEY);
    let (status, body) = answer(http.get(&batch).bearer_auth(&hashed)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = answer(
        http.get(format!("{url}/v0/runs/{run}/actions"))
            .bearer_auth(&hashed),
    )
    .await;
    assert_eq!((status, body.is_object()), (200, true), "{body}");
}

#[tokio::test]
async fn framework_errors_are_json_too() {
    let engine = engine().await;
    let url = common::listen(engine.router()).await;
    let http = reqwest::Client::new();
    let (status, body) = answer(http.get(format!("{url}/v1/runs?limit=abc"))).await;
    assert_eq!(
        (status, body["status"].as_u64()),
        (400, Some(400)),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    let (status, body) = answer(http.put(format!("{url}/v1/runs"))).await;
    assert_eq!(status, 405, "{body}");
    let (status, body) = answer(http.post(format!("{url}/e/k")).body(vec![b' '; 5 << 20])).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) =
        answer(http.get(format!("{url}/v1/runs?function={}", "f".repeat(9000)))).await;
    assert_eq!(status, 414, "{body}");
    let (status, body) = answer(http.get(format!("{url}/nowhere"))).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn run_lists_are_bounded_and_paged_by_cursor() {
    let engine = engine().await;
    let url = common::listen(engine.router()).await;
    let http = reqwest::Client::new();
    let many: Vec<Value> = (0..25).map(|_| event()).collect();
    let (status, _) = answer(http.post(format!("{url}/e/k")).json(&many)).await;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut req = http.get(format!("{url}/v1/runs?limit=7"));
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let (status, body) = answer(req).await;
        assert_eq!(status, 200, "{body}");
        let page = body["data"].as_array().unwrap();
        assert!(page.len() <= 7);
        seen.extend(page.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        match body["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (50, 50), "every run once");
    let more: Vec<Value> = (0..500).map(|_| event()).collect();
    let (status, _) = answer(http.post(format!("{url}/e/k")).json(&more)).await;
    assert_eq!(status, 200);
    let (status, body) =
        answer(http.get(format!("{url}/v1/runs?limit=18446744073709551615"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"].as_array().unwrap().len(),
        1000,
        "1,050 runs: a page is bounded, not refused"
    );
    assert!(body["next"].is_string());
    let (status, body) = answer(http.get(format!("{url}/v1/runs?cursor=nonsense"))).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn an_event_nested_too_deep_or_starting_too_many_runs_is_refused_whole() {
    let engine = Engine::builder()
        .register(greet)
        .register(audit)
        .max_runs_per_event(1)
        .memory()
        .build()
        .await
        .unwrap();
    let url = common::listen(engine.router()).await;
    let http = reqwest::Client::new();
    let mut deep = json!(1);
    for _ in 0..70 {
        deep = json!([deep]);
    }
    let (status, body) = answer(
        http.post(format!("{url}/e/k"))
            .json(&json!({"name": "x/deep", "data": {"v": deep}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("deeper than 64"),
        "{body}"
    );
    let (status, body) = answer(
        http.post(format!("{url}/e/k"))
            .json(&json!([{"name": "x/fine"}, event()])),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("would start 2 runs, over the limit of 1"),
        "{body}"
    );
    assert!(
        engine.runs(Default::default()).await.unwrap().is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn an_app_cannot_take_over_another_apps_functions_or_reach_other_schemes() {
    let engine = Engine::builder()
        .register(greet)
        .allow_app_hosts(["127.0.0.1:9", "apps.internal"])
        .memory()
        .build()
        .await
        .unwrap();
    let url = common::listen(engine.router()).await;
    let http = reqwest::Client::new();
    let register = |body: Value| http.post(format!("{url}/fn/register")).json(&body);
    let mine = common::register_body("shop", "http://127.0.0.1:9/api", "shop-sync", "a/b", 0);
    assert_eq!(answer(register(mine.clone())).await.0, 200);
    assert_eq!(answer(register(mine)).await.0, 200, "the same app re-syncs");
    let theirs = common::register_body("other", "http://apps.internal/api", "shop-sync", "a/b", 0);
    let (status, body) = answer(register(theirs)).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("belongs to the app `shop`"),
        "{body}"
    );
    let local = common::register_body("other", "http://apps.internal/api", "greet", "a/b", 0);
    let (status, body) = answer(register(local)).await;
    assert_eq!(status, 409, "{body}");
    for (app_url, expect) in [
        ("file:///etc/passwd", "`http` or `https`"),
        ("gopher://127.0.0.1:9/api", "`http` or `https`"),
        ("http://169.254.169.254/api", "not on the server's list"),
    ] {
        let body = common::register_body("x", app_url, "x-f", "a/b", 0);
        let (status, answer_body) = answer(register(body)).await;
        assert_eq!(status, 400, "{app_url}: {answer_body}");
        assert!(
            answer_body["error"].as_str().unwrap().contains(expect),
            "{app_url}: {answer_body}"
        );
    }
    let err = engine.sync_app("ftp://127.0.0.1:9/api").await.unwrap_err();
    assert!(err.to_string().contains("`http` or `https`"), "{err}");
    assert_eq!(
        engine.remote_functions()[0].app,
        "shop",
        "nothing was taken over"
    );
}
