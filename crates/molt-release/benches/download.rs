//! Target download throughput over loopback HTTP from the test server:
//! plain, and with the connection cut halfway and resumed with `Range`.
//!
//! Each iteration is one `download_target` call: request, stream into the
//! part file, read it back for sha256, fsync, rename, fsync the directory.
//! Removing the previous iteration's file is not timed.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use molt_release::download::{DownloadLimits, Expected, NoProgress, Source, download_target};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

#[path = "../tests/it/server.rs"]
mod server;

use server::{Mode, TestServer};

const SIZES_MIB: [usize; 2] = [16, 64];

fn body(length: usize) -> Vec<u8> {
    (0..length)
        .map(|idx| (idx.wrapping_mul(31) ^ (idx >> 9)) as u8)
        .collect()
}

fn download(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let repo = tempfile::TempDir::new().expect("temp dir");
    let out = tempfile::TempDir::new().expect("temp dir");
    std::fs::create_dir_all(repo.path().join("targets")).expect("create targets/");

    let mut group = c.benchmark_group("download");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for size_mib in SIZES_MIB {
        let length = size_mib << 20;
        let content = body(length);
        let name = format!("{size_mib}MiB.bin");
        std::fs::write(repo.path().join("targets").join(&name), &content).expect("write target");
        let expected = Expected::sha256(length as u64, Sha256::digest(&content).into());
        drop(content);
        group.throughput(Throughput::Bytes(length as u64));

        for (label, mode) in [
            ("plain", Mode::Normal),
            (
                "drop-half-and-resume",
                Mode::DropAfter {
                    bytes: (length / 2) as u64,
                    requests: 1,
                },
            ),
        ] {
            let server = runtime.block_on(TestServer::start(repo.path(), mode));
            let source = Source::Url(server.url());
            let dest = out.path().join(&name);
            let limits = DownloadLimits {
                backoff_initial: Duration::from_millis(1),
                ..DownloadLimits::default()
            };
            group.bench_function(BenchmarkId::new(label, format!("{size_mib}MiB")), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let _ = std::fs::remove_file(&dest);
                        // So the first request of this iteration is cut again.
                        server.reset_counters();
                        let started = Instant::now();
                        runtime
                            .block_on(download_target(
                                &source,
                                &name,
                                &dest,
                                &expected,
                                &limits,
                                &NoProgress,
                                &CancellationToken::new(),
                            ))
                            .expect("download succeeds");
                        total += started.elapsed();
                    }
                    total
                });
            });
            let requests = server.request_count();
            let ranged = server.requests().iter().filter(|record| record.range.is_some()).count();
            eprintln!("{label}/{size_mib}MiB: last iteration made {requests} request(s), {ranged} with Range");
        }
    }
    group.finish();
}

criterion_group!(benches, download);
criterion_main!(benches);
