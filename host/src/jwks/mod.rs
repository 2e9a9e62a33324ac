//! Each mount's key set: Google's signing keys for the `gcp` plugin, any
//! mount's `jwks_url` or `jwks_file`.
//!
//! Plugins have no network, so the host fetches the JWKS, caches it for as long
//! as the response's `Cache-Control: max-age` (or `Expires`) allows, and hands
//! it to the plugin on every call
//! through the contract's `host-keys` import (to a 0.1.0 plugin: as the `jwks`
//! member of its configuration, which the sandbox adds).
//!
//! Flow per request (see `authenticate.rs`): [`KeyCache::key_set`] → plugin. If the plugin answers `untrusted-signer` with [`UNKNOWN_KID_MARKER`] in
//! its reason (Google rotated in a key since the last fetch),
//! [`KeyCache::refresh_for_unknown_kid`] refetches at most once per
//! `jwks_min_refresh_secs`, and the call is retried once if it did.
//!
//! A `jwks_file` decides trust like any file a mount names: it is read through
//! `file_trust` (owner and mode checked on the descriptor it is read from) when
//! the cache is made — at start-up and on each reload (SIGHUP) — and **never
//! again**: not on a timer, not on an unknown `kid`. A key file someone else
//! could write, or one replaced behind the host's back, never becomes trust
//! without the operator's reload.
//!
//! Failures: a refresh that fails keeps serving the last good set until its
//! expiry plus a grace period (one hour by default); after that, and when no set
//! was ever had, [`KeysUnavailable`] (HTTP 503, not 401: the credential may be
//! fine).

mod fetch;

pub use fetch::{lifetime, parse_http_date};

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// Where Google publishes the keys that sign identity tokens.
pub const DEFAULT_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// What the GCP plugin's reason contains when the token's `kid` is not in the
/// key set it was given (the kit's `jwk::UNKNOWN_KID_PREFIX`, which every JWT
/// plugin built on the kit uses).
pub const UNKNOWN_KID_MARKER: &str = idgate_plugin_kit::jwk::UNKNOWN_KID_PREFIX;

/// `[gcp]` keys that configure this cache and are not passed to the plugin.
pub const HOST_KEYS: [&str; 3] = ["jwks_url", "jwks_file", "jwks_min_refresh_secs"];

/// Default least time between two refreshes forced by unknown `kid`s.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(60);

/// How long a set is served past its expiry while refreshes fail.
pub const DEFAULT_STALE_GRACE: Duration = Duration::from_secs(3600);

/// One fetch's time limit (connect, headers and body).
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS accepted; Google's is about 2 KiB.
pub(crate) const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Lifetime of a response without cache headers (a key file's set never
/// expires: it is replaced only by a reload).
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Bounds on a lifetime taken from the headers: at least a second so a
/// `no-cache` server is not fetched for every request; at most a day.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(1);
pub(crate) const MAX_TTL: Duration = Duration::from_secs(86_400);
/// After a failed fetch, callers get the stale set (or the error) without a new
/// attempt for this long, so a dead server does not add 5 s to every request.
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);

/// Google's keys cannot be had (HTTP 503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysUnavailable(pub String);

impl std::fmt::Display for KeysUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Google's signing keys are unavailable: {}", self.0)
    }
}

impl std::error::Error for KeysUnavailable {}

