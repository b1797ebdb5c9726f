//! The rollout controller: one [`Rollout`], its devices, its waves and its
//! decisions, as a serializable value driven by [`Rollout::step`] and the
//! `observe_*` calls.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{CommandError, RolloutError};
use crate::gate::{self, Decision, Outcome};
use crate::plan::{self, PlanPreview, WavePreview};
use crate::spec::{Approval, METRIC_GATES_MAX, Millis, ReleaseRef, RolloutSpec, Spread};

/// A device as the server's registry describes it to a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device id (MQTT client id, certificate CN).
    pub id: String,
    /// Its hardware class.
    pub hardware_class: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// The release set it runs now.
    pub release: ReleaseRef,
}

/// A device's index in one rollout, for fast observation calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceIx(pub u32);

/// Where a device stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Cannot take the release (another security counter, or a newer set).
    Ineligible,
    /// Already runs the release.
    AlreadyCurrent,
    /// Not told yet: part of the control group.
    Pending,
    /// Told to install; waiting for its report.
    Told,
    /// Installed the release.
    Updated,
    /// Reported that the install failed (the device rolled itself back).
    Failed,
    /// Never reported, after every retry.
    Unreachable,
    /// Told to go back to its previous release set.
    RollbackTold,
    /// Back on its previous release set.
    RolledBack,
    /// Never confirmed the rollback, after every retry.
    RollbackUnreachable,
}

/// No wave yet: a device that joined before its hardware class was cleared
/// by the canary.
pub(crate) const UNASSIGNED: u16 = u16::MAX;

/// Counters reported since a device's window started, in
/// [`crate::Signal`] order (the offline signal is derived from `last_seen`).
pub(crate) const COUNTED_SIGNALS: usize = 4;

/// Per-device state, kept compact: 320,000 of these are the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeviceState {
    pub(crate) class: u16,
    pub(crate) stratum: u32,
    pub(crate) wave: u16,
    pub(crate) phase: Phase,
    pub(crate) attempts: u8,
    pub(crate) from: ReleaseRef,
    pub(crate) told_at: Millis,
    pub(crate) window_start: Millis,
    pub(crate) last_seen: Millis,
    pub(crate) counts: [u32; COUNTED_SIGNALS],
    pub(crate) metric_sum: [f64; METRIC_GATES_MAX],
    pub(crate) metric_count: [u32; METRIC_GATES_MAX],
}

impl DeviceState {
    fn reset_window(&mut self, now: Millis) {
        self.window_start = now;
        self.counts = [0; COUNTED_SIGNALS];
        self.metric_sum = [0.0; METRIC_GATES_MAX];
        self.metric_count = [0; METRIC_GATES_MAX];
    }
}

/// What a device reported since its previous report (the server turns the
/// agent's cumulative `Health` counters into these deltas, and takes the
/// install's own restart out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthDelta {
    /// New traps, reverts, policy errors and restarts, in that order.
    pub counts: [u32; COUNTED_SIGNALS],
    /// One value per metric gate slot (see [`Rollout::metric_slot`]), if
    /// `metrics_present` has its bit.
    pub metrics: [f64; METRIC_GATES_MAX],
    /// Bit `i` set: `metrics[i]` is a sample.
    pub metrics_present: u8,
}

/// What the director must do: make `release` the device's desired release
/// set (idempotent: telling a device twice is harmless).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The device.
    pub device: DeviceIx,
    /// The release set it should run.
    pub release: ReleaseRef,
    /// Why.
    pub kind: ActionKind,
}

/// Why an [`Action`] was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// First time in its wave.
    Install,
    /// It did not report in time; told again.
    Retry,
    /// The rollout aborted: back to the set it ran before.
    Rollback,
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Status {
    /// Created, not started.
    Created,
    /// Telling and observing the current wave.
    Running,
    /// The next wave waits for an operator's `promote`.
    AwaitingApproval,
    /// Stopped where it stands, for a human.
    Paused {
        /// Why.
        reason: String,
    },
    /// Moving every updated device back.
    RollingBack,
    /// Every updated device was moved back (or counted unreachable).
    RolledBack,
    /// Every wave promoted.
    Completed,
    /// The deadline passed before the last wave promoted.
    Expired,
}

