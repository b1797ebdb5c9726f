//! The in-process fleet simulator: a modelled fleet of any size, on a
//! simulated clock, with no sockets, driving the same [`Rollout`] the server
//! drives.
//!
//! Every device has a hardware class, tags, a per-device trap proneness and
//! metric offset, and a life: it goes offline and comes back (churn),
//! reports health every [`SimConfig::report_every_ms`] (counts of traps,
//! reverts, policy errors and restarts since its last report, drawn as
//! Poisson processes, and one sample of the operator metric), and installs
//! what the director tells it when it is online. [`Effect`]s change that
//! behaviour per release and hardware class: install failures, a trap rate
//! multiplied, going offline after the update, a metric that drifts.
//!
//! A run is a pure function of its [`SimConfig`] and [`RolloutSpec`]: the
//! same seed replays the same run, decision for decision.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::controller::{ActionKind, DeviceInfo, DeviceIx, HealthDelta, Phase, Rollout, Status};
use crate::error::RolloutError;
use crate::gate::{Decision, Outcome};
use crate::plan::mix;
use crate::spec::{
    Canary, Direction, GateSpec, HOUR_MS, MINUTE_MS, MetricGate, Millis, OnFail, PlanSpec, Ramp, ReleaseRef,
    RolloutSpec, Spread,
};

/// A hardware class and its share of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassShare {
    /// The class's name.
    pub name: String,
    /// Its share of the devices (shares are normalised).
    pub share: f64,
}

/// How healthy devices behave, whatever they run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    /// Traps per device-hour.
    pub traps_per_hour: f64,
    /// Share of devices whose trap rate is `flaky_factor` times higher
    /// (overdispersion: real fleets have a few noisy devices).
    pub flaky_share: f64,
    /// How much more a flaky device traps.
    pub flaky_factor: f64,
    /// Reverts per device-hour.
    pub reverts_per_hour: f64,
    /// Policy errors per device-hour.
    pub policy_errors_per_hour: f64,
    /// Restarts per device-hour.
    pub restarts_per_hour: f64,
    /// Times per device-hour a device drops offline (and comes back).
    pub churn_per_hour: f64,
    /// Mean time offline when it drops, milliseconds.
    pub offline_mean_ms: Millis,
    /// The operator metric's fleet mean.
    pub metric_mean: f64,
    /// Spread of the per-device mean around it.
    pub metric_device_sd: f64,
    /// Noise of one sample around the device's mean.
    pub metric_sample_sd: f64,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            traps_per_hour: 0.1,
            flaky_share: 0.0,
            flaky_factor: 1.0,
            reverts_per_hour: 0.005,
            policy_errors_per_hour: 0.05,
            restarts_per_hour: 0.01,
            churn_per_hour: 0.01,
            offline_mean_ms: 30 * MINUTE_MS,
            metric_mean: 20.0,
            metric_device_sd: 2.0,
            metric_sample_sd: 3.0,
        }
    }
}

/// A change of behaviour a release brings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "effect")]
pub enum Effect {
    /// No change.
    Healthy,
    /// Installing it fails with this probability (the device stays on its
    /// release).
    InstallFails {
        /// Probability per install.
        probability: f64,
    },
    /// Traps at this many times the device's rate.
    Traps {
        /// Multiplier.
        factor: f64,
    },
    /// A share of the devices that install it go offline for good, within
    /// `within_ms` of the install.
    OfflineAfterUpdate {
        /// Share of updated devices.
        probability: f64,
        /// They go offline uniformly within this time.
        within_ms: Millis,
    },
    /// The operator metric's mean shifts by this much.
    MetricDrift {
        /// Shift, in the metric's unit.
        shift: f64,
    },
}

/// An effect of one release, on one hardware class or all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// The release set version it applies to.
    pub release: u64,
    /// The hardware class, or every class.
    pub class: Option<String>,
    /// The effect.
    pub effect: Effect,
}

