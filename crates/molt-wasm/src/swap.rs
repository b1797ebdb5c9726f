//! Live swap: replace the running policy version at a batch boundary,
//! carry its state over, try the new version, and revert by itself.
//!
//! A [`Deployment`] runs one policy. [`Deployment::stage`] prepares a new
//! version off the hot path (instantiated, not yet started). At the next
//! batch boundary [`Deployment::process`] switches: it snapshots the running
//! version and restores that state into the new one, which then serves on
//! trial for [`SwapConfig::trial_batches`] batches. The old version stays
//! warm, untouched since the switch, and the trial batches are logged.
//!
//! If the new version traps, runs out of fuel or memory, or returns more
//! errors than [`SwapConfig::trial_errors_max`], the deployment reverts: the
//! old version silently replays the logged trial batches (whose actions were
//! already delivered by the new version) and then processes the batch that
//! failed, whose actions it delivers. The result is the exactly-once
//! guarantee: every reading's actions are delivered once, in order, by one
//! version.
//!
//! A committed version that fails is recreated from its last checkpoint and
//! the batches since, and the failed batch is retried once. If it fails
//! again, it is handed back in [`BatchOutcome::unprocessed`] (nothing is
//! lost), and after [`SwapConfig::failures_max`] failures within
//! [`SwapConfig::failure_window_batches`] the deployment reverts to the
//! previous committed version, if it still has one. That version takes over
//! at the failing version's state after its last good batch: from the
//! recovered failing version if it can still be snapshotted, otherwise from
//! its last checkpoint with the batches since replayed silently.

use std::time::{Duration, Instant};

use crate::contract::{Action, PolicyError, Reading};
use crate::error::{CallError, Error};
use crate::module::PolicyModule;
use crate::state::State;

/// Why a version stopped serving a batch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// A call into the policy failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// A replacement instance could not be created.
    #[error("could not recreate the policy instance: {0}")]
    Instantiate(#[source] Error),
    /// The committed version failed too often and was replaced.
    #[error("failed {failures} times within failure_window_batches={window_batches} (failures_max={failures})")]
    TooManyFailures {
        /// The limit that was reached.
        failures: u32,
        /// The window.
        window_batches: u64,
    },
}

/// A policy version: its compiled module and its configuration.
#[derive(Debug, Clone)]
pub struct PolicyVersion {
    /// A name for reports, e.g. `threshold@1.2.0`.
    pub id: String,
    /// The compiled module.
    pub module: PolicyModule,
    /// The configuration passed to `init` or `restore`.
    pub config: Vec<(String, String)>,
}

/// How a [`Deployment`] swaps and reverts.
#[derive(Debug, Clone)]
pub struct SwapConfig {
    /// Batches a new version must serve before it is committed.
    pub trial_batches: u32,
    /// The trial also lasts at least this long.
    pub trial_duration_min: Duration,
    /// Policy-returned errors a version on trial may make; one more reverts
    /// it. Traps, fuel and memory exhaustion revert at once.
    pub trial_errors_max: u32,
    /// Failures of a committed version within
    /// [`failure_window_batches`](SwapConfig::failure_window_batches) that
    /// make the deployment revert to the previous committed version.
    pub failures_max: u32,
    /// The window for [`failures_max`](SwapConfig::failures_max), in batches.
    pub failure_window_batches: u64,
    /// A committed version's state is checkpointed every this many batches;
    /// recovery after a trap replays at most this many.
    pub checkpoint_interval_batches: u32,
}

impl Default for SwapConfig {
    fn default() -> SwapConfig {
        SwapConfig {
            trial_batches: 16,
            trial_duration_min: Duration::ZERO,
            trial_errors_max: 0,
            failures_max: 3,
            failure_window_batches: 1000,
            checkpoint_interval_batches: 32,
        }
    }
}

