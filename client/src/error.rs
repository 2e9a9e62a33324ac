//! What an exchange can end in, besides a token, and the exit code each means.

use std::fmt;

/// Why no session token was obtained. Messages never hold the credential or
/// the token; text that came from a server is cleaned of control characters
/// and cut to a sane length before it gets here (see [`crate::answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Wrong usage or configuration: a bad URL, a missing file or variable, a
    /// metadata service that says this machine has no such credential.
    Config(String),
    /// The server answered and said no (a 4xx other than 429). `status` 409
    /// is Coder's "several agents on this instance": `message` lists them.
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's message (and detail), ready to print.
        message: String,
    },
    /// The server answered 2xx (or 3xx) with something that is not a session token.
    BadAnswer(String),
    /// Gave up on a server or metadata service that could not be reached or
    /// kept answering 5xx/429 until the deadline.
    Unreachable(String),
}

impl Error {
    /// The process exit code the `idgate-agent` binary uses for this error:
    /// 1 refused or ambiguous, 2 usage or configuration, 3 gave up.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused { .. } | Error::BadAnswer(_) => 1,
            Error::Config(_) => 2,
            Error::Unreachable(_) => 3,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) => write!(f, "{m}"),
            // Coder's 409 message is a complete sentence naming the agents: print it as is.
            Error::Refused { status: 409, message } => write!(f, "{message}"),
            Error::Refused { status, message } => write!(f, "the server refused (HTTP {status}): {message}"),
            Error::BadAnswer(m) => write!(f, "unusable answer from the server: {m}"),
            Error::Unreachable(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Error::Config("x".into()).exit_code(), 2);
        assert_eq!(
            Error::Refused {
                status: 409,
                message: "m".into()
            }
            .exit_code(),
            1
        );
        assert_eq!(Error::BadAnswer("x".into()).exit_code(), 1);
        assert_eq!(Error::Unreachable("x".into()).exit_code(), 3);
    }

    #[test]
    fn conflict_prints_the_servers_sentence() {
        let e = Error::Refused {
            status: 409,
            message: "Set CODER_AGENT_NAME to one of: dev, main".into(),
        };
        assert_eq!(e.to_string(), "Set CODER_AGENT_NAME to one of: dev, main");
        let e = Error::Refused {
            status: 404,
            message: "Not found.".into(),
        };
        assert_eq!(e.to_string(), "the server refused (HTTP 404): Not found.");
    }
}
