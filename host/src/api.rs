//! The HTTP API: Coder's three instance-identity endpoints, with Coder's
//! envelope and status codes, plus operations endpoints.
//!
//! One authentication: read the body (413 past the limit) → split it (400) →
//! verify in the provider's plugin (400/401/403/500/503) → resolve the agent in
//! one SQL statement (404/409/503) → 200 with the agent's token. Every attempt
//! leaves one audit log line, which never holds the token or the credential.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idgate_plugin_kit::VerifyError;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::authenticate::{AuthError, Authenticator};
use crate::db::resolve::{resolve_measured, Resolution, Resolver};
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::request::{parse_body, BodyError, Validation};
use crate::sandbox::{CallError, FaultKind};

/// Request limits of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    /// Largest accepted body, bytes.
    pub max_body_bytes: usize,
    /// Budget of one request from body to token.
    pub request_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What the handlers share.
pub struct AppState {
    /// The provider set (plugins, mounts, key caches), swapped whole by a reload.
    pub providers: Providers,
    /// The database pool.
    pub pool: sqlx::PgPool,
    /// Answers resolutions instead of `pool` when set: benchmarks only (the
    /// HTTP-floor measurement); `None` when serving.
    pub resolver: Option<Arc<dyn Resolver>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Request limits.
    pub limits: ApiLimits,
}

/// Coder's response envelope (`codersdk.Response`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in Coder's words.
    pub message: String,
    /// More detail, when there is any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Fields that failed validation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validations: Option<Vec<ValidationBody>>,
}

/// One failed field (`codersdk.ValidationError`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationBody {
    /// JSON field name.
    pub field: String,
    /// Why it failed.
    pub detail: String,
}

/// The success body (`agentsdk.AuthenticateResponse`).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    /// The agent's session token (a UUID).
    pub session_token: String,
}

/// AWS request body (`agentsdk.AWSInstanceIdentityToken`, plus `pkcs7`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct AwsInstanceIdentityToken {
    /// Base64 RSA-SHA256 signature from IMDS `/signature`.
    signature: Option<String>,
    /// The instance identity document, exactly as IMDS returned it.
    document: Option<String>,
    /// Base64 PKCS#7 from IMDS `/rsa2048` or `/pkcs7` (instead of or beside `signature`).
    pkcs7: Option<String>,
    /// Picks one of several agents on the instance.
    agent_name: Option<String>,
}

/// Azure request body (`agentsdk.AzureInstanceIdentityToken`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct AzureInstanceIdentityToken {
    /// Base64 DER PKCS#7 from IMDS `/metadata/attested/document`.
    signature: String,
    /// Accepted and ignored, as Coder does.
    encoding: String,
    /// Picks one of several agents on the instance.
    agent_name: Option<String>,
}

/// Google request body (`agentsdk.GoogleInstanceIdentityToken`).
#[derive(Debug, serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct GoogleInstanceIdentityToken {
    /// The metadata server's identity token (`format=full`).
    json_web_token: String,
    /// Picks one of several agents on the instance.
    agent_name: Option<String>,
}

/// The OpenAPI description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "idgate",
        description = "Coder-compatible instance-identity authentication for workspace agents."
    ),
    paths(aws_instance_identity, azure_instance_identity, google_instance_identity),
    components(schemas(
        ErrorBody,
        ValidationBody,
        TokenBody,
        AwsInstanceIdentityToken,
        AzureInstanceIdentityToken,
        GoogleInstanceIdentityToken
    ))
)]
pub struct ApiDoc;

/// The router with every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/api/v2/workspaceagents/aws-instance-identity",
            post(aws_instance_identity),
        )
        .route(
            "/api/v2/workspaceagents/azure-instance-identity",
            post(azure_instance_identity),
        )
        .route(
            "/api/v2/workspaceagents/google-instance-identity",
            post(google_instance_identity),
        )
        // Every other mount: `<mount>-instance-identity`.
        .route("/api/v2/workspaceagents/{segment}", post(mount_instance_identity))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .with_state(state)
}

