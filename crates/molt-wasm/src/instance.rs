//! A live policy: [`PolicyInstance`], its store and its limits.

use std::sync::Arc;

use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};

use crate::config::Limits;
use crate::contract::{Action, Policy, Reading};
use crate::error::{CallError, Error, GuestBacktrace, TrapCode};
use crate::module::ModuleInner;
use crate::state::{State, StateError};

/// What the store of one policy instance holds.
pub(crate) struct HostState {
    limiter: GuestLimiter,
}

/// wasmtime's `StoreLimits`, except that crossing molt's memory or table
/// limit is an error that names the limit, instead of a failed `grow` the
/// guest may not check.
struct GuestLimiter {
    store_limits: StoreLimits,
    memory_bytes_max: usize,
    table_elements_max: usize,
    /// Linear memory granted so far, over all memories (creation counts as
    /// growing from 0).
    memory_bytes: usize,
}

/// Carried inside the wasmtime error so the failure can be named.
#[derive(Debug, thiserror::Error)]
enum LimitExceeded {
    #[error("memory would grow to {requested_bytes} bytes, over memory_bytes_max={limit_bytes}")]
    Memory { requested_bytes: usize, limit_bytes: usize },
    #[error("table would grow to {requested_elements} elements, over table_elements_max={limit_elements}")]
    Table {
        requested_elements: usize,
        limit_elements: usize,
    },
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes_max {
            return Err(wasmtime::Error::new(LimitExceeded::Memory {
                requested_bytes: desired,
                limit_bytes: self.memory_bytes_max,
            }));
        }
        let granted = self.store_limits.memory_growing(current, desired, maximum)?;
        if granted {
            self.memory_bytes = self.memory_bytes.saturating_add(desired.saturating_sub(current));
        }
        Ok(granted)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_elements_max {
            return Err(wasmtime::Error::new(LimitExceeded::Table {
                requested_elements: desired,
                limit_elements: self.table_elements_max,
            }));
        }
        self.store_limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.store_limits.instances()
    }

    fn tables(&self) -> usize {
        self.store_limits.tables()
    }

    fn memories(&self) -> usize {
        self.store_limits.memories()
    }
}

impl HostState {
    fn new(limits: &Limits) -> Self {
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes_max)
            .table_elements(limits.table_elements_max)
            .instances(limits.core_instances_per_instance_max as usize)
            .memories(limits.memories_per_instance_max as usize)
            .tables(limits.tables_per_instance_max as usize)
            .build();
        HostState {
            limiter: GuestLimiter {
                store_limits,
                memory_bytes_max: limits.memory_bytes_max,
                table_elements_max: limits.table_elements_max,
                memory_bytes: 0,
            },
        }
    }
}

/// One running policy: its own store, memory and limits.
///
/// Every call gets [`Limits::fuel_per_batch`] fuel and the
/// [`Limits::batch_deadline_ms`] backstop afresh. A call that stops the
/// guest mid-way ([`CallError::is_fatal`]) poisons the instance: later
/// calls return [`CallError::Poisoned`] and the owner recreates it from
/// [`PolicyModule::instantiate`](crate::PolicyModule::instantiate) and the
/// last good [`State`].
pub struct PolicyInstance {
    policy: Policy,
    guest: Guest,
}

/// The store side of an instance, apart from the export handles so that a
/// call can borrow both.
struct Guest {
    module: Arc<ModuleInner>,
    store: Store<HostState>,
    poisoned: bool,
    fuel_consumed_last_call: u64,
}

impl PolicyInstance {
    pub(crate) fn new(module: Arc<ModuleInner>) -> Result<PolicyInstance, Error> {
        let shared = Arc::clone(&module.shared);
        let limits = &shared.config.limits;
        let mut store = Store::new(&shared.engine, HostState::new(limits));
        store.limiter(|host_state| &mut host_state.limiter);
        // wasmtime counts host-side bytes while it copies a result out of
        // the guest and stops at this budget, before allocating.
        store.set_hostcall_fuel(limits.output_bytes_max);
        // The start function gets the same budget as any call.
        prepare_call(&mut store, limits, shared.deadline_ticks).map_err(Error::Instantiate)?;

        let instance = module.instance_pre.instantiate(&mut store).map_err(|error| {
            if error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
                Error::PoolExhausted {
                    limit: limits.instances_max,
                }
            } else {
                Error::Instantiate(classify(&error, limits))
            }
        })?;
        let policy = module
            .indices
            .load(&mut store, &instance)
            .map_err(|error| Error::ContractMismatch {
                reason: format!("{error:#}"),
            })?;
        let fuel_consumed_last_call = fuel_consumed(&store, limits);
        Ok(PolicyInstance {
            policy,
            guest: Guest {
                module,
                store,
                poisoned: false,
                fuel_consumed_last_call,
            },
        })
    }

    /// Starts a fresh policy with `config`.
    pub fn init(&mut self, config: &[(String, String)]) -> Result<(), CallError> {
        let config = config.to_vec();
        let result = self.guest.call(|store| self.policy.call_init(store, &config))?;
        result.map_err(CallError::GuestError)
    }

    /// Hands one batch of readings to the policy and returns the actions it
    /// asks for, in order.
    ///
    /// Refuses batches over [`Limits::batch_readings_max`] without calling
    /// the guest, and results over [`Limits::actions_per_batch_max`] or
    /// [`Limits::output_bytes_max`] without taking any of their actions.
    pub fn process(&mut self, batch: &[Reading]) -> Result<Vec<Action>, CallError> {
        let limits = &self.guest.module.shared.config.limits;
        if batch.len() > limits.batch_readings_max {
            return Err(CallError::BatchTooLarge {
                count: batch.len(),
                limit: limits.batch_readings_max,
            });
        }
        let actions_per_batch_max = limits.actions_per_batch_max;
        let actions = self
            .guest
            .call(|store| self.policy.call_process(store, batch))?
            .map_err(CallError::GuestError)?;
        if actions.len() > actions_per_batch_max {
            return Err(CallError::TooManyActions {
                count: actions.len(),
                limit: actions_per_batch_max,
            });
        }
        Ok(actions)
    }

    /// The policy's whole state, checked to be canonical DAG-CBOR within
    /// [`Limits::state_bytes_max`].
    pub fn snapshot(&mut self) -> Result<State, CallError> {
        let state_bytes_max = self.guest.module.shared.config.limits.state_bytes_max;
        let bytes = self.guest.call(|store| self.policy.call_snapshot(store))?;
        Ok(State::from_guest(bytes, state_bytes_max)?)
    }

    /// Continues from `state` (of this or an earlier version) under
    /// `config`, on a fresh instance instead of [`PolicyInstance::init`].
    pub fn restore(&mut self, config: &[(String, String)], state: &State) -> Result<(), CallError> {
        let state_bytes_max = self.guest.module.shared.config.limits.state_bytes_max;
        if state.bytes().len() > state_bytes_max {
            return Err(CallError::State(StateError::TooLarge {
                size_bytes: state.bytes().len(),
                limit_bytes: state_bytes_max,
            }));
        }
        let config = config.to_vec();
        let result = self
            .guest
            .call(|store| self.policy.call_restore(store, &config, state.bytes()))?;
        result.map_err(CallError::GuestError)
    }

    /// Fuel the last call used (including a call that failed); for a new
    /// instance, what its start function used.
    pub fn fuel_consumed_last_call(&self) -> u64 {
        self.guest.fuel_consumed_last_call
    }

    /// Linear memory this instance holds now, in bytes, over all its
    /// memories.
    pub fn memory_bytes(&self) -> usize {
        self.guest.store.data().limiter.memory_bytes
    }

    /// Whether an earlier failure left this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.guest.poisoned
    }
}

