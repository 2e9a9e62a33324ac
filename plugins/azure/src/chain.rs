//! X.509 path validation from the signer's certificate to a pinned root, offline.
//!
//! A bounded depth-first search over candidate issuers (subject == issuer),
//! checking at every link: the issuer is a CA (basicConstraints cA, path length,
//! keyCertSign), both ends are valid at `now`, no unknown critical extension, and
//! the issuer's key verifies the child's signature (through the host's crypto).
//! Cross-signed CAs can give several candidates; the first complete path wins.

use idgate_plugin_kit::{Crypto, SignatureAlgorithm, VerifyError};

use crate::cert::Cert;

/// Most certificates in a path, leaf and root included.
pub const MAX_PATH: usize = 6;
/// Most signature checks per validation: bounds the search when many
/// intermediates share a subject.
const MAX_SIGNATURE_CHECKS: usize = 24;

/// The certificates a path may use.
#[derive(Debug, Default, Clone)]
pub struct TrustStore {
    /// Pinned roots: a path must end at one of them.
    pub roots: Vec<Cert>,
    /// Intermediates: built-in, operator-configured and carried by the PKCS#7.
    pub intermediates: Vec<Cert>,
}

/// Validates `leaf` up to a root of `store` at `now`. Errors: `Expired` naming
/// a certificate outside its validity period, `UntrustedSigner` for everything
/// else (no issuer, not a CA, bad signature, path too long).
pub fn validate(crypto: &dyn Crypto, leaf: &Cert, store: &TrustStore, now: i64) -> Result<(), VerifyError> {
    validate_with(crypto, leaf, store, &[], now)
}

/// [`validate`], with `carried` (certificates the PKCS#7 brought) usable as
/// intermediates after the store's own, never as roots. Separate from the store
/// so a configured store is shared, not copied, per credential.
///
/// Why no path is returned: naming its subjects means formatting X.509 names
/// (an OID table scan per attribute), which was ~15 % of a sandboxed Azure
/// verification in the profile, for a result nobody read.
pub fn validate_with(
    crypto: &dyn Crypto,
    leaf: &Cert,
    store: &TrustStore,
    carried: &[Cert],
    now: i64,
) -> Result<(), VerifyError> {
    if let Some(why) = leaf.validity_error(now) {
        return Err(VerifyError::Expired(why));
    }
    if let Some(oid) = &leaf.unknown_critical {
        return Err(VerifyError::UntrustedSigner(format!(
            "signer certificate {} has an unsupported critical extension {oid}",
            leaf.label()
        )));
    }
    if leaf.key_usage.is_some_and(|(_, digital_signature)| !digital_signature) {
        return Err(VerifyError::UntrustedSigner(format!(
            "signer certificate {} may not sign (keyUsage lacks digitalSignature)",
            leaf.label()
        )));
    }
    let mut search = Search {
        crypto,
        store,
        carried,
        now,
        checks: 0,
        expired: None,
        other: None,
    };
    let mut path = vec![leaf];
    if search.extend(&mut path) {
        return Ok(());
    }
    Err(match (search.expired, search.other) {
        (Some(why), _) => VerifyError::Expired(why),
        (None, Some(why)) => VerifyError::UntrustedSigner(why),
        (None, None) => VerifyError::UntrustedSigner(format!("no trusted path for {}", leaf.label())),
    })
}

struct Search<'a> {
    crypto: &'a dyn Crypto,
    store: &'a TrustStore,
    carried: &'a [Cert],
    now: i64,
    checks: usize,
    /// The first validity failure seen (reported in preference: it is the most specific).
    expired: Option<String>,
    /// The first other failure seen.
    other: Option<String>,
}

