//! The engine's error type.

use alloc::string::String;

use crate::boot_control::{RecordError, Slot};
use crate::manifest::ManifestError;
use crate::storage::StorageError;
use crate::version::Version;

/// Why an engine operation failed.
///
/// Every failure leaves the durable state consistent: at worst the slot
/// being staged is marked invalid. After a [`Error::Storage`] failure the
/// engine is poisoned and must be reopened, because what the medium holds
/// is no longer known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The medium failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An earlier storage failure left the in-memory view uncertain.
    #[error("an earlier storage failure left the engine's view uncertain; reopen it to recover from what is durable")]
    Poisoned,
    /// Neither record copy is usable and at least one is corrupt.
    #[error("no usable boot record: copy 0 {copy0}, copy 1 {copy1}")]
    NoValidRecord {
        /// What was wrong with copy 0.
        copy0: RecordError,
        /// What was wrong with copy 1.
        copy1: RecordError,
    },
    /// A record read back after writing differs from what was written.
    #[error("boot record copy {copy} read back differently from what was written")]
    RecordReadBack {
        /// The copy written.
        copy: usize,
    },
    /// The record's sequence number cannot grow any further; only a
    /// crafted record gets here, since each write adds one.
    #[error("the boot record sequence number is exhausted; the record was crafted or corrupted")]
    SequenceExhausted,
    /// The engine refused to write a record that breaks an invariant
    /// (a bug, never caused by input).
    #[error("refused to write an inconsistent boot record: {0}")]
    Record(RecordError),
    /// The manifest was not accepted.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest is for another image kind.
    #[error("manifest is for image {found:?}, this engine manages {expected:?}")]
    WrongImage {
        /// The engine's image kind.
        expected: String,
        /// The manifest's.
        found: String,
    },
    /// The manifest is for other hardware.
    #[error("image is built for hardware class {found:?}, this device is {expected:?}")]
    WrongHardware {
        /// The device's class.
        expected: String,
        /// The manifest's.
        found: String,
    },
    /// The image does not fit in a slot.
    #[error("image of {length} bytes exceeds the slot capacity of {capacity} bytes")]
    ImageTooLarge {
        /// The manifest's length.
        length: u64,
        /// The slot capacity.
        capacity: u64,
    },
    /// Anti-rollback: the version is below the committed one.
    #[error("version {offered} is below the committed version {committed}")]
    VersionRollback {
        /// The refused version.
        offered: Version,
        /// The committed version.
        committed: Version,
    },
    /// Anti-rollback: the security counter is below the committed one.
    #[error("security counter {offered} is below the committed counter {current}")]
    SecurityCounterRollback {
        /// The refused counter.
        offered: u64,
        /// The committed counter.
        current: u64,
    },
    /// A trial is pending; commit or roll it back first.
    #[error("slot {slot:?} is on trial; commit or roll it back first")]
    TrialInProgress {
        /// The slot on trial.
        slot: Slot,
    },
    /// Nothing complete is staged in the inactive slot.
    #[error("no verified image is staged in the inactive slot")]
    NothingStaged,
    /// There is no trial to commit or roll back.
    #[error("no slot is on trial")]
    NoTrial,
    /// Commit is only allowed after the trial slot was booted.
    #[error("the trial slot has not been booted; run the boot decision first")]
    TrialNotBooted,
    /// More bytes were offered than the manifest's length (endless data).
    #[error("image data exceeds the manifest length of {limit} bytes")]
    ImageTooLong {
        /// The manifest's length.
        limit: u64,
    },
    /// Staging finished before the manifest's length was reached.
    #[error("image ended after {written} bytes, the manifest says {expected}")]
    LengthMismatch {
        /// The manifest's length.
        expected: u64,
        /// Bytes received.
        written: u64,
    },
    /// The image's sha256 differs from the manifest's.
    #[error("image digest does not match the manifest; the slot stays invalid")]
    DigestMismatch,
    /// The image read back from the slot differs from what was written.
    #[error("slot {slot:?} read back with a different digest than was written")]
    ImageReadBack {
        /// The slot.
        slot: Slot,
    },
    /// An earlier write in this staging failed; start a new one.
    #[error("this staging already failed; start a new one")]
    StagingFailed,
    /// No image was ever committed.
    #[error("no committed image to boot")]
    NoBootableImage,
    /// The committed image no longer matches its digest.
    #[error("the committed image in slot {slot:?} fails verification")]
    ActiveImageCorrupt {
        /// The slot.
        slot: Slot,
    },
}
