//! idgate's plugin sandbox, apart from the server: the wasmtime engine, plugin
//! loading and the contract bindings ([`sandbox`]), the host's `crypto` import
//! ([`crypto`], with [`signature_memo`]), file trust ([`file_trust`]), plugin
//! pins ([`pins`]) and the plugin author's test harness ([`harness`]).
//!
//! Its own crate so that a plugin author's `cargo test`, which loads the built
//! component through [`harness`], compiles neither the HTTP server nor the
//! database client. It depends on nothing in `idgate`: what the server hands a
//! call (key sets, issuer certificates) comes in through
//! [`sandbox::HostInputs`] and the [`sandbox::IssuerBodies`] trait.

pub mod crypto;
pub mod file_trust;
pub mod harness;
pub mod pins;
pub mod sandbox;
pub mod signature_memo;
