//! The settings one process runs with, once flags, environment and the config
//! file are resolved (the command line does that), and what follows from them:
//! pool sizes, plugin pins, the loaded sandbox. Below `cli`, so `serve` can take
//! them without reaching up into the command line.

use std::path::{Path, PathBuf};

use crate::config::FileConfig;
use crate::db::{DatabaseKind, PoolSettings};
use crate::pins::PluginPins;
use crate::sandbox::Sandbox;

/// Settings resolved from flags, environment and the config file, in that order.
pub struct Settings {
    /// The config file's contents.
    pub file: FileConfig,
    /// Plugin directory.
    pub plugins: PathBuf,
    /// Compiled-plugin cache directory.
    pub cache_dir: CacheDir,
    /// Database URL, if any.
    pub database_url: Option<String>,
    /// Read-only database URL for resolutions, if any.
    pub database_read_url: Option<String>,
    /// Which kind of database `database_url` is.
    pub database_kind: DatabaseKind,
}

/// Where compiled plugins are cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheDir {
    /// `--cache-dir` / `cache_dir`: must be trusted, or idgate does not start.
    Configured(PathBuf),
    /// The default under the home directory: used if it is (or can be made)
    /// trusted, else plugins are compiled in memory, with a warning.
    Default(PathBuf),
    /// No usable home directory and nothing configured: compile in memory.
    None,
}

impl Settings {
    /// The cache directory to load plugins with, if any (see [`CacheDir`]).
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match &self.cache_dir {
            CacheDir::Configured(dir) => Some(dir.clone()),
            CacheDir::Default(dir) => match crate::file_trust::open_private_dir(dir, "compiled-plugin cache directory")
            {
                Ok(_) => Some(dir.clone()),
                Err(e) => {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        "the default compiled-plugin cache is not usable: compiling plugins in memory at every start \
                         (set --cache-dir to a directory only idgate's user can write)"
                    );
                    None
                }
            },
            CacheDir::None => {
                tracing::warn!(
                    "no usable home directory for the compiled-plugin cache: compiling plugins in memory at every start \
                     (set --cache-dir to a directory only idgate's user can write)"
                );
                None
            }
        }
    }

    /// The database pool settings from `[limits]`.
    pub fn pool_settings(&self) -> PoolSettings {
        let limits = self.file.host.limits;
        let d = PoolSettings::default();
        PoolSettings {
            max_connections: limits.db_max_connections.unwrap_or(d.max_connections),
            acquire_timeout: limits
                .db_acquire_timeout_ms
                .map_or(d.acquire_timeout, std::time::Duration::from_millis),
            // Only `serve` keeps its pool warm; one-shot commands open what they use.
            keep_warm: false,
            kind: self.database_kind,
        }
    }

    /// The `[tls]` certificate chain and key files, when TLS is configured;
    /// one without the other is an error.
    pub fn tls_files(&self) -> anyhow::Result<Option<(&Path, &Path)>> {
        let tls = &self.file.host.tls;
        match (tls.cert_file.as_deref(), tls.key_file.as_deref()) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!("[tls] cert_file is set without key_file (--tls-key-file)"),
            (None, Some(_)) => anyhow::bail!("[tls] key_file is set without cert_file (--tls-cert-file)"),
        }
    }

    /// The configured `[plugin_sha256]` pins, validated.
    pub fn pins(&self) -> anyhow::Result<PluginPins> {
        PluginPins::new(&self.file.host.plugin_sha256)
    }

    /// Loads the plugins under the configured limits, enforcing the pins; without
    /// pins, warns naming every plugin loaded unpinned ([`warn_unpinned`]).
    pub fn sandbox(&self) -> anyhow::Result<Sandbox> {
        let pins = self.pins()?;
        let sandbox = Sandbox::load_pinned(
            &self.plugins,
            self.cache_dir().as_deref(),
            self.file.host.sandbox.limits(),
            &pins,
        )?;
        warn_unpinned(&pins, &sandbox);
        Ok(sandbox)
    }
}

/// Without pins, warns naming every plugin loaded unpinned.
pub fn warn_unpinned(pins: &PluginPins, sandbox: &Sandbox) {
    if pins.is_empty() && !sandbox.plugins().is_empty() {
        let unpinned: Vec<String> = sandbox
            .plugins()
            .iter()
            .map(|p| format!("{} ({})", p.provider, p.path.display()))
            .collect();
        tracing::warn!(
            unpinned = %unpinned.join(", "),
            "no [plugin_sha256] pins are configured: any .wasm in the plugin directory is trusted; \
             pin the digests `idgate plugins` prints"
        );
    }
}
