//! Malformed and unusual bodies get Coder's answers: Coder reads a body with
//! Go's `json.Decoder` into its `agentsdk` struct (`httpapi.Read`), then checks
//! the AWS signature before anything in the document counts. Each case runs
//! through the real router, the real AWS plugin and a real PostgreSQL, with
//! the genuine AWS vector from Coder's own tests.

use idgate::api::ApiLimits;
use idgate_tests::pg::{fresh_database, TestDb};
use idgate_tests::{root, sandbox};
use serde_json::{json, Value};

use crate::http::{post, register, serve_router};

const INSTANCE: &str = "i-076e9b91f7c420782";

/// A router with AWS's default configuration and one agent on the genuine
/// instance: its database, base URL and the agent's token.
async fn serve() -> (TestDb, String, String) {
    let db = fresh_database().await;
    let base = serve_router(sandbox().clone(), "", db.pool.clone(), ApiLimits::default()).await;
    let token = register(&db, "w", INSTANCE, "main").await;
    (db, base, token)
}

/// The genuine document and signature.
fn genuine() -> (String, String) {
    let body: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("examples/aws-request.json")).unwrap()).unwrap();
    (
        body["document"].as_str().unwrap().to_string(),
        body["signature"].as_str().unwrap().to_string(),
    )
}

async fn aws(base: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let (status, body, _) = post(base, "aws-instance-identity", body).await;
    (status, body)
}

fn invalid_json(detail: &str) -> Value {
    json!({"message": "Request body must be valid JSON.", "detail": detail})
}

#[tokio::test(flavor = "multi_thread")]
async fn data_after_the_first_json_value_is_ignored() {
    let (_db, base, token) = serve().await;
    let (document, signature) = genuine();
    let body = format!(
        "{} }} trailing {{\"not\": json",
        json!({"document": document, "signature": signature})
    );
    assert_eq!(aws(&base, body).await, (200, json!({"session_token": token})));
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_match_field_names_case_insensitively() {
    let (_db, base, token) = serve().await;
    let (document, signature) = genuine();
    // `ſ` (long s) upper-cases to `S`, so Go matches it to `signature` too.
    let body = json!({"DOCUMENT": document, "ſignature": signature, "Agent_Name": "main"});
    assert_eq!(
        aws(&base, body.to_string()).await,
        (200, json!({"session_token": token}))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_of_any_shape_and_depth_are_ignored() {
    let (_db, base, token) = serve().await;
    let (document, signature) = genuine();
    // Deeper than serde_json's default recursion limit, within Go's 10,000.
    let deep = format!("{}1e999{}", "[".repeat(2_000), "]".repeat(2_000));
    let body = format!(
        r#"{{"extra": {deep}, "document": {}, "signature": {}, "n": null}}"#,
        json!(document),
        json!(signature)
    );
    assert_eq!(aws(&base, body).await, (200, json!({"session_token": token})));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_number_where_a_string_belongs_is_invalid_json() {
    let (_db, base, _) = serve().await;
    let (document, _) = genuine();
    assert_eq!(
        aws(&base, json!({"document": document, "signature": 5}).to_string()).await,
        (
            400,
            invalid_json(
                "json: cannot unmarshal number into Go struct field AWSInstanceIdentityToken.signature of type string"
            )
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_string_agent_name_is_invalid_json() {
    let (_db, base, _) = serve().await;
    let (document, signature) = genuine();
    let body = json!({"document": document, "signature": signature, "agent_name": ["main"]});
    assert_eq!(
        aws(&base, body.to_string()).await,
        (
            400,
            invalid_json(
                "json: cannot unmarshal array into Go struct field AWSInstanceIdentityToken.agent_name of type string"
            )
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_is_not_an_object_is_invalid_json() {
    let (_db, base, _) = serve().await;
    assert_eq!(
        aws(&base, "[\"sig\", \"doc\"]").await,
        (
            400,
            invalid_json("json: cannot unmarshal array into Go value of type agentsdk.AWSInstanceIdentityToken")
        )
    );
    let (status, body, _) = post(&base, "azure-instance-identity", "\"x\"").await;
    assert_eq!(
        (status, body),
        (
            400,
            invalid_json("json: cannot unmarshal string into Go value of type agentsdk.AzureInstanceIdentityToken")
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_body_is_eof() {
    let (_db, base, _) = serve().await;
    assert_eq!(aws(&base, "").await, (400, invalid_json("EOF")));
    assert_eq!(
        aws(&base, "{\"document\":").await,
        (400, invalid_json("unexpected EOF"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_syntax_error_is_invalid_json_with_gos_detail() {
    let (_db, base, _) = serve().await;
    assert_eq!(
        aws(&base, "{\"document\": 'x'}").await,
        (
            400,
            invalid_json("invalid character '\\'' looking for beginning of value")
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn null_is_the_zero_value_and_fails_validation() {
    let (_db, base, _) = serve().await;
    let required =
        |field: &str| json!({"field": field, "detail": "Validation failed for tag \"required\" with value: \"\""});
    assert_eq!(
        aws(&base, "null").await,
        (
            400,
            json!({"message": "Validation failed.", "validations": [required("signature"), required("document")]})
        )
    );
    let (document, _) = genuine();
    assert_eq!(
        aws(&base, json!({"document": document, "signature": null}).to_string()).await,
        (
            400,
            json!({"message": "Validation failed.", "validations": [required("signature")]})
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_genuine_signature_over_another_document_is_invalid_aws_identity() {
    let (_db, base, _) = serve().await;
    let (_, signature) = genuine();
    // Coder's `FailBad`: the real signature over `{}`.
    let (status, body) = aws(&base, json!({"document": "{}", "signature": signature}).to_string()).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("Invalid AWS identity.")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_document_is_invalid_aws_identity_however_it_was_broken() {
    let (_db, base, _) = serve().await;
    let (document, signature) = genuine();
    for tampered in [
        document.replace(INSTANCE, "i-0000000000000000f"),
        document.replace(&format!("\"{INSTANCE}\""), "42"),
        document.replace("\"region\" : \"us-east-1\"", "\"zone\" : \"us-east-1\""),
        format!("{document} trailing"),
        document[..document.len() / 2].to_string(),
        "not json".to_string(),
    ] {
        let (status, body) = aws(&base, json!({"document": tampered, "signature": signature}).to_string()).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (401, Some("Invalid AWS identity.")),
            "{tampered}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_that_is_not_base64_is_invalid_aws_identity() {
    let (_db, base, _) = serve().await;
    let (document, _) = genuine();
    let (status, body) = aws(
        &base,
        json!({"document": document, "signature": "not base64!"}).to_string(),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("Invalid AWS identity.")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_the_document_is_replaced_and_fails_the_signature() {
    let (_db, base, _) = serve().await;
    let (document, signature) = genuine();
    // A raw 0xff inside the document string: Go reads it as U+FFFD, so the body
    // is valid JSON and the (changed) document fails its signature.
    let body = json!({"document": document.replace("x86_64", "x86_@@"), "signature": signature}).to_string();
    let (before, after) = body.split_once("@@").unwrap();
    let raw = [before.as_bytes(), &[0xff], after.as_bytes()].concat();
    let (status, body) = aws(&base, raw).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("Invalid AWS identity.")),
        "{body}"
    );
}
