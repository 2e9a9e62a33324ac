//! What the fetcher remembers, and how much it may fetch.
//!
//! Three things, kept apart so that no one of them can push out another:
//! - **bodies**: certificates fetched successfully, by URL, bounded by count
//!   and bytes; when full, the one least recently served goes. Only a fetched
//!   body displaces a body.
//! - **failures**: URLs whose fetch failed (network, status, size, time),
//!   remembered for [`FAILURE_TTL`] so they are not fetched again meanwhile;
//!   bounded, the oldest failure goes. Refusals (host not allowed, address not
//!   public, budget spent, no free slot) are never remembered: they say
//!   nothing about the URL, and remembering them let clients fill the cache.
//! - **the budget**: URLs not held are fetched at most
//!   [`HOST_FETCHES_PER_WINDOW`] a window per host; only allow-listed hosts
//!   get that far, so the hosts are bounded by the configuration. A held URL
//!   whose body has aged is fetched again outside that budget, at most once a
//!   window itself, so clients spamming other URLs of the same host cannot
//!   keep the host from refreshing what it already knew to work.
//!
//! Every method takes `now`: the fetcher passes the real time, tests any time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a fetched body is served before it is fetched again.
pub const BODY_TTL: Duration = Duration::from_secs(86_400);
/// How long a failure is remembered (the URL is not fetched again meanwhile).
pub const FAILURE_TTL: Duration = Duration::from_secs(300);
/// Bodies held, at most.
pub const MAX_BODIES: usize = 1024;
/// Bytes of bodies held, at most (the old worst case: 256 bodies of 64 KiB).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Failures remembered, at most.
pub const MAX_FAILURES: usize = 256;
/// Fetches of URLs not held, per allowed host and window.
pub const HOST_FETCHES_PER_WINDOW: usize = 30;
/// The budget's window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What to do about a URL a plugin asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Want {
    /// The cache answers it (a fresh body, or an aged one whose refresh failed lately).
    Held,
    /// Its last fetch failed lately: not again yet.
    FailedLately,
    /// Held but aged: fetch it again, outside the host budget.
    Refresh,
    /// Never fetched (or forgotten): fetch it within its host's budget.
    New,
}

struct Held {
    body: Arc<[u8]>,
    fetched: Instant,
    /// Last time it was served or stored: eviction order.
    used: Instant,
    /// Last refresh started, for the once-a-window limit.
    refreshing: Option<Instant>,
}

/// Bodies and failures by URL.
#[derive(Default)]
pub struct Cache {
    bodies: HashMap<String, Held>,
    body_bytes: usize,
    failures: HashMap<String, Instant>,
}

impl Cache {
    /// What `url` needs at `now`.
    pub fn want(&self, url: &str, now: Instant) -> Want {
        let failed_lately = self
            .failures
            .get(url)
            .is_some_and(|at| now.saturating_duration_since(*at) < FAILURE_TTL);
        match self.bodies.get(url) {
            Some(h) if now.saturating_duration_since(h.fetched) < BODY_TTL => Want::Held,
            // Aged, and the refresh failed: the old body is still a candidate
            // (the plugin decides trust), better than none while the host is down.
            Some(_) if failed_lately => Want::Held,
            Some(_) => Want::Refresh,
            None if failed_lately => Want::FailedLately,
            None => Want::New,
        }
    }

    /// The body the plugin gets for `url`, if [`Want::Held`]; marks it used.
    pub fn serve(&mut self, url: &str, now: Instant) -> Option<Arc<[u8]>> {
        if self.want(url, now) != Want::Held {
            return None;
        }
        let held = self.bodies.get_mut(url)?;
        held.used = now;
        Some(held.body.clone())
    }

    /// Whether a refresh of held `url` may start now (once a window); records it.
    pub fn start_refresh(&mut self, url: &str, now: Instant) -> bool {
        let Some(held) = self.bodies.get_mut(url) else {
            return false;
        };
        if held
            .refreshing
            .is_some_and(|at| now.saturating_duration_since(at) < WINDOW)
        {
            return false;
        }
        held.refreshing = Some(now);
        true
    }

    /// Stores a fetched body, displacing the least recently used bodies
    /// (never a failure's doing) while over the bounds.
    pub fn store(&mut self, url: &str, body: Arc<[u8]>, now: Instant) {
        self.failures.remove(url);
        if let Some(old) = self.bodies.remove(url) {
            self.body_bytes -= old.body.len();
        }
        while !self.bodies.is_empty()
            && (self.bodies.len() >= MAX_BODIES || self.body_bytes + body.len() > MAX_BODY_BYTES)
        {
            let lru = self.bodies.iter().min_by_key(|(_, h)| h.used).map(|(k, _)| k.clone());
            if let Some(k) = lru {
                if let Some(gone) = self.bodies.remove(&k) {
                    self.body_bytes -= gone.body.len();
                }
            }
        }
        self.body_bytes += body.len();
        self.bodies.insert(
            url.to_string(),
            Held {
                body,
                fetched: now,
                used: now,
                refreshing: None,
            },
        );
    }

