//! The engine's contract, operation by operation: every refusal is a typed
//! error and leaves the durable record as it was.

use ed25519_dalek::SigningKey;
use molt_core::sim::{SimFlash, SimStore};
use molt_core::{
    Backend, BootReason, BootRecord, Config, CopyStatus, Engine, Error, FileBackend, FileLayout, FileStore,
    FlashBackend, FlashLayout, LayoutError, Manifest, ManifestError, ManifestSignature, RecordError, Slot, SlotState,
    TrustRoot, Version,
};
use sha2::{Digest, Sha256};

const HW: &str = "board-1";

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn trust() -> TrustRoot {
    TrustRoot::new(
        &[key(1).verifying_key(), key(2).verifying_key(), key(3).verifying_key()],
        2,
    )
    .unwrap()
}

fn config() -> Config {
    Config::new("agent", HW, trust())
}

struct Image {
    bytes: Vec<u8>,
    manifest: Manifest,
}

fn image(version: &str, security_counter: u64, len: usize) -> Image {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
    let manifest = Manifest {
        name: "agent".into(),
        version: version.parse().unwrap(),
        security_counter,
        length: len as u64,
        sha256: Sha256::digest(&bytes).into(),
        hardware_class: HW.into(),
    };
    Image { bytes, manifest }
}

impl Image {
    fn signed(&self) -> Vec<u8> {
        self.manifest.sign(&[&key(1), &key(2)]).unwrap()
    }
}

type FileEngine = Engine<FileBackend<SimStore>>;

fn open_files() -> FileEngine {
    Engine::open(FileBackend::new(SimStore::new(), FileLayout::default()), config())
        .unwrap()
        .0
}

fn install<B: Backend>(engine: &mut Engine<B>, image: &Image) -> Result<(), Error> {
    let mut staging = engine.stage(&image.signed())?;
    for chunk in image.bytes.chunks(333) {
        staging.write(chunk)?;
    }
    staging.finish()?;
    engine.mark_trial()?;
    Ok(())
}

fn install_and_commit<B: Backend>(engine: &mut Engine<B>, image: &Image) {
    install(engine, image).unwrap();
    let decision = engine.boot().unwrap();
    assert_eq!(decision.reason, BootReason::Trial);
    engine.commit().unwrap();
}

/// A device with v1.0.0 (security counter 5) committed.
fn committed_device() -> FileEngine {
    let mut engine = open_files();
    install_and_commit(&mut engine, &image("1.0.0", 5, 1000));
    engine
}

/// Runs `step` on a committed device and checks its error and that the
/// durable record did not change.
fn check_refused(step: impl FnOnce(&mut FileEngine) -> Result<(), Error>, expect: Error) {
    let mut engine = committed_device();
    let before = *engine.record();
    let error = step(&mut engine).unwrap_err();
    assert_eq!(error, expect);
    assert_eq!(*engine.record(), before, "a refusal changed the record");
    let (reopened, _) = Engine::open(engine.into_backend(), config()).unwrap();
    assert_eq!(*reopened.record(), before, "a refusal changed the durable record");
}

#[test]
fn refusals_are_typed_and_change_nothing() {
    let v = |text: &str| -> Version { text.parse().unwrap() };
    check_refused(
        |engine| engine.stage(&image("0.9.0", 5, 10).signed()).map(drop),
        Error::VersionRollback {
            offered: v("0.9.0"),
            committed: v("1.0.0"),
        },
    );
    check_refused(
        |engine| engine.stage(&image("2.0.0", 4, 10).signed()).map(drop),
        Error::SecurityCounterRollback { offered: 4, current: 5 },
    );
    let mut other_hw = image("2.0.0", 5, 10);
    other_hw.manifest.hardware_class = "board-2".into();
    check_refused(
        |engine| engine.stage(&other_hw.signed()).map(drop),
        Error::WrongHardware {
            expected: HW.into(),
            found: "board-2".into(),
        },
    );
    let mut other_name = image("2.0.0", 5, 10);
    other_name.manifest.name = "module/threshold".into();
    check_refused(
        |engine| engine.stage(&other_name.signed()).map(drop),
        Error::WrongImage {
            expected: "agent".into(),
            found: "module/threshold".into(),
        },
    );
    let huge = image("2.0.0", 5, 10);
    let mut huge_manifest = huge.manifest.clone();
    huge_manifest.length = 1 << 40;
    check_refused(
        |engine| {
            engine
                .stage(&huge_manifest.sign(&[&key(1), &key(2)]).unwrap())
                .map(drop)
        },
        Error::ImageTooLarge {
            length: 1 << 40,
            capacity: FileLayout::default().slot_size_max_bytes,
        },
    );
    check_refused(|engine| engine.commit().map(drop), Error::NoTrial);
    check_refused(|engine| engine.rollback().map(drop), Error::NoTrial);
    check_refused(|engine| engine.mark_trial().map(drop), Error::NothingStaged);
}

