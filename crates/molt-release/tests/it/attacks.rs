//! The attack matrix: every attack from issue 4 (categories 1-13) and the
//! delegation and timestamp attacks of issue 14 (14-17) must fail with its
//! typed error and leave the device's trusted metadata and slots
//! byte-identical, with nothing staged; or, where TUF says to ignore what
//! the attacker signed (a stray target), the legitimate update installs.
//!
//! Expiry is judged against the system clock, so expired metadata is
//! signed with an expiry at a fixed instant in the past (2001-01-01).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::num::NonZeroU64;
use std::time::Duration;

use molt_release::client::UpdateError;
use molt_release::download::{DownloadError, Source};
use molt_release::keys::Role;
use molt_release::metadata;
use molt_release::release_set::{self, Part, PolicyModule, ReleaseSet};
use molt_release::repo::{Expiry, consistent_target_path};
use molt_release::tuf::TufError;
use sha2::{Digest as _, Sha256};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{Hashes, KeyHolder, Metafile, Root, Snapshot, Target, Targets, Timestamp};

use crate::graph::{self, Graph, delegate, module_target, role};
use crate::server::{Mode, TestServer};
use crate::world::{CLASS, World, test_limits};

fn past() -> jiff::Timestamp {
    "2001-01-01T00:00:00Z".parse().expect("fixed instant")
}

fn future() -> jiff::Timestamp {
    metadata::expires_in(Duration::from_secs(24 * 3600)).expect("expiry")
}

fn metafile(bytes: &[u8], version: u64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Decoded::<Hex>::from(Sha256::digest(bytes).to_vec()),
            _extra: HashMap::new(),
        }),
        version: NonZeroU64::new(version).expect("version > 0"),
        _extra: HashMap::new(),
    }
}

fn nz(version: u64) -> NonZeroU64 {
    NonZeroU64::new(version).expect("version > 0")
}

/// Current published versions: (timestamp, snapshot, targets).
fn versions(world: &World) -> (u64, u64, u64) {
    let timestamp = world.load::<Timestamp>("timestamp.json");
    let snapshot_version = timestamp.signed.meta["snapshot.json"].version.get();
    let snapshot = world.load::<Snapshot>(&format!("{snapshot_version}.snapshot.json"));
    (
        timestamp.signed.version.get(),
        snapshot_version,
        snapshot.signed.meta["targets.json"].version.get(),
    )
}

/// Signs and writes a timestamp pinning `snapshot_bytes` as snapshot
/// `snapshot_version`.
fn write_timestamp(world: &World, snapshot_bytes: &[u8], snapshot_version: u64, expires: jiff::Timestamp) {
    let (timestamp_version, _, _) = versions(world);
    let mut timestamp = Timestamp::new("1.0.0".to_owned(), nz(timestamp_version + 1), expires);
    timestamp
        .meta
        .insert("snapshot.json".to_owned(), metafile(snapshot_bytes, snapshot_version));
    world.write_signed("timestamp.json", timestamp, &world.signers(Role::Timestamp));
}

/// Signs and writes snapshot `version` pinning `targets_bytes` as targets
/// `targets_version`; returns its bytes.
fn write_snapshot(
    world: &World,
    version: u64,
    targets_bytes: &[u8],
    targets_version: u64,
    expires: jiff::Timestamp,
) -> Vec<u8> {
    let mut snapshot = Snapshot::new("1.0.0".to_owned(), nz(version), expires);
    snapshot
        .meta
        .insert("targets.json".to_owned(), metafile(targets_bytes, targets_version));
    world.write_signed(
        &format!("{version}.snapshot.json"),
        snapshot,
        &world.signers(Role::Snapshot),
    )
}

/// Publishes targets metadata `targets` under the name of version `file_version`
/// with a fresh snapshot and timestamp.
fn publish_targets_as(world: &World, targets: Targets, file_version: u64, expires: jiff::Timestamp) {
    let (_, snapshot_version, _) = versions(world);
    let bytes = world.write_signed(
        &format!("{file_version}.targets.json"),
        targets,
        &world.signers(Role::Targets),
    );
    let snapshot = write_snapshot(world, snapshot_version + 1, &bytes, file_version, future());
    write_timestamp(world, &snapshot, snapshot_version + 1, expires);
}