/// Where the keys come from.
enum Source {
    Url { url: reqwest::Url, client: reqwest::Client },
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url { url, .. } => write!(f, "{url}"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One good key set and its lifetime.
pub(crate) struct Cached {
    /// The set (`{"keys": [...]}`) as JSON text, what each call hands the
    /// plugin: serialised once per fetch, not once per request.
    text: Arc<str>,
    /// Start refreshing from here (shortly before expiry).
    refresh_at: Instant,
    /// The source's expiry.
    expires_at: Instant,
}

/// Bookkeeping of fetches, behind the lock that serialises them.
#[derive(Default)]
struct FetchState {
    last_forced: Option<Instant>,
    last_failure: Option<(Instant, String)>,
}

/// Google's key set, fetched on demand and cached; cheap to share behind `&`.
pub struct KeyCache {
    source: Source,
    min_refresh: Duration,
    stale_grace: Duration,
    cached: RwLock<Option<Arc<Cached>>>,
    /// Held during a fetch, so concurrent callers wait for one fetch and share it.
    fetch: tokio::sync::Mutex<FetchState>,
}

impl KeyCache {
    /// Configures the cache from the `[gcp]` block: `jwks_url` (default
    /// [`DEFAULT_JWKS_URL`]) or `jwks_file`, and `jwks_min_refresh_secs`. A file
    /// is read once here so a wrong path fails at start-up; a URL is fetched on
    /// first use.
    pub fn from_config(gcp_block: &Value) -> anyhow::Result<KeyCache> {
        Self::for_mount("gcp", gcp_block, Some(DEFAULT_JWKS_URL))
    }

    /// Configures the cache of `mount` from its block: `jwks_url` (default
    /// `default_url`) or `jwks_file` (read here, through `file_trust`, and only
    /// here), and `jwks_min_refresh_secs`. Errors name the mount and the file.
    pub fn for_mount(mount: &str, gcp_block: &Value, default_url: Option<&str>) -> anyhow::Result<KeyCache> {
        let get = |key: &str| gcp_block.get(key).filter(|v| !v.is_null());
        let string = |key: &str| -> anyhow::Result<Option<&str>> {
            match get(key) {
                None => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
                Some(other) => bail!("[{mount}] {key} must be a non-empty string, not {other}"),
            }
        };
        let min_refresh = match get("jwks_min_refresh_secs") {
            None => DEFAULT_MIN_REFRESH,
            Some(v) => match v.as_u64() {
                Some(s @ 1..=86_400) => Duration::from_secs(s),
                _ => bail!("[{mount}] jwks_min_refresh_secs must be an integer from 1 to 86400, not {v}"),
            },
        };
        let source = match (string("jwks_url")?, string("jwks_file")?) {
            (Some(_), Some(_)) => bail!("[{mount}] sets both jwks_url and jwks_file: choose one"),
            (None, Some(path)) => Source::File(PathBuf::from(path)),
            (url, None) => {
                let Some(url) = url.or(default_url) else {
                    bail!("[{mount}] names no key source: set jwks_url or jwks_file");
                };
                let url = reqwest::Url::parse(url).with_context(|| format!("[{mount}] jwks_url {url:?}"))?;
                let client = fetch::client(&url)?;
                Source::Url { url, client }
            }
        };
        let cache = KeyCache {
            source,
            min_refresh,
            stale_grace: DEFAULT_STALE_GRACE,
            cached: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
        };
        if let Source::File(path) = &cache.source {
            let cached = read_file(path).with_context(|| format!("[{mount}] jwks_file = {:?}", path.display()))?;
            cache.store(cached);
        }
        Ok(cache)
    }

    /// Sets how long a set is served past its expiry while refreshes fail
    /// (default [`DEFAULT_STALE_GRACE`]).
    pub fn with_stale_grace(mut self, grace: Duration) -> KeyCache {
        self.stale_grace = grace;
        self
    }

    /// The current key set (`{"keys": [...]}`), fetching or refreshing as needed.
    pub async fn key_set(&self) -> Result<Value, KeysUnavailable> {
        let text = self.current().await?.text.clone();
        Ok(serde_json::from_str(&text).expect("the cache holds JSON it serialised itself"))
    }

    /// [`KeyCache::key_set`] as JSON text, shared: what a plugin's `host-keys`
    /// import answers.
    pub async fn key_set_text(&self) -> Result<Arc<str>, KeysUnavailable> {
        Ok(self.current().await?.text.clone())
    }

    async fn current(&self) -> Result<Arc<Cached>, KeysUnavailable> {
        if let Some(keys) = self.fresh(Instant::now()) {
            return Ok(keys);
        }
        let mut state = self.fetch.lock().await;
        // Another caller may have refreshed while this one waited for the lock.
        let now = Instant::now();
        if let Some(keys) = self.fresh(now) {
            return Ok(keys);
        }
        if let Some((at, reason)) = &state.last_failure {
            if now.duration_since(*at) < FAILURE_BACKOFF {
                return self.stale_or(reason.clone());
            }
        }
        match self.fetch_now().await {
            Ok(cached) => {
                state.last_failure = None;
                Ok(self.store(cached))
            }
            Err(reason) => {
                tracing::warn!(source = %self.source, %reason, "fetching Google's signing keys failed");
                state.last_failure = Some((Instant::now(), reason.clone()));
                self.stale_or(reason)
            }
        }
    }

    /// Called when the plugin reported an unknown `kid`: refetches the set unless
    /// a forced refresh happened less than `jwks_min_refresh_secs` ago, so a flood
    /// of bogus `kid`s cannot hammer Google. Returns whether a refresh happened
    /// (and succeeded), i.e. whether retrying the verification can help.
    /// A key file is never re-read here (only a reload reads it): false.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        if let Source::File(_) = self.source {
            return false;
        }
        let mut state = self.fetch.lock().await;
        let now = Instant::now();
        if state
            .last_forced
            .is_some_and(|t| now.duration_since(t) < self.min_refresh)
        {
            return false;
        }
        state.last_forced = Some(now);
        match self.fetch_now().await {
            Ok(cached) => {
                state.last_failure = None;
                self.store(cached);
                true
            }
            Err(reason) => {
                tracing::warn!(source = %self.source, %reason, "refreshing Google's signing keys failed");
                state.last_failure = Some((Instant::now(), reason));
                false
            }
        }
    }

