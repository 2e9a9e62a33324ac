//! Section: Azure's budget. An Azure verification checks a certificate chain
//! as well as the document's signature, where AWS's checks one signature; this
//! row says what that costs per call against AWS's, side by side in one run,
//! natively and in the sandbox (fresh instance from the configured snapshot),
//! on two pairs of credentials:
//! - the genuine vectors (`tests/data`): Azure's production chain through the
//!   built-in store (leaf → issuing CA → DigiCert root), AWS's RSA-signed
//!   document under the built-in region certificates;
//! - what the HTTP rows send (`credentials.rs`): a test-made Azure root
//!   configured under `[azure] roots` and its leaf, a test-made AWS key
//!   configured under `[aws.certificates]`.
//!
//! The target is on server CPU per authentication (the ceiling
//! section's CPU budget rows): [`headline`] turns those into the ratio.
//!
//! Runs alone with `cargo run --release -p idgate-bench -- azure` (after
//! `cargo xtask plugins`), printing the section's Markdown.

use std::fmt::Write as _;
use std::sync::Arc;

use idgate::crypto::NativeCrypto;
use idgate::sandbox::{Limits, Sandbox};
use idgate_plugin_kit::{Identity, Provider, VerifyError};
use serde_json::{json, Value};

use crate::ceiling;
use crate::stats::{fmt, side_by_side, Summary};
use crate::Env;

/// The target: Azure's server CPU per authentication at most this many times AWS's.
pub const TARGET: f64 = 1.25;

/// One credential with its configuration, verifiable natively and in the sandbox.
struct Side {
    provider: &'static str,
    credential: String,
    config: Value,
    now: i64,
    native: Box<dyn Fn() -> Result<Identity, VerifyError>>,
}

fn side<P: Provider + 'static>(provider: &'static str, credential: String, config: Value, now: i64) -> Side {
    let configured = Arc::new(P::configure(&config.to_string()).expect("the benchmark's configuration"));
    let native = {
        let credential = credential.clone();
        Box::new(move || P::verify(&NativeCrypto, &configured, &credential, now)) as Box<dyn Fn() -> _>
    };
    Side {
        provider,
        credential,
        config,
        now,
        native,
    }
}

/// The two pairs: (what they are, AWS, Azure).
fn pairs(env: &Env) -> Vec<(&'static str, Side, Side)> {
    let data = |rel: &str| std::fs::read_to_string(env.root.join("tests/data").join(rel)).expect("test data");
    let genuine_aws = json!({
        "document": data("aws/coder_iid_document.json"),
        "signature": data("aws/coder_iid_signature.b64"),
    })
    .to_string();
    let genuine_azure = json!({"signature": data("azure/coder_regular_attested.b64"), "encoding": "pkcs7"}).to_string();
    let now = idgate::clock::unix_now();
    let (aws, azure) = (crate::credentials::Aws::new(), crate::credentials::Azure::new());
    vec![
        (
            "genuine vectors, built-in trust",
            side::<idgate_plugin_aws::Aws>("aws", genuine_aws, json!({}), 1_700_000_000),
            // 2022-04-19T03:00:00Z, inside the vector's validity.
            side::<idgate_plugin_azure::Azure>("azure", genuine_azure, json!({}), 1_650_337_200),
        ),
        (
            "the HTTP rows' test-made credentials, configured trust",
            side::<idgate_plugin_aws::Aws>("aws", aws.body("i-budget", None, now), aws.config(), now),
            side::<idgate_plugin_azure::Azure>("azure", azure.body("vm-budget", None, now), azure.config(), now),
        ),
    ]
}

/// Runs the section and returns its Markdown.
pub fn run(env: &Env) -> String {
    let cache = std::env::temp_dir().join(format!("idgate-bench-azure-cache-{}", std::process::id()));
    let sandbox = Sandbox::load(&env.plugin_dir, Some(&cache), Limits::default()).expect("loading plugins");
    let mut md = String::from(
        "### Azure's budget: one verification against AWS's\n\n\
         Per call, side by side in this run (rounds alternate AWS and Azure), natively (the plugin crates \
         compiled for the host, configured once) and in the sandbox (a fresh instance from the configured \
         snapshot, pooling). Azure checks the document's signature *and* the signer's chain to a pinned root; \
         AWS checks one signature. The chain's CA signature over the signer certificate, the same in every \
         call, is verified once per process and then answered from the host's memo of valid certificate \
         signatures (`idgate_sandbox::signature_memo`); validity, names and the path are checked in every call. The issue's target is on server CPU per authentication: Azure ≤ \
         1.25× AWS (see the headline and the CPU budget rows).\n\n\
         | credentials | where | AWS | Azure | Azure / AWS |\n|---|---|---|---|---|\n",
    );
    for (what, aws, azure) in pairs(env) {
        let mut unverified = Vec::new();
        for s in [&aws, &azure] {
            if let Err(e) = (s.native)() {
                unverified.push(format!("{} natively: {e}", s.provider));
            }
        }
        let configured: Vec<_> = [&aws, &azure]
            .iter()
            .map(|s| sandbox.configure(s.provider, &s.config).expect("configure"))
            .collect();
        let boxed = |i: usize, s: &Side| sandbox.verify(&configured[i], &s.credential, None, s.now);
        for (i, s) in [&aws, &azure].into_iter().enumerate() {
            if let Err(e) = boxed(i, s) {
                unverified.push(format!("{} in the sandbox: {e}", s.provider));
            }
        }
        if !unverified.is_empty() {
            let _ = writeln!(md, "| {what} | not measured: {} | | | |", unverified.join("; "));
            continue;
        }
        let (n_aws, n_azure) = side_by_side(
            11,
            100,
            || {
                (aws.native)().unwrap();
            },
            || {
                (azure.native)().unwrap();
            },
        );
        let (b_aws, b_azure) = side_by_side(
            11,
            50,
            || {
                boxed(0, &aws).unwrap();
            },
            || {
                boxed(1, &azure).unwrap();
            },
        );
        row(&mut md, what, "native", &n_aws, &n_azure);
        row(&mut md, what, "sandbox", &b_aws, &b_azure);
    }
    md.push('\n');
    let _ = std::fs::remove_dir_all(&cache);
    md
}

fn row(md: &mut String, what: &str, place: &str, aws: &Summary, azure: &Summary) {
    let _ = writeln!(
        md,
        "| {what} | {place} | {} | {} | **{:.2}×** |",
        aws.show(),
        azure.show(),
        azure.median.as_secs_f64() / aws.median.as_secs_f64()
    );
}

/// The headline: Azure's server CPU per authentication (idgate + PostgreSQL,
/// the ceiling section's CPU budget rows) against AWS's, and the target.
pub fn headline(rows: &[ceiling::Row]) -> Option<String> {
    let cpu = |provider: &str| {
        rows.iter()
            .find(|r| r.mode == ceiling::Mode::Real && r.clients == ceiling::BUDGET_CLIENTS && r.provider == provider)
            .map(|r| r.cpu.idgate + r.cpu.postgres)
    };
    let (aws, azure) = (cpu("aws")?, cpu("azure")?);
    let ratio = azure.as_secs_f64() / aws.as_secs_f64();
    Some(format!(
        "- Azure's budget: server CPU per Azure authentication {} against AWS's {}: {ratio:.2}× (target ≤ {TARGET}×; \
         per verification, see *Azure's budget* under *Sandbox costs*).",
        fmt(azure),
        fmt(aws)
    ))
}
