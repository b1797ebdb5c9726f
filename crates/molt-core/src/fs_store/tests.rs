//! Unit tests for [`FsStore`] on a temporary directory.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::string::String;
use std::vec;
use std::vec::Vec;

use crate::fs_store::{CACHE_CAPACITY, FsStore, map_io};
use crate::storage::{FileStore, StorageError, StorageErrorKind, StorageOp};

fn store() -> (tempfile::TempDir, FsStore) {
    let tmp = tempfile::tempdir().unwrap();
    let store = FsStore::open(tmp.path().join("store")).unwrap();
    (tmp, store)
}

fn read_all(store: &mut FsStore, name: &str) -> Vec<u8> {
    let len = store.size(name).unwrap().unwrap();
    let mut buf = vec![0xAA; usize::try_from(len).unwrap()];
    assert_eq!(store.read(name, 0, &mut buf).unwrap(), buf.len());
    buf
}

fn err(op: StorageOp, kind: StorageErrorKind) -> StorageError {
    StorageError::new(op, kind)
}

#[test]
fn open_creates_nested_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a").join("b").join("c");
    let store = FsStore::open(&dir).unwrap();
    assert_eq!(store.dir(), dir.as_path());
    assert!(dir.is_dir());
    // Opening an existing directory works too.
    let again = FsStore::open(&dir).unwrap();
    assert_eq!(again.dir(), dir.as_path());
}

#[test]
fn open_rejects_a_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(FsStore::open(&file).is_err());
}

#[test]
fn write_read_round_trip_at_offsets() {
    // (offset, data) writes in order, then the expected whole file.
    type Case = (&'static [(u64, &'static [u8])], &'static [u8]);
    let cases: &[Case] = &[
        (&[(0, b"hello")], b"hello"),
        (&[(0, b"hello"), (5, b" world")], b"hello world"),
        (&[(0, b"hello"), (1, b"EL")], b"hELlo"),
        // A gap past the end is zero-filled.
        (&[(3, b"ab")], b"\0\0\0ab"),
        (&[(0, b"x"), (4, b"y")], b"x\0\0\0y"),
        // An empty write past the end still extends the file.
        (&[(0, b"x"), (3, b"")], b"x\0\0"),
        (&[(0, b"xyz"), (1, b"")], b"xyz"),
    ];
    for (i, (writes, want)) in cases.iter().enumerate() {
        let (_tmp, mut store) = store();
        for &(offset, data) in *writes {
            store.write("f", offset, data).unwrap();
        }
        assert_eq!(store.size("f").unwrap(), Some(want.len() as u64), "case {i}");
        assert_eq!(read_all(&mut store, "f"), *want, "case {i}");
        // The bytes really are in the file on disk.
        assert_eq!(std::fs::read(store.dir().join("f")).unwrap(), *want, "case {i}");
    }
}

#[test]
fn read_at_offsets_and_eof() {
    let (_tmp, mut store) = store();
    store.write("f", 0, b"0123456789").unwrap();
    // (offset, buffer length, expected bytes)
    let cases: &[(u64, usize, &[u8])] = &[
        (0, 4, b"0123"),
        (6, 4, b"6789"),
        (8, 4, b"89"),
        (10, 4, b""),
        (100, 4, b""),
        (3, 0, b""),
    ];
    for &(offset, len, want) in cases {
        let mut buf = vec![0xAA; len];
        let n = store.read("f", offset, &mut buf).unwrap();
        assert_eq!(&buf[..n], want, "offset {offset} len {len}");
    }
}

#[test]
fn missing_names() {
    let (_tmp, mut store) = store();
    assert_eq!(store.size("nope"), Ok(None));
    let mut buf = [0; 4];
    assert_eq!(
        store.read("nope", 0, &mut buf),
        Err(err(StorageOp::Read, StorageErrorKind::NotFound))
    );
    assert_eq!(
        store.sync("nope"),
        Err(err(StorageOp::Sync, StorageErrorKind::NotFound))
    );
    assert_eq!(
        store.rename("nope", "other"),
        Err(err(StorageOp::Rename, StorageErrorKind::NotFound))
    );
    assert_eq!(store.remove("nope"), Ok(()));
    // None of that created anything.
    assert_eq!(store.list().unwrap(), Vec::<String>::new());
}

