//! What an operator asks for: the release, the plan of waves, the gates and
//! the limits. Plain data with defaults, checked by [`RolloutSpec::validate`].

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// Milliseconds: since the Unix epoch on a server, since the start of a run
/// in the simulator. The controller never reads a clock; every call takes
/// `now`.
pub type Millis = u64;

/// Milliseconds in a minute.
pub const MINUTE_MS: Millis = 60_000;
/// Milliseconds in an hour.
pub const HOUR_MS: Millis = 60 * MINUTE_MS;

/// A signed release set, as the director names it to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReleaseRef {
    /// The release set's version (`release-sets/<version>.json`).
    pub version: u64,
    /// Its security counter. A device never installs below its committed
    /// counter, so a fleet can roll back only to a set with the same one.
    pub security_counter: u64,
}

/// One rollout as the operator asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// The rollout's name, unique on the server (`[A-Za-z0-9._-]`, at most
    /// [`Limits::rollout_id_len_max`] bytes).
    pub id: String,
    /// The release set every device of the group should end up running.
    pub release: ReleaseRef,
    /// Waves, rate, soak, approval and selection.
    pub plan: PlanSpec,
    /// When a wave promotes, holds, pauses or aborts.
    pub gates: GateSpec,
    /// Bounds on everything the rollout accepts and does.
    pub limits: Limits,
    /// The whole rollout must finish this long after it starts; at the
    /// deadline it stops starting waves and says so (status `expired`).
    pub deadline_ms: Millis,
}

impl RolloutSpec {
    /// A spec with the default plan, gates and limits.
    pub fn new(id: impl Into<String>, release: ReleaseRef) -> RolloutSpec {
        RolloutSpec {
            id: id.into(),
            release,
            plan: PlanSpec::default(),
            gates: GateSpec::default(),
            limits: Limits::default(),
            deadline_ms: 7 * 24 * HOUR_MS,
        }
    }

    /// Checks every field; the error names the field and its bound.
    pub fn validate(&self) -> Result<(), SpecError> {
        let limits = &self.limits;
        if self.id.is_empty()
            || self.id.len() > limits.rollout_id_len_max
            || !self
                .id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        {
            return Err(SpecError::Invalid {
                field: "id",
                reason: format!(
                    "must be 1 to {} (rollout_id_len_max) characters of A-Z a-z 0-9 . _ -",
                    limits.rollout_id_len_max
                ),
            });
        }
        self.plan.validate(limits)?;
        self.gates.validate(limits)?;
        if self.deadline_ms == 0 {
            return Err(invalid("deadline_ms", "must be more than zero"));
        }
        if limits.install_timeout_ms == 0 {
            return Err(invalid("limits.install_timeout_ms", "must be more than zero"));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: &str) -> SpecError {
    SpecError::Invalid {
        field,
        reason: reason.to_owned(),
    }
}

/// The first wave.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Canary {
    /// Exactly this many devices (or the whole group, if smaller).
    Count(u32),
    /// A share of the group, but at least `min` devices.
    Percent {
        /// Percent of the eligible devices, in (0, 100].
        percent: f64,
        /// The smallest canary, whatever the percentage gives.
        min: u32,
    },
}

/// The waves after the canary, as cumulative shares of the group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ramp {
    /// Cumulative percentages, increasing; 100 is added if missing.
    Percents(Vec<f64>),
    /// Each wave multiplies the cumulative count by `factor` until the whole
    /// group is in (AWS IoT Jobs' exponential rollout).
    Exponential {
        /// Growth per wave, more than 1.
        factor: f64,
    },
}

/// How the random selection is spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spread {
    /// One pool: waves are prefixes of the seeded order.
    None,
    /// Each hardware class gets its share of every wave.
    HardwareClass,
    /// Each combination of hardware class and tags gets its share.
    HardwareClassAndTags,
}

/// Which waves wait for an operator before they start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// None: every wave starts when the previous one promoted.
    None,
    /// Every wave after the canary.
    EveryWave,
    /// These waves (0 is the canary; listing it makes the start wait).
    Waves(Vec<u32>),
}

/// The plan: waves, rate, soak, approval and seeded selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSpec {
    /// The first wave.
    pub canary: Canary,
    /// The waves after it.
    pub ramp: Ramp,
    /// At most this many devices told to install per minute, throughout
    /// (retries and rollback included). AWS IoT Jobs' maximum is 1,000.
    pub devices_per_minute_max: u32,
    /// Each wave is observed at least this long after its last device was
    /// told to install, before it may promote.
    pub soak_ms: Millis,
    /// Which waves need an operator's `promote` to start.
    pub approval: Approval,
    /// The seed of the selection: the same seed, group and plan give the
    /// same waves.
    pub seed: u64,
    /// Spread each wave across hardware classes (and tags).
    pub spread: Spread,
    /// The canary takes at least this many devices of every hardware class
    /// (or all of a smaller class), so a class is never first updated
    /// outside the canary.
    pub canary_per_class_min: u32,
}

