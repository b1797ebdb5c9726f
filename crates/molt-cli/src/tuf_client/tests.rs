use crate::tuf_client::{file_name, repository_source};
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

#[test]
fn metadata_and_targets_urls_map_to_the_repository_root() {
    for (url, last, expect) in [
        (
            "http://127.0.0.1:8000/test/targets/",
            "targets",
            Ok("http://127.0.0.1:8000/test/"),
        ),
        (
            "http://127.0.0.1:8000/test/targets",
            "targets",
            Ok("http://127.0.0.1:8000/test/"),
        ),
        (
            "http://127.0.0.1:8000/targets/",
            "targets",
            Ok("http://127.0.0.1:8000/"),
        ),
        ("http://127.0.0.1:8000/test/files/", "targets", Err(())),
        (
            "http://127.0.0.1:8000/a%20test/metadata",
            "metadata",
            Ok("http://127.0.0.1:8000/a%20test/"),
        ),
        (
            "http://127.0.0.1:8000/metadata/",
            "metadata",
            Ok("http://127.0.0.1:8000/"),
        ),
        ("http://127.0.0.1:8000/test/targets", "metadata", Err(())),
    ] {
        let parsed = url::Url::parse(url).expect("test URL");
        let source = repository_source(&parsed, last, "--flag").map_err(|_| ());
        let expect = expect.map(|base| Source::Url(url::Url::parse(base).expect("expected URL")));
        assert_eq!(source, expect, "{url}");
    }
}