#[test]
fn size_tracks_writes() {
    let (_tmp, mut store) = store();
    let steps: &[(u64, &[u8], u64)] = &[(0, b"abc", 3), (1, b"x", 3), (10, b"yz", 12), (0, b"", 12)];
    for &(offset, data, want) in steps {
        store.write("f", offset, data).unwrap();
        assert_eq!(store.size("f").unwrap(), Some(want));
    }
}

#[test]
fn rename_replaces_target_and_invalidates_handles() {
    let (_tmp, mut store) = store();
    store.write("new", 0, b"fresh").unwrap();
    store.write("cur", 0, b"stale contents").unwrap();
    // Both names have cached handles now.
    assert_eq!(read_all(&mut store, "cur"), b"stale contents");
    assert_eq!(read_all(&mut store, "new"), b"fresh");

    store.rename("new", "cur").unwrap();
    assert_eq!(read_all(&mut store, "cur"), b"fresh");
    assert_eq!(store.size("cur").unwrap(), Some(5));
    assert_eq!(store.size("new").unwrap(), None);
    let mut buf = [0; 4];
    assert_eq!(
        store.read("new", 0, &mut buf),
        Err(err(StorageOp::Read, StorageErrorKind::NotFound))
    );

    // Writing the old name again creates a new file, leaving `cur` alone.
    store.write("new", 0, b"again").unwrap();
    assert_eq!(read_all(&mut store, "cur"), b"fresh");
    let mut names = store.list().unwrap();
    names.sort();
    assert_eq!(names, ["cur", "new"]);

    // Writing through `cur` after the rename reaches the renamed file.
    store.write("cur", 5, b"!").unwrap();
    assert_eq!(std::fs::read(store.dir().join("cur")).unwrap(), b"fresh!");

    // Renaming a name onto itself is a no-op.
    store.rename("cur", "cur").unwrap();
    assert_eq!(read_all(&mut store, "cur"), b"fresh!");
}

#[test]
fn remove_invalidates_handle() {
    let (_tmp, mut store) = store();
    store.write("f", 0, b"old data").unwrap();
    store.remove("f").unwrap();
    assert_eq!(store.size("f").unwrap(), None);
    assert!(!store.dir().join("f").exists());
    store.write("f", 0, b"new").unwrap();
    assert_eq!(read_all(&mut store, "f"), b"new");
    store.remove("f").unwrap();
    store.remove("f").unwrap();
}

#[test]
fn list_reports_regular_utf8_files_only() {
    let (_tmp, mut store) = store();
    for name in ["a", "b.tmp", "ünïcode"] {
        store.write(name, 0, b"x").unwrap();
    }
    std::fs::create_dir(store.dir().join("subdir")).unwrap();
    std::fs::write(store.dir().join(OsStr::from_bytes(b"bad\xff")), b"x").unwrap();
    let mut names = store.list().unwrap();
    names.sort();
    assert_eq!(names, ["a", "b.tmp", "ünïcode"]);
}

#[test]
fn invalid_names_are_rejected() {
    let (_tmp, mut store) = store();
    store.write("ok", 0, b"x").unwrap();
    let long = "n".repeat(256);
    let invalid = ["", ".", "..", "a/b", "/abs", "sub/", "nul\0", long.as_str()];
    let not_found = StorageErrorKind::NotFound;
    let other = StorageErrorKind::Other;
    let want = [
        Err(err(StorageOp::Read, not_found)),
        Err(err(StorageOp::Stat, not_found)),
        Err(err(StorageOp::Write, other)),
        Err(err(StorageOp::Sync, other)),
        Err(err(StorageOp::Remove, other)),
        Err(err(StorageOp::Rename, other)),
        Err(err(StorageOp::Rename, other)),
    ];
    for name in invalid {
        let mut buf = [0; 1];
        let got = [
            store.read(name, 0, &mut buf).map(drop),
            store.size(name).map(drop),
            store.write(name, 0, b"x"),
            store.sync(name),
            store.remove(name),
            store.rename("ok", name),
            store.rename(name, "ok"),
        ];
        assert_eq!(got, want, "{name:?}");
    }
    // Nothing escaped the directory or disturbed the valid name.
    assert_eq!(store.list().unwrap(), ["ok"]);
    assert_eq!(read_all(&mut store, "ok"), b"x");
    // The longest valid name works.
    let longest = "n".repeat(255);
    store.write(&longest, 0, b"y").unwrap();
    assert_eq!(read_all(&mut store, &longest), b"y");
}

