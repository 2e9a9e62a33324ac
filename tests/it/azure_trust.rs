//! Azure's trust material at today's real time, and issuers fetched through
//! the host.
//!
//! Which links are real: every bundled certificate, and every link between
//! them (each G2 OCSP intermediate → Microsoft TLS RSA Root G2 cross-signed →
//! DigiCert Global Root G2), is checked here with its real signature at the
//! real current time. No genuine attested document signed under the G2
//! hierarchy is public, so the leaf → G2 link cannot be shown with real
//! material: the path tests start at each real G2 intermediate, and the
//! fetched-issuer tests use a test-made root, intermediate and leaf.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use der::Encode;
use idgate::authenticate::{AuthError, Authenticator};
use idgate::config::FileConfig;
use idgate::crypto::NativeCrypto;
use idgate::sandbox::CallError;
use idgate_plugin_azure::cert::Cert;
use idgate_plugin_azure::trust;
use idgate_plugin_kit::{Crypto, SignatureAlgorithm};
use serde_json::json;

use crate::azure::{document, params, rcgen_key, TestCa};
use crate::mounts::get_text;

/// How long before a bundled certificate a current chain needs expires this
/// test starts failing: time to bundle its successor and release.
const WARNING_SECS: i64 = 60 * 86_400;
/// Verification time for the test-made chains.
const NOW: i64 = 1_750_000_000;

fn now() -> i64 {
    idgate::clock::unix_now()
}

fn named<'a>(certs: &'a [Cert], cn: &str) -> Vec<&'a Cert> {
    certs
        .iter()
        .filter(|c| c.common_names.iter().any(|n| n.starts_with(cn)))
        .collect()
}

/// The signature algorithm of `cert`'s issuer's signature, as the host knows it.
fn algorithm(cert: &Cert) -> SignatureAlgorithm {
    match cert.signature_alg.to_string().as_str() {
        "1.2.840.113549.1.1.11" => SignatureAlgorithm::RsaPkcs1Sha256,
        "1.2.840.113549.1.1.12" => SignatureAlgorithm::RsaPkcs1Sha384,
        "1.2.840.113549.1.1.13" => SignatureAlgorithm::RsaPkcs1Sha512,
        "1.2.840.113549.1.1.5" => SignatureAlgorithm::RsaPkcs1Sha1,
        "1.2.840.10045.4.3.2" => SignatureAlgorithm::EcdsaP256Sha256,
        "1.2.840.10045.4.3.3" => SignatureAlgorithm::EcdsaP384Sha384,
        other => panic!("{}: unexpected signature algorithm {other}", cert.label()),
    }
}

/// Every bundled certificate that is not self-signed carries a real signature
/// of a bundled certificate whose subject is its issuer — the expired
/// historic ones included (signatures do not expire) — and every root is
/// self-signed with its own key.
#[test]
fn every_bundled_link_verifies_under_its_issuer() {
    let b = trust::builtin().unwrap();
    let all: Vec<&Cert> = b
        .store
        .roots
        .iter()
        .chain(&b.store.intermediates)
        .chain([&b.microsoft_root_g2])
        .collect();
    for child in &all {
        let issuers: Vec<&&Cert> = all.iter().filter(|c| c.subject == child.issuer).collect();
        assert!(!issuers.is_empty(), "no bundled issuer for {}", child.label());
        let verified = issuers.iter().any(|issuer| {
            NativeCrypto
                .verify_signature(algorithm(child), &issuer.spki, &child.tbs, &child.signature)
                .unwrap_or(false)
        });
        assert!(
            verified,
            "{}'s signature does not verify under its issuer",
            child.label()
        );
    }
}

