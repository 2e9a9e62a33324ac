//! TLS termination through the real binary: a CA made here, a real client
//! (reqwest on rustls) that trusts only that CA, HTTP/2 and HTTP/1.1 chosen by
//! ALPN, and the edge's timeouts in front of the handshake.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use idgate_tests::pg::fresh_database;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::TcpStream;

use crate::edge::{agent, authenticate, closed_by_server, terminate, GUARD};
use crate::http::{idgate, serve_command};

/// A CA and a server certificate for `localhost` and 127.0.0.1 that it signed.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    cert: PathBuf,
    key: PathBuf,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(DnType::CommonName, "idgate test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.distinguished_name.push(DnType::CommonName, "idgate");
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    write_key(&key_file, &key.serialize_pem());
    Pki {
        ca: ca.pem(),
        cert: cert_file,
        key: key_file,
        dir,
    }
}

fn write_key(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A client that trusts the test CA and nothing else.
fn client(pki: &Pki) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
}

/// One agent authenticates over HTTP/2 and over HTTP/1.1, as ALPN decides;
/// a client that does not trust the CA, a plain-HTTP client, and a client
/// that never starts its handshake get nothing.
#[tokio::test(flavor = "multi_thread")]
async fn https_with_http2_and_http1_by_alpn() {
    let db = fresh_database().await;
    let agent = agent(&db);
    let pki = pki();
    let mut cmd = idgate(&db, &[]);
    cmd.env("IDGATE_TLS_CERT_FILE", &pki.cert)
        .env("IDGATE_TLS_KEY_FILE", &pki.key)
        .env("IDGATE_LIMITS_HEADER_TIMEOUT_MS", "2000");
    let mut served = serve_command(cmd);
    assert!(served.base.starts_with("https://127.0.0.1:"), "{}", served.base);

    let h2 = client(&pki).build().unwrap();
    assert_eq!(authenticate(&h2, &served.base, &agent).await, reqwest::Version::HTTP_2);
    let h1 = client(&pki).http1_only().build().unwrap();
    assert_eq!(authenticate(&h1, &served.base, &agent).await, reqwest::Version::HTTP_11);

    let stranger = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let refused = stranger.get(format!("{}/healthz", served.base)).send().await;
    assert!(refused.is_err(), "a client without the CA connected: {refused:?}");
    let plain = served.base.replacen("https://", "http://", 1);
    let refused = tokio::time::timeout(GUARD, reqwest::get(format!("{plain}/healthz")))
        .await
        .unwrap();
    assert!(refused.is_err(), "plain HTTP was answered on the TLS port: {refused:?}");

    // The handshake is bounded by the header timeout like a request head.
    let stalled = TcpStream::connect(served.base.strip_prefix("https://").unwrap())
        .await
        .unwrap();
    assert!(closed_by_server(stalled).await.is_empty());

    assert!(terminate(&mut served, libc::SIGTERM, GUARD).await.success());
}

/// Runs `cmd` to its end (it must not start serving) and returns its exit
/// code and stderr.
fn exit_of(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("idgate serve started despite a broken [tls]");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

/// A certificate without its key, or with another key, stops `serve` with
/// exit 2 and a message naming the files.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_certificate_setting_is_a_clear_error() {
    let db = fresh_database().await;
    let pki = pki();
    let cert = pki.cert.to_str().unwrap();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        exit_of(idgate(&db, &args))
    };

    let (code, stderr) = serve(&["--tls-cert-file", cert]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cert_file is set without key_file"), "{stderr}");

    let other = pki.dir.path().join("other-key.pem");
    write_key(&other, &KeyPair::generate().unwrap().serialize_pem());
    let (code, stderr) = serve(&["--tls-cert-file", cert, "--tls-key-file", other.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("do not make a usable certificate"), "{stderr}");

    let (code, stderr) = serve(&["--tls-cert-file", pki.key.to_str().unwrap(), "--tls-key-file", cert]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("holds no CERTIFICATE block"), "{stderr}");
}

/// SIGHUP reads the certificate files again: a replacement whose key does not
/// match fails the reload and the old certificate stays; a matching one is
/// served to new connections, while a connection opened before goes on.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_renews_the_certificate_and_keeps_open_connections() {
    let db = fresh_database().await;
    let agent = agent(&db);
    let old = pki();
    let new = pki();
    let mut cmd = idgate(&db, &[]);
    cmd.env("IDGATE_TLS_CERT_FILE", &old.cert)
        .env("IDGATE_TLS_KEY_FILE", &old.key);
    let mut served = serve_command(cmd);
    let kept = client(&old).build().unwrap();
    authenticate(&kept, &served.base, &agent).await;
    // Only for reading `/metrics` whatever the certificate.
    let any = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let trusted_by = |pki: &Pki| {
        let client = client(pki).build().unwrap();
        let url = format!("{}/healthz", served.base);
        async move { client.get(url).send().await.is_ok() }
    };
    assert!(!trusted_by(&new).await);

    // The new certificate with the old key: refused, nothing changes.
    std::fs::copy(&new.cert, &old.cert).unwrap();
    assert!(!crate::reload::hup(&any, &served).await);
    assert!(trusted_by(&old).await, "a failed reload changed the certificate");
    // And with its own key: served from the next handshake on.
    write_key(&old.key, &std::fs::read_to_string(&new.key).unwrap());
    assert!(crate::reload::hup(&any, &served).await);
    assert!(trusted_by(&new).await, "the renewed certificate is not served");
    assert!(!trusted_by(&old).await, "the old certificate is still served");
    // The connection opened before the reload still answers.
    authenticate(&kept, &served.base, &agent).await;

    assert!(terminate(&mut served, libc::SIGTERM, GUARD).await.success());
}
