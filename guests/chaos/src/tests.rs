//! Only the modes that end are run natively: the others are for the host, which stops them.

use molt_policy_sdk::{Action, Config, Policy, PolicyError, Reading, decode_state, encode_state, testing};

use crate::Chaos;

fn policy(pairs: &[(&str, &str)]) -> Result<Chaos, PolicyError> {
    testing::init(pairs)
}

fn process(chaos: &mut Chaos) -> Result<Vec<Action>, PolicyError> {
    testing::process(chaos, &[])
}

#[test]
fn ok_and_huge_output_return() {
    let Ok(mut ok) = policy(&[("mode", "ok")]) else {
        panic!("config refused");
    };
    assert_eq!(process(&mut ok).map(|actions| actions.len()), Ok(0));
    assert_eq!(ok.n_batches, 1);

    let Ok(mut huge) = policy(&[("mode", "huge-output"), ("count", "1000")]) else {
        panic!("config refused");
    };
    assert_eq!(process(&mut huge).map(|actions| actions.len()), Ok(1000));
}

#[test]
fn trap_panics_where_asked() {
    let in_init = std::panic::catch_unwind(|| policy(&[("mode", "trap"), ("at", "init")]));
    assert!(in_init.is_err());

    // Asked to trap in restore, it behaves on init and in process.
    let Ok(mut chaos) = policy(&[("mode", "trap"), ("at", "restore")]) else {
        panic!("config refused");
    };
    assert_eq!(process(&mut chaos).map(|actions| actions.len()), Ok(0));
    let Ok(config) = Config::from_pairs([("mode", "trap"), ("at", "restore")]) else {
        panic!("config refused");
    };
    let in_restore = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| chaos.reconfigure(&config)));
    assert!(in_restore.is_err());
}

#[test]
fn bad_config_names_the_key() {
    let check = |pairs: &[(&str, &str)], expect: &str| match policy(pairs) {
        Err(PolicyError::InvalidConfig(message)) => assert_eq!(message, expect),
        other => panic!("{pairs:?}: expected invalid-config, got {other:?}"),
    };
    check(&[], "missing key `mode`");
    check(
        &[("mode", "explode")],
        "key `mode`: expected `ok`, `loop`, `grow`, `recurse`, `trap`, `huge-output` or `nan`, got `explode`",
    );
    check(
        &[("mode", "huge-output"), ("at", "init")],
        "key `at`: `huge-output` only applies to `process`",
    );
    check(
        &[("mode", "ok"), ("at", "later")],
        "key `at`: expected `process`, `init` or `restore`, got `later`",
    );
}

fn readings(n_readings: u64) -> Vec<Reading> {
    (0..n_readings)
        .map(|sequence| Reading {
            sequence,
            sensor: 1,
            timestamp_ms: sequence,
            value: 20.0,
        })
        .collect()
}

#[test]
fn batch_over_misbehaves_only_under_load() {
    let Ok(mut chaos) = policy(&[("mode", "huge-output"), ("count", "3"), ("batch_over", "4")]) else {
        panic!("config refused");
    };
    assert_eq!(
        testing::process(&mut chaos, &readings(4)).map(|actions| actions.len()),
        Ok(0)
    );
    assert_eq!(
        testing::process(&mut chaos, &readings(5)).map(|actions| actions.len()),
        Ok(3)
    );
    assert_eq!(chaos.n_batches, 2);

    let Ok(mut trap) = policy(&[("mode", "trap"), ("batch_over", "4")]) else {
        panic!("config refused");
    };
    assert_eq!(
        testing::process(&mut trap, &readings(4)).map(|actions| actions.len()),
        Ok(0)
    );
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        testing::process(&mut trap, &readings(5))
    }));
    assert!(loaded.is_err());

    assert!(matches!(
        policy(&[("mode", "trap"), ("batch_over", "many")]),
        Err(PolicyError::InvalidConfig(message)) if message.contains("batch_over")
    ));
}

/// A new version of another policy restores that policy's snapshot, so chaos must accept state it did not write.
#[test]
fn restores_another_policys_state() {
    #[derive(serde::Serialize)]
    struct Other {
        alarms: std::collections::BTreeMap<String, u64>,
    }
    let Ok(bytes) = encode_state(&Other {
        alarms: [("7".to_owned(), 1)].into(),
    }) else {
        panic!("encode refused");
    };
    let Ok(mut chaos) = decode_state::<Chaos>(&bytes) else {
        panic!("foreign state refused");
    };
    assert_eq!(chaos.n_batches, 0);
    let Ok(config) = Config::from_pairs([("mode", "ok")]) else {
        panic!("config refused");
    };
    assert_eq!(chaos.reconfigure(&config), Ok(()));
    assert_eq!(process(&mut chaos).map(|actions| actions.len()), Ok(0));
}

/// Natively the NaNs are whatever this host's hardware makes; the host test checks what each engine makes of them.
#[test]
fn nan_mode_keeps_the_bits_of_the_last_batch() {
    let Ok(mut chaos) = policy(&[("mode", "nan")]) else {
        panic!("config refused");
    };
    let batch = |values: &[f64]| -> Vec<Reading> {
        values
            .iter()
            .enumerate()
            .map(|(idx, &value)| Reading {
                sequence: idx as u64,
                sensor: 1,
                timestamp_ms: idx as u64,
                value,
            })
            .collect()
    };
    assert_eq!(
        testing::process(&mut chaos, &batch(&[0.0, 4.0])).map(|actions| actions.len()),
        Ok(0)
    );
    assert_eq!(chaos.float_bits.len(), 8);
    assert!(f64::from_bits(chaos.float_bits[0]).is_nan(), "0 / 0");
    assert_eq!(
        chaos.float_bits[4..],
        [
            1.0f64.to_bits(),
            2.0f64.to_bits(),
            4.0f64.to_bits(),
            f64::INFINITY.to_bits()
        ]
    );

    assert_eq!(
        testing::process(&mut chaos, &batch(&[-1.0])).map(|actions| actions.len()),
        Ok(0)
    );
    assert_eq!(chaos.float_bits.len(), 4, "only the last batch is kept");
    assert!(f64::from_bits(chaos.float_bits[1]).is_nan(), "sqrt(-1)");

    let Ok(bytes) = encode_state(&chaos) else {
        panic!("encode refused");
    };
    let Ok(restored) = decode_state::<Chaos>(&bytes) else {
        panic!("decode refused");
    };
    assert_eq!(restored.float_bits, chaos.float_bits);
}
