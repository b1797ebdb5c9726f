use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::sim::{Damage, Fault, SimStore};
use crate::storage::{FileStore, StorageError, StorageErrorKind, StorageOp};

/// Cuts power at the next operation and reboots with `damage`.
fn crash(store: &mut SimStore, damage: Damage) {
    store.set_fault(Fault::Cut { at: 1, damage });
    assert_eq!(
        store.list(),
        Err(StorageError::new(StorageOp::Stat, StorageErrorKind::PowerLoss))
    );
    assert!(store.is_powered_off());
    store.reboot();
    assert!(!store.is_powered_off());
}

fn names(store: &mut SimStore) -> Vec<String> {
    let mut names = store.list().unwrap();
    names.sort();
    names
}

/// A file whose name and data are both durable.
fn durable_file(store: &mut SimStore, name: &str, data: &[u8]) {
    store.write(name, 0, data).unwrap();
    store.sync(name).unwrap();
    store.sync_dir().unwrap();
}

#[test]
fn reads_see_writes_with_zero_filled_gaps() {
    let mut store = SimStore::new();
    store.write("a", 2, b"xy").unwrap();
    store.write("a", 6, b"z").unwrap();
    assert_eq!(store.contents("a").unwrap(), b"\0\0xy\0\0z");
    assert_eq!(store.size("a"), Ok(Some(7)));
    assert_eq!(store.size("b"), Ok(None));

    let mut buf = [0xAA; 4];
    assert_eq!(store.read("a", 2, &mut buf), Ok(4));
    assert_eq!(&buf, b"xy\0\0");
    assert_eq!(store.read("a", 5, &mut buf), Ok(2));
    assert_eq!(&buf[..2], b"\0z");
    assert_eq!(store.read("a", 7, &mut buf), Ok(0));
    assert_eq!(store.read("a", u64::MAX, &mut buf), Ok(0));
    assert_eq!(
        store.read("b", 0, &mut buf),
        Err(StorageError::new(StorageOp::Read, StorageErrorKind::NotFound))
    );
}

#[test]
fn overwrite_replaces_bytes_in_place() {
    let mut store = SimStore::new();
    store.write("a", 0, b"hello").unwrap();
    store.write("a", 1, b"EL").unwrap();
    assert_eq!(store.contents("a").unwrap(), b"hELlo");
}

#[test]
fn empty_write_creates_name_but_not_data() {
    let mut store = SimStore::new();
    store.write("a", 10, b"").unwrap();
    assert_eq!(store.size("a"), Ok(Some(0)));
    assert_eq!(store.pending.len(), 1);
    store.sync_dir().unwrap();
    crash(&mut store, Damage::TornByte { seed: 3 });
    assert_eq!(store.contents("a").unwrap(), b"");
}

#[test]
fn huge_offset_is_refused_without_effect() {
    let mut store = SimStore::new();
    assert_eq!(
        store.write("a", u64::MAX, b"x"),
        Err(StorageError::new(StorageOp::Write, StorageErrorKind::NoSpace))
    );
    assert_eq!(store.size("a"), Ok(None));
    assert!(store.pending.is_empty());
}

#[test]
fn synced_data_and_synced_name_survive_losing_everything_else() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"durable");
    store.write("a", 7, b"+more").unwrap();
    store.write("b", 0, b"new").unwrap();
    assert_eq!(store.durable_contents("a").unwrap(), b"durable");
    assert_eq!(store.durable_contents("b"), None);

    crash(&mut store, Damage::LoseUnsynced);
    assert_eq!(names(&mut store), ["a"]);
    assert_eq!(store.contents("a").unwrap(), b"durable");
}

#[test]
fn sync_without_sync_dir_loses_the_name() {
    for damage in [Damage::LoseNames, Damage::LoseUnsynced] {
        let mut store = SimStore::new();
        store.write("a", 0, b"data").unwrap();
        store.sync("a").unwrap();
        crash(&mut store, damage);
        assert_eq!(names(&mut store), Vec::<String>::new(), "{damage:?}");
        assert_eq!(store.size("a"), Ok(None));
    }
}

#[test]
fn sync_dir_without_sync_keeps_an_empty_name() {
    let mut store = SimStore::new();
    store.write("a", 0, b"data").unwrap();
    store.sync_dir().unwrap();
    assert_eq!(store.durable_contents("a").unwrap(), b"");

    let mut lose = store.clone();
    crash(&mut lose, Damage::LoseUnsynced);
    assert_eq!(lose.contents("a").unwrap(), b"");

    let mut names_lost = store.clone();
    crash(&mut names_lost, Damage::LoseNames);
    assert_eq!(names_lost.contents("a").unwrap(), b"data");
}

