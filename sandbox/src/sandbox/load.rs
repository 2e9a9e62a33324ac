//! Loading plugins: the plugin directory read by descriptor, each `.wasm`
//! hashed, pinned, compiled (or taken from the compiled cache) and linked for
//! the contract it exports; and reloading, which builds a new plugin set on
//! the same engine, reusing every plugin whose bytes did not change.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};

use super::cache::{Cache, PluginDir};
use super::contract::{self, since_v0_1_0, SUPPORTED_CONTRACTS};
use super::engine::{link_random, new_engine};
use super::limits::{CallState, Ticker};
use super::versions::Configurable;
use super::{hex, HostInputs, Limits, Linked, Plugin, PluginInfo, Sandbox};
use crate::pins::PluginPins;

impl Sandbox {
    /// Loads every `*.wasm` in `dir` without digest pins (see [`Sandbox::load_pinned`]).
    pub fn load(dir: &Path, cache_dir: Option<&Path>, limits: Limits) -> anyhow::Result<Sandbox> {
        Self::load_pinned(dir, cache_dir, limits, &PluginPins::default())
    }

    /// Loads every `*.wasm` in `dir`. With `cache_dir`, compiled artifacts are
    /// reused across restarts. Fails, naming the file, if any plugin cannot be
    /// loaded, speaks an unsupported contract, or duplicates a provider; if a
    /// directory or file is not trusted ([`crate::file_trust`]); and, with any pin
    /// configured, if a plugin's SHA-256 is not the one pinned for its provider.
    /// Plugins are configured afterwards, with [`Sandbox::configure`].
    pub fn load_pinned(
        dir: &Path,
        cache_dir: Option<&Path>,
        limits: Limits,
        pins: &PluginPins,
    ) -> anyhow::Result<Sandbox> {
        let engine = new_engine(&limits)?;
        let cache = cache_dir.map(|c| Cache::open(c, &engine)).transpose()?;
        let empty = Sandbox {
            plugins: BTreeMap::new(),
            limits,
            cache: cache.map(Arc::new),
            permits: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            _ticker: Arc::new(Ticker::start(engine.clone())),
            engine,
        };
        empty.reload(dir, pins)
    }

    /// The plugins in `dir` now, as a new sandbox on this one's engine, compiled
    /// cache and call permits (so the concurrency bound spans both while calls
    /// on this one finish). Every file is read, hashed and pinned again; a
    /// plugin whose bytes this sandbox already holds is reused without
    /// compiling or calling it, new and changed ones are compiled (from the
    /// cache when it holds them) and linked. `self` is left as it was, whatever
    /// the outcome: the errors are [`Sandbox::load_pinned`]'s.
    pub fn reload(&self, dir: &Path, pins: &PluginPins) -> anyhow::Result<Sandbox> {
        let plugin_dir = PluginDir::open(dir)?;
        let names = plugin_dir.wasm_names()?;
        let mut next = Sandbox {
            plugins: BTreeMap::new(),
            limits: self.limits,
            cache: self.cache.clone(),
            permits: self.permits.clone(),
            _ticker: self._ticker.clone(),
            engine: self.engine.clone(),
        };
        for name in names {
            let shown = dir.join(&name);
            let plugin = plugin_dir
                .read(&name)
                .and_then(|(path, bytes)| next.load_or_reuse(self, &path, bytes, pins))
                .with_context(|| format!("loading plugin {}", shown.display()))?;
            if let Some(other) = next.plugins.get(&plugin.info.provider) {
                bail!(
                    "plugins {} and {} both serve provider {:?}",
                    other.info.path.display(),
                    shown.display(),
                    plugin.info.provider
                );
            }
            next.plugins.insert(plugin.info.provider.clone(), Arc::new(plugin));
        }
        Ok(next)
    }

