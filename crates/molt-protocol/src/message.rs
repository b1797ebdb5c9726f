//! The messages, one type per topic kind.
//!
//! Field names are short because they travel in every message; the docs
//! give each one's meaning. Unknown fields are ignored, so a field can be
//! added without a new protocol version; a change an older reader cannot
//! ignore gets a new [`crate::PROTOCOL_VERSION`].

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;

/// Telemetry from one policy's batch (`molt/d/{id}/telemetry`).
///
/// Metric names are listed once per message and points refer to them by
/// index, and timestamps are offsets from `t0`, so a point costs about 15
/// bytes on the wire. Build one with [`TelemetryBuilder`] and read it with
/// [`Telemetry::points`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Protocol version.
    pub v: u16,
    /// The device's uplink sequence number.
    pub seq: u64,
    /// The policy version that produced these points (`name@version`).
    pub policy: String,
    /// The earliest point's timestamp, milliseconds since the Unix epoch.
    pub t0: u64,
    /// The metric names the points refer to.
    pub metrics: Vec<String>,
    /// The points.
    pub points: Vec<Point>,
}

/// One telemetry point, encoded as the array `[metric, sensor, dt, value]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "PointWire", into = "PointWire")]
pub struct Point {
    /// Index into [`Telemetry::metrics`].
    pub metric: u16,
    /// The sensor.
    pub sensor: u32,
    /// Milliseconds after [`Telemetry::t0`].
    pub dt: u64,
    /// The value; `None` when the policy produced NaN or an infinity, which
    /// DAG-CBOR (and SQL, and JSON) cannot carry.
    pub value: Option<f64>,
}

type PointWire = (u16, u32, u64, Option<f64>);

impl From<PointWire> for Point {
    fn from((metric, sensor, dt, value): PointWire) -> Point {
        Point {
            metric,
            sensor,
            dt,
            value,
        }
    }
}

impl From<Point> for PointWire {
    fn from(point: Point) -> PointWire {
        (point.metric, point.sensor, point.dt, point.value)
    }
}

/// A point with its metric name and absolute timestamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointRef<'a> {
    /// The sensor.
    pub sensor: u32,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The metric's name.
    pub metric: &'a str,
    /// The value, `None` if it was not finite.
    pub value: Option<f64>,
}

impl Telemetry {
    /// The points with names and absolute timestamps. A point whose metric
    /// index or timestamp is out of range is skipped; [`crate::decode`] has
    /// already refused any message that holds one.
    pub fn points(&self) -> impl Iterator<Item = PointRef<'_>> + '_ {
        self.points.iter().filter_map(|point| {
            Some(PointRef {
                sensor: point.sensor,
                timestamp_ms: self.t0.checked_add(point.dt)?,
                metric: self.metrics.get(usize::from(point.metric))?,
                value: point.value,
            })
        })
    }
}

/// Builds a [`Telemetry`] message point by point.
#[derive(Debug, Clone, Default)]
pub struct TelemetryBuilder {
    policy: String,
    metrics: Vec<String>,
    metric_index: BTreeMap<String, u16>,
    points: Vec<(u16, u32, u64, Option<f64>)>,
}

impl TelemetryBuilder {
    /// A builder for points from `policy` (`name@version`).
    pub fn new(policy: impl Into<String>) -> TelemetryBuilder {
        TelemetryBuilder {
            policy: policy.into(),
            ..TelemetryBuilder::default()
        }
    }

    /// Adds a point. A value that is not finite is kept as `None`.
    ///
    /// Past `u16::MAX` distinct metrics the point is refused with `false`;
    /// [`crate::Limits::metrics_per_message_max`] is far below that, so a
    /// caller that splits messages at the limits never sees it.
    pub fn push(&mut self, sensor: u32, timestamp_ms: u64, metric: &str, value: f64) -> bool {
        let index = match self.metric_index.get(metric) {
            Some(&index) => index,
            None => {
                let Ok(index) = u16::try_from(self.metrics.len()) else {
                    return false;
                };
                self.metrics.push(String::from(metric));
                self.metric_index.insert(String::from(metric), index);
                index
            }
        };
        self.points
            .push((index, sensor, timestamp_ms, value.is_finite().then_some(value)));
        true
    }

    /// Points so far.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// No points yet?
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Distinct metrics so far.
    pub fn metric_count(&self) -> usize {
        self.metrics.len()
    }

    /// The message, with uplink sequence number `seq`.
    pub fn finish(self, seq: u64) -> Telemetry {
        let t0 = self
            .points
            .iter()
            .map(|&(_, _, timestamp_ms, _)| timestamp_ms)
            .min()
            .unwrap_or(0);
        let points = self
            .points
            .into_iter()
            .map(|(metric, sensor, timestamp_ms, value)| Point {
                metric,
                sensor,
                dt: timestamp_ms - t0,
                value,
            })
            .collect();
        Telemetry {
            v: PROTOCOL_VERSION,
            seq,
            policy: self.policy,
            t0,
            metrics: self.metrics,
            points,
        }
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For the record.
    Info,
    /// Needs a look.
    Warning,
    /// Needs action now.
    Critical,
}

/// Alerts from one policy's batch (`molt/d/{id}/alerts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alerts {
    /// Protocol version.
    pub v: u16,
    /// The device's uplink sequence number.
    pub seq: u64,
    /// The policy version that raised them (`name@version`).
    pub policy: String,
    /// The alerts, in the order the policy raised them.
    pub alerts: Vec<Alert>,
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The sensor.
    pub sensor: u32,
    /// Milliseconds since the Unix epoch.
    pub t: u64,
    /// How urgent.
    pub severity: Severity,
    /// What the policy said.
    pub message: String,
}

