//! GCP: the genuine metadata-server token and test-made tokens through the real
//! `gcp` component, and the host's Google key cache against a local JWKS server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use idgate::jwks::{KeyCache, KeysUnavailable, UNKNOWN_KID_MARKER};
use idgate::sandbox::CallError;
use idgate_plugin_kit::{Identity, VerifyError};
use idgate_tests::refused;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

const GENUINE_AUD: &str = "71d1b279-2fe3-4828-85f5-2f4a2fdb02a1";
/// Inside the genuine token's hour (iat 1715962787, exp 1715966387).
const GENUINE_NOW: i64 = 1_715_963_400;
/// Verification time of the test-made tokens.
const NOW: i64 = 1_750_000_000;

fn verify(token: &str, config: &Value, now: i64) -> Result<Identity, CallError> {
    let credential = json!({ "json_web_token": token }).to_string();
    idgate_tests::sandbox().verify_configuring("gcp", &credential, &config.to_string(), None, now)
}

/// As the host verifies: the `[gcp]` block as the plugin is configured with it
/// (`authenticate::plugin_block`), and the cache's key set through `host-keys`.
fn verify_with_keys(token: &str, block: &Value, key_set: &Value, now: i64) -> Result<Identity, CallError> {
    let config = idgate::authenticate::plugin_block("gcp", block.clone());
    let credential = json!({ "json_web_token": token }).to_string();
    idgate_tests::sandbox().verify_configuring("gcp", &credential, &config.to_string(), Some(&key_set.to_string()), now)
}

fn genuine_token() -> String {
    idgate_tests::read_data("gcp/infisical_gce_full_2024.jwt")
        .trim()
        .to_string()
}

fn genuine_config(audience: Option<&str>) -> Value {
    let jwks: Value = serde_json::from_str(&idgate_tests::read_data("gcp/google_jwk_a3b762f8.json")).unwrap();
    let mut config = json!({ "jwks": jwks });
    if let Some(aud) = audience {
        config["audience"] = json!(aud);
    }
    config
}

// ---------------------------------------------------------------------------
// The genuine token.

#[test]
fn genuine_token_verifies_in_its_hour() {
    let id = verify(&genuine_token(), &genuine_config(Some(GENUINE_AUD)), GENUINE_NOW).unwrap();
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
fn genuine_token_expired_today() {
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    refused(
        verify(&genuine_token(), &genuine_config(Some(GENUINE_AUD)), today),
        "expired",
    );
}

#[test]
fn genuine_token_refused_with_default_audience() {
    let reason = refused(
        verify(&genuine_token(), &genuine_config(None), GENUINE_NOW),
        "untrusted-signer",
    );
    assert!(reason.contains(GENUINE_AUD) && reason.contains("\"coder\""), "{reason}");
}

#[test]
fn genuine_token_with_any_payload_byte_changed_fails() {
    let token = genuine_token();
    let start = token.find('.').unwrap() + 1;
    let end = token.rfind('.').unwrap();
    let config = genuine_config(Some(GENUINE_AUD));
    let positions: Vec<usize> = (start..end).step_by(23).chain([start, end - 1]).collect();
    assert!(positions.len() > 20);
    for pos in positions {
        let mut bytes = token.clone().into_bytes();
        // Another base64url character, so most changes still decode.
        bytes[pos] = if bytes[pos] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        match verify(&tampered, &config, GENUINE_NOW) {
            Err(CallError::Rejected(VerifyError::BadSignature(_) | VerifyError::Malformed(_))) => {}
            other => panic!("payload byte {pos} changed: {other:?}"),
        }
    }
}

#[test]
fn genuine_token_with_unknown_kid_names_it() {
    let config = json!({ "audience": GENUINE_AUD, "jwks": test_keys().jwks() });
    let reason = refused(verify(&genuine_token(), &config, GENUINE_NOW), "untrusted-signer");
    assert!(reason.contains(UNKNOWN_KID_MARKER), "{reason}");
    assert!(reason.contains("a3b762f871cdb3bae0044c649622fc1396eda3e3"), "{reason}");
}

#[test]
fn configuration_errors() {
    let token = genuine_token();
    refused(verify(&token, &json!({}), GENUINE_NOW), "bad-config");
    let mut unknown = genuine_config(Some(GENUINE_AUD));
    unknown["audiences"] = json!(["x"]);
    refused(verify(&token, &unknown, GENUINE_NOW), "bad-config");
    // Host-side keys reaching the plugin are ignored.
    let mut host_keys = genuine_config(Some(GENUINE_AUD));
    host_keys["jwks_url"] = json!("https://www.googleapis.com/oauth2/v3/certs");
    host_keys["jwks_file"] = json!("/etc/idgate/google.json");
    assert!(verify(&token, &host_keys, GENUINE_NOW).is_ok());
}

#[test]
fn malformed_credentials_are_400_never_traps() {
    let config = genuine_config(Some(GENUINE_AUD));
    let sandbox = idgate_tests::sandbox();
    for credential in [
        "".to_string(),
        "{}".into(),
        "[]".into(),
        r#"{"json_web_token": 1}"#.into(),
        r#"{"json_web_token": ""}"#.into(),
        r#"{"json_web_token": "a.b"}"#.into(),
        r#"{"json_web_token": "!!.e30.AA"}"#.into(),
        json!({ "json_web_token": "e30.".repeat(5000) }).to_string(),
    ] {
        match sandbox.verify_configuring("gcp", &credential, &config.to_string(), None, GENUINE_NOW) {
            Err(CallError::Rejected(VerifyError::Malformed(_))) => {}
            other => panic!("{credential:.80}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Test-made keys and tokens.

pub(crate) struct TestKey {
    kid: String,
    private: RsaPrivateKey,
}

impl TestKey {
    pub(crate) fn new(kid: &str) -> TestKey {
        TestKey {
            kid: kid.into(),
            private: RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA keygen"),
        }
    }

    fn jwk(&self) -> Value {
        let public = self.private.to_public_key();
        json!({
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        })
    }

    pub(crate) fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk()] })
    }

    pub(crate) fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        let der = self.private.to_pkcs1_der().unwrap();
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(der.as_bytes())).unwrap()
    }
}

