//! Stand-ins on loopback: a tiny HTTP/1.1 server (one thread per
//! connection, `Connection: close`), and the services the agent talks to
//! built on it — IMDSv2, Azure IMDS, the GCE metadata server, the Actions
//! token service, and an idgate server that knows two agents on one instance.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// The genuine AWS vectors (tests/data/VECTORS.md): exact bytes, as IMDS serves them.
pub const AWS_DOCUMENT: &str = include_str!("../../../tests/data/aws/coder_iid_document.json");
pub const AWS_SIGNATURE: &str = include_str!("../../../tests/data/aws/coder_iid_signature.b64");
pub const AWS_RSA2048: &str = include_str!("../../../tests/data/aws/apse2_2026_rsa2048.b64");
pub const AWS_INSTANCE_ID: &str = "i-076e9b91f7c420782";
/// The IMDSv2 session token the stand-in hands out.
pub const IMDS_TOKEN: &str = "AQAEAimds-session-token==";

/// A request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What the stand-in answers.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: Value) -> Response {
        Response::new(status, body.to_string()).header("Content-Type", "application/json")
    }

    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

type Handler = dyn Fn(&Request, usize) -> Response + Send + Sync;

/// The test CA (client/tests/data, generated once with openssl, valid for a
/// century) and the server certificate it issued for `localhost` and 127.0.0.1.
pub const TEST_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/test-ca.pem");
const TEST_SERVER_CERT: &[u8] = include_bytes!("../data/test-server.pem");
const TEST_SERVER_KEY: &[u8] = include_bytes!("../data/test-server.key");

fn tls_server_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(TEST_SERVER_CERT)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(TEST_SERVER_KEY).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(config)
}

/// A running stand-in. The handler gets each request and its index (0 for the first).
pub struct StandIn {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    https: bool,
}

impl StandIn {
    pub fn start(handler: impl Fn(&Request, usize) -> Response + Send + Sync + 'static) -> StandIn {
        StandIn::listen(handler, None)
    }

    /// The same over TLS, with the test CA's server certificate. `url()` is then `https://`.
    pub fn start_tls(handler: impl Fn(&Request, usize) -> Response + Send + Sync + 'static) -> StandIn {
        StandIn::listen(handler, Some(tls_server_config()))
    }

    fn listen(
        handler: impl Fn(&Request, usize) -> Response + Send + Sync + 'static,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = requests.clone();
        let https = tls.is_some();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, seen, tls) = (handler.clone(), seen.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve(stream, &*handler, &seen),
                    Some(config) => {
                        let Ok(connection) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        serve(rustls::StreamOwned::new(connection, stream), &*handler, &seen)
                    }
                });
            }
        });
        StandIn { addr, requests, https }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(mut stream: impl Read + Write, handler: &Handler, seen: &Mutex<Vec<Request>>) {
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(request.clone());
        seen.len() - 1
    };
    let response = handler(&request, index);
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.body.len()
    );
    for (n, v) in &response.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(&response.body);
    let _ = stream.flush();
}

fn read_request(stream: &mut impl Read) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

/// IMDSv2: a session token from `PUT /latest/api/token` (TTL header required),
/// and every `GET` without that token is 401, as IMDS answers when IMDSv2 is required.
pub fn imds() -> StandIn {
    StandIn::start(|r, _| {
        if r.method == "PUT" && r.target == "/latest/api/token" {
            return match r.header("X-aws-ec2-metadata-token-ttl-seconds") {
                Some(ttl) if ttl.parse::<u32>().is_ok_and(|t| (1..=21600).contains(&t)) => {
                    Response::new(200, IMDS_TOKEN)
                }
                _ => Response::new(400, "Bad Request"),
            };
        }
        if r.method != "GET" {
            return Response::new(405, "");
        }
        if r.header("X-aws-ec2-metadata-token") != Some(IMDS_TOKEN) {
            return Response::new(401, "Unauthorized");
        }
        match r.target.as_str() {
            "/latest/dynamic/instance-identity/document" => Response::new(200, AWS_DOCUMENT),
            "/latest/dynamic/instance-identity/signature" => Response::new(200, AWS_SIGNATURE),
            "/latest/dynamic/instance-identity/rsa2048" => Response::new(200, AWS_RSA2048),
            _ => Response::new(404, "Not Found"),
        }
    })
}

/// Azure IMDS: the attested document, only with `Metadata: true`.
pub fn azure_imds() -> StandIn {
    StandIn::start(|r, _| {
        if r.header("Metadata") != Some("true") {
            return Response::json(
                400,
                serde_json::json!({"error": "Bad request. Required metadata header not specified"}),
            );
        }
        match r.target.as_str() {
            "/metadata/attested/document?api-version=2020-09-01" => Response::json(
                200,
                serde_json::json!({"encoding": "pkcs7", "signature": "MIILiQYJKoZIhvcNAQcCoIILejCCC3YCAQExDzANBgkqhkiG9w0BAQsFADCCAUAGCSqG"}),
            ),
            _ => Response::new(404, "Not found"),
        }
    })
}

