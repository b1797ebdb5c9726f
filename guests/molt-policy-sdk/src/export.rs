//! The glue between the generated `Guest` trait and [`Policy`]; used by [`export_policy!`](crate::export_policy) only.

use std::cell::RefCell;

use crate::{Action, Config, Policy, PolicyError, Reading, decode_state, encode_state};

pub use crate::bindings::Guest;

/// Where a component keeps its one policy.
///
/// The world imports nothing, so nothing can call back into the guest while one of these functions holds the cell:
/// a failed borrow would be a bug in this crate, and is reported as an error where the contract has one.
pub type Slot<P> = RefCell<Option<P>>;

/// The config as the host passes it.
pub type ConfigPairs = Vec<(String, String)>;

/// `init`: a fresh policy from `config`, replacing any previous one.
pub fn init<P: Policy>(slot: &Slot<P>, config: ConfigPairs) -> Result<(), PolicyError> {
    let config = Config::from_pairs(config)?;
    let policy = P::init(&config)?;
    *borrow_mut(slot)? = Some(policy);
    Ok(())
}

/// `process`: one batch through the policy.
pub fn process<P: Policy>(slot: &Slot<P>, batch: Vec<Reading>) -> Result<Vec<Action>, PolicyError> {
    let mut policy = borrow_mut(slot)?;
    let Some(policy) = policy.as_mut() else {
        return Err(PolicyError::Failed("process called before init or restore".into()));
    };
    let mut actions = Vec::new();
    policy.process(&batch, &mut actions)?;
    Ok(actions)
}

/// `snapshot`: the policy's state as DAG-CBOR.
///
/// The contract gives `snapshot` no error, so a state that cannot be encoded, or a snapshot before `init`, traps;
/// the host then keeps the instance's last good snapshot and counts a failure against this version.
pub fn snapshot<P: Policy>(slot: &Slot<P>) -> Vec<u8> {
    let policy = slot.borrow();
    let Some(policy) = policy.as_ref() else {
        panic!("snapshot called before init or restore");
    };
    match encode_state(policy) {
        Ok(bytes) => bytes,
        Err(error) => panic!("snapshot: {error}"),
    }
}

/// `restore`: the policy decoded from `state`, then reconfigured with `config`.
pub fn restore<P: Policy>(slot: &Slot<P>, config: ConfigPairs, state: Vec<u8>) -> Result<(), PolicyError> {
    let config = Config::from_pairs(config)?;
    let mut policy: P = decode_state(&state)?;
    policy.reconfigure(&config)?;
    *borrow_mut(slot)? = Some(policy);
    Ok(())
}

fn borrow_mut<P>(slot: &Slot<P>) -> Result<std::cell::RefMut<'_, Option<P>>, PolicyError> {
    slot.try_borrow_mut()
        .map_err(|_| PolicyError::Failed("policy state re-entered".into()))
}
