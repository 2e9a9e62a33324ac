//! JSON Web Keys (RFC 7517) as the host's `verify-signature` takes them: a key
//! set (`{"keys": [...]}`), the lookup of a token's `kid`, and each usable
//! key's DER SubjectPublicKeyInfo with the one JWS algorithm its type allows.
//!
//! The key decides the algorithm, never the token: an RSA key verifies RS256
//! only, an EC P-256 key ES256 only, so a header naming another algorithm for a
//! key (`none`, HMAC keyed with the public key, ES256 on an RSA key) is refused
//! before any arithmetic (see [`crate::jwt`]).

use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, SequenceOf, UintRef};
use der::Encode;
use serde_json::{Map, Value};
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

use crate::encoding::base64url_decode;
use crate::{SignatureAlgorithm, VerifyError};

/// How an unknown-`kid` rejection starts. The host matches this text to refetch
/// a key set it holds once (keys rotate) before giving up.
pub const UNKNOWN_KID_PREFIX: &str = "unknown signing key id";

/// Most keys accepted in a set; issuers publish two or three.
pub const MAX_KEYS: usize = 64;

/// `rsaEncryption` (RFC 8017 A.1).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `id-ecPublicKey` (RFC 5480).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `secp256r1` / P-256 (RFC 5480).
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// JWK members that hold private or symmetric key material: a published key
/// set carrying them is a leak, never something to verify with.
const SECRET_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The JWS algorithms a key can verify (RFC 7518 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, for `kty` `RSA`.
    Rs256,
    /// ECDSA P-256 with SHA-256, for `kty` `EC`, `crv` `P-256`.
    Es256,
}

impl JwsAlgorithm {
    /// The `alg` value (`RS256`, `ES256`).
    pub fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::Rs256 => "RS256",
            JwsAlgorithm::Es256 => "ES256",
        }
    }

    /// The host's signature scheme for it.
    pub fn signature_algorithm(self) -> SignatureAlgorithm {
        match self {
            JwsAlgorithm::Rs256 => SignatureAlgorithm::RsaPkcs1Sha256,
            JwsAlgorithm::Es256 => SignatureAlgorithm::EcdsaP256Sha256,
        }
    }
}

/// One key of a set, converted when the set was read.
#[derive(Debug, Clone)]
struct Entry {
    kid: Option<String>,
    /// The key, or why it cannot verify anything (kept so that only a token
    /// naming it is refused, not every token of the set).
    key: Result<Key, Unusable>,
}

/// Why a key in a set cannot be used.
#[derive(Debug, Clone)]
enum Unusable {
    /// A kind or purpose this verifier does not accept (`untrusted-signer`).
    Refused(String),
    /// Its numbers do not decode (`bad-config`: whoever publishes the set erred).
    Broken(String),
}

/// A usable verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The only algorithm this key verifies.
    pub algorithm: JwsAlgorithm,
    /// Its DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

/// A JWKS, every entry converted once.
#[derive(Debug, Clone)]
pub struct KeySet {
    entries: Vec<Entry>,
}

impl KeySet {
    /// Reads `{"keys": [...]}`. Refused: not that shape, more than
    /// [`MAX_KEYS`], an entry that is not an object, a repeated `kid` (a token
    /// naming it would be ambiguous), or any private or symmetric key material.
    /// A key of an unsupported kind is kept, and refused only when named.
    pub fn parse(jwks: &Value) -> Result<KeySet, String> {
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("not a key set: expected {\"keys\": [...]}")?;
        if keys.len() > MAX_KEYS {
            return Err(format!("the key set has {} keys, more than {MAX_KEYS}", keys.len()));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_object().ok_or_else(|| format!("key {i} is not an object"))?;
            let kid = match key.get("kid") {
                None => None,
                Some(Value::String(kid)) => Some(kid.clone()),
                Some(other) => return Err(format!("key {i}: kid {other} is not a string")),
            };
            let name = kid
                .as_deref()
                .map_or_else(|| format!("key {i}"), |k| format!("key {k:?}"));
            if let Some(secret) = SECRET_MEMBERS.iter().find(|m| key.contains_key(**m)) {
                return Err(format!(
                    "{name} carries private or symmetric key material ({secret:?}): publish public keys only"
                ));
            }
            if kid.is_some() && entries.iter().any(|e| e.kid == kid) {
                return Err(format!("{name} appears twice in the key set"));
            }
            entries.push(Entry { kid, key: convert(key) });
        }
        Ok(KeySet { entries })
    }

