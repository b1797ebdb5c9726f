//! The power-cut simulator.
//!
//! For every simulated medium and every scenario, the simulator first runs
//! the scenario cleanly and counts its storage operations N. It then cuts
//! power before (files) or inside (flash) each operation k = 1..=N, under
//! every [`Damage`] variant, reboots, recovers, and checks the oracle:
//!
//! - every boot decision names a complete image whose bytes, read straight
//!   off the medium, hash to a manifest that was signed: never a partial or
//!   unverified one;
//! - a commit that returned `Ok` survives every later cut;
//! - the committed version and security counter never decrease;
//! - a clean run after the cuts converges to the scenario's goal, and the
//!   goal survives one more power loss.
//!
//! The same scenarios run with I/O errors (EIO once, EIO forever, ENOSPC
//! forever) at every operation, and with repeated cuts during recovery
//! itself: linearly (littlefs) and at random (MCUboot's multi-cut). Random
//! multi-cut runs scale the total to any requested number of runs.

use std::format;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::string::{String, ToString};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::vec::Vec;
use std::{fmt, thread};

use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::backend::Backend;
use crate::boot_control::{Slot, SlotState};
use crate::engine::{BootDecision, BootReason, Config, Engine};
use crate::error::Error;
use crate::files::{FileBackend, FileLayout, image_name};
use crate::flash::{FlashBackend, FlashLayout};
use crate::manifest::{Manifest, TrustRoot};
use crate::sim::{Damage, Fault, Sabotage, SimFlash, SimStore};
use crate::storage::StorageErrorKind;
use crate::version::Version;

/// The default number of runs when `MOLT_CRASH_RUNS` is not set.
pub const DEFAULT_RUNS: u64 = 10_000;
/// The default master seed when `MOLT_CRASH_SEED` is not set.
pub const DEFAULT_SEED: u64 = 0x6d6f_6c74_2d63_7368;

/// Flash erase sector size in the simulation; small so that runs are fast.
const SIM_ERASE_SIZE: usize = 256;
/// Slot size on simulated flash: room for the largest test image.
const SIM_SLOT_SIZE: u32 = 2048;
/// Stream images in chunks that are not a multiple of any write size, so
/// the flash back end's partial-word buffering is always exercised.
const CHUNK_BYTES: usize = 100;
/// Boots a scenario may take to reach its goal before it counts as not
/// converging.
const ROUNDS_MAX: usize = 12;
const ATTEMPTS_MAX: u8 = 2;
const HARDWARE_CLASS: &str = "sim-board";

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct CrashSimConfig {
    /// Run at least this many cases; random multi-cut cases top up the
    /// exhaustive plan.
    pub runs_min: u64,
    /// Master seed for every seeded damage variant and random case.
    pub seed: u64,
    /// Run only the case with this index (for replaying a failure).
    /// Indices depend on the seed and `runs_min`, which the replay command
    /// printed with each failure repeats.
    pub only: Option<u64>,
    /// Worker threads.
    pub threads: usize,
    /// Break the file back end on purpose (see [`Sabotage`]).
    pub sabotage: Sabotage,
    /// Counts finished runs, for a progress display.
    pub progress: Option<Arc<AtomicU64>>,
}

impl Default for CrashSimConfig {
    fn default() -> CrashSimConfig {
        CrashSimConfig {
            runs_min: DEFAULT_RUNS,
            seed: DEFAULT_SEED,
            only: None,
            threads: thread::available_parallelism().map_or(1, usize::from),
            sabotage: Sabotage::None,
            progress: None,
        }
    }
}

impl CrashSimConfig {
    /// Reads `MOLT_CRASH_RUNS`, `MOLT_CRASH_SEED` (decimal or 0x-hex) and
    /// `MOLT_CRASH_ONLY` on top of the defaults.
    pub fn from_env() -> Result<CrashSimConfig, String> {
        let mut config = CrashSimConfig::default();
        if let Some(runs) = env_u64("MOLT_CRASH_RUNS")? {
            config.runs_min = runs;
        }
        if let Some(seed) = env_u64("MOLT_CRASH_SEED")? {
            config.seed = seed;
        }
        config.only = env_u64("MOLT_CRASH_ONLY")?;
        Ok(config)
    }
}

fn env_u64(name: &str) -> Result<Option<u64>, String> {
    let Ok(text) = std::env::var(name) else {
        return Ok(None);
    };
    let text = text.trim().replace('_', "");
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed
        .map(Some)
        .map_err(|_| format!("{name}={text:?} is not a number (decimal or 0x-hex)"))
}

