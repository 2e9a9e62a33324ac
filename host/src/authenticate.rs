//! From a credential to a verified identity: configures every mount (a plugin
//! and a block, `mounts.rs`) once (refusing to start on a bad block), then per
//! call adds the mount's host-fetched key set (Google's keys for `gcp`, any
//! mount's `jwks_url`/`jwks_file`) and runs the plugin;
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
use crate::issuers::{IssuerFetcher, IssuersConfig};
use crate::jwks::KeyCache;
use crate::mounts::{self, MountSpec, Namespace};
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
        key_set: Option<Arc<str>>,
        now: i64,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, CallError>> + Send + 'a>>;
}

/// The provider block a plugin is configured with: the operator's block
/// without the host's own keys (key sources, display name; see
/// [`mounts::HOST_BLOCK_KEYS`]), which are the host's business, not the plugin's.
/// (`provider` is kept for callers that configure by provider name.)
pub fn plugin_block(provider: &str, block: serde_json::Value) -> serde_json::Value {
    let _ = provider;
    mounts::plugin_block(block)
}

/// One served mount.
struct Mount {
    configured: Configured,
    /// The SHA-256 of the plugin file it was configured from, and the block
    /// (host keys removed, `K_file` keys read) it was configured with: a
    /// reload that finds both unchanged keeps `configured`.
    plugin_sha256: String,
    block: serde_json::Value,
    /// The mount's host-fetched key set, if its block names a source (or its
    /// plugin has a default one), and the settings it was made from.
    keys: Option<(Arc<KeyCache>, serde_json::Value)>,
    /// The name in messages.
    display: String,
    /// Where its instance IDs are resolved (`mounts.rs`).
    namespace: Namespace,
}

/// Verifies credentials with the loaded plugins and the operator's configuration.
///
/// One `Authenticator` is one *provider set*: the plugins, the mounts built on
/// them and their key caches, as one configuration file and one plugin
/// directory made them. It never changes; a reload builds the next one
/// ([`Authenticator::reload`]) and [`crate::providers::Providers`] swaps it in.
pub struct Authenticator {
    sandbox: Arc<Sandbox>,
    mounts: BTreeMap<String, Mount>,
    /// Mounts whose plugin is not loaded: mount → plugin.
    unloaded: BTreeMap<String, String>,
    /// Plugins with no block in the configuration file that refused the empty
    /// one, with the plugin's reason: their provider answers `bad-config` and
    /// `/readyz` says why, instead of a dropped-in plugin stopping the server.
    unconfigured: BTreeMap<String, String>,
    /// Issuer certificates fetched for plugins; `None` when no host is allowed.
    issuers: Option<Arc<IssuerFetcher>>,
    /// The `[issuers]` table `issuers` was made from.
    issuers_config: IssuersConfig,
    /// Warn this long before current trust material expires (`trust_warning_days`).
    trust_warning_secs: i64,
    /// Runs verifications instead of the sandbox (benchmarks only).
    stand_in: Option<Arc<dyn Verifier>>,
}

/// What a reload kept and what it made anew, for its log line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Mounts configured anew (new, or their plugin or block changed).
    pub configured: Vec<String>,
    /// Mounts whose configured image was kept.
    pub kept: Vec<String>,
    /// Mounts served before and not now.
    pub removed: Vec<String>,
}

impl Authenticator {
    /// Builds the authenticator: configures every mount ([`mounts::mounts`])
    /// with its block (an error names the mount and the key its plugin
    /// refused) and sets up each mount's key cache. A plugin the file has no
    /// block for is mounted under its own name with `{}`; if it refuses that,
    /// it is kept out of service ([`Authenticator::unconfigured`]) rather than
    /// failing.
    pub fn new(sandbox: Arc<Sandbox>, file: &FileConfig) -> anyhow::Result<Authenticator> {
        Self::build(sandbox, file, None).map(|(auth, _)| auth)
    }

    /// The next provider set, from `sandbox` (this one's reloaded, see
    /// [`Sandbox::reload`]) and `file` (the configuration read again), built
    /// as [`Authenticator::new`] builds one, except that what did not change is
    /// kept: a mount whose plugin bytes and block are the same keeps its
    /// configured image (no configure, no snapshot), a mount whose key source
    /// is the same URL keeps its key cache (and the keys it holds), and
    /// unchanged `[issuers]` keep the fetched issuers. `self` is untouched:
    /// calls running on it finish on it.
    pub fn reload(&self, sandbox: Arc<Sandbox>, file: &FileConfig) -> anyhow::Result<(Authenticator, Changes)> {
        Self::build(sandbox, file, Some(self))
    }

