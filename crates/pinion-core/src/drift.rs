//! Drift: whether a pin still names what its repository's tag points at.
//! The rows of a drift report are made here, once, for the server's
//! watcher and the CLI's `pinion drift` alike; each edge renders them.

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
    /// The check could not be made: the lookup failed, has not run yet, or
    /// the pin itself could not be read. Never "fine".
    Error,
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
            DriftStatus::Error => "error",
        }
    }
}

/// What a registry lookup of a repository's tag said: the tag's digest
/// (`None`: no such tag), or why it could not say.
pub type TagAnswer = Result<Option<Digest>, String>;

/// One pin of a template, as its reader got it: the digest, or why the
/// digest it was given is not one.
#[derive(Debug, Clone, Copy)]
pub struct PinnedDigest<'a, K> {
    /// Whatever the caller identifies the pin by (its region, its record).
    pub key: K,
    pub digest: Result<&'a Digest, &'a str>,
}

/// One row of a drift report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftRow<'a, K> {
    /// The pin's key; `None` for the one row of a template with no pin.
    pub key: Option<K>,
    pub pinned: Option<&'a Digest>,
    pub tag_digest: Option<&'a Digest>,
    pub status: DriftStatus,
    /// Why the status is `error`.
    pub error: Option<String>,
}

/// The rows of one template with a repository: one per pin, or a single
/// `unpinned` row when it has none. `tag` is `None` when no lookup has
/// been made yet. A pin whose digest could not be read is an error row,
/// never "unpinned".
pub fn template_rows<'a, K: Clone>(
    pins: &[PinnedDigest<'a, K>],
    tag: Option<&'a TagAnswer>,
) -> Vec<DriftRow<'a, K>> {
    let row = |key: Option<K>, pinned: Option<Result<&'a Digest, &'a str>>| {
        let (status, tag_digest, error) = match (pinned, tag) {
            (Some(Err(reason)), _) => (
                DriftStatus::Error,
                None,
                Some(format!("the pinned digest cannot be read: {reason}")),
            ),
            (_, None) => (DriftStatus::Error, None, Some("not checked yet".to_owned())),
            (_, Some(Err(reason))) => (DriftStatus::Error, None, Some(reason.clone())),
            (pinned, Some(Ok(tag))) => (
                DriftStatus::classify(pinned.and_then(Result::ok), tag.as_ref()),
                tag.as_ref(),
                None,
            ),
        };
        DriftRow {
            key,
            pinned: pinned.and_then(Result::ok),
            tag_digest,
            status,
            error,
        }
    };
    if pins.is_empty() {
        return vec![row(None, None)];
    }
    pins.iter()
        .map(|pin| row(Some(pin.key.clone()), Some(pin.digest)))
        .collect()
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

    #[test]
    fn rows_are_one_per_pin_or_one_unpinned_and_errors_are_never_fine() {
        let a = Digest::from_sha256(&[1; 32]);
        let b = Digest::from_sha256(&[2; 32]);
        let moved: TagAnswer = Ok(Some(b.clone()));
        let pins = [
            PinnedDigest {
                key: "global",
                digest: Ok(&a),
            },
            PinnedDigest {
                key: "eu",
                digest: Ok(&b),
            },
            PinnedDigest {
                key: "us",
                digest: Err("`sha256:ABC` is not a digest"),
            },
        ];
        let rows = template_rows(&pins, Some(&moved));
        let statuses: Vec<_> = rows.iter().map(|row| (row.key, row.status)).collect();
        assert_eq!(
            statuses,
            [
                (Some("global"), DriftStatus::Stale),
                (Some("eu"), DriftStatus::Current),
                (Some("us"), DriftStatus::Error),
            ]
        );
        assert!(rows[2].error.as_deref().unwrap().contains("cannot be read"));

        let none: [PinnedDigest<'_, &str>; 0] = [];
        let unpinned = template_rows(&none, Some(&moved));
        assert_eq!(unpinned.len(), 1);
        assert_eq!(unpinned[0].status, DriftStatus::Unpinned);
        assert_eq!(unpinned[0].key, None);

        let failed: TagAnswer = Err("registry down".into());
        for tag in [Some(&failed), None] {
            let rows = template_rows(&pins[..1], tag);
            assert_eq!(rows[0].status, DriftStatus::Error);
            assert!(rows[0].error.is_some());
            assert_eq!(template_rows(&none, tag)[0].status, DriftStatus::Error);
        }
    }
}
