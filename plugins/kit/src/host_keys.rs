//! Key material the host fetches for the provider (Google's JWKS for `gcp`).
//!
//! Inside a component this is the contract's `host-keys` import, read during
//! `verify` (never `configure`: keys change while the host runs and must not be
//! frozen into the snapshot). Natively — benchmarks, unit tests — the caller
//! supplies the set for the duration of a call with [`with_key_set`].

#[cfg(not(all(target_arch = "wasm32", not(feature = "contract-0-1"))))]
thread_local! {
    static KEY_SET: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The host's current key set for this provider (`{"keys": [...]}`), if any.
pub fn key_set() -> Option<String> {
    #[cfg(all(target_arch = "wasm32", not(feature = "contract-0-1")))]
    {
        crate::component::idgate::identity::host_keys::key_set()
    }
    #[cfg(not(all(target_arch = "wasm32", not(feature = "contract-0-1"))))]
    {
        KEY_SET.with(|k| k.borrow().clone())
    }
}

/// Runs `f` with `keys` as the key set [`key_set`] returns (native callers; in a
/// component the host answers instead, and this only runs `f`).
pub fn with_key_set<R>(keys: Option<&str>, f: impl FnOnce() -> R) -> R {
    #[cfg(all(target_arch = "wasm32", not(feature = "contract-0-1")))]
    {
        let _ = keys;
        f()
    }
    #[cfg(not(all(target_arch = "wasm32", not(feature = "contract-0-1"))))]
    {
        let previous = KEY_SET.with(|k| k.replace(keys.map(str::to_string)));
        let out = f();
        KEY_SET.with(|k| *k.borrow_mut() = previous);
        out
    }
}