/// Two keys made once per test binary (keygen takes a while).
pub(crate) struct TestKeys {
    pub(crate) a: TestKey,
    b: TestKey,
}

impl TestKeys {
    fn jwks(&self) -> Value {
        self.a.jwks()
    }
}

pub(crate) fn test_keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys {
        a: TestKey::new("test-key-a"),
        b: TestKey::new("test-key-b"),
    })
}

fn claims() -> Value {
    json!({
        "iss": "https://accounts.google.com",
        "aud": "coder",
        "azp": "1234567890",
        "sub": "1234567890",
        "iat": NOW - 100,
        "exp": NOW + 3500,
        "google": { "compute_engine": {
            "instance_id": "4242424242424242424",
            "instance_name": "ws-vm",
            "project_id": "my-project",
            "project_number": 1234,
            "zone": "europe-west1-b",
            "instance_creation_timestamp": NOW - 500,
        }},
    })
}

fn with(mut base: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn config() -> Value {
    json!({ "jwks": test_keys().jwks() })
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn test_token_verifies_with_default_audience() {
    let token = test_keys().a.sign(Algorithm::RS256, &claims());
    let id = verify(&token, &config(), NOW).unwrap();
    assert_eq!(id.instance_id, "4242424242424242424");
    assert_eq!(id.attribute("project_id"), Some("my-project"));
    assert_eq!(id.attribute("zone"), Some("europe-west1-b"));
    assert_eq!(id.attribute("instance_name"), Some("ws-vm"));
    assert_eq!(id.attribute("email"), None);
    // The issuer without a scheme is Google's too.
    let token = test_keys()
        .a
        .sign(Algorithm::RS256, &with(claims(), json!({"iss": "accounts.google.com"})));
    assert!(verify(&token, &config(), NOW).is_ok());
}

#[test]
fn alg_none_refused() {
    let header = json!({ "alg": "none", "kid": "test-key-a", "typ": "JWT" });
    for sig in ["", "AAAA"] {
        let token = format!("{}.{}.{sig}", b64json(&header), b64json(&claims()));
        refused(verify(&token, &config(), NOW), "bad-signature");
    }
}

#[test]
fn hs256_with_the_public_key_as_secret_refused() {
    let keys = test_keys();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(keys.a.kid.clone());
    let public = keys.a.private.to_public_key();
    let spki = public.to_public_key_der().unwrap();
    let pem = public.to_public_key_pem(Default::default()).unwrap();
    let jwk = keys.a.jwk().to_string();
    for secret in [
        spki.as_bytes(),
        pem.as_bytes(),
        jwk.as_bytes(),
        &public.n().to_bytes_be(),
    ] {
        let token = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap();
        refused(verify(&token, &config(), NOW), "bad-signature");
    }
}

#[test]
fn other_rsa_algorithms_refused() {
    for alg in [Algorithm::RS384, Algorithm::RS512, Algorithm::PS256] {
        let token = test_keys().a.sign(alg, &claims());
        refused(verify(&token, &config(), NOW), "bad-signature");
    }
    // An RS256 header over a signature made with another hash does not verify.
    let rs512 = test_keys().a.sign(Algorithm::RS512, &claims());
    let rs256 = test_keys().a.sign(Algorithm::RS256, &claims());
    let forged = format!(
        "{}.{}",
        &rs256[..rs256.rfind('.').unwrap()],
        &rs512[rs512.rfind('.').unwrap() + 1..]
    );
    refused(verify(&forged, &config(), NOW), "bad-signature");
}

#[test]
fn es256_header_refused() {
    let header = json!({ "alg": "ES256", "kid": "test-key-a" });
    let token = format!(
        "{}.{}.{}",
        b64json(&header),
        b64json(&claims()),
        URL_SAFE_NO_PAD.encode([7u8; 64])
    );
    refused(verify(&token, &config(), NOW), "bad-signature");
}

#[test]
fn signature_by_another_key_under_a_known_kid_refused() {
    // Key b signs but claims to be key a.
    let keys = test_keys();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(keys.a.kid.clone());
    let der = keys.b.private.to_pkcs1_der().unwrap();
    let token = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_rsa_der(der.as_bytes())).unwrap();
    refused(verify(&token, &config(), NOW), "bad-signature");
}

#[test]
fn key_not_meant_for_rs256_or_too_small_refused() {
    // The key set pins the key to another algorithm.
    let mut jwk = test_keys().a.jwk();
    jwk["alg"] = json!("RS512");
    let token = test_keys().a.sign(Algorithm::RS256, &claims());
    let reason = refused(
        verify(&token, &json!({ "jwks": { "keys": [jwk] } }), NOW),
        "untrusted-signer",
    );
    assert!(reason.contains("RS512"), "{reason}");
    // The host refuses RSA keys under 2048 bits; the plugin says why.
    let small = TestKey {
        kid: "small".into(),
        private: RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap(),
    };
    let token = small.sign(Algorithm::RS256, &claims());
    let reason = refused(
        verify(&token, &json!({ "jwks": small.jwks() }), NOW),
        "untrusted-signer",
    );
    assert!(reason.contains("unusable"), "{reason}");
}

#[test]
fn missing_instance_id_is_401_naming_format_full() {
    let mut c = claims();
    c.as_object_mut().unwrap().remove("google");
    let token = test_keys().a.sign(Algorithm::RS256, &c);
    let reason = refused(verify(&token, &config(), NOW), "untrusted-signer");
    assert!(
        reason.contains("instance_id") && reason.contains("format=full"),
        "{reason}"
    );
    let empty = with(claims(), json!({"google": {"compute_engine": {"instance_id": ""}}}));
    let token = test_keys().a.sign(Algorithm::RS256, &empty);
    refused(verify(&token, &config(), NOW), "untrusted-signer");
}

#[test]
fn wrong_issuer_refused() {
    for iss in [
        "https://evil.example",
        "https://accounts.google.com/",
        "http://accounts.google.com",
    ] {
        let token = test_keys()
            .a
            .sign(Algorithm::RS256, &with(claims(), json!({ "iss": iss })));
        let reason = refused(verify(&token, &config(), NOW), "untrusted-signer");
        assert!(reason.contains(iss), "{reason}");
    }
}

#[test]
fn audience_must_equal_the_configured_one() {
    for aud in [json!("other"), json!(["coder"]), json!(["coder", "other"])] {
        let token = test_keys()
            .a
            .sign(Algorithm::RS256, &with(claims(), json!({ "aud": aud })));
        refused(verify(&token, &config(), NOW), "untrusted-signer");
    }
    let token = test_keys()
        .a
        .sign(Algorithm::RS256, &with(claims(), json!({ "aud": "my-aud" })));
    let mut cfg = config();
    cfg["audience"] = json!("my-aud");
    assert!(verify(&token, &cfg, NOW).is_ok());
}

#[test]
fn expiry_and_issue_time_with_skew() {
    let token = |iat: i64, exp: i64| {
        test_keys()
            .a
            .sign(Algorithm::RS256, &with(claims(), json!({"iat": iat, "exp": exp})))
    };
    let t = token(NOW - 3600, NOW);
    // Default skew 60 s: just past exp is still accepted, beyond the skew is not.
    assert!(verify(&t, &config(), NOW).is_ok());
    assert!(verify(&t, &config(), NOW + 60).is_ok());
    refused(verify(&t, &config(), NOW + 61), "expired");
    // Issued in the future.
    assert!(verify(&token(NOW + 60, NOW + 3660), &config(), NOW).is_ok());
    refused(verify(&token(NOW + 61, NOW + 3661), &config(), NOW), "expired");
    // A configured skew.
    let mut strict = config();
    strict["skew_secs"] = json!(0);
    assert!(verify(&t, &strict, NOW).is_ok());
    refused(verify(&t, &strict, NOW + 1), "expired");
    refused(verify(&token(NOW + 1, NOW + 3601), &strict, NOW), "expired");
    // Claims that are not integers, or missing, are malformed.
    let bad = test_keys()
        .a
        .sign(Algorithm::RS256, &with(claims(), json!({"exp": "soon"})));
    refused(verify(&bad, &config(), NOW), "malformed");
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    refused(
        verify(&test_keys().a.sign(Algorithm::RS256, &no_exp), &config(), NOW),
        "malformed",
    );
}

#[test]
fn unknown_kid_refused() {
    let token = test_keys().b.sign(Algorithm::RS256, &claims());
    let reason = refused(verify(&token, &config(), NOW), "untrusted-signer");
    assert!(
        reason.contains(UNKNOWN_KID_MARKER) && reason.contains("test-key-b"),
        "{reason}"
    );
    // A header without kid.
    let der = test_keys().a.private.to_pkcs1_der().unwrap();
    let no_kid = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_der(der.as_bytes()),
    )
    .unwrap();
    refused(verify(&no_kid, &config(), NOW), "untrusted-signer");
}

