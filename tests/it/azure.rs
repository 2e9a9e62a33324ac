//! Azure: the genuine IMDS attested documents and test-made chains through the
//! real `azure` component in the real sandbox.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{OctetString, SetOfVec};
use der::oid::ObjectIdentifier;
use der::{Any, Decode, Encode, Tag};
use idgate::sandbox::CallError;
use idgate_plugin_kit::Identity;
use idgate_tests::refused;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::Digest;
use x509_cert::spki::AlgorithmIdentifierOwned;

/// Inside the regular document's window (createdOn 01:27:21Z, expiresOn 07:27:21Z).
const REGULAR_NOW: i64 = 1_650_337_200; // 2022-04-19T03:00:00Z
/// Inside the govcloud document's window (17:09:33Z to 23:09:33Z).
const GOV_NOW: i64 = 1_678_305_600; // 2023-03-08T20:00:00Z
/// Verification time for test-made chains.
const NOW: i64 = 1_750_000_000; // 2025-06-15T15:06:40Z

/// A genuine 2024 document (leaf under Microsoft Azure RSA TLS Issuing CA 08, DigiCert Global
/// Root G2), from coder/coder `coderd/azureidentity/azureidentity_test.go` (case "rsa"); checked
/// with `openssl cms -verify` and `openssl verify -attime` when added.
const RSA_2024_B64: &str = concat!(
    "MIILnwYJKoZIhvcNAQcCoIILkDCCC4wCAQExDzANBgkqhkiG9w0BAQsFADCCAUUGCSqGSIb3DQEHAaCCATYEggEyeyJsaWNlbnNl",
    "VHlwZSI6IiIsIm5vbmNlIjoiMjAyNDA0MjItMjMzMjQ1IiwicGxhbiI6eyJuYW1lIjoiIiwicHJvZHVjdCI6IiIsInB1Ymxpc2hl",
    "ciI6IiJ9LCJza3UiOiIyMF8wNC1sdHMtZ2VuMiIsInN1YnNjcmlwdGlvbklkIjoiMDVlOGIyODUtNGNlMS00NmEzLWI0YzktZjUx",
    "YmE2N2Q2YWNjIiwidGltZVN0YW1wIjp7ImNyZWF0ZWRPbiI6IjA0LzIyLzI0IDE3OjMyOjQ1IC0wMDAwIiwiZXhwaXJlc09uIjoi",
    "MDQvMjIvMjQgMjM6MzI6NDUgLTAwMDAifSwidm1JZCI6Ijk2MGE0YjRhLWRhYjItNDRlZi05YjczLTc3NTMwNDNiNGYxNiJ9oIII",
    "iDCCCIQwggZsoAMCAQICEzMAJtj/yBIW1kk+vsIAAAAm2P8wDQYJKoZIhvcNAQEMBQAwXTELMAkGA1UEBhMCVVMxHjAcBgNVBAoT",
    "FU1pY3Jvc29mdCBDb3Jwb3JhdGlvbjEuMCwGA1UEAxMlTWljcm9zb2Z0IEF6dXJlIFJTQSBUTFMgSXNzdWluZyBDQSAwODAeFw0y",
    "NDA0MTgwODM1MzdaFw0yNTA0MTMwODM1MzdaMGkxCzAJBgNVBAYTAlVTMQswCQYDVQQIEwJXQTEQMA4GA1UEBxMHUmVkbW9uZDEe",
    "MBwGA1UEChMVTWljcm9zb2Z0IENvcnBvcmF0aW9uMRswGQYDVQQDExJtZXRhZGF0YS5henVyZS5jb20wggEiMA0GCSqGSIb3DQEB",
    "AQUAA4IBDwAwggEKAoIBAQD0T031XgxaebNQjKFQZ4BudeN+wOEHQoFq/x+cKSXM8HJrC2pF8y/ngSsuCLGt72M+30KxdbPHl56k",
    "d52uwDw1ZBrQO6Xw+GorRbtM4YQi+gLr8t9x+GUfuOX7E+5juidXax7la5ZhpVVLb3f+8NyxbphvEdFadXcgyQga1pl4v1U8elkb",
    "X3PPtEQXzwYotU+RU/ZTwXMYqfvJuaKwc4T2s083kaL3DwAfVxL0f6ey/MXuNQb4+ho15y9/f9gwMyzMDLlYChmY6cGSS4tsyrG5",
    "SrybE3jl8LZ1ZLVJ2fAIxbmJzBn1q+Eu4G6TZlnMDEsjznf7gqnP+n/o7N6l0sY1AgMBAAGjggQvMIIEKzCCAX4GCisGAQQB1nkC",
    "BAIEggFuBIIBagFoAHYAzxFW7tUufK/zh1vZaS6b6RpxZ0qwF+ysAdJbd87MOwgAAAGO8GIJ/QAABAMARzBFAiEAvJQ2mDRow9TM",
    "vLddWpYqNXLiehSFsj2+xUqh8yP/B8YCIBJjVoELj3kdVr3ceAuZFte9FH6sBsgeMsIgfndho6hRAHUAfVkeEuF4KnscYWd8Xv34",
    "0IdcFKBOlZ65Ay/ZDowuebgAAAGO8GIK2AAABAMARjBEAiAxXD1R9yLASrpMh4ie0wn3AjCoSPniZ8virEVz8tKnkwIgWxGU9Djj",
    "Qk7gPWYVBsiXP9t1WPJ6mNJ1UkmAw8iDdFoAdwBVgdTCFpA2AUrqC5tXPFPwwOQ4eHAlCBcvo6odBxPTDAAAAY7wYgrtAAAEAwBI",
    "MEYCIQCaSjdXbUhrDyPNsRqewp5UdVYABGQAIgNwfKsq/JpbmAIhAPy5qQ6H2enXwuKsorEZTwIkKIoMgLsWs4anx9lXTJMeMCcG",
    "CSsGAQQBgjcVCgQaMBgwCgYIKwYBBQUHAwIwCgYIKwYBBQUHAwEwPAYJKwYBBAGCNxUHBC8wLQYlKwYBBAGCNxUIh73XG4Hn60aC",
    "gZ0ujtAMh/DaHV2ChOVpgvOnPgIBZAIBJjCBtAYIKwYBBQUHAQEEgacwgaQwcwYIKwYBBQUHMAKGZ2h0dHA6Ly93d3cubWljcm9z",
    "b2Z0LmNvbS9wa2lvcHMvY2VydHMvTWljcm9zb2Z0JTIwQXp1cmUlMjBSU0ElMjBUTFMlMjBJc3N1aW5nJTIwQ0ElMjAwOCUyMC0l",
    "MjB4c2lnbi5jcnQwLQYIKwYBBQUHMAGGIWh0dHA6Ly9vbmVvY3NwLm1pY3Jvc29mdC5jb20vb2NzcDAdBgNVHQ4EFgQUnqRq3WHO",
    "ZDoNmLD/arJg9RscxLowDgYDVR0PAQH/BAQDAgWgMDgGA1UdEQQxMC+CGWVhc3R1cy5tZXRhZGF0YS5henVyZS5jb22CEm1ldGFk",
    "YXRhLmF6dXJlLmNvbTAMBgNVHRMBAf8EAjAAMGoGA1UdHwRjMGEwX6BdoFuGWWh0dHA6Ly93d3cubWljcm9zb2Z0LmNvbS9wa2lv",
    "cHMvY3JsL01pY3Jvc29mdCUyMEF6dXJlJTIwUlNBJTIwVExTJTIwSXNzdWluZyUyMENBJTIwMDguY3JsMGYGA1UdIARfMF0wUQYM",
    "KwYBBAGCN0yDfQEBMEEwPwYIKwYBBQUHAgEWM2h0dHA6Ly93d3cubWljcm9zb2Z0LmNvbS9wa2lvcHMvRG9jcy9SZXBvc2l0b3J5",
    "Lmh0bTAIBgZngQwBAgIwHwYDVR0jBBgwFoAU9n4vvYCjSrJwW+vfmh/Y7cphgAcwHQYDVR0lBBYwFAYIKwYBBQUHAwIGCCsGAQUF",
    "BwMBMA0GCSqGSIb3DQEBDAUAA4ICAQB4FwyqZFVdmB9Hu+YUJOJrGUYRlXbnCmdXlLi5w2QRCf9RKIykGdv28dH1ezhXJUCj3jCV",
    "ZMav4GaSl0dPUcTetfnc/UrwsmbGRIMubbGjCz75FcNz/kXy7E/jPeyJrxsuO/ijyZNUSy0EQF3NuhTJw/SfAQtXv48NmVFDM2QM",
    "MhMRLDfOV4CPcialAFACFQTt6LMdG2hlB972Bffl+BVPkUKDLj89xQRd/cyWYweYfPCsNLYLDml98rY3v4yVKAvv+l7IOuKOzhlO",
    "e9U1oPJK7AP7GZzojKrisPQt4HlP4zEmeUzJtL6RqGdHac7/lUMVPOniE/L+5gBDBsN3nOGJ/QE+bBsmfdn4ewuLj6/LCd/JhCZF",
    "DeyTvtuX43JWIr9e0UOtENCG3Ub4SuUftf58+NuedCaNMZW2jqrFvQl+sCX+v1kkxxmRphU7B8TZP0SHaBDqeIqHPNWD7eyn/7+V",
    "TY54wrwF1v5S6b5zpL1tjZ55c9wpVBT6m77mNuR/2l7/VSh/qL2LgKVVo06q+Qz2c0pIjOI+7FobLRNtb7C8SqkdwuT1b0vnZslA",
    "8ZUEtwUm5RHcGu66sg/hb4lGNZbAklxGeAR3uQju0OQN/Lj4kXiii737dci0lIpIKA92hUKybLrYCyZDhp5I6is0gTdm4+rxVEY1",
    "K39R3cF3U5thuzGCAZ8wggGbAgEBMHQwXTELMAkGA1UEBhMCVVMxHjAcBgNVBAoTFU1pY3Jvc29mdCBDb3Jwb3JhdGlvbjEuMCwG",
    "A1UEAxMlTWljcm9zb2Z0IEF6dXJlIFJTQSBUTFMgSXNzdWluZyBDQSAwOAITMwAm2P/IEhbWST6+wgAAACbY/zANBgkqhkiG9w0B",
    "AQsFADANBgkqhkiG9w0BAQEFAASCAQDRukRXI01EvAoF0J+C1aYCmjwAtMlnQr5fBKod8T75FhM+mTJ2GApCyc5H8hn7IDl8ki8D",
    "dKfLjipnuEvjknZcVkfrzE72R9Pu+C2ffKfrSsJmsBHPMEKBPtlzhexCYiPamMGdVg8HqX6mhQkjjavk1SY+ewZvyEeuq+RSQIBV",
    "L1lw0UOWv+txDKlu9v69skb1DQ2HSet0sejEb48vqGeN4TMSoQFNeBOzHDkEeoqXxtZqsUhMtQzbwrpAFcUREB8DaCOXcv1DOmin",
    "JB3Q19bpuMQ/2+Fc3HJtTTWRV3+3b7VnQl/sUDzTjcWXvwjrLGKk3MSTcQ+1rJRlBzkOJ+aK",
);
const RSA_2024_NOW: i64 = 1_713_808_800; // 2024-04-22T18:00:00Z

