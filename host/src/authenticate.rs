//! From a credential to a verified identity: picks the provider's configuration,
//! adds host-fetched key material (Google's keys for `gcp`), and runs the plugin.
//! Shared by `idgate verify` and the HTTP API so both verify the same way.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use idgate_plugin_kit::{Identity, VerifyError};

use crate::config::FileConfig;
use crate::jwks::KeyCache;
use crate::sandbox::{CallError, Sandbox};

/// Why verification did not produce an identity.
#[derive(Debug)]
pub enum AuthError {
    /// The plugin refused the credential, failed, or is missing.
    Call(CallError),
    /// Key material the plugin needs could not be had (HTTP 503).
    KeysUnavailable(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Call(e) => e.fmt(f),
            AuthError::KeysUnavailable(e) => write!(f, "signing keys are unavailable: {e}"),
        }
    }
}

/// What runs a provider's verification in place of the sandbox: the provider,
/// the credential (the body's provider fields, JSON), the provider's
/// configuration (JSON, host-fetched keys already injected) and the time.
///
/// Production always uses the sandbox. The benchmarks put the plugin crates'
/// native code or a stub here, behind the same router, to measure what the
/// sandbox and the verification cost (the "ceiling" rows).
pub trait Verifier: Send + Sync {
    /// Verifies one credential.
    fn verify<'a>(
        &'a self,
        provider: &'a str,
        credential: String,
        config: String,
        now: i64,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, CallError>> + Send + 'a>>;
}

/// Verifies credentials with the loaded plugins and the operator's configuration.
pub struct Authenticator {
    sandbox: Arc<Sandbox>,
    configs: BTreeMap<String, serde_json::Value>,
    gcp_keys: Option<KeyCache>,
    /// Runs verifications instead of the sandbox (benchmarks only).
    stand_in: Option<Arc<dyn Verifier>>,
}

impl Authenticator {
    /// Builds the authenticator; sets up Google's key cache when a `gcp` plugin is loaded.
    pub fn new(sandbox: Arc<Sandbox>, file: &FileConfig) -> anyhow::Result<Authenticator> {
        let gcp_keys = if sandbox.has("gcp") {
            Some(KeyCache::from_config(&file.provider("gcp"))?)
        } else {
            None
        };
        let configs = sandbox
            .plugins()
            .into_iter()
            .map(|p| {
                let block = file.provider(&p.provider);
                (p.provider, block)
            })
            .collect();
        Ok(Authenticator {
            sandbox,
            configs,
            gcp_keys,
            stand_in: None,
        })
    }

    /// The same authenticator with `verifier` running every verification in
    /// place of the sandbox; configuration and key handling stay as they are.
    /// For measurements, not for serving.
    pub fn with_verifier(mut self, verifier: Arc<dyn Verifier>) -> Authenticator {
        self.stand_in = Some(verifier);
        self
    }

    async fn call(&self, provider: &str, credential: String, config: String, now: i64) -> Result<Identity, CallError> {
        match &self.stand_in {
            Some(v) => v.verify(provider, credential, config, now).await,
            None => self.sandbox.verify_async(provider, credential, config, now).await,
        }
    }

    /// The sandbox the plugins run in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Verifies `credential` (the provider fields of the body, a JSON object) at `now`.
    pub async fn verify(&self, provider: &str, credential: String, now: i64) -> Result<Identity, AuthError> {
        let Some(block) = self.configs.get(provider) else {
            return Err(AuthError::Call(CallError::NotLoaded(provider.to_string())));
        };
        let Some(keys) = self.gcp_keys.as_ref().filter(|_| provider == "gcp") else {
            return self
                .call(provider, credential, block.to_string(), now)
                .await
                .map_err(AuthError::Call);
        };
        let key_set = keys
            .key_set()
            .await
            .map_err(|e| AuthError::KeysUnavailable(e.to_string()))?;
        let first = self
            .call(provider, credential.clone(), KeyCache::inject(block, key_set), now)
            .await;
        // A key Google rotated in since the last fetch: refresh once (rate-limited
        // inside the cache) and try again.
        match first {
            Err(CallError::Rejected(VerifyError::UntrustedSigner(ref reason)))
                if reason.contains(crate::jwks::UNKNOWN_KID_MARKER) && keys.refresh_for_unknown_kid().await =>
            {
                let key_set = keys
                    .key_set()
                    .await
                    .map_err(|e| AuthError::KeysUnavailable(e.to_string()))?;
                self.call(provider, credential, KeyCache::inject(block, key_set), now)
                    .await
                    .map_err(AuthError::Call)
            }
            other => other.map_err(AuthError::Call),
        }
    }
}