/// One failed case, with what is needed to replay it.
#[derive(Debug, Clone)]
pub struct CrashFailure {
    /// The case's index; replay with `MOLT_CRASH_ONLY=<index>` and the same
    /// seed and run count.
    pub index: u64,
    /// The case: medium, scenario and faults.
    pub case: String,
    /// What the oracle saw.
    pub reason: String,
}

/// The outcome of a simulator run.
#[derive(Debug, Clone)]
pub struct CrashReport {
    /// Scenario families run.
    pub scenarios: usize,
    /// Cut points enumerated exhaustively: the sum of N over every medium
    /// and base scenario.
    pub points: u64,
    /// Distinct damage variants.
    pub variants: usize,
    /// Cases run.
    pub runs: u64,
    /// Cases whose oracle failed.
    pub failures: Vec<CrashFailure>,
    /// The master seed.
    pub seed: u64,
    /// The requested minimum number of runs (needed for replay).
    pub runs_min: u64,
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crash-sim: scenarios={} points={} variants={} runs={} failures={} seed={:#x}",
            self.scenarios,
            self.points,
            self.variants,
            self.runs,
            self.failures.len(),
            self.seed
        )
    }
}

impl CrashFailure {
    /// A one-line description with the replay command.
    pub fn describe(&self, report: &CrashReport) -> String {
        format!(
            "crash-sim FAILED case {}: {}: {}\n  replay: MOLT_CRASH_SEED={:#x} MOLT_CRASH_RUNS={} MOLT_CRASH_ONLY={} cargo xtask crash-sim",
            self.index, self.case, self.reason, report.seed, report.runs_min, self.index
        )
    }
}

/// The simulated media: files, and NOR flash at every write alignment and
/// both erased values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Medium {
    Files,
    Flash { write_size: usize, erased: u8 },
}

const MEDIA: [Medium; 9] = [
    Medium::Files,
    Medium::Flash {
        write_size: 1,
        erased: 0xFF,
    },
    Medium::Flash {
        write_size: 2,
        erased: 0xFF,
    },
    Medium::Flash {
        write_size: 4,
        erased: 0xFF,
    },
    Medium::Flash {
        write_size: 8,
        erased: 0xFF,
    },
    Medium::Flash {
        write_size: 1,
        erased: 0x00,
    },
    Medium::Flash {
        write_size: 2,
        erased: 0x00,
    },
    Medium::Flash {
        write_size: 4,
        erased: 0x00,
    },
    Medium::Flash {
        write_size: 8,
        erased: 0x00,
    },
];

impl fmt::Display for Medium {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Medium::Files => write!(f, "files"),
            Medium::Flash { write_size, erased } => write!(f, "flash(align={write_size},erased={erased:#04x})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DamageKind {
    LoseUnsynced,
    KeepUnsynced,
    RandomSubset,
    TornByte,
    TornWord,
    LoseNames,
}

const DAMAGE_KINDS: usize = 6;
const FILE_DAMAGES: [DamageKind; 5] = [
    DamageKind::LoseUnsynced,
    DamageKind::KeepUnsynced,
    DamageKind::RandomSubset,
    DamageKind::TornByte,
    DamageKind::LoseNames,
];
const FLASH_DAMAGES: [DamageKind; 5] = [
    DamageKind::LoseUnsynced,
    DamageKind::KeepUnsynced,
    DamageKind::RandomSubset,
    DamageKind::TornByte,
    DamageKind::TornWord,
];

impl Medium {
    fn damages(self) -> &'static [DamageKind] {
        match self {
            Medium::Files => &FILE_DAMAGES,
            Medium::Flash { .. } => &FLASH_DAMAGES,
        }
    }
}

impl DamageKind {
    fn with_seed(self, seed: u64) -> Damage {
        match self {
            DamageKind::LoseUnsynced => Damage::LoseUnsynced,
            DamageKind::KeepUnsynced => Damage::KeepUnsynced,
            DamageKind::RandomSubset => Damage::RandomSubset { seed },
            DamageKind::TornByte => Damage::TornByte { seed },
            DamageKind::TornWord => Damage::TornWord { seed },
            DamageKind::LoseNames => Damage::LoseNames,
        }
    }
}

