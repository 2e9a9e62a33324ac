//! How the fuzz targets call a provider plugin: natively, with the host's crypto, a
//! configuration the tests use and a verification time at which the genuine vectors in
//! `tests/data` are valid, so mutations of a genuine credential reach the deep checks.

use idgate_plugin_kit::{Identity, Provider, VerifyError};

use crate::NativeCrypto;

/// The plugin's `configure`, as the host runs it once at load (contract 0.2.0); a
/// target's fixed configuration must be accepted.
pub fn configure<P: Provider>(config: &str) -> P::Config {
    P::configure(config).unwrap_or_else(|e| panic!("{}'s fuzz configuration is refused: {e}", P::NAME))
}

/// The one call into a verifier: its `verify` on a configured instance. Everything
/// the fuzz targets know about the plugin contract is here and in [`configure`].
pub fn verify<P: Provider>(config: &P::Config, credential: &str, now: i64) -> Result<Identity, VerifyError> {
    P::verify(&NativeCrypto, config, credential, now)
}

/// AWS: the default configuration (built-in regional certificates, no policy).
pub const AWS_CONFIG: &str = "{}";
/// 2026-02-16T00:40:00Z, just after the `apse2_2026` vectors' pendingTime.
pub const AWS_NOW: i64 = 1_771_202_400;

/// Azure: the default configuration (built-in roots and intermediates, expiresOn checked).
pub const AZURE_CONFIG: &str = "{}";
/// 2022-04-19T03:00:00Z, inside the `coder_regular_attested` vector's validity.
pub const AZURE_NOW: i64 = 1_650_337_200;

/// GCP: the test configuration for the genuine token: Google's key for its `kid`, its audience.
pub fn gcp_config() -> &'static str {
    static CONFIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        format!(
            r#"{{"audience": "71d1b279-2fe3-4828-85f5-2f4a2fdb02a1", "jwks": {}}}"#,
            include_str!("../../tests/data/gcp/google_jwk_a3b762f8.json").trim()
        )
    })
}
/// 2024-05-17T16:30:00Z, between the genuine token's `iat` and `exp`.
pub const GCP_NOW: i64 = 1_715_963_400;

/// OIDC: cluster A of the component tests, with the test-made key set of
/// `data/oidc/jwks.json` (an RSA and a P-256 key; the seeds in `corpus/oidc` are
/// tokens they signed), the pod UID as instance ID and a namespace allow-list.
pub fn oidc_config() -> &'static str {
    static CONFIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        format!(
            r#"{{"issuer": "https://kubernetes.default.svc.cluster.local", "audience": "idgate",
                "instance_id_claim": "kubernetes.io.pod.uid",
                "allowed_claims": {{"kubernetes.io.namespace": ["agents"]}}, "jwks": {}}}"#,
            include_str!("../data/oidc/jwks.json").trim()
        )
    })
}
/// 2025-06-15T15:06:40Z, inside the seed tokens' hour.
pub const OIDC_NOW: i64 = 1_750_000_000;
