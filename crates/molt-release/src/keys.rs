//! Role keys on disk: creation, loading and rotation.
//!
//! A key directory holds ed25519 keys as PKCS#8 PEM files, one per key, in
//! a directory only its owner may read (0700, files 0600), plus `keys.json`
//! (which key belongs to which role, and each role's threshold) and the
//! root metadata history `root/<version>.root.json`.
//!
//! Roles are TUF's four (root, targets, snapshot, timestamp) plus `image`,
//! the keys that sign molt-core manifests for agent images.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write as _;
use std::num::NonZeroU64;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsBigEndian as _;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};
use tough::schema::{RoleType, Root, Signed};

use crate::metadata::{self, MetadataError};

/// A key role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// TUF root: signs the root metadata, which names all other keys.
    Root,
    /// TUF targets: signs what is in a release.
    Targets,
    /// TUF snapshot: signs which targets metadata versions go together.
    Snapshot,
    /// TUF timestamp: signs the current snapshot, often and online.
    Timestamp,
    /// molt-core image manifests for agent images.
    Image,
}

/// How many keys a role gets and how many must sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleKeys {
    /// Keys created for the role.
    pub keys: usize,
    /// Signatures required.
    pub threshold: usize,
}

/// What `KeyDir::init` creates.
#[derive(Debug, Clone)]
pub struct KeyPlan {
    /// Default 3 keys, threshold 2.
    pub root: RoleKeys,
    /// Default 1 of 1.
    pub targets: RoleKeys,
    /// Default 1 of 1.
    pub snapshot: RoleKeys,
    /// Default 1 of 1.
    pub timestamp: RoleKeys,
    /// Default 1 of 1.
    pub image: RoleKeys,
    /// Lifetime of each root version; default 365 days.
    pub root_expires: std::time::Duration,
}

/// Upper bound on keys per role (`keys_per_role_max`): molt-core pins at
/// most `SIGNATURES_MAX` image keys, and no role needs more.
pub const KEYS_PER_ROLE_MAX: usize = molt_core::SIGNATURES_MAX;

/// Upper bound on a key file or `keys.json` read from the key directory.
const KEY_DIR_FILE_BYTES_MAX: u64 = 1 << 20;

/// The index file of a key directory.
const INDEX_FILE: &str = "keys.json";
/// The root metadata history.
const ROOT_DIR: &str = "root";
/// The only `keys.json` format this build reads and writes.
const INDEX_FORMAT: u32 = 1;

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// `init` was pointed at a directory that already holds files.
    #[error("key directory {path} already exists and is not empty; choose a new directory or open the existing one")]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// The directory or a key file can be read by others than its owner.
    #[error("{path} has mode {mode:o}, readable by others; run `chmod {expected:o} {path}`")]
    Permissions {
        /// The file or directory.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
        /// The mode it must have.
        expected: u32,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key-directory file is not what molt writes.
    #[error("{path} is malformed: {reason}; restore it from your backup of the key directory")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file in the key directory is over `KEY_DIR_FILE_BYTES_MAX` (1 MiB).
    #[error("{path} is {size} bytes, over the limit of {limit} (key_dir_file_bytes_max)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A role's key count or threshold is out of range.
    #[error(
        "role {role}: {keys} keys with threshold {threshold}; need 1 <= threshold <= keys <= {limit} (keys_per_role_max)"
    )]
    BadPlan {
        /// The role.
        role: &'static str,
        /// Keys asked for.
        keys: usize,
        /// Threshold asked for.
        threshold: usize,
        /// `KEYS_PER_ROLE_MAX`.
        limit: usize,
    },
    /// A key the index names has no file.
    #[error("key {keyid} of role {role} is missing from {dir}; restore it from your backup")]
    KeyMissing {
        /// The role.
        role: &'static str,
        /// The key id.
        keyid: String,
        /// The key directory.
        dir: PathBuf,
    },
    /// Generating a key failed (the system random source).
    #[error("cannot generate an ed25519 key: the system random source failed")]
    Generate,
    /// The new root would not verify (a bug, or key files were swapped).
    #[error("root version {version} does not verify after signing: {reason}")]
    RootDoesNotVerify {
        /// The version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// Metadata could not be built.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The image keys do not form a molt-core trust root.
    #[error("image keys: {0}")]
    ImageTrust(#[from] molt_core::TrustRootError),
}

/// One role key: its TUF key id and the ed25519 key.
pub struct Signer {
    keyid: Vec<u8>,
    pkcs8_der: Vec<u8>,
    signing_key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("keyid", &self.keyid())
            .finish_non_exhaustive()
    }
}

