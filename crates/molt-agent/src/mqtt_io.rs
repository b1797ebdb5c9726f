//! The local MQTT source and the MQTT actuator sink: the common gateway
//! setup, where sensors and actuators talk to a broker on the device or its
//! LAN (plain TCP, optional user name and password).
//!
//! # The source (`[[source]] kind = "mqtt"`)
//!
//! It subscribes to `topics` (filters; payloads are JSON
//! `{"sensor": 3, "value": 21.5, "t": 1700000000000}` as in `json-lines`)
//! and to the exact topics of `sensor_topics` (topic → sensor id; the
//! payload is a plain number such as `21.5`, or JSON `{"value": 21.5, "t":
//! 1700000000000}`), at QoS 1, with a persistent session
//! (`clean_session = false`) and rumqttc's manual acknowledgements.
//!
//! **A delivery is acknowledged (PUBACK) only once its reading is durable**:
//! the main loop hands each reading's [`Ack`] back after the batch holding it
//! was journaled and fsynced, and only then does the source send the PUBACK.
//! A crash before that leaves the message unacknowledged in the broker's
//! session, and the broker delivers it again when the agent reconnects.
//! Garbage (a payload over `payload_bytes_max`, not UTF-8, not a number or
//! not the JSON above, a topic no filter matches) is counted, logged (as a
//! refused input) and acknowledged at once: it would never parse. Retained
//! messages (sent on subscribing; last values, not new readings) are
//! acknowledged and skipped.
//!
//! **Duplicates.** QoS 1 is at least once: a reading journaled just before a
//! crash, a lost connection or a lost PUBACK comes again, marked DUP, with
//! the same packet id. The source drops such redeliveries (and acknowledges
//! them when that is due) by two rules:
//!
//! - by packet id, within one agent process and one broker session: a
//!   redelivery of a message whose reading is on its way to the journal is
//!   acknowledged with it; one of a message already journaled is
//!   acknowledged and dropped, unless the PUBACK was sent on this very
//!   connection (the redelivery crossed it);
//! - by content, for readings that carry `t`: a reading whose `(sensor, t,
//!   value)` is among the last `dedupe_readings_max` readings journaled (by
//!   any source; read back from the journal when the agent starts, so this
//!   survives a crash) or is on its way to the journal is dropped and
//!   acknowledged. This also drops a sensor's own retry of a publish.
//!
//! A reading without `t` (stamped with the agent's clock on arrival) is
//! therefore at least once across an agent crash: if the agent dies after
//! the journal fsync of its batch and before the broker has the PUBACK (the
//! time to hand the acknowledgement to the source's thread and write one
//! packet, normally well under a millisecond), it is journaled again after
//! the restart. Readings with `t` are exactly once as long as fewer than
//! `dedupe_readings_max` readings were journaled after them before the
//! crash.
//!
//! **Bounds.** At most `in_flight_max` readings wait for the journal; past
//! that, and while the main loop's queue (`source_queue_max`) is full, the
//! source stops reading from the broker (the broker holds the rest, as its
//! own queue limits allow). A packet over `packet_bytes_max` cannot be read
//! at all: rumqttc drops the connection, and the broker will deliver the
//! same packet again; keep the broker's own message size limit below it.
//!
//! rumqttc's event loop is polled on a task of its own that only forwards
//! events (rumqttc issue #1025); acknowledgements and subscriptions are sent
//! with `try_ack`/`try_subscribe_many`, never waiting on the poller.
//!
//! # The sink (`[[sink]] kind = "mqtt"`)
//!
//! Each command for the sink's actuator is published to `topic` at QoS 1,
//! as JSON `{"actuator": "fan", "value": 1.0, "policy": "fan@1", "t": ms}`
//! or, with `format = "value"`, as the bare number. Commands wait in a
//! bounded queue (`queue_max`; a full queue refuses the command, counted);
//! one older than `command_max_age_ms` when it could be sent is dropped and
//! counted rather than acted on late. The session is clean: a command in
//! flight when the connection drops is not sent again (the policy's next
//! command supersedes it).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::daemon::Input;
use crate::mqtt_client::{Backoff, spawn_poller};
use crate::outbox::Journal;

/// The `[[source]] kind = "mqtt"` section; defaults in `packaging/agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSourceConfig {
    /// The broker's host.
    pub host: String,
    /// The broker's port (plain TCP).
    pub port: u16,
    /// The client id, which names the persistent session at the broker:
    /// unique per agent, and kept across restarts.
    pub client_id: String,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, if the broker wants one.
    pub password: Option<String>,
    /// Topic filters (`+`, `#` allowed) whose payloads are JSON readings.
    pub topics: Vec<String>,
    /// Exact topics whose payload is one sensor's value: topic → sensor id.
    pub sensor_topics: BTreeMap<String, u32>,
    /// A larger payload is garbage (counted, acknowledged).
    pub payload_bytes_max: usize,
    /// The largest MQTT packet read; a larger one drops the connection.
    pub packet_bytes_max: usize,
    /// Readings received and not yet journaled, at most.
    pub in_flight_max: usize,
    /// Events queued between rumqttc's poller and the source.
    pub event_queue_max: usize,
    /// Readings remembered to drop redeliveries by `(sensor, t, value)`.
    pub dedupe_readings_max: usize,
    /// First wait before a reconnect; it doubles after each failure.
    pub reconnect_initial_ms: u64,
    /// Longest wait before a reconnect.
    pub reconnect_max_ms: u64,
    /// The TCP connect and the CONNACK must take at most this.
    pub connect_timeout_ms: u64,
    /// MQTT keep-alive.
    pub keep_alive_s: u64,
}

impl Default for MqttSourceConfig {
    fn default() -> MqttSourceConfig {
        MqttSourceConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "molt-agent-sensors".into(),
            username: None,
            password: None,
            topics: Vec::new(),
            sensor_topics: BTreeMap::new(),
            payload_bytes_max: 4096,
            packet_bytes_max: 256 << 10,
            in_flight_max: 256,
            event_queue_max: 64,
            dedupe_readings_max: 8192,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            connect_timeout_ms: 10_000,
            keep_alive_s: 30,
        }
    }
}

/// Refuses a connection setting that cannot work, naming the key.
fn check_connection(
    what: &str,
    host: &str,
    client_id: &str,
    numbers: &[(&str, u64)],
    reconnect: (u64, u64),
) -> Result<(), String> {
    if host.is_empty() {
        return Err(format!("{what}: host must not be empty"));
    }
    if client_id.is_empty() || client_id.len() > 256 {
        return Err(format!("{what}: client_id must be 1 to 256 bytes"));
    }
    for (name, value) in numbers {
        if *value == 0 {
            return Err(format!("{what}: {name} must be at least 1"));
        }
    }
    if reconnect.1 < reconnect.0 {
        return Err(format!(
            "{what}: reconnect_max_ms ({}) is below reconnect_initial_ms ({})",
            reconnect.1, reconnect.0
        ));
    }
    Ok(())
}

