//! Missing issuers, fetched by the host from the certificate's Authority
//! Information Access `caIssuers` URLs (contract 0.3.0's `issuers` import).
//!
//! Why: when Microsoft moves IMDS's signers to a new issuing CA, a bundled
//! store lacks it until idgate is upgraded (Coder's outage of May 2026). The
//! signer's certificate names where its issuer can be downloaded; the host
//! fetches it from allow-listed hosts only. What comes back is just another
//! candidate: `chain::validate_with` trusts it only if it chains to a pinned
//! root, exactly like a certificate the PKCS#7 carried.

use der::asn1::ObjectIdentifier;
use der::Decode;
use idgate_plugin_kit::{issuers, pem};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::AuthorityInfoAccessSyntax;
use x509_cert::Certificate;

use crate::cert::Cert;
use crate::chain::TrustStore;

const ID_PE_AUTHORITY_INFO_ACCESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.1");
const ID_AD_CA_ISSUERS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.2");

/// Levels of missing issuers filled in: the signer's issuer, and that one's
/// (a new intermediate under a new cross-sign). The host retries as often.
pub const MAX_DEPTH: usize = 2;
/// caIssuers URLs tried per certificate (Microsoft names two hosts).
const MAX_URLS: usize = 2;
/// Certificates taken from one fetched body.
const MAX_CERTS_PER_BODY: usize = 4;

/// The `http(s)` caIssuers URLs of the certificate `der`, in its order.
pub fn ca_issuer_urls(der: &[u8]) -> Vec<String> {
    let Ok(cert) = Certificate::from_der(der) else {
        return Vec::new();
    };
    let Some(ext) = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == ID_PE_AUTHORITY_INFO_ACCESS)
    else {
        return Vec::new();
    };
    let Ok(aia) = AuthorityInfoAccessSyntax::from_der(ext.extn_value.as_bytes()) else {
        return Vec::new();
    };
    aia.0
        .iter()
        .filter(|d| d.access_method == ID_AD_CA_ISSUERS)
        .filter_map(|d| match &d.access_location {
            GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
            _ => None,
        })
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .take(MAX_URLS)
        .collect()
}

/// Adds to `carried` the fetched issuers of `leaf` (and of those, up to
/// [`MAX_DEPTH`] levels) that neither the store nor `carried` has. A URL the
/// host does not hold yet is asked for (the host fetches it after this call
/// and verifies again); nothing fetched is trusted here, only offered.
pub fn add_fetched_issuers(leaf: &Cert, store: &TrustStore, carried: &mut Vec<Cert>) {
    let has_issuer = |child: &Cert, carried: &[Cert]| {
        store
            .roots
            .iter()
            .chain(&store.intermediates)
            .chain(carried)
            .any(|c| c.subject == child.issuer)
    };
    // The common case, every call: the store has the signer's issuer.
    if has_issuer(leaf, carried) {
        return;
    }
    let mut child = leaf.clone();
    for _ in 0..MAX_DEPTH {
        if has_issuer(&child, carried) {
            return;
        }
        let mut found = None;
        for url in ca_issuer_urls(&child.der) {
            let Some(body) = issuers::fetched(&url) else {
                continue;
            };
            for cert in certificates(&body) {
                if cert.subject == child.issuer && !carried.iter().any(|c| c.der == cert.der) {
                    found.get_or_insert_with(|| cert.clone());
                    carried.push(cert);
                }
            }
            if found.is_some() {
                break;
            }
        }
        match found {
            Some(issuer) => child = issuer,
            None => return,
        }
    }
}

/// The certificates in a fetched body: DER (what caIssuers URLs serve) or PEM.
fn certificates(body: &[u8]) -> Vec<Cert> {
    let ders = match std::str::from_utf8(body) {
        Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => pem::certificates(text).unwrap_or_default(),
        _ => vec![body.to_vec()],
    };
    ders.iter()
        .take(MAX_CERTS_PER_BODY)
        .filter_map(|der| Cert::parse(der).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCSP_02: &str = include_str!("../certs/microsoft_tls_g2_rsa_ca_ocsp_02.pem");

    #[test]
    fn reads_the_ca_issuers_urls_in_order() {
        let der = pem::certificates(OCSP_02).unwrap().remove(0);
        assert_eq!(
            ca_issuer_urls(&der),
            [
                "http://www.microsoft.com/pkiops/certs/Microsoft%20TLS%20RSA%20Root%20G2%20-%20xsign.crt",
                "http://caissuers.microsoft.com/pkiops/certs/Microsoft%20TLS%20RSA%20Root%20G2%20-%20xsign.crt",
            ]
        );
        assert!(ca_issuer_urls(b"not a certificate").is_empty());
    }

    /// A fetched body (DER or PEM) fills the gap; a store that already has the
    /// issuer asks for nothing.
    #[test]
    fn fetched_issuers_are_offered_only_where_the_store_has_none() {
        let ocsp = Cert::parse(&pem::certificates(OCSP_02).unwrap()[0]).unwrap();
        let xsign_pem = include_str!("../certs/microsoft_tls_rsa_root_g2_xsign_digicert_g2.pem");
        let xsign_der = pem::certificates(xsign_pem).unwrap().remove(0);
        let urls = ca_issuer_urls(&ocsp.der);
        let empty = TrustStore::default();

        let mut carried = Vec::new();
        issuers::with_fetched(&[(&urls[1], &xsign_der)], || {
            add_fetched_issuers(&ocsp, &empty, &mut carried)
        });
        assert_eq!(carried.len(), 1);
        assert_eq!(carried[0].der, xsign_der);

        let mut carried = Vec::new();
        issuers::with_fetched(&[(&urls[0], xsign_pem.as_bytes())], || {
            add_fetched_issuers(&ocsp, &empty, &mut carried)
        });
        assert_eq!(carried.len(), 1);

        // Nothing held: nothing added.
        let mut carried = Vec::new();
        add_fetched_issuers(&ocsp, &empty, &mut carried);
        assert!(carried.is_empty());

        // The built-in store has the issuer: nothing is asked for or added.
        let store = &crate::trust::builtin().unwrap().store;
        let mut carried = Vec::new();
        issuers::with_fetched(&[(&urls[0], &xsign_der)], || {
            add_fetched_issuers(&ocsp, store, &mut carried)
        });
        assert!(carried.is_empty());
    }
}
