use molt_policy_sdk::{Action, Config, Policy, PolicyError, Reading, decode_state, encode_state, testing};

use crate::SequenceEcho;

fn policy(pairs: &[(&str, &str)]) -> Result<SequenceEcho, PolicyError> {
    testing::init(pairs)
}

/// Processes readings with the given sequence numbers and renders the actions as `metric=value`, space-separated.
fn run(policy: &mut SequenceEcho, sequences: &[u64]) -> String {
    let batch: Vec<Reading> = sequences
        .iter()
        .map(|&sequence| Reading {
            sequence,
            sensor: 3,
            timestamp_ms: sequence * 10,
            value: -1.0,
        })
        .collect();
    let actions = match testing::process(policy, &batch) {
        Ok(actions) => actions,
        Err(error) => return format!("error: {error:?}"),
    };
    actions
        .iter()
        .map(|action| match action {
            Action::Telemetry(t) => format!("{}={}", t.metric, t.value),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn echoes_sequences_and_refuses_duplicates_without_changing_state() {
    let Ok(mut echo) = policy(&[("tag", "v1")]) else {
        panic!("config refused");
    };
    assert_eq!(run(&mut echo, &[1, 2, 5]), "v1=1 v1=2 v1=5");
    assert_eq!(
        run(&mut echo, &[6, 5]),
        r#"error: PolicyError::Failed("sequence 5 after 6: duplicated or out of order")"#
    );
    assert_eq!(
        run(&mut echo, &[5]),
        r#"error: PolicyError::Failed("sequence 5 after 5: duplicated or out of order")"#
    );
    assert_eq!(run(&mut echo, &[6]), "v1=6");
    assert_eq!((echo.n_readings, echo.last_sequence), (4, Some(6)));
}

#[test]
fn errors_on_request_and_a_new_version_takes_over_from_a_snapshot() {
    let Ok(mut echo) = policy(&[
        ("tag", "v1"),
        ("error_when_sequence_mod", "10"),
        ("error_when_sequence_rem", "3"),
    ]) else {
        panic!("config refused");
    };
    assert_eq!(run(&mut echo, &[1, 2]), "v1=1 v1=2");
    assert_eq!(
        run(&mut echo, &[3, 4]),
        r#"error: PolicyError::Failed("error requested at sequence 3")"#
    );

    let restored = encode_state(&echo).and_then(|bytes| decode_state::<SequenceEcho>(&bytes));
    let Ok(mut restored) = restored else {
        panic!("round trip failed: {restored:?}");
    };
    let config = Config::from_pairs([("tag", "v2")]);
    assert_eq!(config.and_then(|config| restored.reconfigure(&config)), Ok(()));
    assert_eq!(run(&mut restored, &[3, 4]), "v2=3 v2=4");
    assert_eq!((restored.n_readings, restored.last_sequence), (4, Some(4)));
}

#[test]
fn bad_config_names_the_key() {
    let check = |pairs: &[(&str, &str)], expect: &str| match policy(pairs) {
        Err(PolicyError::InvalidConfig(message)) => assert_eq!(message, expect),
        other => panic!("{pairs:?}: expected invalid-config, got {other:?}"),
    };
    check(&[], "missing key `tag`");
    check(
        &[
            ("tag", "v"),
            ("trap_when_sequence_mod", "0"),
            ("trap_when_sequence_rem", "0"),
        ],
        "key `trap_when_sequence_mod`: must be at least 1",
    );
    check(
        &[("tag", "v"), ("trap_when_sequence_mod", "2")],
        "key `trap_when_sequence_mod`: needs `trap_when_sequence_rem`",
    );
    check(
        &[("tag", "v"), ("error_when_sequence_rem", "2")],
        "key `error_when_sequence_rem`: needs `error_when_sequence_mod`",
    );
}

#[test]
fn traps_on_request() {
    let Ok(mut echo) = policy(&[
        ("tag", "v1"),
        ("trap_when_sequence_mod", "4"),
        ("trap_when_sequence_rem", "2"),
    ]) else {
        panic!("config refused");
    };
    assert_eq!(run(&mut echo, &[0, 1]), "v1=0 v1=1");
    // In a component a panic is a trap; natively it unwinds, and the state is untouched.
    let trapped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut echo, &[5, 6])));
    assert!(trapped.is_err());
    assert_eq!(run(&mut echo, &[3, 5]), "v1=3 v1=5");
}
