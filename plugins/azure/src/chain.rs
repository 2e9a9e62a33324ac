//! X.509 path validation from the signer's certificate to a pinned root, offline,
//! by the kit's validator ([`idgate_plugin_kit::x509_path`]: rustls-webpki plus
//! the rules Go checks and webpki leaves out, see its module doc), with what
//! Azure adds on the signer: its keyUsage, if present, must allow
//! digitalSignature, since it signs the attested document. The signer's name is
//! checked separately ([`crate::signer_name`]).

use idgate_plugin_kit::x509_path::{self, PathError};
use idgate_plugin_kit::{Crypto, VerifyError};

use crate::cert::Cert;

/// Most certificates in a path, leaf and root included.
pub const MAX_PATH: usize = x509_path::MAX_PATH;

/// Most certificates a PKCS#7 may carry, the signer's included: Azure sends
/// only the leaf; this leaves room for the leaf and a few intermediates
/// (Azure's paths have one, two through the G2 cross-sign). Checked before any
/// of them is decoded, so a body stuffed with CA certificates costs no more
/// than a small refused one.
pub const MAX_CARRIED: usize = 4;

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
/// else (no issuer, not a CA, bad signature, name constraints, EKU...).
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
    if leaf.key_usage.is_some_and(|(_, digital_signature)| !digital_signature) {
        return Err(VerifyError::UntrustedSigner(format!(
            "signer certificate {} may not sign (keyUsage lacks digitalSignature)",
            leaf.label()
        )));
    }
    let intermediates: Vec<&Cert> = store.intermediates.iter().chain(carried).collect();
    x509_path::validate(crypto, leaf, &store.roots, &intermediates, now).map_err(|e| match e {
        PathError::Expired(why) => VerifyError::Expired(why),
        PathError::NoIssuer { issuer, child } => VerifyError::UntrustedSigner(format!(
            "no trusted issuer '{issuer}' for certificate {child} (add it to `intermediates`, or its root to `roots`)"
        )),
        PathError::Untrusted(why) => VerifyError::UntrustedSigner(why),
    })
}
