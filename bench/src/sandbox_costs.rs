//! What the sandbox costs: start-up with and without the compiled cache, the
//! per-call price of a fresh instance, the host crypto import against the same
//! verify natively, and each verifier natively against through the sandbox.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use idgate::crypto::NativeCrypto;
use idgate::sandbox::{Limits, Sandbox};
use idgate_plugin_kit::encoding::base64_encode;
use idgate_plugin_kit::{Crypto, Provider, SignatureAlgorithm};
use rsa::pkcs8::EncodePublicKey;
use rsa::signature::{SignatureEncoding, Signer};

use crate::stats::{fmt, ratio, side_by_side};
use crate::Env;

/// Runs the section and returns its Markdown.
pub fn run(env: &Env) -> String {
    let mut md = String::from("## Sandbox costs\n\n");
    startup(env, &mut md);
    let cache = std::env::temp_dir().join(format!("idgate-bench-cache-{}", std::process::id()));
    let sandbox = Sandbox::load(&env.plugin_dir, Some(&cache), Limits::default()).expect("loading plugins");
    let pooled = Sandbox::load(
        &env.plugin_dir,
        Some(&cache),
        Limits {
            pooling: true,
            ..Limits::default()
        },
    )
    .expect("loading plugins (pooling)");
    per_call(env, &sandbox, &pooled, &mut md);
    crypto_import(&sandbox, &mut md);
    wasm_tax(env, &sandbox, &mut md);
    let _ = std::fs::remove_dir_all(&cache);
    md
}

fn startup(env: &Env, md: &mut String) {
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut count = 0;
    for round in 0..3 {
        let cache = std::env::temp_dir().join(format!("idgate-bench-startup-{}-{round}", std::process::id()));
        let t = Instant::now();
        let s = Sandbox::load(&env.plugin_dir, Some(&cache), Limits::default()).expect("cold load");
        cold.push(t.elapsed());
        count = s.plugins().len();
        drop(s);
        let t = Instant::now();
        let s = Sandbox::load(&env.plugin_dir, Some(&cache), Limits::default()).expect("warm load");
        warm.push(t.elapsed());
        assert!(s.plugins().iter().all(|p| p.cached));
        let _ = std::fs::remove_dir_all(&cache);
    }
    cold.sort();
    warm.sort();
    let _ = writeln!(
        md,
        "### Start-up: loading {count} plugins\n\n| | median of 3 | \n|---|---|\n\
         | cold (compile every component) | {} |\n| warm (compiled cache) | {} |\n| ratio cold / warm | {:.0}× |\n",
        fmt(cold[1]),
        fmt(warm[1]),
        cold[1].as_secs_f64() / warm[1].as_secs_f64()
    );
}

fn per_call(env: &Env, on_demand: &Sandbox, pooled: &Sandbox, md: &mut String) {
    let _ = writeln!(
        md,
        "### Per call: fresh store + instantiate + `verify`, memory mapped per call vs the pooling allocator\n\n\
         Both sides make a fresh instance for every call; the pooling allocator only takes its memory from \
         pre-reserved slots.\n\n| call | on-demand memory | pooling allocator | ratio pooling / on-demand |\n|---|---|---|---|"
    );
    let echo = |s: &Sandbox| {
        s.verify("misbehave", "\"echo\"", "{}", 0).expect("echo");
    };
    let (a, b) = side_by_side(15, 200, || echo(on_demand), || echo(pooled));
    let _ = writeln!(
        md,
        "| trivial `verify` | {} | {} | {} |",
        a.show(),
        b.show(),
        ratio(&a, &b)
    );
    for case in cases(env) {
        let run = |s: &Sandbox| {
            s.verify(case.provider, &case.credential, &case.config, case.now)
                .expect("genuine vector");
        };
        let (a, b) = side_by_side(11, 50, || run(on_demand), || run(pooled));
        let _ = writeln!(
            md,
            "| {} genuine vector | {} | {} | {} |",
            case.provider,
            a.show(),
            b.show(),
            ratio(&a, &b)
        );
    }
    md.push('\n');
}

