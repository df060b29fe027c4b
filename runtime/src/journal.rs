//! The journal: every step's memoized outcome, by step ID, and the order in
//! which the outcomes were recorded (the Inngest spec's `ctx.stack`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorInfo;
use crate::step_id::StepId;

/// The largest step output journaled (Inngest's: 4 MiB).
pub const DEFAULT_MAX_STEP_OUTPUT: usize = 4 << 20;

/// The error name of a step whose output is over the limit.
pub const OUTPUT_TOO_LARGE: &str = "StepOutputTooLarge";

/// The size of a value's JSON, up to `limit + 1` bytes (it stops counting
/// there): `None` when it fits in `limit`, else `Some(at least)`.
pub fn over_limit(v: &Value, limit: usize) -> Option<usize> {
    struct Count {
        n: usize,
        limit: usize,
    }
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.n += b.len();
            if self.n > self.limit {
                // Stop serializing: the answer is known.
                return Err(std::io::Error::other("over"));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count { n: 0, limit };
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => None,
        Err(_) => Some(c.n),
    }
}

/// The error journaled for a step whose output is over `limit` bytes: the
/// step fails without a retry (the same code would return the same).
pub fn output_too_large(step: &str, at_least: usize, limit: usize) -> ErrorInfo {
    ErrorInfo::new(
        OUTPUT_TOO_LARGE,
        format!(
            "durafn: the output of step `{step}` is {} or more, over the limit of {}: return less from the step (an ID, a count, a page) and keep the rest where the step put it",
            bytes(at_least),
            bytes(limit)
        ),
    )
}

/// A size as people read it: `800 bytes`, `12.5 KiB`, `4.0 MiB`.
fn bytes(n: usize) -> String {
    match n {
        n if n < 1024 => format!("{n} bytes"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
    }
}

/// A memoized outcome, in the wire shape of the Inngest protocol's `steps`
/// map: `{"data": …}`, `{"error": …}`, or `null` (a finished sleep, a wait
/// that timed out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    Data { data: Value },
    Error { error: ErrorInfo },
    Null(()),
}

impl Outcome {
    pub fn data(v: Value) -> Outcome {
        Outcome::Data { data: v }
    }
    pub fn error(e: ErrorInfo) -> Outcome {
        Outcome::Error { error: e }
    }
    pub fn null() -> Outcome {
        Outcome::Null(())
    }
}

/// Outcomes by step ID plus their completion order.
///
/// A journal received over the wire is keyed by hashed step IDs (the SHA-1
/// hex the Inngest protocol uses): [`Journal::hashed`]. Lookups by readable
/// ID then go through the hash.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Journal {
    entries: HashMap<StepId, Outcome>,
    order: Vec<StepId>,
    hashed: bool,
}

impl Journal {
    pub fn new() -> Journal {
        Journal::default()
    }

    /// An empty journal keyed by hashed step IDs.
    pub fn hashed() -> Journal {
        Journal {
            hashed: true,
            ..Journal::default()
        }
    }

    /// Whether the keys are hashed step IDs.
    pub fn is_hashed(&self) -> bool {
        self.hashed
    }

    /// The key under which `id` is journaled: the readable ID, or its hash.
    pub fn key_of(&self, id: &StepId) -> StepId {
        if self.hashed {
            StepId::from_readable(id.hashed())
        } else {
            id.clone()
        }
    }

    /// Look up a step by its readable ID (through the hash if hashed).
    pub fn lookup(&self, id: &StepId) -> Option<&Outcome> {
        if self.hashed {
            self.entries.get(&self.key_of(id))
        } else {
            self.entries.get(id)
        }
    }

    /// Record an outcome. A second outcome for the same ID replaces the
    /// first without changing the order (it only happens for a step whose
    /// journal write was retried).
    pub fn insert(&mut self, id: StepId, outcome: Outcome) {
        if self.entries.insert(id.clone(), outcome).is_none() {
            self.order.push(id);
        }
    }

    pub fn get(&self, id: &StepId) -> Option<&Outcome> {
        self.entries.get(id)
    }

    pub fn contains(&self, id: &StepId) -> bool {
        self.entries.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Step IDs in completion order.
    pub fn order(&self) -> &[StepId] {
        &self.order
    }

    /// `(id, outcome)` in completion order.
    pub fn iter(&self) -> impl Iterator<Item = (&StepId, &Outcome)> {
        self.order.iter().map(move |id| (id, &self.entries[id]))
    }

    /// The readable IDs in order, for tests and traces.
    pub fn ids(&self) -> Vec<String> {
        self.order.iter().map(|s| s.as_str().to_string()).collect()
    }
}

impl FromIterator<(StepId, Outcome)> for Journal {
    fn from_iter<I: IntoIterator<Item = (StepId, Outcome)>>(iter: I) -> Self {
        let mut j = Journal::new();
        for (id, o) in iter {
            j.insert(id, o);
        }
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcome_wire_shape() {
        assert_eq!(
            serde_json::to_value(Outcome::data(json!(1))).unwrap(),
            json!({"data": 1})
        );
        assert_eq!(serde_json::to_value(Outcome::null()).unwrap(), Value::Null);
        let o: Outcome =
            serde_json::from_value(json!({"error": {"name": "E", "message": "m"}})).unwrap();
        assert_eq!(o, Outcome::error(ErrorInfo::new("E", "m")));
        let o: Outcome = serde_json::from_value(Value::Null).unwrap();
        assert_eq!(o, Outcome::null());
    }

    #[test]
    fn order_is_kept() {
        let mut j = Journal::new();
        j.insert("b".into(), Outcome::null());
        j.insert("a".into(), Outcome::null());
        j.insert("b".into(), Outcome::data(json!(2)));
        assert_eq!(j.ids(), vec!["b", "a"]);
        assert_eq!(j.get(&"b".into()), Some(&Outcome::data(json!(2))));
    }
}
