//! The device side: verify a release set through TUF, fetch every part,
//! and hand verified images to molt-core, all or nothing.
//!
//! The device's trusted TUF metadata lives in `<trusted>/metadata/`. An
//! update is verified in a scratch copy (`<trusted>/scratch/`) by molt's TUF
//! client workflow ([`crate::tuf`]), which stores each role there as it
//! verifies; only when the release set and every one of its parts have
//! verified is the scratch copy promoted, by an atomic rename. A failed or
//! attacked update therefore leaves the trusted metadata byte-identical,
//! whatever the workflow wrote while verifying.
//!
//! Release sets are found among the targets the top-level targets role
//! lists (`release-sets/<version>.json`); every part a set names is looked
//! up by the delegation search, so parts may be signed by delegated roles
//! (a team's policies under `policies/<name>/*`, say), and a delegated
//! role is fetched only when a part needs it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest};
use crate::download::{self, DownloadError, DownloadLimits, Expected, NoProgress, Progress, Source};
use crate::release_set::{self, Part, ReleaseSet, ReleaseSetError};
use crate::tuf::{self, Durability, TimestampUpdate, TufError, TufLimits, Updater};

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
    /// Targets metadata (top-level or delegated) when snapshot gives no
    /// length; default 10 MiB.
    pub targets_bytes_max: u64,
    /// Targets roles one lookup of a part may visit in the delegation
    /// search, the top-level one included; default 32.
    pub delegated_roles_max: u64,
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
            delegated_roles_max: 32,
            release_set_bytes_max: crate::release_set::RELEASE_SET_BYTES_MAX,
            target_bytes_max: 256 << 20,
            download: DownloadLimits::default(),
        }
    }
}

