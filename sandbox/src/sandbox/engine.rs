//! The engine every plugin runs on: its configuration (epoch interruption,
//! stack cap, copy-on-write memory, the pooling allocator and what a pooled
//! slot keeps resident), and the one WASI interface it links for real,
//! `wasi:random`.

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use super::{CallState, Limits};

/// Most linear memory a pooled slot keeps mapped between calls (only the pages
/// a call dirtied are reset). Plugins start at ~1.1 MiB plus their configured
/// state and touch a few MiB per call; more would only hold RSS.
const KEEP_RESIDENT_MAX: usize = 8 << 20;
/// Table bytes a pooled slot keeps between calls (plugins' tables are small).
const KEEP_RESIDENT_TABLES: usize = 64 << 10;

/// The wasmtime configuration every plugin runs under.
pub(super) fn new_engine(limits: &Limits) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // A plugin's stack is bounded too: deep recursion traps instead of growing.
    config.max_wasm_stack(1 << 20);
    // Why copy-on-write (wasmtime's default, stated so it stays on): a call's
    // memory starts as a private mapping of the compiled image — for a configured
    // snapshot, the parsed configuration — instead of a copy of its data
    // segments, so a call only pays for the pages it writes.
    config.memory_init_cow(true);
    // `IDGATE_WASM_PERFMAP=1` writes /tmp/perf-<pid>.map so `perf` can name the
    // plugins' compiled functions (a profiling aid; off by default).
    if std::env::var_os("IDGATE_WASM_PERFMAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if limits.pooling {
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        // Slots for every call that can run at once, with room for synchronous
        // callers beyond the async permits; a call finding no slot faults.
        let slots = (limits.max_concurrent.max(1) * 4 + 16) as u32;
        pool.total_component_instances(slots);
        pool.total_core_instances(slots * 2);
        pool.total_memories(slots * 2);
        pool.total_tables(slots * 2);
        pool.max_memory_size(limits.memory_bytes);
        // Why keep memory resident (Linux ≥ 6.7): by default a freed slot is
        // reset with madvise, so the next call page-faults every page it touches
        // back in from the image. With the PAGEMAP_SCAN ioctl wasmtime finds the
        // pages the call dirtied and copies just those back from the image, so
        // the slot stays mapped and warm: no syscall storm, no faults. Without
        // the ioctl, keeping memory resident would mean resetting all of it by
        // hand on every call, so it is only turned on with it.
        if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Yes);
            pool.linear_memory_keep_resident(limits.memory_bytes.min(KEEP_RESIDENT_MAX));
            pool.table_keep_resident(KEEP_RESIDENT_TABLES);
        }
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    }
    Ok(Engine::new(&config)?)
}

/// Links `wasi:random` under whatever version the component imports: Rust's std
/// seeds its hash maps from it. Everything else WASI stays a trap.
pub(super) fn link_random(
    linker: &mut Linker<CallState>,
    component: &Component,
    engine: &Engine,
) -> anyhow::Result<()> {
    const MAX_RANDOM: u64 = 1 << 16;
    let names: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    for name in names {
        if !name.starts_with("wasi:random/") {
            continue;
        }
        let mut inst = linker.instance(&name)?;
        if name.starts_with("wasi:random/insecure-seed@") {
            inst.func_wrap("insecure-seed", |_, ()| Ok(((random_u64(), random_u64()),)))?;
        } else if name.starts_with("wasi:random/random@") || name.starts_with("wasi:random/insecure@") {
            let (bytes_fn, u64_fn) = if name.starts_with("wasi:random/random@") {
                ("get-random-bytes", "get-random-u64")
            } else {
                ("get-insecure-random-bytes", "get-insecure-random-u64")
            };
            inst.func_wrap(bytes_fn, |_, (len,): (u64,)| {
                if len > MAX_RANDOM {
                    wasmtime::bail!("plugin asked for {len} random bytes (limit {MAX_RANDOM})");
                }
                let mut buf = vec![0u8; len as usize];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
                    .map_err(|_| wasmtime::format_err!("system random failed"))?;
                Ok((buf,))
            })?;
            inst.func_wrap(u64_fn, |_, ()| Ok((random_u64(),)))?;
        }
    }
    Ok(())
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SystemRandom only fails if the OS has no entropy source at all.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}
