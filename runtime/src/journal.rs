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

/// The most a run's journal holds, all step outputs and errors together
/// (Inngest's: 32 MiB).
pub const DEFAULT_MAX_JOURNAL: usize = 32 << 20;

/// The error name of a step whose output would take the run's journal over
/// its limit.
pub const JOURNAL_TOO_LARGE: &str = "JournalTooLarge";

/// How much a run may journal: each step's output, and all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The largest step output ([`DEFAULT_MAX_STEP_OUTPUT`]).
    pub step_output: usize,
    /// The largest journal ([`DEFAULT_MAX_JOURNAL`]).
    pub journal: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            step_output: DEFAULT_MAX_STEP_OUTPUT,
            journal: DEFAULT_MAX_JOURNAL,
        }
    }
}

impl Bounds {
    /// The error of a new step output of `value` in a journal holding
    /// `journaled` bytes, or its size when it fits both bounds.
    pub fn admit(&self, step: &str, value: &Value, journaled: usize) -> Result<usize, ErrorInfo> {
        match json_size(value, self.step_output) {
            Err(at_least) => Err(output_too_large(step, at_least, self.step_output)),
            Ok(size) if journaled.saturating_add(size) > self.journal => {
                Err(journal_too_large(step, size, journaled, self.journal))
            }
            Ok(size) => Ok(size),
        }
    }
}

/// The size of a value's JSON when it is at most `limit` bytes, else
/// `Err(at least)` (it stops counting past the limit).
pub fn json_size<T: Serialize + ?Sized>(v: &T, limit: usize) -> Result<usize, usize> {
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
        Ok(()) => Ok(c.n),
        Err(_) => Err(c.n),
    }
}

/// The error journaled for a step whose output would take the journal of
/// its run over `limit`: the step fails without a retry.
pub fn journal_too_large(step: &str, size: usize, journaled: usize, limit: usize) -> ErrorInfo {
    ErrorInfo::new(
        JOURNAL_TOO_LARGE,
        format!(
            "durafn: the output of step `{step}` ({}) would take the run's journal from {} over its limit of {}: return less from the steps (IDs, counts, pages) and keep the data where the steps put it, or split the work across runs (`invoke!`, `send_event!`)",
            bytes(size),
            bytes(journaled),
            bytes(limit)
        ),
    )
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

    /// The size of the data or the error as JSON (what the journal holds).
    pub fn size(&self) -> usize {
        let n = match self {
            Outcome::Data { data } => json_size(data, usize::MAX),
            Outcome::Error { error } => json_size(error, usize::MAX),
            Outcome::Null(()) => Ok(0),
        };
        n.unwrap_or_else(|n| n)
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
    /// The size of the outcomes' JSON (the data or the error).
    bytes: usize,
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
        let size = outcome.size();
        self.insert_sized(id, outcome, size);
    }

    /// [`Journal::insert`] of an outcome whose size is known already.
    pub fn insert_sized(&mut self, id: StepId, outcome: Outcome, size: usize) {
        self.bytes += size;
        match self.entries.insert(id.clone(), outcome) {
            None => self.order.push(id),
            Some(old) => self.bytes -= old.size().min(self.bytes),
        }
    }

    /// The size of the journal's outcomes: their data or error as JSON.
    pub fn bytes(&self) -> usize {
        self.bytes
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

    /// The IDs of the events journaled (the outcomes of waits: an object
    /// with a string `id` and `name` and a `data`), in order.
    pub fn event_ids(&self) -> Vec<String> {
        self.iter()
            .filter_map(|(_, o)| match o {
                Outcome::Data { data }
                    if data.get("name").is_some_and(Value::is_string)
                        && data.get("data").is_some() =>
                {
                    data.get("id")?.as_str().map(str::to_string)
                }
                _ => None,
            })
            .collect()
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
    fn bytes_count_data_and_errors_once_per_step() {
        let mut j = Journal::new();
        j.insert("a".into(), Outcome::data(json!("abc")));
        assert_eq!(j.bytes(), 5);
        j.insert("b".into(), Outcome::null());
        j.insert("c".into(), Outcome::error(ErrorInfo::new("E", "m")));
        let e = serde_json::to_string(&ErrorInfo::new("E", "m"))
            .unwrap()
            .len();
        assert_eq!(j.bytes(), 5 + e);
        j.insert("a".into(), Outcome::data(json!(1)));
        assert_eq!(j.bytes(), 1 + e, "a replaced outcome counts once");
        let b = Bounds {
            step_output: 10,
            journal: 20,
        };
        assert_eq!(b.admit("s", &json!("12345678"), 10), Ok(10));
        assert_eq!(
            b.admit("s", &json!("123456789"), 0).unwrap_err().name,
            OUTPUT_TOO_LARGE
        );
        assert_eq!(
            b.admit("s", &json!("12345678"), 11).unwrap_err().name,
            JOURNAL_TOO_LARGE
        );
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
