//! Provenance labels: where a value came from, and whether that origin is trusted.
//!
//! A [`Label`] is a set of [`Source`]s and an [`Integrity`] level. Labels only ever grow by
//! [`Label::join`] (union of sources, lowest integrity), so taint never washes off: no operation
//! in this module turns an untrusted label trusted or drops a source.

use std::collections::BTreeSet;
use std::fmt;

use crate::Error;

/// One origin of a value: `user`, `tool:<server>/<tool>`, `web:<host>`, `agent:<spiffe id>`,
/// `memory:<partition>`, or any other `<kind>:<detail>` / bare `<kind>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source(String);

impl Source {
    /// The source for values the user typed or approved.
    pub fn user() -> Self {
        Self("user".to_owned())
    }

    /// Parses a source: a lowercase kind (`[a-z][a-z0-9_-]*`), optionally followed by `:` and a
    /// non-empty detail without whitespace or control characters.
    pub fn new(text: &str) -> Result<Self, Error> {
        let invalid = |why: &str| Error::Label {
            source_text: text.to_owned(),
            reason: why.to_owned(),
        };
        let (kind, detail) = match text.split_once(':') {
            Some((kind, detail)) => (kind, Some(detail)),
            None => (text, None),
        };
        let mut chars = kind.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_lowercase()) {
            return Err(invalid("the kind must start with a lowercase letter"));
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
            return Err(invalid("the kind may hold only `a-z`, `0-9`, `_` and `-`"));
        }
        if let Some(detail) = detail {
            if detail.is_empty() {
                return Err(invalid("the detail after `:` is empty"));
            }
            if detail.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("the detail holds whitespace or control characters"));
            }
        }
        if text.len() > 512 {
            return Err(invalid("longer than 512 bytes"));
        }
        Ok(Self(text.to_owned()))
    }

    /// The part before the first `:` (`web` for `web:evil.example`).
    pub fn kind(&self) -> &str {
        self.0
            .split_once(':')
            .map_or(self.0.as_str(), |(kind, _)| kind)
    }

    /// The source as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Integrity of a value. Ordered `Untrusted < Trusted`; a join takes the minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Integrity {
    /// May carry attacker-controlled content (web pages, untrusted tools, other agents).
    Untrusted,
    /// Came from the user or a source the operator declared trusted.
    Trusted,
}

impl Integrity {
    /// `"trusted"` or `"untrusted"`, as written in records and certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Untrusted => "untrusted",
        }
    }
}

/// The provenance of a value: its sources and their combined integrity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label {
    sources: BTreeSet<Source>,
    integrity: Integrity,
}

impl Label {
    /// The neutral element of [`join`](Self::join): no sources, trusted.
    pub fn empty() -> Self {
        Self {
            sources: BTreeSet::new(),
            integrity: Integrity::Trusted,
        }
    }

    /// A label with one source and an explicit integrity.
    pub fn new(source: Source, integrity: Integrity) -> Self {
        Self {
            sources: BTreeSet::from([source]),
            integrity,
        }
    }

    /// `user`, trusted.
    pub fn user() -> Self {
        Self::new(Source::user(), Integrity::Trusted)
    }

    /// One untrusted source.
    pub fn untrusted(source: Source) -> Self {
        Self::new(source, Integrity::Untrusted)
    }

    /// Union of sources, lowest integrity. Commutative, associative, idempotent; never raises
    /// integrity.
    #[must_use]
    pub fn join(&self, other: &Self) -> Self {
        Self {
            sources: self.sources.union(&other.sources).cloned().collect(),
            integrity: self.integrity.min(other.integrity),
        }
    }

    /// The sources, sorted.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.sources.iter()
    }

    /// The integrity level.
    pub fn integrity(&self) -> Integrity {
        self.integrity
    }

    /// Whether the integrity is [`Integrity::Trusted`].
    pub fn is_trusted(&self) -> bool {
        self.integrity == Integrity::Trusted
    }

    /// The sources as strings, as in records and certificates.
    pub fn source_strings(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.0.clone()).collect()
    }
}

