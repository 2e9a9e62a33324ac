//! A session token kept for an agent: exchanged once, handed out from the
//! cache, exchanged again when the agent says it stopped working — what
//! Coder's `InstanceIdentitySessionTokenProvider` does for its agent.

use std::sync::{Mutex, MutexGuard};

use crate::error::Error;
use crate::exchange::Exchanger;
use crate::secret::Secret;

/// A cached session token over an [`Exchanger`]. Safe to share between
/// threads; concurrent callers wait for one exchange rather than each
/// making their own.
///
/// ```no_run
/// use idgate_client::sources::aws::Aws;
/// use idgate_client::{Endpoint, Exchanger, RetryPolicy, TokenProvider};
///
/// let endpoint = Endpoint::parse("https://coder.example.com", false)?;
/// let exchanger = Exchanger::new(Box::new(Aws::new(None, None)?), &endpoint, None)?
///     .agent_name(Some("dev"))
///     .retry_policy(RetryPolicy::default());
/// let provider = TokenProvider::new(exchanger);
/// let token = provider.token()?; // exchanged once, then cached
/// // ... the server answers 401 to it later:
/// let token = provider.refresh()?; // exchanged again
/// # Ok::<(), idgate_client::Error>(())
/// ```
#[derive(Debug)]
pub struct TokenProvider {
    exchanger: Exchanger,
    cached: Mutex<Option<Secret>>,
}

impl TokenProvider {
    /// A provider with nothing cached yet.
    pub fn new(exchanger: Exchanger) -> Self {
        TokenProvider {
            exchanger,
            cached: Mutex::new(None),
        }
    }

    /// The cached token, or a new one if there is none.
    pub fn token(&self) -> Result<Secret, Error> {
        let mut cached = self.lock();
        if let Some(token) = cached.as_ref() {
            return Ok(token.clone());
        }
        let token = self.exchanger.exchange()?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// Exchanges again and caches the result (the server answered 401 to the
    /// old token, say). On failure the old token is dropped: it is known bad.
    pub fn refresh(&self) -> Result<Secret, Error> {
        let mut cached = self.lock();
        *cached = None;
        let token = self.exchanger.exchange()?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// The cached token, without exchanging.
    pub fn cached(&self) -> Option<Secret> {
        self.lock().clone()
    }

    /// The exchanger underneath.
    pub fn exchanger(&self) -> &Exchanger {
        &self.exchanger
    }

    fn lock(&self) -> MutexGuard<'_, Option<Secret>> {
        // A panic elsewhere while holding the lock leaves a valid Option behind.
        self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
