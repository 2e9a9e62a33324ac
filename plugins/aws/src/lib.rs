//! AWS instance identity verifier.
//!
//! Accepts what an EC2 instance can fetch from IMDS: the document with its
//! base64 RSA-SHA256 `signature` (what Coder's agent sends), and — once the kit's
//! PKCS#7 support lands — the rsa2048 and legacy DSA PKCS#7 forms in `pkcs7`.
//! The certificate is chosen by the document's `region` from a built-in table of
//! AWS's published regional certificates (aws, aws-cn, aws-us-gov), which
//! operators can extend or override. Only the public key is used: AWS's default
//! certificate expired in 2024 and its key is still the one that signs.

mod config;
mod document;
pub mod trust;

use idgate_plugin_kit::encoding::base64_decode;
use idgate_plugin_kit::{Crypto, Identity, Provider, SignatureAlgorithm, VerifyError};
use serde::Deserialize;

use crate::config::Config;
use crate::document::Document;

/// Largest document or signature accepted, bytes; IMDS documents are ~500 B.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// The AWS provider.
pub struct Aws;

/// The credential: Coder's AWS body without `agent_name`.
#[derive(Debug, Deserialize)]
struct Credential {
    signature: Option<String>,
    document: Option<String>,
    pkcs7: Option<String>,
}

impl Provider for Aws {
    const NAME: &'static str = "aws";

    fn verify(crypto: &dyn Crypto, credential: &str, config: &str, now: i64) -> Result<Identity, VerifyError> {
        let config = Config::parse(config)?;
        let cred: Credential = serde_json::from_str(credential)
            .map_err(|e| VerifyError::Malformed(format!("credential is not a JSON object of strings: {e}")))?;
        for (name, field) in [
            ("signature", &cred.signature),
            ("document", &cred.document),
            ("pkcs7", &cred.pkcs7),
        ] {
            if field.as_ref().is_some_and(|f| f.len() > MAX_FIELD_BYTES) {
                return Err(VerifyError::Malformed(format!(
                    "{name} is larger than {MAX_FIELD_BYTES} bytes"
                )));
            }
        }
        fn nonempty(f: &Option<String>) -> Option<&str> {
            f.as_deref().filter(|s| !s.trim().is_empty())
        }
        let (doc, form) = match (
            nonempty(&cred.signature),
            nonempty(&cred.document),
            nonempty(&cred.pkcs7),
        ) {
            (_, _, Some(_)) => {
                return Err(VerifyError::Malformed(
                    "the pkcs7 form is not supported by this build; send signature and document".into(),
                ))
            }
            (Some(signature), Some(document), None) => {
                let doc = Document::parse(document)?;
                verify_signature_form(crypto, &config, &doc, document, signature)?;
                (doc, "signature")
            }
            (None, _, None) => return Err(VerifyError::Malformed("signature (or pkcs7) is required".into())),
            (Some(_), None, None) => return Err(VerifyError::Malformed("document is required with signature".into())),
        };
        config.check_policy(&doc, now)?;
        Ok(doc.identity(form))
    }
}

/// The IMDS `/signature` form: RSA PKCS#1 v1.5 / SHA-256 over the exact bytes.
fn verify_signature_form(
    crypto: &dyn Crypto,
    config: &Config,
    doc: &Document,
    document: &str,
    signature: &str,
) -> Result<(), VerifyError> {
    let signature = base64_decode(signature).map_err(|e| VerifyError::Malformed(format!("signature: {e}")))?;
    let key = config.rsa_key(&doc.region)?;
    // AWS's regional /signature keys are 1024-bit; admit that size only for them.
    let algorithm = if key.bits < 2048 {
        SignatureAlgorithm::Rsa1024Pkcs1Sha256
    } else {
        SignatureAlgorithm::RsaPkcs1Sha256
    };
    match crypto.verify_signature(algorithm, &key.spki_der, document.as_bytes(), &signature) {
        Ok(true) => Ok(()),
        Ok(false) => Err(VerifyError::BadSignature(format!(
            "the signature does not match the document under the {} certificate for region {:?}",
            key.source, doc.region
        ))),
        Err(e) => Err(VerifyError::UntrustedSigner(format!(
            "the {} certificate for region {:?} has an unusable key: {e}",
            key.source, doc.region
        ))),
    }
}

idgate_plugin_kit::export_provider!(Aws);
