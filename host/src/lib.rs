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
pub mod db;
pub mod descriptors;
pub mod edge;
pub mod expiry;
pub mod go_json;
pub mod issuers;
pub mod jwks;
pub mod logging;
pub mod metrics;
pub mod mounts;
pub mod providers;
pub mod reload;
pub mod request;
pub mod serve;
pub mod settings;
pub mod tls;

// The sandbox, its crypto import, file trust and pins are the `idgate-sandbox` crate (so a
// plugin author's tests build without the server); re-exported so `crate::sandbox::…` and
// `idgate::sandbox::…` keep naming them.
pub use idgate_sandbox::{crypto, file_trust, pins, sandbox};
