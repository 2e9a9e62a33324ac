//! Section: how far idgate is from the limit of the machine, and where one
//! authentication's server CPU goes.
//!
//! The server runs in a child process (this benchmark re-executed as
//! `serve-child`), with `idgate::api::router` and the logging `idgate serve`
//! installs, so its CPU time can be read from `/proc` apart from the load
//! client's. PostgreSQL's CPU is read from the postmaster and its backends.
//! The same router runs in five modes, each in the same run:
//! - *real*: plugins in the sandbox, resolution in PostgreSQL;
//! - *native verification*: the plugin crates compiled for the host (same
//!   code, the host's native crypto) in place of the sandbox;
//! - *no-op verification*: a stub that accepts every credential as one
//!   registered instance; resolution in PostgreSQL;
//! - *no-op resolution*: real verification, a stub that answers one token;
//! - *HTTP floor*: both stubs (body read and parsed, audit line, metrics,
//!   JSON answer: what is left of the router).
//!
//! The stubs go in through `idgate::authenticate::Verifier` and
//! `idgate::db::resolve::Resolver`, which production leaves unset.

use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use idgate::api::{router, ApiLimits, AppState};
use idgate::authenticate::{Authenticator, Verifier};
use idgate::config::{FileConfig, HostConfig};
use idgate::crypto::NativeCrypto;
use idgate::db::resolve::{Resolution, ResolveFuture, Resolver};
use idgate::db::PoolSettings;
use idgate::metrics::Metrics;
use idgate::providers::Providers;
use idgate::sandbox::{CallError, Limits, Sandbox};
use idgate_plugin_kit::{Identity, Provider};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cluster::BenchCluster;
use crate::fixtures::{register, Group};
use crate::http_load::{drive, Limit, Outcome, Request};
use crate::stats::fmt;
use crate::Http;

/// Concurrent clients of the ceiling rows (the throughput target's).
pub const CLIENTS: usize = 256;
/// Concurrent clients of the CPU budget (as the earlier profile measured it).
pub const BUDGET_CLIENTS: usize = 32;
/// How long each cell runs after its warm-up.
const CELL: Duration = Duration::from_millis(2500);
/// Instances registered per provider.
const INSTANCES: usize = 500;
/// The instance the no-op verifier vouches for.
const STUB_INSTANCE: &str = "i-ceiling-00000";

/// One way of running the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sandbox and PostgreSQL.
    Real,
    /// Native verification, PostgreSQL.
    Native,
    /// Stub verification, PostgreSQL.
    NoVerify,
    /// Sandbox, stub resolution.
    NoResolve,
    /// Both stubs.
    Floor,
}

impl Mode {
    const ALL: [Mode; 5] = [Mode::Real, Mode::Native, Mode::NoVerify, Mode::NoResolve, Mode::Floor];

    fn name(self) -> &'static str {
        match self {
            Mode::Real => "real",
            Mode::Native => "native",
            Mode::NoVerify => "no-verify",
            Mode::NoResolve => "no-resolve",
            Mode::Floor => "floor",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Real => "idgate (sandbox + PostgreSQL)",
            Mode::Native => "native verification + PostgreSQL",
            Mode::NoVerify => "no-op verification + PostgreSQL",
            Mode::NoResolve => "sandbox + no-op resolution",
            Mode::Floor => "HTTP floor (no-op verification and resolution)",
        }
    }

    fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }
}

// ---------------------------------------------------------------------------
// The child process: serves the router in one mode until its stdin closes.

/// The plugin crates compiled for the host, called in place of the sandbox,
/// configured once from the same provider blocks (as the sandbox's snapshots are).
struct NativeVerifier {
    aws: <idgate_plugin_aws::Aws as Provider>::Config,
    azure: <idgate_plugin_azure::Azure as Provider>::Config,
    gcp: <idgate_plugin_gcp::Gcp as Provider>::Config,
}

impl NativeVerifier {
    fn configure(file: &FileConfig) -> anyhow::Result<NativeVerifier> {
        let block = |p: &str| idgate::authenticate::plugin_block(p, file.provider(p)).to_string();
        let bad =
            |p: &'static str| move |e: idgate_plugin_kit::VerifyError| anyhow::anyhow!("configuring {p} natively: {e}");
        Ok(NativeVerifier {
            aws: idgate_plugin_aws::Aws::configure(&block("aws")).map_err(bad("aws"))?,
            azure: idgate_plugin_azure::Azure::configure(&block("azure")).map_err(bad("azure"))?,
            gcp: idgate_plugin_gcp::Gcp::configure(&block("gcp")).map_err(bad("gcp"))?,
        })
    }
}

