//! The device: its state directory, its agent slots, its TUF client and its
//! running policies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use molt_core::{BootDecision, Engine, FileBackend, FsStore, Recovery, TrustRoot};
use molt_release::client::{Client, Fetched, FetchedAgent};
use molt_release::download::{Progress, Source};
use molt_wasm::{BatchOutcome, Cid, Deployment, PolicyVersion, Reading, Runtime, State, SwapEvent};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::action_log::{ActionLog, Line};
use crate::agent_slots::{self, AGENT_IMAGE_NAME, AgentInstall, Health};
use crate::config::DeviceConfig;
use crate::error::DeviceError;
use crate::record::{self, Installed, PolicyRecord};

/// The agent's A/B engine over the slot directory.
pub type AgentEngine = Engine<FileBackend<FsStore>>;

const INSTALLED_FILE: &str = "installed.json";
const TRUST_FILE: &str = "image-trust.json";
const TUF_DIR: &str = "tuf";
const SLOTS_DIR: &str = "slots";
const POLICIES_DIR: &str = "policies";
const DOWNLOADS_DIR: &str = "downloads";
const LOG_DIR: &str = "log";
const LOG_FILE: &str = "actions.jsonl";

/// One local device.
///
/// Its state directory holds:
///
/// - `installed.json`: the [`Installed`] record, replaced atomically;
/// - `image-trust.json`: the pinned image keys agent manifests must verify
///   under;
/// - `tuf/`: the pinned root and the trusted TUF metadata (molt-release);
/// - `slots/`: the agent's A/B slots and boot record (molt-core over
///   [`FsStore`]);
/// - `policies/<sha256>.wasm`: the policy modules installed;
/// - `downloads/<release>/`: the parts of release sets being installed;
/// - `log/actions.jsonl`: every action the policies delivered, and every
///   swap, commit and revert.
#[derive(Debug)]
pub struct Device {
    dir: PathBuf,
    config: DeviceConfig,
    trust: TrustRoot,
    engine: AgentEngine,
    booted: Option<BootDecision>,
    client: Client,
    runtime: Runtime,
    installed: Installed,
    policies: BTreeMap<String, RunningPolicy>,
    log: ActionLog,
    batches: u64,
}

/// One installed policy: its deployment and every version it was given.
#[derive(Debug)]
struct RunningPolicy {
    deployment: Deployment,
    /// By version id (`name@version`).
    versions: BTreeMap<String, PolicyRecord>,
}

impl RunningPolicy {
    fn serving(&self) -> Option<&PolicyRecord> {
        self.versions.get(self.deployment.active_version())
    }
}

/// A release set that verified through TUF, with every part fetched and
/// checked and every changed policy compiled: nothing is installed yet.
#[derive(Debug)]
pub struct Prepared {
    fetched: Fetched,
    changes: Vec<PolicyChange>,
    removed: Vec<String>,
    prepare_time: Duration,
}

#[derive(Debug)]
struct PolicyChange {
    name: String,
    record: PolicyRecord,
    version: PolicyVersion,
    wasm: Vec<u8>,
}

impl Prepared {
    /// The release set's version.
    pub fn release_version(&self) -> u64 {
        self.fetched.set.version
    }

    /// The verified agent image for this device, if the set has one.
    pub fn agent(&self) -> Option<&FetchedAgent> {
        self.fetched.agent.as_ref()
    }

    /// The verified set.
    pub fn fetched(&self) -> &Fetched {
        &self.fetched
    }

    /// Version ids of the policies this set changes (`name@version`).
    pub fn changed_policies(&self) -> Vec<String> {
        self.changes.iter().map(|change| change.version.id.clone()).collect()
    }
}

/// What `install` did.
#[derive(Debug, Clone)]
pub struct InstallReport {
    /// The release set now installed.
    pub release_version: u64,
    /// Its security counter.
    pub security_counter: u64,
    /// What happened to the agent, if the set carried one.
    pub agent: Option<AgentInstall>,
    /// Version ids staged into running deployments, or started (new
    /// policies); they take over at the next batch boundary.
    pub staged: Vec<String>,
    /// Policies the set no longer names, stopped.
    pub removed: Vec<String>,
    /// Check, fetch, verify and compile.
    pub prepare_time: Duration,
    /// Accept, agent install and staging.
    pub install_time: Duration,
}

