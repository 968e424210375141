//! Drift: whether a pin still names what its repository's tag points at.

use crate::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftStatus {
    /// The pin equals the tag.
    Current,
    /// The tag has moved; the pin has not.
    Stale,
    /// The repository has no such tag.
    TagMissing,
    /// The template has a repository but no pin.
    Unpinned,
}

impl DriftStatus {
    /// Compares a pin (if any) with the tag's digest (if the tag exists).
    pub fn classify(pinned: Option<&Digest>, tag: Option<&Digest>) -> DriftStatus {
        match (pinned, tag) {
            (None, _) => DriftStatus::Unpinned,
            (Some(_), None) => DriftStatus::TagMissing,
            (Some(pinned), Some(tag)) if pinned == tag => DriftStatus::Current,
            (Some(_), Some(_)) => DriftStatus::Stale,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DriftStatus::Current => "current",
            DriftStatus::Stale => "stale",
            DriftStatus::TagMissing => "tag_missing",
            DriftStatus::Unpinned => "unpinned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_case() {
        let a = Digest::from_sha256(&[1; 32]);
        let b = Digest::from_sha256(&[2; 32]);
        assert_eq!(
            DriftStatus::classify(Some(&a), Some(&a)),
            DriftStatus::Current
        );
        assert_eq!(
            DriftStatus::classify(Some(&a), Some(&b)),
            DriftStatus::Stale
        );
        assert_eq!(
            DriftStatus::classify(Some(&a), None),
            DriftStatus::TagMissing
        );
        assert_eq!(DriftStatus::classify(None, Some(&b)), DriftStatus::Unpinned);
        assert_eq!(DriftStatus::classify(None, None), DriftStatus::Unpinned);
        assert_eq!(DriftStatus::Stale.as_str(), "stale");
    }
}
