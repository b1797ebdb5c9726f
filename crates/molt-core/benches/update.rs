//! Update engine benchmarks.
//!
//! - `stage_fs/stage_16MiB`: [`Engine::stage`] + 64 KiB writes + `finish`
//!   of a 16 MiB image on [`FsStore`] in a temporary directory: sha256 while
//!   streaming, fsync of the image and the directory, read-back
//!   verification and the record writes. `stage_fs/sha256_only` hashes the
//!   same bytes, as the floor.
//! - `boot_decision/*`: [`Engine::boot`] with a committed 1 MiB image, which
//!   re-hashes the image, on `FsStore` and on `SimFlash`; `fs_open_boot`
//!   adds [`Engine::open`], as a device does after reset.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use molt_core::sim::SimFlash;
use molt_core::{
    Backend, BootReason, Config, Engine, FileBackend, FileLayout, FlashBackend, FlashLayout, FsStore, Manifest,
    TrustRoot, Version,
};
use sha2::{Digest, Sha256};

const STAGE_BYTES: usize = 16 * 1024 * 1024;
const CHUNK_BYTES: usize = 64 * 1024;
const BOOT_IMAGE_BYTES: usize = 1024 * 1024;
const NAME: &str = "agent";
const HARDWARE: &str = "bench";

type Flash = SimFlash<4, 4096>;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

fn config() -> Config {
    Config::new(NAME, HARDWARE, TrustRoot::new(&[key().verifying_key()], 1).unwrap())
}

/// `len` deterministic pseudo-random bytes.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn signed_manifest(image: &[u8], version: Version) -> Vec<u8> {
    Manifest {
        name: NAME.into(),
        version,
        security_counter: 1,
        length: image.len() as u64,
        sha256: Sha256::digest(image).into(),
        hardware_class: HARDWARE.into(),
    }
    .sign(&[&key()])
    .unwrap()
}

fn fs_engine(dir: &Path) -> Engine<FileBackend<FsStore>> {
    let backend = FileBackend::new(FsStore::open(dir).unwrap(), FileLayout::default());
    Engine::open(backend, config()).unwrap().0
}

fn stage<B: Backend>(engine: &mut Engine<B>, manifest: &[u8], image: &[u8]) {
    let mut staging = engine.stage(manifest).unwrap();
    for chunk in image.chunks(CHUNK_BYTES) {
        staging.write(chunk).unwrap();
    }
    staging.finish().unwrap();
}

/// Stages, trials, boots and commits `image` as version 1.0.0.
fn install<B: Backend>(engine: &mut Engine<B>, image: &[u8]) {
    stage(engine, &signed_manifest(image, Version::new(1, 0, 0)), image);
    engine.mark_trial().unwrap();
    assert_eq!(engine.boot().unwrap().reason, BootReason::Trial);
    engine.commit().unwrap();
}

fn stage_fs(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = image(STAGE_BYTES, 1);
    let manifest = signed_manifest(&bytes, Version::new(1, 0, 0));
    // Nothing is ever put on trial, so every iteration re-stages the same
    // inactive slot from scratch: invalidate, remove, write, fsync, verify,
    // record.
    let mut engine = fs_engine(tmp.path());

    let mut group = c.benchmark_group("stage_fs");
    group.throughput(Throughput::Bytes(STAGE_BYTES as u64));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("stage_16MiB", |b| {
        b.iter(|| stage(&mut engine, &manifest, black_box(&bytes)))
    });
    group.bench_function("sha256_only", |b| {
        b.iter(|| {
            let mut hasher = Sha256::new();
            for chunk in black_box(&bytes).chunks(CHUNK_BYTES) {
                hasher.update(chunk);
            }
            hasher.finalize()
        })
    });
    group.finish();
}

fn boot_decision(c: &mut Criterion) {
    let bytes = image(BOOT_IMAGE_BYTES, 2);

    let tmp = tempfile::tempdir().unwrap();
    let mut fs = fs_engine(tmp.path());
    install(&mut fs, &bytes);

    let slot_size = u32::try_from(BOOT_IMAGE_BYTES).unwrap();
    let layout = FlashLayout::sequential::<Flash>(slot_size, 0xFF);
    let capacity = layout.slot_offsets[1] as usize + BOOT_IMAGE_BYTES;
    let backend = FlashBackend::new(Flash::new(capacity, 0xFF), layout).unwrap();
    let mut flash = Engine::open(backend, config()).unwrap().0;
    install(&mut flash, &bytes);

    let mut group = c.benchmark_group("boot_decision");
    group.throughput(Throughput::Bytes(BOOT_IMAGE_BYTES as u64));
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("fs_boot_1MiB", |b| {
        b.iter(|| {
            let decision = fs.boot().unwrap();
            assert_eq!(decision.reason, BootReason::Committed);
            decision
        })
    });
    group.bench_function("fs_open_boot_1MiB", |b| {
        b.iter(|| {
            let mut engine = fs_engine(tmp.path());
            let decision = engine.boot().unwrap();
            assert_eq!(decision.reason, BootReason::Committed);
            decision
        })
    });
    group.bench_function("simflash_boot_1MiB", |b| {
        b.iter(|| {
            let decision = flash.boot().unwrap();
            assert_eq!(decision.reason, BootReason::Committed);
            decision
        })
    });
    group.finish();
}

criterion_group!(benches, stage_fs, boot_decision);
criterion_main!(benches);