    /// [`KeySet::parse`] of JSON text.
    pub fn parse_text(text: &str) -> Result<KeySet, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        KeySet::parse(&value)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set holds no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key with id `kid`. An unknown `kid` is `untrusted-signer` starting
    /// with [`UNKNOWN_KID_PREFIX`]; a key of the wrong kind or purpose is
    /// `untrusted-signer`; one whose numbers do not decode, `bad-config`.
    pub fn key(&self, kid: &str) -> Result<&Key, VerifyError> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.kid.as_deref() == Some(kid))
            .ok_or_else(|| {
                VerifyError::UntrustedSigner(format!(
                    "{UNKNOWN_KID_PREFIX} {kid:?}: not in the key set ({} keys)",
                    self.entries.len()
                ))
            })?;
        match &entry.key {
            Ok(key) => Ok(key),
            Err(Unusable::Refused(why)) => Err(VerifyError::UntrustedSigner(format!("key {kid:?} {why}"))),
            Err(Unusable::Broken(why)) => Err(VerifyError::BadConfig(format!("key set: key {kid:?}: {why}"))),
        }
    }
}

/// One JWK to a [`Key`], or why not.
fn convert(key: &Map<String, Value>) -> Result<Key, Unusable> {
    let text = |name: &str| key.get(name).and_then(Value::as_str);
    if let Some(usage) = key.get("use") {
        if usage.as_str() != Some("sig") {
            return Err(Unusable::Refused(format!("is for use {usage}, not sig")));
        }
    }
    if let Some(ops) = key.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err(Unusable::Refused(format!("has key_ops {ops}, without verify")));
        }
    }
    let part = |name: &str| {
        text(name)
            .ok_or_else(|| format!("no {name}"))
            .and_then(base64url_decode)
            .map_err(|e| Unusable::Broken(format!("{name}: {e}")))
    };
    let (algorithm, spki_der) = match text("kty") {
        Some("RSA") => (
            JwsAlgorithm::Rs256,
            rsa_spki_der(&part("n")?, &part("e")?).map_err(Unusable::Broken)?,
        ),
        Some("EC") => match text("crv") {
            Some("P-256") => (
                JwsAlgorithm::Es256,
                ec_p256_spki_der(&part("x")?, &part("y")?).map_err(Unusable::Broken)?,
            ),
            other => {
                let crv = other.unwrap_or("(none)");
                return Err(Unusable::Refused(format!(
                    "is an EC key on curve {crv}: only P-256 (ES256) is accepted"
                )));
            }
        },
        other => {
            let kty = other.unwrap_or("(none)");
            return Err(Unusable::Refused(format!(
                "has key type {kty}: only RSA (RS256) and EC P-256 (ES256) are accepted"
            )));
        }
    };
    // A key pinned to an algorithm must be pinned to the one its type allows.
    if let Some(alg) = key.get("alg") {
        if alg.as_str() != Some(algorithm.name()) {
            return Err(Unusable::Refused(format!("is for {alg}, not {}", algorithm.name())));
        }
    }
    Ok(Key { algorithm, spki_der })
}

/// The SubjectPublicKeyInfo of the RSA key `(n, e)`, both unsigned big-endian.
///
/// `UintRef` strips redundant leading zeros and adds the one a DER INTEGER needs
/// when the top bit is set, so JWK values with or without a leading zero give the
/// same encoding.
pub fn rsa_spki_der(n: &[u8], e: &[u8]) -> Result<Vec<u8>, String> {
    if n.iter().all(|&b| b == 0) || e.iter().all(|&b| b == 0) {
        return Err("RSA modulus or exponent is zero".into());
    }
    let mut key = SequenceOf::<UintRef<'_>, 2>::new();
    for part in [n, e] {
        let int = UintRef::new(part).map_err(|err| format!("RSA key: {err}"))?;
        key.add(int).map_err(|err| format!("RSA key: {err}"))?;
    }
    let pkcs1 = key.to_der().map_err(|err| format!("RSA key: {err}"))?;
    spki_der(RSA_ENCRYPTION, AnyRef::NULL, &pkcs1)
}

