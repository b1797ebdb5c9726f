//! A policy's state as DAG-CBOR bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_ipld_dagcbor::{DecodeError, EncodeError};

use crate::PolicyError;

/// Encodes `state` as DAG-CBOR, as the host's `snapshot` does.
///
/// DAG-CBOR is canonical: map keys are sorted and every number has exactly one encoding, so equal states give equal bytes and the same content identifier on every device.
/// It cannot encode `NaN` or infinities, nor maps whose keys are not strings (use [`SensorMap`](crate::SensorMap) for per-sensor state);
/// such a state is an error here, and a trap in `snapshot`.
pub fn encode_state<S: Serialize>(state: &S) -> Result<Vec<u8>, PolicyError> {
    serde_ipld_dagcbor::to_vec(state).map_err(|error| {
        // The crate's `Display` is its `Debug`; a custom message reads better bare.
        let message = match error {
            EncodeError::Msg(message) => message,
            other => other.to_string(),
        };
        PolicyError::Failed(format!("cannot encode state as DAG-CBOR: {message}"))
    })
}

/// Decodes state made by [`encode_state`], as the host's `restore` does.
///
/// Bytes that are not valid DAG-CBOR for `S` are an [`PolicyError::InvalidState`].
pub fn decode_state<S: DeserializeOwned>(bytes: &[u8]) -> Result<S, PolicyError> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|error| {
        let message = match error {
            DecodeError::Msg(message) => message,
            other => other.to_string(),
        };
        PolicyError::InvalidState(format!("cannot decode state: {message}"))
    })
}