#[test]
fn allow_lists_refuse_with_403() {
    let token = test_keys().a.sign(Algorithm::RS256, &claims());
    let cfg = |extra: Value| with(config(), extra);
    assert!(verify(
        &token,
        &cfg(json!({"allowed_projects": ["x", "my-project"], "allowed_zones": ["europe-west1-b"]})),
        NOW
    )
    .is_ok());
    refused(
        verify(&token, &cfg(json!({"allowed_projects": ["other-project"]})), NOW),
        "refused",
    );
    refused(
        verify(&token, &cfg(json!({"allowed_zones": ["us-central1-a"]})), NOW),
        "refused",
    );
    refused(verify(&token, &cfg(json!({"allowed_zones": []})), NOW), "bad-config");
}

#[test]
fn oversized_token_is_malformed() {
    let big = with(claims(), json!({ "padding": "x".repeat(20_000) }));
    let token = test_keys().a.sign(Algorithm::RS256, &big);
    refused(verify(&token, &config(), NOW), "malformed");
}

// ---------------------------------------------------------------------------
// The host's key cache against a local JWKS server.

/// What the local server answers.
struct Served {
    status: u16,
    body: String,
    cache_control: Option<String>,
    location: Option<String>,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 that counts requests.
struct JwksServer {
    addr: SocketAddr,
    served: Arc<Mutex<Served>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: &Value, cache_control: Option<&str>) -> JwksServer {
        Self::start_on("127.0.0.1:0", body, cache_control).await
    }

