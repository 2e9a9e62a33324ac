//! The trust rules on real files: owners, modes, links and races.

use super::*;
use std::os::unix::fs::PermissionsExt;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A private directory (0700) under the temporary directory.
fn private_tmp() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o700);
    tmp
}

fn is_root() -> bool {
    effective_uid() == 0
}

/// The uid of `nobody` on Debian and most distributions.
const NOBODY: u32 = 65534;

fn lchown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), None).unwrap();
}

#[test]
fn private_directory_and_file_pass() {
    let tmp = private_tmp();
    let dir = tmp.path().join("a/b/cache");
    let cache = open_private_dir(&dir, "cache").unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&tmp.path().join("a")), 0o700);
    cache.write_private("e.cwasm", b"x").unwrap();
    assert_eq!(mode(&dir.join("e.cwasm")), 0o600);
    assert_eq!(
        cache.read(OsStr::new("e.cwasm"), "entry", Links::Refuse).unwrap(),
        Some(b"x".to_vec())
    );
    assert_eq!(cache.read(OsStr::new("none"), "entry", Links::Refuse).unwrap(), None);
    // Replaced atomically, no temporary left behind.
    cache.write_private("e.cwasm", b"yz").unwrap();
    assert_eq!(std::fs::read(dir.join("e.cwasm")).unwrap(), b"yz");
    assert_eq!(cache.names().unwrap(), vec![OsString::from("e.cwasm")]);
    open_dir(&dir, "plugin directory").unwrap();
}

#[test]
fn the_walk_refuses_a_group_writable_directory() {
    let tmp = private_tmp();
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("aws.wasm"), b"x").unwrap();
    chmod(&dir.join("aws.wasm"), 0o664);
    let trusted = open_dir(&dir, "plugin directory").unwrap();
    let e = trusted
        .read(OsStr::new("aws.wasm"), "plugin", Links::FollowTrusted)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("writable by group or others") && e.contains("aws.wasm"),
        "{e}"
    );
    chmod(&dir.join("aws.wasm"), 0o644);

    chmod(&dir, 0o775);
    let e = open_dir(&dir, "plugin directory").unwrap_err().to_string();
    assert!(
        e.contains("plugin directory") && e.contains("writable by group or others"),
        "{e}"
    );
    // A directory above is held to the same rule (it is not root's and sticky).
    chmod(&dir, 0o755);
    chmod(tmp.path(), 0o770);
    let e = open_dir(&dir, "plugin directory").unwrap_err().to_string();
    assert!(e.contains("group or others can write"), "{e}");
    // With the sticky bit but not owned by root, still refused (unless we are root).
    chmod(tmp.path(), 0o1777);
    let walked = open_dir(&dir, "plugin directory");
    assert_eq!(walked.is_ok(), is_root(), "{walked:?}");
}

#[test]
fn sticky_root_directories_are_tolerated_as_ancestors_only() {
    // The temporary directory (normally /tmp, 1777 root) is an ancestor here.
    let tmp = private_tmp();
    open_dir(tmp.path(), "plugin directory").unwrap();
    let sys_tmp = std::env::temp_dir();
    if mode(&sys_tmp) & 0o1002 == 0o1002 {
        let e = open_dir(&sys_tmp, "plugin directory").unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
    }
}

#[test]
fn trusted_links_are_followed_and_read_by_descriptor() {
    let tmp = private_tmp();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("aws.wasm"), b"plugin").unwrap();
    std::os::unix::fs::symlink("real", tmp.path().join("rel")).unwrap();
    std::os::unix::fs::symlink(&real, tmp.path().join("abs")).unwrap();
    std::os::unix::fs::symlink("../real/aws.wasm", real.join("linked.wasm")).unwrap();
    for link in ["rel", "abs"] {
        let dir = open_dir(&tmp.path().join(link), "plugin directory").unwrap();
        assert_eq!(dir.real_path(), real);
        for name in ["aws.wasm", "linked.wasm"] {
            assert_eq!(
                dir.read(OsStr::new(name), "plugin", Links::FollowTrusted).unwrap(),
                Some(b"plugin".to_vec())
            );
        }
        // A cache entry is never a link, even a trusted one.
        let e = dir
            .read(OsStr::new("linked.wasm"), "entry", Links::Refuse)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
    // What was opened stays what is read: re-pointing the link afterwards
    // does not move an opened directory.
    let dir = open_dir(&tmp.path().join("rel"), "plugin directory").unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("aws.wasm"), b"foreign").unwrap();
    std::fs::remove_file(tmp.path().join("rel")).unwrap();
    std::os::unix::fs::symlink("other", tmp.path().join("rel")).unwrap();
    assert_eq!(
        dir.read(OsStr::new("aws.wasm"), "plugin", Links::FollowTrusted)
            .unwrap(),
        Some(b"plugin".to_vec())
    );
}

#[test]
fn link_loops_are_bounded() {
    let tmp = private_tmp();
    std::os::unix::fs::symlink("b", tmp.path().join("a")).unwrap();
    std::os::unix::fs::symlink("a", tmp.path().join("b")).unwrap();
    let e = open_dir(&tmp.path().join("a"), "plugin directory")
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 16 symbolic links"), "{e}");
}

#[test]
fn the_walk_refuses_a_link_another_user_owns() {
    if !is_root() {
        eprintln!("the_walk_refuses_a_link_another_user_owns needs root to lchown; skipped");
        return;
    }
    let tmp = private_tmp();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("aws.wasm"), b"plugin").unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    open_dir(&link, "plugin directory").unwrap();
    lchown(&link, NOBODY);
    let e = open_dir(&link, "plugin directory").unwrap_err().to_string();
    assert!(
        e.contains("symbolic link owned by uid 65534") && e.contains("refusing to follow"),
        "{e}"
    );
    // Also as a plugin file's own name, and deeper down a path.
    let file_link = real.join("linked.wasm");
    std::os::unix::fs::symlink("aws.wasm", &file_link).unwrap();
    lchown(&file_link, NOBODY);
    let e = open_dir(&real, "plugin directory")
        .unwrap()
        .read(OsStr::new("linked.wasm"), "plugin", Links::FollowTrusted)
        .unwrap_err()
        .to_string();
    assert!(e.contains("owned by uid 65534"), "{e}");
    std::fs::create_dir(real.join("sub")).unwrap();
    let e = open_dir(&link.join("sub"), "plugin directory").unwrap_err().to_string();
    assert!(e.contains("owned by uid 65534"), "{e}");
}

#[test]
fn writes_never_follow_a_planted_link() {
    let tmp = private_tmp();
    let cache = open_private_dir(&tmp.path().join("cache"), "cache").unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    // Even at the final name: the rename replaces the link, not its target.
    std::os::unix::fs::symlink(&victim, tmp.path().join("cache/e.cwasm")).unwrap();
    cache.write_private("e.cwasm", b"new").unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert_eq!(mode(&tmp.path().join("cache/e.cwasm")), 0o600);
    assert!(cache.write_private("../escape", b"x").is_err());
}
