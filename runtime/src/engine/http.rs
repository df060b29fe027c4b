//! The engine's HTTP API. Every error is JSON: `{"error": "...", "status": N}`,
//! the framework's own (a bad query, a wrong method, a body over the
//! limit) included.
//!
//! Who may call it is an [`Access`]: the dev server's, open to the
//! developer's machine only, or the production server's, where every
//! request carries a key.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{Engine, EventRejected, RegisterError, SendError};
use crate::serve::wire::{hashed_signing_key, same_secret};
use crate::store::{RunFilter, RunStatus};

/// Who may use the HTTP API.
#[derive(Debug, Clone)]
pub enum Access {
    /// `durafn dev`: no keys, for the developer's machine only. A request
    /// must name the server by an IP address or `localhost` in its `Host`
    /// header (so a web page cannot reach it through a DNS name rebound to
    /// 127.0.0.1), and a browser request from a page of another origin is
    /// refused with 403 (so a page the developer visits cannot send events,
    /// cancel runs or read them).
    Local,
    /// `durafn start`: every request but `GET /health` carries a key.
    Keys(Keys),
}

/// The keys of [`Access::Keys`].
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// The keys accepted in `POST /e/{key}`.
    pub event_keys: Vec<String>,
    /// The signing key, and a fallback while keys rotate: `POST
    /// /fn/register` must carry `Authorization: Bearer` with the hash of
    /// one of them, as the official SDKs send it.
    pub signing_keys: Vec<String>,
    /// The bearer token of the run API (`/v1/...`).
    pub api_token: String,
}

/// The longest request target accepted (longer: 414).
const MAX_URI_BYTES: usize = 8 * 1024;

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"error": message.to_string(), "status": status.as_u16()})),
    )
        .into_response()
}

/// An operation's JSON body, or the message of a 400 that shows what it
/// takes (`usage`).
fn op_body<T: serde::de::DeserializeOwned>(body: &[u8], usage: &str) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("{usage}: {e}"))
}

pub fn router(engine: Engine, access: Access) -> Router {
    router_with_pages(engine, access, Router::new())
}

/// The API, with `pages` (a dashboard) served beside it under the same
/// access rules.
pub fn router_with_pages(engine: Engine, access: Access, pages: Router<Engine>) -> Router {
    // A request may carry several events, each up to the per-event limit.
    let body_limit = engine.inner.max_event_bytes.saturating_mul(8).max(1 << 20);
    let access = Arc::new(access);
    pages
        .route("/e/{key}", post(send_events))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run).delete(cancel_run))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/v1/runs/{id}/export", get(export_run))
        .route("/v1/runs/{id}/rerun", post(rerun_run))
        .route("/v1/runs/{id}/replay", post(replay_run))
        .route("/v1/bulk", post(start_bulk))
        .route("/v1/bulk/{id}", get(get_job))
        .route("/fn/register", post(register))
        .route("/v1/functions", get(functions))
        .route("/v0/gql", post(graphql))
        .route("/v0/runs/{id}/batch", get(run_batch))
        .route("/v0/runs/{id}/actions", get(run_actions))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(access, guard))
        .layer(middleware::from_fn(json_errors))
        .with_state(engine)
}

/// Refuse what the access does not allow, before any handler runs.
async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    // Measured in place: this runs on every request, events included.
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return error(
            StatusCode::URI_TOO_LONG,
            format!("the request target is over {MAX_URI_BYTES} bytes"),
        );
    }
    match admit(&access, req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err((status, why)) => error(status, why),
    }
}

fn admit(access: &Access, path: &str, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    match access {
        Access::Local => {
            // Browsers always send `Host`; a request without one (HTTP/1.0,
            // an in-process call) cannot come from a rebound page.
            let host = text(header::HOST).unwrap_or("localhost");
            if !local_host(host) {
                return Err((StatusCode::FORBIDDEN,
                    format!("the dev server answers requests addressed to an IP address or `localhost`, not to `{}`: a name that resolves to this machine could be a DNS rebinding attack; use `durafn start` to serve other hosts", host.escape_debug()),
                ));
            }
            let cross_site = text(header::HeaderName::from_static("sec-fetch-site"))
                .is_some_and(|s| s == "cross-site");
            match text(header::ORIGIN) {
                Some(origin) if !same_origin(origin, host) => Err((StatusCode::FORBIDDEN,
                    format!("the dev server refuses browser requests from another origin (`{}`): a web page cannot send events, cancel runs or read them", origin.escape_debug()),
                )),
                _ if cross_site => Err((StatusCode::FORBIDDEN,
                    "the dev server refuses cross-site browser requests".into(),
                )),
                _ => Ok(()),
            }
        }
        Access::Keys(keys) => {
            if path == "/health" {
                return Ok(());
            }
            let bearer = text(header::AUTHORIZATION)
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if let Some(key) = path.strip_prefix("/e/") {
                return match keys.event_keys.iter().any(|k| same_secret(k, key)) {
                    true => Ok(()),
                    false => Err((StatusCode::UNAUTHORIZED,
                        "unknown event key: send events to /e/<key> with a key the server was started with".into(),
                    )),
                };
            }
            // What apps call: a sync, and the batch and steps of a call
            // too large to carry them.
            let sync = path == "/fn/register";
            if sync || path.starts_with("/v0/runs/") {
                let signed = bearer.is_some_and(|b| {
                    keys.signing_keys
                        .iter()
                        .any(|k| same_secret(&hashed_signing_key(k), b))
                });
                let what = if sync {
                    "a sync"
                } else {
                    "an app's request for a run's batch or steps"
                };
                return match signed {
                    true => Ok(()),
                    false => Err((StatusCode::UNAUTHORIZED,
                        format!("{what} must carry `Authorization: Bearer` with the hashed signing key, as the official SDKs send it: give the app the server's signing key (INNGEST_SIGNING_KEY)"),
                    )),
                };
            }
            match bearer.is_some_and(|b| same_secret(&keys.api_token, b)) {
                true => Ok(()),
                false => Err((StatusCode::UNAUTHORIZED,
                    "the run API needs `Authorization: Bearer <token>` with the server's API token (DURAFN_API_TOKEN)".into(),
                )),
            }
        }
    }
}

