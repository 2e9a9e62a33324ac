//! One test per path rule, on chains generated here (rcgen, ECDSA P-256 keys),
//! checked with the test crypto.

use std::sync::atomic::{AtomicUsize, Ordering};

use der::asn1::Ia5String;
use der::Encode;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use x509_cert::ext::pkix::constraints::name::{GeneralSubtree, NameConstraints};
use x509_cert::ext::pkix::name::GeneralName;

use super::*;
use crate::test_crypto::TestCrypto;
use crate::{DigestAlgorithm, SignatureAlgorithm};

/// 2025-06-15: inside every generated certificate's validity unless a test says otherwise.
const NOW: i64 = 1_750_000_000;

/// A generated certificate with its key.
struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Issued {
    fn parsed(&self) -> Cert {
        Cert::parse(self.cert.der()).unwrap()
    }
}

fn base(cn: &str, sans: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    p
}

/// A CA's parameters: cA, keyCertSign.
fn ca(cn: &str) -> CertificateParams {
    let mut p = base(cn, &[]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// A TLS server leaf's parameters: CN and DNS SAN `name`, serverAuth.
fn leaf(name: &str) -> CertificateParams {
    let mut p = base(name, &[name]);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p
}

fn root(p: CertificateParams) -> Issued {
    let key = KeyPair::generate().unwrap();
    Issued {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

fn issue(p: CertificateParams, by: &Issued) -> Issued {
    let key = KeyPair::generate().unwrap();
    Issued {
        cert: p.signed_by(&key, &by.cert, &by.key).unwrap(),
        key,
    }
}

/// A nameConstraints extension with DNS subtrees, critical or not.
fn name_constraints(permitted: &[&str], excluded: &[&str], critical: bool) -> CustomExtension {
    let subtrees = |names: &[&str]| {
        (!names.is_empty()).then(|| {
            names
                .iter()
                .map(|n| GeneralSubtree {
                    base: GeneralName::DnsName(Ia5String::new(n).unwrap()),
                    minimum: 0,
                    maximum: None,
                })
                .collect::<Vec<_>>()
        })
    };
    let value = NameConstraints {
        permitted_subtrees: subtrees(permitted),
        excluded_subtrees: subtrees(excluded),
    }
    .to_der()
    .unwrap();
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 30], value);
    ext.set_criticality(critical);
    ext
}

/// Validates `leaf` under `roots` through `inters` at `now`.
fn check_at(leaf: &Issued, roots: &[&Issued], inters: &[&Issued], now: i64) -> Result<(), PathError> {
    let roots: Vec<Cert> = roots.iter().map(|r| r.parsed()).collect();
    let inters: Vec<Cert> = inters.iter().map(|i| i.parsed()).collect();
    let refs: Vec<&Cert> = inters.iter().collect();
    validate(&TestCrypto, &leaf.parsed(), &roots, &refs, now)
}

fn check(leaf: &Issued, roots: &[&Issued], inters: &[&Issued]) -> Result<(), PathError> {
    check_at(leaf, roots, inters, NOW)
}

fn untrusted(result: Result<(), PathError>) -> String {
    match result {
        Err(PathError::Untrusted(why)) => why,
        other => panic!("expected an untrusted path, got {other:?}"),
    }
}

/// root -> intermediate (with `inter`'s parameters) -> leaf (with `leaf`'s).
fn chain(inter: CertificateParams, leaf: CertificateParams) -> (Issued, Issued, Issued) {
    let r = root(ca("test root"));
    let i = issue(inter, &r);
    let l = issue(leaf, &i);
    (r, i, l)
}

#[test]
fn a_plain_chain_verifies() {
    let (r, i, l) = chain(ca("test intermediate"), leaf("metadata.azure.com"));
    check(&l, &[&r], &[&i]).unwrap();
    // The intermediate is needed, and the root must be a root.
    let missing = check(&l, &[&r], &[]).unwrap_err();
    assert_eq!(
        missing,
        PathError::NoIssuer {
            issuer: "CN=test intermediate".into(),
            child: "'metadata.azure.com'".into()
        }
    );
    assert!(matches!(check(&l, &[], &[&i, &r]), Err(PathError::NoIssuer { .. })));
}

#[test]
fn non_critical_name_constraints_bind() {
    // The review's case: a sub-CA permitted only example.com, a leaf for metadata.azure.com.
    let mut sub = ca("constrained sub-CA");
    sub.custom_extensions = vec![name_constraints(&["example.com"], &[], false)];
    let (r, i, l) = chain(sub, leaf("metadata.azure.com"));
    let why = untrusted(check(&l, &[&r], &[&i]));
    assert!(
        why.contains("name constraints") && why.contains("constrained sub-CA"),
        "{why}"
    );
    // The same sub-CA may issue for its own domain.
    let ok = issue(leaf("www.example.com"), &i);
    check(&ok, &[&r], &[&i]).unwrap();
}

#[test]
fn critical_name_constraints_bind() {
    let mut sub = ca("constrained sub-CA");
    sub.custom_extensions = vec![name_constraints(&["example.com"], &[], true)];
    let (r, i, l) = chain(sub, leaf("metadata.azure.com"));
    untrusted(check(&l, &[&r], &[&i]));
}

#[test]
fn excluded_subtree_is_refused() {
    let mut sub = ca("excluding sub-CA");
    sub.custom_extensions = vec![name_constraints(&[], &["azure.com"], false)];
    let (r, i, l) = chain(sub, leaf("metadata.azure.com"));
    let why = untrusted(check(&l, &[&r], &[&i]));
    assert!(why.contains("name constraints"), "{why}");
    let ok = issue(leaf("metadata.azure.us"), &i);
    check(&ok, &[&r], &[&i]).unwrap();
}

#[test]
fn root_name_constraints_bind() {
    let mut p = ca("constrained root");
    p.custom_extensions = vec![name_constraints(&["example.com"], &[], false)];
    let r = root(p);
    let l = issue(leaf("metadata.azure.com"), &r);
    untrusted(check(&l, &[&r], &[]));
}

#[test]
fn common_name_is_constrained_too() {
    let mut sub = ca("constrained sub-CA");
    sub.custom_extensions = vec![name_constraints(&["example.com"], &[], false)];
    let (r, i, _) = chain(sub, leaf("www.example.com"));
    // SAN inside the constraint, CN (which a verifier may trust) outside it.
    let mut p = leaf("www.example.com");
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "metadata.azure.com");
    let l = issue(p, &i);
    let why = untrusted(check(&l, &[&r], &[&i]));
    assert!(why.contains("commonName \"metadata.azure.com\""), "{why}");
    // No SAN at all: the CN is all there is, and it is checked.
    let mut p = base("metadata.azure.com", &[]);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let l = issue(p, &i);
    untrusted(check(&l, &[&r], &[&i]));
}

#[test]
fn leaf_for_code_signing_only_is_refused() {
    let mut p = leaf("metadata.azure.com");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let (r, i, l) = chain(ca("test intermediate"), p);
    let why = untrusted(check(&l, &[&r], &[&i]));
    assert!(
        why.contains("'metadata.azure.com' may not be used for TLS server"),
        "{why}"
    );
}

#[test]
fn leaf_without_eku_or_with_any_is_accepted() {
    let mut p = leaf("metadata.azure.com");
    p.extended_key_usages = vec![];
    let (r, i, l) = chain(ca("test intermediate"), p);
    check(&l, &[&r], &[&i]).unwrap();
    let mut p = leaf("metadata.azure.com");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any];
    let l = issue(p, &i);
    check(&l, &[&r], &[&i]).unwrap();
}

