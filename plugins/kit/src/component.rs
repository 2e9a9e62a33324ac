//! The WebAssembly side: generated bindings and the adapter from [`Provider`] to
//! the exported `verify-identity` interface (contract 0.3.0; 0.2.0 with the
//! `contract-0-2` feature, 0.1.0 with `contract-0-1`).

use std::sync::OnceLock;

#[cfg(not(any(feature = "contract-0-1", feature = "contract-0-2")))]
use crate::TrustAnchor;
use crate::{Crypto, DigestAlgorithm, Identity, Provider, SignatureAlgorithm, VerifyError};

#[cfg(not(any(feature = "contract-0-1", feature = "contract-0-2")))]
wit_bindgen::generate!({
    world: "provider",
    path: "../../wit/0.3.0",
    pub_export_macro: true,
    default_bindings_module: "idgate_plugin_kit::component",
});

#[cfg(all(feature = "contract-0-2", not(feature = "contract-0-1")))]
wit_bindgen::generate!({
    world: "provider",
    path: "../../wit/0.2.0",
    pub_export_macro: true,
    default_bindings_module: "idgate_plugin_kit::component",
});

#[cfg(feature = "contract-0-1")]
wit_bindgen::generate!({
    world: "provider",
    path: "../../wit/0.1.0",
    pub_export_macro: true,
    default_bindings_module: "idgate_plugin_kit::component",
});

/// Where a provider's configured state lives between `configure` and `verify`
/// (a static per provider, declared by [`crate::export_provider!`]).
pub trait Configured: Provider {
    /// The provider's slot.
    fn configured() -> &'static OnceLock<Self::Config>;
}

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

fn to_wit(e: VerifyError) -> wit::VerifyError {
    match e {
        VerifyError::Malformed(s) => wit::VerifyError::Malformed(s),
        VerifyError::BadSignature(s) => wit::VerifyError::BadSignature(s),
        VerifyError::UntrustedSigner(s) => wit::VerifyError::UntrustedSigner(s),
        VerifyError::Expired(s) => wit::VerifyError::Expired(s),
        VerifyError::Refused(s) => wit::VerifyError::Refused(s),
        VerifyError::BadConfig(s) => wit::VerifyError::BadConfig(s),
    }
}

fn to_wit_identity(id: Identity) -> wit::Identity {
    wit::Identity {
        instance_id: id.instance_id,
        attributes: id.attributes,
    }
}

/// The default hook writes to stderr, which the sandbox does not link: keep a
/// panic a plain trap.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

fn info<P: Provider>() -> wit::ProviderInfo {
    wit::ProviderInfo {
        name: P::NAME.to_string(),
        contract: crate::CONTRACT_VERSION.to_string(),
    }
}

#[cfg(not(feature = "contract-0-1"))]
impl<P: Configured> Guest for P {
    fn info() -> wit::ProviderInfo {
        info::<P>()
    }

    fn configure(config: String) -> Result<(), wit::VerifyError> {
        quiet_panics();
        let slot = P::configured();
        if slot.get().is_some() {
            return Err(wit::VerifyError::BadConfig(
                "configure was already called on this instance".into(),
            ));
        }
        let prepared = P::configure(&config).map_err(to_wit)?;
        let _ = slot.set(prepared);
        Ok(())
    }

    fn verify(credential: String, now: i64) -> Result<wit::Identity, wit::VerifyError> {
        quiet_panics();
        let config = P::configured().get().ok_or_else(|| {
            wit::VerifyError::BadConfig("verify was called before configure: the host must configure the plugin".into())
        })?;
        P::verify(&HostCrypto, config, &credential, now)
            .map(to_wit_identity)
            .map_err(to_wit)
    }

    #[cfg(not(feature = "contract-0-2"))]
    fn trust() -> Vec<wit::TrustAnchor> {
        P::configured()
            .get()
            .map(|config| P::trust(config).into_iter().map(to_wit_anchor).collect())
            .unwrap_or_default()
    }
}

#[cfg(not(any(feature = "contract-0-1", feature = "contract-0-2")))]
fn to_wit_anchor(a: TrustAnchor) -> wit::TrustAnchor {
    wit::TrustAnchor {
        subject: a.subject,
        role: if a.root {
            wit::AnchorRole::Root
        } else {
            wit::AnchorRole::Intermediate
        },
        origin: a.origin.to_string(),
        not_after: a.not_after,
        current: a.current,
    }
}

/// Contract 0.1.0: the configuration comes with every call, so each call
/// configures and then verifies.
#[cfg(feature = "contract-0-1")]
impl<P: Configured> Guest for P {
    fn info() -> wit::ProviderInfo {
        info::<P>()
    }

    fn verify(credential: String, config: String, now: i64) -> Result<wit::Identity, wit::VerifyError> {
        quiet_panics();
        let config = P::configure(&config).map_err(to_wit)?;
        P::verify(&HostCrypto, &config, &credential, now)
            .map(to_wit_identity)
            .map_err(to_wit)
    }
}
