//! Publishing delegation graphs: delegated targets roles, their keys and
//! the snapshot that lists them, written as a repository (or an attacker
//! holding a delegated key) would. molt's repository tools do not create
//! delegations yet, so the tests build the metadata as JSON and sign its
//! canonical form.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;

use ed25519_dalek::Signer as _;
use molt_release::keys::Role;
use molt_release::metadata;
use molt_release::release_set::{self, Part, PolicyModule, ReleaseSet};
use molt_release::repo::consistent_target_path;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Hashes, Metafile, Snapshot, Timestamp};

use crate::world::World;

/// One delegation: the role it trusts and for which paths.
#[derive(Debug, Clone)]
pub(crate) struct Delegation {
    pub(crate) role: String,
    pub(crate) paths: Vec<String>,
    pub(crate) terminating: bool,
}

pub(crate) fn delegate(role: &str, paths: &[&str]) -> Delegation {
    Delegation {
        role: role.to_owned(),
        paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        terminating: false,
    }
}

/// A delegated targets role's metadata.
#[derive(Debug, Clone, Default)]
pub(crate) struct RoleMeta {
    pub(crate) name: String,
    /// Targets it lists: name and bytes.
    pub(crate) targets: Vec<(String, Vec<u8>)>,
    /// Its own delegations, in order.
    pub(crate) delegations: Vec<Delegation>,
    /// Left out of the snapshot (a repository that forgot it).
    pub(crate) not_in_snapshot: bool,
}

pub(crate) fn role(name: &str, targets: &[(&str, &[u8])], delegations: Vec<Delegation>) -> RoleMeta {
    RoleMeta {
        name: name.to_owned(),
        targets: targets
            .iter()
            .map(|(target, bytes)| ((*target).to_owned(), bytes.to_vec()))
            .collect(),
        delegations,
        not_in_snapshot: false,
    }
}

/// The new publication: what the top-level targets role adds and
/// delegates, and the delegated roles.
#[derive(Debug, Clone, Default)]
pub(crate) struct Graph {
    pub(crate) top_targets: Vec<(String, Vec<u8>)>,
    pub(crate) top_delegations: Vec<Delegation>,
    pub(crate) roles: Vec<RoleMeta>,
}

/// A delegated role's key, derived from its name.
fn role_key(role: &str) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&Sha256::digest(format!("delegated role key {role}")).into())
}

fn key_json(key: &ed25519_dalek::SigningKey) -> Value {
    json!({
        "keytype": "ed25519",
        "scheme": "ed25519",
        "keyval": {"public": hex::encode(key.verifying_key().to_bytes())},
    })
}

fn canonical(value: &Value) -> Vec<u8> {
    use serde::Serialize as _;
    let mut bytes = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut serializer).expect("canonical JSON");
    bytes
}

fn keyid(key: &ed25519_dalek::SigningKey) -> String {
    hex::encode(Sha256::digest(canonical(&key_json(key))))
}

fn signed_file(signed: Value, keys: &[(String, &ed25519_dalek::SigningKey)]) -> Vec<u8> {
    let bytes = canonical(&signed);
    let signatures: Vec<Value> = keys
        .iter()
        .map(|(keyid, key)| json!({"keyid": keyid, "sig": hex::encode(key.sign(&bytes).to_bytes())}))
        .collect();
    let mut file = serde_json::to_vec_pretty(&json!({"signed": signed, "signatures": signatures})).expect("encode");
    file.push(b'\n');
    file
}

fn target_json(bytes: &[u8]) -> Value {
    json!({"length": bytes.len(), "hashes": {"sha256": hex::encode(Sha256::digest(bytes))}})
}

fn delegations_json(delegations: &[Delegation]) -> Value {
    let mut keys = serde_json::Map::new();
    let mut roles = Vec::new();
    for delegation in delegations {
        let key = role_key(&delegation.role);
        keys.insert(keyid(&key), key_json(&key));
        roles.push(json!({
            "name": delegation.role,
            "keyids": [keyid(&key)],
            "threshold": 1,
            "paths": delegation.paths,
            "terminating": delegation.terminating,
        }));
    }
    json!({"keys": keys, "roles": roles})
}

fn expires() -> String {
    metadata::expires_in(Duration::from_secs(24 * 3600))
        .expect("expiry")
        .to_string()
}

fn metafile(bytes: &[u8], version: u64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Decoded::<Hex>::from(Sha256::digest(bytes).to_vec()),
            _extra: Default::default(),
        }),
        version: NonZeroU64::new(version).expect("version > 0"),
        _extra: Default::default(),
    }
}

fn write_target(world: &World, name: &str, bytes: &[u8]) {
    let path = world
        .repo
        .public_dir()
        .join("targets")
        .join(consistent_target_path(name, &hex::encode(Sha256::digest(bytes))));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("targets dir");
    std::fs::write(path, bytes).expect("write target");
}

