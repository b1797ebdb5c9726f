//! Parsing and signature verification of TUF metadata files, from their
//! bytes.
//!
//! Signatures are checked over the OLPC canonical JSON of the `signed`
//! value exactly as it was received, unknown fields included ("Implementers
//! who encounter undefined attribute-value pairs in the format must include
//! the data when calculating hashes or verifying signatures", section 4),
//! never over a re-serialisation of typed fields.
//!
//! Why not tough's schema types: `tough::schema::Hashes` requires a
//! `sha256` in every hashes object, so metadata listing only `sha512` does
//! not parse; `tough::schema::key::Key` is a closed enum, so one key of a
//! scheme tough lacks (`rsa-pkcs1v15-sha256`) fails the whole root; and
//! `tough::schema::PathPattern` is a globset glob whose `*` matches `/`.
//! tough's decoders for key material (`Decoded<RsaPem>`,
//! `Decoded<EcdsaFlex>`) are used as they are.

use std::collections::{BTreeMap, BTreeSet};

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tough::schema::decoded::{Decoded, EcdsaFlex, RsaPem};

use crate::tuf::TufError;
use crate::tuf::pattern;

/// The top-level role names; no delegated role may take one.
pub(crate) const TOP_LEVEL: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

/// One verified-to-parse metadata file: its typed `signed` part, the
/// canonical bytes signatures are checked over, and its signatures.
#[derive(Debug, Clone)]
pub(crate) struct Metadata<T> {
    pub(crate) signed: T,
    canonical: Vec<u8>,
    /// Key ID to signature bytes; `None` where the signature is not hex
    /// (it can never verify).
    signatures: BTreeMap<String, Option<Vec<u8>>>,
}

/// The fields every role has.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub(crate) version: u64,
    pub(crate) expires: jiff::Timestamp,
    pub(crate) expires_text: String,
}

/// A role's `signed` part, as parsed.
pub(crate) trait Role: Sized {
    /// The `_type`.
    const TYPE: &'static str;
    /// Parses and validates `signed` (already known to be of `TYPE`).
    fn from_value(role: &str, signed: Value) -> Result<Self, TufError>;
    fn common(&self) -> &Common;
}

/// A public key molt can verify with.
#[derive(Debug, Clone)]
pub(crate) struct PublicKey {
    algorithm: &'static dyn VerificationAlgorithm,
    /// The key material as the algorithm takes it; also what makes two key
    /// IDs the same key.
    material: Vec<u8>,
}

impl PublicKey {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(self.algorithm, &self.material)
            .verify(message, signature)
            .is_ok()
    }
}

/// Key IDs to keys; `None` for a key of a type or scheme molt cannot
/// verify (it never counts toward a threshold, and does not make the
/// metadata invalid).
pub(crate) type Keyring = BTreeMap<String, Option<PublicKey>>;

/// The keys and threshold a delegator gives a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleKeys {
    pub(crate) keyids: Vec<String>,
    pub(crate) threshold: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Root {
    pub(crate) common: Common,
    pub(crate) consistent_snapshot: bool,
    pub(crate) keys: Keyring,
    pub(crate) roles: BTreeMap<String, RoleKeys>,
}

#[derive(Debug, Clone)]
pub(crate) struct Timestamp {
    pub(crate) common: Common,
    pub(crate) snapshot: MetaFile,
}

#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) common: Common,
    /// `<role>.json` to its listing.
    pub(crate) meta: BTreeMap<String, MetaFile>,
}

#[derive(Debug, Clone)]
pub(crate) struct Targets {
    pub(crate) common: Common,
    pub(crate) targets: BTreeMap<String, TargetFile>,
    pub(crate) delegations: Option<Delegations>,
}

/// How a parent lists a metadata file.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct MetaFile {
    pub(crate) version: u64,
    #[serde(default)]
    pub(crate) length: Option<u64>,
    #[serde(default)]
    pub(crate) hashes: Option<BTreeMap<String, String>>,
}

/// A target as a targets role lists it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TargetFile {
    pub(crate) length: u64,
    pub(crate) hashes: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) custom: Option<Value>,
}

#[derive(Debug, Clone)]
pub(crate) struct Delegations {
    pub(crate) keys: Keyring,
    pub(crate) roles: Vec<DelegatedRole>,
}

#[derive(Debug, Clone)]
pub(crate) struct DelegatedRole {
    pub(crate) name: String,
    pub(crate) keys: RoleKeys,
    pub(crate) terminating: bool,
    pub(crate) scope: Scope,
}

/// Which target paths a delegation trusts its role for.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    /// `paths`: PATHPATTERNs.
    Paths(Vec<String>),
    /// `path_hash_prefixes`: prefixes of the hex sha256 of the path.
    HashPrefixes(Vec<String>),
    /// Neither: the role is trusted for no path.
    Nothing,
}

