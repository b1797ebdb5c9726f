//! Precompiled (native) policy modules, and the only place that loads them.
//!
//! Loading precompiled bytes runs them as native code with no validation,
//! so it is as dangerous as running an unknown binary. molt therefore never
//! deserializes a precompiled module it did not produce or verify: the
//! bytes must carry this engine's [`CacheKey`] and hash to a digest the
//! caller already trusts (its own earlier [`Runtime::precompile`], an entry
//! whose MAC it checked, or signed release metadata).
//!
//! Checking the digest is a sha256 pass over the whole artifact, about as
//! long as wasmtime's own load. [`Runtime::verify_precompiled`] does it once,
//! where the bytes enter, and returns a [`VerifiedPrecompiled`] that owns
//! them immutably, so every later [`Runtime::load_verified`] (one per swap
//! to that version) loads exactly the checked bytes without hashing again.

// The workspace denies `unsafe_code`; `Component::deserialize` is unsafe
// by nature and this module is where molt contains it. The one `unsafe`
// block is in `Runtime::deserialize_checked`, which only runs behind the checks above.
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled as PrecompiledKind};

use crate::error::Error;
use crate::module::{PolicyModule, hex, load_error};
use crate::runtime::{Runtime, target_name};

/// The wasmtime this crate is pinned to (`=48.0.8` in its manifest). Every
/// precompiled module and every state CID is recorded next to it.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// What a precompiled module is valid for: one wasmtime version, one engine
/// configuration, one target, one source module.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The wasmtime version that compiled it ([`WASMTIME_VERSION`]).
    pub wasmtime_version: String,
    /// sha256 over wasmtime's `Engine::precompile_compatibility_hash`:
    /// compiler, its flags and target features, and the tunables and wasm
    /// features the code was compiled for.
    pub engine_sha256: [u8; 32],
    /// The target, e.g. `x86_64-linux` or `pulley64`.
    pub target: String,
    /// sha256 of the `.wasm` it was compiled from.
    pub source_sha256: [u8; 32],
}

impl CacheKey {
    /// A file name that differs whenever any part of the key does.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-{}-{}.cwasm",
            self.wasmtime_version,
            self.target,
            &hex(&self.engine_sha256)[..16],
            hex(&self.source_sha256)
        )
    }

    /// A canonical byte encoding, for MACs and signatures.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for text in [&self.wasmtime_version, &self.target] {
            bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
            bytes.extend_from_slice(text.as_bytes());
        }
        bytes.extend_from_slice(&self.engine_sha256);
        bytes.extend_from_slice(&self.source_sha256);
        bytes
    }
}

/// A module compiled ahead of time by [`Runtime::precompile`].
#[derive(Clone, PartialEq, Eq)]
pub struct Precompiled {
    /// What the bytes are valid for.
    pub key: CacheKey,
    /// The native code and metadata.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`: what a later [`Runtime::load_precompiled`] must be
    /// given as the trusted digest.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for Precompiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Precompiled")
            .field("key", &self.key)
            .field("size_bytes", &self.bytes.len())
            .field("sha256", &hex(&self.sha256))
            .finish()
    }
}

/// Precompiled code whose key is a runtime's and whose bytes hashed to a
/// trusted digest when [`Runtime::verify_precompiled`] made it.
///
/// The bytes are private and shared read-only, so what was checked is what
/// [`Runtime::load_verified`] loads, any number of times, without hashing
/// again. Cheap to clone.
#[derive(Clone)]
pub struct VerifiedPrecompiled {
    key: CacheKey,
    bytes: Arc<[u8]>,
    sha256: [u8; 32],
    /// The engine the key was checked against; another engine's key is
    /// checked again on load.
    engine: Engine,
}

impl VerifiedPrecompiled {
    /// What the bytes are valid for.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// The checked bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The trusted digest the bytes matched.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }
}

impl std::fmt::Debug for VerifiedPrecompiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedPrecompiled")
            .field("key", &self.key)
            .field("size_bytes", &self.bytes.len())
            .field("sha256", &hex(&self.sha256))
            .finish_non_exhaustive()
    }
}

/// Feeds `Hash` output into sha256, so wasmtime's compatibility hash
/// becomes a stable digest rather than a 64-bit `Hasher` value.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn engine_sha256(engine: &Engine) -> [u8; 32] {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.0.finalize().into()
}

impl Runtime {
    /// The key precompiled code of the `.wasm` with this sha256 has when
    /// this runtime produces it.
    pub fn cache_key(&self, source_sha256: [u8; 32]) -> CacheKey {
        CacheKey {
            wasmtime_version: WASMTIME_VERSION.to_owned(),
            engine_sha256: engine_sha256(&self.shared.engine),
            target: target_name(self.config().compiler),
            source_sha256,
        }
    }

    /// Compiles a `.wasm` policy component to native code for this engine,
    /// under the same size and time limits as [`Runtime::compile`].
    pub fn precompile(&self, wasm: &[u8]) -> Result<Precompiled, Error> {
        self.check_module_size(wasm)?;
        let source_sha256: [u8; 32] = Sha256::digest(wasm).into();
        let bytes = self.compile_bounded(wasm, |engine, wasm| engine.precompile_component(wasm))?;
        let sha256 = Sha256::digest(&bytes).into();
        Ok(Precompiled {
            key: self.cache_key(source_sha256),
            bytes,
            sha256,
        })
    }

