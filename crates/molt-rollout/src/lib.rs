#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
//! molt-rollout: health-gated gray releases to a fleet, and the fleet
//! simulator that proves them.
//!
//! A [`Rollout`] takes a group of devices and a signed release set to waves:
//! a canary (a count, or a percentage with a minimum), then percentages or an
//! exponential ramp, at most `devices_per_minute_max` devices told per
//! minute, each wave soaked and optionally approved by an operator. Devices
//! are picked by a seeded hash of their id, spread across hardware classes
//! (and tags), so the same seed gives the same waves.
//!
//! Every look at a wave compares the devices that updated with the devices
//! not yet updated (the control group) over the same window: install
//! failures; traps, reverts, policy errors, restarts and going offline as
//! rates per device-hour; and operator-named metrics. A look promotes, holds,
//! pauses or aborts; an abort moves every device that was told back to the
//! release set it ran before (the director does this only with a set of the
//! same security counter, so the plan refuses devices it could not move
//! back). Each [`Decision`] keeps its evidence. `docs/rollouts.md` explains
//! the model and the tests.
//!
//! The crate is sans-IO: no clock, no socket, no SQL. The server calls
//! [`Rollout::step`] with the time and the `observe_*` methods with what
//! devices report, persists the rollout (it is `serde`), then sends the
//! returned [`Action`]s as each device's desired state. A rollout read back
//! after a crash resumes where it stood: a wave records its start once, and
//! telling a device again is idempotent.
//!
//! [`sim`] runs a modelled fleet of any size against the same controller on
//! a simulated clock (`molt fleet-sim`).
//!
//! ```
//! use molt_rollout::{DeviceInfo, ReleaseRef, Rollout, RolloutSpec};
//!
//! let old = ReleaseRef { version: 1, security_counter: 1 };
//! let new = ReleaseRef { version: 2, security_counter: 1 };
//! let devices = (0..1_000)
//!     .map(|n| DeviceInfo {
//!         id: format!("gw-{n:04}"),
//!         hardware_class: if n % 2 == 0 { "rpi4" } else { "imx8" }.to_owned(),
//!         tags: Vec::new(),
//!         release: old,
//!     })
//!     .collect();
//! let mut rollout = Rollout::new(RolloutSpec::new("r1", new), devices, 0).unwrap();
//! let preview = rollout.preview();
//! assert_eq!(preview.waves[0].devices, 200); // the canary's minimum
//! assert!(rollout.step(0).is_empty()); // started; the rate allows no device yet
//! let actions = rollout.step(60_000); // a minute later: up to 1,000 devices
//! assert_eq!(actions.len(), 200); // the whole canary
//! ```

mod claims;
mod controller;
mod error;
mod gate;
mod plan;
pub mod sim;
mod spec;
mod stats;

pub use crate::claims::Claims;
pub use crate::controller::{Action, ActionKind, DeviceInfo, DeviceIx, HealthDelta, Phase, Rollout, Status, WaveState};
pub use crate::error::{CommandError, RolloutError, SpecError};
pub use crate::gate::{Decision, Evidence, GroupFigures, InstallEvidence, Outcome, TestEvidence, TestKind, Verdict};
pub use crate::plan::{PlanPreview, WavePreview};
pub use crate::spec::{
    Approval, Canary, Direction, GateSpec, HOUR_MS, Limits, METRIC_GATES_MAX, MINUTE_MS, MetricGate, Millis, OnFail,
    PlanSpec, Ramp, ReleaseRef, RolloutSpec, Signal, SignalGate, Spread,
};
pub use crate::stats::{MannWhitney, RateSample};
