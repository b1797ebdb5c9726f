//! Why the runtime refused something, and how a guest failed.
//!
//! [`Error`] is for the host's own operations: building a runtime,
//! compiling, loading and instantiating modules. [`CallError`] is a guest
//! failure, returned as a value from every call into a policy; none of them
//! panics or aborts the host.

use std::fmt;

use crate::contract::PolicyError;
use crate::state::StateError;

/// Why building a runtime or compiling, loading or instantiating a policy
/// module failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// wasmtime refused the engine configuration.
    #[error("invalid runtime configuration: {reason}")]
    Config {
        /// wasmtime's explanation.
        reason: String,
    },
    /// The background epoch ticker could not be started.
    #[error("could not start the epoch ticker thread: {0}")]
    Ticker(#[source] std::io::Error),
    /// The `.wasm` is larger than [`Limits::module_bytes_max`](crate::Limits::module_bytes_max).
    #[error("module is {size_bytes} bytes, over the limit module_bytes_max={limit_bytes}")]
    ModuleTooLarge {
        /// Size of the module offered.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The bytes are not a valid WebAssembly component.
    #[error("invalid policy module: {reason}")]
    InvalidModule {
        /// The validator's or compiler's explanation.
        reason: String,
    },
    /// The module needs a bigger instance slot than the pool was sized for
    /// from the limits (a memory over `memory_bytes_max`, a table over
    /// `table_elements_max`, more memories, tables or core instances per
    /// instance than allowed, or more instance metadata).
    #[error(
        "policy does not fit an instance slot sized by the limits (memory_bytes_max, table_elements_max, *_per_instance_max): {reason}"
    )]
    OverPoolLimits {
        /// wasmtime's explanation, naming the size it needed.
        reason: String,
    },
    /// Compilation took longer than [`Limits::compile_deadline_ms`](crate::Limits::compile_deadline_ms).
    #[error("compilation exceeded the limit compile_deadline_ms={limit_ms}")]
    CompileDeadline {
        /// The limit.
        limit_ms: u64,
    },
    /// The compiler thread died without an answer (a compiler bug).
    #[error("the compiler thread failed without a result")]
    CompilerCrashed,
    /// The component imports something; policies may import nothing.
    #[error("policy imports {name:?}, which the host does not provide (policies import nothing)")]
    UnknownImport {
        /// The first import's name.
        name: String,
    },
    /// The component does not export the `molt:policy` world correctly.
    #[error("policy does not export the molt:policy world: {reason}")]
    ContractMismatch {
        /// What is missing or mistyped.
        reason: String,
    },
    /// A precompiled module was built for another engine or another source.
    #[error("precompiled module key mismatch: {field} is {found}, this engine needs {expected}")]
    CacheKeyMismatch {
        /// Which part of the key differs.
        field: &'static str,
        /// This engine's value.
        expected: String,
        /// The offered key's value.
        found: String,
    },
    /// The precompiled bytes are not the ones the caller trusts.
    #[error("precompiled module digest does not match the trusted sha256")]
    PrecompiledDigestMismatch,
    /// The precompiled bytes are larger than
    /// [`Limits::precompiled_bytes_max`](crate::Limits::precompiled_bytes_max).
    #[error("precompiled module is {size_bytes} bytes, over the limit precompiled_bytes_max={limit_bytes}")]
    PrecompiledTooLarge {
        /// Size offered.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The trusted bytes still could not be loaded (not a precompiled
    /// component, or built by an incompatible wasmtime).
    #[error("could not load precompiled module: {reason}")]
    InvalidPrecompiled {
        /// wasmtime's explanation.
        reason: String,
    },
    /// Every slot of the pool is in use: [`Limits::instances_max`](crate::Limits::instances_max).
    #[error("all policy instance slots are in use: instances_max={limit}")]
    PoolExhausted {
        /// The limit.
        limit: u32,
    },
    /// The guest failed while being instantiated (for example its start
    /// function trapped, or its initial memory is over the limit).
    #[error("policy failed during instantiation: {0}")]
    Instantiate(#[source] CallError),
    /// The on-disk module cache failed.
    #[error("module cache {operation} failed for {path}: {source}")]
    Cache {
        /// What the cache was doing.
        operation: &'static str,
        /// The file involved.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// wasmtime failed for a reason that is not the guest's (for example the
    /// host is out of memory).
    #[error("wasmtime failed: {reason}")]
    Engine {
        /// wasmtime's explanation.
        reason: String,
    },
}

/// How one call into a policy failed.
///
/// After a failure that stopped the guest mid-call (see
/// [`CallError::is_fatal`]) the instance is poisoned and every later call
/// returns [`CallError::Poisoned`]: recreate it from the last good state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The guest trapped (`unreachable`, a Rust panic, an out-of-bounds
    /// access, ...).
    #[error("policy trapped: {code}\n{backtrace}")]
    Trap {
        /// The trap's description.
        code: TrapCode,
        /// Where it happened.
        backtrace: GuestBacktrace,
    },
    /// The call used all of [`Limits::fuel_per_batch`](crate::Limits::fuel_per_batch).
    #[error("policy ran out of fuel: fuel_per_batch={limit}\n{backtrace}")]
    FuelExhausted {
        /// The limit.
        limit: u64,
        /// Where it was stopped.
        backtrace: GuestBacktrace,
    },
    /// The guest tried to grow its memory past
    /// [`Limits::memory_bytes_max`](crate::Limits::memory_bytes_max).
    #[error("policy memory would grow to {requested_bytes} bytes, over the limit memory_bytes_max={limit_bytes}")]
    MemoryLimit {
        /// Size the guest asked for.
        requested_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The guest tried to grow a table past
    /// [`Limits::table_elements_max`](crate::Limits::table_elements_max).
    #[error(
        "policy table would grow to {requested_elements} elements, over the limit table_elements_max={limit_elements}"
    )]
    TableLimit {
        /// Size the guest asked for.
        requested_elements: usize,
        /// The limit.
        limit_elements: usize,
    },
    /// The guest recursed deeper than
    /// [`Limits::wasm_stack_bytes_max`](crate::Limits::wasm_stack_bytes_max).
    #[error("policy overflowed its stack: wasm_stack_bytes_max={limit_bytes}")]
    StackOverflow {
        /// The limit.
        limit_bytes: usize,
    },
    /// The call ran past [`Limits::batch_deadline_ms`](crate::Limits::batch_deadline_ms).
    #[error("policy call exceeded the wall-clock backstop batch_deadline_ms={limit_ms}")]
    DeadlineExceeded {
        /// The limit.
        limit_ms: u64,
    },
    /// The policy returned an error of its own.
    #[error("policy returned an error: {0}")]
    GuestError(PolicyError),
    /// The batch has more than
    /// [`Limits::batch_readings_max`](crate::Limits::batch_readings_max)
    /// readings; the guest was not called.
    #[error("batch has {count} readings, over the limit batch_readings_max={limit}")]
    BatchTooLarge {
        /// Readings offered.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// `process` returned more than
    /// [`Limits::actions_per_batch_max`](crate::Limits::actions_per_batch_max)
    /// actions; none of them were taken.
    #[error("policy returned {count} actions, over the limit actions_per_batch_max={limit}")]
    TooManyActions {
        /// Actions returned.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The call's result is larger than
    /// [`Limits::output_bytes_max`](crate::Limits::output_bytes_max); it was
    /// not copied out of the guest.
    #[error("policy result is over the limit output_bytes_max={limit_bytes}")]
    OutputTooLarge {
        /// The limit.
        limit_bytes: usize,
    },
    /// The snapshot is too large or not canonical DAG-CBOR.
    #[error(transparent)]
    State(#[from] StateError),
    /// The guest broke the canonical ABI: an out-of-bounds or misaligned
    /// pointer or length, invalid UTF-8, an invalid enum or variant tag.
    #[error("policy broke the canonical ABI: {reason}")]
    Abi {
        /// wasmtime's explanation.
        reason: String,
    },
    /// An earlier failure stopped the guest mid-call; this instance may not
    /// be entered again.
    #[error("policy instance is poisoned by an earlier failure; recreate it from the last good state")]
    Poisoned,
    /// The host ran out of memory while serving the call.
    #[error("the host ran out of memory while calling the policy")]
    HostOutOfMemory,
}

impl CallError {
    /// Whether the guest was stopped in the middle of the call, which
    /// leaves its state unknown and poisons the instance.
    ///
    /// Refusals of a completed call's output ([`CallError::TooManyActions`],
    /// [`CallError::OutputTooLarge`], [`CallError::State`]),
    /// [`CallError::GuestError`] and [`CallError::BatchTooLarge`] leave the
    /// instance usable.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Self::GuestError(_)
                | Self::BatchTooLarge { .. }
                | Self::TooManyActions { .. }
                | Self::OutputTooLarge { .. }
                | Self::State(_)
        )
    }
}

/// What kind of trap stopped a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrapCode {
    /// `unreachable` was executed; a Rust guest's panic ends here.
    Unreachable,
    /// A load or store outside linear memory.
    MemoryOutOfBounds,
    /// A table access out of bounds.
    TableOutOfBounds,
    /// An indirect call to a null table entry.
    IndirectCallToNull,
    /// An indirect call with the wrong signature.
    BadSignature,
    /// Integer overflow (e.g. `i32.div_s` of `i32::MIN` by -1).
    IntegerOverflow,
    /// Integer division by zero.
    IntegerDivisionByZero,
    /// A float that does not fit the integer type it was converted to.
    BadConversionToInteger,
    /// Any other trap.
    Other,
}

