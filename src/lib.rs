//! # durafn: durable functions for Rust, with replay safety checked by the compiler
//!
//! Write an ordinary `async fn`, mark it [`#[durable_fn]`](macro@durable_fn),
//! and put every side effect inside `step!("name", { .. })`. Each step's result
//! is journaled; the function is re-entered from the top and replayed against
//! the journal, so it survives crashes, retries, deploys and sleeps of days.
//! The macro refuses, at compile time, the code that would make replay go
//! wrong, and numbers the steps of loops from their iteration indices
//! (`fetch-products[3]`).
//!
//! ```
//! use durafn::prelude::*;
//!
//! #[derive(Deserialize)]
//! struct Req { pages: u32 }
//!
//! #[durable_fn(id = "count-pages", event = "demo/count")]
//! async fn count_pages(ctx: Ctx, event: Event<Req>) -> Result<u32> {
//!     let mut total = 0;
//!     for page in 0..event.data.pages {
//!         let n: u32 = step!("fetch", { page * 10 })?;   // ids fetch[0], fetch[1], …
//!         total += n;
//!     }
//!     Ok(total)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let out = durafn::testing::TestRun::new(count_pages)
//!     .event("demo/count", serde_json::json!({"pages": 3}))
//!     .run()
//!     .await;
//! assert_eq!(out.output::<u32>(), 30);
//! assert_eq!(out.journal.ids(), ["fetch[0]", "fetch[1]", "fetch[2]"]);
//! # }
//! ```
//!
//! The crate re-exports the runtime ([`durafn_runtime`]) and the macro.

#[doc = include_str!("../docs/durable_fn.md")]
#[doc(inline)]
pub use durafn_macros::durable_fn;

pub use durafn_runtime::*;

/// What a durable fn needs in scope: `use durafn::prelude::*;`.
pub mod prelude {
    pub use crate::{
        durable_fn, invoke, patched, send_event, sleep, sleep_until, step, unchecked,
        wait_for_event,
    };
    pub use durafn_runtime::{Ctx, Error, Event, NonRetriable, Result, RetryAfter, StepError};
    pub use serde::{Deserialize, Serialize};
}

#[doc(hidden)]
pub use durafn_runtime::__private;

/// A step: run the block once, journal its value, and return it on replay.
///
/// `step!("id", { body })` and `step!("id", retries = N, { body })`. Only
/// meaningful inside a [`#[durable_fn]`](macro@durable_fn), which rewrites it;
/// see there for the rules.
#[macro_export]
macro_rules! step {
    ($($t:tt)*) => {
        ::core::compile_error!("durafn: `step!` only works directly inside a `#[durable_fn]`, which journals it; mark the enclosing async fn `#[durable_fn]`")
    };
}

/// A durable sleep: `sleep!("id", Duration::from_secs(3600))?`. The run
/// suspends and a timer wakes it, across restarts.
#[macro_export]
macro_rules! sleep {
    ($($t:tt)*) => {
        ::core::compile_error!("durafn: `sleep!` only works directly inside a `#[durable_fn]`; elsewhere use `tokio::time::sleep`")
    };
}

/// Branch in-flight runs around a change: `if patched!("new-pricing")? {
/// new code } else { old code }` is `true` for runs that reach it on code
/// that has it (journaled, so it stays `true` on replay) and `false` for
/// runs whose journal was written by code without it (they have history
/// past this point), so a deploy can change what a function does without
/// breaking the runs in flight. Once no run on the old code is left,
/// remove the old branch, then the `patched!`.
#[macro_export]
macro_rules! patched {
    ($($t:tt)*) => {
        ::core::compile_error!("durafn: `patched!` only works directly inside a `#[durable_fn]`")
    };
}

/// A durable sleep until a point in time (`std::time::SystemTime`):
/// `sleep_until!("id", when)?`.
#[macro_export]
macro_rules! sleep_until {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "durafn: `sleep_until!` only works directly inside a `#[durable_fn]`"
        )
    };
}

/// Wait for an event: `wait_for_event!("id", event = "app/invoice.paid",
/// timeout = Duration::from_secs(86_400), match = "data.invoice_id")` (or
/// `if = "async.data.amount > 100"`, CEL over `event` and `async`). The run
/// suspends; an event that arrives after the wait and matches resumes it
/// with `Some(Event<T>)`, the timeout with `None`.
///
/// `lookback = Duration::from_secs(300)` (beyond Inngest) also takes a
/// matching event received up to that long before the wait began, the
/// earliest first, as if the wait had begun then: the event sent just
/// before the run reached its wait is not missed. The run's own trigger
/// never resolves its wait, nor does an event an earlier wait of the run
/// took, and the window reaches no further back than the engine keeps
/// events (its retention).
#[macro_export]
macro_rules! wait_for_event {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "durafn: `wait_for_event!` only works directly inside a `#[durable_fn]`"
        )
    };
}

/// Send events from a run, once: `send_event!("id", event)` or a `Vec` of
/// events; evaluates to the event IDs. The events trigger functions as any
/// other.
#[macro_export]
macro_rules! send_event {
    ($($t:tt)*) => {
        ::core::compile_error!("durafn: `send_event!` only works directly inside a `#[durable_fn]`")
    };
}

/// Run another durable fn and resume with its output (or its error as a
/// step error): `invoke!("id", other_fn, data)`, with an optional
/// `timeout = duration` (default 7 days).
#[macro_export]
macro_rules! invoke {
    ($($t:tt)*) => {
        ::core::compile_error!("durafn: `invoke!` only works directly inside a `#[durable_fn]`")
    };
}

/// Parallel steps: `parallel!("fetch", items, |item| { body })` runs one
/// step per item concurrently (IDs `fetch[0]`, `fetch[1]`, …) and resumes
/// when all are done, with their outputs in item order. Each branch is
/// retried on its own. The body owns its item and is an `async move`
/// block: capture other variables by reference (`let shop = &shop;`).
#[macro_export]
macro_rules! parallel {
    ($($t:tt)*) => {
        ::core::compile_error!("durafn: `parallel!` only works directly inside a `#[durable_fn]`")
    };
}

/// The escape hatch: `unchecked!("why this is replay-safe", expr)` switches
/// the outside-step rules off for `expr`. Greppable on purpose.
#[macro_export]
macro_rules! unchecked {
    ($reason:literal, $e:expr) => {
        $e
    };
}
