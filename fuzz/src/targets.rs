//! The fuzz targets: each takes arbitrary bytes, must never panic, hang or exhaust
//! memory, and asserts the properties its parser promises.

use std::sync::OnceLock;

use der::{Decode, Encode};
use idgate_plugin_aws::Aws;
use idgate_plugin_azure::Azure;
use idgate_plugin_gcp::Gcp;
use idgate_plugin_kit::{ber, encoding, pem, signed_data, Provider};
use idgate_plugin_oidc::Oidc;
use x509_cert::Certificate;

use crate::{plugins, NativeCrypto};

/// `ber::to_der`: any input is an error or DER, and DER is a fixed point (the module
/// promises both); the DER element reader accepts what `to_der` produced.
pub fn ber(data: &[u8]) {
    let Ok(der) = ber::to_der(data) else { return };
    assert_eq!(
        ber::to_der(&der).as_deref(),
        Ok(der.as_slice()),
        "to_der is not a fixed point"
    );
    let element = ber::der_element(&der).expect("to_der output is one DER element");
    if element.tag & 0x20 != 0 {
        ber::der_elements(element.content).expect("a constructed DER element's content is DER elements");
    }
}

/// `pem::decode_all` / `decode_one` on arbitrary text: every block decoded round-trips
/// through base64 re-armouring.
pub fn pem(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = pem::decode_one(text, "PUBLIC KEY");
    let Ok(blocks) = pem::certificates(text) else { return };
    let armoured: String = blocks
        .iter()
        .map(|der| {
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                encoding::base64_encode(der)
            )
        })
        .collect();
    assert_eq!(pem::certificates(&armoured).as_ref(), Ok(&blocks), "PEM round trip");
}

/// `signed_data::parse` on arbitrary bytes, then every accessor, and the signature
/// check with the embedded signer certificate's key and with AWS's real keys (the AWS
/// PKCS#7 forms carry no certificate), so the digest and signature paths are reached.
pub fn signed_data(data: &[u8]) {
    let Ok(sd) = signed_data::parse(data) else { return };
    let _ = (sd.content(), sd.content_type(), sd.signer_id(), sd.certificates());
    let _ = (sd.signing_time(), sd.has_signed_attributes());
    let embedded = sd
        .find_signer_certificate(&[])
        .and_then(|der| Certificate::from_der(der).ok())
        .and_then(|cert| cert.tbs_certificate.subject_public_key_info.to_der().ok());
    for spki in embedded.iter().chain(aws_keys()) {
        let _ = sd.verify_signer(&NativeCrypto, spki, true);
    }
}

/// The SubjectPublicKeyInfos of AWS's DSA and ap-southeast-2 RSA-2048 certificates.
fn aws_keys() -> &'static [Vec<u8>] {
    static KEYS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            include_str!("../../tests/data/aws/aws_dsa_pkcs7_signer_cert.pem"),
            include_str!("../../tests/data/aws/aws_rsa2048_ap-southeast-2.pem"),
        ]
        .iter()
        .map(|text| {
            let der = pem::decode_one(text, "CERTIFICATE").expect("test data is PEM");
            let cert = Certificate::from_der(&der).expect("test data is a certificate");
            cert.tbs_certificate
                .subject_public_key_info
                .to_der()
                .expect("re-encodes")
        })
        .collect()
    })
}

/// AWS configured once per process, as the host configures a plugin once at load.
fn aws_config() -> &'static <Aws as Provider>::Config {
    static CONFIG: OnceLock<<Aws as Provider>::Config> = OnceLock::new();
    CONFIG.get_or_init(|| plugins::configure::<Aws>(plugins::AWS_CONFIG))
}

/// Azure configured once per process.
fn azure_config() -> &'static <Azure as Provider>::Config {
    static CONFIG: OnceLock<<Azure as Provider>::Config> = OnceLock::new();
    CONFIG.get_or_init(|| plugins::configure::<Azure>(plugins::AZURE_CONFIG))
}

/// The AWS verifier on the input as the credential JSON.
pub fn aws(data: &[u8]) {
    plugin::<Aws>(data, aws_config(), plugins::AWS_NOW);
}

/// The Azure verifier on the input as the credential JSON.
pub fn azure(data: &[u8]) {
    plugin::<Azure>(data, azure_config(), plugins::AZURE_NOW);
}

/// The AWS verifier on the input as the DER of an `/rsa2048` or `/pkcs7` PKCS#7, sent
/// in the credential's `pkcs7` field: mutations reach the CMS structure directly
/// instead of through its base64 text.
pub fn aws_pkcs7(data: &[u8]) {
    let credential = format!(r#"{{"pkcs7": "{}"}}"#, encoding::base64_encode(data));
    plugin::<Aws>(credential.as_bytes(), aws_config(), plugins::AWS_NOW);
}

/// The Azure verifier on the input as the DER of an attested-data PKCS#7, sent as the
/// credential's `signature`: mutations reach the certificates and the chain checks.
pub fn azure_pkcs7(data: &[u8]) {
    let credential = format!(
        r#"{{"signature": "{}", "encoding": "pkcs7"}}"#,
        encoding::base64_encode(data)
    );
    plugin::<Azure>(credential.as_bytes(), azure_config(), plugins::AZURE_NOW);
}

/// The GCP verifier on the input as the credential JSON.
pub fn gcp(data: &[u8]) {
    static CONFIG: OnceLock<<Gcp as Provider>::Config> = OnceLock::new();
    let config = CONFIG.get_or_init(|| plugins::configure::<Gcp>(plugins::gcp_config()));
    plugin::<Gcp>(data, config, plugins::GCP_NOW);
}

/// The OIDC verifier on the input as the credential JSON.
pub fn oidc(data: &[u8]) {
    static CONFIG: OnceLock<<Oidc as Provider>::Config> = OnceLock::new();
    let config = CONFIG.get_or_init(|| plugins::configure::<Oidc>(plugins::oidc_config()));
    plugin::<Oidc>(data, config, plugins::OIDC_NOW);
}

/// The contract's promises hold whatever the credential: no panic, and an accepted
/// credential names an instance. The host only passes UTF-8 (WIT strings).
fn plugin<P: Provider>(data: &[u8], config: &P::Config, now: i64) {
    let Ok(credential) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(identity) = plugins::verify::<P>(config, credential, now) {
        assert!(
            !identity.instance_id.is_empty(),
            "{} accepted an empty instance ID",
            P::NAME
        );
    }
}

/// The agent's reading of what a server or a metadata service answered
/// (`idgate_client`): an exchange answer for any status, Azure IMDS's attested
/// document and the Actions token service's answer. None may panic, and an
/// answer read as a token holds one. The first two bytes pick the status.
pub fn agent_answer(data: &[u8]) {
    use idgate_client::answer::{decode, Answer};
    let (status, body) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) % 600, rest),
        _ => (200, data),
    };
    let retry_after = std::str::from_utf8(body).ok().and_then(|t| t.lines().next());
    if let Answer::Token(token) = decode(status, retry_after, body) {
        assert!((200..300).contains(&status), "a token from status {status}");
        assert!(!token.expose().is_empty(), "an empty token");
    }
    let _ = idgate_client::sources::azure::parse_attested(body);
    let _ = idgate_client::sources::github::parse_answer(body);
}
