//! Deterministic, content-addressed state: the same policy and input log
//! give the same state CID and the same actions across two runs, with the
//! pooling and the on-demand allocator, with Cranelift, Pulley and Winch,
//! and when replayed from an intermediate snapshot plus the rest of the log.
//!
//! The log is generated from a seed (SplitMix64) and mixes ordinary values
//! with NaNs of every sign and payload, infinities, both zeros, subnormals
//! and values near `f64::MAX`, so that any difference in float handling
//! between engines reaches the state or the actions.
//!
//! `MOLT_DETERMINISM_BATCHES` (default 200) sizes the log and
//! `MOLT_DETERMINISM_SEED` (decimal or `0x` hex) replays another one.

use std::fmt::Write as _;
use std::io::Write as _;

use crate::rng::{Rng, env_u64};
use molt_wasm::{Action, Allocator, Cid, Compiler, Reading, Runtime, RuntimeConfig, State, WASMTIME_VERSION};
use sha2::{Digest, Sha256};

const SEED_DEFAULT: u64 = 0x6d6f_6c74_2d64_6574;
const BATCHES_DEFAULT: u64 = 200;
const READINGS_PER_BATCH_MAX: u64 = 256;
const SENSORS: u64 = 20;

/// A sensor that reports exactly once, in the first half of the log. Every
/// example policy keeps a sensor's latest reading in its state until that
/// sensor reports again, so changing this one value must change the final
/// CID: the proof that the CID depends on the inputs at all.
const PROBE_SENSOR: u32 = 1_000;
const PROBE_VALUE: f64 = 0.5;

/// One example policy under test.
struct PolicyCase {
    name: &'static str,
    wasm: &'static [u8],
    config: &'static [(&'static str, &'static str)],
    /// What the probe reading's value becomes in the mutated log; chosen per
    /// policy as the smallest change that policy must remember.
    probe_mutated: f64,
}

#[test]
fn threshold_state_cid_is_deterministic() {
    check(&PolicyCase {
        name: "threshold",
        wasm: molt_guests::THRESHOLD,
        config: &[("threshold", "30"), ("hysteresis", "2")],
        // Below the threshold the probe leaves no trace; above it, an alarm.
        probe_mutated: 1_000.0,
    });
}

#[test]
fn moving_average_state_cid_is_deterministic() {
    check(&PolicyCase {
        name: "moving-average",
        wasm: molt_guests::MOVING_AVERAGE,
        config: &[("window", "8"), ("every", "3")],
        // One ulp: the window keeps the exact value.
        probe_mutated: f64::from_bits(PROBE_VALUE.to_bits() + 1),
    });
}

#[test]
fn deadband_state_cid_is_deterministic() {
    check(&PolicyCase {
        name: "deadband",
        wasm: molt_guests::DEADBAND,
        config: &[("deadband", "0.5")],
        // One ulp: a sensor's first reading is always published and kept.
        probe_mutated: f64::from_bits(PROBE_VALUE.to_bits() + 1),
    });
}

/// An engine configuration.
#[derive(Debug, Clone, Copy)]
struct Setup {
    label: &'static str,
    allocator: Allocator,
    compiler: Compiler,
}

const CRANELIFT_POOLING: Setup = Setup {
    label: "cranelift-pooling",
    allocator: Allocator::Pooling,
    compiler: Compiler::Cranelift,
};
const CRANELIFT_ON_DEMAND: Setup = Setup {
    label: "cranelift-ondemand",
    allocator: Allocator::OnDemand,
    compiler: Compiler::Cranelift,
};
const PULLEY_POOLING: Setup = Setup {
    label: "pulley-pooling",
    allocator: Allocator::Pooling,
    compiler: Compiler::Pulley,
};
const PULLEY_ON_DEMAND: Setup = Setup {
    label: "pulley-ondemand",
    allocator: Allocator::OnDemand,
    compiler: Compiler::Pulley,
};
const WINCH_POOLING: Setup = Setup {
    label: "winch-pooling",
    allocator: Allocator::Pooling,
    compiler: Compiler::Winch,
};
const WINCH_ON_DEMAND: Setup = Setup {
    label: "winch-ondemand",
    allocator: Allocator::OnDemand,
    compiler: Compiler::Winch,
};