impl Signer {
    fn from_pkcs8(pkcs8_der: Vec<u8>, path: &Path) -> Result<Signer, KeyError> {
        let malformed = |reason: &str| KeyError::Malformed {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8_der).map_err(|_| malformed("not an ed25519 PKCS#8 key"))?;
        let seed = pair
            .seed()
            .and_then(|seed| seed.as_be_bytes())
            .map_err(|_| malformed("no ed25519 seed"))?;
        let seed: [u8; 32] = seed
            .as_ref()
            .try_into()
            .map_err(|_| malformed("seed is not 32 bytes"))?;
        let signing_key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if signing_key.verifying_key().as_bytes() != pair.public_key().as_ref() {
            return Err(malformed("public key does not match the seed"));
        }
        let keyid = tuf_key(&signing_key.verifying_key())
            .key_id()
            .map_err(|error| malformed(&error.to_string()))?
            .to_vec();
        Ok(Signer {
            keyid,
            pkcs8_der,
            signing_key,
        })
    }

    /// The TUF key id, lowercase hex.
    pub fn keyid(&self) -> String {
        metadata::hex_of(&self.keyid)
    }

    /// The TUF key id.
    pub fn keyid_bytes(&self) -> &[u8] {
        &self.keyid
    }

    /// The ed25519 key.
    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        &self.signing_key
    }

    /// The key as TUF root metadata lists it.
    pub fn tuf_key(&self) -> Key {
        tuf_key(&self.signing_key.verifying_key())
    }

    /// The key as a tough `KeySource`, for tough's editor.
    pub fn key_source(&self) -> Box<dyn KeySource> {
        Box::new(Pkcs8KeySource {
            pkcs8_der: self.pkcs8_der.clone(),
        })
    }
}

/// An in-memory PKCS#8 key for tough's editor.
///
/// tough's `LocalKeySource` reads ed25519 keys only as raw PKCS#8 DER (its
/// PEM path handles RSA only), so molt hands tough the DER it decoded from
/// the PEM file.
struct Pkcs8KeySource {
    pkcs8_der: Vec<u8>,
}

impl std::fmt::Debug for Pkcs8KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs8KeySource").finish_non_exhaustive()
    }
}

#[tough::async_trait]
impl KeySource for Pkcs8KeySource {
    async fn as_sign(&self) -> Result<Box<dyn tough::sign::Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(tough::sign::parse_keypair(&self.pkcs8_der)?))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err("molt key sources are read-only".into())
    }
}

fn tuf_key(public: &ed25519_dalek::VerifyingKey) -> Key {
    Key::Ed25519 {
        keyval: Ed25519Key {
            public: Decoded::<Hex>::from(public.as_bytes().to_vec()),
            _extra: HashMap::new(),
        },
        scheme: Ed25519Scheme::Ed25519,
        _extra: HashMap::new(),
    }
}

impl Role {
    /// Every role, in the order `keys.json` lists them.
    pub const ALL: [Role; 5] = [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp, Role::Image];

    /// The role's name in `keys.json`, TUF metadata and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
            Role::Image => "image",
        }
    }

    /// The TUF role, for the four TUF roles.
    pub fn tuf_role(self) -> Option<RoleType> {
        match self {
            Role::Root => Some(RoleType::Root),
            Role::Targets => Some(RoleType::Targets),
            Role::Snapshot => Some(RoleType::Snapshot),
            Role::Timestamp => Some(RoleType::Timestamp),
            Role::Image => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.name() == text)
            .ok_or_else(|| format!("unknown role {text:?}; expected root, targets, snapshot, timestamp or image"))
    }
}

/// `keys.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyIndex {
    format: u32,
    root_expires_secs: u64,
    roles: BTreeMap<String, RoleEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    threshold: usize,
    keys: Vec<String>,
}

