//! Device ids: the MQTT client id, the certificate's common name, and the
//! topic segment after `molt/d/`.

use alloc::string::String;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::error::TopicError;

/// The longest device id, in bytes.
pub const DEVICE_ID_LEN_MAX: usize = 64;

/// A device's id: 1 to [`DEVICE_ID_LEN_MAX`] bytes of lowercase ASCII
/// letters, digits, `-`, `_` and `.`, starting with a letter or a digit.
///
/// The alphabet leaves out `/`, `+`, `#` and `$`, so an id can never widen a
/// topic filter or reach another device's prefix, and it leaves out
/// uppercase, so two ids never differ only by case in a case-insensitive
/// log or file system.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// Checks `id` against the rules above.
    pub fn parse(id: &str) -> Result<DeviceId, TopicError> {
        check(id)?;
        Ok(DeviceId(String::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a device id without allocating.
pub(crate) fn check(id: &str) -> Result<(), TopicError> {
    if id.is_empty() || id.len() > DEVICE_ID_LEN_MAX {
        return Err(TopicError::DeviceIdLength {
            len: id.len(),
            limit: DEVICE_ID_LEN_MAX,
        });
    }
    let bytes = id.as_bytes();
    if !(bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit()) {
        return Err(TopicError::DeviceIdStart);
    }
    if let Some(&byte) = bytes
        .iter()
        .find(|&&byte| !(byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'-' | b'_' | b'.')))
    {
        return Err(TopicError::DeviceIdCharacter { byte });
    }
    Ok(())
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = TopicError;

    fn try_from(id: String) -> Result<DeviceId, TopicError> {
        check(&id)?;
        Ok(DeviceId(id))
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

impl core::str::FromStr for DeviceId {
    type Err = TopicError;

    fn from_str(id: &str) -> Result<DeviceId, TopicError> {
        DeviceId::parse(id)
    }
}
