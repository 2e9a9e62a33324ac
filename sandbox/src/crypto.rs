//! The signature arithmetic the host lends to plugins (the contract's `crypto`
//! interface), done natively with `ring` (RSA, ECDSA, digests) and RustCrypto's
//! `dsa` for AWS's legacy DSA-SHA1 PKCS#7, which `ring` does not implement.

use const_oid::ObjectIdentifier;
use der::Decode;
use idgate_plugin_kit::{Crypto, DigestAlgorithm, SignatureAlgorithm};
use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use spki::SubjectPublicKeyInfoRef;

use crate::signature_memo;

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
        // A certificate signature found valid before is not checked again
        // (`signature_memo`: Azure's chain check asks for the same one in every
        // authentication).
        signature_memo::verify(
            signature_memo::shared(),
            algorithm,
            spki_der,
            message,
            signature,
            || check_signature(algorithm, spki_der, message, signature),
        )
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

/// The signature check itself: the key's type and sizes, then the arithmetic.
fn check_signature(
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
    // Sizes are checked before ring does any arithmetic: the key comes from a
    // plugin, which may have taken it from a request, and the work runs on the
    // host outside the plugin's CPU deadline. ring would accept moduli up to
    // 8192 bits and exponents up to 2^33 - 1; no key a cloud signs with is
    // bigger than 4096 bits or has an exponent past 32 bits (Go's crypto/rsa
    // caps it at 2^31 - 1). ring also reports a too-small key and a wrong
    // signature alike; the message tells them apart.
    if want_key == RSA_ENCRYPTION {
        let (bits, e_bits) = rsa_sizes(key).ok_or("RSA public key is not a DER RSAPublicKey")?;
        let min = if algorithm == SignatureAlgorithm::Rsa1024Pkcs1Sha256 {
            1024
        } else {
            2048
        };
        if !(min..=RSA_MAX_MODULUS_BITS).contains(&bits) {
            return Err(format!(
                "RSA key of {bits} bits is outside {min}..{RSA_MAX_MODULUS_BITS} for {algorithm:?}"
            ));
        }
        if e_bits > RSA_MAX_EXPONENT_BITS {
            return Err(format!(
                "RSA public exponent of {e_bits} bits is larger than {RSA_MAX_EXPONENT_BITS} bits (at most 2^32 - 1)"
            ));
        }
    }
    Ok(UnparsedPublicKey::new(ring_alg, key).verify(message, signature).is_ok())
}

/// Largest RSA modulus the host does arithmetic on (see `check_signature`).
pub const RSA_MAX_MODULUS_BITS: usize = 4096;
/// Largest RSA public exponent, in bits: `e < 2^32`.
pub const RSA_MAX_EXPONENT_BITS: usize = 32;

