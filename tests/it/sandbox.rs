//! The sandbox contains misbehaving plugins: each fault fails only its own call,
//! quickly, with an error naming the plugin, and well-behaved calls go on.

use std::time::{Duration, Instant};

use idgate::sandbox::{CallError, FaultKind, Limits, Sandbox};
use idgate_plugin_kit::VerifyError;
use idgate_tests::{component_cache_dir, sandbox, test_limits, test_plugin_dir};

fn misbehave(what: &str) -> Result<idgate_plugin_kit::Identity, CallError> {
    sandbox().verify("misbehave", &format!("\"{what}\""), "{\"k\":1}", 1_700_000_000)
}

/// A well-behaved call still answers, with exactly what it was given.
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
            providers.contains(&(want.to_string(), "0.1.0".to_string())),
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
fn every_call_gets_a_fresh_instance() {
    for _ in 0..3 {
        assert_eq!(misbehave("state").unwrap().instance_id, "call-1");
    }
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
        sandbox().verify("nope", "{}", "{}", 0),
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
    match sandbox().verify("misbehave", "\"echo\"", "", 0) {
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
    match tight.verify("misbehave", "\"memory\"", "{}", 0) {
        Err(CallError::Fault {
            kind: FaultKind::Memory,
            message,
            ..
        }) => assert!(message.contains("8 MiB"), "{message}"),
        other => panic!("expected a memory fault, got {other:?}"),
    }
}

#[test]
fn the_pooling_allocator_keeps_the_same_guarantees() {
    let pooled = Sandbox::load(
        &test_plugin_dir(),
        Some(&component_cache_dir()),
        Limits {
            pooling: true,
            ..test_limits()
        },
    )
    .unwrap();
    // Fresh instance per call: a reused memory slot is reset, statics start over.
    for _ in 0..3 {
        assert_eq!(
            pooled.verify("misbehave", "\"state\"", "{}", 0).unwrap().instance_id,
            "call-1"
        );
    }
    assert!(matches!(
        pooled.verify("misbehave", "\"memory\"", "{}", 0),
        Err(CallError::Fault {
            kind: FaultKind::Memory,
            ..
        })
    ));
    assert!(matches!(
        pooled.verify("misbehave", "\"loop\"", "{}", 0),
        Err(CallError::Fault {
            kind: FaultKind::Deadline,
            ..
        })
    ));
    assert_eq!(
        pooled.verify("misbehave", "\"echo\"", "{}", 0).unwrap().instance_id,
        "{}"
    );
}