/// What happened on the device (`molt/d/{id}/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Protocol version.
    pub v: u16,
    /// The device's uplink sequence number.
    pub seq: u64,
    /// When, milliseconds since the Unix epoch (device clock).
    pub t: u64,
    /// What.
    pub kind: EventKind,
    /// The release set it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u64>,
    /// The policy version it concerns (`name@version`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// A human-readable account: the error, the trap and its backtrace, the
    /// versions swapped.
    #[serde(default)]
    pub detail: String,
}

/// Kinds of [`Event`]. A kind this side does not know decodes as
/// [`EventKind::Other`], so a newer agent never breaks an older server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The agent started a process (after boot, a crash or an update).
    Started,
    /// An update to a release set began.
    InstallStarted,
    /// A release set was installed.
    InstallSucceeded,
    /// A release set failed to verify or install; nothing changed.
    InstallFailed,
    /// A policy version took over from another, state carried over.
    Swap,
    /// A policy version on trial was committed.
    Commit,
    /// A policy version on trial was reverted to the previous one.
    Revert,
    /// A policy trapped.
    Trap,
    /// A policy returned an error or ran out of fuel or memory.
    PolicyError,
    /// A new agent binary was booted on trial.
    AgentTrial,
    /// A new agent binary passed its health check and was committed.
    AgentCommitted,
    /// A new agent binary was rolled back.
    AgentRolledBack,
    /// The outbox was full and applied its overflow policy.
    OutboxOverflow,
    /// Local storage failed or held corrupt data; the detail says what was
    /// kept.
    StorageFault,
    /// A kind this side does not know.
    #[serde(other)]
    Other,
}

/// What the device runs (`molt/d/{id}/state`), sent after every change and
/// after every (re)connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    /// Protocol version.
    pub v: u16,
    /// The device's uplink sequence number.
    pub seq: u64,
    /// When, milliseconds since the Unix epoch (device clock).
    pub t: u64,
    /// The device's hardware class.
    pub hardware_class: String,
    /// The agent version running.
    pub agent_version: String,
    /// The release set installed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u64>,
    /// The committed security counter.
    pub security_counter: u64,
    /// Each installed policy.
    pub policies: Vec<PolicyState>,
    /// The update the director asked for most recently, and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateStatus>,
}

/// One installed policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    /// Its name.
    pub name: String,
    /// The version serving readings.
    pub serving: String,
    /// A version on trial, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<String>,
}

/// How the device is getting on with a [`Desired`] state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The [`Desired::generation`] this is about.
    pub generation: u64,
    /// The release set asked for.
    pub release: u64,
    /// Where it stands.
    pub phase: UpdatePhase,
    /// Why it failed or was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Phases of an update the director asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UpdatePhase {
    /// Received, not started.
    Pending,
    /// Verifying metadata and fetching parts.
    Fetching,
    /// Installing: agent slots, policy staging.
    Installing,
    /// Installed; policies or agent on trial.
    Trial,
    /// Installed and committed.
    Done,
    /// Verification or installation failed; the device is unchanged.
    Failed,
    /// Refused by the device's rules (security counter, hardware class).
    Refused,
    /// A phase this side does not know.
    #[serde(other)]
    Other,
}

/// How the device is doing (`molt/d/{id}/health`), sent on a fixed period
/// and after every update.
///
/// Counters (`readings` to `policy_errors`) count from `boot`, the start of
/// the agent process, so the server takes rates by differencing two reports
/// of the same `boot` and notices a restart when `boot` changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Protocol version.
    pub v: u16,
    /// The device's uplink sequence number.
    pub seq: u64,
    /// When, milliseconds since the Unix epoch (device clock).
    pub t: u64,
    /// When the agent process started, milliseconds since the Unix epoch.
    pub boot: u64,
    /// Agent process starts since enrollment, this one included.
    pub restarts: u64,
    /// Readings accepted since `boot`.
    pub readings: u64,
    /// Batches processed since `boot` (each by every policy).
    pub batches: u64,
    /// Policy traps since `boot`.
    pub traps: u64,
    /// Policy reverts since `boot`.
    pub reverts: u64,
    /// Policy errors (error results, fuel or memory exhausted) since `boot`.
    pub policy_errors: u64,
    /// 99th percentile of batch latency over the last period, microseconds.
    pub batch_p99_us: u64,
    /// Messages in the outbox not yet acknowledged by the store.
    pub outbox_messages: u64,
    /// Their bytes.
    pub outbox_bytes: u64,
    /// Age of the oldest unacknowledged message, milliseconds.
    pub outbox_oldest_ms: u64,
    /// Messages the outbox's overflow policy dropped, since enrollment.
    pub outbox_dropped: u64,
    /// Resident memory of the agent process, bytes.
    pub rss_bytes: u64,
    /// Time spent without a connection to the server since `boot`,
    /// milliseconds.
    pub offline_ms: u64,
}

/// What the director wants the device to run (`molt/d/{id}/desired`).
///
/// The device installs release set `release` through TUF from the server's
/// repository, never below its committed security counter. `generation`
/// increases with every new desired state of a device; the device ignores a
/// generation at or below the last one it acted on, so a late duplicate can
/// never undo a newer order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Protocol version.
    pub v: u16,
    /// Increases with every new desired state of this device.
    pub generation: u64,
    /// The release set to run.
    pub release: u64,
    /// The rollout this belongs to, if any, for the device's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

/// The store's acknowledgement (`molt/d/{id}/ack`): every uplink message of
/// this device with `seq <= stored_through` is durable in the server's
/// store. Cumulative, so a lost acknowledgement is made good by the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreAck {
    /// Protocol version.
    pub v: u16,
    /// Every message up to and including this sequence number is stored.
    pub stored_through: u64,
}
