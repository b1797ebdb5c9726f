use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::*;

fn device(id: &str) -> DeviceId {
    DeviceId::parse(id).unwrap()
}

fn telemetry(points: usize, metrics: usize) -> Telemetry {
    let mut builder = TelemetryBuilder::new("threshold@1.2.0");
    for index in 0..points {
        let metric = alloc::format!("temperature.m{}", index % metrics.max(1));
        let value = 20.0 + (index as f64) / 8.0;
        assert!(builder.push(
            (index % 20) as u32,
            1_733_400_000_000 + (index as u64) * 10,
            &metric,
            value
        ));
    }
    builder.finish(7)
}

fn samples() -> Vec<(Kind, AnyMessage)> {
    vec![
        (Kind::Telemetry, AnyMessage::Telemetry(telemetry(100, 2))),
        (
            Kind::Alerts,
            AnyMessage::Alerts(Alerts {
                v: PROTOCOL_VERSION,
                seq: 8,
                policy: "threshold@1.2.0".into(),
                alerts: vec![Alert {
                    sensor: 3,
                    t: 1_733_400_000_000,
                    severity: Severity::Critical,
                    message: "temperature 81.5 above 80".into(),
                }],
            }),
        ),
        (
            Kind::Events,
            AnyMessage::Event(Event {
                v: PROTOCOL_VERSION,
                seq: 9,
                t: 1_733_400_000_000,
                kind: EventKind::Revert,
                release: Some(4),
                policy: Some("threshold@3.0.0".into()),
                detail: "trap: unreachable at guests/chaos/src/lib.rs:118".into(),
            }),
        ),
        (
            Kind::State,
            AnyMessage::Reported(Reported {
                v: PROTOCOL_VERSION,
                seq: 10,
                t: 1_733_400_000_000,
                hardware_class: "rpi4".into(),
                agent_version: "1.0.0".into(),
                release: Some(3),
                security_counter: 2,
                policies: vec![PolicyState {
                    name: "threshold".into(),
                    serving: "2.0.0".into(),
                    trial: None,
                }],
                update: Some(UpdateStatus {
                    generation: 5,
                    release: 3,
                    phase: UpdatePhase::Done,
                    error: None,
                }),
            }),
        ),
        (
            Kind::Health,
            AnyMessage::Health(Health {
                v: PROTOCOL_VERSION,
                seq: 11,
                t: 1_733_400_000_000,
                boot: 1_733_300_000_000,
                restarts: 2,
                readings: 1_000_000,
                batches: 10_000,
                traps: 1,
                reverts: 1,
                policy_errors: 0,
                batch_p99_us: 850,
                outbox_messages: 3,
                outbox_bytes: 4096,
                outbox_oldest_ms: 120,
                outbox_dropped: 0,
                rss_bytes: 9 << 20,
                offline_ms: 0,
            }),
        ),
        (
            Kind::Desired,
            AnyMessage::Desired(Desired {
                v: PROTOCOL_VERSION,
                generation: 12,
                release: 4,
                rollout: Some("r-7".into()),
            }),
        ),
        (
            Kind::Ack,
            AnyMessage::Ack(StoreAck {
                v: PROTOCOL_VERSION,
                stored_through: 11,
            }),
        ),
    ]
}

fn encode_any(message: &AnyMessage) -> Vec<u8> {
    let limits = Limits::default();
    match message {
        AnyMessage::Telemetry(message) => encode(message, &limits),
        AnyMessage::Alerts(message) => encode(message, &limits),
        AnyMessage::Event(message) => encode(message, &limits),
        AnyMessage::Reported(message) => encode(message, &limits),
        AnyMessage::Health(message) => encode(message, &limits),
        AnyMessage::Desired(message) => encode(message, &limits),
        AnyMessage::Ack(message) => encode(message, &limits),
    }
    .unwrap()
}

