//! Native unit tests of the whole verifier on the genuine vectors, with a
//! test-only `Crypto` (the kit's `test_crypto`) in place of the host's.

use idgate_plugin_kit::test_crypto::TestCrypto;
use idgate_plugin_kit::{Provider, VerifyError};
use serde_json::json;

use crate::Aws;

const CODER_DOC: &str = include_str!("../../../tests/data/aws/coder_iid_document.json");
const CODER_SIG: &str = include_str!("../../../tests/data/aws/coder_iid_signature.b64");
const APSE2_DOC: &str = include_str!("../../../tests/data/aws/apse2_2026_document.json");
const APSE2_SIG: &str = include_str!("../../../tests/data/aws/apse2_2026_signature.b64");
const APSE2_P7: &str = include_str!("../../../tests/data/aws/apse2_2026_rsa2048.b64");
const DSA_P7: &str = include_str!("../../../tests/data/aws/vault_fullsailor_ec2_dsa_pkcs7.pem");
const NOW: i64 = 1_780_000_000;

/// Verifies with the default configuration, prepared once as the host does.
fn verify(credential: serde_json::Value) -> Result<idgate_plugin_kit::Identity, VerifyError> {
    static DEFAULTS: std::sync::OnceLock<crate::config::Config> = std::sync::OnceLock::new();
    let config = DEFAULTS.get_or_init(|| Aws::configure("{}").expect("defaults"));
    Aws::verify(&TestCrypto, config, &credential.to_string(), NOW)
}

#[test]
fn genuine_vectors() {
    let id = verify(json!({"document": CODER_DOC, "signature": CODER_SIG})).unwrap();
    assert_eq!(id.instance_id, "i-076e9b91f7c420782");
    assert_eq!(id.attribute("credential"), Some("signature"));

    let id = verify(json!({"document": APSE2_DOC, "signature": APSE2_SIG})).unwrap();
    assert_eq!(id.instance_id, "i-0c5541936caf78c12");

    for cred in [
        json!({"pkcs7": APSE2_P7}),
        json!({"pkcs7": APSE2_P7, "document": APSE2_DOC}),
    ] {
        let id = verify(cred).unwrap();
        assert_eq!(id.instance_id, "i-0c5541936caf78c12");
        assert_eq!(id.attribute("region"), Some("ap-southeast-2"));
        assert_eq!(id.attribute("credential"), Some("rsa2048"));
    }
    let both = verify(json!({"pkcs7": APSE2_P7, "document": APSE2_DOC, "signature": APSE2_SIG})).unwrap();
    assert_eq!(both.attribute("credential"), Some("signature+rsa2048"));

    let bare: String = DSA_P7.lines().filter(|l| !l.starts_with("-----")).collect();
    for p7 in [DSA_P7, &bare] {
        let id = verify(json!({"pkcs7": p7})).unwrap();
        assert_eq!(id.instance_id, "i-f79fe56c");
        assert_eq!(id.attribute("accountId"), Some("121659014334"));
        assert_eq!(id.attribute("credential"), Some("dsa"));
    }
}

#[test]
fn tampering() {
    let err = |cred| verify(cred).unwrap_err();
    assert!(matches!(
        err(json!({"document": CODER_DOC.replacen('6', "7", 1), "signature": CODER_SIG})),
        VerifyError::BadSignature(_)
    ));
    assert!(matches!(
        err(json!({"pkcs7": APSE2_P7, "document": CODER_DOC})),
        VerifyError::BadSignature(_)
    ));
    assert!(matches!(
        err(json!({"pkcs7": APSE2_P7, "document": format!("{APSE2_DOC}\n")})),
        VerifyError::BadSignature(_)
    ));
    // A valid PKCS#7 with a signature of another document: both must hold.
    assert!(matches!(
        err(json!({"pkcs7": APSE2_P7, "signature": CODER_SIG})),
        VerifyError::BadSignature(_)
    ));
    // The rsa2048 PKCS#7 under a region whose certificates are other keys.
    let af = crate::trust::certificate_pem(crate::trust::Table::Rsa2048, "af-south-1").unwrap();
    let config = json!({"certificates": {"ap-southeast-2": af}}).to_string();
    assert!(matches!(
        Aws::configure_and_verify(&TestCrypto, &json!({"pkcs7": APSE2_P7}).to_string(), &config, NOW),
        Err(VerifyError::BadSignature(_))
    ));
}