fn crypto_import(sandbox: &Sandbox, md: &mut String) {
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key");
    let spki = key
        .to_public_key()
        .to_public_key_der()
        .expect("SPKI")
        .as_bytes()
        .to_vec();
    let msg = b"an instance identity document, more or less".to_vec();
    let sig = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key).sign(&msg).to_vec();
    let config = format!(
        "{}|{}|{}",
        base64_encode(&spki),
        base64_encode(&msg),
        base64_encode(&sig)
    );
    const N: u32 = 50;
    assert_eq!(
        sandbox
            .verify("misbehave", &format!("\"rsa:{N}\""), &config, 0)
            .unwrap()
            .instance_id,
        format!("{N}/{N}")
    );
    let native = || {
        for _ in 0..N {
            assert_eq!(
                NativeCrypto.verify_signature(SignatureAlgorithm::RsaPkcs1Sha256, &spki, &msg, &sig),
                Ok(true)
            );
        }
    };
    let boxed = || {
        sandbox
            .verify("misbehave", &format!("\"rsa:{N}\""), &config, 0)
            .unwrap();
    };
    let (n, b) = side_by_side(9, 20, native, boxed);
    let per = |d: Duration| fmt(d / N);
    let _ = writeln!(
        md,
        "### RSA-2048 PKCS#1 v1.5 / SHA-256 verify: host import from a plugin vs native\n\n\
         {N} verifies per call (one fresh instance per call).\n\n\
         | | per verify |\n|---|---|\n| native (`ring`) | {} |\n| from a plugin, through the import | {} |\n| ratio | {} |\n",
        per(n.median),
        per(b.median),
        ratio(&n, &b)
    );
}

/// A genuine credential for one provider, checkable natively and in the sandbox.
struct Case {
    provider: &'static str,
    credential: String,
    config: String,
    now: i64,
    native: fn(&dyn Crypto, &str, &str, i64) -> Result<idgate_plugin_kit::Identity, idgate_plugin_kit::VerifyError>,
}

fn cases(env: &Env) -> Vec<Case> {
    let data = |rel: &str| std::fs::read_to_string(env.root.join("tests/data").join(rel)).expect("test data");
    // The file is already a key set (`{"keys": [...]}`).
    let gcp_jwks: serde_json::Value = serde_json::from_str(&data("gcp/google_jwk_a3b762f8.json")).expect("JWKS");
    vec![
        Case {
            provider: "aws",
            credential: serde_json::json!({
                "document": data("aws/coder_iid_document.json"),
                "signature": data("aws/coder_iid_signature.b64"),
            })
            .to_string(),
            config: "{}".into(),
            now: 1_700_000_000,
            native: idgate_plugin_aws::Aws::verify,
        },
        Case {
            provider: "azure",
            credential: serde_json::json!({"signature": data("azure/coder_regular_attested.b64"), "encoding": "pkcs7"})
                .to_string(),
            config: "{}".into(),
            now: 1_650_337_200, // 2022-04-19T03:00:00Z
            native: idgate_plugin_azure::Azure::verify,
        },
        Case {
            provider: "gcp",
            credential: serde_json::json!({"json_web_token": data("gcp/infisical_gce_full_2024.jwt").trim()})
                .to_string(),
            config: serde_json::json!({
                "audience": "71d1b279-2fe3-4828-85f5-2f4a2fdb02a1",
                "jwks": gcp_jwks,
            })
            .to_string(),
            now: 1_715_963_400,
            native: idgate_plugin_gcp::Gcp::verify,
        },
    ]
}

fn wasm_tax(env: &Env, sandbox: &Sandbox, md: &mut String) {
    let _ = writeln!(
        md,
        "### WASM tax: each verifier natively vs through the sandbox (fresh instance per call)\n\n\
         Same genuine credential, same code (the plugin crate compiled for the host, with the host's native \
         crypto) on both sides.\n\n| provider | native | sandboxed | ratio |\n|---|---|---|---|"
    );
    for case in cases(env) {
        let native_ok = (case.native)(&NativeCrypto, &case.credential, &case.config, case.now);
        let boxed_ok = sandbox.verify(case.provider, &case.credential, &case.config, case.now);
        if native_ok.is_err() || boxed_ok.is_err() {
            let _ = writeln!(
                md,
                "| {} | not measured: the genuine vector does not verify ({:?} / {:?}) | | |",
                case.provider,
                native_ok.err(),
                boxed_ok.err().map(|e| e.to_string())
            );
            continue;
        }
        let (n, b) = side_by_side(
            11,
            50,
            || {
                (case.native)(&NativeCrypto, &case.credential, &case.config, case.now).unwrap();
            },
            || {
                sandbox
                    .verify(case.provider, &case.credential, &case.config, case.now)
                    .unwrap();
            },
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            case.provider,
            n.show(),
            b.show(),
            ratio(&n, &b)
        );
    }
    md.push('\n');
}