/// One batch through every policy.
#[derive(Debug)]
pub struct Processed {
    /// The batch's number on this device, from 1.
    pub batch: u64,
    /// Each policy's outcome, by policy name.
    pub outcomes: Vec<(String, BatchOutcome)>,
}

/// What a reopened slot store held.
#[derive(Debug, Clone, Copy)]
pub struct SlotsReopened {
    /// What the engine repaired when it opened.
    pub recovery: Recovery,
    /// The boot decision, with the booted image verified; `None` before the
    /// first agent install.
    pub boot: Option<BootDecision>,
    /// A trial found on the booted slot passed its health check and was
    /// committed.
    pub committed_trial: Option<molt_core::ImageInfo>,
}

impl Device {
    /// Creates a device in the empty or missing directory `dir`: pins
    /// `root_json` (the repository's root metadata, obtained out of band) and
    /// the image keys, and records the factory agent.
    pub fn provision(
        dir: &Path,
        root_json: &[u8],
        image_trust: &TrustRoot,
        config: DeviceConfig,
    ) -> Result<Device, DeviceError> {
        if dir.join(INSTALLED_FILE).exists() {
            return Err(DeviceError::AlreadyProvisioned(dir.to_owned()));
        }
        record::create_dir(dir)?;
        record::store_trust(&dir.join(TRUST_FILE), image_trust)?;
        Client::init(
            &dir.join(TUF_DIR),
            root_json,
            &config.hardware_class,
            config.client_limits.clone(),
        )?;
        // Written last: its presence is what makes the directory a device.
        Installed::factory(&config.factory_agent_version).store(&dir.join(INSTALLED_FILE))?;
        Device::open(dir, config)
    }