impl Status {
    /// Whether the rollout is over (its devices are free for another).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Status::RolledBack | Status::Completed | Status::Expired)
    }

    fn name(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::AwaitingApproval => "awaiting approval",
            Status::Paused { .. } => "paused",
            Status::RollingBack => "rolling back",
            Status::RolledBack => "rolled back",
            Status::Completed => "completed",
            Status::Expired => "expired",
        }
    }
}

/// One wave's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveState {
    /// Devices to tell, in order (joiners are appended).
    pub(crate) queue: Vec<u32>,
    /// How many of `queue` were told.
    pub(crate) cursor: usize,
    /// Set exactly once, when the wave starts.
    pub started_at: Option<Millis>,
    /// When its last queued device was told.
    pub dispatched_at: Option<Millis>,
    /// When it promoted.
    pub promoted_at: Option<Millis>,
    /// Whether it waits for an operator to start.
    pub approval: bool,
}

/// A rollout: spec, devices, waves, decisions. Serialize it after every
/// call that changed it and before acting on what it returned; a rollout
/// deserialized from that resumes exactly there (a started wave records its
/// start once, and telling a device again is idempotent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    pub(crate) spec: RolloutSpec,
    pub(crate) status: Status,
    pub(crate) created_at: Millis,
    pub(crate) started_at: Option<Millis>,
    pub(crate) current_wave: usize,
    pub(crate) classes: Vec<String>,
    pub(crate) strata: Vec<String>,
    pub(crate) ids: Vec<String>,
    pub(crate) devices: Vec<DeviceState>,
    pub(crate) waves: Vec<WaveState>,
    /// Classes with at least one device updated in a promoted canary.
    pub(crate) cleared: Vec<bool>,
    pub(crate) decisions: Vec<Decision>,
    pub(crate) looks_used: u32,
    pub(crate) next_look_at: Millis,
    /// Dispatch allowance, in thousandths of a device.
    pub(crate) tokens_milli: u64,
    pub(crate) tokens_at: Millis,
    pub(crate) rollback_queue: Vec<u32>,
    pub(crate) rollback_cursor: usize,
    /// Device indices sorted by id, rebuilt on demand (never persisted).
    #[serde(skip)]
    index: OnceLock<Vec<u32>>,
}

