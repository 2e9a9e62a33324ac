//! The `[aws]` configuration block: extra or overriding certificates, and the
//! policy (allow-lists, freshness) applied to a verified document.

use std::collections::BTreeMap;

use idgate_plugin_kit::time::parse_rfc3339;
use idgate_plugin_kit::VerifyError;
use serde::Deserialize;

use crate::document::Document;
use crate::trust::{self, Key, KeyKind, Table};

/// Most certificates one region's entry may hold (each is tried in turn).
const MAX_CERTS_PER_REGION: usize = 8;

/// What a key is wanted for: the credential form being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// IMDS `/signature` (RSA PKCS#1 v1.5 over the document).
    Signature,
    /// IMDS `/rsa2048` PKCS#7.
    Rsa2048,
    /// IMDS `/pkcs7`, the legacy DSA PKCS#7.
    Dsa,
}

impl Purpose {
    fn fits(self, kind: KeyKind) -> bool {
        match self {
            Purpose::Signature | Purpose::Rsa2048 => matches!(kind, KeyKind::Rsa { .. }),
            Purpose::Dsa => kind == KeyKind::Dsa,
        }
    }
}

/// The block as written; every key optional, unknown keys refused (typos).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    certificates: BTreeMap<String, String>,
    #[serde(default)]
    allowed_accounts: Vec<String>,
    #[serde(default)]
    allowed_regions: Vec<String>,
    #[serde(default)]
    max_age_secs: u64,
}

/// Operator configuration, with configured certificates already parsed and the
/// built-in tables decoded (once, at configure time: the snapshot keeps them).
#[derive(Debug)]
pub struct Config {
    /// Built-in keys by region, for IMDS `/signature` (RSA-1024 table).
    builtin_rsa1024: BTreeMap<String, Key>,
    /// Built-in keys by region, for IMDS `/rsa2048`.
    builtin_rsa2048: BTreeMap<String, Key>,
    /// AWS's DSA key of the legacy PKCS#7, offered for every region the tables know.
    builtin_dsa: Key,
    /// Region → the keys of its configured certificates (RSA and/or DSA).
    certificates: BTreeMap<String, Vec<Key>>,
    /// Accounts allowed (empty: any).
    allowed_accounts: Vec<String>,
    /// Regions allowed (empty: any).
    allowed_regions: Vec<String>,
    /// Refuse documents whose `pendingTime` is older than this many seconds (0: off).
    max_age_secs: u64,
}

