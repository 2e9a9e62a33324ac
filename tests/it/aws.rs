//! The AWS plugin through the real sandbox: genuine IMDS vectors, tampering,
//! and keys made here for region selection, allow-lists and freshness.

use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use der::{Decode, Encode};
use idgate::sandbox::CallError;
use idgate_plugin_kit::{Identity, VerifyError};
use idgate_tests::{read_data, sandbox};
use rsa::pkcs8::EncodePublicKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{json, Value};
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::EncodePem;

const NOW: i64 = 1_780_000_000; // 2026-05-28T20:26:40Z

fn verify(credential: Value, config: Value) -> Result<Identity, CallError> {
    sandbox().verify_configuring("aws", &credential.to_string(), &config.to_string(), None, NOW)
}

fn rejected(result: Result<Identity, CallError>) -> VerifyError {
    match result {
        Err(CallError::Rejected(e)) => e,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn is_bad_signature(result: Result<Identity, CallError>) -> bool {
    matches!(rejected(result), VerifyError::BadSignature(_))
}

fn coder_vector() -> (String, String) {
    (
        read_data("aws/coder_iid_document.json"),
        read_data("aws/coder_iid_signature.b64"),
    )
}

fn apse2_vector() -> (String, String, String) {
    (
        read_data("aws/apse2_2026_document.json"),
        read_data("aws/apse2_2026_signature.b64"),
        read_data("aws/apse2_2026_rsa2048.b64"),
    )
}

fn dsa_pem() -> String {
    read_data("aws/vault_fullsailor_ec2_dsa_pkcs7.pem")
}

/// One region's certificate from a SPIRE table in tests/data.
fn table_cert(file: &str, region: &str) -> String {
    let table = read_data(&format!("aws/spire_region_certs/{file}"));
    let start = table.find(&format!("# region={region} ")).unwrap();
    let pem = &table[start..];
    let end = pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    pem[pem.find("-----BEGIN").unwrap()..end].to_string()
}

#[test]
fn genuine_coder_document_and_signature() {
    let (document, signature) = coder_vector();
    let id = verify(json!({"document": document, "signature": signature}), json!({})).unwrap();
    assert_eq!(id.instance_id, "i-076e9b91f7c420782");
    assert_eq!(id.attribute("region"), Some("us-east-1"));
    assert_eq!(id.attribute("accountId"), Some("628783029487"));
    assert_eq!(id.attribute("availabilityZone"), Some("us-east-1b"));
    assert_eq!(id.attribute("pendingTime"), Some("2022-03-25T20:07:16Z"));
    assert_eq!(id.attribute("credential"), Some("signature"));
}

#[test]
fn genuine_apse2_2026_signature() {
    let (document, signature, _) = apse2_vector();
    let id = verify(json!({"document": document, "signature": signature}), json!({})).unwrap();
    assert_eq!(id.instance_id, "i-0c5541936caf78c12");
    assert_eq!(id.attribute("region"), Some("ap-southeast-2"));
    assert_eq!(id.attribute("accountId"), Some("189292791360"));
    assert_eq!(id.attribute("pendingTime"), Some("2026-02-16T00:38:27Z"));
    assert_eq!(id.attribute("credential"), Some("signature"));
}

#[test]
fn genuine_apse2_2026_rsa2048_pkcs7_with_and_without_the_document() {
    let (document, signature, pkcs7) = apse2_vector();
    for cred in [json!({"pkcs7": pkcs7}), json!({"pkcs7": pkcs7, "document": document})] {
        let id = verify(cred, json!({})).unwrap();
        assert_eq!(id.instance_id, "i-0c5541936caf78c12");
        assert_eq!(id.attribute("region"), Some("ap-southeast-2"));
        assert_eq!(id.attribute("accountId"), Some("189292791360"));
        assert_eq!(id.attribute("credential"), Some("rsa2048"));
    }
    // Both forms at once: both are checked.
    let id = verify(
        json!({"pkcs7": pkcs7, "document": document, "signature": signature}),
        json!({}),
    )
    .unwrap();
    assert_eq!(id.attribute("credential"), Some("signature+rsa2048"));
    let (_, coder_signature) = coder_vector();
    assert!(is_bad_signature(verify(
        json!({"pkcs7": pkcs7, "document": document, "signature": coder_signature}),
        json!({})
    )));
}

#[test]
fn genuine_legacy_dsa_pkcs7_armoured_or_bare() {
    let pem = dsa_pem();
    let bare: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    for pkcs7 in [pem.clone(), bare] {
        let id = verify(json!({"pkcs7": pkcs7}), json!({})).unwrap();
        assert_eq!(id.instance_id, "i-f79fe56c");
        assert_eq!(id.attribute("region"), Some("us-east-1"));
        assert_eq!(id.attribute("accountId"), Some("121659014334"));
        assert_eq!(id.attribute("pendingTime"), Some("2016-04-08T03:01:38Z"));
        assert_eq!(id.attribute("credential"), Some("dsa"));
    }
}

#[test]
fn a_changed_document_under_a_genuine_signature_fails() {
    let (document, signature) = coder_vector();
    let forged = document.replace("i-076e9b91f7c420782", "i-076e9b91f7c420783");
    assert!(is_bad_signature(verify(
        json!({"document": forged, "signature": signature}),
        json!({})
    )));
    // A whitespace change is a different document.
    let spaced = document.replacen(" : ", ": ", 1);
    assert!(is_bad_signature(verify(
        json!({"document": spaced, "signature": signature}),
        json!({})
    )));
    // Coder's own negative case (`FailBad`), the real signature over `{}`: a bad
    // signature (401), as in Coder; no key is tried for a document naming no region.
    assert!(is_bad_signature(verify(
        json!({"document": "{}", "signature": signature}),
        json!({})
    )));
    // Whatever the tampering broke, the signature is what fails.
    for tampered in [
        "not json".to_string(),
        document.replace("\"instanceId\" : \"i-076e9b91f7c420782\"", "\"instanceId\" : 5"),
        document.replace("}", "} trailing"),
        document[..document.len() - 5].to_string(),
    ] {
        assert!(
            is_bad_signature(verify(json!({"document": tampered, "signature": signature}), json!({}))),
            "{tampered}"
        );
    }
    let minimal = json!({"instanceId": "i-076e9b91f7c420782", "region": "us-east-1"}).to_string();
    assert!(is_bad_signature(verify(
        json!({"document": minimal, "signature": signature}),
        json!({})
    )));
}

#[test]
fn a_genuine_pkcs7_with_a_different_document_fails() {
    let (apse2_document, _, pkcs7) = apse2_vector();
    let (coder_document, _) = coder_vector();
    for document in [
        coder_document.clone(),
        format!("{apse2_document}\n"),
        apse2_document.replacen('1', "2", 1),
    ] {
        let result = verify(json!({"pkcs7": pkcs7, "document": document}), json!({}));
        assert!(matches!(rejected(result), VerifyError::BadSignature(m) if m.contains("differs")));
    }
    assert!(is_bad_signature(verify(
        json!({"pkcs7": dsa_pem(), "document": coder_document}),
        json!({})
    )));
}

#[test]
fn a_pkcs7_with_an_altered_content_byte_fails() {
    let (_, _, pkcs7) = apse2_vector();
    let bare: String = dsa_pem().lines().filter(|l| !l.starts_with("-----")).collect();
    for b64 in [pkcs7, bare] {
        let mut der = STANDARD.decode(b64.trim().replace(['\n', '\r'], "")).unwrap();
        let at = der.windows(12).position(|w| w == b"\"instanceId\"").unwrap();
        // Inside the ID's value: the content still parses, only the digest differs.
        der[at + 20] ^= 0x01;
        let result = verify(json!({"pkcs7": STANDARD.encode(&der)}), json!({}));
        assert!(matches!(rejected(result), VerifyError::BadSignature(m) if m.contains("messageDigest")));
    }
}

#[test]
fn a_distinct_key_region_certificate_does_not_verify() {
    // af-south-1 has its own keys; make them ap-southeast-2's.
    let (document, signature, pkcs7) = apse2_vector();
    let config = json!({"certificates": {"ap-southeast-2": table_cert("aws_rsa1024_region_certs.pem", "af-south-1")}});
    assert!(is_bad_signature(verify(
        json!({"document": document, "signature": signature}),
        config.clone()
    )));
    let config = json!({"certificates": {"ap-southeast-2": table_cert("aws_rsa2048_region_certs.pem", "af-south-1")}});
    assert!(is_bad_signature(verify(json!({"pkcs7": pkcs7}), config)));
    // The shared RSA-1024 key: us-east-1's certificate verifies ap-southeast-2's document.
    let config = json!({"certificates": {"ap-southeast-2": table_cert("aws_rsa1024_region_certs.pem", "us-east-1")}});
    assert!(verify(json!({"document": document, "signature": signature}), config).is_ok());
}

#[test]
fn a_configured_rsa_certificate_leaves_the_built_in_dsa_one() {
    let config = json!({"certificates": {"us-east-1": table_cert("aws_rsa1024_region_certs.pem", "af-south-1")}});
    let (document, signature) = coder_vector();
    assert!(is_bad_signature(verify(
        json!({"document": document, "signature": signature}),
        config.clone()
    )));
    assert_eq!(
        verify(json!({"pkcs7": dsa_pem()}), config).unwrap().instance_id,
        "i-f79fe56c"
    );
}

#[test]
fn garbage_is_a_clear_error_not_a_trap() {
    let (document, signature) = coder_vector();
    let (_, _, pkcs7) = apse2_vector();
    let cases = [
        json!({}),
        json!({"agent_name": "dev"}),
        json!({"document": document}),
        json!({"signature": signature}),
        json!({"document": document, "signature": "not base64 !!"}),
        json!({"document": document, "signature": &signature[..40]}),
        json!({"document": document, "signature": &signature[..41]}),
        json!({"document": document, "signature": ""}),
        json!({"document": "not json", "signature": signature}),
        json!({"document": "[\"i-1\", \"us-east-1\"]", "signature": signature}),
        json!({"document": "{\"instanceId\":\"i-1\"}", "signature": signature}),
        json!({"document": "{\"instanceId\":\"\",\"region\":\"us-east-1\"}", "signature": signature}),
        json!({"document": document, "signature": 5}),
        json!({"pkcs7": "not base64 !!"}),
        json!({"pkcs7": &pkcs7[..100]}),
        json!({"pkcs7": &pkcs7[..pkcs7.trim().len() - 8]}),
        json!({"pkcs7": STANDARD.encode(b"garbage bytes")}),
        json!({"pkcs7": "-----BEGIN PKCS7-----\nAAAA\n"}),
        json!({"pkcs7": table_cert("aws_rsa2048_region_certs.pem", "us-east-1")}),
        json!([1, 2]),
        json!("string"),
    ];
    for case in cases {
        let e = rejected(verify(case.clone(), json!({})));
        assert!(
            matches!(e, VerifyError::Malformed(_) | VerifyError::BadSignature(_)),
            "{case}: {e:?}"
        );
    }
    // An empty credential names what is missing.
    assert!(matches!(
        rejected(verify(json!({}), json!({}))),
        VerifyError::Malformed(m) if m.contains("signature") && m.contains("pkcs7")
    ));
}

#[test]
fn huge_inputs_are_refused_cleanly() {
    let (_, signature) = coder_vector();
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20));
    assert!(matches!(
        rejected(verify(json!({"document": huge, "signature": signature}), json!({}))),
        VerifyError::Malformed(m) if m.contains("larger")
    ));
    let huge_doc = format!("{{\"pad\":\"{}\"}}", "x".repeat(100 << 10));
    assert!(matches!(
        rejected(verify(json!({"document": huge_doc, "signature": signature}), json!({}))),
        VerifyError::Malformed(m) if m.contains("larger")
    ));
    assert!(matches!(
        rejected(verify(json!({"pkcs7": "A".repeat(100 << 10)}), json!({}))),
        VerifyError::Malformed(m) if m.contains("larger")
    ));
}

