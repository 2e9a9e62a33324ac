//! The contracts that are configured once and snapshotted (0.2.0 and later),
//! behind one type, so loading, configuring and calling are written once.
//!
//! Each version's generated bindings are distinct types with the same shape;
//! [`each!`] writes a match arm per version around one body.

use idgate_plugin_kit::VerifyError;
use wasmtime::component::{Instance, InstancePre};
use wasmtime::Store;

use super::contract::{since_v0_2_0, since_v0_3_0};
use super::{CallState, PluginAnswer, TrustAnchor};

/// A component linked for a configurable contract.
#[derive(Clone)]
pub(super) enum Configurable {
    V0_2(since_v0_2_0::ProviderPre<CallState>),
    V0_3(since_v0_3_0::ProviderPre<CallState>),
}

/// Runs `$body` with `$pre` bound to the version's pre-instance and `$m` to its
/// bindings module.
macro_rules! each {
    ($value:expr, $pre:ident => $body:expr) => {
        match $value {
            Configurable::V0_2($pre) => $body,
            Configurable::V0_3($pre) => $body,
        }
    };
    ($value:expr, $pre:ident, $m:ident => $body:expr) => {
        match $value {
            Configurable::V0_2($pre) => {
                use since_v0_2_0 as $m;
                $body
            }
            Configurable::V0_3($pre) => {
                use since_v0_3_0 as $m;
                $body
            }
        }
    };
}

impl Configurable {
    /// `pre` as the newest configurable contract its exports satisfy, if any.
    pub(super) fn link(pre: &InstancePre<CallState>) -> Option<Configurable> {
        if let Ok(p) = since_v0_3_0::ProviderPre::new(pre.clone()) {
            return Some(Configurable::V0_3(p));
        }
        since_v0_2_0::ProviderPre::new(pre.clone()).ok().map(Configurable::V0_2)
    }

    /// `pre` (a configured snapshot of the same plugin) linked for this version.
    pub(super) fn relink(&self, pre: &InstancePre<CallState>) -> anyhow::Result<Configurable> {
        Ok(match self {
            Configurable::V0_2(_) => Configurable::V0_2(since_v0_2_0::ProviderPre::new(pre.clone())?),
            Configurable::V0_3(_) => Configurable::V0_3(since_v0_3_0::ProviderPre::new(pre.clone())?),
        })
    }

    /// The contract version the exports are.
    pub(super) fn contract(&self) -> &'static str {
        match self {
            Configurable::V0_2(_) => "0.2.0",
            Configurable::V0_3(_) => "0.3.0",
        }
    }

    /// The plugin's (provider name, contract version).
    pub(super) fn info(&self, store: &mut Store<CallState>) -> wasmtime::Result<(String, String)> {
        each!(self, pre => {
            let info = pre.instantiate(&mut *store)?.idgate_identity_verify_identity().call_info(store)?;
            Ok((info.name, info.contract))
        })
    }

    /// Calls `configure` on an instance of the (instrumented) plugin that is
    /// about to be snapshotted.
    pub(super) fn configure_instance(
        &self,
        store: &mut Store<CallState>,
        instance: &Instance,
        config: &str,
    ) -> wasmtime::Result<Result<(), VerifyError>> {
        each!(self, _pre, m => {
            let provider = m::Provider::new(&mut *store, instance)?;
            Ok(provider.idgate_identity_verify_identity().call_configure(store, config)?.map_err(VerifyError::from))
        })
    }

    /// One `verify` in a fresh instance of this image.
    pub(super) fn verify(
        &self,
        store: &mut Store<CallState>,
        credential: &str,
        now: i64,
    ) -> wasmtime::Result<PluginAnswer> {
        each!(self, pre => {
            Ok(pre
                .instantiate(&mut *store)?
                .idgate_identity_verify_identity()
                .call_verify(store, credential, now)?
                .map(|id| (id.instance_id, id.attributes))
                .map_err(VerifyError::from))
        })
    }

    /// `configure` then `verify` in one fresh instance (what a call cost before snapshots).
    pub(super) fn configure_and_verify(
        &self,
        store: &mut Store<CallState>,
        config: &str,
        credential: &str,
        now: i64,
    ) -> wasmtime::Result<PluginAnswer> {
        each!(self, pre => {
            let instance = pre.instantiate(&mut *store)?;
            let exports = instance.idgate_identity_verify_identity();
            Ok(match exports.call_configure(&mut *store, config)? {
                Ok(()) => exports
                    .call_verify(store, credential, now)?
                    .map(|id| (id.instance_id, id.attributes))
                    .map_err(VerifyError::from),
                Err(e) => Err(VerifyError::from(e)),
            })
        })
    }

    /// The certificates the configured plugin trusts (0.3.0's `trust`; none before).
    pub(super) fn trust(&self, store: &mut Store<CallState>) -> wasmtime::Result<Vec<TrustAnchor>> {
        match self {
            Configurable::V0_2(_) => Ok(Vec::new()),
            Configurable::V0_3(pre) => {
                use since_v0_3_0::idgate::identity::types::AnchorRole;
                let anchors = pre
                    .instantiate(&mut *store)?
                    .idgate_identity_verify_identity()
                    .call_trust(store)?;
                Ok(anchors
                    .into_iter()
                    .map(|a| TrustAnchor {
                        subject: a.subject,
                        role: match a.role {
                            AnchorRole::Root => "root",
                            AnchorRole::Intermediate => "intermediate",
                        }
                        .to_string(),
                        origin: a.origin,
                        not_after: a.not_after,
                        current: a.current,
                    })
                    .collect())
            }
        }
    }
}
