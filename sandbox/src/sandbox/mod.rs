//! All wasmtime set-up: loading provider plugins, configuring them once into a
//! snapshot, and running every call contained.
//!
//! Invariants:
//! - A plugin's only imports that do anything are `crypto`, `host-keys` (since
//!   0.2.0), `issuers` (since 0.3.0) and `wasi:random` (std seeds hash maps
//!   from it). Every other import —
//!   filesystem, environment, stdio, clocks, sockets — is linked as a trap, so a
//!   plugin cannot reach the machine or learn the time except through its
//!   arguments.
//! - A 0.2.0 or 0.3.0 plugin is configured once per configuration ([`Sandbox::configure`]):
//!   `configure` runs in an instance whose state is then snapshotted into the
//!   image every call starts from (`snapshot.rs` says what a snapshot may hold).
//! - Every call runs in a fresh `Store` and instance made from that image:
//!   nothing from one request reaches the next, and a trapped instance is never
//!   reused.
//! - Every call — `configure` included — has a memory cap and a CPU deadline
//!   (epoch interruption); a trap, a deadline or a memory failure is an error for
//!   that call only.
//! - Compiled code is cached on disk: a plugin by the content hash of its
//!   `.wasm` and the engine's compatibility hash, a configured snapshot by those
//!   and the hash of the configuration.
//! - Everything compiled or deserialized was read from a descriptor that was
//!   checked (`cache.rs`, [`crate::file_trust`]), never from a path reopened.

mod cache;
mod configure;
mod contract;
mod engine;
mod limits;
mod load;
mod snapshot;
mod versions;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idgate_plugin_kit::{Identity, VerifyError};
use wasmtime::Engine;

use cache::Cache;
use contract::since_v0_1_0;
pub use contract::SUPPORTED_CONTRACTS;
use limits::{CallState, Ticker};
use versions::Configurable;

/// Per-call resource limits and how calls are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory a plugin instance may grow to, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock CPU budget of one call (rounded up to 10 ms ticks).
    pub deadline: Duration,
    /// Calls allowed to run at once (they are CPU-bound; near the core count).
    pub max_concurrent: usize,
    /// Take instance memory from wasmtime's pooling allocator (pre-reserved
    /// slots, reset between calls) instead of mapping it per call. Each call
    /// still gets a fresh instance; this only changes where its memory comes from.
    pub pooling: bool,
    /// Run [`Sandbox::verify_async`]'s call on the async task's own thread,
    /// under its permit, instead of handing it to tokio's blocking pool.
    pub inline_calls: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            deadline: Duration::from_millis(500),
            max_concurrent: std::thread::available_parallelism().map_or(2, |n| n.get()),
            // Why on: a fresh instance per call means a linear memory per call.
            // On demand, each call mmaps it, faults its pages in and munmaps it
            // again, and munmap shoots down TLBs on every core: ~25 % of server
            // CPU in the profile (notes/profile.md). The pool keeps slots mapped
            // and resets them (only the dirtied pages, see `new_engine`). Measured
            // single-threaded by the sandbox-costs bench (2026-11-29, 2 cores): a
            // trivial call 11 µs pooled vs 37 µs on demand, AWS 30 vs 93 µs.
            pooling: true,
            // Why inline: the hand-off to the blocking pool and back costs two
            // context switches per call (~14 % of server CPU in the profile),
            // more than a whole trivial call. A call is CPU-bound and bounded by
            // its deadline, and at most `max_concurrent` (≤ cores) run at once,
            // so the async workers are never all parked on plugin calls for long.
            // Measured: 64 tasks on 2 workers make 1.1× the trivial calls/s inline.
            inline_calls: true,
        }
    }
}

/// What the host knows about a loaded plugin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    /// Provider name the plugin serves.
    pub provider: String,
    /// Contract version the plugin speaks.
    pub contract: String,
    /// SHA-256 of the `.wasm` file, hex.
    pub sha256: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Whether the compiled artifact came from the cache.
    pub cached: bool,
}

