//! Which files idgate may trust to run — plugin `.wasm` files and compiled
//! (native-code) cache entries — and how they are opened, so that what is run
//! is what was checked.
//!
//! Whoever can write a plugin decides who gets a session token, and whoever can
//! write a cache entry runs native code inside the host. So, as sshd's
//! `StrictModes` does for `authorized_keys`, a path is trusted only if every
//! directory on it and the file itself are owned by idgate's user or root and
//! are not writable by group or others. A world-writable directory above the
//! plugin or cache directory is tolerated only with the sticky bit and owned by
//! root (`/tmp`): there, other users cannot rename or replace entries they do
//! not own.
//!
//! Checked by descriptor, never by name: a path is walked from `/` one
//! component at a time with `openat(O_PATH | O_NOFOLLOW)` on the directory
//! opened before it, each component checked with `fstat` on its own
//! descriptor. A symbolic link is followed only if root or idgate's user owns
//! it (its target is read from the link that was checked, then walked the same
//! way; at most [`MAX_LINK_HOPS`] links per path). A file's bytes are then read
//! from the descriptor that was checked, and cache entries are written and
//! renamed inside the directory descriptor that was checked. Nothing is ever
//! reopened by name, so re-pointing a link or renaming a directory between the
//! check and the read changes nothing.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

mod fd;
use fd::{effective_uid, fstat, open_cwd_relative, openat, read_link};

const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Most symbolic links followed while resolving one path (Linux allows 40).
pub const MAX_LINK_HOPS: usize = 16;

/// Largest file read as a plugin or a cache entry: a bound on what one file
/// may cost in memory (compiled plugins are a few MiB).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// A directory opened by walking its path from `/`, every component checked.
/// Files are opened, read and written through its descriptor.
#[derive(Debug)]
pub struct TrustedDir {
    /// Descriptors of `/` and every directory down to this one (`O_PATH`), so
    /// a relative link inside it resolves against what was checked.
    stack: Vec<Step>,
    /// The path as it was asked for, for messages.
    shown: PathBuf,
}

#[derive(Debug, Clone)]
struct Step {
    fd: Arc<OwnedFd>,
    /// The resolved path of this directory, for messages.
    real: PathBuf,
}

/// Whether a file's own name may be a symbolic link (to follow if trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Follow a link owned by root or idgate's user (plugins may be linked in).
    FollowTrusted,
    /// Refuse a link in the file's own name (cache entries: idgate writes them).
    Refuse,
}

/// Opens `dir` for trusted use: a directory that only idgate's user (or root)
/// can change, below directories only they can change.
pub fn open_dir(dir: &Path, what: &str) -> anyhow::Result<TrustedDir> {
    let shown = dir.to_path_buf();
    let (stack, _) = walk(root()?, &absolute(dir)?, End::Dir, Create::No, what, dir)?;
    Ok(TrustedDir { stack, shown })
}

/// [`open_dir`], creating missing directories on the way as `0700` (each in
/// the checked directory above it), so the compiled-plugin cache starts
/// private.
pub fn open_private_dir(dir: &Path, what: &str) -> anyhow::Result<TrustedDir> {
    let shown = dir.to_path_buf();
    let (stack, _) = walk(root()?, &absolute(dir)?, End::Dir, Create::Private, what, dir)?;
    Ok(TrustedDir { stack, shown })
}

impl TrustedDir {
    /// The path as configured.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// The path it resolved to.
    pub fn real_path(&self) -> &Path {
        &self.top().real
    }

    fn top(&self) -> &Step {
        self.stack.last().expect("a walk always holds `/`")
    }