/// What a scenario drives the device to, from any state it may be left in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Install v2, boot it on trial, pass the health check, commit.
    InstallCommit,
    /// Install v2, fail its health check on every boot, until the engine
    /// rolls back by itself when the attempts run out.
    HealthFailAutoRollback,
    /// Install v2, fail its health check once, roll back explicitly.
    ExplicitRollback,
    /// Abandon a half-streamed v2, then install and commit v3.
    InterruptedThenNewInstall,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario::InstallCommit,
    Scenario::HealthFailAutoRollback,
    Scenario::ExplicitRollback,
    Scenario::InterruptedThenNewInstall,
];
/// The four base scenarios plus the two families layered over them:
/// cuts during recovery, and I/O errors.
const SCENARIO_FAMILIES: usize = SCENARIOS.len() + 2;

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::InstallCommit => "install-commit",
            Scenario::HealthFailAutoRollback => "health-fail-auto-rollback",
            Scenario::ExplicitRollback => "explicit-rollback",
            Scenario::InterruptedThenNewInstall => "interrupted-then-new-install",
        })
    }
}

/// One run: a medium, a scenario, and the fault for each power cycle in
/// turn. After the last fault the scenario runs cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Case {
    medium: Medium,
    scenario: Scenario,
    faults: Vec<Fault>,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} faults=[", self.medium, self.scenario)?;
        for (idx, fault) in self.faults.iter().enumerate() {
            if idx > 0 {
                f.write_str(", ")?;
            }
            match fault {
                Fault::None => f.write_str("none")?,
                Fault::Cut { at, damage } => write!(f, "cut at op {at} {damage:?}")?,
                Fault::FailOnce { at, kind } => write!(f, "{kind:?} once at op {at}")?,
                Fault::FailFrom {
                    at,
                    kind,
                    mutations_only,
                } => {
                    write!(f, "{kind:?} from op {at}")?;
                    if *mutations_only {
                        f.write_str(" (mutations only)")?;
                    }
                }
            }
        }
        f.write_str("]")
    }
}

/// A signed image the scenarios install.
#[derive(Debug, Clone)]
struct Image {
    version: Version,
    bytes: Vec<u8>,
    sha256: [u8; 32],
    signed_manifest: Vec<u8>,
}

/// Keys, images and engine configuration shared by every case.
#[derive(Debug, Clone)]
struct Images {
    config: Config,
    v1: Image,
    v2: Image,
    v3: Image,
}

impl Images {
    fn new() -> Result<Images, String> {
        let keys = [SigningKey::from_bytes(&[11; 32]), SigningKey::from_bytes(&[22; 32])];
        let verifying: Vec<_> = keys.iter().map(SigningKey::verifying_key).collect();
        let trust = TrustRoot::new(&verifying, 2).map_err(|e| e.to_string())?;
        let mut config = Config::new("agent", HARDWARE_CLASS, trust);
        config.attempts_max = ATTEMPTS_MAX;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut image = |version: Version, security_counter: u64, length: usize| -> Result<Image, String> {
            let mut bytes = std::vec![0u8; length];
            rng.fill_bytes(&mut bytes);
            let sha256: [u8; 32] = Sha256::digest(&bytes).into();
            let manifest = Manifest {
                name: "agent".into(),
                version,
                security_counter,
                length: length as u64,
                sha256,
                hardware_class: HARDWARE_CLASS.into(),
            };
            let signed_manifest = manifest.sign(&[&keys[0], &keys[1]]).map_err(|e| e.to_string())?;
            Ok(Image {
                version,
                bytes,
                sha256,
                signed_manifest,
            })
        };
        Ok(Images {
            v1: image(Version::new(1, 0, 0), 1, 1000)?,
            v2: image(Version::new(2, 0, 0), 2, 1301)?,
            v3: image(Version::new(3, 1, 4), 2, 777)?,
            config,
        })
    }

    fn by_version(&self, version: Version) -> Option<&Image> {
        [&self.v1, &self.v2, &self.v3]
            .into_iter()
            .find(|image| image.version == version)
    }
}

/// A simulated medium the runner can fault, power-cycle and read behind
/// the engine's back.
trait SimMedium: Backend + Clone + Send + Sync + fmt::Debug {
    fn new_blank(medium: Medium) -> Result<Self, String>;
    fn set_fault(&mut self, fault: Fault);
    fn power_cycle(&mut self);
    fn ops(&self) -> u64;
    /// The first `length` bytes of `slot` as stored, read without the
    /// engine.
    fn slot_bytes(&self, slot: Slot, length: u64) -> Option<Vec<u8>>;
}

