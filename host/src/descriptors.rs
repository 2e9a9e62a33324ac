//! File descriptors for a server that may hold thousands of connections.
//!
//! Two things a reconnect storm would otherwise hit on a freshly started
//! process:
//! - the soft `RLIMIT_NOFILE` (often 1024 under systemd), which would make
//!   `accept` fail with `EMFILE` near a thousand agents; it is raised to the
//!   hard limit, as Go's runtime does for Coder;
//! - growing the kernel's descriptor table. Linux doubles it as descriptors
//!   are allocated, and in a multi-threaded process each doubling waits for an
//!   RCU grace period while every other thread that opens a socket waits
//!   behind it. Measured in the benchmark's storm, that left the CPU a third
//!   idle and answered almost nothing in the first 100 ms of the first storm
//!   a process saw. Growing the table once, before any thread exists, costs
//!   no grace period (the table is not shared yet), and the table never
//!   shrinks.

/// Descriptors `idgate serve` sizes the table for: a thousand-agent storm's
/// connections with room to spare, for 32 KiB of kernel memory.
pub const SERVE_TABLE: u64 = 4096;

/// What [`prepare`] arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// The soft descriptor limit now in force.
    pub limit: u64,
    /// Descriptors the table was grown to cover.
    pub table: u64,
}

/// Raises the soft descriptor limit to the hard one and grows the
/// descriptor table to cover `expected` descriptors (capped by the limit).
/// Call it before starting threads; failures leave things as they were and
/// are reported, never fatal.
pub fn prepare(expected: u64) -> std::io::Result<Prepared> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let limit = lim.rlim_cur;
    let table = expected.min(limit);
    if table > 0 {
        grow_table(table)?;
    }
    Ok(Prepared { limit, table })
}

/// Makes the kernel size the table for descriptor `n - 1`: duplicates a
/// `/dev/null` descriptor to the lowest free one at or above `n - 1` (never
/// clobbering one in use), then closes both.
fn grow_table(n: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::File::open("/dev/null")?;
    let target = libc::c_int::try_from(n - 1).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_DUPFD on a descriptor we own returns a new descriptor that
    // we close at once.
    let high = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, target) };
    if high < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `high` was just returned to us and nothing else refers to it.
    unsafe { libc::close(high) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table covers what was asked (a descriptor that high can be
    /// created), within the limit, and nothing is left open.
    #[test]
    fn grows_the_table_and_leaves_nothing_open() {
        let prepared = prepare(2048).unwrap();
        assert_eq!(prepared.table, 2048.min(prepared.limit));
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(prepared.limit, lim.rlim_cur);
        assert_eq!(lim.rlim_cur, lim.rlim_max, "soft limit raised to the hard one");
        // Other tests open files concurrently, so only the high slot is checked.
        let high = format!("/proc/self/fd/{}", prepared.table - 1);
        assert!(!std::path::Path::new(&high).exists(), "{high} left open");
        // The kernel reports the table's size as FDSize.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let size: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(size >= prepared.table, "FDSize {size} < {}", prepared.table);
    }
}
