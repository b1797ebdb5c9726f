//! Topic names and the access rules the broker enforces.

use alloc::format;
use alloc::string::String;

use crate::device_id::{self, DeviceId};
use crate::error::TopicError;

/// Every device topic starts with this, then the device id.
pub const TOPIC_ROOT: &str = "molt/d/";

/// Which way a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Device to server: carries a sequence number and is acknowledged by
    /// the store.
    Uplink,
    /// Server to device.
    Downlink,
}

/// A kind of message, and the last segment of its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// [`crate::Telemetry`] on `molt/d/{id}/telemetry`.
    Telemetry,
    /// [`crate::Alerts`] on `molt/d/{id}/alerts`.
    Alerts,
    /// [`crate::Event`] on `molt/d/{id}/events`.
    Events,
    /// [`crate::Reported`] on `molt/d/{id}/state`.
    State,
    /// [`crate::Health`] on `molt/d/{id}/health`.
    Health,
    /// [`crate::Desired`] on `molt/d/{id}/desired`.
    Desired,
    /// [`crate::StoreAck`] on `molt/d/{id}/ack`.
    Ack,
}

impl Kind {
    /// Every kind, uplink first.
    pub const ALL: [Kind; 7] = [
        Kind::Telemetry,
        Kind::Alerts,
        Kind::Events,
        Kind::State,
        Kind::Health,
        Kind::Desired,
        Kind::Ack,
    ];

    /// The uplink kinds: what a device publishes.
    pub const UPLINK: [Kind; 5] = [Kind::Telemetry, Kind::Alerts, Kind::Events, Kind::State, Kind::Health];

    /// The downlink kinds: what a device subscribes to.
    pub const DOWNLINK: [Kind; 2] = [Kind::Desired, Kind::Ack];

    /// The topic's last segment.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Alerts => "alerts",
            Kind::Events => "events",
            Kind::State => "state",
            Kind::Health => "health",
            Kind::Desired => "desired",
            Kind::Ack => "ack",
        }
    }

    /// Which way messages of this kind go.
    pub fn direction(self) -> Direction {
        match self {
            Kind::Telemetry | Kind::Alerts | Kind::Events | Kind::State | Kind::Health => Direction::Uplink,
            Kind::Desired | Kind::Ack => Direction::Downlink,
        }
    }

    /// The kind whose segment is `segment`.
    pub fn from_segment(segment: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.segment() == segment)
    }

    /// The filter the server subscribes to for this kind on every device,
    /// `molt/d/+/{segment}`.
    pub fn all_devices_filter(self) -> String {
        format!("{TOPIC_ROOT}+/{}", self.segment())
    }
}

/// The topic of `kind` for `device`: `molt/d/{device}/{segment}`.
pub fn topic(device: &DeviceId, kind: Kind) -> String {
    format!("{TOPIC_ROOT}{device}/{}", kind.segment())
}

/// The prefix every topic of `device` starts with: `molt/d/{device}/`.
pub fn device_prefix(device: &DeviceId) -> String {
    format!("{TOPIC_ROOT}{device}/")
}

/// A device topic, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic<'a> {
    /// The device id segment; it passed [`DeviceId::parse`]'s rules.
    pub device: &'a str,
    /// The message kind.
    pub kind: Kind,
}

impl<'a> Topic<'a> {
    /// Parses a concrete topic (no wildcards) of the form
    /// `molt/d/{device}/{segment}`.
    pub fn parse(topic: &'a str) -> Result<Topic<'a>, TopicError> {
        let rest = topic.strip_prefix(TOPIC_ROOT).ok_or(TopicError::NotMolt)?;
        let (device, segment) = rest.split_once('/').ok_or(TopicError::MissingKind)?;
        device_id::check(device)?;
        let kind = Kind::from_segment(segment).ok_or(TopicError::UnknownKind)?;
        Ok(Topic { device, kind })
    }
}

/// May `device` publish to `topic`? Only to its own uplink topics, exactly.
pub fn may_publish(device: &DeviceId, topic: &str) -> bool {
    match Topic::parse(topic) {
        Ok(parsed) => parsed.device == device.as_str() && parsed.kind.direction() == Direction::Uplink,
        Err(_) => false,
    }
}

/// May `device` subscribe to `filter`? Only to filters that stay under its
/// own prefix, `molt/d/{device}/...`: a wildcard may follow the prefix,
/// never stand in for it, and shared (`$share/...`) or system (`$SYS/...`)
/// filters are refused.
pub fn may_subscribe(device: &DeviceId, filter: &str) -> bool {
    let Some(rest) = filter.strip_prefix(TOPIC_ROOT) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(device.as_str()) else {
        return false;
    };
    // `molt/d/{device}/...`: the id must end at a separator, or
    // `molt/d/gw-1` would cover `molt/d/gw-10/...` through a wildcard.
    match rest.strip_prefix('/') {
        Some(tail) => !tail.is_empty(),
        None => false,
    }
}
