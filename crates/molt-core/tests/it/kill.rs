//! Real process death: a worker process installs images through `FsStore`
//! in an endless loop and is killed with SIGKILL at random moments. Every
//! restart must boot the old or the new image, byte for byte, and the
//! committed version must never go backwards.
//!
//! The worker is this very test binary, re-executed with
//! `MOLT_KILL_WORKER_DIR` set: [`sigkill_never_leaves_a_partial_image`]
//! checks for that variable first and, when it is set, runs the worker loop
//! instead of the parent. SIGKILL keeps the page cache, so this test proves
//! atomicity against process death, not against power loss (that is the
//! simulator's job).
//!
//! Knobs: `MOLT_KILL_RUNS` (kills, default 200) and `MOLT_KILL_SEED` (replays
//! the kill delays of an earlier run; the moments the kills land still
//! depend on timing).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use molt_core::{
    BootReason, Config, Engine, Error, FileBackend, FileLayout, FsStore, Manifest, Slot, SlotState, TrustRoot, Version,
    image_name,
};
use sha2::{Digest, Sha256};

const WORKER_DIR_ENV: &str = "MOLT_KILL_WORKER_DIR";
const RUNS_ENV: &str = "MOLT_KILL_RUNS";
const SEED_ENV: &str = "MOLT_KILL_SEED";
/// This test's name inside the `it` binary, for re-executing it.
const TEST_NAME: &str = "kill::sigkill_never_leaves_a_partial_image";
/// What the worker prints before touching the directory; the kill delay
/// counts from it, so that kills land in engine work, not process start-up.
const READY_LINE: &str = "kill-worker: ready";
/// How long a worker may take to start.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const RUNS_DEFAULT: u64 = 200;
/// Kills land uniformly in `0..KILL_WINDOW_US` after the worker is ready.
const KILL_WINDOW_US: u64 = 15_000;
/// The kill window for the occasional long-lived worker.
const LONG_KILL_WINDOW_US: u64 = 300_000;
const IMAGE_LEN_MIN: u64 = 256 * 1024;
const IMAGE_LEN_SPREAD: u64 = 768 * 1024;
const CHUNK_BYTES: usize = 64 * 1024;
const NAME: &str = "agent";
const HARDWARE: &str = "kill-test";

/// Image `n` has version `1.0.n`; nothing committed reads as `0.0.0`.
fn version_of(n: u32) -> Version {
    Version::new(1, 0, n)
}

/// The image number of a version the worker staged.
fn number_of(version: Version) -> u32 {
    assert_eq!(
        (version.major, version.minor),
        (1, 0),
        "version {version} was never staged by the worker"
    );
    assert!(version.patch > 0, "version {version} was never staged by the worker");
    version.patch
}

/// The number of the image the worker stages on top of `committed`.
fn next_number(committed: Version) -> u32 {
    if committed == Version::default() {
        1
    } else {
        number_of(committed) + 1
    }
}

