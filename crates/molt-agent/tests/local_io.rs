//! The local MQTT source, the MQTT actuator sink and the GPIO sink against
//! real things: an embedded broker (rmqtt, the version molt-server pins) on
//! 127.0.0.1 with a port the kernel picks, the real `molt-agent` binary
//! killed with SIGKILL, and the GPIO character device where there is one.
//! No external service is used.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use molt_agent::daemon::{self, AgentConfig};
use molt_agent::gpio::{GpioSink, GpioSinkConfig};
use molt_agent::log::{LogLimits, SyncPolicy};
use molt_agent::mqtt_io::{MqttSink, MqttSinkConfig};
use molt_agent::outbox::{Outbox, OverflowPolicy};
use molt_protocol::{Kind, Limits, Telemetry};
use rumqttc::{Client, ConnectionError, Event, MqttOptions, Packet, QoS};

const SEGMENT_BYTES: u64 = 65536;

/// Starts an embedded broker on 127.0.0.1 with a port of the kernel's
/// choosing, on a runtime of its own that lives as long as the test.
fn start_broker() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let scx = rmqtt::context::ServerContext::new().build().await;
            let listener = rmqtt::net::Builder::new()
                .name("test")
                .laddr(SocketAddr::from(([127, 0, 0, 1], 0)))
                .allow_anonymous(true)
                .max_inflight(NonZeroU16::new(32).unwrap())
                .max_mqueue_len(100_000)
                .mqueue_rate_limit(NonZeroU32::MAX, Duration::from_secs(1))
                .bind()
                .unwrap()
                .tcp()
                .unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let server = rmqtt::server::MqttServer::new(scx).listener(listener).build();
            server.run().await.unwrap();
        });
    });
    rx.recv_timeout(Duration::from_secs(30)).unwrap()
}

/// A loopback TCP relay between the agent and the broker that turns an
/// agent that vanished (SIGKILL) into a clean MQTT DISCONNECT, so that the
/// test measures the agent and not two message losses of rmqtt 0.24.0 when
/// a client's connection breaks:
///
/// - its `deliver` takes a QoS 1 message off the session's queue and puts it
///   in the inflight window only after the write to the connection
///   succeeded (session.rs: "at exception ... store message" is a TODO), so
///   a write into a dead connection loses the message;
/// - a session taken over while its connection still looks alive drops the
///   messages queued behind the takeover (the offline loop drains them, the
///   online loop does not).
///
/// The relay forwards the agent's packets whole; when the agent is gone it
/// sends DISCONNECT in its place and keeps reading the broker's side (whose
/// writes therefore succeed, the messages staying in flight) until the
/// broker closes it. The session stays (`clean_session = false`) and the
/// broker delivers what was in flight again on the next connection. The
/// agent itself still loses its socket, its memory and everything it had
/// not journaled.
fn start_relay(broker: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    use std::io::{Read, Write};
    /// Bytes of the whole MQTT packets at the start of `bytes`.
    fn whole_packets(bytes: &[u8]) -> usize {
        let mut at = 0;
        loop {
            let (mut length, mut shift, mut next) = (0usize, 0, at + 1);
            loop {
                let Some(&byte) = bytes.get(next) else { return at };
                length |= usize::from(byte & 0x7f) << shift;
                next += 1;
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            if bytes.len() < next + length {
                return at;
            }
            at = next + length;
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let counter = connections.clone();
    std::thread::spawn(move || {
        for agent in listener.incoming() {
            let Ok(agent) = agent else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let Ok(upstream) = std::net::TcpStream::connect(broker) else {
                continue;
            };
            let (mut from_agent, mut to_broker) = (agent.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let (mut pending, mut buffer) = (Vec::new(), [0u8; 16 << 10]);
                while let Ok(n @ 1..) = from_agent.read(&mut buffer) {
                    pending.extend_from_slice(&buffer[..n]);
                    let whole = whole_packets(&pending);
                    if to_broker.write_all(&pending[..whole]).is_err() {
                        return;
                    }
                    pending.drain(..whole);
                }
                // The agent is gone (a partial packet it left is dropped).
                let _ = to_broker.write_all(&[0xe0, 0x00]);
            });
            let (mut from_broker, mut to_agent) = (upstream, agent);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 16 << 10];
                // Once the agent is gone, what the broker sends is dropped.
                while let Ok(n @ 1..) = from_broker.read(&mut buffer) {
                    let _ = to_agent.write_all(&buffer[..n]);
                }
            });
        }
    });
    (addr, connections)
}

