//! GCP instance identity: the Google-signed JWT a VM's metadata server issues
//! (`instance/service-accounts/default/identity?audience=…&format=full`).
//!
//! The token's signature is checked with Google's keys, which the host fetches,
//! caches and hands over on every call through the `host-keys` import (they
//! rotate, so they are not part of the configured snapshot); the token is read
//! by the kit's JWT verifier (`idgate_plugin_kit::jwt`) and the RSA arithmetic
//! is done by the host through the crypto import. See README.md for the configuration.

mod config;
mod token;

use idgate_plugin_kit::{Crypto, Identity, Provider, VerifyError};
use serde::Deserialize;

pub use config::{DEFAULT_AUDIENCE, DEFAULT_SKEW_SECS};
pub use idgate_plugin_kit::jwk::UNKNOWN_KID_PREFIX;
/// Largest token accepted; Google's are about 1 KiB.
pub use idgate_plugin_kit::jwt::MAX_TOKEN_LEN;

/// The GCP provider.
pub struct Gcp;

/// The request's provider fields (Coder's body without `agent_name`).
#[derive(Deserialize)]
struct Credential {
    json_web_token: String,
}

impl Provider for Gcp {
    const NAME: &'static str = "gcp";
    type Config = config::Config;

    fn configure(config: &str) -> Result<config::Config, VerifyError> {
        config::Config::parse(config)
    }

    fn verify(
        crypto: &dyn Crypto,
        config: &config::Config,
        credential: &str,
        now: i64,
    ) -> Result<Identity, VerifyError> {
        if credential.len() > MAX_TOKEN_LEN * 2 {
            return Err(VerifyError::Malformed("credential too large".into()));
        }
        let credential: Credential = serde_json::from_str(credential).map_err(|e| {
            VerifyError::Malformed(format!("credential: expected {{\"json_web_token\": \"...\"}}: {e}"))
        })?;
        let token = credential.json_web_token.trim();
        if token.is_empty() {
            return Err(VerifyError::Malformed("json_web_token is empty".into()));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(VerifyError::Malformed(format!(
                "json_web_token is {} bytes, over the {MAX_TOKEN_LEN}-byte limit",
                token.len()
            )));
        }

        let keys = config.key_set(idgate_plugin_kit::host_keys::key_set().as_deref())?;
        let claims = token::verify(crypto, token, config, &keys, now)?;

        let vm = claims.google.and_then(|g| g.compute_engine);
        let Some(vm) = vm.filter(|vm| vm.instance_id.as_deref().is_some_and(|id| !id.is_empty())) else {
            return Err(VerifyError::UntrustedSigner(
                "token has no google.compute_engine.instance_id: request it with format=full".into(),
            ));
        };
        allow("project", vm.project_id.as_deref(), config.allowed_projects.as_deref())?;
        allow("zone", vm.zone.as_deref(), config.allowed_zones.as_deref())?;

        let mut identity = Identity::new(vm.instance_id.unwrap_or_default());
        for (name, value) in [
            ("project_id", vm.project_id),
            ("zone", vm.zone),
            ("instance_name", vm.instance_name),
            ("email", claims.email),
        ] {
            if let Some(value) = value {
                identity = identity.with(name, value);
            }
        }
        Ok(identity)
    }
}

/// Refuses `value` when an allow-list is configured and does not contain it.
fn allow(what: &str, value: Option<&str>, list: Option<&[String]>) -> Result<(), VerifyError> {
    let Some(list) = list else { return Ok(()) };
    match value {
        Some(v) if list.iter().any(|a| a == v) => Ok(()),
        Some(v) => Err(VerifyError::Refused(format!("{what} {v:?} is not in allowed_{what}s"))),
        None => Err(VerifyError::Refused(format!(
            "token names no {what}, and allowed_{what}s is set"
        ))),
    }
}

idgate_plugin_kit::export_provider!(Gcp);

#[cfg(test)]
mod tests;
