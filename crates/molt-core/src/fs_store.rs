//! [`FsStore`]: the [`FileStore`] on one real Linux directory.

use std::borrow::ToOwned;
#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::string::String;
use std::vec::Vec;

use crate::storage::{FileStore, StorageError, StorageErrorKind, StorageOp};

#[cfg(test)]
mod tests;

/// How many open file handles [`FsStore`] keeps at most.
const CACHE_CAPACITY: usize = 8;

/// The longest name a Linux directory entry can hold, in bytes (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// The [`FileStore`] on one real Linux directory.
///
/// Every name is a regular file directly inside [`dir`](FsStore::dir). The
/// store assumes it owns the directory: nothing else creates, renames or
/// removes files in it while the store is open.
///
/// # Names
///
/// Names are flat. An empty name, `.`, `..`, a name containing `/` or NUL,
/// or one longer than 255 bytes is rejected without touching the file
/// system: [`read`](FileStore::read) and [`size`](FileStore::size) report
/// [`StorageErrorKind::NotFound`] (no such file can exist), and every
/// mutation ([`write`](FileStore::write), [`sync`](FileStore::sync),
/// [`rename`](FileStore::rename), [`remove`](FileStore::remove)) reports
/// [`StorageErrorKind::Other`].
///
/// # I/O
///
/// Data is read and written with positioned I/O (`pread`/`pwrite`) through a
/// small cache of open handles, so streaming a large image does not reopen
/// the file for every chunk. [`rename`](FileStore::rename) drops the cached
/// handles of both names and [`remove`](FileStore::remove) that of its name.
/// [`sync`](FileStore::sync) is `fsync` of the file and
/// [`sync_dir`](FileStore::sync_dir) `fsync` of the directory. A write of no
/// bytes past the end still extends the file, zero-filled, to `offset`.
/// [`list`](FileStore::list) reports regular files only, and skips names
/// that are not UTF-8.
///
/// Errors map `NotFound` to [`StorageErrorKind::NotFound`], `StorageFull`
/// (ENOSPC) and `QuotaExceeded` (EDQUOT) to [`StorageErrorKind::NoSpace`],
/// and everything else to [`StorageErrorKind::Io`].
///
/// # A failed fsync is never retried
///
/// After `fsync` fails, Linux may already have dropped the dirty pages and
/// cleared the error, so a second `fsync` can report success for data that
/// never reached the medium (PostgreSQL's "fsyncgate"). `FsStore` therefore
/// remembers the failure: once `sync(name)` has failed, every later
/// `sync(name)` fails with [`StorageErrorKind::Io`] without calling `fsync`,
/// until `name` is removed or replaced by a rename onto it, that is, until
/// the file is rewritten from scratch. Renaming such a file away carries the
/// failure to its new name, since the suspect data moves with it. Likewise,
/// once `sync_dir` has failed, every later `sync_dir` fails until the store
/// is opened again.
///
/// # Temporary files
///
/// Cleaning up temporary files left behind by a power cut is the engine's
/// job, not the store's: the engine owns the naming convention and removes
/// stale names when it starts.
#[derive(Debug)]
pub struct FsStore {
    /// The directory holding every name.
    dir: PathBuf,
    /// The directory itself, opened for `fsync`.
    dir_file: File,
    /// Open handles, least recently used first.
    files: Vec<CachedFile>,
    /// Names whose `sync` failed; their data cannot be trusted.
    sync_failed: BTreeSet<String>,
    /// A `sync_dir` failed since the store was opened.
    sync_dir_failed: bool,
    /// Test hook: the next `sync` of each of these names fails with this kind.
    #[cfg(test)]
    inject_sync: BTreeMap<String, io::ErrorKind>,
    /// Test hook: the next `sync_dir` fails with this kind.
    #[cfg(test)]
    inject_sync_dir: Option<io::ErrorKind>,
}

/// One open handle in the cache.
#[derive(Debug)]
struct CachedFile {
    /// The name it was opened under.
    name: String,
    /// The file, opened for reading and writing.
    file: File,
    /// Written since the last successful `sync`.
    dirty: bool,
}