#[test]
fn unknown_region_and_bad_config_are_named() {
    let (document, signature) = coder_vector();
    let moved = document.replace("\"us-east-1\"", "\"mars-north-1\"");
    match rejected(verify(json!({"document": moved, "signature": signature}), json!({}))) {
        VerifyError::UntrustedSigner(m) => assert!(m.contains("mars-north-1"), "{m}"),
        other => panic!("{other:?}"),
    }
    for config in [
        json!({"alowed_accounts": []}),
        json!({"certificates": {"us-east-1": "not a pem"}}),
        json!({"certificates": {"us-east-1": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}}),
        json!({"max_age_secs": -5}),
        json!({"allowed_regions": "us-east-1"}),
        json!([]),
    ] {
        assert!(
            matches!(
                rejected(verify(
                    json!({"document": document, "signature": signature}),
                    config.clone()
                )),
                VerifyError::BadConfig(_)
            ),
            "{config}"
        );
    }
}

/// A key made here and a self-signed certificate for it, valid only in 2000:
/// the plugin must use the key and ignore the dates.
struct TestSigner {
    key: rsa::RsaPrivateKey,
    cert: x509_cert::Certificate,
    cert_pem: String,
}

impl TestSigner {
    fn new(bits: usize) -> TestSigner {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits).unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
        let spki_der = key.to_public_key().to_public_key_der().unwrap();
        let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).unwrap();
        let validity = x509_cert::time::Validity {
            not_before: x509_cert::time::Time::UtcTime(
                der::asn1::UtcTime::from_unix_duration(Duration::from_secs(946_684_800)).unwrap(),
            ),
            not_after: x509_cert::time::Time::UtcTime(
                der::asn1::UtcTime::from_unix_duration(Duration::from_secs(978_307_200)).unwrap(),
            ),
        };
        let cert = CertificateBuilder::new(
            Profile::Root,
            x509_cert::serial_number::SerialNumber::from(rand::random::<u32>()),
            validity,
            x509_cert::name::Name::from_str("CN=ec2.test,O=idgate tests").unwrap(),
            spki,
            &signer,
        )
        .unwrap()
        .build::<rsa::pkcs1v15::Signature>()
        .unwrap();
        let cert_pem = cert.to_pem(LineEnding::LF).unwrap();
        TestSigner { key, cert, cert_pem }
    }

    /// The IMDS `/signature` form.
    fn sign(&self, document: &str) -> String {
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(self.key.clone());
        STANDARD.encode(signer.sign(document.as_bytes()).to_vec())
    }

    /// The IMDS `/rsa2048` form: SignedData, SHA-256, signed attributes, the
    /// document as content, no certificates inside.
    fn pkcs7(&self, document: &str) -> String {
        use cms::builder::{SignedDataBuilder, SignerInfoBuilder};
        use cms::signed_data::{EncapsulatedContentInfo, SignerIdentifier};
        let sha256 = x509_cert::spki::AlgorithmIdentifierOwned {
            oid: der::oid::ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1"),
            parameters: None,
        };
        let content = EncapsulatedContentInfo {
            econtent_type: der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1"),
            econtent: Some(der::Any::new(der::Tag::OctetString, document.as_bytes()).unwrap()),
        };
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(self.key.clone());
        let sid = SignerIdentifier::IssuerAndSerialNumber(cms::cert::IssuerAndSerialNumber {
            issuer: self.cert.tbs_certificate.issuer.clone(),
            serial_number: self.cert.tbs_certificate.serial_number.clone(),
        });
        let info = SignerInfoBuilder::new(&signer, sid, sha256.clone(), &content, None).unwrap();
        let signed = SignedDataBuilder::new(&content)
            .add_digest_algorithm(sha256)
            .unwrap()
            .add_signer_info::<_, rsa::pkcs1v15::Signature>(info)
            .unwrap()
            .build()
            .unwrap();
        STANDARD.encode(signed.to_der().unwrap())
    }
}