#[test]
fn every_kind_round_trips_through_its_topic() {
    for (kind, message) in samples() {
        let bytes = encode_any(&message);
        let back = decode_kind(kind, &bytes, &Limits::default()).unwrap();
        assert_eq!(back, message, "{kind:?}");
        // Deterministic: a resent message is byte-identical.
        assert_eq!(encode_any(&back), bytes, "{kind:?}");
        assert_eq!(back.seq().is_some(), kind.direction() == Direction::Uplink, "{kind:?}");
    }
}

/// The sizes `docs/protocol.md` quotes; run with `--nocapture` to see them.
#[test]
fn encoded_sizes_against_json() {
    for (kind, message) in samples() {
        let cbor = encode_any(&message).len();
        let json = serde_json::to_vec(&message).unwrap().len();
        std::println!(
            "protocol-size: {:<9} dag-cbor={cbor:>5} B json={json:>5} B",
            kind.segment()
        );
        assert!(cbor < json, "{kind:?}: CBOR {cbor} B is not smaller than JSON {json} B");
    }
    // The shape most IoT JSON takes: an object per point with full names.
    let message = telemetry(100, 2);
    let naive: Vec<_> = message
        .points()
        .map(|point| {
            serde_json::json!({
                "sensor": point.sensor,
                "timestamp_ms": point.timestamp_ms,
                "metric": point.metric,
                "value": point.value,
            })
        })
        .collect();
    let naive = serde_json::to_vec(&serde_json::json!({"seq": message.seq, "policy": message.policy, "points": naive}))
        .unwrap()
        .len();
    std::println!(
        "protocol-size: telemetry as JSON objects per point ({} points): {naive} B",
        message.points.len()
    );
    // A full batch of points must fit the default payload limit.
    let full = telemetry(Limits::default().points_per_message_max, 16);
    let bytes = encode(&full, &Limits::default()).unwrap();
    std::println!(
        "protocol-size: a full telemetry message ({} points) is {} B, {:.1} B per point",
        full.points.len(),
        bytes.len(),
        bytes.len() as f64 / full.points.len() as f64
    );
    assert!(bytes.len() <= Limits::default().payload_bytes_max);
}

#[test]
fn telemetry_points_read_back_with_names_and_times() {
    let mut builder = TelemetryBuilder::new("p@1");
    builder.push(1, 1_000, "b", 2.0);
    builder.push(2, 900, "a", f64::NAN);
    builder.push(1, 1_100, "b", f64::INFINITY);
    let message = builder.finish(1);
    assert_eq!(message.t0, 900);
    assert_eq!(message.metrics, ["b", "a"]);
    let points: Vec<_> = message.points().collect();
    assert_eq!(
        points,
        [
            PointRef {
                sensor: 1,
                timestamp_ms: 1_000,
                metric: "b",
                value: Some(2.0)
            },
            PointRef {
                sensor: 2,
                timestamp_ms: 900,
                metric: "a",
                value: None
            },
            PointRef {
                sensor: 1,
                timestamp_ms: 1_100,
                metric: "b",
                value: None
            },
        ]
    );
    let bytes = encode(&message, &Limits::default()).unwrap();
    assert_eq!(decode::<Telemetry>(&bytes, &Limits::default()).unwrap(), message);
}

fn check_decode<M: Message + core::fmt::Debug>(payload: &[u8], limits: &Limits, expect: &str) {
    let error = decode::<M>(payload, limits).unwrap_err();
    let text = alloc::string::ToString::to_string(&error);
    assert!(text.contains(expect), "expected {expect:?} in {text:?}");
}