impl Rollout {
    /// Plans a rollout of `spec` to `devices` at `now`. Devices must be
    /// claimed for it first ([`crate::Claims`]).
    pub fn new(spec: RolloutSpec, devices: Vec<DeviceInfo>, now: Millis) -> Result<Rollout, RolloutError> {
        spec.validate()?;
        let limits = spec.limits.clone();
        if devices.len() as u64 > u64::from(limits.devices_max) {
            return Err(RolloutError::Limit {
                limit: "devices_max",
                max: u64::from(limits.devices_max),
                got: devices.len() as u64,
            });
        }
        let waves_planned = 0;
        let mut rollout = Rollout {
            current_wave: 0,
            status: Status::Created,
            created_at: now,
            started_at: None,
            classes: Vec::new(),
            strata: Vec::new(),
            ids: Vec::with_capacity(devices.len()),
            devices: Vec::with_capacity(devices.len()),
            waves: Vec::with_capacity(waves_planned),
            cleared: Vec::new(),
            decisions: Vec::new(),
            looks_used: 0,
            next_look_at: now,
            tokens_milli: 0,
            tokens_at: now,
            rollback_queue: Vec::new(),
            rollback_cursor: 0,
            index: OnceLock::new(),
            spec,
        };
        let mut class_of: BTreeMap<String, u16> = BTreeMap::new();
        let mut stratum_of: BTreeMap<String, u32> = BTreeMap::new();
        for info in devices {
            let (class, stratum) = rollout.classify(&info, &mut class_of, &mut stratum_of)?;
            rollout.push_device(info, class, stratum, now);
        }
        let mut sorted: Vec<u32> = (0..rollout.ids.len() as u32).collect();
        sorted.sort_unstable_by(|left, right| rollout.ids[*left as usize].cmp(&rollout.ids[*right as usize]));
        if let Some(pair) = sorted
            .windows(2)
            .find(|pair| rollout.ids[pair[0] as usize] == rollout.ids[pair[1] as usize])
        {
            return Err(RolloutError::Duplicate(rollout.ids[pair[0] as usize].clone()));
        }
        let _ = rollout.index.set(sorted);

        let eligible: Vec<(u32, u32, u16, u64)> = rollout
            .devices
            .iter()
            .enumerate()
            .filter(|(_, device)| device.phase == Phase::Pending)
            .map(|(ix, device)| {
                (
                    ix as u32,
                    device.stratum,
                    device.class,
                    plan::rank(rollout.spec.plan.seed, &rollout.ids[ix]),
                )
            })
            .collect();
        if eligible.is_empty() {
            let current = rollout.count(Phase::AlreadyCurrent);
            let ineligible = rollout.count(Phase::Ineligible);
            return Err(RolloutError::NoEligibleDevice {
                version: rollout.spec.release.version,
                reason: format!(
                    "{current} already run it, {ineligible} run a set with another security counter or a newer one"
                ),
            });
        }
        let cumulative = plan::cumulative_sizes(&rollout.spec.plan, eligible.len() as u64);
        if cumulative.len() > limits.waves_max as usize {
            return Err(RolloutError::Limit {
                limit: "waves_max",
                max: u64::from(limits.waves_max),
                got: cumulative.len() as u64,
            });
        }
        let assigned = plan::assign_waves(&rollout.spec.plan, &cumulative, &eligible);
        rollout.waves = (0..cumulative.len())
            .map(|wave| WaveState {
                queue: Vec::new(),
                cursor: 0,
                started_at: None,
                dispatched_at: None,
                promoted_at: None,
                approval: match &rollout.spec.plan.approval {
                    Approval::None => false,
                    Approval::EveryWave => wave > 0,
                    Approval::Waves(waves) => waves.contains(&(wave as u32)),
                },
            })
            .collect();
        let mut queued: Vec<Vec<(u64, u32)>> = vec![Vec::new(); cumulative.len()];
        for (entry, wave) in eligible.iter().zip(assigned) {
            rollout.devices[entry.0 as usize].wave = wave;
            queued[wave as usize].push((entry.3, entry.0));
        }
        for (wave, mut members) in queued.into_iter().enumerate() {
            members.sort_unstable();
            rollout.waves[wave].queue = members.into_iter().map(|(_, ix)| ix).collect();
        }
        Ok(rollout)
    }

    fn classify(
        &mut self,
        info: &DeviceInfo,
        class_of: &mut BTreeMap<String, u16>,
        stratum_of: &mut BTreeMap<String, u32>,
    ) -> Result<(u16, u32), RolloutError> {
        let limits = &self.spec.limits;
        let short = |id: &str| id.chars().take(limits.name_len_max).collect::<String>();
        let bad_name = |name: &str| name.is_empty() || name.len() > limits.name_len_max;
        if bad_name(&info.id) {
            return Err(RolloutError::Name {
                device: short(&info.id),
                what: "the id",
                max: limits.name_len_max,
            });
        }
        if bad_name(&info.hardware_class) {
            return Err(RolloutError::Name {
                device: info.id.clone(),
                what: "the hardware class",
                max: limits.name_len_max,
            });
        }
        if info.tags.len() > limits.tags_per_device_max as usize {
            return Err(RolloutError::Limit {
                limit: "tags_per_device_max",
                max: u64::from(limits.tags_per_device_max),
                got: info.tags.len() as u64,
            });
        }
        if info.tags.iter().any(|tag| bad_name(tag)) {
            return Err(RolloutError::Name {
                device: info.id.clone(),
                what: "a tag",
                max: limits.name_len_max,
            });
        }
        if class_of.is_empty() && !self.classes.is_empty() {
            for (position, class) in self.classes.iter().enumerate() {
                class_of.insert(class.clone(), position as u16);
            }
            for (position, stratum) in self.strata.iter().enumerate() {
                stratum_of.insert(stratum.clone(), position as u32);
            }
        }
        let class = match class_of.get(&info.hardware_class) {
            Some(class) => *class,
            None => {
                if self.classes.len() >= limits.classes_max as usize {
                    return Err(RolloutError::Limit {
                        limit: "classes_max",
                        max: u64::from(limits.classes_max),
                        got: self.classes.len() as u64 + 1,
                    });
                }
                let class = self.classes.len() as u16;
                self.classes.push(info.hardware_class.clone());
                self.cleared.push(false);
                class_of.insert(info.hardware_class.clone(), class);
                class
            }
        };
        let stratum_key = match self.spec.plan.spread {
            Spread::None => String::new(),
            Spread::HardwareClass => info.hardware_class.clone(),
            Spread::HardwareClassAndTags => {
                let mut tags = info.tags.clone();
                tags.sort();
                tags.dedup();
                format!("{} [{}]", info.hardware_class, tags.join(","))
            }
        };
        let stratum = match stratum_of.get(&stratum_key) {
            Some(stratum) => *stratum,
            None => {
                let stratum = self.strata.len() as u32;
                self.strata.push(stratum_key.clone());
                stratum_of.insert(stratum_key, stratum);
                stratum
            }
        };
        Ok((class, stratum))
    }

