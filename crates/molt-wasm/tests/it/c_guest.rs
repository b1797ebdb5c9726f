//! The C threshold policy (`guests-c/threshold`, built with clang) against the Rust one (`guests/threshold`).
//!
//! Given the same config and batches, the two must return the same actions word for word, refuse the same configs and states,
//! and write the same snapshot bytes, so that each carries on from the other's snapshot.

use std::collections::BTreeMap;

use crate::rng::{Rng, env_u64};
use ipld_core::ipld::Ipld;
use molt_wasm::{
    Action, CallError, Limits, PolicyError, PolicyInstance, PolicyModule, Reading, Runtime, RuntimeConfig, Severity,
    State,
};

struct Policies {
    rust: PolicyModule,
    c: PolicyModule,
}

fn policies() -> Policies {
    let runtime = Runtime::new(&RuntimeConfig::default()).unwrap();
    Policies {
        rust: runtime.compile(molt_guests::THRESHOLD).unwrap(),
        c: runtime.compile(molt_guests::THRESHOLD_C).unwrap(),
    }
}

/// One instance of each policy, driven in lockstep.
struct Twins {
    rust: PolicyInstance,
    c: PolicyInstance,
}

impl Twins {
    fn new(policies: &Policies) -> Twins {
        Twins {
            rust: policies.rust.instantiate().unwrap(),
            c: policies.c.instantiate().unwrap(),
        }
    }

    /// `init` on both; they must agree on the outcome, which is returned rendered.
    fn init(&mut self, config: &[(String, String)]) -> String {
        let rust = render_result(self.rust.init(config));
        let c = render_result(self.c.init(config));
        assert_eq!(c, rust, "init with {config:?}");
        c
    }

    /// `restore` from `rust_state` on the Rust policy and from `c_state` on the C one; they must agree on the outcome.
    fn restore(&mut self, config: &[(String, String)], rust_state: &State, c_state: &State) -> String {
        let rust = render_result(self.rust.restore(config, rust_state));
        let c = render_result(self.c.restore(config, c_state));
        assert_eq!(c, rust, "restore with {config:?}");
        c
    }

    /// `process` on both; they must return the same actions, which are returned.
    fn process(&mut self, batch: &[Reading]) -> Vec<Action> {
        let rust = self.rust.process(batch).unwrap();
        let c = self.c.process(batch).unwrap();
        assert_eq!(c, rust, "batch {batch:?}");
        c
    }

    /// `snapshot` on both; the host has checked each is canonical DAG-CBOR, and they must be the same bytes.
    fn snapshot(&mut self) -> (State, State) {
        let rust = self.rust.snapshot().unwrap();
        let c = self.c.snapshot().unwrap();
        assert_eq!(c.bytes(), rust.bytes(), "snapshots differ");
        (rust, c)
    }
}

fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn render_result(result: Result<(), CallError>) -> String {
    match result {
        Ok(()) => "ok".to_string(),
        Err(CallError::GuestError(PolicyError::InvalidConfig(message))) => format!("invalid-config: {message}"),
        // The two languages' decoders explain a bad state in their own words; the kind of error is the contract.
        Err(CallError::GuestError(PolicyError::InvalidState(_))) => "invalid-state".to_string(),
        Err(other) => format!("error: {other}"),
    }
}

fn render(actions: &[Action]) -> String {
    let lines: Vec<String> = actions
        .iter()
        .map(|action| match action {
            Action::Alert(alert) => {
                let severity = match alert.severity {
                    Severity::Info => "info",
                    Severity::Warning => "warning",
                    Severity::Critical => "critical",
                };
                format!(
                    "alert {} t={} {severity}: {}",
                    alert.sensor, alert.timestamp_ms, alert.message
                )
            }
            Action::Telemetry(telemetry) => format!(
                "telemetry {} t={} {}={}",
                telemetry.sensor, telemetry.timestamp_ms, telemetry.metric, telemetry.value
            ),
            other => format!("{other:?}"),
        })
        .collect();
    lines.join("\n")
}

/// Readings from `(sensor, timestamp_ms, value)`, numbered from `first_sequence`.
fn batch(first_sequence: u64, readings: &[(u32, u64, f64)]) -> Vec<Reading> {
    readings
        .iter()
        .zip(first_sequence..)
        .map(|(&(sensor, timestamp_ms, value), sequence)| Reading {
            sequence,
            sensor,
            timestamp_ms,
            value,
        })
        .collect()
}