/// Devices that join the group during the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joiners {
    /// When, after the start.
    pub at_ms: Millis,
    /// How many.
    pub count: u32,
    /// Their hardware class (it may be one the fleet did not have).
    pub class: String,
}

/// A simulated fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Devices at the start.
    pub devices: u32,
    /// The seed of everything random in the fleet (the rollout's selection
    /// has its own, in the plan).
    pub seed: u64,
    /// Hardware classes.
    pub classes: Vec<ClassShare>,
    /// Tags, each carried by a device with this probability.
    pub tags: Vec<(String, f64)>,
    /// The release set the fleet runs.
    pub from: ReleaseRef,
    /// Healthy behaviour.
    pub background: Behaviour,
    /// Per-release, per-class effects.
    pub models: Vec<Model>,
    /// Devices joining mid-run.
    pub joiners: Vec<Joiners>,
    /// The clock advances this much per step (the controller is stepped
    /// every time).
    pub step_ms: Millis,
    /// Each device reports health this often (staggered across devices).
    pub report_every_ms: Millis,
    /// Time from being told to reporting the install.
    pub install_ms: Millis,
    /// The run stops here if the rollout has not ended.
    pub duration_max_ms: Millis,
    /// The operator metric's name (also the gate's, when gated).
    pub metric: String,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            devices: 320_000,
            seed: 1,
            classes: [("rpi4", 0.4), ("imx8", 0.3), ("stm32mp1", 0.2), ("jetson", 0.1)]
                .iter()
                .map(|(name, share)| ClassShare {
                    name: (*name).to_owned(),
                    share: *share,
                })
                .collect(),
            tags: vec![("eu".to_owned(), 0.5), ("mains".to_owned(), 0.3)],
            from: ReleaseRef {
                version: 1,
                security_counter: 1,
            },
            background: Behaviour::default(),
            models: Vec::new(),
            joiners: Vec::new(),
            step_ms: MINUTE_MS,
            report_every_ms: 5 * MINUTE_MS,
            install_ms: 2 * MINUTE_MS,
            duration_max_ms: 3 * 24 * HOUR_MS,
            metric: "latency_ms".to_owned(),
        }
    }
}

/// The default plan and gates of the scenarios: a 1 % canary of at least
/// 500, then 5 %, 25 % and 100 %, 5,000 devices a minute, an hour's soak,
/// every health signal and the latency metric gated.
pub fn scenario_spec(release: ReleaseRef, seed: u64) -> RolloutSpec {
    let mut spec = RolloutSpec::new("sim", release);
    spec.plan = PlanSpec {
        canary: Canary::Percent { percent: 1.0, min: 500 },
        ramp: Ramp::Percents(vec![5.0, 25.0, 100.0]),
        devices_per_minute_max: 5_000,
        soak_ms: HOUR_MS,
        seed,
        spread: Spread::HardwareClass,
        ..PlanSpec::default()
    };
    spec.gates = GateSpec {
        min_sample: 500,
        metrics: vec![MetricGate {
            name: "latency_ms".to_owned(),
            direction: Direction::HigherIsWorse,
            min_effect: 1.0,
            on_fail: OnFail::Abort,
        }],
        ..GateSpec::default()
    };
    spec.deadline_ms = 2 * 24 * HOUR_MS;
    spec
}

/// The named scenarios of issue 12 (6, the server restart, needs the
/// server).
pub const SCENARIOS: &[&str] = &["healthy", "class-traps", "offline", "metric-drift", "noisy", "joiners"];

