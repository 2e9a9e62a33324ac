//! When to try again: jittered exponential backoff under an overall deadline,
//! and the server's `Retry-After` honoured.
//!
//! What is retried is decided by the caller ([`crate::exchange`]): connection
//! failures, timeouts, 5xx and 429 always; other 4xx only with
//! [`RetryPolicy::retry_all`] (a workspace that is still being built answers
//! 404 for a while).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime};

/// The longest `Retry-After` obeyed: a server asking for more is waited on
/// this long, then asked again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// How long and how often to keep trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Give up this long after the first attempt started. `None` keeps trying
    /// for as long as it takes, as Coder's agent does at boot: the server or
    /// the network may come up after the machine.
    pub timeout: Option<Duration>,
    /// Retry refusals (400, 401, 403, 404, ...) too, not only failures to answer.
    pub retry_all: bool,
    /// The first backoff step; each next step doubles, up to `max_delay`.
    pub first_delay: Duration,
    /// The longest backoff step (before jitter).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            timeout: None,
            retry_all: false,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// The state of one series of attempts.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    started: Instant,
    attempts: u32,
}

impl Backoff {
    /// Starts the clock.
    pub fn new(policy: RetryPolicy) -> Self {
        Backoff {
            policy,
            started: Instant::now(),
            attempts: 0,
        }
    }

    /// Time left before the deadline; `None` when there is none.
    pub fn remaining(&self) -> Option<Duration> {
        self.policy.timeout.map(|t| t.saturating_sub(self.started.elapsed()))
    }

    /// A request's own timeout: `default`, but never past the deadline.
    pub fn request_timeout(&self, default: Duration) -> Duration {
        match self.remaining() {
            Some(left) => default.min(left).max(Duration::from_millis(1)),
            None => default,
        }
    }

    /// How long to wait before the next attempt, or `None` when that wait
    /// would end past the deadline (give up now rather than sleep in vain).
    /// `retry_after` is the server's wish; it is waited at least that long.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let step = backoff_step(self.policy.first_delay, self.policy.max_delay, self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        let mut delay = jittered(step);
        if let Some(wish) = retry_after {
            delay = delay.max(wish.min(MAX_RETRY_AFTER));
        }
        match self.remaining() {
            Some(left) if delay >= left => None,
            _ => Some(delay),
        }
    }
}

/// `first * 2^attempt`, capped at `max`.
fn backoff_step(first: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(max)
}

/// A delay drawn from `[step/2, step]`: agents booted together do not come
/// back together ("equal jitter").
pub fn jittered(step: Duration) -> Duration {
    let half = step / 2;
    let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let extra = if span == 0 {
        0
    } else {
        random_u64() % span.saturating_add(1)
    };
    half.saturating_add(Duration::from_nanos(extra))
}

/// Randomness good enough for jitter without a dependency: std's hasher
/// keys are random per process and advance per use.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.finish()
}

/// A `Retry-After` value in seconds (RFC 9110's delay-seconds form). The
/// date form is not used by idgate or Coder and yields `None`: the backoff
/// then decides alone.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = value.parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999999999"), Some(MAX_RETRY_AFTER));
        for bad in [
            "",
            "-1",
            "1.5",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "9999999999999",
            "+3",
            "3s",
        ] {
            assert_eq!(parse_retry_after(bad), None, "{bad}");
        }
    }

    #[test]
    fn steps_double_up_to_the_cap() {
        let first = Duration::from_millis(250);
        let max = Duration::from_secs(30);
        assert_eq!(backoff_step(first, max, 0), first);
        assert_eq!(backoff_step(first, max, 3), Duration::from_secs(2));
        assert_eq!(backoff_step(first, max, 10), max);
        assert_eq!(backoff_step(first, max, u32::MAX), max);
    }

    #[test]
    fn jitter_stays_in_its_band() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(2));
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2), "{d:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
        let _ = jittered(Duration::MAX);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut b = Backoff::new(RetryPolicy::default());
        assert!(b.next_delay(Some(Duration::from_secs(5))).unwrap() >= Duration::from_secs(5));
        assert!(b.next_delay(Some(Duration::from_secs(86_400))).unwrap() <= MAX_RETRY_AFTER + Duration::from_secs(1));
    }

    #[test]
    fn deadline_stops_the_waiting() {
        let policy = RetryPolicy {
            timeout: Some(Duration::from_secs(2)),
            ..RetryPolicy::default()
        };
        let mut b = Backoff::new(policy);
        assert!(b.next_delay(None).is_some());
        assert_eq!(b.next_delay(Some(Duration::from_secs(3))), None);
        assert!(b.request_timeout(Duration::from_secs(10)) <= Duration::from_secs(2));
        let unlimited = Backoff::new(RetryPolicy::default());
        assert_eq!(unlimited.remaining(), None);
        assert_eq!(
            unlimited.request_timeout(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }
}
