//! PKCS#7 / CMS SignedData with exactly one signer, from BER or DER.
//!
//! API summary (for plugin authors):
//! - [`parse`]`(bytes) -> Result<SignedData, VerifyError>`: ContentInfo(SignedData), BER or DER
//!   (normalised by [`crate::ber`], then decoded with `cms` 0.2). Everything wrong is `Malformed`:
//!   not SignedData, detached content, zero or several signers, more than 32 certificates...
//! - [`SignedData::content`]: the encapsulated content (eContent octets, reassembled if segmented).
//! - [`SignedData::certificates`]: the DER certificates the PKCS#7 carries, original bytes.
//! - [`SignedData::signer_id`] ([`SignerId`]: issuer+serial or SKI), [`SignedData::signer_matches`]
//!   `(cert_der)`, [`SignedData::signer_matches_decoded`]`(x509)`, [`SignedData::decoded_certificates`], [`SignedData::find_signer_certificate`]`(extra)`:
//!   locate the signer's certificate.
//! - [`SignedData::verify_signer`]`(crypto, spki_der, allow_rsa1024)`: messageDigest + signature over
//!   the signed attributes (or directly over the content when there are none). `BadSignature` if
//!   it does not verify, `UntrustedSigner` if the key does not fit the algorithm, `Malformed` for
//!   unsupported algorithms. It does NOT check any certificate: choosing the key is the caller's job.
//! - [`SignedData::signing_time`], [`SignedData::has_signed_attributes`], [`SignedData::content_type`].

use const_oid::ObjectIdentifier;
use der::asn1::OctetString;
use der::{Decode, Encode, Tag, Tagged};
use x509_cert::Certificate;

use crate::ber;
use crate::{Crypto, DigestAlgorithm, SignatureAlgorithm, VerifyError};

/// Largest PKCS#7 accepted; real ones are a few KiB.
pub const MAX_INPUT: usize = 256 * 1024;
/// Most certificates accepted in the PKCS#7 (and digest algorithms, and attributes):
/// bounds the decoder's SET OF sorting, which is quadratic.
const MAX_SET_ITEMS: usize = 32;

const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
const ID_SUBJECT_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");

const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SHA1_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const ID_DSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10040.4.1");
const DSA_WITH_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10040.4.3");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// How a SignerInfo names its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerId {
    /// The certificate's issuer name and serial number.
    IssuerAndSerial {
        /// The issuer Name.
        issuer: x509_cert::name::Name,
        /// The serial number's DER INTEGER content bytes.
        serial: Vec<u8>,
    },
    /// The certificate's subjectKeyIdentifier extension value.
    SubjectKeyId(Vec<u8>),
}

/// A parsed SignedData with its single signer. See the module doc.
#[derive(Debug, Clone)]
pub struct SignedData {
    content_type: ObjectIdentifier,
    content: Vec<u8>,
    certificates: Vec<Vec<u8>>,
    /// `certificates`, decoded.
    decoded: Vec<Certificate>,
    signer_id: SignerId,
    digest_alg: ObjectIdentifier,
    signature_alg: ObjectIdentifier,
    signature: Vec<u8>,
    /// The signed attributes as the signer DER-encoded them, re-tagged SET (0x31).
    signed_attrs_der: Option<Vec<u8>>,
    signed_attrs: Vec<x509_cert::attr::Attribute>,
}

fn malformed(what: impl std::fmt::Display) -> VerifyError {
    VerifyError::Malformed(format!("PKCS#7: {what}"))
}

/// Parses a ContentInfo carrying SignedData with exactly one signer (BER or DER).
pub fn parse(bytes: &[u8]) -> Result<SignedData, VerifyError> {
    parse_with_max_certificates(bytes, MAX_SET_ITEMS)
}