/// Authenticate an agent with an AWS instance identity document.
#[utoipa::path(post, path = "/api/v2/workspaceagents/aws-instance-identity", request_body = AwsInstanceIdentityToken,
    responses((status = 200, body = TokenBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn aws_instance_identity(State(state): State<Arc<AppState>>, body: Body) -> Response {
    authenticate(&state, &state.providers.current(), "aws", body).await
}

/// Authenticate an agent with Azure attested data.
#[utoipa::path(post, path = "/api/v2/workspaceagents/azure-instance-identity", request_body = AzureInstanceIdentityToken,
    responses((status = 200, body = TokenBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn azure_instance_identity(State(state): State<Arc<AppState>>, body: Body) -> Response {
    authenticate(&state, &state.providers.current(), "azure", body).await
}

/// Authenticate an agent with a Google instance identity token.
#[utoipa::path(post, path = "/api/v2/workspaceagents/google-instance-identity", request_body = GoogleInstanceIdentityToken,
    responses((status = 200, body = TokenBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn google_instance_identity(State(state): State<Arc<AppState>>, body: Body) -> Response {
    authenticate(&state, &state.providers.current(), "gcp", body).await
}

/// An error response in Coder's envelope.
struct ApiError {
    status: StatusCode,
    outcome: &'static str,
    body: ErrorBody,
    retry_after: bool,
}

impl ApiError {
    fn new(status: StatusCode, outcome: &'static str, message: impl Into<String>, detail: Option<String>) -> Self {
        ApiError {
            status,
            outcome,
            body: ErrorBody {
                message: message.into(),
                detail,
                validations: None,
            },
            retry_after: false,
        }
    }

    fn unavailable(message: impl Into<String>, detail: Option<String>) -> Self {
        ApiError {
            retry_after: true,
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message, detail)
        }
    }

    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// What the audit line records about one attempt.
#[derive(Default)]
struct Audit {
    instance_id: Option<String>,
    agent: Option<String>,
}

/// `POST /api/v2/workspaceagents/<mount>-instance-identity` for a mount other
/// than Coder's three. A path that names no known mount is a plain 404,
/// without an audit line or a metrics label (those stay bounded by the
/// configuration, whatever clients send).
async fn mount_instance_identity(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(segment): axum::extract::Path<String>,
    body: Body,
) -> Response {
    let auth = state.providers.current();
    match crate::mounts::mount_of_path(&segment) {
        Some(mount) if auth.knows(mount) => authenticate(&state, &auth, mount, body).await,
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No provider is mounted at /api/v2/workspaceagents/{segment}."),
            None,
        )
        .into_response(),
    }
}

/// One authentication on `auth`, the provider set current when the request
/// arrived (a reload meanwhile does not change it).
async fn authenticate(state: &AppState, auth: &Authenticator, provider: &str, body: Body) -> Response {
    let route = Route {
        provider,
        display: auth.display(provider),
    };
    let route = &route;
    let mut audit = Audit::default();
    let result = match tokio::time::timeout(
        state.limits.request_timeout,
        attempt(state, auth, route, body, &mut audit),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(ApiError::unavailable(
            "Request timed out.",
            Some(format!(
                "no answer within {} ms",
                state.limits.request_timeout.as_millis()
            )),
        )),
    };
    let (outcome, status, reason) = match &result {
        Ok(_) => ("ok", StatusCode::OK, String::new()),
        Err(e) => (
            e.outcome,
            e.status,
            match &e.body.detail {
                Some(d) => format!("{} {d}", e.body.message),
                None => e.body.message.clone(),
            },
        ),
    };
    state.metrics.request(provider, outcome);
    tracing::info!(
        target: "idgate::audit",
        provider,
        instance_id = audit.instance_id.as_deref().unwrap_or(""),
        agent = audit.agent.as_deref().unwrap_or(""),
        outcome,
        status = status.as_u16(),
        reason = %reason,
        "authentication"
    );
    match result {
        Ok(token) => (StatusCode::OK, Json(TokenBody { session_token: token })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The mount a request is for, and its name in messages.
struct Route<'a> {
    provider: &'a str,
    display: String,
}

async fn attempt(
    state: &AppState,
    auth: &Authenticator,
    route: &Route<'_>,
    body: Body,
    audit: &mut Audit,
) -> Result<String, ApiError> {
    let bytes = axum::body::to_bytes(body, state.limits.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "Request body is too large.",
                Some(format!("the limit is {} bytes", state.limits.max_body_bytes)),
            )
        })?;
    let parsed = parse_body(route.provider, &bytes).map_err(|e| match e {
        BodyError::InvalidJson(detail) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Request body must be valid JSON.",
            Some(detail),
        ),
        BodyError::Validation(v) => ApiError {
            body: ErrorBody {
                message: "Validation failed.".into(),
                detail: None,
                validations: Some(
                    v.into_iter()
                        .map(|Validation { field, detail }| ValidationBody { field, detail })
                        .collect(),
                ),
            },
            ..ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "", None)
        },
    })?;

    let started = Instant::now();
    let now = crate::clock::unix_now();
    let verified = auth.verify(route.provider, parsed.credential, now).await;
    state.metrics.verify_time(route.provider, started.elapsed());
    let identity = verified.map_err(|e| verify_error(state, route, e))?;
    audit.instance_id = Some(identity.instance_id.clone());

    let started = Instant::now();
    let resolution = match &state.resolver {
        None => resolve_measured(&state.pool, &identity.instance_id, parsed.agent_name.as_deref()).await,
        Some(stand_in) => {
            stand_in
                .resolve(&identity.instance_id, parsed.agent_name.as_deref())
                .await
        }
    };
    state.metrics.resolve_time(started.elapsed());
    let (resolution, pool_wait) = resolution.map_err(database_error)?;
    state.metrics.pool_wait(pool_wait);
    match resolution {
        Resolution::Token(token, agent) => {
            audit.agent = Some(agent);
            Ok(token.hyphenated().to_string())
        }
        Resolution::NotFound(message) | Resolution::NoSuchName(message) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", message, None))
        }
        Resolution::Ambiguous(message) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", message, None)),
    }
}

fn verify_error(state: &AppState, route: &Route<'_>, e: AuthError) -> ApiError {
    let invalid = format!("Invalid {} identity.", route.display);
    match e {
        AuthError::Call(CallError::Rejected(e)) => {
            let detail = Some(e.reason().to_string());
            match e {
                // Coder answers every credential its validator cannot use with
                // 401, undecodable ones included; other mounts say 400.
                VerifyError::Malformed(_) if crate::mounts::coder_route(route.provider).is_some() => {
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", invalid, detail)
                }
                VerifyError::Malformed(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", invalid, detail),
                VerifyError::BadSignature(_) | VerifyError::UntrustedSigner(_) | VerifyError::Expired(_) => {
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", invalid, detail)
                }
                VerifyError::Refused(_) => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("{} identity refused by policy.", route.display),
                    detail,
                ),
                VerifyError::BadConfig(_) => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "error",
                    format!(
                        "Internal error: the {} plugin's configuration is unusable.",
                        route.provider
                    ),
                    detail,
                ),
            }
        }
        AuthError::Call(CallError::NotLoaded(p)) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No plugin is loaded for provider {p:?}: add its .wasm to the plugin directory."),
            None,
        ),
        AuthError::Call(CallError::Fault {
            provider,
            message,
            kind,
        }) => {
            state.metrics.plugin_fault(
                &provider,
                match kind {
                    FaultKind::Trap => "trap",
                    FaultKind::Deadline => "deadline",
                    FaultKind::Memory => "memory",
                },
            );
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "error",
                format!("Internal error verifying {} identity.", route.display),
                Some(format!("the {provider} plugin failed: {message}")),
            )
        }
        AuthError::KeysUnavailable(detail) => ApiError::unavailable(
            format!("{} signing keys are unavailable; try again.", route.display),
            Some(detail),
        ),
    }
}