impl KeyIndex {
    fn entry(&self, role: Role) -> Result<&RoleEntry, KeyError> {
        self.roles.get(role.name()).ok_or_else(|| KeyError::Malformed {
            path: PathBuf::from(INDEX_FILE),
            reason: format!("role {role} is missing"),
        })
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

fn check_plan(role: Role, plan: RoleKeys) -> Result<(), KeyError> {
    if plan.keys == 0 || plan.keys > KEYS_PER_ROLE_MAX || plan.threshold == 0 || plan.threshold > plan.keys {
        return Err(KeyError::BadPlan {
            role: role.name(),
            keys: plan.keys,
            threshold: plan.threshold,
            limit: KEYS_PER_ROLE_MAX,
        });
    }
    Ok(())
}

/// Reads a file from the key directory, bounded by `KEY_DIR_FILE_BYTES_MAX`.
fn read_bounded(path: &Path) -> Result<Vec<u8>, KeyError> {
    let size = fs::metadata(path).map_err(io_error(path))?.len();
    if size > KEY_DIR_FILE_BYTES_MAX {
        return Err(KeyError::TooLarge {
            path: path.to_owned(),
            size,
            limit: KEY_DIR_FILE_BYTES_MAX,
        });
    }
    fs::read(path).map_err(io_error(path))
}

/// Writes `bytes` to `path` through a temporary file and a rename, with
/// mode 0600, so a crash never leaves a half-written file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    file.write_all(bytes).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(())
}

fn check_private(path: &Path, expected: u32) -> Result<(), KeyError> {
    let mode = fs::metadata(path).map_err(io_error(path))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
            expected,
        });
    }
    Ok(())
}

