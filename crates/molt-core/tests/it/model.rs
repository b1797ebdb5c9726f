//! Model-based test: random sequences of engine operations, with power cuts
//! at random storage operations, run against the real engine on a
//! [`SimStore`] and against a small reference model of the documented
//! semantics. After every step the result and the boot record must agree;
//! after a power cut the reopened engine must show a state the interrupted
//! operation could have left durably.
//!
//! Cases default to 1024 (well under a second); set `MOLT_MODEL_CASES` for
//! more. Failures are shrunk, persisted (under `tests/proptest-regressions`)
//! and replayed by proptest as usual.

use std::sync::LazyLock;

use ed25519_dalek::SigningKey;
use molt_core::sim::{Damage, Fault, SimStore};
use molt_core::{
    BootDecision, BootReason, BootRecord, Config, Engine, Error, FileBackend, FileLayout, FileStore, ImageInfo,
    Manifest, Slot, SlotState, StorageErrorKind, TrustRoot, Version,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

type Sut = Engine<FileBackend<SimStore>>;

/// Bytes per `Staging::write` call.
const CHUNK: usize = 64;
/// Trial boots before automatic rollback.
const ATTEMPTS_MAX: u8 = 2;
/// Version, security counter and length of each pre-signed image. Chosen so
/// that version and counter rollbacks are both reachable.
const IMAGE_SPECS: [(Version, u64, usize); 5] = [
    (Version::new(1, 0, 0), 1, 300),
    (Version::new(1, 1, 0), 1, 420),
    (Version::new(2, 0, 0), 3, 260),
    (Version::new(1, 5, 0), 0, 350),
    (Version::new(0, 9, 0), 5, 200),
];

struct Image {
    data: Vec<u8>,
    signed: Vec<u8>,
    info: ImageInfo,
}

struct Fixture {
    config: Config,
    images: Vec<Image>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let key = SigningKey::from_bytes(&[42; 32]);
    let trust = TrustRoot::new(&[key.verifying_key()], 1).unwrap();
    let mut config = Config::new("agent", "hw", trust);
    config.attempts_max = ATTEMPTS_MAX;
    let images = IMAGE_SPECS
        .iter()
        .enumerate()
        .map(|(idx, &(version, security_counter, length))| {
            let data: Vec<u8> = (0..length).map(|i| (i * 31 + idx * 7 + 3) as u8).collect();
            let manifest = Manifest {
                name: "agent".into(),
                version,
                security_counter,
                length: length as u64,
                sha256: Sha256::digest(&data).into(),
                hardware_class: "hw".into(),
            };
            let signed = manifest.sign(&[&key]).unwrap();
            let info = ImageInfo {
                version,
                security_counter,
                length: length as u64,
                sha256: manifest.sha256,
            };
            Image { data, signed, info }
        })
        .collect();
    Fixture { config, images }
});

#[derive(Debug, Clone)]
enum Op {
    /// Stage image `image`; `corrupt` flips a streamed byte, `truncate`
    /// streams half of it and drops the staging.
    Stage {
        image: usize,
        corrupt: bool,
        truncate: bool,
    },
    MarkTrial,
    Boot,
    Commit,
    Rollback,
    /// Cut power at storage operation `at_op` of the next step.
    PowerCut {
        at_op: u8,
        damage_idx: u8,
        seed: u64,
    },
    /// Reopen the engine on the same store (a process restart).
    Reboot,
}

fn damage(damage_idx: u8, seed: u64) -> Damage {
    match damage_idx % 6 {
        0 => Damage::LoseUnsynced,
        1 => Damage::KeepUnsynced,
        2 => Damage::RandomSubset { seed },
        3 => Damage::TornByte { seed },
        4 => Damage::TornWord { seed },
        _ => Damage::LoseNames,
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..IMAGE_SPECS.len(), prop::bool::weighted(0.15), prop::bool::weighted(0.15))
            .prop_map(|(image, corrupt, truncate)| Op::Stage { image, corrupt, truncate }),
        3 => Just(Op::MarkTrial),
        3 => Just(Op::Boot),
        3 => Just(Op::Commit),
        1 => Just(Op::Rollback),
        3 => (1u8..=30, 0u8..6, any::<u64>())
            .prop_map(|(at_op, damage_idx, seed)| Op::PowerCut { at_op, damage_idx, seed }),
        1 => Just(Op::Reboot),
    ]
}

