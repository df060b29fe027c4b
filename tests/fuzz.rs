//! Property tests of the parsers a stranger reaches, run for a bounded
//! number of cases (`PROPTEST_CASES` raises it for a longer session):
//! event ingest (as values and as HTTP bodies), the sync payload, the call
//! request an executor sends to an app, the opcodes an app answers, and CEL
//! expressions. Each target first replays the seed corpus kept in
//! `tests/fuzz-corpus/<target>.jsonl` (one input per line; add any input
//! that once broke something), then random and mutated inputs. The
//! property is always the same: a clear answer, never a panic, a hang or
//! a non-JSON error.

mod common;

use std::sync::OnceLock;

use durafn::prelude::*;
use durafn::serve::wire;
use durafn::Engine;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

#[durable_fn(id = "signup", event = "app/signup")]
async fn signup(_ctx: Ctx, _event: Event) -> Result<u8> {
    Ok(step!("one", { 1u8 })?)
}

#[durable_fn(id = "typed", event = "app/*", if = "event.data.n > 1")]
async fn typed(ctx: Ctx, event: Event<Typed>) -> Result<u64> {
    let n = event.data.n;
    step!("double", { n * 2 })?;
    sleep!("rest", std::time::Duration::from_secs(1))?;
    let _ = ctx;
    Ok(n)
}

#[derive(Deserialize)]
struct Typed {
    n: u64,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// One engine (memory store, no workers) and its HTTP API for all cases.
fn engine() -> &'static (Engine, String) {
    static E: OnceLock<(Engine, String)> = OnceLock::new();
    E.get_or_init(|| {
        runtime().block_on(async {
            let engine = Engine::builder()
                .register(signup)
                .register(typed)
                .memory()
                .without_workers()
                .build()
                .await
                .unwrap();
            let url = common::listen(engine.router()).await;
            (engine, url)
        })
    })
}

/// An app serving the same functions in dev mode, for call requests.
fn app() -> &'static String {
    static A: OnceLock<String> = OnceLock::new();
    A.get_or_init(|| {
        runtime().block_on(async {
            let url = common::listen(
                durafn::serve::Handler::new("fuzz")
                    .dev(true)
                    .register(signup)
                    .register(typed)
                    .router_at("/api"),
            )
            .await;
            format!("{url}/api")
        })
    })
}

fn corpus(target: &str) -> Vec<String> {
    let path = format!(
        "{}/tests/fuzz-corpus/{target}.jsonl",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Names the parsers look for, so random inputs reach past the first check.
const WORDS: &[&str] = &[
    "name",
    "data",
    "id",
    "ts",
    "v",
    "steps",
    "ctx",
    "stack",
    "current",
    "attempt",
    "run_id",
    "event",
    "events",
    "op",
    "opts",
    "displayName",
    "error",
    "message",
    "functions",
    "appName",
    "url",
    "triggers",
    "expression",
    "runtime",
    "step",
    "retries",
    "attempts",
    "concurrency",
    "limit",
    "key",
    "scope",
    "rateLimit",
    "period",
    "throttle",
    "burst",
    "debounce",
    "timeout",
    "batchEvents",
    "maxSize",
    "if",
    "priority",
    "run",
    "timeouts",
    "start",
    "finish",
    "singleton",
    "mode",
    "cancel",
    "idempotency",
    "app/signup",
    "app/x",
    "StepRun",
    "Sleep",
    "WaitForEvent",
    "InvokeFunction",
    "StepError",
    "StepFailed",
    "StepPlanned",
    "1s",
    "-1s",
    "99999999999d",
    "event.data.n",
    "",
    "\u{0}",
    "\n",
    "🦀",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(str::to_string),
        1 => "\\PC{0,12}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// `base` with some values replaced or added at random paths.
fn mutated(base: Value) -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::collection::vec(word(), 1..4), json()), 0..4).prop_map(
        move |edits| {
            let mut v = base.clone();
            for (path, value) in edits {
                set(&mut v, &path, value);
            }
            v
        },
    )
}

fn set(v: &mut Value, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = value;
        return;
    };
    match v {
        Value::Object(m) => {
            let child = m.entry(first.clone()).or_insert(Value::Null);
            set(child, rest, value);
        }
        Value::Array(a) if !a.is_empty() => {
            let i = first.len() % a.len();
            set(&mut a[i], rest, value);
        }
        other => *other = value,
    }
}

/// The answer to a request: its status and whether its body is JSON.
fn post(url: &str, body: Vec<u8>) -> (u16, Value) {
    runtime().block_on(async {
        let r = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the server answers (a panic drops the connection)");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
        (status, body)
    })
}

fn check_event_values(events: Vec<Value>) {
    let (engine, _) = engine();
    let n = events.len();
    match runtime().block_on(engine.send_values(events)) {
        Ok(sent) => assert_eq!(sent.ids.len(), n),
        Err(durafn::engine::SendError::Rejected { index, why }) => {
            assert!(index < n);
            assert!(!why.to_string().is_empty());
        }
        Err(e) => panic!("the store failed: {e}"),
    }
}

