//! Semantic versions of images, as anti-rollback compares them.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

/// A `MAJOR.MINOR.PATCH` version.
///
/// Pre-release and build suffixes are deliberately absent: anti-rollback
/// needs a total order that every device computes the same way, and the
/// precedence rules for pre-release identifiers are a frequent source of
/// disagreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Version {
    /// Incompatible changes.
    pub major: u32,
    /// Compatible additions.
    pub minor: u32,
    /// Fixes.
    pub patch: u32,
}

impl Version {
    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Version {
        Version { major, minor, patch }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A string that is not `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid version: expected MAJOR.MINOR.PATCH with decimal numbers and no leading zeros")]
pub struct ParseVersionError;

impl FromStr for Version {
    type Err = ParseVersionError;

    fn from_str(text: &str) -> Result<Version, ParseVersionError> {
        let mut parts = text.split('.');
        let mut next = || -> Result<u32, ParseVersionError> {
            let part = parts.next().ok_or(ParseVersionError)?;
            let leading_zero = part.len() > 1 && part.starts_with('0');
            if part.is_empty() || leading_zero || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseVersionError);
            }
            part.parse().map_err(|_| ParseVersionError)
        };
        let version = Version::new(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(ParseVersionError);
        }
        Ok(version)
    }
}