    /// The same on another loopback address (`127.0.0.2:0`, say).
    async fn start_on(bind: &str, body: &Value, cache_control: Option<&str>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(Mutex::new(Served {
            status: 200,
            body: body.to_string(),
            cache_control: cache_control.map(str::to_string),
            location: None,
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (served, hits) = (served.clone(), hits.clone());
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (served, hits) = (served.clone(), hits.clone());
                    tokio::spawn(async move {
                        let _ = answer(stream, &served, &hits).await;
                    });
                }
            }
        });
        JwksServer {
            addr,
            served,
            hits,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/oauth2/v3/certs", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn serve(&self, status: u16, body: &Value) {
        let mut s = self.served.lock().unwrap();
        s.status = status;
        s.body = body.to_string();
    }

    /// Answers `status` with a `Location` header pointing at `to`.
    fn redirect(&self, status: u16, to: &str) {
        let mut s = self.served.lock().unwrap();
        s.status = status;
        s.body = "{}".into();
        s.location = Some(to.to_string());
    }

    fn cache(&self, url_extra: Value) -> KeyCache {
        KeyCache::from_config(&with(json!({ "jwks_url": self.url() }), url_extra)).unwrap()
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head and writes the configured response (no keep-alive).
async fn answer(stream: tokio::net::TcpStream, served: &Mutex<Served>, hits: &AtomicUsize) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let response = {
        let s = served.lock().unwrap();
        let cache = s
            .cache_control
            .as_ref()
            .map(|c| format!("Cache-Control: {c}\r\n"))
            .unwrap_or_default();
        let location = s
            .location
            .as_ref()
            .map(|l| format!("Location: {l}\r\n"))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{cache}{location}Connection: close\r\n\r\n{}",
            s.status,
            s.body.len(),
            s.body
        )
    };
    let mut out = response.as_bytes();
    while !out.is_empty() {
        stream.writable().await?;
        match stream.try_write(out) {
            Ok(n) => out = &out[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn kids(set: &Value) -> Vec<String> {
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn key_cache_honours_max_age() {
    let server = JwksServer::start(&test_keys().a.jwks(), Some("public, max-age=2, must-revalidate")).await;
    let cache = server.cache(json!({}));
    for _ in 0..5 {
        assert_eq!(kids(&cache.key_set().await.unwrap()), ["test-key-a"]);
    }
    assert_eq!(server.hits(), 1, "no refetch within max-age");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    cache.key_set().await.unwrap();
    assert_eq!(server.hits(), 2, "refetched after max-age");
}

#[tokio::test]
async fn key_cache_follows_rotation() {
    let keys = test_keys();
    let server = JwksServer::start(&keys.a.jwks(), Some("max-age=1")).await;
    let cache = server.cache(json!({}));
    assert_eq!(kids(&cache.key_set().await.unwrap()), ["test-key-a"]);
    // Google publishes the new key beside the old one, then drops the old one.
    server.serve(200, &json!({ "keys": [keys.a.jwk(), keys.b.jwk()] }));
    assert_eq!(
        kids(&cache.key_set().await.unwrap()),
        ["test-key-a"],
        "still within max-age"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(kids(&cache.key_set().await.unwrap()), ["test-key-a", "test-key-b"]);
    server.serve(200, &keys.b.jwks());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(kids(&cache.key_set().await.unwrap()), ["test-key-b"]);
}

/// The flow the host runs (see `idgate::jwks`): verify, refresh once on an unknown kid, retry.
#[tokio::test]
async fn unknown_kid_refreshes_exactly_once_and_then_verifies() {
    let keys = test_keys();
    let server = JwksServer::start(&keys.a.jwks(), Some("max-age=3600")).await;
    let cache = server.cache(json!({}));
    let block = json!({ "audience": "coder", "jwks_url": server.url() });
    let token = keys.b.sign(Algorithm::RS256, &claims());

    let key_set = cache.key_set().await.unwrap();
    assert_eq!(server.hits(), 1);
    let reason = refused(verify_with_keys(&token, &block, &key_set, NOW), "untrusted-signer");
    assert!(reason.contains(UNKNOWN_KID_MARKER), "{reason}");

    // Google rotated key b in.
    server.serve(200, &json!({ "keys": [keys.a.jwk(), keys.b.jwk()] }));
    assert!(cache.refresh_for_unknown_kid().await);
    assert_eq!(server.hits(), 2, "exactly one refresh");
    let key_set = cache.key_set().await.unwrap();
    assert_eq!(server.hits(), 2, "the refreshed set is cached");
    assert_eq!(
        verify_with_keys(&token, &block, &key_set, NOW).unwrap().instance_id,
        "4242424242424242424"
    );
}

#[tokio::test]
async fn unknown_kid_flood_is_rate_limited() {
    let server = JwksServer::start(&test_keys().a.jwks(), Some("max-age=3600")).await;
    let cache = Arc::new(server.cache(json!({ "jwks_min_refresh_secs": 2 })));
    cache.key_set().await.unwrap();
    assert!(cache.refresh_for_unknown_kid().await);
    assert_eq!(server.hits(), 2);
    let flood: Vec<_> = (0..200)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.refresh_for_unknown_kid().await })
        })
        .collect();
    for task in flood {
        assert!(!task.await.unwrap(), "refresh within the rate limit");
    }
    assert_eq!(server.hits(), 2, "a flood of unknown kids adds no fetch");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(cache.refresh_for_unknown_kid().await, "allowed again after the window");
    assert!(!cache.refresh_for_unknown_kid().await);
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn concurrent_first_callers_share_one_fetch() {
    let server = JwksServer::start(&test_keys().a.jwks(), Some("max-age=3600")).await;
    let cache = Arc::new(server.cache(json!({})));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.key_set().await })
        })
        .collect();
    for c in callers {
        assert_eq!(kids(&c.await.unwrap().unwrap()), ["test-key-a"]);
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn jwks_server_down_is_keys_unavailable() {
    // A port nothing listens on.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let cache = KeyCache::from_config(&json!({ "jwks_url": format!("http://{closed}/certs") })).unwrap();
    let err: KeysUnavailable = cache.key_set().await.unwrap_err();
    assert!(err.to_string().contains(&closed.to_string()), "{err}");
    assert!(!cache.refresh_for_unknown_kid().await);

    // An error status or a body that is not a key set is no better.
    let server = JwksServer::start(&json!({"error": "x"}), None).await;
    server.serve(503, &json!({"error": "unavailable"}));
    assert!(server.cache(json!({})).key_set().await.is_err());
    server.serve(200, &json!({"keys": []}));
    assert!(server.cache(json!({})).key_set().await.is_err());
}

/// A loopback key-set URL that redirects to another host is refused, and
/// nothing is fetched from where it points: the target is a second loopback
/// server on another address, counting its requests, so the test never leaves
/// the machine even if a redirect were followed.
#[tokio::test]
async fn a_redirect_is_refused_never_followed() {
    let elsewhere = JwksServer::start_on("127.0.0.2:0", &test_keys().a.jwks(), None).await;
    let server = JwksServer::start(&test_keys().a.jwks(), None).await;
    // `localhost` goes through the host's own resolver, which yields only
    // loopback addresses; a good answer from it is served.
    let by_name = KeyCache::from_config(&json!({
        "jwks_url": format!("http://localhost:{}/oauth2/v3/certs", server.addr.port())
    }))
    .unwrap();
    assert_eq!(kids(&by_name.key_set().await.unwrap()), ["test-key-a"]);

    for status in [301, 302, 303, 307, 308] {
        server.redirect(status, &elsewhere.url());
        let err = server.cache(json!({})).key_set().await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("HTTP {status}"))
                && err.contains("follow no redirects")
                && err.contains(&elsewhere.url()),
            "{err}"
        );
    }
    assert_eq!(elsewhere.hits(), 0, "a redirect was followed");
    assert_eq!(server.hits(), 6);
}

