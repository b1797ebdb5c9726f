//! The device side: verify a release set through TUF, fetch every part,
//! and hand verified images to molt-core, all or nothing.
//!
//! The device's trusted TUF metadata lives in `<trusted>/metadata/`. An
//! update is verified in a scratch copy (`<trusted>/scratch/`); only when the
//! release set and every one of its parts have verified is the scratch copy
//! promoted, by an atomic rename. A failed or attacked update therefore
//! leaves the trusted metadata byte-identical, whatever tough wrote while
//! verifying.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tough::schema::{Root, Signed};
use tough::{ExpirationEnforcement, RepositoryLoader};
use url::Url;

use crate::download::{self, DownloadError, DownloadLimits, Expected, NoProgress, Progress, Source};
use crate::release_set::{self, Part, ReleaseSet, ReleaseSetError};
use crate::repo::consistent_target_path;

/// Bounds on what the device accepts; each name appears in its error.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// root.json; default 1 MiB.
    pub root_bytes_max: u64,
    /// timestamp.json; default 1 MiB.
    pub timestamp_bytes_max: u64,
    /// snapshot.json when the timestamp gives no length (molt's always
    /// does); default 10 MiB.
    pub snapshot_bytes_max: u64,
    /// Root versions one update may walk through; default 32.
    pub root_updates_max: u64,
    /// Targets metadata when snapshot gives no length; default 10 MiB.
    pub targets_bytes_max: u64,
    /// The release set target; default `release_set::RELEASE_SET_BYTES_MAX`.
    pub release_set_bytes_max: u64,
    /// Any one target (image or module); default 256 MiB.
    pub target_bytes_max: u64,
    /// Transfers.
    pub download: DownloadLimits,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            root_bytes_max: 1 << 20,
            timestamp_bytes_max: 1 << 20,
            snapshot_bytes_max: 10 << 20,
            root_updates_max: 32,
            targets_bytes_max: 10 << 20,
            release_set_bytes_max: crate::release_set::RELEASE_SET_BYTES_MAX,
            target_bytes_max: 256 << 20,
            download: DownloadLimits::default(),
        }
    }
}

/// What the device has committed, against which downgrades are judged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// Version of the committed release set (0: none yet).
    pub release_version: u64,
    /// Its security counter.
    pub security_counter: u64,
    /// The running agent's `major.minor.patch`.
    pub agent_version: String,
}

