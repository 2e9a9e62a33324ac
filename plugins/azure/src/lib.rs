//! Azure instance identity verifier (placeholder until its issue lands).

use idgate_plugin_kit::{Crypto, Identity, Provider, VerifyError};

/// The Azure provider.
pub struct Azure;

impl Provider for Azure {
    const NAME: &'static str = "azure";

    fn verify(_crypto: &dyn Crypto, _credential: &str, _config: &str, _now: i64) -> Result<Identity, VerifyError> {
        Err(VerifyError::BadConfig(
            "the Azure verifier is not implemented yet".into(),
        ))
    }
}

idgate_plugin_kit::export_provider!(Azure);
