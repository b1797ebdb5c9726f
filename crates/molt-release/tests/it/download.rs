//! Target downloads and the metadata transport against the loopback test
//! server: resume, bounds (length, throughput, retries), cancel, digest.
//!
//! Limits are small so the misbehaving-server tests finish in well under a
//! second each; real time is used because the transfers are real sockets.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use molt_release::download::{
    DownloadError, DownloadLimits, Expected, NoProgress, Progress, Source, download_target, transport,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::server::{Mode, TestServer};

const TARGET: &str = "image.bin";
const TARGET_PATH: &str = "/targets/image.bin";

/// Deterministic, non-repeating-looking bytes.
fn body(length: usize) -> Vec<u8> {
    (0..length)
        .map(|idx| (idx.wrapping_mul(31) ^ (idx >> 9)) as u8)
        .collect()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn expected_for(bytes: &[u8]) -> Expected {
    Expected::sha256(bytes.len() as u64, sha256(bytes))
}

/// Tight limits: a 64 KiB/s floor judged every 300 ms, quick backoff.
fn fast_limits() -> DownloadLimits {
    DownloadLimits {
        min_bytes_per_sec: 64 * 1024,
        throughput_window: Duration::from_millis(300),
        retries_max: 3,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        connect_timeout: Duration::from_secs(2),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Start { total: u64, resumed_at: u64 },
    Finish,
}

/// Records `start`/`finish` and sums `advance`.
#[derive(Debug, Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    advanced: Mutex<u64>,
}

impl Progress for Recorder {
    fn start(&self, name: &str, total: u64, resumed_at: u64) {
        assert_eq!(name, TARGET);
        self.events
            .lock()
            .expect("recorder lock")
            .push(Event::Start { total, resumed_at });
    }
    fn advance(&self, bytes: u64) {
        *self.advanced.lock().expect("recorder lock") += bytes;
    }
    fn finish(&self) {
        self.events.lock().expect("recorder lock").push(Event::Finish);
    }
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.events.lock().expect("recorder lock").clone()
    }
    fn advanced(&self) -> u64 {
        *self.advanced.lock().expect("recorder lock")
    }
}

/// A repository directory with one target, a server over it, and an
/// output directory.
struct Fixture {
    repo: TempDir,
    out: TempDir,
    server: TestServer,
    content: Vec<u8>,
}

impl Fixture {
    async fn new(length: usize, mode: Mode) -> Fixture {
        let repo = TempDir::new().expect("temp dir");
        let content = body(length);
        std::fs::create_dir_all(repo.path().join("targets")).expect("create targets/");
        std::fs::write(repo.path().join("targets").join(TARGET), &content).expect("write target");
        let server = TestServer::start(repo.path(), mode).await;
        Fixture {
            repo,
            out: TempDir::new().expect("temp dir"),
            server,
            content,
        }
    }

    fn url_source(&self) -> Source {
        Source::Url(self.server.url())
    }

    fn dest(&self) -> PathBuf {
        self.out.path().join("image.bin")
    }

    fn part(&self) -> PathBuf {
        self.out.path().join("image.bin.part")
    }

    fn part_len(&self) -> Option<u64> {
        std::fs::metadata(self.part()).ok().map(|metadata| metadata.len())
    }

    async fn download(
        &self,
        source: &Source,
        expected: &Expected,
        limits: &DownloadLimits,
        progress: &dyn Progress,
        cancel: &CancellationToken,
    ) -> Result<(), DownloadError> {
        download_target(source, TARGET, &self.dest(), expected, limits, progress, cancel).await
    }

    /// Downloads over HTTP with no cancel.
    async fn fetch(&self, limits: &DownloadLimits, progress: &dyn Progress) -> Result<(), DownloadError> {
        let expected = expected_for(&self.content);
        self.download(
            &self.url_source(),
            &expected,
            limits,
            progress,
            &CancellationToken::new(),
        )
        .await
    }

    fn assert_complete(&self) {
        let got = std::fs::read(self.dest()).expect("dest exists after a successful download");
        assert!(got == self.content, "dest differs from the served target");
        assert_eq!(self.part_len(), None, "part file left behind");
    }

    fn assert_nothing_kept(&self) {
        assert!(!self.dest().exists(), "dest must not exist after a failure");
        assert_eq!(self.part_len(), None, "part file must be deleted");
    }
}

fn range(offset: u64) -> Option<String> {
    Some(format!("bytes={offset}-"))
}