fn check_event_body(body: Vec<u8>) {
    let (_, url) = engine();
    let (status, answer) = post(&format!("{url}/e/k"), body);
    assert!(matches!(status, 200 | 400 | 413), "{status}: {answer}");
    if status != 200 {
        assert!(answer["error"].is_string(), "{answer}");
    }
}

fn check_sync(body: Value) {
    let (engine, _) = engine();
    if let Err(e) = runtime().block_on(engine.register_app(&body)) {
        assert!(e.to_string().starts_with("durafn: "), "{e}");
    }
}

fn check_call(body: Value) {
    let url = format!("{}?fnId=fuzz-typed&stepId=step", app());
    let (status, answer) = post(&url, serde_json::to_vec(&body).unwrap());
    assert!(
        matches!(status, 200 | 206 | 400 | 500),
        "{status}: {answer}"
    );
}

fn check_reply(status: u16, body: Value, no_retry: Option<bool>, attempt: u32) {
    let reply = wire::Reply {
        status,
        body: body.clone(),
        no_retry,
        retry_after: None,
    };
    let text = body.to_string();
    let steps = wire::transitions_of(status, &reply, &text, attempt, 3, 1_700_000_000_000);
    assert!(!steps.is_empty(), "{status}: {body}");
}

fn check_cel(source: &str, event: &Value) {
    if let Ok(x) = durafn::expr::Expr::cached(source) {
        let _ = x.eval(event);
        let _ = x.accepts(event);
        let _ = x.matches(event, event);
    }
}

fn valid_event() -> Value {
    json!({"name": "app/signup", "data": {"n": 3, "user": "ann"}, "id": "e1", "ts": 1})
}

fn valid_sync() -> Value {
    let mut body = common::register_body(
        "fuzz-app",
        "http://127.0.0.1:9/api",
        "fuzz-app-f",
        "app/x",
        2,
    );
    body["functions"][0]["concurrency"] = json!([{"limit": 2, "key": "event.data.n"}]);
    body["functions"][0]["batchEvents"] = json!({"maxSize": 5, "timeout": "5s"});
    body
}

fn valid_call() -> Value {
    json!({
        "event": valid_event(),
        "events": [valid_event()],
        "steps": {},
        "ctx": {"run_id": "r1", "attempt": 0, "stack": {"stack": [], "current": 0}},
        "version": 2,
        "use_api": false,
    })
}

#[test]
fn the_seed_corpus_gets_clear_answers() {
    for line in corpus("events") {
        check_event_body(line.clone().into_bytes());
        if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(&line) {
            check_event_values(a);
        }
    }
    for line in corpus("sync") {
        check_sync(serde_json::from_str(&line).unwrap());
    }
    for line in corpus("call") {
        check_call(serde_json::from_str(&line).unwrap());
    }
    for line in corpus("replies") {
        let v: Value = serde_json::from_str(&line).unwrap();
        check_reply(
            v["status"].as_u64().unwrap() as u16,
            v["body"].clone(),
            None,
            0,
        );
    }
    for line in corpus("cel") {
        let source: String = serde_json::from_str(&line).unwrap();
        check_cel(&source, &valid_event());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn events_as_values(events in prop::collection::vec(prop_oneof![json(), mutated(valid_event())], 1..4)) {
        check_event_values(events);
    }

    #[test]
    fn events_as_http_bodies(body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        mutated(valid_event()).prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]) {
        check_event_body(body);
    }

    #[test]
    fn sync_payloads(body in prop_oneof![json(), mutated(valid_sync())]) {
        check_sync(body);
    }

    #[test]
    fn call_requests(body in prop_oneof![json(), mutated(valid_call())]) {
        check_call(body);
    }

    #[test]
    fn app_replies(
        status in prop_oneof![Just(200u16), Just(206), Just(400), Just(500), any::<u16>()],
        body in json(),
        no_retry in any::<Option<bool>>(),
        attempt in 0u32..6,
    ) {
        check_reply(status, body, no_retry, attempt);
    }

    #[test]
    fn opcodes(ops in prop::collection::vec(mutated(json!({
        "op": "StepRun", "id": "abc", "name": "s", "displayName": "s", "data": 1,
        "opts": {"duration": "1s", "event": "app/x", "timeout": "1m", "if": "event.data.n == async.data.n", "function_id": "f", "payload": {}}
    })), 0..4), status in prop_oneof![Just(206u16), Just(200)]) {
        check_reply(status, Value::Array(ops), None, 0);
    }

    #[test]
    fn cel_expressions(source in prop_oneof![
        "\\PC{0,40}",
        prop::collection::vec(prop::sample::select(vec![
            "event", "async", ".data", ".n", " == ", " && ", " || ", "!", "(", ")", "[", "]", "1", "'a'",
            " ? ", " : ", "size(", "has(", "int(", "\"", "0.5", "-", "*", "/", "%", "in", "{", "}", ",",
        ]), 0..16).prop_map(|parts| parts.concat()),
    ], event in prop_oneof![json(), mutated(valid_event())]) {
        check_cel(&source, &event);
    }
}
