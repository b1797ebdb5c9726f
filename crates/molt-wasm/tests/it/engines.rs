//! Every engine configuration runs a policy to the same result.

use molt_wasm::{Allocator, Compiler, PolicyInstance, PolicyModule, Reading, Runtime, RuntimeConfig};

use crate::fixtures::{Core, component_with_imports, echoed, readings};

/// Everything a run produces that must not depend on the engine.
#[derive(Debug, PartialEq)]
struct Outcome {
    actions: Vec<molt_wasm::Action>,
    state_cid: String,
    fuel_per_batch: Vec<u64>,
}

fn run(config: &RuntimeConfig) -> Outcome {
    let runtime = Runtime::new(config).unwrap();
    let module = runtime.compile(molt_guests::MOVING_AVERAGE).unwrap();
    let mut policy = module.instantiate().unwrap();
    policy
        .init(&[("window".into(), "4".into()), ("every".into(), "2".into())])
        .unwrap();
    let mut actions = Vec::new();
    let mut fuel_per_batch = Vec::new();
    for batch_idx in 0..8u64 {
        let batch: Vec<Reading> = (0..16)
            .map(|reading_idx| {
                let sequence = batch_idx * 16 + reading_idx;
                Reading {
                    sequence,
                    sensor: (sequence % 3) as u32,
                    timestamp_ms: 1_000 * sequence,
                    // Varied floats, so a difference in float handling shows.
                    value: (sequence as f64 * 0.37).sin() * 100.0,
                }
            })
            .collect();
        actions.extend(policy.process(&batch).unwrap());
        fuel_per_batch.push(policy.fuel_consumed_last_call());
    }
    let state_cid = policy.snapshot().unwrap().cid().to_string();
    Outcome {
        actions,
        state_cid,
        fuel_per_batch,
    }
}

#[test]
fn allocators_and_compilers_agree_on_actions_state_and_fuel() {
    let mut outcomes = Vec::new();
    for allocator in [Allocator::Pooling, Allocator::OnDemand] {
        for compiler in [Compiler::Cranelift, Compiler::Pulley, Compiler::Winch] {
            let mut config = RuntimeConfig::default();
            config.allocator = allocator;
            config.compiler = compiler;
            outcomes.push(((allocator, compiler), run(&config)));
        }
    }
    let (reference_engine, reference) = &outcomes[0];
    assert!(!reference.actions.is_empty());
    // Cranelift and Pulley (which Cranelift compiles for) meter fuel alike;
    // Winch puts its own fuel counts on the same operators, so a Winch
    // engine is compared with the Winch engine of the other allocator.
    let winch_reference = outcomes
        .iter()
        .find(|((_, compiler), _)| *compiler == Compiler::Winch)
        .map(|(_, outcome)| outcome)
        .unwrap();
    for (engine @ (_, compiler), outcome) in &outcomes[1..] {
        assert_eq!(
            outcome.actions, reference.actions,
            "{engine:?} differs from {reference_engine:?}"
        );
        assert_eq!(
            outcome.state_cid, reference.state_cid,
            "{engine:?} differs from {reference_engine:?}"
        );
        let fuel_reference = if *compiler == Compiler::Winch {
            winch_reference
        } else {
            reference
        };
        assert_eq!(
            outcome.fuel_per_batch, fuel_reference.fuel_per_batch,
            "{engine:?} uses other fuel than its compiler's reference"
        );
    }
    let fuel_total = |outcome: &Outcome| outcome.fuel_per_batch.iter().sum::<u64>();
    eprintln!(
        "engines: fuel for 8 batches: cranelift and pulley {}, winch {}",
        fuel_total(reference),
        fuel_total(winch_reference)
    );
}

#[test]
fn non_deterministic_mode_still_runs() {
    let mut config = RuntimeConfig::default();
    config.deterministic = false;
    let runtime = Runtime::new(&config).unwrap();
    let mut policy = runtime
        .compile(&crate::fixtures::echo())
        .unwrap()
        .instantiate()
        .unwrap();
    policy.init(&[]).unwrap();
    let batch = readings(1, 3);
    assert_eq!(policy.process(&batch).unwrap(), echoed(&batch));
}

/// A world's `use` of interface types may show up as an import of an
/// instance that carries only types; it needs nothing from the host.
#[test]
fn types_only_import_is_accepted() {
    let wasm = component_with_imports(
        r#"(import "molt:policy/types@0.1.0"
             (instance
               (type $unit (enum "celsius" "kelvin"))
               (export "unit" (type (eq $unit)))))"#,
        &Core::default().text(),
    );
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let mut policy = runtime.compile(&wasm).unwrap().instantiate().unwrap();
    policy.init(&[]).unwrap();
    let batch = readings(1, 1);
    assert_eq!(policy.process(&batch).unwrap(), echoed(&batch));
}

/// The swap runner moves modules and instances between threads.
#[test]
fn handles_can_cross_threads() {
    fn send_and_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_and_sync::<Runtime>();
    send_and_sync::<PolicyModule>();
    send::<PolicyInstance>();
}
