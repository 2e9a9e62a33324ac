//! The topology's processes and their configuration files: etcd, each
//! node's Patroni (`patroni.yml`) and the HAProxy in front of PostgreSQL
//! (`haproxy.cfg`), generated from the [`Options`](super::Options) and the
//! ports chosen at start.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::process::start_haproxy;
use super::{
    find_command, spawn_logged, BoxError, Topology, REPLICATION_PASSWORD, REWIND_PASSWORD, SCOPE, SUPERUSER_PASSWORD,
};

impl Topology {
    pub(super) fn spawn_etcd(&self, peer_port: u16) -> Result<(), BoxError> {
        let etcd = find_command("etcd").ok_or("no etcd command")?;
        let client = self.etcd_url();
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(etcd);
        cmd.arg("--name")
            .arg("etcd0")
            .arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("etcd0={peer}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(format!("{}", self.dir.display()))
            .env_remove("ETCDCTL_API");
        let child = spawn_logged(cmd, &self.dir.join("etcd.log"), None)?;
        self.state.lock().unwrap().etcd = Some(child);
        Ok(())
    }

    pub(super) fn spawn_patroni(&self, i: usize) -> Result<(), BoxError> {
        let patroni = find_command("patroni").ok_or("no patroni command")?;
        let node = &self.nodes[i];
        // As embedded::server_command does for PostgreSQL's own binaries:
        // the unprivileged user, and none of the PG* variables that would
        // redirect what Patroni runs.
        let mut cmd = Command::new(patroni);
        cmd.arg(node.dir.join("patroni.yml"))
            .current_dir(&node.dir)
            .env("HOME", &node.dir);
        for var in idgate::db::embedded::LIBPQ_ENVIRONMENT {
            cmd.env_remove(var);
        }
        if let Some(u) = &self.user {
            cmd.uid(u.uid).gid(u.gid);
        }
        let child = spawn_logged(cmd, &node.dir.join("patroni.log"), self.user.as_ref())?;
        let mut state = self.state.lock().unwrap();
        if state.patroni.len() < self.nodes.len() {
            state.patroni.resize_with(self.nodes.len(), || None);
        }
        state.patroni[i] = Some(child);
        Ok(())
    }

    pub(super) fn spawn_haproxy(&self) -> Result<(), BoxError> {
        let config = self.dir.join("haproxy.cfg");
        let child = start_haproxy(&config, &self.haproxy_config(), &self.dir.join("haproxy.log"))?;
        self.state.lock().unwrap().haproxy = Some(child);
        Ok(())
    }

    /// Node `i`'s Patroni configuration. `fsync` is off (a SIGKILL loses no
    /// page cache; nothing here survives the machine), but `full_page_writes`
    /// stays on: `pg_rewind` refuses a source without it.
    pub(super) fn patroni_config(&self, i: usize) -> String {
        let o = &self.options;
        let node = &self.nodes[i];
        let dir = node.dir.display();
        let bin_dir = self.bin_dir.display();
        format!(
            r#"scope: {SCOPE}
name: node{i}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry}
    maximum_lag_on_failover: 1048576
    synchronous_mode: {sync}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: "on"
        max_connections: 200
  initdb:
    - encoding: UTF8
    - locale: C
    - auth-local: trust
    - auth-host: scram-sha-256
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {dir}/data
  bin_dir: {bin_dir}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: {SUPERUSER_PASSWORD}
    replication:
      username: replicator
      password: {REPLICATION_PASSWORD}
    rewind:
      username: rewinder
      password: {REWIND_PASSWORD}
  parameters:
    unix_socket_directories: {dir}
    shared_buffers: 16MB
    fsync: "off"
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
"#,
            rest = node.rest_port,
            etcd = self.etcd_port,
            ttl = o.ttl,
            loop_wait = o.loop_wait,
            retry = o.retry_timeout,
            sync = o.synchronous_mode,
            pg = node.pg_port,
        )
    }

    fn haproxy_config(&self) -> String {
        let mut c = String::from(
            "global\n  maxconn 4000\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30m\n  timeout server 30m\n  timeout check 1s\n",
        );
        for (name, port, check) in [
            ("primary", self.primary_port, "/primary"),
            ("replica", self.replica_port, "/replica"),
        ] {
            // OPTIONS, not GET: Patroni then writes only the status line, and
            // logs no traceback when HAProxy closes after reading it.
            let _ = write!(
                c,
                "listen {name}\n  bind 127.0.0.1:{port}\n  balance roundrobin\n  option httpchk OPTIONS {check}\n  \
                 http-check expect status 200\n  \
                 default-server inter {inter}ms fall 2 rise 1 on-marked-down shutdown-sessions\n",
                inter = self.options.check_interval_ms
            );
            for (i, n) in self.nodes.iter().enumerate() {
                let _ = writeln!(c, "  server node{i} 127.0.0.1:{} check port {}", n.pg_port, n.rest_port);
            }
        }
        c
    }
}
