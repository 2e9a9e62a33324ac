//! The host's signature arithmetic as `rustls-webpki` signature algorithms.
//!
//! webpki hands an algorithm the bare subjectPublicKey bits of a key whose
//! AlgorithmIdentifier already matched [`SignatureVerificationAlgorithm::public_key_alg_id`];
//! the crypto import takes a whole SubjectPublicKeyInfo, so the SPKI is put
//! back together from the two. SHA-1 signatures are not offered: Go's
//! `x509.Verify` does not build chains through them either.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use pki_types::{alg_id, AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};

use crate::{Crypto, SignatureAlgorithm};

/// What the algorithms of one validation share.
pub(crate) struct Budget {
    /// Signature checks left; at zero a check fails without arithmetic.
    left: AtomicUsize,
    /// Why the host first refused a key (too small, too large...), for the
    /// message: webpki reduces every failure to "invalid signature".
    refusal: Mutex<Option<String>>,
}

impl Budget {
    /// A budget of `checks` signature checks.
    pub(crate) fn new(checks: usize) -> Budget {
        Budget {
            left: AtomicUsize::new(checks),
            refusal: Mutex::new(None),
        }
    }

    /// The host's first refusal of a key, if any.
    pub(crate) fn refusal(&self) -> Option<String> {
        self.refusal.lock().ok().and_then(|r| r.clone())
    }

    fn refuse(&self, why: String) {
        if let Ok(mut slot) = self.refusal.lock() {
            slot.get_or_insert(why);
        }
    }
}

/// One (key type, signature algorithm) pair checked by [`Crypto`].
pub(crate) struct HostAlgorithm<'a> {
    crypto: &'a dyn Crypto,
    algorithm: SignatureAlgorithm,
    key_alg: AlgorithmIdentifier,
    signature_alg: AlgorithmIdentifier,
    budget: &'a Budget,
}

impl std::fmt::Debug for HostAlgorithm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostAlgorithm({:?})", self.algorithm)
    }
}

/// The algorithms certificate signatures may use, checked by `crypto`.
pub(crate) fn host_algorithms<'a>(crypto: &'a dyn Crypto, budget: &'a Budget) -> Vec<HostAlgorithm<'a>> {
    let pair = |algorithm, key_alg, signature_alg| HostAlgorithm {
        crypto,
        algorithm,
        key_alg,
        signature_alg,
        budget,
    };
    vec![
        pair(
            SignatureAlgorithm::RsaPkcs1Sha256,
            alg_id::RSA_ENCRYPTION,
            alg_id::RSA_PKCS1_SHA256,
        ),
        pair(
            SignatureAlgorithm::RsaPkcs1Sha384,
            alg_id::RSA_ENCRYPTION,
            alg_id::RSA_PKCS1_SHA384,
        ),
        pair(
            SignatureAlgorithm::RsaPkcs1Sha512,
            alg_id::RSA_ENCRYPTION,
            alg_id::RSA_PKCS1_SHA512,
        ),
        pair(
            SignatureAlgorithm::EcdsaP256Sha256,
            alg_id::ECDSA_P256,
            alg_id::ECDSA_SHA256,
        ),
        pair(
            SignatureAlgorithm::EcdsaP384Sha384,
            alg_id::ECDSA_P384,
            alg_id::ECDSA_SHA384,
        ),
    ]
}

impl SignatureVerificationAlgorithm for HostAlgorithm<'_> {
    fn verify_signature(&self, public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), InvalidSignature> {
        let spent = self
            .budget
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if spent.is_err() {
            self.budget.refuse("too many signature checks".into());
            return Err(InvalidSignature);
        }
        let spki = spki_der(self.key_alg.as_ref(), public_key);
        match self.crypto.verify_signature(self.algorithm, &spki, message, signature) {
            Ok(true) => Ok(()),
            Ok(false) => Err(InvalidSignature),
            Err(why) => {
                self.budget.refuse(why);
                Err(InvalidSignature)
            }
        }
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.key_alg
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.signature_alg
    }
}

/// SEQUENCE { SEQUENCE { `alg_contents` }, BIT STRING { 0 unused bits, `key` } }.
fn spki_der(alg_contents: &[u8], key: &[u8]) -> Vec<u8> {
    let mut alg = vec![0x30];
    push_len(&mut alg, alg_contents.len());
    alg.extend_from_slice(alg_contents);
    let mut bits = vec![0x03];
    push_len(&mut bits, key.len() + 1);
    bits.push(0);
    bits.extend_from_slice(key);
    let mut out = vec![0x30];
    push_len(&mut out, alg.len() + bits.len());
    out.extend_from_slice(&alg);
    out.extend_from_slice(&bits);
    out
}

/// A DER definite length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilt_spki_is_the_certificates_own() {
        // A real RSA SPKI (the Azure leaf's issuer key would do; any works).
        use der::Decode;
        let pem = include_str!("../../../azure/certs/digicert_global_root_g2.pem");
        let der = crate::pem::certificates(pem).unwrap().remove(0);
        let cert = crate::certificate::Cert::parse(&der).unwrap();
        let parsed = spki::SubjectPublicKeyInfoRef::from_der(&cert.spki).unwrap();
        let key = parsed.subject_public_key.as_bytes().unwrap();
        assert_eq!(spki_der(alg_id::RSA_ENCRYPTION.as_ref(), key), cert.spki);
    }
}