impl SimMedium for FileBackend<SimStore> {
    fn new_blank(_medium: Medium) -> Result<Self, String> {
        Ok(FileBackend::new(
            SimStore::new(),
            FileLayout {
                slot_size_max_bytes: u64::from(SIM_SLOT_SIZE),
            },
        ))
    }

    fn set_fault(&mut self, fault: Fault) {
        self.store_mut().set_fault(fault);
    }

    fn power_cycle(&mut self) {
        self.store_mut().reboot();
    }

    fn ops(&self) -> u64 {
        self.store().ops()
    }

    fn slot_bytes(&self, slot: Slot, length: u64) -> Option<Vec<u8>> {
        let mut bytes = self.store().contents(image_name(slot))?;
        if (bytes.len() as u64) < length {
            return None;
        }
        bytes.truncate(length as usize);
        Some(bytes)
    }
}

impl<const WRITE_SIZE: usize> SimMedium for FlashBackend<SimFlash<WRITE_SIZE, SIM_ERASE_SIZE>> {
    fn new_blank(medium: Medium) -> Result<Self, String> {
        let Medium::Flash { erased, .. } = medium else {
            return Err("flash back end built for a file medium".into());
        };
        let layout = FlashLayout::sequential::<SimFlash<WRITE_SIZE, SIM_ERASE_SIZE>>(SIM_SLOT_SIZE, erased);
        let capacity = layout.slot_offsets[1] as usize + SIM_SLOT_SIZE as usize;
        FlashBackend::new(SimFlash::new(capacity, erased), layout).map_err(|e| e.to_string())
    }

    fn set_fault(&mut self, fault: Fault) {
        self.flash_mut().set_fault(fault);
    }

    fn power_cycle(&mut self) {
        self.flash_mut().reboot();
    }

    fn ops(&self) -> u64 {
        self.flash().ops()
    }

    fn slot_bytes(&self, slot: Slot, length: u64) -> Option<Vec<u8>> {
        let start = self.layout().slot_offsets[slot.index()] as usize;
        let end = start.checked_add(usize::try_from(length).ok()?)?;
        self.flash().memory().get(start..end).map(<[u8]>::to_vec)
    }
}

/// Why a scenario stopped.
#[derive(Debug)]
enum Stop {
    /// The engine returned an error (expected only when a fault is armed).
    Engine(Error),
    /// The scenario did not reach its goal within [`ROUNDS_MAX`] boots.
    NotConverged,
    /// The oracle caught a broken promise.
    Oracle(String),
}

impl From<Error> for Stop {
    fn from(error: Error) -> Stop {
        Stop::Engine(error)
    }
}

/// What the oracle has seen across every power cycle of one case.
#[derive(Debug, Clone)]
struct Oracle {
    /// The highest version a commit returned `Ok` for.
    committed_floor: Version,
    /// The highest security counter a returned commit established.
    counter_floor: u64,
    /// The highest committed version and counter any boot saw.
    committed_seen: Version,
    counter_seen: u64,
}

impl Oracle {
    fn new(images: &Images) -> Oracle {
        Oracle {
            committed_floor: images.v1.version,
            counter_floor: 1,
            committed_seen: images.v1.version,
            counter_seen: 1,
        }
    }

    fn fail(message: String) -> Result<(), Stop> {
        Err(Stop::Oracle(message))
    }

