//! Issuer certificates the host fetches for the plugin from AIA `caIssuers`
//! URLs (contract 0.3.0's `issuers` import).
//!
//! A call never waits on the network: [`fetched`] answers with what the host
//! already holds and otherwise records the URL; when `verify` then fails, the
//! host fetches what was asked for (allow-list, size cap, timeout) and runs
//! `verify` again. Whatever comes back is untrusted input: a plugin uses it
//! only as a candidate issuer that must still chain to a pinned root.
//! Natively — benchmarks, unit tests — the caller supplies the answers for the
//! duration of a call with [`with_fetched`].

#[cfg(not(all(target_arch = "wasm32", not(any(feature = "contract-0-1", feature = "contract-0-2")))))]
thread_local! {
    static FETCHED: std::cell::RefCell<Vec<(String, Vec<u8>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The body the host holds for `url`, if any (`None` also before the host has
/// fetched it, and always on contracts before 0.3.0, which lack the import).
pub fn fetched(url: &str) -> Option<Vec<u8>> {
    #[cfg(all(target_arch = "wasm32", not(any(feature = "contract-0-1", feature = "contract-0-2"))))]
    {
        crate::component::idgate::identity::issuers::fetched(url)
    }
    #[cfg(not(all(target_arch = "wasm32", not(any(feature = "contract-0-1", feature = "contract-0-2")))))]
    {
        FETCHED.with(|f| f.borrow().iter().find(|(u, _)| u == url).map(|(_, body)| body.clone()))
    }
}

/// Runs `f` with `bodies` (URL, body) as what [`fetched`] answers (native
/// callers; in a component the host answers instead, and this only runs `f`).
pub fn with_fetched<R>(bodies: &[(&str, &[u8])], f: impl FnOnce() -> R) -> R {
    #[cfg(all(target_arch = "wasm32", not(any(feature = "contract-0-1", feature = "contract-0-2"))))]
    {
        let _ = bodies;
        f()
    }
    #[cfg(not(all(target_arch = "wasm32", not(any(feature = "contract-0-1", feature = "contract-0-2")))))]
    {
        let owned = bodies.iter().map(|(u, b)| (u.to_string(), b.to_vec())).collect();
        let previous = FETCHED.with(|cell| cell.replace(owned));
        let out = f();
        FETCHED.with(|cell| *cell.borrow_mut() = previous);
        out
    }
}
