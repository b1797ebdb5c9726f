//! Encoding and decoding, with every limit checked.

use alloc::string::ToString;
use alloc::vec::Vec;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;
use crate::error::{DecodeError, EncodeError, LimitError};
use crate::limits::Limits;
use crate::message::{Alerts, Desired, Event, Health, Reported, StoreAck, Telemetry};
use crate::topic::Kind;

/// A message of the protocol: one type per [`Kind`].
pub trait Message: Serialize + DeserializeOwned + sealed::Sealed {
    /// The topic kind it travels on.
    const KIND: Kind;

    /// Its uplink sequence number; `None` for downlink messages.
    fn seq(&self) -> Option<u64>;

    /// Checks every field against `limits` and the protocol's rules.
    fn check(&self, limits: &Limits) -> Result<(), LimitError>;
}

mod sealed {
    pub trait Sealed {}
}

/// Encodes `message` after checking it against `limits`, so a sender never
/// produces what a receiver with the same limits would refuse.
pub fn encode<M: Message>(message: &M, limits: &Limits) -> Result<Vec<u8>, EncodeError> {
    message.check(limits)?;
    let bytes = serde_ipld_dagcbor::to_vec(message).map_err(|error| EncodeError::Encoder(error.to_string()))?;
    if bytes.len() > limits.payload_bytes_max {
        return Err(EncodeError::TooLarge {
            size: bytes.len(),
            limit: limits.payload_bytes_max,
        });
    }
    Ok(bytes)
}

/// Decodes a payload of type `M`: its size is checked first, then its
/// version, then its shape, then every limit.
pub fn decode<M: Message>(payload: &[u8], limits: &Limits) -> Result<M, DecodeError> {
    if payload.len() > limits.payload_bytes_max {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: limits.payload_bytes_max,
        });
    }
    #[derive(Deserialize)]
    struct Version {
        v: u64,
    }
    let version: Version = serde_ipld_dagcbor::from_slice(payload).map_err(malformed)?;
    if version.v != u64::from(PROTOCOL_VERSION) {
        return Err(DecodeError::UnsupportedVersion {
            found: version.v,
            supported: PROTOCOL_VERSION,
        });
    }
    let message: M = serde_ipld_dagcbor::from_slice(payload).map_err(malformed)?;
    message.check(limits)?;
    Ok(message)
}

fn malformed<E: core::fmt::Display>(error: E) -> DecodeError {
    DecodeError::Malformed(error.to_string())
}

/// Any message, for tools that show what travels (`molt protocol decode`):
/// it serialises to the message's own fields, so `serde_json` renders it
/// readably.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum AnyMessage {
    /// On `telemetry`.
    Telemetry(Telemetry),
    /// On `alerts`.
    Alerts(Alerts),
    /// On `events`.
    Event(Event),
    /// On `state`.
    Reported(Reported),
    /// On `health`.
    Health(Health),
    /// On `desired`.
    Desired(Desired),
    /// On `ack`.
    Ack(StoreAck),
}

/// Decodes a payload found on a topic of `kind`.
pub fn decode_kind(kind: Kind, payload: &[u8], limits: &Limits) -> Result<AnyMessage, DecodeError> {
    Ok(match kind {
        Kind::Telemetry => AnyMessage::Telemetry(decode(payload, limits)?),
        Kind::Alerts => AnyMessage::Alerts(decode(payload, limits)?),
        Kind::Events => AnyMessage::Event(decode(payload, limits)?),
        Kind::State => AnyMessage::Reported(decode(payload, limits)?),
        Kind::Health => AnyMessage::Health(decode(payload, limits)?),
        Kind::Desired => AnyMessage::Desired(decode(payload, limits)?),
        Kind::Ack => AnyMessage::Ack(decode(payload, limits)?),
    })
}

impl AnyMessage {
    /// The uplink sequence number, for uplink messages.
    pub fn seq(&self) -> Option<u64> {
        match self {
            AnyMessage::Telemetry(message) => message.seq(),
            AnyMessage::Alerts(message) => message.seq(),
            AnyMessage::Event(message) => message.seq(),
            AnyMessage::Reported(message) => message.seq(),
            AnyMessage::Health(message) => message.seq(),
            AnyMessage::Desired(message) => message.seq(),
            AnyMessage::Ack(message) => message.seq(),
        }
    }
}

fn over(what: &'static str, value: usize, limit: usize, name: &'static str) -> Result<(), LimitError> {
    if value > limit {
        Err(LimitError::Over {
            what,
            value,
            limit,
            name,
        })
    } else {
        Ok(())
    }
}

fn version(v: u16) -> Result<(), LimitError> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(LimitError::Invalid {
            field: "v",
            reason: "not the protocol version this side speaks",
        })
    }
}

fn sequence(seq: u64) -> Result<(), LimitError> {
    if seq == 0 {
        Err(LimitError::Invalid {
            field: "seq",
            reason: "uplink sequence numbers start at 1",
        })
    } else {
        Ok(())
    }
}

fn name(field: &'static str, value: &str, limits: &Limits) -> Result<(), LimitError> {
    if value.is_empty() {
        return Err(LimitError::Invalid { field, reason: "empty" });
    }
    over(field, value.len(), limits.name_len_max, "name_len_max")
}

