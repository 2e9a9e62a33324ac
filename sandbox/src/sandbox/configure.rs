//! Configuring: a plugin and its block made into the image every call starts
//! from — for 0.2.0 and later, `configure` run once and the instance
//! snapshotted (cached on disk by plugin, configuration and engine); for 0.1.0,
//! the block kept to send with each call.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use wasmtime::component::Component;

use super::versions::Configurable;
use super::Configured;
use super::{hex, snapshot, ConfiguredPlugin, HostInputs, Image, Linked, Plugin, Sandbox};

impl Sandbox {
    /// Configures `provider`'s plugin with its provider block and returns the
    /// image its calls start from. For a 0.2.0 plugin this runs `configure` once
    /// and snapshots the result (cached on disk by plugin, configuration and
    /// engine); a configuration the plugin refuses is an error naming the plugin
    /// and the plugin's reason (which names the key). A 0.1.0 plugin has no
    /// configure step: its block is kept and sent with every call.
    pub fn configure(&self, provider: &str, config: &serde_json::Value) -> anyhow::Result<Configured> {
        let plugin = self
            .plugins
            .get(provider)
            .ok_or_else(|| anyhow::anyhow!("no plugin is loaded for provider {provider:?}"))?;
        let (image, cached, trust) = match &plugin.linked {
            Linked::V0_1(pre) => (
                Image::PerCall {
                    pre: pre.clone(),
                    config: config.clone(),
                },
                plugin.info.cached,
                Vec::new(),
            ),
            Linked::Configurable(like) => {
                let (component, cached) = self
                    .configured_component(plugin, like, &config.to_string())
                    .with_context(|| format!("configuring the {provider} plugin ({})", plugin.info.path.display()))?;
                let pre = like
                    .relink(&self.instance_pre(&component)?)
                    .context("the configured snapshot lost its contract")?;
                let trust = self
                    .call(provider, &HostInputs::default(), |store| pre.trust(store))
                    .map_err(|e| anyhow::anyhow!("{e} while listing its trust anchors"))?;
                (Image::Snapshot(pre), cached, trust)
            }
        };
        Ok(Configured(Arc::new(ConfiguredPlugin {
            provider: provider.to_string(),
            image,
            cached,
            trust,
        })))
    }

    /// The compiled snapshot of `plugin` configured with `config`, from the
    /// cache or made now.
    fn configured_component(
        &self,
        plugin: &Plugin,
        like: &Configurable,
        config: &str,
    ) -> anyhow::Result<(Component, bool)> {
        let config_sha = hex(ring::digest::digest(&ring::digest::SHA256, config.as_bytes()).as_ref());
        let entry = self
            .cache
            .as_ref()
            .map(|cache| (cache, cache.configured_entry(&plugin.info.sha256, &config_sha)));
        if let Some(component) = entry.as_ref().and_then(|(cache, name)| cache.load(&self.engine, name)) {
            return Ok((component, true));
        }
        let instrumented = snapshot::instrument(&plugin.wasm)?;
        let instrumented_sha = hex(ring::digest::digest(&ring::digest::SHA256, &instrumented.wasm).as_ref());
        let (component, _) = self.compile_cached(&instrumented.wasm, &instrumented_sha)?;
        let pre = self.instance_pre(&component)?;
        let provider = plugin.info.provider.as_str();
        let mut store = self.new_store(&HostInputs::default());
        let instance = pre.instantiate(&mut store)?;
        let outcome = self.guard(&mut store, provider, Instant::now(), |store| {
            like.configure_instance(store, &instance, config)
        });
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the {provider} plugin refused its configuration: {e}"),
            Err(e) => bail!("{e} while configuring"),
        }
        let configured = instrumented.snapshot(&mut store, instance)?;
        let component = Component::new(&self.engine, &configured)?;
        if let Some((cache, name)) = &entry {
            cache.store(&component, name);
        }
        Ok((component, false))
    }
}
