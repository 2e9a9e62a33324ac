//! GCP instance identity verifier (placeholder until its issue lands).

use idgate_plugin_kit::{Crypto, Identity, Provider, VerifyError};

/// The GCP provider.
pub struct Gcp;

impl Provider for Gcp {
    const NAME: &'static str = "gcp";

    fn verify(_crypto: &dyn Crypto, _credential: &str, _config: &str, _now: i64) -> Result<Identity, VerifyError> {
        Err(VerifyError::BadConfig("the GCP verifier is not implemented yet".into()))
    }
}

idgate_plugin_kit::export_provider!(Gcp);