/// `127.0.0.1:8288`, `[::1]:8288`, `localhost`, any IP address: names that
/// no DNS answer can point elsewhere.
fn local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok()
                    && (port.is_empty() || port_ok(port.strip_prefix(':')));
            }
            None => return false,
        },
        None => match host.split_once(':') {
            Some((name, port)) if port_ok(Some(port)) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn port_ok(port: Option<&str>) -> bool {
    port.is_some_and(|p| p.parse::<u16>().is_ok())
}

/// Whether a browser's `Origin` is the server's own (the page was served
/// from the same scheme-less authority the request is addressed to).
fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// The framework's own error answers (a query that does not parse, a
/// body over the limit) as JSON, with their text as the message.
async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    // A page's own error page is its answer; the rest is worded as JSON.
    let is_json = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
    });
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let text = match axum::body::to_bytes(res.into_body(), 64 * 1024).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string(),
    };
    error(status, text)
}

async fn send_events(
    State(engine): State<Engine>,
    Path(_key): Path<String>,
    body: Bytes,
) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {e}"),
            )
        }
    };
    let events = match parsed {
        Value::Array(a) if a.is_empty() => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body is an empty array: send at least one event",
            )
        }
        Value::Array(a) => a,
        v @ Value::Object(_) => vec![v],
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body is an event object or an array of events",
            )
        }
    };
    match engine.send_values(events).await {
        Ok(sent) => Json(json!({"ids": sent.ids, "status": 200})).into_response(),
        Err(
            e @ SendError::Rejected {
                why: EventRejected::TooLarge { .. },
                ..
            },
        ) => error(StatusCode::PAYLOAD_TOO_LARGE, e),
        Err(e @ SendError::Rejected { .. }) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ SendError::Store(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    function: Option<String>,
    status: Option<String>,
    /// Only the runs this event started.
    event: Option<String>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

/// The most runs one page of `GET /v1/runs` holds.
pub const MAX_PAGE: usize = 1000;

/// A page cursor: the last run's `<created_ms>.<id>`.
fn cursor_of(r: &crate::store::RunRecord) -> String {
    format!("{}.{}", r.created_ms, r.id)
}

fn parse_cursor(c: &str) -> Option<(i64, String)> {
    let (ms, id) = c.split_once('.')?;
    Some((ms.parse().ok()?, id.to_string()))
}

async fn list_runs(State(engine): State<Engine>, Query(q): Query<ListQuery>) -> Response {
    let status = match q.status.as_deref().map(|s| (s, RunStatus::parse(s))) {
        None => None,
        Some((_, Some(s))) => Some(s),
        Some((s, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown status `{s}`; one of queued, running, sleeping, completed, failed, cancelled"),
            )
        }
    };
    let after = match q.cursor.as_deref().map(|c| (c, parse_cursor(c))) {
        None => None,
        Some((_, Some(a))) => Some(a),
        Some((c, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "`cursor` is the `next` of a previous page, not `{}`",
                    c.escape_debug()
                ),
            )
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let filter = RunFilter {
        function: q.function,
        status,
        event: q.event,
        limit: Some(limit),
        after,
    };
    match engine.runs(filter).await {
        Ok(runs) => {
            // A full page may have a next one.
            let next = (runs.len() == limit)
                .then(|| runs.last().map(cursor_of))
                .flatten();
            Json(json!({"data": runs, "next": next})).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Inngest's dev-server GraphQL API, the part that reads runs (see
/// `gql`). A body that is not a GraphQL request gets a JSON 400; a query
/// that fails gets GraphQL's `errors`.
async fn graphql(State(engine): State<Engine>, body: axum::body::Bytes) -> Response {
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not a GraphQL request (`{{\"query\": .., \"variables\": ..}}`): {e}"),
            )
        }
    };
    Json(super::gql::schema().execute(request.data(engine)).await).into_response()
}

async fn get_run(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.run(&id).await {
        Ok(Some(run)) => Json(json!({"data": run})).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET /v0/runs/{id}/batch`: the events of a run, a batch's or its one
/// trigger, for an app whose call carried `use_api` (Inngest's API).
async fn run_batch(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.store().run(&id).await {
        Ok(Some(d)) if d.events.is_empty() => Json(vec![d.event]).into_response(),
        Ok(Some(d)) => Json(d.events).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET /v0/runs/{id}/actions`: a run's memoized steps, as a call request
/// carries them, for an app whose call carried `use_api`.
async fn run_actions(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.store().journal(&id).await {
        Ok(Some(journal)) => Json(crate::serve::wire::memo_map(&journal)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn export_run(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match crate::deploy::export(&*engine.store(), &id).await {
        Ok(Some(doc)) => Json(doc).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn cancel_run(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.cancel(&id).await {
        Ok(Some(was)) if was.is_final() && was != RunStatus::Cancelled => error(
            StatusCode::CONFLICT,
            format!("run `{id}` already ended ({})", was.as_str()),
        ),
        Ok(Some(_)) => Json(json!({"data": {"id": id, "status": "cancelled"}})).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn op_error(e: super::OpError) -> Response {
    match e {
        super::OpError::NoRun(_) => error(StatusCode::NOT_FOUND, e),
        super::OpError::Bad(_) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        super::OpError::Store(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn made(from: &str, id: String) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({"data": {"id": id, "from": from}})),
    )
        .into_response()
}

/// `POST /v1/runs/{id}/rerun`: a new run from the same event.
async fn rerun_run(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.rerun(&id).await {
        Ok(new) => made(&id, new),
        Err(e) => op_error(e),
    }
}

/// `POST /v1/runs/{id}/replay` with `{"from": step}`, `{"edit": {"step":
/// step, "output": value}}`, or both.
async fn replay_run(State(engine): State<Engine>, Path(id): Path<String>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Edit {
        step: String,
        output: Value,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        from: Option<String>,
        edit: Option<Edit>,
    }
    let body: Body = match op_body(&body, "a replay takes `{\"from\": step}` and/or `{\"edit\": {\"step\": step, \"output\": value}}`") {
        Ok(b) => b,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let replay = super::Replay {
        from: body.from,
        edit: body.edit.map(|e| (e.step, e.output)),
    };
    match engine.replay(&id, replay).await {
        Ok(new) => made(&id, new),
        Err(e) => op_error(e),
    }
}

/// `POST /v1/bulk` with `{"op": "cancel" | "rerun", "function", "status",
/// "since_ms", "until_ms"}`: a job, whose progress `GET /v1/bulk/{id}` tells.
async fn start_bulk(State(engine): State<Engine>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        op: super::BulkOp,
        function: Option<String>,
        status: Option<RunStatus>,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    }
    let body: Body = match op_body(&body, "a bulk operation takes `{\"op\": \"cancel\" | \"rerun\", \"function\", \"status\", \"since_ms\", \"until_ms\"}`") {
        Ok(b) => b,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let sel = super::Selection {
        function: body.function,
        status: body.status,
        since_ms: body.since_ms,
        until_ms: body.until_ms,
    };
    if sel == super::Selection::default() {
        return error(
            StatusCode::BAD_REQUEST,
            "a bulk operation needs a selection (`function`, `status`, `since_ms` or `until_ms`): it would touch every run",
        );
    }
    let job = engine.bulk(body.op, sel);
    (StatusCode::ACCEPTED, Json(json!({"data": job}))).into_response()
}

async fn get_job(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.job(&id) {
        Some(job) => Json(json!({"data": job})).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no bulk operation `{id}` in this process"),
        ),
    }
}

async fn register(State(engine): State<Engine>, body: Bytes) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the register body is not valid JSON: {e}"),
            )
        }
    };
    match engine.register_app(&parsed).await {
        Ok((app, n)) => {
            Json(json!({"ok": true, "modified": true, "app": app, "functions": n})).into_response()
        }
        Err(e @ RegisterError::Bad(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ RegisterError::Taken(_)) => error(StatusCode::CONFLICT, e),
        Err(e @ RegisterError::Store(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn functions(State(engine): State<Engine>) -> Response {
    let mut list: Vec<Value> = engine
        .functions()
        .iter()
        .map(|f| json!({"id": f.id(), "name": f.name(), "triggers": f.triggers(), "steps": f.steps(), "where": "in process"}))
        .collect();
    for f in engine.remote_functions() {
        list.push(json!({"id": f.id, "name": f.name, "triggers": f.events, "app": f.app, "url": f.url, "where": "http"}));
    }
    Json(json!({"data": list})).into_response()
}
