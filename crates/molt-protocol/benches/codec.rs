//! Encode and decode cost of a telemetry message, DAG-CBOR against JSON of
//! the same message, measured side by side (the choice `docs/protocol.md`
//! justifies).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use molt_protocol::{Limits, Telemetry, TelemetryBuilder, decode, encode};

const POINTS: usize = 100;

fn message() -> Telemetry {
    let mut builder = TelemetryBuilder::new("threshold@1.2.0");
    for index in 0..POINTS {
        let metric = if index % 2 == 0 { "temperature" } else { "humidity" };
        builder.push(
            (index % 20) as u32,
            1_733_400_000_000 + index as u64 * 10,
            metric,
            20.0 + index as f64 * 0.37,
        );
    }
    builder.finish(1)
}

fn codec(c: &mut Criterion) {
    let limits = Limits::default();
    let message = message();
    let cbor = encode(&message, &limits).unwrap();
    let json = serde_json::to_vec(&message).unwrap();
    let mut group = c.benchmark_group("protocol");
    group.throughput(Throughput::Elements(POINTS as u64));
    group.bench_function("telemetry-encode-dagcbor", |b| {
        b.iter(|| encode(&message, &limits).unwrap())
    });
    group.bench_function("telemetry-encode-json", |b| {
        b.iter(|| serde_json::to_vec(&message).unwrap())
    });
    group.bench_function("telemetry-decode-dagcbor", |b| {
        b.iter(|| decode::<Telemetry>(&cbor, &limits).unwrap())
    });
    group.bench_function("telemetry-decode-json", |b| {
        b.iter(|| serde_json::from_slice::<Telemetry>(&json).unwrap())
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
