//! From a credential to a verified identity: configures every loaded plugin
//! once with its provider block (refusing to start on a bad one), then per call
//! adds host-fetched key material (Google's keys for `gcp`) and runs the plugin;
//! when the plugin asked for issuer certificates the host does not hold yet
//! (`issuers`), fetches them and runs it again.
//! Shared by `idgate verify` and the HTTP API so both verify the same way.
//!
//! Why Google's keys are a per-call input (`host-keys`) and not configuration:
//! they rotate while the host runs, and the cache refreshes them on demand
//! (an unknown `kid` refetches and retries). Baking them into the configured
//! snapshot would mean re-running configure, re-snapshotting and recompiling
//! the plugin (~1 s of compile) on every rotation, with the retried request
//! waiting for it; reading a 2 KiB key set per call costs microseconds.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use idgate_plugin_kit::{Identity, VerifyError};

use crate::config::FileConfig;
use crate::issuers::IssuerFetcher;
use crate::jwks::KeyCache;
use crate::sandbox::{CallError, Configured, HostInputs, IssuerBodies, Sandbox, TrustAnchor};

/// Extra runs of one verification after fetching issuers it asked for: one
/// per missing level of a chain (the plugins' `aia::MAX_DEPTH`).
const MAX_ISSUER_ROUNDS: usize = 2;

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

/// Longest instance ID accepted from a plugin (AWS's are 19 bytes, Azure's 36,
/// Google's about 20).
pub const MAX_INSTANCE_ID_BYTES: usize = 256;

/// What runs a provider's verification in place of the sandbox: the provider,
/// the credential (the body's provider fields, JSON), the provider's
/// host-fetched key set (Google's JWKS for `gcp`) and the time.
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
        key_set: Option<String>,
        now: i64,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, CallError>> + Send + 'a>>;
}

/// The provider block a plugin is configured with: the operator's `[provider]`
/// table (`block`) without the host's own key-cache settings (`jwks_url`, ...),
/// which are the host's business, not the plugin's.
pub fn plugin_block(provider: &str, mut block: serde_json::Value) -> serde_json::Value {
    if provider == "gcp" {
        if let Some(map) = block.as_object_mut() {
            for key in crate::jwks::HOST_KEYS {
                map.remove(key);
            }
        }
    }
    block
}

/// Verifies credentials with the loaded plugins and the operator's configuration.
pub struct Authenticator {
    sandbox: Arc<Sandbox>,
    configured: BTreeMap<String, Configured>,
    /// Plugins with no block in the configuration file that refused the empty
    /// one, with the plugin's reason: their provider answers `bad-config` and
    /// `/readyz` says why, instead of a dropped-in plugin stopping the server.
    unconfigured: BTreeMap<String, String>,
    gcp_keys: Option<KeyCache>,
    /// Issuer certificates fetched for plugins; `None` when no host is allowed.
    issuers: Option<Arc<IssuerFetcher>>,
    /// Warn this long before current trust material expires (`trust_warning_days`).
    trust_warning_secs: i64,
    /// Runs verifications instead of the sandbox (benchmarks only).
    stand_in: Option<Arc<dyn Verifier>>,
}

