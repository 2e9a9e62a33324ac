//! Fuzz targets for the code that reads attacker-controlled bytes: the plugin kit's
//! BER/DER and PEM readers and its CMS SignedData parser, each provider plugin's
//! verifier driven through the entry point its component exports, and the agent's
//! reading of server and metadata answers (`idgate_client`).
//!
//! Every target is a plain function of the input bytes in [`targets`], so the same code
//! runs three ways: under libFuzzer (`fuzz_targets/*.rs`, built by `cargo xtask fuzz`
//! with coverage instrumentation on the stable toolchain), as a corpus replay in the
//! ordinary test suite (`tests/corpus.rs`), and from a debugger. See README.md for the
//! harness choice and how to run it.
//!
//! The plugin targets verify with the host's own crypto: [`NativeCrypto`] is
//! `sandbox/src/crypto.rs` (with `signature_memo.rs`) compiled into this crate, not a copy and not the whole `idgate-sandbox`
//! crate, whose wasmtime dependency would add minutes to every instrumented build
//! (coverage flags apply to every crate built).

#[path = "../../sandbox/src/crypto.rs"]
mod host_crypto;
pub mod plugins;
/// `crypto.rs`'s memo of valid certificate signatures, compiled in with it.
#[path = "../../sandbox/src/signature_memo.rs"]
mod signature_memo;
pub mod targets;

pub use host_crypto::NativeCrypto;

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target by the name its binary, corpus directory and `cargo xtask fuzz` use.
pub const TARGETS: &[(&str, Target)] = &[
    ("ber", targets::ber),
    ("pem", targets::pem),
    ("signed_data", targets::signed_data),
    ("aws", targets::aws),
    ("aws_pkcs7", targets::aws_pkcs7),
    ("azure", targets::azure),
    ("azure_pkcs7", targets::azure_pkcs7),
    ("gcp", targets::gcp),
    ("oidc", targets::oidc),
    ("agent_answer", targets::agent_answer),
];