#[test]
fn altered_pkcs7_content_fails() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut der = idgate_plugin_kit::encoding::base64_decode(APSE2_P7).unwrap();
    let at = der.windows(10).position(|w| w == b"instanceId").unwrap();
    der[at + 20] ^= 1;
    let e = verify(json!({"pkcs7": b64.encode(&der)})).unwrap_err();
    assert!(matches!(e, VerifyError::BadSignature(_)), "{e:?}");
}

#[test]
fn garbage_never_panics() {
    let p7 = idgate_plugin_kit::encoding::base64_decode(APSE2_P7).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    for cut in [0, 1, 2, 10, 100, 500, p7.len() - 1] {
        assert!(verify(json!({"pkcs7": b64.encode(&p7[..cut])})).is_err());
    }
    for cred in [
        "",
        "null",
        "[]",
        "{}",
        r#"{"pkcs7": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}"#,
        r#"{"pkcs7": "-----BEGIN PKCS7-----\nAAAA"}"#,
        r#"{"pkcs7": "!!"}"#,
        r#"{"pkcs7": 3}"#,
    ] {
        assert!(
            matches!(
                Aws::configure_and_verify(&TestCrypto, cred, "{}", NOW),
                Err(VerifyError::Malformed(_))
            ),
            "{cred}"
        );
    }
}

#[test]
fn configured_certificates_replace_built_in_ones_by_key_type() {
    let with_config = |cred: serde_json::Value, config: serde_json::Value| {
        Aws::configure_and_verify(&TestCrypto, &cred.to_string(), &config.to_string(), NOW)
    };
    // A DSA-only entry: the legacy PKCS#7 uses it, the signature form keeps the built-in RSA key.
    let dsa_only = json!({"certificates": {"us-east-1": crate::trust::DSA}});
    assert_eq!(
        with_config(json!({"pkcs7": DSA_P7}), dsa_only.clone())
            .unwrap()
            .instance_id,
        "i-f79fe56c"
    );
    assert!(with_config(json!({"document": CODER_DOC, "signature": CODER_SIG}), dsa_only).is_ok());
    // An RSA-only entry of another key: the signature form fails, the DSA form keeps working.
    let af = crate::trust::certificate_pem(crate::trust::Table::Rsa1024, "af-south-1").unwrap();
    let rsa_only = json!({"certificates": {"us-east-1": af}});
    assert!(matches!(
        with_config(json!({"document": CODER_DOC, "signature": CODER_SIG}), rsa_only.clone()),
        Err(VerifyError::BadSignature(_))
    ));
    assert!(with_config(json!({"pkcs7": DSA_P7}), rsa_only).is_ok());
    // Several certificates in one entry: any of them may verify.
    let east = crate::trust::certificate_pem(crate::trust::Table::Rsa1024, "us-east-1").unwrap();
    let both = json!({"certificates": {"us-east-1": format!("{af}\n{east}\n")}});
    assert!(with_config(json!({"document": CODER_DOC, "signature": CODER_SIG}), both).is_ok());
    // The rsa2048 PKCS#7 of a region whose entry holds only its RSA-1024 certificate.
    let apse2 = crate::trust::certificate_pem(crate::trust::Table::Rsa1024, "ap-southeast-2").unwrap();
    let config = json!({"certificates": {"ap-southeast-2": apse2}});
    assert!(with_config(json!({"pkcs7": APSE2_P7}), config.clone()).is_err());
    assert!(with_config(json!({"document": APSE2_DOC, "signature": APSE2_SIG}), config).is_ok());
}

#[test]
fn every_truncation_and_byte_flip_of_the_pkcs7_vectors_is_a_clean_error() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dsa_bare: String = DSA_P7.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut accepted = 0;
    for vector in [APSE2_P7, &dsa_bare] {
        let der = idgate_plugin_kit::encoding::base64_decode(vector).unwrap();
        let genuine = verify(json!({"pkcs7": vector})).unwrap();
        for cut in 0..der.len() {
            assert!(verify(json!({"pkcs7": b64.encode(&der[..cut])})).is_err(), "cut {cut}");
        }
        for at in 0..der.len() {
            let mut bad = der.clone();
            bad[at] ^= 0xff;
            // A flip may land in bytes nothing signs: the signer's issuer name (a
            // hint; the key that verifies is what is trusted) and algorithm
            // parameters. None may panic, and none may change the identity.
            if let Ok(id) = verify(json!({"pkcs7": b64.encode(&bad)})) {
                assert_eq!(id, genuine, "flip at {at}");
                accepted += 1;
            }
        }
    }
    // The issuer names (~90 B each) and parameter bytes, nothing more.
    assert!(accepted < 200, "{accepted} flips accepted");
}
