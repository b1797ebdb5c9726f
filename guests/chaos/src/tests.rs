//! Only the modes that end are run natively: the others are for the host, which stops them.

use molt_policy_sdk::{Action, Config, Policy, PolicyError, testing};

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
        "key `mode`: expected `ok`, `loop`, `grow`, `recurse`, `trap` or `huge-output`, got `explode`",
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
