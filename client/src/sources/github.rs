//! GitHub Actions: the job's OIDC ID token.
//!
//! A job with `permissions: id-token: write` gets two variables from the
//! runner: `ACTIONS_ID_TOKEN_REQUEST_URL` (which already has a query) and
//! `ACTIONS_ID_TOKEN_REQUEST_TOKEN`. `GET <url>&audience=<aud>` with
//! `Authorization: Bearer <request token>` answers `{"value": "<JWT>"}`.

use std::time::Duration;

use serde_json::Value;
use ureq::http::Method;

use super::token_file::looks_like_jwt;
use super::{metadata_body, percent_encode, Credential, CredentialSource, Failure, Retry};
use crate::answer::MAX_ANSWER_BYTES;
use crate::endpoint::check_secret_url;
use crate::error::Error;
use crate::http::Net;
use crate::secret::Secret;

/// The runner's variable naming the token service.
pub const URL_ENV: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The runner's variable holding the bearer token for it.
pub const TOKEN_ENV: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// `github-actions`.
#[derive(Debug, Clone)]
pub struct GithubActions {
    request_url: String,
    request_token: Secret,
    audience: Option<String>,
}

impl GithubActions {
    /// From the runner's variables. Without `audience`, GitHub's default
    /// audience (the repository owner's URL) is what the token carries.
    pub fn from_env(audience: Option<&str>, allow_insecure_http: bool) -> Result<GithubActions, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let missing = || {
            Error::Config(format!(
                "{URL_ENV} and {TOKEN_ENV} are not set: run in a GitHub Actions job with `permissions: id-token: write`"
            ))
        };
        let request_url = var(URL_ENV).ok_or_else(missing)?;
        let request_token = Secret::new(var(TOKEN_ENV).ok_or_else(missing)?);
        GithubActions::new(request_url, request_token, audience, allow_insecure_http)
    }

    /// From explicit values; the URL is checked like the agent URL (the request token goes there).
    pub fn new(
        request_url: String,
        request_token: Secret,
        audience: Option<&str>,
        allow_insecure_http: bool,
    ) -> Result<GithubActions, Error> {
        check_secret_url(&request_url, allow_insecure_http)
            .map_err(|why| Error::Config(format!("{URL_ENV}: {why}")))?;
        Ok(GithubActions {
            request_url,
            request_token,
            audience: audience.map(str::to_string),
        })
    }

    /// The request URL with the audience added to its query.
    pub fn token_url(&self) -> String {
        match &self.audience {
            None => self.request_url.clone(),
            Some(aud) => {
                let sep = if self.request_url.contains('?') { '&' } else { '?' };
                format!("{}{sep}audience={}", self.request_url, percent_encode(aud))
            }
        }
    }
}

/// The JWT of the token service's answer `{"value": "..."}`. Pure; no panic on any input.
pub fn parse_answer(body: &[u8]) -> Result<String, String> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err("the answer is too large".into());
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_string())?;
    match value.get("value") {
        Some(Value::String(jwt)) if looks_like_jwt(jwt) => Ok(jwt.clone()),
        _ => Err("the answer has no JWT in \"value\"".into()),
    }
}

impl CredentialSource for GithubActions {
    fn name(&self) -> &'static str {
        "github-actions"
    }

    fn default_route(&self) -> Option<&'static str> {
        None
    }

    fn fetch(&self, net: &Net, timeout: Duration) -> Result<Credential, Failure> {
        let what = "GitHub Actions token service";
        let url = self.token_url();
        let http = net.web(&url).map_err(|error| Failure {
            error,
            retry: Retry::No,
        })?;
        let bearer = format!("Bearer {}", self.request_token.expose());
        let reply = http.send(
            Method::GET,
            &url,
            &[("Authorization", &bearer), ("Accept", "application/json")],
            None,
            timeout,
        );
        let body = metadata_body(what, "does the job have `permissions: id-token: write`?", reply)?;
        let jwt = parse_answer(&body).map_err(|why| Failure {
            error: Error::Config(format!("{what}: {why}")),
            retry: Retry::IfRetryAll,
        })?;
        Ok(Credential::new().with("token", Secret::new(jwt)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_answers() {
        let url = "https://pipelines.example/x/idtoken?api-version=2.0".to_string();
        let g = GithubActions::new(url.clone(), Secret::new("t"), Some("idgate"), false).unwrap();
        assert_eq!(g.token_url(), format!("{url}&audience=idgate"));
        let g = GithubActions::new(url.clone(), Secret::new("t"), None, false).unwrap();
        assert_eq!(g.token_url(), url);
        assert!(GithubActions::new("http://pipelines.example/x".into(), Secret::new("t"), None, false).is_err());
        assert_eq!(parse_answer(br#"{"count":1,"value":"a.b.c"}"#).unwrap(), "a.b.c");
        for bad in [
            &b""[..],
            b"{}",
            br#"{"value":""}"#,
            br#"{"value":"nojwt"}"#,
            br#"{"value":1}"#,
        ] {
            assert!(parse_answer(bad).is_err());
        }
    }
}