    /// The names in the directory (without `.` and `..`), read by descriptor.
    pub fn names(&self) -> anyhow::Result<Vec<OsString>> {
        let listing = openat(self.top().fd.as_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .with_context(|| format!("reading directory {}", self.shown.display()))?;
        // SAFETY: fdopendir takes ownership of a valid directory descriptor;
        // readdir's entries are read before the next call; closedir frees it.
        unsafe {
            let raw = listing.as_raw_fd();
            let dir = libc::fdopendir(raw);
            if dir.is_null() {
                return Err(io::Error::last_os_error()).with_context(|| format!("reading {}", self.shown.display()));
            }
            std::mem::forget(listing);
            let mut names = Vec::new();
            loop {
                *libc::__errno_location() = 0;
                let entry = libc::readdir(dir);
                if entry.is_null() {
                    let errno = *libc::__errno_location();
                    libc::closedir(dir);
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(errno))
                            .with_context(|| format!("reading {}", self.shown.display()));
                    }
                    return Ok(names);
                }
                let name = CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes();
                if name != b"." && name != b".." {
                    names.push(OsString::from_vec(name.to_vec()));
                }
            }
        }
    }

    /// Reads the file `name` in this directory if it exists and is trusted: a
    /// regular file owned by idgate's user or root, not writable by group or
    /// others, reached through trusted links only (with [`Links::FollowTrusted`]).
    /// The bytes are read from the descriptor that was checked. `Ok(None)`:
    /// there is no such file.
    pub fn read(&self, name: &OsStr, what: &str, links: Links) -> anyhow::Result<Option<Vec<u8>>> {
        let shown = self.shown.join(name);
        let name = single_component(name)?;
        let opened = match links {
            Links::FollowTrusted => walk(self.stack.clone(), Path::new(name), End::File, Create::No, what, &shown)
                .map(|(_, file)| file.expect("a file walk ends at a file")),
            Links::Refuse => open_last_no_link(self.top(), name, what, &shown),
        };
        let file = match opened {
            Ok(file) => file,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        read_bounded(file, &shown).map(Some)
    }

    /// Writes `bytes` as the `0600` file `name` in this directory: first to a
    /// fresh temporary name created with `O_EXCL | O_NOFOLLOW` (never a link
    /// someone placed there), synced, then renamed over `name` within the
    /// directory's descriptor, so a reader never sees half an entry. The
    /// temporary name is one no other writer uses, in this process or another.
    pub fn write_private(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let shown = self.shown.join(name);
        let final_name = cstring(single_component(OsStr::new(name))?)?;
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = cstring(OsStr::new(&format!(".{name}.tmp{}-{n}", std::process::id())))?;
        let dir = self.top().fd.as_fd();
        let written = (|| -> io::Result<()> {
            let fd = openat(
                dir,
                &tmp,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            )?;
            let mut file = std::fs::File::from(fd);
            file.write_all(bytes)?;
            file.sync_all()?;
            // SAFETY: both names are NUL-terminated and relative to `dir`.
            if unsafe { libc::renameat(dir.as_raw_fd(), tmp.as_ptr(), dir.as_raw_fd(), final_name.as_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })();
        if written.is_err() {
            // SAFETY: as above; failing to remove a temporary file is harmless.
            unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
        }
        written.with_context(|| format!("writing {}", shown.display()))
    }
}

/// What a walk must end at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Dir,
    File,
}

/// Whether a walk creates missing directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    No,
    Private,
}

/// Marks "no such file" among walk errors, so a missing cache entry is not an error.
#[derive(Debug)]
struct NotFound;

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no such file or directory")
    }
}

impl std::error::Error for NotFound {}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.root_cause().downcast_ref::<NotFound>().is_some()
}

/// `/`, opened and checked (owned by root or idgate's user; not writable by
/// others unless root-owned and sticky).
fn root() -> anyhow::Result<Vec<Step>> {
    let fd = open_cwd_relative(c"/", libc::O_PATH | libc::O_DIRECTORY).context("opening /")?;
    let st = fstat(fd.as_fd()).context("checking /")?;
    let real = PathBuf::from("/");
    check_ancestor(&st, &real, "/", Path::new("/"))?;
    Ok(vec![Step { fd: Arc::new(fd), real }])
}

/// `path` made absolute against the working directory (which `getcwd` reports
/// resolved); the walk checks it like any other.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the working directory")?
        .join(path))
}

fn single_component(name: &OsStr) -> anyhow::Result<&OsStr> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(n)), None) if n == name => Ok(n),
        _ => bail!("{name:?} is not a plain file name"),
    }
}

