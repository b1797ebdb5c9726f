//! Live swap under load: sequence-numbered readings pumped at full speed
//! through at least 1,000 swaps, good and bad versions mixed. Every
//! reading's action must be delivered exactly once, in order, by the
//! version that served its batch.

use std::io::Write;

use molt_wasm::{
    Action, Deployment, PolicyModule, PolicyVersion, Reading, Runtime, RuntimeConfig, SwapConfig, SwapEvent,
};

use crate::rng::{Rng, env_u64};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Good,
    /// Traps on a reading it will meet during its trial.
    Traps,
    /// Returns a policy error during its trial.
    Errors,
}

fn version(module: &PolicyModule, idx: u64, kind: Kind, rng: &mut Rng) -> PolicyVersion {
    let tag = format!("v{idx}-{kind:?}");
    let mut config = vec![("tag".to_string(), tag.clone())];
    // Trial batches are 1..=48 readings and the trial lasts 4 batches, so a
    // modulus of 23 always meets its remainder within the trial.
    let remainder = rng.below(23).to_string();
    match kind {
        Kind::Good => {}
        Kind::Traps => {
            config.push(("trap_when_sequence_mod".into(), "23".into()));
            config.push(("trap_when_sequence_rem".into(), remainder));
        }
        Kind::Errors => {
            config.push(("error_when_sequence_mod".into(), "23".into()));
            config.push(("error_when_sequence_rem".into(), remainder));
        }
    }
    PolicyVersion {
        id: tag,
        module: module.clone(),
        config,
    }
}

#[test]
fn a_thousand_live_swaps_lose_and_duplicate_nothing() {
    let seed = env_u64("MOLT_SWAP_SEED").unwrap_or(0x5741_7053);
    let swaps_min = env_u64("MOLT_SWAP_COUNT").unwrap_or(1000);
    let mut rng = Rng(seed);
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let module = runtime.compile(molt_guests::SEQUENCE_ECHO).unwrap();
    let swap_config = SwapConfig {
        trial_batches: 4,
        ..SwapConfig::default()
    };
    let mut deployment = Deployment::start(version(&module, 0, Kind::Good, &mut rng), swap_config).unwrap();

    let mut next_sequence = 0u64;
    let mut expected_next = 0u64;
    let (mut lost, mut duplicated, mut reordered) = (0u64, 0u64, 0u64);
    let mut versions = 1u64;
    let mut reverted_seen = 0u64;
    let mut latencies = Vec::new();
    while deployment.stats().swaps < swaps_min {
        if !deployment.on_trial() && rng.below(2) == 0 {
            let kind = match rng.below(4) {
                0 => Kind::Traps,
                1 => Kind::Errors,
                _ => Kind::Good,
            };
            deployment.stage(version(&module, versions, kind, &mut rng)).unwrap();
            versions += 1;
        }
        let len = 1 + rng.below(48);
        let batch: Vec<Reading> = (0..len)
            .map(|offset| Reading {
                sequence: next_sequence + offset,
                sensor: ((next_sequence + offset) % 20) as u32,
                timestamp_ms: 1_700_000_000_000 + next_sequence + offset,
                value: (next_sequence + offset) as f64 * 0.5,
            })
            .collect();
        next_sequence += len;

        let outcome = deployment.process(batch);
        assert!(
            outcome.unprocessed.is_none(),
            "a batch was handed back: {:?}",
            outcome.unprocessed
        );
        assert!(
            outcome.policy_error.is_none(),
            "a policy error was delivered: {:?}",
            outcome.policy_error
        );
        for event in &outcome.events {
            match event {
                SwapEvent::Swapped { latency, .. } => latencies.push(*latency),
                SwapEvent::Reverted { from, .. } => {
                    assert!(!from.ends_with("Good"), "a good version was reverted: {event:?}");
                    reverted_seen += 1;
                }
                SwapEvent::SwapRefused { .. } | SwapEvent::Recovered { .. } => {
                    panic!("unexpected event in a run of well-formed versions: {event:?}")
                }
                _ => {}
            }
        }
        for action in &outcome.actions {
            let Action::Telemetry(telemetry) = action else {
                panic!("sequence-echo emits only telemetry, got {action:?}");
            };
            assert_eq!(
                telemetry.metric, outcome.served_by,
                "an action was credited to the wrong version"
            );
            let sequence = telemetry.value as u64;
            if sequence == expected_next {
                expected_next += 1;
            } else if sequence < expected_next {
                duplicated += 1;
            } else {
                reordered += 1;
                lost += sequence - expected_next;
                expected_next = sequence + 1;
            }
        }
    }
    lost += next_sequence - expected_next;
    let stats = deployment.stats();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    let line = format!(
        "swap-test: swaps={} reverted={} readings={next_sequence} lost={lost} duplicated={duplicated} reordered={reordered}\n\
         swap-test detail: commits={} switch latency p50={p50:?} p99={p99:?} (debug build; see docs/benchmarks.md) seed={seed}\n",
        stats.swaps, stats.reverts, stats.commits,
    );
    // Past libtest's capture, so the line shows in every run.
    std::io::stderr().write_all(line.as_bytes()).unwrap();
    assert!(stats.swaps >= swaps_min);
    assert_eq!(stats.reverts, reverted_seen);
    assert!(
        stats.reverts > 0 && stats.commits > 0,
        "the run must mix reverts and commits: {stats:?}"
    );
    assert_eq!((lost, duplicated, reordered), (0, 0, 0));
}