/// What a successful operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    /// A staging dropped before it finished.
    Unit,
    Slot(Slot),
    Boot(BootDecision),
    Image(ImageInfo),
}

/// The reference model: the record's fields plus the session's booted slot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    active: Option<Slot>,
    trial: Option<Slot>,
    attempts_left: u8,
    committed_version: Version,
    security_counter: u64,
    slots: [SlotState; 2],
    /// Not durable: the slot the last boot decision of this engine chose.
    booted: Option<Slot>,
}

/// The outcome the model predicts for one operation.
struct Step {
    result: Result<Value, Error>,
    post: Model,
    /// Every durable state a power cut inside the operation may leave,
    /// including the pre- and post-state (with `booted` cleared).
    crash_states: Vec<Model>,
}

impl Model {
    fn new() -> Model {
        Model::from_record(&BootRecord::default(), None)
    }

    fn from_record(record: &BootRecord, booted: Option<Slot>) -> Model {
        Model {
            active: record.active,
            trial: record.trial,
            attempts_left: record.attempts_left,
            committed_version: record.committed_version,
            security_counter: record.security_counter,
            slots: record.slots,
            booted,
        }
    }

    fn durable(&self) -> Model {
        Model {
            booted: None,
            ..self.clone()
        }
    }

    fn inactive(&self) -> Slot {
        self.active.map_or(Slot::A, Slot::other)
    }

    fn step(&self, op: &Op, fx: &Fixture) -> Step {
        let mut next = self.clone();
        let mut crash_states = vec![self.durable()];
        let result = match *op {
            Op::Stage {
                image,
                corrupt,
                truncate,
            } => next.stage(&fx.images[image].info, corrupt, truncate, &mut crash_states),
            Op::MarkTrial => next.mark_trial(),
            Op::Boot => next.boot(),
            Op::Commit => next.commit(),
            Op::Rollback => next.rollback(),
            Op::Reboot => {
                next.booted = None;
                Ok(Value::Unit)
            }
            Op::PowerCut { .. } => unreachable!("power cuts are not steps"),
        };
        crash_states.push(next.durable());
        Step {
            result,
            post: next,
            crash_states,
        }
    }

    fn check_rollback(&self, image: &ImageInfo) -> Result<(), Error> {
        if image.version < self.committed_version {
            return Err(Error::VersionRollback {
                offered: image.version,
                committed: self.committed_version,
            });
        }
        if image.security_counter < self.security_counter {
            return Err(Error::SecurityCounterRollback {
                offered: image.security_counter,
                current: self.security_counter,
            });
        }
        Ok(())
    }

    fn stage(
        &mut self,
        image: &ImageInfo,
        corrupt: bool,
        truncate: bool,
        crash_states: &mut Vec<Model>,
    ) -> Result<Value, Error> {
        self.check_rollback(image)?;
        if let Some(slot) = self.trial {
            return Err(Error::TrialInProgress { slot });
        }
        let slot = self.inactive();
        self.slots[slot.index()] = SlotState::Invalid;
        crash_states.push(self.durable());
        if truncate {
            return Ok(Value::Unit);
        }
        if corrupt {
            return Err(Error::DigestMismatch);
        }
        self.slots[slot.index()] = SlotState::Ready(*image);
        Ok(Value::Image(*image))
    }

