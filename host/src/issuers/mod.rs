//! Issuer certificates fetched for plugins from AIA `caIssuers` URLs (contract
//! 0.3.0's `issuers` import).
//!
//! A plugin names a URL it found in a certificate; the sandbox records it
//! ([`crate::sandbox::Verified::wanted_issuers`]); after the call the
//! authenticator asks [`IssuerFetcher::fetch`] for it and verifies once more,
//! when [`IssuerFetcher`] answers the plugin's `fetched` with the bytes. What is
//! fetched is never trusted here: the plugin treats it as one more candidate
//! issuer, which must chain to a root it pins.
//!
//! What the host will fetch (the strictest of Coder's rules, #25274/#25418):
//! - only `http`/`https` URLs whose host is on `[issuers] allowed_hosts`
//!   (default: Microsoft's and DigiCert's certificate hosts), on the scheme's
//!   default port;
//! - the name is resolved once, every address must be public
//!   ([`address::is_public`]: IPv6 forms carrying an IPv4 address are judged
//!   by it), and the connection goes to exactly those addresses, so a DNS
//!   answer cannot change between the check and the connect;
//! - no redirects, no proxy, a short timeout, at most `max_bytes`.
//!
//! The URLs come from a certificate the *client* sent, so whatever clients
//! name must not cost genuine agents their issuer (`cache.rs`): refusals are
//! never remembered, failures never displace fetched bodies, the budget is per
//! host with held URLs refreshed outside it, and each host has its own few
//! fetch slots, waited for at most the timeout.
//!
//! `allow_loopback` (tests only) admits loopback addresses and any port, so a
//! local server can stand in for Microsoft's.

pub mod address;
mod cache;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::sandbox::IssuerBodies;
pub use address::is_public;
use cache::{Budget, Cache, Want};
pub use cache::{HOST_FETCHES_PER_WINDOW, WINDOW};

/// Hosts fetched from by default: where Microsoft's and DigiCert's
/// certificates name their issuers (`caissuers.microsoft.com` is the one whose
/// absence broke Coder's australiaeast agents, #25418).
pub const DEFAULT_ALLOWED_HOSTS: [&str; 4] = [
    "caissuers.microsoft.com",
    "www.microsoft.com",
    "cacerts.digicert.com",
    "cacerts.digicert.cn",
];
/// Largest answer accepted by default; an issuing CA certificate is ~2 KB.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;
/// One fetch's time limit by default (connect, headers and body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest URL considered.
const MAX_URL_BYTES: usize = 2048;
/// Fetches running at once per allowed host, and for refreshes of held URLs.
const SLOTS_PER_LANE: usize = 2;

/// `[issuers]`: where the host may fetch issuer certificates from.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuersConfig {
    /// Host names (exact, case-insensitive) fetched from; `[]` turns fetching off.
    pub allowed_hosts: Option<Vec<String>>,
    /// Largest answer, bytes (default 65536).
    pub max_bytes: Option<usize>,
    /// One fetch's time limit, ms (default 3000).
    pub timeout_ms: Option<u64>,
    /// Admit loopback addresses and any port: for tests, never in production.
    pub allow_loopback: Option<bool>,
}

/// Why a URL was not fetched: only [`NotFetched::Failed`] is remembered.
#[derive(Debug)]
enum NotFetched {
    /// Not fetchable by the rules, or not now (budget, slots): says nothing
    /// about the URL itself.
    Refused(String),
    /// Fetched, and it did not work.
    Failed(String),
}

/// The host's fetcher and cache of issuer certificates, shared by every call.
pub struct IssuerFetcher {
    allowed_hosts: Vec<String>,
    max_bytes: usize,
    timeout: Duration,
    allow_loopback: bool,
    cache: Mutex<Cache>,
    budget: Mutex<Budget>,
    /// Fetch slots by allowed host (created on first use, so bounded by the
    /// allow-list): one host's slow URLs cannot hold up another's.
    host_slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Fetch slots for refreshing held URLs: never taken by URLs clients invent.
    refresh_slots: Arc<Semaphore>,
    /// Added to the real time: tests age the cache with it.
    #[cfg(test)]
    skew: Mutex<Duration>,
}

