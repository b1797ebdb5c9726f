//! The repository side: release drafts, signing and publishing, on tough's
//! editor.
//!
//! A repository workspace is a directory with `drafts/<version>/` (release
//! sets being prepared) and `public/`, the directory a plain HTTP server
//! serves to devices: `public/metadata/` (TUF metadata, consistent
//! snapshots) and `public/targets/` (hash-prefixed target files).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read as _, Write as _};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tough::TargetName;
use tough::editor::signed::SignedRole;
use tough::editor::targets::TargetsEditor;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Hashes, KeyHolder, Metafile, Root, Signed, Snapshot, Target, Targets, Timestamp};

use crate::keys::{KeyDir, KeyError, Role};
use crate::metadata::{self, MetadataError};
use crate::release_set::{self, AgentImage, Part, PolicyModule, ReleaseSet, ReleaseSetError};

/// An agent image to put into a release.
#[derive(Debug, Clone)]
pub struct AgentInput {
    /// Hardware class the image is built for.
    pub hardware_class: String,
    /// `major.minor.patch`.
    pub version: String,
    /// The image file.
    pub path: PathBuf,
}

/// A policy module to put into a release.
#[derive(Debug, Clone)]
pub struct PolicyInput {
    /// Policy name, unique within the set.
    pub name: String,
    /// `major.minor.patch`.
    pub version: String,
    /// The component `.wasm` file.
    pub path: PathBuf,
    /// The configuration key/value pairs `init` and `restore` receive.
    pub config: std::collections::BTreeMap<String, String>,
}

/// What `Repo::create_release` turns into a draft.
#[derive(Debug, Clone)]
pub struct ReleaseInput {
    /// The set's version; must exceed every published one.
    pub version: u64,
    /// Anti-rollback counter.
    pub security_counter: u64,
    /// Oldest agent that may run the set's policies.
    pub min_agent_version: String,
    /// Agent images, at most one per hardware class.
    pub agents: Vec<AgentInput>,
    /// Policy modules.
    pub policies: Vec<PolicyInput>,
}

/// Lifetimes of the non-root roles' metadata from the moment of signing.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    /// Default 30 days.
    pub targets: Duration,
    /// Default 7 days.
    pub snapshot: Duration,
    /// Default 1 day.
    pub timestamp: Duration,
}

impl Default for Expiry {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Expiry {
            targets: Duration::from_secs(30 * DAY),
            snapshot: Duration::from_secs(7 * DAY),
            timestamp: Duration::from_secs(DAY),
        }
    }
}