impl Config {
    /// Parses the block (`{}` or an empty string means defaults). Every
    /// configured certificate is checked here, so a bad one is reported
    /// whichever region a credential names.
    pub fn parse(text: &str) -> Result<Config, VerifyError> {
        let bad = |m: String| VerifyError::BadConfig(format!("[aws] {m}"));
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else if !text.trim_start().starts_with('{') {
            // serde would read a JSON array positionally.
            return Err(bad("the configuration is not a JSON object".into()));
        } else {
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?
        };
        let mut certificates = BTreeMap::new();
        for (region, pem) in raw.certificates {
            let at = |m: String| bad(format!("certificates.{region:?}: {m}"));
            if region.trim().is_empty() || region.contains(char::is_whitespace) {
                return Err(at("is not a region code".into()));
            }
            let ders = idgate_plugin_kit::pem::certificates(&pem).map_err(&at)?;
            if ders.is_empty() {
                return Err(at("holds no PEM CERTIFICATE block".into()));
            }
            if ders.len() > MAX_CERTS_PER_REGION {
                return Err(at(format!(
                    "{} certificates; at most {MAX_CERTS_PER_REGION}",
                    ders.len()
                )));
            }
            let keys = ders
                .into_iter()
                .enumerate()
                .map(|(i, der)| {
                    trust::key_of_der(der, "configured").map_err(|e| at(format!("certificate {}: {e}", i + 1)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            certificates.insert(region, keys);
        }
        let builtin = |table: Table| -> Result<BTreeMap<String, Key>, VerifyError> {
            trust::regions(table)
                .into_iter()
                .map(|region| {
                    let pem = trust::certificate_pem(table, &region).unwrap_or_default();
                    let key = trust::key_of(pem, "built-in").map_err(|e| {
                        VerifyError::BadConfig(format!("built-in certificate for region {region:?}: {e}"))
                    })?;
                    Ok((region, key))
                })
                .collect()
        };
        Ok(Config {
            builtin_rsa1024: builtin(Table::Rsa1024)?,
            builtin_rsa2048: builtin(Table::Rsa2048)?,
            builtin_dsa: trust::key_of(trust::DSA, "built-in")
                .map_err(|e| VerifyError::BadConfig(format!("built-in DSA certificate: {e}")))?,
            certificates,
            allowed_accounts: raw.allowed_accounts,
            allowed_regions: raw.allowed_regions,
            max_age_secs: raw.max_age_secs,
        })
    }

    /// The keys trusted for `purpose` in `region`, possibly none.
    ///
    /// The rule: a region's configured certificates replace the built-in ones
    /// for every form their key type serves — RSA keys (any size from 1024 bits)
    /// serve `signature` and `rsa2048`, DSA keys the legacy PKCS#7 — and the
    /// built-in table still serves the forms they do not. Built in: the RSA-1024
    /// table for `signature`, the RSA-2048 table for `rsa2048`, and AWS's DSA
    /// certificate for every region the tables list.
    pub fn keys(&self, region: &str, purpose: Purpose) -> Result<Vec<Key>, VerifyError> {
        let configured: Vec<Key> = self
            .certificates
            .get(region)
            .into_iter()
            .flatten()
            .filter(|k| purpose.fits(k.kind))
            .cloned()
            .collect();
        if !configured.is_empty() {
            return Ok(configured);
        }
        let known = || self.builtin_rsa1024.contains_key(region) || self.builtin_rsa2048.contains_key(region);
        let key = match purpose {
            Purpose::Signature => self.builtin_rsa1024.get(region),
            Purpose::Rsa2048 => self.builtin_rsa2048.get(region),
            Purpose::Dsa => known().then_some(&self.builtin_dsa),
        };
        Ok(key.cloned().into_iter().collect())
    }

    /// Allow-lists and freshness, checked on a verified document.
    pub fn check_policy(&self, doc: &Document, now: i64) -> Result<(), VerifyError> {
        if !self.allowed_regions.is_empty() && !self.allowed_regions.contains(&doc.region) {
            return Err(VerifyError::Refused(format!(
                "region {:?} is not in allowed_regions",
                doc.region
            )));
        }
        if !self.allowed_accounts.is_empty() {
            let account = doc.account_id.as_deref().unwrap_or("");
            if !self.allowed_accounts.iter().any(|a| a == account) {
                return Err(VerifyError::Refused(format!(
                    "account {account:?} is not in allowed_accounts"
                )));
            }
        }
        if self.max_age_secs > 0 {
            let text = doc.pending_time.as_deref().unwrap_or("");
            let pending = parse_rfc3339(text).ok_or_else(|| {
                VerifyError::Malformed(format!(
                    "max_age_secs is set but the document's pendingTime {text:?} is missing or not RFC 3339"
                ))
            })?;
            let age = now.saturating_sub(pending);
            if u64::try_from(age).is_ok_and(|age| age > self.max_age_secs) {
                return Err(VerifyError::Expired(format!(
                    "the document's pendingTime {text} is {age} s before the verification time, more than max_age_secs = {}",
                    self.max_age_secs
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_typos() {
        assert!(Config::parse("{}").is_ok());
        assert!(Config::parse("").is_ok());
        for bad in [
            r#"{"alowed_accounts": []}"#,
            r#"{"max_age_secs": -1}"#,
            r#"{"certificates": {"us-east-1": "not a pem"}}"#,
            r#"{"certificates": {"us-east-1": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}}"#,
            r#"{"certificates": {" ": ""}}"#,
            "[]",
            "nonsense",
        ] {
            assert!(matches!(Config::parse(bad), Err(VerifyError::BadConfig(_))), "{bad}");
        }
    }

    #[test]
    fn configured_keys_replace_built_in_ones_by_type() {
        let af = trust::certificate_pem(Table::Rsa1024, "af-south-1").unwrap();
        let config = Config::parse(&serde_json::json!({"certificates": {"us-east-1": af}}).to_string()).unwrap();
        let sig = config.keys("us-east-1", Purpose::Signature).unwrap();
        assert_eq!((sig.len(), sig[0].source), (1, "configured"));
        // The configured RSA key serves rsa2048 too; DSA stays built in.
        assert_eq!(
            config.keys("us-east-1", Purpose::Rsa2048).unwrap()[0].source,
            "configured"
        );
        assert_eq!(config.keys("us-east-1", Purpose::Dsa).unwrap()[0].kind, KeyKind::Dsa);
        assert_eq!(
            config.keys("us-east-2", Purpose::Signature).unwrap()[0].source,
            "built-in"
        );
        assert!(config.keys("mars-1", Purpose::Signature).unwrap().is_empty());
        assert!(config.keys("mars-1", Purpose::Dsa).unwrap().is_empty());
    }
}
