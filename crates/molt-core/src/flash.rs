//! The engine's layout on NOR flash: two record sectors and two slot
//! regions.
//!
//! NOR flash can only program erased memory, in units of `WRITE_SIZE`, and
//! erase in units of `ERASE_SIZE`. A record copy is replaced by erasing its
//! sector and programming the frame padded with the erased value; a cut
//! during either leaves bytes the record checksum rejects, or the old frame
//! intact. Completed programs and erases are durable: NOR flash has no
//! write cache.

use alloc::vec;
use alloc::vec::Vec;

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

use crate::backend::{Backend, RecordCopy};
use crate::boot_control::{RECORD_SIZE_MAX, Slot};
use crate::storage::{StorageError, StorageErrorKind, StorageOp};

/// Where the records and slots live on the flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashLayout {
    /// Start of record copy 0 and 1; each spans [`FlashLayout::record_region_size`].
    pub record_offsets: [u32; 2],
    /// Start of slot A and B.
    pub slot_offsets: [u32; 2],
    /// Size of each slot region.
    pub slot_size: u32,
    /// The value of an erased byte (0xFF on most NOR, 0x00 on some).
    pub erased_value: u8,
}

/// A layout that does not fit the flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A region does not start at an erase-sector boundary.
    #[error("region at {offset:#x} is not aligned to the erase size {erase_size}")]
    NotAligned {
        /// The region start.
        offset: u32,
        /// The flash's erase size.
        erase_size: usize,
    },
    /// A region extends past the flash.
    #[error("region at {offset:#x} of {size} bytes exceeds the flash capacity {capacity}")]
    OutOfBounds {
        /// The region start.
        offset: u32,
        /// The region size.
        size: u32,
        /// The flash capacity.
        capacity: usize,
    },
    /// Two regions overlap.
    #[error("regions at {first:#x} and {second:#x} overlap")]
    Overlap {
        /// One region start.
        first: u32,
        /// The other region start.
        second: u32,
    },
    /// The slot size is not a whole number of erase sectors.
    #[error("slot size {slot_size} is not a multiple of the erase size {erase_size}")]
    SlotSize {
        /// The slot size.
        slot_size: u32,
        /// The flash's erase size.
        erase_size: usize,
    },
}

impl FlashLayout {
    /// The bytes reserved for one record copy: whole erase sectors covering
    /// [`RECORD_SIZE_MAX`].
    pub const fn record_region_size(erase_size: usize) -> u32 {
        (RECORD_SIZE_MAX.div_ceil(erase_size) * erase_size) as u32
    }

    /// Record copies first, then slot A, then slot B.
    pub fn sequential<F: NorFlash>(slot_size: u32, erased_value: u8) -> FlashLayout {
        let record_size = FlashLayout::record_region_size(F::ERASE_SIZE);
        FlashLayout {
            record_offsets: [0, record_size],
            slot_offsets: [2 * record_size, 2 * record_size + slot_size],
            slot_size,
            erased_value,
        }
    }

