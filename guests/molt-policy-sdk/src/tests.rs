use serde::{Deserialize, Serialize};

use crate::export::{self, Slot};
use crate::{Action, Config, Policy, PolicyError, Reading, SensorMap, Telemetry, decode_state, encode_state};

fn config(pairs: &[(&str, &str)]) -> Config {
    match Config::from_pairs(pairs.iter().copied()) {
        Ok(config) => config,
        Err(error) => panic!("test config rejected: {error}"),
    }
}

fn invalid(message: &str) -> PolicyError {
    PolicyError::InvalidConfig(message.into())
}

#[test]
fn config_getters() {
    let config = config(&[
        ("f", " 2.5 "),
        ("nan", "NaN"),
        ("inf", "-inf"),
        ("u", "18446744073709551615"),
        ("small", "4294967296"),
        ("neg", "-1"),
        ("yes", "true"),
        ("yes_ish", "1"),
    ]);
    assert_eq!(config.get_f64("f"), Ok(Some(2.5)));
    assert_eq!(config.get_f64("absent"), Ok(None));
    assert_eq!(
        config.get_f64("nan"),
        Err(invalid("key `nan`: expected a finite number, got `NaN`"))
    );
    assert_eq!(
        config.get_f64("inf"),
        Err(invalid("key `inf`: expected a finite number, got `-inf`"))
    );
    assert_eq!(config.get_u64("u"), Ok(Some(u64::MAX)));
    assert_eq!(
        config.get_u32("small"),
        Err(invalid(
            "key `small`: expected an integer from 0 to 4294967295, got `4294967296`"
        ))
    );
    assert_eq!(
        config.get_u64("neg"),
        Err(invalid(
            "key `neg`: expected an integer from 0 to 18446744073709551615, got `-1`"
        ))
    );
    assert_eq!(config.get_bool("yes"), Ok(Some(true)));
    assert_eq!(
        config.get_bool("yes_ish"),
        Err(invalid("key `yes_ish`: expected `true` or `false`, got `1`"))
    );
    assert_eq!(config.require_f64("absent"), Err(invalid("missing key `absent`")));
    assert_eq!(config.require_str("f"), Ok(" 2.5 "));
}

#[test]
fn config_refuses_duplicate_keys() {
    assert_eq!(
        Config::from_pairs([("a", "1"), ("b", "2"), ("a", "3")]),
        Err(invalid("key `a` is given twice"))
    );
}

#[test]
fn config_check_keys() {
    let config = config(&[("window", "4"), ("evry", "2")]);
    assert_eq!(config.check_keys(&["window", "evry"]), Ok(()));
    assert_eq!(
        config.check_keys(&["window", "every"]),
        Err(invalid("unknown key `evry` (known keys: window, every)"))
    );
    assert_eq!(config.to_string(), "evry=2, window=4");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    count: u64,
    per_sensor: SensorMap<f64>,
}

#[test]
fn state_round_trips_as_canonical_dag_cbor() {
    let mut per_sensor = SensorMap::default();
    // Inserted out of order: the encoding must not depend on history.
    per_sensor.insert(300, 1.5);
    per_sensor.insert(2, -0.25);
    let sample = Sample { count: 7, per_sensor };
    let bytes = encode_state(&sample);
    // {"count": 7, "per_sensor": [[2, -0.25], [300, 1.5]]}, keys sorted, floats as 64-bit.
    let expected: Vec<u8> = [
        &[0xa2, 0x65][..],
        b"count",
        &[0x07, 0x6a],
        b"per_sensor",
        &[0x82, 0x82, 0x02, 0xfb],
        &(-0.25f64).to_be_bytes(),
        &[0x82, 0x19, 0x01, 0x2c, 0xfb],
        &1.5f64.to_be_bytes(),
    ]
    .concat();
    assert_eq!(bytes, Ok(expected.clone()));
    assert_eq!(decode_state::<Sample>(&expected), Ok(sample));
}

#[test]
fn state_refuses_what_dag_cbor_cannot_hold() {
    let mut per_sensor = SensorMap::default();
    per_sensor.insert(1, f64::NAN);
    let encoded = encode_state(&Sample { count: 0, per_sensor });
    assert!(
        matches!(&encoded, Err(PolicyError::Failed(message)) if message.starts_with("cannot encode state as DAG-CBOR")),
        "{encoded:?}"
    );

    // [[1, 1.0], [1, 2.0]]: sensor 1 twice.
    let duplicate: Vec<u8> = [
        &[0xa2, 0x65][..],
        b"count",
        &[0x00, 0x6a],
        b"per_sensor",
        &[0x82, 0x82, 0x01, 0xfb],
        &1.0f64.to_be_bytes(),
        &[0x82, 0x01, 0xfb],
        &2.0f64.to_be_bytes(),
    ]
    .concat();
    assert_eq!(
        decode_state::<Sample>(&duplicate),
        Err(PolicyError::InvalidState(
            "cannot decode state: sensor 1 appears twice".into()
        ))
    );
    assert!(matches!(
        decode_state::<Sample>(&[0xff, 0x00]),
        Err(PolicyError::InvalidState(_))
    ));
}