#[tokio::test]
async fn downloads_whole_target_and_reports_progress() {
    let fixture = Fixture::new(300_000, Mode::Normal).await;
    let recorder = Recorder::default();
    fixture
        .fetch(&fast_limits(), &recorder)
        .await
        .expect("normal download succeeds");
    fixture.assert_complete();
    assert_eq!(fixture.server.ranges_seen(TARGET_PATH), [None]);
    assert_eq!(
        recorder.events(),
        [
            Event::Start {
                total: 300_000,
                resumed_at: 0
            },
            Event::Finish
        ]
    );
    assert_eq!(recorder.advanced(), 300_000);
}

#[tokio::test]
async fn resumes_after_dropped_connection_with_range() {
    let fixture = Fixture::new(
        300_000,
        Mode::DropAfter {
            bytes: 100_000,
            requests: 1,
        },
    )
    .await;
    let recorder = Recorder::default();
    fixture
        .fetch(&fast_limits(), &recorder)
        .await
        .expect("download resumes after the drop");
    fixture.assert_complete();
    assert_eq!(fixture.server.ranges_seen(TARGET_PATH), [None, range(100_000)]);
    // Only the remainder went over the wire the second time.
    let sent: Vec<u64> = fixture
        .server
        .requests_for(TARGET_PATH)
        .iter()
        .map(|record| record.body_bytes_sent)
        .collect();
    assert_eq!(sent, [100_000, 200_000]);
    assert_eq!(
        recorder.events(),
        [
            Event::Start {
                total: 300_000,
                resumed_at: 0
            },
            Event::Start {
                total: 300_000,
                resumed_at: 100_000
            },
            Event::Finish
        ]
    );
    assert_eq!(recorder.advanced(), 300_000);
}

