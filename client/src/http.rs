//! One HTTP request, one [`Reply`]: status, `Retry-After` and a body cut at
//! [`MAX_ANSWER_BYTES`] + 1 bytes, so decoders see "too large" without the
//! agent ever holding more. Statuses are data here, not errors: what a 4xx
//! or 5xx means is for the caller to decide.
//!
//! [`Net`] builds the clients, each when first needed: one for metadata
//! services (no proxy — they are link-local, and a proxy would answer for
//! another machine — and no TLS roots), and for the web (the agent URL,
//! GitHub's token service) one for plain `http` and one for `https`, both
//! honouring `HTTPS_PROXY`/`NO_PROXY`; the `https` one verifies against
//! [`crate::tls`]'s roots, so a loopback `http` exchange never reads the
//! system's certificate store. None follows redirects: a redirect could take
//! a credential somewhere else, or downgrade it to http.

use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use ureq::http::{Method, Request};
use ureq::tls::TlsConfig;
use ureq::{Agent, Proxy};

use crate::answer::MAX_ANSWER_BYTES;
use crate::error::Error;

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The `Retry-After` header, if any and if it is text.
    pub retry_after: Option<String>,
    /// The body, at most [`MAX_ANSWER_BYTES`] + 1 bytes of it.
    pub body: Vec<u8>,
}

/// Why there is no [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The request could not even be formed (a bad URL or header): retrying will not help.
    Config(String),
    /// Connection refused, name not resolved, TLS failure, timeout, a broken
    /// answer: worth retrying.
    Transport(String),
}

/// A configured HTTP client.
#[derive(Debug, Clone)]
pub struct Http {
    agent: Agent,
}

impl Http {
    /// A client that uses the environment's proxy settings when `proxy_from_env`.
    pub fn new(proxy_from_env: bool, tls: TlsConfig) -> Http {
        let proxy = if proxy_from_env { Proxy::try_from_env() } else { None };
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(proxy)
            .user_agent(concat!("idgate-agent/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .new_agent();
        Http { agent }
    }

    /// Sends one request. `timeout` bounds all of it: resolving, connecting,
    /// sending and reading the answer.
    pub fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Reply, HttpError> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let formed = |e: ureq::http::Error| HttpError::Config(format!("cannot form a request to {url}: {e}"));
        // No body at all (not an empty one) on GET: no `Content-Length: 0` for the metadata services.
        let response = match body {
            Some(body) => self.run(builder.body(body.to_vec()).map_err(formed)?, timeout),
            None => self.run(builder.body(()).map_err(formed)?, timeout),
        }
        .map_err(|e| classify(url, e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_ANSWER_BYTES as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| HttpError::Transport(format!("{url}: reading the answer: {e}")))?;
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}

impl Http {
    fn run(
        &self,
        request: Request<impl ureq::AsSendBody>,
        timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let request = self
            .agent
            .configure_request(request)
            .timeout_global(Some(timeout))
            .build();
        self.agent.run(request)
    }
}

/// Sorts ureq's errors into "fix the configuration" and "try again".
fn classify(url: &str, e: ureq::Error) -> HttpError {
    use ureq::Error as E;
    match e {
        E::BadUri(_) | E::Http(_) | E::InvalidProxyUrl | E::Tls(_) | E::RequireHttpsOnly(_) => {
            HttpError::Config(format!("{url}: {e}"))
        }
        other => HttpError::Transport(format!("{url}: {other}")),
    }
}

/// The clients an exchange needs, each made when first needed.
#[derive(Debug)]
pub struct Net {
    ca_file: Option<PathBuf>,
    metadata: OnceLock<Http>,
    web_plain: OnceLock<Http>,
    web_tls: OnceLock<Result<Http, Error>>,
}

impl Net {
    /// `ca_file` is trusted for `https` on top of the system's roots.
    pub fn new(ca_file: Option<PathBuf>) -> Net {
        Net {
            ca_file,
            metadata: OnceLock::new(),
            web_plain: OnceLock::new(),
            web_tls: OnceLock::new(),
        }
    }

    /// The client for metadata services: no proxy, no TLS roots.
    pub fn metadata(&self) -> &Http {
        self.metadata
            .get_or_init(|| Http::new(false, crate::tls::config(Vec::new())))
    }

    /// The client for `url` on the web (the agent URL, a token service): the
    /// environment's proxy, and for `https` the TLS roots, loaded the first
    /// time and an error if there are none to trust. A plain `http` URL
    /// loads no roots, so an exchange with a loopback server stays fast.
    pub fn web(&self, url: &str) -> Result<&Http, Error> {
        let https = url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        if !https {
            return Ok(self
                .web_plain
                .get_or_init(|| Http::new(true, crate::tls::config(Vec::new()))));
        }
        self.web_tls
            .get_or_init(|| {
                let roots = crate::tls::load_roots(self.ca_file.as_deref())?;
                Ok(Http::new(true, crate::tls::config(roots)))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}
