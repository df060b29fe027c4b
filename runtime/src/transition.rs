//! What a run does next, and the one set of rules that decides what that
//! means for the run.
//!
//! Every driver ends a call (or a step) with a [`Transition`]: the Inngest
//! protocol's opcodes plus the function's own end. The in-process
//! continuous driver produces them from the Rust future; the re-entry driver
//! produces one per call; the engine's HTTP driver translates an app's wire
//! opcodes into the same values. [`Policy::decide`] turns a transition into
//! a [`Decision`] (journal this, retry then, sleep until, wait for, invoke,
//! finish, fail and tell the failure handlers): retries, backoff, timeouts
//! and failure events are decided here and nowhere else. The engine applies
//! a decision to its store; the test harness applies it to a journal in
//! memory.

use std::time::Duration;

use serde_json::Value;

use crate::error::{ErrorInfo, Retry};
use crate::journal::Outcome;
use crate::step_id::StepId;

/// The name of the error an `invoke!` resumes with when the invoked run
/// does not finish in time (Inngest's name).
pub const INVOKE_TIMEOUT: &str = "InngestInvokeTimeoutError";

/// The name of the error an `invoke!` resumes with when the invoked run
/// was cancelled.
pub const INVOKE_CANCELLED: &str = "InvokedRunCancelled";

/// How long an `invoke!` waits by default (Inngest's default is a year).
pub const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

/// The most retries a function or a step may have (Inngest's limit).
pub const MAX_RETRIES: u32 = 20;

/// One failed attempt of a step that will be retried.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedAttempt {
    pub id: StepId,
    pub error: ErrorInfo,
    /// The attempt that failed (0 for the first).
    pub attempt: u32,
    /// `RetryAfter`: not before this long.
    pub retry_after: Option<Duration>,
}

/// The next thing a run needs from its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A new step ran: journal its output (re-entry: then call again).
    StepRan { id: StepId, output: Value },
    /// Attempts of steps failed and may be retried (several when parallel
    /// branches failed in one pass): call again after the backoff.
    StepErrored(Vec<FailedAttempt>),
    /// A step failed for good: journal the error (the site then returns
    /// `Err(StepError)`).
    StepFailed { id: StepId, error: ErrorInfo },
    /// Re-entry with immediate execution disabled: this step is next; call
    /// again targeting it.
    StepPlanned { id: StepId },
    /// Journal `null` for `id` at `until_ms` (ms since the epoch).
    Sleep { id: StepId, until_ms: i64 },
    /// Suspend until an event named `event` (matching `expr`, CEL over
    /// `event` and `async`) arrives, or `until_ms`. With `since_ms`, an
    /// event received from then on resolves the wait too, as if it began
    /// then (`lookback`), except the events in `seen` (those the run's
    /// earlier waits took).
    WaitForEvent {
        id: StepId,
        event: String,
        expr: Option<String>,
        until_ms: i64,
        since_ms: Option<i64>,
        seen: Vec<String>,
    },
    /// Start a run of `function` with `data` and suspend until it ends (its
    /// output, or its error as this step's error) or `until_ms`.
    Invoke {
        id: StepId,
        function: String,
        data: Value,
        until_ms: i64,
    },
    /// The function returned a value.
    Done(Value),
    /// The function returned an error, or the run broke a rule at run time.
    Failed { error: ErrorInfo, retry: Retry },
}

impl Transition {
    /// Whether the run has ended (done, or failed for good).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Transition::Done(_)
                | Transition::Failed {
                    retry: Retry::Never,
                    ..
                }
        )
    }
}

/// Exponential backoff with jitter for retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the second attempt (before jitter).
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// No delay at all (the test harness).
    pub const NONE: Backoff = Backoff {
        base: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// The delay after failed attempt `attempt` (0-based): `base * 2^attempt`,
    /// capped at `max`, then scaled by a random factor in `[0.5, 1.0]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(20));
        let capped = exp.min(self.max);
        capped.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

/// What a driver does with a run after a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Journal `outcome` for step `id` and go on.
    Journal { id: StepId, outcome: Outcome },
    /// Re-entry: run step `id` next (a planned parallel branch).
    Plan { id: StepId },
    /// Record the failed attempts and resume the run at `wake_at`;
    /// `fn_attempt` is the function-level attempt it resumes with.
    Retry {
        failures: Vec<FailedAttempt>,
        fn_attempt: u32,
        wake_at: i64,
    },
    /// Suspend until `until_ms`, then journal `null` for `id`.
    Sleep { id: StepId, until_ms: i64 },
    /// Suspend until a matching event (journaled for `id`), received from
    /// `since_ms` on if given (not one in `seen`), or `until_ms` (`null`
    /// journaled).
    WaitForEvent {
        id: StepId,
        event: String,
        expr: Option<String>,
        until_ms: i64,
        since_ms: Option<i64>,
        seen: Vec<String>,
    },
    /// Start a run of `function` and suspend until it ends (its outcome is
    /// journaled for `id`) or `until_ms` (`timeout_error` journaled).
    Invoke {
        id: StepId,
        function: String,
        data: Value,
        until_ms: i64,
        timeout_error: ErrorInfo,
    },
    /// The run completed with this output.
    Complete(Value),
    /// The run failed for good; `notify`: emit `inngest/function.failed`
    /// so that failure handlers run.
    Fail { error: ErrorInfo, notify: bool },
}