/// [`parse`], refusing (`UntrustedSigner`) a PKCS#7 that carries more than
/// `max` certificates before any of them is decoded: a verifier that knows how
/// long its chains are caps what a body can make it parse and check.
pub fn parse_with_max_certificates(bytes: &[u8], max: usize) -> Result<SignedData, VerifyError> {
    if bytes.is_empty() {
        return Err(malformed("empty"));
    }
    if bytes.len() > MAX_INPUT {
        return Err(malformed(format!(
            "{} bytes is more than the {MAX_INPUT} accepted",
            bytes.len()
        )));
    }
    // DER (Azure's) as it is; BER (AWS's) rewritten.
    let der: std::borrow::Cow<[u8]> = if ber::is_der(bytes) {
        bytes.into()
    } else {
        ber::to_der(bytes).map_err(malformed)?.into()
    };
    let raw = RawParts::find(&der).map_err(malformed)?;
    if raw.certificates.len() > max {
        return Err(VerifyError::UntrustedSigner(format!(
            "the PKCS#7 carries {} certificates; a signer's chain needs at most {max}",
            raw.certificates.len()
        )));
    }

    let info = cms::content_info::ContentInfo::from_der(&der).map_err(malformed)?;
    if info.content_type != ID_SIGNED_DATA {
        return Err(malformed(format!(
            "content type {} is not SignedData",
            info.content_type
        )));
    }
    // The carried certificates are decoded here once, in their order, and
    // kept (`decoded`) for the verifier's own use; cms decodes the rest.
    let (sd, decoded): (cms::signed_data::SignedData, Vec<Certificate>) = match &raw.without_certificates {
        Some(rest) => {
            let sd = cms::signed_data::SignedData::from_der(rest).map_err(malformed)?;
            (sd, decode_certificate_set(&raw.certificate_set).map_err(malformed)?)
        }
        None => {
            let sd: cms::signed_data::SignedData = info.content.decode_as().map_err(malformed)?;
            let decoded = raw
                .certificates
                .iter()
                .map(|der| Certificate::from_der(der))
                .collect::<Result<_, _>>()
                .map_err(malformed)?;
            (sd, decoded)
        }
    };
    let signer = match sd.signer_infos.0.as_slice() {
        [one] => one.clone(),
        [] => return Err(malformed("no signer (SignerInfos is empty)")),
        many => return Err(malformed(format!("{} signers; exactly one is supported", many.len()))),
    };
    let econtent = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| malformed("no encapsulated content (detached signature)"))?;
    if econtent.tag() != Tag::OctetString {
        return Err(malformed(format!(
            "eContent is {} instead of OCTET STRING",
            econtent.tag()
        )));
    }
    let signer_id = match &signer.sid {
        cms::signed_data::SignerIdentifier::IssuerAndSerialNumber(isn) => SignerId::IssuerAndSerial {
            issuer: isn.issuer.clone(),
            serial: isn.serial_number.as_bytes().to_vec(),
        },
        cms::signed_data::SignerIdentifier::SubjectKeyIdentifier(ski) => {
            SignerId::SubjectKeyId(ski.0.as_bytes().to_vec())
        }
    };
    Ok(SignedData {
        content_type: sd.encap_content_info.econtent_type,
        content: econtent.value().to_vec(),
        certificates: raw.certificates,
        decoded,
        signer_id,
        digest_alg: signer.digest_alg.oid,
        signature_alg: signer.signature_algorithm.oid,
        signature: signer.signature.as_bytes().to_vec(),
        signed_attrs_der: raw.signed_attrs,
        signed_attrs: signer.signed_attrs.map(|a| a.into_vec()).unwrap_or_default(),
    })
}

/// Original encodings that a decode/re-encode round trip might not reproduce
/// (SET OF is re-sorted by `der`), found by walking the DER by hand.
struct RawParts {
    certificates: Vec<Vec<u8>>,
    /// Every element of the `[0] certificates` SET, whatever its choice.
    certificate_set: Vec<Vec<u8>>,
    /// The SignedData re-encoded without its `[0] certificates`, when they sit
    /// where the syntax puts them (fourth, once): cms then decodes the rest,
    /// and the certificates are decoded once, by [`decode_certificate_set`].
    without_certificates: Option<Vec<u8>>,
    signed_attrs: Option<Vec<u8>>,
}

