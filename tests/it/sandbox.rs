//! The sandbox contains misbehaving plugins: each fault fails only its own call,
//! quickly, with an error naming the plugin, and well-behaved calls go on. Calls
//! start from the configured snapshot, and nothing one call writes reaches the
//! next. Plugins built against contract 0.1.0 still load and authenticate.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use idgate::sandbox::{CallError, Configured, FaultKind, Limits, Sandbox};
use idgate_plugin_kit::VerifyError;
use idgate_tests::{
    component_cache_dir, read_data, sandbox, test_limits, test_plugin_dir, test_plugin_dir_0_1_0,
    test_plugin_dir_stubbed,
};
use serde_json::json;

/// The misbehaving fixture, configured once (snapshotted) with `{"k":1}`.
fn configured() -> &'static Configured {
    static CONFIGURED: OnceLock<Configured> = OnceLock::new();
    CONFIGURED.get_or_init(|| sandbox().configure("misbehave", &json!({"k": 1})).unwrap())
}

fn misbehave(what: &str) -> Result<idgate_plugin_kit::Identity, CallError> {
    sandbox().verify(configured(), &format!("\"{what}\""), None, 1_700_000_000)
}

/// A well-behaved call still answers, with exactly what it was configured with.
fn assert_still_serving() {
    let id = misbehave("echo").expect("echo answers");
    assert_eq!(id.instance_id, "{\"k\":1}");
    assert_eq!(id.attribute("now"), Some("1700000000"));
}

fn assert_fault(result: Result<idgate_plugin_kit::Identity, CallError>, want: FaultKind) -> String {
    match result {
        Err(CallError::Fault {
            provider,
            message,
            kind,
        }) => {
            assert_eq!(provider, "misbehave");
            assert_eq!(kind, want, "{message}");
            let shown = CallError::Fault {
                provider,
                message: message.clone(),
                kind,
            }
            .to_string();
            assert!(shown.contains("misbehave plugin failed"), "{shown}");
            message
        }
        other => panic!("expected a {want:?} fault, got {other:?}"),
    }
}

#[test]
fn plugins_load_with_their_provider_names_and_contract() {
    let providers: Vec<_> = sandbox()
        .plugins()
        .into_iter()
        .map(|p| (p.provider, p.contract))
        .collect();
    for want in ["aws", "azure", "gcp", "misbehave"] {
        assert!(
            providers.contains(&(want.to_string(), "0.3.0".to_string())),
            "{want} missing from {providers:?}"
        );
    }
}

#[test]
fn runaway_loop_hits_the_deadline_and_others_keep_answering() {
    let started = Instant::now();
    let message = assert_fault(misbehave("loop"), FaultKind::Deadline);
    assert!(message.contains("CPU deadline"), "{message}");
    // Generous bound: proves the loop was stopped, not how fast the machine is.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "loop ran {:?}",
        started.elapsed()
    );
    assert_still_serving();
}

#[test]
fn panic_and_abort_are_traps() {
    assert_fault(misbehave("panic"), FaultKind::Trap);
    assert_fault(misbehave("trap"), FaultKind::Trap);
    assert_still_serving();
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let message = assert_fault(misbehave("memory"), FaultKind::Memory);
    assert!(message.contains("64 MiB"), "{message}");
    assert_still_serving();
}

#[test]
fn no_filesystem_environment_or_clock() {
    // Each of these imports is linked as a trap: the plugin cannot learn anything.
    for what in ["file", "env", "clock"] {
        let message = assert_fault(misbehave(what), FaultKind::Trap);
        assert!(
            message.contains("unknown import") || message.contains("trap"),
            "{what}: {message}"
        );
    }
    assert_still_serving();
}

