//! The contract versions this host speaks, one generated binding each, and the
//! host side of their imports (`crypto`, since 0.2.0 `host-keys`, since 0.3.0
//! `issuers`).
//!
//! A new contract adds a `since_vX_Y_Z` module here; released ones stay, so
//! plugins built against them keep loading.

use idgate_plugin_kit::{Crypto, DigestAlgorithm, SignatureAlgorithm, VerifyError};

use crate::crypto::NativeCrypto;

use super::CallState;

/// `idgate:identity@0.1.0`: the configuration goes with every `verify`.
pub mod since_v0_1_0 {
    wasmtime::component::bindgen!({ world: "provider", path: "../wit/0.1.0" });
}

/// `idgate:identity@0.2.0`: `configure` once (snapshotted), then `verify`.
pub mod since_v0_2_0 {
    wasmtime::component::bindgen!({ world: "provider", path: "../wit/0.2.0" });
}

/// `idgate:identity@0.3.0`: 0.2.0 plus the `issuers` import.
pub mod since_v0_3_0 {
    wasmtime::component::bindgen!({ world: "provider", path: "../wit/0.3.0" });
}

/// Contract versions this host can load.
pub const SUPPORTED_CONTRACTS: &[&str] = &["0.1.0", "0.2.0", "0.3.0"];

/// Most issuer URLs one call may ask for: a chain has few links to fill, and
/// every URL asked for may become a fetch.
pub const MAX_ISSUER_REQUESTS: usize = 4;

/// Implements one contract version's `types` and `crypto` host traits, and the
/// conversion of its `verify-error`, on the same native crypto.
macro_rules! speak {
    ($m:ident) => {
        impl $m::idgate::identity::types::Host for CallState {}

        impl $m::idgate::identity::crypto::Host for CallState {
            fn verify_signature(
                &mut self,
                algorithm: $m::idgate::identity::crypto::SignatureAlgorithm,
                spki_der: Vec<u8>,
                message: Vec<u8>,
                signature: Vec<u8>,
            ) -> Result<bool, String> {
                use $m::idgate::identity::crypto::SignatureAlgorithm as W;
                use SignatureAlgorithm as A;
                let algorithm = match algorithm {
                    W::RsaPkcs1Sha256 => A::RsaPkcs1Sha256,
                    W::RsaPkcs1Sha384 => A::RsaPkcs1Sha384,
                    W::RsaPkcs1Sha512 => A::RsaPkcs1Sha512,
                    W::RsaPkcs1Sha1 => A::RsaPkcs1Sha1,
                    W::Rsa1024Pkcs1Sha256 => A::Rsa1024Pkcs1Sha256,
                    W::DsaSha1 => A::DsaSha1,
                    W::EcdsaP256Sha256 => A::EcdsaP256Sha256,
                    W::EcdsaP384Sha384 => A::EcdsaP384Sha384,
                };
                // The key and bytes come from the plugin, and calls run inline on the
                // server's workers: a panic in a bignum library must be this call's
                // error (a 401 for that request), not an unwound request task.
                std::panic::catch_unwind(|| NativeCrypto.verify_signature(algorithm, &spki_der, &message, &signature))
                    .unwrap_or_else(|_| Err("the host's signature check failed on this key".into()))
            }

            fn digest(&mut self, algorithm: $m::idgate::identity::crypto::DigestAlgorithm, data: Vec<u8>) -> Vec<u8> {
                use $m::idgate::identity::crypto::DigestAlgorithm as W;
                use DigestAlgorithm as A;
                let algorithm = match algorithm {
                    W::Sha1 => A::Sha1,
                    W::Sha256 => A::Sha256,
                    W::Sha384 => A::Sha384,
                    W::Sha512 => A::Sha512,
                };
                NativeCrypto.digest(algorithm, &data)
            }
        }

        impl From<$m::idgate::identity::types::VerifyError> for VerifyError {
            fn from(e: $m::idgate::identity::types::VerifyError) -> VerifyError {
                use $m::idgate::identity::types::VerifyError as W;
                match e {
                    W::Malformed(s) => VerifyError::Malformed(s),
                    W::BadSignature(s) => VerifyError::BadSignature(s),
                    W::UntrustedSigner(s) => VerifyError::UntrustedSigner(s),
                    W::Expired(s) => VerifyError::Expired(s),
                    W::Refused(s) => VerifyError::Refused(s),
                    W::BadConfig(s) => VerifyError::BadConfig(s),
                }
            }
        }
    };
}

speak!(since_v0_1_0);
speak!(since_v0_2_0);
speak!(since_v0_3_0);

impl since_v0_2_0::idgate::identity::host_keys::Host for CallState {
    fn key_set(&mut self) -> Option<String> {
        self.inputs.key_set.as_deref().map(str::to_string)
    }
}

impl since_v0_3_0::idgate::identity::host_keys::Host for CallState {
    fn key_set(&mut self) -> Option<String> {
        self.inputs.key_set.as_deref().map(str::to_string)
    }
}

impl since_v0_3_0::idgate::identity::issuers::Host for CallState {
    fn fetched(&mut self, url: String) -> Option<Vec<u8>> {
        if let Some(body) = self.inputs.issuers.as_ref().and_then(|held| held.get(&url)) {
            return Some(body.to_vec());
        }
        // Not held: remember it for the host to fetch after this call.
        if self.wanted_issuers.len() < MAX_ISSUER_REQUESTS && !self.wanted_issuers.contains(&url) {
            self.wanted_issuers.push(url);
        }
        None
    }
}