/// Something the deployment did while handling a batch.
#[derive(Debug)]
#[non_exhaustive]
pub enum SwapEvent {
    /// A staged version took over, on trial.
    Swapped {
        /// The version that stepped down (kept warm).
        from: String,
        /// The version now on trial.
        to: String,
        /// Snapshot of `from` plus restore into `to`.
        latency: Duration,
    },
    /// A staged version could not take over; the running one continues.
    SwapRefused {
        /// The version that was refused.
        version: String,
        /// Why.
        error: Failure,
    },
    /// The version on trial passed its trial.
    Committed {
        /// The committed version.
        version: String,
    },
    /// A version failed and the deployment went back to another one.
    Reverted {
        /// The version that failed.
        from: String,
        /// The version now serving.
        to: String,
        /// The failure.
        error: Failure,
    },
    /// A committed version failed and was recreated from its checkpoint.
    Recovered {
        /// The version.
        version: String,
        /// The failure.
        error: Failure,
    },
}

/// The result of one batch.
#[derive(Debug)]
pub struct BatchOutcome {
    /// The actions, in order; delivered exactly once.
    pub actions: Vec<Action>,
    /// The version whose actions these are.
    pub served_by: String,
    /// The policy's own error for this batch, if it returned one. The batch
    /// counts as processed.
    pub policy_error: Option<PolicyError>,
    /// The batch handed back unprocessed, with why, when no version could
    /// process it. Nothing is dropped silently.
    pub unprocessed: Option<(Vec<Reading>, Failure)>,
    /// What happened on the way.
    pub events: Vec<SwapEvent>,
}

/// Counters over a deployment's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapStats {
    /// Switches to a staged version.
    pub swaps: u64,
    /// Versions committed after their trial.
    pub commits: u64,
    /// Reverts to another version.
    pub reverts: u64,
    /// Recoveries of a committed version from its checkpoint.
    pub recoveries: u64,
    /// Batches handed back unprocessed.
    pub unprocessed_batches: u64,
    /// Batches processed.
    pub batches: u64,
}

/// A version with a live instance.
#[derive(Debug)]
struct Running {
    version: PolicyVersion,
    instance: crate::instance::PolicyInstance,
    /// State after the last checkpointed batch.
    checkpoint: State,
    /// Batches processed since `checkpoint`, for recovery.
    since_checkpoint: Vec<Vec<Reading>>,
}

impl Running {
    fn start(version: PolicyVersion) -> Result<Running, DeployError> {
        let mut instance = version.module.instantiate().map_err(DeployError::Instantiate)?;
        instance.init(&version.config).map_err(DeployError::Call)?;
        let checkpoint = instance.snapshot().map_err(DeployError::Call)?;
        Ok(Running {
            version,
            instance,
            checkpoint,
            since_checkpoint: Vec::new(),
        })
    }

    fn resume(version: PolicyVersion, state: &State) -> Result<Running, DeployError> {
        let mut instance = version.module.instantiate().map_err(DeployError::Instantiate)?;
        instance.restore(&version.config, state).map_err(DeployError::Call)?;
        Ok(Running {
            version,
            instance,
            checkpoint: state.clone(),
            since_checkpoint: Vec::new(),
        })
    }

    /// A fresh instance at the checkpoint, caught up with the batches since.
    fn recover(&mut self) -> Result<(), Failure> {
        let mut instance = self.version.module.instantiate().map_err(Failure::Instantiate)?;
        instance.restore(&self.version.config, &self.checkpoint)?;
        for batch in &self.since_checkpoint {
            replay(&mut instance, batch)?;
        }
        self.instance = instance;
        Ok(())
    }

    fn note_processed(&mut self, batch: Vec<Reading>, interval: u32) {
        self.since_checkpoint.push(batch);
        if self.since_checkpoint.len() >= interval.max(1) as usize
            && let Ok(state) = self.instance.snapshot()
        {
            self.checkpoint = state;
            self.since_checkpoint.clear();
        }
    }
}

/// Processes a batch whose actions were already delivered, only to bring
/// an instance's state up to date. A policy error is part of the replayed
/// history; a trap is not.
fn replay(instance: &mut crate::instance::PolicyInstance, batch: &[Reading]) -> Result<(), CallError> {
    match instance.process(batch) {
        Ok(_) | Err(CallError::GuestError(_)) => Ok(()),
        Err(error) => Err(error),
    }
}

