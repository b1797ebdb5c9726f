//! A compiled, pre-instantiated policy: [`PolicyModule`].

use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre, Linker};

use crate::contract::PolicyIndices;
use crate::error::Error;
use crate::instance::{HostState, PolicyInstance};
use crate::runtime::{Runtime, Shared};

/// A policy compiled for one [`Runtime`], checked against the
/// `molt:policy` contract and pre-instantiated, so that
/// [`PolicyModule::instantiate`] costs microseconds.
///
/// Cheap to clone: clones share the compiled code.
#[derive(Clone)]
pub struct PolicyModule {
    inner: Arc<ModuleInner>,
}

pub(crate) struct ModuleInner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) instance_pre: InstancePre<HostState>,
    pub(crate) indices: PolicyIndices,
    source_sha256: [u8; 32],
}

impl Runtime {
    /// Compiles a `.wasm` policy component.
    ///
    /// Refuses modules over [`Limits::module_bytes_max`](crate::Limits::module_bytes_max)
    /// before looking at them, and gives up after
    /// [`Limits::compile_deadline_ms`](crate::Limits::compile_deadline_ms)
    /// (the compiler thread then finishes in the background and its result
    /// is dropped). Invalid bytes, imports and a wrong or missing export
    /// are typed errors.
    pub fn compile(&self, wasm: &[u8]) -> Result<PolicyModule, Error> {
        self.check_module_size(wasm)?;
        let source_sha256: [u8; 32] = Sha256::digest(wasm).into();
        let component = self.compile_bounded(wasm, |engine, wasm| Component::new(engine, wasm))?;
        PolicyModule::from_component(&self.shared, &component, source_sha256)
    }

    pub(crate) fn check_module_size(&self, wasm: &[u8]) -> Result<(), Error> {
        let limit_bytes = self.limits().module_bytes_max;
        if wasm.len() > limit_bytes {
            return Err(Error::ModuleTooLarge {
                size_bytes: wasm.len(),
                limit_bytes,
            });
        }
        Ok(())
    }

    /// Runs `job` on a compiler thread and waits at most the compile
    /// deadline for it.
    pub(crate) fn compile_bounded<T: Send + 'static>(
        &self,
        wasm: &[u8],
        job: fn(&Engine, &[u8]) -> wasmtime::Result<T>,
    ) -> Result<T, Error> {
        let limit_ms = self.limits().compile_deadline_ms;
        let (result_sender, result_receiver) = mpsc::sync_channel(1);
        let engine = self.shared.engine.clone();
        let wasm = wasm.to_vec();
        thread::Builder::new()
            .name("molt-wasm-compile".into())
            .spawn(move || {
                // The receiver is gone if the deadline passed; the result is
                // then unwanted.
                let _ = result_sender.send(job(&engine, &wasm));
            })
            .map_err(|error| Error::Engine {
                reason: format!("could not start a compiler thread: {error}"),
            })?;
        match result_receiver.recv_timeout(Duration::from_millis(limit_ms)) {
            Ok(Ok(compiled)) => Ok(compiled),
            Ok(Err(error)) => Err(load_error(&error, |reason| Error::InvalidModule { reason })),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::CompileDeadline { limit_ms }),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::CompilerCrashed),
        }
    }
}

impl PolicyModule {
    pub(crate) fn from_component(
        shared: &Arc<Shared>,
        component: &Component,
        source_sha256: [u8; 32],
    ) -> Result<PolicyModule, Error> {
        let engine = &shared.engine;
        // The world imports no functions, so any import but the type-only
        // `molt:policy/types` instance (which a world's `use` produces) is
        // one the host lacks. Checking here names it, instead of leaving a
        // linker message.
        let component_type = component.component_type();
        let unknown_import = component_type
            .imports(engine)
            .find(|(_, import)| !is_types_only(engine, &import.ty))
            .map(|(name, _)| name.to_owned());
        if let Some(name) = unknown_import {
            return Err(Error::UnknownImport { name });
        }
        let linker = Linker::<HostState>::new(engine);
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|error| Error::ContractMismatch {
                reason: format!("{error:#}"),
            })?;
        let indices = PolicyIndices::new(&instance_pre).map_err(|error| Error::ContractMismatch {
            reason: format!("{error:#}"),
        })?;
        Ok(PolicyModule {
            inner: Arc::new(ModuleInner {
                shared: Arc::clone(shared),
                instance_pre,
                indices,
                source_sha256,
            }),
        })
    }

    /// A fresh instance with its own store, fuel and limits. Call
    /// [`PolicyInstance::init`] or [`PolicyInstance::restore`] next.
    ///
    /// A trap in the module's start function, or an initial memory over
    /// the limit, is [`Error::Instantiate`]; a full pool is
    /// [`Error::PoolExhausted`].
    pub fn instantiate(&self) -> Result<PolicyInstance, Error> {
        PolicyInstance::new(Arc::clone(&self.inner))
    }

    /// The sha256 of the `.wasm` this module was compiled from.
    pub fn source_sha256(&self) -> [u8; 32] {
        self.inner.source_sha256
    }

    /// The runtime this module belongs to.
    pub fn runtime(&self) -> Runtime {
        Runtime {
            shared: Arc::clone(&self.inner.shared),
        }
    }
}

impl std::fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyModule")
            .field("source_sha256", &hex(&self.inner.source_sha256))
            .finish_non_exhaustive()
    }
}

/// wasmtime checks a module against the pool's slot size when it compiles
/// or loads it; that refusal is a limit, not an invalid module. Its error
/// type is private, so its message is what identifies it (wasmtime is
/// pinned exactly, and a test proves the match).
const POOL_REFUSAL_MESSAGE: &str = "does not fit in pooling allocator requirements";

/// Names a failure to compile or load a module: over the pool's limits, or
/// `otherwise`.
pub(crate) fn load_error(error: &wasmtime::Error, otherwise: fn(String) -> Error) -> Error {
    let reason = format!("{error:#}");
    if reason.contains(POOL_REFUSAL_MESSAGE) {
        Error::OverPoolLimits { reason }
    } else {
        otherwise(reason)
    }
}

/// An instance import that carries only (non-resource) types, which needs
/// nothing from the host.
fn is_types_only(engine: &Engine, item: &ComponentItem) -> bool {
    match item {
        ComponentItem::ComponentInstance(instance) => instance
            .exports(engine)
            .all(|(_, export)| matches!(export.ty, ComponentItem::Type(_))),
        _ => false,
    }
}

/// Lowercase hex, for names and messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}
