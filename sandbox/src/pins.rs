//! Plugin pins: the operator's list of which `.wasm` (by SHA-256) may serve which
//! provider, as Vault's plugin catalog registers a plugin's digest.
//!
//! With any pin configured, a plugin is loaded only if its digest is pinned for the
//! provider it says it serves; without pins, every plugin is loaded and the
//! caller warns. The digest is checked twice: before compiling (a digest pinned for
//! no provider never reaches the compiler) and after the plugin names its provider
//! (a plugin pinned for `gcp` cannot serve `aws`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;

/// Provider name → the full lower-case hex SHA-256 of the plugin allowed to serve it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginPins {
    by_provider: BTreeMap<String, String>,
}

impl PluginPins {
    /// Validates the `[plugin_sha256]` table: every value 64 hex digits.
    pub fn new(table: &BTreeMap<String, String>) -> anyhow::Result<PluginPins> {
        let mut by_provider = BTreeMap::new();
        for (provider, digest) in table {
            let digest = digest.trim().to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "plugin_sha256.{provider} must be the full SHA-256 of the plugin file, 64 hex digits \
                     (`idgate plugins` prints it), not {digest:?}"
                );
            }
            by_provider.insert(provider.clone(), digest);
        }
        Ok(PluginPins { by_provider })
    }

    /// Whether no pin is configured (every plugin is then loaded, with a warning).
    pub fn is_empty(&self) -> bool {
        self.by_provider.is_empty()
    }

    /// The pinned digest for `provider`, if any.
    pub fn get(&self, provider: &str) -> Option<&str> {
        self.by_provider.get(provider).map(String::as_str)
    }

    /// Before compiling `file`: with pins configured, its digest must be pinned for
    /// some provider. The expected digest named is the one pinned for the provider
    /// the file is named after (`aws.wasm` → `aws`), when there is one.
    pub fn check_file(&self, file: &Path, actual: &str) -> anyhow::Result<()> {
        if self.is_empty() || self.by_provider.values().any(|d| d == actual) {
            return Ok(());
        }
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        match self.get(stem) {
            Some(expected) => bail!(
                "plugin {} does not match its pin: expected sha256 {expected} (plugin_sha256.{stem}), actual {actual}",
                file.display()
            ),
            None => bail!(
                "plugin {} is not pinned: its sha256 {actual} is pinned for no provider (pinned: {}); \
                 add it to [plugin_sha256] or remove the file",
                file.display(),
                self.by_provider.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// After `file` named its provider: with pins configured, the digest pinned for
    /// that provider must be the file's.
    pub fn check_provider(&self, file: &Path, provider: &str, actual: &str) -> anyhow::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        match self.get(provider) {
            Some(expected) if expected == actual => Ok(()),
            Some(expected) => bail!(
                "plugin {} serves provider {provider:?} but does not match its pin: expected sha256 {expected}, actual {actual}",
                file.display()
            ),
            None => bail!(
                "plugin {} serves provider {provider:?}, which has no pin in [plugin_sha256] (its sha256 is {actual})",
                file.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn pins(entries: &[(&str, &str)]) -> PluginPins {
        PluginPins::new(&entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
    }

    #[test]
    fn digests_must_be_full_sha256() {
        let short = BTreeMap::from([("aws".to_string(), A[..16].to_string())]);
        let e = PluginPins::new(&short).unwrap_err().to_string();
        assert!(e.contains("plugin_sha256.aws") && e.contains("64 hex digits"), "{e}");
        // Upper case is accepted and normalised.
        assert_eq!(pins(&[("aws", &A.to_uppercase())]).get("aws"), Some(A));
    }

    #[test]
    fn without_pins_everything_passes() {
        let p = PluginPins::default();
        p.check_file(Path::new("x.wasm"), A).unwrap();
        p.check_provider(Path::new("x.wasm"), "x", A).unwrap();
    }

    #[test]
    fn a_mismatch_names_file_expected_and_actual() {
        let p = pins(&[("aws", A)]);
        let e = p.check_file(Path::new("/p/aws.wasm"), B).unwrap_err().to_string();
        assert!(e.contains("/p/aws.wasm") && e.contains(A) && e.contains(B), "{e}");
        let e = p.check_file(Path::new("/p/other.wasm"), B).unwrap_err().to_string();
        assert!(e.contains("not pinned") && e.contains(B), "{e}");
    }

    #[test]
    fn a_digest_pinned_for_another_provider_is_refused() {
        let p = pins(&[("aws", A), ("gcp", B)]);
        p.check_file(Path::new("aws.wasm"), B).unwrap();
        let e = p
            .check_provider(Path::new("aws.wasm"), "aws", B)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected sha256 ") && e.contains(A) && e.contains(B), "{e}");
        let e = p
            .check_provider(Path::new("x.wasm"), "azure", A)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no pin"), "{e}");
        p.check_provider(Path::new("aws.wasm"), "aws", A).unwrap();
    }
}
