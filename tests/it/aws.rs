//! The AWS plugin through the real sandbox: genuine IMDS vectors, tampering,
//! and keys made here for region selection, allow-lists and freshness.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use idgate::sandbox::CallError;
use idgate_plugin_kit::{Identity, VerifyError};
use idgate_tests::{read_data, sandbox};
use rsa::pkcs8::EncodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::json;

const NOW: i64 = 1_780_000_000; // 2026-05-28

fn verify(credential: serde_json::Value, config: serde_json::Value) -> Result<Identity, CallError> {
    sandbox().verify("aws", &credential.to_string(), &config.to_string(), NOW)
}

fn coder_vector() -> (String, String) {
    (
        read_data("aws/coder_iid_document.json"),
        read_data("aws/coder_iid_signature.b64"),
    )
}

fn rejected(result: Result<Identity, CallError>) -> VerifyError {
    match result {
        Err(CallError::Rejected(e)) => e,
        other => panic!("expected a rejection, got {other:?}"),
    }
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
fn genuine_apse2_2026_document_and_signature() {
    let document = read_data("aws/apse2_2026_document.json");
    let signature = read_data("aws/apse2_2026_signature.b64");
    let id = verify(json!({"document": document, "signature": signature}), json!({})).unwrap();
    assert_eq!(id.instance_id, "i-0c5541936caf78c12");
    assert_eq!(id.attribute("region"), Some("ap-southeast-2"));
    assert_eq!(id.attribute("accountId"), Some("189292791360"));
}

#[test]
fn a_changed_document_under_a_genuine_signature_fails() {
    let (document, signature) = coder_vector();
    let forged = document.replace("i-076e9b91f7c420782", "i-076e9b91f7c420783");
    assert!(matches!(
        rejected(verify(json!({"document": forged, "signature": signature}), json!({}))),
        VerifyError::BadSignature(_)
    ));
    // Coder's own negative case: the real signature over `{}` (no region: refused earlier).
    assert!(matches!(
        rejected(verify(json!({"document": "{}", "signature": signature}), json!({}))),
        VerifyError::Malformed(_)
    ));
    // A whitespace change is a different document.
    let spaced = document.replacen(" : ", ": ", 1);
    assert!(matches!(
        rejected(verify(json!({"document": spaced, "signature": signature}), json!({}))),
        VerifyError::BadSignature(_)
    ));
}

#[test]
fn a_distinct_key_region_certificate_does_not_verify() {
    // af-south-1 has its own key; override ap-southeast-2 with it.
    let table = read_data("aws/spire_region_certs/aws_rsa1024_region_certs.pem");
    let start = table.find("# region=af-south-1 ").unwrap();
    let pem = &table[start..];
    let pem = &pem[pem.find("-----BEGIN").unwrap()..pem.find("-----END CERTIFICATE-----").unwrap() + 25];
    let document = read_data("aws/apse2_2026_document.json");
    let signature = read_data("aws/apse2_2026_signature.b64");
    let config = json!({"certificates": {"ap-southeast-2": pem}});
    assert!(matches!(
        rejected(verify(json!({"document": document, "signature": signature}), config)),
        VerifyError::BadSignature(_)
    ));
}

#[test]
fn garbage_is_a_clear_error_not_a_trap() {
    let (document, signature) = coder_vector();
    let cases = [
        json!({}),
        json!({"document": document}),
        json!({"signature": signature}),
        json!({"document": document, "signature": "not base64 !!"}),
        json!({"document": document, "signature": &signature[..40]}),
        json!({"document": document, "signature": ""}),
        json!({"document": "not json", "signature": signature}),
        json!({"document": "{\"instanceId\":\"i-1\"}", "signature": signature}),
        json!({"document": document, "signature": 5}),
        json!([1, 2]),
    ];
    for case in cases {
        let e = rejected(verify(case.clone(), json!({})));
        assert!(
            matches!(e, VerifyError::Malformed(_) | VerifyError::BadSignature(_)),
            "{case}: {e:?}"
        );
    }
}

#[test]
fn a_huge_document_is_refused_cleanly() {
    let (_, signature) = coder_vector();
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20));
    assert!(matches!(
        rejected(verify(json!({"document": huge, "signature": signature}), json!({}))),
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
    assert!(matches!(
        rejected(verify(
            json!({"document": document, "signature": signature}),
            json!({"alowed_accounts": []})
        )),
        VerifyError::BadConfig(_)
    ));
    assert!(matches!(
        rejected(verify(
            json!({"document": document, "signature": signature}),
            json!({"certificates": {"us-east-1": "not a pem"}})
        )),
        VerifyError::BadConfig(_)
    ));
}

/// A key and self-signed certificate made here, configured for `region`.
struct TestSigner {
    key: rsa::RsaPrivateKey,
    cert_pem: String,
}

impl TestSigner {
    fn new() -> TestSigner {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let pkcs8 = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let key_pair = rcgen::KeyPair::from_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ec2.test".to_string()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        TestSigner {
            key,
            cert_pem: cert.pem(),
        }
    }

    fn sign(&self, document: &str) -> String {
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(self.key.clone());
        STANDARD.encode(signer.sign(document.as_bytes()).to_vec())
    }
}

