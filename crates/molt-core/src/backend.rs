//! What the engine needs from a medium, and the two media it runs on.
//!
//! [`Backend`] is the engine's only way to reach storage. Each back end
//! turns the engine's durable steps into the primitive operations of its
//! medium: [`FileBackend`](crate::files::FileBackend) over a
//! [`FileStore`](crate::storage::FileStore), and
//! [`FlashBackend`](crate::flash::FlashBackend) over a `NorFlash`.

use alloc::vec::Vec;

use crate::boot_control::Slot;
use crate::storage::StorageError;

/// One stored copy of the boot record, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordCopy {
    /// Never written (no file, or erased flash).
    Missing,
    /// The stored bytes, not yet decoded.
    Present(Vec<u8>),
}

/// A medium holding two record copies and two image slots.
///
/// Every method must be durable on return: when `write_record` or
/// `finish_image` returns `Ok`, the data survives power loss.
pub trait Backend {
    /// Cleans up after an interrupted run (e.g. stale temporary files).
    /// Called once when the engine opens.
    fn recover(&mut self) -> Result<(), StorageError>;

    /// Reads record copy 0 or 1.
    fn read_record(&mut self, copy: usize) -> Result<RecordCopy, StorageError>;

    /// Durably and atomically replaces record copy 0 or 1 with `frame`: after
    /// a power cut, the copy holds either the old bytes, the new bytes, or
    /// bytes that fail the record checksum.
    fn write_record(&mut self, copy: usize, frame: &[u8]) -> Result<(), StorageError>;

    /// The largest image a slot can hold.
    fn slot_capacity(&self) -> u64;

    /// Prepares `slot` for an image of `length` bytes, discarding what it
    /// held.
    fn begin_image(&mut self, slot: Slot, length: u64) -> Result<(), StorageError>;

    /// Writes the next bytes of the image; `offset` continues where the last
    /// call ended.
    fn write_image(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StorageError>;

    /// Makes the image durable.
    fn finish_image(&mut self, slot: Slot) -> Result<(), StorageError>;

    /// Reads image bytes at `offset`; returns how many were read.
    fn read_image(&mut self, slot: Slot, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError>;
}

/// A borrowed back end is a back end, so a caller can keep ownership of its
/// medium across engine lifetimes (and keep it when `Engine::open` fails).
impl<B: Backend + ?Sized> Backend for &mut B {
    fn recover(&mut self) -> Result<(), StorageError> {
        (**self).recover()
    }

    fn read_record(&mut self, copy: usize) -> Result<RecordCopy, StorageError> {
        (**self).read_record(copy)
    }

    fn write_record(&mut self, copy: usize, frame: &[u8]) -> Result<(), StorageError> {
        (**self).write_record(copy, frame)
    }

    fn slot_capacity(&self) -> u64 {
        (**self).slot_capacity()
    }

    fn begin_image(&mut self, slot: Slot, length: u64) -> Result<(), StorageError> {
        (**self).begin_image(slot, length)
    }

    fn write_image(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        (**self).write_image(slot, offset, data)
    }

    fn finish_image(&mut self, slot: Slot) -> Result<(), StorageError> {
        (**self).finish_image(slot)
    }

    fn read_image(&mut self, slot: Slot, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        (**self).read_image(slot, offset, buf)
    }
}