#[test]
fn bad_payloads_are_refused_with_the_reason() {
    let limits = Limits::default();
    let good = encode(&telemetry(10, 2), &limits).unwrap();

    // Too large: refused before a byte is decoded.
    let small = Limits {
        payload_bytes_max: 16,
        ..Limits::default()
    };
    check_decode::<Telemetry>(&good, &small, "over the limit of 16 (payload_bytes_max)");

    // Not CBOR, truncated, empty.
    check_decode::<Telemetry>(b"hello, world", &limits, "malformed payload");
    check_decode::<Telemetry>(&good[..good.len() / 2], &limits, "malformed payload");
    check_decode::<Telemetry>(b"", &limits, "malformed payload");

    // Another version: refused before the rest is read.
    let mut future = telemetry(1, 1);
    future.v = 2;
    let bytes = serde_ipld_dagcbor::to_vec(&future).unwrap();
    check_decode::<Telemetry>(&bytes, &limits, "protocol version 2 is not supported");

    // The right version but the wrong message for the topic.
    let ack = encode(
        &StoreAck {
            v: PROTOCOL_VERSION,
            stored_through: 3,
        },
        &limits,
    )
    .unwrap();
    check_decode::<Telemetry>(&ack, &limits, "malformed payload");

    // Limits and rules.
    let mut zero = telemetry(1, 1);
    zero.seq = 0;
    check_decode::<Telemetry>(&serde_ipld_dagcbor::to_vec(&zero).unwrap(), &limits, "invalid seq");
    let mut dangling = telemetry(2, 1);
    dangling.points[1].metric = 5;
    check_decode::<Telemetry>(
        &serde_ipld_dagcbor::to_vec(&dangling).unwrap(),
        &limits,
        "refers to no listed metric",
    );
    let few = Limits {
        points_per_message_max: 4,
        ..Limits::default()
    };
    check_decode::<Telemetry>(
        &good,
        &few,
        "points in a telemetry message is 10, over the limit of 4 (points_per_message_max)",
    );
    let mut long = telemetry(1, 1);
    long.metrics[0] = "m".repeat(200);
    check_decode::<Telemetry>(&serde_ipld_dagcbor::to_vec(&long).unwrap(), &limits, "(metric_len_max)");
}

#[test]
fn deep_nesting_in_an_unknown_field_is_refused_not_a_stack_overflow() {
    // {"v": 1, "x": [[[[...]]]]} nested 100,000 deep: a hostile device must
    // not be able to crash the server's decoder.
    let depth = 100_000;
    let mut payload = vec![0xa2, 0x61, b'v', 0x01, 0x61, b'x'];
    payload.extend(core::iter::repeat_n(0x81, depth));
    payload.push(0x00);
    let limits = Limits {
        payload_bytes_max: 1 << 20,
        ..Limits::default()
    };
    check_decode::<Health>(&payload, &limits, "malformed payload");
}

#[test]
fn encode_refuses_what_decode_would() {
    let mut message = telemetry(1, 1);
    message.policy = String::new();
    assert!(matches!(
        encode(&message, &Limits::default()),
        Err(EncodeError::Limit(LimitError::Invalid {
            field: "telemetry policy",
            ..
        }))
    ));
    let big = telemetry(2048, 200);
    let tight = Limits {
        payload_bytes_max: 1024,
        ..Limits::default()
    };
    assert!(matches!(
        encode(&big, &tight),
        Err(EncodeError::TooLarge { limit: 1024, .. })
    ));
}

#[test]
fn unknown_event_kinds_and_fields_are_tolerated() {
    // A newer agent's event: an unknown kind and an extra field.
    #[derive(serde::Serialize)]
    struct Newer<'a> {
        v: u16,
        seq: u64,
        t: u64,
        kind: &'a str,
        detail: &'a str,
        colour: &'a str,
    }
    let bytes = serde_ipld_dagcbor::to_vec(&Newer {
        v: PROTOCOL_VERSION,
        seq: 3,
        t: 5,
        kind: "quantum_flux",
        detail: "",
        colour: "blue",
    })
    .unwrap();
    let event: Event = decode(&bytes, &Limits::default()).unwrap();
    assert_eq!(event.kind, EventKind::Other);
}

