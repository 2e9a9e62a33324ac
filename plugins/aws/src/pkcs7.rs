//! The PKCS#7 forms: IMDS `/rsa2048` (RSA-2048, SHA-256) and the legacy
//! `/pkcs7` (DSA-SHA1). Both are BER SignedData with signed attributes, no
//! certificates inside, and the document as the encapsulated content; the kit
//! parses them and checks the signature, this module chooses the key.

use idgate_plugin_kit::encoding::base64_decode;
use idgate_plugin_kit::signed_data::{self, SignedData};
use idgate_plugin_kit::{Crypto, VerifyError};

use crate::config::{Config, Purpose};
use crate::trust::{Key, KeyKind};

/// A parsed PKCS#7 and its content, the signed document.
pub struct Signed {
    /// The SignedData.
    pub data: SignedData,
    /// The encapsulated content as text.
    pub document: String,
}

/// Decodes and parses the `pkcs7` field: bare base64 (what IMDS returns) or
/// PEM-armoured (`-----BEGIN PKCS7-----`, as Vault's users paste it).
pub fn parse(text: &str) -> Result<Signed, VerifyError> {
    let der = if text.contains("-----BEGIN") {
        let label = ["PKCS7", "CMS"]
            .into_iter()
            .find(|l| text.contains(&format!("-----BEGIN {l}-----")))
            .ok_or_else(|| VerifyError::Malformed("pkcs7: PEM armour other than PKCS7 or CMS".into()))?;
        idgate_plugin_kit::pem::decode_one(text, label).map_err(|e| VerifyError::Malformed(format!("pkcs7: {e}")))?
    } else {
        base64_decode(text).map_err(|e| VerifyError::Malformed(format!("pkcs7: {e}")))?
    };
    let data = signed_data::parse(&der)?;
    let document = String::from_utf8(data.content().to_vec())
        .map_err(|_| VerifyError::Malformed("the PKCS#7 content is not UTF-8 text".into()))?;
    Ok(Signed { data, document })
}

/// Verifies the PKCS#7 signature with the region's keys for the PKCS#7 forms
/// and names the form that verified: `rsa2048` for an RSA key, `dsa` for DSA.
///
/// The PKCS#7 carries no certificate, so candidates are tried: first the one
/// the signer names (issuer and serial), then the others. The name only orders
/// the attempts; trust comes from the key that verifies.
pub fn verify(
    crypto: &dyn Crypto,
    config: &Config,
    signed: &Signed,
    region: &str,
) -> Result<&'static str, VerifyError> {
    let mut keys = config.keys(region, Purpose::Rsa2048)?;
    keys.extend(config.keys(region, Purpose::Dsa)?);
    if keys.is_empty() {
        return Err(VerifyError::UntrustedSigner(format!(
            "no certificate for region {region:?} (the PKCS#7 forms need an RSA or DSA one): add it under [aws.certificates]"
        )));
    }
    keys.sort_by_key(|k| !signed.data.signer_matches(&k.cert_der));
    let mut failure: Option<VerifyError> = None;
    for key in &keys {
        match signed
            .data
            .verify_signer(crypto, &key.spki_der, key.bits() > 0 && key.bits() < 2048)
        {
            Ok(()) => return Ok(form(key)),
            // Unsupported algorithms or attributes do not depend on the key.
            Err(e @ VerifyError::Malformed(_)) => return Err(e),
            // A key that fits the algorithm but does not verify says more than
            // one of the wrong type.
            Err(e @ VerifyError::BadSignature(_)) => {
                if !matches!(failure, Some(VerifyError::BadSignature(_))) {
                    failure = Some(e);
                }
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let failure = failure.unwrap_or_else(|| VerifyError::BadSignature("PKCS#7 signature does not verify".into()));
    Err(match failure {
        VerifyError::BadSignature(m) => {
            VerifyError::BadSignature(format!("{m} (tried {} for region {region:?})", describe(&keys)))
        }
        VerifyError::UntrustedSigner(m) => {
            VerifyError::UntrustedSigner(format!("{m} (tried {} for region {region:?})", describe(&keys)))
        }
        other => other,
    })
}

fn form(key: &Key) -> &'static str {
    match key.kind {
        KeyKind::Rsa { .. } => "rsa2048",
        KeyKind::Dsa => "dsa",
    }
}

fn describe(keys: &[Key]) -> String {
    keys.iter()
        .map(|k| match k.kind {
            KeyKind::Rsa { bits } => format!("the {} RSA-{bits} certificate", k.source),
            KeyKind::Dsa => format!("the {} DSA certificate", k.source),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
