//! One call under limits: the store every call gets (memory cap, CPU
//! deadline, what the host lends it), the epoch ticker that enforces the
//! deadline, and how a trap, deadline or memory failure becomes the call's
//! [`CallError::Fault`] naming the provider.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Engine, Store, Trap};

use super::{CallError, FaultKind, HostInputs, Sandbox};

/// How often the epoch ticker advances; the CPU deadline is counted in ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-call state: the limiter, what `host-keys` and `issuers` answer with,
/// and the issuer URLs asked for in vain.
pub(super) struct CallState {
    pub(super) limiter: MemoryLimiter,
    pub(super) inputs: HostInputs,
    pub(super) wanted_issuers: Vec<String>,
}

/// Caps linear memory and remembers whether the cap was hit, so the host can say
/// "memory" rather than a bare trap.
pub(super) struct MemoryLimiter {
    pub(super) max_bytes: usize,
    pub(super) hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            wasmtime::bail!("memory limit of {} MiB exceeded", self.max_bytes >> 20);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(super) struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Ticker {
    pub(super) fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("idgate-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn epoch ticker thread");
        Ticker { stop }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Sandbox {
    /// A fresh store under the limits: memory cap, CPU deadline, and what
    /// `host-keys` and `issuers` answer with.
    pub(super) fn new_store(&self, inputs: &HostInputs) -> Store<CallState> {
        let mut store = Store::new(
            &self.engine,
            CallState {
                limiter: MemoryLimiter {
                    max_bytes: self.limits.memory_bytes,
                    hit: false,
                },
                inputs: inputs.clone(),
                wanted_issuers: Vec::new(),
            },
        );
        store.limiter(|s| &mut s.limiter);
        let ticks = self.limits.deadline.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }

    /// Runs `f` (which instantiates and calls) in a fresh store under the limits.
    pub(super) fn call<R>(
        &self,
        provider: &str,
        inputs: &HostInputs,
        f: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let mut store = self.new_store(inputs);
        self.guard(&mut store, provider, Instant::now(), f)
    }

    /// Runs `f` on `store`, turning a trap, deadline or memory failure into a
    /// [`CallError::Fault`] naming `provider`.
    pub(super) fn guard<R>(
        &self,
        store: &mut Store<CallState>,
        provider: &str,
        started: Instant,
        f: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        f(store).map_err(|e| {
            let kind = if store.data().limiter.hit {
                FaultKind::Memory
            } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                FaultKind::Deadline
            } else {
                FaultKind::Trap
            };
            let message = match kind {
                FaultKind::Deadline => format!(
                    "exceeded its CPU deadline of {} ms (stopped after {} ms)",
                    self.limits.deadline.as_millis(),
                    started.elapsed().as_millis()
                ),
                FaultKind::Memory => format!("exceeded its memory limit of {} MiB", self.limits.memory_bytes >> 20),
                FaultKind::Trap => format!("trapped: {}", root_cause(&e)),
            };
            CallError::Fault {
                provider: provider.to_string(),
                message,
                kind,
            }
        })
    }
}

/// The innermost cause, which names the trap ("unreachable", "unknown import").
fn root_cause(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    }
}