fn text(field: &'static str, value: &str, limits: &Limits) -> Result<(), LimitError> {
    over(field, value.len(), limits.text_len_max, "text_len_max")
}

impl sealed::Sealed for Telemetry {}
impl Message for Telemetry {
    const KIND: Kind = Kind::Telemetry;

    fn seq(&self) -> Option<u64> {
        Some(self.seq)
    }

    fn check(&self, limits: &Limits) -> Result<(), LimitError> {
        version(self.v)?;
        sequence(self.seq)?;
        name("telemetry policy", &self.policy, limits)?;
        over(
            "metrics in a telemetry message",
            self.metrics.len(),
            limits.metrics_per_message_max,
            "metrics_per_message_max",
        )?;
        over(
            "points in a telemetry message",
            self.points.len(),
            limits.points_per_message_max,
            "points_per_message_max",
        )?;
        for metric in &self.metrics {
            if metric.is_empty() {
                return Err(LimitError::Invalid {
                    field: "metric",
                    reason: "empty",
                });
            }
            over(
                "a metric name's length",
                metric.len(),
                limits.metric_len_max,
                "metric_len_max",
            )?;
        }
        for point in &self.points {
            if usize::from(point.metric) >= self.metrics.len() {
                return Err(LimitError::Invalid {
                    field: "point metric",
                    reason: "refers to no listed metric",
                });
            }
            if self.t0.checked_add(point.dt).is_none() {
                return Err(LimitError::Invalid {
                    field: "point dt",
                    reason: "t0 + dt overflows",
                });
            }
            if point.value.is_some_and(|value| !value.is_finite()) {
                return Err(LimitError::Invalid {
                    field: "point value",
                    reason: "not finite (send null)",
                });
            }
        }
        Ok(())
    }
}

impl sealed::Sealed for Alerts {}
impl Message for Alerts {
    const KIND: Kind = Kind::Alerts;

    fn seq(&self) -> Option<u64> {
        Some(self.seq)
    }

    fn check(&self, limits: &Limits) -> Result<(), LimitError> {
        version(self.v)?;
        sequence(self.seq)?;
        name("alerts policy", &self.policy, limits)?;
        over(
            "alerts in a message",
            self.alerts.len(),
            limits.alerts_per_message_max,
            "alerts_per_message_max",
        )?;
        for alert in &self.alerts {
            text("alert message", &alert.message, limits)?;
        }
        Ok(())
    }
}

impl sealed::Sealed for Event {}
impl Message for Event {
    const KIND: Kind = Kind::Events;

    fn seq(&self) -> Option<u64> {
        Some(self.seq)
    }

    fn check(&self, limits: &Limits) -> Result<(), LimitError> {
        version(self.v)?;
        sequence(self.seq)?;
        if let Some(policy) = &self.policy {
            name("event policy", policy, limits)?;
        }
        text("event detail", &self.detail, limits)
    }
}

impl sealed::Sealed for Reported {}
impl Message for Reported {
    const KIND: Kind = Kind::State;

    fn seq(&self) -> Option<u64> {
        Some(self.seq)
    }

    fn check(&self, limits: &Limits) -> Result<(), LimitError> {
        version(self.v)?;
        sequence(self.seq)?;
        name("hardware class", &self.hardware_class, limits)?;
        name("agent version", &self.agent_version, limits)?;
        over(
            "policies in a reported state",
            self.policies.len(),
            limits.policies_max,
            "policies_max",
        )?;
        for policy in &self.policies {
            name("policy name", &policy.name, limits)?;
            name("serving policy version", &policy.serving, limits)?;
            if let Some(trial) = &policy.trial {
                name("trial policy version", trial, limits)?;
            }
        }
        if let Some(error) = self.update.as_ref().and_then(|update| update.error.as_ref()) {
            text("update error", error, limits)?;
        }
        Ok(())
    }
}

impl sealed::Sealed for Health {}
impl Message for Health {
    const KIND: Kind = Kind::Health;

    fn seq(&self) -> Option<u64> {
        Some(self.seq)
    }

    fn check(&self, _limits: &Limits) -> Result<(), LimitError> {
        version(self.v)?;
        sequence(self.seq)
    }
}

impl sealed::Sealed for Desired {}
impl Message for Desired {
    const KIND: Kind = Kind::Desired;

    fn seq(&self) -> Option<u64> {
        None
    }

    fn check(&self, limits: &Limits) -> Result<(), LimitError> {
        version(self.v)?;
        if self.generation == 0 {
            return Err(LimitError::Invalid {
                field: "generation",
                reason: "generations start at 1",
            });
        }
        if let Some(rollout) = &self.rollout {
            name("rollout", rollout, limits)?;
        }
        Ok(())
    }
}

impl sealed::Sealed for StoreAck {}
impl Message for StoreAck {
    const KIND: Kind = Kind::Ack;

    fn seq(&self) -> Option<u64> {
        None
    }

    fn check(&self, _limits: &Limits) -> Result<(), LimitError> {
        version(self.v)
    }
}
