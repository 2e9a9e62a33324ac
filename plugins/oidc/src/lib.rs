//! A generic OIDC/JWT verifier: tokens from one configured issuer (a Kubernetes
//! cluster's service-account issuer, GitHub Actions, any OIDC provider), signed
//! with RS256 or ES256 by a key from the issuer's key set, for the configured
//! audience. The instance ID is a claim the operator names; allow-lists refuse
//! genuine tokens outside the operator's policy.
//!
//! Written against the plugin kit only: the token is read by
//! `idgate_plugin_kit::jwt`, the keys by `idgate_plugin_kit::jwk`, and the host
//! does the arithmetic. The key set is the host's when it supplies one through
//! `host-keys` (keys rotate; the host fetches them), else the configured
//! `jwks`. See README.md for the configuration and the credential.

mod claim_path;
mod config;

use idgate_plugin_kit::jwk::JwsAlgorithm;
use idgate_plugin_kit::jwt::{self, MAX_TOKEN_LEN};
use idgate_plugin_kit::{Crypto, Identity, Provider, VerifyError};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

pub use claim_path::ClaimPath;
pub use config::{Config, DEFAULT_INSTANCE_ID_CLAIM, DEFAULT_SKEW_SECS};

/// The algorithms accepted; which one a token may use is its key's type's to say.
const ALGORITHMS: [JwsAlgorithm; 2] = [JwsAlgorithm::Rs256, JwsAlgorithm::Es256];

/// The OIDC provider.
pub struct Oidc;

/// The request's provider fields: `{"token": "<jwt>"}` (the host removes
/// `agent_name`; it is tolerated here too).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credential {
    token: String,
    #[serde(rename = "agent_name")]
    _agent_name: Option<IgnoredAny>,
}

impl Provider for Oidc {
    const NAME: &'static str = "oidc";
    /// `None`: no block (the plugin is installed but this host serves no issuer
    /// with it), so every credential is `bad-config` naming what to configure.
    type Config = Option<Config>;

    fn configure(config: &str) -> Result<Option<Config>, VerifyError> {
        // No block at all is not a broken one: a plugin directory holding `oidc`
        // must not make every host that configures no issuer unready. A block
        // with any key must be complete (`issuer` and `audience` required).
        if is_empty_block(config) {
            return Ok(None);
        }
        Config::parse(config).map(Some)
    }

    fn verify(
        crypto: &dyn Crypto,
        config: &Option<Config>,
        credential: &str,
        now: i64,
    ) -> Result<Identity, VerifyError> {
        let Some(config) = config else {
            return Err(VerifyError::BadConfig(
                "oidc config: no block: set issuer and audience (and the issuer's jwks) to serve tokens".into(),
            ));
        };
        if credential.len() > MAX_TOKEN_LEN * 2 {
            return Err(VerifyError::Malformed("credential too large".into()));
        }
        let credential: Credential = serde_json::from_str(credential)
            .map_err(|e| VerifyError::Malformed(format!("credential: expected {{\"token\": \"<jwt>\"}}: {e}")))?;
        let token = credential.token.trim();
        if token.is_empty() {
            return Err(VerifyError::Malformed("token is empty".into()));
        }

        let keys = config.key_set(idgate_plugin_kit::host_keys::key_set().as_deref())?;
        let claims = jwt::verify(crypto, token, &keys, &ALGORITHMS)?;
        let issuer = match claims.string("iss")? {
            Some(iss) if iss == config.issuer => iss.to_string(),
            Some(iss) => {
                return Err(VerifyError::UntrustedSigner(format!(
                    "token issuer {iss:?} is not the configured issuer {:?}",
                    config.issuer
                )))
            }
            None => return Err(VerifyError::Malformed("token has no iss claim".into())),
        };
        let audiences = claims.audiences()?;
        if !audiences.contains(&config.audience.as_str()) {
            return Err(VerifyError::UntrustedSigner(format!(
                "token audience {audiences:?} does not include the configured audience {:?}",
                config.audience
            )));
        }
        jwt::check_times(&claims, now, config.skew_secs, false)?;
        let subject = claims.string("sub")?.map(str::to_string);

        let claims = claims.into_value();
        let ambiguous = |e: claim_path::Ambiguous| VerifyError::Malformed(e.to_string());
        let instance_id = match config.instance_id_claim.find(&claims).map_err(ambiguous)? {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            found => {
                return Err(VerifyError::Malformed(format!(
                    "token has no instance ID: claim {:?} is {} (instance_id_claim)",
                    config.instance_id_claim.as_str(),
                    describe(found)
                )))
            }
        };
        let mut identity = Identity::new(instance_id).with("issuer", issuer);
        if let Some(subject) = subject {
            identity = identity.with("subject", subject);
        }
        for allow in &config.allowed_claims {
            let path = allow.path.as_str();
            match allow.path.find(&claims).map_err(ambiguous)? {
                Some(Value::String(v)) if allow.values.contains(v) => identity = identity.with(path, v.clone()),
                Some(Value::String(v)) => {
                    return Err(VerifyError::Refused(format!(
                        "claim {path:?} is {v:?}, not one of allowed_claims {:?}",
                        allow.values
                    )))
                }
                found => {
                    return Err(VerifyError::Refused(format!(
                        "claim {path:?} is {}, and allowed_claims requires one of {:?}",
                        describe(found),
                        allow.values
                    )))
                }
            }
        }
        Ok(identity)
    }
}

/// `""` or `{}`: what the host passes when the operator wrote no block.
fn is_empty_block(config: &str) -> bool {
    let config = config.trim();
    config.is_empty() || serde_json::from_str::<serde_json::Map<String, Value>>(config).is_ok_and(|m| m.is_empty())
}

/// A found (or missing) claim for messages, never its whole value.
fn describe(value: Option<&Value>) -> &'static str {
    match value {
        None => "missing",
        Some(Value::String(s)) if s.is_empty() => "empty",
        Some(Value::String(_)) => "a string",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "a boolean, not a string",
        Some(Value::Number(_)) => "a number, not a string",
        Some(Value::Array(_)) => "a list, not a string",
        Some(Value::Object(_)) => "an object, not a string",
    }
}

idgate_plugin_kit::export_provider!(Oidc);

#[cfg(test)]
mod tests;