const REGULAR_VM: &str = "bd8e7443-24a0-41f3-b949-8baf4fd1c573";
const GOV_VM: &str = "990878d4-068a-4ac4-9ee9-1231d2218ef2";

fn verify_b64(signature: &str, config: &Value, now: i64) -> Result<Identity, CallError> {
    let credential = json!({ "signature": signature, "encoding": "pkcs7" }).to_string();
    idgate_tests::sandbox().verify_configuring("azure", &credential, &config.to_string(), None, now)
}

pub(crate) fn verify_der(pkcs7: &[u8], config: &Value, now: i64) -> Result<Identity, CallError> {
    verify_b64(&STANDARD.encode(pkcs7), config, now)
}

fn genuine(name: &str) -> Vec<u8> {
    let text = idgate_tests::read_data(&format!("azure/coder_{name}_attested.b64"));
    STANDARD.decode(text.trim()).unwrap()
}

fn today() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------
// The genuine documents.

#[test]
fn genuine_regular_document_verifies_in_its_window() {
    let id = verify_der(&genuine("regular"), &json!({}), REGULAR_NOW).unwrap();
    assert_eq!(id.instance_id, REGULAR_VM);
    assert_eq!(
        id.attribute("subscriptionId"),
        Some("5f130ffc-0a3e-4795-b691-4f56a12a5547")
    );
    assert_eq!(id.attribute("nonce"), Some("20220419-072721"));
    assert_eq!(id.attribute("createdOn"), Some("2022-04-19T01:27:21Z"));
    assert_eq!(id.attribute("expiresOn"), Some("2022-04-19T07:27:21Z"));
    assert_eq!(id.attribute("signer"), Some("metadata.azure.com"));
}

