//! The operator's `[azure]` configuration (passed by the host as JSON).

use idgate_plugin_kit::{pem, VerifyError};
use serde::Deserialize;

use crate::cert::Cert;
use crate::chain::TrustStore;

/// Parsed configuration; every key is optional.
#[derive(Debug, Default)]
pub struct Config {
    /// What a chain may use: the built-in roots and intermediates followed by the
    /// configured ones, decoded once at configure time.
    pub store: TrustStore,
    /// For each root of `store`, whether a chain made today needs it.
    pub roots_current: Vec<bool>,
    /// For each intermediate of `store`, whether a chain made today needs it.
    pub intermediates_current: Vec<bool>,
    /// How many of `store`'s roots, then intermediates, are built in (the
    /// configured ones follow).
    pub builtin_counts: (usize, usize),
    /// Extra pinned roots.
    pub roots: Vec<Cert>,
    /// Extra intermediates.
    pub intermediates: Vec<Cert>,
    /// Whether `timeStamp.expiresOn` must not have passed (default true).
    pub check_expires_on: bool,
    /// If set, only these subscription IDs are accepted.
    pub allowed_subscriptions: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    roots: Option<String>,
    intermediates: Option<String>,
    check_expires_on: Option<bool>,
    allowed_subscriptions: Option<Vec<String>>,
    pin_microsoft_root_g2: Option<bool>,
}

impl Config {
    /// Parses the config JSON; any problem is `BadConfig`.
    pub fn parse(json: &str) -> Result<Config, VerifyError> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let raw: Raw = serde_json::from_str(json).map_err(|e| VerifyError::BadConfig(format!("azure config: {e}")))?;
        let roots = certs(raw.roots.as_deref(), "roots")?;
        let intermediates = certs(raw.intermediates.as_deref(), "intermediates")?;
        let builtin =
            crate::trust::builtin().map_err(|e| VerifyError::BadConfig(format!("built-in Azure certificates: {e}")))?;
        let mut builtin_roots = builtin.store.roots.clone();
        let mut roots_current = builtin.roots_current.clone();
        if raw.pin_microsoft_root_g2.unwrap_or(true) {
            builtin_roots.push(builtin.microsoft_root_g2.clone());
            roots_current.push(true);
        }
        let builtin_counts = (builtin_roots.len(), builtin.store.intermediates.len());
        // Whatever the operator configured is what they mean to be used now.
        roots_current.extend(roots.iter().map(|_| true));
        let intermediates_current = builtin
            .intermediates_current
            .iter()
            .copied()
            .chain(intermediates.iter().map(|_| true))
            .collect();
        Ok(Config {
            store: TrustStore {
                roots: builtin_roots.into_iter().chain(roots.iter().cloned()).collect(),
                intermediates: builtin
                    .store
                    .intermediates
                    .iter()
                    .chain(&intermediates)
                    .cloned()
                    .collect(),
            },
            roots_current,
            intermediates_current,
            builtin_counts,
            roots,
            intermediates,
            check_expires_on: raw.check_expires_on.unwrap_or(true),
            allowed_subscriptions: raw.allowed_subscriptions,
        })
    }
}

/// The certificates in a PEM config value; an empty or unparseable one is an error.
fn certs(pem_text: Option<&str>, key: &str) -> Result<Vec<Cert>, VerifyError> {
    let Some(text) = pem_text else {
        return Ok(Vec::new());
    };
    let bad = |why: String| VerifyError::BadConfig(format!("azure config `{key}`: {why}"));
    let ders = pem::certificates(text).map_err(bad)?;
    if ders.is_empty() {
        return Err(bad("no PEM CERTIFICATE block".into()));
    }
    ders.iter()
        .enumerate()
        .map(|(i, der)| Cert::parse(der).map_err(|e| bad(format!("certificate {}: {e}", i + 1))))
        .collect()
}

impl Config {
    /// Every certificate the store holds, for the host's listing and expiry watch.
    pub fn trust_anchors(&self) -> Vec<idgate_plugin_kit::TrustAnchor> {
        let (builtin_roots, builtin_intermediates) = self.builtin_counts;
        let origin = |i: usize, builtin: usize| if i < builtin { "built-in" } else { "configured" };
        let roots = self
            .store
            .roots
            .iter()
            .zip(&self.roots_current)
            .enumerate()
            .map(|(i, (c, cur))| idgate_plugin_kit::TrustAnchor {
                subject: c.subject.to_string(),
                root: true,
                origin: origin(i, builtin_roots),
                not_after: c.not_after,
                current: *cur,
            });
        let intermediates = self
            .store
            .intermediates
            .iter()
            .zip(&self.intermediates_current)
            .enumerate()
            .map(|(i, (c, cur))| idgate_plugin_kit::TrustAnchor {
                subject: c.subject.to_string(),
                root: false,
                origin: origin(i, builtin_intermediates),
                not_after: c.not_after,
                current: *cur,
            });
        roots.chain(intermediates).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse("{}").unwrap();
        assert!(c.check_expires_on && c.roots.is_empty() && c.allowed_subscriptions.is_none());
        assert!(!Config::parse(r#"{"check_expires_on":false}"#).unwrap().check_expires_on);
        // Root G2 (self-signed) is pinned unless turned off.
        let pinned = Config::parse(r#"{"pin_microsoft_root_g2":true}"#).unwrap();
        let unpinned = Config::parse(r#"{"pin_microsoft_root_g2":false}"#).unwrap();
        assert_eq!(pinned.store.roots.len(), c.store.roots.len());
        assert_eq!(pinned.store.roots.len(), unpinned.store.roots.len() + 1);
        let anchors = pinned.trust_anchors();
        assert!(anchors
            .iter()
            .any(|a| a.root && a.current && a.subject.contains("Microsoft TLS RSA Root G2")));
        assert!(anchors.iter().all(|a| a.origin == "built-in"));
        for bad in [
            r#"{"root":"x"}"#,
            r#"{"roots":"no pem"}"#,
            r#"{"roots":"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----"}"#,
            r#"{"check_expires_on":"no"}"#,
            "[]",
            "{",
        ] {
            assert!(matches!(Config::parse(bad), Err(VerifyError::BadConfig(_))), "{bad}");
        }
    }
}
