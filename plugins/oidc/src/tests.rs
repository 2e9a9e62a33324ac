//! Native unit tests with test-made RSA and P-256 keys and the kit's test-only `Crypto`.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use idgate_plugin_kit::test_crypto::TestCrypto;
use idgate_plugin_kit::{Identity, Provider, VerifyError};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha2::Digest;

use crate::Oidc;

const ISSUER: &str = "https://oidc.eks.eu-west-1.amazonaws.com/id/TEST";
const NOW: i64 = 1_750_000_000;

struct Keys {
    rsa: rsa::RsaPrivateKey,
    ec: p256::ecdsa::SigningKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap(),
        ec: p256::ecdsa::SigningKey::random(&mut rand::thread_rng()),
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn jwks() -> Value {
    let k = keys();
    let public = k.rsa.to_public_key();
    let point = k.ec.verifying_key().to_encoded_point(false);
    json!({"keys": [
        {"kid": "rsa", "kty": "RSA", "use": "sig", "alg": "RS256",
         "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())},
        {"kid": "ec", "kty": "EC", "crv": "P-256", "use": "sig",
         "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())},
    ]})
}

/// Signs `header.claims` with the key the header's `kid` names (`rsa` or `ec`),
/// whatever the header's `alg` says.
fn sign(header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = if header["kid"] == "ec" {
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = keys().ec.sign(input.as_bytes());
        sig.to_bytes().to_vec()
    } else {
        let digest = sha2::Sha256::digest(input.as_bytes());
        keys()
            .rsa
            .sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
            .unwrap()
    };
    format!("{input}.{}", b64(&sig))
}

fn token(kid: &str, claims: &Value) -> String {
    let alg = if kid == "ec" { "ES256" } else { "RS256" };
    sign(&json!({"alg": alg, "kid": kid}), claims)
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "sub": "system:serviceaccount:agents:coder", "aud": ["idgate"],
        "exp": NOW + 600, "iat": NOW - 10, "nbf": NOW - 10,
        "kubernetes.io": {"namespace": "agents", "pod": {"name": "ws-0", "uid": "0f6b6f6e-pod"},
                          "serviceaccount": {"name": "coder", "uid": "9a1c-sa"}},
    })
}

fn config(extra: Value) -> String {
    let mut c = json!({"issuer": ISSUER, "audience": "idgate", "jwks": jwks()});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c.to_string()
}

fn verify(token: &str, config: &str) -> Result<Identity, VerifyError> {
    Oidc::configure_and_verify(&TestCrypto, &json!({ "token": token }).to_string(), config, NOW)
}

#[test]
fn rs256_and_es256_verify() {
    for kid in ["rsa", "ec"] {
        let id = verify(&token(kid, &claims()), &config(json!({}))).unwrap();
        assert_eq!(id.instance_id, "system:serviceaccount:agents:coder", "{kid}");
        assert_eq!(id.attribute("issuer"), Some(ISSUER));
        assert_eq!(id.attribute("subject"), Some("system:serviceaccount:agents:coder"));
    }
    let cfg = config(json!({"instance_id_claim": "kubernetes.io.pod.uid",
                            "allowed_claims": {"kubernetes.io.namespace": ["agents"]}}));
    let id = verify(&token("ec", &claims()), &cfg).unwrap();
    assert_eq!(id.instance_id, "0f6b6f6e-pod");
    assert_eq!(id.attribute("kubernetes.io.namespace"), Some("agents"));
}

#[test]
fn the_key_type_decides_the_algorithm() {
    let c = config(json!({}));
    for (alg, kid) in [
        ("ES256", "rsa"),
        ("RS256", "ec"),
        ("none", "rsa"),
        ("HS256", "rsa"),
        ("RS512", "rsa"),
    ] {
        let t = sign(&json!({"alg": alg, "kid": kid}), &claims());
        assert!(
            matches!(verify(&t, &c), Err(VerifyError::BadSignature(_))),
            "{alg} on {kid}"
        );
    }
}

#[test]
fn tampering_and_wrong_claims() {
    let c = config(json!({}));
    let t = token("rsa", &claims());
    let (head, rest) = t.split_once('.').unwrap();
    let sig = &rest[rest.find('.').unwrap()..];
    let forged = format!(
        "{head}.{}{sig}",
        b64(claims().to_string().replace("coder", "admin").as_bytes())
    );
    assert!(matches!(verify(&forged, &c), Err(VerifyError::BadSignature(_))));
    let with = |k: &str, v: Value| {
        let mut cl = claims();
        cl[k] = v;
        token("ec", &cl)
    };
    assert!(matches!(
        verify(&with("iss", json!("https://other")), &c),
        Err(VerifyError::UntrustedSigner(_))
    ));
    assert!(matches!(
        verify(&with("aud", json!(["other"])), &c),
        Err(VerifyError::UntrustedSigner(_))
    ));
    assert!(verify(&with("aud", json!("idgate")), &c).is_ok());
    assert!(verify(&with("aud", json!(["x", "idgate"])), &c).is_ok());
    assert!(matches!(
        verify(&with("exp", json!(NOW - 61)), &c),
        Err(VerifyError::Expired(_))
    ));
    assert!(matches!(
        verify(&with("nbf", json!(NOW + 61)), &c),
        Err(VerifyError::Expired(_))
    ));
    assert!(matches!(
        verify(&with("iat", json!(NOW + 61)), &c),
        Err(VerifyError::Expired(_))
    ));
    assert!(matches!(
        verify(&with("sub", json!(5)), &c),
        Err(VerifyError::Malformed(_))
    ));
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert!(matches!(
        verify(&token("rsa", &no_exp), &c),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn instance_id_and_allow_lists() {
    let t = token("rsa", &claims());
    let missing = config(json!({"instance_id_claim": "kubernetes.io.pod.missing"}));
    assert!(matches!(verify(&t, &missing), Err(VerifyError::Malformed(_))));
    let object = config(json!({"instance_id_claim": "kubernetes.io.pod"}));
    assert!(matches!(verify(&t, &object), Err(VerifyError::Malformed(_))));
    let refused = config(json!({"allowed_claims": {"kubernetes.io.namespace": ["prod"]}}));
    assert!(matches!(verify(&t, &refused), Err(VerifyError::Refused(_))));
    let absent = config(json!({"allowed_claims": {"repository": ["org/repo"]}}));
    assert!(matches!(verify(&t, &absent), Err(VerifyError::Refused(_))));
}

#[test]
fn a_dotted_member_beside_the_nested_claim_is_malformed_not_a_choice() {
    // The issue's attack: the real namespace is "evil", and the token adds a
    // top-level member "kubernetes.io.namespace": "agents" for the allow-list.
    let mut forged = claims();
    forged["kubernetes.io"]["namespace"] = json!("evil");
    forged["kubernetes.io.namespace"] = json!("agents");
    forged["kubernetes.io.pod.uid"] = json!("someone-elses-pod");
    let t = token("rsa", &forged);
    let allow = config(json!({"allowed_claims": {"kubernetes.io.namespace": ["agents"]}}));
    match verify(&t, &allow) {
        Err(VerifyError::Malformed(why)) => assert!(why.contains("more than one way"), "{why}"),
        other => panic!("allow-list read through an ambiguous path: {other:?}"),
    }
    // The instance-ID claim alike.
    let id = config(json!({"instance_id_claim": "kubernetes.io.pod.uid"}));
    assert!(matches!(verify(&t, &id), Err(VerifyError::Malformed(_))));
    // A JSON Pointer names one member exactly: the nested one is "evil".
    let pointer = config(json!({"allowed_claims": {"/kubernetes.io/namespace": ["agents"]}}));
    assert!(matches!(verify(&t, &pointer), Err(VerifyError::Refused(_))));
}

#[test]
fn host_keys_are_preferred() {
    let t = token("rsa", &claims());
    let other = json!({"keys": [{"kid": "other", "kty": "RSA", "n": "AQAB", "e": "AQAB"}]}).to_string();
    let c = Oidc::configure(&config(json!({}))).unwrap();
    let cred = json!({ "token": t }).to_string();
    let r = idgate_plugin_kit::host_keys::with_key_set(Some(&other), || Oidc::verify(&TestCrypto, &c, &cred, NOW));
    match r {
        Err(VerifyError::UntrustedSigner(m)) => {
            assert!(m.starts_with(idgate_plugin_kit::jwk::UNKNOWN_KID_PREFIX), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let mine = jwks().to_string();
    let r = idgate_plugin_kit::host_keys::with_key_set(Some(&mine), || Oidc::verify(&TestCrypto, &c, &cred, NOW));
    assert!(r.is_ok());
}

#[test]
fn no_block_configures_but_serves_nothing() {
    let t = token("rsa", &claims());
    for block in ["", "{}", " { } "] {
        match verify(&t, block) {
            Err(VerifyError::BadConfig(m)) => assert!(m.contains("issuer") && m.contains("audience"), "{m}"),
            other => panic!("{block:?}: {other:?}"),
        }
    }
    // A block with any key must be complete.
    assert!(matches!(
        Oidc::configure(r#"{"audience": "idgate"}"#),
        Err(VerifyError::BadConfig(_))
    ));
}

#[test]
fn garbage_never_panics() {
    let cfg = config(json!({}));
    for input in [
        "",
        "{}",
        "[]",
        "null",
        r#"{"token": 5}"#,
        r#"{"token": ""}"#,
        r#"{"token": "a.b.c"}"#,
        r#"{"token": "..."}"#,
        r#"{"token": "a.b"}"#,
        r#"{"token": "e30.e30.e30"}"#,
        r#"{"token": "x", "extra": 1}"#,
        r#"{"json_web_token": "x"}"#,
    ] {
        assert!(
            Oidc::configure_and_verify(&TestCrypto, input, &cfg, NOW).is_err(),
            "{input}"
        );
    }
    let t = token("ec", &claims());
    for cut in (0..t.len()).step_by(17) {
        assert!(verify(&t[..cut], &cfg).is_err());
    }
    assert!(Oidc::configure_and_verify(
        &TestCrypto,
        &json!({"token": t, "agent_name": "main"}).to_string(),
        &cfg,
        NOW
    )
    .is_ok());
}
