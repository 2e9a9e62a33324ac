//! AWS instance identity verifier.
//!
//! Accepts what an EC2 instance can fetch from IMDS: the document with its
//! base64 RSA-SHA256 `signature` (what Coder's agent sends), the `/rsa2048`
//! PKCS#7 and the legacy DSA `/pkcs7` (both in `pkcs7`). The certificate is
//! chosen by the document's `region` from a built-in table of AWS's published
//! regional certificates (aws, aws-cn, aws-us-gov partitions), which operators
//! can extend or override. Only the public key is used: AWS's default
//! certificate expired in 2024 and its key is still the one that signs.
//! See README.md for the credential forms and the configuration.

mod config;
mod document;
mod pkcs7;
mod signature;
pub mod trust;

use idgate_plugin_kit::{Crypto, Identity, Provider, VerifyError};
use serde::Deserialize;

use crate::config::Config;
use crate::document::Document;
pub use crate::document::MAX_DOCUMENT_BYTES;

/// Largest `signature` or `pkcs7` field accepted, bytes; real ones are under 2 KiB.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;
/// Largest credential accepted before it is even parsed.
const MAX_CREDENTIAL_BYTES: usize = 4 * MAX_FIELD_BYTES;

/// The AWS provider.
pub struct Aws;

/// The credential: Coder's AWS body without `agent_name`, plus `pkcs7`.
/// Other fields are ignored, as Coder ignores them.
#[derive(Debug, Deserialize)]
struct Credential {
    signature: Option<String>,
    document: Option<String>,
    pkcs7: Option<String>,
}

impl Credential {
    fn parse(text: &str) -> Result<Credential, VerifyError> {
        let malformed = VerifyError::Malformed;
        if text.len() > MAX_CREDENTIAL_BYTES {
            return Err(malformed(format!(
                "credential is larger than {MAX_CREDENTIAL_BYTES} bytes"
            )));
        }
        if !text.trim_start().starts_with('{') {
            return Err(malformed("credential is not a JSON object".into()));
        }
        let cred: Credential = serde_json::from_str(text)
            .map_err(|e| malformed(format!("credential is not a JSON object of strings: {e}")))?;
        if cred.document.as_ref().is_some_and(|d| d.len() > MAX_DOCUMENT_BYTES) {
            return Err(malformed(format!("document is larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        for (name, field) in [("signature", &cred.signature), ("pkcs7", &cred.pkcs7)] {
            if field.as_ref().is_some_and(|f| f.len() > MAX_FIELD_BYTES) {
                return Err(malformed(format!("{name} is larger than {MAX_FIELD_BYTES} bytes")));
            }
        }
        Ok(cred)
    }
}

/// A field that is present and not blank.
fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().filter(|s| !s.trim().is_empty())
}

impl Provider for Aws {
    const NAME: &'static str = "aws";
    type Config = Config;

    fn configure(config: &str) -> Result<Config, VerifyError> {
        Config::parse(config)
    }

    fn verify(crypto: &dyn Crypto, config: &Config, credential: &str, now: i64) -> Result<Identity, VerifyError> {
        let cred = Credential::parse(credential)?;
        let (doc, form) = match (given(&cred.signature), given(&cred.document), given(&cred.pkcs7)) {
            (None, _, None) => {
                return Err(VerifyError::Malformed(
                    "the credential has neither signature nor pkcs7".into(),
                ))
            }
            (Some(_), None, None) => return Err(VerifyError::Malformed("document is required with signature".into())),
            // The signature is checked over the exact bytes before the document is
            // believed: only its region is read first, to choose the keys.
            (Some(sig), Some(document), None) => {
                let region = document::claimed_region(document)?;
                signature::verify(crypto, config, &region, document.as_bytes(), sig)?;
                (signed_document(document)?, "signature".to_string())
            }
            (sig, document, Some(p7)) => {
                // The identity is read from what was signed, never from a side copy.
                let signed = pkcs7::parse(p7)?;
                let region = document::claimed_region(&signed.document)?;
                let form = pkcs7::verify(crypto, config, &signed, &region)?;
                if document.is_some_and(|d| d.as_bytes() != signed.document.as_bytes()) {
                    return Err(VerifyError::BadSignature(
                        "document differs from the content the PKCS#7 signs".into(),
                    ));
                }
                // Both forms sent: both must hold.
                let form = match sig {
                    Some(sig) => {
                        signature::verify(crypto, config, &region, signed.document.as_bytes(), sig)?;
                        format!("signature+{form}")
                    }
                    None => form.to_string(),
                };
                (signed_document(&signed.document)?, form)
            }
        };
        config.check_policy(&doc, now)?;
        Ok(doc.identity(&form))
    }
}

/// Parses a document whose signature holds. A key idgate trusts signed it, so
/// if it is not an identity document that key cannot vouch for an instance:
/// 401, as Coder refuses a document it cannot parse, not 400 (the request
/// carried exactly what was signed).
fn signed_document(text: &str) -> Result<Document, VerifyError> {
    Document::parse(text).map_err(|e| {
        VerifyError::UntrustedSigner(format!(
            "the signature holds, but the signed document is not an instance identity document: {}",
            e.reason()
        ))
    })
}

idgate_plugin_kit::export_provider!(Aws);

#[cfg(test)]
mod tests;