/// What a publish or refresh wrote.
#[derive(Debug, Clone)]
pub struct Published {
    /// Versions of the metadata now current.
    pub root_version: u64,
    /// Targets metadata version.
    pub targets_version: u64,
    /// Snapshot metadata version.
    pub snapshot_version: u64,
    /// Timestamp metadata version.
    pub timestamp_version: u64,
    /// The newest release set in the repository, if any.
    pub release_set: Option<u64>,
}

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The key given to re-sign the timestamp is not one of root's timestamp keys.
    #[error(
        "key {keyid} is not a timestamp key of root version {root_version}; give the online timestamp key the root lists"
    )]
    NotATimestampKey {
        /// The key's id.
        keyid: String,
        /// The root that was read.
        root_version: u64,
    },
    /// Root needs more timestamp signatures than one key gives.
    #[error(
        "root version {root_version} needs {threshold} timestamp signatures; one online key can re-sign only a threshold of 1"
    )]
    TimestampThreshold {
        /// The root that was read.
        root_version: u64,
        /// Its timestamp threshold.
        threshold: u64,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key directory failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Metadata could not be built.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// tough's editor refused.
    #[error("{what}: {reason}")]
    Tuf {
        /// What was being done.
        what: &'static str,
        /// tough's error.
        reason: String,
    },
    /// A release set is malformed.
    #[error(transparent)]
    ReleaseSet(#[from] ReleaseSetError),
    /// An image manifest could not be signed.
    #[error("agent manifest for {hardware_class}: {source}")]
    Manifest {
        /// The hardware class.
        hardware_class: String,
        /// Why.
        source: molt_core::ManifestError,
    },
    /// The workspace has no published repository yet.
    #[error("{path} has no published repository; run `molt repo publish` (Repo::open_or_create) first")]
    NotCreated {
        /// The workspace.
        path: PathBuf,
    },
    /// A draft of this version already exists.
    #[error("draft {version} already exists at {path}; remove it or choose another version")]
    DraftExists {
        /// The version.
        version: u64,
        /// The draft directory.
        path: PathBuf,
    },
    /// No draft of this version.
    #[error("no draft {version} at {path}; create it with `molt release create`")]
    DraftMissing {
        /// The version.
        version: u64,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The draft has not been signed.
    #[error("draft {version} is not signed; run `molt release sign {version}` first")]
    DraftNotSigned {
        /// The version.
        version: u64,
    },
    /// The release version does not exceed every published one.
    #[error("release version {version} is not newer than the published release {published}; choose a higher version")]
    VersionNotNewer {
        /// Asked for.
        version: u64,
        /// Newest published.
        published: u64,
    },
    /// Two inputs of the same kind share a name.
    #[error("{what} {name:?} appears twice; give each one once")]
    Duplicate {
        /// `agent` or `policy`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// An input file is empty.
    #[error("{path} is empty; a release part needs at least one byte")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// An input file is over `target_bytes_max` (4 GiB).
    #[error("{path} is over the limit of {limit} bytes (target_bytes_max)")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// A target name is published with different content.
    #[error("target {name} is already published with different content; bump the part's version")]
    TargetConflict {
        /// The target.
        name: String,
    },
    /// A release-set part does not match the draft's file.
    #[error("release set part {field} ({target}) does not match the draft's file; create the draft again")]
    PartMismatch {
        /// The field naming the part.
        field: String,
        /// Its target name.
        target: String,
    },
    /// Signed targets metadata is not the successor of the published one.
    #[error("signed targets version {signed} does not follow the published version {published}; sign the draft again")]
    Stale {
        /// The signed version.
        signed: u64,
        /// The published version.
        published: u64,
    },
    /// Targets metadata does not verify with the current root.
    #[error(
        "targets metadata does not verify with root version {root_version}: {reason}; sign it again with the current targets keys"
    )]
    TargetsNotSigned {
        /// The root version used.
        root_version: u64,
        /// Why.
        reason: String,
    },
    /// A target listed in targets metadata has no file to publish.
    #[error("target {name} is listed but neither given nor already published")]
    MissingTargetFile {
        /// The target.
        name: String,
    },
    /// A file given for a target does not match its listing.
    #[error("file {path} does not match target {name}'s length and sha256")]
    FileMismatch {
        /// The target.
        name: String,
        /// The file.
        path: PathBuf,
    },
}

/// A repository workspace.
#[derive(Debug)]
pub struct Repo {
    dir: PathBuf,
}

/// Upper bound on one input file (`target_bytes_max`).
pub const TARGET_BYTES_MAX: u64 = 4 << 30;
/// Upper bound on a metadata file the repository reads back.
const METADATA_BYTES_MAX: u64 = 16 << 20;

const DRAFTS: &str = "drafts";
const DRAFT_SET: &str = "release-set.json";
const DRAFT_TARGETS: &str = "targets.json";
const DRAFT_FILES: &str = "files";

/// Where target `name` with digest `sha256_hex` lives under `targets/` in a
/// consistent-snapshot repository: the digest prefixes the file name, as
/// the TUF specification says (`policies/x/<sha256>.1.0.0.wasm`).
pub fn consistent_target_path(name: &str, sha256_hex: &str) -> String {
    match name.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/{sha256_hex}.{base}"),
        None => format!("{sha256_hex}.{name}"),
    }
}

/// The TUF target name of an agent image.
pub fn agent_image_target(hardware_class: &str, version: &str) -> String {
    format!("agents/{hardware_class}/{version}.img")
}

/// The TUF target name of an agent image's signed manifest.
pub fn agent_manifest_target(hardware_class: &str, version: &str) -> String {
    format!("agents/{hardware_class}/{version}.manifest")
}

/// The TUF target name of a policy module.
pub fn policy_target(name: &str, version: &str) -> String {
    format!("policies/{name}/{version}.wasm")
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_owned(),
        source,
    }
}

fn tuf_error(what: &'static str) -> impl FnOnce(tough::error::Error) -> RepoError {
    move |error| RepoError::Tuf {
        what,
        reason: error.to_string(),
    }
}

fn create_dir(path: &Path) -> Result<(), RepoError> {
    fs::create_dir_all(path).map_err(io_error(path))
}