/// A named scenario at `devices` devices: the fleet, and the rollout.
pub fn scenario(name: &str, devices: u32, seed: u64) -> Option<(SimConfig, RolloutSpec)> {
    let mut config = SimConfig {
        devices,
        seed,
        ..SimConfig::default()
    };
    let release = ReleaseRef {
        version: 2,
        security_counter: 1,
    };
    let spec = scenario_spec(release, seed);
    let model = |class: Option<&str>, effect| Model {
        release: release.version,
        class: class.map(str::to_owned),
        effect,
    };
    match name {
        "healthy" => {}
        "class-traps" => config.models.push(model(Some("jetson"), Effect::Traps { factor: 3.0 })),
        "offline" => config.models.push(model(
            None,
            Effect::OfflineAfterUpdate {
                probability: 0.03,
                within_ms: 30 * MINUTE_MS,
            },
        )),
        "metric-drift" => config.models.push(model(None, Effect::MetricDrift { shift: 2.0 })),
        "noisy" => {
            config.background = Behaviour {
                traps_per_hour: 0.3,
                flaky_share: 0.05,
                flaky_factor: 10.0,
                reverts_per_hour: 0.02,
                policy_errors_per_hour: 0.2,
                restarts_per_hour: 0.05,
                churn_per_hour: 0.05,
                offline_mean_ms: HOUR_MS,
                metric_mean: 20.0,
                metric_device_sd: 4.0,
                metric_sample_sd: 8.0,
            };
        }
        "joiners" => {
            let share = (devices / 100).max(10);
            config.joiners = vec![
                // During the canary: they must wait for it.
                Joiners {
                    at_ms: 10 * MINUTE_MS,
                    count: share,
                    class: "rpi4".to_owned(),
                },
                // A class the canary never saw: never updated by this rollout.
                Joiners {
                    at_ms: 20 * MINUTE_MS,
                    count: share / 10,
                    class: "rpi5".to_owned(),
                },
                // After the canary promoted: they enter the current wave.
                Joiners {
                    at_ms: 3 * HOUR_MS,
                    count: share,
                    class: "imx8".to_owned(),
                },
            ];
        }
        _ => return None,
    }
    Some((config, spec))
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    /// Devices at the end, joiners included.
    pub devices: u64,
    /// The rollout's final status (`completed`, `rolled_back`, `paused`, ...).
    pub outcome: String,
    /// Waves started, of the plan's.
    pub waves_started: u32,
    /// Waves planned.
    pub waves: u32,
    /// Devices running the new release at the end.
    pub updated_at_end: u64,
    /// Devices that ever ran the new release.
    pub ever_updated: u64,
    /// Devices that ever ran the new release where it is modelled as bad
    /// (traps, offline or drift on their class).
    pub affected_bad: u64,
    /// Devices moved back to their previous release.
    pub rolled_back: u64,
    /// Devices whose install failed, or that never reported it after every
    /// retry (they stay on their release).
    pub not_installed: u64,
    /// Joiners, and how many were told to install before the canary
    /// promoted (must be 0), how many ended updated, and how many of a
    /// class the canary never saw were ever told (must be 0).
    pub joiners: u64,
    /// See `joiners`.
    pub joiners_told_before_canary: u64,
    /// See `joiners`.
    pub joiners_updated: u64,
    /// See `joiners`.
    pub joiners_unseen_class_told: u64,
    /// Simulated time at the end.
    pub sim_ms: Millis,
    /// Wave starts as the run saw them (each wave exactly once).
    pub wave_starts: Vec<(u32, Millis)>,
    /// The last decision that was not a hold.
    pub deciding: Option<Decision>,
    /// Every non-hold decision's outcome and reason, in order.
    pub decisions: Vec<(u32, Outcome, String)>,
}

impl SimReport {
    /// One line: what happened.
    pub fn line(&self) -> String {
        let why = self.deciding.as_ref().map_or_else(String::new, |decision| {
            format!(" wave={} reason=\"{}\"", decision.wave, decision.reason)
        });
        format!(
            "outcome={} waves={}/{} devices={} ever-updated={} not-installed={} affected-bad={} rolled-back={} sim-time={:.1}h{}",
            self.outcome,
            self.waves_started,
            self.waves,
            self.devices,
            self.ever_updated,
            self.not_installed,
            self.affected_bad,
            self.rolled_back,
            self.sim_ms as f64 / HOUR_MS as f64,
            why
        )
    }
}

