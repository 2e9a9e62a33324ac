//! Mounts: any plugin served by its name, one plugin mounted twice with two
//! configurations, host-fetched keys for any mount, and paths that name no
//! mount — through the real router, the real components and PostgreSQL.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use idgate::api::ApiLimits;
use idgate_tests::pg::fresh_database;
use idgate_tests::sandbox;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::azure::{document, TestCa};
use crate::gcp::TestKey;
use crate::http::{register, serve_router};

/// The test-made Azure document's VM (its chains are valid to 2040).
const VM: &str = "11111111-2222-3333-4444-555555555555";

/// POSTs `body` to `segment` under `/api/v2/workspaceagents/`: the status and the JSON answer.
pub(crate) async fn post(client: &reqwest::Client, base: &str, segment: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}/api/v2/workspaceagents/{segment}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The body of a GET to `url`, as text.
pub(crate) async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// A plugin dropped in with no block is served at `<provider>-instance-identity`.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_in_plugin_is_served_by_its_name() {
    let db = fresh_database().await;
    let base = serve_router(sandbox().clone(), "", db.pool.clone(), ApiLimits::default()).await;
    let client = reqwest::Client::new();
    // The fixture's `echo` answers with its configuration block as the instance
    // ID, which resolves in the mount's namespace.
    let token = register(&db, "w", "misbehave:{}", "main").await;
    let (status, body) = post(&client, &base, "misbehave-instance-identity", &json!({"do": "echo"})).await;
    assert_eq!(
        (status, body["session_token"].as_str()),
        (200, Some(token.as_str())),
        "{body}"
    );
    // Its refusals use the mount's name in Coder's envelope.
    let (status, body) = post(&client, &base, "misbehave-instance-identity", &json!({"do": "refuse"})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["message"], "misbehave identity refused by policy.");
}

/// The Azure plugin mounted twice, each mount trusting its own root: a
/// document signed under one is accepted on its route and refused on the
/// other's, and each mount counts in its own metrics label.
#[tokio::test(flavor = "multi_thread")]
async fn one_plugin_mounted_twice_keeps_two_configurations_apart() {
    let db = fresh_database().await;
    let (root_a, root_b) = (TestCa::root("idgate mount root a"), TestCa::root("idgate mount root b"));
    // The leaf's issuer is configured as an intermediate of mount a only.
    let inter_a = root_a.issue_ca("idgate mount intermediate a", 1, true);
    let leaf_a = crate::azure_trust::leaf_with_aia(&inter_a, "http://caissuers.microsoft.com/unused.crt");
    let config = format!(
        "[issuers]\nallowed_hosts = []\n\
         [mounts.azure-a]\nplugin = \"azure\"\ndisplay_name = \"Azure (tenant A)\"\ncheck_expires_on = false\nroots = '''{}'''\nintermediates = '''{}'''\n\
         [mounts.azure-b]\nplugin = \"azure\"\ncheck_expires_on = false\nroots = '''{}'''\n\
         [azure]\n",
        root_a.pem, inter_a.pem, root_b.pem
    );
    let base = serve_router(sandbox().clone(), &config, db.pool.clone(), ApiLimits::default()).await;
    let client = reqwest::Client::new();
    let token = register(&db, "w", &format!("azure-a:{VM}"), "main").await;
    let body = json!({"signature": STANDARD.encode(leaf_a.pkcs7(document(idgate::clock::unix_now()), &[])), "encoding": "pkcs7"});

    let (status, answer) = post(&client, &base, "azure-a-instance-identity", &body).await;
    assert_eq!(
        (status, answer["session_token"].as_str()),
        (200, Some(token.as_str())),
        "{answer}"
    );
    let (status, answer) = post(&client, &base, "azure-b-instance-identity", &body).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["message"], "Invalid azure-b identity.");
    // Coder's own Azure route is the `[azure]` mount, with neither test root.
    let (status, answer) = post(&client, &base, "azure-instance-identity", &body).await;
    assert_eq!(
        (status, answer["message"].as_str()),
        (401, Some("Invalid Azure identity."))
    );
    // The display name is the mount's. An undecodable credential is 400 on
    // a mount of idgate's, and 401 on Coder's route, as Coder answers it.
    let garbage = json!({"signature": "@@", "encoding": "pkcs7"});
    let (status, answer) = post(&client, &base, "azure-a-instance-identity", &garbage).await;
    assert_eq!(
        (status, answer["message"].as_str()),
        (400, Some("Invalid Azure (tenant A) identity."))
    );
    let (status, answer) = post(&client, &base, "azure-instance-identity", &garbage).await;
    assert_eq!(
        (status, answer["message"].as_str()),
        (401, Some("Invalid Azure identity."))
    );

    let metrics = get_text(&client, &format!("{base}/metrics")).await;
    for label in [
        "provider=\"azure-a\",outcome=\"ok\"",
        "provider=\"azure-b\",outcome=\"unauthorized\"",
        "provider=\"azure\",outcome=\"unauthorized\"",
    ] {
        assert!(metrics.contains(label), "{label} missing from\n{metrics}");
    }
}