#[test]
fn signatures_below_threshold_are_refused() {
    let signed_by = |keys: &[&SigningKey]| image("2.0.0", 5, 10).manifest.sign(keys).unwrap();
    let below = |valid| Error::Manifest(ManifestError::BelowThreshold { valid, threshold: 2 });
    check_refused(|engine| engine.stage(&signed_by(&[])).map(drop), below(0));
    check_refused(|engine| engine.stage(&signed_by(&[&key(1)])).map(drop), below(1));
    // Duplicate signatures from one key count once.
    check_refused(
        |engine| engine.stage(&signed_by(&[&key(1), &key(1), &key(1)])).map(drop),
        below(1),
    );
    // Keys that are not pinned count zero.
    check_refused(
        |engine| engine.stage(&signed_by(&[&key(1), &key(9)])).map(drop),
        below(1),
    );
    // A signature moved onto another pinned key's entry does not verify.
    let mut envelope: molt_core::Envelope = postcard::from_bytes(&signed_by(&[&key(1)])).unwrap();
    let stolen = envelope.signatures[0].signature.clone();
    envelope.signatures.push(ManifestSignature {
        public_key: key(2).verifying_key().to_bytes(),
        signature: stolen,
    });
    let forged = postcard::to_allocvec(&envelope).unwrap();
    check_refused(|engine| engine.stage(&forged).map(drop), below(1));
    // A body changed after signing does not verify.
    let mut envelope: molt_core::Envelope = postcard::from_bytes(&signed_by(&[&key(1), &key(2)])).unwrap();
    let last = envelope.body.len() - 1;
    envelope.body[last] ^= 1;
    let tampered = postcard::to_allocvec(&envelope).unwrap();
    check_refused(|engine| engine.stage(&tampered).map(drop), below(0));
}

#[test]
fn malformed_manifests_are_refused() {
    check_refused(
        |engine| engine.stage(b"not a manifest").map(drop),
        Error::Manifest(ManifestError::Malformed("not a manifest envelope")),
    );
    check_refused(
        |engine| engine.stage(&vec![0u8; 5000]).map(drop),
        Error::Manifest(ManifestError::TooLarge {
            size: 5000,
            limit: molt_core::MANIFEST_SIZE_MAX,
        }),
    );
}

#[test]
fn a_digest_mismatch_leaves_the_slot_invalid() {
    let mut engine = committed_device();
    let v2 = image("2.0.0", 5, 1000);
    let mut staging = engine.stage(&v2.signed()).unwrap();
    let mut corrupt = v2.bytes.clone();
    corrupt[500] ^= 0x40;
    staging.write(&corrupt).unwrap();
    assert_eq!(staging.finish().unwrap_err(), Error::DigestMismatch);
    assert_eq!(engine.record().slots[Slot::B.index()], SlotState::Invalid);
    assert_eq!(engine.mark_trial().unwrap_err(), Error::NothingStaged);
    // The committed image still boots.
    let decision = engine.boot().unwrap();
    assert_eq!((decision.slot, decision.reason), (Slot::A, BootReason::Committed));
}

#[test]
fn image_data_is_bounded_by_the_manifest_length() {
    let mut engine = committed_device();
    let v2 = image("2.0.0", 5, 1000);
    let mut staging = engine.stage(&v2.signed()).unwrap();
    staging.write(&v2.bytes).unwrap();
    assert_eq!(staging.write(&[0]).unwrap_err(), Error::ImageTooLong { limit: 1000 });
    assert_eq!(staging.write(&[]).unwrap_err(), Error::StagingFailed);

    let mut staging = engine.stage(&v2.signed()).unwrap();
    staging.write(&v2.bytes[..999]).unwrap();
    assert_eq!(
        staging.finish().unwrap_err(),
        Error::LengthMismatch {
            expected: 1000,
            written: 999
        }
    );
    assert_eq!(engine.record().slots[Slot::B.index()], SlotState::Invalid);
}

