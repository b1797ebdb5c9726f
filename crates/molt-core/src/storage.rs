//! The file-like storage contract and the errors every back end reports.
//!
//! molt-core never touches a file system itself. A device hands the engine a
//! [`FileStore`] (one directory of flat names) or a NOR flash
//! (`embedded_storage::nor_flash::NorFlash`), and the engine expresses every
//! durability step through these calls. That is what lets the power-cut
//! simulator enumerate every storage operation.

use alloc::string::String;
use alloc::vec::Vec;

/// A directory of flat names with POSIX-like durability rules.
///
/// The contract mirrors what Linux file systems actually promise, which is
/// less than most code assumes:
///
/// - [`write`](FileStore::write) data is not durable until
///   [`sync`](FileStore::sync) of that name returns `Ok`.
/// - Creating, renaming or removing a name is not durable until
///   [`sync_dir`](FileStore::sync_dir) returns `Ok`, even if the file's data
///   was synced.
/// - After a failed `sync`, the data written since the last successful sync
///   may be lost even though reads still return it, and a later `sync` may
///   report success anyway. Callers must never retry a failed sync; they
///   rewrite the file from scratch.
///
/// Every method is one storage operation: the simulator may cut power before
/// any of them.
pub trait FileStore {
    /// Reads up to `buf.len()` bytes of `name` at `offset` and returns how
    /// many were read; 0 means end of file.
    /// A missing name is an error of kind [`StorageErrorKind::NotFound`].
    fn read(&mut self, name: &str, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError>;

    /// The length of `name` in bytes, or `None` if it does not exist.
    fn size(&mut self, name: &str) -> Result<Option<u64>, StorageError>;

    /// Writes `data` at `offset`, creating `name` if it does not exist and
    /// zero-filling any gap past the end.
    fn write(&mut self, name: &str, offset: u64, data: &[u8]) -> Result<(), StorageError>;

    /// Makes the data of `name` durable (fsync).
    fn sync(&mut self, name: &str) -> Result<(), StorageError>;

    /// Atomically replaces `to` with `from`.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError>;

    /// Makes every create, rename and remove so far durable (fsync of the
    /// directory).
    fn sync_dir(&mut self) -> Result<(), StorageError>;

    /// Removes `name`. Removing a missing name succeeds.
    fn remove(&mut self, name: &str) -> Result<(), StorageError>;

    /// Every name in the directory, in no particular order.
    fn list(&mut self) -> Result<Vec<String>, StorageError>;
}

/// Which storage operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageOp {
    /// Reading data.
    Read,
    /// Querying a size or listing names.
    Stat,
    /// Writing data.
    Write,
    /// Syncing a file's data.
    Sync,
    /// Renaming a name.
    Rename,
    /// Syncing the directory.
    SyncDir,
    /// Removing a name.
    Remove,
    /// Erasing flash.
    Erase,
}

/// What went wrong in a storage operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// The name does not exist.
    NotFound,
    /// An I/O error (EIO).
    Io,
    /// The medium is full (ENOSPC).
    NoSpace,
    /// Power failed during or before the operation (simulation only).
    PowerLoss,
    /// A flash write to memory that was not erased.
    NotErased,
    /// An access outside the medium or a region.
    OutOfBounds,
    /// An access not aligned to the medium's read or write size.
    NotAligned,
    /// Any other failure reported by the back end.
    Other,
}

/// A storage operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("storage {op:?} failed: {kind:?}")]
pub struct StorageError {
    /// The operation that failed.
    pub op: StorageOp,
    /// Why it failed.
    pub kind: StorageErrorKind,
}

impl StorageError {
    /// A new error for `op` of `kind`.
    pub const fn new(op: StorageOp, kind: StorageErrorKind) -> StorageError {
        StorageError { op, kind }
    }
}
