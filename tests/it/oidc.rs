//! OIDC: the `oidc` component in the real sandbox with test-made keys and tokens
//! shaped as Kubernetes' projected service-account tokens and GitHub Actions'
//! OIDC tokens (claims as both document them), under one configuration and under
//! two (two clusters, each with its own issuer and keys).

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use idgate::jwks::UNKNOWN_KID_MARKER;
use idgate::sandbox::{CallError, Configured};
use idgate_plugin_kit::{Identity, VerifyError};
use idgate_tests::refused;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

/// Verification time of the test-made tokens.
const NOW: i64 = 1_750_000_000;

/// Cluster A: an RSA service-account signing key (kube-apiserver's default).
pub(crate) const ISSUER_A: &str = "https://kubernetes.default.svc.cluster.local";
/// Cluster B: an EKS-style issuer with a P-256 key.
pub(crate) const ISSUER_B: &str = "https://oidc.eks.eu-west-1.amazonaws.com/id/B5C2B1E0D4F3A2B1C0D9E8F7A6B5C4D3";
/// The audience the operator sets in the pod's projected token volume.
pub(crate) const AUDIENCE: &str = "idgate";
const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";

enum Private {
    Rsa(rsa::RsaPrivateKey),
    /// A P-256 key (made with rcgen: ring's key generation).
    Ec(rcgen::KeyPair),
}

/// A signing key and the JWK its issuer publishes.
pub(crate) struct TestKey {
    kid: String,
    private: Private,
}

impl TestKey {
    fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match &self.private {
            Private::Rsa(k) => {
                let public = k.to_public_key();
                json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                       "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())})
            }
            Private::Ec(k) => {
                // The uncompressed point: 0x04 || x || y.
                let point = k.public_key_raw();
                assert_eq!((point.len(), point[0]), (65, 4));
                json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
                       "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
        }
    }

    pub(crate) fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk()] })
    }

    fn encoding_key(&self) -> EncodingKey {
        match &self.private {
            Private::Rsa(k) => EncodingKey::from_rsa_der(k.to_pkcs1_der().unwrap().as_bytes()),
            Private::Ec(k) => EncodingKey::from_ec_der(&k.serialize_der()),
        }
    }

    fn alg(&self) -> Algorithm {
        match self.private {
            Private::Rsa(_) => Algorithm::RS256,
            Private::Ec(_) => Algorithm::ES256,
        }
    }

    /// A token as the issuer signs it: its algorithm, its `kid`.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding_key()).unwrap()
    }
}

pub(crate) struct Keys {
    pub(crate) a: TestKey,
    pub(crate) b: TestKey,
    github: TestKey,
}

pub(crate) fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = || Private::Rsa(rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap());
        Keys {
            // kube-apiserver's kid is the SHA-256 of the key, base64url.
            a: TestKey {
                kid: "bS1hY2x1c3Rlci1hLXNhLWtleS0yMDI1".into(),
                private: rsa(),
            },
            b: TestKey {
                kid: "Yi1jbHVzdGVyLWVjLWtleQ".into(),
                private: Private::Ec(rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()),
            },
            github: TestKey {
                kid: "cc413527-173f-5a05-976e-9c52b1d7b431".into(),
                private: rsa(),
            },
        }
    })
}

/// A projected service-account token's claims (Kubernetes' TokenRequest API,
/// "Service account token volume projection"), for a pod in namespace `ns`.
fn k8s_claims(issuer: &str, ns: &str, pod_uid: &str) -> Value {
    k8s_claims_at(issuer, ns, pod_uid, NOW)
}

/// [`k8s_claims`] for a token issued at `now`.
pub(crate) fn k8s_claims_at(issuer: &str, ns: &str, pod_uid: &str, now: i64) -> Value {
    json!({
        "aud": [AUDIENCE],
        "exp": now + 3600,
        "iat": now - 30,
        "iss": issuer,
        "jti": "ea28ed49-2e11-4280-9ec5-bc3d1d84661a",
        "kubernetes.io": {
            "namespace": ns,
            "node": { "name": "ip-10-0-1-17.eu-west-1.compute.internal", "uid": "58456cb0-dd00-45ed-b797-5578fdceaced" },
            "pod": { "name": "coder-ws-alice-5d9c7b8f6-x2k4p", "uid": pod_uid },
            "serviceaccount": { "name": "coder-agent", "uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af" },
            "warnafter": now + 3000,
        },
        "nbf": now - 30,
        "sub": format!("system:serviceaccount:{ns}:coder-agent"),
    })
}