impl RawParts {
    fn find(der: &[u8]) -> Result<RawParts, String> {
        let ci = ber::der_element(der)?;
        let ci_parts = ber::der_elements(ci.content)?;
        let explicit = ci_parts
            .iter()
            .find(|t| t.tag == 0xa0)
            .ok_or("ContentInfo has no [0] content")?;
        let sd = ber::der_element(explicit.content)?;
        if sd.tag != 0x30 {
            return Err("SignedData is not a SEQUENCE".into());
        }
        let parts = ber::der_elements(sd.content)?;
        let mut certificates = Vec::new();
        let mut certificate_set = Vec::new();
        let mut signer_infos = None;
        for part in &parts {
            match part.tag {
                0x31 if ber::der_elements(part.content)?.len() > MAX_SET_ITEMS => {
                    return Err("too many digest algorithms or signers".into())
                }
                0xa0 => {
                    let certs = ber::der_elements(part.content)?;
                    if certs.len() > MAX_SET_ITEMS {
                        return Err(format!(
                            "{} certificates; at most {MAX_SET_ITEMS} accepted",
                            certs.len()
                        ));
                    }
                    // Other CertificateChoices (attribute certificates...) are skipped.
                    certificates.extend(certs.iter().filter(|c| c.tag == 0x30).map(|c| c.whole.to_vec()));
                    certificate_set.extend(certs.iter().map(|c| c.whole.to_vec()));
                }
                _ => {}
            }
            if part.tag == 0x31 {
                signer_infos = Some(part.content);
            }
        }
        let signer_infos = ber::der_elements(signer_infos.ok_or("SignedData has no SignerInfos")?)?;
        let signed_attrs = match signer_infos.as_slice() {
            [one] => {
                let fields = ber::der_elements(one.content)?;
                match fields.iter().find(|f| f.tag == 0xa0) {
                    Some(attrs) => {
                        if ber::der_elements(attrs.content)?.len() > MAX_SET_ITEMS {
                            return Err("too many signed attributes".into());
                        }
                        // RFC 5652 5.4: the signature covers the EXPLICIT SET OF encoding.
                        let mut set = attrs.whole.to_vec();
                        set[0] = 0x31;
                        Some(set)
                    }
                    None => None,
                }
            }
            [] => return Err("no signer (SignerInfos is empty)".into()),
            many => return Err(format!("{} signers; exactly one is supported", many.len())),
        };
        let without_certificates = (parts.len() > 3
            && parts[3].tag == 0xa0
            && parts.iter().filter(|p| p.tag == 0xa0).count() == 1)
            .then(|| {
                // Slices, not bytes: a byte-wise collect showed in the profile.
                let mut kept = Vec::with_capacity(sd.content.len());
                for part in parts.iter().filter(|p| p.tag != 0xa0) {
                    kept.extend_from_slice(part.whole);
                }
                let mut sequence = vec![0x30];
                ber::push_der_length(&mut sequence, kept.len());
                sequence.extend_from_slice(&kept);
                sequence
            });
        Ok(RawParts {
            certificates,
            certificate_set,
            without_certificates,
            signed_attrs,
        })
    }
}

/// Decodes the elements of a `[0] certificates` SET as cms would
/// (CertificateChoices each, no duplicates), returning the X.509 ones in order.
fn decode_certificate_set(set: &[Vec<u8>]) -> Result<Vec<Certificate>, der::Error> {
    let mut out = Vec::new();
    for (i, element) in set.iter().enumerate() {
        if set[..i].contains(element) {
            return Err(der::ErrorKind::SetDuplicate.into());
        }
        match element.first() {
            Some(0x30) => out.push(Certificate::from_der(element)?),
            _ => {
                cms::cert::CertificateChoices::from_der(element)?;
            }
        }
    }
    Ok(out)
}

impl SignedData {
    /// The encapsulated content: the signed document.
    pub fn content(&self) -> &[u8] {
        &self.content
    }