/// The built-in store reaches DigiCert Global Root G2 from every current G2
/// intermediate, today: each link of OCSP nn → Microsoft TLS RSA Root G2
/// (cross-signed) → DigiCert Global Root G2 is checked with its real signature
/// (the host's crypto), its names, its CA constraints and its validity at the
/// real time. The path validator itself refuses a CA as the end of a path
/// (as webpki does), and no genuine leaf under the G2 CAs is public, so the
/// validator's own walk from a leaf is shown with test-made chains
/// (`azure.rs`), and these real links are checked here one by one.
#[test]
fn every_g2_intermediate_reaches_digicert_global_root_g2_today() {
    let builtin = trust::builtin().unwrap();
    let store = &builtin.store;
    let today = now();
    let xsign = named(&store.intermediates, "Microsoft TLS RSA Root G2");
    assert_eq!(xsign.len(), 1, "one cross-signed Root G2 is bundled");
    let digicert = named(&store.roots, "DigiCert Global Root G2");
    assert_eq!(digicert.len(), 1);
    let link = |child: &Cert, issuer: &Cert| {
        assert_eq!(child.issuer, issuer.subject, "{} → {}", child.label(), issuer.label());
        assert!(
            NativeCrypto
                .verify_signature(algorithm(child), &issuer.spki, &child.tbs, &child.signature)
                .unwrap(),
            "{} is not signed by {}'s key",
            child.label(),
            issuer.label()
        );
        assert!(
            child.validity_error(today).is_none(),
            "{} is not valid today",
            child.label()
        );
        assert!(
            issuer.basic_constraints.is_some_and(|(ca, _)| ca),
            "{} is not a CA",
            issuer.label()
        );
    };
    link(xsign[0], digicert[0]);
    assert!(digicert[0].validity_error(today).is_none());
    let g2 = named(&store.intermediates, "Microsoft TLS G2 RSA CA OCSP");
    assert_eq!(g2.len(), 8, "OCSP 02, 04, ..., 16");
    for ocsp in &g2 {
        link(ocsp, xsign[0]);
        // The same key as the self-signed Root G2, which is pinned by default.
        link(ocsp, &builtin.microsoft_root_g2);
    }
    // The self-signed Root G2 is pinned by default, and valid today.
    let configured = idgate_plugin_azure::config::Config::parse("{}").unwrap();
    assert!(configured
        .store
        .roots
        .iter()
        .any(|r| r.der == builtin.microsoft_root_g2.der && r.validity_error(today).is_none()));
}

/// The expiry guard, at the real time: every certificate the configured Azure
/// plugin marks current (what a chain made today needs) outlives the warning
/// window. When this fails, bundle the successors Microsoft publishes.
#[test]
fn current_trust_outlives_the_warning_window() {
    let configured = idgate_tests::sandbox().configure("azure", &json!({})).unwrap();
    let anchors = configured.trust();
    let current: Vec<_> = anchors.iter().filter(|a| a.current).collect();
    assert!(current.iter().any(|a| a.role == "root"), "{anchors:?}");
    assert!(
        current.iter().filter(|a| a.role == "intermediate").count() >= 9,
        "{current:?}"
    );
    for a in &current {
        assert!(
            a.not_after > now() + WARNING_SECS,
            "{} ({}) expires at {}, within {} days: bundle its successor",
            a.subject,
            a.role,
            idgate_plugin_kit::time::format_rfc3339(a.not_after),
            WARNING_SECS / 86_400
        );
    }
    // The expired issuing CAs are still listed, for historic checks, and not current.
    assert!(anchors
        .iter()
        .any(|a| !a.current && a.subject.contains("Microsoft Azure RSA TLS Issuing CA 03")));
    assert!(anchors.iter().all(|a| a.origin == "built-in"));
    // Keys-only providers list nothing (AWS's certificates only carry keys).
    let aws = idgate_tests::sandbox().configure("aws", &json!({})).unwrap();
    assert!(aws.trust().is_empty());
}

/// A configured root shows up as configured and current.
#[test]
fn configured_roots_are_listed_as_configured() {
    let root = TestCa::root("idgate listed root");
    let configured = idgate_tests::sandbox()
        .configure("azure", &json!({ "roots": root.pem }))
        .unwrap();
    let listed: Vec<_> = configured.trust().iter().filter(|a| a.origin == "configured").collect();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].current && listed[0].role == "root" && listed[0].subject.contains("idgate listed root"));
}