#[test]
fn intermediate_eku_nests_over_the_leaf() {
    let mut sub = ca("code-signing CA");
    sub.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let (r, i, l) = chain(sub, leaf("metadata.azure.com"));
    let why = untrusted(check(&l, &[&r], &[&i]));
    assert!(
        why.contains("'code-signing CA' may not be used for TLS server"),
        "{why}"
    );
    // A CA limited to serverAuth, or to any purpose, may issue the leaf.
    for purposes in [
        vec![ExtendedKeyUsagePurpose::ServerAuth],
        vec![ExtendedKeyUsagePurpose::Any],
    ] {
        let mut sub = ca("TLS CA");
        sub.extended_key_usages = purposes;
        let (r, i, l) = chain(sub, leaf("metadata.azure.com"));
        check(&l, &[&r], &[&i]).unwrap();
    }
    // The root's EKU nests too.
    let mut p = ca("code-signing root");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let r = root(p);
    let l = issue(leaf("metadata.azure.com"), &r);
    untrusted(check(&l, &[&r], &[]));
}

#[test]
fn intermediate_not_a_ca_is_refused() {
    for is_ca in [IsCa::ExplicitNoCa, IsCa::NoCa] {
        let mut p = base("not a CA", &[]);
        p.is_ca = is_ca;
        let (r, i, l) = chain(p, leaf("metadata.azure.com"));
        let why = untrusted(check(&l, &[&r], &[&i]));
        assert!(why.contains("'not a CA' is not a CA"), "{why}");
    }
}

