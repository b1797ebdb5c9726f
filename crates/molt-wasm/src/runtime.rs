//! The engine every policy of one device runs in.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy, WasmBacktraceDetails,
};

use crate::config::{Allocator, Compiler, Limits, RuntimeConfig};
use crate::error::Error;

/// A configured wasmtime engine with its epoch ticker.
///
/// Cheap to clone; every clone, and every module and instance made from it,
/// shares one engine, one instance pool and one ticker thread, which stops
/// when the last of them is dropped.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) shared: Arc<Shared>,
}

/// What modules and instances need from their runtime.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) config: RuntimeConfig,
    /// How many epoch ticks make up `limits.batch_deadline_ms`.
    pub(crate) deadline_ticks: u64,
    /// Dropping it wakes and stops the ticker thread.
    ticker_stop: Option<mpsc::Sender<()>>,
    ticker: Option<thread::JoinHandle<()>>,
}

impl Runtime {
    /// Builds the engine from `config` and starts its epoch ticker.
    pub fn new(config: &RuntimeConfig) -> Result<Runtime, Error> {
        let engine = Engine::new(&engine_config(config)?).map_err(|error| Error::Config {
            reason: format!("{error:#}"),
        })?;
        let epoch_tick_ms = config.epoch_tick_ms.max(1);
        // One extra tick: the current one may be almost over when a call
        // starts, and the deadline must never be shorter than promised.
        let deadline_ticks = config.limits.batch_deadline_ms.div_ceil(epoch_tick_ms) + 1;

        let (ticker_stop, stop_received) = mpsc::channel::<()>();
        let ticker_engine = engine.clone();
        let ticker = thread::Builder::new()
            .name("molt-wasm-epoch".into())
            .spawn(move || {
                let tick = Duration::from_millis(epoch_tick_ms);
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop_received.recv_timeout(tick) {
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(Error::Ticker)?;

        Ok(Runtime {
            shared: Arc::new(Shared {
                engine,
                config: config.clone(),
                deadline_ticks,
                ticker_stop: Some(ticker_stop),
                ticker: Some(ticker),
            }),
        })
    }

    /// The configuration this runtime was built from.
    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// The limits every policy of this runtime runs under.
    pub fn limits(&self) -> &Limits {
        &self.shared.config.limits
    }

    /// The underlying wasmtime engine, for measurements and tools that
    /// need it (for example benchmarks comparing against plain wasmtime).
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        drop(self.ticker_stop.take());
        if let Some(ticker) = self.ticker.take() {
            // The ticker only sleeps and increments an atomic; it cannot
            // panic, so there is nothing to report from the join.
            let _ = ticker.join();
        }
    }
}

fn engine_config(runtime_config: &RuntimeConfig) -> Result<Config, Error> {
    let limits = &runtime_config.limits;
    let mut config = Config::new();

    // Fuel bounds guest work deterministically; epochs are only the
    // wall-clock backstop that kills a call fuel did not stop in time.
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(limits.wasm_stack_bytes_max);
    // Traps carry up to wasmtime's default 20 frames, with file:line where
    // the module has DWARF.
    config.wasm_backtrace_details(WasmBacktraceDetails::Enable);
    config.memory_init_cow(true);

    // Policies are single-threaded: wasmtime's `threads` feature is not
    // compiled in, so shared memories and atomics waits cannot validate.
    if runtime_config.deterministic {
        config.cranelift_nan_canonicalization(true);
        config.relaxed_simd_deterministic(true);
    }

    match runtime_config.compiler {
        Compiler::Cranelift => {}
        Compiler::Winch => {
            // wasmtime's own check refuses hosts Winch has no backend for,
            // when the engine is built.
            config.strategy(Strategy::Winch);
        }
        Compiler::Pulley => {
            config.target(pulley_target()).map_err(|error| Error::Config {
                reason: format!("pulley target {}: {error:#}", pulley_target()),
            })?;
        }
    }

    match runtime_config.allocator {
        Allocator::OnDemand => {
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
        }
        Allocator::Pooling => {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(limits)));
        }
    }
    Ok(config)
}

/// The pool holds `instances_max` policies of the largest allowed shape.
fn pooling_config(limits: &Limits) -> PoolingAllocationConfig {
    let instances = limits.instances_max;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .max_core_instances_per_component(limits.core_instances_per_instance_max)
        .total_core_instances(instances.saturating_mul(limits.core_instances_per_instance_max))
        .max_memories_per_component(limits.memories_per_instance_max)
        .total_memories(instances.saturating_mul(limits.memories_per_instance_max))
        .max_tables_per_component(limits.tables_per_instance_max)
        .max_tables_per_module(limits.tables_per_instance_max)
        .total_tables(instances.saturating_mul(limits.tables_per_instance_max))
        .max_memory_size(limits.memory_bytes_max)
        .table_elements(limits.table_elements_max)
        .linear_memory_keep_resident(limits.pool_keep_resident_bytes)
        .table_keep_resident(limits.pool_keep_resident_bytes)
        // Resets only the pages a guest dirtied, where the kernel can say
        // which (Linux 6.7+); elsewhere wasmtime falls back to madvise.
        .pagemap_scan(Enabled::Auto);
    pool
}

/// Pulley's target for this host's pointer width and byte order.
pub(crate) fn pulley_target() -> &'static str {
    match (cfg!(target_pointer_width = "64"), cfg!(target_endian = "little")) {
        (true, true) => "pulley64",
        (false, true) => "pulley32",
        (true, false) => "pulley64be",
        (false, false) => "pulley32be",
    }
}

/// The target name recorded in cache keys.
pub(crate) fn target_name(compiler: Compiler) -> String {
    match compiler {
        Compiler::Pulley => pulley_target().to_owned(),
        // Winch's code is native code for the same target; the engine
        // digest of the key (which covers the compiler) tells them apart.
        Compiler::Cranelift | Compiler::Winch => format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
    }
}