#[test]
fn genuine_govcloud_document_verifies_in_its_window() {
    let id = verify_der(&genuine("govcloud"), &json!({}), GOV_NOW).unwrap();
    assert_eq!(id.instance_id, GOV_VM);
    assert_eq!(
        id.attribute("subscriptionId"),
        Some("0afbfffa-5df9-4a3b-987e-fe7577624272")
    );
    assert_eq!(id.attribute("nonce"), Some("20230308-230933"));
    assert_eq!(id.attribute("signer"), Some("metadata.azure.us"));
}

#[test]
fn genuine_2024_document_verifies_through_a_builtin_intermediate() {
    // The PKCS#7 carries only the leaf: CA 08 must come from the built-in list.
    let id = verify_b64(RSA_2024_B64, &json!({}), RSA_2024_NOW).unwrap();
    assert_eq!(id.instance_id, "960a4b4a-dab2-44ef-9b73-7753043b4f16");
    assert_eq!(
        id.attribute("subscriptionId"),
        Some("05e8b285-4ce1-46a3-b4c9-f51ba67d6acc")
    );
    assert_eq!(id.attribute("signer"), Some("metadata.azure.com"));
}

#[test]
fn genuine_documents_are_expired_today() {
    for name in ["regular", "govcloud"] {
        let why = refused(verify_der(&genuine(name), &json!({}), today()), "expired");
        assert!(why.contains("certificate") && why.contains("metadata.azure"), "{why}");
        // Turning off the expiresOn check does not bypass certificate validity.
        let why = refused(
            verify_der(&genuine(name), &json!({ "check_expires_on": false }), today()),
            "expired",
        );
        assert!(why.contains("certificate"), "{why}");
    }
}