impl Verifier for NativeVerifier {
    fn verify<'a>(
        &'a self,
        provider: &'a str,
        credential: String,
        key_set: Option<Arc<str>>,
        now: i64,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, CallError>> + Send + 'a>> {
        Box::pin(async move {
            let verified = match provider {
                "aws" => idgate_plugin_aws::Aws::verify(&NativeCrypto, &self.aws, &credential, now),
                "azure" => idgate_plugin_azure::Azure::verify(&NativeCrypto, &self.azure, &credential, now),
                "gcp" => idgate_plugin_kit::host_keys::with_key_set(key_set.as_deref(), || {
                    idgate_plugin_gcp::Gcp::verify(&NativeCrypto, &self.gcp, &credential, now)
                }),
                other => return Err(CallError::NotLoaded(other.to_string())),
            };
            verified.map_err(CallError::Rejected)
        })
    }
}

/// Accepts every credential as [`STUB_INSTANCE`].
struct StubVerifier;

impl Verifier for StubVerifier {
    fn verify<'a>(
        &'a self,
        _provider: &'a str,
        _credential: String,
        _key_set: Option<Arc<str>>,
        _now: i64,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, CallError>> + Send + 'a>> {
        Box::pin(async { Ok(Identity::new(STUB_INSTANCE)) })
    }
}

/// Answers every resolution with one token.
struct StubResolver(Uuid);

impl Resolver for StubResolver {
    fn resolve<'a>(&'a self, _instance_id: &'a str, _agent_name: Option<&'a str>) -> ResolveFuture<'a> {
        Box::pin(async move { Ok((Resolution::Token(self.0, "main".into()), Duration::ZERO)) })
    }
}

/// `idgate-bench serve-child SPEC.json`: serves the router as the spec says,
/// prints `listening http://ADDR`, and exits when its standard input closes.
pub fn child(spec: &Path) -> anyhow::Result<()> {
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(spec)?)?;
    let text = |k: &str| {
        spec[k]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("spec field {k}"))
    };
    let mode = Mode::parse(&text("mode")?).context("unknown mode")?;
    let providers = spec["providers"]
        .as_object()
        .context("spec field providers")?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let file = FileConfig {
        host: HostConfig::default(),
        providers,
    };
    // What `idgate serve` logs: one audit line per attempt (stderr is /dev/null).
    idgate::logging::init(Some("json"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let sandbox = Arc::new(Sandbox::load(
            Path::new(&text("plugins")?),
            Some(Path::new(&text("cache")?)),
            Limits::default(),
        )?);
        let mut auth = Authenticator::new(sandbox, &file)?;
        match mode {
            Mode::Native => auth = auth.with_verifier(Arc::new(NativeVerifier::configure(&file)?)),
            Mode::NoVerify | Mode::Floor => auth = auth.with_verifier(Arc::new(StubVerifier)),
            Mode::Real | Mode::NoResolve => {}
        }
        let resolver: Option<Arc<dyn Resolver>> = match mode {
            Mode::NoResolve | Mode::Floor => Some(Arc::new(StubResolver(Uuid::new_v4()))),
            _ => None,
        };
        let pool_size = spec["pool"].as_u64().unwrap_or(10) as u32;
        let settings = PoolSettings {
            max_connections: pool_size,
            keep_warm: true,
            ..PoolSettings::default()
        };
        let pool = idgate::db::pool::connect(text("database")?.parse()?, settings).await?;
        let state = Arc::new(AppState {
            providers: Providers::new(auth),
            pool,
            resolver,
            metrics: Metrics::default(),
            limits: ApiLimits::default(),
        });
        let listener = idgate::serve::bind("127.0.0.1:0").await?;
        println!("listening http://{}", listener.local_addr()?);
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
        axum::serve(listener, router(state)).await?;
        anyhow::Ok(())
    })
}

/// A running child server.
struct Served {
    process: std::process::Child,
    base: String,
}

