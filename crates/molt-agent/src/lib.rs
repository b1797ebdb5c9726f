#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
//! molt-agent: the core of the device daemon.
//!
//! A [`Device`] owns one state directory and joins the three libraries
//! below it:
//!
//! - **molt-release** verifies release sets through TUF against the root
//!   metadata pinned at provisioning, and fetches and checks every part;
//! - **molt-core** installs the agent image into the inactive of two slots,
//!   boots it on trial and commits it after a health check, so a power cut at
//!   any storage operation still leaves a verified image to boot;
//! - **molt-wasm** runs each installed policy in a [`molt_wasm::Deployment`]
//!   and swaps a new version in at a batch boundary, state carried over,
//!   reverting by itself if it fails on trial.
//!
//! # Lifecycle
//!
//! 1. [`Device::provision`] pins the repository's root metadata and the
//!    image keys in a new state directory; [`Device::open`] reopens one.
//! 2. [`Device::update`] installs the newest release set from a
//!    [`Source`](molt_release::download::Source): it is
//!    [`Device::prepare`] (check, fetch, verify the agent manifest, compile
//!    and test-initialise every changed policy; changes nothing) followed by
//!    [`Device::install`] (accept the metadata, stage, trial-boot and commit
//!    the agent, stage the policies, record the set durably). A set is
//!    installed all or nothing: everything is verified before the first
//!    change.
//! 3. [`Device::process`] runs a batch of readings through every policy and
//!    writes what they delivered, and every swap, commit and revert, to the
//!    action log as JSON lines.
//!
//! The record of what is installed ([`Installed`]: release set version,
//! security counter, agent version and the serving policy versions) is
//! replaced atomically and durably.
//!
//! # Example
//!
//! ```no_run
//! # async fn example(root_json: &[u8], image_keys: &molt_core::TrustRoot) -> Result<(), molt_agent::DeviceError> {
//! use molt_agent::{Device, DeviceConfig};
//! use molt_release::download::{NoProgress, Source};
//!
//! let config = DeviceConfig::new("rpi4", "1.0.0");
//! let mut device = Device::provision("/var/lib/molt".as_ref(), root_json, image_keys, config)?;
//! let source = Source::Dir("/srv/repo/public".into());
//! let cancel = tokio_util::sync::CancellationToken::new();
//! if let Some(report) = device.update(&source, &NoProgress, &cancel).await? {
//!     println!("installed release set {}", report.release_version);
//! }
//! let batch = [molt_wasm::Reading { sequence: 1, sensor: 7, timestamp_ms: 1_700_000_000_000, value: 21.5 }];
//! let processed = device.process(&batch)?;
//! # Ok(())
//! # }
//! ```

mod action_log;
pub mod actuators;
pub mod agent_slots;
mod config;
pub mod daemon;
mod device;
mod error;
pub mod gpio;
pub mod identity;
pub mod link;
pub mod log;
pub mod metrics;
mod mqtt_client;
pub mod mqtt_io;
pub mod outbox;
pub mod pipeline;
mod record;
pub mod report;

pub use crate::agent_slots::{AGENT_IMAGE_NAME, AgentInstall, Health};
pub use crate::config::DeviceConfig;
pub use crate::device::{AgentEngine, Device, InstallReport, Prepared, Processed, SlotsReopened};
pub use crate::error::DeviceError;
pub use crate::record::{Installed, PolicyRecord};

#[cfg(test)]
mod durable_tests;
#[cfg(test)]
mod tests;