/// Checks an MQTT topic filter: `+` and `#` only as whole levels, `#` last.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() || filter.len() > 1024 || filter.contains('\0') {
        return Err(format!("topic filter {filter:?}: must be 1 to 1024 bytes, without NUL"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (idx, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || idx + 1 != levels.len()) {
            return Err(format!("topic filter {filter:?}: `#` must be a whole, last level"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("topic filter {filter:?}: `+` must be a whole level"));
        }
    }
    Ok(())
}

/// Whether `topic` matches the MQTT topic filter `filter`; wildcards at the
/// first level do not match topics that start with `$`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let system = topic.starts_with('$');
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    let mut first = true;
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return !(first && system),
            (Some("+"), Some(_)) => {
                if first && system {
                    return false;
                }
            }
            (Some(a), Some(b)) => {
                if a != b {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

impl MqttSourceConfig {
    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        let what = format!("mqtt source {}:{}", self.host, self.port);
        check_connection(
            &what,
            &self.host,
            &self.client_id,
            &[
                ("port", u64::from(self.port)),
                ("payload_bytes_max", self.payload_bytes_max as u64),
                ("packet_bytes_max", self.packet_bytes_max as u64),
                ("in_flight_max", self.in_flight_max as u64),
                ("event_queue_max", self.event_queue_max as u64),
                ("dedupe_readings_max", self.dedupe_readings_max as u64),
                ("reconnect_initial_ms", self.reconnect_initial_ms),
                ("connect_timeout_ms", self.connect_timeout_ms),
                ("keep_alive_s", self.keep_alive_s),
            ],
            (self.reconnect_initial_ms, self.reconnect_max_ms),
        )?;
        if self.topics.is_empty() && self.sensor_topics.is_empty() {
            return Err(format!("{what}: no topics and no sensor_topics to subscribe to"));
        }
        for filter in &self.topics {
            check_filter(filter).map_err(|why| format!("{what}: topics: {why}"))?;
        }
        for topic in self.sensor_topics.keys() {
            check_filter(topic).map_err(|why| format!("{what}: sensor_topics: {why}"))?;
            if topic.contains(['+', '#']) {
                return Err(format!("{what}: sensor_topics: {topic:?} must be an exact topic"));
            }
        }
        if self.packet_bytes_max <= self.payload_bytes_max {
            return Err(format!(
                "{what}: packet_bytes_max ({}) must be above payload_bytes_max ({}), so that an oversized payload is refused and acknowledged instead of dropping the connection",
                self.packet_bytes_max, self.payload_bytes_max
            ));
        }
        if self.in_flight_max > u16::MAX as usize {
            return Err(format!("{what}: in_flight_max must be at most {}", u16::MAX));
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A reading's identity for dropping redeliveries: sensor, `t`, value bits.
pub type ReadingKey = (u32, u64, u64);

/// The keys of the newest `max` readings in the journal, to drop after a
/// restart what the broker delivers again though it was journaled.
pub fn journal_keys(journal: &Journal, max: usize) -> Result<Vec<ReadingKey>, String> {
    let after = journal.next_seq().saturating_sub(max as u64 + 1);
    let batches = journal
        .batches_after(after)
        .map_err(|error| format!("mqtt source: reading the journal's newest readings: {error}"))?;
    Ok(batches
        .iter()
        .flatten()
        .filter(|reading| reading.sequence > after)
        .map(|reading| (reading.sensor, reading.timestamp_ms, reading.value.to_bits()))
        .collect())
}

/// One reading parsed from a payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Parsed {
    /// The sensor.
    pub sensor: u32,
    /// The payload's `t`, if it had one.
    pub t: Option<u64>,
    /// The value.
    pub value: f64,
}

impl Parsed {
    /// Its key for dropping redeliveries; only a reading with its own `t`
    /// has one (an arrival time differs between deliveries).
    pub fn key(&self) -> Option<ReadingKey> {
        self.t.map(|t| (self.sensor, t, self.value.to_bits()))
    }
}

#[derive(Deserialize)]
struct JsonReading {
    sensor: u32,
    value: f64,
    #[serde(default)]
    t: Option<u64>,
}

#[derive(Deserialize)]
struct JsonValue {
    value: f64,
    #[serde(default)]
    t: Option<u64>,
    #[serde(default)]
    sensor: Option<u32>,
}

/// Parses one payload as the configuration says; the error says why not.
pub fn parse_payload(config: &MqttSourceConfig, topic: &str, payload: &[u8]) -> Result<Parsed, String> {
    if payload.len() > config.payload_bytes_max {
        return Err(format!(
            "a payload of {} bytes is over payload_bytes_max={}",
            payload.len(),
            config.payload_bytes_max
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|_| "the payload is not UTF-8".to_string())?;
    let text = text.trim();
    if let Some(&sensor) = config.sensor_topics.get(topic) {
        if let Ok(value) = text.parse::<f64>() {
            if !value.is_finite() {
                return Err(format!("{text:?} is not a finite number"));
            }
            return Ok(Parsed { sensor, t: None, value });
        }
        let reading: JsonValue = serde_json::from_str(text)
            .map_err(|error| format!("neither a number nor JSON {{\"value\": X, \"t\": ms}}: {error}"))?;
        if reading.sensor.is_some_and(|named| named != sensor) {
            return Err(format!(
                "names sensor {:?}, but the topic is sensor {sensor}",
                reading.sensor
            ));
        }
        return Ok(Parsed {
            sensor,
            t: reading.t,
            value: reading.value,
        });
    }
    if !config.topics.iter().any(|filter| topic_matches(filter, topic)) {
        return Err("the topic matches no configured topic filter".into());
    }
    let reading: JsonReading = serde_json::from_str(text)
        .map_err(|error| format!("not JSON {{\"sensor\": N, \"value\": X, \"t\": ms}}: {error}"))?;
    Ok(Parsed {
        sensor: reading.sensor,
        t: reading.t,
        value: reading.value,
    })
}

/// The main loop's word that a reading from an MQTT source is journaled:
/// [`Ack::journaled`] after the batch holding it was fsynced.
#[derive(Debug)]
pub struct Ack {
    id: u64,
    tx: mpsc::UnboundedSender<u64>,
}

impl Ack {
    /// The reading is durable: its source may acknowledge it.
    pub fn journaled(self) {
        // The source may have stopped; the broker then delivers it again.
        let _ = self.tx.send(self.id);
    }
}

/// What [`Tracker::redelivery`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// A redelivery of a message whose reading is on its way to the
    /// journal: it is acknowledged with it.
    Pending,
    /// A redelivery of a message whose reading is journaled and whose PUBACK
    /// went out on this connection (the two crossed): nothing to do.
    Crossing,
    /// A redelivery of a message whose reading is journaled and whose
    /// PUBACK did not reach the broker: acknowledge it now.
    Settled,
}

/// What [`Tracker::admit`] decided for a parsed reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Already journaled: acknowledge this packet id now (if any).
    Journaled(Option<u16>),
    /// The same reading is on its way to the journal; this delivery is
    /// acknowledged with it.
    Follows,
    /// A new reading: hand it to the main loop with this id.
    Forward(u64),
}

#[derive(Debug)]
struct Leader {
    session: u64,
    pkids: Vec<u16>,
    key: Option<ReadingKey>,
}

/// Packet-id states: nothing known, journaled but not acknowledged, or
/// acknowledged on connection `epoch` (stored as `epoch + 2`).
const PKID_UNKNOWN: u32 = 0;
const PKID_NOT_ACKED: u32 = 1;

/// The source's bookkeeping of deliveries, acknowledgements and readings on
/// their way to the journal; see the module docs. Sans-IO: it says which
/// packet ids to acknowledge, the caller sends the PUBACKs.
#[derive(Debug)]
pub struct Tracker {
    /// Connections so far; 0 before the first.
    epoch: u32,
    /// Broker sessions so far (a CONNACK without a session present starts
    /// a new one, and voids the acknowledgements owed to the old one).
    session: u64,
    connected: bool,
    next_id: u64,
    pending: HashMap<u64, Leader>,
    pkid_pending: HashMap<u16, u64>,
    /// By packet id (65,536 entries once the first QoS 1 message came).
    pkid_state: Vec<u32>,
    pending_keys: HashMap<ReadingKey, u64>,
    journaled_keys: HashSet<ReadingKey>,
    journaled_order: VecDeque<ReadingKey>,
    keys_max: usize,
}

impl Tracker {
    /// A tracker that remembers `keys_max` journaled readings, starting with
    /// `seed` (the journal's newest).
    pub fn new(keys_max: usize, seed: impl IntoIterator<Item = ReadingKey>) -> Tracker {
        let mut tracker = Tracker {
            epoch: 0,
            session: 0,
            connected: false,
            next_id: 1,
            pending: HashMap::new(),
            pkid_pending: HashMap::new(),
            pkid_state: Vec::new(),
            pending_keys: HashMap::new(),
            journaled_keys: HashSet::new(),
            journaled_order: VecDeque::new(),
            keys_max: keys_max.max(1),
        };
        for key in seed {
            tracker.remember(key);
        }
        tracker
    }

    fn remember(&mut self, key: ReadingKey) {
        if self.journaled_keys.insert(key) {
            self.journaled_order.push_back(key);
            while self.journaled_order.len() > self.keys_max {
                if let Some(old) = self.journaled_order.pop_front() {
                    self.journaled_keys.remove(&old);
                }
            }
        }
    }

    fn state(&mut self, pkid: u16) -> &mut u32 {
        if self.pkid_state.is_empty() {
            self.pkid_state = vec![PKID_UNKNOWN; 1 << 16];
        }
        &mut self.pkid_state[usize::from(pkid)]
    }

    fn acked_now(&self) -> u32 {
        self.epoch.saturating_add(2)
    }

    /// Readings handed to the main loop and not yet journaled.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// A connection is up; `session_present` is the CONNACK's flag.
    pub fn connected(&mut self, session_present: bool) {
        self.epoch = self.epoch.saturating_add(1);
        self.connected = true;
        if !session_present {
            // The broker forgot the session: it will deliver nothing again,
            // and a packet id of the old session may name a new message.
            self.session += 1;
            self.pkid_pending.clear();
            for leader in self.pending.values_mut() {
                leader.pkids.clear();
            }
            self.pkid_state.clear();
        }
    }

    /// The connection ended; `unsent` are the acknowledgements that were
    /// never handed to the client.
    pub fn disconnected(&mut self, unsent: impl IntoIterator<Item = u16>) {
        self.connected = false;
        for pkid in unsent {
            *self.state(pkid) = PKID_NOT_ACKED;
        }
    }

    /// Marks `pkid` (if any) as done; the packet id to acknowledge now, if
    /// connected.
    pub fn settle(&mut self, pkid: Option<u16>) -> Option<u16> {
        let pkid = pkid?;
        if self.connected {
            let now = self.acked_now();
            *self.state(pkid) = now;
            Some(pkid)
        } else {
            *self.state(pkid) = PKID_NOT_ACKED;
            None
        }
    }

    /// Checks a delivery's packet id (`None` for QoS 0) and DUP flag before
    /// anything else: `Some` if it is a redelivery the tracker knows.
    pub fn redelivery(&mut self, pkid: Option<u16>, dup: bool) -> Option<Redelivery> {
        let pkid = pkid?;
        if let Some(&id) = self.pkid_pending.get(&pkid) {
            if dup {
                return Some(Redelivery::Pending);
            }
            // A first delivery under a packet id never acknowledged: the
            // broker forgot it, and the old acknowledgement is void.
            self.pkid_pending.remove(&pkid);
            if let Some(leader) = self.pending.get_mut(&id) {
                leader.pkids.retain(|&held| held != pkid);
            }
            *self.state(pkid) = PKID_UNKNOWN;
            return None;
        }
        let now = self.acked_now();
        let state = self.state(pkid);
        match *state {
            PKID_UNKNOWN => None,
            _ if !dup => {
                *state = PKID_UNKNOWN;
                None
            }
            acked if acked == now => Some(Redelivery::Crossing),
            _ => {
                *state = now;
                Some(Redelivery::Settled)
            }
        }
    }

    /// Admits a new delivery's reading (with its key, if it has one).
    pub fn admit(&mut self, pkid: Option<u16>, key: Option<ReadingKey>) -> Admit {
        if let Some(key) = key {
            if self.journaled_keys.contains(&key) {
                return Admit::Journaled(self.settle(pkid));
            }
            if let Some(&leader) = self.pending_keys.get(&key) {
                if let (Some(pkid), Some(entry)) = (pkid, self.pending.get_mut(&leader)) {
                    entry.pkids.push(pkid);
                    self.pkid_pending.insert(pkid, leader);
                }
                return Admit::Follows;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            id,
            Leader {
                session: self.session,
                pkids: pkid.into_iter().collect(),
                key,
            },
        );
        if let Some(pkid) = pkid {
            self.pkid_pending.insert(pkid, id);
        }
        if let Some(key) = key {
            self.pending_keys.insert(key, id);
        }
        Admit::Forward(id)
    }

    /// Reading `id` is journaled: the packet ids to acknowledge now.
    pub fn journaled(&mut self, id: u64) -> Vec<u16> {
        let Some(leader) = self.pending.remove(&id) else {
            return Vec::new();
        };
        if let Some(key) = leader.key {
            if self.pending_keys.get(&key) == Some(&id) {
                self.pending_keys.remove(&key);
            }
            self.remember(key);
        }
        let mut acks = Vec::new();
        for pkid in leader.pkids {
            if self.pkid_pending.get(&pkid) != Some(&id) {
                continue;
            }
            self.pkid_pending.remove(&pkid);
            if leader.session == self.session
                && let Some(pkid) = self.settle(Some(pkid))
            {
                acks.push(pkid);
            }
        }
        acks
    }
}

/// An MQTT source's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MqttSourceSummary {
    /// `host:port`.
    pub broker: String,
    /// The client id (the broker's session).
    pub client_id: String,
    /// Connected now.
    pub connected: bool,
    /// PUBLISH packets received (redeliveries included).
    pub received: u64,
    /// Readings handed to the main loop.
    pub forwarded: u64,
    /// Readings the main loop reported journaled.
    pub journaled: u64,
    /// PUBACKs handed to the client.
    pub acked: u64,
    /// Payloads refused (counted, logged, acknowledged).
    pub garbage: u64,
    /// Deliveries dropped as redeliveries or repeats of a reading.
    pub duplicates: u64,
    /// Retained messages skipped (acknowledged).
    pub retained_skipped: u64,
    /// Connections lost or refused.
    pub reconnects: u64,
    /// Why the last connection ended, if one did.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct SourceStats {
    connected: AtomicBool,
    received: AtomicU64,
    forwarded: AtomicU64,
    journaled: AtomicU64,
    acked: AtomicU64,
    garbage: AtomicU64,
    duplicates: AtomicU64,
    retained_skipped: AtomicU64,
    reconnects: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn set_error(slot: &std::sync::Mutex<Option<String>>, error: String) {
    if let Ok(mut last) = slot.lock() {
        *last = Some(error);
    }
}

/// A topic or error text cut for a log line.
fn cut(text: &str) -> String {
    if text.len() <= 128 {
        return text.to_string();
    }
    let mut end = 128;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Why a connection ended.
enum Ended {
    Stop,
    Lost { error: String, was_up: bool },
}

/// A running MQTT source; [`MqttSource::stop`] ends it.
#[derive(Debug)]
pub struct MqttSource {
    stats: Arc<SourceStats>,
    broker: String,
    client_id: String,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MqttSource {
    /// Starts the source on a thread of its own, sending readings to `tx`;
    /// `seed` are the journal's newest readings ([`journal_keys`]).
    pub(crate) fn start(
        config: &MqttSourceConfig,
        seed: Vec<ReadingKey>,
        tx: SyncSender<Input>,
    ) -> Result<MqttSource, String> {
        config.check()?;
        let stats = Arc::new(SourceStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let (journaled_tx, journaled_rx) = mpsc::unbounded_channel();
        let broker = format!("{}:{}", config.host, config.port);
        let task = SourceTask {
            tracker: Tracker::new(config.dedupe_readings_max, seed),
            config: config.clone(),
            stats: stats.clone(),
            broker: broker.clone(),
            tx,
            journaled_tx,
            journaled_rx,
            stop: stop_rx,
            held: None,
            subscribed: false,
        };
        let thread = std::thread::Builder::new()
            .name("molt-mqtt-source".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        eprintln!("molt-agent: mqtt source: cannot start its runtime: {error}");
                        return;
                    }
                };
                runtime.block_on(task.run());
            })
            .map_err(|error| format!("starting the mqtt source thread: {error}"))?;
        Ok(MqttSource {
            stats,
            broker,
            client_id: config.client_id.clone(),
            stop,
            thread: Some(thread),
        })
    }

    /// The counters now.
    pub fn summary(&self) -> MqttSourceSummary {
        let stats = &self.stats;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MqttSourceSummary {
            broker: self.broker.clone(),
            client_id: self.client_id.clone(),
            connected: stats.connected.load(Ordering::Relaxed),
            received: load(&stats.received),
            forwarded: load(&stats.forwarded),
            journaled: load(&stats.journaled),
            acked: load(&stats.acked),
            garbage: load(&stats.garbage),
            duplicates: load(&stats.duplicates),
            retained_skipped: load(&stats.retained_skipped),
            reconnects: load(&stats.reconnects),
            last_error: stats.last_error.lock().ok().and_then(|error| error.clone()),
        }
    }

    /// Sends the acknowledgements due, disconnects and ends the thread;
    /// readings not journaled stay unacknowledged in the broker's session.
    pub fn stop(mut self) -> MqttSourceSummary {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.stats.connected.store(false, Ordering::Relaxed);
        self.summary()
    }
}

impl Drop for MqttSource {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct SourceTask {
    config: MqttSourceConfig,
    tracker: Tracker,
    stats: Arc<SourceStats>,
    broker: String,
    tx: SyncSender<Input>,
    journaled_tx: mpsc::UnboundedSender<u64>,
    journaled_rx: mpsc::UnboundedReceiver<u64>,
    stop: watch::Receiver<bool>,
    /// An input the main loop's queue had no room for yet.
    held: Option<Input>,
    /// Subscribed at least once in this process (the filters may have
    /// changed since the session was made).
    subscribed: bool,
}

/// A PUBACK request for `pkid`.
fn ack_packet(pkid: u16) -> Publish {
    let mut publish = Publish::new("", QoS::AtLeastOnce, Vec::new());
    publish.pkid = pkid;
    publish
}

impl SourceTask {
    async fn run(mut self) {
        let mut backoff = Backoff::new(
            self.config.reconnect_initial_ms,
            self.config.reconnect_max_ms,
            u64::from(self.config.port),
        );
        loop {
            if *self.stop.borrow() {
                return;
            }
            match self.connection().await {
                Ended::Stop => return,
                Ended::Lost { error, was_up } => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    bump(&self.stats.reconnects);
                    let wait = backoff.next_wait(was_up);
                    eprintln!(
                        "molt-agent: mqtt source {}: {error}; reconnecting in {} ms",
                        self.broker,
                        wait.as_millis()
                    );
                    set_error(&self.stats.last_error, error);
                    let deadline = tokio::time::Instant::now() + wait;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(deadline) => break,
                            _ = self.stop.changed() => return,
                            Some(id) = self.journaled_rx.recv() => {
                                // Not connected: the broker delivers it
                                // again, and it is acknowledged then.
                                bump(&self.stats.journaled);
                                self.tracker.journaled(id);
                            }
                        }
                    }
                }
            }
        }
    }

    fn options(&self) -> MqttOptions {
        let mut options = MqttOptions::new(
            self.config.client_id.clone(),
            self.config.host.clone(),
            self.config.port,
        );
        options.set_keep_alive(Duration::from_secs(self.config.keep_alive_s));
        options.set_clean_session(false);
        options.set_manual_acks(true);
        // Outgoing packets are PUBACKs and one SUBSCRIBE.
        let outgoing = 4096
            + self.config.topics.iter().map(String::len).sum::<usize>()
            + self.config.sensor_topics.keys().map(String::len).sum::<usize>();
        options.set_max_packet_size(self.config.packet_bytes_max, outgoing);
        if let Some(username) = &self.config.username {
            options.set_credentials(username.clone(), self.config.password.clone().unwrap_or_default());
        }
        options
    }

    async fn connection(&mut self) -> Ended {
        // Room for every acknowledgement that can be owed, and a SUBSCRIBE.
        let capacity = self.config.in_flight_max + self.config.event_queue_max + 16;
        let (client, mut event_loop) = AsyncClient::new(self.options(), capacity);
        event_loop
            .network_options
            .set_connection_timeout(self.config.connect_timeout_ms.div_ceil(1000).max(1));
        let (events_tx, mut events) = mpsc::channel(self.config.event_queue_max);
        let poller = spawn_poller(event_loop, events_tx);
        let mut unsent = VecDeque::new();
        let ended = self.drive(&client, &mut events, &mut unsent).await;
        if matches!(ended, Ended::Stop) {
            // The acknowledgements due go out before the DISCONNECT: the
            // client's request queue keeps their order.
            while let Ok(id) = self.journaled_rx.try_recv() {
                bump(&self.stats.journaled);
                unsent.extend(self.tracker.journaled(id));
            }
            self.flush_acks(&client, &mut unsent);
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(Ok(_)) = events.recv().await {}
            })
            .await;
        }
        poller.abort();
        self.tracker.disconnected(unsent);
        ended
    }

    fn flush_acks(&self, client: &AsyncClient, unsent: &mut VecDeque<u16>) {
        while let Some(&pkid) = unsent.front() {
            if client.try_ack(&ack_packet(pkid)).is_err() {
                // The request queue is full; the poller drains it.
                break;
            }
            unsent.pop_front();
            bump(&self.stats.acked);
        }
    }

    async fn drive(
        &mut self,
        client: &AsyncClient,
        events: &mut mpsc::Receiver<Result<Event, String>>,
        unsent: &mut VecDeque<u16>,
    ) -> Ended {
        let connect_deadline = Instant::now() + Duration::from_millis(self.config.connect_timeout_ms);
        let mut up = false;
        loop {
            self.flush_acks(client, unsent);
            if let Some(input) = self.held.take() {
                match self.tx.try_send(input) {
                    Ok(()) => {}
                    Err(TrySendError::Full(input)) => self.held = Some(input),
                    // The agent is stopping.
                    Err(TrySendError::Disconnected(_)) => return Ended::Stop,
                }
            }
            if !up && Instant::now() >= connect_deadline {
                return Ended::Lost {
                    error: format!(
                        "no CONNACK within connect_timeout_ms={}",
                        self.config.connect_timeout_ms
                    ),
                    was_up: false,
                };
            }
            let room = self.held.is_none() && self.tracker.in_flight() < self.config.in_flight_max;
            let wait = if self.held.is_some() || !unsent.is_empty() {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(250)
            };
            let event = tokio::select! {
                event = events.recv(), if room => event,
                Some(id) = self.journaled_rx.recv() => {
                    bump(&self.stats.journaled);
                    unsent.extend(self.tracker.journaled(id));
                    while let Ok(id) = self.journaled_rx.try_recv() {
                        bump(&self.stats.journaled);
                        unsent.extend(self.tracker.journaled(id));
                    }
                    continue;
                }
                _ = tokio::time::sleep(wait) => continue,
                _ = self.stop.changed() => return Ended::Stop,
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
                        error: format!(
                            "connection lost: {error} (packet_bytes_max={})",
                            self.config.packet_bytes_max
                        ),
                        was_up: up,
                    };
                }
                Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    up = true;
                    self.stats.connected.store(true, Ordering::Relaxed);
                    self.tracker.connected(ack.session_present);
                    if !self.subscribed || !ack.session_present {
                        let filters = self
                            .config
                            .topics
                            .iter()
                            .chain(self.config.sensor_topics.keys())
                            .map(|filter| SubscribeFilter::new(filter.clone(), QoS::AtLeastOnce));
                        if let Err(error) = client.try_subscribe_many(filters) {
                            return Ended::Lost {
                                error: format!("subscribing: {error}"),
                                was_up: false,
                            };
                        }
                        self.subscribed = true;
                    }
                    eprintln!(
                        "molt-agent: mqtt source: connected to {} as {} (session {})",
                        self.broker,
                        self.config.client_id,
                        if ack.session_present { "resumed" } else { "new" }
                    );
                }
                Some(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        let error = format!("the broker refused a subscription: {:?}", ack.return_codes);
                        eprintln!("molt-agent: mqtt source {}: {error}", self.broker);
                        set_error(&self.stats.last_error, error);
                    }
                }
                Some(Ok(Event::Incoming(Packet::Publish(publish)))) => self.delivered(publish, unsent),
                Some(Ok(_)) => {}
            }
        }
    }

    /// One PUBLISH from the broker.
    fn delivered(&mut self, publish: Publish, unsent: &mut VecDeque<u16>) {
        bump(&self.stats.received);
        let pkid = (publish.qos != QoS::AtMostOnce).then_some(publish.pkid);
        match self.tracker.redelivery(pkid, publish.dup) {
            Some(Redelivery::Pending | Redelivery::Crossing) => {
                bump(&self.stats.duplicates);
                return;
            }
            Some(Redelivery::Settled) => {
                bump(&self.stats.duplicates);
                unsent.extend(pkid);
                return;
            }
            None => {}
        }
        if publish.retain {
            bump(&self.stats.retained_skipped);
            unsent.extend(self.tracker.settle(pkid));
            return;
        }
        match parse_payload(&self.config, &publish.topic, &publish.payload) {
            Err(why) => {
                bump(&self.stats.garbage);
                unsent.extend(self.tracker.settle(pkid));
                self.held = Some(Input::Refused(format!(
                    "mqtt source {} topic {}: {why}",
                    self.broker,
                    cut(&publish.topic)
                )));
            }
            Ok(parsed) => match self.tracker.admit(pkid, parsed.key()) {
                Admit::Journaled(ack) => {
                    bump(&self.stats.duplicates);
                    unsent.extend(ack);
                }
                Admit::Follows => bump(&self.stats.duplicates),
                Admit::Forward(id) => {
                    bump(&self.stats.forwarded);
                    self.held = Some(Input::Acked {
                        sensor: parsed.sensor,
                        timestamp_ms: parsed.t.unwrap_or_else(now_ms),
                        value: parsed.value,
                        ack: Ack {
                            id,
                            tx: self.journaled_tx.clone(),
                        },
                    });
                }
            },
        }
    }
}