/// Writes through a temporary file and a rename, so a web server never
/// serves a half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(bytes).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, RepoError> {
    let mut bytes = Vec::new();
    let file = fs::File::open(path).map_err(io_error(path))?;
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io_error(path))?;
    if bytes.len() as u64 > limit {
        return Err(RepoError::FileTooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// Length and sha256 of a file, streamed.
fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), RepoError> {
    let mut file = fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut length = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        length += n as u64;
        if length > TARGET_BYTES_MAX {
            return Err(RepoError::FileTooLarge {
                path: path.to_owned(),
                limit: TARGET_BYTES_MAX,
            });
        }
    }
    Ok((length, hasher.finalize().into()))
}

/// Copies `from` to `to` (through a temporary file), returning its length
/// and sha256.
fn copy_hashed(from: &Path, to: &Path) -> Result<(u64, [u8; 32]), RepoError> {
    if let Some(parent) = to.parent() {
        create_dir(parent)?;
    }
    let tmp = to.with_extension("tmp");
    fs::copy(from, &tmp).map_err(io_error(from))?;
    let (length, sha256) = hash_file(&tmp)?;
    if length == 0 {
        return Err(RepoError::EmptyFile { path: from.to_owned() });
    }
    fs::rename(&tmp, to).map_err(io_error(to))?;
    Ok((length, sha256))
}

fn tuf_target(length: u64, sha256: &[u8]) -> Target {
    Target {
        length,
        hashes: Hashes {
            sha256: Decoded::<Hex>::from(sha256.to_vec()),
            _extra: HashMap::new(),
        },
        custom: HashMap::new(),
        _extra: HashMap::new(),
    }
}

fn target_name(name: &str) -> Result<TargetName, RepoError> {
    TargetName::new(name).map_err(tuf_error("invalid target name"))
}

/// Every file under `dir`, by its path relative to `dir` with `/`.
fn walk_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>, RepoError> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).map_err(io_error(&current))? {
            let entry = entry.map_err(io_error(&current))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(io_error(&path))?;
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file() {
                let relative = path
                    .strip_prefix(dir)
                    .map_err(|_| io_error(&path)(std::io::Error::other("outside the walked directory")))?;
                let name: Vec<String> = relative
                    .components()
                    .map(|component| component.as_os_str().to_string_lossy().into_owned())
                    .collect();
                files.insert(name.join("/"), path);
            }
        }
    }
    Ok(files)
}

/// The published state: current metadata of every role.
struct State {
    root: Signed<Root>,
    timestamp: Signed<Timestamp>,
    snapshot: Signed<Snapshot>,
    targets: Signed<Targets>,
}

impl State {
    fn published(&self) -> Published {
        Published {
            root_version: self.root.signed.version.get(),
            targets_version: self.targets.signed.version.get(),
            snapshot_version: self.snapshot.signed.version.get(),
            timestamp_version: self.timestamp.signed.version.get(),
            release_set: newest_release_set(&self.targets.signed),
        }
    }
}

fn newest_release_set(targets: &Targets) -> Option<u64> {
    targets
        .targets
        .keys()
        .filter_map(|name| release_set::version_of_target(name.raw()))
        .max()
}

impl Repo {
    /// Opens the workspace at `dir`, creating it (with an empty, signed
    /// repository whose root comes from `keys`) if it does not exist.
    pub async fn open_or_create(dir: &Path, keys: &KeyDir) -> Result<Repo, RepoError> {
        let repo = Repo { dir: dir.to_owned() };
        create_dir(&dir.join(DRAFTS))?;
        create_dir(&repo.metadata_dir())?;
        create_dir(&repo.targets_dir())?;
        if repo.state()?.is_none() {
            let root = repo.publish_roots(keys)?;
            let expiry = Expiry::default();
            let empty = Targets::new(
                metadata::SPEC_VERSION.to_owned(),
                NonZeroU64::MIN,
                metadata::expires_in(expiry.targets)?,
            );
            let signed = sign_targets(&root, empty, &[], NonZeroU64::MIN, expiry.targets, keys).await?;
            let bytes = metadata::encode(&signed)?;
            write_atomic(&repo.metadata_dir().join("1.targets.json"), &bytes)?;
            repo.publish_snapshot(&root, &signed, &bytes, None, keys, &expiry)
                .await?;
        }
        Ok(repo)
    }

    /// The workspace directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory to serve over HTTP (or to read as a file source).
    pub fn public_dir(&self) -> PathBuf {
        self.dir.join("public")
    }

