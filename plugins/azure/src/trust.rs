//! The built-in trust list: pinned roots and the Azure TLS issuing CAs, as PEM
//! files in `plugins/azure/certs/` compiled into the component.

use std::sync::OnceLock;

use crate::cert::Cert;
use crate::chain::TrustStore;

/// A certificate file compiled in: (file name, PEM).
macro_rules! cert {
    ($file:literal) => {
        ($file, include_str!(concat!("../certs/", $file)))
    };
}

/// Pinned roots (file name, PEM).
const ROOTS: [(&str, &str); 3] = [
    cert!("digicert_global_root_g2.pem"),
    cert!("digicert_global_root_g3.pem"),
    // Expired 2025-05-12; kept so documents from before then still verify at their time.
    cert!("baltimore_cybertrust_root.pem"),
];

/// Intermediates (file name, PEM): Microsoft's issuing CAs for IMDS's certificates.
/// Each was checked against its root (`openssl verify`) when added.
const INTERMEDIATES: [(&str, &str); 6] = [
    // Under DigiCert Global Root G2, valid to 2026-08-25.
    cert!("microsoft_azure_rsa_tls_issuing_ca_03.pem"),
    cert!("microsoft_azure_rsa_tls_issuing_ca_04.pem"),
    cert!("microsoft_azure_rsa_tls_issuing_ca_07.pem"),
    cert!("microsoft_azure_rsa_tls_issuing_ca_08.pem"),
    // Historic (expired 2024), for verifying old documents at their time.
    cert!("microsoft_azure_tls_issuing_ca_05.pem"),
    cert!("microsoft_rsa_tls_ca_01.pem"),
];

/// The built-in store, decoded once per instance. An error means a built-in file
/// is broken (a build problem, reported as bad configuration).
pub fn builtin() -> Result<&'static TrustStore, String> {
    static STORE: OnceLock<Result<TrustStore, String>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            Ok(TrustStore {
                roots: decode(&ROOTS)?,
                intermediates: decode(&INTERMEDIATES)?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn decode(files: &[(&str, &str)]) -> Result<Vec<Cert>, String> {
    let mut out = Vec::new();
    for (name, text) in files {
        for der in idgate_plugin_kit::pem::certificates(text).map_err(|e| format!("{name}: {e}"))? {
            out.push(Cert::parse(&der).map_err(|e| format!("{name}: {e}"))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn builtin_certificates_decode() {
        let store = super::builtin().unwrap();
        assert_eq!(store.roots.len(), 3);
        assert_eq!(store.intermediates.len(), 6);
        assert!(store.roots.iter().all(|r| r.self_issued()));
        assert!(store
            .intermediates
            .iter()
            .all(|c| c.basic_constraints.is_some_and(|(ca, _)| ca)));
    }
}
