//! Why a topic, a message or a payload was refused.

/// A topic or device id that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic does not start with `molt/d/`.
    #[error("not a molt device topic (they start with molt/d/)")]
    NotMolt,
    /// Nothing follows the device id.
    #[error("the topic has no message kind after the device id")]
    MissingKind,
    /// The last segment names no message kind.
    #[error("unknown message kind (expected telemetry, alerts, events, state, health, desired or ack)")]
    UnknownKind,
    /// The device id is empty or too long.
    #[error("device id is {len} bytes (limit: 1 to {limit}, DEVICE_ID_LEN_MAX)")]
    DeviceIdLength {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The device id starts with something other than a letter or a digit.
    #[error("a device id starts with a lowercase letter or a digit")]
    DeviceIdStart,
    /// The device id holds a byte outside its alphabet.
    #[error("a device id holds only a-z, 0-9, '-', '_' and '.' (found byte 0x{byte:02x})")]
    DeviceIdCharacter {
        /// The first byte outside the alphabet.
        byte: u8,
    },
}

/// A message that breaks one of the [`crate::Limits`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A count or length is over its limit.
    #[error("{what} is {value}, over the limit of {limit} ({name})")]
    Over {
        /// What was counted, in words.
        what: &'static str,
        /// The value found.
        value: usize,
        /// The limit.
        limit: usize,
        /// The limit's name in [`crate::Limits`] and the server's config.
        name: &'static str,
    },
    /// A field holds a value the protocol does not allow.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is larger than [`crate::Limits::payload_bytes_max`];
    /// nothing of it was read.
    #[error("payload is {size} bytes, over the limit of {limit} (payload_bytes_max)")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The payload's version is not [`crate::PROTOCOL_VERSION`].
    #[error("protocol version {found} is not supported (this side speaks {supported})")]
    UnsupportedVersion {
        /// The version the payload names.
        found: u64,
        /// The version this side speaks.
        supported: u16,
    },
    /// The payload is not DAG-CBOR of the expected shape.
    #[error("malformed payload: {0}")]
    Malformed(alloc::string::String),
    /// The payload decoded but breaks a limit or a rule.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message breaks a limit or a rule.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The encoded message is larger than
    /// [`crate::Limits::payload_bytes_max`].
    #[error("encoded message is {size} bytes, over the limit of {limit} (payload_bytes_max)")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The encoder refused a value.
    #[error("cannot encode: {0}")]
    Encoder(alloc::string::String),
}
