//! idgate: instance-identity authentication for workspace agents.
//!
//! A request's path: [`request`] splits Coder's body, [`sandbox`] runs the
//! provider's plugin (which borrows [`crypto`]) and yields the instance ID, the
//! database resolves it to one agent's token. See ARCHITECTURE.md.

pub mod api;
pub mod authenticate;
pub mod block_files;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod db;
pub mod descriptors;
pub mod edge;
pub mod expiry;
pub mod file_trust;
pub mod go_json;
pub mod harness;
pub mod issuers;
pub mod jwks;
pub mod logging;
pub mod metrics;
pub mod mounts;
pub mod pins;
pub mod providers;
pub mod reload;
pub mod request;
pub mod sandbox;
pub mod serve;
pub mod settings;
pub mod signature_memo;
pub mod tls;
