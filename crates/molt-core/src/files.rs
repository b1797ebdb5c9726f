//! The engine's layout on a [`FileStore`]: two record files replaced
//! atomically, and one image file per slot.
//!
//! Names: `boot.0`, `boot.1` (record copies), `boot.N.tmp` (a replacement
//! in progress), `a.img`, `b.img`.
//!
//! Atomic replace follows the whole protocol that ALICE (OSDI '14) found
//! most update code gets wrong: write a temporary file, fsync it, rename it
//! over the target, fsync the directory. A failed fsync is never retried:
//! the operation fails, the engine poisons itself, and the next attempt
//! rewrites the file from scratch. Stale temporary files are removed when
//! the engine opens.

use alloc::format;
use alloc::string::String;

use crate::backend::{Backend, RecordCopy};
use crate::boot_control::{RECORD_SIZE_MAX, Slot};
use crate::storage::{FileStore, StorageError};

const TMP_SUFFIX: &str = ".tmp";

/// Names a sabotage variant under the `sim` feature; without it there are
/// none, and the checks compile to nothing.
#[cfg(feature = "sim")]
macro_rules! sabotage {
    ($variant:ident) => {
        crate::sim::Sabotage::$variant
    };
}
#[cfg(not(feature = "sim"))]
macro_rules! sabotage {
    ($variant:ident) => {
        ()
    };
}

/// Sizes for [`FileBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLayout {
    /// The largest image a slot accepts.
    pub slot_size_max_bytes: u64,
}

impl Default for FileLayout {
    fn default() -> FileLayout {
        FileLayout {
            slot_size_max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A [`Backend`] over any [`FileStore`].
#[derive(Debug, Clone)]
pub struct FileBackend<S> {
    store: S,
    layout: FileLayout,
    #[cfg(feature = "sim")]
    sabotage: crate::sim::Sabotage,
}

impl<S: FileStore> FileBackend<S> {
    /// Lays the engine out in `store`.
    pub fn new(store: S, layout: FileLayout) -> FileBackend<S> {
        FileBackend {
            store,
            layout,
            #[cfg(feature = "sim")]
            sabotage: crate::sim::Sabotage::None,
        }
    }

    /// Breaks the durability protocol on purpose, so the simulator can
    /// prove that its oracle catches a broken engine.
    #[cfg(feature = "sim")]
    pub fn sabotage(&mut self, sabotage: crate::sim::Sabotage) {
        self.sabotage = sabotage;
    }

    #[cfg(feature = "sim")]
    fn sabotaged(&self, sabotage: crate::sim::Sabotage) -> bool {
        self.sabotage == sabotage
    }

    #[cfg(not(feature = "sim"))]
    fn sabotaged(&self, _sabotage: ()) -> bool {
        false
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The underlying store, mutably.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back.
    pub fn into_store(self) -> S {
        self.store
    }
}

/// The file holding `slot`'s image.
pub fn image_name(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "a.img",
        Slot::B => "b.img",
    }
}

fn record_name(copy: usize) -> String {
    format!("boot.{copy}")
}

impl<S: FileStore> Backend for FileBackend<S> {
    fn recover(&mut self) -> Result<(), StorageError> {
        for name in self.store.list()? {
            if name.ends_with(TMP_SUFFIX) {
                self.store.remove(&name)?;
            }
        }
        // Always, even with nothing removed: an earlier run may have renamed
        // a record into place and died (or seen its directory fsync fail)
        // before the rename was durable. The engine is about to act on what
        // it reads, so what it reads must be durable first. Found by the
        // power-cut simulator (EIO once on the commit's directory sync).
        self.store.sync_dir()
    }

    fn read_record(&mut self, copy: usize) -> Result<RecordCopy, StorageError> {
        let name = record_name(copy);
        let Some(size) = self.store.size(&name)? else {
            return Ok(RecordCopy::Missing);
        };
        // A record file longer than any frame is corrupt; read one byte past
        // the limit so the decoder sees that it is too long rather than a
        // silently truncated frame.
        let want = usize::try_from(size).unwrap_or(usize::MAX).min(RECORD_SIZE_MAX + 1);
        let mut bytes = alloc::vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            let n = self.store.read(&name, filled as u64, &mut bytes[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        bytes.truncate(filled);
        Ok(RecordCopy::Present(bytes))
    }

    fn write_record(&mut self, copy: usize, frame: &[u8]) -> Result<(), StorageError> {
        let name = record_name(copy);
        let tmp = format!("{name}{TMP_SUFFIX}");
        self.store.remove(&tmp)?;
        self.store.write(&tmp, 0, frame)?;
        if !self.sabotaged(sabotage!(SkipRecordSync)) {
            self.store.sync(&tmp)?;
        }
        self.store.rename(&tmp, &name)?;
        if self.sabotaged(sabotage!(SkipRecordDirSync)) {
            return Ok(());
        }
        self.store.sync_dir()
    }

    fn slot_capacity(&self) -> u64 {
        self.layout.slot_size_max_bytes
    }

    fn begin_image(&mut self, slot: Slot, _length: u64) -> Result<(), StorageError> {
        // A fresh inode: no byte of the previous image can survive into
        // this one, whatever the new length.
        self.store.remove(image_name(slot))
    }

    fn write_image(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.store.write(image_name(slot), offset, data)
    }

    fn finish_image(&mut self, slot: Slot) -> Result<(), StorageError> {
        // Images are never empty (the manifest forbids it), so the file
        // exists by now.
        self.store.sync(image_name(slot))?;
        self.store.sync_dir()
    }

    fn read_image(&mut self, slot: Slot, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        self.store.read(image_name(slot), offset, buf)
    }
}
