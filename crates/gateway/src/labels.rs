//! Provenance labels as the gateway carries them: a set of sources and an integrity level.
//!
//! Join is the union of sources and the lowest integrity: taint never washes off.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Integrity of a value: whether it may steer an agent's actions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Integrity {
    /// Came from a source that cannot carry instructions of a third party.
    #[default]
    Trusted,
    /// Came (possibly) from a third party: web pages, files, e-mails, tool output.
    Untrusted,
}

/// The provenance of one value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Label {
    /// Where the value came from (`user`, `tool:<server>/<tool>`, `web:<host>`, ...).
    pub sources: BTreeSet<String>,
    /// Its integrity.
    pub integrity: Integrity,
}

impl Label {
    /// A label with the given sources and integrity.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(
        sources: I,
        integrity: Integrity,
    ) -> Self {
        Self {
            sources: sources.into_iter().map(Into::into).collect(),
            integrity,
        }
    }

    /// Whether nothing is known about the value's origin.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty() && self.integrity == Integrity::Trusted
    }

    /// Union of sources, lowest integrity.
    pub fn join(&mut self, other: &Label) {
        self.sources.extend(other.sources.iter().cloned());
        self.integrity = self.integrity.max(other.integrity);
    }

    /// Whether the value is untrusted.
    pub fn is_untrusted(&self) -> bool {
        self.integrity == Integrity::Untrusted
    }

    /// The `_meta` form: `{"sources": [...], "integrity": "..."}`.
    pub fn to_meta(&self) -> Value {
        json!({"sources": self.sources, "integrity": self.integrity})
    }

    /// Reads a label a client declared: either `["src", ...]` (untrusted, since a client that
    /// bothers to declare a source declares it because it is foreign) or the `_meta` form.
    pub fn from_declared(value: &Value) -> Option<Label> {
        match value {
            Value::Array(items) => {
                let sources = items
                    .iter()
                    .map(|s| s.as_str().map(str::to_owned))
                    .collect::<Option<_>>()?;
                Some(Label {
                    sources,
                    integrity: Integrity::Untrusted,
                })
            }
            Value::Object(_) => serde_json::from_value(value.clone()).ok(),
            _ => None,
        }
    }
}
