//! One key-set fetch over HTTP, made as an internet-facing client makes it: a
//! time limit, a size cap, no redirects, and plain http only to loopback —
//! checked on the addresses actually connected to, not on the URL's spelling.
//!
//! - Why no redirects: a redirect leaves the origin the operator configured. A
//!   loopback `http` URL answering `302 Location: http://elsewhere/` would send
//!   the fetch across the network in clear, and the keys that decide who gets a
//!   token with it. A 3xx is an error that names where it pointed.
//! - Why a resolver of our own for `http`: the URL may name `localhost`, and
//!   what that resolves to is up to the resolver. Here every address it yields
//!   must be loopback, the connection is made only to those addresses, and the
//!   response's peer address is checked once more. Proxies are off for `http`
//!   (a proxy would be the peer); `https` may go through one, TLS authenticates
//!   the origin end to end.
//! - The HTTP cache rules (RFC 9111) that turn a response's headers into the
//!   set's lifetime are here too.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::{cached_for, normalize, Cached, DEFAULT_TTL, FETCH_TIMEOUT, MAX_JWKS_BYTES, MAX_TTL, MIN_TTL};

/// The client for `url`'s fetches: no redirects; for `http`, loopback only.
pub(super) fn client(url: &reqwest::Url) -> anyhow::Result<reqwest::Client> {
    let plain = check_scheme(url)?;
    let mut builder = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("idgate/", env!("CARGO_PKG_VERSION")));
    if plain {
        builder = builder.no_proxy().dns_resolver(Arc::new(LoopbackResolver));
    }
    builder.build().context("building the HTTP client for Google's keys")
}

/// Keys over plain HTTP could be swapped in transit; allow it only on loopback.
/// Returns whether the URL is plain `http` (then the connection is checked too).
fn check_scheme(url: &reqwest::Url) -> anyhow::Result<bool> {
    let host = url.host_str().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(is_loopback);
    match url.scheme() {
        "https" => Ok(false),
        "http" if loopback => Ok(true),
        scheme => bail!("[gcp] jwks_url {url}: scheme {scheme} refused; use https (plain http only on loopback)"),
    }
}

/// Loopback, including an IPv4 loopback address mapped into IPv6.
fn is_loopback(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Resolves a plain-`http` key-set host and yields its addresses only if every
/// one is loopback: the connector then connects to exactly these.
struct LoopbackResolver;

impl reqwest::dns::Resolve for LoopbackResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs = loopback_only(&host, addrs)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// `addrs` if they are all loopback (and there is one); else why not.
pub(super) fn loopback_only(host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    if let Some(other) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        return Err(format!(
            "{host} resolves to {}, which is not loopback: plain http is allowed only on loopback",
            other.ip()
        ));
    }
    Ok(addrs)
}