const POD_UID: &str = "778a530c-b3f4-47c0-9cd5-ab018fb64f33";

/// A GitHub Actions OIDC token's claims (GitHub's "About security hardening
/// with OpenID Connect"), for a job with an `environment`.
fn github_claims() -> Value {
    json!({
        "jti": "example-id",
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "environment": "prod",
        "aud": "https://github.com/octo-org",
        "ref": "refs/heads/main",
        "sha": "d6d0a2c5b1f7e4a3c9b8a7f6e5d4c3b2a1f0e9d8",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "actor_id": "12",
        "repository_visibility": "private",
        "repository_id": "74",
        "repository_owner_id": "65",
        "run_id": "9876543210",
        "run_number": "10",
        "run_attempt": "2",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "workflow": "example-workflow",
        "head_ref": "",
        "base_ref": "",
        "event_name": "workflow_dispatch",
        "ref_type": "branch",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/oidc.yml@refs/heads/main",
        "job_workflow_ref": "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main",
        "iss": GITHUB_ISSUER,
        "nbf": NOW - 300,
        "exp": NOW + 600,
        "iat": NOW,
    })
}

/// Cluster A's block, as an operator writes it for pods' projected tokens.
fn config_a() -> Value {
    json!({
        "issuer": ISSUER_A,
        "audience": AUDIENCE,
        "instance_id_claim": "kubernetes.io.pod.uid",
        "allowed_claims": { "kubernetes.io.namespace": ["agents"] },
        "jwks": keys().a.jwks(),
    })
}

fn config_b() -> Value {
    json!({
        "issuer": ISSUER_B,
        "audience": AUDIENCE,
        "instance_id_claim": "/kubernetes.io/pod/uid",
        "jwks": keys().b.jwks().to_string(),
    })
}

fn credential(token: &str) -> String {
    json!({ "token": token }).to_string()
}

fn verify(token: &str, config: &Value, now: i64) -> Result<Identity, CallError> {
    idgate_tests::sandbox().verify_configuring("oidc", &credential(token), &config.to_string(), None, now)
}

