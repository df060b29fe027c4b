//! The generated HTTP handler for a set of durable fns, speaking the
//! Inngest SDK protocol, so that an executor (`durafn dev`, or the Inngest
//! dev server) runs each step as a separate HTTP request.
//!
//! ```no_run
//! # use durafn_runtime as durafn;
//! # async fn demo(f: impl durafn::DurableFn) {
//! let app = durafn::serve::Handler::new("my-app").register(f).router_at("/api/durafn");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```
//!
//! - `GET`: introspection (schema `2024-05-24`; more when the request is signed).
//! - `PUT`: sync: registers the functions (IDs, triggers, retries and the
//!   step table) with the executor's `/fn/register`.
//! - `POST ?fnId=&stepId=`: a call: memoize `steps` in `ctx.stack` order,
//!   run at most one new step (or plan it, or run the targeted one), answer
//!   206 with opcodes, 200 with the result, 500 (retry) or 400 with
//!   `X-Inngest-No-Retry: true`, and `Retry-After` for `RetryAfter` errors.
//!
//! Outside dev mode every request must carry a valid `X-Inngest-Signature`
//! (the signing key, then the fallback key); a missing or bad one gets 401
//! and runs nothing. Dev mode: `INNGEST_DEV` set (not `0`/`false`), or
//! [`Handler::dev`].

mod signature;
mod translate;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::ctx::{Plan, SystemClock};
use crate::driver::{reenter, Invocation};
use crate::function::DurableFn;
use crate::transition::Transition;
use wire::CallRequest;

/// The default body limit of a call request.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

/// Serves durable fns over HTTP. See the module docs.
#[derive(Clone)]
pub struct Handler {
    inner: Arc<Config>,
}