    /// The cached set if it does not need refreshing yet; a key file's always
    /// (it was read when the cache was made and is not read again).
    fn fresh(&self, now: Instant) -> Option<Arc<Cached>> {
        let from_file = matches!(self.source, Source::File(_));
        let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
        cached.as_ref().filter(|c| from_file || now < c.refresh_at).cloned()
    }

    /// The last good set while it is within its expiry plus the grace period.
    fn stale_or(&self, reason: String) -> Result<Arc<Cached>, KeysUnavailable> {
        let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
        match cached.as_ref() {
            Some(c) if Instant::now() < c.expires_at + self.stale_grace => Ok(c.clone()),
            Some(_) => Err(KeysUnavailable(format!(
                "{reason} (the last key set from {} expired more than {}s ago)",
                self.source,
                self.stale_grace.as_secs()
            ))),
            None => Err(KeysUnavailable(format!("{reason} (from {})", self.source))),
        }
    }

    fn store(&self, cached: Cached) -> Arc<Cached> {
        let cached = Arc::new(cached);
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some(cached.clone());
        cached
    }

    async fn fetch_now(&self) -> Result<Cached, String> {
        match &self.source {
            // Unreachable while `fresh` serves a file's set; never a re-read.
            Source::File(path) => Err(format!("{} is read only at start-up and on reload", path.display())),
            Source::Url { url, client } => fetch::fetch(client, url).await,
        }
    }
}

/// A key file's set, read once through `file_trust`.
fn read_file(path: &std::path::Path) -> anyhow::Result<Cached> {
    let text = crate::block_files::read_trusted_text(path, MAX_JWKS_BYTES as u64)?;
    let value: Value = serde_json::from_str(&text).context("not JSON")?;
    let keys = normalize(value).map_err(anyhow::Error::msg)?;
    Ok(cached_for(keys, DEFAULT_TTL))
}

/// A set good for `ttl`, refreshed a little before: a tenth of the lifetime,
/// at most a minute.
pub(crate) fn cached_for(keys: Value, ttl: Duration) -> Cached {
    let now = Instant::now();
    let margin = (ttl / 10).min(Duration::from_secs(60));
    Cached {
        text: keys.to_string().into(),
        refresh_at: now + (ttl - margin),
        expires_at: now + ttl,
    }
}

