//! The controller on its own: plans, commands, limits, restarts.

use molt_rollout::sim::{self, SimReport};
use molt_rollout::{
    ActionKind, Approval, Canary, Claims, CommandError, DeviceInfo, HOUR_MS, MINUTE_MS, Phase, Ramp, ReleaseRef,
    Rollout, RolloutError, RolloutSpec, SpecError, Status,
};

const OLD: ReleaseRef = ReleaseRef {
    version: 1,
    security_counter: 1,
};
const NEW: ReleaseRef = ReleaseRef {
    version: 2,
    security_counter: 1,
};

fn fleet(devices: u32) -> Vec<DeviceInfo> {
    (0..devices)
        .map(|n| DeviceInfo {
            id: format!("gw-{n:05}"),
            hardware_class: ["rpi4", "imx8", "jetson"][(n % 3) as usize].to_owned(),
            tags: if n % 2 == 0 { vec!["eu".to_owned()] } else { Vec::new() },
            release: OLD,
        })
        .collect()
}

fn spec() -> RolloutSpec {
    let mut spec = RolloutSpec::new("r1", NEW);
    spec.plan.canary = Canary::Percent { percent: 1.0, min: 60 };
    spec.plan.ramp = Ramp::Percents(vec![10.0, 50.0, 100.0]);
    spec.plan.canary_per_class_min = 20;
    spec
}

