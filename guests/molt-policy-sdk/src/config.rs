//! Typed access to a policy's key/value configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::PolicyError;

/// A policy's configuration: the key/value pairs of its release set, checked for duplicate keys.
///
/// Every getter names the key in its error, so an operator reading the host's log sees which entry is wrong:
///
/// ```
/// use molt_policy_sdk::{Config, PolicyError};
///
/// let config = Config::from_pairs([("threshold", "30.5"), ("sensor", "seven")])?;
/// assert_eq!(config.require_f64("threshold")?, 30.5);
/// assert_eq!(config.get_u32("hysteresis")?, None);
/// assert_eq!(
///     config.get_u32("sensor"),
///     Err(PolicyError::InvalidConfig(
///         "key `sensor`: expected an integer from 0 to 4294967295, got `seven`".into()
///     )),
/// );
/// # Ok::<(), PolicyError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    entries: BTreeMap<String, String>,
}

impl Config {
    /// Builds a config from key/value pairs, as the host passes them.
    ///
    /// A key given twice is an `invalid-config` error: which of the two was meant is unknowable.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self, PolicyError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut entries = BTreeMap::new();
        for (key, value) in pairs {
            let key = key.into();
            if entries.contains_key(&key) {
                return Err(PolicyError::InvalidConfig(format!("key `{key}` is given twice")));
            }
            entries.insert(key, value.into());
        }
        Ok(Config { entries })
    }

    /// All entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// Fails with `invalid-config` on any key not in `known`, so that a misspelt key is not silently ignored.
    ///
    /// ```
    /// use molt_policy_sdk::{Config, PolicyError};
    ///
    /// let config = Config::from_pairs([("treshold", "30")])?;
    /// assert_eq!(
    ///     config.check_keys(&["threshold", "hysteresis"]),
    ///     Err(PolicyError::InvalidConfig(
    ///         "unknown key `treshold` (known keys: threshold, hysteresis)".into()
    ///     )),
    /// );
    /// # Ok::<(), PolicyError>(())
    /// ```
    pub fn check_keys(&self, known: &[&str]) -> Result<(), PolicyError> {
        match self.entries.keys().find(|key| !known.contains(&key.as_str())) {
            None => Ok(()),
            Some(key) => Err(PolicyError::InvalidConfig(format!(
                "unknown key `{key}` (known keys: {})",
                known.join(", ")
            ))),
        }
    }

    /// The raw value of `key`, if present.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// The value of `key` as a finite number; `NaN` and infinities are refused.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, PolicyError> {
        let Some(value) = self.get_str(key) else {
            return Ok(None);
        };
        match value.trim().parse::<f64>() {
            Ok(number) if number.is_finite() => Ok(Some(number)),
            _ => Err(invalid_value(key, "a finite number", value)),
        }
    }

    /// The value of `key` as an unsigned 64-bit integer.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, PolicyError> {
        self.get_parsed(key, "an integer from 0 to 18446744073709551615")
    }

    /// The value of `key` as an unsigned 32-bit integer, e.g. a sensor id.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, PolicyError> {
        self.get_parsed(key, "an integer from 0 to 4294967295")
    }

    /// The value of `key` as a boolean: exactly `true` or `false`.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, PolicyError> {
        self.get_parsed(key, "`true` or `false`")
    }

    /// The raw value of `key`; a missing key is an `invalid-config` error.
    pub fn require_str(&self, key: &str) -> Result<&str, PolicyError> {
        self.get_str(key).ok_or_else(|| missing(key))
    }

    /// Like [`Config::get_f64`], but a missing key is an `invalid-config` error.
    pub fn require_f64(&self, key: &str) -> Result<f64, PolicyError> {
        self.get_f64(key)?.ok_or_else(|| missing(key))
    }

    /// Like [`Config::get_u64`], but a missing key is an `invalid-config` error.
    pub fn require_u64(&self, key: &str) -> Result<u64, PolicyError> {
        self.get_u64(key)?.ok_or_else(|| missing(key))
    }

    /// Like [`Config::get_u32`], but a missing key is an `invalid-config` error.
    pub fn require_u32(&self, key: &str) -> Result<u32, PolicyError> {
        self.get_u32(key)?.ok_or_else(|| missing(key))
    }

    fn get_parsed<T: FromStr>(&self, key: &str, expected: &str) -> Result<Option<T>, PolicyError> {
        let Some(value) = self.get_str(key) else {
            return Ok(None);
        };
        match value.trim().parse::<T>() {
            Ok(parsed) => Ok(Some(parsed)),
            Err(_) => Err(invalid_value(key, expected, value)),
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (key, value) in self.iter() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// An `invalid-config` error for a key that is present but unusable; use it for checks beyond the getters', such as ranges.
///
/// ```
/// use molt_policy_sdk::{config_error, PolicyError};
///
/// assert_eq!(
///     config_error("window", "must be at least 1"),
///     PolicyError::InvalidConfig("key `window`: must be at least 1".into()),
/// );
/// ```
pub fn config_error(key: &str, problem: impl fmt::Display) -> PolicyError {
    PolicyError::InvalidConfig(format!("key `{key}`: {problem}"))
}

fn invalid_value(key: &str, expected: &str, value: &str) -> PolicyError {
    config_error(key, format_args!("expected {expected}, got `{value}`"))
}

fn missing(key: &str) -> PolicyError {
    PolicyError::InvalidConfig(format!("missing key `{key}`"))
}
