//! idgate's own PostgreSQL cluster, used when no database URL is configured.
//!
//! The cluster is made from the installed server binaries, lives in a data
//! directory that persists between runs, and listens only on a unix socket in
//! that directory (`listen_addresses = ''`). It is initialised with
//! `-A trust`: anyone who can reach the socket may connect, and only the
//! directory's owner (mode 0700) and root can. PostgreSQL refuses to run as
//! root, so when idgate runs as root the server runs as the `postgres` user in
//! `/var/lib/idgate/postgres` (root's home is not traversable by that user).
//!
//! The helpers here (finding the binaries, switching user, `initdb`) are public
//! because the integration tests build their throw-away cluster with them.

use std::ffi::{CStr, CString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;

/// The superuser `initdb` creates, whatever the OS user.
pub const SUPERUSER: &str = "idgate";
/// The database idgate keeps its tables in.
pub const DATABASE: &str = "idgate";
/// The port number, which on a socket-only cluster only names the socket file.
pub const PORT: u16 = 5432;

const INSTALL_HINT: &str = "install the PostgreSQL server (e.g. `apt-get install postgresql`), \
     or set IDGATE_DATABASE_URL to use an existing database";

/// Finds the directory holding `postgres`, `initdb` and `pg_ctl`: first via
/// `PATH` (following symlinks, since `initdb` and `pg_ctl` look for `postgres`
/// next to their real location), else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let complete = |dir: &Path| ["postgres", "initdb", "pg_ctl"].iter().all(|b| dir.join(b).is_file());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let Ok(real) = dir.join("pg_ctl").canonicalize() else {
                continue;
            };
            if let Some(bin) = real.parent().filter(|d| complete(d)) {
                return Ok(bin.to_path_buf());
            }
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = e.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no PostgreSQL server binaries (postgres, initdb, pg_ctl) on PATH or under /usr/lib/postgresql: {INSTALL_HINT}"),
    }
}

/// An unprivileged account to run the server as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUser {
    /// Login name.
    pub name: String,
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
}