fn test_document(region: &str, account: &str, pending: &str) -> String {
    json!({
        "accountId": account, "availabilityZone": format!("{region}a"), "instanceId": format!("i-0{region}"),
        "pendingTime": pending, "region": region, "version": "2017-09-30",
    })
    .to_string()
}

fn with(mut base: Value, extra: Value) -> Value {
    base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    base
}

#[test]
fn test_made_keys_region_selection_allow_lists_and_max_age() {
    let a = TestSigner::new(2048);
    let b = TestSigner::new(2048);
    let certs = json!({"certificates": {"eu-test-1": a.cert_pem, "eu-test-2": b.cert_pem}});
    let config = |extra: Value| with(certs.clone(), extra);
    let doc = test_document("eu-test-1", "111122223333", "2026-05-27T00:00:00Z");
    let cred = json!({"document": doc, "signature": a.sign(&doc)});

    let id = verify(cred.clone(), config(json!({}))).unwrap();
    assert_eq!(id.instance_id, "i-0eu-test-1");
    assert_eq!(id.attribute("region"), Some("eu-test-1"));
    assert_eq!(id.attribute("accountId"), Some("111122223333"));
    assert_eq!(id.attribute("credential"), Some("signature"));

    // Region selection: the region's own key, not any configured key.
    let doc2 = test_document("eu-test-2", "111122223333", "2026-05-27T00:00:00Z");
    assert!(verify(json!({"document": doc2, "signature": b.sign(&doc2)}), config(json!({}))).is_ok());
    assert!(is_bad_signature(verify(
        json!({"document": doc2, "signature": a.sign(&doc2)}),
        config(json!({}))
    )));
    // Without the configured certificate, the region is unknown.
    match rejected(verify(cred.clone(), json!({}))) {
        VerifyError::UntrustedSigner(m) => assert!(m.contains("eu-test-1"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A document claiming a built-in region is checked against AWS's key.
    let doc_east = test_document("us-east-1", "111122223333", "2026-05-27T00:00:00Z");
    assert!(is_bad_signature(verify(
        json!({"document": doc_east, "signature": a.sign(&doc_east)}),
        config(json!({}))
    )));
    // ...unless the operator overrides that region.
    let east = json!({"certificates": {"us-east-1": a.cert_pem}});
    assert!(verify(json!({"document": doc_east, "signature": a.sign(&doc_east)}), east).is_ok());

    // Allow-lists: 403-class refusals, distinct from bad signatures.
    assert!(verify(cred.clone(), config(json!({"allowed_accounts": ["111122223333"]}))).is_ok());
    assert!(matches!(
        rejected(verify(cred.clone(), config(json!({"allowed_accounts": ["999999999999"]})))),
        VerifyError::Refused(m) if m.contains("111122223333")
    ));
    assert!(verify(
        cred.clone(),
        config(json!({"allowed_regions": ["eu-test-1", "us-east-1"]}))
    )
    .is_ok());
    assert!(matches!(
        rejected(verify(cred.clone(), config(json!({"allowed_regions": ["us-east-1"]})))),
        VerifyError::Refused(m) if m.contains("eu-test-1")
    ));
    assert!(verify(
        cred.clone(),
        config(json!({"allowed_regions": [], "allowed_accounts": [], "max_age_secs": 0}))
    )
    .is_ok());

    // Freshness on pendingTime (2026-05-27T00:00Z; NOW is 2026-05-28T20:26Z).
    assert!(verify(cred.clone(), config(json!({"max_age_secs": 3 * 86_400}))).is_ok());
    assert!(matches!(
        rejected(verify(cred.clone(), config(json!({"max_age_secs": 3600})))),
        VerifyError::Expired(_)
    ));
    // Refusals come after the signature: a forged document is a bad signature.
    let forged = json!({"document": doc.replace("1111", "9999"), "signature": a.sign(&doc)});
    assert!(is_bad_signature(verify(
        forged,
        config(json!({"allowed_accounts": ["1"]}))
    )));
}

#[test]
fn test_made_rsa2048_pkcs7_and_a_1024_bit_configured_key() {
    let signer = TestSigner::new(2048);
    let config = json!({"certificates": {"eu-test-1": signer.cert_pem}});
    let doc = test_document("eu-test-1", "111122223333", "2026-05-27T00:00:00Z");
    let pkcs7 = signer.pkcs7(&doc);
    let id = verify(json!({"pkcs7": pkcs7, "document": doc}), config.clone()).unwrap();
    assert_eq!(id.instance_id, "i-0eu-test-1");
    assert_eq!(id.attribute("credential"), Some("rsa2048"));
    let both = json!({"pkcs7": pkcs7, "signature": signer.sign(&doc)});
    assert_eq!(
        verify(both, config.clone()).unwrap().attribute("credential"),
        Some("signature+rsa2048")
    );
    // The PKCS#7 of another region's key, and the content checked against the document.
    let other = TestSigner::new(2048);
    assert!(is_bad_signature(verify(
        json!({"pkcs7": other.pkcs7(&doc)}),
        config.clone()
    )));
    let doc_b = test_document("eu-test-1", "444455556666", "2026-05-27T00:00:00Z");
    assert!(is_bad_signature(verify(
        json!({"pkcs7": pkcs7, "document": doc_b}),
        config.clone()
    )));
    // Policy applies to the PKCS#7 forms too.
    assert!(matches!(
        rejected(verify(
            json!({"pkcs7": pkcs7}),
            with(config, json!({"allowed_accounts": ["1"]}))
        )),
        VerifyError::Refused(_)
    ));

    // A configured 1024-bit key serves the signature form (AWS's size).
    let small = TestSigner::new(1024);
    let config = json!({"certificates": {"eu-test-1": small.cert_pem}});
    let id = verify(json!({"document": doc, "signature": small.sign(&doc)}), config).unwrap();
    assert_eq!(id.instance_id, "i-0eu-test-1");
}

#[test]
fn the_built_in_table_covers_the_three_partitions() {
    use idgate_plugin_aws::trust::{certificate_pem, check_builtin, key_of, regions, KeyKind, Table};
    let (rsa1024, rsa2048) = check_builtin().unwrap();
    // 38 RSA-1024 certificates + cn-north-1 (which shares cn-northwest-1's); 39 RSA-2048.
    assert_eq!((rsa1024, rsa2048), (39, 39));
    for (table, bits) in [(Table::Rsa1024, 1024), (Table::Rsa2048, 2048)] {
        let listed = regions(table);
        for region in &listed {
            let key = key_of(certificate_pem(table, region).unwrap(), "built-in").unwrap();
            assert_eq!(key.kind, KeyKind::Rsa { bits }, "{table:?} {region}");
        }
        for region in [
            "us-east-1",
            "us-west-2",
            "eu-west-1",
            "ap-southeast-2",
            "cn-north-1",
            "cn-northwest-1",
            "us-gov-east-1",
            "us-gov-west-1",
            "eusc-de-east-1",
        ] {
            assert!(listed.iter().any(|r| r == region), "{table:?} lacks {region}");
        }
    }
    // The built-in certificates match the vectors' ones.
    for (table, file, region) in [
        (Table::Rsa1024, "aws/aws_rsa_ap-southeast-2.pem", "ap-southeast-2"),
        (Table::Rsa2048, "aws/aws_rsa2048_ap-southeast-2.pem", "ap-southeast-2"),
        (
            Table::Rsa1024,
            "aws/aws_rsa1024_ec2_amazonaws_com_default.pem",
            "us-east-1",
        ),
    ] {
        let built_in = key_of(certificate_pem(table, region).unwrap(), "").unwrap();
        let vector = key_of(&read_data(file), "").unwrap();
        assert_eq!(built_in.spki_der, vector.spki_der, "{file}");
    }
}
