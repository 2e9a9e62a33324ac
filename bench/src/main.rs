//! idgate's benchmarks. Every comparison is measured side by side in one run
//! (rounds alternate between the two sides), reported as medians with their
//! spread, and as a ratio: this machine is noisy and absolute times drift.
//!
//! Run with `cargo xtask bench` (release build, plugins built first); it writes
//! `BENCHMARKS.md` and its charts (`bench/charts/*.svg`) at the workspace root.
//! It starts its own PostgreSQL in a temporary directory.
//!
//! `cargo xtask bench SECTION...` runs only the named
//! sections (`statements`, `storm`, `throughput` — after a storm of its own —,
//! `ceiling`, `reload`, `agent`) and prints their Markdown instead of
//! writing `BENCHMARKS.md` (plugins must have been built). `sandbox` and
//! `azure` (Azure's budget alone) need no PostgreSQL. `topology-report FILE`
//! writes only BENCHMARKS.md's *Topology* section from the HA scenarios'
//! figures (`cargo xtask bench --topology`).

mod agent;
mod azure_budget;
mod baseline;
mod ceiling;
mod charts;
mod cluster;
mod credentials;
mod fixtures;
mod heavy_body;
mod http_load;
mod reload;
mod sandbox_costs;
mod statements;
mod stats;
mod storm;
mod throughput;
mod topology_report;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use idgate::config::{FileConfig, HostConfig};
use idgate::sandbox::{Limits, Sandbox};

/// Paths the benchmarks need.
pub struct Env {
    /// Workspace root.
    pub root: PathBuf,
    /// Plugins and fixtures built by `cargo xtask plugins`.
    pub plugin_dir: PathBuf,
}

/// What the HTTP sections serve with: the plugins, and a configuration that
/// trusts the benchmark's test-made keys.
pub struct Http {
    /// Loaded plugins.
    pub sandbox: Arc<Sandbox>,
    /// Where they were loaded from.
    pub plugin_dir: PathBuf,
    /// `[aws]`, `[azure]`, `[gcp]` blocks.
    pub file: FileConfig,
    /// AWS signer.
    pub aws: credentials::Aws,
    /// Azure signer.
    pub azure: credentials::Azure,
    /// GCP signer.
    pub gcp: credentials::Gcp,
}

fn machine(pg_version: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{cpu}, {} cores available, Linux {}; {rustc}; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
        pg_version.split(" on ").next().unwrap_or(pg_version)
    )
}

fn make_http(env: &Env, scratch: &std::path::Path) -> anyhow::Result<Http> {
    let aws = credentials::Aws::new();
    let azure = credentials::Azure::new();
    let gcp = credentials::Gcp::new();
    let providers = BTreeMap::from([
        ("aws".to_string(), aws.config()),
        ("azure".to_string(), azure.config()),
        ("gcp".to_string(), gcp.config(&scratch.join("jwks.json"))),
    ]);
    Ok(Http {
        sandbox: Arc::new(Sandbox::load(
            &env.plugin_dir,
            Some(&scratch.join("cache")),
            Limits::default(),
        )?),
        plugin_dir: env.plugin_dir.clone(),
        file: FileConfig {
            host: HostConfig::default(),
            providers,
        },
        aws,
        azure,
        gcp,
    })
}