/// How a command is written into an MQTT payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// `{"actuator": "fan", "value": 1.0, "policy": "fan@1", "t": ms}`.
    #[default]
    Json,
    /// The value alone, as a decimal number: `1`, `0.5`.
    Value,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    1883
}
fn default_sink_queue_max() -> usize {
    64
}
fn default_command_max_age_ms() -> u64 {
    10_000
}
fn default_sink_in_flight_max() -> u16 {
    16
}
fn default_reconnect_initial_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_keep_alive_s() -> u64 {
    30
}

/// The `[[sink]] kind = "mqtt"` section; defaults in `packaging/agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// The actuator name commands carry.
    pub actuator: String,
    /// Commands per second, at most; more are dropped and counted.
    pub commands_per_second_max: u32,
    /// The topic commands are published to.
    pub topic: String,
    /// The broker's host.
    #[serde(default = "default_host")]
    pub host: String,
    /// The broker's port (plain TCP).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The client id; default `molt-agent-{actuator}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password, if the broker wants one.
    #[serde(default)]
    pub password: Option<String>,
    /// `json` or `value`.
    #[serde(default)]
    pub format: PayloadFormat,
    /// Publish retained (the broker keeps the last command for late
    /// subscribers).
    #[serde(default)]
    pub retain: bool,
    /// Commands waiting to be published, at most; a full queue refuses.
    #[serde(default = "default_sink_queue_max")]
    pub queue_max: usize,
    /// A command older than this when it could be sent is dropped.
    #[serde(default = "default_command_max_age_ms")]
    pub command_max_age_ms: u64,
    /// Commands published and not yet PUBACKed, at most.
    #[serde(default = "default_sink_in_flight_max")]
    pub in_flight_max: u16,
    /// First wait before a reconnect; it doubles after each failure.
    #[serde(default = "default_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait before a reconnect.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// The TCP connect and the CONNACK must take at most this.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
}

