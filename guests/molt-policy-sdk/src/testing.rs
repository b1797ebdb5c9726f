//! Helpers for testing a policy natively with `cargo test`, the way the
//! host drives it: configure from key/value pairs, then process batches.
//!
//! ```
//! # use molt_policy_sdk::{Action, Config, Policy, PolicyError, Reading};
//! # #[derive(serde::Serialize, serde::Deserialize)]
//! # struct Count(u64);
//! # impl Policy for Count {
//! #     fn init(_: &Config) -> Result<Self, PolicyError> { Ok(Count(0)) }
//! #     fn process(&mut self, batch: &[Reading], _: &mut Vec<Action>) -> Result<(), PolicyError> {
//! #         self.0 += batch.len() as u64;
//! #         Ok(())
//! #     }
//! # }
//! use molt_policy_sdk::testing;
//!
//! let mut count: Count = testing::init(&[("window", "4")])?;
//! let actions = testing::process(&mut count, &[Reading { sequence: 0, sensor: 1, timestamp_ms: 0, value: 1.0 }])?;
//! assert!(actions.is_empty());
//! # Ok::<(), PolicyError>(())
//! ```

use crate::{Action, Config, Policy, PolicyError, Reading, decode_state, encode_state};

/// Starts `P` from `pairs`, exactly as the host's `init` would.
pub fn init<P: Policy>(pairs: &[(&str, &str)]) -> Result<P, PolicyError> {
    P::init(&Config::from_pairs(pairs.iter().copied())?)
}

/// Processes one batch and returns the actions it produced.
pub fn process<P: Policy>(policy: &mut P, batch: &[Reading]) -> Result<Vec<Action>, PolicyError> {
    let mut actions = Vec::new();
    policy.process(batch, &mut actions)?;
    Ok(actions)
}

/// Snapshots `policy` and restores it under `pairs`, exactly as the host's
/// `snapshot` then `restore` on a fresh instance would (a live swap, or
/// recovery after a trap), and returns the restored policy.
///
/// Fails if the state cannot be encoded or decoded, or if the restored
/// policy's snapshot has other bytes than the original's: then something
/// the policy needs to continue is missing from its state (a field marked
/// `#[serde(skip)]` that `reconfigure` does not set again, say).
/// Call it with the same config to prove nothing is lost; with a new config
/// to see what `reconfigure` makes of an old state.
pub fn round_trip<P: Policy>(policy: &P, pairs: &[(&str, &str)]) -> Result<P, PolicyError> {
    let config = Config::from_pairs(pairs.iter().copied())?;
    let bytes = encode_state(policy)?;
    let mut restored: P = decode_state(&bytes)?;
    restored.reconfigure(&config)?;
    let again = encode_state(&restored)?;
    if again != bytes {
        return Err(PolicyError::InvalidState(format!(
            "snapshot/restore round trip changed the state: {} bytes became {} bytes",
            bytes.len(),
            again.len()
        )));
    }
    Ok(restored)
}

/// A batch from `(sensor, value)` pairs: sequence numbers from 0, and
/// timestamps `interval_ms` apart from 0.
pub fn readings(values: &[(u32, f64)], interval_ms: u64) -> Vec<Reading> {
    values
        .iter()
        .zip(0u64..)
        .map(|(&(sensor, value), index)| Reading {
            sequence: index,
            sensor,
            timestamp_ms: interval_ms * index,
            value,
        })
        .collect()
}

/// Renders telemetry as `sensor:metric=value`, one per line; any other
/// action in its `Debug` form.
pub fn telemetry_lines(actions: &[Action]) -> String {
    actions
        .iter()
        .map(|action| match action {
            Action::Telemetry(telemetry) => format!("{}:{}={}", telemetry.sensor, telemetry.metric, telemetry.value),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