impl DelegatedRole {
    /// Whether the delegation trusts the role for `target`.
    pub(crate) fn trusts(&self, target: &str) -> bool {
        match &self.scope {
            Scope::Paths(patterns) => patterns.iter().any(|pattern| pattern::matches(pattern, target)),
            Scope::HashPrefixes(prefixes) => {
                let digest = crate::digest::Algorithm::Sha256.digest(target.as_bytes());
                let digest = hex::encode(digest);
                prefixes
                    .iter()
                    .any(|prefix| digest.starts_with(prefix.to_ascii_lowercase().as_str()))
            }
            Scope::Nothing => false,
        }
    }
}

fn malformed(role: &str, reason: impl std::fmt::Display) -> TufError {
    TufError::Malformed {
        role: role.to_owned(),
        reason: reason.to_string(),
    }
}

#[derive(Deserialize)]
struct Envelope {
    signed: Value,
    signatures: Vec<SignatureEntry>,
}

#[derive(Deserialize)]
struct SignatureEntry {
    keyid: String,
    sig: String,
}

/// The OLPC canonical JSON of `value`, as signatures are made over it.
pub(crate) fn canonical_json(value: &Value) -> Result<Vec<u8>, serde_json::Error> {
    use serde::Serialize as _;
    let mut bytes = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut serializer)?;
    Ok(bytes)
}

