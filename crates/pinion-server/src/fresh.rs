//! Shared freshness checks for strict reads.
//!
//! A strict read must see every write acknowledged before it arrived, by any
//! replica, so it waits for a check of the database. Reads share checks: a
//! read waits for the first check that *began after it arrived*, and at most
//! one check runs at a time. Under load one round trip to the database then
//! serves every read that arrived during the previous one.

use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

/// Checks whose outcome is a `T`, numbered from 1.
pub struct SharedChecks<T> {
    state: Mutex<CheckState>,
    /// The newest finished check and its outcome.
    done: watch::Sender<Checked<T>>,
    /// What reads get when a check ends without an outcome (a panic).
    failed: T,
}

#[derive(Default)]
struct CheckState {
    /// The number of the newest check begun.
    started: u64,
    running: bool,
    /// A read arrived while the running check was under way.
    again: bool,
}

#[derive(Clone)]
struct Checked<T> {
    number: u64,
    outcome: T,
}

impl<T: Clone + Send + Sync + 'static> SharedChecks<T> {
    /// `failed` is the outcome of a check that panicked.
    pub fn new(failed: T) -> SharedChecks<T> {
        SharedChecks {
            state: Mutex::default(),
            done: watch::Sender::new(Checked {
                number: 0,
                outcome: failed.clone(),
            }),
            failed,
        }
    }

    /// The outcome of a check begun after this call. When no check is under
    /// way, this call begins one on the blocking pool with `check`, which
    /// then also runs the checks that reads arriving meanwhile need.
    pub async fn fresh<F>(self: &std::sync::Arc<Self>, check: F) -> T
    where
        F: Fn() -> T + Send + 'static,
    {
        let mut done = self.done.subscribe();
        let (needed, start) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.running {
                // The running check may have begun before this read arrived.
                state.again = true;
                (state.started + 1, false)
            } else {
                state.running = true;
                state.started += 1;
                (state.started, true)
            }
        };
        if start {
            let checks = self.clone();
            tokio::task::spawn_blocking(move || checks.run(needed, check));
        }
        match done.wait_for(|checked| checked.number >= needed).await {
            Ok(checked) => checked.outcome.clone(),
            Err(_) => self.failed.clone(),
        }
    }

    /// Runs check `number`, then the next while reads are waiting for one.
    fn run(&self, mut number: u64, check: impl Fn() -> T) {
        // If a check panics, the waiting reads get `failed`, not a hang.
        let mut guard = Guard {
            checks: self,
            number,
            finished: false,
        };
        loop {
            let outcome = check();
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            // Published under the lock, so outcomes only ever move forward.
            self.done.send_replace(Checked { number, outcome });
            if state.again {
                state.again = false;
                state.started += 1;
                number = state.started;
                guard.number = number;
            } else {
                state.running = false;
                guard.finished = true;
                return;
            }
        }
    }
}

/// Ends a check that did not finish with `failed` for the reads waiting for
/// it and for the next one, and lets the next read begin a new check.
struct Guard<'a, T: Clone + Send + Sync + 'static> {
    checks: &'a SharedChecks<T>,
    number: u64,
    finished: bool,
}

impl<T: Clone + Send + Sync + 'static> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self
            .checks
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tracing::error!("a freshness check ended without an outcome");
        if state.again {
            state.started += 1;
        }
        self.checks.done.send_replace(Checked {
            number: state.started.max(self.number),
            outcome: self.checks.failed.clone(),
        });
        state.running = false;
        state.again = false;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// The "database" is a counter; a check reads it, then takes a while to
    /// answer (a round trip). Every read must see its own write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_read_sees_the_writes_made_before_it() {
        let database = Arc::new(AtomicU64::new(0));
        let checks_run = Arc::new(AtomicUsize::new(0));
        let checks = Arc::new(SharedChecks::new(0u64));
        let readers: Vec<_> = (0..16)
            .map(|_| {
                let (database, checks_run, checks) =
                    (database.clone(), checks_run.clone(), checks.clone());
                tokio::spawn(async move {
                    for _ in 0..40 {
                        let written = database.fetch_add(1, Ordering::SeqCst) + 1;
                        let (database, checks_run) = (database.clone(), checks_run.clone());
                        let seen = checks
                            .fresh(move || {
                                checks_run.fetch_add(1, Ordering::SeqCst);
                                let seen = database.load(Ordering::SeqCst);
                                std::thread::sleep(Duration::from_micros(300));
                                seen
                            })
                            .await;
                        assert!(seen >= written, "saw {seen}, had written {written}");
                    }
                })
            })
            .collect();
        for reader in readers {
            reader.await.expect("reader");
        }
        let run = checks_run.load(Ordering::SeqCst);
        assert!(
            run < 16 * 40,
            "reads shared checks: {run} checks for 640 reads"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_check_fails_its_reads_and_the_next_read_starts_afresh() {
        let checks = Arc::new(SharedChecks::new(Err::<u32, &str>("failed")));
        let outcome = checks.fresh(|| panic!("the check broke")).await;
        assert_eq!(outcome, Err("failed"));
        assert_eq!(checks.fresh(|| Ok(7)).await, Ok(7));
    }
}
