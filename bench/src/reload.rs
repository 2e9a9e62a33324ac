//! Section: reloads under load. The same AWS load (64 keep-alive clients
//! through idgate's router) runs in alternating rounds without reloads and
//! with reloads back to back, so the p99s compare in one run; then how long a
//! reload takes until the new set serves — a changed block whose snapshot is
//! cached, a block never seen before (configure, snapshot and compile), and a
//! plugin never compiled (its cache entries removed first) — with the load's
//! p99 while the cold compile runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idgate::api::AppState;
use idgate::config::FileConfig;
use idgate::reload::Reloader;
use idgate::sandbox::{Limits, Sandbox};
use idgate::settings::{CacheDir, Settings};

use crate::cluster::BenchCluster;
use crate::fixtures::{register, Group};
use crate::http_load::{drive, serve_idgate, state, Limit, Outcome, Request};
use crate::stats::fmt;
use crate::{Env, Http};

/// Concurrent clients, as the reload test's.
const CLIENTS: usize = 64;
/// One round of load.
const ROUND: Duration = Duration::from_secs(3);
/// Rounds per side.
const ROUNDS: usize = 3;
/// AWS instances the load cycles over.
const INSTANCES: usize = 200;

/// What the reloader reads: the bench's `[aws]` block and `[misbehave] v`.
struct Files {
    plugins: PathBuf,
    aws: serde_json::Value,
    v: AtomicUsize,
}

impl Files {
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut file = FileConfig::parse(&format!("[misbehave]\nv = {}\n", self.v.load(Ordering::SeqCst)))?;
        file.providers.insert("aws".into(), self.aws.clone());
        Ok(Settings {
            file,
            plugins: self.plugins.clone(),
            cache_dir: CacheDir::None,
            database_url: None,
            database_read_url: None,
            database_kind: Default::default(),
        })
    }
}

/// Runs the section.
pub fn run(
    rt: &tokio::runtime::Runtime,
    pg: &BenchCluster,
    http: &Http,
    env: &Env,
    scratch: &Path,
) -> anyhow::Result<String> {
    let dir = scratch.join("reload-plugins");
    std::fs::create_dir_all(&dir)?;
    for name in ["aws.wasm", "misbehave.wasm"] {
        std::fs::copy(env.plugin_dir.join(name), dir.join(name))?;
    }
    let files = Arc::new(Files {
        plugins: dir.clone(),
        aws: http.aws.config(),
        v: AtomicUsize::new(0),
    });
    // A compiled cache of its own, emptied before each cold sample, so a
    // plugin added then is compiled then and there.
    let cache = scratch.join("reload-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let sandbox = Arc::new(Sandbox::load(&dir, Some(&cache), Limits::default())?);
    let now = idgate::clock::unix_now();
    let ids: Vec<String> = (0..INSTANCES).map(|i| format!("i-reload{i:011}")).collect();
    let requests: Vec<Request> = crate::credentials::mint(INSTANCES, |i| http.aws.body(&ids[i], None, now))
        .into_iter()
        .map(|body| Request {
            path: "aws-instance-identity",
            body,
        })
        .collect();
    let requests = Arc::new(requests);

    rt.block_on(async {
        let pool = pg.open(10).await?;
        register(&pool, &Group::new("reload", ids.clone(), 1, 0)).await?;
        crate::fixtures::analyze(&pool).await?;
        let first = files.settings()?;
        let state = state(sandbox, &first.file, pool)?;
        let base = serve_idgate(state.clone()).await?;
        let reader = files.clone();
        let reloader = Arc::new(Reloader::new(Box::new(move || reader.settings()), &first, None));
        // Warm up: connections, plan cache, both snapshots of the toggle.
        drive(&base, requests.clone(), CLIENTS, Limit::For(Duration::from_secs(1))).await;
        for v in [1, 0] {
            files.v.store(v, Ordering::SeqCst);
            reloader.reload(&state).await?;
        }

        let mut quiet = Vec::new();
        let mut busy = Vec::new();
        let mut warm = Vec::new();
        for _ in 0..ROUNDS {
            quiet.push(drive(&base, requests.clone(), CLIENTS, Limit::For(ROUND)).await);
            let (outcome, times) = under_reloads(&base, &requests, &state, &reloader, &files, |n| n % 2).await;
            busy.push(outcome);
            warm.extend(times);
        }
        // A block never seen before: configure, snapshot, compile the snapshot.
        let mut fresh = Vec::new();
        for v in 0..5 {
            files.v.store(100 + v, Ordering::SeqCst);
            fresh.push(timed(reloader.reload(&state)).await?);
        }
        // A plugin never compiled, added under load, then removed; twice.
        let mut cold = Vec::new();
        let mut during_cold = Vec::new();
        for _ in 0..2 {
            for entry in std::fs::read_dir(&cache)? {
                std::fs::remove_file(entry?.path())?;
            }
            std::fs::copy(env.plugin_dir.join("oidc.wasm"), dir.join("oidc.wasm"))?;
            let (reloader_, state_) = (reloader.clone(), state.clone());
            let reload = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                timed(reloader_.reload(&state_)).await
            });
            during_cold.push(drive(&base, requests.clone(), CLIENTS, Limit::For(ROUND)).await);
            cold.push(reload.await??);
            std::fs::remove_file(dir.join("oidc.wasm"))?;
            reloader.reload(&state).await?;
        }
        Ok(report(&quiet, &busy, &mut warm, &mut fresh, &mut cold, &during_cold))
    })
}

