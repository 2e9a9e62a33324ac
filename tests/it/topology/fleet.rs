//! idgate in the HA topology: its database migrated through HAProxy's
//! `primary` frontend, agents registered, two `idgate serve` replicas (the
//! real binary) behind the HTTP balancer, and authentication traffic through
//! the balancer with every answer kept, timed, for the scenarios to check and
//! measure.
//!
//! Why not `reload::Load`: it keeps only the answers that fail against a
//! fixed set of tokens. The scenarios need every answer with its time and
//! latency (gaps, p99 during an event), which token came back when (the
//! lagging standby), and how a failure looked (503 with `Retry-After` or
//! not).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idgate_tests::pg::TestDb;
use idgate_tests::topology::{Balancer, Endpoint, Topology};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::http::{idgate, register, serve_command_at, Served};
use crate::reload::{aws_body, plugin, Files, AWS_INSTANCE};

/// The agents authenticating, all on the instance of the genuine AWS
/// document (each request names its agent, as `CODER_AGENT_NAME` would).
pub(crate) const AGENTS: [&str; 4] = ["main", "dev", "ci", "build"];
/// Their workspace.
pub(crate) const WORKSPACE: &str = "topo";
/// The database idgate's schema goes in.
const DATABASE: &str = "idgate";

/// Where the replicas resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reads {
    /// `database_read_url` on HAProxy's `replica` frontend.
    Replica,
    /// No `database_read_url`: resolutions on `database_url`, the `primary`
    /// frontend.
    Primary,
}

/// The database, two replicas and the balancer in front of them.
pub(crate) struct Fleet {
    /// idgate's database through the `primary` frontend.
    pub(crate) db: TestDb,
    pub(crate) replicas: Vec<Replica>,
    pub(crate) balancer: Balancer,
    /// Each agent's token, in [`AGENTS`] order.
    pub(crate) tokens: Vec<String>,
}