impl KeyDir {
    /// Creates keys for every role and root metadata version 1, signed by
    /// the root keys. Refuses a directory that exists and is not empty.
    pub async fn init(path: &Path, plan: &KeyPlan) -> Result<KeyDir, KeyError> {
        let plans = [
            (Role::Root, plan.root),
            (Role::Targets, plan.targets),
            (Role::Snapshot, plan.snapshot),
            (Role::Timestamp, plan.timestamp),
            (Role::Image, plan.image),
        ];
        for (role, role_plan) in plans {
            check_plan(role, role_plan)?;
        }
        match fs::read_dir(path) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(KeyError::NotEmpty { path: path.to_owned() });
                }
                fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_error(path))?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(io_error(path))?;
            }
            Err(error) => return Err(io_error(path)(error)),
        }
        let root_dir = path.join(ROOT_DIR);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&root_dir)
            .map_err(io_error(&root_dir))?;
        let mut index = KeyIndex {
            format: INDEX_FORMAT,
            root_expires_secs: plan.root_expires.as_secs(),
            roles: BTreeMap::new(),
        };
        for (role, role_plan) in plans {
            let keys = generate_keys(path, role_plan.keys)?;
            index.roles.insert(
                role.name().to_owned(),
                RoleEntry {
                    threshold: role_plan.threshold,
                    keys,
                },
            );
        }
        let key_dir = KeyDir {
            path: path.to_owned(),
            index,
        };
        let root = key_dir.build_root(NonZeroU64::MIN)?;
        let signers = key_dir.signers(Role::Root)?;
        let signed = metadata::sign(root, &signers.iter().collect::<Vec<_>>())?;
        verify_root(&signed, None)?;
        key_dir.write_index()?;
        key_dir.write_root(&signed)?;
        Ok(key_dir)
    }

    /// Opens an existing key directory; refuses one that others can read.
    pub fn open(path: &Path) -> Result<KeyDir, KeyError> {
        check_private(path, 0o700)?;
        let index_path = path.join(INDEX_FILE);
        check_private(&index_path, 0o600)?;
        let bytes = read_bounded(&index_path)?;
        let index: KeyIndex = serde_json::from_slice(&bytes).map_err(|error| KeyError::Malformed {
            path: index_path.clone(),
            reason: error.to_string(),
        })?;
        if index.format != INDEX_FORMAT {
            return Err(KeyError::Malformed {
                path: index_path,
                reason: format!("format {} is not {INDEX_FORMAT}", index.format),
            });
        }
        let key_dir = KeyDir {
            path: path.to_owned(),
            index,
        };
        for role in Role::ALL {
            let entry = key_dir.index.entry(role)?;
            check_plan(
                role,
                RoleKeys {
                    keys: entry.keys.len(),
                    threshold: entry.threshold,
                },
            )?;
        }
        Ok(key_dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest signed root metadata (what a device pins at first boot).
    pub fn root_json(&self) -> Result<Vec<u8>, KeyError> {
        self.root_json_version(self.root_version()?)
    }

    /// Root metadata version `version` from the history.
    pub fn root_json_version(&self, version: u64) -> Result<Vec<u8>, KeyError> {
        read_bounded(&self.path.join(ROOT_DIR).join(format!("{version}.root.json")))
    }

    /// The newest root version in the history.
    pub fn root_version(&self) -> Result<u64, KeyError> {
        let root_dir = self.path.join(ROOT_DIR);
        let mut newest = 0;
        for entry in fs::read_dir(&root_dir).map_err(io_error(&root_dir))? {
            let entry = entry.map_err(io_error(&root_dir))?;
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|name| name.strip_suffix(".root.json")) else {
                continue;
            };
            if let Ok(version) = version.parse::<u64>() {
                newest = newest.max(version);
            }
        }
        if newest == 0 {
            return Err(KeyError::Malformed {
                path: root_dir,
                reason: "no root metadata".to_owned(),
            });
        }
        Ok(newest)
    }

    /// The newest root metadata, parsed.
    pub fn root(&self) -> Result<Signed<Root>, KeyError> {
        let version = self.root_version()?;
        let bytes = self.root_json_version(version)?;
        Ok(metadata::decode(&format!("{version}.root.json"), &bytes)?)
    }

    /// The image keys and threshold, as molt-core verifies manifests.
    pub fn image_trust_root(&self) -> Result<molt_core::TrustRoot, KeyError> {
        let signers = self.signers(Role::Image)?;
        let keys: Vec<_> = signers
            .iter()
            .map(|signer| signer.signing_key().verifying_key())
            .collect();
        Ok(molt_core::TrustRoot::new(&keys, self.threshold(Role::Image)?)?)
    }

    /// How many of `role`'s keys must sign.
    pub fn threshold(&self, role: Role) -> Result<usize, KeyError> {
        Ok(self.index.entry(role)?.threshold)
    }

    /// `role`'s current keys, loaded from their PEM files.
    pub fn signers(&self, role: Role) -> Result<Vec<Signer>, KeyError> {
        let entry = self.index.entry(role)?;
        entry
            .keys
            .iter()
            .map(|keyid| {
                let path = self.path.join(format!("{keyid}.pem"));
                if !path.exists() {
                    return Err(KeyError::KeyMissing {
                        role: role.name(),
                        keyid: keyid.clone(),
                        dir: self.path.clone(),
                    });
                }
                let signer = load_key(&path)?;
                if signer.keyid() != *keyid {
                    return Err(KeyError::Malformed {
                        path,
                        reason: format!("holds key {}, not {keyid}", signer.keyid()),
                    });
                }
                Ok(signer)
            })
            .collect()
    }

    /// `role`'s current keys as tough key sources.
    pub fn key_sources(&self, role: Role) -> Result<Vec<Box<dyn KeySource>>, KeyError> {
        Ok(self.signers(role)?.iter().map(Signer::key_source).collect())
    }

    /// Replaces `role`'s keys with `keys` new ones (threshold kept unless
    /// `threshold` is given) and writes the next root version, signed by
    /// the old root keys' threshold and, for a root rotation, the new ones'
    /// too. Returns the new root version.
    ///
    /// Image keys are not part of TUF root metadata: rotating them changes
    /// only the key directory (devices pin image keys in molt-core's
    /// `TrustRoot`), and the current root version is returned.
    pub async fn rotate(&mut self, role: Role, keys: usize, threshold: Option<usize>) -> Result<u64, KeyError> {
        let threshold = threshold.unwrap_or(self.threshold(role)?);
        check_plan(role, RoleKeys { keys, threshold })?;
        let old_root = self.root()?;
        let old_root_signers = self.signers(Role::Root)?;
        let new_keys = generate_keys(&self.path, keys)?;
        let mut index = self.index.clone();
        index.roles.insert(
            role.name().to_owned(),
            RoleEntry {
                threshold,
                keys: new_keys,
            },
        );
        let rotated = KeyDir {
            path: self.path.clone(),
            index,
        };
        if role == Role::Image {
            rotated.write_index()?;
            *self = rotated;
            return Ok(old_root.signed.version.get());
        }
        let version = old_root
            .signed
            .version
            .checked_add(1)
            .ok_or_else(|| KeyError::RootDoesNotVerify {
                version: u64::MAX,
                reason: "root version exhausted".to_owned(),
            })?;
        let root = rotated.build_root(version)?;
        let new_root_signers = rotated.signers(Role::Root)?;
        let signers: Vec<&Signer> = old_root_signers.iter().chain(new_root_signers.iter()).collect();
        let signed = metadata::sign(root, &signers)?;
        verify_root(&signed, Some(&old_root.signed))?;
        rotated.write_root(&signed)?;
        rotated.write_index()?;
        *self = rotated;
        Ok(version.get())
    }

    /// Root metadata `version` for the current keys (unsigned).
    fn build_root(&self, version: NonZeroU64) -> Result<Root, KeyError> {
        let mut keys = HashMap::new();
        let mut roles = HashMap::new();
        for role in [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp] {
            let entry = self.index.entry(role)?;
            let mut keyids = Vec::new();
            for signer in self.signers(role)? {
                let keyid = Decoded::<Hex>::from(signer.keyid_bytes().to_vec());
                keys.insert(keyid.clone(), signer.tuf_key());
                keyids.push(keyid);
            }
            let threshold = u64::try_from(entry.threshold)
                .ok()
                .and_then(NonZeroU64::new)
                .ok_or_else(|| KeyError::BadPlan {
                    role: role.name(),
                    keys: entry.keys.len(),
                    threshold: entry.threshold,
                    limit: KEYS_PER_ROLE_MAX,
                })?;
            let tuf_role = role.tuf_role().ok_or_else(|| KeyError::Malformed {
                path: self.path.join(INDEX_FILE),
                reason: format!("{role} is not a TUF role"),
            })?;
            roles.insert(
                tuf_role,
                tough::schema::RoleKeys {
                    keyids,
                    threshold,
                    _extra: HashMap::new(),
                },
            );
        }
        Ok(Root {
            spec_version: metadata::SPEC_VERSION.to_owned(),
            consistent_snapshot: true,
            version,
            expires: metadata::expires_in(std::time::Duration::from_secs(self.index.root_expires_secs))?,
            keys,
            roles,
            _extra: HashMap::new(),
        })
    }

    fn write_index(&self) -> Result<(), KeyError> {
        let bytes = serde_json::to_vec_pretty(&self.index).map_err(|error| KeyError::Malformed {
            path: self.path.join(INDEX_FILE),
            reason: error.to_string(),
        })?;
        write_private(&self.path.join(INDEX_FILE), &bytes)
    }

    fn write_root(&self, signed: &Signed<Root>) -> Result<(), KeyError> {
        let bytes = metadata::encode(signed)?;
        let path = self
            .path
            .join(ROOT_DIR)
            .join(format!("{}.root.json", signed.signed.version));
        write_private(&path, &bytes)
    }
}

