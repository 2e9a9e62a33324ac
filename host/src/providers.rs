//! The provider set being served and its one owner: every request takes the
//! set current when it starts ([`Providers::current`]) and finishes on it; a
//! reload builds the next set beside it and swaps it in whole
//! ([`Providers::replace`]), or changes nothing and leaves its reason for
//! `/readyz` and `/metrics` ([`Providers::failed`]).

use std::sync::{Arc, Mutex, RwLock};

use crate::authenticate::Authenticator;

/// The served provider set ([`Authenticator`]) and how its reloads went.
pub struct Providers {
    current: RwLock<Arc<Authenticator>>,
    status: Mutex<ReloadStatus>,
}

/// How reloads have gone since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads that swapped in a new set.
    pub succeeded: u64,
    /// Reloads that changed nothing because something failed.
    pub failed: u64,
    /// The last reload's failure (Unix seconds, reason), until a reload succeeds.
    pub failing: Option<(i64, String)>,
}

impl Providers {
    /// Serves `first`.
    pub fn new(first: Authenticator) -> Providers {
        Providers {
            current: RwLock::new(Arc::new(first)),
            status: Mutex::new(ReloadStatus::default()),
        }
    }

    /// The set serving now. Hold it for the whole request: a swap does not
    /// change what a request already holds.
    pub fn current(&self) -> Arc<Authenticator> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves `next` from now on (the previous set lives on while requests
    /// hold it) and clears a reported failure.
    pub fn replace(&self, next: Authenticator) {
        let next = Arc::new(next);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.succeeded += 1;
        status.failing = None;
    }

    /// Records a reload that failed for `reason` at `now` (Unix seconds); the
    /// current set stays.
    pub fn failed(&self, reason: String, now: i64) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.failed += 1;
        status.failing = Some((now, reason));
    }

    /// How reloads have gone.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
