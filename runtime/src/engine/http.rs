//! The engine's HTTP API. Every error is JSON: `{"error": "...", "status": N}`.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{Engine, EventRejected, RegisterError, SendError};
use crate::store::{RunFilter, RunStatus};

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"error": message.to_string(), "status": status.as_u16()})),
    )
        .into_response()
}

pub fn router(engine: Engine) -> Router {
    // A request may carry several events, each up to the per-event limit.
    let body_limit = engine.inner.max_event_bytes.saturating_mul(8).max(1 << 20);
    Router::new()
        .route("/e/{key}", post(send_events))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run).delete(cancel_run))
        .route("/v1/runs/{id}/cancel", post(cancel_run))
        .route("/fn/register", post(register))
        .route("/v1/functions", get(functions))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(engine)
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
    limit: Option<usize>,
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
    let filter = RunFilter {
        function: q.function,
        status,
        limit: q.limit,
    };
    match engine.runs(filter).await {
        Ok(runs) => Json(json!({"data": runs})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn get_run(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.run(&id).await {
        Ok(Some(run)) => Json(json!({"data": run})).into_response(),
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
