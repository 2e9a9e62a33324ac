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
        Ok(Config {
            store: TrustStore {
                roots: builtin.roots.iter().chain(&roots).cloned().collect(),
                intermediates: builtin.intermediates.iter().chain(&intermediates).cloned().collect(),
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse("{}").unwrap();
        assert!(c.check_expires_on && c.roots.is_empty() && c.allowed_subscriptions.is_none());
        assert!(!Config::parse(r#"{"check_expires_on":false}"#).unwrap().check_expires_on);
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
