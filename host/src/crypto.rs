//! The signature arithmetic the host lends to plugins (the contract's `crypto`
//! interface), done natively with `ring` (RSA, ECDSA, digests) and RustCrypto's
//! `dsa` for AWS's legacy DSA-SHA1 PKCS#7, which `ring` does not implement.

use const_oid::ObjectIdentifier;
use der::Decode;
use idgate_plugin_kit::{Crypto, DigestAlgorithm, SignatureAlgorithm};
use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use spki::SubjectPublicKeyInfoRef;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const DSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10040.4.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Native implementation of [`Crypto`]; stateless.
#[derive(Debug, Default, Clone, Copy)]
pub struct NativeCrypto;

impl Crypto for NativeCrypto {
    fn verify_signature(
        &self,
        algorithm: SignatureAlgorithm,
        spki_der: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String> {
        if algorithm == SignatureAlgorithm::DsaSha1 {
            return verify_dsa_sha1(spki_der, message, signature);
        }
        let spki = SubjectPublicKeyInfoRef::from_der(spki_der)
            .map_err(|e| format!("public key is not a DER SubjectPublicKeyInfo: {e}"))?;
        let key_oid = spki.algorithm.oid;
        let key = spki
            .subject_public_key
            .as_bytes()
            .ok_or("public key bit string has unused bits")?;
        let (ring_alg, want_key): (&'static dyn VerificationAlgorithm, ObjectIdentifier) = match algorithm {
            SignatureAlgorithm::RsaPkcs1Sha256 => (&sig::RSA_PKCS1_2048_8192_SHA256, RSA_ENCRYPTION),
            SignatureAlgorithm::RsaPkcs1Sha384 => (&sig::RSA_PKCS1_2048_8192_SHA384, RSA_ENCRYPTION),
            SignatureAlgorithm::RsaPkcs1Sha512 => (&sig::RSA_PKCS1_2048_8192_SHA512, RSA_ENCRYPTION),
            SignatureAlgorithm::RsaPkcs1Sha1 => (&sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_ENCRYPTION),
            SignatureAlgorithm::Rsa1024Pkcs1Sha256 => {
                (&sig::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, RSA_ENCRYPTION)
            }
            SignatureAlgorithm::EcdsaP256Sha256 => (&sig::ECDSA_P256_SHA256_ASN1, EC_PUBLIC_KEY),
            SignatureAlgorithm::EcdsaP384Sha384 => (&sig::ECDSA_P384_SHA384_ASN1, EC_PUBLIC_KEY),
            SignatureAlgorithm::DsaSha1 => unreachable!("handled above"),
        };
        if key_oid != want_key {
            return Err(format!("key algorithm {key_oid} does not fit {algorithm:?}"));
        }
        if want_key == EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .ok_or("EC key without a named curve")?;
            let want_curve = if algorithm == SignatureAlgorithm::EcdsaP256Sha256 {
                P256
            } else {
                P384
            };
            if curve != want_curve {
                return Err(format!("EC key on curve {curve} does not fit {algorithm:?}"));
            }
        }
        // ring reports a too-small key and a wrong signature alike; tell them apart
        // for RSA so an operator sees why a 1024-bit key is refused.
        if want_key == RSA_ENCRYPTION {
            let bits = rsa_modulus_bits(key).ok_or("RSA public key is not a DER RSAPublicKey")?;
            let min = if algorithm == SignatureAlgorithm::Rsa1024Pkcs1Sha256 {
                1024
            } else {
                2048
            };
            if !(min..=8192).contains(&bits) {
                return Err(format!(
                    "RSA key of {bits} bits is outside {min}..8192 for {algorithm:?}"
                ));
            }
        }
        Ok(UnparsedPublicKey::new(ring_alg, key).verify(message, signature).is_ok())
    }