impl TrapCode {
    pub(crate) fn from_wasmtime(trap: wasmtime::Trap) -> Self {
        match trap {
            wasmtime::Trap::UnreachableCodeReached => Self::Unreachable,
            wasmtime::Trap::MemoryOutOfBounds => Self::MemoryOutOfBounds,
            wasmtime::Trap::TableOutOfBounds => Self::TableOutOfBounds,
            wasmtime::Trap::IndirectCallToNull => Self::IndirectCallToNull,
            wasmtime::Trap::BadSignature => Self::BadSignature,
            wasmtime::Trap::IntegerOverflow => Self::IntegerOverflow,
            wasmtime::Trap::IntegerDivisionByZero => Self::IntegerDivisionByZero,
            wasmtime::Trap::BadConversionToInteger => Self::BadConversionToInteger,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for TrapCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unreachable => "unreachable executed",
            Self::MemoryOutOfBounds => "out of bounds memory access",
            Self::TableOutOfBounds => "out of bounds table access",
            Self::IndirectCallToNull => "indirect call to null",
            Self::BadSignature => "indirect call type mismatch",
            Self::IntegerOverflow => "integer overflow",
            Self::IntegerDivisionByZero => "integer divide by zero",
            Self::BadConversionToInteger => "invalid conversion to integer",
            Self::Other => "trap",
        })
    }
}