/// Between 256 KiB and 1 MiB, rarely a multiple of anything.
fn image_len(n: u32) -> u64 {
    IMAGE_LEN_MIN + (u64::from(n) * 97_007) % IMAGE_LEN_SPREAD
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The deterministic pseudo-random bytes of image `n`.
fn image_bytes(n: u32) -> Vec<u8> {
    let len = usize::try_from(image_len(n)).unwrap();
    let mut state = 0x6D6F_6C74_0000_0000 ^ u64::from(n);
    let mut bytes = Vec::with_capacity(len.next_multiple_of(8));
    while bytes.len() < len {
        bytes.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[0x4B; 32])
}

fn config() -> Config {
    let trust = TrustRoot::new(&[signing_key().verifying_key()], 1).unwrap();
    Config::new(NAME, HARDWARE, trust)
}

fn open_engine(dir: &Path) -> (Engine<FileBackend<FsStore>>, molt_core::Recovery) {
    let store = FsStore::open(dir).unwrap();
    Engine::open(FileBackend::new(store, FileLayout::default()), config()).unwrap()
}

#[test]
fn sigkill_never_leaves_a_partial_image() {
    if let Some(dir) = std::env::var_os(WORKER_DIR_ENV) {
        run_worker(Path::new(&dir));
    }
    run_parent();
}

/// The worker: installs image after image forever and writes nothing else.
/// Any engine error panics, which the parent sees as an exit instead of a
/// kill.
fn run_worker(dir: &Path) -> ! {
    println!("{READY_LINE}");
    let key = signing_key();
    loop {
        let (mut engine, _recovery) = open_engine(dir);
        match engine.boot() {
            // The trial image "runs" and passes its health check.
            Ok(decision) if decision.reason == BootReason::Trial => {
                engine.commit().unwrap();
                continue;
            }
            Ok(_) | Err(Error::NoBootableImage) => {}
            Err(error) => panic!("worker boot failed: {error}"),
        }
        let n = next_number(engine.record().committed_version);
        let image = image_bytes(n);
        let manifest = Manifest {
            name: NAME.into(),
            version: version_of(n),
            security_counter: u64::from(n),
            length: image.len() as u64,
            sha256: Sha256::digest(&image).into(),
            hardware_class: HARDWARE.into(),
        };
        let signed = manifest.sign(&[&key]).unwrap();
        let mut staging = engine.stage(&signed).unwrap();
        for chunk in image.chunks(CHUNK_BYTES) {
            staging.write(chunk).unwrap();
        }
        staging.finish().unwrap();
        engine.mark_trial().unwrap();
        // Reopen, boot the trial and commit it at the top of the loop.
    }
}

/// A small deterministic generator for the kill delays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        splitmix64(&mut self.0) % bound
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// The expected sha256 and length of image `n`, computed once.
#[derive(Default)]
struct Oracle(HashMap<u32, ([u8; 32], u64)>);

impl Oracle {
    fn expect(&mut self, n: u32) -> ([u8; 32], u64) {
        *self.0.entry(n).or_insert_with(|| {
            let image = image_bytes(n);
            (Sha256::digest(&image).into(), image.len() as u64)
        })
    }
}

#[derive(Default)]
struct Tally {
    kills: u64,
    verified: u64,
    /// Restarts that found a newer committed version than the last one.
    advanced: u64,
    /// Restarts that found an install cut short: a trial not yet committed,
    /// an inactive slot with a partial or unrecorded image, or a record
    /// replacement interrupted before its rename.
    mid_install: u64,
    trial_boots: u64,
    rollbacks: u64,
}

fn spawn_worker(dir: &Path) -> (Child, ChildStdout) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(WORKER_DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (child, stdout)
}

/// Waits for the worker's ready line; false if its stdout ends first or it
/// takes longer than [`READY_TIMEOUT`].
fn wait_ready(stdout: ChildStdout) -> bool {
    let (sender, receiver) = mpsc::channel();
    // The reader thread ends when the worker dies and its stdout closes.
    std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = sender.send(false);
                return;
            }
            // libtest prints the test's name on the same line first.
            if line.trim_end().ends_with(READY_LINE) {
                let _ = sender.send(true);
                // Keep draining so the worker never blocks on a full pipe.
                while stdout.read_line(&mut line).unwrap_or(0) > 0 {
                    line.clear();
                }
                return;
            }
        }
    });
    receiver.recv_timeout(READY_TIMEOUT).unwrap_or(false)
}

fn worker_stderr(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut text).unwrap();
    }
    text
}