impl Fleet {
    /// Creates and migrates the database through the `primary` frontend
    /// (`idgate migrate` with `database_kind = idgate`), registers
    /// [`AGENTS`], starts two replicas resolving per `reads`, and the
    /// balancer; returns once the balancer has both up. The replicas drain
    /// for [`Balancer::drain_needed`] on SIGTERM, as an operator sizes
    /// `drain_ms` for the balancer in front (the default, 10 s, suits
    /// HAProxy's default checks, slower than these).
    pub(crate) async fn start(topo: &Topology, reads: Reads) -> Fleet {
        let mut admin = PgConnection::connect(&topo.primary_url()).await.unwrap();
        sqlx::raw_sql(&format!("CREATE DATABASE {DATABASE}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        let url = topo.url(Endpoint::Primary, DATABASE);
        let db = TestDb {
            name: DATABASE.to_string(),
            pool: sqlx::PgPool::connect_lazy(&url).unwrap(),
            url,
        };
        let migrate = idgate(&db, &["--database-kind", "idgate", "migrate"]).output().unwrap();
        assert!(
            migrate.status.success(),
            "idgate migrate through HAProxy: {}",
            String::from_utf8_lossy(&migrate.stderr)
        );
        let mut tokens = Vec::new();
        for name in AGENTS {
            tokens.push(register(&db, WORKSPACE, AWS_INSTANCE, name).await);
        }

        let read_url = match reads {
            Reads::Replica => format!("database_read_url = {:?}\n", topo.url(Endpoint::Replica, DATABASE)),
            Reads::Primary => String::new(),
        };
        let config = format!(
            "database_kind = \"idgate\"\n{read_url}[limits]\ndrain_ms = {}\n",
            Balancer::drain_needed().as_millis()
        );
        let ports = idgate_tests::topology::free_ports(2).unwrap();
        let mut replicas = Vec::new();
        for port in ports.iter().copied() {
            let files = Files::new();
            files.put_plugin(&plugin("test-plugins/aws.wasm"), "aws.wasm");
            files.write_config(&config);
            let mut replica = Replica {
                port,
                files,
                database_url: db.url.clone(),
                served: None,
            };
            replica.start().await;
            replicas.push(replica);
        }
        let balancer = topo.balance_http(&ports);
        for i in 0..replicas.len() {
            balancer.wait_until(i, true, Duration::from_secs(30)).await;
        }
        Fleet {
            db,
            replicas,
            balancer,
            tokens,
        }
    }

    /// Every agent's token now, through the `primary` frontend.
    pub(crate) async fn current_tokens(&self) -> Vec<String> {
        let out = idgate(&self.db, &["agents", "list", "--show-tokens", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        AGENTS
            .iter()
            .map(|name| {
                list.iter()
                    .find(|a| a["workspace"] == WORKSPACE && a["name"] == *name)
                    .and_then(|a| a["auth_token"].as_str())
                    .unwrap_or_else(|| panic!("agent {name} not listed: {list:?}"))
                    .to_string()
            })
            .collect()
    }

    /// Stops the replicas (their logs are dropped) before the topology goes.
    pub(crate) async fn stop(self) {
        for mut r in self.replicas {
            if r.served.is_some() {
                r.stop().await;
            }
        }
    }
}

/// One `idgate serve` on a port of its own, kept across restarts.
pub(crate) struct Replica {
    pub(crate) port: u16,
    files: Files,
    database_url: String,
    served: Option<Served>,
}

impl Replica {
    /// Starts `serve` on the replica's port; returns once it listens.
    pub(crate) async fn start(&mut self) {
        assert!(self.served.is_none(), "replica on {} is running", self.port);
        let cmd = self.files.idgate(&self.database_url);
        let listen = format!("127.0.0.1:{}", self.port);
        let served = tokio::task::spawn_blocking(move || serve_command_at(cmd, &listen, "json"))
            .await
            .unwrap();
        self.served = Some(served);
    }

    /// SIGTERM, then waits for the exit (which must be clean); the logs.
    pub(crate) async fn stop(&mut self) -> String {
        let Served { mut child, stderr, .. } = self.served.take().expect("replica running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let (status, logs) = tokio::task::spawn_blocking(move || (child.wait().unwrap(), stderr.join().unwrap()))
            .await
            .unwrap();
        assert!(status.success(), "idgate on {} exited with {status}\n{logs}", self.port);
        logs
    }
}

/// How one request ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// 200 with this session token.
    Token(String),
    /// Any other status: whether it said `Retry-After`, and the body.
    Refused {
        status: u16,
        retry_after: bool,
        body: String,
    },
    /// No HTTP answer at all.
    Transport(String),
}

/// One request of the traffic.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// Index into [`AGENTS`].
    pub(crate) agent: usize,
    pub(crate) sent: Instant,
    pub(crate) done: Instant,
    pub(crate) outcome: Outcome,
}

impl Answer {
    pub(crate) fn latency(&self) -> Duration {
        self.done - self.sent
    }

    /// The token, if the answer was a 200.
    pub(crate) fn token(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Token(t) => Some(t),
            _ => None,
        }
    }
}

/// Clients authenticating through the balancer until stopped, each as one
/// agent, pausing between requests (a steady load that leaves the two cores
/// to the servers and the failover).
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    answers: Arc<Mutex<Vec<Answer>>>,
}

impl Traffic {
    pub(crate) fn start(base: &str, clients: usize, pause: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let url = format!("{base}/api/v2/workspaceagents/aws-instance-identity");
        let tasks = (0..clients)
            .map(|c| {
                let (stop, answers, url) = (stop.clone(), answers.clone(), url.clone());
                let agent = c % AGENTS.len();
                let mut body = aws_body();
                body["agent_name"] = json!(AGENTS[agent]);
                let body = body.to_string();
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(15))
                        .build()
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let outcome = ask(&client, &url, body.clone()).await;
                        let answer = Answer {
                            agent,
                            sent,
                            done: Instant::now(),
                            outcome,
                        };
                        answers.lock().unwrap().push(answer);
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Traffic { stop, tasks, answers }
    }

    /// The answers so far.
    pub(crate) fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    /// Stops the clients (each finishes its request): every answer, in the
    /// order they came.
    pub(crate) async fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let mut answers = self.answers.lock().unwrap().clone();
        answers.sort_by_key(|a| a.done);
        answers
    }
}

async fn ask(client: &reqwest::Client, url: &str, body: String) -> Outcome {
    let response = match client.post(url).body(body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Transport(format!("{e:?}")),
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key(reqwest::header::RETRY_AFTER);
    let text = match response.text().await {
        Ok(t) => t,
        Err(e) => return Outcome::Transport(format!("reading the body of a {status}: {e:?}")),
    };
    if status == 200 {
        if let Some(token) = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["session_token"].as_str().map(str::to_string))
        {
            return Outcome::Token(token);
        }
    }
    Outcome::Refused {
        status,
        retry_after,
        body: text,
    }
}

/// The `q` quantile of the latencies of `answers` (0 if none), ms.
pub(crate) fn quantile_ms(answers: &[&Answer], q: f64) -> f64 {
    let mut l: Vec<Duration> = answers.iter().map(|a| a.latency()).collect();
    if l.is_empty() {
        return 0.0;
    }
    l.sort();
    let i = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
    ms(l[i])
}

/// The longest time between two consecutive successful answers (`ok`) in
/// `answers` (sorted by completion), and when it began.
pub(crate) fn longest_gap(answers: &[Answer], ok: impl Fn(&Answer) -> bool) -> (Duration, Option<Instant>) {
    let done: Vec<Instant> = answers.iter().filter(|a| ok(a)).map(|a| a.done).collect();
    done.windows(2)
        .map(|w| (w[1] - w[0], Some(w[0])))
        .max_by_key(|(gap, _)| *gap)
        .unwrap_or((Duration::ZERO, None))
}

/// Failures by kind, for the figures: `"503 retry-after"`, `"503"`, `"500"`,
/// `"transport"`, `"wrong token"`... with their counts, and up to 5 examples.
pub(crate) fn failure_summary(failed: &[&Answer]) -> Value {
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    for a in failed {
        let kind = match &a.outcome {
            Outcome::Token(_) => "wrong token".to_string(),
            Outcome::Refused {
                status, retry_after, ..
            } => format!("{status}{}", if *retry_after { " retry-after" } else { "" }),
            Outcome::Transport(_) => "transport".to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    let examples: Vec<String> = failed
        .iter()
        .take(5)
        .map(|a| match &a.outcome {
            Outcome::Token(t) => format!("{}: token {t}", AGENTS[a.agent]),
            Outcome::Refused { status, body, .. } => format!("{}: {status} {body}", AGENTS[a.agent]),
            Outcome::Transport(e) => format!("{}: {e}", AGENTS[a.agent]),
        })
        .collect();
    json!({ "kinds": kinds, "examples": examples })
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Milliseconds from `from` to `to`, negative when `to` came first.
pub(crate) fn ms_between(from: Instant, to: Instant) -> f64 {
    if to >= from {
        ms(to - from)
    } else {
        -ms(from - to)
    }
}

/// Prints a scenario's figures and appends them, as one JSON line with the
/// scenario's name and the time, to `target/topology/figures.jsonl` (what
/// the benchmark report reads).
pub(crate) fn record(scenario: &str, mut figures: Value) {
    figures["scenario"] = json!(scenario);
    figures["unix_time"] = json!(idgate::clock::unix_now());
    println!(
        "topology {scenario}: {}",
        serde_json::to_string_pretty(&figures).unwrap()
    );
    let dir = figures_dir();
    std::fs::create_dir_all(&dir).unwrap();
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("figures.jsonl"))
        .unwrap();
    writeln!(file, "{figures}").unwrap();
}

fn figures_dir() -> PathBuf {
    idgate_tests::test_plugin_dir()
        .parent()
        .expect("test-plugins is in the target directory")
        .join("topology")
}
