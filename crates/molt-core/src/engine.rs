//! The update engine: stage, trial, boot decision, commit, rollback.

use alloc::string::String;
use alloc::vec;

use sha2::{Digest, Sha256};

use crate::backend::{Backend, RecordCopy};
use crate::boot_control::{BootRecord, ImageInfo, RecordError, Slot, SlotState};
use crate::error::Error;
use crate::manifest::{Manifest, TrustRoot};

/// How an engine is set up for one image kind on one device.
#[derive(Debug, Clone)]
pub struct Config {
    /// The image kind this engine manages, e.g. `agent`; manifests must
    /// carry this name.
    pub name: String,
    /// This device's hardware class; manifests must carry it.
    pub hardware_class: String,
    /// The pinned signing keys and threshold.
    pub trust: TrustRoot,
    /// Boots a trial image gets before automatic rollback (RAUC's default
    /// is 3).
    pub attempts_max: u8,
    /// Size of the buffer used to read a slot back for verification. Larger
    /// is faster on file systems (fewer reads); smaller suits a
    /// microcontroller's heap. Clamped to at least 64 bytes.
    pub verify_buffer_bytes: usize,
}

impl Config {
    /// A config with the defaults: 3 attempts, a 16 KiB verify buffer.
    pub fn new(name: impl Into<String>, hardware_class: impl Into<String>, trust: TrustRoot) -> Config {
        Config {
            name: name.into(),
            hardware_class: hardware_class.into(),
            trust,
            attempts_max: 3,
            verify_buffer_bytes: 16 * 1024,
        }
    }
}

/// What one stored record copy looked like when the engine opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyStatus {
    /// Never written.
    Missing,
    /// Valid, with this sequence number.
    Valid {
        /// The record's sequence number.
        seq: u64,
    },
    /// Present but unusable.
    Corrupt(RecordError),
}

/// What the engine found and repaired when it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Copy 0 and copy 1.
    pub copies: [CopyStatus; 2],
}

impl Recovery {
    /// The first corrupt copy's error, if the engine fell back past one.
    pub fn fell_back(&self) -> Option<RecordError> {
        self.copies.iter().find_map(|copy| match copy {
            CopyStatus::Corrupt(error) => Some(*error),
            _ => None,
        })
    }
}

/// Why a boot went to the slot it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootReason {
    /// The committed image.
    Committed,
    /// The trial image, with an attempt spent.
    Trial,
    /// The trial ran out of attempts and was rolled back.
    AttemptsExhausted,
    /// The trial image failed verification and was rolled back.
    TrialCorrupt,
}

/// The slot to hand control to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootDecision {
    /// The slot.
    pub slot: Slot,
    /// Its verified image.
    pub image: ImageInfo,
    /// Why this slot.
    pub reason: BootReason,
    /// Trial boots left after this one.
    pub attempts_left: u8,
}

/// The A/B update engine for one image kind.
///
/// The engine holds the last record it read or wrote; every change is
/// written durably before the call returns, so dropping an engine at any
/// point (or losing power) loses nothing that returned `Ok`.
#[derive(Debug)]
pub struct Engine<B> {
    backend: B,
    config: Config,
    record: BootRecord,
    /// Which stored copy holds `record`; `None` before the first write.
    newest_copy: Option<usize>,
    booted: Option<Slot>,
    poisoned: bool,
}

const VERIFY_BUFFER_BYTES_MIN: usize = 64;

