//! Test support: simulated storage that models power loss, and the
//! power-cut simulator that proves the engine against it.
//!
//! [`SimStore`] is a [`FileStore`](crate::storage::FileStore) and
//! [`SimFlash`] a `NorFlash`. Both count every storage operation and track
//! what is durable separately from what is only pending, so that a [`Fault`]
//! can cut power before (files) or inside (flash) any operation and a
//! [`Damage`] variant decides what survives.

mod crash;
mod flash;
mod store;

pub use crate::sim::crash::{CrashFailure, CrashReport, CrashSimConfig, DEFAULT_RUNS, DEFAULT_SEED, run};
pub use crate::sim::flash::{SimFlash, SimFlashError};
pub use crate::sim::store::SimStore;

use crate::storage::StorageErrorKind;

/// What goes wrong, and at which storage operation.
///
/// Operations are numbered from 1 in the order the back end receives them,
/// counting every call (reads too) since the last
/// [`reboot`](SimStore::reboot) or since the fault was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing goes wrong.
    None,
    /// Power fails at operation `at`: it and every later operation return
    /// [`StorageErrorKind::PowerLoss`] until the next reboot, which applies
    /// `damage`. On files the operation never starts; on flash it is the
    /// write or erase in flight and `damage` decides how much of it landed.
    Cut {
        /// The operation at which power fails.
        at: u64,
        /// What survives.
        damage: Damage,
    },
    /// Operation `at` fails with `kind` and has no effect; later operations
    /// succeed.
    FailOnce {
        /// The failing operation.
        at: u64,
        /// The error it returns.
        kind: StorageErrorKind,
    },
    /// Operation `at` and every later one fail with `kind` until the next
    /// reboot. With `mutations_only`, reads and stats still succeed (a full
    /// disk).
    FailFrom {
        /// The first failing operation.
        at: u64,
        /// The error they return.
        kind: StorageErrorKind,
        /// Only operations that change the medium fail.
        mutations_only: bool,
    },
}

/// What survives a power cut.
///
/// On files this acts on everything not yet made durable by `sync` or
/// `sync_dir`. On flash a completed write or erase is durable, so it acts
/// only on the operation in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Damage {
    /// Every pending change is lost.
    LoseUnsynced,
    /// Every pending change survives.
    KeepUnsynced,
    /// A seeded random subset of pending data writes survives, which also
    /// models reordering; directory changes survive as a random prefix, as a
    /// journal would keep them. On flash, a random subset of the in-flight
    /// operation's words lands.
    RandomSubset {
        /// Seed for the choice.
        seed: u64,
    },
    /// Everything pending survives except the last data write, which is
    /// torn after a seeded number of bytes. On flash, the in-flight write or
    /// erase stops after a seeded number of bytes.
    TornByte {
        /// Seed for the tear position.
        seed: u64,
    },
    /// Flash only: the in-flight write or erase stops at a seeded word
    /// boundary (the write size). On files this behaves as `TornByte`.
    TornWord {
        /// Seed for the tear position.
        seed: u64,
    },
    /// File data survives but every create, rename and remove since the
    /// last `sync_dir` is lost. On flash this behaves as `LoseUnsynced`.
    LoseNames,
}

/// A deliberate break in the file back end's durability protocol.
///
/// Used only to prove that the power-cut simulator's oracle fails when the
/// engine is wrong; a simulator that cannot fail proves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sabotage {
    /// The protocol as designed.
    #[default]
    None,
    /// Rename the new record over the old one without syncing it first.
    SkipRecordSync,
    /// Return from a record replace without syncing the directory.
    SkipRecordDirSync,
}