fn test_document(region: &str, account: &str, pending: &str) -> String {
    json!({
        "accountId": account, "availabilityZone": format!("{region}a"), "instanceId": "i-0test",
        "pendingTime": pending, "region": region, "version": "2017-09-30",
    })
    .to_string()
}

#[test]
fn test_made_keys_region_selection_allow_lists_and_max_age() {
    let signer = TestSigner::new();
    let config = |extra: serde_json::Value| {
        let mut c = json!({"certificates": {"eu-test-1": signer.cert_pem}});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let doc = test_document("eu-test-1", "111122223333", "2026-05-27T00:00:00Z");
    let cred = json!({"document": doc, "signature": signer.sign(&doc)});

    let id = verify(cred.clone(), config(json!({}))).unwrap();
    assert_eq!(id.instance_id, "i-0test");
    // Without the configured certificate, the region is unknown.
    assert!(matches!(
        rejected(verify(cred.clone(), json!({}))),
        VerifyError::UntrustedSigner(_)
    ));
    // The same document claiming a built-in region is checked against AWS's key.
    let doc_east = test_document("us-east-1", "111122223333", "2026-05-27T00:00:00Z");
    assert!(matches!(
        rejected(verify(
            json!({"document": doc_east, "signature": signer.sign(&doc_east)}),
            json!({})
        )),
        VerifyError::BadSignature(_)
    ));

    // Allow-lists: 403-class refusals, distinct from bad signatures.
    assert!(verify(cred.clone(), config(json!({"allowed_accounts": ["111122223333"]}))).is_ok());
    assert!(matches!(
        rejected(verify(
            cred.clone(),
            config(json!({"allowed_accounts": ["999999999999"]}))
        )),
        VerifyError::Refused(_)
    ));
    assert!(verify(cred.clone(), config(json!({"allowed_regions": ["eu-test-1"]}))).is_ok());
    assert!(matches!(
        rejected(verify(cred.clone(), config(json!({"allowed_regions": ["us-east-1"]})))),
        VerifyError::Refused(_)
    ));

    // Freshness: pendingTime is 2026-05-27T00:00Z, NOW is 2026-05-28T20:26Z.
    assert!(verify(cred.clone(), config(json!({"max_age_secs": 3 * 86_400}))).is_ok());
    assert!(matches!(
        rejected(verify(cred, config(json!({"max_age_secs": 3600})))),
        VerifyError::Expired(_)
    ));
}

#[test]
fn the_built_in_table_covers_the_three_partitions() {
    use idgate_plugin_aws::trust::{certificate_pem, key_of, regions, Table};
    for table in [Table::Rsa1024, Table::Rsa2048] {
        let listed = regions(table);
        assert!(listed.len() >= 39, "{table:?} lists {}", listed.len());
        for region in &listed {
            let key = key_of(certificate_pem(table, region).unwrap(), "built-in").unwrap();
            assert!(key.bits >= 1024, "{region}");
        }
        for region in [
            "us-east-1",
            "eu-west-1",
            "cn-north-1",
            "cn-northwest-1",
            "us-gov-east-1",
            "us-gov-west-1",
        ] {
            assert!(listed.iter().any(|r| r == region), "{table:?} lacks {region}");
        }
    }
}
