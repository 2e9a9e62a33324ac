//! Each credential source against its stand-in, the exchanger's retries
//! and the token provider, through the library.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use idgate_client::http::Net;
use idgate_client::sources::aws::{Aws, Pkcs7};
use idgate_client::sources::azure::Azure;
use idgate_client::sources::github::GithubActions;
use idgate_client::sources::google::Google;
use idgate_client::sources::token_file::TokenFile;
use idgate_client::sources::Retry;
use idgate_client::{CredentialSource, Endpoint, Error, Exchanger, RetryPolicy, Secret, TokenProvider};
use ureq::http::Method;

const T: Duration = Duration::from_secs(5);

fn get(url: &str, headers: &[(&str, &str)]) -> u16 {
    Net::new(None)
        .metadata()
        .send(Method::GET, url, headers, None, T)
        .unwrap()
        .status
}

fn quick(timeout: Option<Duration>) -> RetryPolicy {
    RetryPolicy {
        timeout,
        first_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

#[test]
fn imds_stand_in_requires_the_session_token() {
    let imds = imds();
    let document = format!("{}/latest/dynamic/instance-identity/document", imds.url());
    assert_eq!(get(&document, &[]), 401);
    assert_eq!(get(&document, &[("X-aws-ec2-metadata-token", "wrong")]), 401);
    assert_eq!(get(&document, &[("X-aws-ec2-metadata-token", IMDS_TOKEN)]), 200);
}

#[test]
fn aws_fetches_the_genuine_document_byte_for_byte() {
    let imds = imds();
    let aws = Aws::new(Some(&imds.url()), None).unwrap();
    let c = aws.fetch(&Net::new(None), T).unwrap();
    assert_eq!(c.get("document").unwrap().expose(), AWS_DOCUMENT);
    assert_eq!(c.get("signature").unwrap().expose(), AWS_SIGNATURE);
    assert!(c.get("pkcs7").is_none());
    let seen = imds.requests();
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].header("X-aws-ec2-metadata-token-ttl-seconds"), Some("60"));
    assert!(seen[1..]
        .iter()
        .all(|r| r.header("X-aws-ec2-metadata-token") == Some(IMDS_TOKEN)));

    let aws = Aws::new(Some(&imds.url()), Some(Pkcs7::Rsa2048)).unwrap();
    let c = aws.fetch(&Net::new(None), T).unwrap();
    assert_eq!(c.get("pkcs7").unwrap().expose(), AWS_RSA2048);
}

#[test]
fn aws_metadata_errors_are_checked() {
    // A service that hands out no IMDSv2 token (IMDS disabled, say).
    let forbidden = StandIn::start(|_, _| Response::new(403, ""));
    let f = Aws::new(Some(&forbidden.url()), None)
        .unwrap()
        .fetch(&Net::new(None), T)
        .unwrap_err();
    assert_eq!(f.retry, Retry::IfRetryAll);
    assert_eq!(f.error.exit_code(), 2);
    // /pkcs7 is not served by the stand-in: its 404 is reported, not sent on.
    let imds = imds();
    let f = Aws::new(Some(&imds.url()), Some(Pkcs7::Pkcs7))
        .unwrap()
        .fetch(&Net::new(None), T)
        .unwrap_err();
    assert!(
        f.error.to_string().contains("pkcs7") && f.error.to_string().contains("404"),
        "{}",
        f.error
    );
    let down = StandIn::start(|_, _| Response::new(503, "").header("Retry-After", "4"));
    let f = Aws::new(Some(&down.url()), None)
        .unwrap()
        .fetch(&Net::new(None), T)
        .unwrap_err();
    assert_eq!(
        f.retry,
        Retry::Yes {
            after: Some(Duration::from_secs(4))
        }
    );
}

#[test]
fn azure_attested_document() {
    let azure = azure_imds();
    assert_eq!(
        get(
            &format!("{}/metadata/attested/document?api-version=2020-09-01", azure.url()),
            &[]
        ),
        400
    );
    let c = Azure::new(Some(&azure.url()))
        .unwrap()
        .fetch(&Net::new(None), T)
        .unwrap();
    assert_eq!(c.get("encoding").unwrap().expose(), "pkcs7");
    assert!(c.get("signature").unwrap().expose().starts_with("MIIL"));
    assert_eq!(azure.requests().last().unwrap().header("Metadata"), Some("true"));
}

#[test]
fn google_identity_token() {
    let gce = gce_metadata();
    let url = format!(
        "{}/computeMetadata/v1/instance/service-accounts/default/identity?audience=coder&format=full",
        gce.url()
    );
    assert_eq!(get(&url, &[]), 403);
    let c = Google::new(Some(&gce.url()), None, None)
        .unwrap()
        .fetch(&Net::new(None), T)
        .unwrap();
    assert_eq!(c.get("json_web_token").unwrap().expose(), jwt("gce-default-coder"));
    let g = Google::new(Some(&gce.url()), Some("ci@p.iam.gserviceaccount.com"), Some("idgate")).unwrap();
    let c = g.fetch(&Net::new(None), T).unwrap();
    assert_eq!(
        c.get("json_web_token").unwrap().expose(),
        jwt("gce-ci%40p.iam.gserviceaccount.com-idgate")
    );
}

