//! The link to the fleet server: MQTT over TLS with the device's
//! certificate, on its own thread with a small current-thread tokio
//! runtime.
//!
//! - It publishes the outbox's messages that are durable and not yet
//!   acknowledged by the server's store, in sequence order, to
//!   `molt/d/{id}/{kind}` at QoS 1, at most `in_flight_max` without a PUBACK
//!   and at most `publish_per_second_max` per second (burst
//!   `publish_burst_max`), below the server's own per-device rate limit.
//! - It trims the outbox only on the server's `StoreAck { stored_through }`,
//!   never on a PUBACK (FLEET.md, principle 4): a PUBACK says only that the
//!   broker has the message, and the embedded broker dies with the server.
//! - After every (re)connect it sends again everything above the last
//!   `StoreAck`; the server stores by `(device, seq)`, so a resend is
//!   acknowledged again and never stored twice.
//! - While connected, if messages are outstanding above the last
//!   `StoreAck` and none has advanced it for `ack_timeout_ms`, it sends
//!   again from the last `StoreAck` without reconnecting (`AckWatch`): the
//!   server's broker may drop a message under load, and the cumulative
//!   acknowledgement would otherwise stall at the gap until a reconnect.
//! - It reconnects with jittered exponential backoff between
//!   `reconnect_initial_ms` and `reconnect_max_ms`.
//! - A `Desired` state is decoded under the protocol's limits, logged and
//!   kept in `desired.json` (atomically); acting on it is not done yet.
//! - The newest `StoreAck` is kept in `acked.json` (at most once a second,
//!   and when the link stops), so that after a restart the link does not
//!   resend what the store already holds. It is never trusted beyond what
//!   the outbox holds, and a lost or unreadable file only means resending
//!   (the server stores by `(device, seq)`).
//! - The link never appends to the outbox: the reported state it owes the
//!   server after each connect is appended by the main loop
//!   ([`crate::report`]), which sees [`LinkProbe::connects`] change.
//!
//! rumqttc's event loop is polled on a task of its own that only forwards
//! events and never publishes (rumqttc issue #1025); the link's task
//! publishes with `try_publish` and never waits on the poller.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use molt_protocol::{Desired, Kind, Limits, StoreAck};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};

use crate::identity::{self, Identity};
use crate::mqtt_client::{Backoff, spawn_poller};
use crate::outbox::{self, Outbox, SharedOutbox, Uplink};

/// The `[server]` section of the agent's configuration: the link to the
/// fleet server. Every bound is named here; the defaults are in
/// `packaging/agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where `molt-agent enroll` wrote the identity; default
    /// `{state_dir}/identity`.
    pub identity_dir: Option<PathBuf>,
    /// The broker to connect to, `mqtts://host:port`, instead of the one
    /// the server named at enrollment (a server behind a new address).
    pub broker: Option<String>,
    /// Messages published and not yet PUBACKed, at most.
    pub in_flight_max: u16,
    /// Messages published per second, at most, sustained (keep it below the
    /// server's `limits.device_messages_per_second`, default 50).
    pub publish_per_second_max: u32,
    /// Messages published in a burst above the sustained rate (keep it below
    /// the server's `limits.device_message_burst`, default 500).
    pub publish_burst_max: u32,
    /// Payload bytes read from the outbox at once for sending.
    pub read_bytes_max: u64,
    /// First wait before a reconnect; it doubles after each failure.
    pub reconnect_initial_ms: u64,
    /// Longest wait before a reconnect.
    pub reconnect_max_ms: u64,
    /// A TCP and TLS connect and the MQTT CONNACK must take at most this.
    pub connect_timeout_ms: u64,
    /// MQTT keep-alive.
    pub keep_alive_s: u64,
    /// While connected, messages published above the last `StoreAck` and
    /// no `StoreAck` advancing for this long: the link sends again from the
    /// last `StoreAck` without reconnecting (the server's broker may drop a
    /// message under load, and the acknowledgement stalls at the gap).
    pub ack_timeout_ms: u64,
    /// Largest MQTT packet sent or received.
    pub mqtt_packet_bytes_max: usize,
    /// Events queued between rumqttc's poller and the link.
    pub event_queue_max: usize,
    /// When the agent stops by itself (a source with `exit_at_eof`), it
    /// waits at most this long for the server to acknowledge the outbox.
    pub drain_timeout_ms: u64,
    /// Largest `desired.json` read back.
    pub desired_bytes_max: u64,
    /// The hardware class the device reports in its state; default the
    /// CPU architecture the agent was built for (`x86_64`, `aarch64`, ...).
    pub hardware_class: String,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            identity_dir: None,
            broker: None,
            in_flight_max: 32,
            publish_per_second_max: 40,
            publish_burst_max: 200,
            read_bytes_max: 256 << 10,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 60_000,
            connect_timeout_ms: 10_000,
            keep_alive_s: 30,
            ack_timeout_ms: 10_000,
            mqtt_packet_bytes_max: 96 << 10,
            event_queue_max: 256,
            drain_timeout_ms: 10_000,
            desired_bytes_max: 64 << 10,
            hardware_class: std::env::consts::ARCH.to_owned(),
        }
    }
}