impl Served {
    fn start(spec: &Path) -> anyhow::Result<Served> {
        let mut process = Command::new(std::env::current_exe()?)
            .arg("serve-child")
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(process.stdout.take().context("child stdout")?).read_line(&mut line)?;
        let base = line
            .trim()
            .strip_prefix("listening ")
            .with_context(|| format!("the server child said {line:?}"))?
            .to_string();
        Ok(Served { process, base })
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.process.stdin.take());
        let _ = self.process.wait();
    }
}

// ---------------------------------------------------------------------------
// CPU time from /proc.

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The numeric fields of a `/proc/<pid>/stat` text after the command name
/// (index 0 is the state), as far as they parse.
fn stat_fields(stat: &str) -> Option<Vec<Option<u64>>> {
    // The command name may hold spaces; the fields after it do not.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(|f| f.parse().ok()).collect())
}

/// (ppid, utime + stime, cutime + cstime) of `pid`, in clock ticks.
fn proc_stat(pid: u32) -> Option<(u32, u64, u64)> {
    let fields = stat_fields(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let n = |i: usize| *fields.get(i)?;
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// This process's minor page faults and CPU time (utime + stime) so far.
pub fn own_usage() -> Option<(u64, Duration)> {
    let fields = stat_fields(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let n = |i: usize| *fields.get(i)?;
    let ticks = n(11)? + n(12)?;
    Some((n(7)?, Duration::from_secs_f64(ticks as f64 / ticks_per_second())))
}

/// CPU ticks of the PostgreSQL cluster: the postmaster (with its reaped
/// children) and every live backend or helper it started.
fn cluster_ticks(postmaster: u32) -> u64 {
    let own = proc_stat(postmaster).map_or(0, |(_, t, c)| t + c);
    let children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_stat)
        .filter(|(ppid, _, _)| *ppid == postmaster)
        .map(|(_, t, _)| t)
        .sum();
    own + children
}

/// Server CPU of one run, per answered request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// The idgate process.
    pub idgate: Duration,
    /// The PostgreSQL cluster.
    pub postgres: Duration,
    /// The load client (this process), for scale.
    pub client: Duration,
}

/// One measured cell.
pub struct Row {
    /// Mode.
    pub mode: Mode,
    /// Provider.
    pub provider: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// What the run saw.
    pub outcome: Outcome,
    /// CPU per answered request.
    pub cpu: Cpu,
}

async fn measure(
    served: &Served,
    postmaster: Option<u32>,
    requests: Arc<Vec<Request>>,
    clients: usize,
) -> (Outcome, Cpu) {
    // Warm-up: connections, the pool, plan caches, the key cache.
    drive(
        &served.base,
        requests.clone(),
        clients,
        Limit::For(Duration::from_millis(400)),
    )
    .await;
    let me = std::process::id();
    let snap = || {
        (
            proc_stat(served.pid()).map_or(0, |(_, t, _)| t),
            postmaster.map_or(0, cluster_ticks),
            proc_stat(me).map_or(0, |(_, t, _)| t),
        )
    };
    let before = snap();
    let outcome = drive(&served.base, requests, clients, Limit::For(CELL)).await;
    let after = snap();
    let n = outcome.latencies.len().max(1) as f64;
    let per = |a: u64, b: u64| Duration::from_secs_f64(a.saturating_sub(b) as f64 / ticks_per_second() / n);
    let cpu = Cpu {
        idgate: per(after.0, before.0),
        postgres: per(after.1, before.1),
        client: per(after.2, before.2),
    };
    (outcome, cpu)
}

// ---------------------------------------------------------------------------
// The section.

/// Registers the instances, runs every mode and the CPU budget; returns the
/// section's Markdown and the rows.
pub fn run(
    rt: &tokio::runtime::Runtime,
    pg: &BenchCluster,
    http: &Http,
    scratch: &Path,
) -> anyhow::Result<(String, Vec<Row>)> {
    let now = idgate::clock::unix_now();
    let aws_ids: Vec<String> = (0..INSTANCES).map(|i| format!("i-ceiling-{i:05}")).collect();
    let azure_ids: Vec<String> = (0..INSTANCES)
        .map(|i| format!("00000000-0000-4000-9000-{i:012}"))
        .collect();
    let gcp_ids: Vec<String> = (0..INSTANCES)
        .map(|i| format!("{}", 8_000_000_000_000u64 + i as u64))
        .collect();
    anyhow::ensure!(aws_ids[0] == STUB_INSTANCE);
    rt.block_on(async {
        let pool = pg.open(2).await?;
        register(&pool, &Group::new("ceiling-aws", aws_ids.clone(), 1, 0)).await?;
        register(&pool, &Group::new("ceiling-azure", azure_ids.clone(), 1, 0)).await?;
        register(&pool, &Group::new("ceiling-gcp", gcp_ids.clone(), 1, 0)).await?;
        crate::fixtures::analyze(&pool).await?;
        pool.close().await;
        anyhow::Ok(())
    })?;
    let make = |path: &'static str, bodies: Vec<String>| -> Arc<Vec<Request>> {
        Arc::new(bodies.into_iter().map(|body| Request { path, body }).collect())
    };
    let sets: [(&'static str, Arc<Vec<Request>>); 3] = [
        (
            "aws",
            make(
                "aws-instance-identity",
                crate::credentials::mint(INSTANCES, |i| http.aws.body(&aws_ids[i], None, now)),
            ),
        ),
        (
            "azure",
            make(
                "azure-instance-identity",
                crate::credentials::mint(INSTANCES, |i| http.azure.body(&azure_ids[i], None, now)),
            ),
        ),
        (
            "gcp",
            make(
                "google-instance-identity",
                crate::credentials::mint(INSTANCES, |i| http.gcp.body(&gcp_ids[i], None, now)),
            ),
        ),
    ];

    let postmaster = pg.postmaster_pid();
    let mut rows = Vec::new();
    for mode in Mode::ALL {
        let spec_path = scratch.join(format!("serve-{}.json", mode.name()));
        let spec = json!({
            "mode": mode.name(),
            "providers": http.file.providers,
            "plugins": http.plugin_dir,
            "cache": scratch.join("cache"),
            "database": pg.url(),
            "pool": crate::storm::POOL,
        });
        std::fs::write(&spec_path, spec.to_string())?;
        let served = Served::start(&spec_path)?;
        // Stubbed verification sees one instance whatever the provider: AWS only.
        let providers: &[&str] = match mode {
            Mode::Real | Mode::Native | Mode::NoResolve => &["aws", "azure", "gcp"],
            Mode::NoVerify | Mode::Floor => &["aws"],
        };
        for (provider, requests) in &sets {
            if !providers.contains(provider) {
                continue;
            }
            let mut counts = vec![CLIENTS];
            if mode == Mode::Real {
                counts.push(BUDGET_CLIENTS);
            }
            for clients in counts {
                let (outcome, cpu) = rt.block_on(measure(&served, postmaster, requests.clone(), clients));
                eprintln!(
                    "ceiling: {} {provider} × {clients}: {:.0}/s, p99 {}, CPU per auth idgate {} + PostgreSQL {} \
                     (client {}) ({})",
                    mode.name(),
                    outcome.rate(),
                    fmt(outcome.quantile(0.99)),
                    fmt(cpu.idgate),
                    fmt(cpu.postgres),
                    fmt(cpu.client),
                    outcome.status_list()
                );
                rows.push(Row {
                    mode,
                    provider,
                    clients,
                    outcome,
                    cpu,
                });
            }
        }
        drop(served);
    }
    Ok((report(&rows), rows))
}

fn report(rows: &[Row]) -> String {
    let mut md = String::from("## Ceiling and CPU budget\n\n");
    let _ = write!(
        md,
        "The server runs in its own process (`idgate::api::router`, `idgate serve`'s JSON audit logging to \
         /dev/null, pool of {} connections of which resolutions use at most {} at once, default sandbox limits), so its CPU time is read from \
         `/proc/<pid>/stat` (utime + stime) apart from the load client's; PostgreSQL's is the postmaster's \
         and its backends'. Each cell: {:.1} s after a 0.4 s warm-up, {INSTANCES} registered single-agent \
         instances per provider, genuinely signed test credentials. CPU figures are per answered request. The \
         load client shares the two cores, so rates are a floor of what the server alone would do.\n\n",
        crate::storm::POOL,
        idgate::db::batch::MAX_STATEMENTS_IN_FLIGHT,
        CELL.as_secs_f64()
    );
    md.push_str(
        "Modes, all the same router in the same run: *idgate* (plugins in the sandbox, one statement in \
         PostgreSQL); *native verification* (the plugin crates compiled for the host in place of the sandbox: \
         the sandbox's cost); *no-op verification* (a stub accepts every credential as one registered \
         instance; the real resolution); *no-op resolution* (real verification; a stub answers one token); \
         *HTTP floor* (both stubs: body read and parsed, audit line, metrics, JSON answer).\n\n",
    );
    let _ = writeln!(
        md,
        "### Ceiling rows ({CLIENTS} concurrent clients)\n\n\
         | mode | provider | auth/s | p50 | p99 | non-200 | CPU/auth idgate | CPU/auth PostgreSQL | server CPU/auth | \
         client CPU/request |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows.iter().filter(|r| r.clients == CLIENTS) {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode.describe(),
            r.provider,
            r.outcome.rate(),
            fmt(r.outcome.quantile(0.5)),
            fmt(r.outcome.quantile(0.99)),
            r.outcome.failures(),
            fmt(r.cpu.idgate),
            fmt(r.cpu.postgres),
            fmt(r.cpu.idgate + r.cpu.postgres),
            fmt(r.cpu.client),
        );
    }
    let _ = writeln!(
        md,
        "\n### CPU budget per authentication ({BUDGET_CLIENTS} keep-alive clients, idgate as served)\n\n\
         | provider | auth/s | idgate process | PostgreSQL | server total |\n|---|---|---|---|---|"
    );
    for r in rows.iter().filter(|r| r.clients == BUDGET_CLIENTS) {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} |",
            r.provider,
            r.outcome.rate(),
            fmt(r.cpu.idgate),
            fmt(r.cpu.postgres),
            fmt(r.cpu.idgate + r.cpu.postgres)
        );
    }
    // Where each provider's authentication spends idgate's CPU, by difference
    // between the modes (256 clients). The resolution and the HTTP floor do not
    // depend on the provider, so AWS's no-op-verification row serves all three.
    let at = |mode: Mode, provider: &str| {
        rows.iter()
            .find(|r| r.mode == mode && r.provider == provider && r.clients == CLIENTS)
            .map(|r| r.cpu)
    };
    if let (Some(no_verify), Some(floor)) = (at(Mode::NoVerify, "aws"), at(Mode::Floor, "aws")) {
        let minus = |a: Duration, b: Duration| fmt(a.saturating_sub(b));
        let _ = writeln!(
            md,
            "\n### Where one authentication's CPU goes ({CLIENTS} clients)\n\n\
             By difference between the modes above, so each cell is a difference of two noisy measurements. \
             *HTTP* is the floor (body, JSON, audit line, metrics); *resolution* is no-op verification − floor \
             (AWS's row: it does not depend on the provider); *verification* is no-op resolution − floor; \
             *the sandbox's share* is idgate − native verification.\n\n\
             | provider | HTTP (idgate) | resolution (idgate) | resolution (PostgreSQL) | verification (idgate) | \
             of which the sandbox | idgate total |\n|---|---|---|---|---|---|---|"
        );
        for provider in ["aws", "azure", "gcp"] {
            let (Some(real), Some(native), Some(no_resolve)) = (
                at(Mode::Real, provider),
                at(Mode::Native, provider),
                at(Mode::NoResolve, provider),
            ) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {provider} | {} | {} | {} | {} | {} | {} |",
                fmt(floor.idgate),
                minus(no_verify.idgate, floor.idgate),
                fmt(no_verify.postgres),
                minus(no_resolve.idgate, floor.idgate),
                minus(real.idgate, native.idgate),
                fmt(real.idgate),
            );
        }
    }
    md.push_str(
        "\nA CPU profile of the real mode under this load, AWS: `bench/charts/profile-aws.svg` (made by hand, \
         not by this run, on 2026-11-29 after configured snapshots, inline calls, the profile-led cuts in the \
         Azure verifier and the providers' local WASI traps: `IDGATE_WASM_PERFMAP=1 cargo run --release -p idgate-bench -- ceiling` while \
         `perf record -F 499 --call-graph dwarf,16384 -p <serve-child pid> -- sleep 4` ran on the first server \
         child once it served, then `perf script --no-inline | inferno-collapse-perf | inferno-flamegraph`). \
         The perf map names the plugins' compiled functions; the unwinder cannot walk through them, so stacks \
         that enter the plugin start there. For where a sandboxed call's own time goes, profile it alone: \
         `IDGATE_WASM_PERFMAP=1 perf record -F 4999 target/release/idgate-bench profile-sandbox aws 8` \
         (`aws`, `azure`, `gcp`, or `echo` for the trivial call).\n\n",
    );
    md
}