fn main() -> anyhow::Result<()> {
    // As `idgate serve` does, before any thread exists: the storm's thousand
    // connections (both ends, in this process) must not grow the descriptor
    // table while the clock runs.
    idgate::descriptors::prepare(idgate::descriptors::SERVE_TABLE)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve-child") {
        let spec = args.get(1).ok_or_else(|| anyhow::anyhow!("serve-child SPEC.json"))?;
        return ceiling::child(std::path::Path::new(spec));
    }
    let started = Instant::now();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let env = Env {
        plugin_dir: target.join("test-plugins"),
        root,
    };
    // `-- topology-report FILE`: the Topology section from the HA scenarios'
    // figures, spliced into BENCHMARKS.md (nothing else is measured).
    if args.first().map(String::as_str) == Some("topology-report") {
        let file = args.get(1).ok_or_else(|| anyhow::anyhow!("topology-report FILE"))?;
        return topology_report::run(&env.root, std::path::Path::new(file));
    }
    // `-- sandbox`: only the sandbox-costs section, printed (BENCHMARKS.md is left alone);
    // it needs no PostgreSQL.
    if args.first().map(String::as_str) == Some("sandbox") {
        print!(
            "{}{}{}",
            sandbox_costs::run(&env),
            azure_budget::run(&env),
            heavy_body::run(&env)
        );
        return Ok(());
    }
    // `-- azure`: only Azure's budget (Azure's verification against AWS's), printed.
    if args.first().map(String::as_str) == Some("azure") {
        print!("{}", azure_budget::run(&env));
        return Ok(());
    }
    // `-- heavy`: only the cost-caps row (the review's heavy Azure body), printed.
    if args.first().map(String::as_str) == Some("heavy") {
        print!("{}", heavy_body::run(&env));
        return Ok(());
    }
    // `-- profile-sandbox PROVIDER SECONDS`: verify that provider's genuine (or, as
    // `aws-http` / `azure-http`, the HTTP rows' test-made)
    // credential in a loop, for `perf record` (with IDGATE_WASM_PERFMAP=1).
    if args.first().map(String::as_str) == Some("profile-sandbox") {
        let provider = args.get(1).map_or("aws", String::as_str);
        let secs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5.0);
        return sandbox_costs::profile(&env, provider, secs);
    }
    const SECTIONS: [&str; 6] = ["statements", "storm", "throughput", "ceiling", "reload", "agent"];
    if let Some(unknown) = args.iter().find(|a| !SECTIONS.contains(&a.as_str())) {
        anyhow::bail!(
            "unknown section {unknown:?}: run all of them with no argument, or name `sandbox`, `azure` or some of {SECTIONS:?}"
        );
    }
    let scratch = std::env::temp_dir().join(format!("idgate-bench-files-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    if !args.is_empty() {
        let result = only(&env, &scratch, &args);
        let _ = std::fs::remove_dir_all(&scratch);
        return result;
    }
    let charts_dir = env.root.join("bench/charts");
    std::fs::create_dir_all(&charts_dir)?;

    let mut sections = vec![sandbox_costs::run(&env) + &azure_budget::run(&env) + &heavy_body::run(&env)];

    eprintln!("starting PostgreSQL and making test keys");
    let pg = cluster::BenchCluster::start()?;
    let http = make_http(&env, &scratch)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    let (md, cells) = statements::run(&rt, &pg)?;
    sections.push(md);
    let (md, leftover) = storm::run(&rt, &pg, &http)?;
    sections.push(md);
    let storm_headline = leftover.headline.clone();
    let (md, points) = throughput::run(&rt, &pg, &http, leftover.aws_plain)?;
    sections.push(md);
    let (md, rows) = ceiling::run(&rt, &pg, &http, &scratch)?;
    sections.push(md);
    sections.push(reload::run(&rt, &pg, &http, &env, &scratch)?);
    sections.push(agent::run(&rt, &pg, &http, &env)?);
    let charts = charts::draw(&charts_dir, &cells, &points);
    drop(rt);
    let version = pg.version.clone();
    drop(pg);
    let _ = std::fs::remove_dir_all(&scratch);

    let mut report = String::new();
    let _ = writeln!(report, "# idgate benchmarks\n");
    let _ = writeln!(
        report,
        "Written by `cargo xtask bench` (= `cargo xtask plugins`, then `target/release/idgate-bench` as `cargo xtask build` builds it) on {}, \
         in {:.0} s.\n\nMachine: {}.\n\nEvery comparison is measured side by side in this one run: rounds \
         alternate between the compared sides, and figures are medians with the spread (min–max of the round \
         medians) where rounds repeat. Compare the ratios rather than the absolute times, which drift on a \
         shared machine. Nothing here is asserted; it is a report.\n",
        idgate_plugin_kit::time::format_rfc3339(idgate::clock::unix_now()),
        started.elapsed().as_secs_f64(),
        machine(&version),
    );
    report.push_str(&summary(&cells, &points, &rows, &storm_headline));
    for section in &sections {
        report.push_str(section);
    }
    report.push_str(&charts);
    let out = env.root.join("BENCHMARKS.md");
    std::fs::write(&out, report)?;
    eprintln!("wrote {} in {:.0} s", out.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// The HTTP sections' plugins and keys, made on first use.
fn keys<'a>(http: &'a mut Option<Http>, env: &Env, scratch: &std::path::Path) -> anyhow::Result<&'a Http> {
    if http.is_none() {
        *http = Some(make_http(env, scratch)?);
    }
    Ok(http.as_ref().expect("just made"))
}