    /// Opens a provisioned device: recovers and boots the agent slots
    /// (committing a trial that booted, once its health check passed), and
    /// starts every installed policy from `init`.
    ///
    /// Policy state is not persisted across a restart yet: a reopened device
    /// starts its policies afresh.
    pub fn open(dir: &Path, config: DeviceConfig) -> Result<Device, DeviceError> {
        let trust = record::load_trust(&dir.join(TRUST_FILE))?;
        let installed = Installed::load(&dir.join(INSTALLED_FILE), config.installed_bytes_max)?;
        let client = Client::open(&dir.join(TUF_DIR), &config.hardware_class, config.client_limits.clone())?;
        let runtime = Runtime::new(&config.runtime).map_err(DeviceError::Runtime)?;
        let (engine, _recovery) = open_engine(dir, &config, &trust)?;
        for sub_dir in [POLICIES_DIR, DOWNLOADS_DIR, LOG_DIR] {
            record::create_dir(&dir.join(sub_dir))?;
        }
        let log = ActionLog::open(&dir.join(LOG_DIR).join(LOG_FILE), config.log_bytes_max)?;
        let mut device = Device {
            dir: dir.to_owned(),
            config,
            trust,
            engine,
            booted: None,
            client,
            runtime,
            installed,
            policies: BTreeMap::new(),
            log,
            batches: 0,
        };
        let module_bytes_max = device.runtime.limits().module_bytes_max as u64;
        for (name, policy) in device.installed.policies.clone() {
            let wasm = record::load_module(&device.dir.join(POLICIES_DIR), &policy.sha256, module_bytes_max)?;
            let version = device.compile(&name, &policy, &wasm)?;
            device.start_policy(&name, policy, version)?;
        }
        // Policies first: a trial agent is committed only once its health
        // probe has seen every installed policy serving.
        device.boot_slots()?;
        Ok(device)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// What is installed, as recorded durably.
    pub fn installed(&self) -> &Installed {
        &self.installed
    }

    /// The agent slot directory (an [`FsStore`]).
    pub fn slots_dir(&self) -> PathBuf {
        self.dir.join(SLOTS_DIR)
    }

    /// The trusted TUF metadata directory.
    pub fn trusted_dir(&self) -> PathBuf {
        self.dir.join(TUF_DIR)
    }

    /// The action log.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// The agent engine's configuration, for tools that open the slots on
    /// other storage (the demo's power-cut simulator does).
    pub fn slot_engine_config(&self) -> molt_core::Config {
        engine_config(&self.config, &self.trust)
    }

    /// The agent engine.
    pub fn agent_engine(&self) -> &AgentEngine {
        &self.engine
    }

    /// The slot the agent booted from, with its verified image.
    pub fn booted(&self) -> Option<BootDecision> {
        self.booted
    }

    /// The policy runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The installed policies' names.
    pub fn policy_names(&self) -> Vec<String> {
        self.policies.keys().cloned().collect()
    }

    /// The version id serving `name` now, and whether it is on trial.
    pub fn serving(&self, name: &str) -> Result<(String, bool), DeviceError> {
        let policy = self.policy(name)?;
        Ok((
            policy.deployment.active_version().to_owned(),
            policy.deployment.on_trial(),
        ))
    }

    /// Swap counters of `name`'s deployment.
    pub fn swap_stats(&self, name: &str) -> Result<molt_wasm::SwapStats, DeviceError> {
        Ok(self.policy(name)?.deployment.stats())
    }

    /// The serving version's state of `name` now, and its CID.
    pub fn snapshot(&mut self, name: &str) -> Result<(State, Cid), DeviceError> {
        let policy = self
            .policies
            .get_mut(name)
            .ok_or_else(|| DeviceError::NoSuchPolicy(name.to_owned()))?;
        let state = policy.deployment.snapshot().map_err(|source| DeviceError::PolicyCall {
            name: name.to_owned(),
            source,
        })?;
        let cid = state.cid();
        Ok((state, cid))
    }

    fn policy(&self, name: &str) -> Result<&RunningPolicy, DeviceError> {
        self.policies
            .get(name)
            .ok_or_else(|| DeviceError::NoSuchPolicy(name.to_owned()))
    }

    /// Checks `source` for a newer release set and installs it:
    /// [`prepare`](Device::prepare), then [`install`](Device::install).
    /// `None` if there is no newer set.
    pub async fn update(
        &mut self,
        source: &Source,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Option<InstallReport>, DeviceError> {
        match self.prepare(source, progress, cancel).await? {
            None => Ok(None),
            Some(prepared) => Ok(Some(self.install(prepared)?)),
        }
    }

    /// Verifies the newest release set at `source` through TUF, fetches and
    /// verifies every part, verifies the agent manifest under the image keys,
    /// and compiles and test-initialises every changed policy. Changes
    /// nothing on the device but its download directory; `None` if there is
    /// no newer set.
    pub async fn prepare(
        &self,
        source: &Source,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<Option<Prepared>, DeviceError> {
        let started = Instant::now();
        let Some(verified) = self.client.check(source, &self.installed.client_view()).await? else {
            return Ok(None);
        };
        let download_dir = self.dir.join(DOWNLOADS_DIR).join(verified.set.version.to_string());
        record::create_dir(&download_dir)?;
        let fetched = self.client.fetch(&verified, &download_dir, progress, cancel).await?;
        let (changes, removed) = match self.verify_fetched(&fetched, &download_dir) {
            Ok(verified) => verified,
            Err(error) => {
                // Nothing was installed; drop the scratch metadata too. The
                // refusal is the error to report, not a failed cleanup.
                let _ = self.client.discard();
                return Err(error);
            }
        };
        Ok(Some(Prepared {
            fetched,
            changes,
            removed,
            prepare_time: started.elapsed(),
        }))
    }

    /// Everything `prepare` checks after the fetch: the agent manifest, and
    /// each changed policy's digest, compilation and `init`.
    fn verify_fetched(
        &self,
        fetched: &Fetched,
        download_dir: &Path,
    ) -> Result<(Vec<PolicyChange>, Vec<String>), DeviceError> {
        if let Some(agent) = &fetched.agent {
            agent_slots::verify_agent_manifest(&self.trust, &self.config.hardware_class, agent)?;
        }
        let mut changes = Vec::new();
        for (name, fetched_policy) in &fetched.policies {
            let record = PolicyRecord {
                version: fetched_policy.version.clone(),
                sha256: record::hex(&fetched_policy.sha256),
                config: fetched_policy.config.clone(),
            };
            let found = record::hex(&Sha256::digest(&fetched_policy.wasm));
            if found != record.sha256 {
                return Err(DeviceError::Corrupt {
                    path: download_dir.join(name),
                    reason: format!("module sha256 is {found}, the release set says {}", record.sha256),
                });
            }
            if self.policies.get(name).and_then(RunningPolicy::serving) == Some(&record) {
                continue;
            }
            let version = self.compile(name, &record, &fetched_policy.wasm)?;
            // Proves the configuration is one the policy accepts before
            // anything is installed.
            let mut probe = version
                .module
                .instantiate()
                .map_err(|source| DeviceError::PolicyModule {
                    name: name.clone(),
                    source,
                })?;
            probe.init(&version.config).map_err(|source| DeviceError::PolicyCall {
                name: name.clone(),
                source,
            })?;
            changes.push(PolicyChange {
                name: name.clone(),
                record,
                version,
                wasm: fetched_policy.wasm.clone(),
            });
        }
        let removed: Vec<String> = self
            .policies
            .keys()
            .filter(|name| !fetched.policies.contains_key(*name))
            .cloned()
            .collect();
        Ok((changes, removed))
    }

    /// Installs a prepared release set: promotes its TUF metadata to
    /// trusted, installs the agent image (stage, trial boot, health check,
    /// commit), stages every changed policy into its deployment (it takes
    /// over at the next batch boundary, on trial), and records the set
    /// durably.
    ///
    /// If the agent install fails, no policy is staged and the record is
    /// unchanged; the committed agent still boots.
    pub fn install(&mut self, prepared: Prepared) -> Result<InstallReport, DeviceError> {
        let started = Instant::now();
        let Prepared {
            fetched,
            changes,
            removed,
            prepare_time,
        } = prepared;
        self.client.accept(&fetched)?;
        let agent = match &fetched.agent {
            Some(agent) => Some(self.install_agent(agent)?),
            None => None,
        };
        let policies_dir = self.dir.join(POLICIES_DIR);
        for change in &changes {
            record::store_module(&policies_dir, &change.wasm)?;
        }
        let mut staged = Vec::with_capacity(changes.len());
        for change in changes {
            staged.push(change.version.id.clone());
            match self.policies.get_mut(&change.name) {
                Some(policy) => {
                    policy
                        .deployment
                        .stage(change.version.clone())
                        .map_err(|source| DeviceError::Deploy {
                            name: change.name.clone(),
                            source,
                        })?;
                    policy.versions.insert(change.version.id, change.record);
                }
                None => self.start_policy(&change.name, change.record, change.version)?,
            }
        }
        for name in &removed {
            self.policies.remove(name);
        }
        self.installed.release_version = fetched.set.version;
        self.installed.security_counter = fetched.set.security_counter;
        if let Some(agent) = &fetched.agent {
            self.installed.agent_version = agent.version.clone();
        }
        self.installed.policies = fetched
            .policies
            .iter()
            .map(|(name, policy)| {
                let record = PolicyRecord {
                    version: policy.version.clone(),
                    sha256: record::hex(&policy.sha256),
                    config: policy.config.clone(),
                };
                (name.clone(), record)
            })
            .collect();
        self.installed.store(&self.dir.join(INSTALLED_FILE))?;
        self.log.append(&Line::Installed {
            release_version: self.installed.release_version,
            security_counter: self.installed.security_counter,
            agent_version: &self.installed.agent_version,
        })?;
        self.log.flush()?;
        Ok(InstallReport {
            release_version: self.installed.release_version,
            security_counter: self.installed.security_counter,
            agent,
            staged,
            removed,
            prepare_time,
            install_time: started.elapsed(),
        })
    }

    /// Runs `batch` through every policy and writes what they delivered to
    /// the action log.
    pub fn process(&mut self, batch: &[Reading]) -> Result<Processed, DeviceError> {
        let limit = self.runtime.limits().batch_readings_max;
        if batch.len() > limit {
            return Err(DeviceError::BatchTooLarge {
                readings: batch.len(),
                limit,
            });
        }
        self.batches += 1;
        let batch_idx = self.batches;
        let mut outcomes = Vec::with_capacity(self.policies.len());
        let mut serving_changed = false;
        for (name, policy) in &mut self.policies {
            let outcome = policy.deployment.process(batch.to_vec());
            for event in &outcome.events {
                serving_changed |= matches!(event, SwapEvent::Reverted { .. } | SwapEvent::Committed { .. });
                self.log.append(&Line::event(batch_idx, name, event))?;
            }
            for action in &outcome.actions {
                self.log
                    .append(&Line::action(batch_idx, name, &outcome.served_by, action))?;
            }
            if let Some((readings, error)) = &outcome.unprocessed {
                self.log.append(&Line::Unprocessed {
                    batch: batch_idx,
                    policy: name,
                    readings: readings.len(),
                    error: error.to_string(),
                })?;
            }
            outcomes.push((name.clone(), outcome));
        }
        self.log.flush()?;
        if serving_changed {
            // A revert or commit changes which version would start after a
            // restart.
            for (name, policy) in &self.policies {
                if let Some(serving) = policy.serving() {
                    self.installed.policies.insert(name.clone(), serving.clone());
                }
            }
            self.installed.store(&self.dir.join(INSTALLED_FILE))?;
        }
        Ok(Processed {
            batch: batch_idx,
            outcomes,
        })
    }

    /// Reopens the agent slots from what is durable in the slot directory,
    /// as after a reboot: the engine recovers, boots (verifying the image it
    /// boots), and a trial that booted is committed after its health check.
    /// For tools that changed the slot files underneath the device.
    pub fn reopen_slots(&mut self) -> Result<SlotsReopened, DeviceError> {
        let (engine, recovery) = open_engine(&self.dir, &self.config, &self.trust)?;
        self.engine = engine;
        let committed_trial = self.boot_slots()?;
        Ok(SlotsReopened {
            recovery,
            boot: self.booted,
            committed_trial,
        })
    }

    /// Boots the agent slots; a trial that boots is health-checked and
    /// committed. Before the first agent install there is nothing to boot.
    fn boot_slots(&mut self) -> Result<Option<molt_core::ImageInfo>, DeviceError> {
        self.booted = None;
        let health = self.health();
        let (decision, committed) = self.slots(|engine| agent_slots::boot(engine, &health))?;
        self.booted = decision;
        Ok(committed)
    }

    fn install_agent(&mut self, agent: &FetchedAgent) -> Result<AgentInstall, DeviceError> {
        let manifest = agent_slots::verify_agent_manifest(&self.trust, &self.config.hardware_class, agent)?;
        let booted = self.booted;
        let health = self.health();
        let install = self.slots(|engine| agent_slots::install_agent(engine, booted, agent, &manifest, &health))?;
        if let Some(decision) = install.trial_boot {
            self.booted = Some(decision);
        }
        Ok(install)
    }

    /// The agent's health probe, run before a trial agent is committed:
    /// every installed policy has a running deployment, and each answers a
    /// snapshot (its instance is alive and its state encodes).
    pub fn health(&mut self) -> Health {
        if let Some(name) = self
            .installed
            .policies
            .keys()
            .find(|name| !self.policies.contains_key(*name))
        {
            return Err(format!("policy {name} is installed but not running"));
        }
        for (name, policy) in &mut self.policies {
            policy
                .deployment
                .snapshot()
                .map_err(|error| format!("policy {name} does not answer a snapshot: {error}"))?;
        }
        Ok(())
    }

    /// Runs an engine operation; after a storage failure the engine is
    /// reopened from what is durable, as molt-core requires.
    fn slots<T>(
        &mut self,
        operation: impl FnOnce(&mut AgentEngine) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        let result = operation(&mut self.engine);
        if let Err(DeviceError::Slots(molt_core::Error::Storage(_) | molt_core::Error::Poisoned)) = &result
            && let Ok((engine, _)) = open_engine(&self.dir, &self.config, &self.trust)
        {
            self.engine = engine;
            self.booted = None;
        }
        result
    }

    fn compile(&self, name: &str, policy: &PolicyRecord, wasm: &[u8]) -> Result<PolicyVersion, DeviceError> {
        let module = self.runtime.compile(wasm).map_err(|source| DeviceError::PolicyModule {
            name: name.to_owned(),
            source,
        })?;
        Ok(PolicyVersion {
            id: format!("{name}@{}", policy.version),
            module,
            config: policy
                .config
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        })
    }

    fn start_policy(&mut self, name: &str, record: PolicyRecord, version: PolicyVersion) -> Result<(), DeviceError> {
        let id = version.id.clone();
        let deployment =
            Deployment::start(version, self.config.swap.clone()).map_err(|source| DeviceError::Deploy {
                name: name.to_owned(),
                source,
            })?;
        self.policies.insert(
            name.to_owned(),
            RunningPolicy {
                deployment,
                versions: BTreeMap::from([(id, record)]),
            },
        );
        Ok(())
    }
}

fn engine_config(config: &DeviceConfig, trust: &TrustRoot) -> molt_core::Config {
    molt_core::Config::new(AGENT_IMAGE_NAME, config.hardware_class.clone(), trust.clone())
}

fn open_engine(dir: &Path, config: &DeviceConfig, trust: &TrustRoot) -> Result<(AgentEngine, Recovery), DeviceError> {
    let store = FsStore::open(dir.join(SLOTS_DIR))?;
    let backend = FileBackend::new(store, config.slot_layout);
    Ok(Engine::open(backend, engine_config(config, trust))?)
}