/// One run compared against the reference. Every run builds its own
/// runtime and compiles the policy afresh.
struct Run {
    label: &'static str,
    setup: Setup,
    /// Start from the reference run's snapshot at the split batch (restored
    /// into a fresh instance) instead of from `init` and the first batches.
    from_snapshot: bool,
}

/// The first run is the reference the others are compared with.
const RUNS: [Run; 10] = [
    Run {
        label: "cranelift-pooling",
        setup: CRANELIFT_POOLING,
        from_snapshot: false,
    },
    Run {
        label: "cranelift-pooling-again",
        setup: CRANELIFT_POOLING,
        from_snapshot: false,
    },
    Run {
        label: "cranelift-ondemand",
        setup: CRANELIFT_ON_DEMAND,
        from_snapshot: false,
    },
    Run {
        label: "pulley-pooling",
        setup: PULLEY_POOLING,
        from_snapshot: false,
    },
    Run {
        label: "pulley-ondemand",
        setup: PULLEY_ON_DEMAND,
        from_snapshot: false,
    },
    Run {
        label: "winch-pooling",
        setup: WINCH_POOLING,
        from_snapshot: false,
    },
    Run {
        label: "winch-ondemand",
        setup: WINCH_ON_DEMAND,
        from_snapshot: false,
    },
    Run {
        label: "replay-from-snapshot",
        setup: CRANELIFT_POOLING,
        from_snapshot: true,
    },
    // A snapshot moves between devices: taken under Cranelift, resumed
    // under the interpreter.
    Run {
        label: "replay-from-snapshot-on-pulley",
        setup: PULLEY_ON_DEMAND,
        from_snapshot: true,
    },
    // And resumed under the baseline compiler, as after a swap from `.wasm`.
    Run {
        label: "replay-from-snapshot-on-winch",
        setup: WINCH_POOLING,
        from_snapshot: true,
    },
];

/// What one run produced.
struct Outcome {
    /// The CID after the split batch (for a replay: of the restored state).
    split_cid: Cid,
    /// The snapshot at the split batch, to replay from.
    split_state: State,
    final_cid: Cid,
    /// The first batch this run processed: 0, or the split for a replay.
    first_batch: usize,
    /// The actions of each batch processed, one line per action.
    rendered_batches: Vec<String>,
}

/// Runs `case` on every configuration of [`RUNS`] over the same generated
/// log, and once more over the log with one value changed, then asserts
/// that every run gave the reference's state CIDs and actions and that the
/// changed value changed the CID.
fn check(case: &PolicyCase) {
    let seed = env_u64("MOLT_DETERMINISM_SEED").unwrap_or(SEED_DEFAULT);
    let n_batches = env_u64("MOLT_DETERMINISM_BATCHES").unwrap_or(BATCHES_DEFAULT);
    assert!(
        n_batches >= 2,
        "MOLT_DETERMINISM_BATCHES must be at least 2 to split the log"
    );
    let log = InputLog::generate(seed, n_batches as usize);
    let replay_hint = format!("seed={seed:#x} batches={n_batches} (MOLT_DETERMINISM_SEED, MOLT_DETERMINISM_BATCHES)");

    let reference = run(case, &RUNS[0], &log, None);
    let mut mismatches = Vec::new();
    for other in &RUNS[1..] {
        let snapshot = other.from_snapshot.then_some(&reference.split_state);
        let outcome = run(case, other, &log, snapshot);
        mismatches.extend(differences(&reference, &outcome, other.label));
    }

    let mut mutated_log = log.clone();
    mutated_log.batches[log.probe_batch][log.probe_reading_idx].value = case.probe_mutated;
    let mutated = run(case, &RUNS[0], &mutated_log, None);

    let actions_text: String = reference.rendered_batches.concat();
    let configs: Vec<&str> = RUNS.iter().map(|other| other.label).collect();
    let line = format!(
        "determinism: policy={} wasmtime={WASMTIME_VERSION} cid={} split_cid={} split_batch={} mutated_cid={} \
         configs={} runs={} seed={seed:#x} batches={n_batches} readings={} actions={} actions_sha256={} \
         mismatches={}\n",
        case.name,
        reference.final_cid,
        reference.split_cid,
        log.split_batch,
        mutated.final_cid,
        configs.join(","),
        RUNS.len(),
        log.n_readings(),
        actions_text.lines().count(),
        hex(&Sha256::digest(actions_text.as_bytes())),
        mismatches.len(),
    );
    std::io::stderr().write_all(line.as_bytes()).unwrap();

    assert!(
        mismatches.is_empty(),
        "policy {} is not deterministic against {} ({replay_hint}):\n{}",
        case.name,
        RUNS[0].label,
        mismatches.join("\n")
    );
    assert!(
        !actions_text.is_empty(),
        "policy {}: the log produced no actions, so they compare nothing",
        case.name
    );
    assert_ne!(
        mutated.final_cid, reference.final_cid,
        "policy {}: changing the probe reading from {PROBE_VALUE:?} to {:?} left the state CID unchanged ({replay_hint})",
        case.name, case.probe_mutated
    );
}