/// Checks a freshly signed root the way a device will: self-signed by its
/// own root threshold and, after a rotation, by the previous one's.
fn verify_root(signed: &Signed<Root>, previous: Option<&Root>) -> Result<(), KeyError> {
    let version = signed.signed.version.get();
    let fail = |error: tough::schema::Error| KeyError::RootDoesNotVerify {
        version,
        reason: error.to_string(),
    };
    signed.signed.verify_role(signed).map_err(fail)?;
    if let Some(previous) = previous {
        previous.verify_role(signed).map_err(fail)?;
    }
    Ok(())
}

/// Generates `count` ed25519 keys as PKCS#8 PEM files (0600) in `dir`;
/// returns their key ids.
fn generate_keys(dir: &Path, count: usize) -> Result<Vec<String>, KeyError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut keyids = Vec::with_capacity(count);
    for _ in 0..count {
        let document = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
        let der = document.as_ref().to_vec();
        let signer = Signer::from_pkcs8(der.clone(), dir)?;
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
        let path = dir.join(format!("{}.pem", signer.keyid()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path))?;
        file.write_all(pem.as_bytes()).map_err(io_error(&path))?;
        file.sync_all().map_err(io_error(&path))?;
        keyids.push(signer.keyid());
    }
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))?;
    Ok(keyids)
}

/// Loads a PKCS#8 PEM key file; refuses one that others can read.
pub fn load_key(path: &Path) -> Result<Signer, KeyError> {
    check_private(path, 0o600)?;
    let bytes = read_bounded(path)?;
    let pem = pem::parse(&bytes).map_err(|error| KeyError::Malformed {
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    if pem.tag() != "PRIVATE KEY" {
        return Err(KeyError::Malformed {
            path: path.to_owned(),
            reason: format!("PEM label is {:?}, expected \"PRIVATE KEY\" (PKCS#8)", pem.tag()),
        });
    }
    Signer::from_pkcs8(pem.contents().to_vec(), path)
}

/// A directory of role keys.
#[derive(Debug)]
pub struct KeyDir {
    path: PathBuf,
    index: KeyIndex,
}

impl Default for KeyPlan {
    fn default() -> Self {
        let one = RoleKeys { keys: 1, threshold: 1 };
        KeyPlan {
            root: RoleKeys { keys: 3, threshold: 2 },
            targets: one,
            snapshot: one,
            timestamp: one,
            image: one,
            root_expires: std::time::Duration::from_secs(365 * 24 * 3600),
        }
    }
}
