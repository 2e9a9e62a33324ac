//! Test-made trust and credentials, so thousands of distinct, genuinely signed
//! requests can be minted: an AWS region certificate (a self-signed RSA key
//! configured under `[aws.certificates]`), an Azure chain (a root configured
//! under `[azure] roots`, a `metadata.azure.com` leaf that signs attested
//! documents as IMDS does), and a Google-style JWKS file for RS256 tokens.
//! Every credential goes through the plugins' real signature and chain checks.

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{OctetString, SetOfVec};
use der::oid::ObjectIdentifier;
use der::{Any, Decode, Encode, Tag};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use x509_cert::spki::AlgorithmIdentifierOwned;

/// The made-up AWS region whose certificate the benchmark configures.
pub const AWS_REGION: &str = "bench-1";

/// An RSA-2048 key: `rsa` makes it, `ring` signs with it (fast), `rcgen`
/// certifies it.
pub struct Key {
    signer: RsaKeyPair,
    pkcs8_pem: String,
    public: rsa::RsaPublicKey,
}

impl Key {
    /// A fresh key.
    pub fn new() -> Key {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA keygen");
        let der = private.to_pkcs8_der().expect("PKCS#8");
        Key {
            signer: RsaKeyPair::from_pkcs8(der.as_bytes()).expect("ring accepts the key"),
            pkcs8_pem: private.to_pkcs8_pem(LineEnding::LF).expect("PEM").to_string(),
            public: private.to_public_key(),
        }
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let mut sig = vec![0; self.signer.public().modulus_len()];
        self.signer
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig)
            .expect("RSA signing");
        sig
    }

    fn rcgen(&self) -> KeyPair {
        KeyPair::from_pkcs8_pem_and_sign_algo(&self.pkcs8_pem, &rcgen::PKCS_RSA_SHA256).expect("rcgen key")
    }
}

fn params(cn: &str, sans: Vec<String>, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::new(sans).expect("certificate parameters");
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2045, 1, 1);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    p
}

/// Signs AWS instance identity documents (the IMDS `/signature` form).
pub struct Aws {
    key: Key,
    /// The self-signed certificate to configure for [`AWS_REGION`].
    pub cert_pem: String,
}

impl Aws {
    /// A new key and certificate.
    pub fn new() -> Aws {
        let key = Key::new();
        let cert = params("ec2.bench", vec![], false)
            .self_signed(&key.rcgen())
            .expect("self-signed certificate");
        Aws {
            cert_pem: cert.pem(),
            key,
        }
    }

    /// The `[aws]` block.
    pub fn config(&self) -> Value {
        json!({ "certificates": { AWS_REGION: self.cert_pem } })
    }

    /// A request body for `instance_id`, signed now.
    pub fn body(&self, instance_id: &str, agent_name: Option<&str>, now: i64) -> String {
        let document = json!({
            "accountId": "111122223333",
            "architecture": "x86_64",
            "availabilityZone": format!("{AWS_REGION}a"),
            "imageId": "ami-0123456789abcdef0",
            "instanceId": instance_id,
            "instanceType": "t3.micro",
            "pendingTime": idgate_plugin_kit::time::format_rfc3339(now - 60),
            "privateIp": "10.0.0.1",
            "region": AWS_REGION,
            "version": "2017-09-30",
        })
        .to_string();
        let signature = STANDARD.encode(self.key.sign(document.as_bytes()));
        with_name(json!({ "document": document, "signature": signature }), agent_name)
    }
}

/// Signs Azure attested documents as IMDS does: a PKCS#7 carrying the leaf,
/// RSA over the content itself (no signed attributes).
pub struct Azure {
    root_pem: String,
    leaf_der: Vec<u8>,
    leaf_key: Key,
}

impl Azure {
    /// A root and a `metadata.azure.com` leaf.
    pub fn new() -> Azure {
        let root_key = Key::new();
        let root_rcgen = root_key.rcgen();
        let root = params("idgate bench root", vec![], true)
            .self_signed(&root_rcgen)
            .expect("root");
        let leaf_key = Key::new();
        let leaf = params("metadata.azure.com", vec!["metadata.azure.com".into()], false)
            .signed_by(&leaf_key.rcgen(), &root, &root_rcgen)
            .expect("leaf");
        Azure {
            root_pem: root.pem(),
            leaf_der: leaf.der().to_vec(),
            leaf_key,
        }
    }

    /// The `[azure]` block.
    pub fn config(&self) -> Value {
        json!({ "roots": self.root_pem })
    }

    /// A request body for VM `vm_id`, attested now (valid for six hours).
    pub fn body(&self, vm_id: &str, agent_name: Option<&str>, now: i64) -> String {
        self.body_carrying(vm_id, agent_name, now, &[])
    }