#[test]
fn wasi_made_local_traps_still_traps_and_imports_nothing() {
    // What `cargo xtask plugins` does to the providers: the fixture so built
    // imports no WASI beyond random, and reaching for a file, the environment
    // or the clock still traps, failing only that call.
    let s = Sandbox::load(&test_plugin_dir_stubbed(), Some(&component_cache_dir()), test_limits()).unwrap();
    let wasm = std::fs::read(test_plugin_dir_stubbed().join("misbehave.wasm")).unwrap();
    let engine = wasmtime::Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap();
    let component = wasmtime::component::Component::new(&engine, &wasm).unwrap();
    let imports: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_string())
        .collect();
    assert!(
        imports
            .iter()
            .all(|i| i.starts_with("idgate:identity/") || i.starts_with("wasi:random/")),
        "{imports:?}"
    );
    let configured = s.configure("misbehave", &json!({"k": 1})).unwrap();
    for what in ["file", "env", "clock"] {
        let result = s.verify(&configured, &format!("\"{what}\""), None, 1_700_000_000);
        assert_fault(result, FaultKind::Trap);
    }
    let id = s.verify(&configured, "\"echo\"", None, 1_700_000_000).unwrap();
    assert_eq!(id.instance_id, "{\"k\":1}");
}

#[test]
fn every_call_gets_a_fresh_instance() {
    for _ in 0..3 {
        assert_eq!(misbehave("state").unwrap().instance_id, "call-1");
    }
}

/// The isolation proof: the fixture leaves a marker in static memory and in a
/// fresh heap allocation on every call, and refuses if it finds one. Calls come
/// from the same snapshot, one after another and from several threads at once,
/// with both memory allocators (the pool reuses slots).
#[test]
fn nothing_a_call_writes_reaches_the_next() {
    for pooling in [true, false] {
        let s = Sandbox::load(
            &test_plugin_dir(),
            Some(&component_cache_dir()),
            Limits {
                pooling,
                ..test_limits()
            },
        )
        .unwrap();
        let plugin = s.configure("misbehave", &json!({})).unwrap();
        for _ in 0..20 {
            let id = s.verify(&plugin, "\"marker\"", None, 0);
            assert_eq!(id.unwrap().instance_id, "no marker", "pooling {pooling}");
        }
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10 {
                        let id = s.verify(&plugin, "\"marker\"", None, 0);
                        assert_eq!(id.unwrap().instance_id, "no marker", "pooling {pooling}");
                    }
                });
            }
        });
        // The same holds when each call configures its own instance.
        for _ in 0..3 {
            let id = s.verify_configuring("misbehave", "\"marker\"", "{}", None, 0);
            assert_eq!(id.unwrap().instance_id, "no marker");
        }
    }
}

#[test]
fn configure_state_is_in_the_snapshot_and_configure_runs_once() {
    let plugin = sandbox().configure("misbehave", &json!({"ca": "x"})).unwrap();
    for _ in 0..3 {
        assert_eq!(
            sandbox().verify(&plugin, "\"echo\"", None, 7).unwrap().instance_id,
            "{\"ca\":\"x\"}"
        );
    }
    // Two configurations of one plugin are independent images.
    assert_eq!(misbehave("echo").unwrap().instance_id, "{\"k\":1}");
}

#[test]
fn a_refused_configuration_names_the_plugin_and_the_key() {
    let err = sandbox()
        .configure("aws", &json!({"allowed_acounts": ["1"]}))
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("aws plugin") && text.contains("allowed_acounts"),
        "{text}"
    );
    assert!(text.contains("bad-config"), "{text}");

    let err = sandbox()
        .configure("azure", &json!({"roots": "no pem here"}))
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("azure plugin") && text.contains("roots"), "{text}");

    let err = sandbox().configure("gcp", &json!({"allowed_zones": []})).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("gcp plugin") && text.contains("allowed_zones"), "{text}");

    let err = sandbox().configure("nope", &json!({})).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn configure_runs_under_the_same_limits() {
    let err = sandbox()
        .configure("misbehave", &json!({"configure": "loop"}))
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("misbehave") && text.contains("CPU deadline"), "{text}");
    let err = sandbox()
        .configure("misbehave", &json!({"configure": "panic"}))
        .unwrap_err();
    assert!(format!("{err:#}").contains("trapped"), "{err:#}");
    let err = sandbox()
        .configure("misbehave", &json!({"configure": "refuse"}))
        .unwrap_err();
    assert!(format!("{err:#}").contains("refused as asked"), "{err:#}");
    assert_still_serving();
}

