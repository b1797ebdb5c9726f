#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
//! molt-wasm: the sandboxed WebAssembly runtime for molt's device policies.
//!
//! Device logic is a **policy**: a WebAssembly component exporting the
//! `molt:policy` world (`wit/policy.wit`). It turns batches of sensor
//! readings into actions (telemetry, alerts, actuator commands, log lines),
//! can snapshot its whole state, and imports nothing, so the same module and
//! inputs give the same state and actions on every device. This crate
//! compiles policies, runs them under hard limits, and turns every way a
//! guest can fail into a value.
//!
//! # Concepts
//!
//! - A [`Runtime`] is one wasmtime engine configured from a
//!   [`RuntimeConfig`]: the [`Limits`], deterministic mode (on by default),
//!   the [`Allocator`] (a pre-sized pool by default) and the [`Compiler`]
//!   (Cranelift, the Pulley interpreter, or the Winch baseline compiler for
//!   fast compiles). A background thread advances
//!   the engine's epoch for the wall-clock backstop.
//! - A [`PolicyModule`] is a policy compiled ([`Runtime::compile`]) or
//!   loaded from precompiled code ([`Runtime::load_precompiled`]), checked
//!   against the contract and pre-instantiated. Creating instances from it
//!   costs microseconds.
//! - A [`PolicyInstance`] is one running policy with its own store and
//!   memory: [`PolicyInstance::init`] or [`PolicyInstance::restore`], then
//!   [`PolicyInstance::process`] for each batch, and
//!   [`PolicyInstance::snapshot`] at batch boundaries.
//! - A [`State`] is a snapshot, validated as canonical DAG-CBOR and named
//!   by its CID ([`State::cid`]); record [`WASMTIME_VERSION`] next to it.
//!
//! # Failures are values
//!
//! Every call returns [`CallError`] instead of panicking: a trap (with a
//! symbolised [`GuestBacktrace`]), running out of fuel, hitting the memory,
//! table or stack limit, the wall-clock deadline, a policy's own
//! [`PolicyError`], or a result over a limit. Failures that stop the guest
//! mid-call poison the instance ([`CallError::is_fatal`]); recreate it from
//! the module and the last good state. Compiling or instantiating a bad
//! module (invalid bytes, oversized, imports, a start function that traps)
//! is an [`Error`]. Every error names the limit it hit.
//!
//! # Determinism
//!
//! Fuel, never time, bounds guest work: each call gets
//! [`Limits::fuel_per_batch`], and running out is the same on every host.
//! The epoch deadline ([`Limits::batch_deadline_ms`]) only kills a call fuel
//! failed to stop, it never shapes a result. Deterministic mode adds NaN
//! canonicalisation and deterministic relaxed SIMD; threads are always off.
//!
//! # Precompiled modules
//!
//! Loading precompiled code runs it as native code without validation, so
//! [`Runtime::load_precompiled`] refuses bytes unless their [`CacheKey`]
//! is this engine's and they hash to a digest the caller trusts.
//! [`Runtime::verify_precompiled`] makes that check once, where the bytes
//! enter, and [`Runtime::load_verified`] then loads them without hashing
//! them again.
//! [`ModuleCache`] keeps precompiled modules on disk under an HMAC with a
//! device-local secret and recompiles any entry that fails it.
//!
//! # Example
//!
//! A complete (if minimal) policy, written by hand in the WebAssembly text
//! format: `process` returns no actions and `snapshot` returns the empty
//! DAG-CBOR map. Real policies are written with the guest SDK in `guests/`.
//!
//! ```
//! use molt_wasm::{Reading, Runtime, RuntimeConfig};
//!
//! let wasm = wat::parse_str(r#"
//!   (component
//!     (core module $m
//!       (memory (export "mem") 1)
//!       (data (i32.const 16) "\a0")
//!       ;; A bump allocator that never frees: enough for an example.
//!       (global $next (mut i32) (i32.const 1024))
//!       (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
//!         (local $ptr i32)
//!         (local.set $ptr (i32.and (i32.add (global.get $next) (i32.sub (local.get $align) (i32.const 1)))
//!                                  (i32.sub (i32.const 0) (local.get $align))))
//!         (global.set $next (i32.add (local.get $ptr) (local.get $size)))
//!         (local.get $ptr))
//!       (func (export "init") (param i32 i32) (result i32)
//!         (i32.store8 (i32.const 32) (i32.const 0))
//!         (i32.const 32))
//!       (func (export "process") (param i32 i32) (result i32)
//!         ;; ok (tag 0), empty list (pointer 0, length 0)
//!         (i64.store (i32.const 40) (i64.const 0))
//!         (i64.store (i32.const 48) (i64.const 0))
//!         (i32.const 40))
//!       (func (export "snapshot") (result i32)
//!         (i32.store (i32.const 0) (i32.const 16))
//!         (i32.store (i32.const 4) (i32.const 1))
//!         (i32.const 0))
//!       (func (export "restore") (param i32 i32 i32 i32) (result i32)
//!         (i32.store8 (i32.const 32) (i32.const 0))
//!         (i32.const 32)))
//!     (core instance $i (instantiate $m))
//!     ;; Types in exported signatures must themselves be exported (named).
//!     (type $reading-t (record (field "sequence" u64) (field "sensor" u32)
//!                              (field "timestamp-ms" u64) (field "value" f64)))
//!     (export $reading "reading" (type $reading-t))
//!     (type $telemetry-t (record (field "sensor" u32) (field "timestamp-ms" u64)
//!                                (field "metric" string) (field "value" f64)))
//!     (export $telemetry "telemetry" (type $telemetry-t))
//!     (type $severity-t (enum "info" "warning" "critical"))
//!     (export $severity "severity" (type $severity-t))
//!     (type $alert-t (record (field "sensor" u32) (field "timestamp-ms" u64)
//!                            (field "severity" $severity) (field "message" string)))
//!     (export $alert "alert" (type $alert-t))
//!     (type $command-t (record (field "actuator" string) (field "value" f64)))
//!     (export $command "command" (type $command-t))
//!     (type $level-t (enum "debug" "info" "warn" "error"))
//!     (export $level "level" (type $level-t))
//!     (type $log-line-t (record (field "level" $level) (field "message" string)))
//!     (export $log-line "log-line" (type $log-line-t))
//!     (type $action-t (variant (case "telemetry" $telemetry) (case "alert" $alert)
//!                              (case "command" $command) (case "log" $log-line)))
//!     (export $action "action" (type $action-t))
//!     (type $policy-error-t (variant (case "invalid-config" string)
//!                                    (case "invalid-state" string) (case "failed" string)))
//!     (export $policy-error "policy-error" (type $policy-error-t))
//!     (type $config (list (tuple string string)))
//!     (func (export "init") (param "config" $config) (result (result (error $policy-error)))
//!       (canon lift (core func $i "init") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
//!     (func (export "process") (param "batch" (list $reading))
//!       (result (result (list $action) (error $policy-error)))
//!       (canon lift (core func $i "process") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
//!     (func (export "snapshot") (result (list u8))
//!       (canon lift (core func $i "snapshot") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
//!     (func (export "restore") (param "config" $config) (param "state" (list u8))
//!       (result (result (error $policy-error)))
//!       (canon lift (core func $i "restore") (memory (core memory $i "mem")) (realloc (core func $i "realloc")))))
//! "#)?;
//!
//! let runtime = Runtime::new(&RuntimeConfig::default())?;
//! let module = runtime.compile(&wasm)?;
//! let mut policy = module.instantiate()?;
//! policy.init(&[("threshold".into(), "30.5".into())])?;
//!
//! let batch = [Reading { sequence: 1, sensor: 7, timestamp_ms: 1_700_000_000_000, value: 21.5 }];
//! let actions = policy.process(&batch)?;
//! assert!(actions.is_empty());
//!
//! let state = policy.snapshot()?;
//! assert_eq!(state.cid().to_string(), "bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua");
//!
//! // A fresh instance carries on from the snapshot.
//! let mut successor = module.instantiate()?;
//! successor.restore(&[], &state)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod check;
mod config;
mod contract;
mod error;
mod instance;
mod module;
mod precompiled;
mod runtime;
mod state;
mod swap;

pub use crate::cache::{CacheLookup, ModuleCache};
pub use crate::check::{CheckError, CheckReport, check_policy};
pub use crate::config::{Allocator, Compiler, Limits, RuntimeConfig};
pub use crate::contract::{Action, Alert, Command, Level, LogLine, PolicyError, Reading, Severity, Telemetry};
pub use crate::error::{CallError, Error, GuestBacktrace, GuestFrame, SourceLocation, TrapCode};
pub use crate::instance::PolicyInstance;
pub use crate::module::PolicyModule;
pub use crate::precompiled::{CacheKey, Precompiled, VerifiedPrecompiled, WASMTIME_VERSION};
pub use crate::runtime::Runtime;
pub use crate::state::{DAG_CBOR_CODEC, SHA2_256_CODE, State, StateError};
pub use crate::swap::{
    BatchOutcome, DeployError, Deployment, Failure, PolicyVersion, SwapConfig, SwapEvent, SwapStats,
};

/// The CID type of [`State::cid`], re-exported so callers need not pin the
/// `cid` crate themselves.
pub use cid::Cid;