    /// [`Azure::body`] whose PKCS#7 also carries the DER certificates `extra`.
    pub fn body_carrying(&self, vm_id: &str, agent_name: Option<&str>, now: i64, extra: &[Vec<u8>]) -> String {
        let azure_time = |t: i64| {
            let s = idgate_plugin_kit::time::format_rfc3339(t);
            format!("{}/{}/{} {} -0000", &s[5..7], &s[8..10], &s[2..4], &s[11..19])
        };
        let document = json!({
            "licenseType": "",
            "nonce": "20260101-000000",
            "plan": {"name": "", "product": "", "publisher": ""},
            "sku": "bench",
            "subscriptionId": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "timeStamp": {"createdOn": azure_time(now - 60), "expiresOn": azure_time(now + 6 * 3600)},
            "vmId": vm_id,
        })
        .to_string();
        let pkcs7 = self.pkcs7(document.as_bytes(), extra);
        with_name(
            json!({ "signature": STANDARD.encode(pkcs7), "encoding": "pkcs7" }),
            agent_name,
        )
    }

    fn pkcs7(&self, content: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
        let alg = |oid: &str| AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap(oid),
            parameters: Some(Any::null()),
        };
        let leaf = x509_cert::Certificate::from_der(&self.leaf_der).expect("leaf DER");
        let signer = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: leaf.tbs_certificate.issuer.clone(),
                serial_number: leaf.tbs_certificate.serial_number.clone(),
            }),
            // Azure names sha256WithRSAEncryption in the digest field.
            digest_alg: alg("1.2.840.113549.1.1.11"),
            signed_attrs: None,
            signature_algorithm: alg("1.2.840.113549.1.1.1"),
            signature: OctetString::new(self.leaf_key.sign(content)).expect("signature"),
            unsigned_attrs: None,
        };
        let signed = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: SetOfVec::try_from(vec![alg("1.2.840.113549.1.1.11")]).expect("set"),
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1"),
                econtent: Some(Any::new(Tag::OctetString, content).expect("content")),
            },
            certificates: Some(CertificateSet(
                SetOfVec::try_from(
                    std::iter::once(leaf)
                        .chain(
                            extra
                                .iter()
                                .map(|c| x509_cert::Certificate::from_der(c).expect("extra DER")),
                        )
                        .map(CertificateChoices::Certificate)
                        .collect::<Vec<_>>(),
                )
                .expect("set"),
            )),
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer]).expect("set")),
        };
        ContentInfo {
            content_type: ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2"),
            content: Any::encode_from(&signed).expect("SignedData"),
        }
        .to_der()
        .expect("ContentInfo")
    }
}

/// Signs Google-style instance identity tokens (RS256, `format=full` claims).
pub struct Gcp {
    key: Key,
}

impl Gcp {
    const KID: &'static str = "idgate-bench";

    /// A new key.
    pub fn new() -> Gcp {
        Gcp { key: Key::new() }
    }

    /// Writes the JWKS to `path` and returns the `[gcp]` block reading it.
    pub fn config(&self, path: &Path) -> Value {
        let jwks = json!({ "keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": Self::KID,
            "n": URL_SAFE_NO_PAD.encode(self.key.public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.key.public.e().to_bytes_be()),
        }]});
        std::fs::write(path, jwks.to_string()).expect("writing the JWKS file");
        json!({ "jwks_file": path.display().to_string() })
    }

    /// A request body for instance `instance_id`, issued now (valid an hour).
    pub fn body(&self, instance_id: &str, agent_name: Option<&str>, now: i64) -> String {
        let header = json!({"alg": "RS256", "kid": Self::KID, "typ": "JWT"});
        let claims = json!({
            "iss": "https://accounts.google.com",
            "aud": "coder",
            "azp": "1234567890",
            "sub": "1234567890",
            "iat": now - 10,
            "exp": now + 3590,
            "google": { "compute_engine": {
                "instance_id": instance_id,
                "instance_name": "bench-vm",
                "project_id": "bench-project",
                "project_number": 1234,
                "zone": "europe-west1-b",
                "instance_creation_timestamp": now - 600,
            }},
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(self.key.sign(signing_input.as_bytes()));
        with_name(
            json!({ "json_web_token": format!("{signing_input}.{signature}") }),
            agent_name,
        )
    }
}

fn with_name(mut body: Value, agent_name: Option<&str>) -> String {
    if let Some(name) = agent_name {
        body["agent_name"] = json!(name);
    }
    body.to_string()
}

/// Mints `bodies(i)` for `0..n` on every core.
pub fn mint(n: usize, body: impl Fn(usize) -> String + Sync) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let body = &body;
                s.spawn(move || (start..(start + chunk).min(n)).map(body).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("minting thread"))
            .collect()
    })
}