fn current_targets(world: &World) -> Targets {
    let (_, _, targets_version) = versions(world);
    world.load::<Targets>(&format!("{targets_version}.targets.json")).signed
}

/// A root like the newest one, at `version`, expiring at `expires`,
/// signed by the root keys.
fn write_root(world: &World, name: &str, version: u64, expires: jiff::Timestamp) {
    let mut root: Root = world.keys.root().expect("root").signed;
    root.version = nz(version);
    root.expires = expires;
    world.write_signed(name, root, &world.signers(Role::Root));
}

/// Rotates the timestamp key and publishes the new root, then lets the
/// device follow it.
async fn rotate_timestamp(world: &mut World) {
    world.keys.rotate(Role::Timestamp, 1, None).await.expect("rotate");
    world
        .repo
        .refresh(&world.keys, &Expiry::default())
        .await
        .expect("refresh");
}

async fn device_follows(world: &World) {
    let result = world
        .update(&world.source(), CLASS, test_limits(), &world.installed)
        .await
        .expect("device follows the repository");
    assert!(result.is_none(), "nothing new to install");
}

fn edit_file(path: &std::path::Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).expect("read");
    edit(&mut bytes);
    std::fs::write(path, bytes).expect("write");
}

/// Swaps one indentation space for a tab: same length, still JSON,
/// different sha256.
fn flip_whitespace(bytes: &mut [u8]) {
    let idx = bytes.windows(2).position(|w| w == b"\n ").expect("indented JSON") + 1;
    bytes[idx] = b'\t';
}

/// Publishes release set `set` (targets: the current ones plus the set and
/// `extra` files) through `Repo::publish_targets`, signed by the targets
/// key. The set need not be consistent: this is a compromised or buggy
/// release pipeline.
async fn publish_raw_set(world: &World, set: &ReleaseSet, extra: &[(&str, Vec<u8>)]) {
    let dir = world.path(&format!("raw/{}", set.version));
    std::fs::create_dir_all(&dir).expect("raw dir");
    let mut files = BTreeMap::new();
    let mut added: Vec<(String, Vec<u8>)> = extra
        .iter()
        .map(|(name, bytes)| ((*name).to_owned(), bytes.clone()))
        .collect();
    added.push((
        release_set::target_name(set.version),
        set.to_canonical_json().expect("encode set"),
    ));
    let (_, _, targets_version) = versions(world);
    let root = world.keys.root().expect("root");
    let mut editor = tough::editor::targets::TargetsEditor::from_targets(
        "targets",
        current_targets(world),
        KeyHolder::Root(root.signed),
    );
    for (idx, (name, bytes)) in added.iter().enumerate() {
        let path = dir.join(idx.to_string());
        std::fs::write(&path, bytes).expect("raw file");
        files.insert(name.clone(), path);
        let target = Target {
            length: bytes.len() as u64,
            hashes: Hashes {
                sha256: Decoded::<Hex>::from(Sha256::digest(bytes).to_vec()),
                _extra: HashMap::new(),
            },
            custom: HashMap::new(),
            _extra: HashMap::new(),
        };
        editor.add_target(name.as_str(), target).expect("add target");
    }
    editor.version(nz(targets_version + 1)).expires(future());
    let sources = world.keys.key_sources(Role::Targets).expect("sources");
    let signed = editor.create_signed(&sources).await.expect("sign targets").targets().1;
    let bytes = metadata::encode(&signed).expect("encode");
    world
        .repo
        .publish_targets(&bytes, &files, &world.keys, &Expiry::default())
        .await
        .expect("publish raw set");
}

fn module_path(world: &World, set: &ReleaseSet, policy: &str) -> std::path::PathBuf {
    let part = &set.policies[policy].module;
    world
        .repo
        .public_dir()
        .join("targets")
        .join(consistent_target_path(&part.target, &part.sha256))
}

fn role_is(role: &str, expected: &str) -> bool {
    role == expected
}

type Check = fn(&UpdateError) -> bool;

