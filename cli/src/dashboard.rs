//! The dashboard `durafn dev` serves at `/`: functions with their step
//! graphs, runs (live) with a step timeline, events with a form to send
//! one, and the operations a person reaches for when a run goes wrong
//! (cancel, rerun, replay from a step, replay with an edited step output,
//! bulk cancel and rerun).
//!
//! Server-rendered HTML (maud) with a few lines of plain JavaScript for
//! live updates; no external requests. It reads and acts through the
//! engine's public API, and is served beside the run API under the same
//! access rules (the dev server refuses browser requests from other
//! sites, so a page elsewhere cannot post these forms).

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use durafn::engine::{BulkOp, OpError, Replay, Selection};
use durafn::store::{RunFilter, RunRecord, RunStatus, StepRecord};
use durafn::Engine;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use serde_json::{json, Value};

/// The dashboard's routes, to serve beside the run API
/// ([`Engine::router_with_pages`]).
pub fn pages() -> Router<Engine> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/runs", get(runs_page))
        .route("/runs/rows", get(runs_rows))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/runs/{id}/rerun", post(rerun))
        .route("/runs/{id}/replay", post(replay))
        .route("/bulk", post(bulk))
        .route("/jobs/{id}", get(job_page))
        .route("/functions", get(functions_page))
        .route("/functions/{id}", get(function_page))
        .route("/events", get(events_page).post(send_event))
}