/// A test MQTT client on the sync API: every incoming packet goes to the
/// receiver; the thread ends when the client is dropped or disconnects.
fn client(addr: SocketAddr, id: &str, clean_session: bool) -> (Client, Receiver<Packet>) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_clean_session(clean_session);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_max_packet_size(1 << 20, 1 << 20);
    // At most the broker's inbound window (max_inflight 32): rmqtt drops a
    // publish beyond it and closes the connection.
    options.set_inflight(16);
    let (client, mut connection) = Client::new(options, 4096);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::Disconnect)) => return,
                Ok(Event::Incoming(packet)) => {
                    if tx.send(packet).is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(Event::Outgoing(_)) => {}
                Err(ConnectionError::RequestsDone) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    (client, rx)
}

fn wait_for(rx: &Receiver<Packet>, what: &str, matches: impl Fn(&Packet) -> bool) -> Packet {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(packet) if matches(&packet) => return packet,
            Ok(_) => {}
            Err(error) => panic!("waiting for {what}: {error:?}"),
        }
    }
}

/// Makes the agent's persistent session at the broker before the agent
/// first runs, so that what is published before then is kept for it.
fn make_session(addr: SocketAddr, id: &str, filters: &[&str]) {
    let (client, rx) = client(addr, id, false);
    for filter in filters {
        client.subscribe(*filter, QoS::AtLeastOnce).unwrap();
    }
    for _ in filters {
        wait_for(&rx, "SUBACK", |packet| matches!(packet, Packet::SubAck(_)));
    }
    client.disconnect().unwrap();
    std::thread::sleep(Duration::from_millis(100));
}

/// Publishes at QoS 1 and counts the broker's PUBACKs.
struct Publisher {
    client: Client,
    published: u64,
    acked: Arc<AtomicU64>,
}

