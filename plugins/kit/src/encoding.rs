//! Base64 as the clouds send it.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

/// Decodes standard base64 (`+/`, padded), ignoring ASCII whitespace: IMDS answers
/// wrap signatures across lines.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    // Bytes, not chars: collecting chars into a String was a visible share of
    // a sandboxed verification in the profile. Whitespace is ASCII, so dropping
    // those bytes never splits a UTF-8 sequence (and base64 rejects the rest).
    let bytes = text.as_bytes();
    let compact: std::borrow::Cow<[u8]> = if bytes.iter().any(u8::is_ascii_whitespace) {
        bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect()
    } else {
        bytes.into()
    };
    if compact.is_empty() {
        return Err("empty base64".to_string());
    }
    STANDARD.decode(&compact).map_err(|e| format!("invalid base64: {e}"))
}

/// Decodes unpadded base64url, as used in JWTs and JWKs.
pub fn base64url_decode(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('=').as_bytes())
        .map_err(|e| format!("invalid base64url: {e}"))
}

/// Encodes bytes as standard padded base64.
pub fn base64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_with_line_breaks() {
        assert_eq!(base64_decode("aGVs\nbG8=\n").unwrap(), b"hello");
        assert!(base64_decode("  ").is_err());
        assert!(base64_decode("a$==").is_err());
    }

    #[test]
    fn url_safe_with_or_without_padding() {
        assert_eq!(base64url_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64url_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64url_decode("-_8").unwrap(), vec![0xfb, 0xff]);
    }
}
