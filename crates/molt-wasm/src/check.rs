//! The policy check: whether bytes are a policy this runtime can run with a
//! given config. `molt release create`, `molt verify` and `molt policy check`
//! all run this one function, so a release never carries a policy the
//! device would refuse when installing it.

use crate::error::{CallError, Error};
use crate::runtime::Runtime;

/// What a policy that passed [`check_policy`] used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// The component's size.
    pub size_bytes: usize,
    /// The runtime's limit on it (`module_bytes_max`).
    pub module_bytes_max: usize,
    /// Fuel `init` used with the config.
    pub init_fuel: u64,
    /// Fuel each call gets (`fuel_per_batch`).
    pub fuel_per_batch: u64,
    /// Linear memory the instance holds after `init`, in bytes.
    pub memory_bytes: usize,
    /// The runtime's limit on it (`memory_bytes_max`).
    pub memory_bytes_max: usize,
}

/// Why bytes are not a policy that can run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// Not a WebAssembly binary at all.
    #[error(
        "not a WebAssembly binary (it starts with {start:?}, not \"\\0asm\"); a policy is a .wasm component: make one with `molt policy build`"
    )]
    NotWasm {
        /// Its first bytes, as text.
        start: String,
    },
    /// A core module, which the component model must wrap first.
    #[error(
        "a core WebAssembly module, not a component; wrap it into a molt:policy component with `molt policy build --core <FILE>`"
    )]
    CoreModule,
    /// Refused by the compiler or the contract check (imports, exports,
    /// size, pool limits).
    #[error("{0}")]
    Module(Error),
    /// `init` with the config failed, trapped or ran out of a limit.
    #[error("init with this config failed: {0}")]
    Init(CallError),
}

/// The layer field of a component's preamble: `\0asm`, version 0x0d, layer 1.
const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
/// A core module's preamble: `\0asm`, version 1.
const CORE_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// Checks that `wasm` is a `molt:policy` component within the runtime's
/// limits that compiles, instantiates, and accepts `config` in `init`,
/// which is what a device does before it installs a policy.
pub fn check_policy(runtime: &Runtime, wasm: &[u8], config: &[(String, String)]) -> Result<CheckReport, CheckError> {
    if wasm.get(..8) == Some(&CORE_PREAMBLE[..]) {
        return Err(CheckError::CoreModule);
    }
    if wasm.get(..4) != Some(&COMPONENT_PREAMBLE[..4]) {
        let start: String = String::from_utf8_lossy(&wasm[..wasm.len().min(16)]).into_owned();
        return Err(CheckError::NotWasm { start });
    }
    let module = runtime.compile(wasm).map_err(CheckError::Module)?;
    let mut instance = module.instantiate().map_err(CheckError::Module)?;
    instance.init(config).map_err(CheckError::Init)?;
    let limits = runtime.limits();
    Ok(CheckReport {
        size_bytes: wasm.len(),
        module_bytes_max: limits.module_bytes_max,
        init_fuel: instance.fuel_consumed_last_call(),
        fuel_per_batch: limits.fuel_per_batch,
        memory_bytes: instance.memory_bytes(),
        memory_bytes_max: limits.memory_bytes_max,
    })
}
