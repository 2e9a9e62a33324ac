//! The plugin side of idgate's contract (`wit/0.3.0/identity.wit`).
//!
//! A provider plugin implements [`Provider`] with ordinary Rust types and calls
//! [`export_provider!`]; this crate owns the generated WebAssembly bindings, the
//! conversion to and from the contract's types, and the small helpers every
//! verifier needs (PEM, base64, time; JWT and JWK for token verifiers). Because the verifier logic only sees the
//! [`Crypto`] trait (and [`host_keys`], [`issuers`]), the same code also runs
//! natively (the host's benchmarks compare the two).
//!
//! The `contract-0-1` feature builds the same provider against the previous
//! contract (`wit/0.1.0`, configuration passed to every `verify`), so the host's
//! support for 0.1.0 plugins can be tested with a real plugin; `contract-0-2`
//! builds it against 0.2.0 (no `issuers` import: [`issuers::fetched`] answers
//! `None`).

pub mod ber;
pub mod certificate;
pub mod encoding;
pub mod host_keys;
pub mod issuers;
pub mod jwk;
pub mod jwt;
pub mod pem;
pub mod signed_data;
pub mod time;
pub mod x509_path;

#[cfg(any(test, feature = "test-crypto"))]
pub mod test_crypto;

#[cfg(target_arch = "wasm32")]
pub mod component;

/// The contract version this crate implements (the WIT package version).
pub const CONTRACT_VERSION: &str = if cfg!(feature = "contract-0-1") {
    "0.1.0"
} else if cfg!(feature = "contract-0-2") {
    "0.2.0"
} else {
    "0.3.0"
};

/// What a plugin proved about the machine that sent the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The cloud's instance ID; never empty.
    pub instance_id: String,
    /// Further verified facts, by name (`region`, `accountId`, ...).
    pub attributes: Vec<(String, String)>,
}

impl Identity {
    /// An identity with no attributes yet.
    pub fn new(instance_id: impl Into<String>) -> Self {
        Identity {
            instance_id: instance_id.into(),
            attributes: Vec::new(),
        }
    }

    /// Adds an attribute (builder style).
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.attributes.push((name.to_string(), value.into()));
        self
    }

    /// The value of attribute `name`, if present.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// One certificate a configured provider trusts; mirrors the contract's
/// `trust-anchor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchor {
    /// The certificate's subject, for people.
    pub subject: String,
    /// Whether a path may end here (a root) or only pass through.
    pub root: bool,
    /// `built-in` or `configured`.
    pub origin: &'static str,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Whether a chain made today needs it (not only kept for historic checks).
    pub current: bool,
}

/// Why a credential was refused; mirrors the contract's `verify-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Cannot be decoded or lacks a required part (HTTP 400).
    Malformed(String),
    /// A signature does not verify or signed content was altered (HTTP 401).
    BadSignature(String),
    /// The signer is not trusted (HTTP 401).
    UntrustedSigner(String),
    /// Outside a validity period at the verification time (HTTP 401).
    Expired(String),
    /// Genuine, but refused by the operator's policy (HTTP 403).
    Refused(String),
    /// The plugin's configuration is unusable (HTTP 500).
    BadConfig(String),
}

impl VerifyError {
    /// The case name as the contract spells it, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::BadSignature(_) => "bad-signature",
            VerifyError::UntrustedSigner(_) => "untrusted-signer",
            VerifyError::Expired(_) => "expired",
            VerifyError::Refused(_) => "refused",
            VerifyError::BadConfig(_) => "bad-config",
        }
    }

    /// The human-readable reason.
    pub fn reason(&self) -> &str {
        match self {
            VerifyError::Malformed(s)
            | VerifyError::BadSignature(s)
            | VerifyError::UntrustedSigner(s)
            | VerifyError::Expired(s)
            | VerifyError::Refused(s)
            | VerifyError::BadConfig(s) => s,
        }
    }
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.reason())
    }
}

impl std::error::Error for VerifyError {}

