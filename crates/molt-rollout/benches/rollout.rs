//! Rollout controller figures at 320,000 devices: the time of one look (a
//! wave decision with every gate, per class), and the controller's memory.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use molt_rollout::{DeviceInfo, DeviceIx, HealthDelta, MINUTE_MS, ReleaseRef, Rollout, sim};

const DEVICES: u32 = 320_000;
const CLASSES: [&str; 4] = ["rpi4", "imx8", "stm32mp1", "jetson"];

fn fleet(old: ReleaseRef) -> Vec<DeviceInfo> {
    (0..DEVICES)
        .map(|n| DeviceInfo {
            id: format!("dev-{n:07}"),
            hardware_class: CLASSES[(n % 4) as usize].to_owned(),
            tags: if n % 3 == 0 { vec!["eu".to_owned()] } else { Vec::new() },
            release: old,
        })
        .collect()
}

/// A rollout in the middle of its canary: every canary device installed,
/// every device reported an hour of health with a metric sample.
fn mid_canary() -> (Rollout, u64) {
    let old = ReleaseRef {
        version: 1,
        security_counter: 1,
    };
    let new = ReleaseRef {
        version: 2,
        security_counter: 1,
    };
    let spec = sim::scenario_spec(new, 7);
    let mut rollout = Rollout::new(spec, fleet(old), 0).expect("a valid rollout");
    let mut now = 0;
    // Tell the whole canary (the rate allows 5,000 a minute).
    while rollout.waves()[0].dispatched_at.is_none() {
        for action in rollout.step(now) {
            rollout.observe_install(action.device, now + MINUTE_MS, new.version, true);
        }
        now += MINUTE_MS;
    }
    let slot = rollout.metric_slot("latency_ms").expect("the scenario gates latency");
    for minute in 0..60u64 {
        now += MINUTE_MS;
        for ix in 0..DEVICES {
            if u64::from(ix) % 5 != minute % 5 {
                continue;
            }
            let mut delta = HealthDelta::default();
            delta.counts[0] = u32::from(ix % 97 == minute as u32);
            delta.metrics[slot] = 20.0 + f64::from(ix % 13);
            delta.metrics_present = 1 << slot;
            rollout.observe_health(DeviceIx(ix), now, &delta);
        }
    }
    (rollout, now)
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .nth(1)
                .and_then(|pages| pages.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn decision(criterion: &mut Criterion) {
    let (rollout, now) = mid_canary();
    let look = rollout.evaluate(now);
    eprintln!(
        "rollout bench: look at the canary: {:?}, {} tests, sample {}",
        look.outcome,
        look.evidence.tests.len(),
        look.evidence.sample
    );
    let mut group = criterion.benchmark_group("rollout_decision");
    group.sample_size(20);
    group.bench_function("look_320k", |bench| {
        bench.iter(|| black_box(rollout.evaluate(black_box(now))))
    });
    group.finish();
}

fn memory(_: &mut Criterion) {
    let old = ReleaseRef {
        version: 1,
        security_counter: 1,
    };
    let new = ReleaseRef {
        version: 2,
        security_counter: 1,
    };
    let devices = fleet(old);
    let before = resident_bytes();
    let rollout = Rollout::new(sim::scenario_spec(new, 7), devices, 0).expect("a valid rollout");
    let after = resident_bytes();
    let state = serde_json::to_vec(&rollout).map_or(0, |bytes| bytes.len());
    eprintln!(
        "memory/rollout_controller_320k: {} bytes per instance (one controller of {} devices, resident growth while planning it; {} bytes per device; its JSON state is {} bytes)",
        after.saturating_sub(before),
        rollout.len(),
        after.saturating_sub(before) / u64::from(DEVICES),
        state
    );
    black_box(rollout);
}

fn scenario(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("rollout_sim");
    group.sample_size(10);
    let (config, spec) = sim::scenario("healthy", DEVICES, 1).expect("a named scenario");
    group.bench_function("healthy_320k", |bench| {
        bench.iter(|| black_box(sim::run(&config, spec.clone(), |_, _| {}).expect("the scenario runs")))
    });
    group.finish();
}

criterion_group!(benches, memory, decision, scenario);
criterion_main!(benches);
