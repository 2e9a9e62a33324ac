//! The WebAssembly side: generated bindings and the adapter from [`Provider`] to
//! the exported `verify-identity` interface.

use crate::{Crypto, DigestAlgorithm, Identity, Provider, SignatureAlgorithm, VerifyError};

wit_bindgen::generate!({
    world: "provider",
    path: "../../wit/0.1.0",
    pub_export_macro: true,
    default_bindings_module: "idgate_plugin_kit::component",
});

use exports::idgate::identity::verify_identity::Guest;
use idgate::identity::crypto as host;
use idgate::identity::types as wit;

/// [`Crypto`] backed by the host's `crypto` import.
pub struct HostCrypto;

impl Crypto for HostCrypto {
    fn verify_signature(
        &self,
        algorithm: SignatureAlgorithm,
        spki_der: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String> {
        let algorithm = match algorithm {
            SignatureAlgorithm::RsaPkcs1Sha256 => host::SignatureAlgorithm::RsaPkcs1Sha256,
            SignatureAlgorithm::RsaPkcs1Sha384 => host::SignatureAlgorithm::RsaPkcs1Sha384,
            SignatureAlgorithm::RsaPkcs1Sha512 => host::SignatureAlgorithm::RsaPkcs1Sha512,
            SignatureAlgorithm::RsaPkcs1Sha1 => host::SignatureAlgorithm::RsaPkcs1Sha1,
            SignatureAlgorithm::Rsa1024Pkcs1Sha256 => host::SignatureAlgorithm::Rsa1024Pkcs1Sha256,
            SignatureAlgorithm::DsaSha1 => host::SignatureAlgorithm::DsaSha1,
            SignatureAlgorithm::EcdsaP256Sha256 => host::SignatureAlgorithm::EcdsaP256Sha256,
            SignatureAlgorithm::EcdsaP384Sha384 => host::SignatureAlgorithm::EcdsaP384Sha384,
        };
        host::verify_signature(algorithm, spki_der, message, signature)
    }

    fn digest(&self, algorithm: DigestAlgorithm, data: &[u8]) -> Vec<u8> {
        let algorithm = match algorithm {
            DigestAlgorithm::Sha1 => host::DigestAlgorithm::Sha1,
            DigestAlgorithm::Sha256 => host::DigestAlgorithm::Sha256,
            DigestAlgorithm::Sha384 => host::DigestAlgorithm::Sha384,
            DigestAlgorithm::Sha512 => host::DigestAlgorithm::Sha512,
        };
        host::digest(algorithm, data)
    }
}

impl<P: Provider> Guest for P {
    fn info() -> wit::ProviderInfo {
        wit::ProviderInfo {
            name: P::NAME.to_string(),
            contract: crate::CONTRACT_VERSION.to_string(),
        }
    }

    fn verify(credential: String, config: String, now: i64) -> Result<wit::Identity, wit::VerifyError> {
        // The default hook writes to stderr, which the sandbox does not link: keep
        // a panic a plain trap.
        std::panic::set_hook(Box::new(|_| {}));
        match P::verify(&HostCrypto, &credential, &config, now) {
            Ok(Identity {
                instance_id,
                attributes,
            }) => Ok(wit::Identity {
                instance_id,
                attributes,
            }),
            Err(e) => Err(match e {
                VerifyError::Malformed(s) => wit::VerifyError::Malformed(s),
                VerifyError::BadSignature(s) => wit::VerifyError::BadSignature(s),
                VerifyError::UntrustedSigner(s) => wit::VerifyError::UntrustedSigner(s),
                VerifyError::Expired(s) => wit::VerifyError::Expired(s),
                VerifyError::Refused(s) => wit::VerifyError::Refused(s),
                VerifyError::BadConfig(s) => wit::VerifyError::BadConfig(s),
            }),
        }
    }
}