#[test]
fn expires_on_is_enforced_unless_turned_off() {
    let next_day = REGULAR_NOW + 86_400; // after expiresOn, inside every certificate's validity
    let why = refused(verify_der(&genuine("regular"), &json!({}), next_day), "expired");
    assert!(why.contains("expiresOn"), "{why}");
    let id = verify_der(&genuine("regular"), &json!({ "check_expires_on": false }), next_day).unwrap();
    assert_eq!(id.instance_id, REGULAR_VM);
}

#[test]
fn forged_vm_id_is_a_bad_signature() {
    // GHSA-6x44-w3xg-hqqf: the genuine PKCS#7 with one vmId character changed,
    // certificate and signature untouched.
    let mut p7 = genuine("regular");
    let at = p7
        .windows(REGULAR_VM.len())
        .position(|w| w == REGULAR_VM.as_bytes())
        .unwrap();
    p7[at] = b'c';
    let why = refused(verify_der(&p7, &json!({}), REGULAR_NOW), "bad-signature");
    assert!(why.contains("signature"), "{why}");
}

#[test]
fn subscription_allow_list() {
    let allowed = json!({ "allowed_subscriptions": ["5f130ffc-0a3e-4795-b691-4f56a12a5547"] });
    assert!(verify_der(&genuine("regular"), &allowed, REGULAR_NOW).is_ok());
    let other = json!({ "allowed_subscriptions": ["00000000-0000-0000-0000-000000000000"] });
    refused(verify_der(&genuine("regular"), &other, REGULAR_NOW), "refused");
}

#[test]
fn bad_config_is_reported() {
    for config in [
        json!({ "rootz": "" }),
        json!({ "roots": "not pem" }),
        json!({ "check_expires_on": "yes" }),
    ] {
        refused(verify_der(&genuine("regular"), &config, REGULAR_NOW), "bad-config");
    }
}

// ---------------------------------------------------------------------------
// Malformed input.

#[test]
fn malformed_credentials_are_clear_errors() {
    let p7 = genuine("regular");
    for (signature, what) in [
        (STANDARD.encode(&p7[..p7.len() / 2]), "truncated DER"),
        (STANDARD.encode(&p7[..p7.len() - 1]), "one byte short"),
        ("%%%not base64%%%".to_string(), "wrong base64"),
        (String::new(), "empty"),
        (STANDARD.encode([0x30, 0x00]), "empty SEQUENCE"),
        (STANDARD.encode(b"{\"vmId\":\"x\"}"), "JSON instead of PKCS#7"),
    ] {
        let why = refused(verify_b64(&signature, &json!({}), REGULAR_NOW), "malformed");
        assert!(!why.is_empty(), "{what}");
    }
    for credential in ["", "[]", "{}", r#"{"signature": 5}"#] {
        let result = idgate_tests::sandbox().verify_configuring("azure", credential, "{}", None, REGULAR_NOW);
        refused(result, "malformed");
    }
}

#[test]
fn zero_or_two_signers_are_malformed() {
    let ca = TestCa::root("idgate test root");
    let leaf = ca.issue_leaf("metadata.azure.com", 2);
    let content = document(NOW);
    let one = leaf.signer_info(&content);
    let mut two = one.clone();
    two.signature = OctetString::new(vec![1, 2, 3]).unwrap();
    for (signers, what) in [(vec![], "no signer"), (vec![one, two], "2 signers")] {
        let p7 = pkcs7(&content, std::slice::from_ref(&leaf.der), signers);
        let why = refused(verify_der(&p7, &ca.roots_config(), NOW), "malformed");
        assert!(why.contains(what), "{why}");
    }
}

// ---------------------------------------------------------------------------
// Test-made chains.