#[test]
fn trial_lifecycle_commit_rollback_and_exhaustion() {
    let mut engine = committed_device();
    let v2 = image("2.0.0", 6, 1500);
    install(&mut engine, &v2).unwrap();
    assert_eq!(
        engine.stage(&v2.signed()).unwrap_err(),
        Error::TrialInProgress { slot: Slot::B }
    );
    assert_eq!(engine.commit().unwrap_err(), Error::TrialNotBooted);

    // Attempts are spent durably, then the trial rolls back by itself.
    for attempts_left in [2, 1, 0] {
        let (mut reopened, _) = Engine::open(engine.into_backend(), config()).unwrap();
        let decision = reopened.boot().unwrap();
        assert_eq!(
            (decision.slot, decision.reason, decision.attempts_left),
            (Slot::B, BootReason::Trial, attempts_left)
        );
        engine = reopened;
    }
    let (mut engine, _) = Engine::open(engine.into_backend(), config()).unwrap();
    let decision = engine.boot().unwrap();
    assert_eq!(
        (decision.slot, decision.reason),
        (Slot::A, BootReason::AttemptsExhausted)
    );
    assert!(
        matches!(engine.record().slots[Slot::B.index()], SlotState::Rejected(info) if info.version == v2.manifest.version)
    );
    assert_eq!(engine.mark_trial().unwrap_err(), Error::NothingStaged);

    // Explicit rollback.
    install(&mut engine, &v2).unwrap();
    engine.boot().unwrap();
    assert_eq!(engine.rollback().unwrap(), Slot::B);
    assert_eq!(engine.boot().unwrap().slot, Slot::A);

    // Commit raises the floor.
    install_and_commit(&mut engine, &v2);
    let record = engine.record();
    assert_eq!(
        (record.active, record.committed_version, record.security_counter),
        (Some(Slot::B), v2.manifest.version, 6)
    );
    assert_eq!(engine.inactive_slot(), Slot::A);
}

#[test]
fn a_corrupt_trial_image_is_rolled_back_at_boot() {
    let mut engine = committed_device();
    install(&mut engine, &image("2.0.0", 5, 1000)).unwrap();
    let store = engine.backend_mut().store_mut();
    store.write("b.img", 10, &[0xEE; 4]).unwrap();
    let decision = engine.boot().unwrap();
    assert_eq!((decision.slot, decision.reason), (Slot::A, BootReason::TrialCorrupt));
}

#[test]
fn a_corrupt_committed_image_is_reported_not_booted() {
    let mut engine = committed_device();
    engine.backend_mut().store_mut().write("a.img", 0, &[0xEE]).unwrap();
    assert_eq!(engine.boot().unwrap_err(), Error::ActiveImageCorrupt { slot: Slot::A });
}

#[test]
fn a_corrupt_record_copy_falls_back_to_the_other() {
    let engine = committed_device();
    let newest = if engine.record().seq % 2 == 1 {
        "boot.0"
    } else {
        "boot.1"
    };
    let committed = *engine.record();
    let mut backend = engine.into_backend();
    let mut bytes = backend.store().contents(newest).unwrap();
    bytes[8] ^= 0xFF;
    backend.store_mut().write(newest, 0, &bytes).unwrap();
    let (engine, recovery) = Engine::open(backend, config()).unwrap();
    assert_eq!(recovery.fell_back(), Some(RecordError::Checksum));
    assert_eq!(engine.record().seq, committed.seq - 1, "the previous copy is used");

    // Both copies corrupt: a typed error, not a guess.
    let mut backend = engine.into_backend();
    for name in ["boot.0", "boot.1"] {
        backend.store_mut().write(name, 0, b"XXXX").unwrap();
    }
    let error = Engine::open(backend, config()).unwrap_err();
    assert_eq!(
        error,
        Error::NoValidRecord {
            copy0: RecordError::BadMagic,
            copy1: RecordError::BadMagic
        }
    );
}

#[test]
fn a_blank_device_has_nothing_to_boot() {
    let (mut engine, recovery) =
        Engine::open(FileBackend::new(SimStore::new(), FileLayout::default()), config()).unwrap();
    assert_eq!(recovery.copies, [CopyStatus::Missing, CopyStatus::Missing]);
    assert_eq!(engine.boot().unwrap_err(), Error::NoBootableImage);
}

#[test]
fn record_frames_reject_every_kind_of_damage() {
    let frame = BootRecord {
        seq: 7,
        ..BootRecord::default()
    }
    .encode()
    .unwrap();
    let check = |bytes: &[u8], expect: Result<u64, RecordError>| {
        assert_eq!(BootRecord::decode(bytes).map(|record| record.seq), expect, "{bytes:?}");
    };
    check(&frame, Ok(7));
    let mut padded = frame.clone();
    padded.extend_from_slice(&[0xFF; 40]);
    check(&padded, Ok(7));
    check(&frame[..5], Err(RecordError::Truncated));
    check(
        &frame[..frame.len() - 1],
        Err(RecordError::BadLength {
            length: frame.len() - 14,
        }),
    );
    let mut bad_magic = frame.clone();
    bad_magic[0] = b'X';
    check(&bad_magic, Err(RecordError::BadMagic));
    let mut flipped = frame.clone();
    flipped[7] ^= 1;
    check(&flipped, Err(RecordError::Checksum));
    let mut long = frame.clone();
    long[4] = 0xFF;
    long[5] = 0xFF;
    check(&long, Err(RecordError::BadLength { length: 0xFFFF }));
    // A well-checksummed record that breaks an invariant.
    let inconsistent = BootRecord {
        trial: Some(Slot::B),
        ..BootRecord::default()
    };
    assert_eq!(
        inconsistent.encode().unwrap_err(),
        RecordError::Inconsistent("trial slot is not ready")
    );
}

