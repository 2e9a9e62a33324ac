//! The identity JWT: its header, its signature (through jsonwebtoken and the
//! host's crypto) and the claims Google puts in a `format=full` token.

use idgate_plugin_kit::encoding::base64url_decode;
use idgate_plugin_kit::{Crypto, VerifyError};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Config;
use crate::jwt_crypto;
use crate::key_set::KeySet;

/// The issuers Google uses for identity tokens.
pub const ISSUERS: [&str; 2] = ["accounts.google.com", "https://accounts.google.com"];

/// Largest header accepted before decoding it, bytes of base64url.
const MAX_HEADER_LEN: usize = 2048;

/// The claims idgate reads. Numbers must be integers, as Google writes them.
#[derive(Deserialize)]
pub struct Claims {
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issue time, Unix seconds.
    pub iat: i64,
    /// Audience: a string for Google's tokens; kept raw to refuse lists.
    pub aud: Value,
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

/// The header fields checked before jsonwebtoken sees the token.
#[derive(Deserialize)]
struct Header {
    alg: Option<Value>,
    kid: Option<Value>,
}

/// Checks the token's algorithm, finds its key, verifies the signature and the
/// issuer and audience; returns the claims (times not yet checked).
pub fn verify(crypto: &dyn Crypto, token: &str, config: &Config, keys: &KeySet) -> Result<Claims, VerifyError> {
    let kid = check_header(token)?;
    let key = keys.rsa_key(&kid)?;

    let mut validation = Validation::new(Algorithm::RS256);
    // The plugin has no clock: exp and iat are checked against the host's `now`.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(&ISSUERS);
    validation.set_audience(&[&config.audience]);

    jwt_crypto::install().map_err(VerifyError::BadConfig)?;
    let (decoded, key_error) =
        jwt_crypto::with_crypto(crypto, || jsonwebtoken::decode::<Claims>(token, &key, &validation));
    if let Some(reason) = key_error {
        return Err(VerifyError::UntrustedSigner(format!(
            "Google key {kid:?} is unusable: {reason}"
        )));
    }
    let claims = match decoded {
        Ok(data) => data.claims,
        Err(e) => return Err(map_error(e.into_kind(), token, config)),
    };
    // jsonwebtoken accepts a list that contains the audience; Google never sends
    // one, and the spec asks for equality.
    if claims.aud.as_str() != Some(config.audience.as_str()) {
        return Err(VerifyError::UntrustedSigner(format!(
            "token audience {} is not the configured audience {:?}",
            claims.aud, config.audience
        )));
    }
    Ok(claims)
}

/// Refuses any `alg` but RS256 and returns the `kid`.
fn check_header(token: &str) -> Result<String, VerifyError> {
    let malformed = |m: &str| VerifyError::Malformed(format!("json_web_token: {m}"));
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("not a JWS compact token (three dot-separated parts)"));
    };
    if header.len() > MAX_HEADER_LEN {
        return Err(malformed("header too large"));
    }
    let header = base64url_decode(header).map_err(|e| malformed(&format!("header: {e}")))?;
    let header: Header = serde_json::from_slice(&header).map_err(|e| malformed(&format!("header: {e}")))?;
    match header.alg {
        Some(Value::String(alg)) if alg == "RS256" => {}
        // `none`, HMAC with the public key as secret, other RSA or EC schemes:
        // Google signs these tokens with RS256 only.
        Some(alg) => {
            return Err(VerifyError::BadSignature(format!(
                "token alg {alg} refused: Google signs identity tokens with RS256"
            )))
        }
        None => return Err(malformed("header has no alg")),
    }
    match header.kid {
        Some(Value::String(kid)) if !kid.is_empty() => Ok(kid),
        _ => Err(VerifyError::UntrustedSigner(
            "token header names no key (kid): cannot pick a Google key".into(),
        )),
    }
}

/// Turns a jsonwebtoken failure into the contract's error.
fn map_error(kind: ErrorKind, token: &str, config: &Config) -> VerifyError {
    // Issuer and audience are checked after the signature verified, so the
    // claims can be quoted to help the operator.
    let claim = |name: &str| {
        jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token)
            .ok()
            .and_then(|c| c.get(name).cloned())
            .map_or_else(|| "(none)".to_string(), |v| v.to_string())
    };
    match kind {
        ErrorKind::InvalidSignature => VerifyError::BadSignature("token signature does not verify".into()),
        ErrorKind::InvalidIssuer => VerifyError::UntrustedSigner(format!(
            "token issuer {} is not Google ({})",
            claim("iss"),
            ISSUERS.join(" or ")
        )),
        ErrorKind::InvalidAudience => VerifyError::UntrustedSigner(format!(
            "token audience {} is not the configured audience {:?}",
            claim("aud"),
            config.audience
        )),
        ErrorKind::MissingRequiredClaim(c) => VerifyError::Malformed(format!("token has no {c} claim")),
        ErrorKind::InvalidClaimFormat(c) => VerifyError::Malformed(format!("token claim {c} is malformed")),
        ErrorKind::Json(e) => VerifyError::Malformed(format!("token JSON: {e}")),
        ErrorKind::Base64(e) => VerifyError::Malformed(format!("token base64url: {e}")),
        ErrorKind::Utf8(e) => VerifyError::Malformed(format!("token UTF-8: {e}")),
        ErrorKind::InvalidToken => VerifyError::Malformed("not a JWS compact token".into()),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::InvalidAlgorithmName => {
            VerifyError::BadSignature("token algorithm refused: only RS256 is accepted".into())
        }
        ErrorKind::InvalidRsaKey(m) => VerifyError::BadConfig(format!("Google key unusable: {m}")),
        other => VerifyError::BadSignature(format!("token refused: {other:?}")),
    }
}