// ---------------------------------------------------------------------------
// Issuers fetched through the host, from a loopback server standing in for
// Microsoft's.

/// A loopback HTTP server with fixed bodies by path, counting requests (to
/// each known path, and to all others, which get 404).
pub(crate) struct IssuerServer {
    base: String,
    hits: Arc<HashMap<String, AtomicUsize>>,
    others: Arc<AtomicUsize>,
}

impl IssuerServer {
    pub(crate) async fn start(bodies: Vec<(&str, Vec<u8>)>) -> IssuerServer {
        let hits: Arc<HashMap<String, AtomicUsize>> = Arc::new(
            bodies
                .iter()
                .map(|(p, _)| (p.to_string(), AtomicUsize::new(0)))
                .collect(),
        );
        let bodies: Arc<HashMap<String, Vec<u8>>> =
            Arc::new(bodies.into_iter().map(|(p, b)| (p.to_string(), b)).collect());
        let others = Arc::new(AtomicUsize::new(0));
        let (counted, missed) = (hits.clone(), others.clone());
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let (bodies, hits, missed) = (bodies.clone(), counted.clone(), missed.clone());
            async move {
                match hits.get(uri.path()) {
                    Some(n) => n.fetch_add(1, Ordering::SeqCst),
                    None => missed.fetch_add(1, Ordering::SeqCst),
                };
                match bodies.get(uri.path()) {
                    Some(b) => (axum::http::StatusCode::OK, b.clone()),
                    None => (axum::http::StatusCode::NOT_FOUND, Vec::new()),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        IssuerServer {
            base: format!("http://{addr}"),
            hits,
            others,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn hits(&self, path: &str) -> usize {
        self.hits[path].load(Ordering::SeqCst)
    }

    /// Requests to paths it has no body for.
    pub(crate) fn others(&self) -> usize {
        self.others.load(Ordering::SeqCst)
    }
}

/// An IMDS-named leaf issued by `issuer` whose AIA names `ca_issuers`.
pub(crate) fn leaf_with_aia(issuer: &TestCa, ca_issuers: &str) -> TestCa {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax};
    let aia = AuthorityInfoAccessSyntax(vec![AccessDescription {
        access_method: der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.2"),
        access_location: GeneralName::UniformResourceIdentifier(der::asn1::Ia5String::new(ca_issuers).unwrap()),
    }]);
    let mut p = params("metadata.azure.com", vec!["metadata.azure.com".into()], None);
    p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 1],
        aia.to_der().unwrap(),
    )];
    let key = rcgen_key(2);
    let cert = p.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    TestCa::new(cert, key, 2)
}

fn credential(leaf: &TestCa) -> String {
    json!({"signature": STANDARD.encode(leaf.pkcs7(document(NOW), &[])), "encoding": "pkcs7"}).to_string()
}

fn authenticator(issuers: &str, root: &TestCa) -> Authenticator {
    let text = format!("{issuers}\n[azure]\nroots = '''{}'''\n", root.pem);
    let file = FileConfig::parse(&text).unwrap();
    Authenticator::new(idgate_tests::sandbox().clone(), &file).unwrap()
}

fn refusal(result: Result<idgate_plugin_kit::Identity, AuthError>) -> String {
    match result {
        Err(AuthError::Call(CallError::Rejected(e))) => {
            assert_eq!(e.kind(), "untrusted-signer", "{e}");
            e.reason().to_string()
        }
        other => panic!("expected an untrusted-signer refusal, got {other:?}"),
    }
}

const LOOPBACK_ALLOWED: &str = "[issuers]\nallowed_hosts = [\"127.0.0.1\"]\nallow_loopback = true\n";

