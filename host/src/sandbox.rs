//! All wasmtime set-up: loading provider plugins and running them contained.
//!
//! Invariants:
//! - A plugin's only import that does anything is `crypto` (and `wasi:random`,
//!   which std needs to seed hash maps). Every other import — filesystem,
//!   environment, stdio, clocks, sockets — is linked as a trap, so a plugin cannot
//!   reach the machine or learn the time except through `verify`'s arguments.
//! - Every call runs in a fresh `Store` and instance: nothing from one request
//!   reaches the next, and a trapped instance is never reused.
//! - Every call has a memory cap and a CPU deadline (epoch interruption); a trap,
//!   a deadline or a memory failure is an error for that call only.
//! - Components are compiled once and cached on disk, keyed by the content hash
//!   of the `.wasm` and the engine's compatibility hash.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use idgate_plugin_kit::{Crypto, Identity, VerifyError};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use crate::crypto::NativeCrypto;
use crate::file_trust;
use crate::pins::PluginPins;

mod bindings {
    wasmtime::component::bindgen!({ world: "provider", path: "../wit/0.1.0" });
}

use bindings::idgate::identity::{crypto as wit_crypto, types as wit_types};
use bindings::{Provider, ProviderPre};

/// Contract versions this host can load.
pub const SUPPORTED_CONTRACTS: &[&str] = &["0.1.0"];

/// How often the epoch ticker advances; the CPU deadline is counted in ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-call resource limits.
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            deadline: Duration::from_millis(500),
            max_concurrent: std::thread::available_parallelism().map_or(2, |n| n.get()),
            pooling: false,
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

struct Plugin {
    info: PluginInfo,
    pre: ProviderPre<CallState>,
}

/// The loaded plugins and the engine that runs them.
pub struct Sandbox {
    engine: Engine,
    plugins: BTreeMap<String, Plugin>,
    limits: Limits,
    permits: Arc<tokio::sync::Semaphore>,
    _ticker: Ticker,
}

/// Per-call state: the crypto the plugin borrows and the limiter.
struct CallState {
    limiter: MemoryLimiter,
}

impl wit_types::Host for CallState {}