/// Database trouble: an exhausted pool, an unreachable server, or a server that
/// is shutting down or starting up (SQLSTATE classes 08 and 57, e.g. `57P01`
/// admin shutdown, `57P03` "the database system is starting up") is temporary:
/// 503 with `Retry-After`. Anything else is Coder's 500.
fn database_error(e: sqlx::Error) -> ApiError {
    let temporary = match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    };
    match e {
        e if temporary => ApiError::unavailable("The database is unavailable; try again.", Some(e.to_string())),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "error",
            "Internal error fetching workspace agent.",
            Some(other.to_string()),
        ),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    // Shutting down: nothing else matters to a balancer, and answering at once
    // takes the replica out before it stops accepting.
    if state.metrics.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: draining (shutting down)\n").into_response();
    }
    let mut problems = Vec::new();
    let db = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&state.pool)).await;
    match db {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => problems.push(format!("database: {e}")),
        Err(_) => problems.push("database: no answer within 2 s".to_string()),
    }
    let auth = state.providers.current();
    for (mount, plugin) in auth.unloaded() {
        problems.push(format!(
            "mount {mount:?} is configured but its plugin {plugin:?} is not loaded"
        ));
    }
    for (provider, reason) in auth.unconfigured() {
        problems.push(format!("plugin {provider:?} is not serving: {reason}"));
    }
    if auth.sandbox().plugins().is_empty() {
        problems.push("no plugins are loaded".to_string());
    }
    // Expiring trust material is a warning, not a failure: the other
    // providers, and this one until the date, still serve.
    let mut warnings = crate::expiry::warnings(&auth, crate::clock::unix_now());
    // A failed reload left the previous set serving: a warning until a good one.
    if let Some((at, reason)) = state.providers.status().failing {
        warnings.push(format!(
            "the last reload (at Unix time {at}) failed and changed nothing: {reason}"
        ));
    }
    let warned = if warnings.is_empty() {
        String::new()
    } else {
        format!("warning: {}\n", warnings.join("; "))
    };
    if problems.is_empty() {
        (StatusCode::OK, format!("ready\n{warned}")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n{warned}", problems.join("; ")),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let auth = state.providers.current();
    for (provider, left, _) in crate::expiry::time_left(&auth, crate::clock::unix_now()) {
        state.metrics.trust_time_left(&provider, left);
    }
    let plugins = auth.sandbox().plugins();
    state.metrics.plugins(
        plugins
            .iter()
            .map(|p| (p.provider.as_str(), p.contract.as_str(), p.sha256.as_str())),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