struct Config {
    app_id: String,
    fns: HashMap<String, Arc<dyn DurableFn>>,
    order: Vec<String>,
    dev: bool,
    signing_key: Option<String>,
    signing_key_fallback: Option<String>,
    api_base: String,
    serve_url: Option<String>,
    max_body: usize,
    http: reqwest::Client,
    /// A failure handler's wire ID → the function whose failures it takes.
    failure_of: HashMap<String, String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Handler {
    /// A handler for app `app_id`, configured from the environment the
    /// official SDKs read: `INNGEST_DEV` (dev mode; a URL also names the
    /// executor), `INNGEST_BASE_URL` / `INNGEST_API_BASE_URL` (the
    /// executor), `INNGEST_SIGNING_KEY`, `INNGEST_SIGNING_KEY_FALLBACK`,
    /// `INNGEST_SERVE_ORIGIN` + `INNGEST_SERVE_PATH` (this app's public URL).
    pub fn new(app_id: impl Into<String>) -> Handler {
        let dev_var = env("INNGEST_DEV");
        let dev = dev_var
            .as_deref()
            .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"));
        let dev_url = dev_var.filter(|v| v.starts_with("http"));
        let api_base = env("INNGEST_API_BASE_URL")
            .or_else(|| env("INNGEST_BASE_URL"))
            .or(dev_url)
            .unwrap_or_else(|| {
                if dev {
                    "http://127.0.0.1:8288".into()
                } else {
                    "https://api.inngest.com".into()
                }
            });
        let serve_url = env("INNGEST_SERVE_ORIGIN").map(|o| {
            format!(
                "{}{}",
                o.trim_end_matches('/'),
                env("INNGEST_SERVE_PATH").unwrap_or_default()
            )
        });
        Handler {
            inner: Arc::new(Config {
                app_id: app_id.into(),
                fns: HashMap::new(),
                order: Vec::new(),
                dev,
                signing_key: env("INNGEST_SIGNING_KEY"),
                signing_key_fallback: env("INNGEST_SIGNING_KEY_FALLBACK"),
                api_base,
                serve_url,
                max_body: DEFAULT_MAX_BODY,
                http: reqwest::Client::new(),
                failure_of: HashMap::new(),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::get_mut(&mut self.inner).expect("configure the handler before serving it")
    }

    /// Serve a durable fn. Its ID on the wire is `<app_id>-<fn id>`.
    ///
    /// Its failure handler (`on_failure`), if any, is served beside it as
    /// `<app_id>-<fn id>-failure`, triggered by `inngest/function.failed`
    /// for this function, as the official SDKs serve theirs.
    pub fn register(mut self, f: impl DurableFn) -> Self {
        let c = self.config();
        let id = format!("{}-{}", c.app_id, f.id());
        if let Some(handler) = f.on_failure() {
            let failure = format!("{id}-failure");
            c.order.push(failure.clone());
            c.fns.insert(failure.clone(), handler);
            c.failure_of.insert(failure, id.clone());
        }
        c.order.push(id.clone());
        c.fns.insert(id, Arc::new(f));
        self
    }

    /// Dev mode: no signatures required.
    pub fn dev(mut self, on: bool) -> Self {
        self.config().dev = on;
        self
    }

    /// The signing key (`signkey-<env>-<hex>`), and optionally a fallback.
    pub fn signing_key(mut self, key: impl Into<String>, fallback: Option<String>) -> Self {
        let c = self.config();
        c.signing_key = Some(key.into());
        c.signing_key_fallback = fallback;
        self
    }

    /// The executor's base URL (where `PUT` registers the app).
    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.config().api_base = url.into().trim_end_matches('/').to_string();
        self
    }

    /// This app's public URL, sent when it registers (default: from the
    /// request's `Host` and path).
    pub fn serve_url(mut self, url: impl Into<String>) -> Self {
        self.config().serve_url = Some(url.into());
        self
    }

    /// The largest accepted call body (default 4 MiB).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config().max_body = bytes;
        self
    }

    /// An axum router that serves the handler at `path`.
    pub fn router_at(self, path: &str) -> Router {
        let max = self.inner.max_body;
        Router::new()
            .route(path, get(introspect).put(sync).post(call))
            .layer(axum::extract::DefaultBodyLimit::max(max))
            .with_state(self)
    }
}

fn now_s() -> i64 {
    crate::ctx::Clock::now_ms(&SystemClock) / 1000
}

fn sdk_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert("x-inngest-sdk", HeaderValue::from_static(wire::SDK));
    h.insert("x-inngest-req-version", HeaderValue::from_static("2"));
    h.insert("x-inngest-framework", HeaderValue::from_static("axum"));
    h.insert("x-inngest-sdk-handled", HeaderValue::from_static("true"));
    r
}

fn json_response(status: StatusCode, body: Value) -> Response {
    sdk_headers((status, axum::Json(body)).into_response())
}

fn no_retry(mut r: Response, no_retry: bool) -> Response {
    r.headers_mut().insert(
        "x-inngest-no-retry",
        HeaderValue::from_static(if no_retry { "true" } else { "false" }),
    );
    r
}

impl Handler {
    fn check_signature(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Box<Response>> {
        if self.inner.dev {
            return Ok(());
        }
        let keys: Vec<&str> = [&self.inner.signing_key, &self.inner.signing_key_fallback]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if keys.is_empty() {
            return Err(Box::new(json_response(
                StatusCode::UNAUTHORIZED,
                json!({"message": "Unauthorized", "error": "durafn: no signing key is configured, so no request can be verified; set INNGEST_SIGNING_KEY or use dev mode"}),
            )));
        }
        let header = headers
            .get("x-inngest-signature")
            .and_then(|v| v.to_str().ok());
        wire::verify(header, body, &keys, now_s()).map_err(|why| {
            tracing::warn!(why, "rejected an unsigned or badly signed request");
            Box::new(json_response(
                StatusCode::UNAUTHORIZED,
                json!({"message": "Unauthorized", "error": why}),
            ))
        })
    }

    fn functions_json(&self, url: &str) -> Vec<Value> {
        self.inner
            .order
            .iter()
            .map(|id| {
                let f = &self.inner.fns[id];
                let (name, triggers) = match self.inner.failure_of.get(id) {
                    Some(of) => (
                        format!("{} (failure)", self.inner.fns[of].name()),
                        vec![json!({
                            "event": "inngest/function.failed",
                            "expression": format!("event.data.function_id == '{of}'"),
                        })],
                    ),
                    None => (
                        f.name().to_string(),
                        f.triggers()
                            .iter()
                            .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
                            .collect(),
                    ),
                };
                let mut v = json!({
                    "id": id,
                    "name": name,
                    "triggers": triggers,
                    "steps": {"step": {
                        "id": "step",
                        "name": "step",
                        "runtime": {"type": "http", "url": format!("{url}?fnId={id}&stepId=step")},
                        "retries": {"attempts": f.config().retries},
                    }},
                    // durafn's explicit state machine, for executors that read it.
                    "stepTable": f.steps(),
                });
                if let Some(m) = v.as_object_mut() {
                    m.extend(wire::function_options(&f.config()));
                }
                v
            })
            .collect()
    }
}

async fn introspect(State(h): State<Handler>, headers: HeaderMap) -> Response {
    let c = &h.inner;
    let mut body = json!({
        "schema_version": wire::SCHEMA_VERSION,
        "mode": if c.dev { "dev" } else { "cloud" },
        "function_count": c.fns.len(),
        "has_event_key": false,
        "has_signing_key": c.signing_key.is_some(),
        "extra": {},
    });
    if !c.dev && h.check_signature(&headers, b"").is_ok() {
        let m = body.as_object_mut().expect("an object");
        m.insert("authentication_succeeded".into(), json!(true));
        m.insert("app_id".into(), json!(c.app_id));
        m.insert("framework".into(), json!("axum"));
        m.insert("sdk_language".into(), json!("rust"));
        m.insert("sdk_version".into(), json!(env!("CARGO_PKG_VERSION")));
        m.insert("api_origin".into(), json!(c.api_base));
    }
    json_response(StatusCode::OK, body)
}

async fn sync(
    State(h): State<Handler>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    if let Err(r) = h.check_signature(&headers, &body) {
        return *r;
    }
    let c = &h.inner;
    let url = c.serve_url.clone().unwrap_or_else(|| {
        let host = headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1");
        // Behind a TLS-terminating proxy, the proxy says the scheme.
        let scheme = match headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
        {
            Some("https") => "https",
            _ => "http",
        };
        format!("{scheme}://{host}{}", uri.path())
    });
    let register = json!({
        "url": url,
        "deployType": "ping",
        "framework": "axum",
        "appName": c.app_id,
        "sdk": wire::SDK,
        "v": "0.1",
        "functions": h.functions_json(&url),
    });
    let mut req = c
        .http
        .post(format!("{}/fn/register", c.api_base.trim_end_matches('/')))
        .header("x-inngest-sync-kind", "out_of_band")
        .header("x-inngest-sdk", wire::SDK)
        .json(&register);
    if let Some(key) = &c.signing_key {
        req = req.bearer_auth(wire::hashed_signing_key(key));
    }
    let result = match req.send().await {
        Ok(r) => {
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                Ok(body
                    .get("modified")
                    .and_then(Value::as_bool)
                    .unwrap_or(true))
            } else {
                Err(format!("the executor answered {status}: {body}"))
            }
        }
        Err(e) => Err(format!("cannot reach the executor at {}: {e}", c.api_base)),
    };
    let mut r = match result {
        Ok(modified) => json_response(
            StatusCode::OK,
            json!({"message": "Successfully registered", "modified": modified}),
        ),
        Err(e) => {
            tracing::error!("sync failed: {e}");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"message": format!("Failed to register; {e}"), "modified": false}),
            )
        }
    };
    r.headers_mut().insert(
        "x-inngest-sync-kind",
        HeaderValue::from_static("out_of_band"),
    );
    r
}