/// The guest's call stack when it failed, innermost frame first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestBacktrace {
    /// The frames, innermost first.
    pub frames: Vec<GuestFrame>,
}

/// One frame of a [`GuestBacktrace`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuestFrame {
    /// The core module's name, if it has one.
    pub module: Option<String>,
    /// The function's index in its core module.
    pub func_index: u32,
    /// The function's demangled name, from the name section or DWARF.
    pub function: Option<String>,
    /// Source locations from DWARF, outermost last when functions were
    /// inlined; empty without debug info.
    pub locations: Vec<SourceLocation>,
}

/// A source position from DWARF debug info.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceLocation {
    /// The function at this position (differs from the frame's for
    /// inlined code).
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// 1-based line.
    pub line: Option<u32>,
    /// 1-based column.
    pub column: Option<u32>,
}

impl GuestBacktrace {
    pub(crate) fn from_wasmtime(trace: &wasmtime::WasmBacktrace) -> Self {
        let frames = trace
            .frames()
            .iter()
            .map(|frame| GuestFrame {
                module: frame.module().name().map(str::to_owned),
                func_index: frame.func_index(),
                function: frame.func_name().map(demangle),
                locations: frame
                    .symbols()
                    .iter()
                    .map(|symbol| SourceLocation {
                        function: symbol.name().map(demangle),
                        file: symbol.file().map(str::to_owned),
                        line: symbol.line(),
                        column: symbol.column(),
                    })
                    .collect(),
            })
            .collect();
        Self { frames }
    }
}

/// Rust names without their hash suffix; other names as they are.
fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

impl fmt::Display for GuestBacktrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.frames.is_empty() {
            return f.write_str("guest backtrace: <none>");
        }
        f.write_str("guest backtrace:")?;
        for (frame_idx, frame) in self.frames.iter().enumerate() {
            let module = frame.module.as_deref().unwrap_or("<module>");
            write!(f, "\n  {frame_idx:>3}: {module}!")?;
            match &frame.function {
                Some(function) => f.write_str(function)?,
                None => write!(f, "<wasm function {}>", frame.func_index)?,
            }
            // Innermost first: with inlining, the first location is in the
            // deepest inlined function and the last in the frame's own.
            for location in &frame.locations {
                let Some(file) = &location.file else { continue };
                write!(f, "\n         at {file}")?;
                if let Some(line) = location.line {
                    write!(f, ":{line}")?;
                    if let Some(column) = location.column {
                        write!(f, ":{column}")?;
                    }
                }
                if let Some(function) = &location.function {
                    write!(f, " in {function}")?;
                }
            }
        }
        Ok(())
    }
}
