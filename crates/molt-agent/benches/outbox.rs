//! Outbox append throughput under each sync policy: one batch's record of
//! 16 telemetry messages of 1 KiB each, appended and then made durable as
//! the policy says (`Outbox::sync` after every batch, as the agent does).
//! The figure is messages per second; the same-run floor is the bare
//! `write` of the same bytes to a file, with no checksum and no fsync.

use std::hint::black_box;
use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use molt_agent::log::{LogLimits, SyncPolicy};
use molt_agent::outbox::{Outbox, OverflowPolicy};
use molt_protocol::Kind;

const MESSAGES: usize = 16;
const MESSAGE_BYTES: usize = 1024;

fn outbox_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbox_append");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    let messages: Vec<(Kind, Vec<u8>)> = (0..MESSAGES)
        .map(|idx| (Kind::Telemetry, vec![idx as u8; MESSAGE_BYTES]))
        .collect();
    for (name, sync) in [
        ("every_append", SyncPolicy::EveryAppend),
        ("every_batch", SyncPolicy::EveryBatch),
        ("interval_100ms", SyncPolicy::IntervalMs(100)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            segment_bytes_max: 4 << 20,
            bytes_max: u64::MAX,
            record_bytes_max: 1 << 20,
        };
        let (mut outbox, _) = Outbox::open(dir.path(), limits, sync, OverflowPolicy::RefuseReadings).unwrap();
        let mut origin = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                origin += 1;
                outbox.append_batch(origin, black_box(&messages)).unwrap();
                outbox.sync().unwrap();
                // Keep the disk bounded: the server acknowledges as it goes.
                if origin % 256 == 0 {
                    let through = outbox.next_seq() - 1;
                    outbox.acknowledge(through).unwrap();
                }
            });
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("plain")).unwrap();
    let bytes = vec![7u8; MESSAGES * (MESSAGE_BYTES + 5) + 12];
    let mut written = 0u64;
    group.bench_function("plain_write", |b| {
        b.iter(|| {
            file.write_all(black_box(&bytes)).unwrap();
            written += bytes.len() as u64;
            if written > 64 << 20 {
                std::io::Seek::rewind(&mut file).unwrap();
                written = 0;
            }
        });
    });
    group.finish();
}

criterion_group!(benches, outbox_append);
criterion_main!(benches);
