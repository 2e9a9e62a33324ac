//! Section 3: authentications per second and latency against the number of
//! concurrent clients, for each provider, through idgate's real router; and
//! for AWS through the same server path with Coder main's resolution pattern.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{BenchCluster, CODER_MAIN_DATABASE};
use crate::fixtures::{register, Group};
use crate::http_load::{drive, serve_coder_main, serve_idgate, state, Limit, Outcome, Request};
use crate::stats::fmt;
use crate::Http;

/// Concurrent clients.
pub const CLIENTS: [usize; 4] = [1, 16, 256, 1024];
/// How long each cell runs.
const CELL: Duration = Duration::from_millis(2500);
/// Instances registered per provider (requests cycle over them).
const INSTANCES: usize = 1000;
/// The row of AWS requests served with Coder main's pattern.
pub const AWS_CODER_MAIN: &str = "aws, Coder main's pattern";

/// One cell.
pub struct Point {
    /// Provider.
    pub provider: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// What the run saw.
    pub outcome: Outcome,
}

/// Runs the section; `aws` are ready AWS requests (single-agent instances).
pub fn run(
    rt: &tokio::runtime::Runtime,
    pg: &BenchCluster,
    http: &Http,
    aws: Vec<Request>,
) -> anyhow::Result<(String, Vec<Point>)> {
    let now = idgate::clock::unix_now();
    let azure_ids: Vec<String> = (0..INSTANCES)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let gcp_ids: Vec<String> = (0..INSTANCES)
        .map(|i| format!("{}", 7_000_000_000_000u64 + i as u64))
        .collect();
    rt.block_on(async {
        let pool = pg.open(2).await?;
        register(&pool, &Group::new("azure", azure_ids.clone(), 1, 0)).await?;
        register(&pool, &Group::new("gcp", gcp_ids.clone(), 1, 0)).await?;
        crate::fixtures::analyze(&pool).await?;
        pool.close().await;
        anyhow::Ok(())
    })?;
    let azure: Vec<Request> = crate::credentials::mint(INSTANCES, |i| http.azure.body(&azure_ids[i], None, now))
        .into_iter()
        .map(|body| Request {
            path: "azure-instance-identity",
            body,
        })
        .collect();
    let gcp: Vec<Request> = crate::credentials::mint(INSTANCES, |i| http.gcp.body(&gcp_ids[i], None, now))
        .into_iter()
        .map(|body| Request {
            path: "google-instance-identity",
            body,
        })
        .collect();
    let aws = Arc::new(aws);
    let sets: [(&'static str, Arc<Vec<Request>>); 4] = [
        ("aws", aws.clone()),
        ("azure", Arc::new(azure)),
        ("gcp", Arc::new(gcp)),
        (AWS_CODER_MAIN, aws),
    ];

    let points = rt.block_on(async {
        let base = serve_idgate(state(
            http.sandbox.clone(),
            &http.file,
            pg.open(crate::storm::POOL).await?,
        )?)
        .await?;
        // The storm registered its AWS instances in Coder main's database too.
        let main = serve_coder_main(state(
            http.sandbox.clone(),
            &http.file,
            pg.baseline_pool_in(CODER_MAIN_DATABASE, crate::storm::POOL).await?,
        )?)
        .await?;
        let mut points = Vec::new();
        for clients in CLIENTS {
            // Providers interleaved so drift on the machine spreads over all of them.
            for (provider, requests) in &sets {
                let server = if *provider == AWS_CODER_MAIN { &main } else { &base };
                let outcome = drive(server, requests.clone(), clients, Limit::For(CELL)).await;
                eprintln!(
                    "throughput: {provider} × {clients}: {:.0}/s, p50 {}, p99 {} ({})",
                    outcome.rate(),
                    fmt(outcome.quantile(0.5)),
                    fmt(outcome.quantile(0.99)),
                    outcome.status_list()
                );
                points.push(Point {
                    provider,
                    clients,
                    outcome,
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        anyhow::Ok(points)
    })?;
    Ok((report(&points), points))
}

fn report(points: &[Point]) -> String {
    let mut md = String::from("## Throughput and latency vs concurrent clients\n\n");
    let _ = writeln!(
        md,
        "`idgate::api::router` on 127.0.0.1, pool of {} connections, default sandbox limits (plugin calls at once \
         = cores). Each cell runs {:.1} s with N clients each sending its next request as soon as it has an \
         answer, cycling over {INSTANCES} registered single-agent instances per provider (AWS: the storm's \
         instances). Credentials are test-made and genuinely signed: AWS signature form under a configured \
         certificate; Azure attested-data PKCS#7 from a `metadata.azure.com` leaf under a root configured in \
         `[azure] roots` (full CMS signature and chain checks); GCP RS256 tokens checked against a JWKS file \
         (`[gcp] jwks_file`). Client and server share the machine's cores. *{AWS_CODER_MAIN}* sends the same AWS \
         requests to the same server path (body parsing, the same plugin verification) with Coder main's \
         resolution (`baseline::resolve_coder_main`, two statements, each on its own pooled connection from a \
         pool of the same size) on the copy of the registrations whose prior-build agents are soft-deleted.\n",
        crate::storm::POOL,
        CELL.as_secs_f64()
    );
    md.push_str("| clients | provider | auth/s | p50 | p99 | non-200 |\n|---|---|---|---|---|---|\n");
    for p in points {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {} |",
            p.clients,
            p.provider,
            p.outcome.rate(),
            fmt(p.outcome.quantile(0.5)),
            fmt(p.outcome.quantile(0.99)),
            p.outcome.failures()
        );
    }
    md.push('\n');
    md
}