impl wit_crypto::Host for CallState {
    fn verify_signature(
        &mut self,
        algorithm: wit_crypto::SignatureAlgorithm,
        spki_der: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, String> {
        use idgate_plugin_kit::SignatureAlgorithm as A;
        use wit_crypto::SignatureAlgorithm as W;
        let algorithm = match algorithm {
            W::RsaPkcs1Sha256 => A::RsaPkcs1Sha256,
            W::RsaPkcs1Sha384 => A::RsaPkcs1Sha384,
            W::RsaPkcs1Sha512 => A::RsaPkcs1Sha512,
            W::RsaPkcs1Sha1 => A::RsaPkcs1Sha1,
            W::Rsa1024Pkcs1Sha256 => A::Rsa1024Pkcs1Sha256,
            W::DsaSha1 => A::DsaSha1,
            W::EcdsaP256Sha256 => A::EcdsaP256Sha256,
            W::EcdsaP384Sha384 => A::EcdsaP384Sha384,
        };
        NativeCrypto.verify_signature(algorithm, &spki_der, &message, &signature)
    }

    fn digest(&mut self, algorithm: wit_crypto::DigestAlgorithm, data: Vec<u8>) -> Vec<u8> {
        use idgate_plugin_kit::DigestAlgorithm as A;
        use wit_crypto::DigestAlgorithm as W;
        let algorithm = match algorithm {
            W::Sha1 => A::Sha1,
            W::Sha256 => A::Sha256,
            W::Sha384 => A::Sha384,
            W::Sha512 => A::Sha512,
        };
        NativeCrypto.digest(algorithm, &data)
    }
}

/// Caps linear memory and remembers whether the cap was hit, so the host can say
/// "memory" rather than a bare trap.
struct MemoryLimiter {
    max_bytes: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            wasmtime::bail!("memory limit of {} MiB exceeded", self.max_bytes >> 20);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("idgate-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch ticker thread");
        Ticker { stop }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Sandbox {
    /// Loads every `*.wasm` in `dir` without digest pins (see [`Sandbox::load_pinned`]).
    pub fn load(dir: &Path, cache_dir: Option<&Path>, limits: Limits) -> anyhow::Result<Sandbox> {
        Self::load_pinned(dir, cache_dir, limits, &PluginPins::default())
    }

    /// Loads every `*.wasm` in `dir`. With `cache_dir`, compiled artifacts are
    /// reused across restarts. Fails, naming the file, if any plugin cannot be
    /// loaded, speaks an unsupported contract, or duplicates a provider; if a
    /// directory or file is not trusted ([`file_trust`]); and, with any pin
    /// configured, if a plugin's SHA-256 is not the one pinned for its provider.
    pub fn load_pinned(
        dir: &Path,
        cache_dir: Option<&Path>,
        limits: Limits,
        pins: &PluginPins,
    ) -> anyhow::Result<Sandbox> {
        file_trust::check_dir(dir, "plugin directory")?;
        let engine = new_engine(&limits)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading plugin directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
            .collect();
        files.sort();
        if let Some(cache) = cache_dir {
            file_trust::create_private_dir(cache)?;
            file_trust::check_dir(cache, "compiled-plugin cache directory")?;
        }
        let mut sandbox = Sandbox {
            plugins: BTreeMap::new(),
            limits,
            permits: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            _ticker: Ticker::start(engine.clone()),
            engine,
        };
        for path in files {
            let plugin = sandbox
                .load_one(&path, cache_dir, pins)
                .with_context(|| format!("loading plugin {}", path.display()))?;
            if let Some(other) = sandbox.plugins.get(&plugin.info.provider) {
                bail!(
                    "plugins {} and {} both serve provider {:?}",
                    other.info.path.display(),
                    path.display(),
                    plugin.info.provider
                );
            }
            sandbox.plugins.insert(plugin.info.provider.clone(), plugin);
        }
        Ok(sandbox)
    }

    fn load_one(&self, path: &Path, cache_dir: Option<&Path>, pins: &PluginPins) -> anyhow::Result<Plugin> {
        file_trust::check_file(path, "plugin")?;
        let bytes = std::fs::read(path)?;
        let sha256 = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        pins.check_file(path, &sha256)?;
        let (component, cached) = self.compile_cached(&bytes, &sha256, cache_dir)?;

        let mut linker: Linker<CallState> = Linker::new(&self.engine);
        Provider::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)?;
        link_random(&mut linker, &component, &self.engine)?;
        linker.define_unknown_imports_as_traps(&component)?;
        let pre = ProviderPre::new(linker.instantiate_pre(&component)?)?;

        let mut plugin = Plugin {
            info: PluginInfo {
                provider: String::new(),
                contract: String::new(),
                sha256,
                path: path.to_path_buf(),
                cached,
            },
            pre,
        };
        let info = self
            .call(&plugin, "(loading)", |store, p| {
                p.idgate_identity_verify_identity().call_info(store)
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if !SUPPORTED_CONTRACTS.contains(&info.contract.as_str()) {
            bail!(
                "contract {} is not supported (this host speaks {SUPPORTED_CONTRACTS:?})",
                info.contract
            );
        }
        if info.name.is_empty()
            || !info
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!(
                "provider name {:?} must be lower-case letters, digits and '-'",
                info.name
            );
        }
        pins.check_provider(path, &info.name, &plugin.info.sha256)?;
        plugin.info.provider = info.name;
        plugin.info.contract = info.contract;
        Ok(plugin)
    }

    fn compile_cached(
        &self,
        bytes: &[u8],
        sha256: &str,
        cache_dir: Option<&Path>,
    ) -> anyhow::Result<(Component, bool)> {
        let Some(cache_dir) = cache_dir else {
            return Ok((Component::new(&self.engine, bytes)?, false));
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let file = cache_dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()));
        if file.is_file() {
            match file_trust::check_file(&file, "compiled-plugin cache entry") {
                // SAFETY: deserializing runs the entry's native code. It is trusted
                // because only idgate's user (or root) can have written it: the
                // file and every directory above it passed the ownership and mode
                // check just now. Its name binds it to the source's content hash
                // and the engine's compatibility hash; wasmtime checks the header
                // and version before use.
                Ok(()) => match unsafe { Component::deserialize_file(&self.engine, &file) } {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "ignoring unusable compiled-plugin cache entry")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "ignoring untrusted compiled-plugin cache entry; recompiling")
                }
            }
        }
        let component = Component::new(&self.engine, bytes)?;
        if let Err(e) = component
            .serialize()
            .map_err(anyhow::Error::from)
            .and_then(|s| file_trust::write_private(&file, &s))
        {
            tracing::warn!(file = %file.display(), error = %format!("{e:#}"), "could not write compiled-plugin cache entry");
        }
        Ok((component, false))
    }

    /// The loaded plugins, by provider name.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.plugins.values().map(|p| p.info.clone()).collect()
    }

    /// Whether a plugin serves `provider`.
    pub fn has(&self, provider: &str) -> bool {
        self.plugins.contains_key(provider)
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Verifies `credential` with `provider`'s plugin at time `now` (Unix seconds),
    /// in a fresh instance. Blocks the thread for the plugin's run time.
    pub fn verify(&self, provider: &str, credential: &str, config: &str, now: i64) -> Result<Identity, CallError> {
        let plugin = self
            .plugins
            .get(provider)
            .ok_or_else(|| CallError::NotLoaded(provider.to_string()))?;
        let result = self.call(plugin, provider, |store, p| {
            p.idgate_identity_verify_identity()
                .call_verify(store, credential, config, now)
        })?;
        match result {
            Ok(id) if id.instance_id.is_empty() => Err(CallError::Rejected(VerifyError::Malformed(
                "the credential carries no instance ID".into(),
            ))),
            Ok(id) => Ok(Identity {
                instance_id: id.instance_id,
                attributes: id.attributes,
            }),
            Err(e) => Err(CallError::Rejected(from_wit_error(e))),
        }
    }

    /// [`Sandbox::verify`] on a blocking thread, with at most
    /// [`Limits::max_concurrent`] calls running at once.
    pub async fn verify_async(
        self: &Arc<Self>,
        provider: &str,
        credential: String,
        config: String,
        now: i64,
    ) -> Result<Identity, CallError> {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let this = self.clone();
        let name = provider.to_string();
        tokio::task::spawn_blocking(move || this.verify(&name, &credential, &config, now))
            .await
            .unwrap_or_else(|e| {
                Err(CallError::Fault {
                    provider: provider.to_string(),
                    message: format!("verification task failed: {e}"),
                    kind: FaultKind::Trap,
                })
            })
    }

    /// Runs `f` against a fresh instance of `plugin` under the limits.
    fn call<R>(
        &self,
        plugin: &Plugin,
        provider: &str,
        f: impl FnOnce(&mut Store<CallState>, &Provider) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let mut store = Store::new(
            &self.engine,
            CallState {
                limiter: MemoryLimiter {
                    max_bytes: self.limits.memory_bytes,
                    hit: false,
                },
            },
        );
        store.limiter(|s| &mut s.limiter);
        let ticks = self.limits.deadline.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let started = Instant::now();
        let outcome = plugin
            .pre
            .instantiate(&mut store)
            .and_then(|instance| f(&mut store, &instance));
        outcome.map_err(|e| {
            let kind = if store.data().limiter.hit {
                FaultKind::Memory
            } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                FaultKind::Deadline
            } else {
                FaultKind::Trap
            };
            let message = match kind {
                FaultKind::Deadline => format!(
                    "exceeded its CPU deadline of {} ms (stopped after {} ms)",
                    self.limits.deadline.as_millis(),
                    started.elapsed().as_millis()
                ),
                FaultKind::Memory => format!("exceeded its memory limit of {} MiB", self.limits.memory_bytes >> 20),
                FaultKind::Trap => format!("trapped: {}", root_cause(&e)),
            };
            CallError::Fault {
                provider: provider.to_string(),
                message,
                kind,
            }
        })
    }
}

