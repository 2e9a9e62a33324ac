//! A test-only [`Crypto`] built on RustCrypto (`rsa`, `dsa`, `p256`, `sha1`, `sha2`), so
//! plugin verifiers can be unit-tested natively without the host crate. Enabled
//! by the `test-crypto` feature, which only dev-dependencies turn on.

use rsa::pkcs8::DecodePublicKey;
use sha2::Digest as _;

use crate::{Crypto, DigestAlgorithm, SignatureAlgorithm};

/// RustCrypto stand-in for the host: RSA PKCS#1 v1.5, DSA-SHA1 and ECDSA P-256
/// (DER signatures), same key-size rules.
pub struct TestCrypto;

impl Crypto for TestCrypto {
    fn verify_signature(
        &self,
        algorithm: SignatureAlgorithm,
        spki_der: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String> {
        use rsa::traits::PublicKeyParts;
        use SignatureAlgorithm as S;
        if algorithm == S::DsaSha1 {
            use dsa::signature::DigestVerifier;
            let key = dsa::VerifyingKey::from_public_key_der(spki_der).map_err(|e| e.to_string())?;
            let Ok(sig) = dsa::Signature::try_from(signature) else {
                return Ok(false);
            };
            return Ok(key.verify_digest(sha1::Sha1::new_with_prefix(message), &sig).is_ok());
        }
        if algorithm == S::EcdsaP256Sha256 {
            use p256::ecdsa::signature::Verifier;
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der).map_err(|e| e.to_string())?;
            let Ok(sig) = p256::ecdsa::Signature::from_der(signature) else {
                return Ok(false);
            };
            return Ok(key.verify(message, &sig).is_ok());
        }
        let key = rsa::RsaPublicKey::from_public_key_der(spki_der).map_err(|e| e.to_string())?;
        let min_bits = if algorithm == S::Rsa1024Pkcs1Sha256 { 1024 } else { 2048 };
        if key.n().bits() < min_bits {
            return Err(format!("RSA key of {} bits is too small", key.n().bits()));
        }
        let (scheme, hashed) = match algorithm {
            S::RsaPkcs1Sha256 | S::Rsa1024Pkcs1Sha256 => (
                rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                sha2::Sha256::digest(message).to_vec(),
            ),
            S::RsaPkcs1Sha384 => (
                rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                sha2::Sha384::digest(message).to_vec(),
            ),
            S::RsaPkcs1Sha512 => (
                rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
                sha2::Sha512::digest(message).to_vec(),
            ),
            S::RsaPkcs1Sha1 => (
                rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
                sha1::Sha1::digest(message).to_vec(),
            ),
            other => return Err(format!("{other:?} is not supported by the test crypto")),
        };
        Ok(key.verify(scheme, &hashed, signature).is_ok())
    }

    fn digest(&self, algorithm: DigestAlgorithm, data: &[u8]) -> Vec<u8> {
        match algorithm {
            DigestAlgorithm::Sha1 => sha1::Sha1::digest(data).to_vec(),
            DigestAlgorithm::Sha256 => sha2::Sha256::digest(data).to_vec(),
            DigestAlgorithm::Sha384 => sha2::Sha384::digest(data).to_vec(),
            DigestAlgorithm::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}
