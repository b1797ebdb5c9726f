#![deny(missing_docs)]
//! TUF-signed release sets for molt devices, on [`tough`].
//!
//! - [`keys`]: role keys on disk, root metadata, rotation.
//! - [`repo`]: drafts, signing and publishing a repository.
//! - [`release_set`]: the one target that pins a whole device configuration.
//! - [`client`]: the device side: verify, fetch, accept, stage; all or nothing.
//! - [`download`]: bounded, resumable transfers and tough transports.
//! - [`metadata`]: signing and encoding TUF metadata (tough has no root editor).

pub mod client;
pub mod download;
pub mod keys;
pub mod metadata;
pub mod release_set;
pub mod repo;
