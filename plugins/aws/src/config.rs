//! The `[aws]` configuration block and the policy it sets.

use std::collections::BTreeMap;

use idgate_plugin_kit::time::parse_rfc3339;
use idgate_plugin_kit::VerifyError;
use serde::Deserialize;

use crate::document::Document;
use crate::trust::{self, Key, Table};

/// Operator configuration; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Region → PEM certificate, adding to or overriding the built-in table.
    #[serde(default)]
    pub certificates: BTreeMap<String, String>,
    /// Accounts allowed (empty: any).
    #[serde(default)]
    pub allowed_accounts: Vec<String>,
    /// Regions allowed (empty: any).
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// Refuse documents whose `pendingTime` is older than this (0: off).
    #[serde(default)]
    pub max_age_secs: u64,
}

impl Config {
    /// Parses the block (`{}` or empty means defaults).
    pub fn parse(text: &str) -> Result<Config, VerifyError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_json::from_str(text).map_err(|e| VerifyError::BadConfig(format!("[aws]: {e}")))
    }

    /// The RSA key for the `/signature` form in `region`: configured first, then built in.
    pub fn rsa_key(&self, region: &str) -> Result<Key, VerifyError> {
        if let Some(pem) = self.certificates.get(region) {
            return trust::key_of(pem, "configured")
                .map_err(|e| VerifyError::BadConfig(format!("[aws.certificates] {region:?}: {e}")));
        }
        let pem = trust::certificate_pem(Table::Rsa1024, region).ok_or_else(|| {
            VerifyError::UntrustedSigner(format!(
                "no certificate for region {region:?}: add one under [aws.certificates]"
            ))
        })?;
        trust::key_of(pem, "built-in").map_err(VerifyError::BadConfig)
    }

    /// Allow-lists and freshness, checked on a verified document.
    pub fn check_policy(&self, doc: &Document, now: i64) -> Result<(), VerifyError> {
        if !self.allowed_regions.is_empty() && !self.allowed_regions.contains(&doc.region) {
            return Err(VerifyError::Refused(format!("region {:?} is not allowed", doc.region)));
        }
        if !self.allowed_accounts.is_empty() {
            let account = doc.account_id.as_deref().unwrap_or("");
            if !self.allowed_accounts.iter().any(|a| a == account) {
                return Err(VerifyError::Refused(format!("account {account:?} is not allowed")));
            }
        }
        if self.max_age_secs > 0 {
            let pending = doc.pending_time.as_deref().and_then(parse_rfc3339).ok_or_else(|| {
                VerifyError::Malformed("max_age_secs is set but pendingTime is missing or invalid".into())
            })?;
            let age = now.saturating_sub(pending);
            if age > self.max_age_secs as i64 {
                return Err(VerifyError::Expired(format!(
                    "document is {age} s old (pendingTime {}), more than max_age_secs {}",
                    doc.pending_time.as_deref().unwrap_or(""),
                    self.max_age_secs
                )));
            }
        }
        Ok(())
    }
}