impl ServerConfig {
    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("server.in_flight_max", u64::from(self.in_flight_max)),
            ("server.publish_per_second_max", u64::from(self.publish_per_second_max)),
            ("server.publish_burst_max", u64::from(self.publish_burst_max)),
            ("server.read_bytes_max", self.read_bytes_max),
            ("server.reconnect_initial_ms", self.reconnect_initial_ms),
            ("server.reconnect_max_ms", self.reconnect_max_ms),
            ("server.connect_timeout_ms", self.connect_timeout_ms),
            ("server.keep_alive_s", self.keep_alive_s),
            ("server.ack_timeout_ms", self.ack_timeout_ms),
            ("server.mqtt_packet_bytes_max", self.mqtt_packet_bytes_max as u64),
            ("server.event_queue_max", self.event_queue_max as u64),
            ("server.desired_bytes_max", self.desired_bytes_max),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.reconnect_max_ms < self.reconnect_initial_ms {
            return Err(format!(
                "server.reconnect_max_ms ({}) is below server.reconnect_initial_ms ({})",
                self.reconnect_max_ms, self.reconnect_initial_ms
            ));
        }
        if let Some(broker) = &self.broker {
            identity::parse_broker(broker).map_err(|why| format!("server.broker: {why}"))?;
        }
        let name_len_max = Limits::default().name_len_max;
        if self.hardware_class.is_empty() || self.hardware_class.len() > name_len_max {
            return Err(format!(
                "server.hardware_class must be 1 to {name_len_max} bytes (the protocol's name_len_max)"
            ));
        }
        Ok(())
    }
}

/// Room in an MQTT packet for the header and the topic besides the payload
/// (a topic is `molt/d/` plus at most 64 bytes of device id plus a kind).
const PACKET_OVERHEAD_BYTES: usize = 256;

/// The file in the state directory that keeps the newest desired state.
pub const DESIRED_FILE: &str = "desired.json";
/// The file in the state directory where a running link reports its state
/// for `molt-agent status` (not synced: it is a report, not a record).
pub const LINK_STATUS_FILE: &str = "link.json";
/// The file in the state directory that keeps the newest `StoreAck` across
/// restarts.
pub const ACKED_FILE: &str = "acked.json";

/// What `acked.json` keeps: the server's newest `stored_through` for this
/// device id. Bound to the id, so that a state directory re-enrolled under
/// another id (whose server-side count starts at 0) never skips a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedRecord {
    /// The device the acknowledgement was for.
    pub device_id: String,
    /// Every message through this sequence number is in the server's store.
    pub stored_through: u64,
}

/// Reads `acked.json` for `device`. `None`, with a warning, for a file
/// that is missing, unreadable, over `STATE_FILE_BYTES_MAX`, or for another
/// device: in doubt, the link resends and the server dedupes.
pub fn read_acked(state_dir: &Path, device: &str) -> Option<u64> {
    let path = state_dir.join(ACKED_FILE);
    if !path.exists() {
        return None;
    }
    let record = identity::read_bounded(&path, crate::report::STATE_FILE_BYTES_MAX, "STATE_FILE_BYTES_MAX")
        .map_err(|error| error.to_string())
        .and_then(|bytes| {
            serde_json::from_slice::<AckedRecord>(&bytes).map_err(|error| format!("{}: {error}", path.display()))
        });
    match record {
        Ok(record) if record.device_id == device => Some(record.stored_through),
        Ok(record) => {
            eprintln!(
                "molt-agent: link: {} is for device {}, not {device}; sending everything the outbox holds",
                path.display(),
                record.device_id
            );
            None
        }
        Err(error) => {
            eprintln!("molt-agent: link: {error}; sending everything the outbox holds");
            None
        }
    }
}

/// Acknowledges in `outbox` what `acked.json` says the server stored for
/// `device`, never beyond what the outbox holds (the outbox may have lost an
/// unsynced tail, and its numbers then continue below the file's); returns
/// the outbox's `stored_through` afterwards.
pub fn restore_acked(outbox: &mut Outbox, state_dir: &Path, device: &str) -> u64 {
    if let Some(persisted) = read_acked(state_dir, device) {
        let through = persisted.min(outbox.next_seq().saturating_sub(1));
        if let Err(error) = outbox.acknowledge(through) {
            eprintln!("molt-agent: link: trimming the outbox through {through}: {error}");
        }
    }
    outbox.stored_through()
}

/// Writes `acked.json` by a rename, not synced: a power cut may leave an
/// older acknowledgement or none, and either only means resending.
fn write_acked(state_dir: &Path, record: &AckedRecord) -> std::io::Result<()> {
    let path = state_dir.join(ACKED_FILE);
    let tmp = state_dir.join(format!(".{ACKED_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, &path)
}

/// The newest desired state received, as `desired.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRecord {
    /// The director's generation; a lower or equal one is ignored.
    pub generation: u64,
    /// The release set to run.
    pub release: u64,
    /// The rollout it belongs to, if any.
    #[serde(default)]
    pub rollout: Option<String>,
    /// When it arrived, milliseconds since the Unix epoch.
    pub received_ms: u64,
}

/// The link's counters, as `molt-agent run` ends with them and
/// `molt-agent status` reads them from `link.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSummary {
    /// The device id.
    pub device_id: String,
    /// The broker.
    pub broker: String,
    /// Connected to the broker now.
    pub connected: bool,
    /// Messages published (resends included).
    pub published: u64,
    /// Messages PUBACKed by the broker (not yet stored, maybe).
    pub puback: u64,
    /// The newest `StoreAck`: every message through it is in the server's
    /// store, and the outbox is trimmed through it.
    pub acked_through: u64,
    /// Connections lost or refused, each followed by a reconnect attempt.
    pub reconnects: u64,
    /// Desired states received (also repeats).
    pub desired_received: u64,
    /// The newest desired generation kept.
    pub desired_generation: u64,
    /// Downlink payloads refused by the protocol decoder.
    pub downlink_refused: u64,
    /// Why the last connection ended, if one did.
    pub last_error: Option<String>,
    /// When this was written, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Connections made (CONNACKed) since the agent started.
    #[serde(default)]
    pub connects: u64,
    /// Time without a connection since the agent started, milliseconds.
    #[serde(default)]
    pub offline_ms: u64,
    /// Times the acknowledgement did not advance within `ack_timeout_ms`
    /// with messages outstanding, each followed by a resend from the last
    /// `StoreAck` on the same connection.
    #[serde(default)]
    pub ack_timeouts: u64,
    /// Messages published again (a sequence number this run had already
    /// published), after a reconnect or an acknowledgement timeout.
    #[serde(default)]
    pub resends: u64,
}

