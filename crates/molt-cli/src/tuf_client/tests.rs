use crate::tuf_client::{file_name, mirror, remote_name, targets_source};
use molt_release::download::Source;

#[test]
fn file_names_stay_in_the_target_directory() {
    for (target, expect) in [
        ("file.txt", "file.txt"),
        ("dir/file.txt", "dir%2Ffile.txt"),
        ("../escape", "..%2Fescape"),
        ("a b?#", "a%20b%3F%23"),
        ("..", "%2E%2E%00"),
        (".", "%2E%00"),
        ("", "%00"),
        ("ä", "%C3%A4"),
    ] {
        assert_eq!(file_name(target), expect, "target `{target}`");
    }
}

/// The suite reads every `*.json` in the metadata directory as TUF
/// metadata, so tough's clock file must never be mirrored, and metadata that
/// tough stopped trusting (snapshot after a key rotation) must disappear.
#[test]
fn mirror_copies_metadata_and_drops_what_is_no_longer_trusted() {
    let metadata_dir = tempfile::tempdir().expect("tempdir");
    let datastore = metadata_dir.path().join("tough-datastore");
    std::fs::create_dir(&datastore).expect("create datastore");
    std::fs::write(datastore.join("root.json"), b"root v2").expect("write");
    std::fs::write(datastore.join("timestamp.json"), b"timestamp v3").expect("write");
    std::fs::write(datastore.join("latest_known_time.json"), b"\"2030-01-01T00:00:00Z\"").expect("write");
    std::fs::write(metadata_dir.path().join("root.json"), b"root v1").expect("write");
    std::fs::write(metadata_dir.path().join("snapshot.json"), b"snapshot v1").expect("write");
    std::fs::write(metadata_dir.path().join("notes.txt"), b"not metadata").expect("write");

    mirror(&datastore, metadata_dir.path()).expect("mirror");

    let mut names: Vec<String> = std::fs::read_dir(metadata_dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name().into_string().expect("utf-8 name"))
        .collect();
    names.sort();
    assert_eq!(names, ["notes.txt", "root.json", "timestamp.json", "tough-datastore"]);
    assert_eq!(
        std::fs::read(metadata_dir.path().join("root.json")).expect("read"),
        b"root v2"
    );
    assert_eq!(
        std::fs::read(metadata_dir.path().join("timestamp.json")).expect("read"),
        b"timestamp v3"
    );
}

#[test]
fn consistent_snapshot_prefixes_the_last_segment() {
    let sha256 = [0xab; 32];
    let digest = "ab".repeat(32);
    assert_eq!(remote_name("file.txt", &sha256, true), format!("{digest}.file.txt"));
    assert_eq!(
        remote_name("path/to/file.txt", &sha256, true),
        format!("path/to/{digest}.file.txt")
    );
    assert_eq!(remote_name("path/to/file.txt", &sha256, false), "path/to/file.txt");
}

#[test]
fn targets_url_maps_to_the_repository_root() {
    for (targets_url, expect) in [
        ("http://127.0.0.1:8000/test/targets/", Ok("http://127.0.0.1:8000/test/")),
        ("http://127.0.0.1:8000/test/targets", Ok("http://127.0.0.1:8000/test/")),
        ("http://127.0.0.1:8000/targets/", Ok("http://127.0.0.1:8000/")),
        ("http://127.0.0.1:8000/test/files/", Err(())),
    ] {
        let url = url::Url::parse(targets_url).expect("test URL");
        let source = targets_source(&url).map_err(|_| ());
        let expect = expect.map(|base| Source::Url(url::Url::parse(base).expect("expected URL")));
        assert_eq!(source, expect, "{targets_url}");
    }
}