/// A committed version that traps is recreated from its checkpoint and
/// retried; a batch no version can process is handed back whole; after
/// `failures_max` failures the previous version takes over.
#[test]
fn a_committed_version_that_keeps_trapping_is_recovered_then_reverted() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let module = runtime.compile(molt_guests::SEQUENCE_ECHO).unwrap();
    let config = SwapConfig {
        trial_batches: 2,
        failures_max: 3,
        failure_window_batches: 100,
        checkpoint_interval_batches: 4,
        ..SwapConfig::default()
    };
    let tagged = |tag: &str, extra: &[(&str, &str)]| PolicyVersion {
        id: tag.to_string(),
        module: module.clone(),
        config: std::iter::once(("tag", tag))
            .chain(extra.iter().copied())
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
    };
    let mut deployment = Deployment::start(tagged("v1", &[]), config).unwrap();
    deployment
        .stage(tagged(
            "v2",
            &[("trap_when_sequence_mod", "100"), ("trap_when_sequence_rem", "50")],
        ))
        .unwrap();

    let mut delivered = Vec::new();
    let mut handed_back = Vec::new();
    let mut reverted_at = None;
    for batch_idx in 0..30u64 {
        let batch: Vec<Reading> = (batch_idx * 10..batch_idx * 10 + 10)
            .map(|sequence| Reading {
                sequence,
                sensor: 1,
                timestamp_ms: sequence,
                value: 0.0,
            })
            .collect();
        let outcome = deployment.process(batch.clone());
        if outcome
            .events
            .iter()
            .any(|event| matches!(event, SwapEvent::Reverted { .. }))
        {
            reverted_at.get_or_insert(batch_idx);
        }
        match outcome.unprocessed {
            Some((returned, failure)) => {
                assert_eq!(returned, batch, "a handed-back batch must come back whole");
                assert!(failure.to_string().contains("trap"), "{failure}");
                handed_back.push(batch_idx);
            }
            None => {
                for action in &outcome.actions {
                    let Action::Telemetry(telemetry) = action else {
                        panic!("{action:?}")
                    };
                    assert_eq!(telemetry.metric, outcome.served_by);
                    delivered.push(telemetry.value as u64);
                }
            }
        }
    }
    // v2 is committed after batches 1 and 2, traps on 50 and 150 (handed
    // back after a recovery and a retry each), and on 250 the third failure
    // brings v1 back, which processes that batch.
    assert_eq!(handed_back, [5, 15]);
    assert_eq!(reverted_at, Some(25));
    assert_eq!(deployment.active_version(), "v1");
    let expected: Vec<u64> = (0..300)
        .filter(|sequence| !(50..60).contains(sequence) && !(150..160).contains(sequence))
        .collect();
    assert_eq!(delivered, expected, "every other reading delivered once, in order");
    let stats = deployment.stats();
    assert_eq!(
        (stats.swaps, stats.commits, stats.reverts, stats.unprocessed_batches),
        (1, 1, 1, 2)
    );
}

