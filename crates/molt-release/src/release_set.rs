//! The release set: one consistent device configuration, published as a
//! single TUF target.
//!
//! A release set pins everything a device runs: the agent image for each
//! hardware class and every policy module, each by version, TUF target name,
//! length and sha256. A device installs a release set all or nothing.
//!
//! The wire form is canonical JSON (OLPC, as TUF metadata uses), so that the
//! same set always has the same bytes and therefore the same TUF digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The only release-set format this build reads and writes.
pub const FORMAT: u32 = 1;
/// The policy contract this build's runtime implements (`wit/policy.wit`).
pub const CONTRACT: &str = "molt:policy@0.1.0";
/// TUF target names of release sets start with this, followed by the set's
/// version: `release-sets/7.json`.
pub const TARGET_PREFIX: &str = "release-sets/";
/// Upper bound on an encoded release set (`release_set_bytes_max`).
pub const RELEASE_SET_BYTES_MAX: u64 = 1 << 20;
/// Upper bound on the number of policy modules in one set (`policies_max`).
pub const POLICIES_MAX: usize = 256;
/// Upper bound on the number of hardware classes in one set (`agents_max`).
pub const AGENTS_MAX: usize = 64;

/// One consistent device configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSet {
    /// Always [`FORMAT`].
    pub format: u32,
    /// Monotonic sequence number of this set; its TUF target is
    /// `release-sets/<version>.json`.
    pub version: u64,
    /// Anti-rollback counter: a device never installs a set with a lower one
    /// than it has committed.
    pub security_counter: u64,
    /// The policy contract the modules implement, e.g. [`CONTRACT`].
    pub contract: String,
    /// The oldest agent that may run this set's policies.
    pub min_agent_version: String,
    /// Agent image per hardware class. Empty in a policies-only set, which
    /// a device of any class installs without touching its agent slots.
    pub agents: BTreeMap<String, AgentImage>,
    /// Policy modules by name.
    pub policies: BTreeMap<String, PolicyModule>,
}

/// A verified reference to one target file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// TUF target name of the bytes.
    pub target: String,
    /// Exact length in bytes.
    pub length: u64,
    /// Lowercase hex sha256.
    pub sha256: String,
}

/// The agent image for one hardware class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentImage {
    /// `major.minor.patch`.
    pub version: String,
    /// The image bytes.
    pub image: Part,
    /// The molt-core manifest envelope for the image, signed by the image
    /// keys; molt-core's `Engine::stage` checks it again on the device.
    pub manifest: Part,
}

/// One policy module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyModule {
    /// `major.minor.patch`.
    pub version: String,
    /// The component's `.wasm` bytes.
    pub module: Part,
    /// The policy's configuration, the key/value pairs `init` and
    /// `restore` receive (`wit/policy.wit`).
    pub config: BTreeMap<String, String>,
}

/// Why bytes are not a release set this build accepts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseSetError {
    /// Over [`RELEASE_SET_BYTES_MAX`].
    #[error("release set is {size} bytes, over the limit of {limit} (release_set_bytes_max)")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not JSON of the release-set shape.
    #[error("release set is malformed: {0}")]
    Malformed(String),
    /// A format this build does not read.
    #[error("release set format {found} is not {expected}; update the agent before this release")]
    Format {
        /// In the set.
        found: u32,
        /// [`FORMAT`].
        expected: u32,
    },
    /// More policies or agents than allowed.
    #[error("release set has {count} {what}, over the limit of {limit} ({limit_name})")]
    TooMany {
        /// `policies` or `agents`.
        what: &'static str,
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
        /// The limit's name.
        limit_name: &'static str,
    },
    /// A field is out of range.
    #[error("release set field {field} is invalid: {reason}")]
    InvalidField {
        /// Which field.
        field: String,
        /// Why.
        reason: String,
    },
}

/// The TUF target name of release set `version`.
pub fn target_name(version: u64) -> String {
    format!("{TARGET_PREFIX}{version}.json")
}

/// The release-set version a TUF target name denotes, if it names one.
pub fn version_of_target(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(TARGET_PREFIX)?.strip_suffix(".json")?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

impl Part {
    /// The sha256 as bytes, if it is 64 lowercase hex digits.
    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        if self.sha256.len() != 64 || self.sha256.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut digest).ok()?;
        Some(digest)
    }
}

