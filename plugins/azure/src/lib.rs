//! Azure instance identity verifier: the attested-data PKCS#7 that IMDS serves at
//! `/metadata/attested/document`, as Coder's agents send it
//! (`{"signature": "<base64 DER PKCS#7>", "encoding": "..."}`).
//!
//! Checks, in order, at the host's `now`:
//! 1. the CMS signature of the document (directly over the content: Azure sends
//!    no signed attributes) with the key of the certificate the PKCS#7 carries —
//!    Coder skipped this (GHSA-6x44-w3xg-hqqf);
//! 2. that certificate's chain to a pinned root ([`chain`], [`trust`], config;
//!    an issuer none of them has may come from its AIA URL through the host,
//!    [`aia`]);
//! 3. the signer's CN or a DNS SAN is an IMDS name ([`signer_name`]);
//! 4. `timeStamp.expiresOn` has not passed (unless configured off);
//! 5. the subscription is allowed, if the operator set an allow-list.

pub mod aia;
pub mod cert;
pub mod chain;
pub mod config;
pub mod document;
pub mod signer_name;
pub mod trust;

use std::borrow::Cow;

use idgate_plugin_kit::time::format_rfc3339;
use idgate_plugin_kit::{encoding, signed_data, Crypto, Identity, Provider, VerifyError};

use crate::cert::Cert;
use crate::config::Config;
use crate::document::{parse_azure_time, Document};

/// The Azure provider.
pub struct Azure;

impl Provider for Azure {
    const NAME: &'static str = "azure";
    type Config = Config;

    fn configure(config: &str) -> Result<Config, VerifyError> {
        Config::parse(config)
    }

    fn verify(crypto: &dyn Crypto, config: &Config, credential: &str, now: i64) -> Result<Identity, VerifyError> {
        let pkcs7 = credential_pkcs7(credential)?;
        verify_pkcs7(crypto, &pkcs7, config, now)
    }

    fn trust(config: &Config) -> Vec<idgate_plugin_kit::TrustAnchor> {
        config.trust_anchors()
    }
}

idgate_plugin_kit::export_provider!(Azure);

/// The PKCS#7 bytes from the credential JSON (`signature`, base64).
fn credential_pkcs7(credential: &str) -> Result<Vec<u8>, VerifyError> {
    let value: serde_json::Value =
        serde_json::from_str(credential).map_err(|e| VerifyError::Malformed(format!("credential is not JSON: {e}")))?;
    let signature = value
        .get("signature")
        .and_then(|s| s.as_str())
        .ok_or_else(|| VerifyError::Malformed("credential has no string `signature`".into()))?;
    encoding::base64_decode(signature).map_err(|e| VerifyError::Malformed(format!("`signature`: {e}")))
}

/// A carried certificate, decoded (or the store's copy), or why it does not decode.
type Decoded<'a> = Result<Cow<'a, Cert>, String>;

/// Verifies an attested-data PKCS#7 (DER) under `config` at `now`.
pub fn verify_pkcs7(crypto: &dyn Crypto, pkcs7: &[u8], config: &Config, now: i64) -> Result<Identity, VerifyError> {
    // 1. The document's signature, with the signer certificate's key.
    let signed = signed_data::parse_with_max_certificates(pkcs7, chain::MAX_CARRIED)?;
    // Each certificate the PKCS#7 carries is decoded once, for both uses (the
    // signer, an intermediate); one the store already holds (IMDS may send its
    // issuing CA) is the store's, decoded by `configure`.
    let mut decoded: Vec<(&[u8], Decoded)> = signed
        .certificates()
        .iter()
        .zip(signed.decoded_certificates())
        .map(|(der, x509)| {
            let known = config.store.intermediates.iter().find(|c| c.der == *der);
            let cert = match known {
                Some(c) => Ok(Cow::Borrowed(c)),
                None => Cert::from_certificate(der, x509).map(Cow::Owned),
            };
            (der.as_slice(), cert)
        })
        .collect();
    // The first the SignerInfo names, as `SignedData::find_signer_certificate` picks it.
    let at = signed
        .decoded_certificates()
        .iter()
        .position(|x509| signed.signer_matches_decoded(x509))
        .ok_or_else(|| VerifyError::UntrustedSigner("the PKCS#7 does not carry its signer's certificate".into()))?;
    let signer = decoded
        .remove(at)
        .1
        .map_err(|e| VerifyError::Malformed(format!("signer certificate in the PKCS#7: {e}")))?
        .into_owned();
    signed.verify_signer(crypto, &signer.spki, false)?;

    // 2. The signer certificate's chain to a pinned root (built-in and
    // configured, prepared by `configure`). Certificates the PKCS#7 carries may
    // serve as intermediates, never as roots; the store's own are there already.
    let mut carried: Vec<Cert> = decoded
        .into_iter()
        .filter(|(der, _)| *der != signer.der.as_slice())
        .filter_map(|(_, cert)| match cert {
            Ok(Cow::Owned(cert)) => Some(cert),
            _ => None,
        })
        .collect();
    aia::add_fetched_issuers(&signer, &config.store, &mut carried);
    chain::validate_with(crypto, &signer, &config.store, &carried, now)?;

    // 3. The signer is an IMDS endpoint.
    let names: Vec<&String> = signer.common_names.iter().chain(&signer.dns_names).collect();
    if !names.iter().any(|n| signer_name::is_imds_signer(n)) {
        return Err(VerifyError::UntrustedSigner(format!(
            "signer certificate {} is not an Azure IMDS certificate (names: {names:?})",
            signer.label()
        )));
    }

    // 4. The document itself.
    let doc = Document::parse(signed.content())?;
    let (created_on, expires_on) = match &doc.time_stamp {
        Some(ts) => (ts.created_on.as_str(), ts.expires_on.as_str()),
        None => ("", ""),
    };
    let expires_at = parse_azure_time(expires_on);
    if config.check_expires_on {
        let at = expires_at.ok_or_else(|| {
            VerifyError::Malformed(format!(
                "attested document has no valid timeStamp.expiresOn ({expires_on:?})"
            ))
        })?;
        if now > at {
            return Err(VerifyError::Expired(format!(
                "attested document expired: expiresOn {} is before {}",
                format_rfc3339(at),
                format_rfc3339(now)
            )));
        }
    }

    // 5. The operator's allow-list.
    if let Some(allowed) = &config.allowed_subscriptions {
        if !allowed.iter().any(|s| s.eq_ignore_ascii_case(&doc.subscription_id)) {
            return Err(VerifyError::Refused(format!(
                "subscription {:?} is not in allowed_subscriptions",
                doc.subscription_id
            )));
        }
    }

    let as_rfc3339 = |raw: &str| {
        parse_azure_time(raw)
            .map(format_rfc3339)
            .unwrap_or_else(|| raw.to_string())
    };
    Ok(Identity::new(doc.vm_id.clone())
        .with("subscriptionId", doc.subscription_id.clone())
        .with("nonce", doc.nonce.clone())
        .with("createdOn", as_rfc3339(created_on))
        .with("expiresOn", as_rfc3339(expires_on))
        .with("signer", signer.common_names.first().cloned().unwrap_or_default()))
}
