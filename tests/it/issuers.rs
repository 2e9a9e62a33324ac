//! The AIA issuer cache under clients that name URLs on purpose (issue 29,
//! item 3), through the real `idgate serve` binary: a loopback server stands
//! in for Microsoft's certificate host, and the Azure credential's signer is
//! issued by an intermediate no store holds, so every genuine request depends
//! on the fetched issuer.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use idgate::issuers::HOST_FETCHES_PER_WINDOW;
use idgate_tests::pg::fresh_database;
use serde_json::{json, Value};

use crate::azure::{document, TestCa};
use crate::azure_trust::{leaf_with_aia, IssuerServer};
use crate::http::{add_agent_cli, idgate, post, serve_command, Served};

/// The vmId of [`document`].
const VM_ID: &str = "11111111-2222-3333-4444-555555555555";

/// The request body of an Azure agent whose signer is `leaf`, at the real time.
fn azure_request(leaf: &TestCa) -> String {
    let pkcs7 = leaf.pkcs7(document(idgate::clock::unix_now()), &[]);
    json!({"signature": STANDARD.encode(pkcs7), "encoding": "pkcs7"}).to_string()
}

/// The reproduction of issue 29 item 3: the genuine issuer is fetched and
/// cached; more requests than the old cache held name URLs on hosts off the
/// list; more name URLs on the allowed host than its budget allows; the
/// genuine agent is still accepted, from the cache. Before, the refusals
/// evicted the genuine certificate and the spent budget was remembered as
/// its URL's failure: 401 for five minutes.
#[tokio::test(flavor = "multi_thread")]
async fn clients_naming_issuer_urls_cannot_starve_a_genuine_agent() {
    let db = fresh_database().await;
    let root = TestCa::root("idgate starved root");
    let inter = root.issue_ca("idgate starved intermediate", 1, true);
    let issuer_host = IssuerServer::start(vec![("/inter.crt", inter.der.clone())]).await;
    let genuine = leaf_with_aia(&inter, &issuer_host.url("/inter.crt"));
    // The attacker's own CA: its name is in no store, so the plugin asks the
    // host for whatever URLs the attacker's leaf names.
    let attacker = TestCa::root("idgate attacker root").issue_ca("idgate attacker ca", 1, true);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("idgate.toml");
    std::fs::write(
        &config,
        format!(
            "[issuers]\nallowed_hosts = [\"127.0.0.1\"]\nallow_loopback = true\n[azure]\nroots = '''{}'''\n",
            root.pem
        ),
    )
    .unwrap();
    let token = add_agent_cli(&db, "w", VM_ID, "main");
    let served = serve_command(idgate(&db, &["--config", config.to_str().unwrap()]));
    let accepted = json!({"session_token": token});

    // The genuine issuer is fetched and cached.
    let (status, body, _) = post(&served.base, "azure-instance-identity", azure_request(&genuine)).await;
    assert_eq!((status, &body), (200, &accepted));
    assert_eq!(issuer_host.hits("/inter.crt"), 1);

    // More URLs on hosts off the list than the old cache held (256).
    for i in 0..300 {
        let leaf = leaf_with_aia(&attacker, &format!("http://off-list-{i}.example/ca.crt"));
        let (status, _, _) = post(&served.base, "azure-instance-identity", azure_request(&leaf)).await;
        assert_eq!(status, 401);
    }
    // URLs on the allowed host, past its budget.
    for i in 0..HOST_FETCHES_PER_WINDOW + 10 {
        let leaf = leaf_with_aia(&attacker, &issuer_host.url(&format!("/spam-{i}.crt")));
        let (status, _, _) = post(&served.base, "azure-instance-identity", azure_request(&leaf)).await;
        assert_eq!(status, 401);
    }
    assert!(issuer_host.others() <= HOST_FETCHES_PER_WINDOW + 10);

    // The genuine agent is still accepted, from the cache.
    let (status, body, _) = post(&served.base, "azure-instance-identity", azure_request(&genuine)).await;
    assert_eq!((status, &body), (200, &accepted));
    assert_eq!(issuer_host.hits("/inter.crt"), 1, "served from the cache");

    let logs = stop(served);
    let refusals: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "not using issuer URL")
        .collect();
    assert!(
        refusals
            .iter()
            .any(|v| v["fields"]["reason"].as_str().unwrap_or("").contains("allowed_hosts")),
        "{logs}"
    );
    // The budget was spent while the genuine certificate stayed served.
    assert!(
        refusals.iter().any(|v| v["fields"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("fetches from 127.0.0.1")),
        "{logs}"
    );
}

/// SIGTERM, then the server's logs.
fn stop(served: Served) -> String {
    let Served { mut child, stderr, .. } = served;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    stderr.join().unwrap()
}
