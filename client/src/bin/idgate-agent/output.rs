//! Writing the token to a file: mode 0600 from its first byte, and never
//! half-written. The token goes to a new file beside the target, is flushed
//! to disk, and is renamed over the target; a reader (the agent started
//! next) sees the old file or the whole new one. The directory is synced
//! too, so the rename survives a crash right after.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `token` to `path` atomically, mode 0600, without a trailing newline
/// (readers that do not trim get the token exactly).
pub fn write_token_file(path: &Path, token: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the output path names no file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = dir.join(temp_name);
    let result = write_then_rename(&temp, path, &dir, token);
    if result.is_err() {
        // Leave no stray copy of the token behind.
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_then_rename(temp: &Path, path: &Path, dir: &Path, token: &str) -> io::Result<()> {
    // create_new: never follow a link or reuse a file someone else placed there.
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(temp)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(temp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("idgate-agent-out-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_token_file(&path, "new-token").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new-token");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        assert!(write_token_file(&dir.join("missing-dir/token"), "t").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