    fn mark_trial(&mut self) -> Result<Value, Error> {
        if let Some(slot) = self.trial {
            return Err(Error::TrialInProgress { slot });
        }
        let slot = self.inactive();
        let Some(image) = self.slots[slot.index()].ready().copied() else {
            return Err(Error::NothingStaged);
        };
        self.check_rollback(&image)?;
        self.trial = Some(slot);
        self.attempts_left = ATTEMPTS_MAX;
        Ok(Value::Slot(slot))
    }

    fn boot(&mut self) -> Result<Value, Error> {
        self.booted = None;
        if let Some(trial) = self.trial {
            if let Some(image) = self.slots[trial.index()].ready().copied()
                && self.attempts_left > 0
            {
                self.attempts_left -= 1;
                self.booted = Some(trial);
                return Ok(Value::Boot(BootDecision {
                    slot: trial,
                    image,
                    reason: BootReason::Trial,
                    attempts_left: self.attempts_left,
                }));
            }
            self.abandon(trial);
            return self.boot_committed(BootReason::AttemptsExhausted);
        }
        self.boot_committed(BootReason::Committed)
    }

    fn boot_committed(&mut self, reason: BootReason) -> Result<Value, Error> {
        let Some(active) = self.active else {
            return Err(Error::NoBootableImage);
        };
        let Some(image) = self.slots[active.index()].ready().copied() else {
            return Err(Error::NoBootableImage);
        };
        self.booted = Some(active);
        Ok(Value::Boot(BootDecision {
            slot: active,
            image,
            reason,
            attempts_left: 0,
        }))
    }

    fn commit(&mut self) -> Result<Value, Error> {
        let Some(trial) = self.trial else {
            return Err(Error::NoTrial);
        };
        if self.booted != Some(trial) {
            return Err(Error::TrialNotBooted);
        }
        let Some(image) = self.slots[trial.index()].ready().copied() else {
            return Err(Error::NothingStaged);
        };
        self.check_rollback(&image)?;
        self.active = Some(trial);
        self.trial = None;
        self.attempts_left = 0;
        self.committed_version = image.version;
        self.security_counter = self.security_counter.max(image.security_counter);
        Ok(Value::Image(image))
    }

    fn rollback(&mut self) -> Result<Value, Error> {
        let Some(trial) = self.trial else {
            return Err(Error::NoTrial);
        };
        self.abandon(trial);
        if self.booted == Some(trial) {
            self.booted = None;
        }
        Ok(Value::Slot(trial))
    }

    fn abandon(&mut self, trial: Slot) {
        self.trial = None;
        self.attempts_left = 0;
        self.slots[trial.index()] = match self.slots[trial.index()] {
            SlotState::Ready(image) => SlotState::Rejected(image),
            _ => SlotState::Invalid,
        };
    }
}

fn open(store: SimStore) -> Result<Sut, Error> {
    Engine::open(FileBackend::new(store, FileLayout::default()), FIXTURE.config.clone()).map(|(engine, _)| engine)
}

fn observed(engine: &Sut) -> Model {
    Model::from_record(engine.record(), engine.booted())
}

fn is_power_loss(result: &Result<Value, Error>) -> bool {
    matches!(result, Err(Error::Storage(error)) if error.kind == StorageErrorKind::PowerLoss)
}

