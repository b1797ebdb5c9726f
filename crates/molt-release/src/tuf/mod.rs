//! molt's TUF client workflow, written from the TUF specification 1.0.x
//! (sections 5.2–5.7, "Detailed client workflow"): what `Client` runs on a
//! device and `molt tuf-client` runs for the public conformance suite.
//!
//! [`Updater`] keeps the trusted metadata in a directory and updates it from
//! a repository:
//!
//! - **root** (5.3): versions N+1, N+2, ... each signed by a threshold of the
//!   previous root's root keys and of its own, exactly one version apart, at
//!   most `root_updates_max` per update; then the final root must not have
//!   expired. A root that changes the timestamp or snapshot keys deletes the
//!   trusted timestamp and snapshot (5.3.11, fast-forward recovery).
//! - **timestamp** (5.4): signed by the root's timestamp keys; a lower
//!   version is a rollback; the same version is discarded and the trusted
//!   one kept (5.4.3.1); the snapshot version it lists may not go down; it
//!   must not have expired.
//! - **snapshot** (5.5): the length and hashes the timestamp lists, the
//!   snapshot keys, the version the timestamp lists; no targets role it
//!   listed before may disappear or go down; not expired.
//! - **targets** (5.6) and every delegated role: the length and hashes the
//!   snapshot lists, the delegator's keys, the version the snapshot lists,
//!   not expired.
//! - **target lookup** (5.6.7): [`Updater::find_target`] searches the
//!   delegation graph pre-order depth-first from the top-level targets, in
//!   order of appearance, descending only into delegations whose `paths`
//!   (see `pattern`) or `path_hash_prefixes` cover the target, stopping at
//!   a terminating delegation, skipping roles already visited, and giving up
//!   after `delegated_roles_max` roles. Delegated roles are fetched only
//!   when the search reaches them, and each is verified against the
//!   delegation it was reached through. A role that lists a target outside
//!   its delegated paths is never asked about it, so that listing is
//!   ignored and nothing else is affected; a role missing from the snapshot
//!   fails only the lookups that reach it.
//!
//! Metadata already trusted is reused without a request when it is still
//! what the newer metadata lists (a local snapshot of the version the
//! timestamp lists, a local targets role of the version the snapshot lists).
//! Every file is stored under its non-versioned name with exactly the bytes
//! that verified. With consistent snapshots (root's `consistent_snapshot`)
//! snapshot and targets roles are fetched as `VERSION.ROLE.json` and
//! targets as `DIR/HASH.FILE`.
//!
//! Hashes: every algorithm a `hashes` object lists that molt supports is
//! checked, and at least one must be supported ([`crate::digest`]).

mod error;
mod pattern;
mod schema;
mod store;
mod updater;

use crate::download::DownloadLimits;

pub use error::TufError;
pub use updater::{Durability, Refresh, TargetInfo, TimestampUpdate, Updater, target_file_path, verify_trusted_root};

/// Bounds on what the workflow accepts; each name appears in its error.
#[derive(Debug, Clone)]
pub struct TufLimits {
    /// A root version (its size is unknown beforehand: W in 5.3.3);
    /// default 1 MiB.
    pub root_bytes_max: u64,
    /// timestamp.json (X in 5.4.1); default 1 MiB.
    pub timestamp_bytes_max: u64,
    /// snapshot.json when the timestamp lists no length (Y in 5.5.1);
    /// default 10 MiB.
    pub snapshot_bytes_max: u64,
    /// A targets role when the snapshot lists no length (Z in 5.6.1);
    /// default 10 MiB.
    pub targets_bytes_max: u64,
    /// Root versions one update walks through (Y in 5.3.3); default 32.
    pub root_updates_max: u64,
    /// Targets roles one lookup visits, the top-level one included
    /// (5.6.7.1); default 32.
    pub delegated_roles_max: u64,
    /// Transfers.
    pub download: DownloadLimits,
}

impl Default for TufLimits {
    fn default() -> Self {
        TufLimits {
            root_bytes_max: 1 << 20,
            timestamp_bytes_max: 1 << 20,
            snapshot_bytes_max: 10 << 20,
            targets_bytes_max: 10 << 20,
            root_updates_max: 32,
            delegated_roles_max: 32,
            download: DownloadLimits::default(),
        }
    }
}
