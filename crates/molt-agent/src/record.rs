//! What the device keeps durably besides its slots and its TUF metadata:
//! the installed record, the image trust root, and policy modules.
//!
//! Every file is replaced atomically (temporary file, fsync, rename, fsync
//! of the directory) and read back under a size limit, so a power cut leaves
//! either the old file or the new one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DeviceError;

/// The only installed-record format this build reads and writes.
const RECORD_FORMAT: u32 = 1;

/// What the device has installed, durably.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    /// Always [`RECORD_FORMAT`].
    format: u32,
    /// Version of the release set installed last (0: none yet).
    pub release_version: u64,
    /// Its security counter: no set with a lower one is accepted.
    pub security_counter: u64,
    /// The committed agent's `major.minor.patch`.
    pub agent_version: String,
    /// The policy version serving for each installed policy.
    pub policies: BTreeMap<String, PolicyRecord>,
}

/// One policy version: what makes two versions the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecord {
    /// `major.minor.patch`.
    pub version: String,
    /// Lowercase hex sha256 of the component; the module is kept as
    /// `policies/<sha256>.wasm`.
    pub sha256: String,
    /// The key/value pairs `init` and `restore` receive.
    pub config: BTreeMap<String, String>,
}

impl Installed {
    /// A device that has installed nothing yet and runs its factory agent.
    pub(crate) fn factory(agent_version: &str) -> Installed {
        Installed {
            format: RECORD_FORMAT,
            release_version: 0,
            security_counter: 0,
            agent_version: agent_version.to_owned(),
            policies: BTreeMap::new(),
        }
    }

    /// What molt-release judges downgrades against.
    pub fn client_view(&self) -> molt_release::client::Installed {
        molt_release::client::Installed {
            release_version: self.release_version,
            security_counter: self.security_counter,
            agent_version: self.agent_version.clone(),
        }
    }

    pub(crate) fn load(path: &Path, bytes_max: u64) -> Result<Installed, DeviceError> {
        let bytes = read_bounded(path, bytes_max, "installed_bytes_max")?;
        let installed: Installed = serde_json::from_slice(&bytes).map_err(|error| DeviceError::Corrupt {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        if installed.format != RECORD_FORMAT {
            return Err(DeviceError::Corrupt {
                path: path.to_owned(),
                reason: format!("format {} is not {RECORD_FORMAT}", installed.format),
            });
        }
        Ok(installed)
    }

    pub(crate) fn store(&self, path: &Path) -> Result<(), DeviceError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|error| DeviceError::Corrupt {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        replace_file(path, &bytes)
    }
}

/// The image keys, as molt-core verifies agent manifests.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    threshold: usize,
    /// Lowercase hex ed25519 public keys.
    keys: Vec<String>,
}

/// Upper bound on `image-trust.json`; molt-core allows at most
/// `SIGNATURES_MAX` keys, which fit in far less.
const TRUST_FILE_BYTES_MAX: u64 = 64 * 1024;

pub(crate) fn store_trust(path: &Path, trust: &molt_core::TrustRoot) -> Result<(), DeviceError> {
    let file = TrustFile {
        threshold: trust.threshold(),
        keys: trust.keys().iter().map(|key| hex(key.as_bytes())).collect(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(|error| DeviceError::Corrupt {
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    replace_file(path, &bytes)
}

pub(crate) fn load_trust(path: &Path) -> Result<molt_core::TrustRoot, DeviceError> {
    let corrupt = |reason: String| DeviceError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let bytes = read_bounded(path, TRUST_FILE_BYTES_MAX, "image trust file size (64 KiB)")?;
    let file: TrustFile = serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
    let mut keys = Vec::with_capacity(file.keys.len().min(molt_core::SIGNATURES_MAX));
    for key in &file.keys {
        let bytes: [u8; 32] = unhex(key)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| corrupt(format!("`{key}` is not a hex ed25519 key")))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|error| corrupt(error.to_string()))?;
        keys.push(key);
    }
    Ok(molt_core::TrustRoot::new(&keys, file.threshold)?)
}

/// Keeps `wasm` as `dir/<sha256>.wasm` and returns the digest's hex.
pub(crate) fn store_module(dir: &Path, wasm: &[u8]) -> Result<String, DeviceError> {
    let sha256 = hex(&Sha256::digest(wasm));
    let path = module_path(dir, &sha256);
    if !path.exists() {
        replace_file(&path, wasm)?;
    }
    Ok(sha256)
}

/// Reads a kept module back and checks it still has its digest.
pub(crate) fn load_module(dir: &Path, sha256: &str, bytes_max: u64) -> Result<Vec<u8>, DeviceError> {
    let path = module_path(dir, sha256);
    let wasm = read_bounded(&path, bytes_max, "module_bytes_max")?;
    let found = hex(&Sha256::digest(&wasm));
    if found != sha256 {
        return Err(DeviceError::Corrupt {
            path,
            reason: format!("sha256 is {found}, expected {sha256}"),
        });
    }
    Ok(wasm)
}

fn module_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.wasm"))
}

/// Reads `path` whole, refusing one larger than `bytes_max` before reading
/// it and again if it grew while being read.
pub(crate) fn read_bounded(path: &Path, bytes_max: u64, limit_name: &'static str) -> Result<Vec<u8>, DeviceError> {
    let file = File::open(path).map_err(DeviceError::io("open", path))?;
    let size_bytes = file.metadata().map_err(DeviceError::io("stat", path))?.len();
    let too_large = |size_bytes| DeviceError::TooLarge {
        path: path.to_owned(),
        size_bytes,
        limit_name,
        limit_bytes: bytes_max,
    };
    if size_bytes > bytes_max {
        return Err(too_large(size_bytes));
    }
    let mut bytes = Vec::with_capacity(size_bytes as usize);
    file.take(bytes_max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(DeviceError::io("read", path))?;
    if bytes.len() as u64 > bytes_max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Replaces `path` with `bytes` atomically and durably.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), DeviceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(DeviceError::io("create", &tmp))?;
    file.write_all(bytes).map_err(DeviceError::io("write", &tmp))?;
    file.sync_all().map_err(DeviceError::io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(DeviceError::io("rename into place", path))?;
    sync_dir(dir)
}

/// Creates `dir` (and its parents) and makes the new entries durable.
pub(crate) fn create_dir(dir: &Path) -> Result<(), DeviceError> {
    fs::create_dir_all(dir).map_err(DeviceError::io("create directory", dir))?;
    sync_dir(dir)?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), DeviceError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(DeviceError::io("fsync directory", dir))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| text.get(at..at + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}