/// The rules of one function: its retries, the engine's backoff, and
/// whether its failures are announced.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Retries after the first attempt, of the function and (unless a step
    /// overrides it) of each step.
    pub retries: u32,
    pub backoff: Backoff,
    /// Whether a failure emits `inngest/function.failed`: false for the
    /// failure handlers themselves, so that a handler's own failure does not
    /// start handlers again.
    pub notify_failure: bool,
}

impl Policy {
    /// Whether failed attempt `attempt` (0-based) of a step with
    /// `max_retries` retries is its last.
    pub fn attempt_is_final(retry: Retry, attempt: u32, max_retries: u32) -> bool {
        retry == Retry::Never || attempt >= max_retries
    }

    /// Decide what `t` means for a run whose function-level attempt is
    /// `fn_attempt`, at `now_ms` on the run's clock.
    pub fn decide(&self, t: Transition, fn_attempt: u32, now_ms: i64) -> Decision {
        match t {
            Transition::StepRan { id, output } => Decision::Journal {
                id,
                outcome: Outcome::data(output),
            },
            Transition::StepFailed { id, error } => Decision::Journal {
                id,
                outcome: Outcome::error(error),
            },
            Transition::StepPlanned { id } => Decision::Plan { id },
            Transition::StepErrored(failures) => {
                // Every failed branch waits at least its own backoff.
                let delay = failures
                    .iter()
                    .map(|f| {
                        f.retry_after
                            .unwrap_or_else(|| self.backoff.delay(f.attempt))
                    })
                    .max()
                    .unwrap_or_default();
                Decision::Retry {
                    failures,
                    fn_attempt,
                    wake_at: at(now_ms, delay),
                }
            }
            Transition::Sleep { id, until_ms } => Decision::Sleep { id, until_ms },
            Transition::WaitForEvent {
                id,
                event,
                expr,
                until_ms,
                since_ms,
                seen,
            } => Decision::WaitForEvent {
                id,
                event,
                expr,
                until_ms,
                since_ms,
                seen,
            },
            Transition::Invoke {
                id,
                function,
                data,
                until_ms,
            } => Decision::Invoke {
                // Inngest's words (SDKs and their tests compare them), and
                // the function by its ID.
                timeout_error: {
                    let mut e = ErrorInfo::new(
                        INVOKE_TIMEOUT,
                        "Timed out waiting for invoked function to complete",
                    );
                    e.extra
                        .insert("function_id".into(), function.clone().into());
                    e
                },
                id,
                function,
                data,
                until_ms,
            },
            Transition::Done(v) => Decision::Complete(v),
            Transition::Failed { error, retry } => {
                if retry != Retry::Never && fn_attempt < self.retries {
                    let delay = match retry {
                        Retry::After(d) => d,
                        _ => self.backoff.delay(fn_attempt),
                    };
                    tracing::warn!(error = %error.to_string().escape_debug(), fn_attempt, "the run failed; retrying the function");
                    Decision::Retry {
                        failures: Vec::new(),
                        fn_attempt: fn_attempt + 1,
                        wake_at: at(now_ms, delay),
                    }
                } else {
                    Decision::Fail {
                        error,
                        notify: self.notify_failure,
                    }
                }
            }
        }
    }
}

/// `now_ms + d`, saturating.
pub fn at(now_ms: i64, d: Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            retries: 2,
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
            notify_failure: true,
        }
    }

    #[test]
    fn a_function_error_is_retried_then_fails_and_notifies() {
        let failed = || Transition::Failed {
            error: ErrorInfo::new("E", "boom"),
            retry: Retry::Backoff,
        };
        match policy().decide(failed(), 0, 1_000) {
            Decision::Retry {
                fn_attempt: 1,
                wake_at,
                failures,
            } => {
                assert!((1_050..=1_100).contains(&wake_at), "{wake_at}");
                assert!(failures.is_empty());
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            policy().decide(failed(), 2, 0),
            Decision::Fail { notify: true, .. }
        ));
        let never = Transition::Failed {
            error: ErrorInfo::new("E", "bad"),
            retry: Retry::Never,
        };
        assert!(matches!(
            policy().decide(never, 0, 0),
            Decision::Fail { .. }
        ));
    }

    #[test]
    fn failed_branches_wait_for_the_longest_retry_after() {
        let f = |i: u32, after: Option<u64>| FailedAttempt {
            id: StepId::new("p", &[i]),
            error: ErrorInfo::new("E", "x"),
            attempt: 0,
            retry_after: after.map(Duration::from_secs),
        };
        match policy().decide(
            Transition::StepErrored(vec![f(0, None), f(2, Some(30))]),
            0,
            0,
        ) {
            Decision::Retry {
                wake_at, failures, ..
            } => {
                assert_eq!(wake_at, 30_000);
                assert_eq!(failures.len(), 2);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn times_saturate() {
        assert_eq!(at(i64::MAX - 1, Duration::from_secs(10)), i64::MAX);
        assert_eq!(at(5, Duration::MAX), i64::MAX);
    }
}
