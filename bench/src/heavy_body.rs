//! The review's cost-amplification body against the Azure verifier's caps: a
//! PKCS#7 carrying 24 CA certificates with 8192-bit RSA keys and public exponent
//! 2^33-1 (the most `ring` accepts), each named as the signer's issuer so that
//! a path search without the caps would check the signer against every key.
//! It must cost at most 2x a normal refused body (a signer under a root that is
//! not configured) through the real sandbox; measured side by side.
//!
//! Runs alone with `cargo run --release -p idgate-bench -- heavy` (after
//! `cargo xtask plugins`), printing the section's Markdown.

use std::fmt::Write as _;

use idgate::sandbox::{CallError, Limits, Sandbox};
use idgate_plugin_kit::VerifyError;
use rand::RngCore;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, PublicKeyData};

use crate::credentials::Azure;
use crate::stats::{ratio, side_by_side};
use crate::Env;

/// How many heavy CA certificates the body carries, and their key size.
const HEAVY_CAS: usize = 24;
const HEAVY_BITS: usize = 8192;
/// The verification time the bodies are attested for.
const NOW: i64 = 1_750_000_000;

/// Runs the section and returns its Markdown.
pub fn run(env: &Env) -> String {
    let cache = std::env::temp_dir().join(format!("idgate-bench-heavy-{}", std::process::id()));
    let sandbox = Sandbox::load(&env.plugin_dir, Some(&cache), Limits::default()).expect("loading plugins");
    let trusted = Azure::new();
    let plugin = sandbox.configure("azure", &trusted.config()).expect("configure");
    // Normal refused body: well formed and correctly signed, under a root the
    // configuration does not trust.
    let normal = Azure::new().body("11111111-2222-3333-4444-555555555555", None, NOW);
    let heavy_cas: Vec<Vec<u8>> = (0..HEAVY_CAS).map(|_| heavy_ca()).collect();
    let heavy = trusted.body_carrying("11111111-2222-3333-4444-555555555555", None, NOW, &heavy_cas);
    let call = |body: &str| sandbox.verify(&plugin, body, None, NOW);
    let kind = |r: Result<_, CallError>| match r {
        Err(CallError::Rejected(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let normal_error = kind(call(&normal));
    let heavy_error = kind(call(&heavy));
    assert!(
        matches!(normal_error, VerifyError::UntrustedSigner(_)),
        "{normal_error}"
    );
    assert!(matches!(heavy_error, VerifyError::UntrustedSigner(_)), "{heavy_error}");
    let (n, h) = side_by_side(
        11,
        50,
        || {
            call(&normal).unwrap_err();
        },
        || {
            call(&heavy).unwrap_err();
        },
    );
    let _ = std::fs::remove_dir_all(&cache);
    let measured = ratio(&n, &h);
    eprintln!("heavy Azure body / normal refused body: {measured}");
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Cost caps: the review's heavy Azure body vs a normal refused body\n\n\
         Through the sandbox, fresh instance per call. *Heavy*: a {} KB body whose PKCS#7 carries the signer and \
         {HEAVY_CAS} CA certificates with {HEAVY_BITS}-bit RSA keys and public exponent 2^33−1, each named as the \
         signer's issuer (refused: `{}`). *Normal*: a correctly signed body under a root that is not configured \
         (refused: `{}`). Target: heavy at most 2× normal (the review measured 96× before the caps).\n\n\
         | body | per call |\n|---|---|\n| normal refused | {} |\n| heavy | {} |\n| ratio heavy / normal | **{measured}** |\n",
        heavy.len() / 1000,
        heavy_error.kind(),
        normal_error.kind(),
        n.show(),
        h.show(),
    );
    md
}

/// A CA certificate named like the bench root (so it is a candidate issuer of
/// the bench's leaf) whose key is an 8192-bit modulus with exponent 2^33-1. Its
/// own signature is a throwaway P-256 key's: no validator gets that far.
fn heavy_ca() -> Vec<u8> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "idgate bench root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let signer_key = KeyPair::generate().expect("P-256 key");
    let signer = params.clone().self_signed(&signer_key).expect("signer");
    params
        .signed_by(&HeavyKey::new(), &signer, &signer_key)
        .expect("heavy CA")
        .der()
        .to_vec()
}

/// An RSA public key: a random odd `HEAVY_BITS`-bit modulus, exponent 2^33-1.
struct HeavyKey(Vec<u8>);

impl HeavyKey {
    fn new() -> HeavyKey {
        let mut n = vec![0u8; HEAVY_BITS / 8];
        rand::thread_rng().fill_bytes(&mut n);
        n[0] |= 0x80;
        n[HEAVY_BITS / 8 - 1] |= 1;
        // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
        let mut modulus = vec![0x02, 0x82];
        modulus.extend(((n.len() + 1) as u16).to_be_bytes());
        modulus.push(0); // the top bit is set: keep the INTEGER positive
        modulus.extend(n);
        let exponent = [0x02, 0x05, 0x01, 0xff, 0xff, 0xff, 0xff];
        let mut der = vec![0x30, 0x82];
        der.extend(((modulus.len() + exponent.len()) as u16).to_be_bytes());
        der.extend(modulus);
        der.extend(exponent);
        HeavyKey(der)
    }
}

impl PublicKeyData for HeavyKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}
