//! [`ModuleCache`]: precompiled modules on disk, authenticated by a
//! device-local secret.
//!
//! An entry is `MAGIC || HMAC-SHA256(secret, key || bytes) || bytes`, named
//! by its [`CacheKey`]. Anyone who can write the directory but does not
//! know the secret can delete or corrupt entries, never plant code: an
//! entry whose MAC does not verify is removed and the module compiled
//! again from its `.wasm`.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::module::PolicyModule;
use crate::precompiled::CacheKey;
use crate::runtime::Runtime;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 8] = b"moltcw01";
const MAC_BYTES: usize = 32;
const HEADER_BYTES: usize = MAGIC.len() + MAC_BYTES;

/// A directory of precompiled modules for one device.
pub struct ModuleCache {
    dir: PathBuf,
    secret: [u8; 32],
}

/// What [`ModuleCache::load_or_compile`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheLookup {
    /// A valid entry was loaded.
    Hit,
    /// There was no entry; the module was compiled and stored.
    Miss,
    /// An entry failed authentication (tampered, torn or stale); it was
    /// deleted, and the module compiled and stored again.
    Rejected,
}

impl ModuleCache {
    /// A cache in `dir` (created if missing), authenticated with `secret`,
    /// which must stay on the device and be unguessable.
    pub fn open(dir: impl Into<PathBuf>, secret: [u8; 32]) -> Result<ModuleCache, Error> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| Error::Cache {
            operation: "create directory",
            path: dir.clone(),
            source,
        })?;
        Ok(ModuleCache { dir, secret })
    }

    /// The file an entry for `key` lives in.
    pub fn entry_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// The module for `wasm`, from a verified cache entry if there is one,
    /// otherwise compiled by `runtime` and stored for next time.
    pub fn load_or_compile(&self, runtime: &Runtime, wasm: &[u8]) -> Result<(PolicyModule, CacheLookup), Error> {
        runtime.check_module_size(wasm)?;
        let key = runtime.cache_key(Sha256::digest(wasm).into());
        let path = self.entry_path(&key);
        let limit_bytes = runtime.limits().precompiled_bytes_max;

        let lookup = match read_bounded(&path, HEADER_BYTES + limit_bytes) {
            Ok(Some(entry)) => match self.verified_bytes(&key, &entry) {
                Some(bytes) => {
                    // The MAC proves this device wrote these bytes for this
                    // key, which is what a trusted digest would prove: no
                    // second pass to hash them.
                    match runtime.load_authenticated(&key, bytes) {
                        Ok(module) => return Ok((module, CacheLookup::Hit)),
                        Err(_) => CacheLookup::Rejected,
                    }
                }
                None => CacheLookup::Rejected,
            },
            Ok(None) => CacheLookup::Miss,
            // Unreadable or oversized: treat as untrusted and replace.
            Err(_) => CacheLookup::Rejected,
        };
        if lookup == CacheLookup::Rejected {
            remove_if_present(&path)?;
        }

        let precompiled = runtime.precompile(wasm)?;
        self.store(&path, &precompiled.key, &precompiled.bytes)?;
        // This engine made the bytes a moment ago, in this process.
        let module = runtime.load_authenticated(&precompiled.key, &precompiled.bytes)?;
        Ok((module, lookup))
    }

    fn mac(&self, key: &CacheKey, bytes: &[u8]) -> HmacSha256 {
        // HMAC zero-pads keys shorter than the hash's block, so padding
        // here changes nothing and makes construction infallible.
        let mut key_block = [0u8; 64];
        key_block[..self.secret.len()].copy_from_slice(&self.secret);
        let mut mac = HmacSha256::new(&key_block.into());
        let key_bytes = key.to_bytes();
        mac.update(&(key_bytes.len() as u64).to_le_bytes());
        mac.update(&key_bytes);
        mac.update(bytes);
        mac
    }

    /// The precompiled bytes of `entry` if its MAC verifies for `key`.
    fn verified_bytes<'a>(&self, key: &CacheKey, entry: &'a [u8]) -> Option<&'a [u8]> {
        let (magic, rest) = entry.split_at_checked(MAGIC.len())?;
        let (tag, bytes) = rest.split_at_checked(MAC_BYTES)?;
        if magic != MAGIC {
            return None;
        }
        // `verify_slice` compares in constant time.
        self.mac(key, bytes).verify_slice(tag).ok()?;
        Some(bytes)
    }

    /// Writes an entry to a temporary file and renames it into place, so a
    /// reader sees a whole entry or none; a torn one fails its MAC anyway.
    fn store(&self, path: &Path, key: &CacheKey, bytes: &[u8]) -> Result<(), Error> {
        static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp_path = path.with_extension(format!(
            "{}.{}.tmp",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tag = self.mac(key, bytes).finalize().into_bytes();
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&tmp_path)?;
            file.write_all(MAGIC)?;
            file.write_all(&tag)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp_path, path)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp_path);
            Error::Cache {
                operation: "write entry",
                path: path.to_owned(),
                source,
            }
        })
    }
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("ModuleCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The file's contents, `None` if it does not exist, an error if it cannot
/// be read or is larger than `size_bytes_max`.
fn read_bounded(path: &Path, size_bytes_max: usize) -> io::Result<Option<Vec<u8>>> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut contents = Vec::new();
    let read_limit = u64::try_from(size_bytes_max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(read_limit).read_to_end(&mut contents)?;
    if contents.len() > size_bytes_max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "cache entry over the size limit",
        ));
    }
    Ok(Some(contents))
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Cache {
            operation: "remove entry",
            path: path.to_owned(),
            source,
        }),
    }
}
