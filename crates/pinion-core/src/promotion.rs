//! The promote rule: whether a promotion moves a pin, and if not, why. A
//! pure function of the pin as it is and of what was asked, so the store
//! applies it inside its transaction and the rule is tested here alone.

use std::time::Duration;

use crate::{Digest, Soak};

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
    /// Whether the pin is held.
    pub held: bool,
}

/// What was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask<'a> {
    pub digest: &'a Digest,
    pub expect: &'a Expectation,
    pub build_sequence: Option<i64>,
    /// Overrides the build-sequence guard, and the hold when
    /// `may_override_hold` (never the expectation).
    pub force: bool,
    /// Whether the caller may force past a hold or the soak (scope `admin`).
    pub may_override_hold: bool,
    /// What the soak rule found on the source environment.
    pub soak: Soak,
}

/// The rule's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromoteDecision {
    /// The pin already points at the digest: nothing to write, whatever the
    /// guards would say, so a retried promotion is idempotent.
    Unchanged,
    /// The pin is not where the caller expected it.
    Conflict,
    /// The pin is held; forcing past it needs scope `admin`.
    Held,
    /// The digest has not soaked long enough on the source environment;
    /// forcing past it needs scope `admin`.
    SoakRequired {
        soaked: Duration,
        required: Duration,
    },
    /// The pin was last moved by a newer build.
    StaleBuild { newest: i64 },
    /// Move the pin; it keeps this build sequence (the newest it has seen).
    /// `forced`: a guard (the hold, the build order) would have refused it
    /// and `force` overrode it; history records that.
    Move {
        build_sequence: Option<i64>,
        forced: bool,
    },
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
    let held = current.is_some_and(|pin| pin.held);
    if held && !(ask.force && ask.may_override_hold) {
        return PromoteDecision::Held;
    }
    let admin_forces = ask.force && ask.may_override_hold;
    let short = matches!(ask.soak, Soak::Short { .. } | Soak::Unchecked { .. });
    match (ask.soak, admin_forces) {
        (Soak::Short { soaked, required }, false) => {
            return PromoteDecision::SoakRequired { soaked, required };
        }
        (Soak::Unchecked { required }, false) => {
            return PromoteDecision::SoakRequired {
                soaked: Duration::ZERO,
                required,
            };
        }
        _ => {}
    }
    let newest = current.and_then(|pin| pin.build_sequence);
    let older =
        matches!((newest, ask.build_sequence), (Some(newest), Some(sequence)) if sequence < newest);
    if let (true, Some(newest), false) = (older, newest, ask.force) {
        return PromoteDecision::StaleBuild { newest };
    }
    PromoteDecision::Move {
        build_sequence: match (newest, ask.build_sequence) {
            (Some(old), Some(new)) => Some(old.max(new)),
            (old, new) => new.or(old),
        },
        forced: held || older || short,
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
            may_override_hold: false,
            soak: Soak::NotRequired,
        }
    }

    #[test]
    fn the_same_digest_is_unchanged_whatever_the_guards_say() {
        let a = digest(1);
        let pin = PinState {
            digest: &a,
            revision: 7,
            build_sequence: Some(10),
            held: false,
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
            held: false,
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
                    forced: false,
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
            held: false,
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
                build_sequence: Some(10),
                forced: true,
            }
        );
        assert_eq!(
            decide_promotion(Some(pin), ask(&b, &any, Some(11))),
            PromoteDecision::Move {
                build_sequence: Some(11),
                forced: false,
            }
        );
        assert_eq!(
            decide_promotion(Some(pin), ask(&b, &any, None)),
            PromoteDecision::Move {
                build_sequence: Some(10),
                forced: false,
            }
        );
        assert_eq!(
            decide_promotion(None, ask(&b, &any, Some(3))),
            PromoteDecision::Move {
                build_sequence: Some(3),
                forced: false,
            }
        );
    }

    #[test]
    fn a_hold_refuses_unless_an_admin_forces_and_then_history_says_forced() {
        let (a, b) = (digest(1), digest(2));
        let pin = PinState {
            digest: &a,
            revision: 1,
            build_sequence: None,
            held: true,
        };
        let any = Expectation::Any;
        let plain = ask(&b, &any, None);
        assert_eq!(decide_promotion(Some(pin), plain), PromoteDecision::Held);
        let forced_without_admin = Ask {
            force: true,
            ..plain
        };
        assert_eq!(
            decide_promotion(Some(pin), forced_without_admin),
            PromoteDecision::Held
        );
        let admin_without_force = Ask {
            may_override_hold: true,
            ..plain
        };
        assert_eq!(
            decide_promotion(Some(pin), admin_without_force),
            PromoteDecision::Held
        );
        let forced = Ask {
            force: true,
            may_override_hold: true,
            ..plain
        };
        assert_eq!(
            decide_promotion(Some(pin), forced),
            PromoteDecision::Move {
                build_sequence: None,
                forced: true,
            }
        );
        // The digest it already has: nothing moves, so nothing is refused.
        assert_eq!(
            decide_promotion(Some(pin), ask(&a, &any, None)),
            PromoteDecision::Unchanged
        );
        // A stale expectation is a conflict first: the caller's belief is
        // wrong whatever the hold says.
        let wrong = Expectation::Digest(digest(9));
        assert_eq!(
            decide_promotion(Some(pin), ask(&b, &wrong, None)),
            PromoteDecision::Conflict
        );
    }

    #[test]
    fn an_unsoaked_digest_is_refused_unless_an_admin_forces_it() {
        let (a, b) = (digest(1), digest(2));
        let pin = PinState {
            digest: &a,
            revision: 1,
            build_sequence: None,
            held: false,
        };
        let any = Expectation::Any;
        let short = Soak::Short {
            soaked: Duration::from_secs(60),
            required: Duration::from_secs(3600),
        };
        let plain = Ask {
            soak: short,
            ..ask(&b, &any, None)
        };
        assert_eq!(
            decide_promotion(Some(pin), plain),
            PromoteDecision::SoakRequired {
                soaked: Duration::from_secs(60),
                required: Duration::from_secs(3600)
            }
        );
        // A new pin is no exception.
        assert!(matches!(
            decide_promotion(None, plain),
            PromoteDecision::SoakRequired { .. }
        ));
        let promote_token_forcing = Ask {
            force: true,
            ..plain
        };
        assert!(matches!(
            decide_promotion(Some(pin), promote_token_forcing),
            PromoteDecision::SoakRequired { .. }
        ));
        let admin_forcing = Ask {
            force: true,
            may_override_hold: true,
            ..plain
        };
        assert_eq!(
            decide_promotion(Some(pin), admin_forcing),
            PromoteDecision::Move {
                build_sequence: None,
                forced: true
            }
        );
        let met = Ask {
            soak: Soak::Met {
                soaked: Duration::from_secs(4000),
                required: Duration::from_secs(3600),
            },
            ..ask(&b, &any, None)
        };
        assert_eq!(
            decide_promotion(Some(pin), met),
            PromoteDecision::Move {
                build_sequence: None,
                forced: false
            }
        );
        // Already there: nothing moves, nothing to soak.
        assert_eq!(
            decide_promotion(
                Some(pin),
                Ask {
                    soak: short,
                    ..ask(&a, &any, None)
                }
            ),
            PromoteDecision::Unchanged
        );
    }
}
