use molt_policy_sdk::{Action, Config, Policy, PolicyError, decode_state, encode_state, testing};

use crate::Threshold;

fn policy(pairs: &[(&str, &str)]) -> Result<Threshold, PolicyError> {
    testing::init(pairs)
}

/// Feeds `(sensor, value)` readings one second apart and renders the actions one per line.
fn run(policy: &mut Threshold, readings: &[(u32, f64)]) -> String {
    match testing::process(policy, &testing::readings(readings, 1_000)) {
        Ok(actions) => actions.iter().map(render).collect::<Vec<_>>().join("\n"),
        Err(error) => format!("error: {error:?}"),
    }
}

fn render(action: &Action) -> String {
    match action {
        Action::Alert(alert) => format!("alert {:?} {}", alert.severity, alert.message),
        Action::Telemetry(telemetry) => format!(
            "telemetry sensor={} {}={}",
            telemetry.sensor, telemetry.metric, telemetry.value
        ),
        other => format!("{other:?}"),
    }
}

#[test]
fn raises_once_and_clears_below_the_hysteresis_band() {
    let Ok(mut threshold) = policy(&[("threshold", "30"), ("hysteresis", "2")]) else {
        panic!("config refused");
    };
    let actions = run(
        &mut threshold,
        &[
            (1, 29.0),
            (1, 31.0),
            (1, 32.0),
            (1, 29.0),
            (1, 28.5),
            (1, 27.9),
            (1, 31.0),
        ],
    );
    assert_eq!(
        actions,
        "alert Severity::Warning sensor 1: 31 rose above threshold 30
telemetry sensor=1 threshold.alarm=1
alert Severity::Info sensor 1: 27.9 fell below 28, cleared after 4000 ms
telemetry sensor=1 threshold.alarm=0
alert Severity::Warning sensor 1: 31 rose above threshold 30
telemetry sensor=1 threshold.alarm=1"
    );
}

#[test]
fn sensors_are_independent_and_the_filter_applies() {
    let Ok(mut all) = policy(&[("threshold", "10"), ("severity", "critical")]) else {
        panic!("config refused");
    };
    assert_eq!(
        run(&mut all, &[(1, 11.0), (2, f64::NAN), (2, 12.0), (1, 9.0)]),
        "alert Severity::Critical sensor 1: 11 rose above threshold 10
telemetry sensor=1 threshold.alarm=1
alert Severity::Critical sensor 2: 12 rose above threshold 10
telemetry sensor=2 threshold.alarm=1
alert Severity::Info sensor 1: 9 fell below 10, cleared after 3000 ms
telemetry sensor=1 threshold.alarm=0"
    );

    let Ok(mut only_two) = policy(&[("threshold", "10"), ("sensor", "2")]) else {
        panic!("config refused");
    };
    assert_eq!(
        run(&mut only_two, &[(1, 11.0), (2, 12.0)]),
        "alert Severity::Warning sensor 2: 12 rose above threshold 10
telemetry sensor=2 threshold.alarm=1"
    );
}

#[test]
fn an_alarm_survives_snapshot_and_restore_under_a_new_threshold() {
    let Ok(mut threshold) = policy(&[("threshold", "30")]) else {
        panic!("config refused");
    };
    assert_eq!(
        run(&mut threshold, &[(1, 31.0)]),
        "alert Severity::Warning sensor 1: 31 rose above threshold 30
telemetry sensor=1 threshold.alarm=1"
    );
    let restored = encode_state(&threshold).and_then(|bytes| decode_state::<Threshold>(&bytes));
    let Ok(mut restored) = restored else {
        panic!("round trip failed: {restored:?}");
    };
    let config = Config::from_pairs([("threshold", "34")]);
    assert_eq!(config.and_then(|config| restored.reconfigure(&config)), Ok(()));
    // Still in alarm: 35 is above the new threshold, so nothing is raised again.
    assert_eq!(run(&mut restored, &[(1, 35.0), (1, 34.0)]), "");
    assert_eq!(
        run(&mut restored, &[(1, 10.0)]),
        "alert Severity::Info sensor 1: 10 fell below 34, cleared after 0 ms
telemetry sensor=1 threshold.alarm=0"
    );
}

#[test]
fn bad_config_names_the_key() {
    let check = |pairs: &[(&str, &str)], expect: &str| match policy(pairs) {
        Err(PolicyError::InvalidConfig(message)) => assert_eq!(message, expect),
        other => panic!("{pairs:?}: expected invalid-config, got {other:?}"),
    };
    check(&[], "missing key `threshold`");
    check(
        &[("threshold", "hot")],
        "key `threshold`: expected a finite number, got `hot`",
    );
    check(
        &[("threshold", "1"), ("hysteresis", "-1")],
        "key `hysteresis`: must not be negative, got -1",
    );
    check(
        &[("threshold", "1"), ("severity", "loud")],
        "key `severity`: expected `info`, `warning` or `critical`, got `loud`",
    );
    check(
        &[("threshold", "1"), ("sensors", "1")],
        "unknown key `sensors` (known keys: threshold, hysteresis, sensor, severity)",
    );
}