/// The SubjectPublicKeyInfo of the P-256 point `(x, y)`, each exactly 32 bytes
/// (RFC 7518 6.2.1.2), as an uncompressed point. Whether the point is on the
/// curve is the host's to check, with the signature.
pub fn ec_p256_spki_der(x: &[u8], y: &[u8]) -> Result<Vec<u8>, String> {
    if x.len() != 32 || y.len() != 32 {
        return Err(format!(
            "P-256 coordinates must be 32 bytes each, not {} and {}",
            x.len(),
            y.len()
        ));
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    spki_der(EC_PUBLIC_KEY, AnyRef::from(&P256), &point)
}

fn spki_der(oid: ObjectIdentifier, parameters: AnyRef<'_>, key: &[u8]) -> Result<Vec<u8>, String> {
    let spki = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef {
            oid,
            parameters: Some(parameters),
        },
        subject_public_key: BitStringRef::from_bytes(key).map_err(|err| format!("public key: {err}"))?,
    };
    spki.to_der().map_err(|err| format!("public key: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(keys: Value) -> KeySet {
        KeySet::parse(&json!({ "keys": keys })).unwrap()
    }

    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn finds_by_kid_and_the_key_type_decides_the_algorithm() {
        let s = set(json!([
            {"kid":"a","kty":"RSA","n":"AQAB","e":"AQAB"},
            {"kid":"b","kty":"RSA","alg":"RS256","use":"sig","key_ops":["verify"],"n":"AQAB","e":"AQAB"},
            {"kid":"ec","kty":"EC","crv":"P-256","x":X,"y":Y},
            {"kty":"RSA","n":"AQAB","e":"AQAB"},
        ]));
        assert_eq!(s.len(), 4);
        assert_eq!(s.key("a").unwrap().algorithm, JwsAlgorithm::Rs256);
        assert_eq!(s.key("b").unwrap().algorithm, JwsAlgorithm::Rs256);
        let ec = s.key("ec").unwrap();
        assert_eq!(ec.algorithm, JwsAlgorithm::Es256);
        // SEQUENCE, AlgorithmIdentifier(id-ecPublicKey, P-256), BIT STRING of 65 bytes.
        assert_eq!(ec.spki_der.len(), 91);
        assert_eq!(&ec.spki_der[..4], &[0x30, 0x59, 0x30, 0x13]);
        assert_eq!(&ec.spki_der[23..26], &[0x03, 0x42, 0x00]);
        assert_eq!(ec.spki_der[26], 0x04);
        match s.key("c") {
            Err(VerifyError::UntrustedSigner(m)) => assert!(m.starts_with(UNKNOWN_KID_PREFIX) && m.contains("\"c\"")),
            other => panic!("unknown kid accepted: {other:?}"),
        }
    }

    #[test]
    fn wrong_key_kinds_refused() {
        let s = set(json!([
            {"kid":"p384","kty":"EC","crv":"P-384","x":"AA","y":"AA"},
            {"kid":"okp","kty":"OKP","crv":"Ed25519","x":"AA"},
            {"kid":"rs512","kty":"RSA","alg":"RS512","n":"AQAB","e":"AQAB"},
            {"kid":"rsa-es","kty":"RSA","alg":"ES256","n":"AQAB","e":"AQAB"},
            {"kid":"ec-rs","kty":"EC","crv":"P-256","alg":"RS256","x":X,"y":Y},
            {"kid":"enc","kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"},
            {"kid":"ops","kty":"RSA","key_ops":["encrypt"],"n":"AQAB","e":"AQAB"},
            {"kid":"bad-n","kty":"RSA","n":"!!","e":"AQAB"},
            {"kid":"no-e","kty":"RSA","n":"AQAB"},
            {"kid":"short-x","kty":"EC","crv":"P-256","x":"AQAB","y":Y},
        ]));
        for kid in ["p384", "okp", "rs512", "rsa-es", "ec-rs", "enc", "ops"] {
            assert!(matches!(s.key(kid), Err(VerifyError::UntrustedSigner(_))), "{kid}");
        }
        for kid in ["bad-n", "no-e", "short-x"] {
            assert!(matches!(s.key(kid), Err(VerifyError::BadConfig(_))), "{kid}");
        }
    }

    #[test]
    fn malformed_sets_refused() {
        for v in [
            json!([]),
            json!({"keys": 1}),
            json!({"keys": [1]}),
            json!("x"),
            json!({"keys": [{"kid": 5, "kty": "RSA"}]}),
            json!({"keys": [{"kid": "a", "kty": "RSA"}, {"kid": "a", "kty": "EC"}]}),
            json!({"keys": [{"kid": "a", "kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}]}),
            json!({"keys": [{"kid": "a", "kty": "oct", "k": "c2VjcmV0"}]}),
            json!({"keys": vec![json!({"kty": "RSA"}); MAX_KEYS + 1]}),
        ] {
            assert!(KeySet::parse(&v).is_err(), "{v}");
        }
        assert!(KeySet::parse_text("{").is_err());
        assert!(KeySet::parse_text(r#"{"keys": []}"#).unwrap().is_empty());
    }

    #[test]
    fn encodes_small_rsa_key_exactly() {
        // n = 0x80 01 (top bit set: DER needs a leading zero), e = 65537.
        let der = rsa_spki_der(&[0x80, 0x01], &[0x01, 0x00, 0x01]).unwrap();
        let expected = [
            0x30, 0x1e, // SPKI
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00, // alg
            0x03, 0x0d, 0x00, // BIT STRING, no unused bits
            0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01,
        ];
        assert_eq!(der, expected);
        assert_eq!(
            rsa_spki_der(&[0x00, 0x80, 0x01], &[0x01, 0x00, 0x01]).unwrap(),
            der,
            "a leading zero in the input is ignored"
        );
    }

    #[test]
    fn zero_empty_and_wrong_sizes_are_refused() {
        assert!(rsa_spki_der(&[], &[1, 0, 1]).is_err());
        assert!(rsa_spki_der(&[0, 0], &[1, 0, 1]).is_err());
        assert!(rsa_spki_der(&[0x80], &[]).is_err());
        assert!(ec_p256_spki_der(&[1; 31], &[1; 32]).is_err());
        assert!(ec_p256_spki_der(&[1; 32], &[1; 33]).is_err());
        assert!(ec_p256_spki_der(&[1; 32], &[1; 32]).is_ok());
    }
}