#[test]
fn path_length_exceeded_is_refused() {
    // An intermediate allowing no CA below it, with one below it.
    let r = root(ca("test root"));
    let mut p = ca("pathlen 0");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let top = issue(p, &r);
    let below = issue(ca("below"), &top);
    let l = issue(leaf("metadata.azure.com"), &below);
    let why = untrusted(check(&l, &[&r], &[&top, &below]));
    assert!(why.contains("'pathlen 0' allows 0 intermediates"), "{why}");
    // The root's own pathLenConstraint counts too (webpki leaves it out).
    let mut p = ca("root pathlen 0");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let r = root(p);
    let i = issue(ca("test intermediate"), &r);
    let l = issue(leaf("metadata.azure.com"), &i);
    let why = untrusted(check(&l, &[&r], &[&i]));
    assert!(why.contains("'root pathlen 0' allows 0 intermediates"), "{why}");
    let direct = issue(leaf("metadata.azure.com"), &r);
    check(&direct, &[&r], &[]).unwrap();
}

#[test]
fn issuer_without_key_cert_sign_is_refused() {
    let mut p = ca("no keyCertSign");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let (r, i, l) = chain(p, leaf("metadata.azure.com"));
    let why = untrusted(check(&l, &[&r], &[&i]));
    assert!(why.contains("'no keyCertSign' lacks keyCertSign"), "{why}");
    // keyUsage absent: basicConstraints alone makes the CA (RFC 5280 4.2.1.3 only binds a present keyUsage).
    let mut p = ca("no keyUsage");
    p.key_usages = vec![];
    let (r, i, l) = chain(p, leaf("metadata.azure.com"));
    check(&l, &[&r], &[&i]).unwrap();
}

