//! Convergence: how far the fleet a pin governs has come to run its digest,
//! decided from counts and durations the caller measured.

use std::time::Duration;

/// The instances a pin governs, counted. The three are never merged: an
/// instance that has gone silent is `unknown`, not `behind`, and never
/// `current`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Live, running the pin's digest.
    pub current: u64,
    /// Live, running another digest.
    pub behind: u64,
    /// Silent past their time to live.
    pub unknown: u64,
}

impl FleetCounts {
    /// Live instances: those that reported within their time to live.
    pub fn live(&self) -> u64 {
        self.current + self.behind
    }

    /// Whether every live instance runs the pin's digest, and one at least
    /// does: a fleet with no live instance has not converged.
    pub fn converged(&self) -> bool {
        self.behind == 0 && self.current >= 1
    }

    /// Whether at least `percent` of the live instances run the digest, and
    /// one at least does.
    pub fn reached(&self, percent: u8) -> bool {
        self.current >= 1 && self.current * 100 >= u64::from(percent) * self.live()
    }
}

/// Where a pin's fleet stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convergence {
    /// Every live instance runs the pin's digest.
    Converged,
    /// Some are behind, within the progress deadline since the pin moved.
    Converging,
    /// Some are still behind past the progress deadline.
    Stalled,
    /// No live instance is governed by the pin.
    Empty,
}

impl Convergence {
    pub fn as_str(self) -> &'static str {
        match self {
            Convergence::Converged => "converged",
            Convergence::Converging => "converging",
            Convergence::Stalled => "stalled",
            Convergence::Empty => "empty",
        }
    }
}

/// Decides a pin's convergence from its counts and how long ago it moved.
pub fn converge(counts: FleetCounts, since_moved: Duration, deadline: Duration) -> Convergence {
    if counts.live() == 0 {
        Convergence::Empty
    } else if counts.behind == 0 {
        Convergence::Converged
    } else if since_moved > deadline {
        Convergence::Stalled
    } else {
        Convergence::Converging
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(current: u64, behind: u64, unknown: u64) -> FleetCounts {
        FleetCounts {
            current,
            behind,
            unknown,
        }
    }

    #[test]
    fn the_states_follow_the_counts_and_the_deadline() {
        let deadline = Duration::from_secs(600);
        let soon = Duration::from_secs(10);
        let late = Duration::from_secs(601);
        assert_eq!(
            converge(counts(0, 0, 5), late, deadline),
            Convergence::Empty
        );
        assert_eq!(
            converge(counts(3, 0, 2), late, deadline),
            Convergence::Converged
        );
        assert_eq!(
            converge(counts(3, 1, 0), soon, deadline),
            Convergence::Converging
        );
        assert_eq!(
            converge(counts(3, 1, 0), late, deadline),
            Convergence::Stalled
        );
        assert_eq!(
            converge(counts(0, 4, 0), soon, deadline),
            Convergence::Converging
        );
    }

    #[test]
    fn no_live_instance_never_converges_nor_reaches_a_share() {
        assert!(!counts(0, 0, 9).converged());
        assert!(!counts(0, 0, 9).reached(0));
        assert!(counts(1, 0, 0).converged());
        assert!(counts(9, 1, 0).reached(90));
        assert!(!counts(8, 2, 0).reached(90));
        assert!(
            counts(8, 2, 50).reached(80),
            "unknown instances are not live"
        );
        assert!(
            !counts(0, 3, 0).reached(0),
            "at least one must run the digest"
        );
    }
}