/// Host-fetched keys for any mount: the GCP plugin mounted again with its own
/// `jwks_file` verifies tokens of its own key and refuses the default mount's.
#[tokio::test(flavor = "multi_thread")]
async fn every_mount_gets_its_own_host_key_cache() {
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let other = TestKey::new("mount-key-b");
    let jwks_b = dir.path().join("jwks-b.json");
    std::fs::write(&jwks_b, other.jwks().to_string()).unwrap();
    let config = format!(
        "{}[mounts.gcp-b]\nplugin = \"gcp\"\naudience = \"coder\"\njwks_file = {:?}\n",
        crate::http::gcp_config(dir.path()),
        jwks_b.display().to_string()
    );
    let base = serve_router(sandbox().clone(), &config, db.pool.clone(), ApiLimits::default()).await;
    let client = reqwest::Client::new();
    let token = register(&db, "w", "gcp-b:gce-7", "main").await;
    register(&db, "w-raw", "gce-7", "main").await;
    let now = idgate::clock::unix_now();
    let claims = json!({
        "iss": "https://accounts.google.com", "aud": "coder", "sub": "1", "iat": now - 10, "exp": now + 3000,
        "google": {"compute_engine": {"instance_id": "gce-7", "project_id": "p", "zone": "z", "instance_name": "vm"}},
    });
    let by_b = json!({"json_web_token": other.sign(Algorithm::RS256, &claims)});
    let by_a = json!({"json_web_token": crate::http::gcp_token("gce-7")});

    let (status, answer) = post(&client, &base, "gcp-b-instance-identity", &by_b).await;
    assert_eq!(
        (status, answer["session_token"].as_str()),
        (200, Some(token.as_str())),
        "{answer}"
    );
    let (status, _) = post(&client, &base, "gcp-b-instance-identity", &by_a).await;
    assert_eq!(status, 401);
    // Coder's Google route is the `gcp` mount, with key a only.
    let (status, _) = post(&client, &base, "google-instance-identity", &by_a).await;
    assert_eq!(status, 200);
    let (status, _) = post(&client, &base, "google-instance-identity", &by_b).await;
    assert_eq!(status, 401);
}

/// A path that names no mount is a plain 404, counted nowhere: what clients
/// send cannot grow the metrics.
#[tokio::test(flavor = "multi_thread")]
async fn paths_naming_no_mount_are_plain_404s() {
    let db = fresh_database().await;
    let base = serve_router(sandbox().clone(), "", db.pool.clone(), ApiLimits::default()).await;
    let client = reqwest::Client::new();
    for segment in [
        "nobody-instance-identity",
        "Bad-instance-identity",
        "instance-identity",
        "whatever",
    ] {
        let (status, body) = post(&client, &base, segment, &json!({})).await;
        assert_eq!(status, 404, "{segment}: {body}");
        if segment.ends_with("-instance-identity") && segment != "Bad-instance-identity" {
            assert!(
                body["message"].as_str().unwrap().contains("No provider is mounted"),
                "{body}"
            );
        }
    }
    let metrics = get_text(&client, &format!("{base}/metrics")).await;
    assert!(!metrics.contains("nobody"), "{metrics}");
}

/// A block whose plugin is not loaded is reported, not dropped: `/readyz`
/// names it, and its route says no plugin serves it.
#[tokio::test(flavor = "multi_thread")]
async fn a_block_without_its_plugin_is_reported() {
    let db = fresh_database().await;
    let base = serve_router(
        sandbox().clone(),
        "[nosuch]\nx = 1\n",
        db.pool.clone(),
        ApiLimits::default(),
    )
    .await;
    let client = reqwest::Client::new();
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(
        body.contains("mount \"nosuch\" is configured but its plugin \"nosuch\" is not loaded"),
        "{body}"
    );
    let (status, answer) = post(&client, &base, "nosuch-instance-identity", &json!({})).await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("No plugin is loaded"),
        "{answer}"
    );
}