/// Processes `log` under `run_plan`, from `init` or, when given, from the
/// snapshot at the split batch.
fn run(case: &PolicyCase, run_plan: &Run, log: &InputLog, snapshot: Option<&State>) -> Outcome {
    let what = format!("policy {} on {} ({})", case.name, run_plan.label, run_plan.setup.label);
    let mut runtime_config = RuntimeConfig::default();
    runtime_config.allocator = run_plan.setup.allocator;
    runtime_config.compiler = run_plan.setup.compiler;
    // The wall-clock backstop never shapes a result, so a generous one keeps
    // the interpreter on a busy machine from failing a test that is about
    // something else. Fuel stays at its default.
    runtime_config.limits.batch_deadline_ms = 60_000;
    assert!(runtime_config.deterministic, "deterministic mode is the default");
    let runtime = Runtime::new(&runtime_config).unwrap_or_else(|error| panic!("{what}: runtime: {error}"));
    let module = runtime
        .compile(case.wasm)
        .unwrap_or_else(|error| panic!("{what}: compile: {error}"));
    let config: Vec<(String, String)> = case
        .config
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    let mut policy = module
        .instantiate()
        .unwrap_or_else(|error| panic!("{what}: instantiate: {error}"));

    let first_batch;
    let mut split = None;
    match snapshot {
        None => {
            first_batch = 0;
            policy
                .init(&config)
                .unwrap_or_else(|error| panic!("{what}: init: {error}"));
        }
        Some(state) => {
            first_batch = log.split_batch;
            // As if the snapshot had been stored and read back: only its
            // bytes travel, and they are checked again on the way in.
            let stored = State::from_guest(state.bytes().to_vec(), runtime.limits().state_bytes_max)
                .unwrap_or_else(|error| panic!("{what}: stored snapshot: {error}"));
            policy
                .restore(&config, &stored)
                .unwrap_or_else(|error| panic!("{what}: restore: {error}"));
            split = Some(
                policy
                    .snapshot()
                    .unwrap_or_else(|error| panic!("{what}: snapshot: {error}")),
            );
        }
    }

    let mut rendered_batches = Vec::with_capacity(log.batches.len() - first_batch);
    for (batch_idx, batch) in log.batches.iter().enumerate().skip(first_batch) {
        if batch_idx == log.split_batch && split.is_none() {
            split = Some(
                policy
                    .snapshot()
                    .unwrap_or_else(|error| panic!("{what}: snapshot: {error}")),
            );
        }
        let actions = policy
            .process(batch)
            .unwrap_or_else(|error| panic!("{what}: batch {batch_idx}: {error}"));
        let mut rendered = String::new();
        for action in &actions {
            render(action, &mut rendered);
        }
        rendered_batches.push(rendered);
    }
    let split_state = split.unwrap_or_else(|| panic!("{what}: the split batch was never reached"));
    let final_cid = policy
        .snapshot()
        .unwrap_or_else(|error| panic!("{what}: snapshot: {error}"))
        .cid();
    Outcome {
        split_cid: split_state.cid(),
        split_state,
        final_cid,
        first_batch,
        rendered_batches,
    }
}

