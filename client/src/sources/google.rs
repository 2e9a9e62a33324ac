//! Google Cloud: an identity token of the instance's service account from
//! the Compute Engine metadata server.
//!
//! `GET /computeMetadata/v1/instance/service-accounts/<account>/identity?audience=<aud>&format=full`
//! with `Metadata-Flavor: Google` (the server refuses requests without it).
//! `format=full` puts the instance's identity (`google.compute_engine`) in the
//! token, which is what idgate and Coder match on. The answer is the JWT itself.

use std::time::Duration;

use ureq::http::Method;

use super::{metadata_base, metadata_body, percent_encode, text, Credential, CredentialSource, Failure, Retry};
use crate::error::Error;
use crate::http::Net;
use crate::secret::Secret;

/// The metadata server's documented name.
pub const DEFAULT_HOST: &str = "metadata.google.internal";

/// Google's variable for another metadata host (`HOST[:PORT]`, no scheme).
pub const HOST_ENV: &str = "GCE_METADATA_HOST";

/// Coder's audience, which idgate's `gcp` mount expects by default.
pub const DEFAULT_AUDIENCE: &str = "coder";

/// The instance's default service account.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// `google-instance-identity`.
#[derive(Debug, Clone)]
pub struct Google {
    base: String,
    service_account: String,
    audience: String,
}

impl Google {
    /// The server is `metadata_url`, else `http://$GCE_METADATA_HOST`, else
    /// [`DEFAULT_HOST`]; the account and audience default to Coder's.
    pub fn new(
        metadata_url: Option<&str>,
        service_account: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Google, Error> {
        let env = std::env::var(HOST_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|h| format!("http://{h}"));
        let service_account = service_account.unwrap_or(DEFAULT_SERVICE_ACCOUNT);
        if service_account.is_empty() {
            return Err(Error::Config("--service-account is empty".into()));
        }
        let audience = audience.unwrap_or(DEFAULT_AUDIENCE);
        if audience.is_empty() {
            return Err(Error::Config("--audience is empty".into()));
        }
        Ok(Google {
            base: metadata_base(metadata_url, env, &format!("http://{DEFAULT_HOST}"))?,
            service_account: service_account.to_string(),
            audience: audience.to_string(),
        })
    }

    /// The identity URL (the account and audience percent-encoded).
    pub fn identity_url(&self) -> String {
        format!(
            "{}/computeMetadata/v1/instance/service-accounts/{}/identity?audience={}&format=full",
            self.base,
            percent_encode(&self.service_account),
            percent_encode(&self.audience)
        )
    }
}

impl CredentialSource for Google {
    fn name(&self) -> &'static str {
        "google-instance-identity"
    }

    fn default_route(&self) -> Option<&'static str> {
        Some("google-instance-identity")
    }

    fn fetch(&self, net: &Net, timeout: Duration) -> Result<Credential, Failure> {
        let what = "Google metadata server (identity token)";
        let reply = net.metadata().send(
            Method::GET,
            &self.identity_url(),
            &[("Metadata-Flavor", "Google")],
            None,
            timeout,
        );
        let body = metadata_body(
            what,
            "is this a Compute Engine instance, with that service account attached?",
            reply,
        )?;
        let jwt = text(what, body)?.trim().to_string();
        if !super::token_file::looks_like_jwt(&jwt) {
            return Err(Failure {
                error: Error::Config(format!("{what}: the answer is not a JWT")),
                retry: Retry::IfRetryAll,
            });
        }
        Ok(Credential::new().with("json_web_token", Secret::new(jwt)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_url() {
        let g = Google::new(
            Some("http://127.0.0.1:1"),
            Some("sa@p.iam.gserviceaccount.com"),
            Some("https://idgate/x"),
        )
        .unwrap();
        assert_eq!(
            g.identity_url(),
            "http://127.0.0.1:1/computeMetadata/v1/instance/service-accounts/sa%40p.iam.gserviceaccount.com/identity?audience=https%3A%2F%2Fidgate%2Fx&format=full"
        );
        let g = Google::new(Some("http://m"), None, None).unwrap();
        assert!(g
            .identity_url()
            .ends_with("/service-accounts/default/identity?audience=coder&format=full"));
        assert!(Google::new(Some("http://m"), Some(""), None).is_err());
    }
}