/// Why a plugin call did not produce an identity.
#[derive(Debug)]
pub enum CallError {
    /// No plugin serves this provider.
    NotLoaded(String),
    /// The plugin refused the credential.
    Rejected(VerifyError),
    /// The plugin trapped, hit its deadline or its memory cap.
    Fault {
        /// The provider whose plugin failed.
        provider: String,
        /// What happened, for logs and the 500's detail.
        message: String,
        /// Which limit, if a limit was the cause.
        kind: FaultKind,
    },
}

/// The cause of a [`CallError::Fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The CPU deadline passed.
    Deadline,
    /// The memory cap was hit.
    Memory,
    /// Any other trap (panic, abort, a forbidden import).
    Trap,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotLoaded(p) => write!(f, "no plugin is loaded for provider {p:?}"),
            CallError::Rejected(e) => write!(f, "{e}"),
            CallError::Fault { provider, message, .. } => write!(f, "the {provider} plugin failed: {message}"),
        }
    }
}

impl std::error::Error for CallError {}

/// A loaded plugin, linked for the contract it speaks.
#[derive(Clone)]
enum Linked {
    V0_1(since_v0_1_0::ProviderPre<CallState>),
    /// 0.2.0 and later: configured once, then snapshotted.
    Configurable(Configurable),
}

struct Plugin {
    info: PluginInfo,
    /// The `.wasm` as loaded: configuring instruments and snapshots these bytes.
    wasm: Arc<[u8]>,
    linked: Linked,
}

/// A plugin configured for serving: the image each call's fresh instance
/// starts from. Cheap to clone; build a new one when the configuration changes.
#[derive(Clone)]
pub struct Configured(Arc<ConfiguredPlugin>);

struct ConfiguredPlugin {
    provider: String,
    image: Image,
    cached: bool,
    trust: Vec<TrustAnchor>,
}

enum Image {
    /// 0.2.0 and later: the snapshot taken after `configure`.
    Snapshot(Configurable),
    /// 0.1.0: no configure step; the block goes with every call.
    PerCall {
        pre: since_v0_1_0::ProviderPre<CallState>,
        config: serde_json::Value,
    },
}

impl Configured {
    /// The provider this configured plugin serves.
    pub fn provider(&self) -> &str {
        &self.0.provider
    }

    /// Whether the configured snapshot's compiled code came from the cache.
    pub fn cached(&self) -> bool {
        self.0.cached
    }

    /// The certificates this configured plugin trusts, as it reported them
    /// (contract 0.3.0's `trust`; empty for older plugins and for providers
    /// that trust keys rather than certificates).
    pub fn trust(&self) -> &[TrustAnchor] {
        &self.0.trust
    }
}

/// One certificate a configured plugin trusts (contract 0.3.0's `trust-anchor`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrustAnchor {
    /// The certificate's subject, as the plugin names it.
    pub subject: String,
    /// `root` (a path ends here) or `intermediate`.
    pub role: String,
    /// Where it came from: `built-in` or `configured`.
    pub origin: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Whether a chain made today needs it (the newest intermediates and the
    /// roots above them), as opposed to one kept for historic `--at` checks.
    pub current: bool,
}

/// What the host lends one call besides the credential and the time.
#[derive(Clone, Default)]
pub struct HostInputs {
    /// The provider's key set, answered by `host-keys`.
    pub key_set: Option<Arc<str>>,
    /// Issuer certificates the host holds, answered by `issuers` (0.3.0).
    pub issuers: Option<Arc<dyn IssuerBodies>>,
}

/// Bodies the host already fetched from issuer URLs, by URL.
pub trait IssuerBodies: Send + Sync {
    /// The body held for `url`, if any.
    fn get(&self, url: &str) -> Option<Arc<[u8]>>;
}

/// What one call produced, and the issuer URLs the plugin asked for that the
/// host did not hold (for the host to fetch before trying again).
pub struct Verified {
    /// The identity, or why not.
    pub result: Result<Identity, CallError>,
    /// URLs passed to `issuers.fetched` that had no answer, at most
    /// [`contract::MAX_ISSUER_REQUESTS`].
    pub wanted_issuers: Vec<String>,
}