impl Default for PlanSpec {
    fn default() -> PlanSpec {
        PlanSpec {
            canary: Canary::Percent { percent: 1.0, min: 200 },
            ramp: Ramp::Percents(vec![10.0, 50.0, 100.0]),
            devices_per_minute_max: 1_000,
            soak_ms: HOUR_MS,
            approval: Approval::None,
            seed: 0,
            spread: Spread::HardwareClass,
            canary_per_class_min: 50,
        }
    }
}

impl PlanSpec {
    fn validate(&self, limits: &Limits) -> Result<(), SpecError> {
        match self.canary {
            Canary::Count(0) => return Err(invalid("plan.canary", "a canary of zero devices proves nothing")),
            Canary::Count(_) => {}
            Canary::Percent { percent, .. } => {
                if !(percent > 0.0 && percent <= 100.0) {
                    return Err(invalid("plan.canary.percent", "must be in (0, 100]"));
                }
            }
        }
        match &self.ramp {
            Ramp::Percents(percents) => {
                if percents.len() + 1 > limits.waves_max as usize {
                    return Err(SpecError::Limit {
                        limit: "waves_max",
                        max: u64::from(limits.waves_max),
                        got: percents.len() as u64 + 1,
                    });
                }
                let mut previous = 0.0;
                for percent in percents {
                    if !(*percent > previous && *percent <= 100.0) {
                        return Err(invalid(
                            "plan.ramp",
                            "percentages must increase strictly and stay within (0, 100]",
                        ));
                    }
                    previous = *percent;
                }
            }
            Ramp::Exponential { factor } => {
                if !(*factor > 1.0 && factor.is_finite()) {
                    return Err(invalid("plan.ramp.factor", "must be more than 1"));
                }
            }
        }
        if self.devices_per_minute_max == 0 {
            return Err(invalid("plan.devices_per_minute_max", "must be more than zero"));
        }
        Ok(())
    }
}

/// A health signal every agent reports (molt-protocol's `Health`), counted
/// per device after its update and compared with the control group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Policy traps.
    Traps,
    /// Policy reverts (a live swap that went back).
    Reverts,
    /// Policy errors: error results, fuel or memory exhausted.
    PolicyErrors,
    /// Agent process restarts (not counting the install's own).
    Restarts,
    /// Going silent for longer than `offline_after_ms`.
    Offline,
}

impl Signal {
    /// Every signal, in report order.
    pub const ALL: [Signal; 5] = [
        Signal::Traps,
        Signal::Reverts,
        Signal::PolicyErrors,
        Signal::Restarts,
        Signal::Offline,
    ];

    /// Its name in evidence and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traps => "traps",
            Signal::Reverts => "reverts",
            Signal::PolicyErrors => "policy_errors",
            Signal::Restarts => "restarts",
            Signal::Offline => "offline",
        }
    }
}

/// What a failed gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    /// Stop and move every updated device back to its previous release set.
    Abort,
    /// Stop where it stands and wait for an operator.
    Pause,
}

/// A gate on one health signal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SignalGate {
    /// The signal.
    pub signal: Signal,
    /// The gate fails when the updated devices' rate is significantly more
    /// than this many times the control group's (1.2: 20 % worse is
    /// tolerated, more is not).
    pub tolerated_ratio: f64,
    /// What failing does.
    pub on_fail: OnFail,
}

/// Which way an operator-named metric goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Larger is worse (latency, error rate, temperature).
    HigherIsWorse,
    /// Smaller is worse (throughput, battery left).
    LowerIsWorse,
}

/// A gate on an operator-named telemetry metric (one mean per device over
/// its window).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricGate {
    /// The telemetry metric's name.
    pub name: String,
    /// Which way is worse.
    pub direction: Direction,
    /// The smallest shift of the mean, in the metric's unit, that matters;
    /// a significant but smaller shift passes.
    pub min_effect: f64,
    /// What failing does.
    pub on_fail: OnFail,
}