#[test]
fn lose_names_keeps_data_but_drops_every_directory_change() {
    let mut store = SimStore::new();
    durable_file(&mut store, "old", b"v1");
    durable_file(&mut store, "gone", b"x");
    store.write("old", 0, b"v2").unwrap();
    store.write("new", 0, b"n").unwrap();
    store.rename("new", "moved").unwrap();
    store.remove("gone").unwrap();
    crash(&mut store, Damage::LoseNames);
    assert_eq!(names(&mut store), ["gone", "old"]);
    assert_eq!(store.contents("old").unwrap(), b"v2");
    assert_eq!(store.contents("gone").unwrap(), b"x");
}

#[test]
fn keep_unsynced_reproduces_the_current_view() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"aaaa");
    store.write("a", 2, b"AA").unwrap();
    store.write("tmp", 0, b"image").unwrap();
    store.rename("tmp", "a").unwrap();
    store.write("c", 3, b"c").unwrap();
    store.remove("c").unwrap();
    store.write("c", 0, b"again").unwrap();
    let before: Vec<(String, Vec<u8>)> = names(&mut store)
        .into_iter()
        .map(|n| {
            let c = store.contents(&n).unwrap();
            (n, c)
        })
        .collect();

    crash(&mut store, Damage::KeepUnsynced);
    let after: Vec<(String, Vec<u8>)> = names(&mut store)
        .into_iter()
        .map(|n| {
            let c = store.contents(&n).unwrap();
            (n, c)
        })
        .collect();
    assert_eq!(before, after);
    assert_eq!(
        after,
        [
            (String::from("a"), b"image".to_vec()),
            (String::from("c"), b"again".to_vec()),
        ]
    );
}

#[test]
fn rename_without_sync_dir_is_lost() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"old");
    durable_file(&mut store, "tmp", b"new");
    store.rename("tmp", "a").unwrap();
    assert_eq!(store.contents("a").unwrap(), b"new");
    assert_eq!(store.contents("tmp"), None);
    assert_eq!(store.durable_contents("a").unwrap(), b"old");

    let mut lost = store.clone();
    crash(&mut lost, Damage::LoseUnsynced);
    assert_eq!(names(&mut lost), ["a", "tmp"]);
    assert_eq!(lost.contents("a").unwrap(), b"old");

    store.sync_dir().unwrap();
    assert_eq!(store.durable_contents("a").unwrap(), b"new");
    crash(&mut store, Damage::LoseUnsynced);
    assert_eq!(names(&mut store), ["a"]);
    assert_eq!(store.contents("a").unwrap(), b"new");
}

#[test]
fn data_follows_the_inode_across_renames() {
    // The classic atomic replace: write tmp, sync, rename, sync_dir.
    let mut store = SimStore::new();
    store.write("tmp", 0, b"payload").unwrap();
    store.rename("tmp", "final").unwrap();
    store.sync("final").unwrap();
    store.sync_dir().unwrap();
    crash(&mut store, Damage::LoseUnsynced);
    assert_eq!(names(&mut store), ["final"]);
    assert_eq!(store.contents("final").unwrap(), b"payload");
}

#[test]
fn rename_of_a_missing_name_fails_and_records_nothing() {
    let mut store = SimStore::new();
    assert_eq!(
        store.rename("nope", "a"),
        Err(StorageError::new(StorageOp::Rename, StorageErrorKind::NotFound))
    );
    assert!(store.pending.is_empty());
    store.write("a", 0, b"x").unwrap();
    let pending = store.pending.len();
    store.rename("a", "a").unwrap();
    assert_eq!(store.pending.len(), pending);
    assert_eq!(store.contents("a").unwrap(), b"x");
}

#[test]
fn remove_without_sync_dir_is_lost_and_missing_remove_is_a_no_op() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"x");
    store.remove("missing").unwrap();
    assert!(store.pending.is_empty());
    store.remove("a").unwrap();
    assert_eq!(store.size("a"), Ok(None));

    let mut lost = store.clone();
    crash(&mut lost, Damage::LoseUnsynced);
    assert_eq!(lost.contents("a").unwrap(), b"x");

    store.sync_dir().unwrap();
    assert_eq!(store.durable_contents("a"), None);
    crash(&mut store, Damage::LoseUnsynced);
    assert_eq!(names(&mut store), Vec::<String>::new());
}