    /// Remembers that fetching `url` failed; only another failure is displaced.
    pub fn fail(&mut self, url: &str, now: Instant) {
        if self.failures.len() >= MAX_FAILURES && !self.failures.contains_key(url) {
            let oldest = self.failures.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.failures.remove(&k);
            }
        }
        self.failures.insert(url.to_string(), now);
    }

    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        (self.bodies.len(), self.failures.len())
    }
}

/// Fetch starts per allowed host in the current window, for URLs not held.
#[derive(Default)]
pub struct Budget {
    hosts: HashMap<String, VecDeque<Instant>>,
}

impl Budget {
    /// Takes one fetch of `host`'s budget at `now`, or says why not.
    pub fn take(&mut self, host: &str, now: Instant) -> Result<(), String> {
        let started = self.hosts.entry(host.to_string()).or_default();
        while started
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            started.pop_front();
        }
        if started.len() >= HOST_FETCHES_PER_WINDOW {
            return Err(format!(
                "more than {HOST_FETCHES_PER_WINDOW} fetches from {host} in the last {} s",
                WINDOW.as_secs()
            ));
        }
        started.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Arc<[u8]> {
        vec![0x30; n].into()
    }

    #[test]
    fn failures_never_displace_a_body() {
        let t = Instant::now();
        let mut c = Cache::default();
        c.store("http://h/good", body(10), t);
        for i in 0..MAX_FAILURES * 4 {
            c.fail(&format!("http://h/{i}"), t + Duration::from_secs(i as u64));
        }
        assert_eq!(c.counts(), (1, MAX_FAILURES));
        assert!(c.serve("http://h/good", t + Duration::from_secs(3600)).is_some());
    }

    #[test]
    fn bodies_are_bounded_and_the_least_recently_served_goes() {
        let t = Instant::now();
        let mut c = Cache::default();
        c.store("http://h/genuine", body(10), t);
        for i in 0..MAX_BODIES + 10 {
            let at = t + Duration::from_millis(i as u64 + 1);
            c.store(&format!("http://h/{i}"), body(10), at);
            // The genuine body is served now and then: it stays.
            if i % 100 == 0 {
                c.serve("http://h/genuine", at);
            }
        }
        assert_eq!(c.counts().0, MAX_BODIES);
        assert!(c.serve("http://h/genuine", t + Duration::from_secs(2)).is_some());
        assert!(c.serve("http://h/0", t + Duration::from_secs(2)).is_none());
        // Bytes bound too.
        let mut c = Cache::default();
        for i in 0..20 {
            c.store(&format!("http://h/{i}"), body(MAX_BODY_BYTES / 8), t);
        }
        assert!(c.body_bytes <= MAX_BODY_BYTES);
        assert_eq!(c.counts().0, 8);
    }

    #[test]
    fn an_aged_body_is_refreshed_once_a_window_and_kept_if_that_fails() {
        let t = Instant::now();
        let url = "http://h/genuine";
        let mut c = Cache::default();
        c.store(url, body(10), t);
        assert_eq!(c.want(url, t + BODY_TTL / 2), Want::Held);
        let aged = t + BODY_TTL;
        assert_eq!(c.want(url, aged), Want::Refresh);
        assert!(c.serve(url, aged).is_none(), "asked for, so it is refreshed");
        assert!(c.start_refresh(url, aged));
        assert!(!c.start_refresh(url, aged + WINDOW / 2));
        c.fail(url, aged);
        // The refresh failed: the aged body is served meanwhile.
        assert_eq!(c.want(url, aged), Want::Held);
        assert!(c.serve(url, aged).is_some());
        let later = aged + FAILURE_TTL;
        assert_eq!(c.want(url, later), Want::Refresh);
        assert!(c.start_refresh(url, later));
        c.store(url, body(11), later);
        assert_eq!(c.serve(url, later).unwrap().len(), 11);
        assert!(!c.start_refresh("http://h/never", later));
    }

    #[test]
    fn a_failure_is_remembered_for_its_ttl_only() {
        let t = Instant::now();
        let mut c = Cache::default();
        c.fail("http://h/x", t);
        assert_eq!(c.want("http://h/x", t + FAILURE_TTL / 2), Want::FailedLately);
        assert_eq!(c.want("http://h/x", t + FAILURE_TTL), Want::New);
    }

    #[test]
    fn the_budget_is_per_host_and_per_window() {
        let t = Instant::now();
        let mut b = Budget::default();
        for _ in 0..HOST_FETCHES_PER_WINDOW {
            b.take("a.example", t).unwrap();
        }
        let err = b.take("a.example", t).unwrap_err();
        assert!(err.contains("a.example"), "{err}");
        // Another host is untouched; the window moves on.
        b.take("b.example", t).unwrap();
        b.take("a.example", t + WINDOW).unwrap();
    }
}
