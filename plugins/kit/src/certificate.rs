//! The parts of an X.509 certificate that path validation and a verifier's
//! signer checks need, decoded once (with `x509-cert`).

use der::asn1::ObjectIdentifier;
use der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, NameConstraints, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::ber;
use crate::time::format_rfc3339;

const ID_CE_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const ID_CE_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const ID_CE_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const ID_CE_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const ID_CE_NAME_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.30");
/// Extensions we either process or that carry no constraint we must enforce:
/// SKI, AKI, certificatePolicies, CRL distribution points, AIA, SCTs.
/// Any other extension marked critical makes the certificate unusable (RFC 5280 4.2).
/// (OIDs are compared as OIDs: formatting them to text was a visible share of
/// a verification in the profile.)
const UNDERSTOOD: [ObjectIdentifier; 11] = [
    ID_CE_BASIC_CONSTRAINTS,
    ID_CE_KEY_USAGE,
    ID_CE_SUBJECT_ALT_NAME,
    ID_CE_EXT_KEY_USAGE,
    ID_CE_NAME_CONSTRAINTS,
    ObjectIdentifier::new_unwrap("2.5.29.14"),
    ObjectIdentifier::new_unwrap("2.5.29.35"),
    ObjectIdentifier::new_unwrap("2.5.29.32"),
    ObjectIdentifier::new_unwrap("2.5.29.31"),
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.1.1"),
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2"),
];
const ID_AT_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// id-kp-serverAuth.
pub const EKU_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
/// anyExtendedKeyUsage.
pub const EKU_ANY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");

/// The DNS subtrees of a nameConstraints extension (other name forms are left
/// to the path validator, which refuses the ones it cannot check).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConstraints {
    /// permittedSubtrees dNSName bases; empty means no DNS restriction.
    pub permitted: Vec<String>,
    /// excludedSubtrees dNSName bases.
    pub excluded: Vec<String>,
}

/// A decoded certificate.
#[derive(Debug, Clone)]
pub struct Cert {
    /// The whole certificate, DER.
    pub der: Vec<u8>,
    /// The original TBSCertificate bytes: what the issuer signed.
    pub tbs: Vec<u8>,
    /// The SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
    /// The outer signatureAlgorithm OID.
    pub signature_alg: ObjectIdentifier,
    /// The signature bits.
    pub signature: Vec<u8>,
    /// Subject name.
    pub subject: Name,
    /// Issuer name.
    pub issuer: Name,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// basicConstraints: (cA, pathLenConstraint); `None` if absent.
    pub basic_constraints: Option<(bool, Option<u8>)>,
    /// keyUsage: (keyCertSign, digitalSignature); `None` if absent.
    pub key_usage: Option<(bool, bool)>,
    /// extendedKeyUsage purposes; `None` if absent.
    pub ext_key_usage: Option<Vec<ObjectIdentifier>>,
    /// nameConstraints' DNS subtrees; `None` if the extension is absent.
    pub dns_constraints: Option<DnsConstraints>,
    /// Common names in the subject.
    pub common_names: Vec<String>,
    /// DNS names in subjectAltName.
    pub dns_names: Vec<String>,
    /// Whether the certificate has a subjectAltName extension at all.
    pub has_san: bool,
    /// The OID of a critical extension we do not understand, if any.
    pub unknown_critical: Option<String>,
}

impl Cert {
    /// Decodes a DER certificate; the error says what is wrong.
    pub fn parse(der: &[u8]) -> Result<Cert, String> {
        let cert = Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        Cert::from_certificate(der, &cert)
    }

