//! The built-in trust list: pinned roots and the issuing CAs Azure's IMDS
//! signers chain through, as PEM files in `plugins/azure/certs/` compiled into
//! the component. `certs/README.md` says where each came from.
//!
//! Each file is marked *current* (a chain made today needs it) or historic
//! (kept so `idgate verify --at` can check old documents at their time). The
//! expiry watch — `idgate plugins --trust`, `/metrics`, `/readyz` and the test
//! `current_chain_outlives_the_warning_window` — looks at the current ones.

use std::sync::OnceLock;

use crate::cert::Cert;
use crate::chain::TrustStore;

/// A certificate file compiled in: (file name, PEM, current).
macro_rules! cert {
    ($file:literal, $current:expr) => {
        ($file, include_str!(concat!("../certs/", $file)), $current)
    };
}

/// One built-in file: (file name, PEM, whether a chain made today needs it).
pub type BuiltinFile = (&'static str, &'static str, bool);

/// Pinned roots.
pub const ROOTS: [BuiltinFile; 3] = [
    // The G2 hierarchy's anchor: Microsoft TLS RSA Root G2 is cross-signed by it.
    cert!("digicert_global_root_g2.pem", true),
    // Anchors the Azure ECC issuing CAs, which all expired on 2026-08-25.
    cert!("digicert_global_root_g3.pem", false),
    // Expired 2025-05-12; kept so documents from before then still verify at their time.
    cert!("baltimore_cybertrust_root.pem", false),
];

/// Microsoft TLS RSA Root G2, self-signed: pinned unless the operator sets
/// `pin_microsoft_root_g2 = false` (the spec pins it; the cross-signed copy
/// below also links it to DigiCert Global Root G2, until 2029-06-19, so paths
/// exist either way and outlive the cross-sign with the pin).
pub const MICROSOFT_ROOT_G2: BuiltinFile = cert!("microsoft_tls_rsa_root_g2.pem", true);

/// Intermediates: Microsoft's issuing CAs for IMDS's certificates.
/// Each was checked against its issuer when added (`certs/README.md`), and
/// the test `every_builtin_link_verifies_under_its_issuer` checks it again.
pub const INTERMEDIATES: [BuiltinFile; 22] = [
    // Since 2025: leaf → Microsoft TLS G2 RSA CA OCSP nn → Microsoft TLS RSA
    // Root G2 (cross-signed) → DigiCert Global Root G2. Valid to 2029-06-03.
    cert!("microsoft_tls_g2_rsa_ca_ocsp_02.pem", true),
    cert!("microsoft_tls_g2_rsa_ca_ocsp_04.pem", true),
    cert!("microsoft_tls_g2_rsa_ca_ocsp_06.pem", true),
    cert!("microsoft_tls_g2_rsa_ca_ocsp_08.pem", true),
    cert!("microsoft_tls_g2_rsa_ca_ocsp_10.pem", true),
    cert!("microsoft_tls_g2_rsa_ca_ocsp_12.pem", true),
    cert!("microsoft_tls_g2_rsa_ca_ocsp_14.pem", true),
    cert!("microsoft_tls_g2_rsa_ca_ocsp_16.pem", true),
    // Microsoft TLS RSA Root G2 under DigiCert Global Root G2, valid to 2029-06-19.
    cert!("microsoft_tls_rsa_root_g2_xsign_digicert_g2.pem", true),
    // Historic: under DigiCert Global Root G2 / G3, expired 2026-08-25.
    cert!("microsoft_azure_rsa_tls_issuing_ca_03.pem", false),
    cert!("microsoft_azure_rsa_tls_issuing_ca_04.pem", false),
    cert!("microsoft_azure_rsa_tls_issuing_ca_07.pem", false),
    cert!("microsoft_azure_rsa_tls_issuing_ca_08.pem", false),
    cert!("microsoft_azure_ecc_tls_issuing_ca_03.pem", false),
    cert!("microsoft_azure_ecc_tls_issuing_ca_04.pem", false),
    cert!("microsoft_azure_ecc_tls_issuing_ca_07.pem", false),
    cert!("microsoft_azure_ecc_tls_issuing_ca_08.pem", false),
    // Historic: under DigiCert Global Root G2, expired 2024-06-27.
    cert!("microsoft_azure_tls_issuing_ca_01.pem", false),
    cert!("microsoft_azure_tls_issuing_ca_02.pem", false),
    cert!("microsoft_azure_tls_issuing_ca_05.pem", false),
    cert!("microsoft_azure_tls_issuing_ca_06.pem", false),
    // Historic: under Baltimore CyberTrust Root, expired 2024-10-08.
    cert!("microsoft_rsa_tls_ca_01.pem", false),
];

