//! AWS: the instance identity document and its signature from IMDSv2.
//!
//! IMDSv2 only (AWS's recommended mode; IMDSv1 can be turned off per instance):
//! `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` gives a
//! session token, sent as `X-aws-ec2-metadata-token` on each `GET` under
//! `/latest/dynamic/instance-identity/`. The document is forwarded byte for
//! byte: AWS signs those exact bytes. The signature is forwarded as served
//! (base64 with line breaks), as Coder's agent does.

use std::time::Duration;

use ureq::http::Method;

use super::{metadata_base, metadata_body, text, Credential, CredentialSource, Failure};
use crate::error::Error;
use crate::http::Net;
use crate::secret::Secret;

/// The documented IPv4 address of the instance metadata service.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// The AWS SDKs' variable for another endpoint (`http://[fd00:ec2::254]` on IPv6-only instances).
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";

/// The IMDS session token only has to outlive one attempt's three requests.
const TOKEN_TTL_SECS: &str = "60";

/// Which PKCS#7 form of the document to send as `pkcs7`, besides the
/// signature (idgate's AWS plugin accepts either; Coder's server ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkcs7 {
    /// `/pkcs7`: DSA-SHA1 (RSA-SHA256 in some regions).
    Pkcs7,
    /// `/rsa2048`: RSA-2048 with SHA-256.
    Rsa2048,
}

impl Pkcs7 {
    /// From the flag's value: `pkcs7` or `rsa2048`.
    pub fn parse(value: &str) -> Option<Pkcs7> {
        match value {
            "pkcs7" => Some(Pkcs7::Pkcs7),
            "rsa2048" => Some(Pkcs7::Rsa2048),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Pkcs7::Pkcs7 => "pkcs7",
            Pkcs7::Rsa2048 => "rsa2048",
        }
    }
}

/// `aws-instance-identity`.
#[derive(Debug, Clone)]
pub struct Aws {
    base: String,
    pkcs7: Option<Pkcs7>,
}

impl Aws {
    /// The endpoint is `metadata_url`, else `$AWS_EC2_METADATA_SERVICE_ENDPOINT`,
    /// else [`DEFAULT_ENDPOINT`].
    pub fn new(metadata_url: Option<&str>, pkcs7: Option<Pkcs7>) -> Result<Aws, Error> {
        let env = std::env::var(ENDPOINT_ENV).ok().filter(|v| !v.is_empty());
        Ok(Aws {
            base: metadata_base(metadata_url, env, DEFAULT_ENDPOINT)?,
            pkcs7,
        })
    }

    fn get(&self, net: &Net, token: &Secret, name: &str, timeout: Duration) -> Result<String, Failure> {
        let url = format!("{}/latest/dynamic/instance-identity/{name}", self.base);
        let what = format!("AWS instance metadata ({name})");
        let reply = net.metadata().send(
            Method::GET,
            &url,
            &[("X-aws-ec2-metadata-token", token.expose())],
            None,
            timeout,
        );
        let body = metadata_body(&what, "is this an EC2 instance with instance metadata enabled?", reply)?;
        text(&what, body)
    }
}

impl CredentialSource for Aws {
    fn name(&self) -> &'static str {
        "aws-instance-identity"
    }

    fn default_route(&self) -> Option<&'static str> {
        Some("aws-instance-identity")
    }

    fn fetch(&self, net: &Net, timeout: Duration) -> Result<Credential, Failure> {
        let what = "AWS instance metadata (IMDSv2 token)";
        let reply = net.metadata().send(
            Method::PUT,
            &format!("{}/latest/api/token", self.base),
            &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECS)],
            // An empty body with `Content-Length: 0`, as the AWS SDKs send (not chunked).
            Some(b""),
            timeout,
        );
        let body = metadata_body(
            what,
            "is instance metadata enabled, and its hop limit high enough for a container?",
            reply,
        )?;
        let token = Secret::new(text(what, body)?.trim());
        let document = self.get(net, &token, "document", timeout)?;
        let signature = self.get(net, &token, "signature", timeout)?;
        let mut credential = Credential::new()
            .with("document", Secret::new(document))
            .with("signature", Secret::new(signature));
        if let Some(form) = self.pkcs7 {
            credential = credential.with("pkcs7", Secret::new(self.get(net, &token, form.path(), timeout)?));
        }
        Ok(credential)
    }
}
