//! Typed refusals.

use thiserror::Error;

/// A spec that cannot be run.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A field is out of its range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as in the spec's JSON.
        field: &'static str,
        /// What it must be.
        reason: String,
    },
    /// A count is above its named limit.
    #[error("{got} is more than {limit} ({max})")]
    Limit {
        /// The limit's name in [`crate::Limits`].
        limit: &'static str,
        /// Its value.
        max: u64,
        /// What was asked.
        got: u64,
    },
}

/// Why a rollout could not be created, or a device could not join it.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The spec is invalid.
    #[error("invalid rollout spec: {0}")]
    Spec(#[from] SpecError),
    /// A device is already in another active rollout.
    #[error(
        "device {device} is already in active rollout {rollout}; a device is in at most one active rollout (finish or abort that one first)"
    )]
    Claimed {
        /// The device.
        device: String,
        /// The rollout that has it.
        rollout: String,
    },
    /// The same device id twice.
    #[error("device {0} is listed twice")]
    Duplicate(String),
    /// A device id, class or tag is empty or too long.
    #[error("device {device}: {what} must be 1 to {max} bytes (name_len_max)")]
    Name {
        /// The device (possibly truncated).
        device: String,
        /// Which name.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A count is above its named limit.
    #[error("{got} is more than {limit} ({max})")]
    Limit {
        /// The limit's name in [`crate::Limits`].
        limit: &'static str,
        /// Its value.
        max: u64,
        /// What was asked.
        got: u64,
    },
    /// Not one device of the group can take the release.
    #[error("no device of the group can take release set {version}: {reason}")]
    NoEligibleDevice {
        /// The release set.
        version: u64,
        /// Why not, with counts.
        reason: String,
    },
}

/// An operator command the rollout's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command does not apply in this state.
    #[error("cannot {command} rollout {rollout}: it is {status}{hint}")]
    NotNow {
        /// The rollout.
        rollout: String,
        /// The command.
        command: &'static str,
        /// Its status.
        status: String,
        /// What to do instead, with a leading "; ".
        hint: &'static str,
    },
}
