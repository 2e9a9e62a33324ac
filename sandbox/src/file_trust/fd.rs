//! The descriptor calls the walk is made of (`openat`, `fstat`, `readlinkat`),
//! each wrapping one unsafe libc call so the walk itself stays safe code.

use std::ffi::{CStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

pub(super) fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: `dir` is a valid descriptor and `name` NUL-terminated; a
    // non-negative result is a new descriptor this function now owns.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn open_cwd_relative(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: as `openat`; `path` is absolute here, so AT_FDCWD is not used.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor this function owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is valid; fstat fills `st` on success.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so `st` is initialised.
    Ok(unsafe { st.assume_init() })
}

/// The target of the link `fd` (opened `O_PATH | O_NOFOLLOW`) refers to: the
/// link that was checked, whatever its name points at by now.
pub(super) fn read_link(fd: BorrowedFd<'_>) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: an empty path with an O_PATH link descriptor reads that link
    // (Linux ≥ 2.6.39); the buffer is as long as we say.
    let n = unsafe { libc::readlinkat(fd.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n == 0 || n >= buf.len() {
        return Err(io::Error::other("the link's target is empty or too long"));
    }
    buf.truncate(n);
    Ok(OsString::from_vec(buf))
}

pub(super) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