/// An error with its causes, which reqwest's own message leaves out (the
/// resolver's refusal is one).
fn with_causes(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// GETs `url` once and reads a key set from the answer, with its lifetime.
pub(super) async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Cached, String> {
    use reqwest::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, LOCATION};

    let mut response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", with_causes(&e)))?;
    if url.scheme() == "http" {
        match response.remote_addr() {
            Some(peer) if is_loopback(peer.ip()) => {}
            peer => {
                return Err(format!(
                    "GET {url}: plain http is allowed only on loopback, but the connection went to {}",
                    peer.map_or_else(|| "an unknown address".to_string(), |p| p.to_string())
                ))
            }
        }
    }
    let status = response.status();
    if status.is_redirection() {
        let to = response.headers().get(LOCATION).and_then(|v| v.to_str().ok());
        return Err(format!(
            "GET {url}: HTTP {status} redirects to {}; key-set fetches follow no redirects (set jwks_url to the final URL)",
            to.map_or_else(|| "nowhere".to_string(), |t| format!("{t:?}"))
        ));
    }
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
        return Err(format!("GET {url}: body over {MAX_JWKS_BYTES} bytes"));
    }
    let headers = response.headers();
    let joined = |name| {
        let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let ttl = lifetime(
        joined(CACHE_CONTROL).as_deref(),
        joined(EXPIRES).as_deref(),
        joined(DATE).as_deref(),
        joined(AGE).as_deref(),
        crate::clock::unix_now(),
    );
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("GET {url}: body over {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))?;
    let keys = normalize(value).map_err(|e| format!("GET {url}: {e}"))?;
    Ok(cached_for(keys, ttl.unwrap_or(DEFAULT_TTL).clamp(MIN_TTL, MAX_TTL)))
}

/// How long a response may be used, from its headers (RFC 9111): `no-store` or
/// `no-cache` → zero; `max-age` minus `Age`; else `Expires` minus `Date` (or
/// minus `now_unix`); else `None`.
pub fn lifetime(
    cache_control: Option<&str>,
    expires: Option<&str>,
    date: Option<&str>,
    age: Option<&str>,
    now_unix: i64,
) -> Option<Duration> {
    let mut max_age = None;
    for directive in cache_control.unwrap_or("").split(',') {
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age") {
            // An unparsable max-age makes the response stale (RFC 9111 4.2.1).
            let secs = value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            max_age.get_or_insert(secs);
        }
    }
    if let Some(max_age) = max_age {
        let age = age.and_then(|a| a.trim().parse::<u64>().ok()).unwrap_or(0);
        return Some(Duration::from_secs(max_age.saturating_sub(age)));
    }
    let expires = expires?;
    // An invalid Expires (often "0" or "-1") means already expired.
    let Some(expires) = parse_http_date(expires) else {
        return Some(Duration::ZERO);
    };
    let base = date.and_then(parse_http_date).unwrap_or(now_unix);
    Some(Duration::from_secs(expires.saturating_sub(base).max(0) as u64))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form HTTP
/// senders may generate, to Unix seconds.
pub fn parse_http_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split_ascii_whitespace().collect();
    let [weekday, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    if !weekday.ends_with(',') {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as u32 + 1;
    let number = |s: &str, len: usize| -> Option<u32> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let mut hms = time.split(':');
    let (h, m, s) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() {
        return None;
    }
    idgate_plugin_kit::time::unix_from_parts(
        number(year, 4)? as i64,
        month,
        number(day, 2)?,
        number(h, 2)?,
        number(m, 2)?,
        number(s, 2)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn plain_http_resolves_to_loopback_only() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            loopback_only("localhost", vec![a("127.0.0.1:0"), a("[::1]:0")])
                .unwrap()
                .len(),
            2
        );
        assert!(loopback_only("localhost", vec![a("[::ffff:127.0.0.2]:0")]).is_ok());
        let e = loopback_only("localhost", vec![a("127.0.0.1:0"), a("192.0.2.7:0")]).unwrap_err();
        assert!(e.contains("192.0.2.7") && e.contains("not loopback"), "{e}");
        assert!(loopback_only("localhost", vec![a("[::ffff:192.0.2.7]:0")]).is_err());
        assert!(loopback_only("localhost", vec![]).is_err());
    }

    #[test]
    fn only_https_or_loopback_http() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(!check_scheme(&url("https://www.googleapis.com/oauth2/v3/certs")).unwrap());
        for plain in ["http://localhost:1/x", "http://127.0.0.9/x", "http://[::1]:8/x"] {
            assert!(check_scheme(&url(plain)).unwrap(), "{plain}");
        }
        for bad in ["http://example.com/x", "http://10.0.0.1/x", "ftp://localhost/x"] {
            assert!(check_scheme(&url(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn max_age_wins_and_age_is_subtracted() {
        let secs = |cc, age| lifetime(Some(cc), Some("Thu, 01 Jan 2099 00:00:00 GMT"), None, age, NOW);
        // Google's header.
        assert_eq!(
            secs("public, max-age=19809, must-revalidate, no-transform", None),
            Some(Duration::from_secs(19809))
        );
        assert_eq!(secs("MAX-AGE=\"60\"", Some("15")), Some(Duration::from_secs(45)));
        assert_eq!(secs("max-age=60", Some("600")), Some(Duration::ZERO));
        assert_eq!(secs("max-age=abc", None), Some(Duration::ZERO));
        assert_eq!(secs("max-age=60, no-cache", None), Some(Duration::ZERO));
        assert_eq!(secs("no-store", None), Some(Duration::ZERO));
        assert_eq!(secs("max-age=10, max-age=20", None), Some(Duration::from_secs(10)));
    }

    #[test]
    fn expires_relative_to_date_or_now() {
        let date = "Tue, 14 Nov 2023 22:13:20 GMT"; // = NOW
        assert_eq!(parse_http_date(date), Some(NOW));
        let expires = "Tue, 14 Nov 2023 23:13:20 GMT";
        assert_eq!(
            lifetime(None, Some(expires), Some(date), None, 0),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            lifetime(Some("public"), Some(expires), None, None, NOW),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            lifetime(None, Some(expires), None, None, NOW + 7200),
            Some(Duration::ZERO)
        );
        assert_eq!(lifetime(None, Some("0"), None, None, NOW), Some(Duration::ZERO));
        assert_eq!(lifetime(Some("public"), None, Some(date), None, NOW), None);
        assert_eq!(lifetime(None, None, None, None, NOW), None);
    }

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
