#![deny(missing_docs)]
//! TUF-signed release sets for molt devices: the repository side on
//! [`tough`]'s editor, the device side on molt's own TUF client workflow.
//!
//! - [`keys`]: role keys on disk, root metadata, rotation.
//! - [`repo`]: drafts, signing and publishing a repository.
//! - [`release_set`]: the one target that pins a whole device configuration.
//! - [`tuf`]: the TUF client workflow, written from the specification.
//! - [`client`]: the device side: verify, fetch, accept, stage; all or nothing.
//! - [`download`]: bounded, resumable transfers of targets and metadata.
//! - [`digest`]: the hash algorithms metadata may list.
//! - [`metadata`]: signing and encoding TUF metadata (tough has no root editor).

pub mod client;
pub mod digest;
pub mod download;
pub mod keys;
pub mod metadata;
pub mod release_set;
pub mod repo;
pub mod tuf;
