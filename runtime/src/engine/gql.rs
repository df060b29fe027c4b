//! The part of Inngest's dev-server GraphQL API (`POST /v0/gql`) that
//! tools written against Inngest read runs with (the official SDKs' own
//! integration suites among them): a run's status, output and step trace,
//! one step's output or error, a run's trigger events, and the runs of an
//! event. The names, types and statuses are Inngest's, so that a query
//! written for its dev server validates and reads the same here.

use async_graphql::{
    Context, EmptyMutation, EmptySubscription, Enum, InputObject, Object, Schema, SimpleObject, ID,
};
use serde_json::Value;

use super::Engine;
use crate::store::{RunDetail, RunFilter, RunStatus, StepRecord};

pub(crate) type GqlSchema = Schema<Query, EmptyMutation, EmptySubscription>;

/// The schema, built once per process; each request carries its engine.
pub(crate) fn schema() -> &'static GqlSchema {
    static SCHEMA: std::sync::OnceLock<GqlSchema> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| Schema::build(Query, EmptyMutation, EmptySubscription).finish())
}

pub(crate) struct Query;

/// A run's status, as Inngest names it (a sleeping run is `RUNNING`).
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
enum FunctionRunStatus {
    Completed,
    Failed,
    Cancelled,
    Running,
    Queued,
    Skipped,
}

impl From<RunStatus> for FunctionRunStatus {
    fn from(s: RunStatus) -> Self {
        match s {
            RunStatus::Queued => FunctionRunStatus::Queued,
            RunStatus::Running | RunStatus::Sleeping => FunctionRunStatus::Running,
            RunStatus::Completed => FunctionRunStatus::Completed,
            RunStatus::Failed => FunctionRunStatus::Failed,
            RunStatus::Cancelled => FunctionRunStatus::Cancelled,
            RunStatus::Skipped => FunctionRunStatus::Skipped,
        }
    }
}

/// A step span's status.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
enum RunTraceSpanStatus {
    Failed,
    Queued,
    Running,
    Completed,
    Waiting,
    Cancelled,
    Skipped,
}

struct FunctionRunV2(RunDetail);

#[Object]
impl FunctionRunV2 {
    async fn id(&self) -> &str {
        &self.0.run.id
    }

    #[graphql(name = "functionID")]
    async fn function_id(&self) -> &str {
        &self.0.run.fn_id
    }

    async fn status(&self) -> FunctionRunStatus {
        self.0.run.status.into()
    }

    /// The function's result as JSON text; for a failed run, its error.
    async fn output(&self) -> Option<String> {
        let r = &self.0.run;
        match r.status {
            RunStatus::Completed => r.output.as_ref().map(Value::to_string),
            _ => r.error.as_ref().map(Value::to_string),
        }
    }

    /// The root span: one child per step, in the order they ended.
    async fn trace(&self, _preview: Option<bool>) -> Option<RunTraceSpan> {
        let run = &self.0.run;
        Some(RunTraceSpan {
            name: run.fn_id.clone(),
            status: span_status(run.status),
            output_id: None,
            step_id: None,
            attempts: None,
            children_spans: self
                .0
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| step_span(&run.id, i, s))
                .collect(),
        })
    }
}

fn span_status(s: RunStatus) -> RunTraceSpanStatus {
    match s {
        RunStatus::Queued => RunTraceSpanStatus::Queued,
        RunStatus::Running => RunTraceSpanStatus::Running,
        RunStatus::Sleeping => RunTraceSpanStatus::Waiting,
        RunStatus::Completed => RunTraceSpanStatus::Completed,
        RunStatus::Failed => RunTraceSpanStatus::Failed,
        RunStatus::Cancelled => RunTraceSpanStatus::Cancelled,
        RunStatus::Skipped => RunTraceSpanStatus::Skipped,
    }
}

fn step_span(run_id: &str, i: usize, s: &StepRecord) -> RunTraceSpan {
    let ended = s.output.is_some() || s.error.is_some() || s.status == "completed";
    RunTraceSpan {
        name: s.name.clone().unwrap_or_else(|| s.id.clone()),
        status: match s.status.as_str() {
            "completed" => RunTraceSpanStatus::Completed,
            "failed" => RunTraceSpanStatus::Failed,
            "running" | "retrying" => RunTraceSpanStatus::Running,
            _ => RunTraceSpanStatus::Waiting,
        },
        output_id: ended.then(|| format!("{run_id}:{i}")),
        step_id: Some(s.id.clone()),
        attempts: Some(s.attempts as i32),
        children_spans: Vec::new(),
    }
}

