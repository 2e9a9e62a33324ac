//! The certificates an `https` server is verified against: the system's
//! roots, plus the operator's `--ca-file` (a private CA in front of idgate).
//!
//! rustls runs on *ring*, the provider the rest of the workspace uses; the
//! roots come from the platform's store through `rustls-native-certs` (which
//! also honours `SSL_CERT_FILE` and `SSL_CERT_DIR`), not from a bundled list
//! that would go stale on a long-lived image.

use std::path::Path;
use std::sync::Arc;

use ureq::tls::{parse_pem, Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

use crate::error::Error;

/// Largest CA file read: a bundle of every public root is ~250 KiB.
const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The system's roots and those of `ca_file`. A CA file that cannot be read
/// or holds no certificate is a configuration error; so is ending up with no
/// root at all, which would otherwise surface as an endless series of
/// "unknown issuer" retries.
pub fn load_roots(ca_file: Option<&Path>) -> Result<Vec<Certificate<'static>>, Error> {
    // Unreadable entries in the system store are skipped, as every TLS client does.
    let native = rustls_native_certs::load_native_certs();
    let mut roots: Vec<Certificate<'static>> = native
        .certs
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    if let Some(path) = ca_file {
        roots.extend(read_ca_file(path)?);
    }
    if roots.is_empty() {
        return Err(Error::Config(
            "no trusted CA certificates: the system store is empty or missing; give --ca-file".into(),
        ));
    }
    Ok(roots)
}

/// The certificates of a PEM file.
pub fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, Error> {
    use std::io::Read;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| Error::Config(format!("CA file {shown}: {e}")))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| Error::Config(format!("CA file {shown}: {e}")))?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(Error::Config(format!(
            "CA file {shown}: larger than {MAX_CA_FILE_BYTES} bytes"
        )));
    }
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => return Err(Error::Config(format!("CA file {shown}: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(Error::Config(format!("CA file {shown}: no PEM certificate in it")));
    }
    Ok(certs)
}

/// rustls on *ring*, trusting exactly `roots`.
pub fn config(roots: Vec<Certificate<'static>>) -> TlsConfig {
    TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_are_configuration() {
        let dir = std::env::temp_dir().join(format!("idgate-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        assert!(matches!(read_ca_file(&empty), Err(Error::Config(m)) if m.contains("no PEM certificate")));
        assert!(matches!(read_ca_file(&dir.join("missing.pem")), Err(Error::Config(_))));
        let cert = dir.join("aws.pem");
        let pem = include_bytes!("../../tests/data/aws/aws_rsa2048_ap-southeast-2.pem");
        std::fs::write(&cert, pem).unwrap();
        assert_eq!(read_ca_file(&cert).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