#[test]
fn expired_intermediate_or_root_is_refused() {
    let mut p = ca("expired intermediate");
    p.not_after = date_time_ymd(2024, 1, 1);
    let (r, i, l) = chain(p, leaf("metadata.azure.com"));
    match check(&l, &[&r], &[&i]) {
        Err(PathError::Expired(why)) => assert!(why.contains("'expired intermediate'"), "{why}"),
        other => panic!("{other:?}"),
    }
    let mut p = ca("expired root");
    p.not_after = date_time_ymd(2024, 1, 1);
    let r = root(p);
    let l = issue(leaf("metadata.azure.com"), &r);
    match check(&l, &[&r], &[]) {
        Err(PathError::Expired(why)) => assert!(why.contains("'expired root'"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Not yet valid is the same refusal.
    let (r, i, l) = chain(ca("test intermediate"), leaf("metadata.azure.com"));
    assert!(matches!(
        check_at(&l, &[&r], &[&i], 1_500_000_000),
        Err(PathError::Expired(_))
    ));
}

#[test]
fn unknown_critical_extension_is_refused() {
    let critical = || {
        let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![0x05, 0x00]);
        ext.set_criticality(true);
        ext
    };
    let mut p = ca("odd intermediate");
    p.custom_extensions = vec![critical()];
    let (r, i, l) = chain(p, leaf("metadata.azure.com"));
    let why = untrusted(check(&l, &[&r], &[&i]));
    assert!(
        why.contains("unsupported critical extension 1.3.6.1.4.1.55555.1"),
        "{why}"
    );
    let mut p = leaf("metadata.azure.com");
    p.custom_extensions = vec![critical()];
    let l = issue(p, &r);
    let why = untrusted(check(&l, &[&r], &[]));
    assert!(
        why.contains("unsupported critical extension 1.3.6.1.4.1.55555.1"),
        "{why}"
    );
}

#[test]
fn cross_signed_intermediate_reaches_either_root() {
    // One CA key and name, signed by two roots (as Microsoft TLS RSA Root G2 is,
    // self-signed and by DigiCert Global Root G2).
    let old = root(ca("old root"));
    let new = root(ca("new root"));
    let key = KeyPair::generate().unwrap();
    let by_old = ca("shared CA").signed_by(&key, &old.cert, &old.key).unwrap();
    let by_new = ca("shared CA").signed_by(&key, &new.cert, &new.key).unwrap();
    let by_old = Issued { cert: by_old, key };
    // (Its `key` never signs here: the leaf is issued through `by_old`.)
    let by_new = Issued {
        cert: by_new,
        key: KeyPair::generate().unwrap(),
    };
    let l = issue(leaf("metadata.azure.com"), &by_old);
    // Only the new root trusted; both cross-signs offered, the wrong one first.
    check(&l, &[&new], &[&by_old, &by_new]).unwrap();
    check(&l, &[&old], &[&by_new, &by_old]).unwrap();
}

/// [`TestCrypto`], counting signature checks.
struct Counting(AtomicUsize);

impl Crypto for Counting {
    fn verify_signature(&self, a: SignatureAlgorithm, k: &[u8], m: &[u8], s: &[u8]) -> Result<bool, String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        TestCrypto.verify_signature(a, k, m, s)
    }

    fn digest(&self, algorithm: DigestAlgorithm, data: &[u8]) -> Vec<u8> {
        TestCrypto.digest(algorithm, data)
    }
}

#[test]
fn only_the_path_is_checked_and_checks_are_bounded() {
    let (r, i, l) = chain(ca("test intermediate"), leaf("metadata.azure.com"));
    // Unrelated CAs in the pool cost no signature check.
    let unrelated: Vec<Issued> = (0..10).map(|n| issue(ca(&format!("unrelated {n}")), &r)).collect();
    let mut pool: Vec<Cert> = unrelated.iter().map(|u| u.parsed()).collect();
    pool.push(i.parsed());
    let refs: Vec<&Cert> = pool.iter().collect();
    let counting = Counting(AtomicUsize::new(0));
    validate(&counting, &l.parsed(), &[r.parsed()], &refs, NOW).unwrap();
    assert_eq!(
        counting.0.load(Ordering::Relaxed),
        2,
        "leaf by intermediate, intermediate by root"
    );

    // Impostors: the intermediate's name under the root's name, other keys.
    let impostors: Vec<Issued> = (0..40)
        .map(|_| issue(ca("test intermediate"), &root(ca("test root"))))
        .collect();
    let pool: Vec<Cert> = impostors.iter().map(|u| u.parsed()).collect();
    let refs: Vec<&Cert> = pool.iter().collect();
    let counting = Counting(AtomicUsize::new(0));
    untrusted(validate(&counting, &l.parsed(), &[r.parsed()], &refs, NOW));
    let spent = counting.0.load(Ordering::Relaxed);
    assert!(spent <= MAX_SIGNATURE_CHECKS, "{spent} signature checks");
}
