//! The server's answer to an exchange, decoded from its status, its
//! `Retry-After` header and its body bytes.
//!
//! [`decode`] is a pure function: no I/O, no allocation beyond its input's
//! size, a cap on what it reads, and no panic on any input (the unit tests
//! feed it garbage, truncations and oversized bodies; a fuzz target can call
//! it directly). Coder's agent once crashed on an answer it did not expect
//! (coder/coder#20704); this is where that cannot happen.
//!
//! Shapes, as Coder's API has them: success `{"session_token": "..."}`; any
//! error `{"message": "...", "detail"?: "...", "validations"?: [{"field", "detail"}]}`.

use std::time::Duration;

use serde_json::Value;

use crate::retry::parse_retry_after;
use crate::secret::Secret;

/// Largest body read from a server or metadata service; a longer one is cut
/// here by the HTTP layer and refused by the decoders.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Longest session token accepted (Coder's are ~40 bytes).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Longest server message passed on to a person, in characters.
const MAX_MESSAGE_CHARS: usize = 1024;

/// Most `validations` entries shown.
const MAX_VALIDATIONS: usize = 8;

/// What the server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx with a usable `session_token`.
    Token(Secret),
    /// 5xx or 429: the server cannot answer now. Try again, not before
    /// `retry_after` when it said so.
    Unavailable {
        /// HTTP status.
        status: u16,
        /// The `Retry-After` delay, when given in seconds.
        retry_after: Option<Duration>,
        /// The server's message, cleaned.
        message: String,
    },
    /// Any other 4xx: a definite no, with the server's message (409 lists
    /// the agent names to choose from).
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's message, cleaned.
        message: String,
    },
    /// Not an answer: a 2xx without a usable token, a redirect, a status
    /// outside 200..=599. The text says what was wrong, never what the body held.
    Malformed(String),
}

/// Decodes an answer to `POST /api/v2/workspaceagents/...-instance-identity`.
/// `body` may be anything, of any length.
pub fn decode(status: u16, retry_after: Option<&str>, body: &[u8]) -> Answer {
    match status {
        200..=299 => match session_token(body) {
            Ok(token) => Answer::Token(token),
            Err(why) => Answer::Malformed(why),
        },
        300..=399 => Answer::Malformed(format!(
            "HTTP {status}: a redirect; idgate does not redirect, so the agent URL is probably not the server's"
        )),
        429 | 500..=599 => Answer::Unavailable {
            status,
            retry_after: retry_after.and_then(parse_retry_after),
            message: error_message(body),
        },
        400..=499 => Answer::Refused {
            status,
            message: error_message(body),
        },
        _ => Answer::Malformed(format!("HTTP status {status} is not an answer")),
    }
}

/// The `session_token` of a success body, checked to be something that can
/// go into an environment variable and an HTTP header unchanged.
fn session_token(body: &[u8]) -> Result<Secret, String> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"));
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_string())?;
    match value.get("session_token") {
        Some(Value::String(token)) if valid_token(token) => Ok(Secret::new(token.as_str())),
        Some(Value::String(_)) => Err("the session_token is empty, too long or holds characters a token cannot".into()),
        Some(_) => Err("the session_token is not a string".into()),
        None => Err("the answer has no session_token".into()),
    }
}

