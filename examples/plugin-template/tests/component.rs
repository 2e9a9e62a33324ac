//! The component as idgate runs it: built with `cargo build --release --target
//! wasm32-wasip2`, loaded into idgate's real sandbox by `idgate_sandbox::harness`,
//! configured with a provider block, then given credentials made here with
//! test keys, at a fixed verification time.

use std::path::PathBuf;
use std::sync::OnceLock;

use idgate_plugin_kit::encoding::base64_encode;
use idgate_plugin_kit::jwk::ec_p256_spki_der;
use idgate_plugin_kit::time::format_rfc3339;
use idgate_sandbox::harness::{build_component, expect_rejected, Harness};
use idgate_sandbox::sandbox::Configured;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};

/// The verification time the tests pass: 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600;

/// The component, built once per test run (cargo skips an up-to-date build).
fn wasm() -> &'static PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| build_component(env!("CARGO_MANIFEST_DIR").as_ref()).expect("building the component"))
}

/// A test signing key from a fixed secret (test keys only: never do this for real ones).
fn key(secret: u8) -> SigningKey {
    SigningKey::from_slice(&[secret; 32]).unwrap()
}

/// The key's public half as the operator configures it: PEM SubjectPublicKeyInfo.
fn public_pem(key: &SigningKey) -> String {
    let point = key.verifying_key().to_encoded_point(false);
    let der = ec_p256_spki_der(point.x().unwrap(), point.y().unwrap()).unwrap();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64_encode(&der)
    )
}

/// The component loaded and configured with key `2026-a` (and `regions: ["eu-1"]`).
fn acme() -> (Harness, Configured) {
    let harness = Harness::load(wasm()).unwrap();
    assert_eq!(harness.provider(), "acme");
    let block = json!({"keys": {"2026-a": public_pem(&key(1))}, "regions": ["eu-1"]});
    let configured = harness.configure(&block).unwrap();
    (harness, configured)
}

/// A document valid from `issued` to `expires`, in region `eu-1`.
fn document(issued: i64, expires: i64) -> Value {
    json!({"instance_id": "i-0acme", "region": "eu-1",
           "issued_at": format_rfc3339(issued), "expires_at": format_rfc3339(expires)})
}

/// `document` signed by `signer`, naming `key_id`, as Acme's metadata service sends it.
fn credential(signer: &SigningKey, key_id: &str, document: &Value) -> String {
    let bytes = document.to_string();
    let signature: Signature = signer.sign(bytes.as_bytes());
    json!({"document": base64_encode(bytes.as_bytes()), "key_id": key_id,
           "signature": base64_encode(signature.to_der().as_bytes())})
    .to_string()
}

fn genuine() -> String {
    credential(&key(1), "2026-a", &document(NOW - 60, NOW + 540))
}

#[test]
fn a_genuine_credential_yields_its_instance_id() {
    let (harness, acme) = acme();
    let identity = harness.verify(&acme, &genuine(), NOW).unwrap();
    assert_eq!(identity.instance_id, "i-0acme");
    assert_eq!(identity.attribute("region"), Some("eu-1"));
    assert_eq!(identity.attribute("key_id"), Some("2026-a"));
}

#[test]
fn a_changed_document_or_another_keys_signature_is_a_bad_signature() {
    let (harness, acme) = acme();
    // The genuine signature over a document whose instance ID was changed.
    let mut forged: Value = serde_json::from_str(&genuine()).unwrap();
    let other = document(NOW - 60, NOW + 540).to_string().replace("i-0acme", "i-0evil");
    forged["document"] = base64_encode(other.as_bytes()).into();
    let refusal = expect_rejected(harness.verify(&acme, &forged.to_string(), NOW));
    assert_eq!(refusal.kind(), "bad-signature", "{refusal}");
    // A key the operator never configured, claiming to be `2026-a`.
    let impostor = credential(&key(2), "2026-a", &document(NOW - 60, NOW + 540));
    let refusal = expect_rejected(harness.verify(&acme, &impostor, NOW));
    assert_eq!(refusal.kind(), "bad-signature", "{refusal}");
    // A key ID the block does not name.
    let unknown = credential(&key(2), "2027-b", &document(NOW - 60, NOW + 540));
    let refusal = expect_rejected(harness.verify(&acme, &unknown, NOW));
    assert_eq!(refusal.kind(), "untrusted-signer", "{refusal}");
}

#[test]
fn an_expired_or_future_document_is_refused_and_the_skew_is_tolerated() {
    let (harness, acme) = acme();
    let expired = credential(&key(1), "2026-a", &document(NOW - 3600, NOW - 600));
    let refusal = expect_rejected(harness.verify(&acme, &expired, NOW));
    assert_eq!(refusal.kind(), "expired", "{refusal}");
    let future = credential(&key(1), "2026-a", &document(NOW + 600, NOW + 3600));
    let refusal = expect_rejected(harness.verify(&acme, &future, NOW));
    assert_eq!(refusal.kind(), "expired", "{refusal}");
    // Expired 30 s ago: within the default 60 s skew.
    let just = credential(&key(1), "2026-a", &document(NOW - 600, NOW - 30));
    assert_eq!(harness.verify(&acme, &just, NOW).unwrap().instance_id, "i-0acme");
}

#[test]
fn a_genuine_document_from_another_region_is_refused_by_policy() {
    let (harness, acme) = acme();
    let mut elsewhere = document(NOW - 60, NOW + 540);
    elsewhere["region"] = "us-2".into();
    let refusal = expect_rejected(harness.verify(&acme, &credential(&key(1), "2026-a", &elsewhere), NOW));
    assert_eq!(refusal.kind(), "refused", "{refusal}");
}

#[test]
fn a_credential_of_the_wrong_shape_is_malformed() {
    let (harness, acme) = acme();
    for bad in [
        "{}".to_string(),
        "[]".to_string(),
        json!({"document": "!!", "key_id": "2026-a", "signature": "AA=="}).to_string(),
        "x".repeat(20_000),
    ] {
        let refusal = expect_rejected(harness.verify(&acme, &bad, NOW));
        assert_eq!(refusal.kind(), "malformed", "{refusal}");
    }
}

#[test]
fn keys_rotate_by_id() {
    let harness = Harness::load(wasm()).unwrap();
    let block = json!({"keys": {"2026-a": public_pem(&key(1)), "2026-b": public_pem(&key(2))}});
    let acme = harness.configure(&block).unwrap();
    for (signer, id) in [(key(1), "2026-a"), (key(2), "2026-b")] {
        let identity = harness
            .verify(&acme, &credential(&signer, id, &document(NOW - 60, NOW + 540)), NOW)
            .unwrap();
        assert_eq!(identity.attribute("key_id"), Some(id));
    }
}

#[test]
fn a_bad_configuration_is_refused_with_the_plugins_reason() {
    let harness = Harness::load(wasm()).unwrap();
    for (block, reason) in [
        // What idgate passes when the operator wrote no [acme] block.
        (json!({}), "keys is required"),
        (
            json!({"keys": {"k": "-----BEGIN PUBLIC KEY-----\nAQID\n-----END PUBLIC KEY-----"}}),
            "keys.k: not an ECDSA P-256",
        ),
        (
            json!({"keys": {"k": public_pem(&key(1))}, "skew_secs": 86400}),
            "skew_secs 86400",
        ),
        (
            json!({"keys": {"k": public_pem(&key(1))}, "region": ["eu-1"]}),
            "unknown field `region`",
        ),
    ] {
        let error = harness.configure(&block).expect_err("a refused block");
        let message = format!("{error:#}");
        assert!(message.contains(reason), "{block}: {message}");
    }
}