#[derive(serde::Deserialize)]
struct CallQuery {
    #[serde(rename = "fnId")]
    fn_id: Option<String>,
    #[serde(rename = "stepId")]
    step_id: Option<String>,
}

async fn call(
    State(h): State<Handler>,
    Query(q): Query<CallQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = h.check_signature(&headers, &body) {
        return *r;
    }
    let c = &h.inner;
    let bad = |status: StatusCode, msg: String| {
        no_retry(
            json_response(status, json!({"name": "Error", "message": msg})),
            true,
        )
    };
    let Some(fn_id) = q.fn_id else {
        return bad(
            StatusCode::BAD_REQUEST,
            "durafn: the call has no `fnId` query parameter".into(),
        );
    };
    let Some(f) = c
        .fns
        .get(&fn_id)
        .or_else(|| c.fns.get(&format!("{}-{fn_id}", c.app_id)))
        .cloned()
    else {
        return bad(
            StatusCode::NOT_FOUND,
            format!(
                "durafn: app `{}` has no function `{fn_id}`; it serves: {}",
                c.app_id,
                c.order.join(", ")
            ),
        );
    };
    let req: CallRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("durafn: the call body is not a valid call request: {e}"),
            )
        }
    };
    let req = match from_api(c, req).await {
        Ok(r) => r,
        Err(msg) => {
            // Retried: the executor's API may answer next time.
            let r = json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"name": "Error", "message": msg}),
            );
            return no_retry(r, false);
        }
    };
    let target = q.step_id.filter(|s| s != "step" && !s.is_empty());
    let journal = req.journal();
    let inv = Invocation {
        run_id: req.ctx.run_id.clone(),
        event: crate::driver::input_of(&*f, req.event, req.events),
        journal,
        attempt: req.ctx.attempt,
        step_attempts: Default::default(),
        clock: Arc::new(SystemClock),
        faults: None,
        plan: Plan {
            disable_immediate: req.ctx.disable_immediate_execution,
            target,
        },
        sender: Some(Arc::new(HttpSender {
            http: c.http.clone(),
            url: format!("{}/e/durafn", c.api_base.trim_end_matches('/')),
        })),
        // The executor bounds the journal (an engine's `max_journal_bytes`,
        // Inngest's 32 MiB); the handler bounds each output only.
        bounds: crate::journal::Bounds {
            journal: usize::MAX,
            ..Default::default()
        },
    };
    let res = reenter(&*f, inv).await;
    respond(res.transition, &c.app_id)
}