#[test]
fn c_and_rust_threshold_agree_and_carry_on_from_each_others_snapshots() {
    let policies = policies();
    let first_config = config(&[("threshold", "30"), ("hysteresis", "2.5"), ("severity", "critical")]);
    let mut twins = Twins::new(&policies);
    assert_eq!(twins.init(&first_config), "ok");

    let raised = twins.process(&batch(
        1,
        &[
            (1, 1_000, 29.0),
            (1, 2_000, 31.0),
            (2, 2_500, f64::NAN),
            (2, 2_600, f64::INFINITY),
            (2, 3_000, 30.5),
            (1, 4_000, 32.0),
        ],
    ));
    let cleared = twins.process(&batch(
        7,
        &[
            (1, 5_000, 28.0),
            (1, 6_000, 27.4),
            (3, 7_000, 1e300),
            (2, 8_000, f64::NEG_INFINITY),
        ],
    ));
    // Rust's `{}` writes every digit of a large number, never an exponent.
    let big = "1".to_string() + &"0".repeat(300);
    assert_eq!(
        render(&raised) + "\n" + &render(&cleared),
        format!(
            "alert 1 t=2000 critical: sensor 1: 31 rose above threshold 30
telemetry 1 t=2000 threshold.alarm=1
alert 2 t=3000 critical: sensor 2: 30.5 rose above threshold 30
telemetry 2 t=3000 threshold.alarm=1
alert 1 t=6000 info: sensor 1: 27.4 fell below 27.5, cleared after 4000 ms
telemetry 1 t=6000 threshold.alarm=0
alert 3 t=7000 critical: sensor 3: {big} rose above threshold 30
telemetry 3 t=7000 threshold.alarm=1"
        )
    );

    // Sensors 2 (raised at 3000) and 3 (raised at 7000) are in alarm: {"alarms": [[2, {"raised_at_ms": 3000}], [3, {"raised_at_ms": 7000}]]}.
    let (rust_state, c_state) = twins.snapshot();
    let expected_state = dag_cbor(&map([(
        "alarms",
        Ipld::List(vec![alarm(2, Ipld::Integer(3000)), alarm(3, Ipld::Integer(7000))]),
    )]));
    assert_eq!(c_state.bytes(), expected_state);
    assert_eq!(c_state.cid(), rust_state.cid());
    // What the host does to any snapshot, done again here on the C policy's bytes.
    let revalidated = State::from_guest(c_state.bytes().to_vec(), Limits::default().state_bytes_max);
    assert_eq!(revalidated.as_ref().map(State::cid), Ok(c_state.cid()));

    // Each language restores its own snapshot and the other's, under a new config, and all carry on alike.
    let second_config = config(&[("threshold", "25"), ("hysteresis", "0.1")]);
    let next = batch(
        11,
        &[
            (2, 9_000, 26.0),
            (2, 10_000, 24.8),
            // The device clock went back: the alarm was raised "for" 0 ms.
            (3, 6_500, 0.1),
            (1, 11_000, 25.5),
        ],
    );
    let mut outputs = Vec::new();
    for (rust_from, c_from) in [(&rust_state, &c_state), (&c_state, &rust_state)] {
        let mut restored = Twins::new(&policies);
        assert_eq!(restored.restore(&second_config, rust_from, c_from), "ok");
        outputs.push(render(&restored.process(&next)));
        let (rust_after, c_after) = restored.snapshot();
        assert_eq!(c_after.cid(), rust_after.cid());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(
        outputs[0],
        "alert 2 t=10000 info: sensor 2: 24.8 fell below 24.9, cleared after 7000 ms
telemetry 2 t=10000 threshold.alarm=0
alert 3 t=6500 info: sensor 3: 0.1 fell below 24.9, cleared after 0 ms
telemetry 3 t=6500 threshold.alarm=0
alert 1 t=11000 warning: sensor 1: 25.5 rose above threshold 25
telemetry 1 t=11000 threshold.alarm=1"
    );
}

/// Before `init` or `restore` there is no policy: `process` is an error and `snapshot`, which has no error in the contract, traps.
#[test]
fn c_and_rust_threshold_fail_alike_before_init() {
    let policies = policies();
    let mut twins = Twins::new(&policies);
    let readings = batch(1, &[(1, 0, 1.0)]);
    for result in [twins.rust.process(&readings), twins.c.process(&readings)] {
        assert!(
            matches!(&result, Err(CallError::GuestError(PolicyError::Failed(message))) if message == "process called before init or restore"),
            "{result:?}"
        );
    }
    for result in [twins.rust.snapshot(), twins.c.snapshot()] {
        assert!(matches!(result, Err(CallError::Trap { .. })), "{result:?}");
    }
}

/// Configs both refuse, in the same words, and configs both read to the same numbers (shown by the threshold in a raised alert).
#[test]
fn c_and_rust_threshold_refuse_and_read_configs_alike() {
    let policies = policies();
    let check = |pairs: &[(&str, &str)], expect: &str| {
        let mut twins = Twins::new(&policies);
        let mut outcome = twins.init(&config(pairs));
        if outcome == "ok" {
            // The largest finite value raises an alarm over any threshold but itself; the most negative clears it.
            let actions = twins.process(&batch(1, &[(1, 0, f64::MAX), (1, 1, -f64::MAX)]));
            outcome = actions
                .iter()
                .filter_map(|action| match action {
                    Action::Alert(alert) => Some(alert.message.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        assert_eq!(outcome, expect, "config {pairs:?}");
    };

    check(&[], "invalid-config: missing key `threshold`");
    check(
        &[("threshold", "1"), ("threshold", "2")],
        "invalid-config: key `threshold` is given twice",
    );
    check(
        &[("treshold", "1"), ("b", "2"), ("hysteresis", "1")],
        "invalid-config: unknown key `b` (known keys: threshold, hysteresis, sensor, severity)",
    );
    check(
        &[("threshold", "thirty")],
        "invalid-config: key `threshold`: expected a finite number, got `thirty`",
    );
    for not_finite in ["inf", "-Infinity", "NaN", "1e309", "1.7976931348623159e308"] {
        check(
            &[("threshold", not_finite)],
            &format!("invalid-config: key `threshold`: expected a finite number, got `{not_finite}`"),
        );
    }
    for malformed in [
        "", " ", ".", "e5", "1e", "1e+", "1.2.3", "0x10", "1_000", "--1", "1 2", "١",
    ] {
        check(
            &[("threshold", malformed)],
            &format!("invalid-config: key `threshold`: expected a finite number, got `{malformed}`"),
        );
    }
    check(
        &[("threshold", "1"), ("hysteresis", "-0.5")],
        "invalid-config: key `hysteresis`: must not be negative, got -0.5",
    );
    check(
        &[("threshold", "1"), ("severity", "Warning"), ("sensor", "x")],
        "invalid-config: key `severity`: expected `info`, `warning` or `critical`, got `Warning`",
    );
    for bad_sensor in ["-1", "4294967296", "1.0", "+", "+-1"] {
        check(
            &[("threshold", "1"), ("sensor", bad_sensor)],
            &format!("invalid-config: key `sensor`: expected an integer from 0 to 4294967295, got `{bad_sensor}`"),
        );
    }
    check(&[("threshold", "1"), ("sensor", "2")], "");
    let max = f64::MAX;
    check(
        &[("threshold", "1"), ("sensor", " +0001 ")],
        &format!("sensor 1: {max} rose above threshold 1\nsensor 1: -{max} fell below 1, cleared after 1 ms"),
    );

    // How each number reads: both trim Unicode white space, round correctly (ties to even) and write the shortest decimal.
    let threshold_reads_as = |text: &str, expect: f64| {
        let mut twins = Twins::new(&policies);
        assert_eq!(twins.init(&config(&[("threshold", text)])), "ok", "threshold {text:?}");
        let actions = twins.process(&batch(1, &[(1, 0, f64::MAX)]));
        let Some(Action::Alert(alert)) = actions.first() else {
            panic!("threshold {text:?} raised nothing: {actions:?}");
        };
        assert_eq!(
            alert.message,
            format!("sensor 1: {max} rose above threshold {expect}"),
            "threshold {text:?}"
        );
    };
    threshold_reads_as("30", 30.0);
    threshold_reads_as("\u{a0}\t+30.50\u{3000}\n", 30.5);
    threshold_reads_as("-0", -0.0);
    threshold_reads_as(".5", 0.5);
    threshold_reads_as("5.", 5.0);
    threshold_reads_as("1E3", 1000.0);
    threshold_reads_as("0.30000000000000004", 0.1 + 0.2);
    threshold_reads_as("1e21", 1e21);
    threshold_reads_as("123456789e-20", 1.23456789e-12);
    // 2^53 + 1 is halfway between two doubles: the tie goes to the even one, 2^53.
    threshold_reads_as("9007199254740993", 9007199254740992.0);
    threshold_reads_as("9007199254740993.0000000000000000000001", 9007199254740994.0);
    threshold_reads_as("-1.7976931348623157e308", -f64::MAX);
    threshold_reads_as("2.2250738585072011e-308", f64::from_bits(0x000f_ffff_ffff_ffff));
    threshold_reads_as("4.9e-324", f64::from_bits(1));
    // Exactly half the smallest subnormal, 767 digits long, is a tie that goes to zero; a hair above it, in the 801st digit, does not.
    threshold_reads_as(&halfway_text(0.0, 0), 0.0);
    threshold_reads_as(&halfway_text(0.0, 1), f64::from_bits(1));
    threshold_reads_as(&halfway_text(0.0, 2), 0.0);
    threshold_reads_as(&halfway_text(1.0, 0), 1.0);
    threshold_reads_as(&halfway_text(1.0, 1), f64::from_bits(1.0f64.to_bits() + 1));
    let odd = f64::from_bits(1.0f64.to_bits() + 1);
    threshold_reads_as(&halfway_text(odd, 0), f64::from_bits(odd.to_bits() + 1));
    threshold_reads_as(&halfway_text(odd, 2), odd);
}

fn map<const N: usize>(entries: [(&str, Ipld); N]) -> Ipld {
    Ipld::Map(
        entries
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn alarm(sensor: i128, raised_at_ms: Ipld) -> Ipld {
    Ipld::List(vec![Ipld::Integer(sensor), map([("raised_at_ms", raised_at_ms)])])
}

fn dag_cbor(value: &Ipld) -> Vec<u8> {
    serde_ipld_dagcbor::to_vec(value).unwrap()
}

/// States both refuse, and states both read the same way (shown by the snapshot each writes back).
#[test]
fn c_and_rust_threshold_read_and_refuse_states_alike() {
    let policies = policies();
    let check = |state: Ipld, expect: &str| {
        let state = State::from_guest(dag_cbor(&state), Limits::default().state_bytes_max).unwrap();
        let mut twins = Twins::new(&policies);
        let mut outcome = twins.restore(&config(&[("threshold", "10")]), &state, &state);
        if outcome == "ok" {
            let (_, c_state) = twins.snapshot();
            let value: Ipld = serde_ipld_dagcbor::from_slice(c_state.bytes()).unwrap();
            outcome = format!("{value:?}");
        }
        assert_eq!(outcome, expect, "state {state:?}");
    };

    check(map([("alarms", Ipld::List(vec![]))]), r#"{"alarms": []}"#);
    // Fields a later version added are skipped, and alarms come back in sensor order.
    check(
        map([
            (
                "alarms",
                Ipld::List(vec![
                    Ipld::List(vec![
                        Ipld::Integer(7),
                        map([
                            ("raised_at_ms", Ipld::Integer(70)),
                            ("cause", Ipld::String("hot".into())),
                        ]),
                    ]),
                    alarm(4_294_967_295, Ipld::Integer(u64::MAX.into())),
                    alarm(0, Ipld::Integer(0)),
                ]),
            ),
            (
                "version",
                Ipld::List(vec![
                    Ipld::Float(2.5),
                    Ipld::Bytes(vec![1, 2]),
                    Ipld::Null,
                    Ipld::Bool(true),
                ]),
            ),
            ("zz", map([("nested", map([("deeper", Ipld::Integer(-3))]))])),
        ]),
        r#"{"alarms": [[0, {"raised_at_ms": 0}], [7, {"raised_at_ms": 70}], [4294967295, {"raised_at_ms": 18446744073709551615}]]}"#,
    );

    check(map([]), "invalid-state");
    check(Ipld::List(vec![]), "invalid-state");
    check(map([("alarms", Ipld::Integer(5))]), "invalid-state");
    check(
        map([("alarms", Ipld::List(vec![Ipld::List(vec![Ipld::Integer(1)])]))]),
        "invalid-state",
    );
    check(
        map([("alarms", Ipld::List(vec![Ipld::List(vec![Ipld::Integer(1), map([])])]))]),
        "invalid-state",
    );
    check(
        map([(
            "alarms",
            Ipld::List(vec![alarm(1, Ipld::Integer(1)), alarm(1, Ipld::Integer(2))]),
        )]),
        "invalid-state",
    );
    check(
        map([("alarms", Ipld::List(vec![alarm(1 << 32, Ipld::Integer(1))]))]),
        "invalid-state",
    );
    check(
        map([("alarms", Ipld::List(vec![alarm(-1, Ipld::Integer(1))]))]),
        "invalid-state",
    );
    check(
        map([("alarms", Ipld::List(vec![alarm(1, Ipld::Integer(-1))]))]),
        "invalid-state",
    );
    check(
        map([("alarms", Ipld::List(vec![alarm(1, Ipld::Float(1.0))]))]),
        "invalid-state",
    );
    check(
        map([("alarms", Ipld::List(vec![alarm(1, Ipld::String("1".into()))]))]),
        "invalid-state",
    );
}

/// Test-input shapes on top of the shared generator.
impl Rng {
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    /// Any double: every exponent, subnormals, zeros, infinities and NaNs.
    fn any_f64(&mut self) -> f64 {
        f64::from_bits(self.next())
    }

    fn finite_f64(&mut self) -> f64 {
        loop {
            let value = self.any_f64();
            if value.is_finite() {
                return value;
            }
        }
    }

    fn digits(&mut self, max_len: u64) -> String {
        (0..self.below(max_len + 1))
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    /// Text for a number, as an operator or a tool might write it, and sometimes not a number at all.
    fn number_text(&mut self) -> String {
        match self.below(7) {
            0 => format!("{}", self.finite_f64()),
            1 => format!("{:e}", self.finite_f64()),
            2 => format!("{}", self.below(200) as f64 / 4.0 - 25.0),
            3 => {
                let sign = ["", "+", "-"][self.below(3) as usize];
                let exponent = if self.chance(2) {
                    format!("e{}", self.below(800) as i64 - 400)
                } else {
                    String::new()
                };
                format!("{sign}{}.{}{exponent}", self.digits(25), self.digits(25))
            }
            4 => halfway_text(self.finite_f64().abs(), self.below(3)),
            5 => format!("{}", self.next()),
            _ => ["", "1e", "abc", ".", "-", "1..2", "  7  ", "\u{2003}8.5"][self.below(8) as usize].to_string(),
        }
    }

    fn config(&mut self) -> Vec<(String, String)> {
        let mut pairs = vec![("threshold".to_string(), self.number_text())];
        if self.chance(2) {
            let hysteresis = if self.chance(2) {
                format!("{}", self.below(100) as f64 / 8.0)
            } else {
                self.number_text()
            };
            pairs.push(("hysteresis".to_string(), hysteresis));
        }
        if self.chance(4) {
            pairs.push(("sensor".to_string(), self.below(4).to_string()));
        }
        if self.chance(4) {
            let severity = ["info", "warning", "critical", "loud"][self.below(4) as usize];
            pairs.push(("severity".to_string(), severity.to_string()));
        }
        // Whatever order the release set lists them in.
        let rotation = self.below(pairs.len() as u64) as usize;
        pairs.rotate_left(rotation);
        pairs
    }

    /// Readings around `threshold`, so that alarms rise and clear, with some values from anywhere and some not finite.
    fn batch(&mut self, threshold: f64, sequence: &mut u64, timestamp_ms: &mut u64) -> Vec<Reading> {
        (0..1 + self.below(40))
            .map(|_| {
                *sequence += 1;
                // Mostly forward, sometimes back: the device clock is not monotonic.
                *timestamp_ms = if self.chance(10) {
                    timestamp_ms.saturating_sub(self.below(5_000))
                } else {
                    *timestamp_ms + self.below(2_000)
                };
                let value = match self.below(8) {
                    0 => self.any_f64(),
                    1 => [
                        f64::MAX,
                        -f64::MAX,
                        f64::NAN,
                        f64::INFINITY,
                        f64::NEG_INFINITY,
                        0.0,
                        -0.0,
                    ][self.below(7) as usize],
                    _ => threshold + (self.below(2001) as f64 - 1000.0) / 100.0 * (1.0 + threshold.abs() / 100.0),
                };
                Reading {
                    sequence: *sequence,
                    sensor: self.below(4) as u32,
                    timestamp_ms: *timestamp_ms,
                    value,
                }
            })
            .collect()
    }
}

/// Text for the number halfway between `value` and the next double up (`kind` 0), or a hair above (1) or below (2) it:
/// up to 767 significant digits, past 768 for the hair, which is exactly where correct rounding is hard.
fn halfway_text(value: f64, kind: u64) -> String {
    let next = f64::from_bits(value.to_bits() + 1);
    if !next.is_finite() {
        return format!("{value}");
    }
    let (low_digits, low_exponent) = exact_decimal(value);
    let (high_digits, high_exponent) = exact_decimal(next);
    // Both as integers scaled by the same power of ten, then (low + high) / 2.
    let exponent = low_exponent.max(high_exponent);
    let mut low: Vec<u8> = std::iter::repeat_n(0, (exponent - low_exponent) as usize)
        .chain(low_digits)
        .collect();
    let mut high: Vec<u8> = std::iter::repeat_n(0, (exponent - high_exponent) as usize)
        .chain(high_digits)
        .collect();
    let len = low.len().max(high.len());
    low.resize(len, 0);
    high.resize(len, 0);
    let mut sum = vec![0u8; len + 1];
    let mut carry = 0;
    for index in (0..len).rev() {
        let digit = low[index] + high[index] + carry;
        sum[index + 1] = digit % 10;
        carry = digit / 10;
    }
    sum[0] = carry;
    let mut half = Vec::with_capacity(sum.len() + 1);
    let mut remainder = 0;
    for digit in sum {
        let current = remainder * 10 + digit;
        half.push(current / 2);
        remainder = current % 2;
    }
    if remainder == 1 {
        half.push(5);
    }
    let mut text: String = half.iter().map(|digit| char::from(b'0' + digit)).collect();
    // The exact halfway point ends in 5; what follows is padding.
    let significant_len = text.trim_end_matches('0').len().max(1);
    text.truncate(significant_len);
    match kind {
        0 => {}
        1 => {
            let padding = "0".repeat(800usize.saturating_sub(text.len()));
            text.push_str(&padding);
            text.push('1');
        }
        _ => {
            // ...5 becomes ...4999...9: just below halfway.
            if let Some(last) = text.pop() {
                text.push(char::from(last as u8 - 1));
                let nines = "9".repeat(800usize.saturating_sub(text.len()).max(5));
                text.push_str(&nines);
            }
        }
    }
    // `sum` had one more leading digit than `low`: 0.(sum) * 10^(exponent + 1).
    format!("0.{text}e{}", exponent + 1)
}

/// The exact decimal digits of a finite `value` >= 0, as 0.d1d2... * 10^exponent.
fn exact_decimal(value: f64) -> (Vec<u8>, i32) {
    // Every double's exact expansion has at most 767 significant digits.
    let text = format!("{value:.800e}");
    let Some((mantissa, exponent)) = text.split_once('e') else {
        panic!("no exponent in {text}");
    };
    let digits = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|byte| byte - b'0')
        .collect();
    let exponent: i32 = exponent.parse().unwrap();
    (digits, exponent + 1)
}

/// Every reading raises an alarm on a sensor of its own, so every value is written into a message, by C and by Rust:
/// doubles from every corner (any bit pattern, subnormals, powers of two with their lopsided neighbours, short decimals).
/// `MOLT_C_GUEST_SEED` replays a run; `MOLT_C_GUEST_VALUES` (default 20000) scales it.
#[test]
fn c_and_rust_threshold_write_numbers_alike() {
    let seed = env_u64("MOLT_C_GUEST_SEED").unwrap_or(0x6d6f_6c74_2d66_6d74);
    let n_values = env_u64("MOLT_C_GUEST_VALUES").unwrap_or(20_000);
    println!("c-guest numbers: seed={seed} values={n_values} (replay with MOLT_C_GUEST_SEED={seed})");
    let policies = policies();
    let mut twins = Twins::new(&policies);
    // Below every finite value but itself.
    assert_eq!(twins.init(&config(&[("threshold", "-1.7976931348623157e308")])), "ok");
    let mut rng = Rng(seed);
    let mut n_alerts = 0;
    let mut c_fuel_max = 0;
    let mut sequence = 0u64;
    // Small batches: writing an extreme double takes big-number arithmetic, and each call has its fuel budget.
    while sequence < n_values {
        let readings: Vec<Reading> = (0..128)
            .map(|_| {
                sequence += 1;
                let sign = rng.next() & (1 << 63);
                let bits = match rng.below(5) {
                    0 => rng.next() & !(0x7ff << 52),
                    1 => rng.below(0x7ff) << 52,
                    2 => (rng.below(0x7fe) << 52) | rng.below(0x10) | (0xf_ffff_ffff_fff0 & rng.next() & rng.next()),
                    3 => (rng.below(1_000_000) as f64 / [1.0, 10.0, 100.0, 1e6][rng.below(4) as usize]).to_bits(),
                    _ => rng.next(),
                };
                Reading {
                    sequence,
                    sensor: sequence as u32,
                    timestamp_ms: sequence,
                    value: f64::from_bits(bits | sign),
                }
            })
            .collect();
        n_alerts += twins.process(&readings).len() / 2;
        c_fuel_max = c_fuel_max.max(twins.c.fuel_consumed_last_call());
    }
    println!("c-guest numbers: values={sequence} alerts={n_alerts} mismatches=0 c_fuel_per_batch_max={c_fuel_max}");
    assert!(
        n_alerts > sequence as usize / 2,
        "too few values were written: {n_alerts}"
    );
}

/// Random configs and readings through both policies, with snapshots traded between them at random batch boundaries.
/// `MOLT_C_GUEST_SEED` replays a run; `MOLT_C_GUEST_ROUNDS` (default 500) scales it.
#[test]
fn c_and_rust_threshold_agree_on_random_configs_and_readings() {
    let seed = env_u64("MOLT_C_GUEST_SEED").unwrap_or(0x6d6f_6c74_2d63_2d67);
    let rounds = env_u64("MOLT_C_GUEST_ROUNDS").unwrap_or(500);
    println!("c-guest: seed={seed} rounds={rounds} (replay with MOLT_C_GUEST_SEED={seed})");
    let policies = policies();
    let mut rng = Rng(seed);
    let (mut n_actions, mut n_swaps, mut n_refused) = (0usize, 0usize, 0usize);
    for round in 0..rounds {
        let config = rng.config();
        let mut twins = Twins::new(&policies);
        if twins.init(&config) != "ok" {
            n_refused += 1;
            continue;
        }
        let threshold = config
            .iter()
            .find(|(key, _)| key == "threshold")
            .and_then(|(_, value)| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let (mut sequence, mut timestamp_ms) = (0, rng.below(1 << 40));
        for batch_index in 0..1 + rng.below(6) {
            let batch = rng.batch(threshold, &mut sequence, &mut timestamp_ms);
            n_actions += twins.process(&batch).len();
            if rng.chance(2) {
                // Trade snapshots: the Rust policy carries on from the C one's, and the other way round, maybe under a new config.
                let (rust_state, c_state) = twins.snapshot();
                let new_config = if rng.chance(3) { rng.config() } else { config.clone() };
                let mut swapped = Twins::new(&policies);
                let outcome = swapped.restore(&new_config, &c_state, &rust_state);
                if outcome == "ok" {
                    twins = swapped;
                    n_swaps += 1;
                } else {
                    assert!(
                        outcome.starts_with("invalid-config"),
                        "round {round} batch {batch_index}: {outcome}"
                    );
                }
            }
        }
        twins.snapshot();
    }
    println!("c-guest: rounds={rounds} refused_configs={n_refused} actions={n_actions} swaps={n_swaps} mismatches=0");
    assert!(n_actions > 0 && n_swaps > 0, "the run exercised nothing");
}