    fn check<F: NorFlash>(&self, flash: &F) -> Result<(), LayoutError> {
        let erase_size = F::ERASE_SIZE;
        if !(self.slot_size as usize).is_multiple_of(erase_size) || self.slot_size == 0 {
            return Err(LayoutError::SlotSize {
                slot_size: self.slot_size,
                erase_size,
            });
        }
        let record_size = FlashLayout::record_region_size(erase_size);
        let regions = [
            (self.record_offsets[0], record_size),
            (self.record_offsets[1], record_size),
            (self.slot_offsets[0], self.slot_size),
            (self.slot_offsets[1], self.slot_size),
        ];
        for (idx, &(offset, size)) in regions.iter().enumerate() {
            if !(offset as usize).is_multiple_of(erase_size) {
                return Err(LayoutError::NotAligned { offset, erase_size });
            }
            let end = u64::from(offset) + u64::from(size);
            if end > flash.capacity() as u64 {
                return Err(LayoutError::OutOfBounds {
                    offset,
                    size,
                    capacity: flash.capacity(),
                });
            }
            for &(other, other_size) in &regions[idx + 1..] {
                let other_end = u64::from(other) + u64::from(other_size);
                if u64::from(offset) < other_end && u64::from(other) < end {
                    return Err(LayoutError::Overlap {
                        first: offset,
                        second: other,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A [`Backend`] over NOR flash.
#[derive(Debug, Clone)]
pub struct FlashBackend<F> {
    flash: F,
    layout: FlashLayout,
    /// Image bytes not yet programmed because they do not fill a whole
    /// write unit, and the offset they start at.
    tail: Vec<u8>,
    tail_offset: u64,
}

fn flash_error<E: NorFlashError>(op: StorageOp, error: E) -> StorageError {
    let kind = match error.kind() {
        NorFlashErrorKind::NotAligned => StorageErrorKind::NotAligned,
        NorFlashErrorKind::OutOfBounds => StorageErrorKind::OutOfBounds,
        _ => StorageErrorKind::Io,
    };
    StorageError::new(op, kind)
}

impl<F: NorFlash> FlashBackend<F> {
    /// Lays the engine out on `flash`.
    pub fn new(flash: F, layout: FlashLayout) -> Result<FlashBackend<F>, LayoutError> {
        layout.check(&flash)?;
        Ok(FlashBackend {
            flash,
            layout,
            tail: Vec::new(),
            tail_offset: 0,
        })
    }

    /// The underlying flash.
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// The underlying flash, mutably.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// The layout.
    pub fn layout(&self) -> &FlashLayout {
        &self.layout
    }

    /// Gives the flash back.
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// Reads `buf.len()` bytes at `offset`, honouring the read alignment.
    fn read_at(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), StorageError> {
        let read_size = F::READ_SIZE;
        let start = offset as usize - offset as usize % read_size;
        let end = (offset as usize + buf.len()).div_ceil(read_size) * read_size;
        if start == offset as usize && end == offset as usize + buf.len() {
            return self
                .flash
                .read(offset, buf)
                .map_err(|e| flash_error(StorageOp::Read, e));
        }
        let mut bounce = vec![0u8; end - start];
        self.flash
            .read(start as u32, &mut bounce)
            .map_err(|e| flash_error(StorageOp::Read, e))?;
        let skip = offset as usize - start;
        buf.copy_from_slice(&bounce[skip..skip + buf.len()]);
        Ok(())
    }

    /// Programs `data` (a whole number of write units) at `offset`.
    fn program(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let offset =
            u32::try_from(offset).map_err(|_| StorageError::new(StorageOp::Write, StorageErrorKind::OutOfBounds))?;
        self.flash
            .write(offset, data)
            .map_err(|e| flash_error(StorageOp::Write, e))
    }

    fn slot_base(&self, slot: Slot) -> u64 {
        u64::from(self.layout.slot_offsets[slot.index()])
    }
}

impl<F: NorFlash> Backend for FlashBackend<F> {
    fn recover(&mut self) -> Result<(), StorageError> {
        self.tail.clear();
        Ok(())
    }

    fn read_record(&mut self, copy: usize) -> Result<RecordCopy, StorageError> {
        let mut bytes = vec![0u8; RECORD_SIZE_MAX];
        self.read_at(self.layout.record_offsets[copy], &mut bytes)?;
        if bytes.iter().all(|&b| b == self.layout.erased_value) {
            return Ok(RecordCopy::Missing);
        }
        Ok(RecordCopy::Present(bytes))
    }

    fn write_record(&mut self, copy: usize, frame: &[u8]) -> Result<(), StorageError> {
        let start = self.layout.record_offsets[copy];
        let region = FlashLayout::record_region_size(F::ERASE_SIZE);
        if frame.len() > region as usize {
            return Err(StorageError::new(StorageOp::Write, StorageErrorKind::OutOfBounds));
        }
        self.flash
            .erase(start, start + region)
            .map_err(|e| flash_error(StorageOp::Erase, e))?;
        let padded_len = frame.len().div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
        let mut padded = vec![self.layout.erased_value; padded_len];
        padded[..frame.len()].copy_from_slice(frame);
        self.program(u64::from(start), &padded)
    }

    fn slot_capacity(&self) -> u64 {
        u64::from(self.layout.slot_size)
    }

    fn begin_image(&mut self, slot: Slot, length: u64) -> Result<(), StorageError> {
        if length > self.slot_capacity() {
            return Err(StorageError::new(StorageOp::Erase, StorageErrorKind::OutOfBounds));
        }
        let erase_size = F::ERASE_SIZE as u64;
        let erase_len = length.div_ceil(erase_size) * erase_size;
        let start = self.slot_base(slot);
        // Bounded by the slot size, which `FlashLayout::check` fit into u32.
        let (from, to) = (start as u32, (start + erase_len) as u32);
        self.flash
            .erase(from, to)
            .map_err(|e| flash_error(StorageOp::Erase, e))?;
        self.tail.clear();
        self.tail_offset = 0;
        Ok(())
    }

    fn write_image(&mut self, slot: Slot, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let write_size = F::WRITE_SIZE;
        if offset != self.tail_offset + self.tail.len() as u64 {
            return Err(StorageError::new(StorageOp::Write, StorageErrorKind::NotAligned));
        }
        if offset + data.len() as u64 > self.slot_capacity() {
            return Err(StorageError::new(StorageOp::Write, StorageErrorKind::OutOfBounds));
        }
        let base = self.slot_base(slot);
        let mut rest = data;
        if !self.tail.is_empty() {
            let need = write_size - self.tail.len();
            let take = need.min(rest.len());
            self.tail.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.tail.len() < write_size {
                return Ok(());
            }
            let unit = core::mem::take(&mut self.tail);
            self.program(base + self.tail_offset, &unit)?;
            self.tail_offset += unit.len() as u64;
        }
        let whole = rest.len() - rest.len() % write_size;
        if whole > 0 {
            self.program(base + self.tail_offset, &rest[..whole])?;
            self.tail_offset += whole as u64;
        }
        self.tail.extend_from_slice(&rest[whole..]);
        Ok(())
    }

    fn finish_image(&mut self, slot: Slot) -> Result<(), StorageError> {
        if self.tail.is_empty() {
            return Ok(());
        }
        let mut unit = core::mem::take(&mut self.tail);
        unit.resize(F::WRITE_SIZE, self.layout.erased_value);
        let base = self.slot_base(slot);
        self.program(base + self.tail_offset, &unit)?;
        self.tail_offset += unit.len() as u64;
        Ok(())
    }

    fn read_image(&mut self, slot: Slot, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        let capacity = self.slot_capacity();
        if offset >= capacity {
            return Ok(0);
        }
        let n = buf.len().min((capacity - offset) as usize);
        let at = self.slot_base(slot) + offset;
        self.read_at(at as u32, &mut buf[..n])?;
        Ok(n)
    }
}
