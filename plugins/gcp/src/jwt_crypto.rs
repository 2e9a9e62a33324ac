//! jsonwebtoken's signature checks, routed to the host's crypto.
//!
//! jsonwebtoken finds its `CryptoProvider` in a process-wide static, while the
//! host's crypto reaches [`Provider::verify`](idgate_plugin_kit::Provider::verify)
//! as a borrowed `&dyn Crypto`. [`with_crypto`] lends that borrow to the static
//! provider for the length of one call through a thread-local slot (a component
//! is single-threaded; natively each thread has its own slot).

use std::cell::{Cell, RefCell};

use idgate_plugin_kit::{Crypto, SignatureAlgorithm};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{signature, Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};

use crate::rsa_spki::rsa_spki_der;

/// Verifies RS256 through the lent host crypto and refuses everything else.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory,
    verifier_factory,
    key_utils: KeyUtils::new_unimplemented(),
};

type LentCrypto = *const (dyn Crypto + 'static);

thread_local! {
    /// The crypto lent by [`with_crypto`], only while its borrow is live.
    static LENT: Cell<Option<LentCrypto>> = const { Cell::new(None) };
    /// Why the host could not use the key, if it said so: jsonwebtoken folds
    /// every verifier error into "invalid signature", which would hide it.
    static KEY_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs [`PROVIDER`] as jsonwebtoken's process default.
///
/// Returns `Err` when a different provider was installed first (possible only
/// natively, in a process that also uses jsonwebtoken for something else): the
/// verifier then refuses to run rather than check signatures some other way.
pub fn install() -> Result<(), String> {
    match PROVIDER.install_default() {
        Ok(()) => Ok(()),
        Err(installed) if std::ptr::eq(installed, &PROVIDER) => Ok(()),
        Err(_) => Err("another jsonwebtoken CryptoProvider is installed in this process".into()),
    }
}

/// Runs `f` with `crypto` lent to the provider. Also returns the host's reason
/// if it rejected a key as unusable during `f`.
pub fn with_crypto<R>(crypto: &dyn Crypto, f: impl FnOnce() -> R) -> (R, Option<String>) {
    /// Clears the slot however `f` ends, so the pointer never outlives the borrow.
    struct Lend(Option<LentCrypto>);
    impl Drop for Lend {
        fn drop(&mut self) {
            LENT.with(|slot| slot.set(self.0));
        }
    }

    let ptr: *const (dyn Crypto + '_) = crypto;
    // SAFETY: only the trait object's lifetime bound changes (same layout). The
    // pointer is readable only through `LENT`, which `Lend` restores before this
    // function returns or unwinds, i.e. while `crypto` is still borrowed.
    let ptr: LentCrypto = unsafe { std::mem::transmute::<*const (dyn Crypto + '_), LentCrypto>(ptr) };
    KEY_ERROR.with(|e| e.borrow_mut().take());
    let _lend = Lend(LENT.with(|slot| slot.replace(Some(ptr))));
    let result = f();
    (result, KEY_ERROR.with(|e| e.borrow_mut().take()))
}

fn signer_factory(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, JwtError> {
    Err(ErrorKind::Signing("this plugin only verifies tokens".into()).into())
}

fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, JwtError> {
    match (alg, key.kind()) {
        (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
            let spki = rsa_spki_der(n, e).map_err(ErrorKind::InvalidRsaKey)?;
            Ok(Box::new(HostRs256 { spki }))
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

/// RSASSA-PKCS1-v1_5 / SHA-256 with one key, checked by the host.
struct HostRs256 {
    spki: Vec<u8>,
}

impl signature::Verifier<Vec<u8>> for HostRs256 {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let Some(ptr) = LENT.with(|slot| slot.get()) else {
            // Called outside `with_crypto`: fail closed.
            return Err(signature::Error::new());
        };
        // SAFETY: `LENT` holds a pointer only while `with_crypto`'s borrow is live.
        let crypto = unsafe { &*ptr };
        match crypto.verify_signature(SignatureAlgorithm::RsaPkcs1Sha256, &self.spki, msg, sig) {
            Ok(true) => Ok(()),
            Ok(false) => Err(signature::Error::new()),
            Err(reason) => {
                KEY_ERROR.with(|e| *e.borrow_mut() = Some(reason));
                Err(signature::Error::new())
            }
        }
    }
}

impl JwtVerifier for HostRs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}
