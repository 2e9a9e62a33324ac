//! Credential sources: where this machine's proof of identity comes from.
//!
//! Each source is one [`CredentialSource`]: one attempt at a fresh credential
//! per call (the exchanger retries), the fields it sends, and the route it
//! sends them to unless a mount is named.
//!
//! | `--auth` | module | body |
//! |---|---|---|
//! | `aws-instance-identity` | [`aws`] | `{"document","signature"}` (+ `"pkcs7"`) |
//! | `azure-instance-identity` | [`azure`] | `{"signature","encoding"}` |
//! | `google-instance-identity` | [`google`] | `{"json_web_token"}` |
//! | `kubernetes`, `jwt-file` | [`token_file`] | `{"token"}` |
//! | `github-actions` | [`github`] | `{"token"}` |

use std::fmt;
use std::time::Duration;

use crate::answer::{self, MAX_ANSWER_BYTES};
use crate::error::Error;
use crate::http::{HttpError, Net, Reply};
use crate::secret::Secret;

pub mod aws;
pub mod azure;
pub mod github;
pub mod google;
pub mod token_file;

/// The `--auth` names, in the order they are documented.
pub const NAMES: [&str; 6] = [
    "aws-instance-identity",
    "azure-instance-identity",
    "google-instance-identity",
    "kubernetes",
    "github-actions",
    "jwt-file",
];

/// A credential: the string fields of the request body, `agent_name` aside.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credential {
    fields: Vec<(&'static str, Secret)>,
}

impl Credential {
    /// An empty credential.
    pub fn new() -> Self {
        Credential::default()
    }

    /// Adds a field.
    pub fn with(mut self, name: &'static str, value: Secret) -> Self {
        self.fields.push((name, value));
        self
    }

    /// The fields, in the order they were added.
    pub fn fields(&self) -> &[(&'static str, Secret)] {
        &self.fields
    }

    /// A field's value.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: the values are the secret.
        f.debug_list().entries(self.fields.iter().map(|(n, _)| n)).finish()
    }
}

/// Whether trying again may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Yes (no answer, 5xx, 429), not before `after` if the server said so.
    Yes {
        /// The server's `Retry-After`.
        after: Option<Duration>,
    },
    /// Only when told to retry everything (`--retry-all`): a definite answer
    /// that may change (a workspace still being built answers 404).
    IfRetryAll,
    /// No: the configuration has to change first.
    No,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong; what the caller reports if it stops here.
    pub error: Error,
    /// Whether to try again.
    pub retry: Retry,
}

impl Failure {
    /// A configuration problem that no retry fixes.
    pub fn config(message: impl Into<String>) -> Self {
        Failure {
            error: Error::Config(message.into()),
            retry: Retry::No,
        }
    }
}

/// A source of credentials.
pub trait CredentialSource: Send + Sync {
    /// The `--auth` name (`aws-instance-identity`, `kubernetes`, ...).
    fn name(&self) -> &'static str;

    /// The route under `/api/v2/workspaceagents/` it posts to when no mount
    /// is named: Coder's for the clouds, `None` for token sources, whose
    /// mount is the operator's choice.
    fn default_route(&self) -> Option<&'static str>;

    /// Fetches a fresh credential: one attempt, each request bounded by `timeout`.
    fn fetch(&self, net: &Net, timeout: Duration) -> Result<Credential, Failure>;
}

