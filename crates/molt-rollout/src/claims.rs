//! A device is in at most one active rollout.

use std::collections::HashMap;

use crate::controller::{Phase, Rollout};
use crate::error::RolloutError;

/// Which active rollout holds each device. Derived from the active
/// rollouts themselves ([`Claims::from_rollouts`]), so it needs no storage
/// of its own and cannot disagree with them after a restart.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    by_device: HashMap<String, String>,
}

impl Claims {
    /// The claims of every rollout that is not over.
    pub fn from_rollouts<'a>(rollouts: impl IntoIterator<Item = &'a Rollout>) -> Claims {
        let mut claims = Claims::default();
        for rollout in rollouts {
            if rollout.status().is_terminal() {
                continue;
            }
            for (ix, id) in rollout.device_ids().enumerate() {
                let phase = rollout.phase(crate::DeviceIx(ix as u32));
                if !matches!(phase, Some(Phase::Ineligible | Phase::AlreadyCurrent)) {
                    claims.by_device.insert(id.to_owned(), rollout.spec().id.clone());
                }
            }
        }
        claims
    }

    /// Claims every device for `rollout`, or none: the error names the
    /// first device another active rollout holds.
    pub fn claim_all<'a>(
        &mut self,
        rollout: &str,
        devices: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<(), RolloutError> {
        for device in devices.clone() {
            if let Some(holder) = self.by_device.get(device)
                && holder != rollout
            {
                return Err(RolloutError::Claimed {
                    device: device.to_owned(),
                    rollout: holder.clone(),
                });
            }
        }
        for device in devices {
            self.by_device.insert(device.to_owned(), rollout.to_owned());
        }
        Ok(())
    }

    /// Frees every device of a rollout that is over.
    pub fn release(&mut self, rollout: &str) {
        self.by_device.retain(|_, holder| holder != rollout);
    }

    /// The active rollout that holds `device`.
    pub fn holder(&self, device: &str) -> Option<&str> {
        self.by_device.get(device).map(String::as_str)
    }
}