/// Runs one non-reopen step on the engine.
fn execute(engine: &mut Sut, op: &Op, fx: &Fixture) -> Result<Value, Error> {
    match *op {
        Op::Stage {
            image,
            corrupt,
            truncate,
        } => {
            let image = &fx.images[image];
            let mut data = image.data.clone();
            if corrupt {
                let middle = data.len() * 3 / 4;
                data[middle] ^= 0x5a;
            }
            let end = if truncate { data.len() / 2 } else { data.len() };
            let mut staging = engine.stage(&image.signed)?;
            for chunk in data[..end].chunks(CHUNK) {
                staging.write(chunk)?;
            }
            if truncate {
                drop(staging);
                return Ok(Value::Unit);
            }
            staging.finish().map(Value::Image)
        }
        Op::MarkTrial => engine.mark_trial().map(Value::Slot),
        Op::Boot => engine.boot().map(Value::Boot),
        Op::Commit => engine.commit().map(Value::Image),
        Op::Rollback => engine.rollback().map(Value::Slot),
        Op::Reboot | Op::PowerCut { .. } => unreachable!("handled by the runner"),
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let fx = &*FIXTURE;
    let mut engine = open(SimStore::new()).unwrap();
    let mut model = Model::new();
    let mut armed: Option<Fault> = None;
    let mut last_seq = 0;

    for (index, op) in ops.iter().enumerate() {
        if let Op::PowerCut {
            at_op,
            damage_idx,
            seed,
        } = *op
        {
            armed = Some(Fault::Cut {
                at: u64::from(at_op),
                damage: damage(damage_idx, seed),
            });
            continue;
        }
        let fault = armed.take();
        if let Some(fault) = fault {
            engine.backend_mut().store_mut().set_fault(fault);
        }
        let step = model.step(op, fx);
        let floor = (model.committed_version, model.security_counter);

        let (result, cut) = if let Op::Reboot = op {
            let store = engine.into_backend().into_store();
            // `open` consumes the store and loses it on failure, so keep a
            // copy-on-write snapshot of what was there before it.
            let snapshot = store.clone();
            match open(store) {
                Ok(reopened) => {
                    engine = reopened;
                    (Ok(Value::Unit), false)
                }
                Err(error) => {
                    prop_assert!(
                        matches!(&error, Error::Storage(e) if e.kind == StorageErrorKind::PowerLoss),
                        "step {index}: open failed without a power cut: {error:?}"
                    );
                    // Cut power on the snapshot at once so the armed damage
                    // applies to everything pending before the open.
                    let mut store = snapshot;
                    if let Some(Fault::Cut { damage, .. }) = fault {
                        store.set_fault(Fault::Cut { at: 1, damage });
                    }
                    let _ = store.size("boot.0");
                    store.reboot();
                    engine = open(store).unwrap_or_else(|e| panic!("step {index}: reopen after cut failed: {e:?}"));
                    (Err(error), true)
                }
            }
        } else {
            let result = execute(&mut engine, op, fx);
            let cut = engine.backend().store().is_powered_off();
            if cut {
                prop_assert!(
                    is_power_loss(&result),
                    "step {index} {op:?}: power was cut but it returned {result:?}"
                );
                prop_assert_eq!(
                    engine.commit(),
                    Err(Error::Poisoned),
                    "step {}: engine not poisoned after a cut",
                    index
                );
                engine.backend_mut().store_mut().reboot();
                let store = engine.into_backend().into_store();
                engine = open(store).unwrap_or_else(|e| panic!("step {index}: reopen after cut failed: {e:?}"));
            }
            (result, cut)
        };

        if cut {
            let shown = observed(&engine);
            prop_assert!(
                step.crash_states.contains(&shown),
                "step {index} {op:?}: after a power cut the engine shows\n{shown:#?}\nnot one of\n{:#?}",
                step.crash_states
            );
            model = shown;
        } else {
            if fault.is_some() {
                // The cut lay beyond this step's last storage operation.
                engine.backend_mut().store_mut().set_fault(Fault::None);
            }
            prop_assert_eq!(&result, &step.result, "step {} {:?}: result", index, op);
            model = step.post;
            prop_assert_eq!(&observed(&engine), &model, "step {} {:?}: state", index, op);
        }

        let record = engine.record();
        prop_assert!(
            record.committed_version >= floor.0,
            "step {index}: committed version went down"
        );
        prop_assert!(
            record.security_counter >= floor.1,
            "step {index}: security counter went down"
        );
        prop_assert!(record.seq >= last_seq, "step {index}: record sequence went down");
        last_seq = record.seq;
    }
    Ok(())
}

fn proptest_config() -> ProptestConfig {
    let cases = std::env::var("MOLT_MODEL_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(1024);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op_strategy(), 1..=40)) {
        run(&ops)?;
    }
}