#[derive(Debug)]
struct Trial {
    /// The version that stepped down, warm, at its state at the switch.
    baseline: Running,
    /// Batches the version on trial has processed, for the baseline to
    /// replay on revert. Bounded by `trial_batches`.
    log: Vec<Vec<Reading>>,
    batches_ok: u32,
    errors: u32,
    started: Instant,
}

/// Why a deployment could not start or stage a version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The module could not be instantiated.
    #[error("could not instantiate the policy: {0}")]
    Instantiate(#[source] Error),
    /// `init`, `restore` or `snapshot` failed.
    #[error("policy call failed: {0}")]
    Call(#[source] CallError),
}

/// One running policy, swappable live.
#[derive(Debug)]
pub struct Deployment {
    config: SwapConfig,
    active: Running,
    trial: Option<Trial>,
    staged: Option<(PolicyVersion, crate::instance::PolicyInstance)>,
    previous: Option<PolicyVersion>,
    /// Batch indices of recent committed-version failures.
    failures: Vec<u64>,
    stats: SwapStats,
}

impl Deployment {
    /// Starts `version` from `init`.
    pub fn start(version: PolicyVersion, config: SwapConfig) -> Result<Deployment, DeployError> {
        Ok(Deployment::new(Running::start(version)?, config))
    }

    /// Starts `version` from a saved state, e.g. after a reboot.
    pub fn resume(version: PolicyVersion, state: &State, config: SwapConfig) -> Result<Deployment, DeployError> {
        Ok(Deployment::new(Running::resume(version, state)?, config))
    }

    fn new(active: Running, config: SwapConfig) -> Deployment {
        Deployment {
            config,
            active,
            trial: None,
            staged: None,
            previous: None,
            failures: Vec::new(),
            stats: SwapStats::default(),
        }
    }

    /// Prepares `version` to take over at the next batch boundary: the
    /// instance is created now, off the hot path. A version staged while a
    /// trial runs waits until the trial ends; staging again replaces it.
    pub fn stage(&mut self, version: PolicyVersion) -> Result<(), DeployError> {
        let instance = version.module.instantiate().map_err(DeployError::Instantiate)?;
        self.staged = Some((version, instance));
        Ok(())
    }

    /// The version serving now.
    pub fn active_version(&self) -> &str {
        &self.active.version.id
    }

    /// Whether the serving version is on trial.
    pub fn on_trial(&self) -> bool {
        self.trial.is_some()
    }

    /// Counters so far.
    pub fn stats(&self) -> SwapStats {
        self.stats
    }

    /// The serving version's state now.
    pub fn snapshot(&mut self) -> Result<State, CallError> {
        self.active.instance.snapshot()
    }

    /// Processes one batch, switching to a staged version first if one is
    /// ready and no trial runs.
    pub fn process(&mut self, batch: Vec<Reading>) -> BatchOutcome {
        self.stats.batches += 1;
        let mut events = Vec::new();
        if self.trial.is_none()
            && let Some((version, instance)) = self.staged.take()
        {
            self.switch(version, instance, &mut events);
        }
        let mut outcome = if self.trial.is_some() {
            self.process_on_trial(batch)
        } else {
            self.process_committed(batch)
        };
        events.append(&mut outcome.events);
        outcome.events = events;
        outcome
    }

    fn switch(
        &mut self,
        version: PolicyVersion,
        mut instance: crate::instance::PolicyInstance,
        events: &mut Vec<SwapEvent>,
    ) {
        let started = Instant::now();
        let state = match self.active.instance.snapshot() {
            Ok(state) => state,
            Err(error) => {
                events.push(SwapEvent::SwapRefused {
                    version: version.id,
                    error: error.into(),
                });
                return;
            }
        };
        if let Err(error) = instance.restore(&version.config, &state) {
            events.push(SwapEvent::SwapRefused {
                version: version.id,
                error: error.into(),
            });
            return;
        }
        let latency = started.elapsed();
        let candidate = Running {
            version,
            instance,
            checkpoint: state.clone(),
            since_checkpoint: Vec::new(),
        };
        let mut baseline = std::mem::replace(&mut self.active, candidate);
        baseline.checkpoint = state;
        baseline.since_checkpoint.clear();
        events.push(SwapEvent::Swapped {
            from: baseline.version.id.clone(),
            to: self.active.version.id.clone(),
            latency,
        });
        self.stats.swaps += 1;
        self.trial = Some(Trial {
            baseline,
            log: Vec::new(),
            batches_ok: 0,
            errors: 0,
            started: Instant::now(),
        });
    }

    fn process_on_trial(&mut self, batch: Vec<Reading>) -> BatchOutcome {
        let result = self.active.instance.process(&batch);
        let Some(trial) = self.trial.as_mut() else {
            return self.process_committed(batch);
        };
        let (actions, policy_error) = match result {
            Ok(actions) => (actions, None),
            Err(CallError::GuestError(error)) if trial.errors < self.config.trial_errors_max => {
                trial.errors += 1;
                (Vec::new(), Some(error))
            }
            Err(error) => return self.revert_trial(batch, error.into()),
        };
        trial.log.push(batch);
        trial.batches_ok += 1;
        let mut events = Vec::new();
        if trial.batches_ok >= self.config.trial_batches && trial.started.elapsed() >= self.config.trial_duration_min {
            let version = self.active.version.id.clone();
            if let Some(trial) = self.trial.take() {
                self.previous = Some(trial.baseline.version);
                // The trial log is exactly the history since the switch,
                // whose state is the candidate's checkpoint.
                self.active.since_checkpoint = trial.log;
            }
            self.failures.clear();
            self.stats.commits += 1;
            events.push(SwapEvent::Committed { version });
        }
        BatchOutcome {
            actions,
            served_by: self.active.version.id.clone(),
            policy_error,
            unprocessed: None,
            events,
        }
    }

    /// The version on trial failed on `batch`: the baseline catches up on
    /// the trial's batches, silently, and then serves `batch`.
    fn revert_trial(&mut self, batch: Vec<Reading>, error: Failure) -> BatchOutcome {
        let Some(trial) = self.trial.take() else {
            return self.process_committed(batch);
        };
        let failed = std::mem::replace(&mut self.active, trial.baseline);
        self.stats.reverts += 1;
        let mut events = vec![SwapEvent::Reverted {
            from: failed.version.id,
            to: self.active.version.id.clone(),
            error,
        }];
        let interval = self.config.checkpoint_interval_batches;
        for logged in trial.log {
            match replay(&mut self.active.instance, &logged) {
                Ok(()) => self.active.note_processed(logged, interval),
                Err(error) => {
                    // The baseline cannot process this part of the trial's
                    // history, whose actions the version on trial already
                    // delivered. Rebuild it without that batch; if even that
                    // fails, the committed path below tries again.
                    events.push(SwapEvent::Recovered {
                        version: self.active.version.id.clone(),
                        error: error.into(),
                    });
                    self.stats.recoveries += 1;
                    let _ = self.active.recover();
                }
            }
        }
        let mut outcome = self.process_committed(batch);
        events.append(&mut outcome.events);
        outcome.events = events;
        outcome
    }

    fn process_committed(&mut self, batch: Vec<Reading>) -> BatchOutcome {
        let mut events = Vec::new();
        let mut error: Failure = match self.active.instance.process(&batch) {
            Ok(actions) => return self.committed_ok(batch, actions, None, events),
            Err(CallError::GuestError(policy_error)) => {
                self.note_failure();
                return self.committed_ok(batch, Vec::new(), Some(policy_error), events);
            }
            Err(error) => error.into(),
        };
        // The instance is poisoned; rebuild it and try the batch once more.
        self.note_failure();
        self.stats.recoveries += 1;
        let recovered = self.active.recover();
        events.push(SwapEvent::Recovered {
            version: self.active.version.id.clone(),
            error,
        });
        error = match recovered {
            Ok(()) => match self.active.instance.process(&batch) {
                Ok(actions) => return self.committed_ok(batch, actions, None, events),
                Err(CallError::GuestError(policy_error)) => {
                    return self.committed_ok(batch, Vec::new(), Some(policy_error), events);
                }
                Err(retry_error) => retry_error.into(),
            },
            Err(recover_error) => recover_error,
        };
        // Too many failures: the previous committed version takes over with
        // the current state and gets this batch.
        if self.failures.len() >= self.config.failures_max.max(1) as usize && self.revert_to_previous(&mut events) {
            match self.active.instance.process(&batch) {
                Ok(actions) => return self.committed_ok(batch, actions, None, events),
                Err(CallError::GuestError(policy_error)) => {
                    return self.committed_ok(batch, Vec::new(), Some(policy_error), events);
                }
                Err(previous_error) => error = previous_error.into(),
            }
        }
        // Leave a usable instance behind for the next batch.
        let _ = self.active.recover();
        self.stats.unprocessed_batches += 1;
        BatchOutcome {
            actions: Vec::new(),
            served_by: self.active.version.id.clone(),
            policy_error: None,
            unprocessed: Some((batch, error)),
            events,
        }
    }

    fn committed_ok(
        &mut self,
        batch: Vec<Reading>,
        actions: Vec<Action>,
        policy_error: Option<PolicyError>,
        events: Vec<SwapEvent>,
    ) -> BatchOutcome {
        self.active
            .note_processed(batch, self.config.checkpoint_interval_batches);
        BatchOutcome {
            actions,
            served_by: self.active.version.id.clone(),
            policy_error,
            unprocessed: None,
            events,
        }
    }

    fn note_failure(&mut self) {
        let now = self.stats.batches;
        let window = self.config.failure_window_batches;
        self.failures.retain(|&at| now.saturating_sub(at) < window);
        self.failures.push(now);
    }

    /// After too many failures, go back to the previous committed version,
    /// carrying the current state over. True if it took over.
    ///
    /// The previous version takes over at the failing version's state after
    /// its last good batch: taken from a recovered instance when the failing
    /// version can be recovered and snapshotted, and otherwise rebuilt from
    /// the failing version's last checkpoint by replaying the batches it
    /// processed since (their actions were already delivered, so the replay
    /// is silent). A replayed batch the previous version cannot process is
    /// left out of its state and reported as [`SwapEvent::Recovered`].
    fn revert_to_previous(&mut self, events: &mut Vec<SwapEvent>) -> bool {
        let Some(previous) = self.previous.take() else {
            return false;
        };
        let recovered = self
            .active
            .recover()
            .and_then(|()| self.active.instance.snapshot().map_err(Failure::from));
        let (state, since_checkpoint) = match recovered {
            Ok(state) => (state, Vec::new()),
            Err(_) => (self.active.checkpoint.clone(), self.active.since_checkpoint.clone()),
        };
        let mut running = match Running::resume(previous, &state) {
            Ok(running) => running,
            Err(_) => return false,
        };
        let interval = self.config.checkpoint_interval_batches;
        for batch in since_checkpoint {
            match replay(&mut running.instance, &batch) {
                Ok(()) => running.note_processed(batch, interval),
                Err(error) => {
                    events.push(SwapEvent::Recovered {
                        version: running.version.id.clone(),
                        error: error.into(),
                    });
                    self.stats.recoveries += 1;
                    if running.recover().is_err() {
                        return false;
                    }
                }
            }
        }
        let failed = std::mem::replace(&mut self.active, running);
        self.stats.reverts += 1;
        self.failures.clear();
        events.push(SwapEvent::Reverted {
            from: failed.version.id,
            to: self.active.version.id.clone(),
            error: Failure::TooManyFailures {
                failures: self.config.failures_max,
                window_batches: self.config.failure_window_batches,
            },
        });
        true
    }
}
