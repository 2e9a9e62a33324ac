//! A JWT read from a file: a Kubernetes service-account token (`kubernetes`)
//! or any compact JWT an operator drops in place (`jwt-file`).
//!
//! The file is read again at every fetch: the kubelet rewrites a projected
//! token before it expires, and a token cached from boot would be refused
//! an hour later.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Credential, CredentialSource, Failure, Retry};
use crate::error::Error;
use crate::http::Net;
use crate::secret::Secret;

/// Where the kubelet mounts the pod's service-account token.
pub const KUBERNETES_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Largest token file read; JWTs are a few KiB.
pub const MAX_TOKEN_FILE_BYTES: usize = 64 * 1024;

/// Which of the two sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `kubernetes`: the projected service-account token.
    Kubernetes,
    /// `jwt-file`: any file holding a compact JWT.
    JwtFile,
}

/// `kubernetes` or `jwt-file`.
#[derive(Debug, Clone)]
pub struct TokenFile {
    kind: Kind,
    path: PathBuf,
}

impl TokenFile {
    /// The pod's token at `path`, by default [`KUBERNETES_TOKEN_PATH`].
    pub fn kubernetes(path: Option<PathBuf>) -> TokenFile {
        TokenFile {
            kind: Kind::Kubernetes,
            path: path.unwrap_or_else(|| KUBERNETES_TOKEN_PATH.into()),
        }
    }

    /// A JWT file; it has no default location.
    pub fn jwt_file(path: Option<PathBuf>) -> Result<TokenFile, Error> {
        let path = path.ok_or_else(|| Error::Config("--auth jwt-file needs --token-file PATH".into()))?;
        Ok(TokenFile {
            kind: Kind::JwtFile,
            path,
        })
    }
}

/// Reads a JWT from `path`: trimmed, at most [`MAX_TOKEN_FILE_BYTES`], and
/// shaped like a compact JWS. Errors name the file, never its content.
pub fn read_jwt(path: &Path) -> Result<Secret, Failure> {
    let shown = path.display();
    // A token file that is missing or unreadable may appear later (a volume
    // still being mounted): worth retrying under --retry-all, not otherwise.
    let failed = |why: String| Failure {
        error: Error::Config(format!("token file {shown}: {why}")),
        retry: Retry::IfRetryAll,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_TOKEN_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| failed(e.to_string()))?;
    if bytes.len() > MAX_TOKEN_FILE_BYTES {
        return Err(failed(format!("larger than {MAX_TOKEN_FILE_BYTES} bytes")));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| failed("not text".into()))?
        .trim();
    if !looks_like_jwt(text) {
        return Err(failed("does not hold a compact JWT (header.payload.signature)".into()));
    }
    Ok(Secret::new(text))
}

/// Three non-empty base64url segments separated by dots: the shape of a
/// signed compact JWT. The server verifies the rest.
pub fn looks_like_jwt(text: &str) -> bool {
    let segments: Vec<&str> = text.split('.').collect();
    segments.len() == 3
        && segments
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

impl CredentialSource for TokenFile {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Kubernetes => "kubernetes",
            Kind::JwtFile => "jwt-file",
        }
    }

    fn default_route(&self) -> Option<&'static str> {
        None
    }

    fn fetch(&self, _net: &Net, _timeout: Duration) -> Result<Credential, Failure> {
        Ok(Credential::new().with("token", read_jwt(&self.path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shapes() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        for bad in ["", "a.b", "a.b.c.d", "a..c", "a.b.", "a.b.c=", "a.b.c d", "a+b.c.d"] {
            assert!(!looks_like_jwt(bad), "{bad}");
        }
    }

    #[test]
    fn files() {
        let dir = std::env::temp_dir().join(format!("idgate-client-tf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "  aaa.bbb.ccc\n").unwrap();
        assert_eq!(read_jwt(&f).unwrap().expose(), "aaa.bbb.ccc");
        std::fs::write(&f, "secret-not-a-jwt").unwrap();
        let e = read_jwt(&f).unwrap_err();
        assert!(!e.error.to_string().contains("secret-not-a-jwt"));
        std::fs::write(&f, vec![b'a'; MAX_TOKEN_FILE_BYTES + 1]).unwrap();
        assert!(read_jwt(&f).is_err());
        assert_eq!(read_jwt(&dir.join("missing")).unwrap_err().retry, Retry::IfRetryAll);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(TokenFile::jwt_file(None).is_err());
    }
}
