//! Why a device operation failed.

use std::path::PathBuf;

/// Why a device operation failed.
///
/// An update that fails before [`Device::install`](crate::Device::install)
/// changed nothing on the device; see each variant for what a failure during
/// installation leaves behind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// A file in the state directory could not be read or written.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What the device was doing.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file in the state directory is larger than its limit.
    #[error("{path} is {size_bytes} bytes, over the limit {limit_name}={limit_bytes}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// The limit's name in [`DeviceConfig`](crate::DeviceConfig).
        limit_name: &'static str,
        /// The limit.
        limit_bytes: u64,
    },
    /// A file in the state directory does not hold what the device wrote.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `provision` was given a directory that already holds a device.
    #[error("{0} already holds a provisioned device; open it instead")]
    AlreadyProvisioned(PathBuf),
    /// The image keys cannot form a trust root.
    #[error("image trust root: {0}")]
    TrustRoot(#[from] molt_core::TrustRootError),
    /// The agent slot store could not be opened.
    #[error("agent slot store: {0}")]
    SlotStore(#[from] molt_core::StorageError),
    /// The A/B engine refused or failed; after a storage failure the device
    /// has already reopened it from what is durable.
    #[error("agent slots: {0}")]
    Slots(#[from] molt_core::Error),
    /// The release set, its metadata or one of its parts was refused. Nothing
    /// was installed and the trusted metadata is unchanged.
    #[error("update refused: {0}")]
    Update(#[from] molt_release::client::UpdateError),
    /// The agent image's signed manifest does not verify under the image keys.
    #[error("agent manifest refused: {0}")]
    Manifest(#[from] molt_core::ManifestError),
    /// The agent image's manifest disagrees with the release set or this
    /// device.
    #[error("agent manifest says {field} is `{found}`, expected `{expected}`")]
    AgentMismatch {
        /// Which field.
        field: &'static str,
        /// What this device or the release set needs.
        expected: String,
        /// What the manifest says.
        found: String,
    },
    /// The trial boot of a new agent image did not pass its health check;
    /// the trial was rolled back and the committed image still boots.
    #[error("agent {version} failed its health check and was rolled back: {reason}")]
    HealthCheck {
        /// The agent version on trial.
        version: String,
        /// What failed.
        reason: String,
    },
    /// The policy runtime could not be built.
    #[error("policy runtime: {0}")]
    Runtime(#[source] molt_wasm::Error),
    /// A policy module could not be compiled or instantiated.
    #[error("policy {name}: {source}")]
    PolicyModule {
        /// The policy.
        name: String,
        /// Why.
        #[source]
        source: molt_wasm::Error,
    },
    /// A policy refused its configuration or state.
    #[error("policy {name}: {source}")]
    PolicyCall {
        /// The policy.
        name: String,
        /// Why.
        #[source]
        source: molt_wasm::CallError,
    },
    /// A policy could not be started.
    #[error("policy {name}: {source}")]
    Deploy {
        /// The policy.
        name: String,
        /// Why.
        #[source]
        source: molt_wasm::DeployError,
    },
    /// No policy of this name is installed.
    #[error("no policy named `{0}` is installed")]
    NoSuchPolicy(String),
    /// A batch is larger than the policies accept; nothing was processed.
    #[error("batch has {readings} readings, over the limit batch_readings_max={limit}")]
    BatchTooLarge {
        /// Readings offered.
        readings: usize,
        /// [`molt_wasm::Limits::batch_readings_max`].
        limit: usize,
    },
}

impl DeviceError {
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DeviceError {
        let path = path.into();
        move |source| DeviceError::Io {
            operation,
            path,
            source,
        }
    }
}
