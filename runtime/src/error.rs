//! Errors: the crate-wide [`Error`], the [`StepError`] a step hands back once
//! its retries are spent, and the [`NonRetriable`] / [`RetryAfter`] wrappers
//! that steer retries (as in Inngest's SDKs).

use std::any::Any;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `std::result::Result<T, durafn::Error>`: the return type of durable fns
/// and step bodies.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How an error steers retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retry with the usual exponential backoff (the default).
    Backoff,
    /// Retry, but not before this long.
    After(Duration),
    /// Never retry.
    Never,
}

/// The error of a durable fn or of a step body.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into it with `?`
/// (like `anyhow::Error`), which is why `Error` itself does not implement
/// `std::error::Error`. Conversions keep the retry policy of [`NonRetriable`],
/// [`RetryAfter`] and [`StepError`].
pub struct Error {
    /// Boxed: an `Error` stays two words and a policy wide in `Result`s.
    info: Box<ErrorInfo>,
    retry: Retry,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The serializable part of an error, as it is journaled and sent on the
/// wire (Inngest's `{name, message, stack}` shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub name: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The other fields the error came with (an SDK's `code`, `data`,
    /// `cause`, ...), journaled and handed back as they were sent.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ErrorInfo {
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorInfo {
            name: name.into(),
            message: message.into(),
            stack: None,
            extra: Default::default(),
        }
    }
}

impl ErrorInfo {
    /// Read a serialized error tolerantly: `{name, message, stack?, ..}`
    /// (other fields kept in `extra`), a message under `error`, or any
    /// other value as the message.
    pub fn from_value(v: &serde_json::Value) -> ErrorInfo {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let (message, from) = match (s("message"), s("error")) {
            (Some(m), _) => (m, "message"),
            (None, Some(e)) => (e, "error"),
            (None, None) => (v.to_string(), ""),
        };
        let mut extra = v.as_object().cloned().unwrap_or_default();
        // The fields of their own: in `extra` too, they would be
        // serialized twice. A `stack` sent as null stays, as sent.
        for k in ["name", "message", from] {
            extra.remove(k);
        }
        if s("stack").is_some() {
            extra.remove("stack");
        }
        ErrorInfo {
            name: s("name").unwrap_or_else(|| "Error".into()),
            message,
            stack: s("stack"),
            extra,
        }
    }
}

impl fmt::Display for ErrorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl Error {
    /// A retriable error with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error {
            info: Box::new(ErrorInfo::new("Error", message.to_string())),
            retry: Retry::Backoff,
            source: None,
        }
    }

    /// An error that is never retried.
    pub fn non_retriable(message: impl fmt::Display) -> Self {
        Error::msg(message).with_retry(Retry::Never)
    }

    /// An error retried no earlier than `after`.
    pub fn retry_after(after: Duration, message: impl fmt::Display) -> Self {
        Error::msg(message).with_retry(Retry::After(after))
    }

    pub(crate) fn from_info(info: ErrorInfo, retry: Retry) -> Self {
        Error {
            info: Box::new(info),
            retry,
            source: None,
        }
    }

    /// Replace the retry policy.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Replace the error's name (its class, in Inngest's terms).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.info.name = name.into();
        self
    }

    pub fn retry(&self) -> Retry {
        self.retry
    }

    pub fn is_retriable(&self) -> bool {
        self.retry != Retry::Never
    }

    pub fn info(&self) -> &ErrorInfo {
        &self.info
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn message(&self) -> &str {
        &self.info.message
    }

    /// The original error, if this one was converted from a std error.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("name", &self.info.name)
            .field("message", &self.info.message)
            .field("retry", &self.retry)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.info.message)
    }
}

