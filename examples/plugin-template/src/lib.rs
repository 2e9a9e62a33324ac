//! `acme`: a template idgate provider plugin. Acme Cloud's metadata service
//! hands each instance an identity document signed with one of Acme's ECDSA
//! P-256 keys; this plugin checks the signature against the keys the operator
//! configured, then the document's validity period and region, and answers
//! the instance ID. Copy the crate and replace the formats with your cloud's.
//!
//! The credential is the request body (the host has removed `agent_name`):
//!
//! ```json
//! {"document": "<base64 of the document's JSON bytes>",
//!  "key_id": "2026-a",
//!  "signature": "<base64 of a DER ECDSA P-256/SHA-256 signature over those bytes>"}
//! ```
//!
//! and the signed document
//! `{"instance_id": "i-…", "region": "eu-1", "issued_at": "<RFC 3339>", "expires_at": "<RFC 3339>"}`.
//!
//! The provider block (`[acme]` in idgate.toml, passed as JSON):
//!
//! ```json
//! {"keys": {"2026-a": "-----BEGIN PUBLIC KEY-----\n…"}, "regions": ["eu-1"], "skew_secs": 60}
//! ```
//!
//! `keys` is required; `regions` (default: any) and `skew_secs` (default 60) are not.

use std::collections::BTreeMap;

use idgate_plugin_kit::encoding::base64_decode;
use idgate_plugin_kit::time::{describe, parse_rfc3339};
use idgate_plugin_kit::{pem, Crypto, Identity, Provider, SignatureAlgorithm, VerifyError};
use serde::Deserialize;

/// Largest credential read: an identity document is well under a kilobyte, so
/// anything near this is not one (and is refused before any decoding).
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;
/// Most keys a block may configure (two or three during a rotation).
pub const MAX_KEYS: usize = 16;
/// Clock difference tolerated between Acme's signer and the host, seconds.
pub const DEFAULT_SKEW_SECS: i64 = 60;
/// Largest `skew_secs`: beyond an hour the validity period means little.
const MAX_SKEW_SECS: u64 = 3600;

/// Every P-256 SubjectPublicKeyInfo with an uncompressed point (what
/// `openssl ec -pubout` writes) is these 27 bytes — SEQUENCE, the algorithm
/// `id-ecPublicKey` with curve `prime256v1`, the BIT STRING header and the
/// point's `04` — then the point's 64 bytes. Whether the point lies on the
/// curve is checked by the host with each signature.
const P256_SPKI_PREFIX: [u8; 27] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
];
const P256_SPKI_LEN: usize = P256_SPKI_PREFIX.len() + 64;

/// The provider: a unit struct, exported by `export_provider!` below.
pub struct Acme;

/// What `configure` prepared: the host snapshots it once, and every `verify`
/// starts from that snapshot.
#[derive(Debug)]
pub struct Config {
    /// Signing keys by key ID, as DER SubjectPublicKeyInfo (what the host's
    /// crypto takes).
    keys: BTreeMap<String, Vec<u8>>,
    /// Regions served; `None` is any.
    regions: Option<Vec<String>>,
    skew_secs: i64,
}

/// The block as the operator wrote it. `deny_unknown_fields`: a misspelt key
/// is refused at start-up (naming it) instead of being silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    keys: Option<BTreeMap<String, String>>,
    regions: Option<Vec<String>>,
    skew_secs: Option<u64>,
}

/// The credential's fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credential {
    document: String,
    key_id: String,
    signature: String,
}

/// The signed document; read only after its signature verified.
#[derive(Deserialize)]
struct Document {
    instance_id: String,
    region: String,
    issued_at: String,
    expires_at: String,
}

impl Provider for Acme {
    /// The name idgate serves the plugin under: its route is
    /// `POST /api/v2/workspaceagents/acme-instance-identity`.
    const NAME: &'static str = "acme";
    type Config = Config;

