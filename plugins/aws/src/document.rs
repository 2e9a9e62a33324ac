//! The instance identity document: the fields idgate reads from it.

use idgate_plugin_kit::{Identity, VerifyError};
use serde::Deserialize;

/// Largest document accepted, bytes; IMDS documents are about 500 B.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// The fields of a document, read after (or, for the `signature` form, just
/// before) its signature is checked. Other fields are ignored.
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

impl Document {
    /// Parses the document JSON; it must be an object with a non-empty
    /// `instanceId` and `region`.
    pub fn parse(text: &str) -> Result<Document, VerifyError> {
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(VerifyError::Malformed(format!(
                "document is larger than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
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
    }
}