#[test]
fn versions_parse_strictly() {
    let check = |text: &str, expect: Option<Version>| assert_eq!(text.parse::<Version>().ok(), expect, "{text}");
    check("1.2.3", Some(Version::new(1, 2, 3)));
    check("0.0.0", Some(Version::new(0, 0, 0)));
    for bad in [
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.2.x",
        "1.2.3-rc1",
        " 1.2.3",
        "1..3",
        "4294967296.0.0",
    ] {
        check(bad, None);
    }
    assert!(Version::new(1, 10, 0) > Version::new(1, 9, 99));
}

#[test]
fn trust_roots_are_checked() {
    let keys = [key(1).verifying_key(), key(1).verifying_key()];
    assert_eq!(
        TrustRoot::new(&keys, 2).unwrap_err(),
        molt_core::TrustRootError::BadThreshold { threshold: 2, keys: 1 }
    );
    assert!(TrustRoot::new(&keys, 0).is_err());
}

type Flash = SimFlash<4, 256>;

#[test]
fn the_engine_runs_on_nor_flash_at_every_alignment() {
    fn run<const W: usize>(erased: u8) {
        let layout = FlashLayout::sequential::<SimFlash<W, 256>>(4096, erased);
        let capacity = layout.slot_offsets[1] as usize + 4096;
        let backend = FlashBackend::new(SimFlash::<W, 256>::new(capacity, erased), layout).unwrap();
        let (mut engine, _) = Engine::open(backend, config()).unwrap();
        install_and_commit(&mut engine, &image("1.0.0", 1, 1001));
        install_and_commit(&mut engine, &image("1.1.0", 1, 4093));
        let (mut engine, _) = Engine::open(engine.into_backend(), config()).unwrap();
        let decision = engine.boot().unwrap();
        assert_eq!(
            (decision.slot, decision.image.version),
            (Slot::B, Version::new(1, 1, 0)),
            "W={W} erased={erased:#x}"
        );
    }
    for erased in [0xFF, 0x00] {
        run::<1>(erased);
        run::<2>(erased);
        run::<4>(erased);
        run::<8>(erased);
    }
}

#[test]
fn flash_layouts_are_checked() {
    let flash = || Flash::new(8192, 0xFF);
    let check = |layout: FlashLayout, expect: LayoutError| {
        assert_eq!(FlashBackend::new(flash(), layout).unwrap_err(), expect);
    };
    let good = FlashLayout::sequential::<Flash>(2048, 0xFF);
    check(
        FlashLayout { slot_size: 100, ..good },
        LayoutError::SlotSize {
            slot_size: 100,
            erase_size: 256,
        },
    );
    check(
        FlashLayout {
            slot_offsets: [520, 4096],
            ..good
        },
        LayoutError::NotAligned {
            offset: 520,
            erase_size: 256,
        },
    );
    check(
        FlashLayout {
            slot_offsets: [512, 7168],
            ..good
        },
        LayoutError::OutOfBounds {
            offset: 7168,
            size: 2048,
            capacity: 8192,
        },
    );
    check(
        FlashLayout {
            slot_offsets: [512, 1024],
            ..good
        },
        LayoutError::Overlap {
            first: 512,
            second: 1024,
        },
    );
    assert!(FlashBackend::new(flash(), good).is_ok());
}

/// Regression: a crafted record with the largest sequence number made
/// `persist` overflow (a panic in debug, silently lost writes in release).
#[test]
fn sequence_number_exhaustion_is_a_typed_error() {
    let engine = committed_device();
    let record = BootRecord {
        seq: u64::MAX,
        ..*engine.record()
    };
    let mut backend = engine.into_backend();
    backend
        .store_mut()
        .write("boot.0", 0, &record.encode().unwrap())
        .unwrap();
    let (mut engine, _) = Engine::open(backend, config()).unwrap();
    assert_eq!(engine.record().seq, u64::MAX);
    assert_eq!(
        engine.stage(&image("2.0.0", 5, 10).signed()).map(drop).unwrap_err(),
        Error::SequenceExhausted
    );
    assert_eq!(engine.record().seq, u64::MAX);
}