/// Why an update was refused. Nothing was installed and the trusted
/// metadata is unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// No trusted directory at the path.
    #[error("{path} holds no trusted metadata; pin the repository's root with `Client::init` (molt verify --root)")]
    NotInitialised {
        /// The trusted directory.
        path: PathBuf,
    },
    /// `init` on a directory that already pins a root.
    #[error("{path} already pins a root; open it instead, or remove it to start over")]
    AlreadyInitialised {
        /// The trusted directory.
        path: PathBuf,
    },
    /// A device-local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The root given to `init` (or the trusted one) does not verify.
    #[error("trusted root metadata is not valid: {reason}; obtain root.json from the repository owner again")]
    BadTrustedRoot {
        /// Why.
        reason: String,
    },
    /// Fewer valid signatures than the role's threshold (unsigned metadata,
    /// signatures by unknown, revoked or rotated-out keys).
    #[error(
        "{role} metadata has {valid} valid signatures, below its threshold of {threshold}; the repository is misconfigured or under attack"
    )]
    BelowThreshold {
        /// The role.
        role: String,
        /// Valid signatures from keys the trusted root names for the role.
        valid: u64,
        /// Required.
        threshold: u64,
    },
    /// Two signatures from one key.
    #[error("{role} metadata carries more than one signature by key {keyid}; the repository is under attack")]
    DuplicateSignature {
        /// The role.
        role: String,
        /// The key.
        keyid: String,
    },
    /// Metadata expired (freeze attack, or the repository was not refreshed).
    #[error("{role} metadata has expired; the repository must run `molt repo refresh`, or the device clock is wrong")]
    Expired {
        /// The role.
        role: String,
    },
    /// Metadata older than what the device trusts (rollback attack).
    #[error("{role} metadata version {offered} is older than the trusted version {trusted}; refusing a rollback")]
    Rollback {
        /// The role.
        role: String,
        /// The trusted version.
        trusted: u64,
        /// The offered version.
        offered: u64,
    },
    /// A root version that is not exactly one more than the trusted one.
    #[error("root metadata jumps from trusted version {trusted} to {offered}; root versions must be consecutive")]
    NonConsecutiveRoot {
        /// The trusted version.
        trusted: u64,
        /// The offered version.
        offered: u64,
    },
    /// More root rotations in one update than `root_updates_max` allows.
    #[error("more than {limit} root rotations in one update (root_updates_max); raise the limit if this is expected")]
    TooManyRootUpdates {
        /// `root_updates_max`.
        limit: u64,
    },
    /// A metadata file's version is not the one its parent lists.
    #[error(
        "{role} metadata is version {fetched} but the {parent} lists version {expected}; the repository is inconsistent or under attack"
    )]
    VersionMismatch {
        /// The role.
        role: String,
        /// Version the file carries.
        fetched: u64,
        /// Version the parent lists.
        expected: u64,
        /// The metadata listing it.
        parent: &'static str,
    },
    /// A metadata file's hash is not the one its parent lists.
    #[error(
        "{url} does not match the sha256 its parent metadata lists; the repository is inconsistent or under attack"
    )]
    HashMismatch {
        /// The file.
        url: String,
    },
    /// A file is larger than a named limit (endless data, oversized
    /// metadata).
    #[error("{what} exceeds {max} bytes ({limit}); the server sent too much data")]
    LimitExceeded {
        /// The file.
        what: String,
        /// The limit's name.
        limit: &'static str,
        /// The limit.
        max: u64,
    },
    /// Metadata the device needs is not on the server.
    #[error("{url} is missing from the repository; check the source URL or directory")]
    MissingMetadata {
        /// The file.
        url: String,
    },
    /// Metadata could not be fetched.
    #[error("fetching {url} failed: {reason}; check the network and try again")]
    Transport {
        /// The file.
        url: String,
        /// Why.
        reason: String,
    },
    /// Metadata is not valid TUF metadata.
    #[error("{role} metadata is malformed: {reason}")]
    MalformedMetadata {
        /// The role.
        role: String,
        /// Why.
        reason: String,
    },
    /// The system clock is earlier than at the last update.
    #[error("the system clock went backwards since the last update; fix the clock and try again")]
    ClockWentBack,
    /// tough refused for another reason.
    #[error("TUF verification failed: {0}")]
    Tuf(String),
    /// A target download failed.
    #[error("downloading {target}: {source}")]
    Download {
        /// The target name.
        target: String,
        /// Why.
        source: DownloadError,
    },
    /// The release set is malformed.
    #[error("release set {target}: {source}")]
    ReleaseSet {
        /// Its target name.
        target: String,
        /// Why.
        source: ReleaseSetError,
    },
    /// A release set whose content version does not match its target name.
    #[error("target {target} holds release set version {found}; refusing a relabelled release set")]
    ReleaseSetNameMismatch {
        /// The target name.
        target: String,
        /// The version inside.
        found: u64,
    },
    /// No agent image for this device's hardware class.
    #[error(
        "release set {version} has no agent for hardware class {hardware_class} (it has: {available}); publish one or check the device's class"
    )]
    WrongHardwareClass {
        /// The set.
        version: u64,
        /// This device's class.
        hardware_class: String,
        /// The classes the set has, comma-separated.
        available: String,
    },
    /// The newest release set is older than the installed one.
    #[error(
        "the repository's newest release set {offered} is older than the installed {installed}; refusing a downgrade"
    )]
    ReleaseDowngrade {
        /// Offered.
        offered: u64,
        /// Installed.
        installed: u64,
    },
    /// The security counter went down.
    #[error(
        "release set {version} has security counter {offered}, below the installed {installed}; refusing a downgrade"
    )]
    SecurityCounterRollback {
        /// The set.
        version: u64,
        /// Offered.
        offered: u64,
        /// Installed.
        installed: u64,
    },
    /// The set's policies need a different contract.
    #[error(
        "release set {version} needs policy contract {found}, this agent implements {expected}; update the agent first"
    )]
    ContractMismatch {
        /// The set.
        version: u64,
        /// In the set.
        found: String,
        /// [`release_set::CONTRACT`].
        expected: &'static str,
    },
    /// The running agent is older than the set requires.
    #[error(
        "release set {version} needs agent {required} or newer, this device runs {running}; install a newer agent first"
    )]
    AgentTooOld {
        /// The set.
        version: u64,
        /// `min_agent_version`.
        required: String,
        /// `Installed::agent_version`.
        running: String,
    },
    /// `Installed` holds a value that is not usable.
    #[error("installed state field {field} is invalid: {reason}")]
    BadInstalled {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A part the set names is not a TUF target (partial set).
    #[error(
        "release set {version} part {field} names {target}, which is not in the signed targets; refusing a partial release set"
    )]
    PartMissing {
        /// The set.
        version: u64,
        /// The field.
        field: String,
        /// Its target name.
        target: String,
    },
    /// A part's length or sha256 differs from its TUF target (mixed set).
    #[error(
        "release set {version} part {field} ({target}) differs from the signed target in {differs}; refusing a mixed release set"
    )]
    PartMismatch {
        /// The set.
        version: u64,
        /// The field.
        field: String,
        /// Its target name.
        target: String,
        /// `length` or `sha256`.
        differs: &'static str,
    },
    /// A part is larger than `target_bytes_max` (or a manifest larger than
    /// molt-core's `MANIFEST_SIZE_MAX`).
    #[error("part {target} is {length} bytes, over the limit of {max} ({limit})")]
    PartTooLarge {
        /// Its target name.
        target: String,
        /// Its length.
        length: u64,
        /// The limit's name.
        limit: &'static str,
        /// The limit.
        max: u64,
    },
    /// Another `check` started since this update was verified.
    #[error("this update was superseded by a newer check; run check again")]
    Superseded,
    /// The signed agent manifest does not pin the image the set pins.
    #[error("agent manifest pins {what} that differs from the release set's image; refusing to stage")]
    ManifestMismatch {
        /// `length`, `sha256`, `version` or `file length`.
        what: &'static str,
    },
    /// The agent manifest does not verify.
    #[error("agent manifest: {0}")]
    Manifest(#[from] molt_core::ManifestError),
    /// molt-core refused or failed.
    #[error("update engine: {0}")]
    Engine(#[from] molt_core::Error),
}
/// A release set that verified through TUF and molt's rules; nothing
/// fetched yet.
#[derive(Debug)]
pub struct Verified {
    /// The set.
    pub set: ReleaseSet,
    /// Where it came from.
    pub source: Source,
    update: UpdateToken,
}

/// Every part of a verified release set, on disk and verified.
#[derive(Debug)]
pub struct Fetched {
    /// The set.
    pub set: ReleaseSet,
    /// The agent image for this device's hardware class, if the set has one.
    pub agent: Option<FetchedAgent>,
    /// Policy modules by name.
    pub policies: BTreeMap<String, FetchedPolicy>,
    update: UpdateToken,
}

/// A verified agent image.
#[derive(Debug, Clone)]
pub struct FetchedAgent {
    /// `major.minor.patch`.
    pub version: String,
    /// The signed molt-core manifest envelope.
    pub manifest: Vec<u8>,
    /// The image file, verified against the set.
    pub image: PathBuf,
    /// The image's length, from the verified release set.
    pub image_length: u64,
    /// The image's sha256, from the verified release set.
    pub image_sha256: [u8; 32],
}

/// A verified policy module.
#[derive(Debug, Clone)]
pub struct FetchedPolicy {
    /// `major.minor.patch`.
    pub version: String,
    /// The component bytes, verified against the set.
    pub wasm: Vec<u8>,
    /// Its sha256.
    pub sha256: [u8; 32],
    /// The configuration key/value pairs `init` and `restore` receive.
    pub config: BTreeMap<String, String>,
}

/// Ties a [`Verified`] and its [`Fetched`] to the scratch metadata that
/// verified them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UpdateToken {
    nonce: String,
}

