//! How a device is set up.

use molt_core::FileLayout;
use molt_release::client::ClientLimits;
use molt_wasm::{RuntimeConfig, SwapConfig};

/// Everything that decides how a [`Device`](crate::Device) runs. Every
/// limit on what comes from outside is here, by name.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// This device's hardware class: release sets must carry an agent image
    /// for it, and agent manifests must name it.
    pub hardware_class: String,
    /// The agent version the device runs before its first update.
    pub factory_agent_version: String,
    /// Bounds on TUF metadata, release sets and downloads.
    pub client_limits: ClientLimits,
    /// The policy runtime: limits on every policy.
    pub runtime: RuntimeConfig,
    /// How policies swap, commit and revert.
    pub swap: SwapConfig,
    /// The largest agent image a slot accepts.
    pub slot_layout: FileLayout,
    /// The action log is rotated when it would pass this size; default 64 MiB.
    pub log_bytes_max: u64,
    /// Largest `installed.json` the device reads back; default 1 MiB.
    pub installed_bytes_max: u64,
}

impl DeviceConfig {
    /// The defaults for a device of `hardware_class` whose factory agent is
    /// `factory_agent_version`.
    pub fn new(hardware_class: impl Into<String>, factory_agent_version: impl Into<String>) -> DeviceConfig {
        DeviceConfig {
            hardware_class: hardware_class.into(),
            factory_agent_version: factory_agent_version.into(),
            client_limits: ClientLimits::default(),
            runtime: RuntimeConfig::default(),
            swap: SwapConfig::default(),
            slot_layout: FileLayout::default(),
            log_bytes_max: 64 << 20,
            installed_bytes_max: 1 << 20,
        }
    }
}
