//! [`SimFlash`]: an in-memory NOR flash that can lose power in the middle of
//! a write or erase, after MCUboot's flash simulator.
//!
//! NOR flash has no cache: a write or erase that returned is durable. What a
//! power cut damages is the one operation in flight, so the [`Damage`] of a
//! [`Fault::Cut`] is applied to that operation alone.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash, check_erase, check_read, check_write,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::sim::{Damage, Fault};
use crate::storage::StorageErrorKind;

/// Why a [`SimFlash`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimFlashError {
    /// What went wrong: a misuse ([`NotAligned`](StorageErrorKind::NotAligned),
    /// [`OutOfBounds`](StorageErrorKind::OutOfBounds),
    /// [`NotErased`](StorageErrorKind::NotErased)), a power cut
    /// ([`PowerLoss`](StorageErrorKind::PowerLoss)) or an injected fault.
    pub kind: StorageErrorKind,
}

impl SimFlashError {
    const fn new(kind: StorageErrorKind) -> SimFlashError {
        SimFlashError { kind }
    }
}

impl NorFlashError for SimFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self.kind {
            StorageErrorKind::NotAligned => NorFlashErrorKind::NotAligned,
            StorageErrorKind::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            _ => NorFlashErrorKind::Other,
        }
    }
}

impl fmt::Display for SimFlashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flash operation failed: {:?}", self.kind)
    }
}

impl core::error::Error for SimFlashError {}

/// Converts the argument checks of `embedded-storage` to our kinds.
fn from_nor(kind: NorFlashErrorKind) -> SimFlashError {
    SimFlashError::new(match kind {
        NorFlashErrorKind::NotAligned => StorageErrorKind::NotAligned,
        NorFlashErrorKind::OutOfBounds => StorageErrorKind::OutOfBounds,
        _ => StorageErrorKind::Other,
    })
}

/// How an operation starts, given the armed fault.
enum Start {
    /// Carry it out.
    Run,
    /// Fail it without effect.
    Fail(StorageErrorKind),
    /// Power fails while it is in flight: apply the damage, then power off.
    Cut(Damage),
}

/// A simulated NOR flash with `WRITE_SIZE`-byte words and
/// `ERASE_SIZE`-byte erase sectors.
///
/// A write may only program erased memory (anything else is rejected with
/// [`StorageErrorKind::NotErased`], because real NOR would silently corrupt
/// the word), and completed writes and erases are durable. Operations are
/// counted like [`SimStore`](crate::sim::SimStore)'s; a [`Fault::Cut`]
/// tears the write or erase in flight according to its [`Damage`].
#[derive(Clone)]
pub struct SimFlash<const WRITE_SIZE: usize, const ERASE_SIZE: usize> {
    memory: Vec<u8>,
    erased: u8,
    fault: Fault,
    ops: u64,
    powered_off: bool,
}

impl<const WRITE_SIZE: usize, const ERASE_SIZE: usize> SimFlash<WRITE_SIZE, ERASE_SIZE> {
    /// A flash of `capacity` bytes, all erased to `erased_value` (0xFF on
    /// most parts, 0x00 on some).
    pub fn new(capacity: usize, erased_value: u8) -> Self {
        const {
            assert!(WRITE_SIZE > 0 && ERASE_SIZE > 0, "flash sizes must be non-zero");
        }
        SimFlash {
            memory: vec![erased_value; capacity],
            erased: erased_value,
            fault: Fault::None,
            ops: 0,
            powered_off: false,
        }
    }

    /// Arms `fault` and restarts operation numbering, so that `at` counts
    /// from the next call. A flash whose power already failed stays off
    /// until [`reboot`](SimFlash::reboot).
    pub fn set_fault(&mut self, fault: Fault) {
        self.fault = fault;
        self.ops = 0;
    }

    /// How many reads, writes and erases have been started since
    /// construction, the last reboot or the last
    /// [`set_fault`](SimFlash::set_fault), failed ones included.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Whether power has failed and the flash awaits a
    /// [`reboot`](SimFlash::reboot).
    pub fn is_powered_off(&self) -> bool {
        self.powered_off
    }

    /// Power-cycles the flash: memory stays as it is (the damage was done
    /// when power failed), the fault is cleared to [`Fault::None`],
    /// operation numbering restarts and power is back on.
    pub fn reboot(&mut self) {
        self.fault = Fault::None;
        self.ops = 0;
        self.powered_off = false;
    }

    /// The whole memory, for the simulator's oracle.
    pub fn memory(&self) -> &[u8] {
        &self.memory
    }

    fn begin(&mut self, mutation: bool) -> Start {
        self.ops = self.ops.saturating_add(1);
        let n = self.ops;
        if self.powered_off {
            return Start::Fail(StorageErrorKind::PowerLoss);
        }
        match self.fault {
            Fault::None => Start::Run,
            Fault::Cut { at, damage } if n >= at => Start::Cut(damage),
            Fault::FailOnce { at, kind } if n == at => Start::Fail(kind),
            Fault::FailFrom {
                at,
                kind,
                mutations_only,
            } if n >= at && (mutation || !mutations_only) => Start::Fail(kind),
            _ => Start::Run,
        }
    }

