//! The identity JWT: its signature (the kit's JWT verifier, RS256 only, with
//! the host's crypto), Google's issuer, the audience, the times, and the claims
//! Google puts in a `format=full` token.

use idgate_plugin_kit::jwk::{JwsAlgorithm, KeySet};
use idgate_plugin_kit::{jwt, Crypto, VerifyError};
use serde::Deserialize;

use crate::config::Config;

/// The issuers Google uses for identity tokens.
pub const ISSUERS: [&str; 2] = ["accounts.google.com", "https://accounts.google.com"];

/// The claims idgate reads beyond the registered ones.
#[derive(Deserialize)]
pub struct Claims {
    /// The service account's email, when the token carries it.
    #[serde(default)]
    pub email: Option<String>,
    /// Google's extension; present with `format=full`.
    #[serde(default)]
    pub google: Option<GoogleClaims>,
}

/// `google` in a `format=full` token.
#[derive(Deserialize)]
pub struct GoogleClaims {
    /// Facts about the VM.
    #[serde(default)]
    pub compute_engine: Option<ComputeEngine>,
}

/// `google.compute_engine`.
#[derive(Deserialize)]
pub struct ComputeEngine {
    /// The VM's numeric ID, as a decimal string.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The VM's name.
    #[serde(default)]
    pub instance_name: Option<String>,
    /// The project ID (not its number).
    #[serde(default)]
    pub project_id: Option<String>,
    /// The zone, e.g. `us-central1-a`.
    #[serde(default)]
    pub zone: Option<String>,
}

/// Verifies the signature (RS256 only: Google signs identity tokens with
/// nothing else), the issuer, the audience and `exp`/`iat` at `now`; returns
/// the claims.
pub fn verify(
    crypto: &dyn Crypto,
    token: &str,
    config: &Config,
    keys: &KeySet,
    now: i64,
) -> Result<Claims, VerifyError> {
    let claims = jwt::verify(crypto, token, keys, &[JwsAlgorithm::Rs256])?;
    match claims.string("iss")? {
        Some(iss) if ISSUERS.contains(&iss) => {}
        Some(iss) => {
            return Err(VerifyError::UntrustedSigner(format!(
                "token issuer {iss:?} is not Google ({})",
                ISSUERS.join(" or ")
            )))
        }
        None => return Err(VerifyError::Malformed("token has no iss claim".into())),
    }
    // A string equal to the audience: Google never sends a list, and the spec
    // asks for equality.
    match claims.get("aud") {
        Some(aud) if aud.as_str() == Some(config.audience.as_str()) => {}
        Some(aud) => {
            return Err(VerifyError::UntrustedSigner(format!(
                "token audience {aud} is not the configured audience {:?}",
                config.audience
            )))
        }
        None => return Err(VerifyError::Malformed("token has no aud claim".into())),
    }
    jwt::check_times(&claims, now, config.skew_secs, true)?;
    serde_json::from_value(claims.into_value()).map_err(|e| VerifyError::Malformed(format!("token claims: {e}")))
}