/// A metadata service's base URL: `flag` (`--metadata-url`), else the
/// platform's environment value, else the documented address. Only plain
/// `http`: that is what the metadata services speak, on a link-local address.
pub fn metadata_base(flag: Option<&str>, from_env: Option<String>, default: &str) -> Result<String, Error> {
    let url = flag
        .map(str::to_string)
        .or(from_env)
        .unwrap_or_else(|| default.to_string());
    let valid = url.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        && url.len() > 7
        && !url
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '?' || c == '#');
    if !valid {
        return Err(Error::Config(format!(
            "metadata URL {:?}: expected http://HOST[:PORT] (metadata services speak plain http)",
            answer::clean(&url)
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The body of a metadata service's answer, or what its status means:
/// 200 is the answer; 5xx, 429 and no answer are retried; any other status
/// means this machine cannot give this credential as configured (`hint`
/// says what to check) and is retried only under `--retry-all`.
pub fn metadata_body(what: &str, hint: &str, result: Result<Reply, HttpError>) -> Result<Vec<u8>, Failure> {
    let reply = match result {
        Ok(reply) => reply,
        Err(HttpError::Transport(m)) => {
            return Err(Failure {
                error: Error::Unreachable(format!("{what}: {m}")),
                retry: Retry::Yes { after: None },
            })
        }
        Err(HttpError::Config(m)) => return Err(Failure::config(format!("{what}: {m}"))),
    };
    match reply.status {
        200 if reply.body.len() > MAX_ANSWER_BYTES => Err(Failure {
            error: Error::Config(format!("{what}: the answer is larger than {MAX_ANSWER_BYTES} bytes")),
            retry: Retry::IfRetryAll,
        }),
        200 => Ok(reply.body),
        429 | 500..=599 => Err(Failure {
            error: Error::Unreachable(format!("{what} answered HTTP {}", reply.status)),
            retry: Retry::Yes {
                after: reply.retry_after.as_deref().and_then(crate::retry::parse_retry_after),
            },
        }),
        status => Err(Failure {
            error: Error::Config(format!("{what} answered HTTP {status}; {hint}")),
            retry: Retry::IfRetryAll,
        }),
    }
}

/// A metadata answer that must be text (a document, a signature, a JWT),
/// trimmed of the surrounding whitespace some services add.
pub fn text(what: &str, body: Vec<u8>) -> Result<String, Failure> {
    let text = String::from_utf8(body).map_err(|_| Failure {
        error: Error::Config(format!("{what}: the answer is not UTF-8 text")),
        retry: Retry::IfRetryAll,
    })?;
    if text.trim().is_empty() {
        return Err(Failure {
            error: Error::Config(format!("{what}: the answer is empty")),
            retry: Retry::IfRetryAll,
        });
    }
    Ok(text)
}

/// Percent-encodes a query or path value (RFC 3986: all but the unreserved characters).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &[u8]) -> Result<Reply, HttpError> {
        Ok(Reply {
            status,
            retry_after: Some("2".into()),
            body: body.to_vec(),
        })
    }

    #[test]
    fn metadata_statuses() {
        assert_eq!(metadata_body("m", "h", reply(200, b"doc")).unwrap(), b"doc");
        let f = metadata_body("m", "h", reply(503, b"")).unwrap_err();
        assert_eq!(
            f.retry,
            Retry::Yes {
                after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(f.error.exit_code(), 3);
        let f = metadata_body("m", "check the account", reply(404, b"")).unwrap_err();
        assert_eq!(f.retry, Retry::IfRetryAll);
        assert_eq!(f.error, Error::Config("m answered HTTP 404; check the account".into()));
        let f = metadata_body("m", "h", reply(200, &vec![b'x'; MAX_ANSWER_BYTES + 1])).unwrap_err();
        assert_eq!(f.retry, Retry::IfRetryAll);
        let f = metadata_body("m", "h", Err(HttpError::Transport("refused".into()))).unwrap_err();
        assert_eq!(f.retry, Retry::Yes { after: None });
        assert_eq!(
            metadata_body("m", "h", Err(HttpError::Config("x".into())))
                .unwrap_err()
                .retry,
            Retry::No
        );
    }

    #[test]
    fn metadata_urls() {
        let env = Some("http://[fd00:ec2::254]".to_string());
        assert_eq!(
            metadata_base(None, env.clone(), "http://169.254.169.254").unwrap(),
            "http://[fd00:ec2::254]"
        );
        assert_eq!(
            metadata_base(Some("http://127.0.0.1:9/"), env, "x").unwrap(),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            metadata_base(None, None, "http://169.254.169.254").unwrap(),
            "http://169.254.169.254"
        );
        for bad in ["https://x", "169.254.169.254", "http://", "http://x y", "http://x?a"] {
            assert!(metadata_base(Some(bad), None, "").is_err(), "{bad}");
        }
    }

    #[test]
    fn encoding_and_redaction() {
        assert_eq!(
            percent_encode("https://idgate.example/x y"),
            "https%3A%2F%2Fidgate.example%2Fx%20y"
        );
        assert_eq!(percent_encode("coder"), "coder");
        let c = Credential::new().with("token", Secret::new("eyJsecret"));
        assert_eq!(format!("{c:?}"), r#"["token"]"#);
        assert!(text("t", b"\xff".to_vec()).is_err());
        assert!(text("t", b" \n".to_vec()).is_err());
    }
}