    /// Powers off after letting the part of the in-flight operation that
    /// `damage` allows land. `target` is what the range would hold had the
    /// operation completed.
    fn cut(&mut self, offset: usize, target: &[u8], damage: Damage) -> SimFlashError {
        self.powered_off = true;
        let words = target.len() / WRITE_SIZE;
        let landed: Vec<bool> = match damage {
            Damage::LoseUnsynced | Damage::LoseNames => Vec::new(),
            Damage::KeepUnsynced => vec![true; target.len()],
            Damage::TornByte { seed } => {
                let t = below(seed, target.len());
                (0..target.len()).map(|i| i < t).collect()
            }
            Damage::TornWord { seed } => {
                let w = below(seed, words);
                (0..target.len()).map(|i| i / WRITE_SIZE < w).collect()
            }
            Damage::RandomSubset { seed } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let word_landed: Vec<bool> = (0..words).map(|_| rng.next_u32() & 1 == 1).collect();
                (0..target.len())
                    .map(|i| word_landed.get(i / WRITE_SIZE).copied().unwrap_or(false))
                    .collect()
            }
        };
        if let Some(dst) = self.memory.get_mut(offset..) {
            for ((byte, new), land) in dst.iter_mut().zip(target).zip(landed) {
                if land {
                    *byte = *new;
                }
            }
        }
        SimFlashError::new(StorageErrorKind::PowerLoss)
    }

    /// Checks a write's arguments, including that it only programs erased
    /// memory.
    fn validate_write(&self, offset: u32, bytes: &[u8]) -> Result<usize, SimFlashError> {
        check_write(self, offset, bytes.len()).map_err(from_nor)?;
        let start = offset as usize;
        let erased = self
            .memory
            .get(start..start + bytes.len())
            .is_some_and(|range| range.iter().all(|b| *b == self.erased));
        if erased {
            Ok(start)
        } else {
            Err(SimFlashError::new(StorageErrorKind::NotErased))
        }
    }
}

impl<const WRITE_SIZE: usize, const ERASE_SIZE: usize> fmt::Debug for SimFlash<WRITE_SIZE, ERASE_SIZE> {
    /// Geometry and state rather than memory: a flash holds whole firmware
    /// images and a failing assertion should stay readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFlash")
            .field("capacity", &self.memory.len())
            .field("write_size", &WRITE_SIZE)
            .field("erase_size", &ERASE_SIZE)
            .field("erased", &self.erased)
            .field("fault", &self.fault)
            .field("ops", &self.ops)
            .field("powered_off", &self.powered_off)
            .finish()
    }
}

impl<const WRITE_SIZE: usize, const ERASE_SIZE: usize> ErrorType for SimFlash<WRITE_SIZE, ERASE_SIZE> {
    type Error = SimFlashError;
}

impl<const WRITE_SIZE: usize, const ERASE_SIZE: usize> ReadNorFlash for SimFlash<WRITE_SIZE, ERASE_SIZE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimFlashError> {
        match self.begin(false) {
            Start::Run => {}
            Start::Fail(kind) => return Err(SimFlashError::new(kind)),
            Start::Cut(_) => {
                // A read in flight changes nothing; only the power goes.
                self.powered_off = true;
                return Err(SimFlashError::new(StorageErrorKind::PowerLoss));
            }
        }
        check_read(self, offset, bytes.len()).map_err(from_nor)?;
        let start = offset as usize;
        let src = self
            .memory
            .get(start..start + bytes.len())
            .ok_or(SimFlashError::new(StorageErrorKind::OutOfBounds))?;
        bytes.copy_from_slice(src);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.memory.len()
    }
}

impl<const WRITE_SIZE: usize, const ERASE_SIZE: usize> NorFlash for SimFlash<WRITE_SIZE, ERASE_SIZE> {
    const WRITE_SIZE: usize = WRITE_SIZE;
    const ERASE_SIZE: usize = ERASE_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimFlashError> {
        let start = self.begin(true);
        if let Start::Fail(kind) = start {
            return Err(SimFlashError::new(kind));
        }
        let checked = check_erase(self, from, to).map_err(from_nor);
        let (from, to) = (from as usize, to as usize);
        if let Start::Cut(damage) = start {
            // An invalid erase would never have started: power just fails.
            let target = match checked {
                Ok(()) => vec![self.erased; to - from],
                Err(_) => Vec::new(),
            };
            return Err(self.cut(from, &target, damage));
        }
        checked?;
        if let Some(range) = self.memory.get_mut(from..to) {
            range.fill(self.erased);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimFlashError> {
        let start = self.begin(true);
        if let Start::Fail(kind) = start {
            return Err(SimFlashError::new(kind));
        }
        let checked = self.validate_write(offset, bytes);
        if let Start::Cut(damage) = start {
            // An invalid write would never have started: power just fails.
            let target = if checked.is_ok() { bytes } else { &[] };
            return Err(self.cut(offset as usize, target, damage));
        }
        let start = checked?;
        if let Some(range) = self.memory.get_mut(start..start + bytes.len()) {
            range.copy_from_slice(bytes);
        }
        Ok(())
    }
}

/// A seeded draw from `0..n` (0 when `n` is 0).
fn below(seed: u64, n: usize) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.next_u64().checked_rem(n as u64).unwrap_or(0) as usize
}

#[cfg(test)]
mod tests;
