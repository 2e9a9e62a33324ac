//! X.509 path validation, as strict as Go's `x509.Verify` (what Coder uses), for
//! every verifier that checks a certificate chain offline.
//!
//! # Why rustls-webpki, and what is added around it
//!
//! Path building and the core rules are `rustls-webpki`'s (what rustls uses),
//! built `no_std` + `alloc` without *ring*: its signature algorithms are a trait
//! that [`algorithms`] implements with the host's crypto import, so it runs
//! inside the wasm plugin. It does what Azure needs: the verification time is a
//! parameter, roots are given as trust anchors, intermediates as a pool it
//! searches with backtracking (so the cross-signed Microsoft TLS RSA Root G2
//! path is found as either chain), signatures are only checked on a candidate
//! path that reaches a trust anchor by name (never on unrelated carried
//! certificates), and the signer-name check stays the verifier's own.
//!
//! From webpki, on every certificate below the root: validity at `now`;
//! basicConstraints cA on every issuer and pathLenConstraint; unknown critical
//! extensions refused; name constraints (permitted and excluded DNS, IP
//! subtrees; critical or not; any constraint of a form it cannot check, such as
//! directoryName, refuses) against every subjectAltName below the constraining
//! CA, the root's constraints included; and the extendedKeyUsage rule, here
//! [`GoServerAuth`]: each certificate's EKU, when present, must include
//! serverAuth or anyExtendedKeyUsage — Go's nesting rule for a serverAuth
//! request. webpki is stricter than Go in two places that real chains do not
//! meet: a leaf that is itself a CA and v1 intermediates are refused.
//!
//! Added here ([`extra_rules`]), because webpki leaves them out:
//! - the root: valid at `now`, a CA, its pathLenConstraint, its EKU (Go checks
//!   all of these on the root too; webpki keeps only a trust anchor's name, key
//!   and name constraints);
//! - keyCertSign on every issuer whose keyUsage is present (RFC 5280 4.2.1.3;
//!   Go ignores keyUsage, the brief is stricter);
//! - the leaf's commonNames held to every DNS name constraint above it
//!   ([`dns_names`]): webpki and Go read constraints against SANs only, but a
//!   verifier that trusts a CN (Azure's does) needs it constrained too;
//! - at most [`MAX_PATH`] certificates and [`MAX_SIGNATURE_CHECKS`] signature
//!   checks per validation (webpki's own budget is 100).
//!
//! SHA-1 signatures are not accepted on a path, as in Go.

mod algorithms;
mod dns_names;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::mem::{discriminant, Discriminant};

use pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter, VerifiedPath};

use crate::certificate::Cert;
use crate::time::format_rfc3339;
use crate::Crypto;

/// Most certificates in a path, leaf and root included.
pub const MAX_PATH: usize = 6;
/// Most signature checks per validation: bounds the search when many
/// intermediates share a subject. Checks past it fail without arithmetic.
pub const MAX_SIGNATURE_CHECKS: usize = 24;

/// Why no path was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// A certificate on the path is outside its validity period at `now`.
    Expired(String),
    /// No certificate offered is named as `child`'s issuer: a missing
    /// intermediate or root (the caller knows how to say where to add it).
    NoIssuer {
        /// The issuer name that was looked for.
        issuer: String,
        /// The certificate whose issuer is missing, as [`Cert::label`].
        child: String,
    },
    /// Any other rule broken; the message names the certificate where it can.
    Untrusted(String),
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathError::Expired(why) | PathError::Untrusted(why) => f.write_str(why),
            PathError::NoIssuer { issuer, child } => write!(f, "no trusted issuer '{issuer}' for certificate {child}"),
        }
    }
}