    fn metadata_dir(&self) -> PathBuf {
        self.public_dir().join("metadata")
    }

    fn targets_dir(&self) -> PathBuf {
        self.public_dir().join("targets")
    }

    fn draft_dir(&self, version: u64) -> PathBuf {
        self.dir.join(DRAFTS).join(version.to_string())
    }

    /// What is published now, if anything.
    pub fn published(&self) -> Result<Option<Published>, RepoError> {
        Ok(self.state()?.map(|state| state.published()))
    }

    /// Copies the inputs into `drafts/<version>/`, hashes them, and writes
    /// the unsigned release set and image manifests.
    ///
    /// Each agent's `manifest` part names its target but has length 0 and
    /// an empty sha256 until [`Repo::sign_release`] signs the manifest.
    pub async fn create_release(&self, input: &ReleaseInput) -> Result<ReleaseSet, RepoError> {
        let state = self
            .state()?
            .ok_or_else(|| RepoError::NotCreated { path: self.dir.clone() })?;
        if let Some(published) = newest_release_set(&state.targets.signed)
            && input.version <= published
        {
            return Err(RepoError::VersionNotNewer {
                version: input.version,
                published,
            });
        }
        let draft = self.draft_dir(input.version);
        if draft.exists() {
            return Err(RepoError::DraftExists {
                version: input.version,
                path: draft,
            });
        }
        check_version("min_agent_version", &input.min_agent_version)?;
        let files = draft.join(DRAFT_FILES);
        let mut set = ReleaseSet {
            format: release_set::FORMAT,
            version: input.version,
            security_counter: input.security_counter,
            contract: release_set::CONTRACT.to_owned(),
            min_agent_version: input.min_agent_version.clone(),
            agents: BTreeMap::new(),
            policies: BTreeMap::new(),
        };
        for agent in &input.agents {
            release_set::check_name("hardware_class", &agent.hardware_class)?;
            check_version("agent version", &agent.version)?;
            if set.agents.contains_key(&agent.hardware_class) {
                return Err(RepoError::Duplicate {
                    what: "agent for hardware class",
                    name: agent.hardware_class.clone(),
                });
            }
            let target = agent_image_target(&agent.hardware_class, &agent.version);
            let (length, sha256) = copy_hashed(&agent.path, &files.join(&target))?;
            set.agents.insert(
                agent.hardware_class.clone(),
                AgentImage {
                    version: agent.version.clone(),
                    image: Part {
                        target,
                        length,
                        sha256: hex::encode(sha256),
                    },
                    manifest: Part {
                        target: agent_manifest_target(&agent.hardware_class, &agent.version),
                        length: 0,
                        sha256: String::new(),
                    },
                },
            );
        }
        for policy in &input.policies {
            release_set::check_name("policy name", &policy.name)?;
            check_version("policy version", &policy.version)?;
            if set.policies.contains_key(&policy.name) {
                return Err(RepoError::Duplicate {
                    what: "policy",
                    name: policy.name.clone(),
                });
            }
            let target = policy_target(&policy.name, &policy.version);
            let (length, sha256) = copy_hashed(&policy.path, &files.join(&target))?;
            set.policies.insert(
                policy.name.clone(),
                PolicyModule {
                    version: policy.version.clone(),
                    module: Part {
                        target,
                        length,
                        sha256: hex::encode(sha256),
                    },
                    config: policy.config.clone(),
                },
            );
        }
        write_atomic(&draft.join(DRAFT_SET), &set.to_canonical_json()?)?;
        Ok(set)
    }

    /// The draft release set `version` as it stands.
    pub fn draft(&self, version: u64) -> Result<ReleaseSet, RepoError> {
        let draft = self.draft_dir(version);
        let path = draft.join(DRAFT_SET);
        if !path.exists() {
            return Err(RepoError::DraftMissing { version, path: draft });
        }
        let bytes = read_bounded(&path, release_set::RELEASE_SET_BYTES_MAX)?;
        serde_json::from_slice(&bytes)
            .map_err(|error| RepoError::ReleaseSet(ReleaseSetError::Malformed(error.to_string())))
    }

