//! Parsing and verification from bytes.

use ed25519_dalek::Signer as _;
use serde_json::{Value, json};

use super::*;

fn signing_key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

fn key_json(seed: u8) -> Value {
    json!({
        "keytype": "ed25519",
        "scheme": "ed25519",
        "keyval": {"public": hex::encode(signing_key(seed).verifying_key().to_bytes())},
    })
}

/// A file with `signed`, signed by each `(keyid, seed)`.
fn file(signed: &Value, signers: &[(&str, u8)]) -> Vec<u8> {
    let canonical = canonical_json(signed).expect("canonical");
    let signatures: Vec<Value> = signers
        .iter()
        .map(
            |(keyid, seed)| json!({"keyid": keyid, "sig": hex::encode(signing_key(*seed).sign(&canonical).to_bytes())}),
        )
        .collect();
    serde_json::to_vec_pretty(&json!({"signed": signed, "signatures": signatures})).expect("encode")
}

fn root_signed(keys: Value, root_keyids: &[&str], threshold: u64) -> Value {
    json!({
        "_type": "root",
        "spec_version": "1.0.31",
        "consistent_snapshot": true,
        "version": 1,
        "expires": "2099-01-01T00:00:00Z",
        "keys": keys,
        "roles": {
            "root": {"keyids": root_keyids, "threshold": threshold},
            "timestamp": {"keyids": [], "threshold": 1},
            "snapshot": {"keyids": [], "threshold": 1},
            "targets": {"keyids": [], "threshold": 1},
        },
        "x-custom": {"nested": [1, 2, "three"]},
    })
}

fn verify_root(bytes: &[u8]) -> Result<(), TufError> {
    let root = Metadata::<Root>::parse("root", bytes)?;
    root.verify("root", &root.signed.keys, root.signed.role("root"))
}

