//! OpenTelemetry traces of runs: one trace per run (an invoked run joins
//! its parent's), a span for the run and one for each step attempt, with
//! the run ID, function, step ID, attempt, outcome and error. Exported with
//! OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and the `otel` feature is
//! on (`durafn dev` and `durafn start` have it); off otherwise.
//!
//! The spans are written from the journal's own times as steps are
//! committed (not timed again), and their IDs come from the run's ID, so a
//! run resumed by another process, or after a crash, adds to the same
//! trace.

use serde_json::Value;

/// A run's place in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunTrace {
    pub trace: u128,
    /// The run's own span.
    pub span: u64,
    /// The span it hangs under: its parent run's, for an invoked run.
    pub parent: Option<u64>,
}

/// FNV-1a: stable across processes and builds.
fn hash64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

impl RunTrace {
    /// The trace of run `run_id` started by `event`: an invoked run's
    /// event carries its parent's (`data._inngest.traceparent`, W3C).
    pub fn of(run_id: &str, event: &Value) -> RunTrace {
        let span = hash64(&["run", run_id]);
        let inherited = event
            .pointer("/data/_inngest/traceparent")
            .and_then(Value::as_str)
            .and_then(|tp| {
                let mut parts = tp.split('-');
                let (_, trace, parent) = (parts.next()?, parts.next()?, parts.next()?);
                Some((
                    u128::from_str_radix(trace, 16).ok()?,
                    u64::from_str_radix(parent, 16).ok()?,
                ))
            })
            .filter(|(t, p)| *t != 0 && *p != 0);
        match inherited {
            Some((trace, parent)) => RunTrace {
                trace,
                span,
                parent: Some(parent),
            },
            None => RunTrace {
                // Run IDs are 128 bits of hex already.
                trace: u128::from_str_radix(run_id, 16)
                    .ok()
                    .filter(|t| *t != 0)
                    .unwrap_or_else(|| {
                        (u128::from(hash64(&["trace", run_id])) << 64)
                            | u128::from(hash64(&[run_id]))
                    }),
                span,
                parent: None,
            },
        }
    }

    /// The W3C `traceparent` a run it invokes carries.
    pub fn traceparent(&self) -> String {
        format!("00-{:032x}-{:016x}-01", self.trace, self.span)
    }

    /// The span of one attempt of a step.
    pub fn step_span(&self, run_id: &str, step: &str, attempt: u32) -> u64 {
        hash64(&["step", run_id, step, &attempt.to_string()])
    }
}

/// One finished span to export.
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
pub(crate) struct SpanRecord<'a> {
    pub name: &'a str,
    pub trace: u128,
    pub span: u64,
    pub parent: Option<u64>,
    pub start_ms: i64,
    pub end_ms: i64,
    pub attributes: Vec<(&'static str, String)>,
    /// The error's name and message, when it failed.
    pub error: Option<String>,
}

impl Telemetry {
    /// Export a run's own span as it ends (`status`: `completed`,
    /// `failed`, `cancelled`).
    pub fn run_span(
        &self,
        run: &crate::store::RunRecord,
        trace: &RunTrace,
        (status, error): (&str, Option<String>),
        now: i64,
    ) {
        let name = format!("run {}", run.fn_id);
        self.export(SpanRecord {
            name: &name,
            trace: trace.trace,
            span: trace.span,
            parent: trace.parent,
            start_ms: run.created_ms,
            end_ms: now,
            attributes: vec![
                ("durafn.run_id", run.id.clone()),
                ("durafn.function", run.fn_id.clone()),
                ("durafn.outcome", status.to_string()),
            ],
            error,
        });
    }
}

#[cfg(feature = "otel")]
mod imp {
    use std::time::{Duration, UNIX_EPOCH};

    use opentelemetry::trace::{
        Span as _, SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer as _, TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

    use super::SpanRecord;

    /// The OTLP exporter, when configured.
    pub(crate) struct Telemetry {
        provider: SdkTracerProvider,
        tracer: SdkTracer,
    }

    fn var(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    impl Telemetry {
        /// From the standard variables: on when an OTLP endpoint is set.
        /// `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` sends JSON; protobuf
        /// otherwise.
        pub fn from_env() -> Option<Telemetry> {
            var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))?;
            let protocol = match var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
                Some("http/json") => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            };
            let exporter = match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .build()
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(
                        "OpenTelemetry is off: the OTLP exporter could not be built: {e}"
                    );
                    return None;
                }
            };
            let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| "durafn".into());
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service)
                        .build(),
                )
                .build();
            let tracer = provider.tracer("durafn");
            tracing::info!("exporting run traces with OTLP");
            Some(Telemetry { provider, tracer })
        }

        pub fn export(&self, s: SpanRecord<'_>) {
            let at = |ms: i64| UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            let cx = match s.parent {
                Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from(s.trace),
                    SpanId::from(p),
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::default(),
                )),
                None => Context::new(),
            };
            let mut attributes: Vec<KeyValue> = s
                .attributes
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect();
            let status = match &s.error {
                Some(e) => {
                    attributes.push(KeyValue::new("durafn.error", e.clone()));
                    Status::error(e.clone())
                }
                None => Status::Ok,
            };
            let mut span = self
                .tracer
                .span_builder(s.name.to_string())
                .with_trace_id(TraceId::from(s.trace))
                .with_span_id(SpanId::from(s.span))
                .with_start_time(at(s.start_ms))
                .with_attributes(attributes)
                .with_status(status)
                .start_with_context(&self.tracer, &cx);
            span.end_with_timestamp(at(s.end_ms.max(s.start_ms)));
        }

        /// Send what is buffered (the engine closing), off the async
        /// threads: the exporter blocks.
        pub async fn flush(&self) {
            let provider = self.provider.clone();
            let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        }
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    use super::SpanRecord;

    /// Without the `otel` feature there is nothing to export to.
    pub(crate) enum Telemetry {}

    impl Telemetry {
        pub fn from_env() -> Option<Telemetry> {
            None
        }

        pub fn export(&self, _: SpanRecord<'_>) {
            match *self {}
        }

        pub async fn flush(&self) {
            match *self {}
        }
    }
}

pub(crate) use imp::Telemetry;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_invoked_run_joins_its_parents_trace() {
        let parent = RunTrace::of("01a2173e4d2c063387334bbda091ccd2", &json!({"data": {}}));
        assert_eq!(parent.trace, 0x01a2173e4d2c063387334bbda091ccd2);
        assert_eq!(parent.parent, None);
        let event = json!({"data": {"_inngest": {"traceparent": parent.traceparent()}}});
        let child = RunTrace::of("01a2173e4d2c0633873300000000ffff", &event);
        assert_eq!(child.trace, parent.trace);
        assert_eq!(child.parent, Some(parent.span));
        assert_ne!(child.span, parent.span);
        assert_eq!(
            RunTrace::of("x", &json!(null)),
            RunTrace::of("x", &json!({}))
        );
        assert_ne!(parent.step_span("r", "a", 0), parent.step_span("r", "a", 1));
    }
}