fn run_parent() {
    let runs = env_u64(RUNS_ENV).unwrap_or(RUNS_DEFAULT);
    let seed = env_u64(SEED_ENV).unwrap_or_else(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
    });
    println!("kill-test: seed={seed} runs={runs} (replay with {SEED_ENV}={seed})");
    assert!(runs > 0, "{RUNS_ENV} must be at least 1");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("molt");
    let mut oracle = Oracle::default();
    let mut tally = Tally::default();
    let mut committed = Version::default();
    let started = Instant::now();

    for run in 0..runs {
        // Every tenth worker lives long enough to finish an install, so
        // versions keep advancing even on a loaded machine where short
        // windows would only ever catch the first write.
        let window_us = if run % 10 == 9 {
            LONG_KILL_WINDOW_US
        } else {
            KILL_WINDOW_US
        };
        let delay = Duration::from_micros(rng.below(window_us));
        let (mut child, stdout) = spawn_worker(&dir);
        let ready = wait_ready(stdout);
        if ready {
            std::thread::sleep(delay);
        }
        // SIGKILL on Unix.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let stderr = worker_stderr(&mut child);
        assert!(
            ready,
            "run {run} (seed {seed}): worker never got ready: {status}\n{stderr}"
        );
        assert_killed(&status, run, seed, &stderr);
        tally.kills += 1;

        let context = format!("run {run} (seed {seed}, delay {delay:?})");
        let stale_tmp = list_names(&dir).iter().any(|name| name.ends_with(".tmp"));
        let (mut engine, recovery) = open_engine(&dir);
        // Record copies are replaced by rename, so a killed process can
        // never leave a torn one behind.
        assert_eq!(
            recovery.fell_back(),
            None,
            "{context}: a record copy is corrupt: {recovery:?}"
        );
        let record = *engine.record();
        assert!(
            record.committed_version >= committed,
            "{context}: committed version went back from {committed} to {}",
            record.committed_version
        );
        if record.committed_version > committed {
            number_of(record.committed_version);
            tally.advanced += 1;
        }
        committed = record.committed_version;
        let inactive = engine.inactive_slot();
        let inactive_file = dir.join(image_name(inactive)).exists();
        let partial = record.slots[inactive.index()] == SlotState::Invalid && inactive_file;
        if stale_tmp || partial || record.trial.is_some() {
            tally.mid_install += 1;
        }

        match engine.boot() {
            Ok(decision) => {
                let n = number_of(decision.image.version);
                match decision.reason {
                    BootReason::Trial => {
                        tally.trial_boots += 1;
                        assert_eq!(
                            Some(decision.slot),
                            record.trial,
                            "{context}: booted trial is not the trial slot"
                        );
                        assert_eq!(n, next_number(committed), "{context}: trial is not the next image");
                    }
                    reason => {
                        if reason != BootReason::Committed {
                            tally.rollbacks += 1;
                        }
                        assert_eq!(
                            Some(decision.slot),
                            record.active,
                            "{context}: {reason:?} boot is not the active slot"
                        );
                        assert_eq!(
                            decision.image.version, committed,
                            "{context}: booted something not committed"
                        );
                    }
                }
                assert_eq!(
                    (decision.image.sha256, decision.image.length),
                    oracle.expect(n),
                    "{context}: the record's digest or length of image {n}"
                );
                assert_slot_holds(&dir, decision.slot, n, &mut oracle, &context);
            }
            Err(Error::NoBootableImage) => {
                assert_eq!(
                    committed,
                    Version::default(),
                    "{context}: committed {committed} but nothing boots"
                );
                assert_eq!(
                    engine.record().active,
                    None,
                    "{context}: an active slot that does not boot"
                );
            }
            Err(error) => panic!("{context}: boot failed: {error}"),
        }
        assert_eq!(
            engine.record().committed_version,
            committed,
            "{context}: boot changed the committed version"
        );
        // Whatever the boot decided, the committed image is still intact in
        // the active slot: an install never touches it.
        if let Some(active) = record.active {
            assert_slot_holds(&dir, active, number_of(committed), &mut oracle, &context);
        }
        tally.verified += 1;
    }

    // Past libtest's capture, so the line shows in every run.
    let line = format!(
        "kill-test: kills={} restarts-verified={} versions-advanced={} seed={seed}\n",
        tally.kills, tally.verified, tally.advanced
    );
    std::io::stderr().write_all(line.as_bytes()).unwrap();
    println!(
        "kill-test detail: mid-install={} trial-boots={} rollbacks={} final-version={committed} elapsed={:?}",
        tally.mid_install,
        tally.trial_boots,
        tally.rollbacks,
        started.elapsed()
    );
    assert_eq!(tally.verified, runs);
    assert!(
        tally.advanced > 0,
        "the worker never committed a new version: the kills prove nothing"
    );
    assert!(
        tally.mid_install > 0,
        "no kill ever interrupted an install: the kills prove nothing"
    );
}

/// Asserts that the file of `slot` starts with exactly image `n`.
fn assert_slot_holds(dir: &Path, slot: Slot, n: u32, oracle: &mut Oracle, context: &str) {
    let (sha256, length) = oracle.expect(n);
    let name = image_name(slot);
    let on_disk = std::fs::read(dir.join(name)).unwrap();
    assert!(
        on_disk.len() as u64 >= length,
        "{context}: {name} holds {} bytes, image {n} has {length}",
        on_disk.len()
    );
    let digest: [u8; 32] = Sha256::digest(&on_disk[..length as usize]).into();
    assert_eq!(digest, sha256, "{context}: {name} is not image {n}");
}

fn list_names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("listing {}: {error}", dir.display()),
    }
}

fn assert_killed(status: &std::process::ExitStatus, run: u64, seed: u64, stderr: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "run {run} (seed {seed}): the worker was not killed but exited with {status}:\n{stderr}"
    );
}