/// SplitMix64: small, fast and plenty for a simulation (not for keys).
struct SimRng(u64);

impl SimRng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0.wrapping_sub(0x9e37_79b9_7f4a_7c15))
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with this mean, in milliseconds (`Millis::MAX` for an
    /// infinite mean).
    fn exp_ms(&mut self, mean_ms: f64) -> Millis {
        if !mean_ms.is_finite() || mean_ms <= 0.0 {
            return Millis::MAX;
        }
        let value = -mean_ms * self.unit().ln();
        if value >= 1e18 { Millis::MAX } else { value as Millis }
    }

    fn normal(&mut self) -> f64 {
        let radius = (-2.0 * self.unit().ln()).sqrt();
        radius * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// What one release does to one class, folded from the models.
#[derive(Debug, Clone, Copy)]
struct Folded {
    install_fail: f64,
    trap_factor: f64,
    offline_probability: f64,
    offline_within_ms: Millis,
    metric_shift: f64,
    bad: bool,
}

fn fold(models: &[Model], release: u64, class: &str) -> Folded {
    let mut folded = Folded {
        install_fail: 0.0,
        trap_factor: 1.0,
        offline_probability: 0.0,
        offline_within_ms: 0,
        metric_shift: 0.0,
        bad: false,
    };
    for model in models {
        if model.release != release || model.class.as_deref().is_some_and(|only| only != class) {
            continue;
        }
        match model.effect {
            Effect::Healthy => {}
            Effect::InstallFails { probability } => folded.install_fail = probability,
            Effect::Traps { factor } => {
                folded.trap_factor *= factor;
                folded.bad |= factor > 1.0;
            }
            Effect::OfflineAfterUpdate { probability, within_ms } => {
                folded.offline_probability = probability;
                folded.offline_within_ms = within_ms;
                folded.bad |= probability > 0.0;
            }
            Effect::MetricDrift { shift } => {
                folded.metric_shift += shift;
                folded.bad |= shift != 0.0;
            }
        }
    }
    folded
}

/// One modelled device.
struct SimDevice {
    class: u16,
    running: u64,
    trap_proneness: f32,
    metric_offset: f32,
    online: bool,
    /// When it next drops offline (online) or comes back (offline).
    next_flip_at: Millis,
    /// Goes offline for good at this time.
    dies_at: Millis,
    next_event_at: [Millis; 4],
    advanced_to: Millis,
    ever_updated: bool,
    joiner: bool,
    joined_at: Millis,
}

struct Fleet<'a> {
    config: &'a SimConfig,
    rng: SimRng,
    devices: Vec<SimDevice>,
    classes: Vec<String>,
    /// `[running is the new release][class]`.
    folded: Vec<[Folded; 2]>,
    new_release: u64,
}

impl Fleet<'_> {
    fn class_index(&mut self, name: &str) -> u16 {
        if let Some(position) = self.classes.iter().position(|class| class == name) {
            return position as u16;
        }
        self.classes.push(name.to_owned());
        let old = fold(&self.config.models, self.config.from.version, name);
        let new = fold(&self.config.models, self.new_release, name);
        self.folded.push([old, new]);
        (self.classes.len() - 1) as u16
    }

    fn folded(&self, device: &SimDevice) -> Folded {
        self.folded[device.class as usize][usize::from(device.running == self.new_release)]
    }

    fn rates(&self, device: &SimDevice) -> [f64; 4] {
        let background = &self.config.background;
        let folded = self.folded(device);
        [
            background.traps_per_hour * f64::from(device.trap_proneness) * folded.trap_factor,
            background.reverts_per_hour,
            background.policy_errors_per_hour,
            background.restarts_per_hour,
        ]
    }

    fn resample_events(&mut self, ix: usize, now: Millis) {
        let rates = self.rates(&self.devices[ix]);
        for (signal, rate) in rates.iter().enumerate() {
            let next = now.saturating_add(self.rng.exp_ms(HOUR_MS as f64 / rate));
            self.devices[ix].next_event_at[signal] = next;
        }
    }

    fn add_device(&mut self, class: u16, now: Millis, joiner: bool) -> usize {
        let background = &self.config.background;
        let flaky = self.rng.unit() < background.flaky_share;
        let device = SimDevice {
            class,
            running: self.config.from.version,
            trap_proneness: if flaky { background.flaky_factor as f32 } else { 1.0 },
            metric_offset: (self.rng.normal() * background.metric_device_sd) as f32,
            online: true,
            next_flip_at: now.saturating_add(self.rng.exp_ms(HOUR_MS as f64 / background.churn_per_hour)),
            dies_at: Millis::MAX,
            next_event_at: [Millis::MAX; 4],
            advanced_to: now,
            ever_updated: false,
            joiner,
            joined_at: now,
        };
        self.devices.push(device);
        let ix = self.devices.len() - 1;
        self.resample_events(ix, now);
        ix
    }

    /// Brings a device's churn up to `now`.
    fn advance(&mut self, ix: usize, now: Millis) {
        let background_churn = self.config.background.churn_per_hour;
        let offline_mean = self.config.background.offline_mean_ms as f64;
        loop {
            let device = &self.devices[ix];
            if device.next_flip_at > now {
                break;
            }
            let flip_at = device.next_flip_at;
            let next = if device.online {
                flip_at.saturating_add(self.rng.exp_ms(offline_mean))
            } else {
                flip_at.saturating_add(self.rng.exp_ms(HOUR_MS as f64 / background_churn))
            };
            let device = &mut self.devices[ix];
            device.online = !device.online;
            device.next_flip_at = next;
        }
        let device = &mut self.devices[ix];
        if device.dies_at <= now {
            device.online = false;
            device.next_flip_at = Millis::MAX;
        }
        device.advanced_to = now;
    }

    /// Events up to `now` since the last report.
    fn take_events(&mut self, ix: usize, now: Millis) -> [u32; 4] {
        let rates = self.rates(&self.devices[ix]);
        let mut counts = [0u32; 4];
        for signal in 0..4 {
            while self.devices[ix].next_event_at[signal] <= now {
                counts[signal] += 1;
                let gap = self.rng.exp_ms(HOUR_MS as f64 / rates[signal]);
                let device = &mut self.devices[ix];
                device.next_event_at[signal] = device.next_event_at[signal].saturating_add(gap.max(1));
            }
        }
        counts
    }

    fn metric_sample(&mut self, ix: usize) -> f64 {
        let background = &self.config.background;
        let device = &self.devices[ix];
        let shift = self.folded(device).metric_shift;
        let base = background.metric_mean + f64::from(device.metric_offset) + shift;
        base + self.rng.normal() * background.metric_sample_sd
    }
}