impl MqttSinkConfig {
    /// The client id used.
    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("molt-agent-{}", self.actuator))
    }

    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        let what = format!("mqtt sink {}", self.actuator);
        if self.actuator.is_empty() {
            return Err("mqtt sink: actuator must not be empty".into());
        }
        check_connection(
            &what,
            &self.host,
            &self.client_id(),
            &[
                ("port", u64::from(self.port)),
                ("queue_max", self.queue_max as u64),
                ("command_max_age_ms", self.command_max_age_ms),
                ("in_flight_max", u64::from(self.in_flight_max)),
                ("reconnect_initial_ms", self.reconnect_initial_ms),
                ("connect_timeout_ms", self.connect_timeout_ms),
                ("keep_alive_s", self.keep_alive_s),
            ],
            (self.reconnect_initial_ms, self.reconnect_max_ms),
        )?;
        check_filter(&self.topic).map_err(|why| format!("{what}: topic: {why}"))?;
        if self.topic.contains(['+', '#']) {
            return Err(format!("{what}: topic {:?} must not contain wildcards", self.topic));
        }
        Ok(())
    }
}

/// An actuator sink's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkCounters {
    /// Commands handed to the MQTT client (or set on the line).
    pub delivered: u64,
    /// Commands the broker PUBACKed (MQTT only).
    pub acked: u64,
    /// Commands refused or lost: queue full, too old, an error.
    pub failed: u64,
    /// Connections lost or refused (MQTT only).
    pub reconnects: u64,
    /// Connected now (MQTT), or the line is held (GPIO).
    pub ready: bool,
    /// The last error, if any.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct SinkStats {
    connected: AtomicBool,
    published: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