/// A call too large to carry its batch and memoized steps says `use_api`:
/// read them from the executor's API, as the official SDKs do.
async fn from_api(c: &Config, mut req: CallRequest) -> Result<CallRequest, String> {
    if !req.use_api && !req.ctx.use_api {
        return Ok(req);
    }
    let base = c.api_base.trim_end_matches('/');
    // The run ID comes from the call: one path segment, whatever it holds.
    let run = wire::path_segment(&req.ctx.run_id);
    let get = |what: &'static str| {
        let url = format!("{base}/v0/runs/{run}/{what}");
        let mut r = c.http.get(&url).timeout(Duration::from_secs(60));
        if let Some(key) = &c.signing_key {
            r = r.bearer_auth(wire::hashed_signing_key(key));
        }
        async move {
            let cannot = |e: &dyn std::fmt::Display| {
                format!("durafn: the call said `use_api`, and {url} could not be read: {e}")
            };
            let r = r.send().await.map_err(|e| cannot(&e))?;
            let status = r.status();
            if !status.is_success() {
                return Err(cannot(&format!("the executor answered {status}")));
            }
            r.json::<Value>().await.map_err(|e| cannot(&e))
        }
    };
    let (batch, steps) = tokio::join!(get("batch"), get("actions"));
    req.events = match batch? {
        Value::Array(events) => events,
        _ => return Err("durafn: the executor's answer for the run's batch is not a list".into()),
    };
    req.steps = match steps? {
        Value::Object(steps) => steps,
        _ => {
            return Err("durafn: the executor's answer for the run's steps is not an object".into())
        }
    };
    Ok(req)
}

fn with_retry_after(mut r: Response, after: Option<Duration>) -> Response {
    if let Some(d) = after {
        let secs = d.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

/// `send_event!` in a served function: the executor's event API.
struct HttpSender {
    http: reqwest::Client,
    url: String,
}

impl crate::ctx::EventSender for HttpSender {
    fn send(
        &self,
        events: Vec<Value>,
    ) -> crate::function::BoxFuture<'_, Result<Vec<String>, crate::Error>> {
        Box::pin(async move {
            let r = self.http.post(&self.url).json(&events).send().await?;
            let status = r.status();
            let body: Value = r.json().await?;
            if !status.is_success() {
                return Err(crate::Error::msg(format!(
                    "the executor refused the events ({status}): {body}"
                )));
            }
            Ok(body["ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect())
        })
    }
}

/// A transition as the protocol's response ([`wire::reply_for`]).
fn respond(t: Transition, app_id: &str) -> Response {
    let reply = wire::reply_for(t, app_id, crate::ctx::Clock::now_ms(&SystemClock));
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, reply.body);
    if let Some(n) = reply.no_retry {
        r = no_retry(r, n);
    }
    with_retry_after(r, reply.retry_after)
}
