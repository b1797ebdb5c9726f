//! The trait a policy implements.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Action, Config, PolicyError, Reading};

/// A policy: state that turns batches of readings into actions.
///
/// The state is the implementing type itself.
/// It must be (de)serializable because the host snapshots it as DAG-CBOR between batches and restores it into a fresh instance, possibly of a newer version of the policy, after a trap or during a live swap.
/// Everything the policy needs to continue must therefore be in its serialized form;
/// settings derived from the config may be left out (`#[serde(skip)]`) and set again in [`Policy::reconfigure`].
///
/// The methods are called one at a time, never concurrently, and only ever with data from the host, so they must not panic on it:
/// a panic is a trap, and a trap makes the host discard the instance and count a failure against this version.
pub trait Policy: Sized + Serialize + DeserializeOwned {
    /// Starts a fresh policy from its configuration.
    ///
    /// A configuration the policy cannot use is an [`PolicyError::InvalidConfig`] naming the key.
    fn init(config: &Config) -> Result<Self, PolicyError>;

    /// Handles one batch of readings, in order, pushing the actions they cause, in order, onto `actions`.
    ///
    /// Readings arrive in strictly increasing `sequence` across batches, each exactly once.
    /// On `Err`, the host drops the actions of this call and treats the batch as failed:
    /// do not rely on state changes made before the error, as the host may go back to the last snapshot.
    fn process(&mut self, batch: &[Reading], actions: &mut Vec<Action>) -> Result<(), PolicyError>;

    /// Applies the configuration of the version being restored into, after its state was decoded from a snapshot.
    ///
    /// The default keeps the state as is, which is right only if no field of the state came from the config;
    /// a policy that keeps config settings in `self` must override this and read them again.
    fn reconfigure(&mut self, config: &Config) -> Result<(), PolicyError> {
        let _ = config;
        Ok(())
    }
}