    fn configure(block: &str) -> Result<Config, VerifyError> {
        let bad = |reason: String| VerifyError::BadConfig(format!("acme config: {reason}"));
        let block: Block = serde_json::from_str(block).map_err(|e| bad(e.to_string()))?;
        let written = block
            .keys
            .ok_or_else(|| bad("keys is required: Acme's public keys by key ID".into()))?;
        if written.is_empty() || written.len() > MAX_KEYS {
            return Err(bad(format!(
                "keys must name 1 to {MAX_KEYS} keys, not {}",
                written.len()
            )));
        }
        let mut keys = BTreeMap::new();
        for (id, text) in written {
            // PEM text: inline, or `keys_file`-style values the host read from a file.
            let der = pem::decode_one(&text, "PUBLIC KEY").map_err(|e| bad(format!("keys.{id}: {e}")))?;
            if der.len() != P256_SPKI_LEN || !der.starts_with(&P256_SPKI_PREFIX) {
                return Err(bad(format!("keys.{id}: not an ECDSA P-256 public key")));
            }
            keys.insert(id, der);
        }
        if block.regions.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad("regions is empty: omit it to accept any region".into()));
        }
        let skew = block.skew_secs.unwrap_or(DEFAULT_SKEW_SECS as u64);
        if skew > MAX_SKEW_SECS {
            return Err(bad(format!("skew_secs {skew} is over {MAX_SKEW_SECS}")));
        }
        Ok(Config {
            keys,
            regions: block.regions,
            skew_secs: skew as i64,
        })
    }

    fn verify(crypto: &dyn Crypto, config: &Config, credential: &str, now: i64) -> Result<Identity, VerifyError> {
        // 1. Shape: bounded, then parsed. Anything wrong here is `malformed` (400).
        if credential.len() > MAX_CREDENTIAL_BYTES {
            return Err(VerifyError::Malformed("credential too large".into()));
        }
        let credential: Credential = serde_json::from_str(credential).map_err(|e| {
            VerifyError::Malformed(format!(
                "credential: expected {{\"document\", \"key_id\", \"signature\"}}: {e}"
            ))
        })?;
        let document =
            base64_decode(&credential.document).map_err(|e| VerifyError::Malformed(format!("document: {e}")))?;
        let signature =
            base64_decode(&credential.signature).map_err(|e| VerifyError::Malformed(format!("signature: {e}")))?;

        // 2. The signer: a key the operator configured (`untrusted-signer` otherwise),
        //    and a signature by it over exactly these bytes (`bad-signature`). The host
        //    does the arithmetic; an error from it (a key it refuses) is a bad signature too.
        let key = config.keys.get(&credential.key_id).ok_or_else(|| {
            VerifyError::UntrustedSigner(format!(
                "key_id {:?} is not one of the configured keys",
                credential.key_id
            ))
        })?;
        match crypto.verify_signature(SignatureAlgorithm::EcdsaP256Sha256, key, &document, &signature) {
            Ok(true) => {}
            Ok(false) => {
                return Err(VerifyError::BadSignature(
                    "the document's signature does not verify".into(),
                ))
            }
            Err(e) => {
                return Err(VerifyError::BadSignature(format!(
                    "the signature cannot be checked: {e}"
                )))
            }
        }

        // 3. Only now is the document parsed: nothing unsigned is ever believed.
        let document: Document =
            serde_json::from_slice(&document).map_err(|e| VerifyError::Malformed(format!("signed document: {e}")))?;
        let time = |name: &str, text: &str| {
            parse_rfc3339(text)
                .ok_or_else(|| VerifyError::Malformed(format!("{name} {text:?} is not an RFC 3339 time")))
        };
        let (issued, expires) = (
            time("issued_at", &document.issued_at)?,
            time("expires_at", &document.expires_at)?,
        );

        // 4. Validity at the host's `now` (the plugin has no clock), give or take the skew.
        let skew = config.skew_secs;
        if now > expires.saturating_add(skew) {
            return Err(VerifyError::Expired(format!(
                "document expired at {} (now {})",
                describe(expires),
                describe(now)
            )));
        }
        if issued > now.saturating_add(skew) {
            return Err(VerifyError::Expired(format!(
                "document issued in the future at {} (now {})",
                describe(issued),
                describe(now)
            )));
        }

        // 5. Genuine, but the operator's policy may still refuse it (`refused`, 403).
        if let Some(regions) = &config.regions {
            if !regions.contains(&document.region) {
                return Err(VerifyError::Refused(format!(
                    "region {:?} is not one of the configured regions",
                    document.region
                )));
            }
        }
        if document.instance_id.is_empty() {
            return Err(VerifyError::Malformed(
                "signed document has an empty instance_id".into(),
            ));
        }
        Ok(Identity::new(document.instance_id)
            .with("region", document.region)
            .with("key_id", credential.key_id))
    }
}