    /// The eContentType OID, dotted (`1.2.840.113549.1.7.1` for id-data).
    pub fn content_type(&self) -> String {
        self.content_type.to_string()
    }

    /// The certificates the PKCS#7 carries, as their original DER.
    pub fn certificates(&self) -> &[Vec<u8>] {
        &self.certificates
    }

    /// How the signer names its certificate.
    pub fn signer_id(&self) -> &SignerId {
        &self.signer_id
    }

    /// Whether the SignerInfo has signed attributes (AWS: yes; Azure: no).
    pub fn has_signed_attributes(&self) -> bool {
        self.signed_attrs_der.is_some()
    }

    /// The signingTime signed attribute, in Unix seconds, if present and well formed.
    pub fn signing_time(&self) -> Option<i64> {
        let value = self.single_attribute(ID_SIGNING_TIME).ok()??;
        let time = x509_cert::time::Time::from_der(&value.to_der().ok()?).ok()?;
        Some(crate::time::x509_unix(&time))
    }

    /// Whether `cert_der` is the certificate the signer names (issuer and
    /// serial, or subjectKeyIdentifier). False for undecodable certificates.
    pub fn signer_matches(&self, cert_der: &[u8]) -> bool {
        Certificate::from_der(cert_der).is_ok_and(|cert| self.signer_matches_decoded(&cert))
    }

    /// The certificates the PKCS#7 carries, decoded, in the order of
    /// [`SignedData::certificates`]: for [`crate::certificate::Cert::from_certificate`], without a second decode.
    pub fn decoded_certificates(&self) -> &[Certificate] {
        &self.decoded
    }

    /// [`SignedData::signer_matches`] for a certificate already decoded.
    pub fn signer_matches_decoded(&self, cert: &Certificate) -> bool {
        let tbs = &cert.tbs_certificate;
        match &self.signer_id {
            SignerId::IssuerAndSerial { issuer, serial } => {
                tbs.issuer == *issuer && tbs.serial_number.as_bytes() == serial.as_slice()
            }
            SignerId::SubjectKeyId(ski) => tbs.extensions.iter().flatten().any(|ext| {
                ext.extn_id == ID_SUBJECT_KEY_ID
                    && OctetString::from_der(ext.extn_value.as_bytes()).is_ok_and(|v| v.as_bytes() == ski.as_slice())
            }),
        }
    }

    /// The signer's certificate: the first match among the embedded
    /// certificates, then among `extra` (e.g. operator-configured ones).
    pub fn find_signer_certificate<'a>(&'a self, extra: &'a [Vec<u8>]) -> Option<&'a [u8]> {
        self.certificates
            .iter()
            .chain(extra)
            .find(|c| self.signer_matches(c))
            .map(|c| c.as_slice())
    }

    /// Verifies the signer's signature with the public key `spki_der` (a DER
    /// SubjectPublicKeyInfo). With signed attributes: their messageDigest must
    /// equal the content's digest, a contentType attribute must match the
    /// eContentType, and the signature covers the attributes' DER; without: the
    /// signature covers the content. `allow_rsa1024` admits 1024-bit RSA keys
    /// (SHA-256 only). Certificates are not checked here.
    pub fn verify_signer(&self, crypto: &dyn Crypto, spki_der: &[u8], allow_rsa1024: bool) -> Result<(), VerifyError> {
        let digest = self.digest_algorithm()?;
        let algorithm = self.signature_algorithm(digest, allow_rsa1024)?;
        let message: &[u8] = match &self.signed_attrs_der {
            Some(attrs) => {
                let md = self
                    .single_attribute(ID_MESSAGE_DIGEST)?
                    .ok_or_else(|| malformed("signed attributes lack messageDigest"))?;
                let md = OctetString::from_der(&md.to_der().map_err(malformed)?)
                    .map_err(|e| malformed(format!("messageDigest: {e}")))?;
                if md.as_bytes() != crypto.digest(digest, &self.content).as_slice() {
                    return Err(VerifyError::BadSignature(
                        "PKCS#7 content does not match the signed messageDigest".into(),
                    ));
                }
                if let Some(ct) = self.single_attribute(ID_CONTENT_TYPE)? {
                    let ct: ObjectIdentifier = ct.decode_as().map_err(|e| malformed(format!("contentType: {e}")))?;
                    if ct != self.content_type {
                        return Err(VerifyError::BadSignature(format!(
                            "signed contentType {ct} differs from the eContentType {}",
                            self.content_type
                        )));
                    }
                }
                attrs
            }
            None => &self.content,
        };
        match crypto.verify_signature(algorithm, spki_der, message, &self.signature) {
            Ok(true) => Ok(()),
            Ok(false) => Err(VerifyError::BadSignature(
                "PKCS#7 signature does not verify with the signer's key".into(),
            )),
            Err(e) => Err(VerifyError::UntrustedSigner(format!(
                "the signer's key cannot check the PKCS#7 signature: {e}"
            ))),
        }
    }