    fn check_boot<M: SimMedium>(
        &mut self,
        images: &Images,
        engine: &Engine<&mut M>,
        decision: &BootDecision,
    ) -> Result<(), Stop> {
        let record = engine.record();
        let Some(bytes) = engine.backend().slot_bytes(decision.slot, decision.image.length) else {
            return Oracle::fail(format!(
                "booted slot {:?} holds fewer bytes than its image",
                decision.slot
            ));
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if digest != decision.image.sha256 {
            return Oracle::fail(format!(
                "booted slot {:?} does not hash to its recorded digest",
                decision.slot
            ));
        }
        match images.by_version(decision.image.version) {
            Some(image) if image.sha256 == digest => {}
            _ => {
                return Oracle::fail(format!(
                    "booted version {} is not a signed image",
                    decision.image.version
                ));
            }
        }
        if record.committed_version < self.committed_floor || record.security_counter < self.counter_floor {
            return Oracle::fail(format!(
                "a commit that returned Ok was lost: committed {} counter {} after committing {} counter {}",
                record.committed_version, record.security_counter, self.committed_floor, self.counter_floor
            ));
        }
        if record.committed_version < self.committed_seen || record.security_counter < self.counter_seen {
            return Oracle::fail(format!(
                "committed state went backwards: {} counter {} after {} counter {}",
                record.committed_version, record.security_counter, self.committed_seen, self.counter_seen
            ));
        }
        self.committed_seen = record.committed_version;
        self.counter_seen = record.security_counter;
        if decision.image.version < record.committed_version {
            return Oracle::fail(format!(
                "booted version {} below the committed {}",
                decision.image.version, record.committed_version
            ));
        }
        Ok(())
    }

    fn note_commit<M: SimMedium>(&mut self, engine: &Engine<&mut M>) {
        let record = engine.record();
        self.committed_floor = self.committed_floor.max(record.committed_version);
        self.counter_floor = self.counter_floor.max(record.security_counter);
    }
}

/// Opens the engine and makes the boot decision, as a device does at power
/// on, and checks the decision.
fn power_on<'m, M: SimMedium>(
    medium: &'m mut M,
    images: &Images,
    oracle: &mut Oracle,
) -> Result<(Engine<&'m mut M>, BootDecision), Stop> {
    let (mut engine, _recovery) = Engine::open(medium, images.config.clone())?;
    let decision = engine.boot()?;
    oracle.check_boot(images, &engine, &decision)?;
    Ok((engine, decision))
}

fn install<M: SimMedium>(engine: &mut Engine<&mut M>, image: &Image, stop_after: Option<usize>) -> Result<(), Stop> {
    let mut staging = engine.stage(&image.signed_manifest)?;
    for chunk in image.bytes.chunks(CHUNK_BYTES) {
        staging.write(chunk)?;
        if stop_after.is_some_and(|limit| staging.written() as usize >= limit) {
            // The download broke off: the staging is dropped unfinished.
            return Ok(());
        }
    }
    staging.finish()?;
    engine.mark_trial()?;
    Ok(())
}

fn commit<M: SimMedium>(engine: &mut Engine<&mut M>, oracle: &mut Oracle) -> Result<(), Stop> {
    engine.commit()?;
    oracle.note_commit(engine);
    Ok(())
}

impl Scenario {
    /// Drives the device from whatever state it is in to the scenario's
    /// goal, power-on by power-on, as a device's update loop would.
    fn run<M: SimMedium>(self, medium: &mut M, images: &Images, oracle: &mut Oracle) -> Result<(), Stop> {
        for _ in 0..ROUNDS_MAX {
            let (mut engine, decision) = power_on(medium, images, oracle)?;
            if self.goal(&engine, &decision, images).is_ok() {
                return Ok(());
            }
            match self {
                Scenario::InstallCommit => {
                    if decision.reason == BootReason::Trial {
                        commit(&mut engine, oracle)?;
                        continue;
                    }
                    install(&mut engine, &images.v2, None)?;
                }
                Scenario::HealthFailAutoRollback => {
                    if decision.reason == BootReason::Trial {
                        // The health check fails: reboot without committing.
                        continue;
                    }
                    install(&mut engine, &images.v2, None)?;
                }
                Scenario::ExplicitRollback => {
                    if decision.reason == BootReason::Trial {
                        engine.rollback()?;
                        continue;
                    }
                    install(&mut engine, &images.v2, None)?;
                }
                Scenario::InterruptedThenNewInstall => {
                    if decision.reason == BootReason::Trial {
                        commit(&mut engine, oracle)?;
                        continue;
                    }
                    install(&mut engine, &images.v2, Some(images.v2.bytes.len() / 2))?;
                    install(&mut engine, &images.v3, None)?;
                }
            }
        }
        Err(Stop::NotConverged)
    }