    /// Loads precompiled code, but only if `key` is this engine's key and
    /// `bytes` hash to `trusted_sha256`, a digest the caller got from
    /// something it trusts: its own [`Runtime::precompile`], a cache entry
    /// whose MAC it verified, or signed release metadata. Never pass the
    /// sha256 of the offered bytes themselves.
    ///
    /// Hashes the bytes on every call; to load the same bytes more than
    /// once, [`Runtime::verify_precompiled`] them once and
    /// [`Runtime::load_verified`] each time.
    pub fn load_precompiled(
        &self,
        key: &CacheKey,
        bytes: &[u8],
        trusted_sha256: [u8; 32],
    ) -> Result<PolicyModule, Error> {
        self.check_precompiled_key(key)?;
        check_precompiled_bytes(self.limits().precompiled_bytes_max, bytes, Some(trusted_sha256))?;
        self.deserialize_checked(key, bytes)
    }

    /// Checks precompiled code once, as [`Runtime::load_precompiled`] does
    /// (this engine's `key`, within
    /// [`Limits::precompiled_bytes_max`](crate::Limits::precompiled_bytes_max),
    /// hashing to `trusted_sha256`), and keeps the bytes for
    /// [`Runtime::load_verified`]. Call it where the bytes enter the device.
    pub fn verify_precompiled(
        &self,
        key: &CacheKey,
        bytes: Vec<u8>,
        trusted_sha256: [u8; 32],
    ) -> Result<VerifiedPrecompiled, Error> {
        self.check_precompiled_key(key)?;
        check_precompiled_bytes(self.limits().precompiled_bytes_max, &bytes, Some(trusted_sha256))?;
        Ok(VerifiedPrecompiled {
            key: key.clone(),
            bytes: bytes.into(),
            sha256: trusted_sha256,
            engine: self.shared.engine.clone(),
        })
    }

    /// Loads code [`Runtime::verify_precompiled`] checked, without hashing
    /// it again. Code verified on another runtime loads only if its key is
    /// also this runtime's.
    pub fn load_verified(&self, verified: &VerifiedPrecompiled) -> Result<PolicyModule, Error> {
        if !Engine::same(&verified.engine, &self.shared.engine) {
            self.check_precompiled_key(&verified.key)?;
        }
        // The size limit is this runtime's, which may be smaller than the
        // one the bytes were verified under.
        check_precompiled_bytes(self.limits().precompiled_bytes_max, &verified.bytes, None)?;
        self.deserialize_checked(&verified.key, &verified.bytes)
    }

    /// Loads bytes this engine produced or the module cache authenticated
    /// by its MAC, which proves the same as a trusted digest, without
    /// hashing them.
    pub(crate) fn load_authenticated(&self, key: &CacheKey, bytes: &[u8]) -> Result<PolicyModule, Error> {
        self.check_precompiled_key(key)?;
        check_precompiled_bytes(self.limits().precompiled_bytes_max, bytes, None)?;
        self.deserialize_checked(key, bytes)
    }

    fn check_precompiled_key(&self, key: &CacheKey) -> Result<(), Error> {
        let expected = self.cache_key(key.source_sha256);
        check_key_field("wasmtime_version", &expected.wasmtime_version, &key.wasmtime_version)?;
        check_key_field("target", &expected.target, &key.target)?;
        check_key_field("engine_sha256", &hex(&expected.engine_sha256), &hex(&key.engine_sha256))
    }

    /// Only ever called after `check_precompiled_key(key)` and
    /// `check_precompiled_bytes(.., bytes, ..)` passed with a trusted digest
    /// now or when the bytes were verified, or for bytes whose origin
    /// (this engine, or a MAC this device made) proves the same.
    fn deserialize_checked(&self, key: &CacheKey, bytes: &[u8]) -> Result<PolicyModule, Error> {
        // SAFETY: `Component::deserialize` trusts `bytes` to be wasmtime's
        // own output for a compatible engine: it maps them as executable
        // code without validating them. Every caller established both halves
        // first: the key's wasmtime version, target and engine-compatibility
        // digest equal this engine's, and the bytes are exactly bytes that
        // wasmtime produced for this configuration, because they hash to a
        // digest the caller obtained from its own `precompile` or verified
        // metadata (checked now, or by `verify_precompiled` over bytes that
        // `VerifiedPrecompiled` has kept immutable since), or because this
        // engine made them or the module cache's MAC proves this device did.
        // wasmtime additionally re-checks version and flags in the header.
        let component = unsafe { Component::deserialize(&self.shared.engine, bytes) }
            .map_err(|error| load_error(&error, |reason| Error::InvalidPrecompiled { reason }))?;
        PolicyModule::from_component(&self.shared, &component, key.source_sha256)
    }
}

/// The checks on the bytes themselves: the size limit, the trusted digest
/// if one is to be checked now, and that they claim to be a component.
fn check_precompiled_bytes(limit_bytes: usize, bytes: &[u8], trusted_sha256: Option<[u8; 32]>) -> Result<(), Error> {
    if bytes.len() > limit_bytes {
        return Err(Error::PrecompiledTooLarge {
            size_bytes: bytes.len(),
            limit_bytes,
        });
    }
    if let Some(trusted_sha256) = trusted_sha256 {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        if sha256 != trusted_sha256 {
            return Err(Error::PrecompiledDigestMismatch);
        }
    }
    if Engine::detect_precompiled(bytes) != Some(PrecompiledKind::Component) {
        return Err(Error::InvalidPrecompiled {
            reason: "not a precompiled component".to_owned(),
        });
    }
    Ok(())
}

fn check_key_field(field: &'static str, expected: &str, found: &str) -> Result<(), Error> {
    if expected == found {
        return Ok(());
    }
    Err(Error::CacheKeyMismatch {
        field,
        expected: expected.to_owned(),
        found: found.to_owned(),
    })
}

#[cfg(test)]
mod tests;
