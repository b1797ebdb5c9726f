use crate::precompiled::WASMTIME_VERSION;

/// The constant must name the wasmtime actually built; the lock file is
/// the record of that.
#[test]
fn wasmtime_version_matches_the_lock_file() {
    let lock_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock");
    let lock = std::fs::read_to_string(lock_path).unwrap();
    let expected = format!("name = \"wasmtime\"\nversion = \"{WASMTIME_VERSION}\"\n");
    assert!(
        lock.contains(&expected),
        "Cargo.lock does not pin wasmtime {WASMTIME_VERSION}"
    );
}