    /// Signs draft `version`: its image manifests with the image keys and
    /// its targets metadata with the targets keys.
    ///
    /// The targets metadata is the published one plus the draft's files
    /// and release set, at the next version, expiring after
    /// `Expiry::default().targets`.
    pub async fn sign_release(&self, version: u64, keys: &KeyDir) -> Result<(), RepoError> {
        let state = self
            .state()?
            .ok_or_else(|| RepoError::NotCreated { path: self.dir.clone() })?;
        let mut set = self.draft(version)?;
        let draft = self.draft_dir(version);
        let files_dir = draft.join(DRAFT_FILES);
        let image_signers = keys.signers(Role::Image)?;
        let image_keys: Vec<&ed25519_dalek::SigningKey> =
            image_signers.iter().map(|signer| signer.signing_key()).collect();
        let image_trust = keys.image_trust_root()?;
        for (class, agent) in &mut set.agents {
            let manifest_error = |source| RepoError::Manifest {
                hardware_class: class.clone(),
                source,
            };
            let sha256 = agent.image.sha256_bytes().ok_or_else(|| RepoError::PartMismatch {
                field: format!("agents.{class}.image"),
                target: agent.image.target.clone(),
            })?;
            let manifest = molt_core::Manifest {
                name: "agent".to_owned(),
                version: parse_version("agent version", &agent.version)?,
                security_counter: set.security_counter,
                length: agent.image.length,
                sha256,
                hardware_class: class.clone(),
            };
            let signed = manifest.sign(&image_keys).map_err(manifest_error)?;
            // Pair assertion: what devices will verify is what was meant.
            let verified = image_trust.verify(&signed).map_err(manifest_error)?;
            assert_eq!(verified, manifest, "a signed manifest must verify to itself");
            write_atomic(&files_dir.join(&agent.manifest.target), &signed)?;
            agent.manifest.length = signed.len() as u64;
            agent.manifest.sha256 = hex::encode(Sha256::digest(&signed));
        }
        set.validate()?;
        let set_bytes = set.to_canonical_json()?;
        write_atomic(&draft.join(DRAFT_SET), &set_bytes)?;
        write_atomic(&files_dir.join(release_set::target_name(version)), &set_bytes)?;

        let files = walk_files(&files_dir)?;
        for (field, part) in set.parts() {
            let matches = match files.get(&part.target) {
                Some(path) => {
                    let (length, sha256) = hash_file(path)?;
                    length == part.length && Some(sha256) == part.sha256_bytes()
                }
                None => false,
            };
            if !matches {
                return Err(RepoError::PartMismatch {
                    field,
                    target: part.target.clone(),
                });
            }
        }
        let mut new_targets = Vec::new();
        for (name, path) in &files {
            let (length, sha256) = hash_file(path)?;
            if let Some(published) = state.targets.signed.targets.get(&target_name(name)?)
                && (published.length != length || published.hashes.sha256.as_ref() != sha256)
            {
                return Err(RepoError::TargetConflict { name: name.clone() });
            }
            new_targets.push((name.clone(), tuf_target(length, &sha256)));
        }
        let root = keys.root()?;
        let next = state.targets.signed.version.saturating_add(1);
        let signed = sign_targets(
            &root,
            state.targets.signed.clone(),
            &new_targets,
            next,
            Expiry::default().targets,
            keys,
        )
        .await?;
        write_atomic(&draft.join(DRAFT_TARGETS), &metadata::encode(&signed)?)
    }

    /// Publishes signed draft `version` into `public/`: targets, then
    /// snapshot and timestamp signed with the online keys.
    pub async fn publish(&self, version: u64, keys: &KeyDir, expiry: &Expiry) -> Result<Published, RepoError> {
        let draft = self.draft_dir(version);
        if !draft.join(DRAFT_SET).exists() {
            return Err(RepoError::DraftMissing { version, path: draft });
        }
        let targets_path = draft.join(DRAFT_TARGETS);
        if !targets_path.exists() {
            return Err(RepoError::DraftNotSigned { version });
        }
        let targets_bytes = read_bounded(&targets_path, METADATA_BYTES_MAX)?;
        let files = walk_files(&draft.join(DRAFT_FILES))?;
        self.publish_targets(&targets_bytes, &files, keys, expiry).await
    }