fn with(mut base: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn token_a() -> String {
    keys().a.sign(&k8s_claims(ISSUER_A, "agents", POD_UID))
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn kubernetes_token_verifies_with_the_pod_uid_as_instance_id() {
    let id = verify(&token_a(), &config_a(), NOW).unwrap();
    assert_eq!(id.instance_id, POD_UID);
    assert_eq!(id.attribute("issuer"), Some(ISSUER_A));
    assert_eq!(
        id.attribute("subject"),
        Some("system:serviceaccount:agents:coder-agent")
    );
    assert_eq!(id.attribute("kubernetes.io.namespace"), Some("agents"));
    // The default instance ID is `sub`.
    let mut plain = config_a();
    plain.as_object_mut().unwrap().remove("instance_id_claim");
    assert_eq!(
        verify(&token_a(), &plain, NOW).unwrap().instance_id,
        "system:serviceaccount:agents:coder-agent"
    );
}

#[test]
fn github_actions_token_verifies_and_allow_lists_apply() {
    let config = json!({
        "issuer": GITHUB_ISSUER,
        "audience": "https://github.com/octo-org",
        "allowed_claims": {
            "repository_owner": ["octo-org"],
            "runner_environment": ["github-hosted"],
            "job_workflow_ref": ["octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main"],
        },
        "jwks": keys().github.jwks(),
    });
    // GitHub's header also carries `typ` and `x5t`; neither changes anything.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(keys().github.kid.clone());
    header.x5t = Some("ykNaY4qM_ta4k2TgZOCEYLkcYlA".into());
    let token = jsonwebtoken::encode(&header, &github_claims(), &keys().github.encoding_key()).unwrap();
    let id = verify(&token, &config, NOW).unwrap();
    assert_eq!(id.instance_id, "repo:octo-org/octo-repo:environment:prod");
    assert_eq!(id.attribute("repository_owner"), Some("octo-org"));
    assert_eq!(id.attribute("runner_environment"), Some("github-hosted"));
    // A self-hosted runner, or another organisation's repository, is refused.
    let reason = refused(
        verify(
            &keys()
                .github
                .sign(&with(github_claims(), json!({"runner_environment": "self-hosted"}))),
            &config,
            NOW,
        ),
        "refused",
    );
    assert!(
        reason.contains("runner_environment") && reason.contains("self-hosted"),
        "{reason}"
    );
    let mut by_run = config.clone();
    by_run["instance_id_claim"] = json!("run_id");
    assert_eq!(verify(&token, &by_run, NOW).unwrap().instance_id, "9876543210");
}

#[test]
fn wrong_issuer_or_audience_refused() {
    for iss in [
        "https://evil.example",
        "https://kubernetes.default.svc.cluster.local/",
        ISSUER_B,
    ] {
        let token = keys().a.sign(&k8s_claims(iss, "agents", POD_UID));
        let reason = refused(verify(&token, &config_a(), NOW), "untrusted-signer");
        assert!(reason.contains(iss), "{reason}");
    }
    for aud in [
        json!(["https://kubernetes.default.svc.cluster.local"]),
        json!("other"),
        json!([]),
    ] {
        let token = keys()
            .a
            .sign(&with(k8s_claims(ISSUER_A, "agents", POD_UID), json!({ "aud": aud })));
        refused(verify(&token, &config_a(), NOW), "untrusted-signer");
    }
    // A token for several audiences, one of them ours, is accepted (as Kubernetes issues them).
    let token = keys().a.sign(&with(
        k8s_claims(ISSUER_A, "agents", POD_UID),
        json!({ "aud": ["https://kubernetes.default.svc.cluster.local", AUDIENCE] }),
    ));
    assert!(verify(&token, &config_a(), NOW).is_ok());
}

#[test]
fn expired_and_not_yet_valid_refused_with_skew() {
    let token = |changes: Value| keys().a.sign(&with(k8s_claims(ISSUER_A, "agents", POD_UID), changes));
    let expired = token(json!({ "exp": NOW - 61 }));
    let reason = refused(verify(&expired, &config_a(), NOW), "expired");
    assert!(reason.contains("expired"), "{reason}");
    // Within the default 60 s skew.
    assert!(verify(&token(json!({ "exp": NOW - 60 })), &config_a(), NOW).is_ok());
    let early = token(json!({ "nbf": NOW + 61 }));
    let reason = refused(verify(&early, &config_a(), NOW), "expired");
    assert!(reason.contains("not valid before"), "{reason}");
    assert!(verify(&token(json!({ "nbf": NOW + 60 })), &config_a(), NOW).is_ok());
    refused(verify(&token(json!({ "iat": NOW + 61 })), &config_a(), NOW), "expired");
    // A configured skew.
    let strict = with(config_a(), json!({ "skew_secs": 0 }));
    refused(verify(&token(json!({ "exp": NOW - 1 })), &strict, NOW), "expired");
    refused(verify(&token(json!({ "nbf": NOW + 1 })), &strict, NOW), "expired");
    // A legacy secret-based service-account token never expires: refused.
    let mut forever = k8s_claims(ISSUER_A, "agents", POD_UID);
    forever.as_object_mut().unwrap().remove("exp");
    refused(verify(&keys().a.sign(&forever), &config_a(), NOW), "malformed");
}

#[test]
fn alg_none_and_hs256_refused() {
    let claims = k8s_claims(ISSUER_A, "agents", POD_UID);
    let header = json!({ "alg": "none", "kid": keys().a.kid });
    for sig in ["", "AAAA"] {
        let token = format!("{}.{}.{sig}", b64json(&header), b64json(&claims));
        refused(verify(&token, &config_a(), NOW), "bad-signature");
    }
    // HMAC keyed with what an attacker knows of the public key.
    let Private::Rsa(private) = &keys().a.private else {
        unreachable!()
    };
    let public = private.to_public_key();
    let spki = public.to_public_key_der().unwrap();
    let jwk = keys().a.jwk().to_string();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(keys().a.kid.clone());
    for secret in [spki.as_bytes(), jwk.as_bytes(), &public.n().to_bytes_be()] {
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap();
        refused(verify(&token, &config_a(), NOW), "bad-signature");
    }
}

#[test]
fn alg_that_disagrees_with_the_key_refused() {
    // Cluster B's key is EC: an RS256 header naming it is refused before any arithmetic,
    // even with a genuine RSA signature under it.
    let claims = k8s_claims(ISSUER_B, "agents", POD_UID);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(keys().b.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &keys().a.encoding_key()).unwrap();
    let reason = refused(verify(&token, &config_b(), NOW), "bad-signature");
    assert!(reason.contains("RS256") && reason.contains("ES256"), "{reason}");
    // And an ES256 header on cluster A's RSA key.
    let header = json!({ "alg": "ES256", "kid": keys().a.kid });
    let token = format!(
        "{}.{}.{}",
        b64json(&header),
        b64json(&claims),
        URL_SAFE_NO_PAD.encode([7u8; 64])
    );
    refused(verify(&token, &config_a(), NOW), "bad-signature");
    // A JWK whose `alg` contradicts its type is unusable.
    let mut jwk = keys().a.jwk();
    jwk["alg"] = json!("ES256");
    let config = with(config_a(), json!({ "jwks": { "keys": [jwk] } }));
    refused(verify(&token_a(), &config, NOW), "untrusted-signer");
}

#[test]
fn tampered_payload_refused() {
    let token = token_a();
    let (head, rest) = token.split_once('.').unwrap();
    let signature = &rest[rest.find('.').unwrap()..];
    // Another namespace's pod, under the genuine signature.
    let forged = format!(
        "{head}.{}{signature}",
        b64json(&k8s_claims(ISSUER_A, "agents", "00000000-0000-0000-0000-000000000000"))
    );
    refused(verify(&forged, &config_a(), NOW), "bad-signature");
    let start = token.find('.').unwrap() + 1;
    let end = token.rfind('.').unwrap();
    for pos in (start..end).step_by(31) {
        let mut bytes = token.clone().into_bytes();
        bytes[pos] = if bytes[pos] == b'A' { b'B' } else { b'A' };
        match verify(&String::from_utf8(bytes).unwrap(), &config_a(), NOW) {
            Err(CallError::Rejected(VerifyError::BadSignature(_) | VerifyError::Malformed(_))) => {}
            other => panic!("payload byte {pos} changed: {other:?}"),
        }
    }
}

#[test]
fn unknown_kid_names_it() {
    let token = keys().github.sign(&k8s_claims(ISSUER_A, "agents", POD_UID));
    let reason = refused(verify(&token, &config_a(), NOW), "untrusted-signer");
    assert!(
        reason.contains(UNKNOWN_KID_MARKER) && reason.contains(&keys().github.kid),
        "{reason}"
    );
}

#[test]
fn allow_list_refusal_is_403() {
    let token = keys().a.sign(&k8s_claims(ISSUER_A, "kube-system", POD_UID));
    let reason = refused(verify(&token, &config_a(), NOW), "refused");
    assert!(
        reason.contains("kubernetes.io.namespace") && reason.contains("kube-system"),
        "{reason}"
    );
    // A claim the allow-list needs that the token lacks is refused too.
    let mut claims = k8s_claims(ISSUER_A, "agents", POD_UID);
    claims["kubernetes.io"].as_object_mut().unwrap().remove("namespace");
    refused(verify(&keys().a.sign(&claims), &config_a(), NOW), "refused");
}

#[test]
fn missing_instance_id_claim_is_malformed() {
    let mut claims = k8s_claims(ISSUER_A, "agents", POD_UID);
    claims["kubernetes.io"].as_object_mut().unwrap().remove("pod");
    let reason = refused(verify(&keys().a.sign(&claims), &config_a(), NOW), "malformed");
    assert!(reason.contains("kubernetes.io.pod.uid"), "{reason}");
    let empty = with(
        k8s_claims(ISSUER_A, "agents", POD_UID),
        json!({"kubernetes.io": {"namespace": "agents", "pod": {"uid": ""}}}),
    );
    refused(verify(&keys().a.sign(&empty), &config_a(), NOW), "malformed");
}

#[test]
fn host_keys_are_preferred_over_the_configured_set() {
    let token = token_a();
    let sandbox = idgate_tests::sandbox();
    let config = config_a().to_string();
    // The host's set lacks the key: the configured one is not consulted.
    let host = keys().b.jwks().to_string();
    let reason = refused(
        sandbox.verify_configuring("oidc", &credential(&token), &config, Some(&host), NOW),
        "untrusted-signer",
    );
    assert!(reason.contains(UNKNOWN_KID_MARKER), "{reason}");
    // With no configured set, the host's is used.
    let mut keyless = config_a();
    keyless.as_object_mut().unwrap().remove("jwks");
    let host = keys().a.jwks().to_string();
    let id = sandbox
        .verify_configuring("oidc", &credential(&token), &keyless.to_string(), Some(&host), NOW)
        .unwrap();
    assert_eq!(id.instance_id, POD_UID);
    refused(verify(&token, &keyless, NOW), "bad-config");
}

/// Two configurations of one plugin — two clusters, each with its own issuer and
/// keys — as two configured snapshots: each verifies its own cluster's tokens and
/// refuses the other's.
#[test]
fn two_clusters_two_configurations() {
    let sandbox = idgate_tests::sandbox();
    let a: Configured = sandbox.configure("oidc", &config_a()).unwrap();
    let b: Configured = sandbox.configure("oidc", &config_b()).unwrap();
    assert!(a.trust().is_empty() && b.trust().is_empty(), "keys, not certificates");
    let token_b = keys().b.sign(&k8s_claims(ISSUER_B, "agents", "1d0f2a64-b-pod"));
    let check = |plugin: &Configured, token: &str| sandbox.verify(plugin, &credential(token), None, NOW);
    assert_eq!(check(&a, &token_a()).unwrap().instance_id, POD_UID);
    assert_eq!(check(&b, &token_b).unwrap().instance_id, "1d0f2a64-b-pod");
    assert_eq!(check(&b, &token_b).unwrap().attribute("issuer"), Some(ISSUER_B));
    // Each cluster's token is refused by the other's configuration: its key is unknown there.
    let reason = refused(check(&b, &token_a()), "untrusted-signer");
    assert!(reason.contains(UNKNOWN_KID_MARKER), "{reason}");
    refused(check(&a, &token_b), "untrusted-signer");
    // Cluster A's key signing a token that claims cluster B's issuer is still refused by B.
    let impostor = keys().a.sign(&k8s_claims(ISSUER_B, "agents", "1d0f2a64-b-pod"));
    refused(check(&b, &impostor), "untrusted-signer");
}

#[test]
fn configuration_errors() {
    let sandbox = idgate_tests::sandbox();
    for block in [
        json!({ "issuer": ISSUER_A }),
        json!({ "audience": AUDIENCE }),
        with(config_a(), json!({ "issuer": "" })),
        with(config_a(), json!({ "audiences": [AUDIENCE] })),
        with(
            config_a(),
            json!({ "allowed_claims": { "kubernetes.io.namespace": [] } }),
        ),
        with(config_a(), json!({ "instance_id_claim": "kubernetes.io..pod" })),
        with(
            config_a(),
            json!({ "jwks": "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}" }),
        ),
    ] {
        let error = sandbox.configure("oidc", &block).unwrap_err();
        assert!(format!("{error:#}").contains("oidc config"), "{block}: {error:#}");
    }
}

/// With no block (installed, no issuer configured) the plugin configures, so a host
/// that serves no issuer stays ready, and answers every credential `bad-config`.
#[test]
fn no_block_serves_nothing() {
    let sandbox = idgate_tests::sandbox();
    let plugin = sandbox.configure("oidc", &json!({})).unwrap();
    let reason = refused(
        sandbox.verify(&plugin, &credential(&token_a()), None, NOW),
        "bad-config",
    );
    assert!(reason.contains("issuer") && reason.contains("audience"), "{reason}");
}

#[test]
fn malformed_credentials_are_400_never_traps() {
    let config = config_a();
    for credential in [
        "".to_string(),
        "{}".into(),
        "[]".into(),
        r#"{"token": 1}"#.into(),
        r#"{"token": ""}"#.into(),
        r#"{"json_web_token": "a.b.c"}"#.into(),
        r#"{"token": "a.b"}"#.into(),
        r#"{"token": "!!.e30.AA"}"#.into(),
        json!({ "token": "e30.".repeat(5000) }).to_string(),
        json!({ "token": token_a(), "unexpected": true }).to_string(),
    ] {
        match idgate_tests::sandbox().verify_configuring("oidc", &credential, &config.to_string(), None, NOW) {
            Err(CallError::Rejected(VerifyError::Malformed(_))) => {}
            other => panic!("{credential:.80}: {other:?}"),
        }
    }
}