    fn build(
        sandbox: Arc<Sandbox>,
        file: &FileConfig,
        previous: Option<&Authenticator>,
    ) -> anyhow::Result<(Authenticator, Changes)> {
        let loaded: Vec<String> = sandbox.plugins().into_iter().map(|p| p.provider).collect();
        let mut served = BTreeMap::new();
        let mut unloaded = BTreeMap::new();
        let mut unconfigured = BTreeMap::new();
        let mut changes = Changes::default();
        for spec in mounts::mounts(file, &loaded)? {
            let Some(plugin) = sandbox.plugin(&spec.plugin) else {
                unloaded.insert(spec.name.clone(), spec.plugin.clone());
                continue;
            };
            let before = previous.and_then(|p| p.mounts.get(&spec.name));
            let keys = key_cache(&spec, before.and_then(|m| m.keys.as_ref()))?;
            let block = mounts::plugin_block(spec.block.clone());
            let block = crate::block_files::resolve(&spec.name, block)?;
            let kept = before
                .filter(|m| m.plugin_sha256 == plugin.sha256 && m.block == block)
                .map(|m| m.configured.clone());
            let was_kept = kept.is_some();
            let configured = match kept {
                Some(configured) => Ok(configured),
                None => sandbox.configure(&spec.plugin, &block),
            };
            match configured {
                Ok(configured) => {
                    let list = if was_kept {
                        &mut changes.kept
                    } else {
                        &mut changes.configured
                    };
                    list.push(spec.name.clone());
                    served.insert(
                        spec.name.clone(),
                        Mount {
                            configured,
                            plugin_sha256: plugin.sha256.clone(),
                            block,
                            keys,
                            display: spec.display.clone(),
                            namespace: spec.namespace.clone(),
                        },
                    );
                }
                // The operator wrote this block: refusing it is theirs to fix now.
                Err(e) if spec.written => return Err(e.context(format!("mount {:?}", spec.name))),
                Err(e) => {
                    let reason = format!("{e:#} (add a [{}] block)", spec.name);
                    tracing::warn!(mount = %spec.name, %reason, "plugin refused its default configuration; not serving it");
                    unconfigured.insert(spec.name.clone(), reason);
                }
            }
        }
        if let Some(previous) = previous {
            changes.removed = previous
                .mounts
                .keys()
                .filter(|name| !served.contains_key(*name))
                .cloned()
                .collect();
        }
        let issuers_config = file.host.issuers.clone();
        let issuers = match previous {
            Some(p) if p.issuers_config == issuers_config => p.issuers.clone(),
            _ => {
                let fetcher = IssuerFetcher::new(&issuers_config);
                fetcher.enabled().then(|| Arc::new(fetcher))
            }
        };
        let auth = Authenticator {
            sandbox,
            mounts: served,
            unloaded,
            unconfigured,
            issuers,
            issuers_config,
            trust_warning_secs: file
                .host
                .trust_warning_days
                .unwrap_or(crate::expiry::DEFAULT_WARNING_DAYS)
                .saturating_mul(86_400)
                .min(i64::MAX as u64) as i64,
            stand_in: previous.and_then(|p| p.stand_in.clone()),
        };
        Ok((auth, changes))
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
        key_set: Option<Arc<str>>,
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

    /// The served mounts' names and configured plugins.
    pub fn configured(&self) -> impl Iterator<Item = (&str, &Configured)> {
        self.mounts.iter().map(|(name, m)| (name.as_str(), &m.configured))
    }

    /// Whether `mount` is served, or known (configured, or one of Coder's) —
    /// so that a request naming it gets its own answer and metrics label.
    pub fn knows(&self, mount: &str) -> bool {
        self.mounts.contains_key(mount)
            || self.unloaded.contains_key(mount)
            || self.unconfigured.contains_key(mount)
            || mounts::coder_route(mount).is_some()
    }

    /// Mounts whose plugin is not loaded: mount → plugin.
    pub fn unloaded(&self) -> &BTreeMap<String, String> {
        &self.unloaded
    }

    /// The name `mount` goes by in messages.
    pub fn display(&self, mount: &str) -> String {
        match self.mounts.get(mount) {
            Some(m) => m.display.clone(),
            None => mounts::coder_route(mount).map_or_else(|| mount.to_string(), |r| r.display.to_string()),
        }
    }

    /// How long before current trust material expires `/readyz` warns, seconds.
    pub fn trust_warning_secs(&self) -> i64 {
        self.trust_warning_secs
    }

    /// What `provider`'s configured plugin trusts (empty if none is configured).
    pub fn trust(&self, provider: &str) -> &[TrustAnchor] {
        self.mounts.get(provider).map_or(&[], |m| m.configured.trust())
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
    /// The identity's instance ID is the one resolution looks up: in the
    /// mount's namespace (`<prefix>:<id>` for any mount but Coder's three, see
    /// `mounts.rs`). An instance ID longer than [`MAX_INSTANCE_ID_BYTES`] or
    /// holding a control character is refused as malformed: no cloud issues
    /// one, and it would go on to the database (a NUL fails a statement).
    pub async fn verify(&self, provider: &str, credential: String, now: i64) -> Result<Identity, AuthError> {
        let mut identity = self.verify_unbounded(provider, credential, now).await?;
        let id = &identity.instance_id;
        let malformed = if id.len() > MAX_INSTANCE_ID_BYTES {
            Some(format!(
                "the instance ID is {} bytes long (at most {MAX_INSTANCE_ID_BYTES})",
                id.len()
            ))
        } else if id.chars().any(char::is_control) {
            Some("the instance ID holds a control character".to_string())
        } else {
            None
        };
        if let Some(why) = malformed {
            return Err(AuthError::Call(CallError::Rejected(VerifyError::Malformed(why))));
        }
        if let Some(mount) = self.mounts.get(provider) {
            identity.instance_id = mount.namespace.apply(&identity.instance_id);
        }
        Ok(identity)
    }

    async fn verify_unbounded(&self, provider: &str, credential: String, now: i64) -> Result<Identity, AuthError> {
        let Some(mount) = self.mounts.get(provider) else {
            return Err(AuthError::Call(match self.unconfigured.get(provider) {
                Some(reason) => CallError::Rejected(VerifyError::BadConfig(reason.clone())),
                None => CallError::NotLoaded(provider.to_string()),
            }));
        };
        let plugin = &mount.configured;
        let Some((keys, _)) = mount.keys.as_ref() else {
            return self.call(plugin, credential, None, now).await.map_err(AuthError::Call);
        };
        let key_set = keys
            .key_set_text()
            .await
            .map_err(|e| AuthError::KeysUnavailable(e.to_string()))?;
        let first = self.call(plugin, credential.clone(), Some(key_set), now).await;
        // A key the issuer rotated in since the last fetch (Google's, say):
        // refresh once (rate-limited inside the cache) and try again.
        match first {
            Err(CallError::Rejected(VerifyError::UntrustedSigner(ref reason)))
                if reason.contains(crate::jwks::UNKNOWN_KID_MARKER) && keys.refresh_for_unknown_kid().await =>
            {
                let key_set = keys
                    .key_set_text()
                    .await
                    .map_err(|e| AuthError::KeysUnavailable(e.to_string()))?;
                self.call(plugin, credential, Some(key_set), now)
                    .await
                    .map_err(AuthError::Call)
            }
            other => other.map_err(AuthError::Call),
        }
    }
}

/// The key cache a mount's block asks for: `jwks_url` or `jwks_file`, else
/// the plugin's default source from Coder's table (Google's keys for `gcp`),
/// else none. `before` is the mount's cache in the provider set being
/// reloaded: kept when it fetches from the same URL with the same settings
/// (a file source is read again: the operator may have replaced the file).
fn key_cache(
    spec: &MountSpec,
    before: Option<&(Arc<KeyCache>, serde_json::Value)>,
) -> anyhow::Result<Option<(Arc<KeyCache>, serde_json::Value)>> {
    let names_source = ["jwks_url", "jwks_file"].iter().any(|k| spec.block.get(k).is_some());
    let default = mounts::coder_route(&spec.plugin).and_then(|r| r.default_key_source);
    if !names_source && default.is_none() {
        return Ok(None);
    }
    let settings = serde_json::json!({
        "default": default,
        "jwks_url": spec.block.get("jwks_url"),
        "jwks_file": spec.block.get("jwks_file"),
        "jwks_min_refresh_secs": spec.block.get("jwks_min_refresh_secs"),
    });
    if let Some((cache, was)) = before {
        if *was == settings && spec.block.get("jwks_file").is_none() {
            return Ok(Some((cache.clone(), settings)));
        }
    }
    let cache = KeyCache::for_mount(&spec.name, &spec.block, default)?;
    Ok(Some((Arc::new(cache), settings)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_block_leaves_out_the_host_settings() {
        use serde_json::json;
        let gcp = json!({"audience": "a", "jwks_url": "https://x", "jwks_file": "/f", "jwks_min_refresh_secs": 5, "skew_secs": 3});
        assert_eq!(plugin_block("gcp", gcp), json!({"audience": "a", "skew_secs": 3}));
        // Any mount's key source is the host's.
        let oidc = json!({"issuer": "i", "jwks_url": "https://x", "display_name": "K8s"});
        assert_eq!(plugin_block("oidc", oidc), json!({"issuer": "i"}));
        assert_eq!(plugin_block("gcp", json!({})), json!({}));
    }
}
