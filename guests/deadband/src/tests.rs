use molt_policy_sdk::{Config, Policy, PolicyError, decode_state, encode_state, testing};

use crate::Deadband;

fn policy(pairs: &[(&str, &str)]) -> Result<Deadband, PolicyError> {
    testing::init(pairs)
}

/// Feeds `(sensor, value)` readings and renders the telemetry as `sensor:metric=value`, one per line.
fn run(policy: &mut Deadband, readings: &[(u32, f64)]) -> String {
    match testing::process(policy, &testing::readings(readings, 1)) {
        Ok(actions) => testing::telemetry_lines(&actions),
        Err(error) => format!("error: {error:?}"),
    }
}

#[test]
fn publishes_only_moves_beyond_the_deadband() {
    let Ok(mut deadband) = policy(&[("deadband", "0.5"), ("metric", "temp")]) else {
        panic!("config refused");
    };
    assert_eq!(
        run(
            &mut deadband,
            &[
                (1, 20.0),
                (1, 20.5),
                (1, 20.4),
                (2, 20.4),
                (1, f64::NAN),
                (1, 20.6),
                (1, 19.4)
            ]
        ),
        "1:temp=20\n2:temp=20.4\n1:temp=20.6\n1:temp=19.4"
    );
}

#[test]
fn zero_deadband_drops_exact_repeats_only() {
    let Ok(mut deadband) = policy(&[("deadband", "0")]) else {
        panic!("config refused");
    };
    assert_eq!(
        run(&mut deadband, &[(1, 1.0), (1, 1.0), (1, 1.0000001), (1, 1.0000001)]),
        "1:value=1\n1:value=1.0000001"
    );
}

#[test]
fn the_last_published_value_survives_a_restore() {
    let Ok(mut deadband) = policy(&[("deadband", "1")]) else {
        panic!("config refused");
    };
    assert_eq!(run(&mut deadband, &[(1, 10.0)]), "1:value=10");
    let restored = encode_state(&deadband).and_then(|bytes| decode_state::<Deadband>(&bytes));
    let Ok(mut restored) = restored else {
        panic!("round trip failed: {restored:?}");
    };
    let config = Config::from_pairs([("deadband", "5")]);
    assert_eq!(config.and_then(|config| restored.reconfigure(&config)), Ok(()));
    assert_eq!(run(&mut restored, &[(1, 14.0), (1, 15.5)]), "1:value=15.5");
}

#[test]
fn bad_config_names_the_key() {
    let check = |pairs: &[(&str, &str)], expect: &str| match policy(pairs) {
        Err(PolicyError::InvalidConfig(message)) => assert_eq!(message, expect),
        other => panic!("{pairs:?}: expected invalid-config, got {other:?}"),
    };
    check(&[], "missing key `deadband`");
    check(
        &[("deadband", "-0.1")],
        "key `deadband`: must not be negative, got -0.1",
    );
    check(
        &[("deadband", "inf")],
        "key `deadband`: expected a finite number, got `inf`",
    );
}
