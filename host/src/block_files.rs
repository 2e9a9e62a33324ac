//! Provider-block values the host reads from files, so operators can update
//! what a plugin trusts (a CA bundle, say) by replacing a file: `K_file =
//! "PATH"` in any provider block is handed to the plugin as `K` holding the
//! file's text. The plugin, which has no filesystem, sees only the text; the
//! configured snapshot is keyed by it, so a changed file means a new snapshot.
//! Such a file decides trust, so it is checked as plugins are (`file_trust`);
//! a mount's `jwks_file` is read the same way ([`read_trusted_text`]).

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

/// Suffix of keys whose value is a path the host reads.
pub const FILE_SUFFIX: &str = "_file";
/// Largest file read this way (a bundle of a hundred certificates is ~200 KB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// `block` with every top-level `K_file = "PATH"` replaced by `K = <text of
/// PATH>`. Errors name the key and the file: not a string, unreadable, too
/// large, not UTF-8, or `K` also set.
pub fn resolve(provider: &str, mut block: Value) -> anyhow::Result<Value> {
    let Some(map) = block.as_object_mut() else {
        return Ok(block);
    };
    let file_keys: Vec<String> = map.keys().filter(|k| k.ends_with(FILE_SUFFIX)).cloned().collect();
    for file_key in file_keys {
        let key = file_key.trim_end_matches(FILE_SUFFIX).to_string();
        if key.is_empty() {
            continue;
        }
        if map.contains_key(&key) {
            bail!("[{provider}] sets both {key:?} and {file_key:?}: choose one");
        }
        let Some(Value::String(path)) = map.remove(&file_key) else {
            bail!("[{provider}] {file_key} must be a file path (a string)");
        };
        let text = read_trusted_text(Path::new(&path), MAX_FILE_BYTES)
            .with_context(|| format!("[{provider}] {file_key} = {path:?}"))?;
        map.insert(key, Value::String(text));
    }
    Ok(block)
}

/// The file's text (at most `max` bytes), read from the descriptor that was
/// checked: a file that decides trust (a bundle of roots, a mount's key set)
/// must be one only idgate's user or root can change, below directories only
/// they can change (`file_trust`).
pub fn read_trusted_text(path: &Path, max: u64) -> anyhow::Result<String> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("not a file path");
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let trusted = crate::file_trust::open_dir(dir, "provider-block file directory")?;
    let bytes = trusted
        .read(name, "provider-block file", crate::file_trust::Links::FollowTrusted)?
        .ok_or_else(|| anyhow::anyhow!("no such file"))?;
    if bytes.len() as u64 > max {
        bail!("{} bytes, more than the {max} allowed", bytes.len());
    }
    String::from_utf8(bytes).context("reading it as UTF-8 text")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_keys_become_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("roots.pem");
        std::fs::write(&bundle, "PEM TEXT").unwrap();
        let block = json!({"roots_file": bundle.to_str().unwrap(), "check_expires_on": false});
        assert_eq!(
            resolve("azure", block).unwrap(),
            json!({"roots": "PEM TEXT", "check_expires_on": false})
        );
        // No file keys: unchanged.
        assert_eq!(resolve("aws", json!({"a": 1})).unwrap(), json!({"a": 1}));
    }

    #[test]
    fn a_file_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("roots.pem");
        std::fs::write(&bundle, "PEM").unwrap();
        std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = format!(
            "{:#}",
            resolve("azure", json!({"roots_file": bundle.to_str().unwrap()})).unwrap_err()
        );
        assert!(err.contains("writable"), "{err}");
    }

    #[test]
    fn bad_file_keys_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        for (block, why) in [
            (json!({"roots_file": missing.to_str().unwrap()}), "roots_file"),
            (json!({"roots_file": 5}), "must be a file path"),
            (json!({"roots_file": "/x", "roots": "y"}), "both"),
            (json!({"roots_file": dir.path().to_str().unwrap()}), "roots_file"),
        ] {
            let err = format!("{:#}", resolve("azure", block).unwrap_err());
            assert!(err.contains(why), "{err}");
        }
    }
}