const STYLE: &str = r#"
:root { --fg: #1d2330; --muted: #5f6b7a; --line: #d9dee5; --bg: #f7f8fa; --card: #fff;
        --ok: #1f7a4d; --bad: #b42318; --wait: #8a5a00; --run: #1d5fb4; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.5rem; background: var(--fg); color: #fff; }
header a { color: #fff; text-decoration: none; padding: .2rem .4rem; border-radius: 4px; }
header a:focus, header a:hover, header a.here { background: #ffffff2e; }
header strong { font-size: 1.1rem; margin-right: 1rem; }
main { max-width: 1200px; margin: 1.2rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.35rem; margin: .2rem 0 1rem; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
table { width: 100%; border-collapse: collapse; background: var(--card); border: 1px solid var(--line); }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .85rem; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem; }
pre { background: var(--card); border: 1px solid var(--line); padding: .6rem; overflow: auto; max-height: 22rem; margin: .3rem 0; }
a { color: var(--run); }
a:focus, button:focus, select:focus, input:focus, textarea:focus, summary:focus { outline: 3px solid #7aa7ec; outline-offset: 1px; }
.status { display: inline-block; padding: 0 .45rem; border-radius: 10px; font-size: .8rem; font-weight: 600; border: 1px solid currentColor; }
.completed { color: var(--ok); } .failed, .cancelled { color: var(--bad); }
.sleeping, .waiting, .invoking, .retrying, .queued, .skipped { color: var(--wait); } .running { color: var(--run); }
.muted { color: var(--muted); }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; background: var(--card); border: 1px solid var(--line); padding: .7rem 1rem; }
.facts dt { color: var(--muted); } .facts dd { margin: 0; }
form.inline { display: inline; }
button { font: inherit; padding: .3rem .8rem; border: 1px solid var(--line); background: var(--card); border-radius: 5px; cursor: pointer; }
button.danger { color: var(--bad); border-color: var(--bad); }
.bar-cell { width: 28%; }
.bar { position: relative; height: .9rem; background: #eef1f5; border-radius: 3px; }
.bar span { position: absolute; top: 0; bottom: 0; min-width: 3px; border-radius: 3px; background: var(--run); }
.bar span.failed { background: var(--bad); } .bar span.completed { background: var(--ok); }
.bar span.sleeping, .bar span.waiting, .bar span.invoking, .bar span.retrying { background: var(--wait); }
.filters { display: flex; gap: .8rem; align-items: end; flex-wrap: wrap; margin-bottom: .8rem; }
.filters label { display: flex; flex-direction: column; font-size: .85rem; color: var(--muted); }
select, input, textarea { font: inherit; padding: .25rem .4rem; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
textarea { width: 100%; min-height: 6rem; font-family: ui-monospace, monospace; font-size: .85rem; }
.graph { list-style: none; padding-left: 0; margin: 0; }
.graph li { margin: .25rem 0; }
.graph .node { display: inline-block; padding: .2rem .6rem; background: var(--card); border: 1px solid var(--line); border-radius: 5px; }
.graph .loop { border: 1px dashed var(--muted); border-radius: 6px; padding: .3rem .6rem .4rem; margin: .3rem 0; }
.graph .loop > .label { font-size: .8rem; color: var(--muted); }
.kind { font-size: .75rem; color: var(--muted); margin-left: .35rem; }
.error { background: #fdecea; border: 1px solid var(--bad); color: var(--bad); padding: .6rem .9rem; border-radius: 5px; }
.actions { display: flex; gap: .5rem; margin: .8rem 0; flex-wrap: wrap; }
td.nowrap, td.nowrap * { white-space: nowrap; }
td.ops button { font-size: .8rem; padding: .15rem .5rem; white-space: nowrap; }
td.ops details { font-size: .8rem; margin-top: .2rem; }
.kept { font-size: .75rem; color: var(--muted); border: 1px dashed var(--muted); border-radius: 8px; padding: 0 .35rem; }
details > summary { cursor: pointer; color: var(--run); }
"#;

fn page(title: &str, here: &str, body: Markup) -> Markup {
    let nav = [
        ("/functions", "Functions"),
        ("/runs", "Runs"),
        ("/events", "Events"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · durafn dev" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "durafn dev" }
                    @for (href, label) in nav {
                        a href=(href) class=[(here == href).then_some("here")] { (label) }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn html_response(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

fn ok(m: Markup) -> Response {
    html_response(StatusCode::OK, m)
}

fn failure(status: StatusCode, title: &str, message: impl std::fmt::Display) -> Response {
    html_response(
        status,
        page(
            title,
            "",
            html! {
                h1 { (title) }
                p.error { (message.to_string()) }
                p { a href="/runs" { "Back to the runs" } }
            },
        ),
    )
}

fn op_failure(e: OpError) -> Response {
    match e {
        OpError::NoRun(_) => failure(StatusCode::NOT_FOUND, "No such run", e),
        OpError::Bad(_) => failure(StatusCode::UNPROCESSABLE_ENTITY, "Not done", e),
        OpError::Store(_) => failure(StatusCode::INTERNAL_SERVER_ERROR, "The store failed", e),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `1.2 s`, `340 ms`, `3 min`.
fn span(ms: i64) -> String {
    match ms {
        ..=0 => "0 ms".into(),
        1..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min", ms / 60_000),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

fn ago(ms: i64) -> String {
    format!("{} ago", span(now_ms() - ms))
}

fn status_badge(s: &str) -> Markup {
    html! { span class={"status " (s)} { (s) } }
}

fn short(v: &Value, n: usize) -> String {
    let s = v.to_string();
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// A string as a JavaScript literal inside a `<script>`: JSON, with `<`
/// escaped so that no `</script>` can end the element.
fn js_str(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_default()
        .replace('<', "\\u003c")
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

#[derive(Deserialize, Default, Clone)]
struct RunsQuery {
    #[serde(default)]
    function: Option<String>,
    #[serde(default)]
    status: Option<String>,
    /// `15m`, `1h`, `24h`, `7d`.
    #[serde(default)]
    since: Option<String>,
}

impl RunsQuery {
    fn clean(mut self) -> RunsQuery {
        for f in [&mut self.function, &mut self.status, &mut self.since] {
            if f.as_deref().is_some_and(|s| s.trim().is_empty()) {
                *f = None;
            }
        }
        self
    }

    fn since_ms(&self) -> Option<i64> {
        let d = durafn::serve::wire::parse_duration(self.since.as_deref()?)?;
        Some(now_ms() - d.as_millis() as i64)
    }

    fn query_string(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("function", &self.function),
            ("status", &self.status),
            ("since", &self.since),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", encode(v)));
            }
        }
        parts.join("&")
    }
}

/// Percent-encode a query value or path segment.
fn encode(s: &str) -> String {
    durafn::serve::wire::path_segment(s)
}

const STATUSES: [&str; 7] = [
    "queued",
    "running",
    "sleeping",
    "completed",
    "failed",
    "cancelled",
    "skipped",
];

async fn function_ids(engine: &Engine) -> Vec<String> {
    let mut ids: Vec<String> = engine
        .functions()
        .iter()
        .map(|f| f.id().to_string())
        .collect();
    ids.extend(engine.remote_functions().iter().map(|f| f.id.clone()));
    ids.sort();
    ids
}

async fn select_runs(engine: &Engine, q: &RunsQuery) -> Result<Vec<RunRecord>, String> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| format!("unknown status `{s}`"))?),
    };
    let runs = engine
        .runs(RunFilter {
            function: q.function.clone(),
            status,
            limit: Some(100),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let since = q.since_ms();
    Ok(runs
        .into_iter()
        .filter(|r| since.is_none_or(|s| r.created_ms >= s))
        .collect())
}

fn rows(runs: &[RunRecord]) -> Markup {
    html! {
        @if runs.is_empty() {
            tr { td colspan="5" .muted { "No runs match." } }
        }
        @for r in runs {
            tr {
                td.mono { a href={"/runs/" (r.id)} { (r.id) } }
                td { a href={"/functions/" (encode(&r.fn_id))} { (r.fn_id) } }
                td { (status_badge(r.status.as_str())) }
                td title=(r.created_ms) { (ago(r.created_ms)) }
                td { @match r.ended_ms { Some(e) => (span(e - r.created_ms)), None => span.muted { "–" } } }
            }
        }
    }
}

async fn runs_rows(State(engine): State<Engine>, Query(q): Query<RunsQuery>) -> Response {
    match select_runs(&engine, &q.clean()).await {
        Ok(runs) => ok(rows(&runs)),
        Err(e) => failure(StatusCode::BAD_REQUEST, "Bad filter", e),
    }
}

async fn runs_page(State(engine): State<Engine>, Query(q): Query<RunsQuery>) -> Response {
    let q = q.clean();
    let runs = match select_runs(&engine, &q).await {
        Ok(r) => r,
        Err(e) => return failure(StatusCode::BAD_REQUEST, "Bad filter", e),
    };
    let functions = function_ids(&engine).await;
    let qs = q.query_string();
    ok(page(
        "Runs",
        "/runs",
        html! {
            h1 { "Runs" }
            form.filters method="get" action="/runs" {
                label { "Function"
                    select name="function" {
                        option value="" { "any" }
                        @for f in &functions {
                            option value=(f) selected[q.function.as_deref() == Some(f.as_str())] { (f) }
                        }
                    }
                }
                label { "Status"
                    select name="status" {
                        option value="" { "any" }
                        @for s in STATUSES {
                            option value=(s) selected[q.status.as_deref() == Some(s)] { (s) }
                        }
                    }
                }
                label { "Created within"
                    select name="since" {
                        option value="" { "any time" }
                        @for (v, l) in [("15m", "15 minutes"), ("1h", "an hour"), ("24h", "a day"), ("7d", "a week")] {
                            option value=(v) selected[q.since.as_deref() == Some(v)] { (l) }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            table {
                thead { tr { th { "Run" } th { "Function" } th { "Status" } th { "Created" } th { "Took" } } }
                tbody #runs data-src={"/runs/rows?" (qs)} { (rows(&runs)) }
            }
            p.muted { "Updates every two seconds. The newest 100 runs that match." }
            @if q.function.is_some() || q.status.is_some() || q.since.is_some() {
                h2 { "Every run that matches" }
                div.actions {
                    @for (op, label, class) in [("cancel", "Cancel them all", "danger"), ("rerun", "Rerun them all", "")] {
                        form.inline method="post" action="/bulk" {
                            input type="hidden" name="op" value=(op);
                            @if let Some(f) = &q.function { input type="hidden" name="function" value=(f); }
                            @if let Some(s) = &q.status { input type="hidden" name="status" value=(s); }
                            @if let Some(s) = &q.since { input type="hidden" name="since" value=(s); }
                            button.(class) type="submit" { (label) }
                        }
                    }
                }
            }
            script { (PreEscaped(r#"
const body = document.getElementById('runs');
setInterval(async () => {
  try {
    const r = await fetch(body.dataset.src);
    if (r.ok) { body.innerHTML = await r.text(); }
  } catch (e) {}
}, 2000);
"#)) }
        },
    ))
}

/// Where a step's bar sits in the run's span, in percent.
fn bar(s: &StepRecord, start: i64, total: i64) -> (f64, f64) {
    let total = total.max(1) as f64;
    let from = s.started_ms.unwrap_or(start).saturating_sub(start).max(0) as f64;
    let to = s.ended_ms.unwrap_or(now_ms()).saturating_sub(start).max(0) as f64;
    let left = (from / total * 100.0).min(100.0);
    let width = ((to - from) / total * 100.0).clamp(0.0, 100.0 - left);
    (left, width)
}

async fn run_page(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    let detail = match engine.run(&id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return failure(
                StatusCode::NOT_FOUND,
                "No such run",
                format!("no run `{id}`"),
            )
        }
        Err(e) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "The store failed", e),
    };
    let r = &detail.run;
    let status = r.status.as_str();
    let start = r.created_ms;
    let end = r.ended_ms.unwrap_or_else(now_ms);
    let total = detail
        .steps
        .iter()
        .filter_map(|s| s.ended_ms)
        .chain([end])
        .max()
        .unwrap_or(end)
        - start;
    // Invoked runs, by the step that invoked them: a child's event ID is
    // derived from its parent's run and step.
    let mut children = std::collections::HashMap::new();
    // An app's steps have no kind: look at them only while few.
    let unknown_kinds = detail.steps.len() <= 100;
    for s in &detail.steps {
        let may_invoke = match s.kind.as_deref() {
            Some(k) => k == "invoke",
            None => unknown_kinds || s.status == "invoking",
        };
        if !may_invoke {
            continue;
        }
        let event = format!("invoke-{}.{}", r.id, durafn::step_id::hash_id(&s.id));
        let runs = engine
            .runs(RunFilter {
                event: Some(event),
                limit: Some(1),
                ..Default::default()
            })
            .await
            .unwrap_or_default();
        if let Some(child) = runs.into_iter().next() {
            children.insert(s.id.clone(), child);
        }
    }
    let active = !r.status.is_final();
    // What the page shows, as the script below compares it with the run.
    let shown = format!(
        "{status}:{}:{}",
        detail.steps.len(),
        detail
            .steps
            .iter()
            .map(|s| s.status.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    ok(page(
        &format!("Run {id}"),
        "/runs",
        html! {
            h1 { "Run " span.mono { (id) } " " (status_badge(status)) }
            dl.facts {
                dt { "Function" } dd { a href={"/functions/" (encode(&r.fn_id))} { (r.fn_id) } }
                dt { "Version" } dd.mono { (r.version.as_deref().unwrap_or("–")) }
                dt { "Event" } dd { (detail.event["name"].as_str().unwrap_or("")) " " span.mono.muted { (r.event_id) } }
                dt { "Created" } dd title=(r.created_ms) { (ago(r.created_ms)) }
                @if let Some(e) = r.ended_ms { dt { "Took" } dd { (span(e - r.created_ms)) } }
                @if let (Some(w), Some(step)) = (r.wake_at, &r.pending_step) {
                    @let name = detail.steps.iter().find(|s| &s.id == step).and_then(|s| s.name.as_deref()).unwrap_or(step);
                    dt { "Waiting on" } dd { span.mono { (name) } ", until " (span(w - now_ms())) " from now" }
                }
                @if let Some(o) = &r.origin {
                    dt { "Made by" } dd {
                        "a " (o.kind) " of " a.mono href={"/runs/" (o.run_id)} { (o.run_id) }
                        @if let Some(f) = &o.from_step { ", from " span.mono { (f) } }
                        @if let Some(e) = &o.edited_step { ", with " span.mono { (e) } "'s output edited" }
                    }
                }
            }
            div.actions {
                @if active {
                    form.inline method="post" action={"/runs/" (id) "/cancel"} {
                        button.danger type="submit" { "Cancel" }
                    }
                }
                form.inline method="post" action={"/runs/" (id) "/rerun"} {
                    button type="submit" { "Rerun" }
                }
            }
            @if let Some(out) = &r.output {
                h2 { "Output" }
                pre #output { (pretty(out)) }
            }
            @if let Some(err) = &r.error {
                h2 { "Error" }
                pre.error #error { (pretty(err)) }
            }
            h2 { "Steps" }
            table #timeline {
                thead { tr { th { "Step" } th { "Status" } th { "Attempts" } th { "Start" } th { "Took" } th.bar-cell { "Timeline" } th { "Output or error" } th { } } }
                tbody {
                    @if detail.steps.is_empty() { tr { td colspan="8" .muted { "No step has run yet." } } }
                    @for s in &detail.steps {
                        @let name = s.name.as_deref().unwrap_or(&s.id);
                        @let (left, width) = bar(s, start, total);
                        @let journaled = matches!(s.status.as_str(), "completed" | "failed");
                        // A step a replay kept ended before this run began.
                        @let kept = s.ended_ms.is_some_and(|e| e < start);
                        tr.step data-step=(name) {
                            td.mono.nowrap { (name) @if let Some(k) = &s.kind { @if k != "run" { span.kind { (k) } } } }
                            td { (status_badge(&s.status)) }
                            td { (s.attempts) }
                            td.nowrap { @if kept { span.kept title="kept from the run this one replays" { "kept" } } @else { @match s.started_ms { Some(t) => { "+" (span(t - start)) }, None => "–" } } }
                            td.nowrap { @match (s.started_ms, s.ended_ms) { (Some(a), Some(b)) => (span(b - a)), _ => "–" } }
                            td.bar-cell { div.bar { span class=(s.status) style=(format!("left:{left:.2}%;width:{width:.2}%")) {} } }
                            td.mono {
                                @if let Some(child) = children.get(&s.id) {
                                    div.child { "invoked " a href={"/runs/" (child.id)} { (child.fn_id) } " " (status_badge(child.status.as_str())) }
                                }
                                @if let Some(e) = &s.error {
                                    span.failed { (e["message"].as_str().map(str::to_string).unwrap_or_else(|| short(e, 80))) }
                                } @else if let Some(o) = &s.output {
                                    details { summary { (short(o, 60)) } pre { (pretty(o)) } }
                                }
                            }
                            td.ops {
                                @if journaled {
                                    form.inline method="post" action={"/runs/" (id) "/replay"} {
                                        input type="hidden" name="from" value=(s.id);
                                        button type="submit" title={"A new run that keeps the steps before " (name)} { "Replay from here" }
                                    }
                                    details.edit {
                                        summary { "Edit output…" }
                                        form method="post" action={"/runs/" (id) "/replay"} {
                                            input type="hidden" name="edit" value=(s.id);
                                            label { "New output of " span.mono { (name) } " (JSON); the steps after it run again"
                                                textarea name="output" { (s.output.as_ref().map(pretty).unwrap_or_else(|| "null".into())) }
                                            }
                                            button type="submit" { "Replay with this output" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !detail.ops.is_empty() {
                h2 { "Operations on this run" }
                ul {
                    @for op in &detail.ops {
                        li {
                            (op.op) " " span.muted { (ago(op.at_ms)) }
                            @if let Some(m) = &op.made { ": made " a.mono href={"/runs/" (m)} { (m) } }
                        }
                    }
                }
            }
            h2 { "Trigger event" }
            pre { (pretty(&detail.event)) }
            @if !detail.events.is_empty() {
                h2 { "Batch" }
                pre { (pretty(&Value::Array(detail.events.clone()))) }
            }
            @if active {
                script { (PreEscaped(format!(r#"
const shown = {shown};
setInterval(async () => {{
  try {{
    const r = await fetch('/v1/runs/' + encodeURIComponent({run}));
    if (!r.ok) return;
    const d = (await r.json()).data;
    const now = d.status + ':' + d.steps.length + ':' + d.steps.map(s => s.status).join(',');
    if (now !== shown) location.reload();
  }} catch (e) {{}}
}}, 1000);
"#, shown = js_str(&shown), run = js_str(&id)))) }
            }
        },
    ))
}

async fn cancel(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.cancel(&id).await {
        Ok(Some(_)) => Redirect::to(&format!("/runs/{id}")).into_response(),
        Ok(None) => failure(
            StatusCode::NOT_FOUND,
            "No such run",
            format!("no run `{id}`"),
        ),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, "Not cancelled", e),
    }
}

async fn rerun(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    match engine.rerun(&id).await {
        Ok(new) => Redirect::to(&format!("/runs/{new}")).into_response(),
        Err(e) => op_failure(e),
    }
}

#[derive(Deserialize)]
struct ReplayForm {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    edit: Option<String>,
    #[serde(default)]
    output: Option<String>,
}

async fn replay(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    Form(f): Form<ReplayForm>,
) -> Response {
    let edit = match (f.edit.filter(|s| !s.is_empty()), f.output) {
        (Some(step), Some(text)) => match serde_json::from_str::<Value>(&text) {
            Ok(v) => Some((step, v)),
            Err(e) => {
                return failure(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Not valid JSON",
                    format!("the new output of `{step}` is not valid JSON: {e}"),
                )
            }
        },
        (Some(step), None) => {
            return failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "No output",
                format!("give the new output of `{step}`"),
            )
        }
        _ => None,
    };
    let replay = Replay {
        from: f.from.filter(|s| !s.is_empty()),
        edit,
    };
    match engine.replay(&id, replay).await {
        Ok(new) => Redirect::to(&format!("/runs/{new}")).into_response(),
        Err(e) => op_failure(e),
    }
}

#[derive(Deserialize)]
struct BulkForm {
    op: String,
    #[serde(flatten)]
    select: RunsQuery,
}

async fn bulk(State(engine): State<Engine>, Form(f): Form<BulkForm>) -> Response {
    let op = match f.op.as_str() {
        "cancel" => BulkOp::Cancel,
        "rerun" => BulkOp::Rerun,
        other => {
            return failure(
                StatusCode::BAD_REQUEST,
                "Unknown operation",
                format!("`{other}` is not cancel or rerun"),
            )
        }
    };
    let q = f.select.clean();
    let status = match q.status.as_deref().map(|s| (s, RunStatus::parse(s))) {
        None => None,
        Some((_, Some(s))) => Some(s),
        Some((s, None)) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "Bad filter",
                format!("unknown status `{s}`"),
            )
        }
    };
    let selection = Selection {
        function: q.function.clone(),
        status,
        since_ms: q.since_ms(),
        until_ms: None,
    };
    if selection == Selection::default() {
        return failure(
            StatusCode::BAD_REQUEST,
            "Too wide",
            "choose a function, a status or a time range first: this would touch every run",
        );
    }
    let job = engine.bulk(op, selection);
    Redirect::to(&format!("/jobs/{}", job.id)).into_response()
}

async fn job_page(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    let Some(job) = engine.job(&id) else {
        return failure(
            StatusCode::NOT_FOUND,
            "No such job",
            format!("no bulk operation `{id}` in this process"),
        );
    };
    let op = match job.op {
        BulkOp::Cancel => "Cancel",
        BulkOp::Rerun => "Rerun",
    };
    let pct = match job.matched {
        0 if job.finished => 100,
        0 => 0,
        m => (job.done + job.skipped) * 100 / m,
    };
    ok(page(
        "Bulk operation",
        "/runs",
        html! {
            h1 { (op) " in bulk " @if job.finished { (status_badge("completed")) } @else { (status_badge("running")) } }
            div.bar style="height:1.2rem" { span.completed style=(format!("left:0;width:{pct}%")) {} }
            p #progress { (job.done) " done, " (job.skipped) " skipped, " (job.matched) " matched" }
            @if !job.errors.is_empty() {
                h2 { "Skipped" }
                ul { @for e in &job.errors { li.mono { (e) } } }
            }
            p { a href="/runs" { "Back to the runs" } }
            @if !job.finished { script { (PreEscaped("setTimeout(() => location.reload(), 500);")) } }
        },
    ))
}

/// A step table (the explicit state machine the macro generates) as
/// nested lists: loops as boxes with their ID pattern.
fn graph(sites: &[Value]) -> Markup {
    fn level(sites: &[Value], depth: u64) -> Markup {
        let mut items = Vec::new();
        let mut i = 0;
        while i < sites.len() {
            let d = sites[i]["loop_depth"].as_u64().unwrap_or(0);
            if d > depth {
                let start = i;
                while i < sites.len() && sites[i]["loop_depth"].as_u64().unwrap_or(0) > depth {
                    i += 1;
                }
                let inner = &sites[start..i];
                let idx = ["i", "j", "k", "l"]
                    .get(depth as usize)
                    .copied()
                    .unwrap_or("n");
                items.push(html! {
                    li.loop {
                        div.label { "loop: one step per iteration, IDs end in [" (idx) "]" }
                        (level(inner, depth + 1))
                    }
                });
            } else {
                let s = &sites[i];
                let id = s["id"].as_str().unwrap_or("?");
                let kind = s["kind"].as_str().unwrap_or("run");
                let indices: String = ["i", "j", "k", "l"]
                    .iter()
                    .take(d as usize)
                    .map(|x| format!("[{x}]"))
                    .collect();
                items.push(html! {
                    li { span.node.mono { (id) (indices) } span.kind { (kind)
                        @if let Some(e) = s["event"].as_str() { " " (e) } } }
                });
                i += 1;
            }
        }
        html! { ol.graph { @for m in items { (m) } } }
    }
    if sites.is_empty() {
        return html! { p.muted { "No step sites: the function runs in one go." } };
    }
    level(sites, 0)
}

struct FnView {
    id: String,
    name: String,
    place: String,
    triggers: Vec<String>,
    steps: Option<Vec<Value>>,
    synced: Option<Value>,
}

async fn fn_views(engine: &Engine) -> Vec<FnView> {
    let mut out: Vec<FnView> = engine
        .functions()
        .iter()
        .map(|f| FnView {
            id: f.id().to_string(),
            name: f.name().to_string(),
            place: "in process".into(),
            triggers: f
                .triggers()
                .iter()
                .map(|t| match serde_json::to_value(t).unwrap_or(Value::Null) {
                    Value::Object(o) => o
                        .get("event")
                        .or_else(|| o.get("cron"))
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    _ => "?".into(),
                })
                .collect(),
            steps: serde_json::to_value(f.steps())
                .ok()
                .and_then(|v| v.as_array().cloned()),
            synced: Some(json!({"options": f.config(), "version": f.version()})),
        })
        .collect();
    let apps = engine.store().apps().await.unwrap_or_default();
    for f in engine.remote_functions() {
        let synced = apps
            .iter()
            .filter(|a| a.id == f.app)
            .flat_map(|a| a.body["functions"].as_array().cloned().unwrap_or_default())
            .find(|v| v["id"] == f.id.as_str());
        out.push(FnView {
            id: f.id.clone(),
            name: f.name.clone(),
            place: format!("app {} at {}", f.app, f.url),
            triggers: f.events.clone(),
            steps: synced
                .as_ref()
                .and_then(|s| s["stepTable"].as_array().cloned()),
            synced,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

async fn functions_page(State(engine): State<Engine>) -> Response {
    let fns = fn_views(&engine).await;
    ok(page(
        "Functions",
        "/functions",
        html! {
            h1 { "Functions" }
            table {
                thead { tr { th { "Function" } th { "Triggers" } th { "Where" } th { "Steps" } } }
                tbody {
                    @if fns.is_empty() { tr { td colspan="4" .muted { "No function yet: register one, or sync an app (durafn dev -u <url>)." } } }
                    @for f in &fns {
                        tr {
                            td { a href={"/functions/" (encode(&f.id))} { (f.id) } @if f.name != f.id { br; span.muted { (f.name) } } }
                            td.mono { (f.triggers.join(", ")) }
                            td { (f.place) }
                            td { @match &f.steps { Some(s) => (s.len()), None => span.muted { "found at run time" } } }
                        }
                    }
                }
            }
        },
    ))
}

async fn function_page(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    let Some(f) = fn_views(&engine).await.into_iter().find(|f| f.id == id) else {
        return failure(
            StatusCode::NOT_FOUND,
            "No such function",
            format!("no function `{id}`"),
        );
    };
    let recent = engine
        .runs(RunFilter {
            function: Some(f.id.clone()),
            limit: Some(10),
            ..Default::default()
        })
        .await
        .unwrap_or_default();
    ok(page(
        &f.id,
        "/functions",
        html! {
            h1 { (f.id) }
            dl.facts {
                dt { "Name" } dd { (f.name) }
                dt { "Triggers" } dd.mono { (f.triggers.join(", ")) }
                dt { "Where" } dd { (f.place) }
            }
            h2 { "Steps" }
            @match &f.steps {
                Some(s) => (graph(s)),
                None => p.muted { "This app's SDK does not send its steps: they are found as its runs reach them." },
            }
            h2 { "Recent runs" }
            table { tbody { (rows(&recent)) } }
            p { a href={"/runs?function=" (encode(&f.id))} { "All its runs" } }
            @if let Some(s) = &f.synced {
                h2 { "What it registered with" }
                pre { (pretty(s)) }
            }
        },
    ))
}

async fn events_page(State(engine): State<Engine>) -> Response {
    let events = match engine.events(50, None).await {
        Ok(e) => e,
        Err(e) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "The store failed", e),
    };
    let mut started = Vec::with_capacity(events.len());
    for e in &events {
        let runs = engine
            .runs(RunFilter {
                event: Some(e.id.clone()),
                limit: Some(20),
                ..Default::default()
            })
            .await
            .unwrap_or_default();
        started.push(runs);
    }
    ok(page(
        "Events",
        "/events",
        html! {
            h1 { "Events" }
            h2 { "Send a test event" }
            form #send method="post" action="/events" {
                p { label { "Name" br; input #event-name type="text" name="name" required placeholder="shopify/import.requested" size="40"; } }
                p { label { "Data (JSON)" br; textarea #event-data name="data" { "{}" } } }
                button #send-event type="submit" { "Send" }
            }
            h2 { "Recent events" }
            table {
                thead { tr { th { "Event" } th { "Received" } th { "Runs it started" } th { "Payload" } } }
                tbody {
                    @if events.is_empty() { tr { td colspan="4" .muted { "No event yet." } } }
                    @for (e, runs) in events.iter().zip(&started) {
                        tr {
                            td { (e.name) br; span.mono.muted { (e.id) } }
                            td title=(e.received_ms) { (ago(e.received_ms)) }
                            td { @for r in runs { a.mono href={"/runs/" (r.id)} { (r.id) } " " (status_badge(r.status.as_str())) br; } }
                            td { details { summary { (short(&e.event["data"], 50)) } pre { (pretty(&e.event)) } } }
                        }
                    }
                }
            }
        },
    ))
}

#[derive(Deserialize)]
struct SendForm {
    name: String,
    #[serde(default)]
    data: String,
}

async fn send_event(State(engine): State<Engine>, Form(f): Form<SendForm>) -> Response {
    let data: Value = match f.data.trim() {
        "" => json!({}),
        text => match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                return failure(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Not valid JSON",
                    format!("the event's data is not valid JSON: {e}"),
                )
            }
        },
    };
    match engine
        .send_values(vec![json!({"name": f.name.trim(), "data": data})])
        .await
    {
        Ok(sent) => match sent.runs.as_slice() {
            [one] => Redirect::to(&format!("/runs/{one}")).into_response(),
            _ => Redirect::to("/runs").into_response(),
        },
        Err(e) => failure(StatusCode::BAD_REQUEST, "Not sent", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_in_scripts_cannot_end_the_script() {
        let s = js_str("x</script><script>alert(1)</script>");
        assert!(!s.contains('<'), "{s}");
        assert_eq!(
            serde_json::from_str::<String>(&s).unwrap(),
            "x</script><script>alert(1)</script>"
        );
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