    /// [`Cert::parse`] of `der` when it has been decoded already (`cert`, from
    /// the same bytes: a PKCS#7's, say): the checks and fields without a second decode.
    pub fn from_certificate(der: &[u8], cert: &Certificate) -> Result<Cert, String> {
        let outer = ber::der_element(der)?;
        let tbs_element = *ber::der_elements(outer.content)?
            .first()
            .ok_or("certificate without TBSCertificate")?;
        let tbs_cert = &cert.tbs_certificate;
        // The key as the certificate encodes it, not re-encoded: `cert` came from
        // these bytes as strict DER, so they are what an encoder would write.
        // TBSCertificate: [0] version (absent for v1), serial, signature, issuer,
        // validity, subject, subjectPublicKeyInfo.
        let tbs_fields = ber::der_elements(tbs_element.content)?;
        let spki_at = if tbs_fields.first().is_some_and(|f| f.tag == 0xa0) {
            6
        } else {
            5
        };
        let spki = tbs_fields
            .get(spki_at)
            .filter(|f| f.tag == 0x30)
            .map(|f| f.whole.to_vec())
            .ok_or("TBSCertificate without subjectPublicKeyInfo")?;
        let tbs = tbs_element.whole.to_vec();
        if tbs_cert.signature != cert.signature_algorithm {
            return Err("inner and outer signature algorithms differ".into());
        }
        let signature = cert
            .signature
            .as_bytes()
            .ok_or("signature BIT STRING has unused bits")?
            .to_vec();
        let mut out = Cert {
            der: der.to_vec(),
            tbs,
            spki,
            signature_alg: cert.signature_algorithm.oid,
            signature,
            subject: tbs_cert.subject.clone(),
            issuer: tbs_cert.issuer.clone(),
            not_before: crate::time::x509_unix(&tbs_cert.validity.not_before),
            not_after: crate::time::x509_unix(&tbs_cert.validity.not_after),
            basic_constraints: None,
            key_usage: None,
            ext_key_usage: None,
            dns_constraints: None,
            common_names: common_names(&tbs_cert.subject),
            dns_names: Vec::new(),
            has_san: false,
            unknown_critical: None,
        };
        for ext in tbs_cert.extensions.iter().flatten() {
            let value = ext.extn_value.as_bytes();
            match ext.extn_id {
                ID_CE_BASIC_CONSTRAINTS => {
                    let bc = BasicConstraints::from_der(value).map_err(|e| format!("basicConstraints: {e}"))?;
                    out.basic_constraints = Some((bc.ca, bc.path_len_constraint));
                }
                ID_CE_KEY_USAGE => {
                    let ku = KeyUsage::from_der(value).map_err(|e| format!("keyUsage: {e}"))?;
                    out.key_usage = Some((ku.key_cert_sign(), ku.digital_signature()));
                }
                ID_CE_EXT_KEY_USAGE => {
                    let eku = ExtendedKeyUsage::from_der(value).map_err(|e| format!("extendedKeyUsage: {e}"))?;
                    out.ext_key_usage = Some(eku.0);
                }
                ID_CE_NAME_CONSTRAINTS => {
                    let nc = NameConstraints::from_der(value).map_err(|e| format!("nameConstraints: {e}"))?;
                    let dns = |subtrees: &Option<Vec<x509_cert::ext::pkix::constraints::name::GeneralSubtree>>| {
                        subtrees
                            .iter()
                            .flatten()
                            .filter_map(|s| match &s.base {
                                GeneralName::DnsName(d) => Some(d.to_string()),
                                _ => None,
                            })
                            .collect::<Vec<_>>()
                    };
                    out.dns_constraints = Some(DnsConstraints {
                        permitted: dns(&nc.permitted_subtrees),
                        excluded: dns(&nc.excluded_subtrees),
                    });
                }
                ID_CE_SUBJECT_ALT_NAME => {
                    let san = SubjectAltName::from_der(value).map_err(|e| format!("subjectAltName: {e}"))?;
                    out.has_san = true;
                    out.dns_names = san
                        .0
                        .iter()
                        .filter_map(|n| match n {
                            GeneralName::DnsName(d) => Some(d.to_string()),
                            _ => None,
                        })
                        .collect();
                }
                oid if ext.critical && !UNDERSTOOD.contains(&oid) => out.unknown_critical = Some(oid.to_string()),
                _ => {}
            }
        }
        Ok(out)
    }

    /// A short name for messages: the first CN, else the whole subject.
    pub fn label(&self) -> String {
        match self.common_names.first() {
            Some(cn) => format!("'{cn}'"),
            None => format!("'{}'", self.subject),
        }
    }

    /// `None` if valid at `now`, else why not.
    pub fn validity_error(&self, now: i64) -> Option<String> {
        if now < self.not_before || now > self.not_after {
            Some(format!(
                "certificate {} is not valid at {}: valid from {} to {}",
                self.label(),
                format_rfc3339(now),
                format_rfc3339(self.not_before),
                format_rfc3339(self.not_after)
            ))
        } else {
            None
        }
    }

    /// Whether the subject is the issuer (a self-issued certificate).
    pub fn self_issued(&self) -> bool {
        self.subject == self.issuer
    }

    /// Whether basicConstraints marks this a CA.
    pub fn is_ca(&self) -> bool {
        matches!(self.basic_constraints, Some((true, _)))
    }

    /// Whether extendedKeyUsage lets this certificate be used on a TLS server's
    /// path, as Go decides: absent, serverAuth, or anyExtendedKeyUsage.
    pub fn allows_server_auth(&self) -> bool {
        match &self.ext_key_usage {
            None => true,
            Some(purposes) => purposes.iter().any(|p| *p == EKU_SERVER_AUTH || *p == EKU_ANY),
        }
    }
}

/// The subject's commonName values that are text.
fn common_names(name: &Name) -> Vec<String> {
    let mut out = Vec::new();
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid != ID_AT_COMMON_NAME {
                continue;
            }
            let v = &atv.value;
            let text = match v.tag() {
                Tag::Utf8String => Utf8StringRef::try_from(v).ok().map(|s| s.as_str().to_string()),
                Tag::PrintableString => PrintableStringRef::try_from(v).ok().map(|s| s.as_str().to_string()),
                Tag::Ia5String => Ia5StringRef::try_from(v).ok().map(|s| s.as_str().to_string()),
                _ => None,
            };
            out.extend(text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    /// The key and algorithm are taken from the certificate's own bytes; for
    /// every certificate in the repository (v1 without a version field, v3 with
    /// one) they are what decoding and re-encoding gives.
    #[test]
    fn key_and_algorithm_are_the_decoded_ones() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data");
        let mut seen = 0;
        let mut versions = std::collections::BTreeSet::new();
        for dir in ["aws", "aws/spire_region_certs", "azure"] {
            for entry in std::fs::read_dir(data.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "pem") {
                    continue;
                }
                for der in crate::pem::certificates(&std::fs::read_to_string(&path).unwrap()).unwrap() {
                    let x509 = Certificate::from_der(&der).unwrap();
                    let cert = Cert::from_certificate(&der, &x509).unwrap();
                    assert_eq!(
                        cert.spki,
                        x509.tbs_certificate.subject_public_key_info.to_der().unwrap(),
                        "{path:?}"
                    );
                    assert_eq!(cert.signature_alg, x509.signature_algorithm.oid, "{path:?}");
                    assert_eq!(cert.tbs, x509.tbs_certificate.to_der().unwrap(), "{path:?}");
                    versions.insert(x509.tbs_certificate.version as u8);
                    seen += 1;
                }
            }
        }
        assert!(seen >= 11, "{seen} certificates");
        assert_eq!(
            versions.into_iter().collect::<Vec<_>>(),
            [0, 2],
            "v1 and v3 both covered"
        );
    }
}