    /// Publishes already signed targets metadata and the files of its new
    /// targets (by target name), then new snapshot and timestamp. This is
    /// what [`Repo::publish`] does with a signed draft; it checks
    /// signatures, versions and file digests, but not what a release set
    /// says (a device checks that).
    pub async fn publish_targets(
        &self,
        targets_bytes: &[u8],
        files: &BTreeMap<String, PathBuf>,
        keys: &KeyDir,
        expiry: &Expiry,
    ) -> Result<Published, RepoError> {
        let state = self
            .state()?
            .ok_or_else(|| RepoError::NotCreated { path: self.dir.clone() })?;
        let root = self.publish_roots(keys)?;
        let signed: Signed<Targets> = metadata::decode("signed targets", targets_bytes)?;
        root.signed
            .verify_role(&signed)
            .map_err(|error| RepoError::TargetsNotSigned {
                root_version: root.signed.version.get(),
                reason: error.to_string(),
            })?;
        let published = state.targets.signed.version.get();
        if signed.signed.version.get() != published + 1 {
            return Err(RepoError::Stale {
                signed: signed.signed.version.get(),
                published,
            });
        }
        let mut copies = Vec::new();
        for (name, target) in &signed.signed.targets {
            let sha256_hex = hex::encode(target.hashes.sha256.as_ref());
            let dest = self.targets_dir().join(consistent_target_path(name.raw(), &sha256_hex));
            match files.get(name.raw()) {
                Some(path) => {
                    let (length, sha256) = hash_file(path)?;
                    if length != target.length || sha256 != target.hashes.sha256.as_ref() {
                        return Err(RepoError::FileMismatch {
                            name: name.raw().to_owned(),
                            path: path.clone(),
                        });
                    }
                    if !dest.exists() {
                        copies.push((path.clone(), dest));
                    }
                }
                None if dest.exists() => {}
                None => {
                    return Err(RepoError::MissingTargetFile {
                        name: name.raw().to_owned(),
                    });
                }
            }
        }
        for (from, to) in copies {
            copy_hashed(&from, &to)?;
        }
        let path = self
            .metadata_dir()
            .join(format!("{}.targets.json", signed.signed.version));
        write_atomic(&path, targets_bytes)?;
        self.publish_snapshot(&root, &signed, targets_bytes, Some(&state), keys, expiry)
            .await
    }

    /// Re-signs snapshot and timestamp with fresh versions and expiry, and
    /// publishes any root versions the key directory has that `public/`
    /// lacks (after `keys rotate`). If the targets keys were rotated, the
    /// targets metadata is re-signed with the new keys at its next version.
    pub async fn refresh(&self, keys: &KeyDir, expiry: &Expiry) -> Result<Published, RepoError> {
        let state = self
            .state()?
            .ok_or_else(|| RepoError::NotCreated { path: self.dir.clone() })?;
        let root = self.publish_roots(keys)?;
        let (targets, targets_bytes) = if root.signed.verify_role(&state.targets).is_ok() {
            let path = self
                .metadata_dir()
                .join(format!("{}.targets.json", state.targets.signed.version));
            (state.targets.clone(), read_bounded(&path, METADATA_BYTES_MAX)?)
        } else {
            let next = state.targets.signed.version.saturating_add(1);
            let signed = sign_targets(&root, state.targets.signed.clone(), &[], next, expiry.targets, keys).await?;
            let bytes = metadata::encode(&signed)?;
            write_atomic(&self.metadata_dir().join(format!("{next}.targets.json")), &bytes)?;
            (signed, bytes)
        };
        self.publish_snapshot(&root, &targets, &targets_bytes, Some(&state), keys, expiry)
            .await
    }

    /// Copies every root version from the key directory that `public/`
    /// lacks, and `root.json` (the newest); returns the newest.
    fn publish_roots(&self, keys: &KeyDir) -> Result<Signed<Root>, RepoError> {
        let newest = keys.root_version()?;
        for version in 1..=newest {
            let path = self.metadata_dir().join(format!("{version}.root.json"));
            if !path.exists() {
                write_atomic(&path, &keys.root_json_version(version)?)?;
            }
        }
        let bytes = keys.root_json_version(newest)?;
        write_atomic(&self.metadata_dir().join("root.json"), &bytes)?;
        Ok(metadata::decode("root.json", &bytes)?)
    }

