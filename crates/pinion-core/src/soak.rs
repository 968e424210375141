//! Soak between environments: how long a digest ran on the source
//! environment's pin before it may be promoted here. Pure: the server asks
//! the source for its history and this decides.
//!
//! The rule: a window opens when the pin moves to the digest and closes
//! when it moves away. A window closed by a promotion keeps its length (a
//! newer build replacing a good one says nothing against it); a rollback
//! away from the digest voids it and every window before it (the digest
//! was found bad). The digest has soaked for its longest window not
//! voided, the open one counting up to now.

use std::time::Duration;

use crate::Digest;

/// One move of a pin on the source, as its history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceMove<'a> {
    /// When, in Unix milliseconds.
    pub at_ms: i64,
    /// The digest the pin moved to.
    pub to: &'a Digest,
    /// A rollback (rather than a promotion).
    pub rollback: bool,
}

/// How long `digest` has soaked on one pin, from its moves oldest first.
pub fn soaked(moves: &[SourceMove<'_>], digest: &Digest, now_ms: i64) -> Duration {
    let mut longest = 0i64;
    let mut open: Option<i64> = None;
    for step in moves {
        if step.to == digest {
            open.get_or_insert(step.at_ms);
            continue;
        }
        let Some(start) = open.take() else {
            continue;
        };
        if step.rollback {
            longest = 0;
        } else {
            longest = longest.max(step.at_ms.saturating_sub(start));
        }
    }
    if let Some(start) = open {
        longest = longest.max(now_ms.saturating_sub(start));
    }
    Duration::from_millis(u64::try_from(longest).unwrap_or(0))
}

/// The same rule read newest move first, so a caller paging a long history
/// can stop as soon as the answer is known: when a window reaches the
/// required soak, or when a rollback away from the digest voids everything
/// older.
#[derive(Debug, Clone)]
pub struct SoakScan<'d> {
    digest: &'d Digest,
    required: Duration,
    /// The oldest move seen so far that was not to the digest, newer than
    /// the window being read: the move that closes it (`now` and no
    /// rollback for the open window).
    closer_ms: i64,
    closer_rollback: bool,
    /// Where the window being read starts, so far.
    start_ms: Option<i64>,
    longest_ms: i64,
    /// A rollback away from the digest was met: nothing older counts.
    voided: bool,
}

impl<'d> SoakScan<'d> {
    pub fn new(digest: &'d Digest, required: Duration, now_ms: i64) -> SoakScan<'d> {
        SoakScan {
            digest,
            required,
            closer_ms: now_ms,
            closer_rollback: false,
            start_ms: None,
            longest_ms: 0,
            voided: false,
        }
    }

    /// Reads the next older move.
    pub fn older(&mut self, step: SourceMove<'_>) {
        if self.voided {
            return;
        }
        if step.to == self.digest {
            self.start_ms = Some(step.at_ms);
            return;
        }
        self.close();
        self.closer_ms = step.at_ms;
        self.closer_rollback = step.rollback;
    }

    fn close(&mut self) {
        let Some(start) = self.start_ms.take() else {
            return;
        };
        if self.closer_rollback {
            self.voided = true;
        } else {
            self.longest_ms = self.longest_ms.max(self.closer_ms.saturating_sub(start));
        }
    }

    /// Whether older moves can no longer change the verdict.
    pub fn decided(&self) -> bool {
        self.voided || self.met()
    }

    /// Whether a window found already soaked long enough.
    pub fn met(&self) -> bool {
        self.soaked_so_far() >= self.required
    }

    /// The longest window found so far, the one being read included.
    fn soaked_so_far(&self) -> Duration {
        let mut longest = self.longest_ms;
        if let (Some(start), false) = (self.start_ms, self.closer_rollback) {
            longest = longest.max(self.closer_ms.saturating_sub(start));
        }
        Duration::from_millis(u64::try_from(longest).unwrap_or(0))
    }

    /// The verdict from the moves read (all of them, or until
    /// [`SoakScan::decided`]).
    pub fn finish(mut self) -> Duration {
        self.close();
        Duration::from_millis(u64::try_from(self.longest_ms).unwrap_or(0))
    }
}

/// What the soak rule says about a promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Soak {
    /// No soak source is configured.
    #[default]
    NotRequired,
    /// The digest soaked long enough on the source.
    Met {
        soaked: Duration,
        required: Duration,
    },
    /// It has not: `soaked` of `required`.
    Short {
        soaked: Duration,
        required: Duration,
    },
    /// A soak is required but the source was not asked: an `admin` token
    /// forced the promotion, or the pin seemed to be at the digest already.
    Unchecked { required: Duration },
}

