//! The PostgreSQL cluster the run test gives the container.

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, output, run_status};
use crate::Result;

/// A throwaway PostgreSQL cluster on loopback TCP for the container (host networking), from
/// the server binaries the tests use; run as the `postgres` user when we are root, since
/// PostgreSQL refuses to run as root.
pub(super) fn start_postgres(work: &Path) -> Result<(std::process::Child, String)> {
    let bin = crate::packaged_postgres_bin()
        .ok_or("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")?;
    let data = work.join("pg");
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let as_root = output(Command::new("id").arg("-u"))?.trim() == "0";
    // setpriv execs the server in its own place (runuser would stay as its parent and not
    // pass on the signal that stops it), so the child we hold is the postmaster itself.
    let as_user = |program: PathBuf| {
        if as_root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
                .arg(program);
            c
        } else {
            Command::new(program)
        }
    };
    if as_root {
        // The work directory sits under target/, root's: the server's user needs to reach it.
        let pg_uid = output(Command::new("id").args(["-u", "postgres"]))?;
        let pg_uid: u32 = pg_uid.trim().parse().map_err(|_| "no postgres user")?;
        chown(&data, Some(pg_uid), None).map_err(|e| e.to_string())?;
        for dir in data.ancestors().skip(1) {
            let mode = std::fs::metadata(dir).map_err(|e| e.to_string())?.mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode & 0o7777) | 0o011))
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
        }
    }
    run_status(
        as_user(bin.join("initdb"))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null()),
    )?;
    let port = free_port()?;
    let server = as_user(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ])
        .arg("-k")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("the test's PostgreSQL did not listen within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("PostgreSQL for the image test on 127.0.0.1:{port}");
    Ok((server, format!("postgres://postgres@127.0.0.1:{port}/postgres")))
}

/// SIGINT is PostgreSQL's fast shutdown.
pub(super) fn stop_postgres(server: &mut std::process::Child) {
    let _ = Command::new("kill").args(["-INT", &server.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
}