/// The load for one round with reloads back to back meanwhile (`v` of the
/// `n`th); the round's outcome and each reload's time.
async fn under_reloads(
    base: &str,
    requests: &Arc<Vec<Request>>,
    state: &Arc<AppState>,
    reloader: &Arc<Reloader>,
    files: &Arc<Files>,
    v: impl Fn(usize) -> usize + Send + 'static,
) -> (Outcome, Vec<Duration>) {
    let times = Arc::new(Mutex::new(Vec::new()));
    let (state, reloader, files, seen) = (state.clone(), reloader.clone(), files.clone(), times.clone());
    let reloads = tokio::spawn(async move {
        let mut n = 0;
        loop {
            n += 1;
            files.v.store(v(n), Ordering::SeqCst);
            if let Ok(took) = timed(reloader.reload(&state)).await {
                seen.lock().unwrap().push(took);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let outcome = drive(base, requests.clone(), CLIENTS, Limit::For(ROUND)).await;
    reloads.abort();
    let times = times.lock().unwrap().clone();
    (outcome, times)
}

async fn timed<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<Duration> {
    let t = Instant::now();
    f.await?;
    Ok(t.elapsed())
}

fn median(d: &mut [Duration]) -> Duration {
    d.sort();
    d.get(d.len() / 2).copied().unwrap_or_default()
}

fn report(
    quiet: &[Outcome],
    busy: &[Outcome],
    warm: &mut [Duration],
    fresh: &mut [Duration],
    cold: &mut [Duration],
    during_cold: &[Outcome],
) -> String {
    let p99 = |o: &[Outcome]| {
        let mut p: Vec<Duration> = o.iter().map(|o| o.quantile(0.99)).collect();
        median(&mut p)
    };
    let failures = |o: &[Outcome]| o.iter().map(Outcome::failures).sum::<usize>();
    let answered = |o: &[Outcome]| o.iter().map(|o| o.latencies.len()).sum::<usize>();
    let rate = |o: &[Outcome]| o.iter().map(Outcome::rate).sum::<f64>() / o.len().max(1) as f64;
    let (q, b) = (p99(quiet), p99(busy));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Reloads under load\n\n{CLIENTS} keep-alive clients send genuine AWS authentications through \
         idgate's router for {} s rounds, alternating {ROUNDS} rounds without reloads and {ROUNDS} with a \
         reload running back to back (50 ms apart; each toggles a `[misbehave]` block between two values \
         whose snapshots are cached, re-reading the plugin directory and the file each time). `reload.rs` \
         (the SIGHUP path) is called in process, with a compiled cache of its own.\n",
        ROUND.as_secs()
    );
    let _ = writeln!(md, "| | no reloads | reloads back to back | ratio |\n|---|---|---|---|");
    let _ = writeln!(
        md,
        "| p99 latency (median of rounds) | {} | {} | {:.2}× |",
        fmt(q),
        fmt(b),
        b.as_secs_f64() / q.as_secs_f64().max(1e-9)
    );
    let _ = writeln!(
        md,
        "| authentications/s | {:.0} | {:.0} | {:.2}× |",
        rate(quiet),
        rate(busy),
        rate(busy) / rate(quiet).max(1e-9)
    );
    let _ = writeln!(
        md,
        "| failed / answered | {} / {} | {} / {} | |",
        failures(quiet),
        answered(quiet),
        failures(busy),
        answered(busy)
    );
    let _ = writeln!(md, "| reloads done | | {} | |\n", warm.len());
    let _ = writeln!(
        md,
        "Time from the reload's start until the new set serves:\n\n\
         | reload | median | max | samples |\n|---|---|---|---|"
    );
    for (what, d) in [
        ("one block changed, its snapshot cached", warm),
        (
            "one block changed to a value never seen (configure + snapshot + compile)",
            fresh,
        ),
        (
            "a plugin never compiled added (oidc, its cache entries removed first)",
            cold,
        ),
    ] {
        let n = d.len();
        let max = d.iter().max().copied().unwrap_or_default();
        let _ = writeln!(md, "| {what} | {} | {} | {n} |", fmt(median(d)), fmt(max));
    }
    let _ = writeln!(
        md,
        "\nWhile the cold compile ran (a {} s round of the same load around it): p99 {} against {} without \
         reloads ({:.2}×), {} failed of {}.\n",
        ROUND.as_secs(),
        fmt(p99(during_cold)),
        fmt(q),
        p99(during_cold).as_secs_f64() / q.as_secs_f64().max(1e-9),
        failures(during_cold),
        answered(during_cold)
    );
    md
}