#[derive(SimpleObject)]
struct RunTraceSpan {
    name: String,
    status: RunTraceSpanStatus,
    /// What `runTraceSpanOutputByID` takes: `<run ID>:<step position>`.
    #[graphql(name = "outputID")]
    output_id: Option<String>,
    #[graphql(name = "stepID")]
    step_id: Option<String>,
    attempts: Option<i32>,
    children_spans: Vec<RunTraceSpan>,
}

#[derive(SimpleObject)]
struct RunTraceSpanOutput {
    /// The step's output as JSON text.
    data: Option<String>,
    error: Option<StepError>,
}

#[derive(SimpleObject)]
struct StepError {
    message: String,
    name: Option<String>,
    stack: Option<String>,
}

#[derive(SimpleObject)]
struct RunTraceTrigger {
    event_name: Option<String>,
    #[graphql(name = "IDs")]
    ids: Vec<String>,
    /// Each trigger event as JSON text.
    payloads: Vec<String>,
    is_batch: bool,
}

#[derive(InputObject)]
struct EventQuery {
    #[graphql(default_with = "Some(ID::from(\"local\"))")]
    workspace_id: Option<ID>,
    event_id: ID,
}

#[derive(SimpleObject)]
struct Event {
    id: String,
    function_runs: Option<Vec<FunctionRun>>,
}

#[derive(SimpleObject)]
struct FunctionRun {
    id: ID,
    #[graphql(name = "functionID")]
    function_id: String,
    status: Option<FunctionRunStatus>,
}

async fn detail(ctx: &Context<'_>, run_id: &str) -> async_graphql::Result<RunDetail> {
    let engine = ctx.data::<Engine>()?;
    match engine.run(run_id).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(format!("no run `{run_id}`").into()),
        Err(e) => Err(e.to_string().into()),
    }
}

#[Object]
impl Query {
    async fn run(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "runID")] run_id: String,
    ) -> async_graphql::Result<Option<FunctionRunV2>> {
        Ok(Some(FunctionRunV2(detail(ctx, &run_id).await?)))
    }

    async fn run_trigger(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "runID")] run_id: String,
    ) -> async_graphql::Result<RunTraceTrigger> {
        let d = detail(ctx, &run_id).await?;
        let events = match d.events.is_empty() {
            true => vec![d.event],
            false => d.events,
        };
        Ok(RunTraceTrigger {
            event_name: events
                .first()
                .and_then(|e| e.get("name"))
                .and_then(Value::as_str)
                .map(str::to_string),
            ids: events
                .iter()
                .filter_map(|e| e.get("id").and_then(Value::as_str).map(str::to_string))
                .collect(),
            is_batch: events.len() > 1,
            payloads: events.iter().map(Value::to_string).collect(),
        })
    }

    #[graphql(name = "runTraceSpanOutputByID")]
    async fn run_trace_span_output_by_id(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "outputID")] output_id: String,
    ) -> async_graphql::Result<RunTraceSpanOutput> {
        let bad = || format!("no step output `{output_id}`");
        let (run_id, i) = output_id.rsplit_once(':').ok_or_else(bad)?;
        let i: usize = i.parse().map_err(|_| bad())?;
        let d = detail(ctx, run_id).await?;
        let step = d.steps.get(i).ok_or_else(bad)?;
        let error = step.error.as_ref().map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
            StepError {
                message: s("message").unwrap_or_else(|| e.to_string()),
                name: s("name"),
                stack: s("stack"),
            }
        });
        Ok(RunTraceSpanOutput {
            data: match error {
                Some(_) => None,
                None => Some(step.output.clone().unwrap_or(Value::Null).to_string()),
            },
            error,
        })
    }

    async fn event(
        &self,
        ctx: &Context<'_>,
        query: EventQuery,
    ) -> async_graphql::Result<Option<Event>> {
        let engine = ctx.data::<Engine>()?;
        let id = query.event_id.to_string();
        let runs = engine
            .runs(RunFilter {
                event: Some(id.clone()),
                limit: Some(1000),
                ..RunFilter::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some(Event {
            id,
            function_runs: Some(
                runs.into_iter()
                    .map(|r| FunctionRun {
                        id: ID(r.id),
                        function_id: r.fn_id,
                        status: Some(r.status.into()),
                    })
                    .collect(),
            ),
        }))
    }
}