/// Historic, also under Baltimore CyberTrust Root (listed apart to keep the
/// table above in issuing-family order).
pub const HISTORIC_BALTIMORE: [BuiltinFile; 1] = [cert!("microsoft_rsa_tls_ca_02.pem", false)];

/// The built-in store, decoded once per instance (and so once per configured
/// snapshot). An error means a built-in file is broken (a build problem,
/// reported as bad configuration).
pub fn builtin() -> Result<&'static Builtin, String> {
    static STORE: OnceLock<Result<Builtin, String>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let (roots, roots_current) = decode(&ROOTS)?;
            let (mut intermediates, mut current) = decode(&INTERMEDIATES)?;
            let (historic, historic_current) = decode(&HISTORIC_BALTIMORE)?;
            intermediates.extend(historic);
            current.extend(historic_current);
            let (root_g2, _) = decode(&[MICROSOFT_ROOT_G2])?;
            Ok(Builtin {
                store: TrustStore { roots, intermediates },
                roots_current,
                intermediates_current: current,
                microsoft_root_g2: root_g2.into_iter().next().ok_or("no Root G2 certificate")?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The decoded built-in certificates.
#[derive(Debug)]
pub struct Builtin {
    /// Roots and intermediates, in the tables' order.
    pub store: TrustStore,
    /// For each root of `store`, whether it is current.
    pub roots_current: Vec<bool>,
    /// For each intermediate of `store`, whether it is current.
    pub intermediates_current: Vec<bool>,
    /// Microsoft TLS RSA Root G2 (self-signed), pinned on request.
    pub microsoft_root_g2: Cert,
}

fn decode(files: &[BuiltinFile]) -> Result<(Vec<Cert>, Vec<bool>), String> {
    let mut certs = Vec::new();
    let mut current = Vec::new();
    for (name, text, is_current) in files {
        for der in idgate_plugin_kit::pem::certificates(text).map_err(|e| format!("{name}: {e}"))? {
            certs.push(Cert::parse(&der).map_err(|e| format!("{name}: {e}"))?);
            current.push(*is_current);
        }
    }
    Ok((certs, current))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01, when the G2 chain was bundled: the unit tests' fixed "today".
    /// (`tests/it/azure_trust.rs` checks the signatures, and expiry at the real time.)
    const BUNDLED_AT: i64 = 1_796_083_200;

    #[test]
    fn builtin_certificates_decode() {
        let b = builtin().unwrap();
        assert_eq!(b.store.roots.len(), ROOTS.len());
        assert_eq!(
            b.store.intermediates.len(),
            INTERMEDIATES.len() + HISTORIC_BALTIMORE.len()
        );
        assert!(b.store.roots.iter().all(|r| r.self_issued()));
        assert!(b.microsoft_root_g2.self_issued());
        assert!(b
            .store
            .intermediates
            .iter()
            .all(|c| c.basic_constraints.is_some_and(|(ca, _)| ca)));
    }

    /// The current certificates are the G2 chain, and exactly the ones valid
    /// when it was bundled.
    #[test]
    fn current_certificates_are_the_g2_chain() {
        let b = builtin().unwrap();
        let current: Vec<String> = b
            .store
            .intermediates
            .iter()
            .zip(&b.intermediates_current)
            .filter(|(_, c)| **c)
            .map(|(cert, _)| cert.common_names[0].clone())
            .collect();
        assert_eq!(current.len(), 9, "{current:?}");
        assert!(current.iter().all(|cn| cn.starts_with("Microsoft TLS")), "{current:?}");
        for (cert, current) in b.store.intermediates.iter().zip(&b.intermediates_current) {
            assert_eq!(
                *current,
                cert.validity_error(BUNDLED_AT).is_none(),
                "{}: marked current = {current}",
                cert.label()
            );
        }
    }
}
