//! Certificate signatures the host has already found valid.
//!
//! Every Azure VM of a region presents the same signer certificate, so the
//! chain check of every Azure authentication asks the host to verify the same
//! CA signature over the same certificate: one RSA verification of two per
//! authentication, the largest single cost in a profile of the Azure path. A
//! signature check is a pure function of (algorithm, key, message, signature),
//! so the answer for a tuple checked before is remembered: each check is still
//! made, once per distinct tuple, not once per request.
//!
//! What is remembered, and why it is safe:
//! - Only signatures over X.509 v3 certificates (the message is a DER
//!   TBSCertificate): a certificate is a long-lived public object presented
//!   again and again, while a document's or token's signature belongs to one
//!   credential and would only push certificates out.
//! - Only valid signatures. Entries are keyed by the SHA-256 of the whole
//!   tuple, so a hit needs the very bytes that verified before; an altered
//!   certificate, key or signature is a miss and is checked in full.
//! - Whether a signature is valid says nothing about trust: the plugin still
//!   decides which key may sign what (the chain to a pinned root, names,
//!   validity at `now`), on every request.
//! - Bounded: [`CAPACITY`] entries, least recently used out first. Anyone can
//!   make valid self-signed certificates and push entries out, which costs
//!   only the checks being made again.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use idgate_plugin_kit::SignatureAlgorithm;

/// Most remembered signatures: far more CA-over-certificate links than the
/// clouds' chains have, few enough that a full scan on insert is cheap.
pub const CAPACITY: usize = 1024;

/// SHA-256 of (algorithm, key, message, signature), each length-prefixed.
type Key = [u8; 32];

/// A bounded set of tuples that verified, with their last use.
#[derive(Debug, Default)]
pub struct Memo {
    used: HashMap<Key, u64>,
    clock: u64,
}

impl Memo {
    /// Whether `key` is remembered (and, if so, marks it used).
    fn hit(&mut self, key: &Key) -> bool {
        self.clock += 1;
        match self.used.get_mut(key) {
            Some(used) => {
                *used = self.clock;
                true
            }
            None => false,
        }
    }

    /// Remembers `key`, dropping the least recently used entry when full.
    fn remember(&mut self, key: Key) {
        if self.used.len() >= CAPACITY && !self.used.contains_key(&key) {
            if let Some(oldest) = self.used.iter().min_by_key(|(_, used)| **used).map(|(k, _)| *k) {
                self.used.remove(&oldest);
            }
        }
        self.clock += 1;
        self.used.insert(key, self.clock);
    }
}

/// The remembered answer for this tuple, or `check`'s (remembered when it is a
/// valid signature over a certificate). `check` runs without the lock held,
/// so checks on different threads do not wait for each other.
pub fn verify(
    memo: &Mutex<Memo>,
    algorithm: SignatureAlgorithm,
    spki_der: &[u8],
    message: &[u8],
    signature: &[u8],
    check: impl FnOnce() -> Result<bool, String>,
) -> Result<bool, String> {
    if !is_v3_tbs_certificate(message) {
        return check();
    }
    let key = key(algorithm, spki_der, message, signature);
    if lock(memo).hit(&key) {
        return Ok(true);
    }
    let answer = check();
    if answer == Ok(true) {
        lock(memo).remember(key);
    }
    answer
}

/// The process's memo, shared by every plugin: a valid signature is valid
/// whoever asks.
pub fn shared() -> &'static Mutex<Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

