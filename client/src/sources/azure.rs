//! Azure: the attested data document from the Instance Metadata Service.
//!
//! `GET /metadata/attested/document?api-version=2020-09-01` with the header
//! `Metadata: true` (IMDS refuses requests without it, which keeps a
//! forwarded browser request from reaching it) answers
//! `{"encoding":"pkcs7","signature":"<base64 PKCS#7>"}`; both fields are
//! forwarded, as Coder's agent does.

use std::time::Duration;

use serde_json::Value;
use ureq::http::Method;

use super::{metadata_base, metadata_body, Credential, CredentialSource, Failure, Retry};
use crate::answer::MAX_ANSWER_BYTES;
use crate::error::Error;
use crate::http::Net;
use crate::secret::Secret;

/// The documented address of Azure's Instance Metadata Service.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// A documented api-version of the attested data endpoint.
pub const API_VERSION: &str = "2020-09-01";

/// `azure-instance-identity`.
#[derive(Debug, Clone)]
pub struct Azure {
    base: String,
}

impl Azure {
    /// The endpoint is `metadata_url`, else [`DEFAULT_ENDPOINT`].
    pub fn new(metadata_url: Option<&str>) -> Result<Azure, Error> {
        Ok(Azure {
            base: metadata_base(metadata_url, None, DEFAULT_ENDPOINT)?,
        })
    }
}

/// The attested document's `signature` and `encoding`. Pure; no panic on any input.
pub fn parse_attested(body: &[u8]) -> Result<(String, String), String> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err("the attested document is too large".into());
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| "the attested document is not JSON".to_string())?;
    let field = |name: &str| match value.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(format!("the attested document has no {name}")),
    };
    Ok((field("signature")?, field("encoding")?))
}

impl CredentialSource for Azure {
    fn name(&self) -> &'static str {
        "azure-instance-identity"
    }

    fn default_route(&self) -> Option<&'static str> {
        Some("azure-instance-identity")
    }

    fn fetch(&self, net: &Net, timeout: Duration) -> Result<Credential, Failure> {
        let what = "Azure instance metadata (attested document)";
        let url = format!("{}/metadata/attested/document?api-version={API_VERSION}", self.base);
        let reply = net
            .metadata()
            .send(Method::GET, &url, &[("Metadata", "true")], None, timeout);
        let body = metadata_body(what, "is this an Azure VM?", reply)?;
        let (signature, encoding) = parse_attested(&body).map_err(|why| Failure {
            error: Error::Config(format!("{what}: {why}")),
            retry: Retry::IfRetryAll,
        })?;
        Ok(Credential::new()
            .with("signature", Secret::new(signature))
            .with("encoding", Secret::new(encoding)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attested_documents() {
        let (s, e) = parse_attested(br#"{"encoding":"pkcs7","signature":"MIIL"}"#).unwrap();
        assert_eq!((s.as_str(), e.as_str()), ("MIIL", "pkcs7"));
        for bad in [
            &b""[..],
            b"{}",
            br#"{"encoding":"pkcs7"}"#,
            br#"{"signature":3,"encoding":"x"}"#,
            b"\xff",
            b"[1",
        ] {
            assert!(parse_attested(bad).is_err());
        }
    }
}