#[test]
fn device_ids() {
    for good in ["gw-0001", "a", "0", "sensor_7.site-b", &"x".repeat(64)] {
        assert!(DeviceId::parse(good).is_ok(), "{good}");
    }
    let cases: [(&str, &str); 9] = [
        ("", "device id is 0 bytes"),
        (&"x".repeat(65), "device id is 65 bytes"),
        ("-gw", "starts with a lowercase letter or a digit"),
        (".gw", "starts with a lowercase letter or a digit"),
        ("Gw", "starts with a lowercase letter or a digit"),
        ("gw/1", "found byte 0x2f"),
        ("gw+", "found byte 0x2b"),
        ("gw#", "found byte 0x23"),
        ("gw 1", "found byte 0x20"),
    ];
    for (id, expect) in cases {
        let text = alloc::string::ToString::to_string(&DeviceId::parse(id).unwrap_err());
        assert!(text.contains(expect), "{id:?}: {text}");
    }
}

#[test]
fn topics_parse_and_build() {
    let gw = device("gw-1");
    for kind in Kind::ALL {
        let name = topic(&gw, kind);
        assert_eq!(Topic::parse(&name), Ok(Topic { device: "gw-1", kind }));
        assert!(name.starts_with(&device_prefix(&gw)));
    }
    assert_eq!(Kind::Telemetry.all_devices_filter(), "molt/d/+/telemetry");
    assert_eq!(Topic::parse("molt/x/gw-1/telemetry"), Err(TopicError::NotMolt));
    assert_eq!(Topic::parse("molt/d/gw-1"), Err(TopicError::MissingKind));
    assert_eq!(Topic::parse("molt/d/gw-1/telemetry/x"), Err(TopicError::UnknownKind));
    assert_eq!(Topic::parse("molt/d/+/telemetry"), Err(TopicError::DeviceIdStart));
    assert_eq!(
        Topic::parse("molt/d/gw+/telemetry"),
        Err(TopicError::DeviceIdCharacter { byte: b'+' })
    );
}

/// The broker's access rules, as a table: (device, operation, topic or
/// filter, allowed).
#[test]
fn access_rules() {
    let cases: &[(&str, &str, &str, bool)] = &[
        ("gw-1", "pub", "molt/d/gw-1/telemetry", true),
        ("gw-1", "pub", "molt/d/gw-1/health", true),
        ("gw-1", "pub", "molt/d/gw-1/desired", false),
        ("gw-1", "pub", "molt/d/gw-1/ack", false),
        ("gw-1", "pub", "molt/d/gw-2/telemetry", false),
        ("gw-1", "pub", "molt/d/gw-10/telemetry", false),
        ("gw-1", "pub", "molt/d/gw-1/telemetry/x", false),
        ("gw-1", "pub", "molt/d/+/telemetry", false),
        ("gw-1", "pub", "molt/d/gw-1/#", false),
        ("gw-1", "pub", "$SYS/broker", false),
        ("gw-1", "pub", "other/topic", false),
        ("gw-1", "sub", "molt/d/gw-1/desired", true),
        ("gw-1", "sub", "molt/d/gw-1/ack", true),
        ("gw-1", "sub", "molt/d/gw-1/+", true),
        ("gw-1", "sub", "molt/d/gw-1/#", true),
        ("gw-1", "sub", "molt/d/gw-1", false),
        ("gw-1", "sub", "molt/d/gw-1#", false),
        ("gw-1", "sub", "molt/d/gw-1+/desired", false),
        ("gw-1", "sub", "molt/d/gw-10/desired", false),
        ("gw-1", "sub", "molt/d/gw-2/desired", false),
        ("gw-1", "sub", "molt/d/+/desired", false),
        ("gw-1", "sub", "molt/d/+/#", false),
        ("gw-1", "sub", "molt/d/#", false),
        ("gw-1", "sub", "molt/#", false),
        ("gw-1", "sub", "#", false),
        ("gw-1", "sub", "+/d/gw-1/desired", false),
        ("gw-1", "sub", "$share/g/molt/d/gw-1/desired", false),
        ("gw-1", "sub", "$SYS/#", false),
    ];
    for &(id, operation, name, allowed) in cases {
        let gw = device(id);
        let got = match operation {
            "pub" => may_publish(&gw, name),
            _ => may_subscribe(&gw, name),
        };
        assert_eq!(got, allowed, "{id} {operation} {name}");
    }
}