/// Looks an account up by name (`getpwnam_r`).
pub fn lookup_user(name: &str) -> Option<ServerUser> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data; getpwnam_r writes strings into `buf`, which
    // outlives every read of `pw` below.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(cname.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut result);
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(ServerUser {
            name: CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The account the server must run as: `None` (this process's own) unless
/// running as root, then `postgres`.
pub fn server_user() -> anyhow::Result<Option<ServerUser>> {
    if !is_root() {
        return Ok(None);
    }
    match lookup_user("postgres") {
        Some(u) if u.uid != 0 => Ok(Some(u)),
        _ => bail!(
            "running as root, and PostgreSQL will not run as root: there is no unprivileged `postgres` user \
             to run it as; {INSTALL_HINT} (its package creates that user), or run idgate as a normal user"
        ),
    }
}

/// The libpq variables that would redirect a PostgreSQL program (or one that
/// runs them, as Patroni does) to another data directory, server or user:
/// removed from every such child's environment.
pub const LIBPQ_ENVIRONMENT: [&str; 7] = [
    "PGDATA",
    "PGPORT",
    "PGHOST",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGPASSWORD",
];

/// A command for one of the server binaries, run as `user` when given (the
/// uid/gid switch happens in the child before exec) from `/` (the caller's
/// working directory may not be readable by that user), without the `PG*`
/// variables that would redirect it.
pub fn server_command(bin_dir: &Path, program: &str, user: Option<&ServerUser>) -> Command {
    let mut cmd = Command::new(bin_dir.join(program));
    cmd.current_dir("/");
    for var in LIBPQ_ENVIRONMENT {
        cmd.env_remove(var);
    }
    if let Some(u) = user {
        cmd.uid(u.uid).gid(u.gid);
    }
    cmd
}

/// Creates `dir` (and its parents) if needed, mode 0700, owned by `user`.
pub fn prepare_dir(dir: &Path, user: Option<&ServerUser>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    if let Some(u) = user {
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))
            .with_context(|| format!("giving {} to user {}", dir.display(), u.name))?;
        // The server must be able to reach its directory (e.g. not under /root).
        for ancestor in dir.ancestors().skip(1) {
            use std::os::unix::fs::MetadataExt;
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.mode();
            let reachable = mode & 0o001 != 0
                || (meta.uid() == u.uid && mode & 0o100 != 0)
                || (meta.gid() == u.gid && mode & 0o010 != 0);
            if !reachable {
                bail!(
                    "{} is inside {}, which user {} cannot enter; choose another place with IDGATE_DATA_DIR",
                    dir.display(),
                    ancestor.display(),
                    u.name
                );
            }
        }
    }
    Ok(())
}

/// Runs `initdb` into the empty directory `data_dir` (superuser [`SUPERUSER`],
/// trust authentication, UTF-8, C locale) and appends `settings` lines to its
/// `postgresql.conf`. The socket-only settings are always added.
pub fn initdb(bin_dir: &Path, data_dir: &Path, user: Option<&ServerUser>, settings: &[String]) -> anyhow::Result<()> {
    let out = server_command(bin_dir, "initdb", user)
        .arg("-D")
        .arg(data_dir)
        .args([
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
        ])
        .output()
        .with_context(|| format!("running {}", bin_dir.join("initdb").display()))?;
    if !out.status.success() {
        bail!(
            "initdb {} failed ({}): {}",
            data_dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut conf = format!(
        "\n# idgate: a private, socket-only cluster.\nlisten_addresses = ''\nport = {PORT}\nunix_socket_directories = '{}'\n",
        data_dir.display().to_string().replace('\'', "''")
    );
    for line in settings {
        conf.push_str(line);
        conf.push('\n');
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(data_dir.join("postgresql.conf"))
        .and_then(|mut f| f.write_all(conf.as_bytes()))
        .with_context(|| format!("configuring {}", data_dir.display()))?;
    Ok(())
}

/// Whether the data directory has been initialised.
pub fn is_initialised(data_dir: &Path) -> bool {
    data_dir.join("PG_VERSION").is_file()
}

/// Whether a server is running on `data_dir`: its `postmaster.pid` names a
/// live process and the socket exists.
pub fn is_running(data_dir: &Path) -> bool {
    let Ok(pidfile) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = pidfile.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let alive = pid > 0
        && unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) };
    alive && socket_path(data_dir).exists()
}

/// Whether `postmaster.pid` says the server accepts connections (its status
/// line reads `ready`).
pub fn is_ready(data_dir: &Path) -> bool {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .map(|s| s.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
        .unwrap_or(false)
}

/// The server's socket file in `socket_dir`.
pub fn socket_path(socket_dir: &Path) -> PathBuf {
    socket_dir.join(format!(".s.PGSQL.{PORT}"))
}

/// Connection options for `database` on a cluster whose socket is in `socket_dir`.
/// The application name carries this process's ID ([`application_name`]), so the
/// process that stops the cluster can tell its own connections from others'.
pub fn connect_options(socket_dir: &Path, database: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .socket(socket_dir)
        .port(PORT)
        .username(SUPERUSER)
        .database(database)
        .application_name(&application_name())
}

/// `idgate-<pid>`: the application name of this process's connections.
pub fn application_name() -> String {
    format!("idgate-{}", std::process::id())
}

/// Where the embedded cluster lives: `$IDGATE_DATA_DIR/postgres` if set; as
/// root `/var/lib/idgate/postgres`; else `$XDG_DATA_HOME/idgate/postgres` or
/// `~/.local/share/idgate/postgres`.
pub fn default_cluster_dir() -> PathBuf {
    let non_empty = |v: &str| std::env::var_os(v).filter(|d| !d.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty("IDGATE_DATA_DIR") {
        return dir.join("postgres");
    }
    if is_root() {
        return PathBuf::from("/var/lib/idgate/postgres");
    }
    non_empty("XDG_DATA_HOME")
        .or_else(|| non_empty("HOME").map(|h| h.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("idgate/postgres")
}

/// A running embedded cluster.
#[derive(Debug)]
pub struct EmbeddedCluster {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    user: Option<ServerUser>,
    /// False when another process (a running `idgate serve`) already had it up.
    started_here: bool,
}

impl EmbeddedCluster {
    /// Brings the cluster in `data_dir` up: initialises it on first use, starts
    /// it unless it is already running. Blocking (runs `initdb` / `pg_ctl`).
    pub fn start(data_dir: &Path) -> anyhow::Result<EmbeddedCluster> {
        let data_dir = if data_dir.is_absolute() {
            data_dir.to_path_buf()
        } else {
            std::env::current_dir()?.join(data_dir)
        };
        let bin_dir = find_bin_dir()?;
        let user = server_user()?;
        let mut cluster = EmbeddedCluster {
            data_dir,
            bin_dir,
            user,
            started_here: false,
        };
        if is_running(&cluster.data_dir) {
            tracing::info!(dir = %cluster.data_dir.display(), "embedded PostgreSQL already running; connecting to it");
            return Ok(cluster);
        }
        if !is_initialised(&cluster.data_dir) {
            let empty = std::fs::read_dir(&cluster.data_dir).map_or(true, |mut d| d.next().is_none());
            if !empty {
                bail!(
                    "{} is neither empty nor a PostgreSQL data directory; move it away or set IDGATE_DATA_DIR",
                    cluster.data_dir.display()
                );
            }
            tracing::info!(dir = %cluster.data_dir.display(), bin = %cluster.bin_dir.display(), "initialising the embedded PostgreSQL cluster");
            prepare_dir(&cluster.data_dir, cluster.user.as_ref())?;
            initdb(&cluster.bin_dir, &cluster.data_dir, cluster.user.as_ref(), &[])?;
        }
        let log = cluster.data_dir.join("server.log");
        let out = server_command(&cluster.bin_dir, "pg_ctl", cluster.user.as_ref())
            .args(["start", "-w", "-t", "60", "-s", "-D"])
            .arg(&cluster.data_dir)
            .arg("-l")
            .arg(&log)
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            // Another idgate may have started it a moment ago.
            if is_running(&cluster.data_dir) {
                return Ok(cluster);
            }
            bail!(
                "starting the embedded PostgreSQL in {} failed ({}): {} {}\n(see {})",
                cluster.data_dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim(),
                log.display()
            );
        }
        cluster.started_here = true;
        tracing::info!(dir = %cluster.data_dir.display(), "embedded PostgreSQL started");
        Ok(cluster)
    }

    /// The data (and socket) directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether this process started the server (and so stops it).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Connection options for `database`.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        connect_options(&self.data_dir, database)
    }

    /// Stops the server if this process started it (`pg_ctl stop -m fast`).
    /// Blocking.
    pub fn stop(self) -> anyhow::Result<()> {
        if !self.started_here {
            return Ok(());
        }
        let out = server_command(&self.bin_dir, "pg_ctl", self.user.as_ref())
            .args(["stop", "-w", "-s", "-m", "fast", "-D"])
            .arg(&self.data_dir)
            .output()
            .context("running pg_ctl stop")?;
        if !out.status.success() {
            bail!(
                "stopping the embedded PostgreSQL in {} failed ({}): {}",
                self.data_dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        tracing::info!(dir = %self.data_dir.display(), "embedded PostgreSQL stopped");
        Ok(())
    }
}