/// Everything in which `outcome` differs from `reference`, each a line
/// naming the run.
fn differences(reference: &Outcome, outcome: &Outcome, label: &str) -> Vec<String> {
    let mut found = Vec::new();
    if outcome.final_cid != reference.final_cid {
        found.push(format!(
            "{label}: final cid {} != {}",
            outcome.final_cid, reference.final_cid
        ));
    }
    if outcome.split_cid != reference.split_cid {
        found.push(format!(
            "{label}: split cid {} != {}",
            outcome.split_cid, reference.split_cid
        ));
    }
    let compared = reference.rendered_batches.iter().skip(outcome.first_batch);
    let first_difference = outcome
        .rendered_batches
        .iter()
        .zip(compared)
        .enumerate()
        .find(|(_, (mine, theirs))| mine != theirs);
    if let Some((offset, (mine, theirs))) = first_difference {
        let batch_idx = outcome.first_batch + offset;
        let (mine_line, theirs_line) = mine
            .lines()
            .zip(theirs.lines())
            .find(|(mine_line, theirs_line)| mine_line != theirs_line)
            .unwrap_or(("(a prefix of the other)", "(a prefix of the other)"));
        found.push(format!(
            "{label}: actions first differ in batch {batch_idx} ({} vs {} actions):\n  {label}: {mine_line}\n  reference: {theirs_line}",
            mine.lines().count(),
            theirs.lines().count(),
        ));
    }
    found
}

/// One line per action. Floats are written by their bits as well, since
/// `Debug` prints every NaN as `NaN` and a NaN's sign and payload are
/// exactly what an engine could change.
fn render(action: &Action, out: &mut String) {
    let _ = match action {
        Action::Telemetry(telemetry) => writeln!(
            out,
            "telemetry sensor={} timestamp_ms={} metric={:?} value={:?}/{:#018x}",
            telemetry.sensor,
            telemetry.timestamp_ms,
            telemetry.metric,
            telemetry.value,
            telemetry.value.to_bits()
        ),
        Action::Alert(alert) => writeln!(
            out,
            "alert sensor={} timestamp_ms={} severity={:?} message={:?}",
            alert.sensor, alert.timestamp_ms, alert.severity, alert.message
        ),
        Action::Command(command) => writeln!(
            out,
            "command actuator={:?} value={:?}/{:#018x}",
            command.actuator,
            command.value,
            command.value.to_bits()
        ),
        Action::Log(log_line) => writeln!(out, "log level={:?} message={:?}", log_line.level, log_line.message),
    };
}

/// The input log: batches of readings from [`SENSORS`] sensors with
/// timestamps that never go back, plus one probe reading.
#[derive(Clone)]
struct InputLog {
    batches: Vec<Vec<Reading>>,
    /// The snapshot to replay from is taken before this batch.
    split_batch: usize,
    probe_batch: usize,
    probe_reading_idx: usize,
}

impl InputLog {
    fn generate(seed: u64, n_batches: usize) -> InputLog {
        let mut rng = Rng(seed);
        let mut sequence = 0u64;
        let mut timestamp_ms = 1_700_000_000_000u64;
        let batches = (0..n_batches)
            .map(|_| {
                let n_readings = 1 + rng.below(READINGS_PER_BATCH_MAX);
                (0..n_readings)
                    .map(|_| {
                        sequence += 1;
                        timestamp_ms += rng.below(1_000);
                        Reading {
                            sequence,
                            sensor: rng.below(SENSORS) as u32,
                            timestamp_ms,
                            value: reading_value(&mut rng),
                        }
                    })
                    .collect::<Vec<Reading>>()
            })
            .collect::<Vec<_>>();
        let split_batch = n_batches / 2;
        let probe_batch = n_batches / 4;
        let probe_reading_idx = batches[probe_batch].len() - 1;
        let mut log = InputLog {
            batches,
            split_batch,
            probe_batch,
            probe_reading_idx,
        };
        let probe = &mut log.batches[probe_batch][probe_reading_idx];
        probe.sensor = PROBE_SENSOR;
        probe.value = PROBE_VALUE;
        log
    }

    fn n_readings(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }
}