impl Soak {
    /// The verdict for a digest that soaked `soaked` against `required`.
    pub fn judge(soaked: Duration, required: Duration) -> Soak {
        if soaked >= required {
            Soak::Met { soaked, required }
        } else {
            Soak::Short { soaked, required }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::from_sha256(&[n; 32])
    }

    fn promote(at_ms: i64, to: &Digest) -> SourceMove<'_> {
        SourceMove {
            at_ms,
            to,
            rollback: false,
        }
    }

    fn rollback(at_ms: i64, to: &Digest) -> SourceMove<'_> {
        SourceMove {
            at_ms,
            to,
            rollback: true,
        }
    }

    const MIN: i64 = 60_000;

    #[test]
    fn an_open_window_counts_up_to_now() {
        let (a, d) = (digest(1), digest(2));
        let moves = [promote(0, &a), promote(10 * MIN, &d)];
        assert_eq!(soaked(&moves, &d, 40 * MIN), Duration::from_secs(30 * 60));
        assert_eq!(soaked(&moves, &digest(9), 40 * MIN), Duration::ZERO);
    }

    #[test]
    fn a_later_promotion_ends_the_window_without_voiding_it() {
        let (d, e) = (digest(2), digest(3));
        let moves = [promote(0, &d), promote(25 * MIN, &e)];
        assert_eq!(soaked(&moves, &d, 90 * MIN), Duration::from_secs(25 * 60));
    }

    #[test]
    fn a_rollback_away_voids_every_window_before_it_but_not_after() {
        let (a, d) = (digest(1), digest(2));
        let voided = [promote(0, &a), promote(MIN, &d), rollback(50 * MIN, &a)];
        assert_eq!(soaked(&voided, &d, 90 * MIN), Duration::ZERO);
        // Promoted again after the rollback: a fresh window counts.
        let again = [
            promote(0, &a),
            promote(MIN, &d),
            rollback(50 * MIN, &a),
            promote(60 * MIN, &d),
        ];
        assert_eq!(soaked(&again, &d, 70 * MIN), Duration::from_secs(10 * 60));
        // A rollback *to* the digest opens a window.
        let back = [promote(0, &d), promote(5 * MIN, &a), rollback(6 * MIN, &d)];
        assert_eq!(soaked(&back, &d, 16 * MIN), Duration::from_secs(10 * 60));
    }

    /// Newest first, to the end, the scan agrees with the rule read oldest
    /// first, on many made-up histories.
    #[test]
    fn the_newest_first_scan_agrees_with_the_rule() {
        let digests = [digest(1), digest(2), digest(3)];
        let mut seed: u64 = 0x5eed;
        let mut next = |below: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % below
        };
        for _ in 0..2000 {
            let length = next(12) as usize;
            let mut at = 0i64;
            let mut history: Vec<(i64, usize, bool)> = Vec::new();
            for _ in 0..length {
                at += 1 + next(20) as i64 * MIN / 4;
                history.push((at, next(3) as usize, next(4) == 0));
            }
            let moves: Vec<SourceMove<'_>> = history
                .iter()
                .map(|(at_ms, to, rollback)| SourceMove {
                    at_ms: *at_ms,
                    to: &digests[*to],
                    rollback: *rollback,
                })
                .collect();
            let now = at + next(40) as i64 * MIN / 4;
            let target = &digests[1];
            let expected = soaked(&moves, target, now);
            let mut scan = SoakScan::new(target, Duration::from_secs(3600 * 24), now);
            for step in moves.iter().rev() {
                scan.older(*step);
            }
            assert_eq!(scan.finish(), expected, "{history:?} at {now}");
            // Stopping once decided never changes the verdict.
            let required = Duration::from_millis(next(60) * 15_000);
            let mut early = SoakScan::new(target, required, now);
            for step in moves.iter().rev() {
                if early.decided() {
                    break;
                }
                early.older(*step);
            }
            let judged = Soak::judge(early.finish(), required);
            assert_eq!(
                matches!(judged, Soak::Met { .. }),
                expected >= required,
                "{history:?} at {now}, {required:?}"
            );
        }
    }

    #[test]
    fn the_longest_window_not_voided_counts_and_interruptions_do_not_add_up() {
        let (a, d) = (digest(1), digest(2));
        let moves = [
            promote(0, &d),
            promote(20 * MIN, &a),
            promote(30 * MIN, &d),
            promote(45 * MIN, &a),
        ];
        // 20 and 15 minutes: not 35.
        assert_eq!(soaked(&moves, &d, 99 * MIN), Duration::from_secs(20 * 60));
        assert_eq!(
            Soak::judge(Duration::from_secs(20 * 60), Duration::from_secs(30 * 60)),
            Soak::Short {
                soaked: Duration::from_secs(20 * 60),
                required: Duration::from_secs(30 * 60)
            }
        );
        assert!(matches!(
            Soak::judge(Duration::from_secs(60), Duration::from_secs(60)),
            Soak::Met { .. }
        ));
    }
}