/// `{"keys": [..]}` from a JWKS or a single JWK; an empty set is refused.
pub fn normalize(value: Value) -> Result<Value, String> {
    let keys = match value {
        Value::Object(mut object) => match object.remove("keys") {
            Some(Value::Array(keys)) => keys,
            Some(_) => return Err("\"keys\" is not an array".into()),
            None if object.contains_key("kty") => vec![Value::Object(object)],
            None => return Err("neither a JWKS ({\"keys\": [...]}) nor a JWK".into()),
        },
        _ => return Err("not a JSON object".into()),
    };
    if keys.is_empty() {
        return Err("the key set has no keys".into());
    }
    if !keys.iter().all(Value::is_object) {
        return Err("a key in the set is not an object".into());
    }
    Ok(serde_json::json!({ "keys": keys }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalizes_sets_and_single_keys() {
        let key = json!({"kty": "RSA", "kid": "a", "n": "AQAB", "e": "AQAB"});
        assert_eq!(normalize(json!({"keys": [key]})).unwrap(), json!({"keys": [key]}));
        assert_eq!(normalize(key.clone()).unwrap(), json!({"keys": [key]}));
        for bad in [
            json!({"keys": []}),
            json!({"keys": {}}),
            json!({"keys": [1]}),
            json!([key]),
            json!({}),
        ] {
            assert!(normalize(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_checks() {
        assert!(KeyCache::from_config(&json!({})).is_ok());
        assert!(KeyCache::from_config(&json!({"jwks_url": "http://127.0.0.1:1/certs"})).is_ok());
        assert!(KeyCache::from_config(&json!({"jwks_url": "http://[::1]:1/certs"})).is_ok());
        for bad in [
            json!({"jwks_url": "http://example.com/certs"}),
            json!({"jwks_url": "ftp://localhost/certs"}),
            json!({"jwks_url": "not a url"}),
            json!({"jwks_url": 5}),
            json!({"jwks_url": "https://x", "jwks_file": "/f"}),
            json!({"jwks_min_refresh_secs": 0}),
            json!({"jwks_min_refresh_secs": "60"}),
            json!({"jwks_file": "/nonexistent/idgate/keys.json"}),
        ] {
            assert!(KeyCache::from_config(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: T) {}
        let cache = KeyCache::from_config(&json!({})).unwrap();
        send(cache.key_set());
        send(cache.key_set_text());
        send(cache.refresh_for_unknown_kid());
    }

    #[tokio::test]
    async fn a_key_file_is_read_once() {
        let dir = std::env::temp_dir().join(format!("idgate-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.json");
        let key = json!({"kty": "RSA", "kid": "a", "n": "AQAB", "e": "AQAB"});
        std::fs::write(&path, key.to_string()).unwrap();
        let cache = KeyCache::from_config(&json!({"jwks_file": path.to_str().unwrap()})).unwrap();
        assert_eq!(cache.key_set().await.unwrap(), json!({"keys": [key]}));

        // The text a plugin gets is that set, serialised once and shared by
        // every request.
        let text = cache.key_set_text().await.unwrap();
        assert!(Arc::ptr_eq(&text, &cache.key_set_text().await.unwrap()));

        // Replaced behind the host's back: an unknown `kid` does not re-read it;
        // only a new cache (a reload) does.
        let key_b = json!({"kty": "RSA", "kid": "b", "n": "AQAB", "e": "AQAB"});
        std::fs::write(&path, json!({"keys": [key_b]}).to_string()).unwrap();
        assert!(!cache.refresh_for_unknown_kid().await);
        assert_eq!(cache.key_set().await.unwrap(), json!({"keys": [key]}));
        let reloaded = KeyCache::from_config(&json!({"jwks_file": path.to_str().unwrap()})).unwrap();
        assert_eq!(reloaded.key_set().await.unwrap(), json!({"keys": [key_b]}));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_key_file_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let key = json!({"kty": "RSA", "kid": "a", "n": "AQAB", "e": "AQAB"});
        std::fs::write(&path, key.to_string()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let Err(err) = KeyCache::for_mount("k8s", &json!({"jwks_file": path.to_str().unwrap()}), None) else {
            panic!("a key file others may write was trusted");
        };
        let err = format!("{err:#}");
        assert!(err.contains("[k8s] jwks_file") && err.contains("writable"), "{err}");
    }
}