/// The PKCS#7 carries only the leaf and no store holds its issuer: the host
/// fetches it from the leaf's AIA URL once, the plugin verifies the chain to
/// the pinned root with it, and the next request is served from the cache.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_issuer_is_fetched_through_the_host() {
    let root = TestCa::root("idgate aia root");
    let inter = root.issue_ca("idgate aia intermediate", 1, true);
    let server = IssuerServer::start(vec![("/inter.crt", inter.der.clone())]).await;
    let leaf = leaf_with_aia(&inter, &server.url("/inter.crt"));

    // Without fetching (no host allowed), the issuer is missing.
    let off = authenticator("[issuers]\nallowed_hosts = []\n", &root);
    let why = refusal(off.verify("azure", credential(&leaf), NOW).await);
    assert!(why.contains("idgate aia intermediate"), "{why}");
    assert_eq!(server.hits("/inter.crt"), 0);

    let auth = authenticator(LOOPBACK_ALLOWED, &root);
    let id = auth.verify("azure", credential(&leaf), NOW).await.unwrap();
    assert_eq!(id.instance_id, "11111111-2222-3333-4444-555555555555");
    assert_eq!(server.hits("/inter.crt"), 1);
    auth.verify("azure", credential(&leaf), NOW).await.unwrap();
    assert_eq!(
        server.hits("/inter.crt"),
        1,
        "the second request is served from the cache"
    );
}

/// What the host will not fetch: a host off the allow-list, loopback without
/// the test switch, an answer over the size cap. And what it fetches is only a
/// candidate: an issuer that does not chain to a pinned root is refused.
#[tokio::test(flavor = "multi_thread")]
async fn fetched_issuers_are_bounded_and_never_trusted_by_themselves() {
    let root = TestCa::root("idgate aia root");
    let inter = root.issue_ca("idgate aia intermediate", 1, true);
    // Same subject as the real intermediate, issued under a root nobody pinned.
    let rogue_root = TestCa::root("idgate rogue root");
    let rogue = rogue_root.issue_ca("idgate aia intermediate", 1, true);
    let mut big = inter.der.clone();
    big.resize(100_000, 0);
    let server = IssuerServer::start(vec![
        ("/inter.crt", inter.der.clone()),
        ("/big.crt", big),
        ("/rogue.crt", rogue.der.clone()),
    ])
    .await;

    // Off the allow-list: never contacted.
    let leaf = leaf_with_aia(&inter, &server.url("/inter.crt"));
    let elsewhere = authenticator(
        "[issuers]\nallowed_hosts = [\"caissuers.microsoft.com\"]\nallow_loopback = true\n",
        &root,
    );
    refusal(elsewhere.verify("azure", credential(&leaf), NOW).await);
    // Loopback without the test switch: never contacted either.
    let strict = authenticator("[issuers]\nallowed_hosts = [\"127.0.0.1\"]\n", &root);
    refusal(strict.verify("azure", credential(&leaf), NOW).await);
    assert_eq!(server.hits("/inter.crt"), 0);

    // Over the size cap: fetched, cut off, not used.
    let oversized = leaf_with_aia(&inter, &server.url("/big.crt"));
    let capped = authenticator(&format!("{LOOPBACK_ALLOWED}max_bytes = 4096\n"), &root);
    refusal(capped.verify("azure", credential(&oversized), NOW).await);
    assert_eq!(server.hits("/big.crt"), 1);

    // A fetched issuer that does not chain to a pinned root.
    let misled = leaf_with_aia(&inter, &server.url("/rogue.crt"));
    let auth = authenticator(LOOPBACK_ALLOWED, &root);
    let why = refusal(auth.verify("azure", credential(&misled), NOW).await);
    assert!(why.contains("signature") || why.contains("rogue"), "{why}");
    assert_eq!(server.hits("/rogue.crt"), 1);
}

// ---------------------------------------------------------------------------
// The expiry watch as operators see it.