impl std::fmt::Debug for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured")
            .field("provider", &self.0.provider)
            .field("cached", &self.0.cached)
            .finish_non_exhaustive()
    }
}

/// The loaded plugins and the engine that runs them.
///
/// A reload ([`Sandbox::reload`]) makes a new `Sandbox` on the same engine,
/// cache, permits and epoch ticker; the old one stays valid for the calls
/// still running on it.
pub struct Sandbox {
    engine: Engine,
    plugins: BTreeMap<String, Arc<Plugin>>,
    limits: Limits,
    cache: Option<Arc<Cache>>,
    permits: Arc<tokio::sync::Semaphore>,
    _ticker: Arc<Ticker>,
}

impl Sandbox {
    /// The loaded plugins, by provider name.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.plugins.values().map(|p| p.info.clone()).collect()
    }

    /// What the host knows about the plugin serving `provider`, if one does.
    pub fn plugin(&self, provider: &str) -> Option<&PluginInfo> {
        self.plugins.get(provider).map(|p| &p.info)
    }

    /// Whether a plugin serves `provider`.
    pub fn has(&self, provider: &str) -> bool {
        self.plugins.contains_key(provider)
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Verifies `credential` with a configured plugin at time `now` (Unix
    /// seconds), in a fresh instance of its image; `key_set` is what the
    /// plugin's `host-keys` import answers (Google's keys for `gcp`). Blocks the
    /// thread for the plugin's run time.
    pub fn verify(
        &self,
        plugin: &Configured,
        credential: &str,
        key_set: Option<&str>,
        now: i64,
    ) -> Result<Identity, CallError> {
        let inputs = HostInputs {
            key_set: key_set.map(Arc::from),
            issuers: None,
        };
        self.verify_with(plugin, credential, &inputs, now).result
    }

    /// [`Sandbox::verify`] with everything the host lends the call, returning
    /// also the issuer URLs the plugin asked for that `inputs` did not hold.
    pub fn verify_with(&self, plugin: &Configured, credential: &str, inputs: &HostInputs, now: i64) -> Verified {
        let provider = plugin.provider();
        let mut wanted_issuers = Vec::new();
        let result = match &plugin.0.image {
            Image::Snapshot(pre) => {
                let mut store = self.new_store(inputs);
                let answer = self.guard(&mut store, provider, Instant::now(), |store| {
                    pre.verify(store, credential, now)
                });
                wanted_issuers = std::mem::take(&mut store.data_mut().wanted_issuers);
                answer
            }
            Image::PerCall { pre, config } => self.verify_v0_1(
                pre,
                provider,
                credential,
                &with_key_set(config, inputs.key_set.as_deref()),
                now,
            ),
        };
        Verified {
            result: result.and_then(identity),
            wanted_issuers,
        }
    }

    /// One call of a 0.1.0 plugin, which takes its configuration on every call.
    fn verify_v0_1(
        &self,
        pre: &since_v0_1_0::ProviderPre<CallState>,
        provider: &str,
        credential: &str,
        config: &str,
        now: i64,
    ) -> Result<PluginAnswer, CallError> {
        Ok(self
            .call(provider, &HostInputs::default(), |store| {
                pre.instantiate(&mut *store)?
                    .idgate_identity_verify_identity()
                    .call_verify(store, credential, config, now)
            })?
            .map(|id| (id.instance_id, id.attributes))
            .map_err(VerifyError::from))
    }

    /// Configures a fresh instance of `provider`'s plugin with `config` and
    /// verifies `credential` in that same instance: what every call cost before
    /// snapshots (and what a 0.1.0 plugin does anyway). For tests that try many
    /// configurations, and the benchmarks' comparison; serving uses
    /// [`Sandbox::configure`] and [`Sandbox::verify`].
    pub fn verify_configuring(
        &self,
        provider: &str,
        credential: &str,
        config: &str,
        key_set: Option<&str>,
        now: i64,
    ) -> Result<Identity, CallError> {
        let plugin = self
            .plugins
            .get(provider)
            .ok_or_else(|| CallError::NotLoaded(provider.to_string()))?;
        let inputs = HostInputs {
            key_set: key_set.map(Arc::from),
            issuers: None,
        };
        let result = match &plugin.linked {
            Linked::Configurable(pre) => self.call(provider, &inputs, |store| {
                pre.configure_and_verify(store, config, credential, now)
            })?,
            Linked::V0_1(pre) => {
                let config = match (key_set, serde_json::from_str::<serde_json::Value>(config)) {
                    (Some(_), Ok(value)) => with_key_set(&value, key_set),
                    _ => config.to_string(),
                };
                self.verify_v0_1(pre, provider, credential, &config, now)?
            }
        };
        identity(result)
    }

    /// [`Sandbox::verify`] with at most [`Limits::max_concurrent`] calls running
    /// at once: on this task's thread ([`Limits::inline_calls`]) or on a
    /// blocking thread.
    pub async fn verify_async(
        self: &Arc<Self>,
        plugin: &Configured,
        credential: String,
        key_set: Option<String>,
        now: i64,
    ) -> Result<Identity, CallError> {
        let inputs = HostInputs {
            key_set: key_set.map(Arc::from),
            issuers: None,
        };
        self.verify_async_with(plugin, credential, inputs, now).await.result
    }

    /// [`Sandbox::verify_with`] under the same permits as [`Sandbox::verify_async`].
    pub async fn verify_async_with(
        self: &Arc<Self>,
        plugin: &Configured,
        credential: String,
        inputs: HostInputs,
        now: i64,
    ) -> Verified {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        if self.limits.inline_calls {
            return self.verify_with(plugin, &credential, &inputs, now);
        }
        let this = self.clone();
        let configured = plugin.clone();
        tokio::task::spawn_blocking(move || this.verify_with(&configured, &credential, &inputs, now))
            .await
            .unwrap_or_else(|e| Verified {
                result: Err(CallError::Fault {
                    provider: plugin.provider().to_string(),
                    message: format!("verification task failed: {e}"),
                    kind: FaultKind::Trap,
                }),
                wanted_issuers: Vec::new(),
            })
    }
}

/// A plugin's answer as the host's result: an identity needs an instance ID.
/// What a plugin's `verify` answered: the instance ID and attributes, or its refusal.
type PluginAnswer = Result<(String, Vec<(String, String)>), VerifyError>;

fn identity(result: PluginAnswer) -> Result<Identity, CallError> {
    match result {
        Ok((instance_id, _)) if instance_id.is_empty() => Err(CallError::Rejected(VerifyError::Malformed(
            "the credential carries no instance ID".into(),
        ))),
        Ok((instance_id, attributes)) => Ok(Identity {
            instance_id,
            attributes,
        }),
        Err(e) => Err(CallError::Rejected(e)),
    }
}

/// A 0.1.0 plugin's configuration for one call: the block, with the host's key
/// set (if any) as its `jwks` member, as 0.1.0 hosts sent it.
fn with_key_set(config: &serde_json::Value, key_set: Option<&str>) -> String {
    let Some(keys) = key_set.and_then(|k| serde_json::from_str::<serde_json::Value>(k).ok()) else {
        return config.to_string();
    };
    let mut config = config.clone();
    if let Some(map) = config.as_object_mut() {
        map.insert("jwks".into(), keys);
    }
    config.to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_0_1_0_plugin_gets_the_host_key_set_as_jwks_in_its_configuration() {
        let config: serde_json::Value =
            serde_json::from_str(&with_key_set(&json!({"audience": "a"}), Some(r#"{"keys": []}"#))).unwrap();
        assert_eq!(config, json!({"audience": "a", "jwks": {"keys": []}}));
        // No key set (or an unreadable one): the configuration as it is.
        assert_eq!(with_key_set(&json!({"audience": "a"}), None), r#"{"audience":"a"}"#);
        assert_eq!(with_key_set(&json!({}), Some("not json")), "{}");
    }
}