impl Guest {
    /// Calls into the guest with fresh fuel and deadline, and turns any
    /// failure into a [`CallError`].
    fn call<R>(
        &mut self,
        guest_call: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        if self.poisoned {
            return Err(CallError::Poisoned);
        }
        let shared = &self.module.shared;
        let limits = &shared.config.limits;
        prepare_call(&mut self.store, limits, shared.deadline_ticks)?;
        let result = guest_call(&mut self.store);
        self.fuel_consumed_last_call = fuel_consumed(&self.store, limits);
        result.map_err(|error| {
            let call_error = classify(&error, limits);
            if call_error.is_fatal() {
                self.poisoned = true;
            }
            call_error
        })
    }
}

impl std::fmt::Debug for PolicyInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyInstance")
            .field("poisoned", &self.guest.poisoned)
            .field("fuel_consumed_last_call", &self.guest.fuel_consumed_last_call)
            .finish_non_exhaustive()
    }
}

fn prepare_call(store: &mut Store<HostState>, limits: &Limits, deadline_ticks: u64) -> Result<(), CallError> {
    store
        .set_fuel(limits.fuel_per_batch)
        .map_err(|error| classify(&error, limits))?;
    store.set_epoch_deadline(deadline_ticks);
    Ok(())
}

fn fuel_consumed(store: &Store<HostState>, limits: &Limits) -> u64 {
    // Fuel is always enabled, so reading it cannot fail.
    let fuel_left = store.get_fuel().unwrap_or(0);
    limits.fuel_per_batch.saturating_sub(fuel_left)
}

/// wasmtime's message when a result is over the hostcall-fuel budget. Its
/// error type is private, so the message is all there is to match; the
/// crate pins wasmtime exactly, and a test proves the match still works.
const HOSTCALL_FUEL_MESSAGE: &str = "fuel allocated for hostcalls has been exhausted";

/// Names what went wrong in a call into the guest.
pub(crate) fn classify(error: &wasmtime::Error, limits: &Limits) -> CallError {
    if let Some(limit) = error.downcast_ref::<LimitExceeded>() {
        return match *limit {
            LimitExceeded::Memory {
                requested_bytes,
                limit_bytes,
            } => CallError::MemoryLimit {
                requested_bytes,
                limit_bytes,
            },
            LimitExceeded::Table {
                requested_elements,
                limit_elements,
            } => CallError::TableLimit {
                requested_elements,
                limit_elements,
            },
        };
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        let backtrace = error
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(GuestBacktrace::from_wasmtime)
            .unwrap_or_default();
        return match *trap {
            wasmtime::Trap::OutOfFuel => CallError::FuelExhausted {
                limit: limits.fuel_per_batch,
                backtrace,
            },
            wasmtime::Trap::Interrupt => CallError::DeadlineExceeded {
                limit_ms: limits.batch_deadline_ms,
            },
            wasmtime::Trap::StackOverflow => CallError::StackOverflow {
                limit_bytes: limits.wasm_stack_bytes_max,
            },
            other => CallError::Trap {
                code: TrapCode::from_wasmtime(other),
                backtrace,
            },
        };
    }
    if error.downcast_ref::<wasmtime::OutOfMemory>().is_some() {
        return CallError::HostOutOfMemory;
    }
    if error
        .chain()
        .any(|cause| cause.to_string().contains(HOSTCALL_FUEL_MESSAGE))
    {
        return CallError::OutputTooLarge {
            limit_bytes: limits.output_bytes_max,
        };
    }
    CallError::Abi {
        reason: format!("{error:#}"),
    }
}
