//! Step IDs: the readable form (`fetch-products[3]`) and the wire form (the
//! hex SHA-1 of the readable form, as the Inngest SDK spec requires).

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// A step's ID within one run: the literal from `step!("…")` followed by the
/// index of each enclosing loop iteration, outermost first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepId(String);

impl StepId {
    /// Build an ID from a site's literal and the current loop indices.
    pub fn new(base: &str, indices: &[u32]) -> StepId {
        if indices.is_empty() {
            return StepId(base.to_string());
        }
        let mut s = String::with_capacity(base.len() + indices.len() * 4);
        s.push_str(base);
        for i in indices {
            let _ = write!(s, "[{i}]");
        }
        StepId(s)
    }

    /// Wrap an already formatted readable ID.
    pub fn from_readable(s: impl Into<String>) -> StepId {
        StepId(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The literal part, without loop indices: `fetch-products[3]` → `fetch-products`.
    pub fn base(&self) -> &str {
        split_indices(&self.0).0
    }

    /// How many loop indices the ID carries.
    pub fn depth(&self) -> usize {
        split_indices(&self.0).1
    }

    /// The wire form: lowercase hex SHA-1 of the readable ID.
    pub fn hashed(&self) -> String {
        hash_id(&self.0)
    }
}

/// The hex SHA-1 of a readable step ID.
pub fn hash_id(readable: &str) -> String {
    let digest = Sha1::digest(readable.as_bytes());
    let mut out = String::with_capacity(40);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn split_indices(s: &str) -> (&str, usize) {
    let mut rest = s;
    let mut depth = 0;
    while let Some(stripped) = rest.strip_suffix(']') {
        let Some(open) = stripped.rfind('[') else {
            break;
        };
        if stripped[open + 1..].is_empty()
            || !stripped[open + 1..].bytes().all(|b| b.is_ascii_digit())
        {
            break;
        }
        rest = &stripped[..open];
        depth += 1;
    }
    (rest, depth)
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StepId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for StepId {
    fn from(s: &str) -> Self {
        StepId(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_ids() {
        assert_eq!(StepId::new("save", &[]).as_str(), "save");
        assert_eq!(
            StepId::new("fetch-products", &[3]).as_str(),
            "fetch-products[3]"
        );
        let id = StepId::new("cell", &[2, 1]);
        assert_eq!(id.as_str(), "cell[2][1]");
        assert_eq!(id.base(), "cell");
        assert_eq!(id.depth(), 2);
        assert_eq!(StepId::from("a[x]").base(), "a[x]");
    }

    #[test]
    fn wire_ids_are_sha1_hex() {
        assert_eq!(hash_id("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
