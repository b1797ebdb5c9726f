//! The TUF client workflow on its own: lazy delegated roles, a role
//! missing from the snapshot, stored bytes, and a discarded same-version
//! timestamp.

use std::path::Path;
use std::time::Duration;

use molt_release::client::UpdateError;
use molt_release::keys::Role;
use molt_release::metadata;
use molt_release::repo::Expiry;
use molt_release::tuf::{Durability, TimestampUpdate, TufError, Updater};
use tough::schema::Timestamp;

use crate::graph::{self, Graph, delegate, module_target, role};
use crate::world::{CLASS, World, test_limits};

fn store_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("store")
        .map(|entry| entry.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    names
}

fn updater(world: &World, dir: &Path) -> Updater {
    std::fs::create_dir_all(dir).expect("store dir");
    std::fs::write(dir.join("root.json"), world.keys.root_json().expect("root")).expect("root");
    Updater::open(dir, world.source(), test_limits().tuf(), Durability::EachWrite).expect("open")
}

#[tokio::test]
async fn delegated_roles_are_fetched_only_when_needed_and_a_missing_one_fails_only_its_lookups() {
    let world = World::new().await;
    let (a, c) = (b"module a".to_vec(), b"module c".to_vec());
    graph::publish(
        &world,
        &Graph {
            top_targets: vec![],
            top_delegations: vec![
                delegate("team-a", &["policies/a/*"]),
                delegate("team-b", &["policies/b/*"]),
                delegate("team-c", &["policies/c/*"]),
            ],
            roles: vec![
                role("team-a", &[(&module_target("a", "1.0.0"), &a)], vec![]),
                graph::RoleMeta {
                    not_in_snapshot: true,
                    ..role("team-b", &[], vec![])
                },
                role("team-c", &[(&module_target("c", "1.0.0"), &c)], vec![]),
            ],
        },
    );
    let dir = world.path("tuf-store");
    let mut updater = updater(&world, &dir);
    let refresh = updater.refresh().await.expect("refresh");
    assert!(matches!(refresh.timestamp, TimestampUpdate::New { .. }));
    assert_eq!(
        store_files(&dir),
        ["root.json", "snapshot.json", "targets.json", "timestamp.json"],
        "no delegated role before a lookup needs it"
    );
    // Stored bytes are the served bytes.
    let (snapshot_version, targets_version) = (refresh.snapshot_version, refresh.targets_version);
    for (stored, served) in [
        ("timestamp.json", "timestamp.json".to_owned()),
        ("snapshot.json", format!("{snapshot_version}.snapshot.json")),
        ("targets.json", format!("{targets_version}.targets.json")),
    ] {
        assert_eq!(
            std::fs::read(dir.join(stored)).expect("stored"),
            std::fs::read(world.meta().join(served)).expect("served"),
            "{stored}"
        );
    }

    let found = updater
        .find_target(&module_target("c", "1.0.0"))
        .await
        .expect("lookup c")
        .expect("c is listed");
    assert_eq!((found.role.as_str(), found.length), ("team-c", c.len() as u64));
    assert_eq!(
        store_files(&dir),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "team-c.json",
            "timestamp.json"
        ],
        "the search for c skips team-a and team-b: their paths do not cover it"
    );
    assert_eq!(
        std::fs::read(dir.join("team-c.json")).expect("stored"),
        std::fs::read(world.meta().join("1.team-c.json")).expect("served")
    );
    let error = updater
        .find_target(&module_target("b", "1.0.0"))
        .await
        .expect_err("team-b is not in the snapshot");
    assert!(
        matches!(error, TufError::NotInSnapshot { ref role } if role == "team-b"),
        "{error}"
    );
    // Other lookups still work, before and after.
    let found = updater
        .find_target(&module_target("a", "1.0.0"))
        .await
        .expect("lookup a")
        .expect("a is listed");
    assert_eq!(found.role, "team-a");
    let release = updater
        .find_target("release-sets/1.json")
        .await
        .expect("lookup release set")
        .expect("listed");
    assert_eq!(release.role, "targets");
    assert!(
        updater
            .find_target("policies/d/1.0.0.wasm")
            .await
            .expect("no role covers d")
            .is_none()
    );
}

/// Issue 14: tough kept a same-version timestamp with other content and then
/// refused the repository's next legitimate timestamp. It is neither kept
/// nor in the way.
#[tokio::test]
async fn a_same_version_timestamp_is_not_stored_and_the_next_one_is_accepted() {
    let world = World::new().await;
    let trusted_before = std::fs::read(world.trusted().join("metadata/timestamp.json")).expect("trusted");
    let timestamp: tough::schema::Signed<Timestamp> = world.load("timestamp.json");
    let version = timestamp.signed.version.get();
    let mut forged = Timestamp::new(
        "1.0.0".to_owned(),
        timestamp.signed.version,
        metadata::expires_in(Duration::from_secs(5 * 24 * 3600)).expect("expiry"),
    );
    // The same snapshot, another expiry: other bytes, the same version.
    forged.meta.insert(
        "snapshot.json".to_owned(),
        timestamp.signed.meta["snapshot.json"].clone(),
    );
    world.write_signed("timestamp.json", forged, &world.signers(Role::Timestamp));

    // The workflow discards it and keeps the trusted one.
    let dir = world.path("tuf-store");
    std::fs::create_dir_all(&dir).expect("dir");
    for name in ["root.json", "timestamp.json", "snapshot.json", "targets.json"] {
        std::fs::copy(world.trusted().join("metadata").join(name), dir.join(name)).expect("copy trusted");
    }
    let mut updater = Updater::open(&dir, world.source(), test_limits().tuf(), Durability::EachWrite).expect("open");
    let refresh = updater
        .refresh()
        .await
        .expect("a same version is not an error for the workflow");
    assert_eq!(refresh.timestamp, TimestampUpdate::SameVersionDiscarded { version });
    assert_eq!(
        std::fs::read(dir.join("timestamp.json")).expect("stored"),
        trusted_before
    );

    // The device refuses it, and keeps nothing.
    let error = world
        .update(&world.source(), CLASS, test_limits(), &world.installed)
        .await
        .expect_err("equivocating timestamp");
    assert!(
        matches!(error, UpdateError::TimestampEquivocation { version: v } if v == version),
        "{error}"
    );
    assert_eq!(
        std::fs::read(world.trusted().join("metadata/timestamp.json")).expect("trusted"),
        trusted_before
    );

    // The repository's next timestamp is accepted.
    let published = world
        .repo
        .refresh(&world.keys, &Expiry::default())
        .await
        .expect("refresh");
    assert!(published.timestamp_version > version);
    let result = world
        .update(&world.source(), CLASS, test_limits(), &world.installed)
        .await
        .expect("the next timestamp verifies");
    assert!(result.is_none());
    let trusted: tough::schema::Signed<Timestamp> =
        serde_json::from_slice(&std::fs::read(world.trusted().join("metadata/timestamp.json")).expect("trusted"))
            .expect("parse");
    assert_eq!(trusted.signed.version.get(), published.timestamp_version);
}

#[tokio::test]
async fn a_clock_set_back_is_refused() {
    let world = World::new().await;
    let clock = world.trusted().join("metadata/latest-update-start");
    assert!(clock.is_file(), "an accepted update records its start time");
    std::fs::write(&clock, "2999-01-01T00:00:00Z").expect("write clock");
    let error = world
        .update(&world.source(), CLASS, test_limits(), &world.installed)
        .await
        .expect_err("clock behind the last update");
    assert!(matches!(error, UpdateError::ClockWentBack), "{error}");
}