#[test]
fn configured_snapshots_are_cached_by_plugin_and_configuration() {
    // A configuration no earlier run used: the first configure snapshots and
    // compiles, a second sandbox finds it in the cache, another config does not.
    let unique = format!("{:?}", std::time::SystemTime::now());
    let first = sandbox().configure("misbehave", &json!({ "run": unique })).unwrap();
    assert!(!first.cached());
    let again = Sandbox::load(&test_plugin_dir(), Some(&component_cache_dir()), test_limits()).unwrap();
    let second = again.configure("misbehave", &json!({ "run": unique })).unwrap();
    assert!(second.cached());
    assert_eq!(
        again.verify(&second, "\"echo\"", None, 0).unwrap().instance_id,
        json!({ "run": unique }).to_string()
    );
    let other = again
        .configure("misbehave", &json!({ "run": unique, "other": true }))
        .unwrap();
    assert!(!other.cached());
}

#[test]
fn host_keys_are_a_per_call_input() {
    let keys = r#"{"keys":[]}"#;
    assert_eq!(
        sandbox()
            .verify(configured(), "\"keys\"", Some(keys), 0)
            .unwrap()
            .instance_id,
        keys
    );
    assert_eq!(
        sandbox().verify(configured(), "\"keys\"", None, 0).unwrap().instance_id,
        "none"
    );
}

#[test]
fn faults_do_not_disturb_concurrent_calls() {
    let handles: Vec<_> = ["loop", "memory", "panic", "echo", "echo", "echo"]
        .into_iter()
        .map(|what| std::thread::spawn(move || (what, misbehave(what))))
        .collect();
    for h in handles {
        let (what, result) = h.join().unwrap();
        match what {
            "echo" => assert_eq!(result.unwrap().instance_id, "{\"k\":1}"),
            _ => assert!(matches!(result, Err(CallError::Fault { .. })), "{what}: {result:?}"),
        }
    }
}

#[test]
fn unknown_provider_is_not_loaded() {
    assert!(matches!(
        sandbox().verify_configuring("nope", "{}", "{}", None, 0),
        Err(CallError::NotLoaded(p)) if p == "nope"
    ));
}