impl<B: Backend> Engine<B> {
    /// Opens the engine: cleans up after any interrupted run and loads the
    /// newest valid record copy, falling back to the other copy if one is
    /// corrupt.
    pub fn open(mut backend: B, config: Config) -> Result<(Engine<B>, Recovery), Error> {
        backend.recover()?;
        let mut copies = [CopyStatus::Missing; 2];
        let mut records: [Option<BootRecord>; 2] = [None, None];
        for copy in 0..2 {
            match backend.read_record(copy)? {
                RecordCopy::Missing => {}
                RecordCopy::Present(bytes) => match BootRecord::decode(&bytes) {
                    Ok(record) => {
                        copies[copy] = CopyStatus::Valid { seq: record.seq };
                        records[copy] = Some(record);
                    }
                    Err(error) => copies[copy] = CopyStatus::Corrupt(error),
                },
            }
        }
        let newest_copy = match (&records[0], &records[1]) {
            (Some(first), Some(second)) => Some(if second.seq > first.seq { 1 } else { 0 }),
            (Some(_), None) => Some(0),
            (None, Some(_)) => Some(1),
            (None, None) => None,
        };
        let record = match newest_copy {
            Some(copy) => records[copy].unwrap_or_default(),
            None => {
                if let [CopyStatus::Corrupt(copy0), CopyStatus::Corrupt(copy1)] = copies {
                    return Err(Error::NoValidRecord { copy0, copy1 });
                }
                // No copy was ever completely written: the first write was
                // interrupted, so the device is as blank as before it.
                BootRecord::default()
            }
        };
        let engine = Engine {
            backend,
            config,
            record,
            newest_copy,
            booted: None,
            poisoned: false,
        };
        Ok((engine, Recovery { copies }))
    }

    /// The current record.
    pub fn record(&self) -> &BootRecord {
        &self.record
    }

    /// The slot chosen by the last boot decision, if any.
    pub fn booted(&self) -> Option<Slot> {
        self.booted
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The back end.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The back end, mutably (for tests and tools that inspect the medium).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Gives the back end back, e.g. to reopen after a storage failure.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// The slot the next image is staged into.
    pub fn inactive_slot(&self) -> Slot {
        self.record.active.map_or(Slot::A, Slot::other)
    }

    /// Verifies `signed_manifest` and starts streaming its image into the
    /// inactive slot.
    ///
    /// Before the first image byte is written, the slot is durably marked
    /// invalid; it becomes ready only after the whole image was written,
    /// matched the manifest's length and sha256, was made durable, and read
    /// back with the same digest.
    pub fn stage(&mut self, signed_manifest: &[u8]) -> Result<Staging<'_, B>, Error> {
        self.check_usable()?;
        let manifest = self.config.trust.verify(signed_manifest)?;
        self.check_acceptable(&manifest)?;
        if let Some(slot) = self.record.trial {
            return Err(Error::TrialInProgress { slot });
        }
        let capacity = self.backend.slot_capacity();
        if manifest.length > capacity {
            return Err(Error::ImageTooLarge {
                length: manifest.length,
                capacity,
            });
        }
        let slot = self.inactive_slot();
        if self.record.slots[slot.index()] != SlotState::Invalid {
            let mut next = self.record;
            next.slots[slot.index()] = SlotState::Invalid;
            self.persist(next)?;
        }
        let length = manifest.length;
        self.storage(|backend| backend.begin_image(slot, length))?;
        let image = ImageInfo {
            version: manifest.version,
            security_counter: manifest.security_counter,
            length: manifest.length,
            sha256: manifest.sha256,
        };
        Ok(Staging {
            engine: self,
            slot,
            image,
            hasher: Sha256::new(),
            written: 0,
            failed: false,
        })
    }

    /// Puts the staged image on trial: the next boots try it, up to
    /// `attempts_max` times, until it is committed or rolled back.
    pub fn mark_trial(&mut self) -> Result<Slot, Error> {
        self.check_usable()?;
        if let Some(slot) = self.record.trial {
            return Err(Error::TrialInProgress { slot });
        }
        let slot = self.inactive_slot();
        let Some(image) = self.record.slots[slot.index()].ready().copied() else {
            return Err(Error::NothingStaged);
        };
        self.check_rollback(&image)?;
        let mut next = self.record;
        next.trial = Some(slot);
        next.attempts_left = self.config.attempts_max;
        self.persist(next)?;
        Ok(slot)
    }

    /// Decides which slot to boot and verifies its image.
    ///
    /// A trial boot spends one attempt durably before returning, so a crash
    /// loop always runs out of attempts. When none are left, or the trial
    /// image fails verification, the trial is rolled back and the committed
    /// image boots.
    pub fn boot(&mut self) -> Result<BootDecision, Error> {
        self.check_usable()?;
        self.booted = None;
        if let Some(trial) = self.record.trial {
            let reason = match self.record.slots[trial.index()].ready().copied() {
                Some(image) if self.record.attempts_left > 0 => {
                    if self.verify_image(trial, &image)? {
                        let mut next = self.record;
                        next.attempts_left -= 1;
                        self.persist(next)?;
                        self.booted = Some(trial);
                        return Ok(BootDecision {
                            slot: trial,
                            image,
                            reason: BootReason::Trial,
                            attempts_left: next.attempts_left,
                        });
                    }
                    BootReason::TrialCorrupt
                }
                _ => BootReason::AttemptsExhausted,
            };
            self.abandon_trial(trial)?;
            return self.boot_committed(reason);
        }
        self.boot_committed(BootReason::Committed)
    }