/// Runs `spec` on the fleet `config` describes. `on_step` sees the rollout
/// after each step (for progress, or to interrupt and restore it).
pub fn run(
    config: &SimConfig,
    spec: RolloutSpec,
    mut on_step: impl FnMut(Millis, &mut Rollout),
) -> Result<SimReport, RolloutError> {
    let mut fleet = Fleet {
        config,
        rng: SimRng(config.seed ^ 0x5eed_f1ee_7000_0000),
        devices: Vec::with_capacity(config.devices as usize),
        classes: Vec::new(),
        folded: Vec::new(),
        new_release: spec.release.version,
    };
    let total_share: f64 = config.classes.iter().map(|class| class.share).sum();
    let mut infos = Vec::with_capacity(config.devices as usize);
    for n in 0..config.devices {
        let mut pick = fleet.rng.unit() * total_share;
        let mut class_name = config.classes.first().map_or("default", |class| class.name.as_str());
        for class in &config.classes {
            if pick <= class.share {
                class_name = &class.name;
                break;
            }
            pick -= class.share;
        }
        let class = fleet.class_index(class_name);
        let tags = config
            .tags
            .iter()
            .filter(|(_, probability)| fleet.rng.unit() < *probability)
            .map(|(tag, _)| tag.clone())
            .collect();
        fleet.add_device(class, 0, false);
        infos.push(DeviceInfo {
            id: format!("dev-{n:07}"),
            hardware_class: class_name.to_owned(),
            tags,
            release: config.from,
        });
    }
    let mut rollout = Rollout::new(spec, infos, 0)?;
    let install_ms = config.install_ms;
    let report_every = config.report_every_ms.max(config.step_ms).max(1);
    let slices = (report_every / config.step_ms.max(1)).max(1) as usize;
    let metric_slot = rollout.metric_slot(&config.metric);
    // Installs in flight: (due, device, release), due times increasing.
    let mut in_flight: VecDeque<(Millis, usize, ReleaseRef)> = VecDeque::new();
    let mut joiners = config.joiners.clone();
    joiners.sort_by_key(|joiners| joiners.at_ms);
    let mut joiners = joiners.into_iter().peekable();
    let mut wave_starts = Vec::new();
    let mut canary_promoted_at: Option<Millis> = None;
    let mut joiners_told_before_canary = 0;
    let mut joiners_unseen_class_told = 0;
    let known_classes = fleet.classes.len();
    let mut ever_updated = 0u64;
    let mut affected_bad = 0u64;
    let mut now: Millis = 0;
    let mut step_index = 0usize;
    loop {
        // Joiners.
        while let Some(group) = joiners.next_if(|group| group.at_ms <= now) {
            let class = fleet.class_index(&group.class);
            for _ in 0..group.count {
                let ix = fleet.add_device(class, now, true);
                let info = DeviceInfo {
                    id: format!("join-{ix:07}"),
                    hardware_class: group.class.clone(),
                    tags: Vec::new(),
                    release: config.from,
                };
                let joined = rollout.join(info, now)?;
                assert_eq!(joined.0 as usize, ix, "simulator and rollout indices agree");
            }
        }
        // Installs that finish now, on devices online to report them.
        while let Some((due, ix, target)) = in_flight.front().copied() {
            if due > now {
                break;
            }
            in_flight.pop_front();
            fleet.advance(ix, now);
            if !fleet.devices[ix].online {
                continue;
            }
            let installing_new = target.version == fleet.new_release;
            let folded_new = fleet.folded[fleet.devices[ix].class as usize][1];
            let installed = !installing_new || fleet.rng.unit() >= folded_new.install_fail;
            if installed && fleet.devices[ix].running != target.version {
                fleet.devices[ix].running = target.version;
                if installing_new {
                    if !fleet.devices[ix].ever_updated {
                        ever_updated += 1;
                        if folded_new.bad {
                            affected_bad += 1;
                        }
                    }
                    fleet.devices[ix].ever_updated = true;
                    if fleet.rng.unit() < folded_new.offline_probability {
                        let within = (fleet.rng.unit() * folded_new.offline_within_ms as f64) as Millis;
                        fleet.devices[ix].dies_at = now + within;
                    }
                }
                fleet.take_events(ix, now);
                fleet.resample_events(ix, now);
            }
            rollout.observe_install(DeviceIx(ix as u32), now, target.version, installed);
        }
        // Health reports from this slice of the fleet.
        let slice = step_index % slices;
        let mut ix = slice;
        while ix < fleet.devices.len() {
            fleet.advance(ix, now);
            if fleet.devices[ix].online {
                let mut delta = HealthDelta {
                    counts: fleet.take_events(ix, now),
                    ..HealthDelta::default()
                };
                if let Some(slot) = metric_slot {
                    delta.metrics[slot] = fleet.metric_sample(ix);
                    delta.metrics_present = 1 << slot;
                }
                rollout.observe_health(DeviceIx(ix as u32), now, &delta);
            }
            ix += slices;
        }
        // The controller.
        let started_before: Vec<bool> = rollout.waves().iter().map(|wave| wave.started_at.is_some()).collect();
        let actions = rollout.step(now);
        on_step(now, &mut rollout);
        for (wave, state) in rollout.waves().iter().enumerate() {
            if state.started_at.is_some() && !started_before.get(wave).copied().unwrap_or(false) {
                wave_starts.push((wave as u32, now));
            }
        }
        if canary_promoted_at.is_none() && rollout.waves()[0].promoted_at.is_some() {
            canary_promoted_at = Some(now);
        }
        for action in actions {
            let ix = action.device.0 as usize;
            if action.kind != ActionKind::Rollback && fleet.devices[ix].joiner {
                if canary_promoted_at.is_none_or(|at| at > now) || fleet.devices[ix].joined_at > now {
                    joiners_told_before_canary += 1;
                }
                if fleet.devices[ix].class as usize >= known_classes {
                    joiners_unseen_class_told += 1;
                }
            }
            fleet.advance(ix, now);
            if fleet.devices[ix].online {
                in_flight.push_back((now + install_ms, ix, action.release));
            }
        }
        let over = rollout.status().is_terminal() || matches!(rollout.status(), Status::Paused { .. });
        if over || now >= config.duration_max_ms {
            break;
        }
        now += config.step_ms.max(1);
        step_index += 1;
    }
    let decisions: Vec<(u32, Outcome, String)> = rollout
        .decisions()
        .iter()
        .filter(|decision| decision.outcome != Outcome::Hold)
        .map(|decision| (decision.wave, decision.outcome, decision.reason.clone()))
        .collect();
    let deciding = rollout
        .decisions()
        .iter()
        .rev()
        .find(|decision| decision.outcome != Outcome::Hold)
        .cloned();
    let joiner_ixs = || fleet.devices.iter().enumerate().filter(|(_, device)| device.joiner);
    let report = SimReport {
        devices: fleet.devices.len() as u64,
        outcome: status_name(rollout.status()).to_owned(),
        waves_started: rollout.waves().iter().filter(|wave| wave.started_at.is_some()).count() as u32,
        waves: rollout.waves().len() as u32,
        updated_at_end: fleet
            .devices
            .iter()
            .filter(|device| device.running == fleet.new_release)
            .count() as u64,
        ever_updated,
        affected_bad,
        rolled_back: (0..fleet.devices.len())
            .filter(|ix| rollout.phase(DeviceIx(*ix as u32)) == Some(Phase::RolledBack))
            .count() as u64,
        not_installed: (0..fleet.devices.len())
            .filter(|ix| {
                matches!(
                    rollout.phase(DeviceIx(*ix as u32)),
                    Some(Phase::Failed | Phase::Unreachable)
                )
            })
            .count() as u64,
        joiners: joiner_ixs().count() as u64,
        joiners_told_before_canary,
        joiners_updated: joiner_ixs()
            .filter(|(_, device)| device.running == fleet.new_release)
            .count() as u64,
        joiners_unseen_class_told,
        sim_ms: now,
        wave_starts,
        deciding,
        decisions,
    };
    Ok(report)
}

/// The status's name in reports.
pub fn status_name(status: &Status) -> &'static str {
    match status {
        Status::Created => "created",
        Status::Running => "running",
        Status::AwaitingApproval => "awaiting_approval",
        Status::Paused { .. } => "paused",
        Status::RollingBack => "rolling_back",
        Status::RolledBack => "rolled_back",
        Status::Completed => "completed",
        Status::Expired => "expired",
    }
}