#[derive(Debug, Default)]
struct Stats {
    connected: AtomicBool,
    published: AtomicU64,
    puback: AtomicU64,
    acked_through: AtomicU64,
    reconnects: AtomicU64,
    desired_received: AtomicU64,
    desired_generation: AtomicU64,
    downlink_refused: AtomicU64,
    connects: AtomicU64,
    ack_timeouts: AtomicU64,
    resends: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

/// Time without a connection: what earlier outages added up to, and since
/// when the current one lasts.
#[derive(Debug)]
struct Offline {
    total: Duration,
    since: Option<Instant>,
}

/// A running link; [`Link::stop`] ends it.
#[derive(Debug)]
pub struct Link {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    drain: Duration,
}

#[derive(Debug)]
struct Shared {
    stats: Stats,
    wake: Notify,
    device: String,
    broker: String,
    state_dir: PathBuf,
    offline: std::sync::Mutex<Offline>,
    desired: std::sync::Mutex<Option<DesiredRecord>>,
    /// The `stored_through` in `acked.json`.
    persisted_ack: AtomicU64,
}

/// A view of a running link for the main loop and `/metrics`: its
/// counters, without the power to stop it.
#[derive(Debug, Clone)]
pub struct LinkProbe(Arc<Shared>);

impl LinkProbe {
    /// The counters now.
    pub fn summary(&self) -> LinkSummary {
        self.0.summary()
    }

    /// Connections made so far; a change means the link (re)connected.
    pub fn connects(&self) -> u64 {
        self.0.stats.connects.load(Ordering::SeqCst)
    }

    /// The newest desired generation kept.
    pub fn desired_generation(&self) -> u64 {
        self.0.stats.desired_generation.load(Ordering::SeqCst)
    }

    /// The newest desired state kept.
    pub fn desired(&self) -> Option<DesiredRecord> {
        self.0.desired.lock().ok().and_then(|desired| desired.clone())
    }

    /// Time without a connection since the agent started, milliseconds.
    pub fn offline_ms(&self) -> u64 {
        self.0.offline_ms()
    }
}

impl Shared {
    fn summary(&self) -> LinkSummary {
        let stats = &self.stats;
        LinkSummary {
            device_id: self.device.clone(),
            broker: self.broker.clone(),
            connected: stats.connected.load(Ordering::SeqCst),
            published: stats.published.load(Ordering::SeqCst),
            puback: stats.puback.load(Ordering::SeqCst),
            acked_through: stats.acked_through.load(Ordering::SeqCst),
            reconnects: stats.reconnects.load(Ordering::SeqCst),
            desired_received: stats.desired_received.load(Ordering::SeqCst),
            desired_generation: stats.desired_generation.load(Ordering::SeqCst),
            downlink_refused: stats.downlink_refused.load(Ordering::SeqCst),
            last_error: stats.last_error.lock().ok().and_then(|error| error.clone()),
            at_ms: now_ms(),
            connects: stats.connects.load(Ordering::SeqCst),
            offline_ms: self.offline_ms(),
            ack_timeouts: stats.ack_timeouts.load(Ordering::SeqCst),
            resends: stats.resends.load(Ordering::SeqCst),
        }
    }

    fn offline_ms(&self) -> u64 {
        self.offline.lock().map_or(0, |offline| {
            let now = offline.since.map_or(Duration::ZERO, |since| since.elapsed());
            u64::try_from((offline.total + now).as_millis()).unwrap_or(u64::MAX)
        })
    }

    /// The connection is up (`true`) or lost (`false`).
    fn set_online(&self, online: bool) {
        if let Ok(mut offline) = self.offline.lock() {
            match (online, offline.since) {
                (true, Some(since)) => {
                    offline.total += since.elapsed();
                    offline.since = None;
                }
                (false, None) => offline.since = Some(Instant::now()),
                _ => {}
            }
        }
    }

    /// Keeps the newest acknowledgement in `acked.json` if it moved.
    fn persist_ack(&self) {
        let acked = self.stats.acked_through.load(Ordering::SeqCst);
        if acked == self.persisted_ack.load(Ordering::SeqCst) {
            return;
        }
        let record = AckedRecord {
            device_id: self.device.clone(),
            stored_through: acked,
        };
        match write_acked(&self.state_dir, &record) {
            Ok(()) => self.persisted_ack.store(acked, Ordering::SeqCst),
            Err(error) => eprintln!("molt-agent: link: writing {ACKED_FILE}: {error}"),
        }
    }