// The component's exports (the WIT contract's `verify-identity`); nothing natively.
idgate_plugin_kit::export_provider!(Acme);

/// Native unit tests: fast, no host, no component (the kit's `TestCrypto`
/// stands in for the host's crypto import). The credential paths are tested
/// on the built component, as idgate runs it, in `tests/component.rs`.
#[cfg(test)]
mod tests {
    use idgate_plugin_kit::encoding::base64_encode;
    use idgate_plugin_kit::test_crypto::TestCrypto;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{Signature, SigningKey};
    use serde_json::json;

    use super::*;

    #[test]
    fn a_signed_document_verifies_natively_and_a_changed_one_does_not() {
        let key = SigningKey::from_slice(&[1; 32]).unwrap();
        let point = key.verifying_key().to_encoded_point(false);
        let spki = idgate_plugin_kit::jwk::ec_p256_spki_der(point.x().unwrap(), point.y().unwrap()).unwrap();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
            base64_encode(&spki)
        );
        let block = json!({"keys": {"k": pem}}).to_string();
        let document = r#"{"instance_id":"i-1","region":"eu-1","issued_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-01T00:10:00Z"}"#;
        let signature: Signature = key.sign(document.as_bytes());
        let credential = |document: &str| {
            json!({"document": base64_encode(document.as_bytes()), "key_id": "k",
                   "signature": base64_encode(signature.to_der().as_bytes())})
            .to_string()
        };
        let now = 1_767_225_660; // a minute into the document's ten
        let identity = Acme::configure_and_verify(&TestCrypto, &credential(document), &block, now).unwrap();
        assert_eq!(identity.instance_id, "i-1");
        let changed = document.replace("i-1", "i-2");
        let refusal = Acme::configure_and_verify(&TestCrypto, &credential(&changed), &block, now).unwrap_err();
        assert!(matches!(refusal, VerifyError::BadSignature(_)), "{refusal}");
    }

    fn refused(block: &str) -> String {
        match Acme::configure(block) {
            Err(VerifyError::BadConfig(reason)) => reason,
            other => panic!("expected bad-config for {block}, got {other:?}"),
        }
    }

    #[test]
    fn a_block_without_keys_or_with_an_unknown_key_is_refused_by_name() {
        assert!(refused("{}").contains("keys is required"), "{}", refused("{}"));
        assert!(refused(r#"{"keys": {}}"#).contains("1 to 16 keys"));
        assert!(refused(r#"{"kyes": {}}"#).contains("unknown field `kyes`"));
    }

    #[test]
    fn a_key_that_is_not_p256_pem_is_refused_by_id() {
        let reason = refused(r#"{"keys": {"k1": "not pem"}}"#);
        assert!(reason.contains("keys.k1: no PEM PUBLIC KEY block"), "{reason}");
        // Valid PEM, but 3 bytes of DER: not a P-256 key.
        let reason = refused(r#"{"keys": {"k1": "-----BEGIN PUBLIC KEY-----\nAQID\n-----END PUBLIC KEY-----"}}"#);
        assert!(reason.contains("keys.k1: not an ECDSA P-256 public key"), "{reason}");
    }
}
