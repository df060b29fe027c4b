//! Events, in Inngest's shape: `{name, data, id, ts, v}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An event: what triggers a durable fn, and what `wait_for_event!` resumes
/// with. `T` is the type of `data`; untyped events use `Event<Value>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<T = Value> {
    /// The event name, e.g. `shopify/import.requested`.
    pub name: String,
    /// The payload.
    pub data: T,
    /// The event ID. A sender may set it as an idempotency key; the engine
    /// fills in one otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Milliseconds since the Unix epoch; the engine fills it in when 0.
    #[serde(default)]
    pub ts: i64,
    /// An optional schema version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<String>,
}

impl<T> Event<T> {
    /// A new event with no ID and no timestamp (the engine assigns both).
    pub fn new(name: impl Into<String>, data: T) -> Self {
        Event {
            name: name.into(),
            data,
            id: String::new(),
            ts: 0,
            v: None,
        }
    }

    /// Set the event ID (an idempotency key: a second event with the same ID
    /// starts no runs).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

impl<T: Serialize> Event<T> {
    /// The event as untyped JSON.
    pub fn to_value(&self) -> serde_json::Result<Value> {
        serde_json::to_value(self)
    }
}