impl Authenticator {
    /// Builds the authenticator: configures every loaded plugin with its
    /// provider block (an error names the plugin and the key it refused), and
    /// sets up Google's key cache when a `gcp` plugin is loaded. A plugin the
    /// file has no block for is configured with `{}`; if it refuses that, it is
    /// kept out of service ([`Authenticator::unconfigured`]) rather than failing.
    pub fn new(sandbox: Arc<Sandbox>, file: &FileConfig) -> anyhow::Result<Authenticator> {
        let gcp_keys = if sandbox.has("gcp") {
            Some(KeyCache::from_config(&file.provider("gcp"))?)
        } else {
            None
        };
        let mut configured = BTreeMap::new();
        let mut unconfigured = BTreeMap::new();
        for plugin in sandbox.plugins() {
            let block = plugin_block(&plugin.provider, file.provider(&plugin.provider));
            let block = crate::block_files::resolve(&plugin.provider, block)?;
            match sandbox.configure(&plugin.provider, &block) {
                Ok(c) => {
                    configured.insert(plugin.provider.clone(), c);
                }
                // The operator wrote this block: refusing it is theirs to fix now.
                Err(e) if file.providers.contains_key(&plugin.provider) => return Err(e),
                Err(e) => {
                    let reason = format!("{e:#} (add a [{}] block)", plugin.provider);
                    tracing::warn!(provider = %plugin.provider, %reason, "plugin refused its default configuration; not serving it");
                    unconfigured.insert(plugin.provider.clone(), reason);
                }
            }
        }
        let issuers = IssuerFetcher::new(&file.host.issuers);
        Ok(Authenticator {
            sandbox,
            configured,
            unconfigured,
            gcp_keys,
            issuers: issuers.enabled().then(|| Arc::new(issuers)),
            trust_warning_secs: file
                .host
                .trust_warning_days
                .unwrap_or(crate::expiry::DEFAULT_WARNING_DAYS)
                .saturating_mul(86_400)
                .min(i64::MAX as u64) as i64,
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

    async fn call(
        &self,
        plugin: &Configured,
        credential: String,
        key_set: Option<String>,
        now: i64,
    ) -> Result<Identity, CallError> {
        if let Some(v) = &self.stand_in {
            return v.verify(plugin.provider(), credential, key_set, now).await;
        }
        let inputs = HostInputs {
            key_set,
            issuers: self.issuers.clone().map(|f| f as Arc<dyn IssuerBodies>),
        };
        let mut rounds = 0;
        loop {
            let verified = self
                .sandbox
                .verify_async_with(plugin, credential.clone(), inputs.clone(), now)
                .await;
            // A refusal after asking for issuers the host did not hold: fetch
            // them (if allowed) and try again with them.
            let retry = matches!(verified.result, Err(CallError::Rejected(_)))
                && !verified.wanted_issuers.is_empty()
                && rounds < MAX_ISSUER_ROUNDS;
            match &self.issuers {
                Some(fetcher) if retry && fetcher.fetch(&verified.wanted_issuers).await => rounds += 1,
                _ => return verified.result,
            }
        }
    }

    /// The configured plugins, by provider.
    pub fn configured(&self) -> &BTreeMap<String, Configured> {
        &self.configured
    }

    /// How long before current trust material expires `/readyz` warns, seconds.
    pub fn trust_warning_secs(&self) -> i64 {
        self.trust_warning_secs
    }

    /// What `provider`'s configured plugin trusts (empty if none is configured).
    pub fn trust(&self, provider: &str) -> &[TrustAnchor] {
        self.configured.get(provider).map_or(&[], |c| c.trust())
    }

    /// Loaded plugins not in service because they refused the empty
    /// configuration and the file has no block for them: provider → reason.
    pub fn unconfigured(&self) -> &BTreeMap<String, String> {
        &self.unconfigured
    }

    /// The sandbox the plugins run in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Verifies `credential` (the provider fields of the body, a JSON object) at `now`.
    /// An identity whose instance ID is longer than [`MAX_INSTANCE_ID_BYTES`] is
    /// refused as malformed: no cloud issues one, and it would go on to the database.
    pub async fn verify(&self, provider: &str, credential: String, now: i64) -> Result<Identity, AuthError> {
        let identity = self.verify_unbounded(provider, credential, now).await?;
        if identity.instance_id.len() > MAX_INSTANCE_ID_BYTES {
            return Err(AuthError::Call(CallError::Rejected(VerifyError::Malformed(format!(
                "the instance ID is {} bytes long (at most {MAX_INSTANCE_ID_BYTES})",
                identity.instance_id.len()
            )))));
        }
        Ok(identity)
    }

    async fn verify_unbounded(&self, provider: &str, credential: String, now: i64) -> Result<Identity, AuthError> {
        let Some(plugin) = self.configured.get(provider) else {
            return Err(AuthError::Call(match self.unconfigured.get(provider) {
                Some(reason) => CallError::Rejected(VerifyError::BadConfig(reason.clone())),
                None => CallError::NotLoaded(provider.to_string()),
            }));
        };
        let Some(keys) = self.gcp_keys.as_ref().filter(|_| provider == "gcp") else {
            return self.call(plugin, credential, None, now).await.map_err(AuthError::Call);
        };
        let key_set = keys
            .key_set()
            .await
            .map_err(|e| AuthError::KeysUnavailable(e.to_string()))?;
        let first = self
            .call(plugin, credential.clone(), Some(key_set.to_string()), now)
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
                self.call(plugin, credential, Some(key_set.to_string()), now)
                    .await
                    .map_err(AuthError::Call)
            }
            other => other.map_err(AuthError::Call),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_block_leaves_out_the_host_key_cache_settings() {
        use serde_json::json;
        let gcp = json!({"audience": "a", "jwks_url": "https://x", "jwks_file": "/f", "jwks_min_refresh_secs": 5, "skew_secs": 3});
        assert_eq!(plugin_block("gcp", gcp), json!({"audience": "a", "skew_secs": 3}));
        // Only gcp's key-cache settings are the host's.
        let aws = json!({"jwks_url": "kept"});
        assert_eq!(plugin_block("aws", aws.clone()), aws);
        assert_eq!(plugin_block("gcp", json!({})), json!({}));
    }
}