impl<'a> Search<'a> {
    /// Tries to complete `path` (leaf first) to a root; on success `path` ends
    /// with the root.
    fn extend(&mut self, path: &mut Vec<&'a Cert>) -> bool {
        let Some(&child) = path.last() else {
            return false;
        };
        let roots = self.store.roots.iter().map(|c| (c, true));
        let inters = self.store.intermediates.iter().chain(self.carried).map(|c| (c, false));
        let candidates: Vec<(&'a Cert, bool)> = roots
            .chain(inters)
            .filter(|(c, _)| c.subject == child.issuer && !path.iter().any(|p| p.der == c.der))
            .collect();
        if candidates.is_empty() {
            self.note_other(format!(
                "no trusted issuer '{}' for certificate {} (add it to `intermediates`, or its root to `roots`)",
                child.issuer,
                child.label()
            ));
            return false;
        }
        // Intermediates below the candidate, not counting self-issued ones (RFC 5280 6.1.4).
        let below = path.iter().skip(1).filter(|c| !c.self_issued()).count();
        for (issuer, is_root) in candidates {
            if let Err(why) = self.usable_issuer(issuer, below) {
                self.note_other(why);
                continue;
            }
            if let Some(why) = issuer.validity_error(self.now) {
                self.expired.get_or_insert(why);
                continue;
            }
            if let Err(why) = self.check_signature(child, issuer) {
                self.note_other(why);
                continue;
            }
            path.push(issuer);
            if is_root {
                return true;
            }
            if path.len() >= MAX_PATH {
                self.note_other(format!("no root within {MAX_PATH} certificates of the signer"));
            } else if self.extend(path) {
                return true;
            }
            path.pop();
        }
        false
    }

    fn note_other(&mut self, why: String) {
        self.other.get_or_insert(why);
    }

    /// Whether `issuer` may issue a certificate with `below` intermediates under it.
    fn usable_issuer(&self, issuer: &Cert, below: usize) -> Result<(), String> {
        match issuer.basic_constraints {
            Some((true, path_len)) => {
                if let Some(max) = path_len {
                    if below > max as usize {
                        return Err(format!(
                            "CA certificate {} allows {max} intermediates below it, the path has {below}",
                            issuer.label()
                        ));
                    }
                }
            }
            _ => {
                return Err(format!(
                    "certificate {} is not a CA (basicConstraints cA is not set)",
                    issuer.label()
                ))
            }
        }
        if issuer.key_usage.is_some_and(|(cert_sign, _)| !cert_sign) {
            return Err(format!("CA certificate {} lacks keyCertSign", issuer.label()));
        }
        if let Some(oid) = &issuer.unknown_critical {
            return Err(format!(
                "CA certificate {} has an unsupported critical extension {oid}",
                issuer.label()
            ));
        }
        Ok(())
    }

    fn check_signature(&mut self, child: &Cert, issuer: &Cert) -> Result<(), String> {
        if self.checks >= MAX_SIGNATURE_CHECKS {
            return Err(format!("gave up after {MAX_SIGNATURE_CHECKS} signature checks"));
        }
        self.checks += 1;
        let algorithm = match child.signature_alg.as_str() {
            "1.2.840.113549.1.1.11" => SignatureAlgorithm::RsaPkcs1Sha256,
            "1.2.840.113549.1.1.12" => SignatureAlgorithm::RsaPkcs1Sha384,
            "1.2.840.113549.1.1.13" => SignatureAlgorithm::RsaPkcs1Sha512,
            "1.2.840.113549.1.1.5" => SignatureAlgorithm::RsaPkcs1Sha1,
            "1.2.840.10045.4.3.2" => SignatureAlgorithm::EcdsaP256Sha256,
            "1.2.840.10045.4.3.3" => SignatureAlgorithm::EcdsaP384Sha384,
            other => {
                return Err(format!(
                    "certificate {} uses unsupported signature algorithm {other}",
                    child.label()
                ))
            }
        };
        match self
            .crypto
            .verify_signature(algorithm, &issuer.spki, &child.tbs, &child.signature)
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "the signature on certificate {} does not verify with the key of {}",
                child.label(),
                issuer.label()
            )),
            Err(e) => Err(format!(
                "the key of {} cannot check certificate {}: {e}",
                issuer.label(),
                child.label()
            )),
        }
    }
}