impl FsStore {
    /// Opens the store on `dir`, creating the directory and any missing
    /// parents first.
    ///
    /// Newly created directories are made durable by syncing their parents.
    /// Fails with the kind of the underlying error (creating the directory
    /// reports [`StorageOp::Write`], syncing a parent [`StorageOp::SyncDir`],
    /// opening it [`StorageOp::Stat`]); a `dir` that exists but is not a
    /// directory fails with [`StorageErrorKind::Io`] (or
    /// [`StorageErrorKind::Other`] if it turns into one after creation).
    pub fn open(dir: impl Into<PathBuf>) -> Result<FsStore, StorageError> {
        let dir = dir.into();

        // The directories `create_dir_all` is about to create, outermost last.
        let mut missing = Vec::new();
        let mut probe: &Path = &dir;
        while !probe.as_os_str().is_empty() && !probe.try_exists().map_err(|e| map_io(StorageOp::Stat, &e))? {
            missing.push(probe.to_path_buf());
            match probe.parent() {
                Some(parent) => probe = parent,
                None => break,
            }
        }
        fs::create_dir_all(&dir).map_err(|e| map_io(StorageOp::Write, &e))?;
        for created in missing.iter().rev() {
            let parent = match created.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            File::open(parent)
                .and_then(|p| p.sync_all())
                .map_err(|e| map_io(StorageOp::SyncDir, &e))?;
        }

        let dir_file = File::open(&dir).map_err(|e| map_io(StorageOp::Stat, &e))?;
        let meta = dir_file.metadata().map_err(|e| map_io(StorageOp::Stat, &e))?;
        if !meta.is_dir() {
            return Err(StorageError::new(StorageOp::Stat, StorageErrorKind::Other));
        }
        Ok(FsStore {
            dir,
            dir_file,
            files: Vec::new(),
            sync_failed: BTreeSet::new(),
            sync_dir_failed: false,
            #[cfg(test)]
            inject_sync: BTreeMap::new(),
            #[cfg(test)]
            inject_sync_dir: None,
        })
    }

    /// The directory this store works in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `name`, which must be valid.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Drops the cached handle of `name`, if any.
    fn forget(&mut self, name: &str) {
        self.files.retain(|c| c.name != name);
    }