    fn boot_committed(&mut self, reason: BootReason) -> Result<BootDecision, Error> {
        let Some(active) = self.record.active else {
            return Err(Error::NoBootableImage);
        };
        let Some(image) = self.record.slots[active.index()].ready().copied() else {
            return Err(Error::NoBootableImage);
        };
        if !self.verify_image(active, &image)? {
            return Err(Error::ActiveImageCorrupt { slot: active });
        }
        self.booted = Some(active);
        Ok(BootDecision {
            slot: active,
            image,
            reason,
            attempts_left: 0,
        })
    }

    /// Commits the trial image after the caller's health check passed: it
    /// becomes the committed image and raises the anti-rollback floor.
    pub fn commit(&mut self) -> Result<ImageInfo, Error> {
        self.check_usable()?;
        let Some(trial) = self.record.trial else {
            return Err(Error::NoTrial);
        };
        if self.booted != Some(trial) {
            return Err(Error::TrialNotBooted);
        }
        let Some(image) = self.record.slots[trial.index()].ready().copied() else {
            return Err(Error::NothingStaged);
        };
        self.check_rollback(&image)?;
        let mut next = self.record;
        next.active = Some(trial);
        next.trial = None;
        next.attempts_left = 0;
        next.committed_version = image.version;
        next.security_counter = next.security_counter.max(image.security_counter);
        self.persist(next)?;
        Ok(image)
    }

    /// Rolls the trial back, e.g. after a failed health check. The next
    /// boot runs the committed image; the trial slot is marked rejected.
    pub fn rollback(&mut self) -> Result<Slot, Error> {
        self.check_usable()?;
        let Some(trial) = self.record.trial else {
            return Err(Error::NoTrial);
        };
        self.abandon_trial(trial)?;
        if self.booted == Some(trial) {
            self.booted = None;
        }
        Ok(trial)
    }

    fn abandon_trial(&mut self, trial: Slot) -> Result<(), Error> {
        let mut next = self.record;
        next.trial = None;
        next.attempts_left = 0;
        next.slots[trial.index()] = match self.record.slots[trial.index()] {
            SlotState::Ready(image) => SlotState::Rejected(image),
            _ => SlotState::Invalid,
        };
        self.persist(next)
    }

    fn check_usable(&self) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    fn check_acceptable(&self, manifest: &Manifest) -> Result<(), Error> {
        if manifest.name != self.config.name {
            return Err(Error::WrongImage {
                expected: self.config.name.clone(),
                found: manifest.name.clone(),
            });
        }
        if manifest.hardware_class != self.config.hardware_class {
            return Err(Error::WrongHardware {
                expected: self.config.hardware_class.clone(),
                found: manifest.hardware_class.clone(),
            });
        }
        self.check_rollback(&ImageInfo {
            version: manifest.version,
            security_counter: manifest.security_counter,
            length: manifest.length,
            sha256: manifest.sha256,
        })
    }

    fn check_rollback(&self, image: &ImageInfo) -> Result<(), Error> {
        if image.version < self.record.committed_version {
            return Err(Error::VersionRollback {
                offered: image.version,
                committed: self.record.committed_version,
            });
        }
        if image.security_counter < self.record.security_counter {
            return Err(Error::SecurityCounterRollback {
                offered: image.security_counter,
                current: self.record.security_counter,
            });
        }
        Ok(())
    }

    /// Runs a storage step; any failure poisons the engine, because after it
    /// the medium may hold anything the step could have left.
    fn storage<T>(&mut self, step: impl FnOnce(&mut B) -> Result<T, crate::storage::StorageError>) -> Result<T, Error> {
        match step(&mut self.backend) {
            Ok(value) => Ok(value),
            Err(error) => {
                self.poisoned = true;
                Err(Error::Storage(error))
            }
        }
    }

