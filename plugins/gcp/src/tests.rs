//! Native unit tests with the genuine vector and the kit's test-only `Crypto`.

use idgate_plugin_kit::test_crypto::TestCrypto;
use idgate_plugin_kit::{Provider, VerifyError};

use crate::Gcp;

const TOKEN: &str = include_str!("../../../tests/data/gcp/infisical_gce_full_2024.jwt");
const JWK: &str = include_str!("../../../tests/data/gcp/google_jwk_a3b762f8.json");
const AUD: &str = "71d1b279-2fe3-4828-85f5-2f4a2fdb02a1";
const NOW: i64 = 1_715_963_400;

fn credential(token: &str) -> String {
    serde_json::json!({ "json_web_token": token.trim() }).to_string()
}

fn config(audience: &str) -> String {
    let jwks: serde_json::Value = serde_json::from_str(JWK).unwrap();
    serde_json::json!({ "audience": audience, "jwks": jwks }).to_string()
}

#[test]
fn genuine_token_verifies() {
    let id = Gcp::configure_and_verify(&TestCrypto, &credential(TOKEN), &config(AUD), NOW).unwrap();
    assert_eq!(id.instance_id, "8418160715288427941");
    assert_eq!(id.attribute("project_id"), Some("infisical-dev"));
    assert_eq!(id.attribute("zone"), Some("us-central1-a"));
    assert_eq!(id.attribute("instance_name"), Some("test-instance"));
    assert_eq!(
        id.attribute("email"),
        Some("test-user@infisical-dev.iam.gserviceaccount.com")
    );
}

#[test]
fn genuine_token_refused_when_expired_or_for_another_audience() {
    let expired = Gcp::configure_and_verify(&TestCrypto, &credential(TOKEN), &config(AUD), 1_780_000_000);
    assert!(matches!(expired, Err(VerifyError::Expired(_))), "{expired:?}");
    let wrong_aud = Gcp::configure_and_verify(&TestCrypto, &credential(TOKEN), &config("coder"), NOW);
    match wrong_aud {
        Err(VerifyError::UntrustedSigner(m)) => assert!(m.contains(AUD) && m.contains("coder"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tampered_signature_refused() {
    let token = TOKEN.trim();
    let mut bytes = token.as_bytes().to_vec();
    let last = bytes.len() - 5;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let r = Gcp::configure_and_verify(&TestCrypto, &credential(&tampered), &config(AUD), NOW);
    assert!(matches!(r, Err(VerifyError::BadSignature(_))), "{r:?}");
}

#[test]
fn allow_lists() {
    let jwks: serde_json::Value = serde_json::from_str(JWK).unwrap();
    let with = |extra: serde_json::Value| {
        let mut c = serde_json::json!({ "audience": AUD, "jwks": jwks });
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Gcp::configure_and_verify(&TestCrypto, &credential(TOKEN), &c.to_string(), NOW)
    };
    assert!(
        with(serde_json::json!({"allowed_projects": ["infisical-dev"], "allowed_zones": ["us-central1-a"]})).is_ok()
    );
    assert!(matches!(
        with(serde_json::json!({"allowed_projects": ["other"]})),
        Err(VerifyError::Refused(_))
    ));
    assert!(matches!(
        with(serde_json::json!({"allowed_zones": ["europe-west1-b"]})),
        Err(VerifyError::Refused(_))
    ));
}

#[test]
fn garbage_never_panics() {
    let cfg = config(AUD);
    let inputs = [
        "",
        "{}",
        "[]",
        "null",
        r#"{"json_web_token": 5}"#,
        r#"{"json_web_token": ""}"#,
        r#"{"json_web_token": "a.b.c"}"#,
        r#"{"json_web_token": "..."}"#,
        r#"{"json_web_token": "a.b"}"#,
        r#"{"json_web_token": "e30.e30.e30"}"#,
        r#"{"json_web_token": "eyJhbGciOiJSUzI1NiJ9.e30.AA"}"#,
    ];
    for input in inputs {
        assert!(
            Gcp::configure_and_verify(&TestCrypto, input, &cfg, NOW).is_err(),
            "{input}"
        );
    }
    // Truncations of the genuine token.
    let token = TOKEN.trim();
    for cut in (0..token.len()).step_by(37) {
        assert!(Gcp::configure_and_verify(&TestCrypto, &credential(&token[..cut]), &cfg, NOW).is_err());
    }
}