#[test]
fn test_chain_needs_its_root_configured() {
    let ca = TestCa::root("idgate test root");
    let leaf = ca.issue_leaf("metadata.azure.com", 2);
    let content = document(NOW);
    let p7 = leaf.pkcs7(&content, &[]);
    let why = refused(verify_der(&p7, &json!({}), NOW), "untrusted-signer");
    assert!(why.contains("idgate test root"), "{why}");
    let id = verify_der(&p7, &ca.roots_config(), NOW).unwrap();
    assert_eq!(id.instance_id, "11111111-2222-3333-4444-555555555555");
    assert_eq!(id.attribute("signer"), Some("metadata.azure.com"));
}

#[test]
fn test_chain_content_forgery_is_a_bad_signature() {
    let ca = TestCa::root("idgate test root");
    let leaf = ca.issue_leaf("metadata.azure.com", 2);
    let signed = document(NOW);
    let forged = signed.replace("11111111", "99999999");
    // Signature over the genuine content, forged content carried.
    let p7 = pkcs7(
        forged.as_bytes(),
        std::slice::from_ref(&leaf.der),
        vec![leaf.signer_info(&signed)],
    );
    refused(verify_der(&p7, &ca.roots_config(), NOW), "bad-signature");
}

#[test]
fn non_imds_name_is_untrusted_even_with_trusted_root() {
    let ca = TestCa::root("idgate test root");
    let leaf = ca.issue_leaf("metadata.azure.com.evil.example", 2);
    let p7 = leaf.pkcs7(document(NOW), &[]);
    let why = refused(verify_der(&p7, &ca.roots_config(), NOW), "untrusted-signer");
    assert!(why.contains("not an Azure IMDS certificate"), "{why}");
}

#[test]
fn intermediates_from_the_pkcs7_or_config() {
    let root = TestCa::root("idgate test root");
    let inter = root.issue_ca("idgate test intermediate", 1, true);
    let leaf = inter.issue_leaf("eastus.metadata.azure.com", 2);
    let content = document(NOW);
    // Carried in the PKCS#7.
    let p7 = leaf.pkcs7(&content, std::slice::from_ref(&inter.der));
    assert!(verify_der(&p7, &root.roots_config(), NOW).is_ok());
    // Missing: the error names the missing issuer.
    let bare = leaf.pkcs7(&content, &[]);
    let why = refused(verify_der(&bare, &root.roots_config(), NOW), "untrusted-signer");
    assert!(why.contains("idgate test intermediate"), "{why}");
    // Configured.
    let config = json!({ "roots": root.pem, "intermediates": inter.pem });
    assert!(verify_der(&bare, &config, NOW).is_ok());
}

#[test]
fn non_ca_intermediate_is_rejected() {
    let root = TestCa::root("idgate test root");
    let not_ca = root.issue_ca("idgate test not-a-ca", 1, false);
    let leaf = not_ca.issue_leaf("metadata.azure.com", 2);
    let p7 = leaf.pkcs7(document(NOW), std::slice::from_ref(&not_ca.der));
    let why = refused(verify_der(&p7, &root.roots_config(), NOW), "untrusted-signer");
    assert!(why.contains("not a CA"), "{why}");
}

#[test]
fn expired_test_certificate_is_named() {
    let ca = TestCa::root("idgate test root");
    let leaf = ca.issue_leaf("metadata.azure.com", 2);
    let later = 2_300_000_000; // 2042: after the leaf's notAfter (2040)
    let p7 = leaf.pkcs7(document(later), &[]);
    let why = refused(verify_der(&p7, &ca.roots_config(), later), "expired");
    assert!(why.contains("'metadata.azure.com'"), "{why}");
}

#[test]
fn unknown_critical_extension_makes_a_certificate_unusable() {
    // RFC 5280 4.2: a critical extension the verifier does not understand.
    let root = TestCa::root("idgate test root");
    let key = rcgen_key(2);
    let name = "metadata.azure.com";
    let mut p = params(name, vec![name.to_string()], None);
    let mut ext = rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00]);
    ext.set_criticality(true);
    p.custom_extensions = vec![ext];
    let cert = p.signed_by(&key, &root.cert, &root.key).unwrap();
    let leaf = TestCa::new(cert, key, 2);
    let p7 = leaf.pkcs7(document(NOW), &[]);
    let why = refused(verify_der(&p7, &root.roots_config(), NOW), "untrusted-signer");
    assert!(
        why.contains("unsupported critical extension 1.3.6.1.4.1.55555.1"),
        "{why}"
    );
    // The same extension, not critical, is ignored.
    let key = rcgen_key(2);
    let mut p = params(name, vec![name.to_string()], None);
    p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 55555, 1],
        vec![0x05, 0x00],
    )];
    let cert = p.signed_by(&key, &root.cert, &root.key).unwrap();
    let leaf = TestCa::new(cert, key, 2);
    assert!(verify_der(&leaf.pkcs7(document(NOW), &[]), &root.roots_config(), NOW).is_ok());
}