impl ReleaseSet {
    /// The canonical JSON encoding (OLPC): the same set always gives the
    /// same bytes.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, ReleaseSetError> {
        let mut bytes = Vec::new();
        let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, olpc_cjson::CanonicalFormatter::new());
        self.serialize(&mut serializer)
            .map_err(|error| ReleaseSetError::Malformed(error.to_string()))?;
        Ok(bytes)
    }

    /// Decodes and validates a release set, bounded by
    /// [`RELEASE_SET_BYTES_MAX`].
    pub fn from_json(bytes: &[u8]) -> Result<ReleaseSet, ReleaseSetError> {
        if bytes.len() as u64 > RELEASE_SET_BYTES_MAX {
            return Err(ReleaseSetError::TooLarge {
                size: bytes.len() as u64,
                limit: RELEASE_SET_BYTES_MAX,
            });
        }
        let set: ReleaseSet =
            serde_json::from_slice(bytes).map_err(|error| ReleaseSetError::Malformed(error.to_string()))?;
        set.validate()?;
        Ok(set)
    }

    /// Checks the limits and field ranges every accepted set satisfies.
    pub fn validate(&self) -> Result<(), ReleaseSetError> {
        if self.format != FORMAT {
            return Err(ReleaseSetError::Format {
                found: self.format,
                expected: FORMAT,
            });
        }
        if self.policies.len() > POLICIES_MAX {
            return Err(ReleaseSetError::TooMany {
                what: "policies",
                count: self.policies.len(),
                limit: POLICIES_MAX,
                limit_name: "policies_max",
            });
        }
        if self.agents.len() > AGENTS_MAX {
            return Err(ReleaseSetError::TooMany {
                what: "agents",
                count: self.agents.len(),
                limit: AGENTS_MAX,
                limit_name: "agents_max",
            });
        }
        check_version("min_agent_version", &self.min_agent_version)?;
        for (class, agent) in &self.agents {
            check_name("agents", class)?;
            check_version(&format!("agents.{class}.version"), &agent.version)?;
            check_part(&format!("agents.{class}.image"), &agent.image)?;
            check_part(&format!("agents.{class}.manifest"), &agent.manifest)?;
        }
        for (name, policy) in &self.policies {
            check_name("policies", name)?;
            check_version(&format!("policies.{name}.version"), &policy.version)?;
            check_part(&format!("policies.{name}.module"), &policy.module)?;
        }
        Ok(())
    }

    /// Every part of the set with the field that names it:
    /// `("agents.<class>.image", part)`, ...
    pub fn parts(&self) -> Vec<(String, &Part)> {
        let mut parts = Vec::new();
        for (class, agent) in &self.agents {
            parts.push((format!("agents.{class}.image"), &agent.image));
            parts.push((format!("agents.{class}.manifest"), &agent.manifest));
        }
        for (name, policy) in &self.policies {
            parts.push((format!("policies.{name}.module"), &policy.module));
        }
        parts
    }
}

/// Hardware classes, policy names and version strings become parts of TUF
/// target names and file names: ASCII letters, digits and `-_.`, not
/// starting with a dot, at most 64 bytes.
pub fn check_name(field: &str, value: &str) -> Result<(), ReleaseSetError> {
    let valid = !value.is_empty()
        && value.len() <= molt_core::NAME_LEN_MAX
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(ReleaseSetError::InvalidField {
            field: field.to_owned(),
            reason: format!("{value:?} must be 1-64 ASCII letters, digits or -_. and not start with a dot"),
        });
    }
    Ok(())
}

fn check_version(field: &str, value: &str) -> Result<(), ReleaseSetError> {
    value
        .parse::<molt_core::Version>()
        .map(|_| ())
        .map_err(|error| ReleaseSetError::InvalidField {
            field: field.to_owned(),
            reason: format!("{value:?}: {error}"),
        })
}

fn check_part(field: &str, part: &Part) -> Result<(), ReleaseSetError> {
    if part.sha256_bytes().is_none() {
        return Err(ReleaseSetError::InvalidField {
            field: format!("{field}.sha256"),
            reason: "must be 64 lowercase hex digits".to_owned(),
        });
    }
    if part.length == 0 {
        return Err(ReleaseSetError::InvalidField {
            field: format!("{field}.length"),
            reason: "a part cannot be empty".to_owned(),
        });
    }
    if part.target.is_empty()
        || part.target.starts_with('/')
        || part.target.split('/').any(|c| c == ".." || c.is_empty())
    {
        return Err(ReleaseSetError::InvalidField {
            field: format!("{field}.target"),
            reason: format!("{:?} is not a relative target path", part.target),
        });
    }
    Ok(())
}
