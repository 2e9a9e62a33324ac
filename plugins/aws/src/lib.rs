//! AWS instance identity verifier (placeholder until its issue lands).

use idgate_plugin_kit::{Crypto, Identity, Provider, VerifyError};

/// The AWS provider.
pub struct Aws;

impl Provider for Aws {
    const NAME: &'static str = "aws";

    fn verify(_crypto: &dyn Crypto, _credential: &str, _config: &str, _now: i64) -> Result<Identity, VerifyError> {
        Err(VerifyError::BadConfig("the AWS verifier is not implemented yet".into()))
    }
}

idgate_plugin_kit::export_provider!(Aws);