// ---------------------------------------------------------------------------
// Path rules as Go's x509.Verify applies them (the review's two accepted
// forgeries first), and the cost cap on carried certificates.

/// A nameConstraints extension permitting or excluding DNS subtrees, not critical.
fn dns_name_constraints(permitted: &[&str], excluded: &[&str]) -> rcgen::CustomExtension {
    use x509_cert::ext::pkix::constraints::name::{GeneralSubtree, NameConstraints};
    use x509_cert::ext::pkix::name::GeneralName;
    let subtrees = |names: &[&str]| {
        (!names.is_empty()).then(|| {
            names
                .iter()
                .map(|n| GeneralSubtree {
                    base: GeneralName::DnsName(der::asn1::Ia5String::new(n).unwrap()),
                    minimum: 0,
                    maximum: None,
                })
                .collect::<Vec<_>>()
        })
    };
    let value = NameConstraints {
        permitted_subtrees: subtrees(permitted),
        excluded_subtrees: subtrees(excluded),
    }
    .to_der()
    .unwrap();
    rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 30], value)
}

/// root -> sub-CA (`extensions`) -> leaf `metadata.azure.com`, carried in the PKCS#7.
fn through_sub_ca(extensions: Vec<rcgen::CustomExtension>) -> (TestCa, Vec<u8>) {
    let root = TestCa::root("idgate test root");
    let key = rcgen_key(1);
    let mut p = params("idgate test sub-CA", vec![], Some(true));
    p.custom_extensions = extensions;
    let sub = TestCa::new(p.signed_by(&key, &root.cert, &root.key).unwrap(), key, 1);
    let leaf = sub.issue_leaf("metadata.azure.com", 2);
    let p7 = leaf.pkcs7(document(NOW), std::slice::from_ref(&sub.der));
    (root, p7)
}

#[test]
fn non_critical_name_constraints_refuse_an_azure_leaf() {
    // The review's forgery: accepted as VM 1111... before.
    let (root, p7) = through_sub_ca(vec![dns_name_constraints(&["example.com"], &[])]);
    let why = refused(verify_der(&p7, &root.roots_config(), NOW), "untrusted-signer");
    assert!(
        why.contains("name constraints") && why.contains("idgate test sub-CA"),
        "{why}"
    );
}

#[test]
fn excluded_subtree_refuses_an_azure_leaf() {
    let (root, p7) = through_sub_ca(vec![dns_name_constraints(&[], &["azure.com"])]);
    refused(verify_der(&p7, &root.roots_config(), NOW), "untrusted-signer");
    // A constraint the leaf's names satisfy changes nothing.
    let (root, p7) = through_sub_ca(vec![dns_name_constraints(&["azure.com"], &[])]);
    assert!(verify_der(&p7, &root.roots_config(), NOW).is_ok());
}

#[test]
fn code_signing_leaf_is_refused_and_no_eku_is_accepted() {
    let root = TestCa::root("idgate test root");
    let name = "metadata.azure.com";
    let issue = |purposes: Vec<rcgen::ExtendedKeyUsagePurpose>| {
        let key = rcgen_key(2);
        let mut p = params(name, vec![name.to_string()], None);
        p.extended_key_usages = purposes;
        TestCa::new(p.signed_by(&key, &root.cert, &root.key).unwrap(), key, 2)
    };
    // The review's second forgery: a leaf whose only EKU is codeSigning.
    let leaf = issue(vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning]);
    let why = refused(
        verify_der(&leaf.pkcs7(document(NOW), &[]), &root.roots_config(), NOW),
        "untrusted-signer",
    );
    assert!(why.contains("TLS server authentication"), "{why}");
    // No EKU at all is accepted, as Go does; serverAuth too.
    for purposes in [vec![], vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]] {
        let leaf = issue(purposes);
        assert!(verify_der(&leaf.pkcs7(document(NOW), &[]), &root.roots_config(), NOW).is_ok());
    }
}