#[tokio::test]
async fn resumes_part_file_left_by_an_earlier_call() {
    let fixture = Fixture::new(
        300_000,
        Mode::DropAfter {
            bytes: 120_000,
            requests: 1,
        },
    )
    .await;
    let no_retries = DownloadLimits {
        retries_max: 0,
        ..fast_limits()
    };
    let error = fixture
        .fetch(&no_retries, &Recorder::default())
        .await
        .expect_err("the only attempt is cut off");
    assert!(
        matches!(
            error,
            DownloadError::RetriesExhausted {
                attempts: 1,
                retries_max: 0,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(matches!(error.last_attempt(), DownloadError::Http { .. }), "{error:?}");
    assert_eq!(fixture.part_len(), Some(120_000), "the part file keeps what arrived");
    assert!(!fixture.dest().exists());

    // As after a restart: a new call picks the part file up.
    let recorder = Recorder::default();
    fixture
        .fetch(&no_retries, &recorder)
        .await
        .expect("the second call resumes");
    fixture.assert_complete();
    assert_eq!(fixture.server.ranges_seen(TARGET_PATH), [None, range(120_000)]);
    assert_eq!(fixture.server.body_bytes_sent(TARGET_PATH), 300_000);
    assert_eq!(
        recorder.events()[0],
        Event::Start {
            total: 300_000,
            resumed_at: 120_000
        }
    );
}

#[tokio::test]
async fn server_ignoring_range_restarts_from_zero() {
    let fixture = Fixture::new(200_000, Mode::NoRange).await;
    // A part file of garbage: if it were kept, the digest would not match.
    std::fs::write(fixture.part(), vec![0xEE; 50_000]).expect("write part");
    let recorder = Recorder::default();
    fixture
        .fetch(&fast_limits(), &recorder)
        .await
        .expect("a 200 answer to a range request restarts the file");
    fixture.assert_complete();
    assert_eq!(fixture.server.ranges_seen(TARGET_PATH), [range(50_000)]);
    assert_eq!(fixture.server.requests_for(TARGET_PATH)[0].status, 200);
    assert_eq!(
        recorder.events(),
        [
            Event::Start {
                total: 200_000,
                resumed_at: 50_000
            },
            Event::Start {
                total: 200_000,
                resumed_at: 0
            },
            Event::Finish
        ]
    );
}

#[tokio::test]
async fn part_file_from_another_file_is_discarded_and_refetched() {
    let fixture = Fixture::new(200_000, Mode::Normal).await;
    // Resuming after this prefix gives the wrong digest: the part file held
    // bytes from another version, so the download starts over once.
    std::fs::write(fixture.part(), vec![0xEE; 80_000]).expect("write part");
    fixture
        .fetch(&fast_limits(), &Recorder::default())
        .await
        .expect("the mixed file is discarded and fetched again");
    fixture.assert_complete();
    assert_eq!(fixture.server.ranges_seen(TARGET_PATH), [range(80_000), None]);
}

#[tokio::test]
async fn endless_data_is_cut_off_at_the_metadata_length() {
    let fixture = Fixture::new(200_000, Mode::Endless).await;
    let error = fixture
        .fetch(&fast_limits(), &Recorder::default())
        .await
        .expect_err("endless data is refused");
    assert!(
        matches!(error, DownloadError::TooLong { length: 200_000, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("200000 bytes"), "{error}");
    fixture.assert_nothing_kept();
    // Not retried: the source is serving a different file.
    assert_eq!(fixture.server.request_count(), 1);
    // The server only got to write what fit in the socket buffers before the
    // client hung up, not its 1 GiB.
    let sent = fixture.server.body_bytes_sent(TARGET_PATH);
    assert!(sent < 32 << 20, "server wrote {sent} bytes");
}

#[tokio::test]
async fn content_length_over_the_metadata_length_is_refused_before_the_body() {
    let fixture = Fixture::new(200_000, Mode::Normal).await;
    let listed = Expected::sha256(150_000, sha256(&fixture.content[..150_000]));
    let error = fixture
        .download(
            &fixture.url_source(),
            &listed,
            &fast_limits(),
            &Recorder::default(),
            &CancellationToken::new(),
        )
        .await
        .expect_err("a longer target is refused");
    assert!(
        matches!(error, DownloadError::TooLong { length: 150_000, .. }),
        "{error:?}"
    );
    fixture.assert_nothing_kept();
}

#[tokio::test]
async fn stalled_server_hits_the_throughput_deadline_and_each_retry_resumes() {
    let fixture = Fixture::new(500_000, Mode::Stall { after_bytes: 40_000 }).await;
    let limits = DownloadLimits {
        retries_max: 1,
        ..fast_limits()
    };
    let started = Instant::now();
    let error = fixture
        .fetch(&limits, &Recorder::default())
        .await
        .expect_err("a stalled server is given up on");
    let elapsed = started.elapsed();
    assert!(
        matches!(
            error,
            DownloadError::RetriesExhausted {
                attempts: 2,
                retries_max: 1,
                ..
            }
        ),
        "{error:?}"
    );
    let DownloadError::TooSlow {
        min_bytes_per_sec,
        throughput_window,
        ..
    } = error.last_attempt()
    else {
        panic!("expected TooSlow, got {error:?}");
    };
    assert_eq!(*min_bytes_per_sec, 64 * 1024);
    assert_eq!(*throughput_window, Duration::from_millis(300));
    assert!(error.to_string().contains("min_bytes_per_sec"), "{error}");
    // Two windows of 300 ms each, plus at most a window of slack.
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert_eq!(fixture.server.ranges_seen(TARGET_PATH), [None, range(40_000)]);
    assert_eq!(fixture.part_len(), Some(80_000));
    assert!(!fixture.dest().exists());
}

#[tokio::test]
async fn slow_server_hits_the_throughput_deadline() {
    let fixture = Fixture::new(
        500_000,
        Mode::Slow {
            bytes_per_sec: 8 * 1024,
        },
    )
    .await;
    let limits = DownloadLimits {
        retries_max: 0,
        ..fast_limits()
    };
    let started = Instant::now();
    let error = fixture
        .fetch(&limits, &Recorder::default())
        .await
        .expect_err("a server below min_bytes_per_sec is given up on");
    let elapsed = started.elapsed();
    let DownloadError::TooSlow { bytes_in_window, .. } = error.last_attempt() else {
        panic!("expected TooSlow, got {error:?}");
    };
    // 64 KiB/s over 300 ms asks for 19660 bytes; 8 KiB/s delivers ~2.5 KiB.
    assert!(*bytes_in_window < 19_660, "{bytes_in_window}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
}

#[tokio::test]
async fn retries_are_bounded_by_retries_max() {
    let fixture = Fixture::new(10_000, Mode::Status { code: 503 }).await;
    let error = fixture
        .fetch(&fast_limits(), &Recorder::default())
        .await
        .expect_err("503 every time");
    assert!(
        matches!(
            error,
            DownloadError::RetriesExhausted {
                attempts: 4,
                retries_max: 3,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        matches!(error.last_attempt(), DownloadError::HttpStatus { status: 503, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("retries_max = 3"), "{error}");
    assert_eq!(fixture.server.request_count(), 4);
}

#[tokio::test]
async fn not_found_is_final() {
    let fixture = Fixture::new(10_000, Mode::Normal).await;
    let error = download_target(
        &fixture.url_source(),
        "missing.bin",
        &fixture.dest(),
        &expected_for(&fixture.content),
        &fast_limits(),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .expect_err("no such target");
    assert!(matches!(error, DownloadError::NotFound { .. }), "{error:?}");
    assert_eq!(fixture.server.request_count(), 1);
}

#[tokio::test]
async fn cancel_stops_the_backoff_at_once() {
    let fixture = Fixture::new(10_000, Mode::Status { code: 503 }).await;
    let limits = DownloadLimits {
        backoff_initial: Duration::from_secs(30),
        backoff_max: Duration::from_secs(30),
        ..fast_limits()
    };
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        canceller.cancel();
    });
    let started = Instant::now();
    let error = fixture
        .download(
            &fixture.url_source(),
            &expected_for(&fixture.content),
            &limits,
            &Recorder::default(),
            &cancel,
        )
        .await
        .expect_err("cancelled");
    assert!(matches!(error, DownloadError::Cancelled { .. }), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(fixture.server.request_count(), 1);
}

#[tokio::test]
async fn cancel_stops_a_transfer_and_keeps_the_part_for_resume() {
    let fixture = Fixture::new(300_000, Mode::Stall { after_bytes: 30_000 }).await;
    // Only the cancel can end this attempt.
    let limits = DownloadLimits {
        throughput_window: Duration::from_secs(60),
        ..fast_limits()
    };
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        canceller.cancel();
    });
    let recorder = Recorder::default();
    let started = Instant::now();
    let error = fixture
        .download(
            &fixture.url_source(),
            &expected_for(&fixture.content),
            &limits,
            &recorder,
            &cancel,
        )
        .await
        .expect_err("cancelled");
    assert!(matches!(error, DownloadError::Cancelled { .. }), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(recorder.events().last(), Some(&Event::Finish));
    assert_eq!(fixture.part_len(), Some(30_000));

    fixture.server.set_path_mode(TARGET_PATH, Mode::Normal);
    fixture
        .fetch(&limits, &Recorder::default())
        .await
        .expect("the next call resumes after the cancel");
    fixture.assert_complete();
    assert_eq!(fixture.server.ranges_seen(TARGET_PATH), [None, range(30_000)]);
}

#[tokio::test]
async fn digest_mismatch_deletes_the_part_file() {
    let fixture = Fixture::new(100_000, Mode::Normal).await;
    let wrong = Expected::sha256(100_000, sha256(b"something else"));
    let error = fixture
        .download(
            &fixture.url_source(),
            &wrong,
            &fast_limits(),
            &Recorder::default(),
            &CancellationToken::new(),
        )
        .await
        .expect_err("digest mismatch");
    assert!(matches!(error, DownloadError::DigestMismatch { .. }), "{error:?}");
    fixture.assert_nothing_kept();
    // A file fetched whole in one response is not fetched again.
    assert_eq!(fixture.server.request_count(), 1);
}

#[tokio::test]
async fn dir_source_copies_and_verifies() {
    let fixture = Fixture::new(100_000, Mode::Normal).await;
    let recorder = Recorder::default();
    fixture
        .download(
            &Source::Dir(fixture.repo.path().to_path_buf()),
            &expected_for(&fixture.content),
            &fast_limits(),
            &recorder,
            &CancellationToken::new(),
        )
        .await
        .expect("dir copy succeeds");
    fixture.assert_complete();
    assert_eq!(recorder.advanced(), 100_000);
    assert_eq!(fixture.server.request_count(), 0);
}

#[tokio::test]
async fn dir_source_target_longer_than_listed_is_refused() {
    let fixture = Fixture::new(3 << 20, Mode::Normal).await;
    let listed = Expected::sha256(1 << 20, sha256(&fixture.content[..1 << 20]));
    let recorder = Recorder::default();
    let error = fixture
        .download(
            &Source::Dir(fixture.repo.path().to_path_buf()),
            &listed,
            &fast_limits(),
            &recorder,
            &CancellationToken::new(),
        )
        .await
        .expect_err("longer than listed");
    assert!(
        matches!(error, DownloadError::TooLong { length: 1_048_576, .. }),
        "{error:?}"
    );
    fixture.assert_nothing_kept();
    // Reading stopped at the first block past the listed length.
    assert!(recorder.advanced() <= 1 << 20, "{}", recorder.advanced());
}

#[tokio::test]
async fn target_names_cannot_escape_targets() {
    let fixture = Fixture::new(1_000, Mode::Normal).await;
    for name in ["../secret", "a/../../b", "/etc/passwd", "", "a//b", "a\\b"] {
        let error = download_target(
            &Source::Dir(fixture.repo.path().to_path_buf()),
            name,
            &fixture.dest(),
            &expected_for(&fixture.content),
            &fast_limits(),
            &NoProgress,
            &CancellationToken::new(),
        )
        .await
        .expect_err("bad name");
        assert!(matches!(error, DownloadError::InvalidName { .. }), "{name}: {error:?}");
    }
}

/// Fetches `path` under the server through the tough transport and collects
/// the stream.
async fn fetch_metadata(
    server: &TestServer,
    limits: &DownloadLimits,
    path: &str,
) -> Result<Vec<u8>, tough::TransportError> {
    let transport = transport(&Source::Url(server.url()), limits);
    let url = server.url().join(path).expect("metadata URL");
    let mut stream = transport.fetch(url).await?;
    let mut collected = Vec::new();
    while let Some(chunk) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        collected.extend_from_slice(&chunk?);
    }
    Ok(collected)
}

fn write_metadata(repo: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(repo.join("metadata")).expect("create metadata/");
    std::fs::write(repo.join("metadata").join(name), bytes).expect("write metadata");
}

#[tokio::test]
async fn tough_transport_fetches_metadata_over_http() {
    let fixture = Fixture::new(10, Mode::Normal).await;
    let timestamp = body(150_000);
    write_metadata(fixture.repo.path(), "timestamp.json", &timestamp);
    let got = fetch_metadata(&fixture.server, &fast_limits(), "metadata/timestamp.json")
        .await
        .expect("fetch metadata");
    assert!(got == timestamp, "metadata differs");

    // 404 is FileNotFound from fetch itself: tough stops walking roots on it.
    let error = fetch_metadata(&fixture.server, &fast_limits(), "metadata/2.root.json")
        .await
        .expect_err("no such file");
    assert_eq!(error.kind(), tough::TransportErrorKind::FileNotFound);
}

#[tokio::test]
async fn tough_transport_resumes_an_interrupted_body() {
    let fixture = Fixture::new(10, Mode::Normal).await;
    let snapshot = body(200_000);
    write_metadata(fixture.repo.path(), "snapshot.json", &snapshot);
    fixture.server.set_path_mode(
        "/metadata/snapshot.json",
        Mode::DropAfter {
            bytes: 70_000,
            requests: 1,
        },
    );
    let got = fetch_metadata(&fixture.server, &fast_limits(), "metadata/snapshot.json")
        .await
        .expect("fetch resumes");
    assert!(got == snapshot, "metadata differs");
    assert_eq!(
        fixture.server.ranges_seen("/metadata/snapshot.json"),
        [None, range(70_000)]
    );
}

#[tokio::test]
async fn tough_transport_reports_stalls_and_server_errors_in_the_stream() {
    let fixture = Fixture::new(10, Mode::Normal).await;
    write_metadata(fixture.repo.path(), "targets.json", &body(100_000));
    fixture
        .server
        .set_path_mode("/metadata/targets.json", Mode::Stall { after_bytes: 1_000 });
    let limits = DownloadLimits {
        retries_max: 1,
        ..fast_limits()
    };
    let started = Instant::now();
    let error = fetch_metadata(&fixture.server, &limits, "metadata/targets.json")
        .await
        .expect_err("stalled");
    assert_eq!(error.kind(), tough::TransportErrorKind::Other);
    let source = std::error::Error::source(&error).expect("cause");
    assert!(source.to_string().contains("min_bytes_per_sec"), "{source}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        fixture.server.ranges_seen("/metadata/targets.json"),
        [None, range(1_000)]
    );

    // A 503 is not "file not found": tough must see it as a failure.
    write_metadata(fixture.repo.path(), "3.root.json", b"{}");
    fixture
        .server
        .set_path_mode("/metadata/3.root.json", Mode::Status { code: 503 });
    let error = fetch_metadata(&fixture.server, &limits, "metadata/3.root.json")
        .await
        .expect_err("server error");
    assert_eq!(error.kind(), tough::TransportErrorKind::Other);
}