#[test]
fn sync_of_a_missing_name_is_not_found() {
    let mut store = SimStore::new();
    assert_eq!(
        store.sync("a"),
        Err(StorageError::new(StorageOp::Sync, StorageErrorKind::NotFound))
    );
}

#[test]
fn failed_sync_drops_the_data_and_a_retry_lies() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"v1");
    store.write("a", 0, b"v2").unwrap();
    store.write("b", 0, b"other").unwrap();
    store.sync_dir().unwrap();

    store.set_fault(Fault::FailOnce {
        at: 1,
        kind: StorageErrorKind::Io,
    });
    assert_eq!(
        store.sync("a"),
        Err(StorageError::new(StorageOp::Sync, StorageErrorKind::Io))
    );
    // Reads still see the data that will never reach the disk.
    assert_eq!(store.contents("a").unwrap(), b"v2");
    assert_eq!(store.sync("a"), Ok(()));
    assert_eq!(store.durable_contents("a").unwrap(), b"v1");

    // Other files' unsynced data is unaffected by the failure.
    let mut keep = store.clone();
    crash(&mut keep, Damage::KeepUnsynced);
    assert_eq!(keep.contents("a").unwrap(), b"v1");
    assert_eq!(keep.contents("b").unwrap(), b"other");

    store.reboot();
    assert_eq!(store.contents("a").unwrap(), b"v1");
    assert_eq!(store.contents("b").unwrap(), b"");
}

#[test]
fn torn_write_keeps_a_prefix_of_the_last_write_only() {
    let base = {
        let mut store = SimStore::new();
        durable_file(&mut store, "a", &[0u8; 16]);
        store.write("a", 0, &[1u8; 8]).unwrap();
        store.write("b", 0, b"b").unwrap();
        store.write("a", 4, &[2u8; 10]).unwrap();
        store
    };
    let mut tears = BTreeSet::new();
    for seed in 0..64 {
        for damage in [Damage::TornByte { seed }, Damage::TornWord { seed }] {
            let mut store = base.clone();
            crash(&mut store, damage);
            let got = store.contents("a").unwrap();
            assert_eq!(store.contents("b").unwrap(), b"b", "{damage:?}");
            let t = got[4..].iter().take_while(|b| **b == 2).count();
            assert!(t < 10, "{damage:?}: whole last write landed");
            let mut want = vec![0u8; 16];
            want[..8].fill(1);
            want[4..4 + t].fill(2);
            assert_eq!(got, want, "{damage:?}");
            tears.insert(t);

            let mut again = base.clone();
            crash(&mut again, damage);
            assert_eq!(again.contents("a").unwrap(), got, "{damage:?}");
        }
    }
    assert!(tears.len() >= 5, "tear positions barely vary: {tears:?}");
    assert!(tears.contains(&0));
}

#[test]
fn torn_damage_without_pending_data_keeps_directory_changes() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"x");
    store.rename("a", "b").unwrap();
    crash(&mut store, Damage::TornByte { seed: 9 });
    assert_eq!(names(&mut store), ["b"]);
    assert_eq!(store.contents("b").unwrap(), b"x");
}

/// Eight single-byte writes and four directory changes, none durable.
fn random_subset_base() -> SimStore {
    let mut store = SimStore::new();
    durable_file(&mut store, "data", &[0u8; 8]);
    for i in 0..8u8 {
        store.write("data", u64::from(i), &[i + 1]).unwrap();
    }
    for name in ["d1", "d2", "d3", "d4"] {
        store.write(name, 0, b"").unwrap();
    }
    store
}

