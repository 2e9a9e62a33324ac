//! Reload without restart (SIGHUP): the configuration file and the plugin
//! directory are read again, trust checks and pins run again, new or changed
//! plugins compile, configure and snapshot on a blocking thread, and only when
//! all of it succeeded does the new provider set replace the old one, in one
//! swap ([`crate::providers::Providers`]); the TLS certificate, when `serve`
//! terminates TLS, is read again and swapped with it. A reload that fails
//! anywhere changes nothing: it is logged with its reason, counted in
//! `/metrics` and shown by `/readyz` until a reload succeeds.
//!
//! Kept across reloads: the listener and its connections, the database
//! pools, the engine (and so the compiled cache and the call permits), every
//! plugin whose bytes did not change, every mount whose plugin and block did
//! not change, and the key caches of mounts whose key source did not change.
//! Settings only a restart applies (listen address, database, limits, sandbox
//! limits, cache directory, log format, turning TLS on or off) are left as
//! they were, with a warning naming them.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::api::AppState;
use crate::authenticate::Changes;
use crate::settings::Settings;
use crate::tls::Certificates;

/// Reads the settings again, as the command line first resolved them.
pub type ReadSettings = Box<dyn Fn() -> anyhow::Result<Settings> + Send + Sync>;

/// What a reload needs beside the served state.
pub struct Reloader {
    read: ReadSettings,
    /// The settings only a restart applies, as the server started with them.
    fixed: Vec<(&'static str, String)>,
    /// The served certificate, when `serve` terminates TLS.
    tls: Option<Arc<Certificates>>,
}

/// What one successful reload did.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// Mounts configured anew, kept and removed.
    pub changes: Changes,
    /// Whether the TLS certificate was read again.
    pub tls: bool,
    /// Changed settings a restart would apply; left as they were.
    pub need_restart: Vec<&'static str>,
}

impl Reloader {
    /// A reloader for a server started with `started`; `read` resolves the
    /// settings again (flags and environment as at start, the file as it is now).
    pub fn new(read: ReadSettings, started: &Settings, tls: Option<Arc<Certificates>>) -> Reloader {
        Reloader {
            read,
            fixed: fixed_settings(started),
            tls,
        }
    }

    /// Reloads `state`'s provider set (and the TLS certificate); on failure
    /// nothing changes and the failure is recorded. Logged either way.
    pub async fn reload(&self, state: &AppState) -> anyhow::Result<Reloaded> {
        let started = Instant::now();
        let outcome = self.try_reload(state).await;
        let took_ms = started.elapsed().as_millis() as u64;
        match &outcome {
            Ok(done) => {
                state.metrics.reload(true);
                tracing::info!(
                    took_ms,
                    configured = ?done.changes.configured,
                    kept = ?done.changes.kept,
                    removed = ?done.changes.removed,
                    tls = done.tls,
                    "reloaded: the new provider set is serving"
                );
                if !done.need_restart.is_empty() {
                    tracing::warn!(
                        settings = ?done.need_restart,
                        "these settings changed but only a restart applies them; still running with the old values"
                    );
                }
            }
            Err(e) => {
                let reason = format!("{e:#}");
                state.metrics.reload(false);
                state.providers.failed(reason.clone(), crate::clock::unix_now());
                tracing::error!(took_ms, %reason, "reload failed: nothing changed, still serving the previous provider set");
            }
        }
        outcome
    }

    async fn try_reload(&self, state: &AppState) -> anyhow::Result<Reloaded> {
        let settings = (self.read)().context("reading the configuration")?;
        let need_restart: Vec<&'static str> = fixed_settings(&settings)
            .into_iter()
            .zip(&self.fixed)
            .filter(|(now, then)| now != *then)
            .map(|(now, _)| now.0)
            .collect();
        let certificate = match (&self.tls, settings.tls_files()?) {
            (Some(_), Some((cert, key))) => Some(Certificates::prepare(cert, key)?),
            _ => None,
        };
        let current = state.providers.current();
        // Compiling and configuring are CPU-bound and can take seconds: never
        // on an async worker that serves requests.
        let (next, changes) = tokio::task::spawn_blocking(move || {
            let pins = settings.pins()?;
            let sandbox = current.sandbox().reload(&settings.plugins, &pins)?;
            crate::settings::warn_unpinned(&pins, &sandbox);
            current.reload(Arc::new(sandbox), &settings.file)
        })
        .await
        .context("the reload task failed")??;
        // Everything is ready: the swap itself cannot fail.
        let tls = certificate.is_some();
        if let (Some(served), Some(next)) = (&self.tls, certificate) {
            served.replace(next);
        }
        state.providers.replace(next);
        Ok(Reloaded {
            changes,
            tls,
            need_restart,
        })
    }
}

/// The settings only a restart applies, by name, as comparable text.
fn fixed_settings(s: &Settings) -> Vec<(&'static str, String)> {
    let host = &s.file.host;
    vec![
        ("listen", format!("{:?}", host.listen)),
        ("database_url", format!("{:?}", s.database_url)),
        ("database_read_url", format!("{:?}", s.database_read_url)),
        ("database_kind", format!("{:?}", s.database_kind)),
        ("cache_dir", format!("{:?}", s.cache_dir)),
        ("log_format", format!("{:?}", host.log_format)),
        ("[limits]", format!("{:?}", host.limits)),
        ("[sandbox]", format!("{:?}", host.sandbox.limits())),
        ("[tls] on or off", format!("{}", host.tls.cert_file.is_some())),
    ]
}