/// Bit lengths of the modulus and the public exponent of a DER RSAPublicKey
/// `SEQUENCE { n INTEGER, e INTEGER }`.
fn rsa_sizes(rsa_public_key: &[u8]) -> Option<(usize, usize)> {
    let mut reader = der::SliceReader::new(rsa_public_key).ok()?;
    let (n, e): (der::asn1::UintRef<'_>, der::asn1::UintRef<'_>) =
        der::Reader::sequence(&mut reader, |r| Ok((der::Reader::decode(r)?, der::Reader::decode(r)?))).ok()?;
    let bits = |bytes: &[u8]| {
        bytes
            .first()
            .map_or(0, |f| bytes.len() * 8 - f.leading_zeros() as usize)
    };
    Some((bits(n.as_bytes()), bits(e.as_bytes())))
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

    /// A DER SubjectPublicKeyInfo for an RSA key with modulus `n` and exponent `e`
    /// (big-endian magnitudes).
    fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
        let uint = |v: &[u8]| {
            let mut c = if v[0] & 0x80 != 0 { vec![0] } else { vec![] };
            c.extend_from_slice(v);
            tlv(0x02, &c)
        };
        let rsa_key = tlv(0x30, &[uint(n), uint(e)].concat());
        let oid = tlv(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]);
        let algorithm = tlv(0x30, &[oid, vec![0x05, 0x00]].concat());
        let key = tlv(0x03, &[&[0u8][..], &rsa_key].concat());
        tlv(0x30, &[algorithm, key].concat())
    }

    /// An odd modulus of exactly `bits` bits (not a real key: the caps come first).
    fn modulus(bits: usize) -> Vec<u8> {
        let mut n = vec![0xffu8; bits.div_ceil(8)];
        n[0] = 0xff >> (n.len() * 8 - bits);
        n
    }

    #[test]
    fn oversized_rsa_moduli_and_exponents_are_refused_before_any_arithmetic() {
        let c = NativeCrypto;
        let f4 = [0x01, 0x00, 0x01];
        let e = c
            .verify_signature(
                SignatureAlgorithm::RsaPkcs1Sha256,
                &rsa_spki(&modulus(4097), &f4),
                b"m",
                &[1; 513],
            )
            .unwrap_err();
        assert!(e.contains("4097 bits is outside 2048..4096"), "{e}");
        let e = c
            .verify_signature(
                SignatureAlgorithm::RsaPkcs1Sha256,
                &rsa_spki(&modulus(8192), &f4),
                b"m",
                &[1; 1024],
            )
            .unwrap_err();
        assert!(e.contains("8192 bits is outside 2048..4096"), "{e}");
        // The review's exponent, 2^33 - 1, which ring itself would accept.
        let big_e = [0x01, 0xff, 0xff, 0xff, 0xff];
        let e = c
            .verify_signature(
                SignatureAlgorithm::RsaPkcs1Sha256,
                &rsa_spki(&modulus(2048), &big_e),
                b"m",
                &[1; 256],
            )
            .unwrap_err();
        assert!(e.contains("exponent of 33 bits is larger than 32 bits"), "{e}");
        let e = c
            .verify_signature(
                SignatureAlgorithm::RsaPkcs1Sha256,
                &rsa_spki(&modulus(2048), &[0x01, 0, 0, 0, 0]),
                b"m",
                &[1; 256],
            )
            .unwrap_err();
        assert!(e.contains("exponent of 33 bits"), "{e}");
        // At the caps the key reaches ring, which answers (false for this garbage).
        for (bits, exp) in [(4096, &f4[..]), (2048, &[0xff, 0xff, 0xff, 0xff][..])] {
            assert_eq!(
                c.verify_signature(
                    SignatureAlgorithm::RsaPkcs1Sha256,
                    &rsa_spki(&modulus(bits), exp),
                    b"m",
                    &[1; 16]
                ),
                Ok(false),
                "{bits} bits"
            );
        }
    }

    /// A real link: DigiCert Global Root G2's signature over Microsoft Azure
    /// TLS Issuing CA 05, checked through the memo (`signature_memo`), which
    /// answers a repeat from memory and an altered signature in full.
    #[test]
    fn a_real_certificate_signature_verifies_again_from_memory_and_altered_does_not() {
        use idgate_plugin_kit::certificate::Cert;
        use idgate_plugin_kit::pem;
        let parse = |text: &str| Cert::parse(&pem::certificates(text).unwrap()[0]).unwrap();
        let root = parse(include_str!("../../tests/data/azure/digicert_global_root_g2.pem"));
        let issuing = parse(include_str!(
            "../../tests/data/azure/microsoft_azure_tls_issuing_ca_05.pem"
        ));
        let algorithm = match issuing.signature_alg.to_string().as_str() {
            "1.2.840.113549.1.1.11" => SignatureAlgorithm::RsaPkcs1Sha256,
            "1.2.840.113549.1.1.12" => SignatureAlgorithm::RsaPkcs1Sha384,
            other => panic!("unexpected signature algorithm {other}"),
        };
        let check = |signature: &[u8]| NativeCrypto.verify_signature(algorithm, &root.spki, &issuing.tbs, signature);
        assert_eq!(check(&issuing.signature), Ok(true));
        assert_eq!(check(&issuing.signature), Ok(true), "again, from memory");
        let mut altered = issuing.signature.clone();
        altered[10] ^= 1;
        assert_eq!(check(&altered), Ok(false));
        // The issuing CA's own key did not sign itself.
        assert_eq!(
            NativeCrypto.verify_signature(algorithm, &issuing.spki, &issuing.tbs, &issuing.signature),
            Ok(false)
        );
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
