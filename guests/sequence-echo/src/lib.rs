//! A test policy that echoes each reading's sequence number, so a host test can see which version processed which reading, exactly once and in order.
//!
//! For every reading it emits one telemetry action with the reading's sensor and timestamp, `metric = tag` and `value = sequence` (exact below 2^53).
//! Its state is the number of readings processed and the last sequence number; a batch whose sequence numbers are not strictly increasing, within the batch or after the last one processed, fails with `failed`.
//! A failing batch changes no state.
//!
//! Config:
//! - `tag` (text, required): the metric of every action, e.g. the version's name;
//! - `trap_when_sequence_mod` and `trap_when_sequence_rem` (integers, both or neither): trap (panic) on a reading whose `sequence % mod == rem`;
//! - `error_when_sequence_mod` and `error_when_sequence_rem` (integers, both or neither): fail the batch with `failed` on a reading whose `sequence % mod == rem`;
//! - `trap_in_snapshot_after_sequence` (integer): `snapshot` traps once the last sequence processed is at least this, a version whose state can no longer be saved.
//!
//! The trap is checked before the error.

use molt_policy_sdk::{Action, Config, Policy, PolicyError, Reading, Telemetry, config_error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct SequenceEcho {
    #[serde(skip)]
    settings: Settings,
    n_readings: u64,
    last_sequence: Option<u64>,
}

#[derive(Debug, Default)]
struct Settings {
    tag: String,
    trap_when: Option<Residue>,
    error_when: Option<Residue>,
    trap_in_snapshot_after: Option<u64>,
}

/// The saved state: the fields of [`SequenceEcho`] that are not settings.
#[derive(Serialize)]
struct Saved {
    n_readings: u64,
    last_sequence: Option<u64>,
}

impl Serialize for SequenceEcho {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let (Some(after), Some(last)) = (self.settings.trap_in_snapshot_after, self.last_sequence)
            && last >= after
        {
            panic!("snapshot trap requested after sequence {after} (last {last})");
        }
        Saved {
            n_readings: self.n_readings,
            last_sequence: self.last_sequence,
        }
        .serialize(serializer)
    }
}

/// Sequence numbers `s` with `s % modulus == remainder`.
#[derive(Debug, Clone, Copy)]
struct Residue {
    modulus: u64,
    remainder: u64,
}

impl Residue {
    fn from_config(config: &Config, prefix: &str) -> Result<Option<Self>, PolicyError> {
        let mod_key = format!("{prefix}_mod");
        let rem_key = format!("{prefix}_rem");
        match (config.get_u64(&mod_key)?, config.get_u64(&rem_key)?) {
            (None, None) => Ok(None),
            (Some(0), _) => Err(config_error(&mod_key, "must be at least 1")),
            (Some(modulus), Some(remainder)) => Ok(Some(Residue { modulus, remainder })),
            (Some(_), None) => Err(config_error(&mod_key, format_args!("needs `{rem_key}`"))),
            (None, Some(_)) => Err(config_error(&rem_key, format_args!("needs `{mod_key}`"))),
        }
    }

    fn matches(self, sequence: u64) -> bool {
        sequence % self.modulus == self.remainder
    }
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, PolicyError> {
        config.check_keys(&[
            "tag",
            "trap_when_sequence_mod",
            "trap_when_sequence_rem",
            "error_when_sequence_mod",
            "error_when_sequence_rem",
            "trap_in_snapshot_after_sequence",
        ])?;
        Ok(Settings {
            tag: config.require_str("tag")?.to_owned(),
            trap_when: Residue::from_config(config, "trap_when_sequence")?,
            error_when: Residue::from_config(config, "error_when_sequence")?,
            trap_in_snapshot_after: config.get_u64("trap_in_snapshot_after_sequence")?,
        })
    }
}

impl Policy for SequenceEcho {
    fn init(config: &Config) -> Result<Self, PolicyError> {
        Ok(SequenceEcho {
            settings: Settings::from_config(config)?,
            n_readings: 0,
            last_sequence: None,
        })
    }

    fn process(&mut self, batch: &[Reading], actions: &mut Vec<Action>) -> Result<(), PolicyError> {
        // Checked in full before any state changes, so that a failed batch can be retried.
        let mut last_sequence = self.last_sequence;
        for reading in batch {
            let sequence = reading.sequence;
            if let Some(last) = last_sequence
                && sequence <= last
            {
                return Err(PolicyError::Failed(format!(
                    "sequence {sequence} after {last}: duplicated or out of order"
                )));
            }
            if self.settings.trap_when.is_some_and(|residue| residue.matches(sequence)) {
                panic!("trap requested at sequence {sequence}");
            }
            if self
                .settings
                .error_when
                .is_some_and(|residue| residue.matches(sequence))
            {
                return Err(PolicyError::Failed(format!("error requested at sequence {sequence}")));
            }
            last_sequence = Some(sequence);
        }
        actions.extend(batch.iter().map(|reading| {
            Action::from(Telemetry::for_reading(
                reading,
                &self.settings.tag,
                reading.sequence as f64,
            ))
        }));
        self.n_readings += batch.len() as u64;
        self.last_sequence = last_sequence;
        Ok(())
    }

    fn reconfigure(&mut self, config: &Config) -> Result<(), PolicyError> {
        self.settings = Settings::from_config(config)?;
        Ok(())
    }
}

molt_policy_sdk::export_policy!(SequenceEcho);

#[cfg(test)]
mod tests;