/// What an attack must come to.
enum Expect {
    /// Refused with this error, the device unchanged.
    Refused(Check),
    /// Defused: what the attacker signed is ignored and the legitimate
    /// update installs.
    Installs,
}

/// One attack: its category (1-13 in issue 4, 14-17 in issue 14), its name,
/// and what it must come to.
struct Case {
    category: u8,
    name: &'static str,
    expect: Expect,
}

const CASES: &[Case] = &[
    Case {
        category: 1,
        name: "unsigned timestamp",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::BelowThreshold { role, valid: 0, .. }) if role_is(role, "timestamp")),
        ),
    },
    Case {
        category: 1,
        name: "root below threshold",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::BelowThreshold { role, valid: 1, threshold: 2 }) if role_is(role, "root")),
        ),
    },
    Case {
        category: 2,
        name: "duplicate root signatures",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::DuplicateSignature { role, .. }) if role_is(role, "root")),
        ),
    },
    Case {
        category: 3,
        name: "rotated-out timestamp key",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::BelowThreshold { role, valid: 0, .. }) if role_is(role, "timestamp")),
        ),
    },
    Case {
        category: 4,
        name: "expired root",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::Expired { role, .. }) if role_is(role, "root")),
        ),
    },
    Case {
        category: 4,
        name: "expired timestamp",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::Expired { role, .. }) if role_is(role, "timestamp")),
        ),
    },
    Case {
        category: 4,
        name: "expired snapshot",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::Expired { role, .. }) if role_is(role, "snapshot")),
        ),
    },
    Case {
        category: 4,
        name: "expired targets",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::Expired { role, .. }) if role_is(role, "targets")),
        ),
    },
    Case {
        category: 5,
        name: "root rollback",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::Rollback { role, trusted: 2, offered: 1 }) if role_is(role, "root")),
        ),
    },
    Case {
        category: 5,
        name: "timestamp rollback",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::Rollback { role, .. }) if role_is(role, "timestamp")),
        ),
    },
    Case {
        category: 5,
        name: "snapshot rollback",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::Rollback { role, .. }) if role_is(role, "snapshot")),
        ),
    },
    Case {
        category: 5,
        name: "targets rollback",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::Rollback { role, .. }) if role_is(role, "targets")),
        ),
    },
    Case {
        category: 6,
        name: "non-consecutive root",
        expect: Expect::Refused(|e| {
            matches!(
                e,
                UpdateError::Tuf(TufError::NonConsecutiveRoot { trusted: 1, offered: 3 })
            )
        }),
    },
    Case {
        category: 6,
        name: "too many root rotations",
        expect: Expect::Refused(|e| matches!(e, UpdateError::Tuf(TufError::TooManyRootUpdates { limit: 2, .. }))),
    },
    Case {
        category: 7,
        name: "snapshot hash mismatch",
        expect: Expect::Refused(|e| matches!(e, UpdateError::Tuf(TufError::HashMismatch { .. }))),
    },
    Case {
        category: 7,
        name: "targets hash mismatch",
        expect: Expect::Refused(|e| matches!(e, UpdateError::Tuf(TufError::HashMismatch { .. }))),
    },
    Case {
        category: 7,
        name: "snapshot version mismatch",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::VersionMismatch { role, fetched: 99, .. }) if role_is(role, "snapshot")),
        ),
    },
    Case {
        category: 7,
        name: "targets version mismatch",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Tuf(TufError::VersionMismatch { role, fetched: 99, .. }) if role_is(role, "targets")),
        ),
    },
    Case {
        category: 8,
        name: "endless data from a directory",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Download { source, .. } if matches!(source.last_attempt(), DownloadError::TooLong { .. })),
        ),
    },
    Case {
        category: 8,
        name: "endless data over HTTP",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Download { source, .. } if matches!(source.last_attempt(), DownloadError::TooLong { .. })),
        ),
    },
    Case {
        category: 8,
        name: "stalled server (slow retrieval)",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Download { source, .. } if matches!(source.last_attempt(), DownloadError::TooSlow { .. })),
        ),
    },
    Case {
        category: 8,
        name: "oversized timestamp",
        expect: Expect::Refused(|e| {
            matches!(
                e,
                UpdateError::Tuf(TufError::LimitExceeded {
                    limit: "timestamp_bytes_max",
                    ..
                })
            )
        }),
    },
    Case {
        category: 8,
        name: "oversized root",
        expect: Expect::Refused(|e| {
            matches!(
                e,
                UpdateError::Tuf(TufError::LimitExceeded {
                    limit: "root_bytes_max",
                    ..
                })
            )
        }),
    },
    Case {
        category: 9,
        name: "snapshot from an earlier publication",
        expect: Expect::Refused(|e| matches!(e, UpdateError::Tuf(TufError::HashMismatch { .. }))),
    },
    Case {
        category: 9,
        name: "release set from another publication",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Download { source, .. } if matches!(source.last_attempt(), DownloadError::DigestMismatch { .. } | DownloadError::TooLong { .. } | DownloadError::TooShort { .. })),
        ),
    },
    Case {
        category: 10,
        name: "partial release set",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::PartMissing { field, .. } if field == "policies.ghost.module"),
        ),
    },
    Case {
        category: 10,
        name: "mixed release set",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::PartMismatch { field, .. } if field == "policies.threshold.module"),
        ),
    },
    Case {
        category: 11,
        name: "wrong hardware class",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::WrongHardwareClass { hardware_class, .. } if hardware_class == "gw-arm"),
        ),
    },
    Case {
        category: 12,
        name: "release version below installed",
        expect: Expect::Refused(|e| {
            matches!(
                e,
                UpdateError::ReleaseDowngrade {
                    offered: 2,
                    installed: 5
                }
            )
        }),
    },
    Case {
        category: 12,
        name: "security counter below installed",
        expect: Expect::Refused(|e| {
            matches!(
                e,
                UpdateError::SecurityCounterRollback {
                    offered: 1,
                    installed: 3,
                    ..
                }
            )
        }),
    },
    Case {
        category: 12,
        name: "agent below committed version",
        expect: Expect::Refused(|e| matches!(e, UpdateError::Engine(molt_core::Error::VersionRollback { .. }))),
    },
    Case {
        category: 13,
        name: "module digest does not match",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::Download { source, .. } if matches!(source.last_attempt(), DownloadError::DigestMismatch { .. })),
        ),
    },
    Case {
        category: 14,
        name: "delegated role signs a target outside its paths",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::PartMissing { field, .. } if field == "policies.deadband.module"),
        ),
    },
    Case {
        category: 14,
        name: "delegated wildcard would cross /",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::PartMissing { field, .. } if field == "policies.threshold.module"),
        ),
    },
    Case {
        category: 15,
        name: "same-version timestamp with new content",
        expect: Expect::Refused(|e| matches!(e, UpdateError::TimestampEquivocation { .. })),
    },
    Case {
        category: 16,
        name: "delegated role lists a stray target",
        expect: Expect::Installs,
    },
    Case {
        category: 17,
        name: "delegation cycle",
        expect: Expect::Refused(
            |e| matches!(e, UpdateError::PartMissing { field, .. } if field == "policies.threshold.module"),
        ),
    },
    Case {
        category: 17,
        name: "over-deep delegation graph",
        expect: Expect::Refused(|e| {
            matches!(
                e,
                UpdateError::PartLookup { source, .. }
                    if matches!(**source, TufError::DelegatedRolesExceeded { limit: 32, .. })
            )
        }),
    },
];

