#![no_std]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
//! molt-protocol: what a molt device and the fleet server say to each other.
//!
//! The agent (`molt-agent`) and the server (`molt-server`) both build on this
//! crate, so the two cannot drift: topic names, message types, their
//! encoding, the protocol version and every size limit live here and nowhere
//! else. It is `no_std` with `alloc`, so a microcontroller agent can use it
//! too. `docs/protocol.md` is the prose description of the same contract.
//!
//! # Topics
//!
//! Every topic of a device is under its own prefix, `molt/d/{device_id}/`
//! ([`topic`], [`Topic::parse`]). The device id is the MQTT client id and the
//! common name of the device's certificate ([`DeviceId`]).
//!
//! | topic | direction | message |
//! |---|---|---|
//! | `molt/d/{id}/telemetry` | device → server | [`Telemetry`] |
//! | `molt/d/{id}/alerts` | device → server | [`Alerts`] |
//! | `molt/d/{id}/events` | device → server | [`Event`] |
//! | `molt/d/{id}/state` | device → server | [`Reported`] |
//! | `molt/d/{id}/health` | device → server | [`Health`] |
//! | `molt/d/{id}/desired` | server → device | [`Desired`] |
//! | `molt/d/{id}/ack` | server → device | [`StoreAck`] |
//!
//! A device may publish only to its own uplink topics and subscribe only
//! under its own prefix ([`may_publish`], [`may_subscribe`]); the server's
//! broker enforces exactly these two functions.
//!
//! # Sequence numbers and acknowledgement
//!
//! Every uplink message carries the device's sequence number `seq`: one
//! counter per device across all uplink topics, starting at 1, strictly
//! increasing, never reused (the agent's outbox persists it). The server
//! stores idempotently by `(device, seq)`, and once its store has committed
//! every message up to `N` it publishes [`StoreAck`] `{ stored_through: N }`
//! on the device's `ack` topic. The device trims its outbox only on that
//! acknowledgement, never on a broker's PUBACK: the embedded broker dies with
//! the server, so whatever the store has not acknowledged is resent.
//!
//! # Encoding
//!
//! Payloads are DAG-CBOR (the same canonical CBOR dialect molt uses for
//! policy state): compact on a constrained link, deterministic (a resent
//! message is byte-identical), self-describing, and decoded under a depth
//! limit. Every message starts with its protocol version `v`; a payload of
//! another version is refused with [`DecodeError::UnsupportedVersion`]
//! before the rest is read. Operators read payloads with
//! `mosquitto_sub -F '%t %x' ... | molt protocol decode`, which prints JSON.
//! DAG-CBOR has no NaN or infinity: a non-finite telemetry value travels as
//! `null`.
//!
//! # Example
//!
//! ```
//! use molt_protocol::{DeviceId, Kind, Limits, Telemetry, TelemetryBuilder, decode, encode, topic};
//!
//! let device = DeviceId::parse("gw-0001").unwrap();
//! let mut builder = TelemetryBuilder::new("threshold@1.0.0");
//! builder.push(7, 1_700_000_000_000, "temperature", 21.5);
//! builder.push(7, 1_700_000_000_010, "temperature", 21.625);
//! let message = builder.finish(42);
//!
//! let payload = encode(&message, &Limits::default()).unwrap();
//! assert_eq!(topic(&device, Kind::Telemetry), "molt/d/gw-0001/telemetry");
//! let back: Telemetry = decode(&payload, &Limits::default()).unwrap();
//! assert_eq!(back, message);
//! assert_eq!(back.points().nth(1).unwrap().timestamp_ms, 1_700_000_000_010);
//! ```

extern crate alloc;
#[cfg(test)]
extern crate std;

mod codec;
mod device_id;
mod error;
mod limits;
mod message;
mod topic;

pub use crate::codec::{AnyMessage, Message, decode, decode_kind, encode};
pub use crate::device_id::{DEVICE_ID_LEN_MAX, DeviceId};
pub use crate::error::{DecodeError, EncodeError, LimitError, TopicError};
pub use crate::limits::Limits;
pub use crate::message::{
    Alert, Alerts, Desired, Event, EventKind, Health, Point, PointRef, PolicyState, Reported, Severity, StoreAck,
    Telemetry, TelemetryBuilder, UpdatePhase, UpdateStatus,
};
pub use crate::topic::{Direction, Kind, TOPIC_ROOT, Topic, device_prefix, may_publish, may_subscribe, topic};

/// The protocol version this crate speaks; the first field (`v`) of every
/// message.
pub const PROTOCOL_VERSION: u16 = 1;

#[cfg(test)]
mod tests;
