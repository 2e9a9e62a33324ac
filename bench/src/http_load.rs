//! HTTP on 127.0.0.1: idgate's real router, the baseline's router (the same
//! steps with the baseline resolution in place of idgate's), and a client that
//! keeps a fixed number of requests in flight and records every latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use idgate::api::{router, ApiLimits, AppState};
use idgate::authenticate::Authenticator;
use idgate::config::FileConfig;
use idgate::metrics::Metrics;
use idgate::providers::Providers;
use idgate::request::parse_body;
use idgate::sandbox::Sandbox;
use serde_json::json;

use crate::baseline::{self, Answer};

/// The state both servers run with: the same plugins, configuration, limits
/// and pool settings.
pub fn state(sandbox: Arc<Sandbox>, file: &FileConfig, pool: sqlx::PgPool) -> anyhow::Result<Arc<AppState>> {
    Ok(Arc::new(AppState {
        providers: Providers::new(Authenticator::new(sandbox, file)?),
        pool,
        resolver: None,
        metrics: Metrics::default(),
        limits: ApiLimits::default(),
    }))
}

async fn listen(app: Router) -> anyhow::Result<String> {
    let listener = idgate::serve::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// Serves `idgate::api::router`; returns its base URL.
pub async fn serve_idgate(state: Arc<AppState>) -> anyhow::Result<String> {
    listen(router(state)).await
}

/// Serves the baseline: the same endpoints, body parsing, plugin verification
/// and request timeout as idgate's handler, then the baseline resolution.
/// (No metrics or audit line; with no log subscriber installed, idgate's cost
/// next to nothing.)
pub async fn serve_baseline(state: Arc<AppState>) -> anyhow::Result<String> {
    serve_pattern(state, Pattern::StageB).await
}

/// [`serve_baseline`] with Coder main's pattern
/// ([`baseline::resolve_coder_main`]) as the resolution.
pub async fn serve_coder_main(state: Arc<AppState>) -> anyhow::Result<String> {
    serve_pattern(state, Pattern::CoderMain).await
}

/// Which of Coder's resolutions a baseline server runs.
#[derive(Debug, Clone, Copy)]
enum Pattern {
    StageB,
    CoderMain,
}

async fn serve_pattern(state: Arc<AppState>, pattern: Pattern) -> anyhow::Result<String> {
    let app = Router::new()
        .route(
            "/api/v2/workspaceagents/aws-instance-identity",
            post(move |s: State<Arc<AppState>>, b: Body| baseline_handler(s, pattern, "aws", b)),
        )
        .route(
            "/api/v2/workspaceagents/azure-instance-identity",
            post(move |s: State<Arc<AppState>>, b: Body| baseline_handler(s, pattern, "azure", b)),
        )
        .route(
            "/api/v2/workspaceagents/google-instance-identity",
            post(move |s: State<Arc<AppState>>, b: Body| baseline_handler(s, pattern, "gcp", b)),
        )
        .with_state(state);
    listen(app).await
}

async fn baseline_handler(
    State(state): State<Arc<AppState>>,
    pattern: Pattern,
    provider: &'static str,
    body: Body,
) -> Response {
    let reply = |status: u16, message: String| {
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(json!({ "message": message })),
        )
            .into_response()
    };
    let work = async {
        let bytes = axum::body::to_bytes(body, state.limits.max_body_bytes)
            .await
            .map_err(|_| (413, "Request body is too large.".to_string()))?;
        let parsed = parse_body(provider, &bytes).map_err(|e| (400, format!("{e:?}")))?;
        let identity = state
            .providers
            .current()
            .verify(provider, parsed.credential, idgate::clock::unix_now())
            .await
            .map_err(|e| (401, e.to_string()))?;
        let (pool, id, name) = (&state.pool, &identity.instance_id, parsed.agent_name.as_deref());
        match pattern {
            Pattern::StageB => baseline::resolve(pool, id, name).await,
            Pattern::CoderMain => baseline::resolve_coder_main(pool, id, name).await,
        }
        .map_err(|e| match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => (503, e.to_string()),
            other => (500, other.to_string()),
        })
    };
    match tokio::time::timeout(state.limits.request_timeout, work).await {
        Ok(Ok(Answer::Token(token))) => {
            (StatusCode::OK, Json(json!({ "session_token": token.to_string() }))).into_response()
        }
        Ok(Ok(Answer::Status(status, message))) => reply(status, message),
        Ok(Err((status, message))) => reply(status, message),
        Err(_) => reply(503, "Request timed out.".into()),
    }
}

/// One prepared request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Path under `/api/v2/workspaceagents/`.
    pub path: &'static str,
    /// JSON body.
    pub body: String,
}

/// How long a run goes on.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// Every request once.
    Once,
    /// Requests in a cycle until this much time has passed.
    For(Duration),
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latency of every answered request.
    pub latencies: Vec<Duration>,
    /// Answers by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests that got no HTTP answer (connection error, client timeout).
    pub transport_errors: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Outcome {
    /// Requests not answered 200, transport errors included.
    pub fn failures(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(_, n)| n)
            .sum::<usize>()
            + self.transport_errors
    }

    /// The `q` quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }

    /// Answers per second.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// `200: n, 409: m, ...`.
    pub fn status_list(&self) -> String {
        let mut parts: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        if self.transport_errors > 0 {
            parts.push(format!("no answer: {}", self.transport_errors));
        }
        parts.join(", ")
    }
}

/// Sends `requests` to `base` with `concurrency` in flight. Each run has a new
/// client, whose connections are kept alive between requests.
pub async fn drive(base: &str, requests: Arc<Vec<Request>>, concurrency: usize, limit: Limit) -> Outcome {
    drive_with(base, requests, concurrency, limit, Connections::KeepAlive).await
}

/// How the load client's requests reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// Each client opens a connection for its first request and keeps it for the next.
    KeepAlive,
    /// Every request opens its own connection and closes it, as separate agents do.
    Fresh,
}

/// [`drive`], with the connections chosen.
pub async fn drive_with(
    base: &str,
    requests: Arc<Vec<Request>>,
    concurrency: usize,
    limit: Limit,
    connections: Connections,
) -> Outcome {
    let idle = match connections {
        Connections::KeepAlive => usize::MAX,
        Connections::Fresh => 0,
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(idle)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, requests) = (client.clone(), next.clone(), requests.clone());
            let base = base.to_string();
            tokio::spawn(async move {
                let mut seen = Outcome::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    match limit {
                        Limit::Once if i >= requests.len() => break,
                        Limit::For(d) if started.elapsed() >= d => break,
                        _ => {}
                    }
                    let request = &requests[i % requests.len()];
                    let t = Instant::now();
                    let sent = client
                        .post(format!("{base}/api/v2/workspaceagents/{}", request.path))
                        .header("content-type", "application/json")
                        .body(request.body.clone())
                        .send()
                        .await;
                    let status = match sent {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            response.bytes().await.ok().map(|_| status)
                        }
                        Err(_) => None,
                    };
                    match status {
                        Some(s) => {
                            seen.latencies.push(t.elapsed());
                            *seen.statuses.entry(s).or_default() += 1;
                        }
                        None => seen.transport_errors += 1,
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Outcome::default();
    for w in workers {
        let seen = w.await.expect("load worker");
        all.latencies.extend(seen.latencies);
        for (s, n) in seen.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
        all.transport_errors += seen.transport_errors;
    }
    all.elapsed = started.elapsed();
    all
}