/// A command waiting to be published.
#[derive(Debug)]
struct Queued {
    payload: Vec<u8>,
    at: Instant,
}

/// A running MQTT actuator sink.
#[derive(Debug)]
pub struct MqttSink {
    config: MqttSinkConfig,
    queue: mpsc::Sender<Queued>,
    stats: Arc<SinkStats>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MqttSink {
    /// Starts the sink's connection on a thread of its own; a broker that
    /// cannot be reached is retried, not fatal.
    pub fn start(config: &MqttSinkConfig) -> Result<MqttSink, String> {
        config.check()?;
        let stats = Arc::new(SinkStats::default());
        let (queue, queue_rx) = mpsc::channel(config.queue_max);
        let (stop, stop_rx) = watch::channel(false);
        let task = SinkTask {
            config: config.clone(),
            stats: stats.clone(),
            queue: queue_rx,
            stop: stop_rx,
            held: None,
        };
        let thread = std::thread::Builder::new()
            .name("molt-mqtt-sink".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        eprintln!("molt-agent: mqtt sink: cannot start its runtime: {error}");
                        return;
                    }
                };
                runtime.block_on(task.run());
            })
            .map_err(|error| format!("starting the mqtt sink thread: {error}"))?;
        Ok(MqttSink {
            config: config.clone(),
            queue,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Queues one command from `policy`; refused (and counted) when the
    /// queue is full.
    pub fn deliver(&self, policy: &str, value: f64) -> Result<(), String> {
        let payload = match self.config.format {
            PayloadFormat::Json => serde_json::json!({
                "actuator": self.config.actuator,
                "value": value,
                "policy": policy,
                "t": now_ms(),
            })
            .to_string()
            .into_bytes(),
            PayloadFormat::Value => value.to_string().into_bytes(),
        };
        let queued = Queued {
            payload,
            at: Instant::now(),
        };
        self.queue.try_send(queued).map_err(|error| {
            bump(&self.stats.failed);
            let why = match error {
                mpsc::error::TrySendError::Full(_) => {
                    format!(
                        "mqtt sink {}: queue full (queue_max={})",
                        self.config.actuator, self.config.queue_max
                    )
                }
                mpsc::error::TrySendError::Closed(_) => format!("mqtt sink {}: its thread ended", self.config.actuator),
            };
            set_error(&self.stats.last_error, why.clone());
            why
        })
    }

    /// The counters now.
    pub fn counters(&self) -> SinkCounters {
        let stats = &self.stats;
        SinkCounters {
            delivered: stats.published.load(Ordering::Relaxed),
            acked: stats.acked.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            reconnects: stats.reconnects.load(Ordering::Relaxed),
            ready: stats.connected.load(Ordering::Relaxed),
            last_error: stats.last_error.lock().ok().and_then(|error| error.clone()),
        }
    }

    /// Disconnects and ends the thread; commands still queued are dropped
    /// (counted).
    pub fn stop(mut self) -> SinkCounters {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.stats.connected.store(false, Ordering::Relaxed);
        self.counters()
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct SinkTask {
    config: MqttSinkConfig,
    stats: Arc<SinkStats>,
    queue: mpsc::Receiver<Queued>,
    stop: watch::Receiver<bool>,
    held: Option<Queued>,
}

impl SinkTask {
    async fn run(mut self) {
        let mut backoff = Backoff::new(
            self.config.reconnect_initial_ms,
            self.config.reconnect_max_ms,
            u64::from(self.config.port) ^ 0x5157,
        );
        loop {
            if *self.stop.borrow() {
                break;
            }
            match self.connection().await {
                Ended::Stop => break,
                Ended::Lost { error, was_up } => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    bump(&self.stats.reconnects);
                    let wait = backoff.next_wait(was_up);
                    eprintln!(
                        "molt-agent: mqtt sink {}: {error}; reconnecting to {}:{} in {} ms",
                        self.config.actuator,
                        self.config.host,
                        self.config.port,
                        wait.as_millis()
                    );
                    set_error(&self.stats.last_error, error);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.changed() => break,
                    }
                }
            }
        }
        // Whatever is still queued is not sent.
        self.queue.close();
        let mut dropped = u64::from(self.held.take().is_some());
        while self.queue.try_recv().is_ok() {
            dropped += 1;
        }
        self.stats.failed.fetch_add(dropped, Ordering::Relaxed);
    }

    fn options(&self) -> MqttOptions {
        let mut options = MqttOptions::new(self.config.client_id(), self.config.host.clone(), self.config.port);
        options.set_keep_alive(Duration::from_secs(self.config.keep_alive_s));
        options.set_clean_session(true);
        options.set_inflight(self.config.in_flight_max);
        if let Some(username) = &self.config.username {
            options.set_credentials(username.clone(), self.config.password.clone().unwrap_or_default());
        }
        options
    }

    /// The next command young enough to send, if any is queued.
    fn next(&mut self) -> Option<Queued> {
        let max_age = Duration::from_millis(self.config.command_max_age_ms);
        loop {
            let queued = match self.held.take() {
                Some(queued) => queued,
                None => self.queue.try_recv().ok()?,
            };
            if queued.at.elapsed() <= max_age {
                return Some(queued);
            }
            bump(&self.stats.failed);
            set_error(
                &self.stats.last_error,
                format!(
                    "a command waited over command_max_age_ms={} and was dropped",
                    self.config.command_max_age_ms
                ),
            );
        }
    }

    async fn connection(&mut self) -> Ended {
        let capacity = usize::from(self.config.in_flight_max) + 8;
        let (client, mut event_loop) = AsyncClient::new(self.options(), capacity);
        event_loop
            .network_options
            .set_connection_timeout(self.config.connect_timeout_ms.div_ceil(1000).max(1));
        let (events_tx, mut events) = mpsc::channel(64);
        let poller = spawn_poller(event_loop, events_tx);
        let connect_deadline = Instant::now() + Duration::from_millis(self.config.connect_timeout_ms);
        let mut up = false;
        let ended = loop {
            let mut wait = Duration::from_millis(250);
            if up {
                while let Some(queued) = self.next() {
                    match client.try_publish(
                        self.config.topic.clone(),
                        QoS::AtLeastOnce,
                        self.config.retain,
                        queued.payload.clone(),
                    ) {
                        Ok(()) => bump(&self.stats.published),
                        Err(_) => {
                            // The request queue is full: the window drains.
                            self.held = Some(queued);
                            wait = Duration::from_millis(5);
                            break;
                        }
                    }
                }
            } else if Instant::now() >= connect_deadline {
                break Ended::Lost {
                    error: format!(
                        "no CONNACK within connect_timeout_ms={}",
                        self.config.connect_timeout_ms
                    ),
                    was_up: false,
                };
            }
            let event = tokio::select! {
                event = events.recv() => event,
                queued = self.queue.recv(), if up && self.held.is_none() => {
                    self.held = queued;
                    continue;
                }
                _ = tokio::time::sleep(wait) => continue,
                _ = self.stop.changed() => break Ended::Stop,
            };
            match event {
                None => {
                    break Ended::Lost {
                        error: "the MQTT event loop ended".into(),
                        was_up: up,
                    };
                }
                Some(Err(error)) => {
                    break Ended::Lost {
                        error: format!("connection lost: {error}"),
                        was_up: up,
                    };
                }
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    up = true;
                    self.stats.connected.store(true, Ordering::Relaxed);
                }
                Some(Ok(Event::Incoming(Packet::PubAck(_)))) => bump(&self.stats.acked),
                Some(Ok(_)) => {}
            }
        };
        if matches!(ended, Ended::Stop) {
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(Ok(_)) = events.recv().await {}
            })
            .await;
        }
        poller.abort();
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MqttSourceConfig {
        MqttSourceConfig {
            topics: vec!["sensors/+/reading".into(), "bulk/#".into()],
            sensor_topics: [("home/kitchen/temp".to_string(), 7)].into_iter().collect(),
            payload_bytes_max: 64,
            ..MqttSourceConfig::default()
        }
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches("#", "$SYS/load"));
        assert!(!topic_matches("+/load", "$SYS/load"));
        assert!(topic_matches("$SYS/#", "$SYS/load"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("a//b", "a//b"));
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b+").is_err());
        assert!(check_filter("").is_err());
        assert!(check_filter("a/+/#").is_ok());
    }

    #[test]
    fn payloads_parse_or_say_why_not() {
        let config = config();
        let parsed = parse_payload(&config, "sensors/3/reading", br#"{"sensor": 3, "value": 1.5, "t": 9}"#).unwrap();
        assert_eq!(
            parsed,
            Parsed {
                sensor: 3,
                t: Some(9),
                value: 1.5
            }
        );
        assert_eq!(parsed.key(), Some((3, 9, 1.5f64.to_bits())));
        let plain = parse_payload(&config, "home/kitchen/temp", b" 21.25\n").unwrap();
        assert_eq!((plain.sensor, plain.t, plain.value), (7, None, 21.25));
        assert_eq!(plain.key(), None);
        let stamped = parse_payload(&config, "home/kitchen/temp", br#"{"value": 2, "t": 5}"#).unwrap();
        assert_eq!((stamped.sensor, stamped.t), (7, Some(5)));
        for (topic, payload, why) in [
            ("sensors/3/reading", &b"{not json"[..], "not JSON"),
            ("sensors/3/reading", &[b' '; 65][..], "payload_bytes_max=64"),
            ("other/topic", &b"1"[..], "matches no configured topic"),
            ("home/kitchen/temp", &b"NaN"[..], "not a finite number"),
            ("home/kitchen/temp", &b"warm"[..], "neither a number"),
            ("home/kitchen/temp", &[0xff, 0xfe][..], "not UTF-8"),
            (
                "home/kitchen/temp",
                &br#"{"sensor": 8, "value": 1}"#[..],
                "the topic is sensor 7",
            ),
        ] {
            let error = parse_payload(&config, topic, payload).unwrap_err();
            assert!(error.contains(why), "{topic}: {error}");
        }
    }

    #[test]
    fn the_config_names_what_cannot_work() {
        assert!(config().check().is_ok());
        let none = MqttSourceConfig::default();
        assert!(none.check().unwrap_err().contains("no topics"));
        let wild = MqttSourceConfig {
            sensor_topics: [("a/+".to_string(), 1)].into_iter().collect(),
            ..MqttSourceConfig::default()
        };
        assert!(wild.check().unwrap_err().contains("exact topic"));
        let small = MqttSourceConfig {
            packet_bytes_max: 64,
            ..config()
        };
        assert!(small.check().unwrap_err().contains("packet_bytes_max"));
        let zero = MqttSourceConfig {
            in_flight_max: 0,
            ..config()
        };
        assert!(zero.check().unwrap_err().contains("in_flight_max must be at least 1"));
    }

    #[test]
    fn the_agent_config_reads_mqtt_and_gpio_sections() {
        use crate::daemon::{AgentConfig, SinkConfig, SourceConfig};
        let config: AgentConfig = toml::from_str(
            r#"
state_dir = "/tmp/x"

[[source]]
kind = "mqtt"
port = 1884
topics = ["sensors/#"]
sensor_topics = { "home/kitchen/temp" = 3 }

[[sink]]
kind = "mqtt"
actuator = "fan"
commands_per_second_max = 5
topic = "actuators/fan/set"
format = "value"

[[sink]]
kind = "gpio"
actuator = "valve"
commands_per_second_max = 2
chip = "gpiochip0"
line = 17
"#,
        )
        .unwrap();
        config.check_io().unwrap();
        let SourceConfig::Mqtt(source) = &config.sources[0] else {
            panic!("not an mqtt source")
        };
        assert_eq!((source.port, source.client_id.as_str()), (1884, "molt-agent-sensors"));
        assert_eq!(source.sensor_topics["home/kitchen/temp"], 3);
        let SinkConfig::Mqtt(sink) = &config.sinks[0] else {
            panic!("not an mqtt sink")
        };
        assert_eq!(
            (sink.format, sink.client_id()),
            (PayloadFormat::Value, "molt-agent-fan".to_string())
        );
        let SinkConfig::Gpio(gpio) = &config.sinks[1] else {
            panic!("not a gpio sink")
        };
        assert_eq!(gpio.chip_path(), std::path::PathBuf::from("/dev/gpiochip0"));
        // Unknown keys are refused, in the variant's own fields too.
        let unknown = toml::from_str::<AgentConfig>(
            "state_dir = \"/tmp/x\"\n[[source]]\nkind = \"mqtt\"\ntopics = [\"a\"]\nqos = 2\n",
        );
        assert!(unknown.unwrap_err().to_string().contains("qos"));
    }

    fn task(tx: SyncSender<Input>) -> SourceTask {
        let (journaled_tx, journaled_rx) = mpsc::unbounded_channel();
        let mut tracker = Tracker::new(16, []);
        tracker.connected(true);
        SourceTask {
            config: config(),
            tracker,
            stats: Arc::new(SourceStats::default()),
            broker: "test".into(),
            tx,
            journaled_tx,
            journaled_rx,
            stop: watch::channel(false).1,
            held: None,
            subscribed: true,
        }
    }

    fn publish(topic: &str, payload: &str, pkid: u16, dup: bool, retain: bool) -> Publish {
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.as_bytes().to_vec());
        (publish.pkid, publish.dup, publish.retain) = (pkid, dup, retain);
        publish
    }

    #[test]
    fn each_delivery_is_forwarded_refused_or_skipped_and_acknowledged_once() {
        let (tx, _rx) = std::sync::mpsc::sync_channel(16);
        let mut task = task(tx);
        let mut unsent = VecDeque::new();
        // A retained last value: acknowledged, not a reading.
        task.delivered(
            publish("sensors/1/reading", r#"{"sensor": 1, "value": 1}"#, 1, false, true),
            &mut unsent,
        );
        assert_eq!((unsent.pop_front(), task.held.is_none()), (Some(1), true));
        // Garbage: acknowledged at once, refused to the main loop.
        task.delivered(publish("sensors/1/reading", "{not json", 2, false, false), &mut unsent);
        assert_eq!(unsent.pop_front(), Some(2));
        assert!(matches!(task.held.take(), Some(Input::Refused(why)) if why.contains("not JSON")));
        // A reading: not acknowledged until journaled.
        task.delivered(
            publish(
                "sensors/1/reading",
                r#"{"sensor": 1, "value": 2, "t": 7}"#,
                3,
                false,
                false,
            ),
            &mut unsent,
        );
        assert!(unsent.is_empty());
        let Some(Input::Acked { ack, .. }) = task.held.take() else {
            panic!("not forwarded")
        };
        // Its redelivery meanwhile: dropped, acknowledged with it.
        task.delivered(
            publish(
                "sensors/1/reading",
                r#"{"sensor": 1, "value": 2, "t": 7}"#,
                3,
                true,
                false,
            ),
            &mut unsent,
        );
        assert!(unsent.is_empty() && task.held.is_none());
        assert_eq!(task.tracker.journaled(ack.id), vec![3]);
        let summary = MqttSource {
            stats: task.stats.clone(),
            broker: String::new(),
            client_id: String::new(),
            stop: watch::channel(false).0,
            thread: None,
        }
        .summary();
        assert_eq!(
            (
                summary.received,
                summary.forwarded,
                summary.garbage,
                summary.duplicates,
                summary.retained_skipped
            ),
            (4, 1, 1, 1, 1)
        );
    }

    #[test]
    fn a_reading_is_acknowledged_once_it_is_journaled() {
        let mut tracker = Tracker::new(16, []);
        tracker.connected(false);
        let Admit::Forward(id) = tracker.admit(Some(5), Some((1, 1, 0))) else {
            panic!("not forwarded")
        };
        assert_eq!(tracker.in_flight(), 1);
        assert_eq!(tracker.journaled(id), vec![5]);
        assert_eq!(tracker.in_flight(), 0);
        // The same reading again (a sensor's own retry): dropped, acknowledged.
        assert_eq!(tracker.admit(Some(6), Some((1, 1, 0))), Admit::Journaled(Some(6)));
        // A redelivery that crossed its PUBACK on this connection: nothing.
        assert_eq!(tracker.redelivery(Some(5), true), Some(Redelivery::Crossing));
        // On the next connection the PUBACK was evidently lost: send it again.
        tracker.disconnected([]);
        tracker.connected(true);
        assert_eq!(tracker.redelivery(Some(5), true), Some(Redelivery::Settled));
        // A first delivery under an old packet id is a new message.
        assert_eq!(tracker.redelivery(Some(5), false), None);
    }

    #[test]
    fn a_redelivery_while_the_reading_is_on_its_way_is_acknowledged_with_it() {
        let mut tracker = Tracker::new(16, []);
        tracker.connected(false);
        // No `t`: only the packet id tells the redelivery apart.
        let Admit::Forward(id) = tracker.admit(Some(9), None) else {
            panic!("not forwarded")
        };
        tracker.disconnected([]);
        tracker.connected(true);
        assert_eq!(tracker.redelivery(Some(9), true), Some(Redelivery::Pending));
        assert_eq!(tracker.journaled(id), vec![9]);
        // Journaled while disconnected: the acknowledgement waits for the
        // broker's redelivery.
        let Admit::Forward(id) = tracker.admit(Some(10), None) else {
            panic!("not forwarded")
        };
        tracker.disconnected([]);
        assert_eq!(tracker.journaled(id), Vec::<u16>::new());
        tracker.connected(true);
        assert_eq!(tracker.redelivery(Some(10), true), Some(Redelivery::Settled));
    }

    #[test]
    fn a_lost_session_voids_the_acknowledgements_owed_to_it() {
        let mut tracker = Tracker::new(16, []);
        tracker.connected(false);
        let Admit::Forward(id) = tracker.admit(Some(3), Some((1, 2, 3))) else {
            panic!("not forwarded")
        };
        tracker.disconnected([]);
        tracker.connected(false);
        // Packet id 3 may now name another message: no PUBACK for it.
        assert_eq!(tracker.journaled(id), Vec::<u16>::new());
    }

    #[test]
    fn readings_journaled_before_a_restart_are_not_journaled_again() {
        let mut tracker = Tracker::new(2, [(1, 10, 0), (1, 11, 0), (1, 12, 0)]);
        tracker.connected(true);
        // The oldest seeded key fell out of the window of 2.
        assert!(matches!(tracker.admit(Some(1), Some((1, 10, 0))), Admit::Forward(_)));
        assert_eq!(tracker.admit(Some(2), Some((1, 12, 0))), Admit::Journaled(Some(2)));
        // Two copies on their way: the second follows the first.
        let Admit::Forward(id) = tracker.admit(Some(3), Some((2, 1, 0))) else {
            panic!("not forwarded")
        };
        assert_eq!(tracker.admit(Some(4), Some((2, 1, 0))), Admit::Follows);
        let mut acks = tracker.journaled(id);
        acks.sort_unstable();
        assert_eq!(acks, vec![3, 4]);
    }
}