    fn push_device(&mut self, info: DeviceInfo, class: u16, stratum: u32, now: Millis) -> u32 {
        let target = self.spec.release;
        let phase = if info.release == target {
            Phase::AlreadyCurrent
        } else if info.release.security_counter != target.security_counter || info.release.version > target.version {
            Phase::Ineligible
        } else {
            Phase::Pending
        };
        self.ids.push(info.id);
        self.devices.push(DeviceState {
            class,
            stratum,
            wave: UNASSIGNED,
            phase,
            attempts: 0,
            from: info.release,
            told_at: 0,
            window_start: now,
            last_seen: 0,
            counts: [0; COUNTED_SIGNALS],
            metric_sum: [0.0; METRIC_GATES_MAX],
            metric_count: [0; METRIC_GATES_MAX],
        });
        (self.ids.len() - 1) as u32
    }

    fn count(&self, phase: Phase) -> u64 {
        self.devices.iter().filter(|device| device.phase == phase).count() as u64
    }

    fn sorted_index(&self) -> &[u32] {
        self.index.get_or_init(|| {
            let mut sorted: Vec<u32> = (0..self.ids.len() as u32).collect();
            sorted.sort_unstable_by(|left, right| self.ids[*left as usize].cmp(&self.ids[*right as usize]));
            sorted
        })
    }

    /// The index of a device of this rollout.
    pub fn device_index(&self, id: &str) -> Option<DeviceIx> {
        let sorted = self.sorted_index();
        sorted
            .binary_search_by(|ix| self.ids[*ix as usize].as_str().cmp(id))
            .ok()
            .map(|position| DeviceIx(sorted[position]))
    }

    /// The id of a device.
    pub fn device_id(&self, device: DeviceIx) -> Option<&str> {
        self.ids.get(device.0 as usize).map(String::as_str)
    }

    /// The phase of a device.
    pub fn phase(&self, device: DeviceIx) -> Option<Phase> {
        self.devices.get(device.0 as usize).map(|state| state.phase)
    }

    /// The wave a device is in (`None`: a joiner waiting for its class to be
    /// cleared by the canary, or a device not in the rollout's waves).
    pub fn wave_of(&self, device: DeviceIx) -> Option<u32> {
        self.devices
            .get(device.0 as usize)
            .and_then(|state| (state.wave != UNASSIGNED).then_some(u32::from(state.wave)))
    }

    /// The slot of an operator-named metric in [`HealthDelta::metrics`].
    pub fn metric_slot(&self, name: &str) -> Option<usize> {
        self.spec.gates.metrics.iter().position(|gate| gate.name == name)
    }

