//! Every refusal of the client workflow, typed.

use std::path::PathBuf;

use crate::digest::DigestError;
use crate::download::FetchError;

/// Why the client workflow refused metadata or could not run. Each variant
/// names the role, the limit or the rule (with its section of the TUF
/// specification where one applies).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TufError {
    /// A file of the metadata store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The metadata store holds no root to start from.
    #[error("{path} holds no trusted root.json; pin the repository's root first")]
    NoTrustedRoot {
        /// The store's directory.
        path: PathBuf,
    },
    /// The trusted root does not parse or is not signed by its own root role
    /// (5.2).
    #[error("trusted root metadata is not valid: {reason}; obtain root.json from the repository owner again")]
    BadTrustedRoot {
        /// Why.
        reason: String,
    },
    /// Metadata is not valid TUF metadata (JSON, fields, values).
    #[error("{role} metadata is malformed: {reason}")]
    Malformed {
        /// The role.
        role: String,
        /// Why.
        reason: String,
    },
    /// Metadata of another role's type was served in this role's place.
    #[error("{role} metadata has _type {found:?}; the repository served the wrong file or is under attack")]
    WrongType {
        /// The role expected.
        role: String,
        /// The `_type` it has.
        found: String,
    },
    /// Fewer valid signatures from distinct keys of the role than its
    /// threshold (5.3.4, 5.4.2, 5.5.3, 5.6.3).
    #[error(
        "{role} metadata has {valid} valid signatures, below its threshold of {threshold}; the repository is misconfigured or under attack"
    )]
    BelowThreshold {
        /// The role.
        role: String,
        /// Valid signatures by distinct keys the delegator names for the
        /// role.
        valid: u64,
        /// Required.
        threshold: u64,
    },
    /// Two signatures carry one key ID ("The keyid MUST be unique in the
    /// signatures array", 4.2).
    #[error("{role} metadata carries more than one signature by key {keyid}; the repository is under attack")]
    DuplicateSignature {
        /// The role.
        role: String,
        /// The key ID.
        keyid: String,
    },
    /// Metadata expired at or before the fixed update start time: a freeze
    /// attack, or the repository was not refreshed (5.3.10, 5.4.4, 5.5.6,
    /// 5.6.5).
    #[error(
        "{role} metadata expired at {expires}; the repository must refresh it (`molt repo refresh`), or the clock is wrong"
    )]
    Expired {
        /// The role.
        role: String,
        /// Its expiry.
        expires: String,
    },
    /// A version lower than the trusted one (5.3.5, 5.4.3, 5.5.5).
    #[error("{role} metadata version {offered} is older than the trusted version {trusted}; refusing a rollback")]
    Rollback {
        /// The role.
        role: String,
        /// The trusted version.
        trusted: u64,
        /// The offered version.
        offered: u64,
    },
    /// A root version other than the trusted one plus one (5.3.5).
    #[error("root metadata jumps from trusted version {trusted} to {offered}; root versions must be consecutive")]
    NonConsecutiveRoot {
        /// The trusted version.
        trusted: u64,
        /// The offered version.
        offered: u64,
    },
    /// The update stopped walking root versions at `root_updates_max`
    /// (5.3.3) and a later step then failed: the repository may have
    /// rotated more often than the limit allows.
    #[error(
        "stopped after root_updates_max = {limit} root updates in one update, and then: {source}; raise root_updates_max if the repository rotated its root more often"
    )]
    TooManyRootUpdates {
        /// `root_updates_max`.
        limit: u64,
        /// The later failure.
        source: Box<TufError>,
    },
    /// A metadata file's version is not the one its parent lists (5.5.4,
    /// 5.6.4).
    #[error(
        "{role} metadata is version {fetched} but {parent} lists version {expected}; the repository is inconsistent or under attack"
    )]
    VersionMismatch {
        /// The role.
        role: String,
        /// Version the file carries.
        fetched: u64,
        /// Version the parent lists.
        expected: u64,
        /// The metadata listing it.
        parent: String,
    },
    /// A metadata file's length is not the one its parent lists.
    #[error(
        "{role} metadata is {actual} bytes but {parent} lists {listed}; the repository is inconsistent or under attack"
    )]
    LengthMismatch {
        /// The role.
        role: String,
        /// Length listed.
        listed: u64,
        /// Length served.
        actual: u64,
        /// The metadata listing it.
        parent: String,
    },
    /// A metadata file's digest is not the one its parent lists (5.5.2,
    /// 5.6.2).
    #[error(
        "{role} metadata does not match the {algorithm} digest {parent} lists; the repository is inconsistent or under attack"
    )]
    HashMismatch {
        /// The role.
        role: String,
        /// The algorithm that differed.
        algorithm: &'static str,
        /// The metadata listing it.
        parent: String,
    },
    /// The hashes listed for a file cannot be verified by molt.
    #[error("{what} {source}")]
    Digest {
        /// The file (metadata role or target path).
        what: String,
        /// Why.
        source: DigestError,
    },
    /// A role the trusted snapshot lists is missing from the new one (5.5.5).
    #[error("snapshot no longer lists {role}, which the trusted snapshot lists; refusing a rollback")]
    RoleRemoved {
        /// The role.
        role: String,
    },
    /// A targets role the search needs is not listed in the snapshot; only
    /// lookups that need the role fail.
    #[error("{role} is not listed in the trusted snapshot; the repository is inconsistent")]
    NotInSnapshot {
        /// The role.
        role: String,
    },
    /// The delegation search for a target visited `delegated_roles_max`
    /// roles without an answer (5.6.7.1).
    #[error(
        "looking up {target} visited delegated_roles_max = {limit} targets roles without an answer; the delegation graph is too large or hostile"
    )]
    DelegatedRolesExceeded {
        /// The target path.
        target: String,
        /// `delegated_roles_max`.
        limit: u64,
    },
    /// A metadata file the workflow needs is not on the server.
    #[error("{url} is missing from the repository; check the source URL or directory")]
    MissingMetadata {
        /// The file.
        url: String,
    },
    /// A file is longer than a named limit (endless data, oversized
    /// metadata).
    #[error("{what} exceeds {max} bytes ({limit}); the server sent too much data")]
    LimitExceeded {
        /// The file.
        what: String,
        /// The limit's name (a `TufLimits` field, or the length a parent
        /// lists).
        limit: &'static str,
        /// The limit.
        max: u64,
    },
    /// Metadata could not be fetched.
    #[error("{what}: {source}; check the network and try again")]
    Fetch {
        /// The role.
        what: String,
        /// Why.
        source: Box<FetchError>,
    },
    /// `find_target` was called before `refresh` succeeded.
    #[error("the trusted metadata is not refreshed; run the update first")]
    NotRefreshed,
}
