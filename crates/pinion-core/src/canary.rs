//! Canary rings: which instances a pin's canary reaches, and whether the
//! canary's health says to abort it. Pure: the caller counts.

use sha2::{Digest as _, Sha256};

use crate::{Digest, InstanceId, Kind, ParseError, TemplateName};

/// A canary's share of the fleet: 1 to 99 percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u8);

impl Percent {
    pub fn new(percent: i64) -> Result<Percent, ParseError> {
        match u8::try_from(percent) {
            Ok(percent @ 1..=99) => Ok(Percent(percent)),
            _ => Err(ParseError::new(
                Kind::Percent,
                format!("{percent} is not a whole percentage from 1 to 99"),
            )),
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

/// Which of a pin's two digests an instance gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ring {
    Stable,
    Canary,
}

impl Ring {
    pub fn as_str(self) -> &'static str {
        match self {
            Ring::Stable => "stable",
            Ring::Canary => "canary",
        }
    }
}

/// An instance's bucket, 0 to 99: the first 8 bytes of
/// SHA-256(`<template>/<instance_id>`) as a big-endian integer, modulo 100.
/// The same on every replica and every call, so an instance stays in its
/// ring, and anyone can compute it.
pub fn bucket(template: &TemplateName, instance: &InstanceId) -> u8 {
    let mut hasher = Sha256::new();
    hasher.update(template.as_str().as_bytes());
    hasher.update(b"/");
    hasher.update(instance.as_str().as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    // Below 100: the cast cannot cut.
    (u64::from_be_bytes(first) % 100) as u8
}

/// The ring of an instance in `bucket` under a canary of `percent`.
pub fn ring(bucket: u8, percent: Percent) -> Ring {
    if bucket < percent.0 {
        Ring::Canary
    } else {
        Ring::Stable
    }
}

/// Live instances running one of a pin's digests, and how many of them
/// report `"healthy": false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCounts {
    pub instances: u64,
    pub unhealthy: u64,
}

impl HealthCounts {
    /// The unhealthy share in percent (0 with no instances).
    pub fn unhealthy_percent(&self) -> f64 {
        if self.instances == 0 {
            0.0
        } else {
            self.unhealthy as f64 * 100.0 / self.instances as f64
        }
    }
}

/// The health rule's settings: `--canary-max-unhealthy` and
/// `--canary-min-reports`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthRule {
    /// How many percentage points the canary's unhealthy share may exceed
    /// the stable ring's.
    pub max_unhealthy: f64,
    /// The fewest live canary instances the rule decides on.
    pub min_reports: u64,
}

/// What the health rule says about a canary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CanaryHealth {
    /// No rule is configured: nothing is decided.
    Unchecked,
    /// Too few live instances run the canary to decide: no data is not
    /// failure, and nothing is done.
    InsufficientReports { have: u64, need: u64 },
    /// Within the allowed excess.
    Healthy { excess: f64 },
    /// The canary's unhealthy share exceeds the stable ring's by more than
    /// allowed: abort it.
    Unhealthy { excess: f64 },
}

impl CanaryHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryHealth::Unchecked => "unchecked",
            CanaryHealth::InsufficientReports { .. } => "insufficient_reports",
            CanaryHealth::Healthy { .. } => "healthy",
            CanaryHealth::Unhealthy { .. } => "unhealthy",
        }
    }
}

/// Judges a canary: with at least `min_reports` live canary instances, it
/// is unhealthy when its unhealthy share exceeds `max_unhealthy` plus the
/// stable instances' share.
pub fn judge_canary(
    rule: Option<HealthRule>,
    canary: HealthCounts,
    stable: HealthCounts,
) -> CanaryHealth {
    let Some(rule) = rule else {
        return CanaryHealth::Unchecked;
    };
    if canary.instances < rule.min_reports.max(1) {
        return CanaryHealth::InsufficientReports {
            have: canary.instances,
            need: rule.min_reports.max(1),
        };
    }
    let excess = canary.unhealthy_percent() - stable.unhealthy_percent();
    if excess > rule.max_unhealthy {
        CanaryHealth::Unhealthy { excess }
    } else {
        CanaryHealth::Healthy { excess }
    }
}

/// The pin a canary is asked for, as the store read it.
#[derive(Debug, Clone, Copy)]
pub struct CanaryPin<'a> {
    pub digest: &'a Digest,
    pub held: bool,
    /// The canary it has: digest and percentage.
    pub canary: Option<(&'a Digest, Percent)>,
}

/// A request to start (or change) a pin's canary.
#[derive(Debug, Clone, Copy)]
pub struct CanaryAsk<'a> {
    pub digest: &'a Digest,
    pub percent: Percent,
    pub force: bool,
    /// Scope `admin`: may force past a hold.
    pub may_override_hold: bool,
}

/// The canary rule's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryDecision {
    /// There is no pin to put a canary on.
    NoPin,
    /// The pin already has this canary at this percentage: nothing to do.
    Unchanged,
    /// The pin is held; forcing past it needs scope `admin`.
    Held,
    /// The digest is the pin's own: a canary of it would change nothing.
    IsStable,
    /// Start the canary (or replace the one there, or change its share).
    Start { forced: bool },
}

