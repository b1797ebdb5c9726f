//! TUF metadata files as molt writes them: signing a role with role keys,
//! the on-disk encoding, and expiry instants.
//!
//! tough verifies metadata and signs targets, snapshot and timestamp through
//! its editor, but it has no root editor; molt builds root metadata with
//! tough's schema types and signs it here, over the same OLPC canonical JSON
//! tough verifies.

use std::time::Duration;

use ed25519_dalek::Signer as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Role, Signature, Signed};

use crate::keys::Signer;

/// The TUF specification version molt writes.
pub const SPEC_VERSION: &str = "1.0.0";

/// Why metadata could not be encoded, decoded or signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// Serialising failed (a bug, or a value JSON cannot hold).
    #[error("cannot encode {what} metadata: {reason}")]
    Encode {
        /// Which role.
        what: String,
        /// Why.
        reason: String,
    },
    /// A metadata file is not what its name says.
    #[error("{what} is not valid TUF metadata: {reason}")]
    Decode {
        /// Which file.
        what: String,
        /// Why.
        reason: String,
    },
    /// An expiry instant does not fit the calendar.
    #[error("expiry {lifetime_secs} s from now is out of range; choose a shorter lifetime")]
    ExpiryOutOfRange {
        /// The requested lifetime.
        lifetime_secs: u64,
    },
}

/// Signs `role` with every one of `signers` (canonical JSON, ed25519).
pub fn sign<T: Role + Serialize>(role: T, signers: &[&Signer]) -> Result<Signed<T>, MetadataError> {
    let canonical = role.canonical_form().map_err(|error| MetadataError::Encode {
        what: T::TYPE.to_string(),
        reason: error.to_string(),
    })?;
    let mut signatures: Vec<Signature> = Vec::with_capacity(signers.len());
    for signer in signers {
        if signatures
            .iter()
            .any(|signature| signature.keyid.as_ref() == signer.keyid_bytes())
        {
            continue;
        }
        signatures.push(Signature {
            keyid: Decoded::<Hex>::from(signer.keyid_bytes().to_vec()),
            sig: Decoded::<Hex>::from(signer.signing_key().sign(&canonical).to_bytes().to_vec()),
        });
    }
    Ok(Signed {
        signed: role,
        signatures,
    })
}

/// The bytes of a metadata file: pretty JSON and a newline, as tough's
/// editor writes them. Snapshot and timestamp pin exactly these bytes.
pub fn encode<T: Serialize>(signed: &Signed<T>) -> Result<Vec<u8>, MetadataError> {
    let mut bytes = serde_json::to_vec_pretty(signed).map_err(|error| MetadataError::Encode {
        what: "signed".to_owned(),
        reason: error.to_string(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Parses a metadata file.
pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<Signed<T>, MetadataError> {
    serde_json::from_slice(bytes).map_err(|error| MetadataError::Decode {
        what: what.to_owned(),
        reason: error.to_string(),
    })
}

/// The instant `lifetime` from now, to the second (TUF expiry is written
/// with second precision).
pub fn expires_in(lifetime: Duration) -> Result<jiff::Timestamp, MetadataError> {
    let out_of_range = || MetadataError::ExpiryOutOfRange {
        lifetime_secs: lifetime.as_secs(),
    };
    let lifetime_secs = i64::try_from(lifetime.as_secs()).map_err(|_| out_of_range())?;
    let now = jiff::Timestamp::now().as_second();
    let expires = now.checked_add(lifetime_secs).ok_or_else(out_of_range)?;
    jiff::Timestamp::from_second(expires).map_err(|_| out_of_range())
}

/// Lowercase hex of a key id or digest.
pub(crate) fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
