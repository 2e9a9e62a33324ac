//! The committed corpora, replayed natively in the ordinary test suite: every input
//! that ever found new coverage (and every past crash, kept as a regression input) runs
//! through its target again, uninstrumented and with debug assertions.

use std::path::{Path, PathBuf};

use idgate_fuzz::{plugins, TARGETS};
use idgate_plugin_aws::Aws;
use idgate_plugin_azure::Azure;
use idgate_plugin_gcp::Gcp;
use idgate_plugin_oidc::Oidc;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_input_replays_without_a_panic() {
    for (name, target) in TARGETS {
        let files = corpus(name);
        assert!(!files.is_empty(), "fuzz/corpus/{name} is empty");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            // A panic fails the test; name the input so it can be run alone.
            eprintln!("{name}: {}", file.display());
            target(&data);
        }
    }
}

fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)).unwrap()
}

/// The targets' fixed configuration and time accept the genuine credentials, so the
/// fuzzer starts from inputs that pass every check, not from ones refused at the door.
#[test]
fn the_targets_setup_accepts_the_genuine_credentials() {
    let aws = plugins::verify::<Aws>(
        &plugins::configure::<Aws>(plugins::AWS_CONFIG),
        &example("aws-request.json"),
        plugins::AWS_NOW,
    )
    .unwrap();
    assert_eq!(aws.instance_id, "i-076e9b91f7c420782");
    let azure = plugins::verify::<Azure>(
        &plugins::configure::<Azure>(plugins::AZURE_CONFIG),
        &example("azure-request.json"),
        plugins::AZURE_NOW,
    )
    .unwrap();
    assert_eq!(azure.instance_id, "bd8e7443-24a0-41f3-b949-8baf4fd1c573");
    let token = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/gcp/infisical_gce_full_2024.jwt"),
    )
    .unwrap();
    let credential = serde_json::json!({ "json_web_token": token.trim() }).to_string();
    let gcp = plugins::verify::<Gcp>(
        &plugins::configure::<Gcp>(plugins::gcp_config()),
        &credential,
        plugins::GCP_NOW,
    )
    .unwrap();
    assert_eq!(gcp.instance_id, "8418160715288427941");
    let oidc = plugins::configure::<Oidc>(plugins::oidc_config());
    for (seed, pod) in [
        ("k8s_rs256.jwt", "778a530c-b3f4-47c0-9cd5-ab018fb64f33"),
        ("k8s_es256.jwt", "1d0f2a64-5b9e-4c3a-8f7d-2e6b1a0c9d8e"),
    ] {
        let token =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/oidc").join(seed)).unwrap();
        let credential = serde_json::json!({ "token": token.trim() }).to_string();
        let id = plugins::verify::<Oidc>(&oidc, &credential, plugins::OIDC_NOW).unwrap();
        assert_eq!(id.instance_id, pod, "{seed}");
    }
}