/// The wasmtime configuration every plugin runs under.
fn new_engine(limits: &Limits) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // A plugin's stack is bounded too: deep recursion traps instead of growing.
    config.max_wasm_stack(1 << 20);
    if limits.pooling {
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        // Slots for every call that can run at once, with room for synchronous
        // callers beyond the async permits; a call finding no slot faults.
        let slots = (limits.max_concurrent.max(1) * 4 + 16) as u32;
        pool.total_component_instances(slots);
        pool.total_core_instances(slots * 2);
        pool.total_memories(slots * 2);
        pool.total_tables(slots * 2);
        pool.max_memory_size(limits.memory_bytes);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    Ok(Engine::new(&config)?)
}

/// Links `wasi:random` under whatever version the component imports: Rust's std
/// seeds its hash maps from it. Everything else WASI stays a trap.
fn link_random(linker: &mut Linker<CallState>, component: &Component, engine: &Engine) -> anyhow::Result<()> {
    const MAX_RANDOM: u64 = 1 << 16;
    let names: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    for name in names {
        let mut inst = linker.instance(&name)?;
        if name.starts_with("wasi:random/insecure-seed@") {
            inst.func_wrap("insecure-seed", |_, ()| Ok(((random_u64(), random_u64()),)))?;
        } else if name.starts_with("wasi:random/random@") || name.starts_with("wasi:random/insecure@") {
            let (bytes_fn, u64_fn) = if name.starts_with("wasi:random/random@") {
                ("get-random-bytes", "get-random-u64")
            } else {
                ("get-insecure-random-bytes", "get-insecure-random-u64")
            };
            inst.func_wrap(bytes_fn, |_, (len,): (u64,)| {
                if len > MAX_RANDOM {
                    wasmtime::bail!("plugin asked for {len} random bytes (limit {MAX_RANDOM})");
                }
                let mut buf = vec![0u8; len as usize];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
                    .map_err(|_| wasmtime::format_err!("system random failed"))?;
                Ok((buf,))
            })?;
            inst.func_wrap(u64_fn, |_, ()| Ok((random_u64(),)))?;
        }
    }
    Ok(())
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SystemRandom only fails if the OS has no entropy source at all.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

fn from_wit_error(e: wit_types::VerifyError) -> VerifyError {
    use wit_types::VerifyError as W;
    match e {
        W::Malformed(s) => VerifyError::Malformed(s),
        W::BadSignature(s) => VerifyError::BadSignature(s),
        W::UntrustedSigner(s) => VerifyError::UntrustedSigner(s),
        W::Expired(s) => VerifyError::Expired(s),
        W::Refused(s) => VerifyError::Refused(s),
        W::BadConfig(s) => VerifyError::BadConfig(s),
    }
}

/// The innermost cause, which names the trap ("unreachable", "unknown import").
fn root_cause(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
