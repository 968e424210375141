//! What happened: the types of the change feed, and what a webhook delivery
//! attempt's answer means for the next one.

use std::time::Duration;

use crate::{Kind, ParseError, quote};

macro_rules! event_types {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// The type of an event, as its `type` field and the SSE `event:`
        /// line name it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum EventType {
            $($(#[$doc])* $variant,)*
        }

        impl EventType {
            /// Every type, in the order the documentation lists them.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $name,)*
                }
            }

            pub fn parse(input: &str) -> Result<EventType, ParseError> {
                match input {
                    $($name => Ok(EventType::$variant),)*
                    _ => Err(ParseError::new(
                        Kind::EventType,
                        format!(
                            "{} is not an event type; known types: {}",
                            quote(input),
                            EventType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    )),
                }
            }
        }
    };
}

event_types! {
    /// A promotion moved a pin (or created it).
    PinPromoted = "pin.promoted",
    /// A rollback moved a pin back.
    PinRolledBack = "pin.rolled_back",
    /// A catalog entry was added or changed.
    RuntimeChanged = "runtime.changed",
    /// The drift watcher found a pin behind its repository's tag.
    PinStale = "pin.stale",
    /// A pin found stale is at its tag again.
    PinFresh = "pin.fresh",
    /// A webhook was disabled: its receiver answered `410 Gone`.
    WebhookDisabled = "webhook.disabled",
    /// Every live instance a pin governs runs its digest.
    FleetConverged = "fleet.converged",
    /// Instances are still behind a pin past the progress deadline.
    FleetStalled = "fleet.stalled",
    /// A pin was held: promotions to it are refused until it is released.
    PinHeld = "pin.held",
    /// A pin's hold was released.
    PinReleased = "pin.released",
    /// A canary started on a pin, or its digest or share changed.
    CanaryStarted = "canary.started",
    /// A canary was aborted: by hand, or by the health rule (with its
    /// figures; the pin is then held).
    CanaryAborted = "canary.aborted",
    /// The canary's digest was promoted to the pin: the canary ends.
    CanaryPromoted = "canary.promoted",
    /// A token was made over HTTP (never its secret).
    TokenCreated = "token.created",
    /// A token was revoked over HTTP.
    TokenRevoked = "token.revoked",
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a delivery attempt ended, as far as the next one cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx answer in time.
    Delivered,
    /// `410 Gone`: the receiver wants no more.
    Gone,
    /// Any other failure: another status, a redirect, a timeout, no
    /// connection. `retry_after` is what a `429` or `503` asked for.
    Failed { retry_after: Option<Duration> },
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Done: the receiver has it.
    Delivered,
    /// Try again after this long.
    RetryAfter(Duration),
    /// No more attempts: the schedule is spent.
    GiveUp,
    /// No more attempts, and the webhook is disabled.
    Disable,
}

/// The longest a receiver's `Retry-After` may push an attempt back.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Decides what follows the `attempts`-th attempt (counted from 1) of a
/// delivery, given the retry schedule (the waits after the first, second, …
/// failed attempt). A receiver's `Retry-After` is honoured: the wait is the
/// longer of the schedule's and the receiver's (at most a day).
pub fn next_step(attempts: u32, schedule: &[Duration], outcome: AttemptOutcome) -> NextStep {
    match outcome {
        AttemptOutcome::Delivered => NextStep::Delivered,
        AttemptOutcome::Gone => NextStep::Disable,
        AttemptOutcome::Failed { retry_after } => {
            let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
            match schedule.get(index) {
                None => NextStep::GiveUp,
                Some(wait) => {
                    let asked = retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
                    NextStep::RetryAfter((*wait).max(asked))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_and_unknown_ones_are_refused() {
        for event in EventType::ALL {
            assert_eq!(EventType::parse(event.as_str()), Ok(*event));
        }
        for bad in ["", "pin", "pin.Promoted", "pin.promoted ", "*"] {
            assert!(EventType::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_schedule_is_followed_then_spent() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        let failed = AttemptOutcome::Failed { retry_after: None };
        assert_eq!(
            next_step(1, &schedule, failed),
            NextStep::RetryAfter(schedule[0])
        );
        assert_eq!(
            next_step(2, &schedule, failed),
            NextStep::RetryAfter(schedule[1])
        );
        assert_eq!(next_step(3, &schedule, failed), NextStep::GiveUp);
        assert_eq!(next_step(9, &schedule, failed), NextStep::GiveUp);
        assert_eq!(next_step(1, &[], failed), NextStep::GiveUp);
        assert_eq!(
            next_step(1, &schedule, AttemptOutcome::Delivered),
            NextStep::Delivered
        );
        assert_eq!(
            next_step(3, &schedule, AttemptOutcome::Gone),
            NextStep::Disable
        );
    }

    #[test]
    fn retry_after_waits_longer_never_shorter_and_at_most_a_day() {
        let schedule = [Duration::from_secs(5)];
        let asked = |secs| AttemptOutcome::Failed {
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            next_step(1, &schedule, asked(60)),
            NextStep::RetryAfter(Duration::from_secs(60))
        );
        assert_eq!(
            next_step(1, &schedule, asked(1)),
            NextStep::RetryAfter(Duration::from_secs(5))
        );
        assert_eq!(
            next_step(1, &schedule, asked(10_000_000)),
            NextStep::RetryAfter(MAX_RETRY_AFTER)
        );
    }
}
