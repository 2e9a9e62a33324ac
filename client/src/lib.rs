//! The agent side of idgate: fetch this machine's identity credential, exchange
//! it at an idgate (or Coder) server for a session token, and keep that token.
//!
//! The pieces, each in its own module:
//!
//! - [`sources`]: one [`CredentialSource`] per credential — the three clouds'
//!   metadata services (Coder's `aws-`, `azure-` and `google-instance-identity`),
//!   a Kubernetes service-account token, a GitHub Actions ID token, any JWT file.
//! - [`exchange`]: an [`Exchanger`] posts the credential to
//!   `/api/v2/workspaceagents/<route>` and retries what is worth retrying
//!   ([`retry`]), until a session token or a definite answer.
//! - [`provider`]: a [`TokenProvider`] caches the session token and exchanges
//!   again when asked to refresh (Coder's `InstanceIdentitySessionTokenProvider`).
//! - [`answer`]: the server's answer decoded from bytes by a pure function, so
//!   that nothing a server (or anything in between) sends can panic the agent.
//!
//! Everything is blocking: an agent does one exchange at boot and one per
//! refresh, and a thread costs less than a runtime in a binary that goes on
//! every VM. The credential and the session token are [`Secret`]s: they never
//! appear in a `Debug` or `Display`, and this crate logs nothing.

pub mod answer;
pub mod endpoint;
pub mod error;
pub mod exchange;
pub mod http;
pub mod provider;
pub mod retry;
pub mod secret;
pub mod sources;
pub mod tls;

pub use endpoint::Endpoint;
pub use error::Error;
pub use exchange::Exchanger;
pub use provider::TokenProvider;
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use sources::{Credential, CredentialSource};
