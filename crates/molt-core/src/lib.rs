#![no_std]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
//! molt-core: the crash-safe A/B update engine.
//!
//! A device keeps two slots, A and B, for each kind of image it runs (its
//! own `agent` binary, each `module/<name>` policy). One slot holds the
//! committed image; the other receives the next one. molt-core decides,
//! durably and in an order that survives power loss at any storage
//! operation, which slot boots.
//!
//! # Concepts
//!
//! - A **manifest** ([`Manifest`]) names an image, its version, security
//!   counter, hardware class, length and sha256, and is signed by k of n
//!   pinned ed25519 keys ([`TrustRoot`]).
//! - The **boot control record** ([`BootRecord`]) holds the active slot, the
//!   trial slot, attempts left, the committed version and the security
//!   counter. Two checksummed copies are kept; writes alternate between
//!   them.
//! - The **engine** ([`Engine`]) runs the update: [`Engine::stage`] streams
//!   an image into the inactive slot, hashing as it goes;
//!   [`Engine::mark_trial`] puts it on trial; [`Engine::boot`] picks the
//!   slot and spends one trial attempt *before* handing over;
//!   [`Engine::commit`] makes it permanent after a health check;
//!   [`Engine::rollback`] (or running out of attempts) returns to the
//!   committed image. Anti-rollback refuses any version or security counter
//!   below the committed one.
//!
//! # Storage
//!
//! molt-core is sans-IO. It reaches storage through a [`Backend`], of which
//! there are two: [`FileBackend`] over any [`FileStore`] (a directory with
//! POSIX durability rules; [`FsStore`] with the `std` feature is the real
//! one) and [`FlashBackend`] over any
//! `embedded_storage::nor_flash::NorFlash`.
//!
//! # Example
//!
//! ```
//! use ed25519_dalek::SigningKey;
//! use molt_core::sim::SimStore;
//! use molt_core::{Config, Engine, FileBackend, FileLayout, Manifest, TrustRoot, Version};
//! use sha2::{Digest, Sha256};
//!
//! let key = SigningKey::from_bytes(&[7; 32]);
//! let trust = TrustRoot::new(&[key.verifying_key()], 1)?;
//! let config = Config::new("agent", "gateway-x86", trust);
//! let backend = FileBackend::new(SimStore::new(), FileLayout::default());
//! let (mut engine, _recovery) = Engine::open(backend, config)?;
//!
//! let image = b"agent binary v1".to_vec();
//! let manifest = Manifest {
//!     name: "agent".into(),
//!     version: Version::new(1, 0, 0),
//!     security_counter: 1,
//!     length: image.len() as u64,
//!     sha256: Sha256::digest(&image).into(),
//!     hardware_class: "gateway-x86".into(),
//! };
//! let signed = manifest.sign(&[&key])?;
//!
//! let mut staging = engine.stage(&signed)?;
//! staging.write(&image)?;
//! staging.finish()?;
//! engine.mark_trial()?;
//! let decision = engine.boot()?; // spends one attempt, durably
//! // ... run the new image, check its health ...
//! engine.commit()?;
//! assert_eq!(engine.record().committed_version, Version::new(1, 0, 0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//!
//! - `std`: [`FsStore`], the [`FileStore`] on real Linux files.
//! - `sim`: test support: [`sim::SimStore`], [`sim::SimFlash`] and the
//!   power-cut simulator in [`sim`].

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod backend;
mod boot_control;
mod engine;
mod error;
mod files;
mod flash;
#[cfg(feature = "std")]
mod fs_store;
mod manifest;
#[cfg(feature = "sim")]
pub mod sim;
mod storage;
mod version;

pub use crate::backend::{Backend, RecordCopy};
pub use crate::boot_control::{BootRecord, ImageInfo, RECORD_MAGIC, RECORD_SIZE_MAX, RecordError, Slot, SlotState};
pub use crate::engine::{BootDecision, BootReason, Config, CopyStatus, Engine, Recovery, Staging};
pub use crate::error::Error;
pub use crate::files::{FileBackend, FileLayout, image_name};
pub use crate::flash::{FlashBackend, FlashLayout, LayoutError};
#[cfg(feature = "std")]
pub use crate::fs_store::FsStore;
pub use crate::manifest::{
    Envelope, MANIFEST_SIGNING_DOMAIN, MANIFEST_SIZE_MAX, Manifest, ManifestError, ManifestSignature, NAME_LEN_MAX,
    SIGNATURES_MAX, TrustRoot, TrustRootError, decode_body,
};
pub use crate::storage::{FileStore, StorageError, StorageErrorKind, StorageOp};
pub use crate::version::{ParseVersionError, Version};
