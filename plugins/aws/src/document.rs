//! The instance identity document: the fields idgate reads from it.

use idgate_plugin_kit::{Identity, VerifyError};
use serde::Deserialize;

/// The verified document's fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// `i-...`; the identity.
    #[serde(default)]
    pub instance_id: String,
    /// Chooses the certificate.
    #[serde(default)]
    pub region: String,
    /// The owning account.
    pub account_id: Option<String>,
    /// e.g. `us-east-1b`.
    pub availability_zone: Option<String>,
    /// When the instance last started (RFC 3339).
    pub pending_time: Option<String>,
}

impl Document {
    /// Parses the document JSON; `instanceId` and `region` must be present.
    pub fn parse(text: &str) -> Result<Document, VerifyError> {
        let doc: Document = serde_json::from_str(text)
            .map_err(|e| VerifyError::Malformed(format!("document is not an instance identity document: {e}")))?;
        if doc.instance_id.is_empty() {
            return Err(VerifyError::Malformed("document has no instanceId".into()));
        }
        if doc.region.is_empty() {
            return Err(VerifyError::Malformed("document has no region".into()));
        }
        Ok(doc)
    }

    /// The identity, with `credential` naming the verified form.
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