    /// The plugin in `bytes` (read from `path`): `previous`'s, if it holds
    /// the same bytes and they still pass the pins, else loaded now.
    fn load_or_reuse(
        &self,
        previous: &Sandbox,
        path: &Path,
        bytes: Vec<u8>,
        pins: &PluginPins,
    ) -> anyhow::Result<Plugin> {
        let sha256 = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        let Some(same) = previous.plugins.values().find(|p| p.info.sha256 == sha256) else {
            return self.load_one(path, bytes, pins);
        };
        pins.check_file(path, &sha256)?;
        pins.check_provider(path, &same.info.provider, &sha256)?;
        Ok(Plugin {
            info: PluginInfo {
                path: path.to_path_buf(),
                ..same.info.clone()
            },
            wasm: same.wasm.clone(),
            linked: same.linked.clone(),
        })
    }

    /// Loads one plugin from `bytes`, read from the checked descriptor of `path`.
    fn load_one(&self, path: &Path, bytes: Vec<u8>, pins: &PluginPins) -> anyhow::Result<Plugin> {
        let sha256 = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        pins.check_file(path, &sha256)?;
        let (component, cached) = self.compile_cached(&bytes, &sha256)?;
        // The contract is recognised by the exports: try the newest first.
        let pre = self.instance_pre(&component)?;
        let (linked, info, expected) = if let Some(configurable) = Configurable::link(&pre) {
            let info = self
                .call("(loading)", &HostInputs::default(), |store| configurable.info(store))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let expected = configurable.contract();
            (Linked::Configurable(configurable), info, expected)
        } else {
            let pre = since_v0_1_0::ProviderPre::new(pre).map_err(|e| {
                anyhow::anyhow!(
                    "the component does not export a supported contract (this host speaks {SUPPORTED_CONTRACTS:?}): {e}"
                )
            })?;
            let info = self
                .call("(loading)", &HostInputs::default(), |store| {
                    pre.instantiate(&mut *store)?
                        .idgate_identity_verify_identity()
                        .call_info(store)
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            (Linked::V0_1(pre), (info.name, info.contract), "0.1.0")
        };
        let (name, contract) = info;
        pins.check_provider(path, &name, &sha256)?;
        if contract != expected {
            bail!("the plugin says it speaks contract {contract}, but it exports contract {expected}");
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("provider name {name:?} must be lower-case letters, digits and '-'");
        }
        Ok(Plugin {
            info: PluginInfo {
                provider: name,
                contract,
                sha256,
                path: path.to_path_buf(),
                cached,
            },
            wasm: bytes.into(),
            linked,
        })
    }

    /// Links `component` with exactly the imports it declares: the contract's
    /// host functions (both versions are offered; a component only picks up
    /// those it imports), `wasi:random`, and a trap for every other import.
    ///
    /// Why an `InstancePre`: import resolution and type checks happen here,
    /// once; each call's instantiation only walks the already-resolved list.
    /// Why traps only for what the component imports: the stubs cost nothing
    /// per call beyond that list, and a component importing only `crypto` and
    /// `wasi:random` gets no stubs at all.
    pub(super) fn instance_pre(&self, component: &Component) -> anyhow::Result<InstancePre<CallState>> {
        let mut linker: Linker<CallState> = Linker::new(&self.engine);
        since_v0_1_0::Provider::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)?;
        contract::since_v0_2_0::Provider::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)?;
        contract::since_v0_3_0::Provider::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)?;
        link_random(&mut linker, component, &self.engine)?;
        linker.define_unknown_imports_as_traps(component)?;
        Ok(linker.instantiate_pre(component)?)
    }

    /// The component compiled from `bytes` (whose SHA-256 is `sha256`): from the
    /// cache when it holds a trusted entry, else compiled now and cached.
    pub(super) fn compile_cached(&self, bytes: &[u8], sha256: &str) -> anyhow::Result<(Component, bool)> {
        let Some(cache) = &self.cache else {
            return Ok((Component::new(&self.engine, bytes)?, false));
        };
        let entry = cache.component_entry(sha256);
        if let Some(component) = cache.load(&self.engine, &entry) {
            return Ok((component, true));
        }
        let component = Component::new(&self.engine, bytes)?;
        cache.store(&component, &entry);
        Ok((component, false))
    }
}
