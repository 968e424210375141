//! Failed authentications: counted, slowed per source, and summarised for
//! the audit log rather than written one by one.
//!
//! A request without a valid token costs the server a hash and a lookup,
//! never a database write: a stranger sending thousands of them cannot flush
//! the audit log or load the writer. Each source (an IPv4 address, or an
//! IPv6 /64) has an allowance of [`BURST`] failures that refills at
//! [`REFILL_PER_SECOND`]; past it, failures are answered
//! `429 too_many_auth_failures` with `Retry-After`. A valid token is never
//! slowed, whatever its source did. Failed writes are counted per source and
//! action, and [`AuthFailures::drain`] hands the counts to the audit log
//! once a minute, one entry per source and action.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use pinion_store::Refusal;
use time::OffsetDateTime;

/// Failures a source may make at once, by default (`--auth-failure-burst`).
pub const BURST: f64 = 20.0;
/// How fast its allowance comes back.
pub const REFILL_PER_SECOND: f64 = 1.0;
/// Sources tracked at once; past this, idle ones are forgotten, and new
/// ones share one allowance until there is room.
const MAX_SOURCES: usize = 10_000;
/// Audit summaries kept between flushes; past this, new sources are
/// counted under `other`.
const MAX_SUMMARIES: usize = 1_000;

/// Why authentication failed, as counted in
/// `pinion_auth_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`.
    Malformed,
    /// No active token has that secret.
    Unknown,
    /// Refused without a look: the source had used up its allowance.
    Throttled,
    /// A token past its `expires_at`.
    Expired,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::Unknown,
        Reason::Throttled,
        Reason::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::Unknown => "unknown",
            Reason::Throttled => "throttled",
            Reason::Expired => "expired",
        }
    }
}

/// A source's remaining allowance.
struct Allowance {
    left: f64,
    updated: Instant,
}

impl Allowance {
    fn full(now: Instant, burst: f64) -> Allowance {
        Allowance {
            left: burst,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant, burst: f64) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.left = (self.left + elapsed * REFILL_PER_SECOND).min(burst);
        self.updated = now;
    }
}

/// Failed writes of one source and action since the last flush.
struct Summary {
    count: i64,
    last: OffsetDateTime,
}

pub struct AuthFailures {
    allowances: Mutex<HashMap<Option<IpAddr>, Allowance>>,
    summaries: Mutex<HashMap<(String, &'static str, &'static str), Summary>>,
    totals: [AtomicU64; Reason::ALL.len()],
    /// Failures a source may make at once.
    burst: f64,
}

impl Default for AuthFailures {
    fn default() -> Self {
        AuthFailures::new(BURST)
    }
}

impl AuthFailures {
    /// Each source may fail `burst` times at once (refilling at one a
    /// second).
    pub fn new(burst: f64) -> AuthFailures {
        AuthFailures {
            allowances: Mutex::default(),
            summaries: Mutex::default(),
            totals: Default::default(),
            burst,
        }
    }

    /// Takes one failure from `source`'s allowance: `Ok` to answer 401,
    /// `Err(seconds)` to answer 429 with that `Retry-After`. Counts it.
    pub fn fail(&self, source: Option<IpAddr>, reason: Reason) -> Result<(), u64> {
        let now = Instant::now();
        let key = source.map(prefix);
        let mut allowances = self
            .allowances
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !allowances.contains_key(&key) && allowances.len() >= MAX_SOURCES {
            allowances.retain(|_, allowance| {
                allowance.refill(now, self.burst);
                allowance.left < self.burst
            });
        }
        // Still full of busy sources: the newcomer shares the allowance of
        // "no source".
        let key = if allowances.contains_key(&key) || allowances.len() < MAX_SOURCES {
            key
        } else {
            None
        };
        let allowance = allowances
            .entry(key)
            .or_insert_with(|| Allowance::full(now, self.burst));
        allowance.refill(now, self.burst);
        if allowance.left >= 1.0 {
            allowance.left -= 1.0;
            self.count(reason);
            Ok(())
        } else {
            self.count(Reason::Throttled);
            let wait = (1.0 - allowance.left) / REFILL_PER_SECOND;
            Err(wait.ceil().max(1.0) as u64)
        }
    }