#[tokio::test]
async fn last_good_set_is_served_through_an_outage_until_grace_ends() {
    let server = JwksServer::start(&test_keys().a.jwks(), Some("max-age=1")).await;
    let tolerant = server.cache(json!({}));
    let strict = server.cache(json!({})).with_stale_grace(Duration::ZERO);
    tolerant.key_set().await.unwrap();
    strict.key_set().await.unwrap();
    server.serve(500, &json!({}));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(kids(&tolerant.key_set().await.unwrap()), ["test-key-a"]);
    assert!(strict.key_set().await.is_err());
}

#[tokio::test]
async fn offline_key_file_verifies_the_genuine_token() {
    let dir = tempfile::tempdir().unwrap();
    let set = idgate_tests::data("gcp/google_jwk_a3b762f8.json");
    let single = dir.path().join("one-key.json");
    let jwks: Value = serde_json::from_str(&idgate_tests::read_data("gcp/google_jwk_a3b762f8.json")).unwrap();
    std::fs::write(&single, jwks["keys"][0].to_string()).unwrap();
    for file in [set, single] {
        let block = json!({ "audience": GENUINE_AUD, "jwks_file": file });
        let cache = KeyCache::from_config(&block).unwrap();
        let key_set = cache.key_set().await.unwrap();
        let id = verify_with_keys(&genuine_token(), &block, &key_set, GENUINE_NOW).unwrap();
        assert_eq!(id.instance_id, "8418160715288427941");
    }
}
