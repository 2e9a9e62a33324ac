//! From the parsed flags to a ready [`Exchanger`]: the source, the endpoint,
//! the retry policy. Every configuration mistake is found here, before any
//! request is made.

use std::time::Duration;

use idgate_client::exchange::RetryNotice;
use idgate_client::sources::aws::Aws;
use idgate_client::sources::azure::Azure;
use idgate_client::sources::github::GithubActions;
use idgate_client::sources::google::Google;
use idgate_client::sources::token_file::TokenFile;
use idgate_client::sources::NAMES;
use idgate_client::{CredentialSource, Endpoint, Error, Exchanger, RetryPolicy};

use crate::args::TokenArgs;

/// The exchanger the flags describe.
pub fn exchanger(a: &TokenArgs) -> Result<Exchanger, Error> {
    let endpoint = Endpoint::parse(&a.agent_url, a.allow_insecure_http)?;
    let source = source(a)?;
    let policy = RetryPolicy {
        timeout: a.timeout,
        retry_all: a.retry_all,
        ..RetryPolicy::default()
    };
    let mut exchanger = Exchanger::new(source, &endpoint, a.mount.as_deref())?
        .agent_name(a.agent_name.as_deref())
        .retry_policy(policy)
        .ca_file(a.ca_file.clone());
    if let Some(t) = a.request_timeout {
        exchanger = exchanger.request_timeout(t);
    }
    if !a.quiet {
        exchanger = exchanger.on_retry(Box::new(report_retry));
    }
    Ok(exchanger)
}

fn source(a: &TokenArgs) -> Result<Box<dyn CredentialSource>, Error> {
    let metadata_url = a.metadata_url.as_deref();
    Ok(match a.auth.as_str() {
        "aws-instance-identity" => Box::new(Aws::new(metadata_url, a.aws_pkcs7)?),
        "azure-instance-identity" => Box::new(Azure::new(metadata_url)?),
        "google-instance-identity" => Box::new(Google::new(
            metadata_url,
            a.service_account.as_deref(),
            a.audience.as_deref(),
        )?),
        "kubernetes" => Box::new(TokenFile::kubernetes(a.token_file.clone())),
        "jwt-file" => Box::new(TokenFile::jwt_file(a.token_file.clone())?),
        "github-actions" => Box::new(GithubActions::from_env(a.audience.as_deref(), a.allow_insecure_http)?),
        other => {
            return Err(Error::Config(format!(
                "--auth {:?}: expected one of {}",
                idgate_client::answer::clean(other),
                NAMES.join(", ")
            )))
        }
    })
}

/// One line on stderr per retry, so an operator watching a boot log sees why
/// the agent is waiting. The error text holds no secret.
fn report_retry(n: &RetryNotice<'_>) {
    eprintln!(
        "idgate-agent: attempt {} failed: {}; trying again in {}",
        n.attempts,
        n.error,
        human(n.delay)
    );
}

fn human(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}s", d.as_secs())
    }
}