/// Whether a canary may start on a pin, in the order the rules are checked:
/// a pin must exist; asking again for the canary it has is idempotent; a
/// hold refuses it unless an `admin` forces it; the stable digest is no
/// canary.
pub fn decide_canary(pin: Option<CanaryPin<'_>>, ask: CanaryAsk<'_>) -> CanaryDecision {
    let Some(pin) = pin else {
        return CanaryDecision::NoPin;
    };
    if pin.canary == Some((ask.digest, ask.percent)) {
        return CanaryDecision::Unchanged;
    }
    if pin.held && !(ask.force && ask.may_override_hold) {
        return CanaryDecision::Held;
    }
    if pin.digest == ask.digest {
        return CanaryDecision::IsStable;
    }
    CanaryDecision::Start { forced: pin.held }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_needs_a_pin_not_held_and_another_digest() {
        let (a, b) = (Digest::from_sha256(&[1; 32]), Digest::from_sha256(&[2; 32]));
        let ten = Percent::new(10).unwrap();
        let ask = CanaryAsk {
            digest: &b,
            percent: ten,
            force: false,
            may_override_hold: false,
        };
        let pin = CanaryPin {
            digest: &a,
            held: false,
            canary: None,
        };
        assert_eq!(decide_canary(None, ask), CanaryDecision::NoPin);
        assert_eq!(
            decide_canary(Some(pin), ask),
            CanaryDecision::Start { forced: false }
        );
        let same = CanaryPin {
            canary: Some((&b, ten)),
            ..pin
        };
        assert_eq!(decide_canary(Some(same), ask), CanaryDecision::Unchanged);
        let wider = CanaryAsk {
            percent: Percent::new(50).unwrap(),
            ..ask
        };
        assert_eq!(
            decide_canary(Some(same), wider),
            CanaryDecision::Start { forced: false }
        );
        let held = CanaryPin { held: true, ..pin };
        assert_eq!(decide_canary(Some(held), ask), CanaryDecision::Held);
        let promote_forcing = CanaryAsk { force: true, ..ask };
        assert_eq!(
            decide_canary(Some(held), promote_forcing),
            CanaryDecision::Held
        );
        let admin_forcing = CanaryAsk {
            force: true,
            may_override_hold: true,
            ..ask
        };
        assert_eq!(
            decide_canary(Some(held), admin_forcing),
            CanaryDecision::Start { forced: true }
        );
        let stable = CanaryAsk { digest: &a, ..ask };
        assert_eq!(decide_canary(Some(pin), stable), CanaryDecision::IsStable);
    }

    fn id(text: &str) -> InstanceId {
        InstanceId::parse(text).unwrap()
    }

    #[test]
    fn buckets_follow_the_contract_s_hash() {
        let codex = TemplateName::parse("codex").unwrap();
        // SHA-256("codex/ws-1") begins ef 1e 4b dd e2 14 73 22 (`printf
        // codex/ws-1 | sha256sum`): 0xef1e4bdde2147322 modulo 100.
        assert_eq!(
            u64::from(bucket(&codex, &id("ws-1"))),
            0xef1e_4bdd_e214_7322 % 100
        );
        // The template is part of the key.
        let hermes = TemplateName::parse("hermes").unwrap();
        let spread: std::collections::HashSet<u8> = (0..2000)
            .map(|n| bucket(&codex, &id(&format!("ws-{n}"))))
            .collect();
        assert_eq!(spread.len(), 100, "every bucket is reached");
        assert!(
            (0..50).any(|n| {
                let instance = id(&format!("ws-{n}"));
                bucket(&codex, &instance) != bucket(&hermes, &instance)
            }),
            "another template, other buckets"
        );
    }

    #[test]
    fn a_bucket_below_the_percentage_is_in_the_canary() {
        let ten = Percent::new(10).unwrap();
        assert_eq!(ring(0, ten), Ring::Canary);
        assert_eq!(ring(9, ten), Ring::Canary);
        assert_eq!(ring(10, ten), Ring::Stable);
        assert_eq!(ring(99, Percent::new(99).unwrap()), Ring::Stable);
        assert!(Percent::new(0).is_err());
        assert!(Percent::new(100).is_err());
        assert!(Percent::new(-1).is_err());
        assert!(Percent::new(1 << 40).is_err());
    }

    #[test]
    fn health_decides_only_with_enough_reports_and_against_the_stable_ring() {
        let rule = Some(HealthRule {
            max_unhealthy: 10.0,
            min_reports: 20,
        });
        let stable = HealthCounts {
            instances: 100,
            unhealthy: 5,
        };
        let all_sick_but_few = HealthCounts {
            instances: 19,
            unhealthy: 19,
        };
        assert_eq!(
            judge_canary(rule, all_sick_but_few, stable),
            CanaryHealth::InsufficientReports { have: 19, need: 20 }
        );
        // 20 % against 5 %: 15 points over, more than 10.
        let sick = HealthCounts {
            instances: 20,
            unhealthy: 4,
        };
        assert!(matches!(
            judge_canary(rule, sick, stable),
            CanaryHealth::Unhealthy { excess } if (excess - 15.0).abs() < 1e-9
        ));
        // 15 % against 5 %: exactly 10 points is not more than 10.
        let edge = HealthCounts {
            instances: 20,
            unhealthy: 3,
        };
        assert!(matches!(
            judge_canary(rule, edge, stable),
            CanaryHealth::Healthy { .. }
        ));
        // A stable ring as sick as the canary: the canary is not to blame.
        let sick_stable = HealthCounts {
            instances: 100,
            unhealthy: 20,
        };
        assert!(matches!(
            judge_canary(rule, sick, sick_stable),
            CanaryHealth::Healthy { .. }
        ));
        assert_eq!(judge_canary(None, sick, stable), CanaryHealth::Unchecked);
    }
}