/// Runs attack `name` against a fresh world; returns the update's result
/// and whether the device state is byte-identical to before it.
async fn run(name: &str) -> (Result<Option<molt_core::ImageInfo>, UpdateError>, bool) {
    let mut world = World::new().await;
    let mut limits = test_limits();
    let mut installed = world.installed.clone();
    let mut class = CLASS;
    let mut source = world.source();
    let mut server = None;
    match name {
        "unsigned timestamp" => {
            let path = world.meta().join("timestamp.json");
            let mut timestamp = world.load::<Timestamp>("timestamp.json");
            timestamp.signatures.clear();
            std::fs::write(path, metadata::encode(&timestamp).expect("encode")).expect("write");
        }
        "root below threshold" | "duplicate root signatures" => {
            world.keys.rotate(Role::Timestamp, 1, None).await.expect("rotate");
            world
                .repo
                .refresh(&world.keys, &Expiry::default())
                .await
                .expect("refresh");
            let mut root = world.load::<Root>("2.root.json");
            root.signatures.truncate(1);
            if name == "duplicate root signatures" {
                root.signatures.push(root.signatures[0].clone());
            }
            std::fs::write(
                world.meta().join("2.root.json"),
                metadata::encode(&root).expect("encode"),
            )
            .expect("write");
        }
        "rotated-out timestamp key" => {
            let old = world.signers(Role::Timestamp);
            rotate_timestamp(&mut world).await;
            device_follows(&world).await;
            let (timestamp_version, snapshot_version, _) = versions(&world);
            let snapshot =
                std::fs::read(world.meta().join(format!("{snapshot_version}.snapshot.json"))).expect("snapshot");
            let mut timestamp = Timestamp::new("1.0.0".to_owned(), nz(timestamp_version + 1), future());
            timestamp
                .meta
                .insert("snapshot.json".to_owned(), metafile(&snapshot, snapshot_version));
            world.write_signed("timestamp.json", timestamp, &old);
        }
        "expired root" => write_root(&world, "2.root.json", 2, past()),
        "expired timestamp" => {
            let (_, snapshot_version, _) = versions(&world);
            let snapshot =
                std::fs::read(world.meta().join(format!("{snapshot_version}.snapshot.json"))).expect("snapshot");
            write_timestamp(&world, &snapshot, snapshot_version, past());
        }
        "expired snapshot" => {
            let (_, snapshot_version, targets_version) = versions(&world);
            let targets = std::fs::read(world.meta().join(format!("{targets_version}.targets.json"))).expect("targets");
            let snapshot = write_snapshot(&world, snapshot_version + 1, &targets, targets_version, past());
            write_timestamp(&world, &snapshot, snapshot_version + 1, future());
        }
        "expired targets" => {
            let (_, _, targets_version) = versions(&world);
            let mut targets = current_targets(&world);
            targets.version = nz(targets_version + 1);
            targets.expires = past();
            publish_targets_as(&world, targets, targets_version + 1, future());
        }
        "root rollback" => {
            rotate_timestamp(&mut world).await;
            device_follows(&world).await;
            std::fs::copy(world.meta().join("1.root.json"), world.meta().join("3.root.json")).expect("copy root");
        }
        "timestamp rollback" => {
            let old = std::fs::read(world.meta().join("timestamp.json")).expect("timestamp");
            world
                .repo
                .refresh(&world.keys, &Expiry::default())
                .await
                .expect("refresh");
            device_follows(&world).await;
            std::fs::write(world.meta().join("timestamp.json"), old).expect("replay");
        }
        "snapshot rollback" => {
            let first = std::fs::read(world.meta().join("1.snapshot.json")).expect("snapshot 1");
            write_timestamp(&world, &first, 1, future());
        }
        "targets rollback" => {
            let (_, snapshot_version, _) = versions(&world);
            let first = std::fs::read(world.meta().join("1.targets.json")).expect("targets 1");
            let snapshot = write_snapshot(&world, snapshot_version + 1, &first, 1, future());
            write_timestamp(&world, &snapshot, snapshot_version + 1, future());
        }
        "non-consecutive root" => write_root(&world, "2.root.json", 3, future()),
        "too many root rotations" => {
            for _ in 0..3 {
                world.keys.rotate(Role::Timestamp, 1, None).await.expect("rotate");
            }
            world
                .repo
                .refresh(&world.keys, &Expiry::default())
                .await
                .expect("refresh");
            limits.root_updates_max = 2;
        }
        // The tampered file is one the device has not trusted yet: a device
        // does not fetch again the snapshot or targets it already holds.
        "snapshot hash mismatch" => {
            world
                .repo
                .refresh(&world.keys, &Expiry::default())
                .await
                .expect("refresh");
            let (_, snapshot_version, _) = versions(&world);
            edit_file(&world.meta().join(format!("{snapshot_version}.snapshot.json")), |b| {
                flip_whitespace(b)
            });
        }
        "targets hash mismatch" => {
            world.release(2, 2, "1.1.0", &[("threshold", "1.0.0")]).await;
            let (_, _, targets_version) = versions(&world);
            edit_file(&world.meta().join(format!("{targets_version}.targets.json")), |b| {
                flip_whitespace(b)
            });
        }
        "snapshot version mismatch" => {
            let (_, snapshot_version, targets_version) = versions(&world);
            let targets = std::fs::read(world.meta().join(format!("{targets_version}.targets.json"))).expect("targets");
            let mut snapshot = Snapshot::new("1.0.0".to_owned(), nz(99), future());
            snapshot
                .meta
                .insert("targets.json".to_owned(), metafile(&targets, targets_version));
            let bytes = world.write_signed(
                &format!("{}.snapshot.json", snapshot_version + 1),
                snapshot,
                &world.signers(Role::Snapshot),
            );
            write_timestamp(&world, &bytes, snapshot_version + 1, future());
        }
        "targets version mismatch" => {
            let (_, _, targets_version) = versions(&world);
            let mut targets = current_targets(&world);
            targets.version = nz(99);
            targets.expires = future();
            publish_targets_as(&world, targets, targets_version + 1, future());
        }
        "endless data from a directory" | "endless data over HTTP" | "stalled server (slow retrieval)" => {
            let set = world
                .release(2, 2, "1.1.0", &[("threshold", "2.0.0"), ("deadband", "1.0.0")])
                .await;
            let module = module_path(&world, &set, "threshold");
            if name == "endless data from a directory" {
                let mut file = std::fs::OpenOptions::new().append(true).open(&module).expect("module");
                file.write_all(&vec![0u8; 1 << 20]).expect("append");
            } else {
                let started = TestServer::start(&world.repo.public_dir(), Mode::Normal).await;
                let relative = module.strip_prefix(world.repo.public_dir()).expect("under public");
                let path = format!("/{}", relative.display());
                if name == "endless data over HTTP" {
                    started.set_path_mode(&path, Mode::Endless);
                } else {
                    started.set_path_mode(&path, Mode::Stall { after_bytes: 0 });
                    limits.download.min_bytes_per_sec = 1024;
                    limits.download.throughput_window = Duration::from_millis(300);
                }
                source = Source::Url(started.url());
                server = Some(started);
            }
        }
        "oversized timestamp" => {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(world.meta().join("timestamp.json"))
                .expect("timestamp");
            file.write_all(&vec![b' '; (limits.timestamp_bytes_max + 1) as usize])
                .expect("pad");
        }
        "oversized root" => {
            write_root(&world, "2.root.json", 2, future());
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(world.meta().join("2.root.json"))
                .expect("root");
            file.write_all(&vec![b' '; (limits.root_bytes_max + 1) as usize])
                .expect("pad");
        }
        "snapshot from an earlier publication" => {
            let (_, earlier, _) = versions(&world);
            let earlier = std::fs::read(world.meta().join(format!("{earlier}.snapshot.json"))).expect("snapshot");
            world
                .release(2, 2, "1.1.0", &[("threshold", "2.0.0"), ("deadband", "1.0.0")])
                .await;
            let (_, snapshot_version, _) = versions(&world);
            let path = world.meta().join(format!("{snapshot_version}.snapshot.json"));
            let mut earlier = earlier;
            earlier.resize(std::fs::metadata(&path).expect("snapshot").len() as usize, b' ');
            std::fs::write(path, earlier).expect("swap snapshot");
        }
        "release set from another publication" => {
            let first = world.repo.draft(1).expect("draft 1");
            let first_bytes = first.to_canonical_json().expect("encode");
            let set = world
                .release(2, 2, "1.1.0", &[("threshold", "2.0.0"), ("deadband", "1.0.0")])
                .await;
            let bytes = set.to_canonical_json().expect("encode");
            let path = world.repo.public_dir().join("targets").join(consistent_target_path(
                &release_set::target_name(2),
                &hex::encode(Sha256::digest(&bytes)),
            ));
            std::fs::write(path, first_bytes).expect("swap set");
        }
        "partial release set" | "mixed release set" => {
            let mut set = world.repo.draft(1).expect("draft 1");
            set.version = 2;
            set.security_counter = 2;
            let mut extra = Vec::new();
            if name == "partial release set" {
                let ghost = b"ghost module".to_vec();
                set.policies.insert(
                    "ghost".to_owned(),
                    PolicyModule {
                        version: "1.0.0".to_owned(),
                        module: Part {
                            target: "policies/ghost/1.0.0.wasm".to_owned(),
                            length: ghost.len() as u64,
                            sha256: hex::encode(Sha256::digest(&ghost)),
                        },
                        config: Default::default(),
                    },
                );
            } else {
                // The set names the threshold module of release 1 by its
                // target, but with the digest of a build from elsewhere
                // that is published under another name.
                let other = b"threshold module built for another release".to_vec();
                let module = &mut set.policies.get_mut("threshold").expect("threshold").module;
                module.length = other.len() as u64;
                module.sha256 = hex::encode(Sha256::digest(&other));
                extra.push(("policies/threshold/2.0.0.wasm", other));
            }
            publish_raw_set(&world, &set, &extra).await;
        }
        "wrong hardware class" => {
            world.release(2, 2, "1.1.0", &[("threshold", "1.0.0")]).await;
            class = "gw-arm";
        }
        "release version below installed" => {
            world.release(2, 2, "1.1.0", &[("threshold", "1.0.0")]).await;
            installed.release_version = 5;
        }
        "security counter below installed" => {
            world.release(2, 1, "1.1.0", &[("threshold", "1.0.0")]).await;
            installed.security_counter = 3;
        }
        "agent below committed version" => {
            world.release(2, 2, "0.9.0", &[("threshold", "1.0.0")]).await;
        }
        "module digest does not match" => {
            let set = world
                .release(2, 2, "1.1.0", &[("threshold", "2.0.0"), ("deadband", "1.0.0")])
                .await;
            edit_file(&module_path(&world, &set, "threshold"), |bytes| bytes[0] ^= 0xff);
        }
        "delegated role signs a target outside its paths" => {
            // The threshold team's key signs a deadband module.
            let evil = b"\0asm deadband built by the threshold team".to_vec();
            let (_, set) = graph::release_set(&world, 2, &[("deadband", "2.0.0", &evil)]);
            graph::publish(
                &world,
                &Graph {
                    top_targets: vec![set],
                    top_delegations: vec![delegate("team-threshold", &["policies/threshold/*"])],
                    roles: vec![role(
                        "team-threshold",
                        &[(&module_target("deadband", "2.0.0"), &evil)],
                        vec![],
                    )],
                },
            );
        }
        "delegated wildcard would cross /" => {
            // Trusted for `policies/*` (files directly under policies/), the
            // role signs a module one directory further down.
            let module = b"\0asm threshold 2.0.0 from a role trusted for policies/*".to_vec();
            let (_, set) = graph::release_set(&world, 2, &[("threshold", "2.0.0", &module)]);
            graph::publish(
                &world,
                &Graph {
                    top_targets: vec![set],
                    top_delegations: vec![delegate("policies-flat", &["policies/*"])],
                    roles: vec![role(
                        "policies-flat",
                        &[(&module_target("threshold", "2.0.0"), &module)],
                        vec![],
                    )],
                },
            );
        }
        "same-version timestamp with new content" => {
            // Signed with the timestamp key: the trusted version again, with
            // another expiry.
            let (timestamp_version, snapshot_version, _) = versions(&world);
            let snapshot =
                std::fs::read(world.meta().join(format!("{snapshot_version}.snapshot.json"))).expect("snapshot");
            let expires = metadata::expires_in(Duration::from_secs(3 * 24 * 3600)).expect("expiry");
            let mut timestamp = Timestamp::new("1.0.0".to_owned(), nz(timestamp_version), expires);
            timestamp
                .meta
                .insert("snapshot.json".to_owned(), metafile(&snapshot, snapshot_version));
            world.write_signed("timestamp.json", timestamp, &world.signers(Role::Timestamp));
        }
        "delegated role lists a stray target" => {
            // Each team signs its own module; the threshold team also lists
            // a deadband module of its own under the same name. It is not
            // trusted for that path, so the search never asks it.
            let threshold = b"\0asm threshold 2.0.0 by the threshold team".to_vec();
            let deadband = b"\0asm deadband 2.0.0 by the deadband team".to_vec();
            let stray = b"\0asm deadband 2.0.0 by the threshold team".to_vec();
            let (_, set) = graph::release_set(
                &world,
                2,
                &[("threshold", "2.0.0", &threshold), ("deadband", "2.0.0", &deadband)],
            );
            graph::publish(
                &world,
                &Graph {
                    top_targets: vec![set],
                    top_delegations: vec![
                        delegate("team-threshold", &["policies/threshold/*"]),
                        delegate("team-deadband", &["policies/deadband/*"]),
                    ],
                    roles: vec![
                        role(
                            "team-threshold",
                            &[
                                (&module_target("threshold", "2.0.0"), &threshold),
                                (&module_target("deadband", "2.0.0"), &stray),
                            ],
                            vec![],
                        ),
                        role(
                            "team-deadband",
                            &[(&module_target("deadband", "2.0.0"), &deadband)],
                            vec![],
                        ),
                    ],
                },
            );
        }
        "delegation cycle" => {
            // targets -> team-a -> team-b -> team-a: the search must end.
            let module = b"\0asm threshold 2.0.0".to_vec();
            let (_, set) = graph::release_set(&world, 2, &[("threshold", "2.0.0", &module)]);
            graph::publish(
                &world,
                &Graph {
                    top_targets: vec![set],
                    top_delegations: vec![delegate("team-a", &["policies/threshold/*"])],
                    roles: vec![
                        role("team-a", &[], vec![delegate("team-b", &["policies/*/*"])]),
                        role("team-b", &[], vec![delegate("team-a", &["policies/threshold/*"])]),
                    ],
                },
            );
        }
        "over-deep delegation graph" => {
            // A chain of 40 roles; only the last lists the module.
            let module = b"\0asm threshold 2.0.0".to_vec();
            let (_, set) = graph::release_set(&world, 2, &[("threshold", "2.0.0", &module)]);
            let depth = 40;
            let roles = (0..depth)
                .map(|idx| {
                    if idx + 1 == depth {
                        role(
                            &format!("link-{idx}"),
                            &[(&module_target("threshold", "2.0.0"), &module)],
                            vec![],
                        )
                    } else {
                        role(
                            &format!("link-{idx}"),
                            &[],
                            vec![delegate(&format!("link-{}", idx + 1), &["policies/threshold/*"])],
                        )
                    }
                })
                .collect();
            graph::publish(
                &world,
                &Graph {
                    top_targets: vec![set],
                    top_delegations: vec![delegate("link-0", &["policies/threshold/*"])],
                    roles,
                },
            );
        }
        other => panic!("no setup for attack {other:?}"),
    }
    let before = world.device_state();
    let result = world.update(&source, class, limits, &installed).await;
    drop(server);
    let unchanged = world.device_state() == before && !world.trusted().join("scratch").exists();
    (result, unchanged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_matrix() {
    let mut attacks = 0;
    let mut rejected = 0;
    let mut defused = 0;
    let mut unchanged_count = 0;
    let mut failures = Vec::new();
    for case in CASES {
        attacks += 1;
        let (result, unchanged) = run(case.name).await;
        match (&case.expect, &result) {
            (Expect::Refused(check), Err(error)) if check(error) => {
                rejected += 1;
                if unchanged {
                    unchanged_count += 1;
                } else {
                    failures.push(format!(
                        "attack {} ({}): device state changed",
                        case.category, case.name
                    ));
                }
            }
            (Expect::Installs, Ok(Some(_))) => defused += 1,
            (_, other) => failures.push(format!(
                "attack {} ({}): unexpected result {other:?}",
                case.category, case.name
            )),
        }
    }
    let categories: std::collections::BTreeSet<u8> = CASES.iter().map(|case| case.category).collect();
    assert_eq!(
        categories.len(),
        17,
        "every attack category of issues 4 and 14 has a case"
    );
    let line = format!(
        "attack-matrix: attacks={attacks} rejected={rejected} defused={defused} trusted-state-unchanged={unchanged_count}\n"
    );
    std::io::stderr().write_all(line.as_bytes()).expect("stderr");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