/// Publishes `graph`: the next top-level targets (the current targets plus
/// `top_targets`, delegating `top_delegations`), every role at version 1,
/// a snapshot listing them (but those marked `not_in_snapshot`), and a
/// timestamp.
pub(crate) fn publish(world: &World, graph: &Graph) {
    let meta = world.meta();
    let timestamp: tough::schema::Signed<Timestamp> = world.load("timestamp.json");
    let snapshot_version = timestamp.signed.meta["snapshot.json"].version.get();
    let snapshot: tough::schema::Signed<Snapshot> = world.load(&format!("{snapshot_version}.snapshot.json"));
    let targets_version = snapshot.signed.meta["targets.json"].version.get();
    let mut top: Value =
        serde_json::from_slice(&std::fs::read(meta.join(format!("{targets_version}.targets.json"))).expect("targets"))
            .expect("targets JSON");
    let top = &mut top["signed"];
    top["version"] = json!(targets_version + 1);
    top["expires"] = json!(expires());
    for (name, bytes) in &graph.top_targets {
        top["targets"][name] = target_json(bytes);
        write_target(world, name, bytes);
    }
    if !graph.top_delegations.is_empty() {
        top["delegations"] = delegations_json(&graph.top_delegations);
    }
    let signers = world.signers(Role::Targets);
    let keys: Vec<(String, &ed25519_dalek::SigningKey)> = signers
        .iter()
        .map(|signer| (signer.keyid(), signer.signing_key()))
        .collect();
    let top_bytes = signed_file(top.clone(), &keys);
    std::fs::write(meta.join(format!("{}.targets.json", targets_version + 1)), &top_bytes).expect("write targets");

    let mut new_snapshot = Snapshot::new(
        "1.0.0".to_owned(),
        NonZeroU64::new(snapshot_version + 1).expect("version"),
        metadata::expires_in(Duration::from_secs(24 * 3600)).expect("expiry"),
    );
    new_snapshot
        .meta
        .insert("targets.json".to_owned(), metafile(&top_bytes, targets_version + 1));
    for role in &graph.roles {
        let mut targets = serde_json::Map::new();
        for (name, bytes) in &role.targets {
            targets.insert(name.clone(), target_json(bytes));
            write_target(world, name, bytes);
        }
        let mut signed = json!({
            "_type": "targets",
            "spec_version": "1.0.0",
            "version": 1,
            "expires": expires(),
            "targets": targets,
        });
        if !role.delegations.is_empty() {
            signed["delegations"] = delegations_json(&role.delegations);
        }
        let key = role_key(&role.name);
        let bytes = signed_file(signed, &[(keyid(&key), &key)]);
        std::fs::write(meta.join(format!("1.{}.json", role.name)), &bytes).expect("write role");
        if !role.not_in_snapshot {
            new_snapshot
                .meta
                .insert(format!("{}.json", role.name), metafile(&bytes, 1));
        }
    }
    let snapshot_bytes = world.write_signed(
        &format!("{}.snapshot.json", snapshot_version + 1),
        new_snapshot,
        &world.signers(Role::Snapshot),
    );
    let mut new_timestamp = Timestamp::new(
        "1.0.0".to_owned(),
        NonZeroU64::new(timestamp.signed.version.get() + 1).expect("version"),
        metadata::expires_in(Duration::from_secs(24 * 3600)).expect("expiry"),
    );
    new_timestamp.meta.insert(
        "snapshot.json".to_owned(),
        metafile(&snapshot_bytes, snapshot_version + 1),
    );
    world.write_signed("timestamp.json", new_timestamp, &world.signers(Role::Timestamp));
}

/// Release `version` built from release 1 with `policies` (name, version,
/// bytes) replacing or adding modules; returns the set and its target.
pub(crate) fn release_set(
    world: &World,
    version: u64,
    policies: &[(&str, &str, &[u8])],
) -> (ReleaseSet, (String, Vec<u8>)) {
    let mut set = world.repo.draft(1).expect("draft 1");
    set.version = version;
    set.security_counter = version;
    for (name, policy_version, bytes) in policies {
        set.policies.insert(
            (*name).to_owned(),
            PolicyModule {
                version: (*policy_version).to_owned(),
                module: Part {
                    target: module_target(name, policy_version),
                    length: bytes.len() as u64,
                    sha256: hex::encode(Sha256::digest(bytes)),
                },
                config: BTreeMap::new(),
            },
        );
    }
    let bytes = set.to_canonical_json().expect("encode set");
    (set, (release_set::target_name(version), bytes))
}

pub(crate) fn module_target(name: &str, version: &str) -> String {
    format!("policies/{name}/{version}.wasm")
}