/// Visible ASCII only, 1..=MAX_TOKEN_BYTES bytes.
fn valid_token(token: &str) -> bool {
    (1..=MAX_TOKEN_BYTES).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The message of Coder's error envelope, with its detail and validations,
/// cleaned for a terminal; a fixed text when the body is not an envelope
/// (a proxy's HTML page is not repeated).
pub fn error_message(body: &[u8]) -> String {
    envelope(body).unwrap_or_else(|| "(no message in the answer)".to_string())
}

fn envelope(body: &[u8]) -> Option<String> {
    if body.len() > MAX_ANSWER_BYTES {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let mut text = match object.get("message") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_string(),
        _ => return None,
    };
    match object.get("detail") {
        Some(Value::String(d)) if !d.trim().is_empty() => {
            text.push_str(": ");
            text.push_str(d.trim());
        }
        _ => {}
    }
    if let Some(Value::Array(items)) = object.get("validations") {
        let shown: Vec<String> = items
            .iter()
            .take(MAX_VALIDATIONS)
            .filter_map(|v| {
                let field = v.get("field")?.as_str()?;
                let detail = v.get("detail").and_then(Value::as_str).unwrap_or("");
                Some(format!("{field}: {detail}"))
            })
            .collect();
        if !shown.is_empty() {
            text.push_str(" (");
            text.push_str(&shown.join("; "));
            if items.len() > MAX_VALIDATIONS {
                text.push_str("; …");
            }
            text.push(')');
        }
    }
    Some(clean(&text))
}

/// Text from a server, made safe to print: control characters and Unicode
/// direction overrides (which could rewrite what a terminal shows) become
/// spaces, and the length is capped.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE_CHARS * 4));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        let unsafe_char = c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        out.push(if unsafe_char { ' ' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success() {
        let a = decode(200, None, br#"{"session_token":"abc-DEF123"}"#);
        assert_eq!(a, Answer::Token(Secret::new("abc-DEF123")));
        // Coder's struct may grow fields; they are ignored.
        let a = decode(201, None, br#"{"session_token":"t","other":[1,2]}"#);
        assert_eq!(a, Answer::Token(Secret::new("t")));
    }

    #[test]
    fn unusable_tokens_are_malformed_and_not_echoed() {
        for body in [
            &br#"{"session_token":""}"#[..],
            br#"{"session_token":"a b"}"#,
            br#"{"session_token":"a\nb"}"#,
            br#"{"session_token":"caf\u00e9"}"#,
            br#"{"session_token":7}"#,
            br#"{"session_token":null}"#,
            br#"{}"#,
            br#"[]"#,
            br#""session_token""#,
            b"<html>hello</html>",
            b"",
        ] {
            match decode(200, None, body) {
                Answer::Malformed(why) => assert!(!why.contains("a b") && !why.contains("caf")),
                other => panic!("{other:?} for {body:?}"),
            }
        }
        let long = format!(r#"{{"session_token":"{}"}}"#, "x".repeat(MAX_TOKEN_BYTES + 1));
        assert!(matches!(decode(200, None, long.as_bytes()), Answer::Malformed(_)));
    }

    #[test]
    fn coder_envelope() {
        let body = br#"{"message":"Validation failed.","validations":[{"field":"signature","detail":"Validation failed for tag \"required\" with value: \"\""}]}"#;
        assert_eq!(
            decode(400, None, body),
            Answer::Refused {
                status: 400,
                message: r#"Validation failed. (signature: Validation failed for tag "required" with value: "")"#
                    .into()
            }
        );
        let body = br#"{"message":"Invalid AWS identity.","detail":"signature mismatch"}"#;
        assert_eq!(
            decode(401, None, body),
            Answer::Refused {
                status: 401,
                message: "Invalid AWS identity.: signature mismatch".into()
            }
        );
        let body = br#"{"message":"Multiple agents found with instance ID \"i-1\". Set CODER_AGENT_NAME to one of: dev, main"}"#;
        match decode(409, None, body) {
            Answer::Refused { status: 409, message } => assert!(message.ends_with("one of: dev, main")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unavailable_with_retry_after() {
        assert_eq!(
            decode(503, Some("3"), br#"{"message":"Database unavailable."}"#),
            Answer::Unavailable {
                status: 503,
                retry_after: Some(Duration::from_secs(3)),
                message: "Database unavailable.".into()
            }
        );
        match decode(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), b"slow down") {
            Answer::Unavailable {
                status: 429,
                retry_after: None,
                message,
            } => {
                assert_eq!(message, "(no message in the answer)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn odd_statuses() {
        assert!(matches!(decode(302, None, b""), Answer::Malformed(_)));
        assert!(matches!(decode(0, None, b""), Answer::Malformed(_)));
        assert!(matches!(decode(999, None, b""), Answer::Malformed(_)));
        assert!(matches!(decode(101, None, b""), Answer::Malformed(_)));
    }

    #[test]
    fn messages_are_cleaned_and_capped() {
        let body = br#"{"message":"bad\u001b[2J\r\nthing\u202e"}"#;
        assert_eq!(error_message(body), "bad [2J  thing ");
        let long = format!(r#"{{"message":"{}"}}"#, "m".repeat(10_000));
        let m = error_message(long.as_bytes());
        assert_eq!(m.chars().count(), MAX_MESSAGE_CHARS + 1);
        let many: Vec<String> = (0..100)
            .map(|i| format!(r#"{{"field":"f{i}","detail":"d"}}"#))
            .collect();
        let body = format!(r#"{{"message":"m","validations":[{}]}}"#, many.join(","));
        assert!(error_message(body.as_bytes()).ends_with("f7: d; …)"));
    }

    #[test]
    fn huge_bodies_are_refused_unread() {
        let mut body = br#"{"session_token":"t","pad":""#.to_vec();
        body.resize(MAX_ANSWER_BYTES + 10, b'a');
        body.extend_from_slice(b"\"}");
        assert!(matches!(decode(200, None, &body), Answer::Malformed(_)));
        assert!(matches!(
            decode(404, None, &body),
            Answer::Refused { message, .. } if message == "(no message in the answer)"
        ));
    }

    #[test]
    fn every_truncation_of_real_answers() {
        let answers: [&[u8]; 3] = [
            br#"{"session_token":"abc"}"#,
            br#"{"message":"Multiple agents. Set CODER_AGENT_NAME to one of: dev, main","detail":"x","validations":[{"field":"a","detail":"b"}]}"#,
            "{\"message\":\"\u{e9}\u{1f600}\"}".as_bytes(),
        ];
        for body in answers {
            for cut in 0..body.len() {
                for status in [200, 400, 409, 503] {
                    let _ = decode(status, Some("1"), &body[..cut]);
                }
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator: bytes biased towards JSON's own.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = br#"{}[]":,\ 0123456789.eE+-truefalsnulsession_tokenmessagedetailvalidationsfield"#;
        for _ in 0..5_000 {
            let len = (next() % 200) as usize;
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        r as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect();
            let status = (next() % 700) as u16;
            let _ = decode(status, std::str::from_utf8(&body).ok(), &body);
        }
        // Deep nesting: serde_json's recursion limit answers, not the stack.
        let deep = "[".repeat(60_000);
        assert!(matches!(decode(200, None, deep.as_bytes()), Answer::Malformed(_)));
        let deep = format!(r#"{{"message":"m","detail":{}}}"#, "[".repeat(30_000));
        let _ = decode(400, None, deep.as_bytes());
    }
}