/// Runs only the named sections and prints their Markdown.
fn only(env: &Env, scratch: &std::path::Path, sections: &[String]) -> anyhow::Result<()> {
    eprintln!("starting PostgreSQL and making test keys");
    let pg = cluster::BenchCluster::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // One set of keys for every section: throughput sends the storm's AWS requests.
    let mut http = None;
    let mut leftover = None;
    let mut out = String::new();
    for section in sections {
        match section.as_str() {
            "statements" => out.push_str(&statements::run(&rt, &pg)?.0),
            "storm" => {
                let http = keys(&mut http, env, scratch)?;
                let (md, left) = storm::run(&rt, &pg, http)?;
                out.push_str(&md);
                leftover = Some(left);
            }
            // Throughput cycles over the storm's AWS instances: a storm runs first.
            "throughput" => {
                let http = keys(&mut http, env, scratch)?;
                let left = match leftover.take() {
                    Some(left) => left,
                    None => storm::run(&rt, &pg, http)?.1,
                };
                out.push_str(&throughput::run(&rt, &pg, http, left.aws_plain)?.0);
            }
            "ceiling" => {
                let http = keys(&mut http, env, scratch)?;
                out.push_str(&ceiling::run(&rt, &pg, http, scratch)?.0);
            }
            "reload" => {
                let http = keys(&mut http, env, scratch)?;
                out.push_str(&reload::run(&rt, &pg, http, env, scratch)?);
            }
            "agent" => {
                let http = keys(&mut http, env, scratch)?;
                out.push_str(&agent::run(&rt, &pg, http, env)?);
            }
            other => unreachable!("checked: {other}"),
        }
    }
    drop(rt);
    drop(pg);
    println!("{out}");
    Ok(())
}

/// The headline numbers.
fn summary(cells: &[statements::Cell], points: &[throughput::Point], rows: &[ceiling::Row], storm: &str) -> String {
    let mut md = String::from("## Headlines\n\n");
    if let Some(c) = cells.iter().find(|c| c.agents == 50 && c.builds == 100) {
        let _ = writeln!(
            md,
            "- Statements per authentication, 50 agents on the instance × 100 earlier builds: idgate {}, the Coder \
             stage-B baseline {}; resolution latency {} vs {} (baseline / idgate {}).",
            c.idgate_statements,
            c.baseline_statements,
            stats::fmt(c.idgate.median),
            stats::fmt(c.baseline.median),
            stats::ratio(&c.idgate, &c.baseline)
        );
    }
    if let Some(c) = cells.iter().find(|c| c.agents == 1 && c.builds == 0) {
        let _ = writeln!(
            md,
            "- One agent, no earlier builds, steady state: 1 vs {} statements, {} vs {} (baseline / idgate {}); \
             PostgreSQL's time per authentication {} vs {} (planned once per connection; first use {} vs {}).",
            c.baseline_statements,
            stats::fmt(c.idgate.median),
            stats::fmt(c.baseline.median),
            stats::ratio(&c.idgate, &c.baseline),
            c.server.0.show(),
            c.server.1.show(),
            c.first_server.0.show(),
            c.first_server.1.show(),
        );
    }
    if let Some(c) = cells.iter().find(|c| c.agents == 1 && c.builds == 0) {
        let _ = writeln!(
            md,
            "- Coder main's pattern (join + latest build, prior-build agents soft-deleted), one agent, steady \
             state: {} statements vs idgate's {}, {} vs {} (Coder main / idgate {}); PostgreSQL's time {}.",
            c.main.statements,
            c.idgate_statements,
            stats::fmt(c.main.latency.1.median),
            stats::fmt(c.main.latency.0.median),
            stats::ratio(&c.main.latency.0, &c.main.latency.1),
            c.main.server.show(),
        );
    }
    let _ = writeln!(md, "- {storm}");
    for p in points.iter().filter(|p| p.clients == 256) {
        let _ = writeln!(
            md,
            "- {} at 256 concurrent clients: {:.0} authentications/s, p99 {}.",
            p.provider,
            p.outcome.rate(),
            stats::fmt(p.outcome.quantile(0.99))
        );
    }
    for r in rows.iter().filter(|r| r.clients == ceiling::BUDGET_CLIENTS) {
        let _ = writeln!(
            md,
            "- Server CPU per {} authentication: {} (idgate {} + PostgreSQL {}).",
            r.provider,
            stats::fmt(r.cpu.idgate + r.cpu.postgres),
            stats::fmt(r.cpu.idgate),
            stats::fmt(r.cpu.postgres)
        );
    }
    if let Some(line) = azure_budget::headline(rows) {
        let _ = writeln!(md, "{line}");
    }
    if let Some(floor) = rows
        .iter()
        .find(|r| r.mode == ceiling::Mode::Floor && r.clients == ceiling::CLIENTS)
    {
        let _ = writeln!(
            md,
            "- HTTP floor of the same router (no-op verification and resolution) at {} clients: {:.0} requests/s.",
            ceiling::CLIENTS,
            floor.outcome.rate()
        );
    }
    md.push_str("- WASM tax per provider: see *Sandbox costs* below.\n\n");
    md
}
