//! A listener's health at run time: its circuit breaker (open after N consecutive failures,
//! for a cool-down; one trial run after it, closing again on success) and the failure count of
//! the last hour that disables it automatically. Pure state, held by each listener's
//! [`super::Entry`]; callers act on the transitions. (The HTTP health endpoints are
//! `http::health`, a different thing.)

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ErrorHandlingConfig;

/// A change of state worth logging and announcing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The breaker opened after this many consecutive failures.
    Opened { failures: u32, cooldown: Duration },
    /// A trial run after the cool-down succeeded.
    Closed,
    /// More failures within an hour than allowed: disable the listener.
    Disable { failures_last_hour: usize },
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    open_until: Option<Instant>,
    recent_failures: VecDeque<Instant>,
}

/// Thresholds, from `[error_handling]`.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub breaker_failures: u32,
    pub cooldown: Duration,
    pub max_failures_per_hour: u32,
}

impl From<&ErrorHandlingConfig> for Thresholds {
    fn from(c: &ErrorHandlingConfig) -> Self {
        Thresholds {
            breaker_failures: c.breaker_failures,
            cooldown: c.breaker_cooldown,
            max_failures_per_hour: c.max_failures_per_hour,
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// One listener's health.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    thresholds: Thresholds,
}

impl Health {
    pub fn new(thresholds: Thresholds) -> Health {
        Health {
            state: Mutex::new(State::default()),
            thresholds,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// When the breaker is open at `now`, the instant it lets a trial run through.
    pub fn open_until(&self, now: Instant) -> Option<Instant> {
        self.state().open_until.filter(|until| *until > now)
    }

    /// Whether the breaker is open: from its opening until a trial run succeeds (the
    /// cool-down may be over, the trial not yet run), or an operator resets it.
    pub fn tripped(&self) -> bool {
        self.state().open_until.is_some()
    }

    /// Failures within the hour before `now`.
    pub fn failures_last_hour(&self, now: Instant) -> usize {
        let mut state = self.state();
        prune(&mut state.recent_failures, now);
        state.recent_failures.len()
    }

    /// Records a run's outcome at `now`; returns the transitions it caused.
    pub fn record(&self, ok: bool, now: Instant) -> Vec<Transition> {
        let t = self.thresholds;
        let mut state = self.state();
        let mut transitions = Vec::new();
        if ok {
            let was_tripped = state.open_until.is_some();
            state.consecutive = 0;
            state.open_until = None;
            if was_tripped {
                transitions.push(Transition::Closed);
            }
            return transitions;
        }
        state.consecutive = state.consecutive.saturating_add(1);
        prune(&mut state.recent_failures, now);
        state.recent_failures.push_back(now);
        // A failed trial run re-opens at once; otherwise the threshold decides.
        let trial_failed = state.open_until.is_some_and(|until| until <= now);
        if trial_failed || state.consecutive == t.breaker_failures {
            state.open_until = Some(now + t.cooldown);
            transitions.push(Transition::Opened {
                failures: state.consecutive,
                cooldown: t.cooldown,
            });
        }
        let last_hour = state.recent_failures.len();
        if last_hour > t.max_failures_per_hour as usize {
            transitions.push(Transition::Disable {
                failures_last_hour: last_hour,
            });
        }
        transitions
    }

    /// Back to a clean state (an operator enabled the listener again).
    pub fn reset(&self) {
        *self.state() = State::default();
    }
}

fn prune(failures: &mut VecDeque<Instant>, now: Instant) {
    while failures
        .front()
        .is_some_and(|at| now.saturating_duration_since(*at) >= HOUR)
    {
        failures.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(breaker: u32, per_hour: u32) -> Health {
        Health::new(Thresholds {
            breaker_failures: breaker,
            cooldown: Duration::from_secs(60),
            max_failures_per_hour: per_hour,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let h = health(3, 1000);
        let t0 = Instant::now();
        assert!(h.record(false, t0).is_empty());
        assert!(h.record(true, t0).is_empty(), "a success resets the count");
        assert!(h.record(false, t0).is_empty());
        assert!(h.record(false, t0).is_empty());
        assert_eq!(
            h.record(false, t0),
            vec![Transition::Opened {
                failures: 3,
                cooldown: Duration::from_secs(60)
            }]
        );
        assert_eq!(h.open_until(t0), Some(t0 + Duration::from_secs(60)));
        assert!(h.tripped());
        assert_eq!(
            h.open_until(t0 + Duration::from_secs(60)),
            None,
            "trial allowed after cool-down"
        );
        assert!(h.tripped(), "still open until the trial succeeds");
        assert_eq!(
            h.record(true, t0 + Duration::from_secs(61)),
            vec![Transition::Closed]
        );
        assert_eq!(h.open_until(t0 + Duration::from_secs(61)), None);
        assert!(!h.tripped());
    }

    #[test]
    fn a_failed_trial_reopens() {
        let h = health(2, 1000);
        let t0 = Instant::now();
        h.record(false, t0);
        h.record(false, t0);
        let later = t0 + Duration::from_secs(61);
        assert!(matches!(
            h.record(false, later).as_slice(),
            [Transition::Opened { .. }]
        ));
        assert_eq!(h.open_until(later), Some(later + Duration::from_secs(60)));
    }

    #[test]
    fn too_many_failures_in_an_hour_disable() {
        let h = health(1000, 3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(h.record(false, t0 + Duration::from_secs(i)).is_empty());
        }
        assert_eq!(
            h.record(false, t0 + Duration::from_secs(3)),
            vec![Transition::Disable {
                failures_last_hour: 4
            }]
        );
        // Failures older than an hour no longer count.
        let much_later = t0 + Duration::from_secs(3700);
        assert_eq!(h.failures_last_hour(much_later), 0);
        h.reset();
        assert!(h.record(false, much_later).is_empty());
    }
}
