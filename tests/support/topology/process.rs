//! Process and connection plumbing shared by the topology and its HTTP
//! balancer: spawning with the parent-death signal, stopping, pids, free
//! ports, the REST APIs' HTTP/1.0 and one-off PostgreSQL connections.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use idgate::db::embedded::ServerUser;
use sqlx::{Connection, PgConnection};

use super::BoxError;

/// SIGTERM, wait up to `grace`, then SIGKILL.
pub fn stop(child: Child, grace: Duration) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_or_kill(child, grace);
}

/// Waits up to `grace` for `child` to exit, then SIGKILL.
pub(super) fn wait_or_kill(mut child: Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The postmaster's pid from `data_dir/postmaster.pid`.
pub(super) fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok().filter(|&p| p > 0)
}

pub(super) fn is_postgres(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(8).any(|w| w == b"postgres"))
}

/// Writes `text` to `config`, has HAProxy check it (`-c`), then runs HAProxy
/// on it in the foreground (`-db`), logging to `log`.
pub(super) fn start_haproxy(config: &Path, text: &str, log: &Path) -> Result<Child, BoxError> {
    let haproxy = super::find_command("haproxy").ok_or("no haproxy command")?;
    std::fs::write(config, text)?;
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(config)
        .output()?;
    if !check.status.success() {
        return Err(format!("haproxy -c: {}", String::from_utf8_lossy(&check.stderr)).into());
    }
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(config);
    spawn_logged(cmd, log, None)
}

/// `n` distinct TCP ports free on 127.0.0.1 now (bound together, then
/// released; another process could take one in between, which the
/// topology's start would then report).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Spawns `cmd` with output to `log` (owned by `user` if given) from a thread
/// that lives as long as the process, with the parent-death signal set.
pub fn spawn_logged(mut cmd: Command, log: &Path, user: Option<&ServerUser>) -> Result<Child, BoxError> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    if let Some(u) = user {
        std::os::unix::fs::chown(log, Some(u.uid), Some(u.gid))?;
    }
    cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
    // After the uid switch is configured (`pre_exec` runs after it).
    crate::child::die_with_parent(&mut cmd, libc::SIGTERM);
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("topology-spawner".into())
            .spawn(move || {
                // The parent-death signal follows the thread that forked: this
                // one, which outlives every test (it waits on the channel).
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the topology's spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner.lock().unwrap().send((cmd, tx))?;
    Ok(rx.recv()??)
}

/// One HTTP/1.0 exchange with a local REST API: (status, body).
pub(super) fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs `fut` on a runtime of its own, on a thread of its own (the caller
/// may be inside a runtime).
pub(super) fn block_on<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(fut)
    })
    .join()
    .expect("block_on thread")
}

pub(super) async fn connect(url: &str) -> Result<PgConnection, BoxError> {
    Ok(tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(url))
        .await
        .map_err(|_| "connect timed out")??)
}

/// The port of the server a new connection to `url` reaches, and whether it
/// is in recovery (a standby).
pub async fn server_port_and_recovery(url: &str) -> Result<(u16, bool), BoxError> {
    let mut c = connect(url).await?;
    let (port, recovery): (i32, bool) = sqlx::query_as("SELECT inet_server_port(), pg_is_in_recovery()")
        .fetch_one(&mut c)
        .await?;
    let _ = c.close().await;
    Ok((u16::try_from(port)?, recovery))
}