/// Validates `leaf` for TLS-server use (Go's default `x509.Verify` purpose)
/// up to one of `roots` at `now` (Unix seconds), through any of
/// `intermediates`, checking signatures with `crypto`. See the module doc for
/// the rules. A verifier's own checks on the leaf (its names, keyUsage for what
/// it signs) are the caller's.
pub fn validate(
    crypto: &dyn Crypto,
    leaf: &Cert,
    roots: &[Cert],
    intermediates: &[&Cert],
    now: i64,
) -> Result<(), PathError> {
    // The leaf first, with messages naming it (webpki's would not).
    if let Some(why) = leaf.validity_error(now) {
        return Err(PathError::Expired(why));
    }
    if let Some(oid) = &leaf.unknown_critical {
        return Err(PathError::Untrusted(format!(
            "certificate {} has an unsupported critical extension {oid}",
            leaf.label()
        )));
    }

    let leaf_der = CertificateDer::from(leaf.der.as_slice());
    let end_entity = EndEntityCert::try_from(&leaf_der)
        .map_err(|e| PathError::Untrusted(format!("certificate {} cannot be used: {e:?}", leaf.label())))?;
    // webpki decodes every root (as an anchor) and, at each level, every
    // intermediate offered, to compare its subject with the issuer sought: a
    // configured store of two dozen was most of the path's cost outside the
    // signatures. Only what the leaf reaches by issuer name can match it, so
    // webpki gets those (in their order): the same paths, the same checks.
    let (near_roots, near_intermediates) = near(leaf, roots, intermediates);
    let root_ders: Vec<CertificateDer<'_>> = near_roots
        .iter()
        .map(|c| CertificateDer::from(c.der.as_slice()))
        .collect();
    let mut anchors: Vec<TrustAnchor<'_>> = Vec::with_capacity(near_roots.len());
    let mut anchor_certs: Vec<&Cert> = Vec::with_capacity(near_roots.len());
    for (der, cert) in root_ders.iter().zip(near_roots.iter().copied()) {
        // A root webpki cannot read cannot anchor anything; the search reports it as missing.
        if let Ok(anchor) = webpki::anchor_from_trusted_cert(der) {
            anchors.push(anchor);
            anchor_certs.push(cert);
        }
    }
    let pool: Vec<CertificateDer<'_>> = near_intermediates
        .iter()
        .map(|c| CertificateDer::from(c.der.as_slice()))
        .collect();

    let budget = algorithms::Budget::new(MAX_SIGNATURE_CHECKS);
    let algs = algorithms::host_algorithms(crypto, &budget);
    let alg_refs: Vec<&dyn SignatureVerificationAlgorithm> = algs.iter().map(|a| a as _).collect();
    // What `extra_rules` refused, by the webpki error it returned in its place.
    let refused: RefCell<Vec<(Discriminant<webpki::Error>, PathError)>> = RefCell::new(Vec::new());
    let extra = |path: &VerifiedPath<'_>| -> Result<(), webpki::Error> {
        let root = anchors
            .iter()
            .position(|a| std::ptr::eq(a, path.anchor()))
            .map(|i| anchor_certs[i]);
        let inters: Option<Vec<&Cert>> = path
            .intermediate_certificates()
            .map(|w| near_intermediates.iter().copied().find(|c| c.der == w.der().as_ref()))
            .collect();
        let (Some(root), Some(inters)) = (root, inters) else {
            return Err(webpki::Error::UnknownIssuer);
        };
        extra_rules(leaf, &inters, root, now).map_err(|(err, why)| {
            refused.borrow_mut().push((discriminant(&err), why));
            err
        })
    };
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    match end_entity.verify_for_usage(&alg_refs, &anchors, &pool, time, GoServerAuth, None, Some(&extra)) {
        Ok(_) => Ok(()),
        Err(err) => {
            let ours = refused
                .borrow()
                .iter()
                .find(|(d, _)| *d == discriminant(&err))
                .map(|(_, why)| why.clone());
            Err(ours.unwrap_or_else(|| explain(&err, leaf, roots, intermediates, now, &budget)))
        }
    }
}

/// Go's extendedKeyUsage rule for a serverAuth request, applied by webpki to
/// the leaf and every intermediate: absent, or serverAuth, or anyExtendedKeyUsage.
struct GoServerAuth;

/// id-kp-serverAuth and anyExtendedKeyUsage, OID content bytes.
const SERVER_AUTH: KeyPurposeId<'static> = KeyPurposeId::new(&[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01]);
const ANY_PURPOSE: KeyPurposeId<'static> = KeyPurposeId::new(&[0x55, 0x1d, 0x25, 0x00]);

impl ExtendedKeyUsageValidator for GoServerAuth {
    fn validate(&self, purposes: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let mut empty = true;
        for purpose in purposes {
            empty = false;
            let purpose = purpose?;
            if purpose == SERVER_AUTH || purpose == ANY_PURPOSE {
                return Ok(());
            }
        }
        if empty {
            Ok(())
        } else {
            #[allow(deprecated)] // The context variant's fields are webpki's to fill.
            Err(webpki::Error::RequiredEkuNotFound)
        }
    }
}