    fn write_status(&self) {
        self.persist_ack();
        let path = self.state_dir.join(LINK_STATUS_FILE);
        let tmp = self.state_dir.join(format!(".{LINK_STATUS_FILE}.tmp"));
        if let Ok(bytes) = serde_json::to_vec_pretty(&self.summary()) {
            // A report for `status`; losing it to a crash costs nothing.
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }

    fn set_error(&self, error: String) {
        if let Ok(mut last) = self.stats.last_error.lock() {
            *last = Some(error);
        }
    }
}

/// rumqttc's and reqwest's TLS use the process-wide rustls provider; with
/// more than one backend in the build it must be chosen.
pub fn choose_tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Reads `desired.json` if there is one.
pub fn read_desired(state_dir: &Path, bytes_max: u64) -> Result<Option<DesiredRecord>, String> {
    let path = state_dir.join(DESIRED_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes =
        identity::read_bounded(&path, bytes_max, "server.desired_bytes_max").map_err(|error| error.to_string())?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| format!("{}: {error}", path.display()))
}

impl Link {
    /// Starts the link for the device enrolled in `config`'s identity
    /// directory, sharing `outbox` with the pipeline.
    pub fn start(
        config: &ServerConfig,
        state_dir: &Path,
        outbox: SharedOutbox,
        limits: Limits,
    ) -> Result<Link, String> {
        config.check()?;
        // A message the client cannot send would stop the link for good.
        let needed = limits.payload_bytes_max + PACKET_OVERHEAD_BYTES;
        if config.mqtt_packet_bytes_max < needed {
            return Err(format!(
                "server.mqtt_packet_bytes_max ({}) is below the protocol's payload_bytes_max ({}) plus {PACKET_OVERHEAD_BYTES} bytes for the topic and header",
                config.mqtt_packet_bytes_max, limits.payload_bytes_max
            ));
        }
        let identity_dir = config
            .identity_dir
            .clone()
            .unwrap_or_else(|| state_dir.join(identity::IDENTITY_DIR));
        let identity = Identity::load(&identity_dir).map_err(|error| error.to_string())?;
        let broker = config.broker.clone().unwrap_or_else(|| identity.record.broker.clone());
        let (host, port) = identity::parse_broker(&broker)?;
        let desired = read_desired(state_dir, config.desired_bytes_max)?;
        if config.hardware_class.len() > limits.name_len_max {
            return Err(format!(
                "server.hardware_class is over the protocol's name_len_max ({})",
                limits.name_len_max
            ));
        }
        let acked = restore_acked(&mut outbox::lock(&outbox), state_dir, identity.device.as_str());
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            wake: Notify::new(),
            device: identity.device.to_string(),
            broker: broker.clone(),
            state_dir: state_dir.to_owned(),
            offline: std::sync::Mutex::new(Offline {
                total: Duration::ZERO,
                since: Some(Instant::now()),
            }),
            desired: std::sync::Mutex::new(desired.clone()),
            persisted_ack: AtomicU64::new(acked),
        });
        if let Some(desired) = &desired {
            shared
                .stats
                .desired_generation
                .store(desired.generation, Ordering::SeqCst);
        }
        shared.stats.acked_through.store(acked, Ordering::SeqCst);
        let (stop, stop_rx) = watch::channel(false);
        let task = LinkTask {
            config: config.clone(),
            identity,
            host,
            port,
            outbox,
            limits,
            shared: shared.clone(),
            stop: stop_rx,
            acked,
            published_through: 0,
        };
        let thread = std::thread::Builder::new()
            .name("molt-link".into())
            .spawn(move || {
                choose_tls_provider();
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        eprintln!("molt-agent: link: cannot start its runtime: {error}; running offline");
                        return;
                    }
                };
                runtime.block_on(task.run());
            })
            .map_err(|error| format!("starting the link thread: {error}"))?;
        shared.write_status();
        Ok(Link {
            shared,
            stop,
            thread: Some(thread),
            drain: Duration::from_millis(config.drain_timeout_ms),
        })
    }

    /// The outbox has new messages.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// The counters now.
    pub fn summary(&self) -> LinkSummary {
        self.shared.summary()
    }

    /// A view of the link for the main loop and `/metrics`.
    pub fn probe(&self) -> LinkProbe {
        LinkProbe(self.shared.clone())
    }

    /// Waits up to `drain_timeout_ms` for the server to acknowledge every
    /// message through `through`; true if it did.
    pub fn drain(&self, through: u64) -> bool {
        let deadline = Instant::now() + self.drain;
        loop {
            if self.shared.stats.acked_through.load(Ordering::SeqCst) >= through {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.wake();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Disconnects and ends the link's thread; returns the final counters.
    pub fn stop(mut self) -> LinkSummary {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.shared.stats.connected.store(false, Ordering::SeqCst);
        self.shared.set_online(false);
        self.shared.write_status();
        self.shared.summary()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// What woke the link's task.
enum Step {
    Event(Option<Result<Event, String>>),
    Wake,
    Stop,
}

/// Why a connection ended.
enum Ended {
    Stop,
    Lost { error: String, was_up: bool },
}

struct LinkTask {
    config: ServerConfig,
    identity: Identity,
    host: String,
    port: u16,
    outbox: SharedOutbox,
    limits: Limits,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    /// The newest `StoreAck`.
    acked: u64,
    /// The newest sequence number published in this run: a publish at or
    /// below it is a resend.
    published_through: u64,
}

/// A token bucket: `rate` per second, `burst` at most. It lives across
/// reconnects, so a reconnect never buys a fresh burst the server's bucket
/// (also per device, also across connections) would not grant.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
    }

    fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there.
    fn wait(&mut self) -> Duration {
        self.refill();
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

/// When the server's acknowledgement has stalled on one connection; no IO,
/// the caller passes the time.
///
/// The server's broker may drop a message under load while the device
/// stays connected, and the server never acknowledges what it did not
/// store; its `StoreAck` covers only a gap-free prefix, so one lost message
/// holds back every acknowledgement after it. The watch runs while messages
/// published on this connection are above the acknowledgement, and restarts
/// whenever the acknowledgement advances: [`AckWatch::due`] says that none
/// advanced it for `timeout`, and the link should send again from the
/// acknowledgement.
#[derive(Debug)]
struct AckWatch {
    timeout: Duration,
    /// The newest `StoreAck`.
    acked: u64,
    /// The newest sequence number published on this connection.
    published: u64,
    /// Since when the acknowledgement has not advanced with messages
    /// outstanding; `None` while nothing is outstanding.
    since: Option<Instant>,
}

impl AckWatch {
    /// A watch for a new connection, with nothing published yet.
    fn new(timeout: Duration, acked: u64) -> AckWatch {
        AckWatch {
            timeout,
            acked,
            published: acked,
            since: None,
        }
    }

    /// Message `seq` was published at `now`.
    fn published(&mut self, seq: u64, now: Instant) {
        self.published = self.published.max(seq);
        if self.published > self.acked && self.since.is_none() {
            self.since = Some(now);
        }
    }

    /// The server acknowledged through `through` at `now`; only an
    /// acknowledgement that advances restarts the watch.
    fn acked(&mut self, through: u64, now: Instant) {
        if through <= self.acked {
            return;
        }
        self.acked = through;
        self.since = (self.published > self.acked).then_some(now);
    }

    /// When the watch is due, if messages are outstanding.
    fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + self.timeout)
    }

    /// Messages are outstanding and no acknowledgement advanced for
    /// `timeout`.
    fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }

    /// The link sends again from the acknowledgement at `now`: the watch
    /// restarts, and is due again after another full `timeout` without an
    /// acknowledgement advancing.
    fn resending(&mut self, now: Instant) {
        if self.since.is_some() {
            self.since = Some(now);
        }
    }
}

impl LinkTask {
    async fn run(mut self) {
        let mut bucket = Bucket {
            tokens: f64::from(self.config.publish_burst_max),
            rate: f64::from(self.config.publish_per_second_max),
            burst: f64::from(self.config.publish_burst_max),
            at: Instant::now(),
        };
        let mut backoff = Backoff::new(self.config.reconnect_initial_ms, self.config.reconnect_max_ms, 0);
        loop {
            if *self.stop.borrow() {
                return;
            }
            match self.connection(&mut bucket).await {
                Ended::Stop => return,
                Ended::Lost { error, was_up } => {
                    self.shared.stats.connected.store(false, Ordering::SeqCst);
                    self.shared.set_online(false);
                    self.shared.stats.reconnects.fetch_add(1, Ordering::SeqCst);
                    let wait = backoff.next_wait(was_up);
                    eprintln!(
                        "molt-agent: link: {error}; reconnecting to {} in {} ms",
                        self.shared.broker,
                        wait.as_millis()
                    );
                    self.shared.set_error(error);
                    self.shared.write_status();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.changed() => return,
                    }
                }
            }
        }
    }

    fn options(&self) -> MqttOptions {
        let mut options = MqttOptions::new(self.identity.device.as_str(), self.host.clone(), self.port);
        options.set_keep_alive(Duration::from_secs(self.config.keep_alive_s));
        options.set_clean_session(true);
        options.set_max_packet_size(self.config.mqtt_packet_bytes_max, self.config.mqtt_packet_bytes_max);
        options.set_inflight(self.config.in_flight_max);
        options.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: self.identity.ca_pem.clone().into_bytes(),
            alpn: None,
            client_auth: Some((
                self.identity.cert_pem.clone().into_bytes(),
                self.identity.key_pem.clone().into_bytes(),
            )),
        }));
        options
    }

    /// One connection, from connect to its end.
    async fn connection(&mut self, bucket: &mut Bucket) -> Ended {
        // Subscriptions and a disconnect besides the window's publishes.
        let capacity = usize::from(self.config.in_flight_max) + 8;
        let (client, mut event_loop) = AsyncClient::new(self.options(), capacity);
        event_loop
            .network_options
            .set_connection_timeout(self.config.connect_timeout_ms.div_ceil(1000).max(1));
        let (events_tx, mut events) = mpsc::channel::<Result<Event, String>>(self.config.event_queue_max);
        let poller = spawn_poller(event_loop, events_tx);
        let ended = self.drive(&client, &mut events, bucket).await;
        if matches!(ended, Ended::Stop) {
            let _ = client.try_disconnect();
            // Give the poller a moment to send the DISCONNECT.
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(Ok(_)) = events.recv().await {}
            })
            .await;
        }
        poller.abort();
        ended
    }

    async fn drive(
        &mut self,
        client: &AsyncClient,
        events: &mut mpsc::Receiver<Result<Event, String>>,
        bucket: &mut Bucket,
    ) -> Ended {
        let device = self.identity.device.clone();
        let ack_topic = molt_protocol::topic(&device, Kind::Ack);
        let desired_topic = molt_protocol::topic(&device, Kind::Desired);
        let connect_deadline = Instant::now() + Duration::from_millis(self.config.connect_timeout_ms);
        let mut up = false;
        // SUBACKs still awaited: sending starts once the device listens on
        // its `ack` topic, so no acknowledgement can pass it by.
        let mut subacks_awaited = usize::MAX;
        let mut in_flight: usize = 0;
        // The newest sequence number read from the outbox for sending.
        let mut read_through = self.acked;
        let mut buffer: std::collections::VecDeque<Uplink> = std::collections::VecDeque::new();
        let mut last_status = Instant::now();
        let mut watch = AckWatch::new(Duration::from_millis(self.config.ack_timeout_ms), self.acked);
        // The acknowledgement a stall was last logged at: a stall is logged
        // once, however often it times out.
        let mut stall_logged: Option<u64> = None;
        loop {
            let mut wait = Duration::from_millis(250);
            if up && subacks_awaited == 0 {
                let now = Instant::now();
                if watch.due(now) {
                    // Send again from the acknowledgement, on this connection.
                    self.shared.stats.ack_timeouts.fetch_add(1, Ordering::SeqCst);
                    if stall_logged != Some(self.acked) {
                        eprintln!(
                            "molt-agent: link: no store acknowledgement past {} within ack_timeout_ms={} with messages \
                             outstanding (the server's broker may have dropped one); sending again from sequence {} \
                             (logged once until the acknowledgement advances)",
                            self.acked,
                            self.config.ack_timeout_ms,
                            self.acked + 1
                        );
                        stall_logged = Some(self.acked);
                    }
                    read_through = self.acked;
                    buffer.clear();
                    watch.resending(now);
                }
                while in_flight < usize::from(self.config.in_flight_max) {
                    if buffer.is_empty() {
                        match self.refill(read_through) {
                            Ok(more) => buffer.extend(more),
                            Err(error) => {
                                eprintln!("molt-agent: link: reading the outbox: {error}");
                                break;
                            }
                        }
                    }
                    let Some(message) = buffer.front() else { break };
                    let pause = bucket.wait();
                    if pause > Duration::ZERO {
                        wait = wait.min(pause);
                        break;
                    }
                    let topic = molt_protocol::topic(&device, message.kind);
                    match client.try_publish(topic, QoS::AtLeastOnce, false, message.payload.clone()) {
                        Ok(()) => {
                            bucket.take();
                            in_flight += 1;
                            read_through = read_through.max(message.seq);
                            watch.published(message.seq, Instant::now());
                            if message.seq <= self.published_through {
                                self.shared.stats.resends.fetch_add(1, Ordering::SeqCst);
                            }
                            self.published_through = self.published_through.max(message.seq);
                            buffer.pop_front();
                            self.shared.stats.published.fetch_add(1, Ordering::SeqCst);
                        }
                        // The request queue is full: the window will drain.
                        Err(_) => break,
                    }
                }
                // Wake in time for the acknowledgement's deadline.
                if let Some(deadline) = watch.deadline() {
                    wait = wait.min(deadline.saturating_duration_since(Instant::now()));
                }
            } else if Instant::now() >= connect_deadline {
                return Ended::Lost {
                    error: format!(
                        "no CONNACK within connect_timeout_ms={}",
                        self.config.connect_timeout_ms
                    ),
                    was_up: false,
                };
            }
            if last_status.elapsed() >= Duration::from_secs(1) {
                self.shared.write_status();
                last_status = Instant::now();
            }
            let step = tokio::select! {
                event = events.recv() => Step::Event(event),
                _ = self.shared.wake.notified() => Step::Wake,
                _ = tokio::time::sleep(wait) => Step::Wake,
                _ = self.stop.changed() => Step::Stop,
            };
            let event = match step {
                Step::Stop => return Ended::Stop,
                Step::Wake => continue,
                Step::Event(event) => event,
            };
            match event {
                None => {
                    return Ended::Lost {
                        error: "the MQTT event loop ended".into(),
                        was_up: up,
                    };
                }
                Some(Err(error)) => {
                    return Ended::Lost {
                        error: format!("connection to the broker lost: {error}"),
                        was_up: up,
                    };
                }
                Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    if ack.code != rumqttc::ConnectReturnCode::Success {
                        return Ended::Lost {
                            error: format!("the broker refused the connection: {:?}", ack.code),
                            was_up: false,
                        };
                    }
                    up = true;
                    subacks_awaited = 2;
                    in_flight = 0;
                    // Resend everything above the last StoreAck.
                    read_through = self.acked;
                    buffer.clear();
                    watch = AckWatch::new(Duration::from_millis(self.config.ack_timeout_ms), self.acked);
                    for topic in [&ack_topic, &desired_topic] {
                        if let Err(error) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                            return Ended::Lost {
                                error: format!("subscribing to {topic}: {error}"),
                                was_up: false,
                            };
                        }
                    }
                    self.shared.stats.connected.store(true, Ordering::SeqCst);
                    self.shared.stats.connects.fetch_add(1, Ordering::SeqCst);
                    self.shared.set_online(true);
                    eprintln!(
                        "molt-agent: link: connected to {} as {device}; sending from sequence {}",
                        self.shared.broker,
                        self.acked + 1
                    );
                    self.shared.write_status();
                }
                Some(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                    in_flight = in_flight.saturating_sub(1);
                    self.shared.stats.puback.fetch_add(1, Ordering::SeqCst);
                }
                Some(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure))
                    {
                        return Ended::Lost {
                            error: "the broker refused a subscription to this device's own topics".into(),
                            was_up: false,
                        };
                    }
                    subacks_awaited = subacks_awaited.saturating_sub(1);
                }
                Some(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                    if publish.topic == ack_topic {
                        self.on_ack(&publish.payload, &mut buffer, &mut read_through);
                        watch.acked(self.acked, Instant::now());
                    } else if publish.topic == desired_topic {
                        self.on_desired(&publish.payload);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Durable messages above `after`, up to `read_bytes_max`.
    fn refill(&self, after: u64) -> Result<Vec<Uplink>, crate::log::LogError> {
        let mut outbox = outbox::lock(&self.outbox);
        if outbox.durable_through() < outbox.next_seq().saturating_sub(1) {
            // Under `interval-ms` the pipeline syncs only as often as that
            // says; this keeps to the same policy.
            outbox.sync()?;
        }
        let durable = outbox.durable_through();
        if durable <= after {
            return Ok(Vec::new());
        }
        let (messages, bad) = outbox.pending(after, self.config.read_bytes_max)?;
        for record in bad {
            eprintln!("molt-agent: link: {record}; its messages cannot be sent");
        }
        Ok(messages
            .into_iter()
            .filter(|message| message.seq > after && message.seq <= durable)
            .collect())
    }

    fn on_ack(&mut self, payload: &[u8], buffer: &mut std::collections::VecDeque<Uplink>, read_through: &mut u64) {
        let ack: StoreAck = match molt_protocol::decode(payload, &self.limits) {
            Ok(ack) => ack,
            Err(error) => {
                self.shared.stats.downlink_refused.fetch_add(1, Ordering::SeqCst);
                eprintln!("molt-agent: link: a store acknowledgement was refused: {error}");
                return;
            }
        };
        if ack.stored_through <= self.acked {
            return;
        }
        let mut outbox = outbox::lock(&self.outbox);
        let newest = outbox.next_seq().saturating_sub(1);
        if ack.stored_through > newest {
            eprintln!(
                "molt-agent: link: the server acknowledges through {} but this device has sent only through {newest}: \
                 the server knows an earlier device under this id; trimming through {newest} only",
                ack.stored_through
            );
        }
        if let Err(error) = outbox.acknowledge(ack.stored_through) {
            eprintln!(
                "molt-agent: link: trimming the outbox through {}: {error}",
                ack.stored_through
            );
        }
        let through = ack.stored_through.min(newest);
        drop(outbox);
        self.acked = self.acked.max(through);
        *read_through = (*read_through).max(self.acked);
        while buffer.front().is_some_and(|message| message.seq <= self.acked) {
            buffer.pop_front();
        }
        self.shared.stats.acked_through.store(self.acked, Ordering::SeqCst);
    }

    fn on_desired(&mut self, payload: &[u8]) {
        let desired: Desired = match molt_protocol::decode(payload, &self.limits) {
            Ok(desired) => desired,
            Err(error) => {
                self.shared.stats.downlink_refused.fetch_add(1, Ordering::SeqCst);
                eprintln!("molt-agent: link: a desired state was refused: {error}");
                return;
            }
        };
        self.shared.stats.desired_received.fetch_add(1, Ordering::SeqCst);
        let kept = self.shared.stats.desired_generation.load(Ordering::SeqCst);
        if desired.generation <= kept {
            return;
        }
        let record = DesiredRecord {
            generation: desired.generation,
            release: desired.release,
            rollout: desired.rollout.clone(),
            received_ms: now_ms(),
        };
        let path = self.shared.state_dir.join(DESIRED_FILE);
        let written = serde_json::to_vec_pretty(&record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| identity::write_atomic(&path, &bytes));
        match written {
            Ok(()) => {
                if let Ok(mut kept) = self.shared.desired.lock() {
                    *kept = Some(record.clone());
                }
                self.shared
                    .stats
                    .desired_generation
                    .store(desired.generation, Ordering::SeqCst);
                eprintln!(
                    "molt-agent: link: desired state generation {}: release set {}{} (kept in {}; installing it is not done yet)",
                    desired.generation,
                    desired.release,
                    desired
                        .rollout
                        .as_deref()
                        .map(|rollout| format!(", rollout {rollout}"))
                        .unwrap_or_default(),
                    path.display()
                );
            }
            Err(error) => eprintln!("molt-agent: link: writing {}: {error}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogLimits, SyncPolicy};
    use crate::outbox::OverflowPolicy;

    fn outbox(dir: &Path) -> Outbox {
        Outbox::open(
            &dir.join("outbox"),
            LogLimits {
                segment_bytes_max: 256,
                bytes_max: 1 << 20,
                record_bytes_max: 4096,
            },
            SyncPolicy::EveryBatch,
            OverflowPolicy::RefuseReadings,
        )
        .unwrap()
        .0
    }

    fn ack(dir: &Path, device: &str, stored_through: u64) {
        let record = AckedRecord {
            device_id: device.into(),
            stored_through,
        };
        write_acked(dir, &record).unwrap();
    }

    const TIMEOUT: Duration = Duration::from_millis(10_000);

    #[test]
    fn the_ack_watch_fires_after_the_timeout_with_messages_outstanding() {
        let start = Instant::now();
        let mut watch = AckWatch::new(TIMEOUT, 4);
        watch.published(5, start);
        watch.published(6, start + Duration::from_millis(100));
        assert_eq!(
            watch.deadline(),
            Some(start + TIMEOUT),
            "timed from the first outstanding publish"
        );
        assert!(!watch.due(start + TIMEOUT - Duration::from_millis(1)));
        assert!(watch.due(start + TIMEOUT));
        // An acknowledgement that does not advance changes nothing.
        watch.acked(4, start + TIMEOUT);
        assert!(watch.due(start + TIMEOUT));
    }

    #[test]
    fn the_ack_watch_does_not_fire_with_nothing_outstanding() {
        let start = Instant::now();
        let mut watch = AckWatch::new(TIMEOUT, 4);
        assert_eq!(watch.deadline(), None);
        assert!(!watch.due(start + TIMEOUT * 10), "nothing published");
        // A publish at or below the acknowledgement is not outstanding.
        watch.published(3, start);
        assert!(!watch.due(start + TIMEOUT * 10));
        // Everything published is acknowledged.
        watch.published(5, start);
        watch.published(6, start);
        watch.acked(6, start + Duration::from_millis(500));
        assert_eq!(watch.deadline(), None);
        assert!(!watch.due(start + TIMEOUT * 10));
        // Restarting a watch that is not running does not start it.
        watch.resending(start + TIMEOUT * 10);
        assert!(!watch.due(start + TIMEOUT * 20));
        // An acknowledgement beyond what this connection published (the
        // store caught up on an earlier connection's messages).
        watch.acked(9, start + TIMEOUT * 20);
        watch.published(8, start + TIMEOUT * 20);
        assert!(!watch.due(start + TIMEOUT * 30));
    }

    #[test]
    fn an_advancing_acknowledgement_restarts_the_ack_watch() {
        let start = Instant::now();
        let mut watch = AckWatch::new(TIMEOUT, 0);
        for seq in 1..=10 {
            watch.published(seq, start);
        }
        let advanced = start + Duration::from_millis(9_000);
        watch.acked(5, advanced);
        assert!(!watch.due(start + TIMEOUT), "the acknowledgement advanced 1 s ago");
        assert!(!watch.due(advanced + TIMEOUT - Duration::from_millis(1)));
        assert!(watch.due(advanced + TIMEOUT), "6..=10 still outstanding");
    }

    #[test]
    fn the_ack_watch_fires_again_after_another_full_timeout() {
        let start = Instant::now();
        let mut watch = AckWatch::new(TIMEOUT, 0);
        watch.published(1, start);
        watch.published(2, start);
        let fired = start + TIMEOUT + Duration::from_millis(30);
        assert!(watch.due(fired));
        watch.resending(fired);
        assert!(!watch.due(fired), "the watch restarts at the resend");
        // The resent messages do not move it.
        watch.published(1, fired + Duration::from_millis(10));
        watch.published(2, fired + Duration::from_millis(20));
        assert!(!watch.due(fired + TIMEOUT - Duration::from_millis(1)));
        assert!(watch.due(fired + TIMEOUT));
    }

    #[test]
    fn a_zero_ack_timeout_is_refused_naming_the_key() {
        assert_eq!(ServerConfig::default().ack_timeout_ms, 10_000);
        let config = ServerConfig {
            ack_timeout_ms: 0,
            ..ServerConfig::default()
        };
        let error = config.check().unwrap_err();
        assert!(error.contains("server.ack_timeout_ms"), "{error}");
    }

    #[test]
    fn a_persisted_acknowledgement_is_restored_but_never_trusted_beyond_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = outbox(dir.path());
        for origin in 1..=10 {
            first
                .append_batch(origin, &[(Kind::Telemetry, vec![0u8; 100])])
                .unwrap();
        }
        first.sync_now().unwrap();
        drop(first);

        // Nothing kept: everything is sent.
        assert_eq!(restore_acked(&mut outbox(dir.path()), dir.path(), "gw-1"), 0);

        // What a run kept through a Link's status writes.
        let shared = Shared {
            stats: Stats::default(),
            wake: Notify::new(),
            device: "gw-1".into(),
            broker: "mqtts://127.0.0.1:1".into(),
            state_dir: dir.path().to_owned(),
            offline: std::sync::Mutex::new(Offline {
                total: Duration::ZERO,
                since: None,
            }),
            desired: std::sync::Mutex::new(None),
            persisted_ack: AtomicU64::new(0),
        };
        shared.stats.acked_through.store(7, Ordering::SeqCst);
        shared.persist_ack();
        assert_eq!(read_acked(dir.path(), "gw-1"), Some(7));
        let mut reopened = outbox(dir.path());
        assert_eq!(restore_acked(&mut reopened, dir.path(), "gw-1"), 7);
        let (pending, _) = reopened.pending(7, u64::MAX).unwrap();
        assert_eq!(
            pending.first().map(|m| m.seq),
            Some(8),
            "sending resumes after the acknowledgement"
        );
        assert!(
            reopened.batches().unwrap().first().unwrap().messages[0].seq > 1,
            "trimmed through it"
        );
        drop(reopened);

        // A file claiming more than the outbox holds is cut to what it holds.
        ack(dir.path(), "gw-1", 50);
        assert_eq!(restore_acked(&mut outbox(dir.path()), dir.path(), "gw-1"), 10);

        // Another device's file, a corrupt one and one over the size limit
        // are not trusted: in doubt, resend (the server dedupes).
        let fresh = tempfile::tempdir().unwrap();
        let mut other = outbox(fresh.path());
        other.append_batch(1, &[(Kind::Telemetry, vec![1])]).unwrap();
        ack(fresh.path(), "gw-2", 1);
        assert_eq!(restore_acked(&mut other, fresh.path(), "gw-1"), 0);
        std::fs::write(fresh.path().join(ACKED_FILE), br#"{"device_id": "gw-1", "stored"#).unwrap();
        assert_eq!(restore_acked(&mut other, fresh.path(), "gw-1"), 0);
        let mut huge = br#"{"device_id": "gw-1", "stored_through": 1}"#.to_vec();
        huge.resize(crate::report::STATE_FILE_BYTES_MAX as usize + 1, b' ');
        std::fs::write(fresh.path().join(ACKED_FILE), huge).unwrap();
        assert_eq!(read_acked(fresh.path(), "gw-1"), None);
    }
}