    /// The cached handle of `name`, opening (and with `create`, creating)
    /// the file if it is not cached. Errors are reported for `op`.
    fn handle(&mut self, name: &str, create: bool, op: StorageOp) -> Result<&mut CachedFile, StorageError> {
        if let Some(i) = self.files.iter().position(|c| c.name == name) {
            // Most recently used goes last.
            self.files[i..].rotate_left(1);
        } else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .open(self.path(name))
                .map_err(|e| map_io(op, &e))?;
            if self.files.len() >= CACHE_CAPACITY {
                // Prefer closing a handle with nothing left to sync.
                let victim = self.files.iter().position(|c| !c.dirty).unwrap_or(0);
                self.files.remove(victim);
            }
            self.files.push(CachedFile {
                name: name.to_owned(),
                file,
                dirty: false,
            });
        }
        let last = self.files.len() - 1;
        Ok(&mut self.files[last])
    }

    /// Test hook: takes the injected failure for the next `sync` of `name`.
    #[cfg(test)]
    fn take_injected_sync(&mut self, name: &str) -> Option<io::ErrorKind> {
        self.inject_sync.remove(name)
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn take_injected_sync(&mut self, _name: &str) -> Option<io::ErrorKind> {
        None
    }

    /// Test hook: takes the injected failure for the next `sync_dir`.
    #[cfg(test)]
    fn take_injected_sync_dir(&mut self) -> Option<io::ErrorKind> {
        self.inject_sync_dir.take()
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn take_injected_sync_dir(&mut self) -> Option<io::ErrorKind> {
        None
    }

    /// Test hook: the next `sync(name)` fails with `kind` as if `fsync` had
    /// failed.
    #[cfg(test)]
    fn inject_sync_failure(&mut self, name: &str, kind: io::ErrorKind) {
        self.inject_sync.insert(name.to_owned(), kind);
    }

    /// Test hook: the next `sync_dir` fails with `kind` as if `fsync` had
    /// failed.
    #[cfg(test)]
    fn inject_sync_dir_failure(&mut self, kind: io::ErrorKind) {
        self.inject_sync_dir = Some(kind);
    }

    /// Test hook: the names with cached handles, least recently used first.
    #[cfg(test)]
    fn cached_names(&self) -> Vec<&str> {
        self.files.iter().map(|c| c.name.as_str()).collect()
    }
}

impl FileStore for FsStore {
    fn read(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        check_name(name, StorageOp::Read, StorageErrorKind::NotFound)?;
        let file = &self.handle(name, false, StorageOp::Read)?.file;
        let mut done = 0;
        while done < buf.len() {
            // `done` is at most `buf.len()`, which fits in a u64.
            let at = offset.saturating_add(done as u64);
            match file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_io(StorageOp::Read, &e)),
            }
        }
        Ok(done)
    }

    fn size(&mut self, name: &str) -> Result<Option<u64>, StorageError> {
        check_name(name, StorageOp::Stat, StorageErrorKind::NotFound)?;
        let meta = match self.files.iter().find(|c| c.name == name) {
            Some(cached) => cached.file.metadata(),
            None => fs::metadata(self.path(name)),
        };
        match meta {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Err(StorageError::new(StorageOp::Stat, StorageErrorKind::Other)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(map_io(StorageOp::Stat, &e)),
        }
    }

    fn write(&mut self, name: &str, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        check_name(name, StorageOp::Write, StorageErrorKind::Other)?;
        let Some(end) = u64::try_from(data.len()).ok().and_then(|len| offset.checked_add(len)) else {
            return Err(StorageError::new(StorageOp::Write, StorageErrorKind::OutOfBounds));
        };
        let cached = self.handle(name, true, StorageOp::Write)?;
        cached.dirty = true;
        if data.is_empty() {
            // pwrite of nothing does not extend the file; the contract does.
            let len = cached.file.metadata().map_err(|e| map_io(StorageOp::Write, &e))?.len();
            if end > len {
                cached.file.set_len(end).map_err(|e| map_io(StorageOp::Write, &e))?;
            }
            return Ok(());
        }
        // Retries on `Interrupted`; the kernel zero-fills any gap.
        cached
            .file
            .write_all_at(data, offset)
            .map_err(|e| map_io(StorageOp::Write, &e))
    }

    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        check_name(name, StorageOp::Sync, StorageErrorKind::Other)?;
        if self.sync_failed.contains(name) {
            return Err(StorageError::new(StorageOp::Sync, StorageErrorKind::Io));
        }
        let injected = self.take_injected_sync(name);
        let cached = self.handle(name, false, StorageOp::Sync)?;
        let result = match injected {
            Some(kind) => Err(io::Error::from(kind)),
            None => cached.file.sync_all(),
        };
        match result {
            Ok(()) => {
                cached.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.sync_failed.insert(name.to_owned());
                Err(map_io(StorageOp::Sync, &e))
            }
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        check_name(from, StorageOp::Rename, StorageErrorKind::Other)?;
        check_name(to, StorageOp::Rename, StorageErrorKind::Other)?;
        self.forget(from);
        self.forget(to);
        fs::rename(self.path(from), self.path(to)).map_err(|e| map_io(StorageOp::Rename, &e))?;
        if from != to {
            // The suspect data, if any, now lives under `to`; whatever `to`
            // held before is gone.
            if self.sync_failed.remove(from) {
                self.sync_failed.insert(to.to_owned());
            } else {
                self.sync_failed.remove(to);
            }
        }
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), StorageError> {
        if self.sync_dir_failed {
            return Err(StorageError::new(StorageOp::SyncDir, StorageErrorKind::Io));
        }
        let result = match self.take_injected_sync_dir() {
            Some(kind) => Err(io::Error::from(kind)),
            None => self.dir_file.sync_all(),
        };
        result.map_err(|e| {
            self.sync_dir_failed = true;
            map_io(StorageOp::SyncDir, &e)
        })
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        check_name(name, StorageOp::Remove, StorageErrorKind::Other)?;
        self.forget(name);
        match fs::remove_file(self.path(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(map_io(StorageOp::Remove, &e)),
        }
        self.sync_failed.remove(name);
        Ok(())
    }

    fn list(&mut self) -> Result<Vec<String>, StorageError> {
        let stat = |e: io::Error| map_io(StorageOp::Stat, &e);
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(stat)? {
            let entry = entry.map_err(stat)?;
            if !entry.file_type().map_err(stat)?.is_file() {
                continue;
            }
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

/// Rejects a name that is not one flat directory entry, with `kind` for `op`.
fn check_name(name: &str, op: StorageOp, kind: StorageErrorKind) -> Result<(), StorageError> {
    let valid =
        !name.is_empty() && name.len() <= NAME_MAX && name != "." && name != ".." && !name.contains(['/', '\0']);
    if valid {
        Ok(())
    } else {
        Err(StorageError::new(op, kind))
    }
}

/// Maps an I/O error from `op` to a storage error.
fn map_io(op: StorageOp, e: &io::Error) -> StorageError {
    let kind = match e.kind() {
        io::ErrorKind::NotFound => StorageErrorKind::NotFound,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StorageErrorKind::NoSpace,
        _ => StorageErrorKind::Io,
    };
    StorageError::new(op, kind)
}