#[test]
fn github_actions_id_token() {
    let service = actions_token_service();
    let url = format!("{}/idtoken?api-version=2.0", service.url());
    let gha = GithubActions::new(url.clone(), Secret::new(ACTIONS_REQUEST_TOKEN), Some("idgate"), false).unwrap();
    let c = gha.fetch(&Net::new(None), T).unwrap();
    assert_eq!(c.get("token").unwrap().expose(), jwt("gha-idgate"));
    let wrong = GithubActions::new(url, Secret::new("nope"), Some("idgate"), false).unwrap();
    let f = wrong.fetch(&Net::new(None), T).unwrap_err();
    assert!(f.error.to_string().contains("401"));
    assert!(!f.error.to_string().contains("nope"));
}

#[test]
fn metadata_outage_is_retried_until_it_answers() {
    let flaky = StandIn::start(|r, i| if i < 2 { Response::new(500, "") } else { gce_answer(r) });
    let server = idgate();
    let endpoint = Endpoint::parse(&server.url(), false).unwrap();
    let google = Google::new(Some(&flaky.url()), None, None).unwrap();
    let ex = Exchanger::new(Box::new(google), &endpoint, None)
        .unwrap()
        .retry_policy(quick(Some(T)));
    let token = ex.exchange().unwrap();
    assert_eq!(token.expose(), "tok-gce-default-coder");
    assert_eq!(flaky.requests().len(), 3);
}

#[test]
fn provider_caches_and_refresh_rereads_the_token_file() {
    let dir = scratch("provider");
    let file = dir.join("token");
    std::fs::write(&file, jwt("first")).unwrap();
    let server = idgate();
    let endpoint = Endpoint::parse(&server.url(), false).unwrap();
    let source = TokenFile::kubernetes(Some(file.clone()));
    let ex = Exchanger::new(Box::new(source), &endpoint, Some("k8s")).unwrap();
    assert!(ex.url().ends_with("/api/v2/workspaceagents/k8s-instance-identity"));
    let provider = TokenProvider::new(ex);
    assert_eq!(provider.cached(), None);
    assert_eq!(provider.token().unwrap().expose(), "tok-first");
    assert_eq!(provider.token().unwrap().expose(), "tok-first");
    assert_eq!(
        server.requests().len(),
        1,
        "the second token() is served from the cache"
    );
    // The kubelet rotated the token.
    std::fs::write(&file, jwt("second")).unwrap();
    assert_eq!(provider.refresh().unwrap().expose(), "tok-second");
    assert_eq!(provider.token().unwrap().expose(), "tok-second");
    assert_eq!(server.requests().len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn retries_are_observed_without_secrets() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = StandIn::start(|r, i| {
        if i == 0 {
            Response::json(503, serde_json::json!({"message": "Starting."})).header("Retry-After", "0")
        } else {
            idgate_answer(r)
        }
    });
    let imds = imds();
    let endpoint = Endpoint::parse(&server.url(), false).unwrap();
    let aws = Aws::new(Some(&imds.url()), None).unwrap();
    let seen = calls.clone();
    let ex = Exchanger::new(Box::new(aws), &endpoint, None)
        .unwrap()
        .agent_name(Some("  main "))
        .retry_policy(quick(Some(T)))
        .on_retry(Box::new(move |n| {
            seen.fetch_add(1, Ordering::SeqCst);
            let text = n.error.to_string();
            assert!(text.contains("503") && text.contains("Starting."), "{text}");
            assert!(!text.contains(IMDS_TOKEN) && !text.contains("instanceId"));
        }));
    assert_eq!(ex.exchange().unwrap().expose(), "tok-main");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(server.requests()[1].json()["agent_name"], "main");
}

#[test]
fn refusals_are_final_unless_retry_all() {
    let server = StandIn::start(|_, _| Response::json(404, serde_json::json!({"message": "Workspace not found."})));
    let endpoint = Endpoint::parse(&server.url(), false).unwrap();
    let dir = scratch("refusals");
    std::fs::write(dir.join("t"), jwt("x")).unwrap();
    let source = || Box::new(TokenFile::jwt_file(Some(dir.join("t"))).unwrap());
    let ex = Exchanger::new(source(), &endpoint, Some("oidc"))
        .unwrap()
        .retry_policy(quick(None));
    assert_eq!(
        ex.exchange(),
        Err(Error::Refused {
            status: 404,
            message: "Workspace not found.".into()
        })
    );
    assert_eq!(server.requests().len(), 1);
    let policy = RetryPolicy {
        retry_all: true,
        ..quick(Some(Duration::from_millis(400)))
    };
    let ex = Exchanger::new(source(), &endpoint, Some("oidc"))
        .unwrap()
        .retry_policy(policy);
    assert!(matches!(ex.exchange(), Err(Error::Refused { status: 404, .. })));
    assert!(server.requests().len() > 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