/// `/metrics` exports the time left on Azure's current trust material, and
/// `/readyz` warns (still 200) once it falls inside `trust_warning_days`.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_readyz_show_the_time_left() {
    let db = idgate_tests::pg::fresh_database().await;
    let client = reqwest::Client::new();
    // A window of a century: every current certificate is inside it.
    for (config, warned) in [("trust_warning_days = 36500\n", true), ("", false)] {
        let base = crate::http::serve_router(
            idgate_tests::sandbox().clone(),
            config,
            db.pool.clone(),
            idgate::api::ApiLimits::default(),
        )
        .await;
        let metrics = get_text(&client, &format!("{base}/metrics")).await;
        let line = metrics
            .lines()
            .find(|l| l.starts_with("idgate_trust_seconds_left{provider=\"azure\"}"))
            .unwrap_or_else(|| panic!("no Azure trust gauge in\n{metrics}"));
        let left: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(left > WARNING_SECS, "{line}");
        // Providers without certificates export nothing.
        assert!(
            !metrics.contains("idgate_trust_seconds_left{provider=\"aws\"}"),
            "{metrics}"
        );

        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let body = ready.text().await.unwrap();
        assert_eq!(
            body.contains("warning: azure: intermediate") && body.contains("expires at 2029-06-03"),
            warned,
            "{body}"
        );
    }
}

/// `idgate plugins --trust` lists every anchor with its notAfter and exits 1
/// when a current one is inside the warning window.
#[test]
fn the_plugins_command_lists_trust_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str| {
        let path = dir.path().join("idgate.toml");
        std::fs::write(&path, config).unwrap();
        std::process::Command::new(crate::http::idgate_binary())
            .args(["--plugins"])
            .arg(idgate_tests::test_plugin_dir())
            .arg("--cache-dir")
            .arg(idgate_tests::component_cache_dir())
            .arg("--config")
            .arg(&path)
            .args(["plugins", "--trust"])
            .output()
            .unwrap()
    };
    let out = run("");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.contains("intermediate")
            && l.contains("current")
            && l.contains("notAfter 2029-06-03")
            && l.contains("Microsoft TLS G2 RSA CA OCSP 02")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("historic") && l.contains("Issuing CA 03")),
        "{stdout}"
    );
    assert!(stdout.contains("aws: no certificates"), "{stdout}");

    let out = run("trust_warning_days = 36500\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: azure:"));
}

/// Operators update CAs without a release: `roots_file` / `intermediates_file`
/// name PEM bundles the host reads and hands to the plugin as `roots` /
/// `intermediates`.
#[tokio::test(flavor = "multi_thread")]
async fn roots_and_intermediates_come_from_bundle_files() {
    let root = TestCa::root("idgate bundled root");
    let inter = root.issue_ca("idgate bundled intermediate", 1, true);
    let leaf = leaf_with_aia(&inter, "http://caissuers.microsoft.com/not-fetched.crt");
    let dir = tempfile::tempdir().unwrap();
    let (roots, intermediates) = (dir.path().join("roots.pem"), dir.path().join("intermediates.pem"));
    std::fs::write(&roots, &root.pem).unwrap();
    std::fs::write(&intermediates, &inter.pem).unwrap();
    let text = format!(
        "[issuers]\nallowed_hosts = []\n[azure]\nroots_file = {:?}\nintermediates_file = {:?}\n",
        roots.display().to_string(),
        intermediates.display().to_string()
    );
    let auth = Authenticator::new(idgate_tests::sandbox().clone(), &FileConfig::parse(&text).unwrap()).unwrap();
    let id = auth.verify("azure", credential(&leaf), NOW).await.unwrap();
    assert_eq!(id.instance_id, "11111111-2222-3333-4444-555555555555");
    assert!(auth
        .trust("azure")
        .iter()
        .any(|a| a.origin == "configured" && a.subject.contains("idgate bundled intermediate")));

    // A bundle that is not there stops start-up, naming the key and the file.
    let missing = format!(
        "[azure]\nroots_file = {:?}\n",
        dir.path().join("gone.pem").display().to_string()
    );
    let err = Authenticator::new(idgate_tests::sandbox().clone(), &FileConfig::parse(&missing).unwrap())
        .err()
        .expect("a missing bundle is an error");
    assert!(format!("{err:#}").contains("roots_file"), "{err:#}");
}