    /// Signs and writes the next snapshot (pinning `targets_bytes`) and
    /// then the timestamp, last, so that a client never sees a timestamp
    /// whose files are not all in place.
    async fn publish_snapshot(
        &self,
        root: &Signed<Root>,
        targets: &Signed<Targets>,
        targets_bytes: &[u8],
        previous: Option<&State>,
        keys: &KeyDir,
        expiry: &Expiry,
    ) -> Result<Published, RepoError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let holder = KeyHolder::Root(root.signed.clone());
        let next = |version: Option<NonZeroU64>| version.map_or(NonZeroU64::MIN, |version| version.saturating_add(1));
        let snapshot_version = next(previous.map(|state| state.snapshot.signed.version));
        let mut snapshot = Snapshot::new(
            metadata::SPEC_VERSION.to_owned(),
            snapshot_version,
            metadata::expires_in(expiry.snapshot)?,
        );
        snapshot.meta.insert(
            "targets.json".to_owned(),
            Metafile {
                length: Some(targets_bytes.len() as u64),
                hashes: Some(Hashes {
                    sha256: Decoded::<Hex>::from(Sha256::digest(targets_bytes).to_vec()),
                    _extra: HashMap::new(),
                }),
                version: targets.signed.version,
                _extra: HashMap::new(),
            },
        );
        let snapshot_keys = keys.key_sources(Role::Snapshot)?;
        let snapshot = SignedRole::new(snapshot, &holder, &snapshot_keys, &rng)
            .await
            .map_err(tuf_error("signing snapshot"))?;
        write_atomic(
            &self.metadata_dir().join(format!("{snapshot_version}.snapshot.json")),
            snapshot.buffer(),
        )?;
        let timestamp_version = next(previous.map(|state| state.timestamp.signed.version));
        let mut timestamp = Timestamp::new(
            metadata::SPEC_VERSION.to_owned(),
            timestamp_version,
            metadata::expires_in(expiry.timestamp)?,
        );
        timestamp.meta.insert(
            "snapshot.json".to_owned(),
            Metafile {
                length: Some(*snapshot.length()),
                hashes: Some(Hashes {
                    sha256: Decoded::<Hex>::from(snapshot.sha256().to_vec()),
                    _extra: HashMap::new(),
                }),
                version: snapshot_version,
                _extra: HashMap::new(),
            },
        );
        let timestamp_keys = keys.key_sources(Role::Timestamp)?;
        let timestamp = SignedRole::new(timestamp, &holder, &timestamp_keys, &rng)
            .await
            .map_err(tuf_error("signing timestamp"))?;
        write_atomic(&self.metadata_dir().join("timestamp.json"), timestamp.buffer())?;
        Ok(Published {
            root_version: root.signed.version.get(),
            targets_version: targets.signed.version.get(),
            snapshot_version: snapshot_version.get(),
            timestamp_version: timestamp_version.get(),
            release_set: newest_release_set(&targets.signed),
        })
    }

    /// Reads the published metadata chain: timestamp, its snapshot, its
    /// targets. `None` before the first publish.
    fn state(&self) -> Result<Option<State>, RepoError> {
        let dir = self.metadata_dir();
        let timestamp_path = dir.join("timestamp.json");
        if !timestamp_path.exists() {
            return Ok(None);
        }
        let timestamp: Signed<Timestamp> =
            metadata::decode("timestamp.json", &read_bounded(&timestamp_path, METADATA_BYTES_MAX)?)?;
        let snapshot_meta = timestamp.signed.meta.get("snapshot.json").ok_or_else(|| {
            RepoError::Metadata(MetadataError::Decode {
                what: "timestamp.json".to_owned(),
                reason: "no snapshot.json entry".to_owned(),
            })
        })?;
        let name = format!("{}.snapshot.json", snapshot_meta.version);
        let snapshot: Signed<Snapshot> = metadata::decode(&name, &read_bounded(&dir.join(&name), METADATA_BYTES_MAX)?)?;
        let targets_meta = snapshot.signed.meta.get("targets.json").ok_or_else(|| {
            RepoError::Metadata(MetadataError::Decode {
                what: name.clone(),
                reason: "no targets.json entry".to_owned(),
            })
        })?;
        let name = format!("{}.targets.json", targets_meta.version);
        let targets: Signed<Targets> = metadata::decode(&name, &read_bounded(&dir.join(&name), METADATA_BYTES_MAX)?)?;
        let root_bytes = read_bounded(&dir.join("root.json"), METADATA_BYTES_MAX)?;
        let root: Signed<Root> = metadata::decode("root.json", &root_bytes)?;
        Ok(Some(State {
            root,
            timestamp,
            snapshot,
            targets,
        }))
    }
}