impl<T: Role> Metadata<T> {
    /// Parses `bytes` as `role`'s metadata: JSON, `_type`, unique signature
    /// key IDs, the role's fields. Signatures are not checked here.
    pub(crate) fn parse(role: &str, bytes: &[u8]) -> Result<Metadata<T>, TufError> {
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(|error| malformed(role, error))?;
        let found = envelope
            .signed
            .get("_type")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(role, "no _type string"))?;
        if found != T::TYPE {
            return Err(TufError::WrongType {
                role: role.to_owned(),
                found: found.to_owned(),
            });
        }
        let mut signatures = BTreeMap::new();
        for entry in envelope.signatures {
            let sig = hex::decode(&entry.sig).ok();
            if signatures.insert(entry.keyid.clone(), sig).is_some() {
                return Err(TufError::DuplicateSignature {
                    role: role.to_owned(),
                    keyid: entry.keyid,
                });
            }
        }
        let canonical = canonical_json(&envelope.signed).map_err(|error| malformed(role, error))?;
        let signed = T::from_value(role, envelope.signed)?;
        Ok(Metadata {
            signed,
            canonical,
            signatures,
        })
    }

    pub(crate) fn version(&self) -> u64 {
        self.signed.common().version
    }

    /// Whether it expired at or before `now` ("The expiration timestamp ...
    /// MUST be higher than the fixed update start time").
    pub(crate) fn expired(&self, now: jiff::Timestamp) -> bool {
        self.signed.common().expires <= now
    }

    pub(crate) fn expired_error(&self, role: &str) -> TufError {
        TufError::Expired {
            role: role.to_owned(),
            expires: self.signed.common().expires_text.clone(),
        }
    }

    /// Checks that a threshold of `role_keys` signed it. Each key counts
    /// once, however many key IDs name it.
    pub(crate) fn verify(&self, role: &str, keys: &Keyring, role_keys: &RoleKeys) -> Result<(), TufError> {
        let mut counted: Vec<&[u8]> = Vec::new();
        for keyid in &role_keys.keyids {
            let (Some(Some(key)), Some(Some(sig))) = (keys.get(keyid), self.signatures.get(keyid)) else {
                continue;
            };
            if counted.contains(&key.material.as_slice()) {
                continue;
            }
            if key.verify(&self.canonical, sig) {
                counted.push(&key.material);
            }
        }
        let valid = counted.len() as u64;
        if valid < role_keys.threshold {
            return Err(TufError::BelowThreshold {
                role: role.to_owned(),
                valid,
                threshold: role_keys.threshold,
            });
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct CommonJson {
    spec_version: String,
    version: u64,
    expires: String,
}

fn common(role: &str, signed: &Value) -> Result<Common, TufError> {
    let json = CommonJson::deserialize(signed).map_err(|error| malformed(role, error))?;
    // "clients MUST verify that spec_version matches the expected version
    // number"; molt implements 1.x and takes any 1.x (or 1.x.y) as a match.
    let parts: Vec<&str> = json.spec_version.split('.').collect();
    let numeric = parts
        .iter()
        .all(|part| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit()));
    if !(2..=3).contains(&parts.len()) || !numeric || parts[0] != "1" {
        return Err(malformed(
            role,
            format!(
                "spec_version {:?} is not 1.x; molt implements TUF 1.0",
                json.spec_version
            ),
        ));
    }
    if json.version == 0 {
        return Err(malformed(role, "version 0; versions start at 1"));
    }
    let expires: jiff::Timestamp = json
        .expires
        .parse()
        .map_err(|error| malformed(role, format!("expires {:?}: {error}", json.expires)))?;
    Ok(Common {
        version: json.version,
        expires,
        expires_text: json.expires,
    })
}

fn parse_fields<F: DeserializeOwned>(role: &str, signed: Value) -> Result<F, TufError> {
    serde_json::from_value(signed).map_err(|error| malformed(role, error))
}

#[derive(Deserialize)]
struct RoleKeysJson {
    keyids: Vec<String>,
    threshold: u64,
}

fn role_keys(role: &str, of: &str, json: RoleKeysJson) -> Result<RoleKeys, TufError> {
    if json.threshold == 0 {
        return Err(malformed(role, format!("{of} has threshold 0; thresholds start at 1")));
    }
    let unique: BTreeSet<&String> = json.keyids.iter().collect();
    if unique.len() != json.keyids.len() {
        return Err(malformed(role, format!("{of} lists a key ID twice")));
    }
    Ok(RoleKeys {
        keyids: json.keyids,
        threshold: json.threshold,
    })
}

#[derive(Deserialize)]
struct KeyJson {
    keytype: String,
    scheme: String,
    keyval: KeyValJson,
}

#[derive(Deserialize)]
struct KeyValJson {
    public: String,
}

/// The key a KEY object describes, if molt can verify with it: the three
/// schemes the specification recommends, and `rsa-pkcs1v15-sha256`
/// (securesystemslib's other RSA scheme). Key IDs are taken as given:
/// metadata in use (sigstore's, tuf-on-ci's) carries key IDs that are not
/// the sha256 of the key's canonical form, as python-tuf and tough accept;
/// a key counts once toward a threshold however many IDs name it.
fn public_key(value: &Value) -> Option<PublicKey> {
    let key = KeyJson::deserialize(value).ok()?;
    let public = Value::String(key.keyval.public);
    let (algorithm, material): (&'static dyn VerificationAlgorithm, Vec<u8>) =
        match (key.keytype.as_str(), key.scheme.as_str()) {
            ("ed25519", "ed25519") => {
                let material = hex::decode(public.as_str()?).ok()?;
                (&signature::ED25519, material)
            }
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
                let material: Decoded<EcdsaFlex> = serde_json::from_value(public).ok()?;
                (&signature::ECDSA_P256_SHA256_ASN1, material.into_vec())
            }
            ("rsa", "rsassa-pss-sha256") => {
                let material: Decoded<RsaPem> = serde_json::from_value(public).ok()?;
                (&signature::RSA_PSS_2048_8192_SHA256, material.into_vec())
            }
            ("rsa", "rsa-pkcs1v15-sha256") => {
                let material: Decoded<RsaPem> = serde_json::from_value(public).ok()?;
                (&signature::RSA_PKCS1_2048_8192_SHA256, material.into_vec())
            }
            _ => return None,
        };
    Some(PublicKey { algorithm, material })
}

fn keyring(keys: BTreeMap<String, Value>) -> Keyring {
    keys.into_iter()
        .map(|(keyid, value)| {
            let key = public_key(&value);
            (keyid, key)
        })
        .collect()
}

#[derive(Deserialize)]
struct RootJson {
    #[serde(default)]
    consistent_snapshot: bool,
    keys: BTreeMap<String, Value>,
    roles: BTreeMap<String, RoleKeysJson>,
}

impl Role for Root {
    const TYPE: &'static str = "root";

    fn from_value(role: &str, signed: Value) -> Result<Root, TufError> {
        let common = common(role, &signed)?;
        let json: RootJson = parse_fields(role, signed)?;
        let mut roles = BTreeMap::new();
        for (name, keys) in json.roles {
            let keys = role_keys(role, &format!("role {name}"), keys)?;
            roles.insert(name, keys);
        }
        for required in TOP_LEVEL {
            if !roles.contains_key(required) {
                return Err(malformed(role, format!("no keys for the {required} role")));
            }
        }
        Ok(Root {
            common,
            consistent_snapshot: json.consistent_snapshot,
            keys: keyring(json.keys),
            roles,
        })
    }

    fn common(&self) -> &Common {
        &self.common
    }
}

impl Root {
    /// The keys the root gives top-level role `role`.
    pub(crate) fn role(&self, role: &str) -> &RoleKeys {
        // Every top-level role is present: `from_value` checked.
        &self.roles[role]
    }
}

#[derive(Deserialize)]
struct TimestampJson {
    meta: BTreeMap<String, MetaFile>,
}

impl Role for Timestamp {
    const TYPE: &'static str = "timestamp";

    fn from_value(role: &str, signed: Value) -> Result<Timestamp, TufError> {
        let common = common(role, &signed)?;
        let mut json: TimestampJson = parse_fields(role, signed)?;
        let snapshot = json
            .meta
            .remove("snapshot.json")
            .ok_or_else(|| malformed(role, "meta lists no snapshot.json"))?;
        check_metafile(role, "snapshot.json", &snapshot)?;
        Ok(Timestamp { common, snapshot })
    }

    fn common(&self) -> &Common {
        &self.common
    }
}

fn check_metafile(role: &str, name: &str, meta: &MetaFile) -> Result<(), TufError> {
    if meta.version == 0 {
        return Err(malformed(role, format!("{name} is listed at version 0")));
    }
    if meta.hashes.as_ref().is_some_and(BTreeMap::is_empty) {
        return Err(malformed(role, format!("{name} is listed with an empty hashes object")));
    }
    Ok(())
}

#[derive(Deserialize)]
struct SnapshotJson {
    meta: BTreeMap<String, MetaFile>,
}

impl Role for Snapshot {
    const TYPE: &'static str = "snapshot";

    fn from_value(role: &str, signed: Value) -> Result<Snapshot, TufError> {
        let common = common(role, &signed)?;
        let json: SnapshotJson = parse_fields(role, signed)?;
        for (name, meta) in &json.meta {
            check_metafile(role, name, meta)?;
        }
        Ok(Snapshot {
            common,
            meta: json.meta,
        })
    }

    fn common(&self) -> &Common {
        &self.common
    }
}

#[derive(Deserialize)]
struct TargetsJson {
    targets: BTreeMap<String, TargetFile>,
    #[serde(default)]
    delegations: Option<DelegationsJson>,
}

#[derive(Deserialize)]
struct DelegationsJson {
    keys: BTreeMap<String, Value>,
    #[serde(default)]
    roles: Option<Vec<DelegatedRoleJson>>,
}

#[derive(Deserialize)]
struct DelegatedRoleJson {
    name: String,
    keyids: Vec<String>,
    threshold: u64,
    terminating: bool,
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    path_hash_prefixes: Option<Vec<String>>,
}

impl Role for Targets {
    const TYPE: &'static str = "targets";

    fn from_value(role: &str, signed: Value) -> Result<Targets, TufError> {
        let common = common(role, &signed)?;
        let json: TargetsJson = parse_fields(role, signed)?;
        let delegations = match json.delegations {
            None => None,
            Some(delegations) => {
                let Some(roles_json) = delegations.roles else {
                    return Err(malformed(
                        role,
                        "delegations without a roles list (succinct_roles is not TUF 1.0 and molt does not support it)",
                    ));
                };
                let mut names = BTreeSet::new();
                let mut roles = Vec::with_capacity(roles_json.len());
                for delegated in roles_json {
                    if delegated.name.is_empty() || TOP_LEVEL.contains(&delegated.name.as_str()) {
                        return Err(malformed(
                            role,
                            format!("delegates to {:?}, a name no delegated role may take", delegated.name),
                        ));
                    }
                    if !names.insert(delegated.name.clone()) {
                        return Err(malformed(
                            role,
                            format!("delegates to {:?} twice; role names must be unique", delegated.name),
                        ));
                    }
                    let scope = match (delegated.paths, delegated.path_hash_prefixes) {
                        (Some(_), Some(_)) => {
                            return Err(malformed(
                                role,
                                format!(
                                    "delegation to {:?} sets both paths and path_hash_prefixes",
                                    delegated.name
                                ),
                            ));
                        }
                        (Some(paths), None) => Scope::Paths(paths),
                        (None, Some(prefixes)) => Scope::HashPrefixes(prefixes),
                        (None, None) => Scope::Nothing,
                    };
                    let keys = role_keys(
                        role,
                        &format!("delegation to {:?}", delegated.name),
                        RoleKeysJson {
                            keyids: delegated.keyids,
                            threshold: delegated.threshold,
                        },
                    )?;
                    roles.push(DelegatedRole {
                        name: delegated.name,
                        keys,
                        terminating: delegated.terminating,
                        scope,
                    });
                }
                Some(Delegations {
                    keys: keyring(delegations.keys),
                    roles,
                })
            }
        };
        Ok(Targets {
            common,
            targets: json.targets,
            delegations,
        })
    }

    fn common(&self) -> &Common {
        &self.common
    }
}

#[cfg(test)]
mod tests;