#[test]
fn sync_and_sync_dir_succeed() {
    let (_tmp, mut store) = store();
    store.write("f", 0, b"data").unwrap();
    store.sync("f").unwrap();
    store.sync("f").unwrap();
    store.sync_dir().unwrap();
    store.sync_dir().unwrap();
}

#[test]
fn failed_sync_is_never_retried() {
    let (_tmp, mut store) = store();
    store.write("f", 0, b"data").unwrap();
    store.write("g", 0, b"data").unwrap();
    store.inject_sync_failure("f", io::ErrorKind::StorageFull);
    // The first failure reports the real cause.
    assert_eq!(store.sync("f"), Err(err(StorageOp::Sync, StorageErrorKind::NoSpace)));
    // Every later sync of that name fails, though fsync would succeed now.
    for _ in 0..3 {
        assert_eq!(store.sync("f"), Err(err(StorageOp::Sync, StorageErrorKind::Io)));
    }
    // Rewriting in place does not make the old data trustworthy.
    store.write("f", 0, b"more").unwrap();
    assert_eq!(store.sync("f"), Err(err(StorageOp::Sync, StorageErrorKind::Io)));
    // Reads still return what was written.
    assert_eq!(read_all(&mut store, "f"), b"more");
    // Other names are unaffected.
    store.sync("g").unwrap();
    // Removing the name clears the failure.
    store.remove("f").unwrap();
    store.write("f", 0, b"new").unwrap();
    store.sync("f").unwrap();
}

#[test]
fn rename_onto_a_failed_name_clears_it() {
    let (_tmp, mut store) = store();
    store.write("f", 0, b"data").unwrap();
    store.inject_sync_failure("f", io::ErrorKind::Other);
    assert_eq!(store.sync("f"), Err(err(StorageOp::Sync, StorageErrorKind::Io)));
    assert_eq!(store.sync("f"), Err(err(StorageOp::Sync, StorageErrorKind::Io)));
    store.write("f.tmp", 0, b"rewritten").unwrap();
    store.sync("f.tmp").unwrap();
    store.rename("f.tmp", "f").unwrap();
    store.sync("f").unwrap();
    assert_eq!(read_all(&mut store, "f"), b"rewritten");
}

#[test]
fn rename_of_a_failed_name_carries_the_failure() {
    let (_tmp, mut store) = store();
    store.write("a", 0, b"suspect").unwrap();
    store.write("b", 0, b"good").unwrap();
    store.sync("b").unwrap();
    store.inject_sync_failure("a", io::ErrorKind::Other);
    assert!(store.sync("a").is_err());
    store.rename("a", "b").unwrap();
    assert_eq!(store.sync("b"), Err(err(StorageOp::Sync, StorageErrorKind::Io)));
    // The old name is free again: a new file under it syncs.
    store.write("a", 0, b"clean").unwrap();
    store.sync("a").unwrap();
    // A failed name renamed onto itself stays failed.
    store.inject_sync_failure("a", io::ErrorKind::Other);
    assert!(store.sync("a").is_err());
    store.rename("a", "a").unwrap();
    assert_eq!(store.sync("a"), Err(err(StorageOp::Sync, StorageErrorKind::Io)));
}

#[test]
fn failed_sync_dir_is_never_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut store = FsStore::open(&dir).unwrap();
    store.sync_dir().unwrap();
    store.inject_sync_dir_failure(io::ErrorKind::StorageFull);
    assert_eq!(
        store.sync_dir(),
        Err(err(StorageOp::SyncDir, StorageErrorKind::NoSpace))
    );
    for _ in 0..3 {
        assert_eq!(store.sync_dir(), Err(err(StorageOp::SyncDir, StorageErrorKind::Io)));
    }
    // File syncs are a separate matter.
    store.write("f", 0, b"x").unwrap();
    store.sync("f").unwrap();
    drop(store);
    // Reopening starts afresh.
    let mut store = FsStore::open(&dir).unwrap();
    store.sync_dir().unwrap();
}