    /// Whether the device, just booted, is where the scenario wants it.
    fn goal<M: SimMedium>(
        self,
        engine: &Engine<&mut M>,
        decision: &BootDecision,
        images: &Images,
    ) -> Result<(), String> {
        let record = engine.record();
        let (want_committed, want_rejected) = match self {
            Scenario::InstallCommit => (&images.v2, None),
            Scenario::HealthFailAutoRollback | Scenario::ExplicitRollback => (&images.v1, Some(&images.v2)),
            Scenario::InterruptedThenNewInstall => (&images.v3, None),
        };
        if record.committed_version != want_committed.version || decision.image.sha256 != want_committed.sha256 {
            return Err(format!(
                "expected {} committed and booted, found committed {} booted {}",
                want_committed.version, record.committed_version, decision.image.version
            ));
        }
        if record.trial.is_some() || decision.reason == BootReason::Trial {
            return Err("a trial is still pending".into());
        }
        if let Some(rejected) = want_rejected {
            match record.slots[decision.slot.other().index()] {
                SlotState::Rejected(image) if image.sha256 == rejected.sha256 => {}
                other => {
                    return Err(format!(
                        "expected {} rejected in the other slot, found {other:?}",
                        rejected.version
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A medium with v1 committed, and the clean operation count of each
/// scenario from there.
#[derive(Debug, Clone)]
struct Fixture<M> {
    setup: M,
    points: [u64; SCENARIOS.len()],
}

impl<M: SimMedium> Fixture<M> {
    fn new(kind: Medium, images: &Images) -> Result<Fixture<M>, String> {
        let mut setup = M::new_blank(kind)?;
        {
            let (mut engine, _) = Engine::open(&mut setup, images.config.clone()).map_err(|e| e.to_string())?;
            let mut staging = engine.stage(&images.v1.signed_manifest).map_err(|e| e.to_string())?;
            staging.write(&images.v1.bytes).map_err(|e| e.to_string())?;
            staging.finish().map_err(|e| e.to_string())?;
            engine.mark_trial().map_err(|e| e.to_string())?;
            engine.boot().map_err(|e| e.to_string())?;
            engine.commit().map_err(|e| e.to_string())?;
        }
        let mut points = [0; SCENARIOS.len()];
        for (idx, scenario) in SCENARIOS.into_iter().enumerate() {
            let mut medium = setup.clone();
            medium.set_fault(Fault::None);
            let mut oracle = Oracle::new(images);
            scenario
                .run(&mut medium, images, &mut oracle)
                .map_err(|stop| format!("clean run of {scenario} on {kind} failed: {}", describe(&stop)))?;
            points[idx] = medium.ops();
        }
        Ok(Fixture { setup, points })
    }

    /// Runs one case; `Err` carries the oracle's complaint.
    fn run_case(&self, case: &Case, images: &Images) -> Result<(), String> {
        let mut medium = self.setup.clone();
        let mut oracle = Oracle::new(images);
        for fault in &case.faults {
            medium.set_fault(*fault);
            let outcome = case.scenario.run(&mut medium, images, &mut oracle);
            match outcome {
                Ok(()) => {}
                Err(Stop::Engine(Error::Storage(_))) if *fault != Fault::None => {}
                Err(stop) => return Err(format!("under the fault: {}", describe(&stop))),
            }
            match fault {
                // The process restarts, the power stays on: nothing is lost.
                Fault::FailOnce { .. } | Fault::None => medium.set_fault(Fault::None),
                Fault::Cut { .. } | Fault::FailFrom { .. } => medium.power_cycle(),
            }
        }
        medium.set_fault(Fault::None);
        case.scenario
            .run(&mut medium, images, &mut oracle)
            .map_err(|stop| format!("clean run after the faults: {}", describe(&stop)))?;
        // The goal must be durable: lose everything unsynced and look again.
        medium.power_cycle();
        let (engine, decision) = power_on(&mut medium, images, &mut oracle)
            .map_err(|stop| format!("power-on after converging: {}", describe(&stop)))?;
        case.scenario
            .goal(&engine, &decision, images)
            .map_err(|reason| format!("goal lost by a power cut after converging: {reason}"))
    }
}

fn describe(stop: &Stop) -> String {
    match stop {
        Stop::Engine(error) => format!("engine error: {error}"),
        Stop::NotConverged => format!("did not reach the goal within {ROUNDS_MAX} boots"),
        Stop::Oracle(message) => format!("oracle: {message}"),
    }
}

/// Every medium's fixture.
struct Fixtures {
    files: Fixture<FileBackend<SimStore>>,
    flash1: [Fixture<FlashBackend<SimFlash<1, SIM_ERASE_SIZE>>>; 2],
    flash2: [Fixture<FlashBackend<SimFlash<2, SIM_ERASE_SIZE>>>; 2],
    flash4: [Fixture<FlashBackend<SimFlash<4, SIM_ERASE_SIZE>>>; 2],
    flash8: [Fixture<FlashBackend<SimFlash<8, SIM_ERASE_SIZE>>>; 2],
}

fn erased_idx(erased: u8) -> usize {
    usize::from(erased != 0xFF)
}

impl Fixtures {
    fn new(images: &Images) -> Result<Fixtures, String> {
        let pair = |write_size: usize| {
            [
                Medium::Flash {
                    write_size,
                    erased: 0xFF,
                },
                Medium::Flash {
                    write_size,
                    erased: 0x00,
                },
            ]
        };
        Ok(Fixtures {
            files: Fixture::new(Medium::Files, images)?,
            flash1: [Fixture::new(pair(1)[0], images)?, Fixture::new(pair(1)[1], images)?],
            flash2: [Fixture::new(pair(2)[0], images)?, Fixture::new(pair(2)[1], images)?],
            flash4: [Fixture::new(pair(4)[0], images)?, Fixture::new(pair(4)[1], images)?],
            flash8: [Fixture::new(pair(8)[0], images)?, Fixture::new(pair(8)[1], images)?],
        })
    }

    fn points(&self, medium: Medium) -> [u64; SCENARIOS.len()] {
        match medium {
            Medium::Files => self.files.points,
            Medium::Flash { write_size: 1, erased } => self.flash1[erased_idx(erased)].points,
            Medium::Flash { write_size: 2, erased } => self.flash2[erased_idx(erased)].points,
            Medium::Flash { write_size: 4, erased } => self.flash4[erased_idx(erased)].points,
            Medium::Flash { erased, .. } => self.flash8[erased_idx(erased)].points,
        }
    }

    fn run_case(&self, case: &Case, images: &Images) -> Result<(), String> {
        match case.medium {
            Medium::Files => self.files.run_case(case, images),
            Medium::Flash { write_size: 1, erased } => self.flash1[erased_idx(erased)].run_case(case, images),
            Medium::Flash { write_size: 2, erased } => self.flash2[erased_idx(erased)].run_case(case, images),
            Medium::Flash { write_size: 4, erased } => self.flash4[erased_idx(erased)].run_case(case, images),
            Medium::Flash { erased, .. } => self.flash8[erased_idx(erased)].run_case(case, images),
        }
    }

    /// Operations of a clean recovery after a first cut, for the linear
    /// multi-cut plan.
    fn recovery_points(&self, case: &Case, images: &Images) -> u64 {
        fn count<M: SimMedium>(fixture: &Fixture<M>, case: &Case, images: &Images) -> u64 {
            let mut medium = fixture.setup.clone();
            let mut oracle = Oracle::new(images);
            for fault in &case.faults {
                medium.set_fault(*fault);
                let _ = case.scenario.run(&mut medium, images, &mut oracle);
                medium.power_cycle();
            }
            medium.set_fault(Fault::None);
            let _ = case.scenario.run(&mut medium, images, &mut oracle);
            medium.ops()
        }
        match case.medium {
            Medium::Files => count(&self.files, case, images),
            Medium::Flash { write_size: 1, erased } => count(&self.flash1[erased_idx(erased)], case, images),
            Medium::Flash { write_size: 2, erased } => count(&self.flash2[erased_idx(erased)], case, images),
            Medium::Flash { write_size: 4, erased } => count(&self.flash4[erased_idx(erased)], case, images),
            Medium::Flash { erased, .. } => count(&self.flash8[erased_idx(erased)], case, images),
        }
    }
}

/// A seed for case `index` under master `seed` (SplitMix64 finaliser), so
/// each case's randomness is independent of how the others ran.
fn case_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The exhaustive part of the plan.
fn exhaustive_plan(fixtures: &Fixtures, images: &Images, seed: u64) -> (Vec<Case>, u64) {
    let mut cases = Vec::new();
    let mut points = 0;
    for medium in MEDIA {
        let counts = fixtures.points(medium);
        for (scenario_idx, scenario) in SCENARIOS.into_iter().enumerate() {
            let n_points = counts[scenario_idx];
            points += n_points;
            for at in 1..=n_points {
                for damage in medium.damages() {
                    let damage = damage.with_seed(case_seed(seed, cases.len() as u64));
                    cases.push(Case {
                        medium,
                        scenario,
                        faults: std::vec![Fault::Cut { at, damage }],
                    });
                }
                let io_faults = [
                    Fault::FailOnce {
                        at,
                        kind: StorageErrorKind::Io,
                    },
                    Fault::FailFrom {
                        at,
                        kind: StorageErrorKind::Io,
                        mutations_only: false,
                    },
                    Fault::FailFrom {
                        at,
                        kind: StorageErrorKind::NoSpace,
                        mutations_only: true,
                    },
                ];
                for fault in io_faults {
                    cases.push(Case {
                        medium,
                        scenario,
                        faults: std::vec![fault],
                    });
                }
            }
        }
    }
    // Cuts during recovery itself, linearly (littlefs): after a first cut at
    // every point, cut the recovery at every one of its points.
    for medium in [
        Medium::Files,
        Medium::Flash {
            write_size: 4,
            erased: 0xFF,
        },
    ] {
        let scenario = Scenario::InstallCommit;
        let first_damage = match medium {
            Medium::Files => Damage::LoseUnsynced,
            Medium::Flash { .. } => Damage::TornWord { seed },
        };
        for first_at in 1..=fixtures.points(medium)[0] {
            let first = Fault::Cut {
                at: first_at,
                damage: first_damage,
            };
            let probe = Case {
                medium,
                scenario,
                faults: std::vec![first],
            };
            let recovery_points = fixtures.recovery_points(&probe, images);
            for second_at in 1..=recovery_points {
                let second = Fault::Cut {
                    at: second_at,
                    damage: Damage::LoseUnsynced,
                };
                cases.push(Case {
                    medium,
                    scenario,
                    faults: std::vec![first, second],
                });
            }
        }
    }
    (cases, points)
}

/// A random multi-cut case (MCUboot's random multi-cut): two to four cuts
/// at random points with random damage, then a clean run.
fn random_case(fixtures: &Fixtures, seed: u64, index: u64) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(case_seed(seed, index));
    let medium = MEDIA[(rng.next_u64() % MEDIA.len() as u64) as usize];
    let scenario_idx = (rng.next_u64() % SCENARIOS.len() as u64) as usize;
    let n_points = fixtures.points(medium)[scenario_idx];
    let depth = 2 + rng.next_u64() % 3;
    let damages = medium.damages();
    let faults = (0..depth)
        .map(|_| {
            let at = 1 + rng.next_u64() % (n_points + 4);
            let kind = damages[(rng.next_u64() % damages.len() as u64) as usize];
            Fault::Cut {
                at,
                damage: kind.with_seed(rng.next_u64()),
            }
        })
        .collect();
    Case {
        medium,
        scenario: SCENARIOS[scenario_idx],
        faults,
    }
}

/// Runs the simulator.
///
/// `Err` means the simulator itself could not start (a bad fixture), not
/// that a case failed: failures are in the report.
pub fn run(config: &CrashSimConfig) -> Result<CrashReport, String> {
    let images = Images::new()?;
    let mut fixtures = Fixtures::new(&images)?;
    fixtures.files.setup.sabotage(config.sabotage);
    let (plan, points) = exhaustive_plan(&fixtures, &images, config.seed);
    let total = config.runs_min.max(plan.len() as u64);
    let case_at = |index: u64| -> Case {
        match plan.get(index as usize) {
            Some(case) => case.clone(),
            None => random_case(&fixtures, config.seed, index),
        }
    };
    let run_one = |index: u64| -> Option<CrashFailure> {
        let case = case_at(index);
        let outcome = catch_unwind(AssertUnwindSafe(|| fixtures.run_case(&case, &images)));
        if let Some(progress) = &config.progress {
            progress.fetch_add(1, Ordering::Relaxed);
        }
        let reason = match outcome {
            Ok(Ok(())) => return None,
            Ok(Err(reason)) => reason,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(ToString::to_string)
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("panicked: {message}")
            }
        };
        Some(CrashFailure {
            index,
            case: case.to_string(),
            reason,
        })
    };
    let mut failures = Vec::new();
    let runs = match config.only {
        Some(index) => {
            failures.extend(run_one(index));
            1
        }
        None => {
            let threads = config.threads.max(1) as u64;
            thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|worker| {
                        let run_one = &run_one;
                        scope.spawn(move || {
                            (worker..total)
                                .step_by(threads as usize)
                                .filter_map(run_one)
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for worker in workers {
                    match worker.join() {
                        Ok(found) => failures.extend(found),
                        Err(_) => failures.push(CrashFailure {
                            index: u64::MAX,
                            case: "worker thread".into(),
                            reason: "a worker thread panicked outside a case".into(),
                        }),
                    }
                }
            });
            total
        }
    };
    failures.sort_by_key(|failure| failure.index);
    Ok(CrashReport {
        scenarios: SCENARIO_FAMILIES,
        points,
        variants: DAMAGE_KINDS,
        runs,
        failures,
        seed: config.seed,
        runs_min: config.runs_min,
    })
}
