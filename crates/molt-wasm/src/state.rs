//! A policy's state: canonical DAG-CBOR bytes, named by their CID.
//!
//! A policy's `snapshot` is everything it needs to continue. The host keeps
//! it only in canonical DAG-CBOR, so that equal states are equal bytes and
//! the CID (content identifier: CIDv1, codec DAG-CBOR, sha2-256) names the
//! state on any device: the same module and input log must give the same
//! CID everywhere.

use cid::Cid;
use cid::multihash::Multihash;
use ipld_core::ipld::Ipld;
use sha2::{Digest, Sha256};

/// The multicodec code of DAG-CBOR.
pub const DAG_CBOR_CODEC: u64 = 0x71;
/// The multihash code of sha2-256.
pub const SHA2_256_CODE: u64 = 0x12;

/// A policy's snapshot, checked to be canonical DAG-CBOR within the size
/// limit.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct State {
    bytes: Vec<u8>,
}

/// Why bytes are not an acceptable [`State`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Larger than [`Limits::state_bytes_max`](crate::Limits::state_bytes_max).
    #[error("state is {size_bytes} bytes, over the limit state_bytes_max={limit_bytes}")]
    TooLarge {
        /// Size offered.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// Not one complete DAG-CBOR value.
    #[error("state is not DAG-CBOR: {reason}")]
    NotDagCbor {
        /// The decoder's explanation.
        reason: String,
    },
    /// Decodes, but is not in canonical form (map keys out of order,
    /// non-minimal lengths, 16- or 32-bit floats, ...), so the same state
    /// could have two CIDs.
    #[error("state is DAG-CBOR but not canonical; encode it with a DAG-CBOR encoder")]
    NotCanonical,
    /// Contains a NaN or infinite float, which DAG-CBOR forbids.
    #[error("state contains a NaN or infinite float, which DAG-CBOR forbids")]
    NonFiniteFloat,
}

impl State {
    /// Accepts bytes from a guest's `snapshot` (or from anywhere else not
    /// trusted: disk, network) after checking the size, that they decode as
    /// one DAG-CBOR value, and that re-encoding gives the same bytes.
    pub fn from_guest(bytes: Vec<u8>, limit_bytes: usize) -> Result<State, StateError> {
        if bytes.len() > limit_bytes {
            return Err(StateError::TooLarge {
                size_bytes: bytes.len(),
                limit_bytes,
            });
        }
        // The decoder bounds nesting depth, so hostile nesting is an error
        // rather than a host stack overflow.
        let value: Ipld = serde_ipld_dagcbor::from_slice(&bytes).map_err(|error| StateError::NotDagCbor {
            reason: error.to_string(),
        })?;
        if !all_floats_finite(&value) {
            return Err(StateError::NonFiniteFloat);
        }
        let canonical = serde_ipld_dagcbor::to_vec(&value).map_err(|error| StateError::NotDagCbor {
            reason: error.to_string(),
        })?;
        if canonical != bytes {
            return Err(StateError::NotCanonical);
        }
        Ok(State { bytes })
    }

    /// The DAG-CBOR bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The DAG-CBOR bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The content identifier: CIDv1, codec DAG-CBOR, sha2-256 multihash.
    pub fn cid(&self) -> Cid {
        let digest = Sha256::digest(&self.bytes);
        #[expect(clippy::expect_used, reason = "a 32-byte digest always fits a 64-byte multihash")]
        let multihash =
            Multihash::<64>::wrap(SHA2_256_CODE, &digest).expect("a 32-byte digest fits a 64-byte multihash");
        Cid::new_v1(DAG_CBOR_CODEC, multihash)
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("size_bytes", &self.bytes.len())
            .field("cid", &self.cid().to_string())
            .finish()
    }
}

/// The decoder accepts NaN and infinities, which DAG-CBOR forbids.
/// Depth is bounded by the decoder, so this recursion is too.
fn all_floats_finite(value: &Ipld) -> bool {
    match value {
        Ipld::Float(float) => float.is_finite(),
        Ipld::List(items) => items.iter().all(all_floats_finite),
        Ipld::Map(entries) => entries.values().all(all_floats_finite),
        _ => true,
    }
}

#[cfg(test)]
mod tests;