    fn count(&self, reason: Reason) {
        let index = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        if let Some(total) = self.totals.get(index) {
            total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Failures so far, by reason.
    pub fn totals(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .iter()
            .zip(&self.totals)
            .map(|(reason, total)| (*reason, total.load(Ordering::Relaxed)))
    }

    /// Counts a write refused for want of a valid token, for the audit log.
    pub fn note_refused_write(
        &self,
        source: Option<IpAddr>,
        action: &'static str,
        code: &'static str,
        at: OffsetDateTime,
    ) {
        let source = source.map_or_else(|| "unknown".to_owned(), |ip| prefix(ip).to_string());
        let mut summaries = self
            .summaries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut key = (source, action, code);
        if !summaries.contains_key(&key) && summaries.len() >= MAX_SUMMARIES {
            key.0 = "other".to_owned();
        }
        let summary = summaries
            .entry(key)
            .or_insert(Summary { count: 0, last: at });
        summary.count += 1;
        summary.last = at;
    }

    /// The refusals counted since the last call, one per source, action and
    /// code, for the audit log.
    pub fn drain(&self) -> Vec<Refusal> {
        let drained = std::mem::take(
            &mut *self
                .summaries
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        drained
            .into_iter()
            .map(|((source, action, code), summary)| Refusal {
                at: summary.last,
                actor: None,
                template: None,
                region: None,
                action: action.to_owned(),
                status: if code == "too_many_auth_failures" {
                    429
                } else {
                    401
                },
                code: code.to_owned(),
                source: Some(source),
                count: summary.count,
            })
            .collect()
    }
}

/// The part of an address that names a source: all of an IPv4 address, the
/// /64 network of an IPv6 one (a host is given a whole /64 to pick from).
fn prefix(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    0,
                    0,
                    0,
                    0,
                ))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_slowed_after_its_burst_and_others_are_not() {
        let failures = AuthFailures::default();
        let noisy: IpAddr = "192.0.2.1".parse().unwrap();
        let quiet: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..BURST as usize {
            assert_eq!(failures.fail(Some(noisy), Reason::Unknown), Ok(()));
        }
        let wait = failures.fail(Some(noisy), Reason::Unknown).unwrap_err();
        assert!((1..=2).contains(&wait), "{wait}");
        assert_eq!(failures.fail(Some(quiet), Reason::Missing), Ok(()));
        let totals: HashMap<&str, u64> = failures
            .totals()
            .map(|(reason, total)| (reason.as_str(), total))
            .collect();
        assert_eq!(totals["unknown"], BURST as u64);
        assert_eq!(totals["throttled"], 1);
        assert_eq!(totals["missing"], 1);
    }

    #[test]
    fn an_ipv6_host_cannot_escape_by_changing_its_interface_id() {
        let failures = AuthFailures::default();
        for n in 0..BURST as u16 {
            let ip: IpAddr = format!("2001:db8::{n:x}").parse().unwrap();
            assert_eq!(failures.fail(Some(ip), Reason::Unknown), Ok(()));
        }
        let next: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert!(failures.fail(Some(next), Reason::Unknown).is_err());
    }

    #[test]
    fn refused_writes_are_summarised_per_source_and_action() {
        let failures = AuthFailures::default();
        let at = OffsetDateTime::UNIX_EPOCH;
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        for _ in 0..500 {
            failures.note_refused_write(Some(ip), "promote", "unauthorized", at);
        }
        failures.note_refused_write(Some(ip), "rollback", "unauthorized", at);
        let mut drained = failures.drain();
        drained.sort_by(|a, b| a.action.cmp(&b.action));
        assert_eq!(drained.len(), 2);
        assert_eq!(drained[0].action, "promote");
        assert_eq!(drained[0].count, 500);
        assert_eq!(drained[0].source.as_deref(), Some("198.51.100.9"));
        assert_eq!(drained[0].actor, None);
        assert!(failures.drain().is_empty(), "drained once");
    }
}