const EXPONENT_MASK: u64 = 0x7ff0_0000_0000_0000;
const MANTISSA_MASK: u64 = 0x000f_ffff_ffff_ffff;
const SIGN_MASK: u64 = 0x8000_0000_0000_0000;

/// Mostly ordinary values around the threshold (a quarter of them on a
/// 0.25 grid, so exact repeats occur), and one in ten a value that stresses
/// float handling.
fn reading_value(rng: &mut Rng) -> f64 {
    let sign = rng.next() & SIGN_MASK;
    match rng.below(100) {
        // Any NaN: quiet or signalling, either sign, any payload.
        0 => f64::from_bits(sign | EXPONENT_MASK | (1 + rng.below(MANTISSA_MASK))),
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 => -0.0,
        4 => 0.0,
        // Subnormals.
        5 | 6 => f64::from_bits(sign | (1 + rng.below(MANTISSA_MASK))),
        7 => f64::from_bits(sign | f64::MIN_POSITIVE.to_bits()),
        // Within a factor of two of f64::MAX, so sums overflow to infinity.
        8 => f64::from_bits(sign | (0x7fe << 52) | rng.below(MANTISSA_MASK + 1)),
        // Any bit pattern at all.
        9 => f64::from_bits(rng.next()),
        10..=34 => 5.0 + 0.25 * rng.below(200) as f64,
        _ => 5.0 + 50.0 * (rng.next() >> 11) as f64 / (1u64 << 53) as f64,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// The one NaN deterministic mode lets a guest see: positive, quiet, no
/// payload (wasm's canonical NaN).
const CANONICAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0000;

/// Readings from which the chaos guest's `nan` mode computes NaNs: 0
/// (`0 / 0`, `0 * inf`), -1 (`sqrt`), both infinities, and NaNs of either
/// sign with a payload, which hardware carries through an operation. 4 is
/// there so that ordinary results are compared too.
const NAN_MAKING_VALUES: [f64; 7] = [
    0.0,
    -1.0,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::from_bits(0x7ff8_0000_0000_0001),
    f64::from_bits(0xfff8_0000_0000_0002),
    4.0,
];

/// The operations of the chaos guest's `nan` mode, natively: which results
/// are NaNs, and the exact bits of those that are not.
#[allow(clippy::eq_op, reason = "`value / value` is how 0 and infinities make a NaN")]
fn float_ops(value: f64) -> [f64; 4] {
    [value / value, value.sqrt(), value + 0.0, value * f64::INFINITY]
}

/// What the chaos guest's `nan` mode computed, and the state's CID.
struct NanRun {
    float_bits: Vec<u64>,
    cid: Cid,
}

fn nan_run(compiler: Compiler, deterministic: bool) -> NanRun {
    let what = format!("chaos nan on {compiler:?}, deterministic={deterministic}");
    let mut runtime_config = RuntimeConfig::default();
    runtime_config.compiler = compiler;
    runtime_config.deterministic = deterministic;
    runtime_config.limits.batch_deadline_ms = 60_000;
    let runtime = Runtime::new(&runtime_config).unwrap_or_else(|error| panic!("{what}: runtime: {error}"));
    let module = runtime
        .compile(molt_guests::CHAOS)
        .unwrap_or_else(|error| panic!("{what}: compile: {error}"));
    let mut policy = module.instantiate().unwrap();
    policy.init(&[("mode".into(), "nan".into())]).unwrap();
    let batch: Vec<Reading> = NAN_MAKING_VALUES
        .iter()
        .enumerate()
        .map(|(reading_idx, &value)| Reading {
            sequence: reading_idx as u64,
            sensor: 1,
            timestamp_ms: 1_700_000_000_000 + reading_idx as u64,
            value,
        })
        .collect();
    let actions = policy
        .process(&batch)
        .unwrap_or_else(|error| panic!("{what}: process: {error}"));
    assert!(actions.is_empty(), "{what}: {actions:?}");
    let state = policy.snapshot().unwrap();
    let decoded: ipld_core::ipld::Ipld = serde_ipld_dagcbor::from_slice(state.bytes()).unwrap();
    let ipld_core::ipld::Ipld::Map(fields) = decoded else {
        panic!("{what}: the state is not a map: {decoded:?}");
    };
    let Some(ipld_core::ipld::Ipld::List(bits)) = fields.get("float_bits") else {
        panic!("{what}: the state has no float_bits list: {fields:?}");
    };
    let float_bits = bits
        .iter()
        .map(|bits| match bits {
            ipld_core::ipld::Ipld::Integer(bits) => u64::try_from(*bits).unwrap(),
            other => panic!("{what}: float_bits holds {other:?}"),
        })
        .collect();
    NanRun {
        float_bits,
        cid: state.cid(),
    }
}

/// Deterministic mode makes every NaN a guest computes the canonical NaN,
/// so the state is the same on every compiler and host; without it the
/// same guest keeps the hardware's NaNs. Both halves are asserted: the
/// second proves the first is canonicalisation at work and not a guest
/// that never sees a NaN (the example policies drop non-finite readings).
#[test]
fn nan_canonicalisation_decides_the_state_of_a_guest_that_computes_nans() {
    let expected: Vec<f64> = NAN_MAKING_VALUES.iter().flat_map(|&value| float_ops(value)).collect();
    let n_nans = expected.iter().filter(|value| value.is_nan()).count();
    assert!(n_nans >= 10, "the readings make {n_nans} NaNs");

    let mut cids = Vec::new();
    for compiler in [Compiler::Cranelift, Compiler::Pulley, Compiler::Winch] {
        let deterministic = nan_run(compiler, true);
        let hardware = nan_run(compiler, false);
        eprintln!(
            "nan-canonicalisation: wasmtime={WASMTIME_VERSION} compiler={compiler:?} deterministic_cid={} \
             nondeterministic_cid={} nondeterministic_nans={}",
            deterministic.cid,
            hardware.cid,
            distinct_nans(&hardware.float_bits),
        );
        for run in [&deterministic, &hardware] {
            assert_eq!(run.float_bits.len(), expected.len(), "{compiler:?}");
            for (bits, expected) in run.float_bits.iter().zip(&expected) {
                if expected.is_nan() {
                    assert!(
                        f64::from_bits(*bits).is_nan(),
                        "{compiler:?}: {bits:#018x} for {expected:?}"
                    );
                } else {
                    assert_eq!(*bits, expected.to_bits(), "{compiler:?}: an ordinary result differs");
                }
            }
        }
        let non_canonical = |run: &NanRun| {
            run.float_bits
                .iter()
                .filter(|bits| f64::from_bits(**bits).is_nan() && **bits != CANONICAL_NAN_BITS)
                .count()
        };
        assert_eq!(
            non_canonical(&deterministic),
            0,
            "{compiler:?}: deterministic mode let a non-canonical NaN through: {}",
            distinct_nans(&deterministic.float_bits)
        );
        // The NaN operands' payloads survive an add on any hardware that
        // does not flush NaNs to a default one.
        assert!(
            non_canonical(&hardware) > 0,
            "{compiler:?}: without canonicalisation every NaN was still canonical, so this test would not notice \
             canonicalisation missing"
        );
        // x86_64's default NaN, which `0 / 0` and `sqrt(-1)` make, is negative.
        if cfg!(target_arch = "x86_64") {
            assert!(
                hardware.float_bits.contains(&0xfff8_0000_0000_0000),
                "{compiler:?}: no x86_64 default NaN without canonicalisation: {}",
                distinct_nans(&hardware.float_bits)
            );
        }
        assert_ne!(deterministic.cid, hardware.cid, "{compiler:?}");
        cids.push((compiler, deterministic.cid));
    }
    let (reference_compiler, reference_cid) = cids[0];
    for (compiler, cid) in &cids[1..] {
        assert_eq!(cid, &reference_cid, "{compiler:?} and {reference_compiler:?} disagree");
    }
}

/// The distinct NaN bit patterns among `float_bits`, for messages.
fn distinct_nans(float_bits: &[u64]) -> String {
    let mut nans: Vec<u64> = float_bits
        .iter()
        .copied()
        .filter(|bits| f64::from_bits(*bits).is_nan())
        .collect();
    nans.sort_unstable();
    nans.dedup();
    nans.iter()
        .map(|bits| format!("{bits:#018x}"))
        .collect::<Vec<_>>()
        .join(",")
}