fn lock(memo: &Mutex<Memo>) -> MutexGuard<'_, Memo> {
    // Nothing panics while holding the lock; if something did, the set is still whole.
    memo.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn key(algorithm: SignatureAlgorithm, spki_der: &[u8], message: &[u8], signature: &[u8]) -> Key {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(&[algorithm as u8]);
    for part in [spki_der, message, signature] {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut key = [0; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

/// Whether `message` starts as a DER TBSCertificate of an X.509 v3
/// certificate does: a SEQUENCE (definite length) whose first element is
/// `[0] EXPLICIT INTEGER 2`, and nothing after the SEQUENCE. Documents (JSON),
/// JWT signing inputs (base64url) and CMS signed attributes (a SET) are not.
fn is_v3_tbs_certificate(message: &[u8]) -> bool {
    const VERSION_3: [u8; 5] = [0xa0, 0x03, 0x02, 0x01, 0x02];
    let (header, length) = match message {
        [0x30, n, ..] if *n < 0x80 => (2, usize::from(*n)),
        [0x30, 0x81, n, ..] => (3, usize::from(*n)),
        [0x30, 0x82, hi, lo, ..] => (4, usize::from(*hi) << 8 | usize::from(*lo)),
        _ => return false,
    };
    message.len() == header + length && message[header..].starts_with(&VERSION_3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tbs(body_len: usize) -> Vec<u8> {
        let mut content = vec![0xa0, 0x03, 0x02, 0x01, 0x02];
        content.resize(body_len, 0x05);
        let mut out = vec![0x30, 0x82, (body_len >> 8) as u8, body_len as u8];
        out.extend(content);
        out
    }

    #[test]
    fn only_certificate_bodies_are_remembered() {
        assert!(is_v3_tbs_certificate(&tbs(300)));
        let mut short = vec![0x30, 0x10];
        short.extend([0xa0, 0x03, 0x02, 0x01, 0x02]);
        short.resize(18, 0);
        assert!(is_v3_tbs_certificate(&short));
        // Trailing bytes, a v1 certificate, a SET of signed attributes, JSON, a JWT.
        let mut trailing = tbs(300);
        trailing.push(0);
        assert!(!is_v3_tbs_certificate(&trailing));
        let mut v1 = tbs(300);
        v1[4..9].copy_from_slice(&[0x02, 0x01, 0x01, 0x30, 0x00]);
        assert!(!is_v3_tbs_certificate(&v1));
        let mut set = tbs(300);
        set[0] = 0x31;
        assert!(!is_v3_tbs_certificate(&set));
        assert!(!is_v3_tbs_certificate(br#"{"instanceId":"i-1"}"#));
        assert!(!is_v3_tbs_certificate(b"eyJhbGciOiJSUzI1NiJ9.e30"));
        assert!(!is_v3_tbs_certificate(&[]));
    }

    #[test]
    fn a_valid_certificate_signature_is_checked_once_and_nothing_else_is_remembered() {
        let memo = Mutex::new(Memo::default());
        let alg = SignatureAlgorithm::RsaPkcs1Sha256;
        let message = tbs(400);
        let mut checks = 0;
        for _ in 0..3 {
            let answer = verify(&memo, alg, b"key", &message, b"sig", || {
                checks += 1;
                Ok(true)
            });
            assert_eq!(answer, Ok(true));
        }
        assert_eq!(checks, 1, "checked once, then remembered");
        // Any byte of the tuple changed is a miss, checked in full.
        for (key, sig, alg) in [
            (&b"kez"[..], &b"sig"[..], alg),
            (b"key", b"sih", alg),
            (b"key", b"sig", SignatureAlgorithm::RsaPkcs1Sha384),
        ] {
            let answer = verify(&memo, alg, key, &message, sig, || {
                checks += 1;
                Ok(false)
            });
            assert_eq!(answer, Ok(false));
        }
        let mut altered = message.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(verify(&memo, alg, b"key", &altered, b"sig", || Ok(false)), Ok(false));
        // Invalid signatures and errors are not remembered: asked again, checked again.
        for _ in 0..2 {
            assert_eq!(
                verify(&memo, alg, b"bad", &message, b"sig", || {
                    checks += 1;
                    Err("no".into())
                }),
                Err("no".into())
            );
        }
        assert_eq!(checks, 1 + 3 + 2);
        // A valid signature over a document is never remembered.
        let mut document_checks = 0;
        for _ in 0..2 {
            verify(&memo, alg, b"key", b"{\"instanceId\":\"i-1\"}", b"sig", || {
                document_checks += 1;
                Ok(true)
            })
            .unwrap();
        }
        assert_eq!(document_checks, 2);
        assert_eq!(lock(&memo).used.len(), 1);
    }

    #[test]
    fn the_memo_is_bounded_and_keeps_what_is_used() {
        let memo = Mutex::new(Memo::default());
        let alg = SignatureAlgorithm::RsaPkcs1Sha256;
        let message = tbs(200);
        let hot = b"hot".to_vec();
        verify(&memo, alg, &hot, &message, b"sig", || Ok(true)).unwrap();
        for i in 0..(3 * CAPACITY) {
            let key = (i as u64).to_be_bytes();
            verify(&memo, alg, &key, &message, b"sig", || Ok(true)).unwrap();
            // The hot entry is used between the others and stays.
            verify(&memo, alg, &hot, &message, b"sig", || {
                panic!("the hot entry was dropped")
            })
            .unwrap();
            assert!(lock(&memo).used.len() <= CAPACITY);
        }
        assert_eq!(lock(&memo).used.len(), CAPACITY);
    }
}