#[test]
fn random_subset_is_deterministic_per_seed_and_varies_across_seeds() {
    let base = random_subset_base();
    let dirs = ["d1", "d2", "d3", "d4"];
    let mut outcomes = BTreeSet::new();
    let mut prefixes = BTreeSet::new();
    for seed in 0..64 {
        let damage = Damage::RandomSubset { seed };
        let mut store = base.clone();
        crash(&mut store, damage);
        let data = store.contents("data").unwrap();
        for (i, byte) in data.iter().enumerate() {
            assert!(*byte == 0 || usize::from(*byte) == i + 1, "{damage:?}: {data:?}");
        }
        let present: Vec<bool> = dirs.iter().map(|d| store.contents(d).is_some()).collect();
        let prefix = present.iter().take_while(|p| **p).count();
        assert!(
            present[prefix..].iter().all(|p| !p),
            "{damage:?}: directory changes are not a prefix: {present:?}"
        );
        prefixes.insert(prefix);

        let mut again = base.clone();
        crash(&mut again, damage);
        assert_eq!(again.contents("data").unwrap(), data, "{damage:?}");
        assert_eq!(names(&mut again), names(&mut store), "{damage:?}");
        outcomes.insert(data);
    }
    assert!(outcomes.len() > 20, "only {} outcomes", outcomes.len());
    assert_eq!(prefixes.len(), 5, "prefix lengths seen: {prefixes:?}");
}

#[test]
fn random_subset_replays_surviving_writes_in_order() {
    // Two writes to the same byte: if both survive, the later one wins.
    let mut base = SimStore::new();
    durable_file(&mut base, "a", b"0");
    base.write("a", 0, b"1").unwrap();
    base.write("a", 0, b"2").unwrap();
    let mut seen = BTreeSet::new();
    for seed in 0..64 {
        let mut store = base.clone();
        crash(&mut store, Damage::RandomSubset { seed });
        seen.insert(store.contents("a").unwrap());
    }
    let want: BTreeSet<Vec<u8>> = [b"0".to_vec(), b"1".to_vec(), b"2".to_vec()].into();
    assert_eq!(seen, want);
}

#[test]
fn operations_are_counted_from_construction_fault_and_reboot() {
    let mut store = SimStore::new();
    assert_eq!(store.ops(), 0);
    let mut buf = [0; 1];
    store.write("a", 0, b"x").unwrap();
    store.sync("a").unwrap();
    store.sync_dir().unwrap();
    store.rename("a", "b").unwrap();
    let _ = store.read("missing", 0, &mut buf);
    store.size("b").unwrap();
    store.list().unwrap();
    store.remove("b").unwrap();
    assert_eq!(store.ops(), 8);

    store.set_fault(Fault::None);
    assert_eq!(store.ops(), 0);
    store.list().unwrap();
    assert_eq!(store.ops(), 1);
    store.reboot();
    assert_eq!(store.ops(), 0);
}

#[test]
fn cut_stops_its_operation_and_every_later_one() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"x");
    store.set_fault(Fault::Cut {
        at: 3,
        damage: Damage::KeepUnsynced,
    });
    store.write("a", 1, b"y").unwrap();
    store.list().unwrap();
    assert!(!store.is_powered_off());
    let power_loss = |op| Some(StorageError::new(op, StorageErrorKind::PowerLoss));
    // Operation 3 never starts, even though KeepUnsynced would keep it.
    assert_eq!(store.write("a", 2, b"z").err(), power_loss(StorageOp::Write));
    assert!(store.is_powered_off());
    let mut buf = [0; 4];
    assert_eq!(store.read("a", 0, &mut buf).err(), power_loss(StorageOp::Read));
    assert_eq!(store.size("a").err(), power_loss(StorageOp::Stat));
    assert_eq!(store.list().err(), power_loss(StorageOp::Stat));
    assert_eq!(store.sync("a").err(), power_loss(StorageOp::Sync));
    assert_eq!(store.sync_dir().err(), power_loss(StorageOp::SyncDir));
    assert_eq!(store.rename("a", "b").err(), power_loss(StorageOp::Rename));
    assert_eq!(store.remove("a").err(), power_loss(StorageOp::Remove));
    assert_eq!(store.write("c", 0, b"c").err(), power_loss(StorageOp::Write));
    assert_eq!(store.ops(), 11);
    assert_eq!(store.contents("a").unwrap(), b"xy");
    assert_eq!(store.durable_contents("a").unwrap(), b"x");

    store.reboot();
    assert_eq!(store.contents("a").unwrap(), b"xy");
    assert_eq!(names(&mut store), ["a"]);
    assert_eq!(store.write("a", 2, b"z"), Ok(()));
}

#[test]
fn cut_that_is_never_reached_reboots_losing_unsynced() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"x");
    store.set_fault(Fault::Cut {
        at: 100,
        damage: Damage::KeepUnsynced,
    });
    store.write("a", 0, b"y").unwrap();
    assert!(!store.is_powered_off());
    store.reboot();
    assert_eq!(store.contents("a").unwrap(), b"x");
}

