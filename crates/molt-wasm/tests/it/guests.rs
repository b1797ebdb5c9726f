//! The example policies of `guests/`, built from source, on the runtime.

use molt_wasm::{Action, Alert, Reading, Runtime, RuntimeConfig, Severity};

fn reading(sequence: u64, value: f64) -> Reading {
    Reading {
        sequence,
        sensor: 1,
        timestamp_ms: 1_000 * sequence,
        value,
    }
}

fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

#[test]
fn threshold_policy_raises_an_alert_and_survives_a_restore() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    let module = runtime.compile(molt_guests::THRESHOLD).unwrap();
    let config = config(&[("threshold", "30"), ("hysteresis", "2")]);
    let mut policy = module.instantiate().unwrap();
    policy.init(&config).unwrap();

    let quiet = policy.process(&[reading(1, 20.0), reading(2, 29.9)]).unwrap();
    assert_eq!(quiet, Vec::<Action>::new());
    let raised = policy.process(&[reading(3, 31.0)]).unwrap();
    assert!(
        raised.iter().any(|action| matches!(
            action,
            Action::Alert(Alert {
                sensor: 1,
                severity: Severity::Warning,
                ..
            })
        )),
        "{raised:?}"
    );
    assert!(policy.fuel_consumed_last_call() > 0);

    // Carried across a snapshot: still in alarm, so no second raise.
    let state = policy.snapshot().unwrap();
    let mut successor = module.instantiate().unwrap();
    successor.restore(&config, &state).unwrap();
    assert_eq!(successor.snapshot().unwrap().cid(), state.cid());
    let still_raised = successor.process(&[reading(4, 31.5)]).unwrap();
    assert_eq!(still_raised, Vec::<Action>::new());
}

#[test]
fn every_example_guest_loads_and_instantiates() {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    for (name, wasm) in molt_guests::ALL {
        let module = runtime.compile(wasm).unwrap_or_else(|error| panic!("{name}: {error}"));
        module.instantiate().unwrap_or_else(|error| panic!("{name}: {error}"));
    }
}
