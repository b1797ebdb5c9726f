//! The happy path, key rotation and refresh, end to end.

use molt_core::Version;
use molt_release::client::{Client, UpdateError};
use molt_release::keys::{KeyDir, Role};
use molt_release::repo::Expiry;
use tough::schema::{Root, Timestamp};

use crate::world::{CLASS, World, test_limits};

#[tokio::test]
async fn publish_check_fetch_accept_stage_and_boot() {
    let world = World::new().await;
    // World::new installed and committed release 1; a second release goes
    // through the same path and molt-core boots it.
    let set = world
        .release(2, 2, "1.1.0", &[("threshold", "2.0.0"), ("deadband", "1.0.0")])
        .await;
    assert_eq!(set.agents[CLASS].version, "1.1.0");
    let client = Client::open(&world.trusted(), CLASS, test_limits()).expect("open");
    let verified = client
        .check(&world.source(), &world.installed)
        .await
        .expect("check")
        .expect("release 2 is new");
    assert_eq!(verified.set, set);
    let fetched = client
        .fetch(
            &verified,
            &world.path("device/download"),
            &molt_release::download::NoProgress,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .expect("fetch");
    assert_eq!(fetched.policies.len(), 2);
    assert_eq!(fetched.policies["threshold"].version, "2.0.0");
    let mut engine = world.engine(CLASS);
    let info = molt_release::client::stage_agent(&mut engine, fetched.agent.as_ref().expect("agent")).expect("stage");
    assert_eq!(info.version, Version::new(1, 1, 0));
    client.accept(&fetched).expect("accept");
    engine.mark_trial().expect("trial");
    let decision = engine.boot().expect("boot");
    assert_eq!(decision.image, info);
    engine.commit().expect("commit");
    // The trusted metadata now is release 2's, and checking again finds
    // nothing new.
    let mut installed = world.installed.clone();
    installed.release_version = 2;
    installed.security_counter = 2;
    assert!(
        client
            .check(&world.source(), &installed)
            .await
            .expect("check again")
            .is_none()
    );
}

#[tokio::test]
async fn device_follows_root_and_targets_key_rotation() {
    let mut world = World::new().await;
    let old_root = world.keys.root().expect("root").signed;
    assert_eq!(world.keys.rotate(Role::Root, 3, Some(2)).await.expect("rotate root"), 2);
    assert_eq!(
        world.keys.rotate(Role::Targets, 1, None).await.expect("rotate targets"),
        3
    );
    let reopened = KeyDir::open(world.keys.path()).expect("reopen");
    assert_eq!(reopened.root_version().expect("version"), 3);
    world.release(2, 2, "1.1.0", &[("threshold", "1.0.0")]).await;
    let info = world
        .update(&world.source(), CLASS, test_limits(), &world.installed)
        .await
        .expect("update across two root rotations")
        .expect("release 2 is new");
    assert_eq!(info.version, Version::new(1, 1, 0));
    let trusted: tough::schema::Signed<Root> =
        serde_json::from_slice(&std::fs::read(world.trusted().join("metadata/root.json")).expect("root"))
            .expect("parse");
    assert_eq!(trusted.signed.version.get(), 3);
    assert_ne!(
        trusted.signed.roles, old_root.roles,
        "the device trusts the rotated keys"
    );
}

#[tokio::test]
async fn refresh_advances_snapshot_and_timestamp_and_the_device_follows() {
    let world = World::new().await;
    let before = world.repo.published().expect("published").expect("some");
    let after = world
        .repo
        .refresh(&world.keys, &Expiry::default())
        .await
        .expect("refresh");
    assert_eq!(after.targets_version, before.targets_version);
    assert_eq!(after.snapshot_version, before.snapshot_version + 1);
    assert_eq!(after.timestamp_version, before.timestamp_version + 1);
    assert_eq!(after.release_set, Some(1));
    assert!(
        world
            .update(&world.source(), CLASS, test_limits(), &world.installed)
            .await
            .expect("check")
            .is_none()
    );
    let trusted: tough::schema::Signed<Timestamp> =
        serde_json::from_slice(&std::fs::read(world.trusted().join("metadata/timestamp.json")).expect("timestamp"))
            .expect("parse");
    assert_eq!(
        trusted.signed.version.get(),
        after.timestamp_version,
        "nothing new, yet the fresh timestamp is trusted"
    );
}

#[tokio::test]
async fn key_dir_refuses_readable_keys_and_reuse() {
    let world = World::new().await;
    let error = KeyDir::init(world.keys.path(), &Default::default())
        .await
        .expect_err("non-empty");
    assert!(
        matches!(error, molt_release::keys::KeyError::NotEmpty { .. }),
        "{error}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(world.keys.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let error = KeyDir::open(world.keys.path()).expect_err("readable by others");
    assert!(
        matches!(error, molt_release::keys::KeyError::Permissions { mode: 0o755, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn client_init_refuses_a_root_that_does_not_verify() {
    let world = World::new().await;
    let mut root: tough::schema::Signed<Root> =
        serde_json::from_slice(&world.keys.root_json().expect("root")).expect("parse");
    root.signatures.clear();
    let bytes = serde_json::to_vec(&root).expect("encode");
    let error = Client::init(&world.path("other"), &bytes, CLASS, test_limits()).expect_err("unsigned root");
    assert!(
        matches!(
            error,
            UpdateError::Tuf(molt_release::tuf::TufError::BadTrustedRoot { .. })
        ),
        "{error}"
    );
    let error = Client::init(
        &world.trusted(),
        &world.keys.root_json().expect("root"),
        CLASS,
        test_limits(),
    )
    .expect_err("already initialised");
    assert!(matches!(error, UpdateError::AlreadyInitialised { .. }), "{error}");
}