    /// Durably writes `next` as the new record into the copy that does not
    /// hold the newest valid record, then reads it back.
    fn persist(&mut self, mut next: BootRecord) -> Result<(), Error> {
        // A crafted record can carry the largest sequence number; wrapping
        // would make every later write lose to it. Found by fuzzing.
        next.seq = self.record.seq.checked_add(1).ok_or(Error::SequenceExhausted)?;
        let frame = next.encode().map_err(Error::Record)?;
        let copy = match self.newest_copy {
            Some(newest) => 1 - newest,
            // With no valid copy, keep rewriting copy 0 so that copy 1 stays
            // untouched: a torn first write can then never leave two
            // corrupt copies.
            None => 0,
        };
        self.storage(|backend| backend.write_record(copy, &frame))?;
        let stored = self.storage(|backend| backend.read_record(copy))?;
        let matches = match stored {
            RecordCopy::Present(bytes) => BootRecord::decode(&bytes).ok() == Some(next),
            RecordCopy::Missing => false,
        };
        if !matches {
            self.poisoned = true;
            return Err(Error::RecordReadBack { copy });
        }
        self.record = next;
        self.newest_copy = Some(copy);
        Ok(())
    }

    /// Hashes `image.length` bytes of `slot`; true if they match.
    fn verify_image(&mut self, slot: Slot, image: &ImageInfo) -> Result<bool, Error> {
        let digest = self.hash_slot(slot, image.length)?;
        Ok(digest == Some(image.sha256))
    }

    /// The sha256 of the first `length` bytes of `slot`, or `None` if the
    /// slot holds fewer bytes.
    fn hash_slot(&mut self, slot: Slot, length: u64) -> Result<Option<[u8; 32]>, Error> {
        let mut hasher = Sha256::new();
        let buffer_len = self.config.verify_buffer_bytes.max(VERIFY_BUFFER_BYTES_MIN);
        let mut buf = vec![0u8; usize::try_from(length).map_or(buffer_len, |length| length.min(buffer_len))];
        let mut offset = 0u64;
        while offset < length {
            let want = usize::try_from(length - offset).map_or(buf.len(), |left| left.min(buf.len()));
            let n = self.storage(|backend| backend.read_image(slot, offset, &mut buf[..want]))?;
            if n == 0 {
                return Ok(None);
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(Some(hasher.finalize().into()))
    }
}

/// An image being streamed into a slot; see [`Engine::stage`].
///
/// Dropping it unfinished leaves the slot marked invalid.
#[derive(Debug)]
pub struct Staging<'engine, B: Backend> {
    engine: &'engine mut Engine<B>,
    slot: Slot,
    image: ImageInfo,
    hasher: Sha256,
    written: u64,
    failed: bool,
}

impl<B: Backend> Staging<'_, B> {
    /// The slot being written.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes the next chunk. More bytes than the manifest's length fail
    /// with [`Error::ImageTooLong`] and nothing beyond the limit is written.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        if self.failed {
            return Err(Error::StagingFailed);
        }
        if self.written + chunk.len() as u64 > self.image.length {
            self.failed = true;
            return Err(Error::ImageTooLong {
                limit: self.image.length,
            });
        }
        let (slot, offset) = (self.slot, self.written);
        if let Err(error) = self.engine.storage(|backend| backend.write_image(slot, offset, chunk)) {
            self.failed = true;
            return Err(error);
        }
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Checks length and digest, makes the image durable, reads it back,
    /// and marks the slot ready.
    pub fn finish(self) -> Result<ImageInfo, Error> {
        if self.failed {
            return Err(Error::StagingFailed);
        }
        if self.written != self.image.length {
            return Err(Error::LengthMismatch {
                expected: self.image.length,
                written: self.written,
            });
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        if digest != self.image.sha256 {
            return Err(Error::DigestMismatch);
        }
        let slot = self.slot;
        self.engine.storage(|backend| backend.finish_image(slot))?;
        if !self.engine.verify_image(slot, &self.image)? {
            return Err(Error::ImageReadBack { slot });
        }
        let mut next = self.engine.record;
        next.slots[slot.index()] = SlotState::Ready(self.image);
        self.engine.persist(next)?;
        Ok(self.image)
    }
}