/// A value with its provenance (the articles' `pv()`).
///
/// There is deliberately no way to replace the label: only to join more provenance into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labeled<T> {
    value: T,
    label: Label,
}

impl<T> Labeled<T> {
    /// Attaches `label` to `value`.
    pub fn new(value: T, label: Label) -> Self {
        Self { value, label }
    }

    /// The value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The label.
    pub fn label(&self) -> &Label {
        &self.label
    }

    /// Derives a new value from this one; the result keeps this label.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Labeled<U> {
        Labeled {
            value: f(self.value),
            label: self.label,
        }
    }

    /// Joins more provenance into the label.
    #[must_use]
    pub fn joined(self, more: &Label) -> Self {
        Self {
            label: self.label.join(more),
            value: self.value,
        }
    }

    /// Splits into value and label.
    pub fn into_parts(self) -> (T, Label) {
        (self.value, self.label)
    }
}

/// The label of a tool's output: the tool's configured label joined with the labels of every
/// input (tainted in, tainted out).
pub fn propagate<'a>(configured: &Label, inputs: impl IntoIterator<Item = &'a Label>) -> Label {
    inputs
        .into_iter()
        .fold(configured.clone(), |acc, l| acc.join(l))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_label() -> impl Strategy<Value = Label> {
        let source = prop::sample::select(vec![
            "user",
            "web:evil.example",
            "web:docs.rs",
            "tool:market/query",
            "agent:spiffe://example.org/a",
            "memory:notes",
        ]);
        (prop::collection::btree_set(source, 0..4), any::<bool>()).prop_map(|(set, trusted)| {
            Label {
                sources: set.into_iter().map(|s| Source::new(s).unwrap()).collect(),
                integrity: if trusted {
                    Integrity::Trusted
                } else {
                    Integrity::Untrusted
                },
            }
        })
    }

    proptest! {
        #[test]
        fn join_is_commutative(a in arb_label(), b in arb_label()) {
            prop_assert_eq!(a.join(&b), b.join(&a));
        }

        #[test]
        fn join_is_associative(a in arb_label(), b in arb_label(), c in arb_label()) {
            prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
        }

        #[test]
        fn join_is_idempotent_with_identity(a in arb_label()) {
            prop_assert_eq!(a.join(&a), a.clone());
            prop_assert_eq!(a.join(&Label::empty()), a);
        }

        #[test]
        fn taint_is_monotone(a in arb_label(), b in arb_label()) {
            let j = a.join(&b);
            prop_assert!(j.integrity() <= a.integrity() && j.integrity() <= b.integrity());
            prop_assert!(a.sources().all(|s| j.sources().any(|t| t == s)));
            if !a.is_trusted() { prop_assert!(!j.is_trusted()); }
        }

        #[test]
        fn propagation_keeps_input_taint(c in arb_label(), ins in prop::collection::vec(arb_label(), 0..4)) {
            let out = propagate(&c, &ins);
            for i in &ins {
                prop_assert!(out.integrity() <= i.integrity());
                prop_assert!(i.sources().all(|s| out.sources().any(|t| t == s)));
            }
        }
    }

    #[test]
    fn source_syntax() {
        assert_eq!(Source::new("web:evil.example").unwrap().kind(), "web");
        assert_eq!(Source::new("user").unwrap().kind(), "user");
        assert!(Source::new("agent:spiffe://example.org/a").is_ok());
        for bad in ["", "Web:x", "web:", "web:a b", "1x", "we b"] {
            assert!(Source::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labeled_map_keeps_label() {
        let v = Labeled::new(3, Label::untrusted(Source::new("web:x").unwrap()));
        let w = v.map(|n| n * 2).joined(&Label::user());
        assert_eq!(*w.value(), 6);
        assert!(!w.label().is_trusted());
        assert_eq!(w.label().source_strings(), vec!["user", "web:x"]);
    }
}