impl Publisher {
    fn new(addr: SocketAddr, id: &str) -> Publisher {
        let (client, rx) = client(addr, id, true);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = acked.clone();
        std::thread::spawn(move || {
            while let Ok(packet) = rx.recv() {
                if matches!(packet, Packet::PubAck(_)) {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Publisher {
            client,
            published: 0,
            acked,
        }
    }

    fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .unwrap();
        self.published += 1;
    }

    /// Waits until the broker has every message published so far.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acked.load(Ordering::SeqCst) < self.published {
            assert!(
                Instant::now() < deadline,
                "the broker did not acknowledge every publish"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `(sensor, timestamp)` of every telemetry point the echo policy wrote to
/// the outbox, counted, read from a copy so the running agent is not
/// disturbed (a record being written is cut from the copy as a torn tail).
fn outbox_points(state: &Path) -> BTreeMap<(u32, u64), u32> {
    let mut points = BTreeMap::new();
    let dir = state.join("outbox");
    if !dir.exists() {
        return points;
    }
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if let Ok(bytes) = std::fs::read(&path) {
            std::fs::write(copy.path().join(path.file_name().unwrap()), bytes).unwrap();
        }
    }
    let limits = LogLimits {
        segment_bytes_max: SEGMENT_BYTES,
        bytes_max: 256 << 20,
        record_bytes_max: 8 << 20,
    };
    let (outbox, _) = Outbox::open(
        copy.path(),
        limits,
        SyncPolicy::EveryBatch,
        OverflowPolicy::RefuseReadings,
    )
    .unwrap();
    for batch in outbox.batches().unwrap() {
        for message in batch.messages.iter().filter(|message| message.kind == Kind::Telemetry) {
            let telemetry: Telemetry = molt_protocol::decode(&message.payload, &Limits::default()).unwrap();
            for point in telemetry.points().filter(|point| point.metric == "echo") {
                *points.entry((point.sensor, point.timestamp_ms)).or_default() += 1;
            }
        }
    }
    points
}

fn write_config(dir: &Path, addr: SocketAddr, client_id: &str, extra: &str) -> PathBuf {
    let wasm = dir.join("sequence-echo.wasm");
    std::fs::write(&wasm, molt_guests::SEQUENCE_ECHO).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            r#"
state_dir = "{state}"

[limits]
batch_readings_max = 20
batch_wait_ms = 2
checkpoint_interval_batches = 5

[outbox]
segment_bytes_max = {SEGMENT_BYTES}

[[source]]
kind = "mqtt"
host = "127.0.0.1"
port = {port}
client_id = "{client_id}"
topics = ["sensors/#"]
sensor_topics = {{ "plain/temp" = 42 }}
payload_bytes_max = 256
in_flight_max = 64
dedupe_readings_max = 256
reconnect_initial_ms = 50
reconnect_max_ms = 200
{extra}

[[policy]]
name = "echo"
wasm = "{wasm}"
config = {{ tag = "echo" }}
"#,
            state = dir.join("state").display(),
            port = addr.port(),
            wasm = wasm.display(),
        ),
    )
    .unwrap();
    path
}

#[test]
fn mqtt_readings_are_journaled_exactly_once_across_agent_kills() {
    let kills = 8;
    let readings = 2000u64;
    let addr = start_broker();
    let client_id = "molt-test-agent-kills";
    make_session(addr, client_id, &["sensors/#", "plain/temp"]);
    let dir = tempfile::tempdir().unwrap();
    let (relay, connections) = start_relay(addr);
    let config = write_config(dir.path(), relay, client_id, "");
    let state = dir.path().join("state");
    let stderr_path = dir.path().join("agent.log");
    let agent = env!("CARGO_BIN_EXE_molt-agent");
    let start = || {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        let child = Command::new(agent)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        // rmqtt 0.24.0 also loses a message routed while a session is being
        // taken over by a new connection: sensors publish only once the
        // agent's connection is up, and before it comes up, everything
        // published is routed (PUBACKed by the broker).
        let seen = connections.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while connections.load(Ordering::SeqCst) == seen {
            assert!(Instant::now() < deadline, "the agent did not connect");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
        child
    };

    let mut publisher = Publisher::new(addr, "molt-test-sensors");
    let mut n = 0u64;
    // Sensors publish every 2 ms, while the agent runs and while it is down.
    let mut publish_for = |publisher: &mut Publisher, ms: u64| {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until && n < readings {
            n += 1;
            let payload = format!(r#"{{"sensor": {}, "value": {n}, "t": {n}}}"#, n % 5);
            publisher.publish(&format!("sensors/{}", n % 5), payload.clone(), false);
            if n.is_multiple_of(50) {
                // A sensor's own retry: the same reading again.
                publisher.publish(&format!("sensors/{}", n % 5), payload, false);
            }
            if n.is_multiple_of(97) {
                publisher.publish("sensors/garbage", "{not json", false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let mut rng = 0x6d71_7474u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..kills {
        let mut child = start();
        publish_for(&mut publisher, 150 + next() % 550);
        assert!(child.try_wait().unwrap().is_none(), "the agent stopped by itself");
        child.kill().unwrap();
        child.wait().unwrap();
        // Down for a while: the broker keeps what is published meanwhile.
        publish_for(&mut publisher, next() % 400);
        publisher.settle();
    }
    let mut child = start();
    publish_for(&mut publisher, 3_600_000);
    publisher.settle();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (outbox_points(&state).len() as u64) < readings {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let points = outbox_points(&state);
            let missing: Vec<u64> = (1..=readings)
                .filter(|n| !points.contains_key(&((n % 5) as u32, *n)))
                .take(20)
                .collect();
            panic!(
                "only {} of {readings} readings arrived, missing {missing:?}; agent log tail:\n{}",
                points.len(),
                &log[log.len().saturating_sub(4000)..]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Time for a late redelivery to show up twice, if it were going to.
    std::thread::sleep(Duration::from_millis(1000));
    child.kill().unwrap();
    child.wait().unwrap();

    let points = outbox_points(&state);
    let lost = (1..=readings)
        .filter(|n| !points.contains_key(&((n % 5) as u32, *n)))
        .count();
    let duplicated = points.values().filter(|&&count| count > 1).count();
    let stray = points.len() as u64 - (readings - lost as u64);
    println!("mqtt-kill: kills={kills} readings={readings} lost={lost} duplicated={duplicated}");
    assert_eq!((lost, duplicated, stray), (0, 0, 0));
}

#[test]
fn the_mqtt_source_refuses_garbage_skips_retained_and_acknowledges_everything() {
    let addr = start_broker();
    let client_id = "molt-test-agent-garbage";
    let mut publisher = Publisher::new(addr, "molt-test-sensors");
    // A retained last value, there before the agent subscribes.
    publisher.publish("sensors/9", r#"{"sensor": 9, "value": 1, "t": 1}"#, true);
    publisher.settle();
    make_session(addr, client_id, &["sensors/#", "plain/temp"]);
    for t in 1..=10 {
        publisher.publish(
            "sensors/1",
            format!(r#"{{"sensor": 1, "value": {t}, "t": {t}}}"#),
            false,
        );
    }
    // A sensor's own retry of a reading it already published.
    publisher.publish("sensors/1", r#"{"sensor": 1, "value": 3, "t": 3}"#, false);
    publisher.publish("plain/temp", "21.5", false);
    publisher.publish("plain/temp", "22.5", false);
    // Garbage: not JSON, over payload_bytes_max, no sensor, not a number.
    publisher.publish("sensors/2", "{not json", false);
    publisher.publish(
        "sensors/2",
        format!(r#"{{"sensor": 2, "value": 1, "pad": "{}"}}"#, "x".repeat(300)),
        false,
    );
    publisher.publish("sensors/2", r#"{"value": 1}"#, false);
    publisher.publish("plain/temp", "warm", false);
    publisher.settle();

    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stop.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let extra = format!(
        "\n[[source]]\nkind = \"json-lines\"\npath = \"{}\"\nexit_at_eof = true\n",
        fifo.display()
    );
    let config = AgentConfig::load(&write_config(dir.path(), addr, client_id, &extra)).unwrap();
    let state = config.state_dir.clone();
    let run = std::thread::spawn(move || daemon::run(&config));
    // Opening the FIFO's writing end lets the source open it; closing it
    // stops the agent.
    let stop = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let total = |points: &BTreeMap<(u32, u64), u32>| points.values().sum::<u32>();
    while total(&outbox_points(&state)) < 12 {
        assert!(
            Instant::now() < deadline,
            "the readings did not arrive: {:?}",
            outbox_points(&state)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(stop);
    let summary = run.join().unwrap().unwrap();

    let points = outbox_points(&state);
    assert_eq!(total(&points), 12, "{points:?}");
    assert!((1..=10).all(|t| points.get(&(1, t)) == Some(&1)), "{points:?}");
    // The plain readings carry the agent's arrival time (maybe the same
    // millisecond for both).
    let plain: u32 = points
        .iter()
        .filter(|((sensor, _), _)| *sensor == 42)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(plain, 2, "{points:?}");
    assert!(
        !points.contains_key(&(9, 1)),
        "a retained message was taken as a reading"
    );
    let source = &summary.mqtt_sources[0];
    assert_eq!(summary.refused_inputs, 4, "{summary:?}");
    assert_eq!(
        (source.forwarded, source.journaled, source.garbage, source.duplicates),
        (12, 12, 4, 1),
        "{source:?}"
    );
    // rmqtt built without its `retain` feature (as molt-server builds it)
    // keeps no retained message; where one comes, it is skipped and
    // acknowledged (src/mqtt_io.rs tests the path on its own).
    assert!(source.retained_skipped <= 1, "{source:?}");
    // Every delivery was acknowledged exactly once: 12 readings, 4 garbage,
    // 1 repeat, and the retained one if it came.
    assert_eq!(source.acked, 17 + source.retained_skipped, "{source:?}");
    assert_eq!(source.received, source.acked, "{source:?}");

    // The broker holds nothing unacknowledged for the agent's session.
    let (probe, rx) = client(addr, client_id, false);
    wait_for(&rx, "CONNACK", |packet| matches!(packet, Packet::ConnAck(_)));
    match rx.recv_timeout(Duration::from_millis(1500)) {
        Ok(Packet::Publish(publish)) => panic!("redelivered after the agent acknowledged it: {publish:?}"),
        Ok(_) | Err(RecvTimeoutError::Timeout) => {}
        Err(error) => panic!("{error:?}"),
    }
    drop(probe);
}

fn sink_config(addr: SocketAddr, extra: &str) -> MqttSinkConfig {
    toml::from_str(&format!(
        r#"
actuator = "fan"
commands_per_second_max = 100
port = {}
{extra}
"#,
        addr.port()
    ))
    .unwrap()
}

#[test]
fn the_mqtt_sink_publishes_commands_a_subscriber_receives() {
    let addr = start_broker();
    let (subscriber, rx) = client(addr, "molt-test-actuators", true);
    subscriber.subscribe("actuators/#", QoS::AtLeastOnce).unwrap();
    wait_for(&rx, "SUBACK", |packet| matches!(packet, Packet::SubAck(_)));

    let json = MqttSink::start(&sink_config(addr, r#"topic = "actuators/fan/set""#)).unwrap();
    let bare = MqttSink::start(&sink_config(
        addr,
        r#"topic = "actuators/fan/level"
client_id = "molt-test-fan-level"
format = "value""#,
    ))
    .unwrap();
    for value in [1.0, 0.0, 0.5] {
        json.deliver("fan@1", value).unwrap();
        bare.deliver("fan@1", value).unwrap();
    }
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while got.values().map(Vec::len).sum::<usize>() < 6 {
        let Packet::Publish(publish) = wait_for(&rx, "a command", |packet| matches!(packet, Packet::Publish(_))) else {
            unreachable!()
        };
        got.entry(publish.topic.clone())
            .or_default()
            .push(String::from_utf8(publish.payload.to_vec()).unwrap());
    }
    assert_eq!(got["actuators/fan/level"], ["1", "0", "0.5"]);
    let values: Vec<(String, f64, String)> = got["actuators/fan/set"]
        .iter()
        .map(|text| {
            let json: serde_json::Value = serde_json::from_str(text).unwrap();
            (
                json["actuator"].as_str().unwrap().to_string(),
                json["value"].as_f64().unwrap(),
                json["policy"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        values,
        [1.0, 0.0, 0.5].map(|value| ("fan".to_string(), value, "fan@1".to_string()))
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while json.counters().acked < 3 {
        assert!(Instant::now() < deadline, "{:?}", json.counters());
        std::thread::sleep(Duration::from_millis(10));
    }
    let counters = json.stop();
    assert_eq!((counters.delivered, counters.acked, counters.failed), (3, 3, 0));
    bare.stop();
}

#[test]
fn the_mqtt_sink_counts_what_it_cannot_send() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sink = MqttSink::start(&sink_config(
        dead,
        r#"topic = "actuators/fan/set"
queue_max = 2
command_max_age_ms = 100
reconnect_initial_ms = 20
reconnect_max_ms = 50"#,
    ))
    .unwrap();
    sink.deliver("fan@1", 1.0).unwrap();
    sink.deliver("fan@1", 1.0).unwrap();
    let error = sink.deliver("fan@1", 1.0).unwrap_err();
    assert!(error.contains("queue full (queue_max=2)"), "{error}");
    std::thread::sleep(Duration::from_millis(300));
    let counters = sink.stop();
    // The refused one, and the two queued ones the broker never took.
    assert_eq!((counters.delivered, counters.failed), (0, 3), "{counters:?}");
    assert!(counters.reconnects >= 1, "{counters:?}");
    assert!(counters.last_error.is_some());
}

fn gpio_config(chip: &str, line: u32, required: bool) -> GpioSinkConfig {
    toml::from_str(&format!(
        r#"
actuator = "valve"
commands_per_second_max = 10
chip = "{chip}"
line = {line}
required = {required}
"#
    ))
    .unwrap()
}

#[test]
fn a_gpio_sink_without_its_chip_names_chip_and_line() {
    // Required: the agent refuses to start, saying which chip and line.
    let error = GpioSink::start(&gpio_config("gpiochip-molt-absent", 3, true)).unwrap_err();
    assert!(error.contains("/dev/gpiochip-molt-absent"), "{error}");
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("required = true"), "{error}");

    // Not required: the agent runs, and each command is a counted failure.
    let mut sink = GpioSink::start(&gpio_config("gpiochip-molt-absent", 3, false)).unwrap();
    let error = sink.set(1.0).unwrap_err();
    assert!(error.contains("chip /dev/gpiochip-molt-absent line 3"), "{error}");
    let counters = sink.counters();
    assert_eq!((counters.delivered, counters.failed, counters.ready), (0, 1, false));

    // Through the daemon: a required line that is absent stops `run`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!(
            r#"
state_dir = "{}"

[[sink]]
kind = "gpio"
actuator = "valve"
commands_per_second_max = 10
chip = "gpiochip-molt-absent"
line = 3
required = true
"#,
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let config = AgentConfig::load(&path).unwrap();
    let error = daemon::run(&config).unwrap_err();
    assert!(error.contains("chip /dev/gpiochip-molt-absent line 3"), "{error}");
}

/// A GPIO chip made by the `gpio-sim` kernel module, if this machine has one.
fn gpio_sim_chip() -> Option<(PathBuf, u32)> {
    for path in gpiocdev::chip::chips().ok()? {
        let Ok(chip) = gpiocdev::Chip::from_path(&path) else {
            continue;
        };
        if let Ok(info) = chip.info()
            && info.label.starts_with("gpio-sim")
            && info.num_lines > 0
        {
            return Some((path, info.num_lines));
        }
    }
    None
}

#[test]
fn a_gpio_sink_drives_a_gpio_sim_line() {
    let Some((path, _)) = gpio_sim_chip() else {
        println!(
            "skipped: no /dev/gpiochip* with a gpio-sim label on this machine (modprobe gpio-sim and configure a bank to run it)"
        );
        return;
    };
    let mut sink = GpioSink::start(&gpio_config(&path.display().to_string(), 0, true)).unwrap();
    let chip = gpiocdev::Chip::from_path(&path).unwrap();
    let info = chip.line_info(0).unwrap();
    assert!(info.used, "{info:?}");
    assert_eq!(info.consumer, "molt-agent");
    assert_eq!(info.direction, gpiocdev::line::Direction::Output);
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let sim_value = PathBuf::from(format!("/sys/bus/gpio/devices/{name}/sim_gpio0/value"));
    for (value, level) in [(1.0, "1"), (0.0, "0"), (-2.5, "1")] {
        sink.set(value).unwrap();
        if sim_value.exists() {
            assert_eq!(std::fs::read_to_string(&sim_value).unwrap().trim(), level);
        }
    }
    assert_eq!(sink.counters().delivered, 3);
    let error = GpioSink::start(&gpio_config(&path.display().to_string(), 100_000, true)).unwrap_err();
    assert!(error.contains("line 100000") && error.contains("lines"), "{error}");
}