#[test]
fn sub_ca_without_key_cert_sign_or_past_its_path_length_is_refused() {
    let root = TestCa::root("idgate test root");
    // keyUsage present without keyCertSign.
    let key = rcgen_key(1);
    let mut p = params("idgate test signing-only CA", vec![], Some(true));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let sub = TestCa::new(p.signed_by(&key, &root.cert, &root.key).unwrap(), key, 1);
    let leaf = sub.issue_leaf("metadata.azure.com", 2);
    let p7 = leaf.pkcs7(document(NOW), std::slice::from_ref(&sub.der));
    let why = refused(verify_der(&p7, &root.roots_config(), NOW), "untrusted-signer");
    assert!(why.contains("lacks keyCertSign"), "{why}");
    // A root allowing no intermediate, with one.
    let key = rcgen_key(0);
    let mut p = params("idgate test pathlen-0 root", vec![], Some(true));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let strict_root = TestCa::new(p.self_signed(&key).unwrap(), key, 0);
    let sub = strict_root.issue_ca("idgate test intermediate", 1, true);
    let leaf = sub.issue_leaf("metadata.azure.com", 2);
    let p7 = leaf.pkcs7(document(NOW), std::slice::from_ref(&sub.der));
    let why = refused(verify_der(&p7, &strict_root.roots_config(), NOW), "untrusted-signer");
    assert!(why.contains("allows 0 intermediates"), "{why}");
}

#[test]
fn expired_intermediate_is_refused() {
    let root = TestCa::root("idgate test root");
    let key = rcgen_key(1);
    let mut p = params("idgate test expired intermediate", vec![], Some(true));
    p.not_after = date_time_ymd(2024, 1, 1);
    let sub = TestCa::new(p.signed_by(&key, &root.cert, &root.key).unwrap(), key, 1);
    let leaf = sub.issue_leaf("metadata.azure.com", 2);
    let p7 = leaf.pkcs7(document(NOW), std::slice::from_ref(&sub.der));
    let why = refused(verify_der(&p7, &root.roots_config(), NOW), "expired");
    assert!(why.contains("'idgate test expired intermediate'"), "{why}");
}

#[test]
fn too_many_carried_certificates_are_refused_before_decoding() {
    let root = TestCa::root("idgate test root");
    let inter = root.issue_ca("idgate test intermediate", 1, true);
    let leaf = inter.issue_leaf("metadata.azure.com", 2);
    // Leaf, its intermediate, and fillers up to the cap: still verifies.
    let fillers: Vec<Vec<u8>> = (0..2)
        .map(|n| root.issue_ca(&format!("filler {n}"), 1, true).der)
        .collect();
    let mut carried = vec![inter.der.clone()];
    carried.extend(fillers.iter().cloned());
    assert!(verify_der(&leaf.pkcs7(document(NOW), &carried), &root.roots_config(), NOW).is_ok());
    // One more is refused, whatever it is: a fifth "certificate" that is not one
    // at all shows that none is decoded.
    let placeholder = root.issue_ca("placeholder", 1, true).der;
    carried.push(placeholder.clone());
    let p7 = not_a_certificate(leaf.pkcs7(document(NOW), &carried), &placeholder);
    let why = refused(verify_der(&p7, &root.roots_config(), NOW), "untrusted-signer");
    assert!(
        why.contains("carries 5 certificates") && why.contains("at most 4"),
        "{why}"
    );
}

/// `p7` with the certificate `cert` overwritten, in place and at the same length,
/// by a SEQUENCE holding only zeros.
fn not_a_certificate(mut p7: Vec<u8>, cert: &[u8]) -> Vec<u8> {
    let at = p7.windows(cert.len()).position(|w| w == cert).unwrap();
    assert_eq!(&cert[..2], &[0x30, 0x82]);
    let inner = cert.len() - 4;
    let mut junk = vec![0x30, 0x82, (inner >> 8) as u8, inner as u8];
    junk.extend([0x04, 0x82, ((inner - 4) >> 8) as u8, (inner - 4) as u8]);
    junk.resize(cert.len(), 0);
    p7[at..at + cert.len()].copy_from_slice(&junk);
    p7
}

// ---------------------------------------------------------------------------
// Test PKI: RSA keys (rsa crate) in rcgen certificates; PKCS#7 assembled with `cms` types.

/// Three RSA-2048 keys, generated once per test binary.
fn rsa_key(i: usize) -> &'static RsaPrivateKey {
    static KEYS: OnceLock<Vec<RsaPrivateKey>> = OnceLock::new();
    &KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        (0..3).map(|_| RsaPrivateKey::new(&mut rng, 2048).unwrap()).collect()
    })[i]
}

pub(crate) fn rcgen_key(i: usize) -> KeyPair {
    let pem = rsa_key(i).to_pkcs8_pem(LineEnding::LF).unwrap();
    KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap()
}

pub(crate) fn params(cn: &str, sans: Vec<String>, ca: Option<bool>) -> CertificateParams {
    let mut p = CertificateParams::new(sans).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    match ca {
        Some(true) => {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        }
        Some(false) => p.is_ca = IsCa::ExplicitNoCa,
        None => p.key_usages = vec![KeyUsagePurpose::DigitalSignature],
    }
    p
}

