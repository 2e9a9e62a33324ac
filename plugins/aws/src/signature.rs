//! The IMDS `/signature` form: RSA PKCS#1 v1.5 / SHA-256 over the exact
//! document bytes, which is what Coder's agent sends.

use idgate_plugin_kit::encoding::base64_decode;
use idgate_plugin_kit::{Crypto, SignatureAlgorithm, VerifyError};

use crate::config::{Config, Purpose};
use crate::trust::Key;

/// Checks the base64 `signature` over `document` with the region's RSA keys;
/// any one of them verifying is enough (a configured entry may list several).
pub fn verify(
    crypto: &dyn Crypto,
    config: &Config,
    region: &str,
    document: &[u8],
    signature: &str,
) -> Result<(), VerifyError> {
    // Coder answers an undecodable signature as any other that fails: 401.
    let signature = base64_decode(signature).map_err(|e| VerifyError::BadSignature(format!("signature: {e}")))?;
    let keys = config.keys(region, Purpose::Signature)?;
    if keys.is_empty() {
        return Err(VerifyError::UntrustedSigner(format!(
            "no certificate for region {region:?} (the signature form needs an RSA one): add it under [aws.certificates]"
        )));
    }
    let mut unusable = Vec::new();
    for key in &keys {
        match crypto.verify_signature(algorithm(key), &key.spki_der, document, &signature) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => unusable.push(e),
        }
    }
    let source = keys[0].source;
    // Only when no key could even be used is the signer, not the signature, the problem.
    if unusable.len() == keys.len() {
        return Err(VerifyError::UntrustedSigner(format!(
            "the {source} certificate for region {region:?} has an unusable key: {}",
            unusable.join("; ")
        )));
    }
    Err(VerifyError::BadSignature(format!(
        "the signature does not match the document under the {source} certificate for region {region:?}"
    )))
}

/// AWS's regional `/signature` keys are 1024-bit: admit that size, and only
/// for keys that have it.
fn algorithm(key: &Key) -> SignatureAlgorithm {
    if key.bits() < 2048 {
        SignatureAlgorithm::Rsa1024Pkcs1Sha256
    } else {
        SignatureAlgorithm::RsaPkcs1Sha256
    }
}