impl IssuerFetcher {
    /// A fetcher with `config`'s rules (defaults filled in).
    pub fn new(config: &IssuersConfig) -> IssuerFetcher {
        let allowed_hosts = match &config.allowed_hosts {
            Some(hosts) => hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            None => DEFAULT_ALLOWED_HOSTS.iter().map(|h| h.to_string()).collect(),
        };
        IssuerFetcher {
            allowed_hosts,
            max_bytes: config.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            timeout: config.timeout_ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis),
            allow_loopback: config.allow_loopback.unwrap_or(false),
            cache: Mutex::new(Cache::default()),
            budget: Mutex::new(Budget::default()),
            host_slots: Mutex::new(HashMap::new()),
            refresh_slots: Arc::new(Semaphore::new(SLOTS_PER_LANE)),
            #[cfg(test)]
            skew: Mutex::new(Duration::ZERO),
        }
    }

    /// Whether any host is allowed at all.
    pub fn enabled(&self) -> bool {
        !self.allowed_hosts.is_empty()
    }

    /// Fetches every URL of `urls` the cache cannot answer (if allowed); true
    /// if at least one body became available, so a retry can see something
    /// new. Refusals and failures are logged; only failures are remembered.
    pub async fn fetch(&self, urls: &[String]) -> bool {
        let mut any = false;
        for url in urls {
            let want = self.cache().want(url, self.now());
            let outcome = match want {
                // Fetched by another request since the plugin asked: new to this one.
                Want::Held => {
                    any = true;
                    continue;
                }
                Want::FailedLately => continue,
                Want::Refresh | Want::New => self.fetch_one(url, want == Want::Refresh).await,
            };
            let now = self.now();
            match outcome {
                Ok(body) => {
                    tracing::info!(%url, bytes = body.len(), "fetched an issuer certificate");
                    self.cache().store(url, body.into(), now);
                    any = true;
                }
                Err(NotFetched::Failed(why)) => {
                    tracing::warn!(%url, reason = %why, "issuer URL failed");
                    let mut cache = self.cache();
                    cache.fail(url, now);
                    // A held body whose refresh failed is served meanwhile.
                    any |= cache.want(url, now) == Want::Held;
                }
                Err(NotFetched::Refused(why)) => {
                    tracing::warn!(%url, reason = %why, "not using issuer URL");
                }
            }
        }
        any
    }

    fn now(&self) -> Instant {
        #[cfg(test)]
        return Instant::now() + *self.skew.lock().unwrap();
        #[cfg(not(test))]
        Instant::now()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits `url`, takes its budget (its host's, or its own once-a-window
    /// refresh when `refresh`), then a slot, and fetches it.
    async fn fetch_one(&self, url: &str, refresh: bool) -> Result<Vec<u8>, NotFetched> {
        let target = self.admit(url).map_err(NotFetched::Refused)?;
        let now = self.now();
        let slots = if refresh {
            if !self.cache().start_refresh(url, now) {
                return Err(NotFetched::Refused(format!(
                    "refreshed within the last {} s",
                    WINDOW.as_secs()
                )));
            }
            self.refresh_slots.clone()
        } else {
            self.budget
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(&target.host, now)
                .map_err(NotFetched::Refused)?;
            self.host_slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(target.host.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(SLOTS_PER_LANE)))
                .clone()
        };
        // Waiting for a slot is bounded too: slow URLs ahead cannot hold this
        // one for longer than the timeout, and not getting one is a refusal,
        // not a failure of this URL.
        let _slot = match tokio::time::timeout(self.timeout, slots.acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => {
                return Err(NotFetched::Refused(format!(
                    "no free fetch slot for {} within {} ms",
                    target.host,
                    self.timeout.as_millis()
                )))
            }
        };
        self.download(url, target).await
    }

    /// Whether `url` may be fetched at all: length, scheme, credentials, host, port.
    fn admit(&self, url: &str) -> Result<Target, String> {
        if url.len() > MAX_URL_BYTES {
            return Err(format!("the URL is longer than {MAX_URL_BYTES} bytes"));
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("scheme {:?} is not http or https", parsed.scheme()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("the URL carries credentials".into());
        }
        let host = parsed.host_str().ok_or("the URL has no host")?.to_ascii_lowercase();
        if !self.allowed_hosts.contains(&host) {
            return Err(format!("host {host:?} is not on [issuers] allowed_hosts"));
        }
        let port = parsed.port_or_known_default().ok_or("the URL has no port")?;
        if parsed.port().is_some() && !self.allow_loopback {
            return Err(format!("port {port} is not the scheme's default"));
        }
        Ok(Target {
            url: parsed,
            host,
            port,
        })
    }

    async fn download(&self, url: &str, target: Target) -> Result<Vec<u8>, NotFetched> {
        let work = async {
            let addrs = self.resolve(&target).await?;
            let failed = |e: reqwest::Error| NotFetched::Failed(e.to_string());
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(self.timeout);
            // Connect to exactly the checked addresses (an IP literal needs no override).
            if target.host.parse::<IpAddr>().is_err() {
                builder = builder.resolve_to_addrs(&target.host, &addrs);
            }
            let client = builder.build().map_err(failed)?;
            let mut response = client.get(target.url.clone()).send().await.map_err(failed)?;
            if !response.status().is_success() {
                return Err(NotFetched::Failed(format!("the server answered {}", response.status())));
            }
            let too_big = || NotFetched::Failed(format!("the answer is larger than {} bytes", self.max_bytes));
            if response.content_length().is_some_and(|n| n > self.max_bytes as u64) {
                return Err(too_big());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(failed)? {
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(too_big());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(NotFetched::Failed(format!(
                "no answer from {url} within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// The target's addresses, each one allowed. A name that does not resolve
    /// fails; one that resolves to an address not allowed is refused.
    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, NotFetched> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| NotFetched::Failed(format!("cannot resolve {}: {e}", target.host)))?
            .collect();
        if addrs.is_empty() {
            return Err(NotFetched::Failed(format!("{} has no address", target.host)));
        }
        for addr in &addrs {
            if !address::allowed(addr.ip(), self.allow_loopback) {
                return Err(NotFetched::Refused(format!(
                    "{} resolves to {}, which is not a public address",
                    target.host,
                    addr.ip()
                )));
            }
        }
        Ok(addrs)
    }
}

impl IssuerBodies for IssuerFetcher {
    fn get(&self, url: &str) -> Option<Arc<[u8]>> {
        self.cache().serve(url, self.now())
    }
}

struct Target {
    url: reqwest::Url,
    host: String,
    port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_allowed_hosts_on_default_ports() {
        let f = IssuerFetcher::new(&IssuersConfig::default());
        assert!(f
            .admit("http://caissuers.microsoft.com/pkiops/certs/Microsoft%20TLS%20RSA%20Root%20G2%20-%20xsign.crt")
            .is_ok());
        assert!(f.admit("http://WWW.Microsoft.com/pkiops/certs/x.crt").is_ok());
        for (url, why) in [
            ("http://evil.example/x.crt", "allowed_hosts"),
            ("http://caissuers.microsoft.com:8080/x.crt", "default"),
            ("ftp://caissuers.microsoft.com/x.crt", "scheme"),
            ("http://user:pw@caissuers.microsoft.com/x.crt", "credentials"),
            ("file:///etc/passwd", "scheme"),
            ("not a url", "not a URL"),
        ] {
            let err = f.admit(url).err().unwrap_or_else(|| panic!("{url} admitted"));
            assert!(err.contains(why), "{url}: {err}");
        }
        let off = IssuerFetcher::new(&IssuersConfig {
            allowed_hosts: Some(vec![]),
            ..Default::default()
        });
        assert!(!off.enabled());
    }

    /// Refusals cost nothing and are not remembered: a URL refused for its
    /// host, or past its host's budget, is fetched once it may be.
    #[tokio::test]
    async fn refusals_are_never_remembered() {
        let f = IssuerFetcher::new(&IssuersConfig {
            allowed_hosts: Some(vec!["127.0.0.1".into()]),
            ..Default::default()
        });
        let off_list: Vec<String> = (0..600).map(|i| format!("http://h{i}.example/x.crt")).collect();
        assert!(!f.fetch(&off_list).await);
        // Loopback without the test switch: refused at the address.
        assert!(!f.fetch(&["http://127.0.0.1/x.crt".to_string()]).await);
        assert_eq!(f.cache().counts(), (0, 0));
        let now = f.now();
        for url in off_list.iter().chain(["http://127.0.0.1/x.crt".to_string()].iter()) {
            assert_eq!(f.cache().want(url, now), Want::New, "{url}");
        }
    }

    /// A loopback stand-in: `/inter.crt` answers, `/hang-*` never does, the
    /// rest is 404; hits counted as (genuine, hanging, others).
    struct StandIn {
        base: String,
        hits: Arc<[std::sync::atomic::AtomicUsize; 3]>,
    }

    impl StandIn {
        async fn start() -> StandIn {
            use std::sync::atomic::Ordering::SeqCst;
            let hits: Arc<[std::sync::atomic::AtomicUsize; 3]> = Arc::default();
            let counted = hits.clone();
            let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
                let hits = counted.clone();
                async move {
                    if uri.path() == "/inter.crt" {
                        hits[0].fetch_add(1, SeqCst);
                        (axum::http::StatusCode::OK, b"certificate".to_vec())
                    } else if uri.path().starts_with("/hang-") {
                        hits[1].fetch_add(1, SeqCst);
                        std::future::pending().await
                    } else {
                        hits[2].fetch_add(1, SeqCst);
                        (axum::http::StatusCode::NOT_FOUND, Vec::new())
                    }
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            StandIn { base, hits }
        }

        fn hits(&self, which: usize) -> usize {
            self.hits[which].load(std::sync::atomic::Ordering::SeqCst)
        }

        fn fetcher(&self, timeout_ms: u64) -> Arc<IssuerFetcher> {
            Arc::new(IssuerFetcher::new(&IssuersConfig {
                allowed_hosts: Some(vec!["127.0.0.1".into()]),
                allow_loopback: Some(true),
                timeout_ms: Some(timeout_ms),
                ..Default::default()
            }))
        }
    }

    /// A URL that worked before is fetched again when its body ages, even
    /// while clients have spent its host's budget on URLs of their own; and
    /// a URL refused for the budget is not remembered as failed.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_held_url_is_refreshed_while_its_host_budget_is_spent() {
        let s = StandIn::start().await;
        let f = s.fetcher(30_000);
        let genuine = vec![format!("{}/inter.crt", s.base)];
        assert!(f.fetch(&genuine).await);
        assert!(f.get(&genuine[0]).is_some());

        *f.skew.lock().unwrap() = cache::BODY_TTL;
        assert!(f.get(&genuine[0]).is_none(), "aged: asked for again");
        let spam: Vec<String> = (0..HOST_FETCHES_PER_WINDOW + 5)
            .map(|i| format!("{}/spam-{i}.crt", s.base))
            .collect();
        assert!(!f.fetch(&spam).await);
        assert_eq!(s.hits(2), HOST_FETCHES_PER_WINDOW);
        let late = spam.last().unwrap();
        assert_eq!(
            f.cache().want(late, f.now()),
            Want::New,
            "the budget is not the URL's failure"
        );

        assert!(f.fetch(&genuine).await, "refreshed outside the host budget");
        assert_eq!(s.hits(0), 2);
        assert!(f.get(&genuine[0]).is_some());
    }

    /// Slow URLs on the allowed host hold its fetch slots, not the slots
    /// refreshes of held URLs use.
    #[tokio::test(flavor = "multi_thread")]
    async fn slow_urls_cannot_hold_up_a_refresh() {
        let s = StandIn::start().await;
        // Long enough that the hanging fetches outlast the test.
        let f = s.fetcher(600_000);
        let genuine = vec![format!("{}/inter.crt", s.base)];
        assert!(f.fetch(&genuine).await);
        *f.skew.lock().unwrap() = cache::BODY_TTL;

        let hanging: Vec<_> = (0..SLOTS_PER_LANE + 1)
            .map(|i| {
                let (f, url) = (f.clone(), format!("{}/hang-{i}.crt", s.base));
                tokio::spawn(async move { f.fetch(&[url]).await })
            })
            .collect();
        // Every host slot is taken once the stand-in has seen that many.
        while s.hits(1) < SLOTS_PER_LANE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(f.fetch(&genuine).await);
        assert_eq!(s.hits(0), 2);
        for task in hanging {
            task.abort();
        }
    }
}