impl<E> From<E> for Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(err: E) -> Self {
        let any: &dyn Any = &err;
        if let Some(step) = any.downcast_ref::<StepError>() {
            // The step already spent its retries: retrying the function
            // would only replay the same journaled failure.
            return Error::from_info(step.error.clone(), Retry::Never);
        }
        if let Some(nr) = any.downcast_ref::<NonRetriable>() {
            return Error::from_info(
                ErrorInfo::new("NonRetriableError", nr.0.clone()),
                Retry::Never,
            );
        }
        if let Some(ra) = any.downcast_ref::<RetryAfter>() {
            return Error::from_info(
                ErrorInfo::new("RetryAfterError", ra.message.clone()),
                Retry::After(ra.after),
            );
        }
        let name = short_type_name::<E>();
        Error {
            info: Box::new(ErrorInfo::new(name, err.to_string())),
            retry: Retry::Backoff,
            source: Some(Box::new(err)),
        }
    }
}

fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// An error that must not be retried: `return Err(NonRetriable::new("bad input"))?`.
#[derive(Debug, Clone)]
pub struct NonRetriable(pub String);

impl NonRetriable {
    pub fn new(message: impl fmt::Display) -> Self {
        NonRetriable(message.to_string())
    }
}

impl fmt::Display for NonRetriable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NonRetriable {}

/// An error to retry no earlier than `after` (a rate limit's `Retry-After`).
#[derive(Debug, Clone)]
pub struct RetryAfter {
    pub after: Duration,
    pub message: String,
}

impl RetryAfter {
    pub fn new(after: Duration, message: impl fmt::Display) -> Self {
        RetryAfter {
            after,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (retry after {:?})", self.message, self.after)
    }
}

impl std::error::Error for RetryAfter {}

/// What `step!(..)` returns as `Err`: the step failed for good, because its
/// retries are spent or its body returned a non-retriable error. The failure
/// is journaled, so replay hands back the same `StepError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// The readable step ID (`fetch-products[3]`).
    pub step: String,
    /// The last attempt's error.
    pub error: ErrorInfo,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}` failed: {}", self.step, self.error.message)
    }
}

impl std::error::Error for StepError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_keeps_the_fields_it_was_sent_with() {
        let sent = serde_json::json!({
            "name": "StepError", "message": "card declined", "stack": "at charge()",
            "code": "step_errored", "data": {"card": "4242"}, "__serialized": true
        });
        let e = ErrorInfo::from_value(&sent);
        assert_eq!(
            (e.name.as_str(), e.message.as_str()),
            ("StepError", "card declined")
        );
        assert_eq!(e.stack.as_deref(), Some("at charge()"));
        assert_eq!(e.extra["code"], "step_errored");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            sent,
            "given back as sent"
        );
        let back: ErrorInfo = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(back, e, "and read back from the journal the same");
        let null_stack =
            serde_json::json!({"name": "E", "message": "m", "stack": null, "code": "c"});
        assert_eq!(
            serde_json::to_value(ErrorInfo::from_value(&null_stack)).unwrap(),
            null_stack,
            "a null stack is given back as sent"
        );
        let odd = ErrorInfo::from_value(&serde_json::json!({"error": "boom", "name": 7}));
        assert_eq!((odd.name.as_str(), odd.message.as_str()), ("Error", "boom"));
        assert!(odd.extra.is_empty(), "{odd:?}");
        assert_eq!(
            serde_json::to_value(ErrorInfo::new("E", "m")).unwrap(),
            serde_json::json!({"name": "E", "message": "m"})
        );
    }

    #[test]
    fn conversions_keep_retry_policy() {
        let e: Error = std::io::Error::other("disk").into();
        assert_eq!(e.retry(), Retry::Backoff);
        assert_eq!(e.name(), "Error");
        let e: Error = NonRetriable::new("bad").into();
        assert_eq!(e.retry(), Retry::Never);
        let e: Error = RetryAfter::new(Duration::from_secs(3), "slow down").into();
        assert_eq!(e.retry(), Retry::After(Duration::from_secs(3)));
        let e: Error = StepError {
            step: "a".into(),
            error: ErrorInfo::new("Error", "boom"),
        }
        .into();
        assert!(!e.is_retriable());
        assert_eq!(e.message(), "boom");
    }
}