/// The gates every wave passes before the next starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSpec {
    /// No health decision before this many updated devices of the wave have
    /// been observed for `min_exposure_ms` (or all of a smaller wave).
    pub min_sample: u32,
    /// A device counts towards the sample after this long on the release.
    pub min_exposure_ms: Millis,
    /// The wave's install failure rate may be at most this.
    pub install_failure_rate_max: f64,
    /// The probability, over the whole rollout, of stopping a release that
    /// is no worse than tolerated (false abort). Split over every test of
    /// every look (Bonferroni), so repeated looks cannot inflate it.
    pub alpha: f64,
    /// Looks (evaluations) the alpha is split over; when they are used up,
    /// the rollout pauses for an operator rather than look again.
    pub looks_max: u32,
    /// Time between looks.
    pub look_interval_ms: Millis,
    /// A device silent this long is offline.
    pub offline_after_ms: Millis,
    /// Gates on the agents' health signals.
    pub signals: Vec<SignalGate>,
    /// Gates on operator-named metrics.
    pub metrics: Vec<MetricGate>,
    /// Also test each hardware class on its own (a release that is bad on
    /// one class of four is diluted in the whole).
    pub per_class: bool,
}

impl Default for GateSpec {
    fn default() -> GateSpec {
        GateSpec {
            min_sample: 200,
            min_exposure_ms: 10 * MINUTE_MS,
            install_failure_rate_max: 0.05,
            alpha: 0.01,
            looks_max: 500,
            look_interval_ms: 10 * MINUTE_MS,
            offline_after_ms: 15 * MINUTE_MS,
            signals: Signal::ALL
                .iter()
                .map(|signal| SignalGate {
                    signal: *signal,
                    tolerated_ratio: 1.5,
                    on_fail: OnFail::Abort,
                })
                .collect(),
            metrics: Vec::new(),
            per_class: true,
        }
    }
}

impl GateSpec {
    fn validate(&self, limits: &Limits) -> Result<(), SpecError> {
        if self.min_sample == 0 {
            return Err(invalid("gates.min_sample", "must be at least 1"));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(invalid("gates.alpha", "must be in (0, 1)"));
        }
        if !(0.0..=1.0).contains(&self.install_failure_rate_max) {
            return Err(invalid("gates.install_failure_rate_max", "must be in [0, 1]"));
        }
        if self.looks_max == 0 || self.look_interval_ms == 0 || self.offline_after_ms == 0 {
            return Err(invalid(
                "gates.looks_max, look_interval_ms, offline_after_ms",
                "must be more than zero",
            ));
        }
        for gate in &self.signals {
            if !(gate.tolerated_ratio >= 1.0 && gate.tolerated_ratio.is_finite()) {
                return Err(invalid("gates.signals.tolerated_ratio", "must be at least 1"));
            }
        }
        let metric_gates_max = limits.metric_gates_max.min(METRIC_GATES_MAX);
        if self.metrics.len() > metric_gates_max {
            return Err(SpecError::Limit {
                limit: "metric_gates_max",
                max: metric_gates_max as u64,
                got: self.metrics.len() as u64,
            });
        }
        for gate in &self.metrics {
            if gate.name.is_empty() || gate.name.len() > limits.name_len_max {
                return Err(invalid("gates.metrics.name", "must be 1 to name_len_max bytes"));
            }
            if !(gate.min_effect >= 0.0 && gate.min_effect.is_finite()) {
                return Err(invalid("gates.metrics.min_effect", "must be a finite number >= 0"));
            }
        }
        Ok(())
    }
}

/// Operator-named metrics a rollout can gate on; each costs every device a
/// running sum.
pub const METRIC_GATES_MAX: usize = 4;

/// Every bound on what a rollout accepts and does, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Devices in one rollout, joiners included.
    pub devices_max: u32,
    /// Hardware classes in one rollout.
    pub classes_max: u32,
    /// Tags on one device.
    pub tags_per_device_max: u32,
    /// Bytes in a device id, hardware class, tag or metric name.
    pub name_len_max: usize,
    /// Bytes in the rollout's id.
    pub rollout_id_len_max: usize,
    /// Waves, canary included.
    pub waves_max: u32,
    /// Operator-named metric gates (at most [`METRIC_GATES_MAX`]).
    pub metric_gates_max: usize,
    /// A device that did not report its install this long after being told
    /// is told again ...
    pub install_timeout_ms: Millis,
    /// ... at most this many more times, then counted as unreachable.
    pub install_retries_max: u8,
    /// Decisions kept in the state (the newest; the first of each wave is
    /// always kept).
    pub decisions_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            devices_max: 1_000_000,
            classes_max: 256,
            tags_per_device_max: 16,
            name_len_max: 128,
            rollout_id_len_max: 64,
            waves_max: 32,
            metric_gates_max: METRIC_GATES_MAX,
            install_timeout_ms: 30 * MINUTE_MS,
            install_retries_max: 3,
            decisions_max: 1_000,
        }
    }
}