/// Counts readings and echoes `scale * value`; `scale` comes from the config.
#[derive(Serialize, Deserialize)]
struct Counter {
    #[serde(skip)]
    scale: f64,
    n_readings: u64,
}

impl Policy for Counter {
    fn init(config: &Config) -> Result<Self, PolicyError> {
        let mut counter = Counter {
            scale: 0.0,
            n_readings: 0,
        };
        counter.reconfigure(config)?;
        Ok(counter)
    }

    fn process(&mut self, batch: &[Reading], actions: &mut Vec<Action>) -> Result<(), PolicyError> {
        for reading in batch {
            self.n_readings += 1;
            actions.push(Telemetry::for_reading(reading, "scaled", self.scale * reading.value).into());
        }
        Ok(())
    }

    fn reconfigure(&mut self, config: &Config) -> Result<(), PolicyError> {
        self.scale = config.require_f64("scale")?;
        Ok(())
    }
}

fn pairs(pairs: &[(&str, &str)]) -> export::ConfigPairs {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn reading(sequence: u64, value: f64) -> Reading {
    Reading {
        sequence,
        sensor: 1,
        timestamp_ms: 1_000 + sequence,
        value,
    }
}

fn scaled(sequence: u64, value: f64) -> Action {
    Telemetry::for_reading(&reading(sequence, 0.0), "scaled", value).into()
}

#[test]
fn export_glue_drives_the_lifecycle() {
    let slot: Slot<Counter> = Slot::default();
    assert_eq!(
        export::process(&slot, vec![reading(1, 1.0)]),
        Err(PolicyError::Failed("process called before init or restore".into()))
    );
    assert_eq!(export::init(&slot, pairs(&[])), Err(invalid("missing key `scale`")));
    assert_eq!(export::init(&slot, pairs(&[("scale", "2")])), Ok(()));
    assert_eq!(
        export::process(&slot, vec![reading(1, 1.0), reading(2, 3.0)]),
        Ok(vec![scaled(1, 2.0), scaled(2, 6.0)])
    );

    // A new instance restored under a new config carries on with the count and the new scale.
    let state = export::snapshot(&slot);
    let restored: Slot<Counter> = Slot::default();
    assert_eq!(
        export::restore(&restored, pairs(&[("scale", "10")]), state.clone()),
        Ok(())
    );
    assert_eq!(
        export::process(&restored, vec![reading(3, 1.0)]),
        Ok(vec![scaled(3, 10.0)])
    );
    assert_eq!(restored.borrow().as_ref().map(|c| c.n_readings), Some(3));

    assert_eq!(
        export::restore(&restored, pairs(&[]), state),
        Err(invalid("missing key `scale`"))
    );
    assert!(matches!(
        export::restore(&restored, pairs(&[("scale", "1")]), vec![1, 2, 3]),
        Err(PolicyError::InvalidState(_))
    ));
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct StateV1 {
    count: u64,
    retired: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct StateV2 {
    count: u64,
    #[serde(default)]
    added: Vec<u32>,
}

/// A later version restores an earlier one's snapshot: removed fields are ignored, added ones take their default.
#[test]
fn state_decodes_across_versions() {
    let v1 = StateV1 {
        count: 3,
        retired: "gone".into(),
    };
    let decoded = encode_state(&v1).and_then(|bytes| decode_state::<StateV2>(&bytes));
    assert_eq!(
        decoded,
        Ok(StateV2 {
            count: 3,
            added: vec![]
        })
    );
}

/// Forgets its count whenever it is reconfigured: state `reconfigure` must not touch.
#[derive(Serialize, Deserialize)]
struct Forgetful {
    seen: u64,
}

impl Policy for Forgetful {
    fn init(_: &Config) -> Result<Self, PolicyError> {
        Ok(Forgetful { seen: 0 })
    }

    fn process(&mut self, batch: &[Reading], _: &mut Vec<Action>) -> Result<(), PolicyError> {
        self.seen += batch.len() as u64;
        Ok(())
    }

    fn reconfigure(&mut self, _: &Config) -> Result<(), PolicyError> {
        self.seen = 0;
        Ok(())
    }
}

#[test]
fn round_trip_carries_state_and_catches_a_reconfigure_that_loses_it() {
    let mut counter: Counter = crate::testing::init(&[("scale", "2")]).expect("init");
    crate::testing::process(&mut counter, &[reading(1, 1.0), reading(2, 2.0)]).expect("process");
    let restored = crate::testing::round_trip(&counter, &[("scale", "3")]).expect("round trip");
    assert_eq!((restored.n_readings, restored.scale), (2, 3.0));
    assert!(matches!(
        crate::testing::round_trip(&counter, &[]),
        Err(PolicyError::InvalidConfig(message)) if message.contains("scale")
    ));

    let mut forgetful: Forgetful = crate::testing::init(&[]).expect("init");
    crate::testing::process(&mut forgetful, &[reading(1, 1.0)]).expect("process");
    assert!(matches!(
        crate::testing::round_trip(&forgetful, &[]),
        Err(PolicyError::InvalidState(message)) if message.contains("round trip changed the state")
    ));
}