/// Walks `path` from the top of `stack` (which starts at `/`, or at a trusted
/// directory for a relative `path`), checking every component; returns the
/// directories walked and, for [`End::File`], the file opened for reading.
fn walk(
    mut stack: Vec<Step>,
    path: &Path,
    end: End,
    create: Create,
    what: &str,
    shown: &Path,
) -> anyhow::Result<(Vec<Step>, Option<std::fs::File>)> {
    let mut remaining: std::collections::VecDeque<OsString> = std::collections::VecDeque::new();
    push_front(&mut stack, &mut remaining, path);
    let mut hops = 0;
    while let Some(name) = remaining.pop_front() {
        let last = remaining.is_empty();
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let parent = stack.last().expect("a walk always holds `/`").clone();
        let real = parent.real.join(&name);
        let c_name = cstring(&name)?;
        let fd = match openat(parent.fd.as_fd(), &c_name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create == Create::Private => {
                // SAFETY: a NUL-terminated name relative to a valid directory descriptor.
                if unsafe { libc::mkdirat(parent.fd.as_raw_fd(), c_name.as_ptr(), 0o700) } != 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::AlreadyExists {
                        return Err(e).with_context(|| format!("creating directory {}", real.display()));
                    }
                }
                openat(parent.fd.as_fd(), &c_name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                    .with_context(|| format!("{what} {}: opening {}", shown.display(), real.display()))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(anyhow::Error::new(NotFound).context(format!(
                    "{what} {}: {}",
                    shown.display(),
                    real.display()
                )))
            }
            Err(e) => return Err(e).with_context(|| format!("{what} {}: opening {}", shown.display(), real.display())),
        };
        let st = fstat(fd.as_fd()).with_context(|| format!("checking {}", real.display()))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                check_link_owner(&st, &real, what, shown)?;
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    bail!(
                        "{what} {}: more than {MAX_LINK_HOPS} symbolic links on the way (a loop?)",
                        shown.display()
                    );
                }
                let target = read_link(fd.as_fd()).with_context(|| format!("reading link {}", real.display()))?;
                push_front(&mut stack, &mut remaining, Path::new(&target));
            }
            libc::S_IFDIR => {
                if last && end == End::Dir {
                    check_final(&st, &real, what, shown)?;
                } else {
                    check_ancestor(&st, &real, what, shown)?;
                }
                stack.push(Step { fd: Arc::new(fd), real });
            }
            libc::S_IFREG if last && end == End::File => {
                check_final(&st, &real, what, shown)?;
                let file = reopen_readable(&parent, &c_name, &st, &real, what, shown)?;
                return Ok((stack, Some(file)));
            }
            libc::S_IFREG => bail!(
                "{what} {}: {} is a file, not a directory",
                shown.display(),
                real.display()
            ),
            _ => bail!(
                "{what} {}: {} is neither a regular file nor a directory",
                shown.display(),
                real.display()
            ),
        }
    }
    match end {
        End::Dir => {
            // The directory the walk ended in is held to the final rule even
            // if it was reached as an ancestor (`dir/sub/..`).
            let top = stack.last().expect("a walk always holds `/`");
            let st = fstat(top.fd.as_fd()).with_context(|| format!("checking {}", top.real.display()))?;
            check_final(&st, &top.real, what, shown)?;
            Ok((stack, None))
        }
        End::File => bail!("{what} {}: is a directory, not a regular file", shown.display()),
    }
}

/// Opens `name` in `parent` as a regular file that may not be a link itself.
fn open_last_no_link(parent: &Step, name: &OsStr, what: &str, shown: &Path) -> anyhow::Result<std::fs::File> {
    let real = parent.real.join(name);
    let c_name = cstring(name)?;
    let fd = match openat(parent.fd.as_fd(), &c_name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(anyhow::Error::new(NotFound).context(format!("{what} {}", shown.display())))
        }
        Err(e) => return Err(e).with_context(|| format!("{what} {}", shown.display())),
    };
    let st = fstat(fd.as_fd()).with_context(|| format!("checking {}", real.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        bail!(
            "{what} {} is not a regular file (links are not followed here)",
            shown.display()
        );
    }
    check_final(&st, &real, what, shown)?;
    reopen_readable(parent, &c_name, &st, &real, what, shown)
}

