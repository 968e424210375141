//! The promote rule: whether a promotion moves a pin, and if not, why. A
//! pure function of the pin as it is and of what was asked, so the store
//! applies it inside its transaction and the rule is tested here alone.

use crate::Digest;

/// What the caller believes the pin is at before it moves (compare-and-swap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Expectation {
    /// No belief: move whatever the pin is at.
    #[default]
    Any,
    /// The pin must be at this digest.
    Digest(Digest),
    /// The pin must be at this revision (`If-Match`).
    Revision(i64),
}

/// The pin as it is, as far as the rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinState<'a> {
    pub digest: &'a Digest,
    pub revision: i64,
    /// The newest build sequence that has promoted this pin, if any sent one.
    pub build_sequence: Option<i64>,
}

/// What was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask<'a> {
    pub digest: &'a Digest,
    pub expect: &'a Expectation,
    pub build_sequence: Option<i64>,
    /// Overrides the build-sequence guard (never the expectation).
    pub force: bool,
}

/// The rule's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromoteDecision {
    /// The pin already points at the digest: nothing to write, whatever the
    /// guards would say, so a retried promotion is idempotent.
    Unchanged,
    /// The pin is not where the caller expected it.
    Conflict,
    /// The pin was last moved by a newer build.
    StaleBuild { newest: i64 },
    /// Move the pin; it keeps this build sequence (the newest it has seen).
    Move { build_sequence: Option<i64> },
}

/// Decides a promotion of `ask` onto `current` (`None`: no pin yet).
pub fn decide_promotion(current: Option<PinState<'_>>, ask: Ask<'_>) -> PromoteDecision {
    if current.is_some_and(|pin| pin.digest == ask.digest) {
        return PromoteDecision::Unchanged;
    }
    let expectation_met = match (ask.expect, current) {
        (Expectation::Any, _) => true,
        (Expectation::Digest(expected), Some(pin)) => pin.digest == expected,
        (Expectation::Revision(expected), Some(pin)) => pin.revision == *expected,
        (_, None) => false,
    };
    if !expectation_met {
        return PromoteDecision::Conflict;
    }
    let newest = current.and_then(|pin| pin.build_sequence);
    if let (Some(newest), Some(sequence)) = (newest, ask.build_sequence) {
        if sequence < newest && !ask.force {
            return PromoteDecision::StaleBuild { newest };
        }
    }
    PromoteDecision::Move {
        build_sequence: match (newest, ask.build_sequence) {
            (Some(old), Some(new)) => Some(old.max(new)),
            (old, new) => new.or(old),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::from_sha256(&[n; 32])
    }

    fn ask<'a>(digest: &'a Digest, expect: &'a Expectation, sequence: Option<i64>) -> Ask<'a> {
        Ask {
            digest,
            expect,
            build_sequence: sequence,
            force: false,
        }
    }

    #[test]
    fn the_same_digest_is_unchanged_whatever_the_guards_say() {
        let a = digest(1);
        let pin = PinState {
            digest: &a,
            revision: 7,
            build_sequence: Some(10),
        };
        let wrong = Expectation::Digest(digest(9));
        assert_eq!(
            decide_promotion(Some(pin), ask(&a, &wrong, Some(1))),
            PromoteDecision::Unchanged
        );
    }

    #[test]
    fn compare_and_swap_needs_the_pin_where_expected() {
        let (a, b) = (digest(1), digest(2));
        let pin = PinState {
            digest: &a,
            revision: 7,
            build_sequence: None,
        };
        let cases = [
            (Expectation::Any, Some(pin), true),
            (Expectation::Any, None, true),
            (Expectation::Digest(a.clone()), Some(pin), true),
            (Expectation::Digest(b.clone()), Some(pin), false),
            (Expectation::Digest(a.clone()), None, false),
            (Expectation::Revision(7), Some(pin), true),
            (Expectation::Revision(6), Some(pin), false),
            (Expectation::Revision(7), None, false),
        ];
        for (expect, current, moves) in cases {
            let decision = decide_promotion(current, ask(&b, &expect, None));
            let expected = if moves {
                PromoteDecision::Move {
                    build_sequence: None,
                }
            } else {
                PromoteDecision::Conflict
            };
            assert_eq!(decision, expected, "{expect:?} onto {current:?}");
        }
    }

    #[test]
    fn an_older_build_is_refused_unless_forced_and_the_pin_keeps_the_newest() {
        let (a, b) = (digest(1), digest(2));
        let pin = PinState {
            digest: &a,
            revision: 1,
            build_sequence: Some(10),
        };
        let any = Expectation::Any;
        assert_eq!(
            decide_promotion(Some(pin), ask(&b, &any, Some(9))),
            PromoteDecision::StaleBuild { newest: 10 }
        );
        let forced = Ask {
            force: true,
            ..ask(&b, &any, Some(9))
        };
        assert_eq!(
            decide_promotion(Some(pin), forced),
            PromoteDecision::Move {
                build_sequence: Some(10)
            }
        );
        assert_eq!(
            decide_promotion(Some(pin), ask(&b, &any, Some(11))),
            PromoteDecision::Move {
                build_sequence: Some(11)
            }
        );
        assert_eq!(
            decide_promotion(Some(pin), ask(&b, &any, None)),
            PromoteDecision::Move {
                build_sequence: Some(10)
            }
        );
        assert_eq!(
            decide_promotion(None, ask(&b, &any, Some(3))),
            PromoteDecision::Move {
                build_sequence: Some(3)
            }
        );
    }
}
