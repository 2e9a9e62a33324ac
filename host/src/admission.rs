//! How many authentications are being worked on at once.
//!
//! Every request that reaches a handler used to start work at once: read the
//! body, verify in the sandbox, then queue for one of the pool's connections.
//! When a thousand agents reconnect together, the two cores then verify the
//! whole wave (and the next requests those connections send) while the few
//! requests holding a database connection wait their turn to be polled, so
//! the first wave drains late and sets the storm's p99. Admitting a bounded
//! number in arrival order (a fair semaphore) keeps the work in flight to what
//! the pool can take; the rest wait without using the CPU. The wait is bounded
//! like a wait for a pooled connection, and answered the same way (503).

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Requests admitted per pooled connection: one resolving, one verified and
/// waiting for the connection to come free. In the storm section (three runs
/// each, medians of the two rounds' p99) unlimited gave 294 / 252 ms, two per
/// connection 285 / 235 ms and one 285 / 227 ms at the same wall time: a gain
/// within this machine's noise, kept because it bounds the work in flight.
pub const PER_CONNECTION: usize = 2;

/// The door every authentication passes before any work is done on it.
#[derive(Debug)]
pub struct Admission {
    permits: Semaphore,
    wait: Duration,
}

/// No room came within the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl Admission {
    /// Admits [`PER_CONNECTION`] requests per connection of `pool`, each
    /// waiting at most the pool's acquire timeout.
    pub fn for_pool(pool: &sqlx::PgPool) -> Self {
        let connections = pool.options().get_max_connections() as usize;
        Self::new(
            connections.max(1) * PER_CONNECTION,
            pool.options().get_acquire_timeout(),
        )
    }

    /// Admits `at_once` requests, each waiting at most `wait`.
    pub fn new(at_once: usize, wait: Duration) -> Self {
        Admission {
            permits: Semaphore::new(at_once.max(1)),
            wait,
        }
    }

    /// Waits for room, first come first served; hold the permit until the
    /// answer is ready.
    pub async fn enter(&self) -> Result<SemaphorePermit<'_>, Busy> {
        match tokio::time::timeout(self.wait, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout is the only real case.
            _ => Err(Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room is given in arrival order and a wait past the bound is refused.
    #[tokio::test]
    async fn admits_in_order_and_bounds_the_wait() {
        let door = std::sync::Arc::new(Admission::new(1, Duration::from_millis(200)));
        let first = door.enter().await.unwrap();
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for i in 0..3 {
            let (door, order) = (door.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                let _p = door.enter().await.unwrap();
                order.lock().unwrap().push(i);
            }));
            // Let each waiter queue before the next one.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for w in waiting {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);

        let _held = door.enter().await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(door.enter().await.err(), Some(Busy));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