/// The rules webpki leaves out (module doc), on a path it has accepted:
/// `leaf`, then `inters` upwards, then `root`. On failure, the webpki error
/// that stands for it in the search and the message to report.
fn extra_rules(leaf: &Cert, inters: &[&Cert], root: &Cert, now: i64) -> Result<(), (webpki::Error, PathError)> {
    use webpki::Error as W;
    let untrusted = |err: W, why: String| Err((err, PathError::Untrusted(why)));
    if inters.len() + 2 > MAX_PATH {
        return untrusted(
            W::MaximumPathDepthExceeded,
            format!("no root within {MAX_PATH} certificates of certificate {}", leaf.label()),
        );
    }
    if let Some(why) = root.validity_error(now) {
        return Err((W::InvalidCertValidity, PathError::Expired(why)));
    }
    match root.basic_constraints {
        Some((true, Some(max))) if inters.len() > max as usize => {
            return untrusted(
                W::PathLenConstraintViolated,
                format!(
                    "CA certificate {} allows {max} intermediates below it, the path has {}",
                    root.label(),
                    inters.len()
                ),
            )
        }
        Some((true, _)) => {}
        _ => {
            return untrusted(
                W::EndEntityUsedAsCa,
                format!(
                    "certificate {} is not a CA (basicConstraints cA is not set)",
                    root.label()
                ),
            )
        }
    }
    if let Some(oid) = &root.unknown_critical {
        return untrusted(
            W::UnsupportedCriticalExtension,
            format!(
                "CA certificate {} has an unsupported critical extension {oid}",
                root.label()
            ),
        );
    }
    if !root.allows_server_auth() {
        #[allow(deprecated)]
        return untrusted(W::RequiredEkuNotFound, not_for_servers(root));
    }
    for ca in inters.iter().copied().chain([root]) {
        if ca.key_usage.is_some_and(|(cert_sign, _)| !cert_sign) {
            return untrusted(
                W::EndEntityUsedAsCa,
                format!("CA certificate {} lacks keyCertSign", ca.label()),
            );
        }
        if let Some(constraints) = &ca.dns_constraints {
            for cn in &leaf.common_names {
                if let Err(why) = dns_names::check(cn, constraints) {
                    return untrusted(
                        W::NameConstraintViolation,
                        format!(
                            "certificate {} is outside the name constraints of CA {}: {why}",
                            leaf.label(),
                            ca.label()
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}

fn not_for_servers(cert: &Cert) -> String {
    let purposes: Vec<String> = cert.ext_key_usage.iter().flatten().map(|p| p.to_string()).collect();
    format!(
        "certificate {} may not be used for TLS server authentication (extendedKeyUsage: {})",
        cert.label(),
        purposes.join(", ")
    )
}

/// Turns webpki's reason (which names no certificate) into a message naming
/// the certificate it most likely concerns: the first one, walking up from the
/// leaf by issuer name (no signatures checked), that breaks the rule.
fn explain(
    err: &webpki::Error,
    leaf: &Cert,
    roots: &[Cert],
    intermediates: &[&Cert],
    now: i64,
    budget: &algorithms::Budget,
) -> PathError {
    use webpki::Error as W;
    let reachable = reachable(leaf, roots, intermediates);
    let cas = || reachable.iter().skip(1);
    let find = |pred: &dyn Fn(&(&Cert, usize)) -> bool| cas().find(|c| pred(c)).map(|(c, _)| *c);
    match err {
        W::CertExpired { .. } | W::CertNotValidYet { .. } | W::InvalidCertValidity => {
            let why = cas().find_map(|(c, _)| c.validity_error(now));
            PathError::Expired(why.unwrap_or_else(|| {
                format!("a certificate on the path is not valid at {}", format_rfc3339(now))
            }))
        }
        W::UnknownIssuer => {
            let all = || roots.iter().chain(intermediates.iter().copied());
            let orphan = reachable
                .iter()
                .map(|(c, _)| *c)
                .find(|c| !roots.iter().any(|r| r.der == c.der) && !all().any(|i| i.subject == c.issuer && i.der != c.der));
            match orphan {
                Some(c) => PathError::NoIssuer {
                    issuer: c.issuer.to_string(),
                    child: c.label(),
                },
                None => PathError::Untrusted(format!("no trusted path from certificate {}", leaf.label())),
            }
        }
        W::EndEntityUsedAsCa => match find(&|(c, _)| !c.is_ca()) {
            Some(c) => PathError::Untrusted(format!("certificate {} is not a CA (basicConstraints cA is not set)", c.label())),
            None => PathError::Untrusted("an issuer on the path is not a CA".into()),
        },
        W::CaUsedAsEndEntity => PathError::Untrusted(format!(
            "certificate {} is a CA certificate, not an end entity",
            leaf.label()
        )),
        W::PathLenConstraintViolated => {
            let over = |(c, depth): &(&Cert, usize)| matches!(c.basic_constraints, Some((_, Some(max))) if (max as usize) + 1 < *depth);
            match find(&over) {
                Some(c) => PathError::Untrusted(format!(
                    "CA certificate {} allows {} intermediates below it, the path has more",
                    c.label(),
                    c.basic_constraints.and_then(|b| b.1).unwrap_or(0)
                )),
                None => PathError::Untrusted("a CA's pathLenConstraint is exceeded".into()),
            }
        }
        #[allow(deprecated)]
        W::RequiredEkuNotFound | W::RequiredEkuNotFoundContext(_) | W::EmptyEkuExtension => {
            match reachable.iter().map(|(c, _)| *c).find(|c| !c.allows_server_auth()) {
                Some(c) => PathError::Untrusted(not_for_servers(c)),
                None => PathError::Untrusted("a certificate on the path may not be used for TLS server authentication".into()),
            }
        }
        W::NameConstraintViolation => match find(&|(c, _)| c.dns_constraints.is_some()) {
            Some(ca) => PathError::Untrusted(format!(
                "certificate {} (DNS names {:?}) is outside the name constraints of CA {} ({:?})",
                leaf.label(),
                leaf.dns_names,
                ca.label(),
                ca.dns_constraints.as_ref().map(|d| (&d.permitted, &d.excluded)),
            )),
            None => PathError::Untrusted(format!(
                "certificate {} is outside the name constraints of a CA above it (or they use a form that cannot be checked)",
                leaf.label()
            )),
        },
        W::UnsupportedCriticalExtension => match find(&|(c, _)| c.unknown_critical.is_some()) {
            Some(c) => PathError::Untrusted(format!(
                "CA certificate {} has an unsupported critical extension {}",
                c.label(),
                c.unknown_critical.as_deref().unwrap_or_default()
            )),
            None => PathError::Untrusted("a certificate on the path has a critical extension the validator does not support".into()),
        },
        W::InvalidSignatureForPublicKey => PathError::Untrusted(match budget.refusal() {
            Some(why) => format!("a certificate on the path of {} cannot be checked: {why}", leaf.label()),
            None => format!("a signature on the path of {} does not verify with its issuer's key", leaf.label()),
        }),
        W::UnsupportedSignatureAlgorithmContext(_) | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => PathError::Untrusted(format!(
            "a certificate on the path of {} uses a signature algorithm that is not accepted \
             (RSA PKCS#1 v1.5 with SHA-256/384/512, ECDSA P-256/SHA-256 or P-384/SHA-384)",
            leaf.label()
        )),
        other => PathError::Untrusted(format!("certificate path of {} refused: {other:?}", leaf.label())),
    }
}

/// The roots and intermediates that `leaf` reaches by issuer name, through
/// any of them (roots too, at any depth: a superset of what webpki can put on
/// a path, since it links a certificate to an issuer only when the names' DER
/// is equal), each list in its order.
fn near<'a>(leaf: &Cert, roots: &'a [Cert], intermediates: &[&'a Cert]) -> (Vec<&'a Cert>, Vec<&'a Cert>) {
    let all: Vec<&Cert> = roots.iter().chain(intermediates.iter().copied()).collect();
    let mut reached = vec![false; all.len()];
    let mut frontier: Vec<&x509_cert::name::Name> = vec![&leaf.issuer];
    while let Some(issuer) = frontier.pop() {
        for (i, c) in all.iter().enumerate() {
            if !reached[i] && c.subject == *issuer {
                reached[i] = true;
                frontier.push(&c.issuer);
            }
        }
    }
    let (r, i) = reached.split_at(roots.len());
    (
        roots.iter().zip(r).filter(|(_, on)| **on).map(|(c, _)| c).collect(),
        intermediates
            .iter()
            .zip(i)
            .filter(|(_, on)| **on)
            .map(|(c, _)| *c)
            .collect(),
    )
}

/// `leaf` and every certificate reachable above it by issuer name (at most
/// [`MAX_PATH`] deep, each once), with its depth (the leaf's is 0).
fn reachable<'a>(leaf: &'a Cert, roots: &'a [Cert], intermediates: &[&'a Cert]) -> Vec<(&'a Cert, usize)> {
    let mut out: Vec<(&Cert, usize)> = vec![(leaf, 0)];
    let mut next = 0;
    while next < out.len() {
        let (child, depth) = out[next];
        next += 1;
        if depth + 1 >= MAX_PATH || roots.iter().any(|r| r.der == child.der) {
            continue;
        }
        for c in roots.iter().chain(intermediates.iter().copied()) {
            if c.subject == child.issuer && !out.iter().any(|(o, _)| o.der == c.der) {
                out.push((c, depth + 1));
            }
        }
    }
    out
}
