use molt_policy_sdk::{Config, Policy, PolicyError, decode_state, encode_state, testing};

use crate::MovingAverage;

fn policy(pairs: &[(&str, &str)]) -> Result<MovingAverage, PolicyError> {
    testing::init(pairs)
}

/// Feeds `(sensor, value)` readings and renders the telemetry as `sensor:metric=value`, one per line.
fn run(policy: &mut MovingAverage, readings: &[(u32, f64)]) -> String {
    match testing::process(policy, &testing::readings(readings, 1)) {
        Ok(actions) => testing::telemetry_lines(&actions),
        Err(error) => format!("error: {error:?}"),
    }
}

#[test]
fn smooths_every_reading() {
    let Ok(mut average) = policy(&[("window", "3"), ("metric", "temp")]) else {
        panic!("config refused");
    };
    assert_eq!(
        run(&mut average, &[(1, 3.0), (1, 6.0), (1, 9.0), (1, 12.0)]),
        "1:temp.avg=3\n1:temp.avg=4.5\n1:temp.avg=6\n1:temp.avg=9"
    );
}

#[test]
fn downsamples_per_sensor_and_skips_non_finite_values() {
    let Ok(mut average) = policy(&[("window", "2"), ("every", "2")]) else {
        panic!("config refused");
    };
    assert_eq!(
        run(
            &mut average,
            &[
                (1, 1.0),
                (2, 10.0),
                (1, f64::NAN),
                (1, 3.0),
                (2, f64::INFINITY),
                (2, 20.0),
                (1, 5.0),
                (1, 7.0)
            ]
        ),
        "1:value.avg=2\n2:value.avg=15\n1:value.avg=6"
    );
}

#[test]
fn a_smaller_window_after_restore_keeps_the_newest_values() {
    let Ok(mut average) = policy(&[("window", "4"), ("every", "100")]) else {
        panic!("config refused");
    };
    assert_eq!(run(&mut average, &[(1, 1.0), (1, 2.0), (1, 3.0), (1, 4.0)]), "");
    let restored = encode_state(&average).and_then(|bytes| decode_state::<MovingAverage>(&bytes));
    let Ok(mut restored) = restored else {
        panic!("round trip failed: {restored:?}");
    };
    let config = Config::from_pairs([("window", "2")]);
    assert_eq!(config.and_then(|config| restored.reconfigure(&config)), Ok(()));
    // [3, 4] were kept; 5 pushes 3 out.
    assert_eq!(run(&mut restored, &[(1, 5.0)]), "1:value.avg=4.5");
}

#[test]
fn bad_config_names_the_key() {
    let check = |pairs: &[(&str, &str)], expect: &str| match policy(pairs) {
        Err(PolicyError::InvalidConfig(message)) => assert_eq!(message, expect),
        other => panic!("{pairs:?}: expected invalid-config, got {other:?}"),
    };
    check(&[], "missing key `window`");
    check(&[("window", "0")], "key `window`: must be from 1 to 4096, got 0");
    check(&[("window", "4097")], "key `window`: must be from 1 to 4096, got 4097");
    check(&[("window", "2"), ("every", "0")], "key `every`: must be at least 1");
    check(
        &[("window", "2"), ("every", "often")],
        "key `every`: expected an integer from 0 to 4294967295, got `often`",
    );
}