/// Signature schemes the host checks; mirrors the contract's `signature-algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    /// RSASSA-PKCS1-v1_5 / SHA-256, keys of 2048+ bits.
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 / SHA-384, keys of 2048+ bits.
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 / SHA-512, keys of 2048+ bits.
    RsaPkcs1Sha512,
    /// RSASSA-PKCS1-v1_5 / SHA-1, keys of 2048+ bits (legacy).
    RsaPkcs1Sha1,
    /// RSASSA-PKCS1-v1_5 / SHA-256 admitting 1024-bit keys (AWS regional anchors only).
    Rsa1024Pkcs1Sha256,
    /// DSA / SHA-1 with a DER `(r, s)` signature.
    DsaSha1,
    /// ECDSA P-256 / SHA-256 with a DER `(r, s)` signature.
    EcdsaP256Sha256,
    /// ECDSA P-384 / SHA-384 with a DER `(r, s)` signature.
    EcdsaP384Sha384,
}

/// Digests the host computes; mirrors the contract's `digest-algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-256 (32 bytes).
    Sha256,
    /// SHA-384 (48 bytes).
    Sha384,
    /// SHA-512 (64 bytes).
    Sha512,
}

/// Signature arithmetic: the host's import inside a component, a native library
/// when the verifier runs natively.
///
/// `Sync` because [`x509_path`] lends it to rustls-webpki, whose signature
/// algorithms must be; every implementation is a stateless unit struct.
pub trait Crypto: Sync {
    /// `Ok(true)` if `signature` over `message` verifies with the DER
    /// SubjectPublicKeyInfo `spki_der`; `Ok(false)` if it does not; `Err` if the
    /// key cannot be used with `algorithm`.
    fn verify_signature(
        &self,
        algorithm: SignatureAlgorithm,
        spki_der: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String>;

    /// The digest of `data`.
    fn digest(&self, algorithm: DigestAlgorithm, data: &[u8]) -> Vec<u8>;
}

/// A cloud's verifier. Implement it on a unit struct and export it with
/// [`export_provider!`].
///
/// The host calls [`Provider::configure`] once and snapshots the result, so
/// everything that does not depend on the credential belongs there; then every
/// credential is checked by [`Provider::verify`] in a fresh copy of that state.
pub trait Provider {
    /// The provider name the host routes by (`aws`, `azure`, `gcp`, ...).
    const NAME: &'static str;

    /// What `configure` prepares from the operator's configuration: parsed
    /// certificates, key tables, allow-lists.
    type Config: Send + Sync + 'static;

    /// Validates the provider block (JSON; `{}` or empty means defaults) and
    /// prepares it. Every problem is [`VerifyError::BadConfig`] naming the key.
    fn configure(config: &str) -> Result<Self::Config, VerifyError>;

    /// Verifies one credential; see `verify` in the WIT for the arguments.
    fn verify(crypto: &dyn Crypto, config: &Self::Config, credential: &str, now: i64) -> Result<Identity, VerifyError>;

    /// The certificates `config` trusts, for the host's listing and expiry
    /// watch (contract 0.3.0's `trust`). The default, none, suits providers
    /// that trust keys rather than certificates.
    fn trust(config: &Self::Config) -> Vec<TrustAnchor> {
        let _ = config;
        Vec::new()
    }

    /// Configures and verifies in one step, as a 0.1.0 plugin did on every call
    /// (unit tests, and the benchmarks' configure-per-call comparison).
    fn configure_and_verify(
        crypto: &dyn Crypto,
        credential: &str,
        config: &str,
        now: i64,
    ) -> Result<Identity, VerifyError> {
        Self::verify(crypto, &Self::configure(config)?, credential, now)
    }
}

/// Exports a [`Provider`] as the component's `verify-identity` implementation.
///
/// Expands to nothing outside WebAssembly, so plugin crates also build natively.
#[macro_export]
macro_rules! export_provider {
    ($ty:ident) => {
        // Where `configure` leaves its result; the host's snapshot captures it.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static CONFIGURED: ::std::sync::OnceLock<<$ty as $crate::Provider>::Config> = ::std::sync::OnceLock::new();
            impl $crate::component::Configured for $ty {
                fn configured() -> &'static ::std::sync::OnceLock<<$ty as $crate::Provider>::Config> {
                    &CONFIGURED
                }
            }
        };
        #[cfg(target_arch = "wasm32")]
        $crate::component::export!($ty with_types_in $crate::component);
    };
}