#[test]
fn handle_cache_is_bounded_and_consistent() {
    let (_tmp, mut store) = store();
    let names: Vec<String> = (0..CACHE_CAPACITY * 3).map(|i| std::format!("f{i}")).collect();
    for round in 0..3u8 {
        for (i, name) in names.iter().enumerate() {
            store.write(name, u64::from(round), &[round, i as u8]).unwrap();
            assert!(store.cached_names().len() <= CACHE_CAPACITY);
        }
    }
    for (i, name) in names.iter().enumerate() {
        assert_eq!(read_all(&mut store, name), [0, 1, 2, i as u8]);
        let on_disk = std::fs::read(store.dir().join(name)).unwrap();
        assert_eq!(on_disk, [0, 1, 2, i as u8]);
    }
    assert!(store.cached_names().len() <= CACHE_CAPACITY);
}

#[test]
fn eviction_prefers_synced_handles() {
    let (_tmp, mut store) = store();
    let dirty: Vec<String> = (0..CACHE_CAPACITY - 1).map(|i| std::format!("d{i}")).collect();
    for name in &dirty {
        store.write(name, 0, b"unsynced").unwrap();
    }
    store.write("clean", 0, b"synced").unwrap();
    store.sync("clean").unwrap();
    assert_eq!(store.cached_names().len(), CACHE_CAPACITY);
    // The least recently used handle is dirty; the synced one goes instead.
    store.write("next", 0, b"x").unwrap();
    let mut want: Vec<&str> = dirty.iter().map(String::as_str).collect();
    want.push("next");
    assert_eq!(store.cached_names(), want);
    // With every handle dirty, the least recently used goes.
    store.write("last", 0, b"x").unwrap();
    assert_eq!(store.cached_names()[0], "d1");
    assert_eq!(store.cached_names().len(), CACHE_CAPACITY);
    // Using a handle makes it the most recently used.
    store.size("d1").unwrap();
    let mut buf = [0; 1];
    store.read("d1", 0, &mut buf).unwrap();
    assert_eq!(store.cached_names().last(), Some(&"d1"));
}

#[test]
fn streaming_write_reuses_one_handle() {
    let (_tmp, mut store) = store();
    let chunk = [0x5Au8; 4096];
    for i in 0..64u64 {
        store.write("image", i * chunk.len() as u64, &chunk).unwrap();
    }
    assert_eq!(store.cached_names(), ["image"]);
    assert_eq!(store.size("image").unwrap(), Some(64 * 4096));
    let mut buf = vec![0; 4096];
    assert_eq!(store.read("image", 63 * 4096, &mut buf).unwrap(), 4096);
    assert!(buf.iter().all(|&b| b == 0x5A));
}

#[test]
fn write_past_u64_is_out_of_bounds() {
    let (_tmp, mut store) = store();
    assert_eq!(
        store.write("f", u64::MAX, b"xy"),
        Err(err(StorageOp::Write, StorageErrorKind::OutOfBounds))
    );
}

#[test]
fn io_errors_map_to_kinds() {
    let cases = [
        (io::ErrorKind::NotFound, StorageErrorKind::NotFound),
        (io::ErrorKind::StorageFull, StorageErrorKind::NoSpace),
        (io::ErrorKind::QuotaExceeded, StorageErrorKind::NoSpace),
        (io::ErrorKind::PermissionDenied, StorageErrorKind::Io),
        (io::ErrorKind::Other, StorageErrorKind::Io),
        (io::ErrorKind::InvalidInput, StorageErrorKind::Io),
    ];
    for (io_kind, want) in cases {
        let e = io::Error::from(io_kind);
        assert_eq!(map_io(StorageOp::Write, &e), err(StorageOp::Write, want), "{io_kind:?}");
    }
    // Raw OS errors map by their kind too.
    let eio = io::Error::from_raw_os_error(5);
    assert_eq!(
        map_io(StorageOp::Sync, &eio),
        err(StorageOp::Sync, StorageErrorKind::Io)
    );
    let enospc = io::Error::from_raw_os_error(28);
    assert_eq!(
        map_io(StorageOp::Write, &enospc),
        err(StorageOp::Write, StorageErrorKind::NoSpace)
    );
}
