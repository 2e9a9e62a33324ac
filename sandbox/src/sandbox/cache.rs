//! Reading plugins and the compiled-plugin cache: every byte the sandbox
//! compiles or deserializes was read from a descriptor [`file_trust`] checked,
//! never from a path opened again later.
//!
//! Entries are named `<sha256 of the .wasm>-<engine hash>.cwasm` and
//! `<sha256>-configured-<sha256 of the configuration>-<engine hash>.cwasm`, so
//! a changed file, configuration or engine means a new entry, never a stale
//! one. They are read and written through the cache directory's descriptor,
//! opened once when the sandbox is created: re-pointing a link on the cache's
//! path afterwards changes nothing. An entry that fails the trust check is never
//! deserialized (it is native code) but recompiled and replaced.

use std::ffi::{OsStr, OsString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context;
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::file_trust::{self, Links, TrustedDir};

/// The compiled-plugin cache directory, opened and checked.
pub(super) struct Cache {
    dir: TrustedDir,
    engine_hash: u64,
}

impl Cache {
    /// Opens (creating it `0700` if missing) the cache directory at `path` for
    /// components compiled by `engine`.
    pub fn open(path: &Path, engine: &Engine) -> anyhow::Result<Cache> {
        Ok(Cache {
            dir: file_trust::open_private_dir(path, "compiled-plugin cache directory")?,
            engine_hash: engine_hash(engine),
        })
    }

    /// The entry of the component compiled from the `.wasm` with this digest.
    pub fn component_entry(&self, sha256: &str) -> String {
        format!("{sha256}-{:016x}.cwasm", self.engine_hash)
    }

    /// The entry of that plugin's snapshot configured with the configuration
    /// whose SHA-256 (hex) is `config_sha256`.
    pub fn configured_entry(&self, sha256: &str, config_sha256: &str) -> String {
        format!(
            "{sha256}-configured-{}-{:016x}.cwasm",
            &config_sha256[..32],
            self.engine_hash
        )
    }

    /// The cached component `name`, if there is a trusted, usable one.
    pub fn load(&self, engine: &Engine, name: &str) -> Option<Component> {
        let shown = self.dir.path().join(name);
        let bytes = match self
            .dir
            .read(OsStr::new(name), "compiled-plugin cache entry", Links::Refuse)
        {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "ignoring untrusted compiled-plugin cache entry; recompiling");
                return None;
            }
        };
        // SAFETY: deserializing runs the entry's native code. It is trusted because
        // only idgate's user (or root) can have written it: these bytes were read
        // from the descriptor whose file, and every directory above it, passed the
        // ownership and mode check. Its name binds it to the source's content hash
        // (and configuration) and the engine's compatibility hash; wasmtime checks
        // the header and version before use.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(file = %shown.display(), error = %e, "ignoring unusable compiled-plugin cache entry");
                None
            }
        }
    }

    /// Writes `component` as entry `name` (private, atomic; a failure is logged,
    /// the component is still used).
    pub fn store(&self, component: &Component, name: &str) {
        if let Err(e) = component
            .serialize()
            .map_err(anyhow::Error::from)
            .and_then(|s| self.dir.write_private(name, &s))
        {
            tracing::warn!(file = %self.dir.path().join(name).display(), error = %format!("{e:#}"), "could not write compiled-plugin cache entry");
        }
    }
}

/// The engine's compatibility hash: compiled code is only reused by an engine
/// that would have produced it.
fn engine_hash(engine: &Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// The plugin directory, opened and checked; its `.wasm` files are read by
/// descriptor.
pub(super) struct PluginDir {
    dir: TrustedDir,
}

impl PluginDir {
    /// Opens `path` as the plugin directory.
    pub fn open(path: &Path) -> anyhow::Result<PluginDir> {
        Ok(PluginDir {
            dir: file_trust::open_dir(path, "plugin directory")?,
        })
    }

    /// The `*.wasm` names in the directory, sorted.
    pub fn wasm_names(&self) -> anyhow::Result<Vec<OsString>> {
        let mut names: Vec<OsString> = self
            .dir
            .names()?
            .into_iter()
            .filter(|n| Path::new(n).extension().is_some_and(|x| x == "wasm"))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The path `name` is shown as, and its bytes, read from the checked
    /// descriptor (following only links root or idgate's user owns).
    pub fn read(&self, name: &OsStr) -> anyhow::Result<(PathBuf, Vec<u8>)> {
        let path = self.dir.path().join(name);
        let bytes = self
            .dir
            .read(name, "plugin", Links::FollowTrusted)?
            .with_context(|| format!("plugin {} disappeared while loading", path.display()))?;
        Ok((path, bytes))
    }
}