/// A failing committed version whose state can no longer be snapshotted is
/// replaced by the previous version at the failing version's last
/// checkpoint, and the batches it processed since are replayed into the
/// previous version silently: its state afterwards is that of one instance
/// that processed every delivered batch, and nothing is delivered twice.
#[test]
fn a_revert_to_the_previous_version_replays_the_batches_since_the_last_checkpoint() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let module = runtime.compile(molt_guests::SEQUENCE_ECHO).unwrap();
    let config = SwapConfig {
        trial_batches: 2,
        failures_max: 1,
        failure_window_batches: 100,
        checkpoint_interval_batches: 4,
        ..SwapConfig::default()
    };
    let tagged = |tag: &str, extra: &[(&str, &str)]| PolicyVersion {
        id: tag.to_string(),
        module: module.clone(),
        config: std::iter::once(("tag", tag))
            .chain(extra.iter().copied())
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect(),
    };
    let batch_of = |batch_idx: u64| -> Vec<Reading> {
        (batch_idx * 10..batch_idx * 10 + 10)
            .map(|sequence| Reading {
                sequence,
                sensor: 1,
                timestamp_ms: sequence,
                value: 0.0,
            })
            .collect()
    };
    let mut deployment = Deployment::start(tagged("v1", &[]), config.clone()).unwrap();
    // v2 takes over at batch 1 and is committed after batch 2. Its
    // checkpoints after batches 4 and 8 succeed; from batch 12 on (sequence
    // 129) its snapshot traps, so its last checkpoint stays after batch 8.
    // On batch 13 it traps (sequence 135), is recovered and traps again,
    // and cannot be snapshotted: v1 takes over from the checkpoint after
    // batch 8 and must replay batches 9 to 12 before it serves batch 13.
    deployment
        .stage(tagged(
            "v2",
            &[
                ("trap_when_sequence_mod", "1000"),
                ("trap_when_sequence_rem", "135"),
                ("trap_in_snapshot_after_sequence", "100"),
            ],
        ))
        .unwrap();
    let mut delivered = Vec::new();
    let mut reverted_at = None;
    for batch_idx in 0..20u64 {
        let outcome = deployment.process(batch_of(batch_idx));
        assert!(
            outcome.unprocessed.is_none(),
            "batch {batch_idx}: {:?}",
            outcome.unprocessed
        );
        if outcome
            .events
            .iter()
            .any(|event| matches!(event, SwapEvent::Reverted { .. }))
        {
            reverted_at.get_or_insert(batch_idx);
        }
        for action in &outcome.actions {
            let Action::Telemetry(telemetry) = action else {
                panic!("{action:?}")
            };
            assert_eq!(telemetry.metric, outcome.served_by);
            delivered.push((telemetry.value as u64, outcome.served_by.clone()));
        }
    }
    assert_eq!(reverted_at, Some(13));
    assert_eq!(deployment.active_version(), "v1");
    let sequences: Vec<u64> = delivered.iter().map(|(sequence, _)| *sequence).collect();
    assert_eq!(
        sequences,
        (0..200).collect::<Vec<u64>>(),
        "every reading delivered once, in order"
    );
    assert!(delivered[..130].iter().skip(10).all(|(_, by)| by == "v2"));
    assert!(delivered[130..].iter().all(|(_, by)| by == "v1"));

    // The state is that of one v1 instance that processed all 20 batches;
    // without the replay it would be missing batches 9 to 12.
    let mut reference = Deployment::start(tagged("v1", &[]), config).unwrap();
    for batch_idx in 0..20u64 {
        assert!(reference.process(batch_of(batch_idx)).unprocessed.is_none());
    }
    assert_eq!(
        deployment.snapshot().unwrap().cid(),
        reference.snapshot().unwrap().cid(),
        "the previous version's state carries the batches since the checkpoint"
    );
}

/// A swap from `.wasm` can take over with Winch-compiled code, which is
/// ready sooner, and swap again to the Cranelift build of the same policy
/// once that is compiled (a tier-up). Across both swaps the actions and the
/// final state are exactly those of one Cranelift instance that processed
/// every batch itself.
#[test]
fn a_winch_version_tiers_up_to_cranelift_without_changing_a_result() {
    let cranelift = Runtime::new(&RuntimeConfig::default()).unwrap();
    let mut winch_config = RuntimeConfig::default();
    winch_config.compiler = molt_wasm::Compiler::Winch;
    let winch = Runtime::new(&winch_config).unwrap();
    let config: Vec<(String, String)> = vec![("threshold".into(), "30".into()), ("hysteresis".into(), "2".into())];
    let version = |id: &str, module: PolicyModule| PolicyVersion {
        id: id.into(),
        module,
        config: config.clone(),
    };
    let batches: Vec<Vec<Reading>> = (0..24u64)
        .map(|batch_idx| {
            (0..64u64)
                .map(|reading_idx| {
                    let sequence = batch_idx * 64 + reading_idx;
                    Reading {
                        sequence,
                        sensor: (sequence % 4) as u32,
                        timestamp_ms: 1_700_000_000_000 + sequence,
                        value: 20.0 + 12.0 * (sequence as f64 * 0.05).sin(),
                    }
                })
                .collect()
        })
        .collect();

    let cranelift_module = cranelift.compile(molt_guests::THRESHOLD).unwrap();
    let mut reference = cranelift_module.instantiate().unwrap();
    reference.init(&config).unwrap();
    let mut reference_actions = Vec::new();
    for batch in &batches {
        reference_actions.extend(reference.process(batch).unwrap());
    }
    assert!(!reference_actions.is_empty(), "the readings cross the threshold");

    let swap_config = SwapConfig {
        trial_batches: 2,
        ..SwapConfig::default()
    };
    let mut deployment = Deployment::start(version("v1", cranelift_module.clone()), swap_config).unwrap();
    let mut actions = Vec::new();
    let mut served_by = Vec::new();
    for (batch_idx, batch) in batches.iter().enumerate() {
        match batch_idx {
            8 => deployment
                .stage(version("v2-winch", winch.compile(molt_guests::THRESHOLD).unwrap()))
                .unwrap(),
            16 => deployment
                .stage(version("v2", cranelift.compile(molt_guests::THRESHOLD).unwrap()))
                .unwrap(),
            _ => {}
        }
        let outcome = deployment.process(batch.clone());
        assert!(
            outcome.unprocessed.is_none() && outcome.policy_error.is_none(),
            "{outcome:?}"
        );
        served_by.push(outcome.served_by);
        actions.extend(outcome.actions);
    }
    assert_eq!(served_by[8], "v2-winch");
    assert_eq!(served_by[16], "v2");
    assert_eq!(deployment.stats().swaps, 2);
    assert_eq!(deployment.stats().reverts, 0);
    assert_eq!(actions, reference_actions);
    assert_eq!(
        deployment.snapshot().unwrap().cid(),
        reference.snapshot().unwrap().cid()
    );
}