#[test]
fn fail_once_fails_one_operation_without_effect() {
    let mut store = SimStore::new();
    store.set_fault(Fault::FailOnce {
        at: 2,
        kind: StorageErrorKind::NoSpace,
    });
    store.write("a", 0, b"x").unwrap();
    assert_eq!(
        store.write("a", 1, b"y"),
        Err(StorageError::new(StorageOp::Write, StorageErrorKind::NoSpace))
    );
    assert_eq!(store.contents("a").unwrap(), b"x");
    store.write("b", 0, b"b").unwrap();
    store.rename("b", "c").unwrap();
    assert!(!store.is_powered_off());
    assert_eq!(names(&mut store), ["a", "c"]);
}

#[test]
fn fail_once_on_rename_and_sync_dir_has_no_effect() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"x");
    store.set_fault(Fault::FailOnce {
        at: 1,
        kind: StorageErrorKind::Io,
    });
    assert!(store.rename("a", "b").is_err());
    assert_eq!(names(&mut store), ["a"]);

    store.rename("a", "b").unwrap();
    store.set_fault(Fault::FailOnce {
        at: 1,
        kind: StorageErrorKind::Io,
    });
    assert!(store.sync_dir().is_err());
    assert_eq!(store.durable_contents("b"), None);
    store.sync_dir().unwrap();
    assert_eq!(store.durable_contents("b").unwrap(), b"x");
}

#[test]
fn fail_from_fails_everything_or_only_mutations() {
    for mutations_only in [false, true] {
        let mut store = SimStore::new();
        durable_file(&mut store, "a", b"x");
        store.set_fault(Fault::FailFrom {
            at: 2,
            kind: StorageErrorKind::NoSpace,
            mutations_only,
        });
        store.write("a", 1, b"y").unwrap();
        let no_space = |op| Some(StorageError::new(op, StorageErrorKind::NoSpace));
        assert_eq!(store.write("a", 2, b"z").err(), no_space(StorageOp::Write));
        assert_eq!(store.sync("a").err(), no_space(StorageOp::Sync));
        assert_eq!(store.sync_dir().err(), no_space(StorageOp::SyncDir));
        assert_eq!(store.rename("a", "b").err(), no_space(StorageOp::Rename));
        assert_eq!(store.remove("a").err(), no_space(StorageOp::Remove));
        let mut buf = [0; 4];
        if mutations_only {
            assert_eq!(store.read("a", 0, &mut buf), Ok(2));
            assert_eq!(store.size("a"), Ok(Some(2)));
            assert_eq!(names(&mut store), ["a"]);
        } else {
            assert_eq!(store.read("a", 0, &mut buf).err(), no_space(StorageOp::Read));
            assert_eq!(store.size("a").err(), no_space(StorageOp::Stat));
            assert_eq!(store.list().err(), no_space(StorageOp::Stat));
        }
        assert!(!store.is_powered_off());

        // Not a cut, so the reboot loses whatever was not synced.
        store.reboot();
        assert_eq!(store.contents("a").unwrap(), b"x");
        store.write("a", 0, b"ok").unwrap();
    }
}

#[test]
fn clones_are_independent() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"shared");
    let snapshot = store.clone();
    store.write("a", 0, b"SH").unwrap();
    store.sync("a").unwrap();
    store.remove("a").unwrap();
    store.sync_dir().unwrap();
    assert_eq!(snapshot.contents("a").unwrap(), b"shared");
    assert_eq!(snapshot.durable_contents("a").unwrap(), b"shared");
    assert_eq!(store.contents("a"), None);
}

#[test]
fn reboot_drops_orphaned_inodes() {
    let mut store = SimStore::new();
    durable_file(&mut store, "a", b"a");
    for _ in 0..10 {
        store.write("tmp", 0, b"t").unwrap();
        store.sync("tmp").unwrap();
        store.remove("tmp").unwrap();
    }
    store.sync_dir().unwrap();
    store.reboot();
    assert_eq!(store.inodes.len(), 1);
    assert_eq!(store.durable_inodes.len(), 1);
    assert!(store.pending.is_empty());
    assert_eq!(names(&mut store), ["a"]);
}

#[test]
fn debug_shows_sizes_not_contents() {
    let mut store = SimStore::default();
    store.write("a", 0, &[7u8; 1000]).unwrap();
    let text = alloc::format!("{store:?}");
    assert!(text.contains("\"a\": 1000"), "{text}");
    assert!(text.len() < 300, "{text}");
}
