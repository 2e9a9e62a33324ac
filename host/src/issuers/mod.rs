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
//! - no redirects, no proxy, a short timeout, at most `max_bytes`;
//! - answers are cached by URL (a day), failures too (five minutes), the
//!   cache is bounded, at most two fetches run at once and at most
//!   [`MAX_FETCHES_PER_MINUTE`] start per minute: a client naming URLs cannot
//!   make the host a crawler.
//!
//! `allow_loopback` (tests only) admits loopback addresses and any port, so a
//! local server can stand in for Microsoft's.

pub mod address;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::sandbox::IssuerBodies;
pub use address::is_public;

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
/// Fetches started per minute, at most.
pub const MAX_FETCHES_PER_MINUTE: usize = 30;
/// How long a fetched body is served from the cache.
const BODY_TTL: Duration = Duration::from_secs(86_400);
/// How long a failure is remembered (the URL is not fetched again meanwhile).
const FAILURE_TTL: Duration = Duration::from_secs(300);
/// URLs remembered, at most (bodies and failures).
const MAX_ENTRIES: usize = 256;
/// Longest URL considered.
const MAX_URL_BYTES: usize = 2048;
/// Fetches running at once.
const MAX_CONCURRENT_FETCHES: usize = 2;

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

enum Entry {
    Body(Arc<[u8]>, Instant),
    Failed(String, Instant),
}

/// The host's fetcher and cache of issuer certificates, shared by every call.
pub struct IssuerFetcher {
    allowed_hosts: Vec<String>,
    max_bytes: usize,
    timeout: Duration,
    allow_loopback: bool,
    cache: Mutex<HashMap<String, Entry>>,
    started: Mutex<VecDeque<Instant>>,
    running: tokio::sync::Semaphore,
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
            cache: Mutex::new(HashMap::new()),
            started: Mutex::new(VecDeque::new()),
            running: tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES),
        }
    }

    /// Whether any host is allowed at all.
    pub fn enabled(&self) -> bool {
        !self.allowed_hosts.is_empty()
    }

    /// Fetches every URL of `urls` the cache has no fresh entry for (if
    /// allowed); true if at least one body became available, so a retry can
    /// see something new. Refusals and failures are logged and remembered.
    pub async fn fetch(&self, urls: &[String]) -> bool {
        let mut any = false;
        for url in urls {
            if self.fresh(url).is_some() {
                continue;
            }
            let outcome = match self.admit(url) {
                Ok(target) => self.download(url, target).await,
                Err(why) => Err(why),
            };
            match outcome {
                Ok(body) => {
                    tracing::info!(%url, bytes = body.len(), "fetched an issuer certificate");
                    self.remember(url, Entry::Body(body.into(), Instant::now()));
                    any = true;
                }
                Err(why) => {
                    tracing::warn!(%url, reason = %why, "not using issuer URL");
                    self.remember(url, Entry::Failed(why, Instant::now()));
                }
            }
        }
        any
    }

    /// The cached body for `url` if fresh: `Some(Ok)` a body, `Some(Err)` a
    /// remembered failure, `None` nothing current.
    fn fresh(&self, url: &str) -> Option<Result<Arc<[u8]>, String>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(url)? {
            Entry::Body(body, at) if at.elapsed() < BODY_TTL => Some(Ok(body.clone())),
            Entry::Failed(why, at) if at.elapsed() < FAILURE_TTL => Some(Err(why.clone())),
            _ => None,
        }
    }

    fn remember(&self, url: &str, entry: Entry) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_ENTRIES && !cache.contains_key(url) {
            // Drop the oldest entry: the cache stays bounded whatever clients name.
            let oldest = cache
                .iter()
                .min_by_key(|(_, e)| match e {
                    Entry::Body(_, at) | Entry::Failed(_, at) => *at,
                })
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                cache.remove(&k);
            }
        }
        cache.insert(url.to_string(), entry);
    }

    /// Whether `url` may be fetched at all: scheme, host, port, rate.
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
        {
            let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
            while started.front().is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
                started.pop_front();
            }
            if started.len() >= MAX_FETCHES_PER_MINUTE {
                return Err(format!(
                    "more than {MAX_FETCHES_PER_MINUTE} issuer fetches in the last minute"
                ));
            }
            started.push_back(Instant::now());
        }
        Ok(Target {
            url: parsed,
            host,
            port,
        })
    }

    async fn download(&self, url: &str, target: Target) -> Result<Vec<u8>, String> {
        let _running = self.running.acquire().await.map_err(|e| e.to_string())?;
        let work = async {
            let addrs = self.resolve(&target).await?;
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(self.timeout);
            // Connect to exactly the checked addresses (an IP literal needs no override).
            if target.host.parse::<IpAddr>().is_err() {
                builder = builder.resolve_to_addrs(&target.host, &addrs);
            }
            let client = builder.build().map_err(|e| e.to_string())?;
            let mut response = client.get(target.url.clone()).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("the server answered {}", response.status()));
            }
            if response.content_length().is_some_and(|n| n > self.max_bytes as u64) {
                return Err(format!("the answer is larger than {} bytes", self.max_bytes));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(format!("the answer is larger than {} bytes", self.max_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer from {url} within {} ms", self.timeout.as_millis())),
        }
    }

    /// The target's addresses, each one allowed.
    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, String> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{} has no address", target.host));
        }
        for addr in &addrs {
            if !address::allowed(addr.ip(), self.allow_loopback) {
                return Err(format!(
                    "{} resolves to {}, which is not a public address",
                    target.host,
                    addr.ip()
                ));
            }
        }
        Ok(addrs)
    }
}

impl IssuerBodies for IssuerFetcher {
    fn get(&self, url: &str) -> Option<Arc<[u8]>> {
        self.fresh(url).and_then(Result::ok)
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

    #[test]
    fn the_cache_stays_bounded() {
        let f = IssuerFetcher::new(&IssuersConfig::default());
        for i in 0..MAX_ENTRIES + 10 {
            f.remember(&format!("http://h/{i}"), Entry::Failed("x".into(), Instant::now()));
        }
        assert_eq!(f.cache.lock().unwrap().len(), MAX_ENTRIES);
    }
}