#[test]
fn signatures_cover_unknown_fields_as_received() {
    let signed = root_signed(json!({"a": key_json(1)}), &["a"], 1);
    let bytes = file(&signed, &[("a", 1)]);
    verify_root(&bytes).expect("signed over the canonical form with the custom field");
    // The same signature over a changed custom field does not verify.
    let mut tampered: Value = serde_json::from_slice(&bytes).expect("json");
    tampered["signed"]["x-custom"]["nested"][0] = json!(2);
    let error = verify_root(&serde_json::to_vec(&tampered).expect("encode")).expect_err("tampered");
    assert!(
        matches!(
            error,
            TufError::BelowThreshold {
                valid: 0,
                threshold: 1,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn one_key_counts_once_however_many_ids_name_it() {
    let signed = root_signed(json!({"a": key_json(1), "b": key_json(1)}), &["a", "b"], 2);
    let bytes = file(&signed, &[("a", 1), ("b", 1)]);
    let error = verify_root(&bytes).expect_err("one key under two ids");
    assert!(
        matches!(
            error,
            TufError::BelowThreshold {
                valid: 1,
                threshold: 2,
                ..
            }
        ),
        "{error}"
    );
    let signed = root_signed(json!({"a": key_json(1), "b": key_json(2)}), &["a", "b"], 2);
    verify_root(&file(&signed, &[("a", 1), ("b", 2)])).expect("two keys");
}

#[test]
fn a_key_molt_cannot_use_does_not_spoil_the_others() {
    let unknown = json!({"keytype": "sphincs", "scheme": "sphincs-shake", "keyval": {"public": "00"}});
    let signed = root_signed(json!({"a": key_json(1), "z": unknown}), &["a", "z"], 1);
    verify_root(&file(&signed, &[("a", 1), ("z", 9)])).expect("the ed25519 key meets the threshold");
    let signed = root_signed(json!({"a": key_json(1), "z": unknown}), &["a", "z"], 2);
    let error = verify_root(&file(&signed, &[("a", 1), ("z", 9)])).expect_err("the unknown key never counts");
    assert!(matches!(error, TufError::BelowThreshold { valid: 1, .. }), "{error}");
}

#[test]
fn bad_signatures_do_not_count_and_duplicate_ids_are_refused() {
    let signed = root_signed(json!({"a": key_json(1), "b": key_json(2)}), &["a", "b"], 1);
    let mut envelope: Value = serde_json::from_slice(&file(&signed, &[("a", 1)])).expect("json");
    envelope["signatures"]
        .as_array_mut()
        .expect("array")
        .push(json!({"keyid": "b", "sig": "not hex"}));
    verify_root(&serde_json::to_vec(&envelope).expect("encode")).expect("one good signature is enough");
    envelope["signatures"]
        .as_array_mut()
        .expect("array")
        .push(json!({"keyid": "a", "sig": ""}));
    let error = verify_root(&serde_json::to_vec(&envelope).expect("encode")).expect_err("duplicate keyid");
    assert!(
        matches!(error, TufError::DuplicateSignature { ref keyid, .. } if keyid == "a"),
        "{error}"
    );
}

#[test]
fn type_spec_version_and_versions_are_checked() {
    let mut signed = root_signed(json!({"a": key_json(1)}), &["a"], 1);
    signed["_type"] = json!("timestamp");
    let error = Metadata::<Root>::parse("root", &file(&signed, &[("a", 1)])).expect_err("wrong type");
    assert!(
        matches!(error, TufError::WrongType { ref found, .. } if found == "timestamp"),
        "{error}"
    );
    for (spec_version, ok) in [
        ("1.0", true),
        ("1.0.31", true),
        ("2.0.0", false),
        ("1", false),
        ("1.x.0", false),
    ] {
        let mut signed = root_signed(json!({"a": key_json(1)}), &["a"], 1);
        signed["spec_version"] = json!(spec_version);
        let parsed = Metadata::<Root>::parse("root", &file(&signed, &[("a", 1)]));
        assert_eq!(parsed.is_ok(), ok, "spec_version {spec_version}");
    }
    let mut signed = root_signed(json!({"a": key_json(1)}), &["a"], 1);
    signed["version"] = json!(0);
    assert!(Metadata::<Root>::parse("root", &file(&signed, &[("a", 1)])).is_err());
    let mut signed = root_signed(json!({"a": key_json(1)}), &["a"], 1);
    signed["roles"].as_object_mut().expect("roles").remove("snapshot");
    assert!(Metadata::<Root>::parse("root", &file(&signed, &[("a", 1)])).is_err());
}

fn targets_with(delegations: Value) -> Result<Metadata<Targets>, TufError> {
    let signed = json!({
        "_type": "targets",
        "spec_version": "1.0",
        "version": 3,
        "expires": "2099-01-01T00:00:00Z",
        "targets": {"a/b.bin": {"length": 3, "hashes": {"blake3": "00"}}},
        "delegations": delegations,
    });
    Metadata::<Targets>::parse("targets", &file(&signed, &[]))
}

fn role(name: &str, extra: Value) -> Value {
    let mut role = json!({"name": name, "keyids": [], "threshold": 1, "terminating": false});
    for (field, value) in extra.as_object().expect("object") {
        role[field] = value.clone();
    }
    role
}

#[test]
fn delegations_are_validated_and_scoped() {
    // A target listing only hashes molt cannot check still parses: only a
    // lookup of that target fails.
    let targets = targets_with(json!({"keys": {}, "roles": [
        role("by-path", json!({"paths": ["apps/*"]})),
        role("by-prefix", json!({"path_hash_prefixes": [""]})),
        role("nothing", json!({})),
    ]}))
    .expect("valid delegations");
    let roles = &targets.signed.delegations.as_ref().expect("delegations").roles;
    assert!(roles[0].trusts("apps/x.bin"));
    assert!(!roles[0].trusts("apps/x/y.bin"));
    assert!(roles[1].trusts("anything"), "an empty prefix covers every path");
    assert!(!roles[2].trusts("anything"));
    // The whole digest, in capitals: prefixes compare case-insensitively.
    let prefix = hex::encode(crate::digest::Algorithm::Sha256.digest(b"apps/x.bin"));
    let targets = targets_with(
        json!({"keys": {}, "roles": [role("bin", json!({"path_hash_prefixes": [prefix.to_ascii_uppercase()]}))]}),
    )
    .expect("prefix");
    let bin = &targets.signed.delegations.as_ref().expect("delegations").roles[0];
    assert!(bin.trusts("apps/x.bin"));
    assert!(!bin.trusts("apps/y.bin"));

    for bad in [
        json!({"keys": {}, "roles": [role("targets", json!({"paths": ["*"]}))]}),
        json!({"keys": {}, "roles": [role("", json!({"paths": ["*"]}))]}),
        json!({"keys": {}, "roles": [role("a", json!({"paths": ["*"]})), role("a", json!({"paths": ["*"]}))]}),
        json!({"keys": {}, "roles": [role("a", json!({"paths": ["*"], "path_hash_prefixes": ["ab"]}))]}),
        json!({"keys": {}, "roles": [role("a", json!({"threshold": 0}))]}),
        json!({"keys": {}, "roles": [role("a", json!({"keyids": ["k", "k"]}))]}),
        json!({"keys": {}, "succinct_roles": {"keyids": [], "threshold": 1, "bit_length": 4, "name_prefix": "bin"}}),
    ] {
        let error = targets_with(bad.clone()).expect_err("malformed delegations");
        assert!(matches!(error, TufError::Malformed { .. }), "{bad}: {error}");
    }
}