/// Opens the regular file just checked through its `O_PATH` descriptor's
/// directory for reading, and makes sure it is the same file (a file only a
/// trusted user can replace, but the check costs nothing).
fn reopen_readable(
    parent: &Step,
    name: &CStr,
    checked: &libc::stat,
    real: &Path,
    what: &str,
    shown: &Path,
) -> anyhow::Result<std::fs::File> {
    let fd = openat(
        parent.fd.as_fd(),
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        0,
    )
    .with_context(|| format!("{what} {}: opening {}", shown.display(), real.display()))?;
    let st = fstat(fd.as_fd()).with_context(|| format!("checking {}", real.display()))?;
    if (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino) || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        bail!(
            "{what} {}: {} changed while it was opened",
            shown.display(),
            real.display()
        );
    }
    check_final(&st, real, what, shown)?;
    Ok(std::fs::File::from(fd))
}

/// Puts `path`'s components before `remaining`; an absolute path restarts the
/// walk at `/`.
fn push_front(stack: &mut Vec<Step>, remaining: &mut std::collections::VecDeque<OsString>, path: &Path) {
    if path.is_absolute() {
        stack.truncate(1);
    }
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    for part in parts.into_iter().rev() {
        remaining.push_front(part);
    }
}

fn read_bounded(file: std::fs::File, shown: &Path) -> anyhow::Result<Vec<u8>> {
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > MAX_FILE_BYTES {
        bail!(
            "{} is {size} bytes, more than the {MAX_FILE_BYTES} idgate reads",
            shown.display()
        );
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", shown.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        bail!(
            "{} is more than the {MAX_FILE_BYTES} bytes idgate reads",
            shown.display()
        );
    }
    Ok(bytes)
}

fn is_trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == effective_uid()
}

fn owned_by_another(st: &libc::stat, real: &Path, what: &str, shown: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} {}: {} is owned by uid {}, not by idgate's user (uid {}) or root: refusing to trust it",
        shown.display(),
        real.display(),
        st.st_uid,
        effective_uid()
    )
}

/// The plugin or cache directory itself, or the file: trusted owner, and
/// nobody else may write.
fn check_final(st: &libc::stat, real: &Path, what: &str, shown: &Path) -> anyhow::Result<()> {
    if !is_trusted_owner(st.st_uid) {
        return Err(owned_by_another(st, real, what, shown));
    }
    let mode = st.st_mode & 0o7777;
    if mode & GROUP_OTHER_WRITE != 0 {
        bail!(
            "{what} {}: {} is writable by group or others (mode {mode:o}): refusing to trust it (chmod go-w)",
            shown.display(),
            real.display()
        );
    }
    Ok(())
}

/// A directory above the plugin or cache directory: as [`check_final`], except
/// that a root-owned sticky directory (`/tmp`) may be writable by others.
fn check_ancestor(st: &libc::stat, real: &Path, what: &str, shown: &Path) -> anyhow::Result<()> {
    if !is_trusted_owner(st.st_uid) {
        return Err(owned_by_another(st, real, what, shown));
    }
    let mode = st.st_mode & 0o7777;
    let sticky_root = st.st_uid == 0 && mode & STICKY != 0;
    if mode & GROUP_OTHER_WRITE != 0 && !sticky_root {
        bail!(
            "{what} {} lies under {}, which group or others can write (owner uid {}, mode {mode:o}): refusing to trust it",
            shown.display(),
            real.display(),
            st.st_uid
        );
    }
    Ok(())
}

/// A link is followed only if its owner is trusted: whoever owns a link can
/// re-point it (in a sticky directory, only they can).
fn check_link_owner(st: &libc::stat, real: &Path, what: &str, shown: &Path) -> anyhow::Result<()> {
    if !is_trusted_owner(st.st_uid) {
        bail!(
            "{what} {}: {} is a symbolic link owned by uid {}, not by idgate's user (uid {}) or root: refusing to follow it",
            shown.display(),
            real.display(),
            st.st_uid,
            effective_uid()
        );
    }
    Ok(())
}

fn cstring(name: &OsStr) -> anyhow::Result<CString> {
    CString::new(name.as_bytes()).with_context(|| format!("{name:?} contains a NUL byte"))
}

#[cfg(test)]
mod tests;
