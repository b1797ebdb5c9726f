//! Write molt policies in Rust.
//!
//! A molt policy is the logic a device runs on its sensor readings: it turns each batch of readings into actions (telemetry to publish, alerts, actuator commands, log lines).
//! It ships as a WebAssembly component of the `molt:policy` world (`wit/policy.wit` in the molt repository), which the device runs sandboxed and swaps live without losing a reading.
//! This crate hides the component plumbing: you write a type that implements [`Policy`] and call [`export_policy!`] once.
//!
//! # A policy in full
//!
//! This one publishes a sensor's running maximum whenever it rises by more than `min_step`:
//!
//! ```
//! use molt_policy_sdk::{Action, Config, Policy, PolicyError, Reading, SensorMap, Telemetry};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Peak {
//!     // Settings come from the config on `init` and again on `restore`,
//!     // so they stay out of the snapshot.
//!     #[serde(skip)]
//!     min_step: f64,
//!     // The state proper: everything needed to continue after a swap.
//!     peaks: SensorMap<f64>,
//! }
//!
//! impl Policy for Peak {
//!     fn init(config: &Config) -> Result<Self, PolicyError> {
//!         let mut peak = Peak { min_step: 0.0, peaks: SensorMap::default() };
//!         peak.reconfigure(config)?;
//!         Ok(peak)
//!     }
//!
//!     fn process(&mut self, batch: &[Reading], actions: &mut Vec<Action>) -> Result<(), PolicyError> {
//!         for reading in batch {
//!             // DAG-CBOR cannot hold NaN or infinities: never keep them in state.
//!             if !reading.value.is_finite() {
//!                 continue;
//!             }
//!             let peak = self.peaks.get_or_insert_with(reading.sensor, || f64::MIN);
//!             if reading.value > *peak + self.min_step {
//!                 *peak = reading.value;
//!                 actions.push(Telemetry::for_reading(reading, "peak", reading.value).into());
//!             }
//!         }
//!         Ok(())
//!     }
//!
//!     fn reconfigure(&mut self, config: &Config) -> Result<(), PolicyError> {
//!         config.check_keys(&["min_step"])?;
//!         self.min_step = config.get_f64("min_step")?.unwrap_or(0.0);
//!         Ok(())
//!     }
//! }
//!
//! molt_policy_sdk::export_policy!(Peak);
//! # fn main() {}
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown` and turn the core module into a component with `wit-component`;
//! `crates/molt-guests` in the molt repository does both for the policies in `guests/`.
//!
//! # Lifecycle
//!
//! The host drives a policy instance through the world's four exports, which [`export_policy!`] maps onto the trait:
//!
//! 1. `init(config)` calls [`Policy::init`] on a fresh instance;
//!    or `restore(config, state)` decodes the state with [`decode_state`] and calls [`Policy::reconfigure`] with the new config.
//!    `init` is not called before `restore`.
//! 2. `process(batch)` calls [`Policy::process`] with readings in strictly increasing `sequence`.
//! 3. `snapshot()` encodes the policy with [`encode_state`], at a batch boundary.
//!    `restore(config, snapshot())` on a new instance, of this or a later version, must carry on as if nothing had happened.
//!
//! A state field added in a later version needs `#[serde(default)]`, so that the new version can restore the old version's snapshots.
//!
//! # Determinism
//!
//! The world imports nothing, so a policy has no clock, no randomness and no I/O: the same config and readings give the same actions and the same snapshot bytes on every device.
//! Keep it that way: take time only from `Reading::timestamp_ms`, derive any pseudo-randomness from the readings, and prefer [`SensorMap`] and `BTreeMap` over `HashMap` so that iteration order never depends on a hasher.
//!
//! # Failures
//!
//! Return a [`PolicyError`] for anything wrong with the input: [`PolicyError::InvalidConfig`] from [`Config`]'s getters, [`PolicyError::Failed`] from `process`.
//! A panic, like any trap, makes the host throw the instance away, restore it from the last good snapshot, and count a failure against this version; repeated failures revert a new version.
//!
//! # Limits
//!
//! The host meters every call with fuel and bounds memory, tables and stack; the numbers are the device's configuration, not the policy's.
//! Exceeding one traps.
#![deny(missing_docs)]

mod action;
mod config;
mod policy;
mod sensor_map;
mod state;
pub mod testing;

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "export_policy_world",
        default_bindings_module: "molt_policy_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

#[doc(hidden)]
pub mod export;

pub use crate::bindings::molt::policy::types::{
    Action, Alert, Command, Level, LogLine, PolicyError, Reading, Severity, Telemetry,
};
pub use crate::config::{Config, config_error};
pub use crate::policy::Policy;
pub use crate::sensor_map::SensorMap;
pub use crate::state::{decode_state, encode_state};

/// Exports a [`Policy`] type as the component's `molt:policy/policy` world.
///
/// Call it once, at the root of the policy's `cdylib` crate.
/// It keeps the one instance of the policy in a global: WebAssembly components are single-threaded, and the host serialises calls.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: () = {
            ::std::thread_local! {
                static MOLT_POLICY_SLOT: $crate::export::Slot<$policy> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct MoltPolicyExport;

            impl $crate::export::Guest for MoltPolicyExport {
                fn init(config: $crate::export::ConfigPairs) -> ::core::result::Result<(), $crate::PolicyError> {
                    MOLT_POLICY_SLOT.with(|slot| $crate::export::init::<$policy>(slot, config))
                }

                fn process(
                    batch: ::std::vec::Vec<$crate::Reading>,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::Action>, $crate::PolicyError> {
                    MOLT_POLICY_SLOT.with(|slot| $crate::export::process::<$policy>(slot, batch))
                }

                fn snapshot() -> ::std::vec::Vec<u8> {
                    MOLT_POLICY_SLOT.with(|slot| $crate::export::snapshot::<$policy>(slot))
                }

                fn restore(
                    config: $crate::export::ConfigPairs,
                    state: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<(), $crate::PolicyError> {
                    MOLT_POLICY_SLOT.with(|slot| $crate::export::restore::<$policy>(slot, config, state))
                }
            }

            $crate::bindings::export_policy_world!(
                MoltPolicyExport with_types_in $crate::bindings
            );
        };
    };
}

#[cfg(test)]
mod tests;