impl ClientLimits {
    /// The limits the TUF workflow takes.
    pub fn tuf(&self) -> TufLimits {
        TufLimits {
            root_bytes_max: self.root_bytes_max,
            timestamp_bytes_max: self.timestamp_bytes_max,
            snapshot_bytes_max: self.snapshot_bytes_max,
            targets_bytes_max: self.targets_bytes_max,
            root_updates_max: self.root_updates_max,
            delegated_roles_max: self.delegated_roles_max,
            download: self.download,
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
    /// The TUF client workflow refused the repository's metadata (see
    /// [`TufError`] for every case: signatures, expiry, rollback, versions,
    /// hashes, limits, delegations).
    #[error(transparent)]
    Tuf(#[from] TufError),
    /// The repository serves a timestamp of the trusted version with other
    /// content: its timestamp key signed two different timestamps. The new
    /// one was discarded and not stored (5.4.3.1); the device reports it
    /// rather than carrying on quietly, since no repository does this.
    #[error(
        "the repository's timestamp version {version} differs from the trusted timestamp of the same version; the timestamp key signed two timestamps, so the repository is misconfigured or its timestamp key is compromised; nothing was changed"
    )]
    TimestampEquivocation {
        /// The version.
        version: u64,
    },
    /// Bytes read back do not match what verified metadata lists.
    #[error(
        "{url} does not match the length and digests the verified metadata lists; the repository is inconsistent or under attack"
    )]
    HashMismatch {
        /// The file.
        url: String,
    },
    /// The system clock is earlier than at the last update (the device
    /// records the start time of every update it accepts).
    #[error("the system clock went backwards since the last update; fix the clock and try again")]
    ClockWentBack,
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
    /// Looking a part up in the delegation graph failed (a delegated role
    /// did not verify, is missing from the snapshot, or the search hit
    /// `delegated_roles_max`).
    #[error("release set {version} part {field} ({target}) could not be looked up: {source}")]
    PartLookup {
        /// The set.
        version: u64,
        /// The field.
        field: String,
        /// Its target name.
        target: String,
        /// Why.
        source: Box<TufError>,
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
    /// What each part must be, by target name: the TUF target's length and
    /// every supported digest it lists, and the set's sha256.
    parts: BTreeMap<String, Expected>,
    /// Whether targets are fetched under consistent-snapshot names.
    consistent_snapshot: bool,
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

/// The start time of the newest update the device accepted, kept with the
/// trusted metadata (not a `.json` file: it is not TUF metadata).
const CLOCK_FILE: &str = "latest-update-start";

/// Refuses to run an update whose start time is before the last accepted
/// one's: expiry is judged against the clock, so a clock set back would
/// make expired metadata look fresh.
fn check_clock(metadata: &Path, now: jiff::Timestamp) -> Result<(), UpdateError> {
    let path = metadata.join(CLOCK_FILE);
    let recorded = match read_bounded(&path, 64) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok(),
        Ok(None) => None,
        Err(UpdateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    match recorded.and_then(|text| text.trim().parse::<jiff::Timestamp>().ok()) {
        Some(last) if now < last => Err(UpdateError::ClockWentBack),
        _ => Ok(()),
    }
}

fn record_clock(metadata: &Path, now: jiff::Timestamp) -> Result<(), UpdateError> {
    let path = metadata.join(CLOCK_FILE);
    fs::write(&path, now.to_string()).map_err(io_error(&path))
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

fn download_error(target: &str) -> impl FnOnce(DownloadError) -> UpdateError + '_ {
    move |source| UpdateError::Download {
        target: target.to_owned(),
        source,
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
            return Err(TufError::LimitExceeded {
                what: "root.json".to_owned(),
                limit: "root_bytes_max",
                max: limits.root_bytes_max,
            }
            .into());
        }
        tuf::verify_trusted_root(root_json)?;
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
        let now = jiff::Timestamp::now();
        check_clock(&scratch_metadata, now)?;
        let mut updater = Updater::open_at(
            &scratch_metadata,
            source.clone(),
            self.limits.tuf(),
            Durability::Caller,
            now,
        )?;
        let refresh = updater.refresh().await?;
        if let TimestampUpdate::SameVersionDiscarded { version } = refresh.timestamp {
            return Err(UpdateError::TimestampEquivocation { version });
        }
        record_clock(&scratch_metadata, now)?;

        let newest = updater
            .top_level_targets()?
            .filter_map(|name| Some((release_set::version_of_target(name)?, name.to_owned())))
            .max_by_key(|(version, _)| *version);
        let Some((version, name)) = newest else {
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
        // Listed by the top-level role, so the search answers from it.
        let target = updater
            .find_target(&name)
            .await?
            .ok_or_else(|| UpdateError::PartMissing {
                version,
                field: "release set".to_owned(),
                target: name.clone(),
            })?;
        let set_limit = self
            .limits
            .release_set_bytes_max
            .min(release_set::RELEASE_SET_BYTES_MAX);
        if target.length > set_limit {
            return Err(UpdateError::PartTooLarge {
                target: name,
                length: target.length,
                limit: "release_set_bytes_max",
                max: set_limit,
            });
        }
        let expected = target.expected()?;
        let set_path = scratch.join(RELEASE_SET_FILE);
        download::download_target(
            source,
            &tuf::target_file_path(&name, &expected, updater.consistent_snapshot()),
            &set_path,
            &expected,
            &self.limits.download,
            &NoProgress,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .map_err(download_error(&name))?;
        let bytes = read_bounded(&set_path, set_limit)?.ok_or_else(|| UpdateError::PartTooLarge {
            target: name.clone(),
            length: target.length,
            limit: "release_set_bytes_max",
            max: set_limit,
        })?;
        // Pair assertion: the transfer layer promised exactly these bytes.
        if bytes.len() as u64 != expected.length || expected.digests.check(&bytes).is_err() {
            return Err(UpdateError::HashMismatch { url: name });
        }
        let set = ReleaseSet::from_json(&bytes).map_err(|source| UpdateError::ReleaseSet {
            target: name.clone(),
            source,
        })?;
        if set.version != version {
            return Err(UpdateError::ReleaseSetNameMismatch {
                target: name,
                found: set.version,
            });
        }
        self.check_rules(&set, installed)?;
        let parts = self.resolve_parts(&set, &mut updater).await?;
        Ok(Some(Verified {
            set,
            source: source.clone(),
            parts,
            consistent_snapshot: updater.consistent_snapshot(),
            update: UpdateToken { nonce },
        }))
    }

    /// molt's rules on a release set that TUF verified, before its parts
    /// are looked up.
    fn check_rules(&self, set: &ReleaseSet, installed: &Installed) -> Result<(), UpdateError> {
        let version = set.version;
        // A set without agents carries policies only: the device keeps the
        // agent it runs. A set with agents must have this device's.
        if !set.agents.is_empty() && !set.agents.contains_key(&self.hardware_class) {
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
        Ok(())
    }

    /// Looks every part up by the delegation search and checks it against
    /// its TUF target: the same length, and the set's sha256 equal to the
    /// target's where the target lists one. Returns what each part's bytes
    /// must be: every digest the target lists that molt supports, and the
    /// set's sha256.
    async fn resolve_parts(
        &self,
        set: &ReleaseSet,
        updater: &mut Updater,
    ) -> Result<BTreeMap<String, Expected>, UpdateError> {
        let version = set.version;
        let mut parts = BTreeMap::new();
        for (field, part) in set.parts() {
            let target = match updater.find_target(&part.target).await {
                Ok(Some(target)) => target,
                Ok(None) => {
                    return Err(UpdateError::PartMissing {
                        version,
                        field,
                        target: part.target.clone(),
                    });
                }
                Err(source) => {
                    return Err(UpdateError::PartLookup {
                        version,
                        field,
                        target: part.target.clone(),
                        source: Box::new(source),
                    });
                }
            };
            if target.length != part.length {
                return Err(UpdateError::PartMismatch {
                    version,
                    field,
                    target: part.target.clone(),
                    differs: "length",
                });
            }
            let mut expected = target.expected()?;
            let sha256 = part_sha256(part)?;
            if !expected.digests.require(Digest {
                algorithm: Algorithm::Sha256,
                bytes: sha256.to_vec(),
            }) {
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
            parts.insert(part.target.clone(), expected);
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
        Ok(parts)
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
                let image = self.fetch_part(verified, &agent.image, dir, progress, cancel).await?;
                let manifest_path = self
                    .fetch_part(verified, &agent.manifest, dir, progress, cancel)
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
            let path = self.fetch_part(verified, &policy.module, dir, progress, cancel).await?;
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
        verified: &Verified,
        part: &Part,
        dir: &Path,
        progress: &dyn Progress,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<PathBuf, UpdateError> {
        let expected = match verified.parts.get(&part.target) {
            Some(expected) => expected.clone(),
            // Every part was resolved by `check`; a set without its
            // resolution is not one `check` returned.
            None => {
                return Err(UpdateError::PartMissing {
                    version: verified.set.version,
                    field: "(unresolved part)".to_owned(),
                    target: part.target.clone(),
                });
            }
        };
        let dest = dir.join(&part.target);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        download::download_target(
            &verified.source,
            &tuf::target_file_path(&part.target, &expected, verified.consistent_snapshot),
            &dest,
            &expected,
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
    if bytes.len() as u64 != part.length
        || Some(Algorithm::Sha256.digest(&bytes)) != part.sha256_bytes().map(|sha256| sha256.to_vec())
    {
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
