//! The exchange: a fresh credential from the source, posted to the server's
//! endpoint with the agent name, the answer decoded — retried as long as
//! retrying may help and the deadline allows.
//!
//! Each attempt fetches the credential again: an IMDS session token or a
//! projected Kubernetes token may have expired since the last attempt, and
//! a metadata service that was down may be up.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};
use ureq::http::Method;

use crate::answer::{self, Answer};
use crate::endpoint::{route_for_mount, Endpoint};
use crate::error::Error;
use crate::http::{HttpError, Net};
use crate::retry::{Backoff, RetryPolicy};
use crate::secret::Secret;
use crate::sources::{Credential, CredentialSource, Failure, Retry};

/// Each request's own timeout, unless set otherwise (and never past the deadline).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a retry observer is told: no secret, only what failed and the wait.
#[derive(Debug)]
pub struct RetryNotice<'a> {
    /// Why the attempt failed.
    pub error: &'a Error,
    /// How long until the next attempt.
    pub delay: Duration,
    /// Attempts made so far.
    pub attempts: u32,
}

/// A callback told before each wait.
pub type RetryObserver = Box<dyn Fn(&RetryNotice<'_>) + Send + Sync>;

/// Exchanges a source's credentials for session tokens at one endpoint.
pub struct Exchanger {
    source: Box<dyn CredentialSource>,
    url: String,
    agent_name: Option<String>,
    policy: RetryPolicy,
    request_timeout: Duration,
    net: Net,
    observer: Option<RetryObserver>,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("source", &self.source.name())
            .field("url", &self.url)
            .field("agent_name", &self.agent_name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Exchanger {
    /// An exchanger posting `source`'s credentials to `endpoint`, at `mount`'s
    /// route when given, else at the source's default (Coder's) route.
    /// Token sources have no default: they need a mount.
    pub fn new(source: Box<dyn CredentialSource>, endpoint: &Endpoint, mount: Option<&str>) -> Result<Self, Error> {
        let route = match (mount, source.default_route()) {
            (Some(mount), _) => route_for_mount(mount)?,
            (None, Some(route)) => route.to_string(),
            (None, None) => {
                return Err(Error::Config(format!(
                    "--auth {} posts to an idgate mount: give --mount NAME (the server's [mounts.NAME])",
                    source.name()
                )))
            }
        };
        Ok(Exchanger {
            source,
            url: endpoint.url_for(&route),
            agent_name: None,
            policy: RetryPolicy::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            net: Net::new(None),
            observer: None,
        })
    }

    /// The agent to authenticate as, when the instance has several; trimmed,
    /// and left out of the body when blank (Coder's `omitempty`).
    pub fn agent_name(mut self, name: Option<&str>) -> Self {
        self.agent_name = normalize_agent_name(name);
        self
    }

    /// How long and how often to retry.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Each request's own timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// A PEM file of CA certificates trusted for `https`, besides the system's.
    pub fn ca_file(mut self, path: Option<PathBuf>) -> Self {
        self.net = Net::new(path);
        self
    }

    /// A callback told about each retry (the CLI prints it on stderr).
    pub fn on_retry(mut self, observer: RetryObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The endpoint URL credentials are posted to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Exchanges until a session token, a definite refusal, or the deadline.
    pub fn exchange(&self) -> Result<Secret, Error> {
        let mut backoff = Backoff::new(self.policy);
        let mut attempts = 0u32;
        loop {
            attempts = attempts.saturating_add(1);
            let failure = match self.attempt(backoff.request_timeout(self.request_timeout)) {
                Ok(token) => return Ok(token),
                Err(failure) => failure,
            };
            let retry_after = match failure.retry {
                Retry::Yes { after } => after,
                Retry::IfRetryAll if self.policy.retry_all => None,
                _ => return Err(failure.error),
            };
            let Some(delay) = backoff.next_delay(retry_after) else {
                return Err(failure.error);
            };
            if let Some(observer) = &self.observer {
                observer(&RetryNotice {
                    error: &failure.error,
                    delay,
                    attempts,
                });
            }
            std::thread::sleep(delay);
        }
    }

    /// One attempt: fetch the credential, post it, decode the answer.
    pub fn attempt(&self, timeout: Duration) -> Result<Secret, Failure> {
        let credential = self.source.fetch(&self.net, timeout)?;
        let body = request_body(&credential, self.agent_name.as_deref());
        let http = self.net.web(&self.url).map_err(|error| Failure {
            error,
            retry: Retry::No,
        })?;
        let reply = http.send(
            Method::POST,
            &self.url,
            &[("Content-Type", "application/json"), ("Accept", "application/json")],
            Some(body.expose().as_bytes()),
            timeout,
        );
        let reply = match reply {
            Ok(reply) => reply,
            Err(HttpError::Transport(m)) => {
                return Err(Failure {
                    error: Error::Unreachable(m),
                    retry: Retry::Yes { after: None },
                })
            }
            Err(HttpError::Config(m)) => return Err(Failure::config(m)),
        };
        match answer::decode(reply.status, reply.retry_after.as_deref(), &reply.body) {
            Answer::Token(token) => Ok(token),
            Answer::Unavailable {
                status,
                retry_after,
                message,
            } => Err(Failure {
                error: Error::Unreachable(format!("{} answered HTTP {status}: {message}", self.url)),
                retry: Retry::Yes { after: retry_after },
            }),
            // Ambiguity does not resolve by waiting: the agent name has to be set.
            Answer::Refused { status: 409, message } => Err(Failure {
                error: Error::Refused { status: 409, message },
                retry: Retry::No,
            }),
            Answer::Refused { status, message } => Err(Failure {
                error: Error::Refused { status, message },
                retry: Retry::IfRetryAll,
            }),
            Answer::Malformed(why) => Err(Failure {
                error: Error::BadAnswer(why),
                retry: Retry::IfRetryAll,
            }),
        }
    }
}

/// Trims an agent name; blank is none.
pub fn normalize_agent_name(name: Option<&str>) -> Option<String> {
    name.map(str::trim).filter(|n| !n.is_empty()).map(str::to_string)
}

/// The JSON body: the credential's fields, then `agent_name` when there is one.
pub fn request_body(credential: &Credential, agent_name: Option<&str>) -> Secret {
    let mut object = Map::new();
    for (name, value) in credential.fields() {
        object.insert((*name).to_string(), Value::String(value.expose().to_string()));
    }
    if let Some(name) = normalize_agent_name(agent_name) {
        object.insert("agent_name".to_string(), Value::String(name));
    }
    Secret::new(Value::Object(object).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_omitempty() {
        let c = Credential::new().with("json_web_token", Secret::new("a.b.c"));
        assert_eq!(request_body(&c, None).expose(), r#"{"json_web_token":"a.b.c"}"#);
        assert_eq!(request_body(&c, Some("  ")).expose(), r#"{"json_web_token":"a.b.c"}"#);
        assert_eq!(
            request_body(&c, Some(" dev\n")).expose(),
            r#"{"agent_name":"dev","json_web_token":"a.b.c"}"#
        );
        let c = Credential::new().with("document", Secret::new("{\"a\" : 1}\n"));
        assert_eq!(request_body(&c, None).expose(), r#"{"document":"{\"a\" : 1}\n"}"#);
    }
}
