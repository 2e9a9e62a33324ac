//! TLS for `idgate serve`: the certificate chain and key from PEM files, served
//! with rustls (the *ring* provider, as the rest of idgate), TLS 1.2 and 1.3,
//! HTTP/2 and HTTP/1.1 offered by ALPN. The certificate can be replaced while
//! serving (a reload re-reads the files).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Largest PEM file read: a long chain is a few tens of KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The ALPN protocols offered, preferred first (Go's client asks for both).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A TLS acceptor for the chain in `cert_file` (leaf first) and the private
/// key in `key_file` (PKCS#8, PKCS#1 or SEC1 PEM). Refuses a chain whose leaf
/// does not belong to the key. Warns when the key file is readable by group or
/// others, as sshd does for a host key.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    reloadable_acceptor(cert_file, key_file).map(|(acceptor, _)| acceptor)
}

/// [`acceptor`], with the handle that swaps the certificate it serves
/// ([`Certificates::replace`]): a reload renews the certificate without
/// touching the listener or the connections already open.
pub fn reloadable_acceptor(
    cert_file: &Path,
    key_file: &Path,
) -> anyhow::Result<(tokio_rustls::TlsAcceptor, Arc<Certificates>)> {
    let certificates = Arc::new(Certificates {
        current: RwLock::new(Arc::new(certified_key(cert_file, key_file)?)),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), certificates))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key `serve` presents, replaceable while serving:
/// each handshake takes the one current when it starts.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads and checks `cert_file` and `key_file` as [`acceptor`] does and,
    /// only if they make a usable certificate, serves it from the next
    /// handshake on. On error the current certificate stays.
    pub fn prepare(cert_file: &Path, key_file: &Path) -> anyhow::Result<PreparedCertificate> {
        certified_key(cert_file, key_file).map(|key| PreparedCertificate(Arc::new(key)))
    }

    /// Serves `next` from the next handshake on.
    pub fn replace(&self, next: PreparedCertificate) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next.0;
    }
}

/// A certificate read and checked, ready for [`Certificates::replace`].
pub struct PreparedCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The chain and key from the two files, checked to belong together.
fn certified_key(cert_file: &Path, key_file: &Path) -> anyhow::Result<CertifiedKey> {
    let (certs, _) = read_pem(cert_file).with_context(|| format!("reading [tls] cert_file {}", cert_file.display()))?;
    let chain = CertificateDer::pem_slice_iter(&certs)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("[tls] cert_file {} is not PEM certificates", cert_file.display()))?;
    if chain.is_empty() {
        bail!("[tls] cert_file {} holds no CERTIFICATE block", cert_file.display());
    }
    let (key, mode) = read_pem(key_file).with_context(|| format!("reading [tls] key_file {}", key_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key)
        .with_context(|| format!("[tls] key_file {} holds no private key in PEM", key_file.display()))?;
    if mode & 0o077 != 0 {
        tracing::warn!(
            key_file = %key_file.display(),
            mode = format!("{:o}", mode & 0o777),
            "the TLS private key is readable by group or others; chmod 600 it"
        );
    }
    // `from_der` also checks that the leaf's public key is the key's.
    CertifiedKey::from_der(chain, key, &provider()).with_context(|| {
        format!(
            "[tls] cert_file {} and key_file {} do not make a usable certificate",
            cert_file.display(),
            key_file.display()
        )
    })
}

/// Reads a PEM file through one descriptor, with its mode as seen on that
/// descriptor; refuses anything but a regular file of bounded size.
fn read_pem(path: &Path) -> anyhow::Result<(Vec<u8>, u32)> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    if meta.len() > MAX_PEM_BYTES {
        bail!("larger than {MAX_PEM_BYTES} bytes");
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES).read_to_end(&mut bytes)?;
    Ok((bytes, meta.mode()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let missing = dir.path().join("missing.pem");
        let e = acceptor(&missing, &junk).err().unwrap();
        assert!(format!("{e:#}").contains("reading [tls] cert_file"), "{e:#}");
        let e = acceptor(&junk, &junk).err().unwrap();
        assert!(format!("{e:#}").contains("holds no CERTIFICATE"), "{e:#}");
        let e = acceptor(dir.path(), &junk).err().unwrap();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
    }
}