/// A test certificate with its key.
pub(crate) struct TestCa {
    pub(crate) cert: rcgen::Certificate,
    pub(crate) key: KeyPair,
    pub(crate) key_index: usize,
    pub(crate) der: Vec<u8>,
    pub(crate) pem: String,
}

impl TestCa {
    pub(crate) fn new(cert: rcgen::Certificate, key: KeyPair, key_index: usize) -> TestCa {
        TestCa {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            cert,
            key,
            key_index,
        }
    }

    pub(crate) fn root(cn: &str) -> TestCa {
        let key = rcgen_key(0);
        let cert = params(cn, vec![], Some(true)).self_signed(&key).unwrap();
        TestCa::new(cert, key, 0)
    }

    pub(crate) fn issue_ca(&self, cn: &str, key_index: usize, is_ca: bool) -> TestCa {
        let key = rcgen_key(key_index);
        let cert = params(cn, vec![], Some(is_ca))
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        TestCa::new(cert, key, key_index)
    }

    /// A leaf named `name` (CN and DNS SAN).
    fn issue_leaf(&self, name: &str, key_index: usize) -> TestCa {
        let key = rcgen_key(key_index);
        let cert = params(name, vec![name.to_string()], None)
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        TestCa::new(cert, key, key_index)
    }

    fn roots_config(&self) -> Value {
        json!({ "roots": self.pem })
    }

    /// A SignerInfo like Azure's: no signed attributes, the digest field holding
    /// sha256WithRSAEncryption, RSA PKCS#1 v1.5 / SHA-256 directly over the content.
    fn signer_info(&self, content: impl AsRef<[u8]>) -> SignerInfo {
        let content = content.as_ref();
        let cert = x509_cert::Certificate::from_der(&self.der).unwrap();
        let digest = sha2::Sha256::digest(content);
        let signature = rsa_key(self.key_index)
            .sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
            .unwrap();
        SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: cert.tbs_certificate.issuer.clone(),
                serial_number: cert.tbs_certificate.serial_number.clone(),
            }),
            digest_alg: alg("1.2.840.113549.1.1.11"),
            signed_attrs: None,
            signature_algorithm: alg("1.2.840.113549.1.1.1"),
            signature: OctetString::new(signature).unwrap(),
            unsigned_attrs: None,
        }
    }

    /// A PKCS#7 carrying this leaf (plus `extra` certificates), signed by it.
    pub(crate) fn pkcs7(&self, content: impl AsRef<[u8]>, extra: &[Vec<u8>]) -> Vec<u8> {
        let content = content.as_ref();
        let certs: Vec<Vec<u8>> = std::iter::once(self.der.clone()).chain(extra.iter().cloned()).collect();
        pkcs7(content, &certs, vec![self.signer_info(content)])
    }
}

fn alg(oid: &str) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap(oid),
        parameters: Some(Any::null()),
    }
}

/// A DER ContentInfo(SignedData) of id-data `content`.
fn pkcs7(content: impl AsRef<[u8]>, certs: &[Vec<u8>], signers: Vec<SignerInfo>) -> Vec<u8> {
    let content = content.as_ref();
    let certificates: Vec<CertificateChoices> = certs
        .iter()
        .map(|c| CertificateChoices::Certificate(x509_cert::Certificate::from_der(c).unwrap()))
        .collect();
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![alg("1.2.840.113549.1.1.11")]).unwrap(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1"),
            econtent: Some(Any::new(Tag::OctetString, content).unwrap()),
        },
        certificates: Some(CertificateSet(SetOfVec::try_from(certificates).unwrap())),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(signers).unwrap()),
    };
    ContentInfo {
        content_type: ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2"),
        content: Any::encode_from(&signed).unwrap(),
    }
    .to_der()
    .unwrap()
}

/// An attested document valid for six hours around `now`.
pub(crate) fn document(now: i64) -> String {
    let fmt = |t: i64| {
        // MM/DD/YY HH:MM:SS -0000 from RFC 3339.
        let s = idgate_plugin_kit::time::format_rfc3339(t);
        format!("{}/{}/{} {} -0000", &s[5..7], &s[8..10], &s[2..4], &s[11..19])
    };
    json!({
        "licenseType": "",
        "nonce": "20250615-000000",
        "plan": {"name": "", "product": "", "publisher": ""},
        "sku": "test",
        "subscriptionId": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "timeStamp": {"createdOn": fmt(now - 3600), "expiresOn": fmt(now + 5 * 3600)},
        "vmId": "11111111-2222-3333-4444-555555555555"
    })
    .to_string()
}