    fn digest(&self, algorithm: DigestAlgorithm, data: &[u8]) -> Vec<u8> {
        let alg = match algorithm {
            DigestAlgorithm::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            DigestAlgorithm::Sha256 => &ring::digest::SHA256,
            DigestAlgorithm::Sha384 => &ring::digest::SHA384,
            DigestAlgorithm::Sha512 => &ring::digest::SHA512,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }
}

/// Bit length of the modulus of a DER RSAPublicKey `SEQUENCE { n INTEGER, e INTEGER }`.
fn rsa_modulus_bits(rsa_public_key: &[u8]) -> Option<usize> {
    let mut reader = der::SliceReader::new(rsa_public_key).ok()?;
    let (n, _e): (der::asn1::UintRef<'_>, der::asn1::UintRef<'_>) =
        der::Reader::sequence(&mut reader, |r| Ok((der::Reader::decode(r)?, der::Reader::decode(r)?))).ok()?;
    let bytes = n.as_bytes();
    let first = *bytes.first()?;
    Some(bytes.len() * 8 - first.leading_zeros() as usize)
}

fn verify_dsa_sha1(spki_der: &[u8], message: &[u8], signature: &[u8]) -> Result<bool, String> {
    use dsa::signature::DigestVerifier;
    use sha1::Digest;
    let spki = SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| format!("public key is not a DER SubjectPublicKeyInfo: {e}"))?;
    if spki.algorithm.oid != DSA {
        return Err(format!("key algorithm {} does not fit DsaSha1", spki.algorithm.oid));
    }
    check_dsa_sizes(&spki)?;
    let key = dsa::VerifyingKey::try_from(spki).map_err(|e| format!("unusable DSA key: {e}"))?;
    let Ok(signature) = dsa::Signature::try_from(signature) else {
        return Ok(false);
    };
    Ok(key
        .verify_digest(sha1::Sha1::new_with_prefix(message), &signature)
        .is_ok())
}

/// Largest DSA domain FIPS 186-4 defines (L = 3072, N = 256). The key check in
/// `dsa` raises `y` to the power `q` modulo `p` before any signature is looked at,
/// and that bignum work runs on the host outside the plugin's CPU deadline: a
/// plugin must not be able to hand the host an arbitrarily large domain.
const DSA_MAX_P_BITS: usize = 3072;
const DSA_MAX_Q_BITS: usize = 256;

fn check_dsa_sizes(spki: &SubjectPublicKeyInfoRef<'_>) -> Result<(), String> {
    let params = spki
        .algorithm
        .parameters
        .as_ref()
        .ok_or("DSA key without domain parameters")?;
    let mut reader = der::SliceReader::new(params.value()).map_err(|e| format!("DSA parameters: {e}"))?;
    let bits = |r: &mut der::SliceReader<'_>| -> der::Result<usize> {
        let n: der::asn1::UintRef<'_> = der::Reader::decode(r)?;
        let bytes = n.as_bytes();
        Ok(bytes
            .first()
            .map_or(0, |f| bytes.len() * 8 - f.leading_zeros() as usize))
    };
    let (p, q) = (
        bits(&mut reader).map_err(|e| format!("DSA parameter p: {e}"))?,
        bits(&mut reader).map_err(|e| format!("DSA parameter q: {e}"))?,
    );
    if p > DSA_MAX_P_BITS || q > DSA_MAX_Q_BITS {
        return Err(format!(
            "DSA domain of {p}/{q} bits is larger than {DSA_MAX_P_BITS}/{DSA_MAX_Q_BITS}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_values() {
        let c = NativeCrypto;
        let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(c.digest(DigestAlgorithm::Sha256, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(c.digest(DigestAlgorithm::Sha1, b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    /// DER: tag, length, content.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    fn dsa_spki(p_bytes: usize, q_bytes: usize) -> Vec<u8> {
        let uint = |n: usize| tlv(0x02, &[&[0x7f][..], &vec![0xff; n - 1]].concat());
        let params = tlv(0x30, &[uint(p_bytes), uint(q_bytes), uint(p_bytes)].concat());
        let oid = tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01]);
        let algorithm = tlv(0x30, &[oid, params].concat());
        let key = tlv(0x03, &[&[0u8][..], &uint(p_bytes)].concat());
        tlv(0x30, &[algorithm, key].concat())
    }

    #[test]
    fn oversized_dsa_domains_are_refused_before_any_bignum_work() {
        let e = NativeCrypto
            .verify_signature(SignatureAlgorithm::DsaSha1, &dsa_spki(2048, 1024), b"m", b"s")
            .unwrap_err();
        assert!(e.contains("larger than 3072/256"), "{e}");
        let e = NativeCrypto
            .verify_signature(SignatureAlgorithm::DsaSha1, &dsa_spki(128, 20), b"m", b"s")
            .unwrap_err();
        // Within the bounds, the (garbage) key reaches `dsa`, which refuses it.
        assert!(e.contains("unusable DSA key"), "{e}");
    }

    #[test]
    fn garbage_keys_are_errors_not_panics() {
        let c = NativeCrypto;
        for alg in [
            SignatureAlgorithm::RsaPkcs1Sha256,
            SignatureAlgorithm::Rsa1024Pkcs1Sha256,
            SignatureAlgorithm::DsaSha1,
            SignatureAlgorithm::EcdsaP256Sha256,
        ] {
            assert!(c.verify_signature(alg, b"", b"m", b"s").is_err());
            assert!(c
                .verify_signature(alg, &[0x30, 0x03, 0x02, 0x01, 0x00], b"m", b"s")
                .is_err());
        }
    }
}
