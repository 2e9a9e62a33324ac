//! The genuine AWS (RSA-2048, DSA) and Azure PKCS#7 vectors, checked with a
//! test-only native [`Crypto`].

use super::*;
use crate::{encoding, pem};

use crate::test_crypto::TestCrypto;

fn data(rel: &str) -> String {
    let path = format!("{}/../../tests/data/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn spki_of(cert_der: &[u8]) -> Vec<u8> {
    let cert = Certificate::from_der(cert_der).unwrap();
    cert.tbs_certificate.subject_public_key_info.to_der().unwrap()
}

/// (PKCS#7 bytes, signer certificate DER) of each genuine vector.
fn aws_rsa2048() -> (Vec<u8>, Vec<u8>) {
    let p7 = encoding::base64_decode(&data("aws/apse2_2026_rsa2048.b64")).unwrap();
    let cert = pem::decode_one(&data("aws/aws_rsa2048_ap-southeast-2.pem"), "CERTIFICATE").unwrap();
    (p7, cert)
}

fn aws_dsa() -> (Vec<u8>, Vec<u8>) {
    let p7 = pem::decode_one(&data("aws/vault_fullsailor_ec2_dsa_pkcs7.pem"), "PKCS7").unwrap();
    let cert = pem::decode_one(&data("aws/aws_dsa_pkcs7_signer_cert.pem"), "CERTIFICATE").unwrap();
    (p7, cert)
}

fn azure() -> (Vec<u8>, Vec<u8>) {
    let p7 = encoding::base64_decode(&data("azure/coder_regular_attested.b64")).unwrap();
    let sd = parse(&p7).unwrap();
    let leaf = sd.find_signer_certificate(&[]).expect("Azure embeds its leaf").to_vec();
    (p7, leaf)
}

#[test]
fn aws_rsa2048_verifies() {
    let (p7, cert) = aws_rsa2048();
    let sd = parse(&p7).unwrap();
    assert_eq!(sd.content(), data("aws/apse2_2026_document.json").as_bytes());
    assert!(sd.has_signed_attributes());
    assert!(sd.certificates().is_empty());
    assert!(sd.signer_matches(&cert));
    assert_eq!(sd.signing_time(), crate::time::parse_rfc3339("2026-02-16T00:38:28Z"));
    sd.verify_signer(&TestCrypto, &spki_of(&cert), false).unwrap();
}

#[test]
fn aws_dsa_verifies() {
    let (p7, cert) = aws_dsa();
    let sd = parse(&p7).unwrap();
    assert_eq!(sd.content().len(), 422);
    assert!(std::str::from_utf8(sd.content()).unwrap().contains("i-f79fe56c"));
    assert!(sd.signer_matches(&cert));
    sd.verify_signer(&TestCrypto, &spki_of(&cert), false).unwrap();
}

#[test]
fn azure_verifies_without_signed_attributes() {
    let (p7, leaf) = azure();
    let sd = parse(&p7).unwrap();
    assert!(!sd.has_signed_attributes());
    assert_eq!(sd.content().len(), 306);
    assert!(std::str::from_utf8(sd.content())
        .unwrap()
        .contains("bd8e7443-24a0-41f3-b949-8baf4fd1c573"));
    assert_eq!(sd.content_type(), "1.2.840.113549.1.7.1");
    sd.verify_signer(&TestCrypto, &spki_of(&leaf), false).unwrap();
}

#[test]
fn der_input_is_unchanged_and_ber_is_idempotent() {
    let (azure, _) = azure();
    assert_eq!(ber::to_der(&azure).unwrap(), azure);
    for (p7, _) in [aws_rsa2048(), aws_dsa()] {
        let der = ber::to_der(&p7).unwrap();
        assert_eq!(der.len(), p7.len() - 4);
        assert_eq!(ber::to_der(&der).unwrap(), der);
    }
}

#[test]
fn wrong_key_is_bad_signature() {
    let (p7, _) = azure();
    let (_, aws_cert) = aws_rsa2048();
    let err = parse(&p7)
        .unwrap()
        .verify_signer(&TestCrypto, &spki_of(&aws_cert), false);
    assert!(matches!(err, Err(VerifyError::BadSignature(_))), "{err:?}");
}

/// Finds `needle` in `haystack`.
fn position(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn altered_content_fails() {
    for ((mut p7, cert), marker) in [
        (aws_rsa2048(), &b"i-0c5541936caf78c12"[..]),
        (aws_dsa(), b"i-f79fe56c"),
        (azure(), b"bd8e7443"),
    ] {
        let at = position(&p7, marker);
        p7[at + 2] ^= 0x01;
        let sd = parse(&p7).unwrap();
        let err = sd.verify_signer(&TestCrypto, &spki_of(&cert), false);
        assert!(matches!(err, Err(VerifyError::BadSignature(_))), "{err:?}");
    }
}

#[test]
fn altered_signature_fails() {
    for (p7, cert) in [aws_rsa2048(), aws_dsa(), azure()] {
        let sd = parse(&p7).unwrap();
        let mut tampered = p7.clone();
        let at = position(&tampered, &sd.signature[..16]);
        tampered[at + 5] ^= 0x80;
        let sd = parse(&tampered).unwrap();
        let err = sd.verify_signer(&TestCrypto, &spki_of(&cert), false);
        assert!(matches!(err, Err(VerifyError::BadSignature(_))), "{err:?}");
    }
}

#[test]
fn altered_signed_attributes_fail() {
    let (p7, cert) = aws_rsa2048();
    let mut tampered = p7.clone();
    // The signingTime's year digits (UTCTime "26...").
    let at = position(&tampered, b"260216");
    tampered[at + 1] = b'7';
    let sd = parse(&tampered).unwrap();
    let err = sd.verify_signer(&TestCrypto, &spki_of(&cert), false);
    assert!(matches!(err, Err(VerifyError::BadSignature(_))), "{err:?}");
}

#[test]
fn empty_and_garbage_are_malformed() {
    for bad in [&b""[..], b"\x30\x00", b"\x30\x03\x06\x01\x00", b"not asn.1 at all"] {
        assert!(matches!(parse(bad), Err(VerifyError::Malformed(_))));
    }
}

/// Truncations, byte flips and noise on every vector: errors, never panics.
#[test]
fn total_on_mangled_input() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (p7, cert) in [aws_rsa2048(), aws_dsa(), azure()] {
        let spki = spki_of(&cert);
        for len in 0..p7.len() {
            assert!(parse(&p7[..len]).is_err(), "prefix of {len} bytes parsed");
        }
        for i in (0..p7.len()).step_by(3) {
            let mut m = p7.clone();
            m[i] ^= 1 << (next() % 8);
            if let Ok(sd) = parse(&m) {
                let _ = sd.verify_signer(&TestCrypto, &spki, true);
                let _ = sd.signing_time();
                let _ = sd.find_signer_certificate(std::slice::from_ref(&cert));
            }
            let _ = ber::to_der(&m);
        }
        for _ in 0..300 {
            let mut m = p7.clone();
            let at = (next() as usize) % m.len();
            let len = (next() as usize) % 8;
            let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            m.splice(at..(at + len).min(m.len()), noise);
            let _ = parse(&m).map(|sd| sd.verify_signer(&TestCrypto, &spki, false));
        }
    }
}

/// Whether cms decodes the whole SignedData, certificates included (what
/// `parse` did before it split the certificates off).
fn cms_decodes_whole(p7: &[u8]) -> bool {
    let Ok(der) = ber::to_der(p7) else {
        return false;
    };
    cms::content_info::ContentInfo::from_der(&der)
        .is_ok_and(|info| info.content.decode_as::<cms::signed_data::SignedData>().is_ok())
}

/// The certificates come back decoded in their order, and decoding them apart
/// from the rest accepts nothing that cms's whole decode refuses.
#[test]
fn certificates_decoded_apart_as_cms_would() {
    for (p7, _) in [aws_rsa2048(), aws_dsa(), azure()] {
        let sd = parse(&p7).unwrap();
        assert_eq!(sd.decoded_certificates().len(), sd.certificates().len());
        for (x509, der) in sd.decoded_certificates().iter().zip(sd.certificates()) {
            assert_eq!(&x509.to_der().unwrap(), der);
            assert!(crate::certificate::Cert::from_certificate(der, x509).is_ok());
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..p7.len() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = p7.clone();
            m[i] ^= 1 << (seed % 8);
            if parse(&m).is_ok() {
                assert!(cms_decodes_whole(&m), "flip at {i} accepted apart, refused whole");
            }
        }
    }
    let (p7, leaf) = azure();
    let sd = parse(&p7).unwrap();
    assert!(sd.signer_matches_decoded(&sd.decoded_certificates()[0]));
    assert_eq!(sd.certificates()[0], leaf);
}