    /// The spec.
    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }

    /// Where it stands.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The wave being run (or last run).
    pub fn current_wave(&self) -> u32 {
        self.current_wave as u32
    }

    /// The waves.
    pub fn waves(&self) -> &[WaveState] {
        &self.waves
    }

    /// Every decision kept, oldest first.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }

    /// Devices in the rollout, joiners included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it has no device (never true for a created rollout).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Device ids, by index.
    pub fn device_ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter().map(String::as_str)
    }

    /// Devices per phase.
    pub fn phase_counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for device in &self.devices {
            let name = serde_name(device.phase);
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    }

    /// The blast radius: which waves hold how many devices of each class.
    pub fn preview(&self) -> PlanPreview {
        let waves = self
            .waves
            .iter()
            .enumerate()
            .map(|(index, wave)| {
                let mut per_class: BTreeMap<String, u64> = BTreeMap::new();
                for ix in &wave.queue {
                    let class = &self.classes[self.devices[*ix as usize].class as usize];
                    *per_class.entry(class.clone()).or_insert(0) += 1;
                }
                WavePreview {
                    index: index as u32,
                    devices: wave.queue.len() as u64,
                    per_class,
                    approval: wave.approval,
                }
            })
            .collect();
        PlanPreview {
            waves,
            already_current: self.count(Phase::AlreadyCurrent),
            ineligible: self.count(Phase::Ineligible),
        }
    }

    /// The devices of wave `wave`, in the order they are told.
    pub fn wave_devices(&self, wave: u32) -> impl Iterator<Item = &str> {
        self.waves
            .get(wave as usize)
            .into_iter()
            .flat_map(|wave| wave.queue.iter())
            .map(|ix| self.ids[*ix as usize].as_str())
    }

    /// A device joins the group mid-rollout (the caller claimed it). It
    /// never skips the canary: until the canary promoted with devices of its
    /// hardware class, it waits in the control group; after that it enters
    /// the wave being run.
    pub fn join(&mut self, info: DeviceInfo, now: Millis) -> Result<DeviceIx, RolloutError> {
        if self.ids.len() as u64 >= u64::from(self.spec.limits.devices_max) {
            return Err(RolloutError::Limit {
                limit: "devices_max",
                max: u64::from(self.spec.limits.devices_max),
                got: self.ids.len() as u64 + 1,
            });
        }
        if self.device_index(&info.id).is_some() {
            return Err(RolloutError::Duplicate(info.id));
        }
        let (class, stratum) = self.classify(&info, &mut BTreeMap::new(), &mut BTreeMap::new())?;
        let ix = self.push_device(info, class, stratum, now);
        let mut index = self.index.take().unwrap_or_default();
        let position = index
            .binary_search_by(|other| self.ids[*other as usize].cmp(&self.ids[ix as usize]))
            .unwrap_or_else(|position| position);
        index.insert(position, ix);
        let _ = self.index.set(index);
        let device = &mut self.devices[ix as usize];
        let active = matches!(
            self.status,
            Status::Running | Status::AwaitingApproval | Status::Paused { .. }
        );
        if device.phase == Phase::Pending
            && self.current_wave > 0
            && self.cleared[class as usize]
            && active
            && self.waves[self.current_wave].started_at.is_some()
        {
            device.wave = self.current_wave as u16;
            self.waves[self.current_wave].queue.push(ix);
            self.waves[self.current_wave].dispatched_at = None;
        }
        Ok(DeviceIx(ix))
    }

    /// The device was heard from (any message).
    pub fn observe_seen(&mut self, device: DeviceIx, now: Millis) {
        if let Some(state) = self.devices.get_mut(device.0 as usize) {
            state.last_seen = state.last_seen.max(now);
        }
    }

    /// A health report's deltas.
    pub fn observe_health(&mut self, device: DeviceIx, now: Millis, delta: &HealthDelta) {
        let Some(state) = self.devices.get_mut(device.0 as usize) else {
            return;
        };
        state.last_seen = state.last_seen.max(now);
        if now < state.window_start {
            return;
        }
        for (count, new) in state.counts.iter_mut().zip(delta.counts) {
            *count = count.saturating_add(new);
        }
        if delta.metrics_present != 0 {
            for slot in 0..METRIC_GATES_MAX {
                if delta.metrics_present & (1 << slot) != 0 && delta.metrics[slot].is_finite() {
                    state.metric_sum[slot] += delta.metrics[slot];
                    state.metric_count[slot] = state.metric_count[slot].saturating_add(1);
                }
            }
        }
    }

    /// A device reported the outcome of installing `version`. Reports that
    /// do not answer what it was told are ignored (returns `false`): late,
    /// duplicated or replayed reports change nothing.
    pub fn observe_install(&mut self, device: DeviceIx, now: Millis, version: u64, installed: bool) -> bool {
        let target = self.spec.release.version;
        let Some(state) = self.devices.get_mut(device.0 as usize) else {
            return false;
        };
        state.last_seen = state.last_seen.max(now);
        match state.phase {
            Phase::Told | Phase::Unreachable if version == target => {
                if installed {
                    state.phase = Phase::Updated;
                    state.reset_window(now);
                } else {
                    state.phase = Phase::Failed;
                }
                true
            }
            Phase::RollbackTold | Phase::RollbackUnreachable if version == state.from.version && installed => {
                state.phase = Phase::RolledBack;
                true
            }
            _ => false,
        }
    }

    /// Advances the rollout to `now`: starts waves, tells devices within the
    /// rate, retries, looks at the evidence and decides. Returns what the
    /// director must do; persist the rollout before doing it.
    pub fn step(&mut self, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.status == Status::Created {
            self.started_at = Some(now);
            self.tokens_at = now;
            if self.waves[0].approval {
                self.status = Status::AwaitingApproval;
            } else {
                self.status = Status::Running;
                self.start_wave(0, now);
            }
        }
        if self.status.is_terminal() {
            return actions;
        }
        self.refill(now);
        self.retry(now, &mut actions);
        if self.status != Status::RollingBack && now >= self.deadline() {
            self.status = Status::Expired;
            self.record(gate::deadline_decision(self, now));
            return actions;
        }
        match self.status {
            Status::RollingBack => self.dispatch_rollback(now, &mut actions),
            Status::Running => {
                self.dispatch_wave(now, &mut actions);
                if now >= self.next_look_at {
                    self.next_look_at = now + self.spec.gates.look_interval_ms;
                    self.look(now, &mut actions);
                }
            }
            _ => {}
        }
        actions
    }

    /// A look at the current wave's evidence now, without deciding
    /// anything: what `molt rollout status` shows between looks.
    pub fn evaluate(&self, now: Millis) -> Decision {
        gate::evaluate(self, now)
    }

    /// When the rollout must be done by.
    pub fn deadline(&self) -> Millis {
        self.started_at
            .unwrap_or(self.created_at)
            .saturating_add(self.spec.deadline_ms)
    }

    fn refill(&mut self, now: Millis) {
        let rate = u64::from(self.spec.plan.devices_per_minute_max);
        let elapsed = now.saturating_sub(self.tokens_at);
        self.tokens_milli = (self.tokens_milli + elapsed.saturating_mul(rate) / 60).min(rate * 1_000);
        self.tokens_at = now;
    }

    fn take_token(&mut self) -> bool {
        if self.tokens_milli >= 1_000 {
            self.tokens_milli -= 1_000;
            true
        } else {
            false
        }
    }

    fn start_wave(&mut self, wave: usize, now: Millis) {
        assert!(self.waves[wave].started_at.is_none(), "wave {wave} started twice");
        self.current_wave = wave;
        self.waves[wave].started_at = Some(now);
        self.next_look_at = now + self.spec.gates.look_interval_ms;
        // One window for everybody from here: updated devices and the
        // control group are compared over the same stretch of time.
        for device in &mut self.devices {
            if matches!(device.phase, Phase::Pending | Phase::Updated) {
                device.reset_window(now);
            }
        }
        if wave > 0 {
            // Joiners whose class the canary cleared enter here.
            for ix in 0..self.devices.len() {
                let device = &mut self.devices[ix];
                if device.phase == Phase::Pending && device.wave == UNASSIGNED && self.cleared[device.class as usize] {
                    device.wave = wave as u16;
                    self.waves[wave].queue.push(ix as u32);
                }
            }
        }
    }

    fn dispatch_wave(&mut self, now: Millis, actions: &mut Vec<Action>) {
        let wave = self.current_wave;
        while self.waves[wave].cursor < self.waves[wave].queue.len() {
            let ix = self.waves[wave].queue[self.waves[wave].cursor];
            let device = &self.devices[ix as usize];
            if device.phase != Phase::Pending {
                self.waves[wave].cursor += 1;
                continue;
            }
            if !self.take_token() {
                return;
            }
            let release = self.spec.release;
            let device = &mut self.devices[ix as usize];
            device.phase = Phase::Told;
            device.told_at = now;
            device.attempts = 0;
            self.waves[wave].cursor += 1;
            actions.push(Action {
                device: DeviceIx(ix),
                release,
                kind: ActionKind::Install,
            });
        }
        if self.waves[wave].dispatched_at.is_none() {
            self.waves[wave].dispatched_at = Some(now);
        }
    }

    fn retry(&mut self, now: Millis, actions: &mut Vec<Action>) {
        let timeout = self.spec.limits.install_timeout_ms;
        let retries_max = self.spec.limits.install_retries_max;
        let release = self.spec.release;
        for ix in 0..self.devices.len() {
            let device = &self.devices[ix];
            if !matches!(device.phase, Phase::Told | Phase::RollbackTold) || now < device.told_at + timeout {
                continue;
            }
            if device.attempts >= retries_max {
                self.devices[ix].phase = match device.phase {
                    Phase::Told => Phase::Unreachable,
                    _ => Phase::RollbackUnreachable,
                };
                continue;
            }
            if !self.take_token() {
                return;
            }
            let device = &mut self.devices[ix];
            device.attempts += 1;
            device.told_at = now;
            let (release, kind) = match device.phase {
                Phase::Told => (release, ActionKind::Retry),
                _ => (device.from, ActionKind::Rollback),
            };
            actions.push(Action {
                device: DeviceIx(ix as u32),
                release,
                kind,
            });
        }
    }

    fn dispatch_rollback(&mut self, now: Millis, actions: &mut Vec<Action>) {
        while self.rollback_cursor < self.rollback_queue.len() {
            if !self.take_token() {
                return;
            }
            let ix = self.rollback_queue[self.rollback_cursor];
            self.rollback_cursor += 1;
            let device = &mut self.devices[ix as usize];
            device.phase = Phase::RollbackTold;
            device.told_at = now;
            device.attempts = 0;
            actions.push(Action {
                device: DeviceIx(ix),
                release: device.from,
                kind: ActionKind::Rollback,
            });
        }
        if !self.devices.iter().any(|device| device.phase == Phase::RollbackTold) {
            self.status = Status::RolledBack;
        }
    }

    fn look(&mut self, now: Millis, actions: &mut Vec<Action>) {
        self.looks_used += 1;
        let decision = gate::evaluate(self, now);
        let outcome = decision.outcome;
        let reason = decision.reason.clone();
        self.record(decision);
        match outcome {
            Outcome::Hold => {}
            Outcome::Promote => self.promote_wave(now),
            Outcome::Pause => self.status = Status::Paused { reason },
            Outcome::Abort => self.begin_rollback(now, actions),
        }
    }

    fn promote_wave(&mut self, now: Millis) {
        let wave = self.current_wave;
        self.waves[wave].promoted_at = Some(now);
        if wave == 0 {
            for device in &self.devices {
                if device.wave == 0 && device.phase == Phase::Updated {
                    self.cleared[device.class as usize] = true;
                }
            }
        }
        if wave + 1 >= self.waves.len() {
            self.status = Status::Completed;
        } else if self.waves[wave + 1].approval {
            self.current_wave = wave + 1;
            self.status = Status::AwaitingApproval;
        } else {
            self.status = Status::Running;
            self.start_wave(wave + 1, now);
        }
    }

    fn begin_rollback(&mut self, now: Millis, actions: &mut Vec<Action>) {
        self.status = Status::RollingBack;
        self.rollback_queue = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, device)| {
                matches!(
                    device.phase,
                    Phase::Told | Phase::Updated | Phase::Failed | Phase::Unreachable
                )
            })
            .map(|(ix, _)| ix as u32)
            .collect();
        self.rollback_cursor = 0;
        self.dispatch_rollback(now, actions);
    }

    pub(crate) fn record(&mut self, decision: Decision) {
        // A hold replaces the hold before it at the same wave: the newest
        // evidence is what an operator needs, and 500 looks would crowd out
        // the decisions that changed something.
        if let Some(last) = self.decisions.last()
            && last.outcome == Outcome::Hold
            && decision.outcome == Outcome::Hold
            && last.wave == decision.wave
        {
            self.decisions.pop();
        }
        self.decisions.push(decision);
        let max = self.spec.limits.decisions_max.max(1);
        if self.decisions.len() > max {
            let excess = self.decisions.len() - max;
            self.decisions.drain(..excess);
        }
    }

    fn not_now(&self, command: &'static str, hint: &'static str) -> CommandError {
        CommandError::NotNow {
            rollout: self.spec.id.clone(),
            command,
            status: self.status.name().to_owned(),
            hint,
        }
    }

    /// An operator pauses the rollout: no device is told to install until
    /// `resume` (rollback, once begun, is never paused).
    pub fn pause(&mut self, now: Millis, reason: &str) -> Result<(), CommandError> {
        match self.status {
            Status::Created | Status::Running | Status::AwaitingApproval => {
                self.status = Status::Paused {
                    reason: format!("paused by an operator: {reason}"),
                };
                self.record(gate::operator_decision(self, now, Outcome::Pause, reason));
                Ok(())
            }
            _ => Err(self.not_now("pause", "; only a running rollout can be paused")),
        }
    }

    /// An operator resumes a paused rollout where it stood.
    pub fn resume(&mut self, now: Millis) -> Result<(), CommandError> {
        match self.status {
            Status::Paused { .. } => {
                if self.started_at.is_none() {
                    self.status = Status::Created;
                } else if self.waves[self.current_wave].started_at.is_none() {
                    self.status = Status::AwaitingApproval;
                } else {
                    self.status = Status::Running;
                    self.next_look_at = now + self.spec.gates.look_interval_ms;
                }
                self.record(gate::operator_decision(
                    self,
                    now,
                    Outcome::Hold,
                    "resumed by an operator",
                ));
                Ok(())
            }
            _ => Err(self.not_now("resume", "; only a paused rollout resumes")),
        }
    }

    /// An operator promotes: starts a wave waiting for approval, or
    /// overrides the gates of the current wave. Recorded with the evidence
    /// as it stood.
    pub fn promote(&mut self, now: Millis, reason: &str) -> Result<(), CommandError> {
        match self.status {
            Status::AwaitingApproval => {
                let wave = self.current_wave;
                self.record(gate::operator_decision(self, now, Outcome::Promote, reason));
                if self.started_at.is_none() {
                    self.started_at = Some(now);
                }
                self.status = Status::Running;
                self.start_wave(wave, now);
                Ok(())
            }
            Status::Running | Status::Paused { .. } if self.waves[self.current_wave].started_at.is_some() => {
                self.record(gate::operator_decision(self, now, Outcome::Promote, reason));
                self.promote_wave(now);
                Ok(())
            }
            _ => Err(self.not_now("promote", "; see `molt rollout status`")),
        }
    }

    /// An operator aborts: every device told or updated goes back to the
    /// release set it ran before.
    pub fn abort(&mut self, now: Millis, reason: &str) -> Result<Vec<Action>, CommandError> {
        match self.status {
            Status::Created | Status::Running | Status::AwaitingApproval | Status::Paused { .. } => {
                self.record(gate::operator_decision(self, now, Outcome::Abort, reason));
                self.refill(now);
                let mut actions = Vec::new();
                self.begin_rollback(now, &mut actions);
                Ok(actions)
            }
            _ => Err(self.not_now("abort", "; it is already over or rolling back")),
        }
    }

    pub(crate) fn classes(&self) -> &[String] {
        &self.classes
    }
}

fn serde_name(phase: Phase) -> String {
    match phase {
        Phase::Ineligible => "ineligible",
        Phase::AlreadyCurrent => "already_current",
        Phase::Pending => "pending",
        Phase::Told => "told",
        Phase::Updated => "updated",
        Phase::Failed => "failed",
        Phase::Unreachable => "unreachable",
        Phase::RollbackTold => "rollback_told",
        Phase::RolledBack => "rolled_back",
        Phase::RollbackUnreachable => "rollback_unreachable",
    }
    .to_owned()
}
