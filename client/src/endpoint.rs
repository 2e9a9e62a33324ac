//! Where the credential is posted: the agent URL, checked, and the route of
//! a mount under it.
//!
//! The answer is a secret, so a plain `http` agent URL is accepted only when
//! it names a loopback host (a server on the same machine, or a local tunnel),
//! unless the operator says otherwise. This rule is for the agent URL only:
//! the clouds' metadata services are plain http on link-local addresses by
//! design and are reached through [`crate::sources`].

use std::net::IpAddr;

use crate::error::Error;

/// Every endpoint's path ends with this (`<mount>-instance-identity`).
pub const ROUTE_SUFFIX: &str = "-instance-identity";

/// A checked agent URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Scheme, authority and path prefix, without a trailing `/`.
    base: String,
    https: bool,
}

impl Endpoint {
    /// Checks an agent URL (`https://coder.example.com`, `http://127.0.0.1:8080/prefix`).
    /// Plain `http` to a host that is not loopback needs `allow_insecure_http`.
    pub fn parse(url: &str, allow_insecure_http: bool) -> Result<Endpoint, Error> {
        if url.is_empty() {
            return Err(Error::Config(
                "no agent URL: give --agent-url or set CODER_AGENT_URL".into(),
            ));
        }
        let bad = |why: &str| Error::Config(format!("agent URL {:?}: {why}", crate::answer::clean(url)));
        if url.contains(['?', '#']) {
            return Err(bad("a base URL has no query or fragment"));
        }
        let https = check_secret_url(url, allow_insecure_http).map_err(|why| bad(&why))?;
        Ok(Endpoint {
            base: url.trim_end_matches('/').to_string(),
            https,
        })
    }

    /// The URL of an endpoint: `<base>/api/v2/workspaceagents/<route>`.
    pub fn url_for(&self, route: &str) -> String {
        format!("{}/api/v2/workspaceagents/{route}", self.base)
    }

    /// Whether TLS is used.
    pub fn is_https(&self) -> bool {
        self.https
    }
}

/// Checks a URL that a secret will be sent to, or come back from: `http` or
/// `https`, a well-formed host, no credentials in it, and plain `http` only
/// to a loopback host unless `allow_insecure_http`. Returns whether it is `https`.
pub fn check_secret_url(url: &str, allow_insecure_http: bool) -> Result<bool, String> {
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("holds spaces or control characters".into());
    }
    let (scheme, rest) = url.split_once("://").ok_or("not an http or https URL")?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        _ => return Err("not an http or https URL".into()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("credentials do not belong in the URL".into());
    }
    let host = host_of(authority).ok_or("no host, or a malformed one")?;
    if !https && !allow_insecure_http && !is_loopback_host(host) {
        return Err(
            "plain http to a host that is not loopback would carry a secret in clear; \
             use https, or --allow-insecure-http if the network is trusted"
                .into(),
        );
    }
    Ok(https)
}

/// The host of an authority (`host`, `host:port`, `[v6]`, `[v6]:port`),
/// or `None` when it is empty or its port is not a number.
fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    (!host.is_empty()).then_some(host)
}

/// `localhost` (RFC 6761 reserves it for loopback) or a loopback address.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The route of a mount, as idgate serves it: Coder's path for `gcp`
/// (`google-instance-identity`), `<mount>-instance-identity` for any other.
/// Mount names are idgate's: lower-case letters, digits and `-`.
pub fn route_for_mount(mount: &str) -> Result<String, Error> {
    let valid = !mount.is_empty()
        && mount.len() <= 64
        && mount
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(Error::Config(format!(
            "mount {:?}: a mount name is 1 to 64 lower-case letters, digits and '-'",
            crate::answer::clean(mount)
        )));
    }
    Ok(match mount {
        "gcp" => "google-instance-identity".to_string(),
        m => format!("{m}{ROUTE_SUFFIX}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("https://coder.example.com/", false).unwrap();
        assert!(e.is_https());
        assert_eq!(
            e.url_for("aws-instance-identity"),
            "https://coder.example.com/api/v2/workspaceagents/aws-instance-identity"
        );
        let e = Endpoint::parse("http://127.0.0.1:8080/idgate", false).unwrap();
        assert_eq!(
            e.url_for("k8s-instance-identity"),
            "http://127.0.0.1:8080/idgate/api/v2/workspaceagents/k8s-instance-identity"
        );
        for ok in [
            "http://localhost:1",
            "http://[::1]:9",
            "http://127.8.9.1",
            "HTTP://LOCALHOST",
            "https://10.0.0.1",
        ] {
            assert!(Endpoint::parse(ok, false).is_ok(), "{ok}");
        }
    }

    #[test]
    fn plain_http_elsewhere_needs_the_flag() {
        for url in [
            "http://10.0.0.1",
            "http://coder.example.com",
            "http://127.0.0.1.nip.io",
            "http://[fe80::1]:80",
        ] {
            assert!(matches!(Endpoint::parse(url, false), Err(Error::Config(_))), "{url}");
            assert!(Endpoint::parse(url, true).is_ok(), "{url}");
        }
    }

    #[test]
    fn malformed_urls() {
        for url in [
            "",
            "coder.example.com",
            "ftp://x",
            "https://",
            "https://:80",
            "https://u:p@x",
            "https://x?y=1",
            "https://x#f",
            "https://x:port",
            "https://[::1",
            "https://x y",
            "https://x\n",
            "https://[::1]x",
        ] {
            assert!(matches!(Endpoint::parse(url, true), Err(Error::Config(_))), "{url:?}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route_for_mount("k8s").unwrap(), "k8s-instance-identity");
        assert_eq!(route_for_mount("gcp").unwrap(), "google-instance-identity");
        assert_eq!(route_for_mount("aws").unwrap(), "aws-instance-identity");
        for bad in ["", "K8s", "a/b", "a_b", "../x", &"a".repeat(65)] {
            assert!(route_for_mount(bad).is_err(), "{bad}");
        }
    }
}