/// Signs `base` plus `added` targets as targets `version` with the targets
/// keys, through tough's `TargetsEditor`.
async fn sign_targets(
    root: &Signed<Root>,
    base: Targets,
    added: &[(String, Target)],
    version: NonZeroU64,
    lifetime: Duration,
    keys: &KeyDir,
) -> Result<Signed<Targets>, RepoError> {
    let mut editor = TargetsEditor::from_targets("targets", base, KeyHolder::Root(root.signed.clone()));
    for (name, target) in added {
        editor
            .add_target(target_name(name)?, target.clone())
            .map_err(tuf_error("adding a target"))?;
    }
    editor.version(version).expires(metadata::expires_in(lifetime)?);
    let sources = keys.key_sources(Role::Targets)?;
    let signed = editor
        .create_signed(&sources)
        .await
        .map_err(tuf_error("signing targets"))?;
    Ok(signed.targets().1)
}

fn parse_version(field: &str, value: &str) -> Result<molt_core::Version, RepoError> {
    value.parse().map_err(|error: molt_core::ParseVersionError| {
        RepoError::ReleaseSet(ReleaseSetError::InvalidField {
            field: field.to_owned(),
            reason: format!("{value:?}: {error}"),
        })
    })
}

fn check_version(field: &str, value: &str) -> Result<(), RepoError> {
    parse_version(field, value).map(|_| ())
}

/// The timestamp a repository serves: its version and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampInfo {
    /// Its version.
    pub version: u64,
    /// When it expires, in seconds since the Unix epoch.
    pub expires_unix_s: i64,
}

/// Reads `metadata_dir/timestamp.json` (without verifying it: the caller
/// verified the repository when it took it in).
pub fn timestamp_info(metadata_dir: &Path) -> Result<TimestampInfo, RepoError> {
    let path = metadata_dir.join("timestamp.json");
    let timestamp: Signed<Timestamp> = metadata::decode("timestamp.json", &read_bounded(&path, METADATA_BYTES_MAX)?)?;
    Ok(TimestampInfo {
        version: timestamp.signed.version.get(),
        expires_unix_s: timestamp.signed.expires.as_second(),
    })
}

/// Re-signs `metadata_dir/timestamp.json` as `version` (or the next
/// version when `None`), pinning the same snapshot, expiring `lifetime`
/// from now, with `key` alone.
///
/// This is what TUF means the timestamp role's online key for: a server
/// that hosts a repository keeps its timestamp fresh without holding the
/// root, targets or snapshot keys. The key must be one of the timestamp
/// keys of the repository's `root.json`, with a threshold of 1, or devices
/// would refuse the result. The file is replaced atomically.
pub async fn resign_timestamp(
    metadata_dir: &Path,
    key: &crate::keys::Signer,
    version: Option<u64>,
    lifetime: Duration,
) -> Result<TimestampInfo, RepoError> {
    let root: Signed<Root> = metadata::decode(
        "root.json",
        &read_bounded(&metadata_dir.join("root.json"), METADATA_BYTES_MAX)?,
    )?;
    let root_version = root.signed.version.get();
    let role = root
        .signed
        .roles
        .get(&tough::schema::RoleType::Timestamp)
        .ok_or_else(|| RepoError::Tuf {
            what: "root.json",
            reason: "no timestamp role".to_owned(),
        })?;
    let keyid = key.keyid_bytes();
    if !role.keyids.iter().any(|listed| listed.as_ref() == keyid) {
        return Err(RepoError::NotATimestampKey {
            keyid: key.keyid(),
            root_version,
        });
    }
    if role.threshold.get() != 1 {
        return Err(RepoError::TimestampThreshold {
            root_version,
            threshold: role.threshold.get(),
        });
    }
    let path = metadata_dir.join("timestamp.json");
    let old: Signed<Timestamp> = metadata::decode("timestamp.json", &read_bounded(&path, METADATA_BYTES_MAX)?)?;
    let version = match version {
        Some(version) => NonZeroU64::new(version).ok_or_else(|| RepoError::Tuf {
            what: "re-signing timestamp",
            reason: "version 0".to_owned(),
        })?,
        None => old.signed.version.saturating_add(1),
    };
    let mut timestamp = Timestamp::new(
        metadata::SPEC_VERSION.to_owned(),
        version,
        metadata::expires_in(lifetime)?,
    );
    timestamp.meta = old.signed.meta;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signed = SignedRole::new(timestamp, &KeyHolder::Root(root.signed), &[key.key_source()], &rng)
        .await
        .map_err(tuf_error("signing timestamp"))?;
    write_atomic(&path, signed.buffer())?;
    Ok(TimestampInfo {
        version: version.get(),
        expires_unix_s: signed.signed().signed.expires.as_second(),
    })
}
