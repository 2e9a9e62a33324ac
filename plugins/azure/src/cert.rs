//! The parts of an X.509 certificate that path validation and the signer-name
//! check need, decoded once. The type lives in the plugin kit, beside the path
//! validator that reads it ([`idgate_plugin_kit::x509_path`]).

pub use idgate_plugin_kit::certificate::Cert;
