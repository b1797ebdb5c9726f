//! What a [`Runtime`](crate::Runtime) allows a policy to use, and how it runs.

/// Every bound the runtime puts on a policy.
///
/// Everything a policy touches is limited here, and each refusal names the
/// limit it hit. Per-call limits (fuel, the deadline, batch and action
/// counts) apply to every call into the guest, not only `process`; the
/// start function and `init`/`restore`/`snapshot` get the same budget.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Fuel given to each call into the guest (roughly one unit per wasm
    /// operator). Running out is a deterministic failure: the same module and
    /// input always stop at the same point, with Cranelift or Pulley
    /// ([`Compiler::Winch`] counts fuel a little differently).
    pub fuel_per_batch: u64,
    /// Largest linear memory one policy instance may grow to, in bytes.
    pub memory_bytes_max: usize,
    /// Most elements any one table of a policy instance may hold.
    pub table_elements_max: usize,
    /// Most policy instances alive at once in one runtime (the size of the
    /// pooling allocator's pool).
    pub instances_max: u32,
    /// Most core module instances inside one policy component.
    pub core_instances_per_instance_max: u32,
    /// Most linear memories inside one policy component.
    pub memories_per_instance_max: u32,
    /// Most tables inside one policy component.
    pub tables_per_instance_max: u32,
    /// Most bytes of native stack a guest may use; deeper recursion traps
    /// with a stack overflow.
    pub wasm_stack_bytes_max: usize,
    /// Largest `.wasm` component accepted for compilation, in bytes.
    pub module_bytes_max: usize,
    /// Largest precompiled (native) module accepted for loading, in bytes.
    pub precompiled_bytes_max: usize,
    /// Wall-clock backstop for one call into the guest, in milliseconds.
    /// Fuel is what bounds guest work; this only kills a call that fuel
    /// failed to stop in time (for example with a huge fuel budget), so it
    /// never decides a result that a healthy run would have produced.
    pub batch_deadline_ms: u64,
    /// Longest a compilation may take, in milliseconds.
    pub compile_deadline_ms: u64,
    /// Most readings in one batch given to `process`.
    pub batch_readings_max: usize,
    /// Most actions one `process` call may return.
    pub actions_per_batch_max: usize,
    /// Most bytes the host copies out of the guest for one call's result
    /// (actions with their text, a snapshot, an error message), counted as
    /// wasmtime counts them: host-side size of each list element plus the
    /// bytes of each string. Checked while copying, so an oversized result
    /// never gets allocated on the host.
    pub output_bytes_max: usize,
    /// Largest snapshot a policy may produce or restore from, in bytes.
    pub state_bytes_max: usize,
    /// Bytes of linear memory (and of tables) a pool slot keeps resident
    /// between instances, reset with `memset` instead of being handed back
    /// to the kernel. A new instance then finds its first pages mapped
    /// instead of faulting them in: a faster first call, for this much
    /// resident memory per idle slot. 0 hands everything back.
    pub pool_keep_resident_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel_per_batch: 100_000_000,
            memory_bytes_max: 64 << 20,
            table_elements_max: 10_000,
            instances_max: 64,
            core_instances_per_instance_max: 16,
            memories_per_instance_max: 2,
            tables_per_instance_max: 4,
            wasm_stack_bytes_max: 512 << 10,
            module_bytes_max: 16 << 20,
            precompiled_bytes_max: 64 << 20,
            batch_deadline_ms: 1_000,
            compile_deadline_ms: 30_000,
            batch_readings_max: 4_096,
            actions_per_batch_max: 16_384,
            output_bytes_max: 8 << 20,
            state_bytes_max: 1 << 20,
            pool_keep_resident_bytes: 1 << 20,
        }
    }
}

/// How policy instances get their memory, tables and instance metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Allocator {
    /// Pre-reserve [`Limits::instances_max`] slots up front and recycle them:
    /// instantiation in microseconds, with copy-on-write memory images.
    #[default]
    Pooling,
    /// Allocate each instance's resources when it is created.
    OnDemand,
}

/// What turns WebAssembly into something this host can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compiler {
    /// Native code from Cranelift.
    #[default]
    Cranelift,
    /// Bytecode for Pulley, wasmtime's portable interpreter: slower, but the
    /// same on every host.
    Pulley,
    /// Native code from Winch, wasmtime's baseline compiler: one pass per
    /// function, so it compiles several times faster than Cranelift and the
    /// code it makes runs slower. For swaps from `.wasm` that must start
    /// serving soon. x86_64 and aarch64 hosts only; elsewhere
    /// [`Runtime::new`](crate::Runtime::new) refuses it.
    ///
    /// With NaN canonicalisation its actions and state are Cranelift's, bit
    /// for bit. Its fuel metering is its own, though: it charges slightly
    /// different amounts for the same code (in molt's engines test about
    /// 2 % less than Cranelift), so a call that ends close to
    /// [`Limits::fuel_per_batch`] may run out on one compiler and not on the
    /// other. Running out is still deterministic for each compiler.
    Winch,
}

/// Everything that decides how a [`Runtime`](crate::Runtime) is built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Bounds on every policy.
    pub limits: Limits,
    /// Make results independent of the host: NaN canonicalisation,
    /// deterministic relaxed SIMD. Threads are always off.
    pub deterministic: bool,
    /// How instances are allocated.
    pub allocator: Allocator,
    /// How modules are compiled.
    pub compiler: Compiler,
    /// How often the background ticker advances the engine's epoch, which
    /// is the resolution of [`Limits::batch_deadline_ms`], in milliseconds.
    pub epoch_tick_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            deterministic: true,
            allocator: Allocator::default(),
            compiler: Compiler::default(),
            epoch_tick_ms: 5,
        }
    }
}
