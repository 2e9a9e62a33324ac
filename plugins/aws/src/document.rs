//! The instance identity document: the fields idgate reads from it.

use idgate_plugin_kit::{Identity, VerifyError};
use serde::Deserialize;

/// Largest document accepted, bytes; IMDS documents are about 500 B.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// The fields of a document, read once its signature has been checked. Other
/// fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// `i-...`: the identity.
    #[serde(default)]
    pub instance_id: String,
    /// Chooses the certificate.
    #[serde(default)]
    pub region: String,
    /// The owning account.
    pub account_id: Option<String>,
    /// e.g. `us-east-1b`.
    pub availability_zone: Option<String>,
    /// When the instance was last launched or started (RFC 3339).
    pub pending_time: Option<String>,
}

/// Only the `region`, for [`claimed_region`]; every other field is ignored.
#[derive(Deserialize)]
struct Claim {
    region: Option<String>,
}

/// The region a document claims, read only to choose the keys that must have
/// signed it: nothing else in the document is believed, or even looked at,
/// before its signature holds ([`Document::parse`] comes after). A document
/// that names no region can have been signed by no key idgate trusts for it,
/// so a tampered one is a bad signature (401), as Coder answers it, never a
/// malformed request.
pub fn claimed_region(text: &str) -> Result<String, VerifyError> {
    check_size(text)?;
    let unsigned =
        |why: String| VerifyError::BadSignature(format!("no trusted key can have signed the document: {why}"));
    // serde would also read a JSON array positionally; a document is an object.
    if !text.trim_start().starts_with('{') {
        return Err(unsigned("it is not a JSON object".into()));
    }
    let claim: Claim =
        serde_json::from_str(text).map_err(|e| unsigned(format!("it is not a JSON object naming its region: {e}")))?;
    match claim.region {
        Some(region) if !region.trim().is_empty() => Ok(region),
        _ => Err(unsigned("it names no region".into())),
    }
}

fn check_size(text: &str) -> Result<(), VerifyError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(VerifyError::Malformed(format!(
            "document is larger than {MAX_DOCUMENT_BYTES} bytes"
        )));
    }
    Ok(())
}

impl Document {
    /// Parses the document JSON; it must be an object with a non-empty
    /// `instanceId` and `region`.
    pub fn parse(text: &str) -> Result<Document, VerifyError> {
        check_size(text)?;
        // serde would also read a JSON array positionally; a document is an object.
        if !text.trim_start().starts_with('{') {
            return Err(VerifyError::Malformed("document is not a JSON object".into()));
        }
        let doc: Document = serde_json::from_str(text)
            .map_err(|e| VerifyError::Malformed(format!("document is not an instance identity document: {e}")))?;
        if doc.instance_id.trim().is_empty() {
            return Err(VerifyError::Malformed("document has no instanceId".into()));
        }
        if doc.region.trim().is_empty() {
            return Err(VerifyError::Malformed("document has no region".into()));
        }
        Ok(doc)
    }

    /// The identity, with `credential` naming the verified form(s).
    pub fn identity(&self, credential: &str) -> Identity {
        let mut id = Identity::new(self.instance_id.clone()).with("region", self.region.clone());
        for (name, value) in [
            ("accountId", &self.account_id),
            ("availabilityZone", &self.availability_zone),
            ("pendingTime", &self.pending_time),
        ] {
            if let Some(v) = value {
                id = id.with(name, v.clone());
            }
        }
        id.with("credential", credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_fields_and_shapes() {
        let ok = Document::parse(r#"{"instanceId":"i-1","region":"us-east-1","accountId":"1"}"#).unwrap();
        assert_eq!(ok.identity("signature").attribute("accountId"), Some("1"));
        for bad in [
            "",
            "{}",
            "[\"i-1\", \"us-east-1\"]",
            r#"{"instanceId":"i-1"}"#,
            r#"{"instanceId":"","region":"us-east-1"}"#,
            r#"{"instanceId":" ","region":"us-east-1"}"#,
            r#"{"instanceId":"i-1","region":""}"#,
            r#"{"instanceId":1,"region":"us-east-1"}"#,
            r#"{"instanceId":"i-1","region":"us-east-1","accountId":5}"#,
            r#"{"instanceId":"i-1","region":"us-east-1"} trailing"#,
            "not json",
        ] {
            assert!(matches!(Document::parse(bad), Err(VerifyError::Malformed(_))), "{bad}");
        }
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_DOCUMENT_BYTES));
        assert!(matches!(Document::parse(&huge), Err(VerifyError::Malformed(m)) if m.contains("larger")));
        assert!(matches!(claimed_region(&huge), Err(VerifyError::Malformed(m)) if m.contains("larger")));
    }

    #[test]
    fn only_the_region_is_read_before_the_signature() {
        // Whatever else is wrong with the document waits for the signature.
        assert_eq!(
            claimed_region(r#"{"region":"us-east-1","instanceId":5}"#).unwrap(),
            "us-east-1"
        );
        for unsigned in [
            "",
            "{}",
            "not json",
            r#"["us-east-1"]"#,
            r#"{"region":""}"#,
            r#"{"region":7}"#,
            r#"{"region":"r"} x"#,
        ] {
            assert!(
                matches!(claimed_region(unsigned), Err(VerifyError::BadSignature(_))),
                "{unsigned}"
            );
        }
    }
}