fn waves_of(rollout: &Rollout) -> Vec<Vec<String>> {
    (0..rollout.waves().len() as u32)
        .map(|wave| {
            let mut ids: Vec<String> = rollout.wave_devices(wave).map(str::to_owned).collect();
            ids.sort();
            ids
        })
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_waves_whatever_the_input_order() {
    let first = Rollout::new(spec(), fleet(3_000), 0).unwrap();
    let mut reversed = fleet(3_000);
    reversed.reverse();
    let second = Rollout::new(spec(), reversed, 0).unwrap();
    assert_eq!(waves_of(&first), waves_of(&second));
    let mut other_seed = spec();
    other_seed.plan.seed = 99;
    let third = Rollout::new(other_seed, fleet(3_000), 0).unwrap();
    assert_ne!(waves_of(&first)[0], waves_of(&third)[0]);
}

#[test]
fn waves_follow_the_plan_and_spread_across_classes() {
    let rollout = Rollout::new(spec(), fleet(3_000), 0).unwrap();
    let preview = rollout.preview();
    let sizes: Vec<u64> = preview.waves.iter().map(|wave| wave.devices).collect();
    // Cumulative 60 (the canary's minimum), 300, 1,500, 3,000.
    assert_eq!(sizes, vec![60, 240, 1_200, 1_500]);
    for wave in &preview.waves {
        assert_eq!(wave.per_class.len(), 3, "every class in every wave: {wave:?}");
        let smallest = wave.per_class.values().min().unwrap();
        let largest = wave.per_class.values().max().unwrap();
        assert!(largest - smallest <= 1, "an even spread: {wave:?}");
    }
}

#[test]
fn exponential_ramp_doubles_until_everyone() {
    let mut spec = spec();
    spec.plan.canary = Canary::Count(100);
    spec.plan.ramp = Ramp::Exponential { factor: 2.0 };
    let rollout = Rollout::new(spec, fleet(1_000), 0).unwrap();
    let cumulative: Vec<u64> = rollout
        .preview()
        .waves
        .iter()
        .scan(0, |total, wave| {
            *total += wave.devices;
            Some(*total)
        })
        .collect();
    assert_eq!(cumulative, vec![100, 200, 400, 800, 1_000]);
}

#[test]
fn the_canary_takes_a_minimum_of_every_class() {
    let mut devices = fleet(3_000);
    // A small class: 30 devices.
    for device in devices.iter_mut().take(30) {
        device.hardware_class = "rare".to_owned();
    }
    let mut spec = spec();
    spec.plan.canary = Canary::Count(30);
    spec.plan.canary_per_class_min = 25;
    let rollout = Rollout::new(spec, devices, 0).unwrap();
    let canary = &rollout.preview().waves[0];
    assert!(canary.per_class.values().all(|count| *count >= 25), "{canary:?}");
}

#[test]
fn devices_that_could_not_roll_back_are_not_in_the_waves() {
    let mut devices = fleet(1_000);
    devices[0].release = ReleaseRef {
        version: 1,
        security_counter: 0,
    };
    devices[1].release = NEW;
    devices[2].release = ReleaseRef {
        version: 3,
        security_counter: 1,
    };
    let rollout = Rollout::new(spec(), devices, 0).unwrap();
    let preview = rollout.preview();
    assert_eq!(preview.ineligible, 2);
    assert_eq!(preview.already_current, 1);
    assert_eq!(preview.waves.iter().map(|wave| wave.devices).sum::<u64>(), 997);
    let id = |n: usize| rollout.device_index(&format!("gw-{n:05}")).unwrap();
    assert_eq!(rollout.phase(id(0)), Some(Phase::Ineligible));
    assert_eq!(rollout.phase(id(1)), Some(Phase::AlreadyCurrent));
}

#[test]
fn bad_specs_and_groups_are_refused_by_name() {
    let mut spec = spec();
    spec.plan.ramp = Ramp::Percents(vec![50.0, 10.0]);
    assert!(matches!(
        Rollout::new(spec, fleet(10), 0),
        Err(RolloutError::Spec(SpecError::Invalid { field: "plan.ramp", .. }))
    ));
    let mut spec = self::spec();
    spec.limits.devices_max = 5;
    assert!(matches!(
        Rollout::new(spec, fleet(10), 0),
        Err(RolloutError::Limit {
            limit: "devices_max",
            max: 5,
            got: 10
        })
    ));
    let mut devices = fleet(10);
    devices[3].id = devices[7].id.clone();
    assert_eq!(
        Rollout::new(self::spec(), devices, 0).unwrap_err(),
        RolloutError::Duplicate("gw-00007".to_owned())
    );
    let mut devices = fleet(10);
    devices.iter_mut().for_each(|device| device.release = NEW);
    assert!(matches!(
        Rollout::new(self::spec(), devices, 0),
        Err(RolloutError::NoEligibleDevice { version: 2, .. })
    ));
}

#[test]
fn a_device_is_in_at_most_one_active_rollout() {
    let first = Rollout::new(spec(), fleet(100), 0).unwrap();
    let mut claims = Claims::from_rollouts([&first]);
    let mut other = RolloutSpec::new("r2", NEW);
    other.plan.canary = Canary::Count(5);
    let overlapping = fleet(200);
    let error = claims
        .claim_all("r2", overlapping.iter().map(|device| device.id.as_str()))
        .unwrap_err();
    assert_eq!(
        error,
        RolloutError::Claimed {
            device: "gw-00000".to_owned(),
            rollout: "r1".to_owned()
        }
    );
    // Nothing was claimed by the refused call.
    assert_eq!(claims.holder("gw-00150"), None);
    claims.release("r1");
    claims
        .claim_all("r2", overlapping.iter().map(|device| device.id.as_str()))
        .unwrap();
    assert_eq!(claims.holder("gw-00000"), Some("r2"));
}

#[test]
fn the_rate_limit_holds_throughout() {
    let mut spec = spec();
    spec.plan.devices_per_minute_max = 100;
    spec.plan.canary = Canary::Count(1_000);
    let mut rollout = Rollout::new(spec, fleet(3_000), 0).unwrap();
    let mut told = 0;
    for minute in 0..=5u64 {
        told += rollout.step(minute * MINUTE_MS).len();
        assert!(told as u64 <= minute * 100, "{told} told by minute {minute}");
    }
    assert_eq!(told, 500);
}

#[test]
fn approval_pause_resume_promote_and_abort() {
    let mut spec = spec();
    spec.plan.approval = Approval::Waves(vec![0]);
    let mut rollout = Rollout::new(spec, fleet(1_000), 0).unwrap();
    assert!(rollout.step(0).is_empty());
    assert_eq!(rollout.status(), &Status::AwaitingApproval);
    assert!(matches!(
        rollout.resume(0),
        Err(CommandError::NotNow { command: "resume", .. })
    ));
    rollout.promote(MINUTE_MS, "canary approved").unwrap();
    assert_eq!(rollout.status(), &Status::Running);
    let told = rollout.step(2 * MINUTE_MS);
    assert_eq!(told.len(), 60);
    rollout.pause(3 * MINUTE_MS, "looking at a dashboard").unwrap();
    assert!(rollout.step(4 * MINUTE_MS).is_empty());
    rollout.resume(5 * MINUTE_MS).unwrap();
    // Half the canary installed, one failed.
    for action in told.iter().take(30) {
        assert!(rollout.observe_install(action.device, 6 * MINUTE_MS, NEW.version, true));
    }
    assert!(rollout.observe_install(told[30].device, 6 * MINUTE_MS, NEW.version, false));
    // A duplicated report changes nothing.
    assert!(!rollout.observe_install(told[0].device, 7 * MINUTE_MS, NEW.version, true));
    let rollback = rollout.abort(8 * MINUTE_MS, "wrong release").unwrap();
    assert_eq!(rollout.status(), &Status::RollingBack);
    // Every device told goes back (the rate allows a minute's worth at once).
    assert_eq!(rollback.len(), 60);
    assert!(
        rollback
            .iter()
            .all(|action| action.kind == ActionKind::Rollback && action.release == OLD)
    );
    for action in &rollback {
        rollout.observe_install(action.device, 9 * MINUTE_MS, OLD.version, true);
    }
    rollout.step(10 * MINUTE_MS);
    assert_eq!(rollout.status(), &Status::RolledBack);
    assert!(matches!(
        rollout.abort(11 * MINUTE_MS, "again"),
        Err(CommandError::NotNow { .. })
    ));
    let reasons: Vec<&str> = rollout
        .decisions()
        .iter()
        .map(|decision| decision.reason.as_str())
        .collect();
    assert!(reasons.contains(&"operator: wrong release"), "{reasons:?}");
}

#[test]
fn silent_devices_are_retried_within_bounds_then_counted() {
    let mut spec = spec();
    spec.limits.install_retries_max = 2;
    spec.limits.install_timeout_ms = 10 * MINUTE_MS;
    let mut rollout = Rollout::new(spec, fleet(1_000), 0).unwrap();
    rollout.step(0);
    let first = rollout.step(MINUTE_MS);
    let device = first[0].device;
    let mut retries = 0;
    for minute in 2..60 {
        retries += rollout
            .step(minute * MINUTE_MS)
            .iter()
            .filter(|action| action.device == device && action.kind == ActionKind::Retry)
            .count();
    }
    assert_eq!(retries, 2);
    assert_eq!(rollout.phase(device), Some(Phase::Unreachable));
    // A late report still counts.
    assert!(rollout.observe_install(device, 61 * MINUTE_MS, NEW.version, true));
    assert_eq!(rollout.phase(device), Some(Phase::Updated));
}

#[test]
fn the_deadline_stops_the_rollout() {
    let mut spec = spec();
    spec.deadline_ms = 2 * HOUR_MS;
    let mut rollout = Rollout::new(spec, fleet(1_000), 0).unwrap();
    rollout.step(0);
    rollout.step(2 * HOUR_MS);
    assert_eq!(rollout.status(), &Status::Expired);
    assert!(rollout.decisions().last().unwrap().reason.contains("deadline"));
}

fn restored_run(name: &str, every: u64) -> (SimReport, u32) {
    let (config, spec) = sim::scenario(name, 20_000, 7).unwrap();
    let mut restores = 0;
    let report = sim::run(&config, spec, |now, rollout| {
        if every > 0 && (now / MINUTE_MS).is_multiple_of(every) {
            let bytes = serde_json::to_vec(rollout).unwrap();
            *rollout = serde_json::from_slice(&bytes).unwrap();
            restores += 1;
        }
    })
    .unwrap();
    (report, restores)
}

/// The controller's half of scenario 6: a rollout persisted and read back at
/// every step (as a restarted server does) decides exactly as one that was
/// never interrupted, and starts each wave once.
#[test]
fn restored_at_every_step_decides_the_same() {
    for name in ["healthy", "class-traps"] {
        let (straight, _) = restored_run(name, 0);
        let (restored, restores) = restored_run(name, 1);
        assert!(restores > 100, "{restores} restores");
        let outline = |report: &SimReport| {
            (
                report.outcome.clone(),
                report.wave_starts.clone(),
                report.decisions.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(),
                report.ever_updated,
                report.rolled_back,
            )
        };
        assert_eq!(outline(&straight), outline(&restored), "{name}");
        let waves: Vec<u32> = restored.wave_starts.iter().map(|(wave, _)| *wave).collect();
        assert_eq!(
            waves,
            (0..restored.waves_started).collect::<Vec<_>>(),
            "each wave starts once"
        );
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let (config, spec) = sim::scenario("noisy", 10_000, 3).unwrap();
    let first = sim::run(&config, spec.clone(), |_, _| {}).unwrap();
    let second = sim::run(&config, spec, |_, _| {}).unwrap();
    assert_eq!(first, second);
}

/// Calibration: a healthy but noisy fleet, many seeds, smaller fleets: no
/// false abort.
#[test]
fn noisy_healthy_fleets_are_never_stopped() {
    for seed in 0..8 {
        let (config, spec) = sim::scenario("noisy", 20_000, 1_000 + seed).unwrap();
        let report = sim::run(&config, spec, |_, _| {}).unwrap();
        assert_eq!(report.outcome, "completed", "seed {}: {}", 1_000 + seed, report.line());
    }
}