    /// The one value of signed attribute `oid`; an error if it appears twice or
    /// has other than one value (RFC 5652 5.3).
    fn single_attribute(&self, oid: ObjectIdentifier) -> Result<Option<&der::Any>, VerifyError> {
        let mut found = self.signed_attrs.iter().filter(|a| a.oid == oid);
        let Some(attr) = found.next() else {
            return Ok(None);
        };
        if found.next().is_some() || attr.values.len() != 1 {
            return Err(malformed(format!(
                "signed attribute {oid} must occur once with one value"
            )));
        }
        Ok(attr.values.get(0))
    }

    fn digest_algorithm(&self) -> Result<DigestAlgorithm, VerifyError> {
        Ok(match self.digest_alg {
            SHA1 => DigestAlgorithm::Sha1,
            SHA256 => DigestAlgorithm::Sha256,
            SHA384 => DigestAlgorithm::Sha384,
            SHA512 => DigestAlgorithm::Sha512,
            // Azure names the signature algorithm in the digest field; it means SHA-256.
            SHA256_WITH_RSA => DigestAlgorithm::Sha256,
            other => return Err(malformed(format!("unsupported digest algorithm {other}"))),
        })
    }

    fn signature_algorithm(
        &self,
        digest: DigestAlgorithm,
        allow_rsa1024: bool,
    ) -> Result<SignatureAlgorithm, VerifyError> {
        use DigestAlgorithm as D;
        use SignatureAlgorithm as S;
        let rsa = |d: D| match d {
            D::Sha1 => S::RsaPkcs1Sha1,
            D::Sha256 if allow_rsa1024 => S::Rsa1024Pkcs1Sha256,
            D::Sha256 => S::RsaPkcs1Sha256,
            D::Sha384 => S::RsaPkcs1Sha384,
            D::Sha512 => S::RsaPkcs1Sha512,
        };
        // A hash named by the signature algorithm must agree with the digest algorithm.
        let named = match self.signature_alg {
            RSA_ENCRYPTION => return Ok(rsa(digest)),
            SHA1_WITH_RSA => (D::Sha1, rsa(D::Sha1)),
            SHA256_WITH_RSA => (D::Sha256, rsa(D::Sha256)),
            SHA384_WITH_RSA => (D::Sha384, rsa(D::Sha384)),
            SHA512_WITH_RSA => (D::Sha512, rsa(D::Sha512)),
            ID_DSA | DSA_WITH_SHA1 => (D::Sha1, S::DsaSha1),
            ECDSA_WITH_SHA256 => (D::Sha256, S::EcdsaP256Sha256),
            ECDSA_WITH_SHA384 => (D::Sha384, S::EcdsaP384Sha384),
            other => return Err(malformed(format!("unsupported signature algorithm {other}"))),
        };
        if named.0 != digest {
            return Err(malformed(format!(
                "signature algorithm {} does not fit digest {digest:?}",
                self.signature_alg
            )));
        }
        Ok(named.1)
    }
}

#[cfg(test)]
mod tests;