/// A JWT-shaped token (not signed by anyone: the stand-ins do not verify).
pub fn jwt(subject: &str) -> String {
    let subject: String = subject
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("eyJhbGciOiJSUzI1NiJ9.{subject}.c2lnbmF0dXJl")
}

/// The GCE metadata server: the identity token, only with `Metadata-Flavor: Google`.
pub fn gce_metadata() -> StandIn {
    StandIn::start(|r, _| gce_answer(r))
}

pub fn gce_answer(r: &Request) -> Response {
    {
        if r.header("Metadata-Flavor") != Some("Google") {
            return Response::new(403, "Missing Metadata-Flavor:Google header.");
        }
        let prefix = "/computeMetadata/v1/instance/service-accounts/";
        let Some(rest) = r.target.strip_prefix(prefix) else {
            return Response::new(404, "");
        };
        let Some((account, query)) = rest.split_once("/identity?") else {
            return Response::new(404, "");
        };
        let Some(audience) = query
            .strip_suffix("&format=full")
            .and_then(|q| q.strip_prefix("audience="))
        else {
            return Response::new(400, "non-empty audience parameter required");
        };
        Response::new(200, jwt(&format!("gce-{account}-{audience}"))).header("Metadata-Flavor", "Google")
    }
}

/// The Actions token service: `{"value": JWT}` for the right bearer token.
pub const ACTIONS_REQUEST_TOKEN: &str = "actions-request-token";
pub fn actions_token_service() -> StandIn {
    StandIn::start(|r, _| {
        if r.header("Authorization") != Some(&format!("Bearer {ACTIONS_REQUEST_TOKEN}")) {
            return Response::new(401, "");
        }
        let Some(audience) = r.target.strip_prefix("/idtoken?api-version=2.0&audience=") else {
            return Response::new(400, "");
        };
        Response::json(
            200,
            serde_json::json!({"count": 1, "value": jwt(&format!("gha-{audience}"))}),
        )
    })
}

/// idgate's answer to the genuine AWS instance, which has two agents.
pub fn aws_answer(r: &Request) -> Response {
    let body = r.json();
    if body.get("document").and_then(Value::as_str) != Some(AWS_DOCUMENT)
        || body.get("signature").and_then(Value::as_str) != Some(AWS_SIGNATURE)
    {
        return Response::json(
            401,
            serde_json::json!({"message": "Invalid AWS identity.", "detail": "signature mismatch"}),
        );
    }
    match body.get("agent_name") {
        None => Response::json(
            409,
            serde_json::json!({"message": format!(
                "Multiple agents found with instance ID \"{AWS_INSTANCE_ID}\". Set CODER_AGENT_NAME to one of: dev, main"
            )}),
        ),
        Some(Value::String(n)) if n == "dev" || n == "main" => {
            Response::json(200, serde_json::json!({"session_token": format!("tok-{n}")}))
        }
        Some(other) => Response::json(
            404,
            serde_json::json!({"message": format!("No agent named {other} on this instance.")}),
        ),
    }
}

/// A stand-in idgate server: the AWS endpoint as [`aws_answer`], token mounts
/// answering `tok-<sub>` for a token's middle segment, the rest 404.
pub fn idgate() -> StandIn {
    StandIn::start(|r, _| idgate_answer(r))
}

pub fn idgate_answer(r: &Request) -> Response {
    const PREFIX: &str = "/api/v2/workspaceagents/";
    if r.method != "POST" || r.header("Content-Type") != Some("application/json") {
        return Response::json(405, serde_json::json!({"message": "Method not allowed."}));
    }
    let body = r.json();
    let token_answer = |field: &str| match body
        .get(field)
        .and_then(Value::as_str)
        .and_then(|t| t.split('.').nth(1))
    {
        Some(sub) => Response::json(200, serde_json::json!({"session_token": format!("tok-{sub}")})),
        None => Response::json(
            400,
            serde_json::json!({"message": "Validation failed.", "validations": [{"field": field, "detail": "required"}]}),
        ),
    };
    match r.target.strip_prefix(PREFIX) {
        Some("aws-instance-identity") => aws_answer(r),
        Some("azure-instance-identity") => match (body.get("signature"), body.get("encoding")) {
            (Some(Value::String(_)), Some(Value::String(e))) if e == "pkcs7" => {
                Response::json(200, serde_json::json!({"session_token": "tok-azure"}))
            }
            _ => Response::json(400, serde_json::json!({"message": "Validation failed."})),
        },
        Some("google-instance-identity") => token_answer("json_web_token"),
        Some("k8s-instance-identity" | "gha-instance-identity" | "oidc-instance-identity") => token_answer("token"),
        _ => Response::json(404, serde_json::json!({"message": "Route not found."})),
    }
}

/// A loopback port with nothing listening.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("idgate-client-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