/// A device's TUF client.
#[derive(Debug)]
pub struct Client {
    trusted: PathBuf,
    hardware_class: String,
    limits: ClientLimits,
}

const METADATA: &str = "metadata";
const VERSIONS: &str = "versions";
const SCRATCH: &str = "scratch";
const TOKEN: &str = "token";
const RELEASE_SET_FILE: &str = "release-set.json";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(path: &Path) -> Result<(), UpdateError> {
    fs::File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(path))
}

/// Reads at most `limit` bytes of `path`; `None` if it holds more.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, UpdateError> {
    let file = fs::File::open(path).map_err(io_error(path))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Copies the regular files of `from` into the new directory `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<(), UpdateError> {
    fs::create_dir_all(to).map_err(io_error(to))?;
    for entry in fs::read_dir(from).map_err(io_error(from))? {
        let entry = entry.map_err(io_error(from))?;
        if entry.file_type().map_err(io_error(&entry.path()))?.is_file() {
            let dest = to.join(entry.file_name());
            fs::copy(entry.path(), &dest).map_err(io_error(&dest))?;
        }
    }
    Ok(())
}

fn sha256_hex(sha256: &[u8]) -> String {
    hex::encode(sha256)
}

/// A tough transport from `download::transport`, boxed.
#[derive(Debug, Clone)]
struct BoxedTransport(Box<dyn tough::Transport>);

#[tough::async_trait]
impl tough::Transport for BoxedTransport {
    async fn fetch(&self, url: Url) -> Result<tough::TransportStream, tough::TransportError> {
        self.0.fetch(url).await
    }
}

fn role_name(file: &str) -> String {
    file.trim_end_matches(".json").to_owned()
}

/// Maps a tough error to molt's typed refusal.
fn classify(error: tough::error::Error, limits: &ClientLimits) -> UpdateError {
    use tough::error::Error as E;
    match error {
        E::ExpiredMetadata { role, .. } => UpdateError::Expired { role: role.to_string() },
        E::VerifyMetadata { role, source, .. } => classify_verify(role.to_string(), source),
        E::VerifyTrustedMetadata { source, .. } => UpdateError::BadTrustedRoot {
            reason: source.to_string(),
        },
        E::OlderMetadata {
            role,
            current_version,
            new_version,
            ..
        } => {
            if role == tough::schema::RoleType::Root && new_version > current_version.saturating_add(1) {
                UpdateError::NonConsecutiveRoot {
                    trusted: current_version,
                    offered: new_version,
                }
            } else {
                UpdateError::Rollback {
                    role: role.to_string(),
                    trusted: current_version,
                    offered: new_version,
                }
            }
        }
        E::OlderSnapshotInTimestamp {
            snapshot_new,
            snapshot_old,
            ..
        } => UpdateError::Rollback {
            role: "snapshot".to_owned(),
            trusted: snapshot_old,
            offered: snapshot_new,
        },
        E::SnapshotRoleRollback {
            role,
            old_role_version,
            new_role_version,
            ..
        } => UpdateError::Rollback {
            role: role_name(&role),
            trusted: old_role_version,
            offered: new_role_version,
        },
        E::SnapshotRoleMissing { role, .. } => UpdateError::MalformedMetadata {
            role: "snapshot".to_owned(),
            reason: format!("{role} was listed before and is missing now"),
        },
        E::MaxUpdatesExceeded { max_root_updates, .. } => UpdateError::TooManyRootUpdates {
            limit: max_root_updates,
        },
        E::VersionMismatch {
            role,
            fetched,
            expected,
            ..
        } => UpdateError::VersionMismatch {
            parent: if role == tough::schema::RoleType::Snapshot {
                "timestamp"
            } else {
                "snapshot"
            },
            role: role.to_string(),
            fetched,
            expected,
        },
        E::MaxSizeExceeded {
            max_size, specifier, ..
        } => limit_exceeded("metadata".to_owned(), max_size, specifier, limits),
        E::ParseMetadata { role, source, .. } => UpdateError::MalformedMetadata {
            role: role.to_string(),
            reason: source.to_string(),
        },
        E::ParseTrustedMetadata { source, .. } => UpdateError::BadTrustedRoot {
            reason: source.to_string(),
        },
        E::SystemTimeSteppedBackward { .. } => UpdateError::ClockWentBack,
        E::Transport { url, source, .. } => classify_transport(url.to_string(), &source, limits),
        other => UpdateError::Tuf(other.to_string()),
    }
}

fn classify_verify(role: String, error: tough::schema::Error) -> UpdateError {
    use tough::schema::Error as S;
    match error {
        S::SignatureThreshold { threshold, valid, .. } => UpdateError::BelowThreshold { role, valid, threshold },
        S::DuplicateKeyId { keyid } => UpdateError::DuplicateSignature { role, keyid },
        other => UpdateError::MalformedMetadata {
            role,
            reason: other.to_string(),
        },
    }
}

fn classify_transport(url: String, error: &tough::TransportError, limits: &ClientLimits) -> UpdateError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = cause {
        if let Some(tough_error) = current.downcast_ref::<tough::error::Error>() {
            match tough_error {
                tough::error::Error::HashMismatch { .. } => return UpdateError::HashMismatch { url },
                tough::error::Error::MaxSizeExceeded {
                    max_size, specifier, ..
                } => {
                    return limit_exceeded(url, *max_size, specifier, limits);
                }
                _ => {}
            }
        }
        cause = current.source();
    }
    if error.kind() == tough::TransportErrorKind::FileNotFound {
        return UpdateError::MissingMetadata { url };
    }
    UpdateError::Transport {
        url,
        reason: error.to_string(),
    }
}

/// Names the limit behind tough's size specifier.
fn limit_exceeded(what: String, max: u64, specifier: &str, limits: &ClientLimits) -> UpdateError {
    let limit = match specifier {
        "max_root_size argument" => "root_bytes_max",
        "max_timestamp_size argument" => "timestamp_bytes_max",
        "max_targets_size parameter" => "targets_bytes_max",
        // snapshot.json, fetched under the timestamp's listing without a length.
        "timestamp.json" if max == limits.snapshot_bytes_max => "snapshot_bytes_max",
        "timestamp.json" => "length listed in timestamp.json",
        "snapshot.json" => "length listed in snapshot.json",
        _ => "length listed in targets.json",
    };
    UpdateError::LimitExceeded { what, limit, max }
}

fn download_error(target: &str) -> impl FnOnce(DownloadError) -> UpdateError + '_ {
    move |source| UpdateError::Download {
        target: target.to_owned(),
        source,
    }
}

/// Where `source` keeps metadata and targets, as tough wants them.
fn base_urls(source: &Source) -> Result<(Url, Url), UpdateError> {
    match source {
        Source::Dir(dir) => {
            let dir = fs::canonicalize(dir).map_err(io_error(dir))?;
            let url = |sub: &str| {
                Url::from_directory_path(dir.join(sub)).map_err(|()| UpdateError::Transport {
                    url: dir.display().to_string(),
                    reason: "not an absolute directory".to_owned(),
                })
            };
            Ok((url("metadata")?, url("targets")?))
        }
        Source::Url(base) => {
            let mut base = base.clone();
            if !base.path().ends_with('/') {
                base.set_path(&format!("{}/", base.path()));
            }
            let join = |sub: &str| {
                base.join(sub).map_err(|error| UpdateError::Transport {
                    url: base.to_string(),
                    reason: error.to_string(),
                })
            };
            Ok((join("metadata/")?, join("targets/")?))
        }
    }
}

impl Client {
    /// Pins `root_json` (the repository's root metadata, obtained out of
    /// band) as the trust anchor in a new trusted directory.
    pub fn init(
        trusted: &Path,
        root_json: &[u8],
        hardware_class: &str,
        limits: ClientLimits,
    ) -> Result<Client, UpdateError> {
        if root_json.len() as u64 > limits.root_bytes_max {
            return Err(UpdateError::LimitExceeded {
                what: "root.json".to_owned(),
                limit: "root_bytes_max",
                max: limits.root_bytes_max,
            });
        }
        let root: Signed<Root> = serde_json::from_slice(root_json).map_err(|error| UpdateError::BadTrustedRoot {
            reason: error.to_string(),
        })?;
        root.signed
            .verify_role(&root)
            .map_err(|error| UpdateError::BadTrustedRoot {
                reason: error.to_string(),
            })?;
        let metadata = trusted.join(METADATA);
        if fs::symlink_metadata(&metadata).is_ok() {
            return Err(UpdateError::AlreadyInitialised {
                path: trusted.to_owned(),
            });
        }
        let first = trusted.join(VERSIONS).join("1");
        fs::create_dir_all(&first).map_err(io_error(&first))?;
        let root_path = first.join("root.json");
        fs::write(&root_path, root_json).map_err(io_error(&root_path))?;
        fs::File::open(&root_path)
            .and_then(|file| file.sync_all())
            .map_err(io_error(&root_path))?;
        sync_dir(&first)?;
        std::os::unix::fs::symlink(Path::new(VERSIONS).join("1"), &metadata).map_err(io_error(&metadata))?;
        sync_dir(trusted)?;
        Ok(Client {
            trusted: trusted.to_owned(),
            hardware_class: hardware_class.to_owned(),
            limits,
        })
    }

    /// Opens an initialised trusted directory.
    pub fn open(trusted: &Path, hardware_class: &str, limits: ClientLimits) -> Result<Client, UpdateError> {
        if !trusted.join(METADATA).join("root.json").is_file() {
            return Err(UpdateError::NotInitialised {
                path: trusted.to_owned(),
            });
        }
        Ok(Client {
            trusted: trusted.to_owned(),
            hardware_class: hardware_class.to_owned(),
            limits,
        })
    }

    /// The trusted metadata directory.
    pub fn metadata_dir(&self) -> PathBuf {
        self.trusted.join(METADATA)
    }

    /// The limits in force.
    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// Refreshes metadata from `source` (in scratch) and returns the newest
    /// release set if it is newer than `installed` and passes molt's rules:
    /// this device's hardware class, no downgrade of version or security
    /// counter, this build's contract, `min_agent_version`, and every part
    /// listed in TUF targets with the same length and sha256.
    ///
    /// When there is nothing newer (`Ok(None)`), the freshly verified
    /// metadata is promoted at once, so the device's rollback protection
    /// keeps up with the repository. Only one update may be in flight: a
    /// new `check` supersedes an earlier [`Verified`].
    pub async fn check(&self, source: &Source, installed: &Installed) -> Result<Option<Verified>, UpdateError> {
        if !self.metadata_dir().join("root.json").is_file() {
            return Err(UpdateError::NotInitialised {
                path: self.trusted.clone(),
            });
        }
        let scratch = self.trusted.join(SCRATCH);
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(io_error(&scratch))?;
        }
        let result = self.check_in_scratch(source, installed, &scratch).await;
        match result {
            Ok(Some(verified)) => Ok(Some(verified)),
            Ok(None) => {
                self.promote(&scratch)?;
                Ok(None)
            }
            Err(error) => {
                // Best effort: the trusted metadata is untouched either way,
                // and the next check starts by removing the scratch copy.
                let _ = fs::remove_dir_all(&scratch);
                Err(error)
            }
        }
    }

    async fn check_in_scratch(
        &self,
        source: &Source,
        installed: &Installed,
        scratch: &Path,
    ) -> Result<Option<Verified>, UpdateError> {
        let scratch_metadata = scratch.join(METADATA);
        copy_dir(&self.metadata_dir(), &scratch_metadata)?;
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos())
        );
        let token_path = scratch.join(TOKEN);
        fs::write(&token_path, &nonce).map_err(io_error(&token_path))?;
        let root_path = self.metadata_dir().join("root.json");
        let root_json = read_bounded(&root_path, self.limits.root_bytes_max)?.ok_or(UpdateError::LimitExceeded {
            what: root_path.display().to_string(),
            limit: "root_bytes_max",
            max: self.limits.root_bytes_max,
        })?;
        let (metadata_url, targets_url) = base_urls(source)?;
        let tough_limits = tough::Limits {
            max_root_size: self.limits.root_bytes_max,
            max_targets_size: self.limits.targets_bytes_max,
            max_timestamp_size: self.limits.timestamp_bytes_max,
            max_snapshot_size: self.limits.snapshot_bytes_max,
            max_root_updates: self.limits.root_updates_max,
        };
        let repository = RepositoryLoader::new(&root_json, metadata_url, targets_url)
            .transport(BoxedTransport(download::transport(source, &self.limits.download)))
            .limits(tough_limits)
            .datastore(&scratch_metadata)
            .expiration_enforcement(ExpirationEnforcement::Safe)
            .load()
            .await
            .map_err(|error| classify(error, &self.limits))?;

        let targets = &repository.targets().signed.targets;
        let newest = targets
            .iter()
            .filter_map(|(name, target)| Some((release_set::version_of_target(name.raw())?, name, target)))
            .max_by_key(|(version, _, _)| *version);
        let Some((version, name, target)) = newest else {
            return Ok(None);
        };
        if version < installed.release_version {
            return Err(UpdateError::ReleaseDowngrade {
                offered: version,
                installed: installed.release_version,
            });
        }
        if version == installed.release_version {
            return Ok(None);
        }
        let set_limit = self
            .limits
            .release_set_bytes_max
            .min(release_set::RELEASE_SET_BYTES_MAX);
        if target.length > set_limit {
            return Err(UpdateError::PartTooLarge {
                target: name.raw().to_owned(),
                length: target.length,
                limit: "release_set_bytes_max",
                max: set_limit,
            });
        }
        let sha256: [u8; 32] =
            target
                .hashes
                .sha256
                .as_ref()
                .try_into()
                .map_err(|_| UpdateError::MalformedMetadata {
                    role: "targets".to_owned(),
                    reason: format!("{} has no 32-byte sha256", name.raw()),
                })?;
        let set_path = scratch.join(RELEASE_SET_FILE);
        download::download_target(
            source,
            &consistent_target_path(name.raw(), &sha256_hex(&sha256)),
            &set_path,
            &Expected {
                length: target.length,
                sha256,
            },
            &self.limits.download,
            &NoProgress,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .map_err(download_error(name.raw()))?;
        let bytes = read_bounded(&set_path, set_limit)?.ok_or_else(|| UpdateError::PartTooLarge {
            target: name.raw().to_owned(),
            length: target.length,
            limit: "release_set_bytes_max",
            max: set_limit,
        })?;
        // Pair assertion: the transfer layer promised exactly these bytes.
        if bytes.len() as u64 != target.length || Sha256::digest(&bytes).as_slice() != sha256 {
            return Err(UpdateError::HashMismatch {
                url: name.raw().to_owned(),
            });
        }
        let set = ReleaseSet::from_json(&bytes).map_err(|source| UpdateError::ReleaseSet {
            target: name.raw().to_owned(),
            source,
        })?;
        if set.version != version {
            return Err(UpdateError::ReleaseSetNameMismatch {
                target: name.raw().to_owned(),
                found: set.version,
            });
        }
        self.check_rules(&set, installed, &repository)?;
        Ok(Some(Verified {
            set,
            source: source.clone(),
            update: UpdateToken { nonce },
        }))
    }

    /// molt's rules on a release set that TUF verified.
    fn check_rules(
        &self,
        set: &ReleaseSet,
        installed: &Installed,
        repository: &tough::Repository,
    ) -> Result<(), UpdateError> {
        let version = set.version;
        if !set.agents.contains_key(&self.hardware_class) {
            return Err(UpdateError::WrongHardwareClass {
                version,
                hardware_class: self.hardware_class.clone(),
                available: set.agents.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        if set.security_counter < installed.security_counter {
            return Err(UpdateError::SecurityCounterRollback {
                version,
                offered: set.security_counter,
                installed: installed.security_counter,
            });
        }
        if set.contract != release_set::CONTRACT {
            return Err(UpdateError::ContractMismatch {
                version,
                found: set.contract.clone(),
                expected: release_set::CONTRACT,
            });
        }
        let running: molt_core::Version =
            installed
                .agent_version
                .parse()
                .map_err(|error: molt_core::ParseVersionError| UpdateError::BadInstalled {
                    field: "agent_version",
                    reason: format!("{:?}: {error}", installed.agent_version),
                })?;
        let required: molt_core::Version =
            set.min_agent_version
                .parse()
                .map_err(|error: molt_core::ParseVersionError| UpdateError::ReleaseSet {
                    target: release_set::target_name(version),
                    source: ReleaseSetError::InvalidField {
                        field: "min_agent_version".to_owned(),
                        reason: error.to_string(),
                    },
                })?;
        if running < required {
            return Err(UpdateError::AgentTooOld {
                version,
                required: set.min_agent_version.clone(),
                running: installed.agent_version.clone(),
            });
        }
        let targets = &repository.targets().signed;
        for (field, part) in set.parts() {
            let name = tough::TargetName::new(part.target.as_str()).map_err(|_| UpdateError::PartMissing {
                version,
                field: field.clone(),
                target: part.target.clone(),
            })?;
            let Some(target) = targets.targets.get(&name) else {
                return Err(UpdateError::PartMissing {
                    version,
                    field,
                    target: part.target.clone(),
                });
            };
            if target.length != part.length {
                return Err(UpdateError::PartMismatch {
                    version,
                    field,
                    target: part.target.clone(),
                    differs: "length",
                });
            }
            if part.sha256_bytes().as_ref().map(|digest| digest.as_slice()) != Some(target.hashes.sha256.as_ref()) {
                return Err(UpdateError::PartMismatch {
                    version,
                    field,
                    target: part.target.clone(),
                    differs: "sha256",
                });
            }
            if part.length > self.limits.target_bytes_max {
                return Err(UpdateError::PartTooLarge {
                    target: part.target.clone(),
                    length: part.length,
                    limit: "target_bytes_max",
                    max: self.limits.target_bytes_max,
                });
            }
        }
        if let Some(agent) = set.agents.get(&self.hardware_class)
            && agent.manifest.length > molt_core::MANIFEST_SIZE_MAX as u64
        {
            return Err(UpdateError::PartTooLarge {
                target: agent.manifest.target.clone(),
                length: agent.manifest.length,
                limit: "MANIFEST_SIZE_MAX",
                max: molt_core::MANIFEST_SIZE_MAX as u64,
            });
        }
        Ok(())
    }

    fn check_token(&self, token: &UpdateToken) -> Result<(), UpdateError> {
        let path = self.trusted.join(SCRATCH).join(TOKEN);
        match fs::read_to_string(&path) {
            Ok(nonce) if nonce == token.nonce => Ok(()),
            _ => Err(UpdateError::Superseded),
        }
    }

    /// Downloads every part of `verified` into `dir` (resumable), verifying
    /// each. Returns only if all verified.
    ///
    /// On failure the update is discarded (see [`Client::discard`]); the
    /// part files in `dir` are kept, so a new `check` and `fetch` resume
    /// where this one stopped.
    pub async fn fetch(
        &self,
        verified: &Verified,
        dir: &Path,
        progress: &dyn Progress,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Fetched, UpdateError> {
        let result = self.fetch_all(verified, dir, progress, cancel).await;
        if result.is_err() {
            // The fetch's own error is the one to report. A scratch copy
            // that could not be removed is harmless: the trusted metadata is
            // untouched, and the next `check` removes it first.
            let _ = self.discard();
        }
        result
    }

    /// Abandons the update in flight, if any: removes the scratch metadata,
    /// leaving the trusted metadata as it was. Call it when something after
    /// `fetch` (such as staging) refused the update.
    pub fn discard(&self) -> Result<(), UpdateError> {
        let scratch = self.trusted.join(SCRATCH);
        match fs::remove_dir_all(&scratch) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(&scratch)(error)),
        }
    }

    async fn fetch_all(
        &self,
        verified: &Verified,
        dir: &Path,
        progress: &dyn Progress,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Fetched, UpdateError> {
        self.check_token(&verified.update)?;
        let set = &verified.set;
        let agent = match set.agents.get(&self.hardware_class) {
            Some(agent) => {
                let image = self
                    .fetch_part(&verified.source, &agent.image, dir, progress, cancel)
                    .await?;
                let manifest_path = self
                    .fetch_part(&verified.source, &agent.manifest, dir, progress, cancel)
                    .await?;
                let manifest = read_part(&manifest_path, &agent.manifest)?;
                Some(FetchedAgent {
                    version: agent.version.clone(),
                    manifest,
                    image,
                    image_length: agent.image.length,
                    image_sha256: part_sha256(&agent.image)?,
                })
            }
            None => None,
        };
        let mut policies = BTreeMap::new();
        for (name, policy) in &set.policies {
            let path = self
                .fetch_part(&verified.source, &policy.module, dir, progress, cancel)
                .await?;
            let wasm = read_part(&path, &policy.module)?;
            policies.insert(
                name.clone(),
                FetchedPolicy {
                    version: policy.version.clone(),
                    wasm,
                    sha256: part_sha256(&policy.module)?,
                    config: policy.config.clone(),
                },
            );
        }
        self.check_token(&verified.update)?;
        Ok(Fetched {
            set: set.clone(),
            agent,
            policies,
            update: verified.update.clone(),
        })
    }

    async fn fetch_part(
        &self,
        source: &Source,
        part: &Part,
        dir: &Path,
        progress: &dyn Progress,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<PathBuf, UpdateError> {
        let sha256 = part_sha256(part)?;
        let dest = dir.join(&part.target);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        download::download_target(
            source,
            &consistent_target_path(&part.target, &part.sha256),
            &dest,
            &Expected {
                length: part.length,
                sha256,
            },
            &self.limits.download,
            progress,
            cancel,
        )
        .await
        .map_err(download_error(&part.target))?;
        Ok(dest)
    }

    /// Promotes the scratch metadata that verified `fetched` to trusted, by
    /// an atomic rename. Call after `fetch`, before installing.
    pub fn accept(&self, fetched: &Fetched) -> Result<(), UpdateError> {
        self.check_token(&fetched.update)?;
        self.promote(&self.trusted.join(SCRATCH))
    }

    /// Makes `scratch/metadata` the trusted metadata: it becomes the next
    /// `versions/<n>`, and the `metadata` symlink is replaced by one
    /// pointing at it with a single rename.
    fn promote(&self, scratch: &Path) -> Result<(), UpdateError> {
        let link = self.metadata_dir();
        let current = fs::read_link(&link).map_err(io_error(&link))?;
        let generation: u64 = current
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.parse().ok())
            .ok_or_else(|| UpdateError::Io {
                path: link.clone(),
                source: std::io::Error::other("metadata link does not point at versions/<n>"),
            })?;
        let next = generation + 1;
        let versions = self.trusted.join(VERSIONS);
        let next_dir = versions.join(next.to_string());
        if next_dir.exists() {
            fs::remove_dir_all(&next_dir).map_err(io_error(&next_dir))?;
        }
        let scratch_metadata = scratch.join(METADATA);
        for entry in fs::read_dir(&scratch_metadata).map_err(io_error(&scratch_metadata))? {
            let path = entry.map_err(io_error(&scratch_metadata))?.path();
            fs::File::open(&path)
                .and_then(|file| file.sync_all())
                .map_err(io_error(&path))?;
        }
        sync_dir(&scratch_metadata)?;
        fs::rename(&scratch_metadata, &next_dir).map_err(io_error(&next_dir))?;
        sync_dir(&versions)?;
        let new_link = self.trusted.join("metadata.new");
        let _ = fs::remove_file(&new_link);
        std::os::unix::fs::symlink(Path::new(VERSIONS).join(next.to_string()), &new_link)
            .map_err(io_error(&new_link))?;
        fs::rename(&new_link, &link).map_err(io_error(&link))?;
        sync_dir(&self.trusted)?;
        let old = versions.join(generation.to_string());
        let _ = fs::remove_dir_all(old);
        let _ = fs::remove_dir_all(scratch);
        Ok(())
    }
}

fn part_sha256(part: &Part) -> Result<[u8; 32], UpdateError> {
    part.sha256_bytes().ok_or_else(|| UpdateError::ReleaseSet {
        target: part.target.clone(),
        source: ReleaseSetError::InvalidField {
            field: "sha256".to_owned(),
            reason: "must be 64 lowercase hex digits".to_owned(),
        },
    })
}

/// Reads a downloaded part and checks it again against the set.
fn read_part(path: &Path, part: &Part) -> Result<Vec<u8>, UpdateError> {
    let bytes = read_bounded(path, part.length)?.ok_or_else(|| UpdateError::HashMismatch {
        url: part.target.clone(),
    })?;
    if bytes.len() as u64 != part.length || Some(<[u8; 32]>::from(Sha256::digest(&bytes))) != part.sha256_bytes() {
        return Err(UpdateError::HashMismatch {
            url: part.target.clone(),
        });
    }
    Ok(bytes)
}

/// Stages a verified agent image into molt-core's inactive slot. The
/// manifest's length and sha256 must equal the release set's, checked before
/// the first byte is written; molt-core then verifies the manifest's
/// signatures, hardware class and counters itself.
pub fn stage_agent<B: molt_core::Backend>(
    engine: &mut molt_core::Engine<B>,
    agent: &FetchedAgent,
) -> Result<molt_core::ImageInfo, UpdateError> {
    let manifest = engine.config().trust.verify(&agent.manifest)?;
    if manifest.length != agent.image_length {
        return Err(UpdateError::ManifestMismatch { what: "length" });
    }
    if manifest.sha256 != agent.image_sha256 {
        return Err(UpdateError::ManifestMismatch { what: "sha256" });
    }
    if agent.version.parse::<molt_core::Version>().ok() != Some(manifest.version) {
        return Err(UpdateError::ManifestMismatch { what: "version" });
    }
    let mut file = fs::File::open(&agent.image).map_err(io_error(&agent.image))?;
    let file_length = file.metadata().map_err(io_error(&agent.image))?.len();
    if file_length != agent.image_length {
        return Err(UpdateError::ManifestMismatch { what: "file length" });
    }
    let mut staging = engine.stage(&agent.manifest)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io_error(&agent.image))?;
        if n == 0 {
            break;
        }
        staging.write(&buf[..n])?;
    }
    Ok(staging.finish()?)
}