#[test]
fn plugin_errors_come_back_typed() {
    match misbehave("refuse") {
        Err(CallError::Rejected(VerifyError::Refused(reason))) => assert_eq!(reason, "refused as asked"),
        other => panic!("expected Refused, got {other:?}"),
    }
    // An identity without an instance ID is never accepted.
    match sandbox().verify_configuring("misbehave", "\"echo\"", "", None, 0) {
        Err(CallError::Rejected(VerifyError::Malformed(reason))) => assert!(reason.contains("no instance ID")),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn compiled_components_are_cached_and_reused() {
    // The shared sandbox has compiled everything into the cache by now.
    let _ = sandbox();
    let again = Sandbox::load(&test_plugin_dir(), Some(&component_cache_dir()), test_limits()).unwrap();
    assert!(again.plugins().iter().all(|p| p.cached), "{:?}", again.plugins());
}

#[test]
fn limits_are_configurable() {
    let tight = Sandbox::load(
        &test_plugin_dir(),
        Some(&component_cache_dir()),
        Limits {
            memory_bytes: 8 << 20,
            ..test_limits()
        },
    )
    .unwrap();
    let plugin = tight.configure("misbehave", &json!({})).unwrap();
    match tight.verify(&plugin, "\"memory\"", None, 0) {
        Err(CallError::Fault {
            kind: FaultKind::Memory,
            message,
            ..
        }) => assert!(message.contains("8 MiB"), "{message}"),
        other => panic!("expected a memory fault, got {other:?}"),
    }
}

#[test]
fn the_on_demand_allocator_keeps_the_same_guarantees() {
    let on_demand = Sandbox::load(
        &test_plugin_dir(),
        Some(&component_cache_dir()),
        Limits {
            pooling: false,
            ..test_limits()
        },
    )
    .unwrap();
    let plugin = on_demand.configure("misbehave", &json!({})).unwrap();
    for _ in 0..3 {
        assert_eq!(
            on_demand.verify(&plugin, "\"state\"", None, 0).unwrap().instance_id,
            "call-1"
        );
    }
    assert!(matches!(
        on_demand.verify(&plugin, "\"memory\"", None, 0),
        Err(CallError::Fault {
            kind: FaultKind::Memory,
            ..
        })
    ));
    assert!(matches!(
        on_demand.verify(&plugin, "\"loop\"", None, 0),
        Err(CallError::Fault {
            kind: FaultKind::Deadline,
            ..
        })
    ));
    assert_eq!(
        on_demand.verify(&plugin, "\"echo\"", None, 0).unwrap().instance_id,
        "{}"
    );
}

/// Genuine credentials of every provider through the configured snapshots: the
/// path `idgate serve` takes.
#[test]
fn genuine_credentials_verify_from_configured_snapshots() {
    let s = sandbox();
    let aws = s.configure("aws", &json!({})).unwrap();
    let credential = json!({
        "document": read_data("aws/coder_iid_document.json"),
        "signature": read_data("aws/coder_iid_signature.b64"),
    });
    let id = s.verify(&aws, &credential.to_string(), None, 1_780_000_000).unwrap();
    assert_eq!(id.instance_id, "i-076e9b91f7c420782");

    let azure = s.configure("azure", &json!({})).unwrap();
    let credential = json!({"signature": read_data("azure/coder_regular_attested.b64"), "encoding": "pkcs7"});
    let id = s.verify(&azure, &credential.to_string(), None, 1_650_337_200).unwrap();
    assert!(!id.instance_id.is_empty());

    let gcp = s
        .configure("gcp", &json!({"audience": "71d1b279-2fe3-4828-85f5-2f4a2fdb02a1"}))
        .unwrap();
    let credential = json!({"json_web_token": read_data("gcp/infisical_gce_full_2024.jwt").trim()});
    let keys = read_data("gcp/google_jwk_a3b762f8.json");
    let id = s
        .verify(&gcp, &credential.to_string(), Some(&keys), 1_715_963_400)
        .unwrap();
    assert_eq!(id.instance_id, "8418160715288427941");
    // Without the host's keys the snapshot has none: the keys are never configuration.
    idgate_tests::refused(
        s.verify(&gcp, &credential.to_string(), None, 1_715_963_400),
        "bad-config",
    );
}

/// A plugin built against contract 0.1.0 (the AWS plugin, `contract-0-1`)
/// loads beside the host's 0.2.0 support and authenticates genuine credentials.
#[test]
fn a_contract_0_1_0_plugin_still_authenticates() {
    let dir = test_plugin_dir_0_1_0();
    let old = Sandbox::load(&dir, Some(&component_cache_dir()), test_limits())
        .unwrap_or_else(|e| panic!("loading {}: {e:#} (build it with `cargo xtask plugins`)", dir.display()));
    let plugins = old.plugins();
    assert_eq!(plugins.len(), 1);
    assert_eq!(
        (plugins[0].provider.as_str(), plugins[0].contract.as_str()),
        ("aws", "0.1.0")
    );

    let (document, signature) = (
        read_data("aws/coder_iid_document.json"),
        read_data("aws/coder_iid_signature.b64"),
    );
    let credential = json!({"document": document, "signature": signature}).to_string();
    let aws = old.configure("aws", &json!({})).unwrap();
    let id = old.verify(&aws, &credential, None, 1_780_000_000).unwrap();
    assert_eq!(id.instance_id, "i-076e9b91f7c420782");
    assert_eq!(id.attribute("region"), Some("us-east-1"));

    let tampered = json!({"document": document.replace("us-east-1", "us-east-2"), "signature": signature});
    match old.verify(&aws, &tampered.to_string(), None, 1_780_000_000) {
        Err(CallError::Rejected(VerifyError::BadSignature(_) | VerifyError::UntrustedSigner(_))) => {}
        other => panic!("tampered document: {other:?}"),
    }
    // Its configuration still travels with each call: an allow-list applies.
    let strict = old
        .configure("aws", &json!({"allowed_accounts": ["000000000000"]}))
        .unwrap();
    idgate_tests::refused(old.verify(&strict, &credential, None, 1_780_000_000), "refused");
}

/// A plugin built against contract 0.2.0 (the AWS plugin, `contract-0-2`: no
/// `issuers` import, no `trust` export) loads beside 0.3.0 ones, is
/// configured once and snapshotted, and authenticates genuine credentials.
#[test]
fn a_contract_0_2_0_plugin_still_authenticates() {
    let dir = idgate_tests::test_plugin_dir_0_2_0();
    let old = Sandbox::load(&dir, Some(&component_cache_dir()), test_limits())
        .unwrap_or_else(|e| panic!("loading {}: {e:#} (build it with `cargo xtask plugins`)", dir.display()));
    let plugins = old.plugins();
    assert_eq!(
        plugins
            .iter()
            .map(|p| (p.provider.as_str(), p.contract.as_str()))
            .collect::<Vec<_>>(),
        [("aws", "0.2.0")]
    );
    let (document, signature) = (
        read_data("aws/coder_iid_document.json"),
        read_data("aws/coder_iid_signature.b64"),
    );
    let credential = json!({"document": document, "signature": signature}).to_string();
    let aws = old.configure("aws", &json!({})).unwrap();
    assert!(aws.trust().is_empty(), "0.2.0 has no trust export");
    let id = old.verify(&aws, &credential, None, 1_780_000_000).unwrap();
    assert_eq!(id.instance_id, "i-076e9b91f7c420782");
    let tampered = json!({"document": document.replace("us-east-1", "us-east-2"), "signature": signature});
    assert!(old.verify(&aws, &tampered.to_string(), None, 1_780_000_000).is_err());
    let strict = old
        .configure("aws", &json!({"allowed_accounts": ["000000000000"]}))
        .unwrap();
    idgate_tests::refused(old.verify(&strict, &credential, None, 1_780_000_000), "refused");
}

/// A configuration a plugin refuses is reported once, at start-up, naming the
/// plugin and the key: `idgate serve` does not start and `idgate verify` exits 2.
#[test]
fn the_binary_refuses_to_start_with_a_refused_configuration() {
    let bin = crate::http::idgate_binary();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("idgate.toml");
    std::fs::write(&config, "[aws]\nallowed_acounts = [\"111111111111\"]\n").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("--plugins")
            .arg(test_plugin_dir())
            .arg("--cache-dir")
            .arg(component_cache_dir())
            // Never reached: configuring the plugins comes first.
            .args(["--database-url", "postgres://127.0.0.1:1/none"])
            .args(args)
            .env_remove("IDGATE_CONFIG")
            .stdin(std::fs::File::open(idgate_tests::root().join("examples/aws-request.json")).unwrap())
            .output()
            .unwrap()
    };
    for args in [&["verify", "aws"][..], &["serve", "--listen", "127.0.0.1:0"][..]] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("aws plugin") && stderr.contains("allowed_acounts"),
            "{args:?}: {stderr}"
        );
    }
}
