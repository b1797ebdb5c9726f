//! Issue 12's scenarios on the in-process simulator, at full size (320,000
//! devices; `MOLT_ROLLOUT_DEVICES` changes it). Each scenario runs once per
//! test binary and is shared by its own test and by the summary line.
//! Scenario 6 (the server killed mid-rollout) needs the server; the
//! controller's half of it, a rollout persisted and restored at every step,
//! is `controller::restored_at_every_look_decides_the_same`.

use std::sync::OnceLock;

use molt_rollout::sim::{self, SimReport};

const SEED: u64 = 20_261_205;

fn devices() -> u32 {
    std::env::var("MOLT_ROLLOUT_DEVICES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(320_000)
}

/// Issue 12's numbering of the scenarios the simulator runs.
const NUMBERED: [(u32, &str); 6] = [
    (1, "healthy"),
    (2, "class-traps"),
    (3, "offline"),
    (4, "metric-drift"),
    (5, "noisy"),
    (7, "joiners"),
];

fn report(name: &str) -> &'static SimReport {
    static REPORTS: [OnceLock<SimReport>; 6] = [const { OnceLock::new() }; 6];
    let position = NUMBERED
        .iter()
        .position(|(_, known)| *known == name)
        .expect("a numbered scenario");
    REPORTS[position].get_or_init(|| {
        let (config, spec) = sim::scenario(name, devices(), SEED).expect("a named scenario");
        let report = sim::run(&config, spec, |_, _| {}).expect("the scenario runs");
        println!(
            "scenario {} {name} (seed {SEED}): {}",
            NUMBERED[position].0,
            report.line()
        );
        report
    })
}

/// Whether a scenario ended as issue 12 says it must, and why not.
fn verdict(name: &str, report: &SimReport) -> Result<(), String> {
    let each_wave_once = report.wave_starts.len() as u32 == report.waves_started
        && report
            .wave_starts
            .iter()
            .enumerate()
            .all(|(n, (wave, _))| *wave == n as u32);
    if !each_wave_once {
        return Err(format!("waves started out of order or twice: {:?}", report.wave_starts));
    }
    let rolled_back_from = |wave: u32| {
        report.outcome == "rolled_back"
            && report.deciding.as_ref().is_some_and(|decision| decision.wave == wave)
            // Devices offline for good keep the release; they are few.
            && report.updated_at_end <= report.ever_updated / 100
    };
    match name {
        "healthy" | "noisy" => {
            if report.outcome != "completed" || report.waves_started != report.waves {
                return Err(format!("a healthy release did not reach 100 %: {}", report.line()));
            }
            // Every device updated but those that never reported after every
            // retry (offline churn), and those are few (the noisy fleet's
            // churn is five times the healthy one's).
            if report.updated_at_end + report.not_installed != report.devices
                || report.not_installed > report.devices / 50
            {
                return Err(format!(
                    "{} of {} devices updated, {} not installed",
                    report.updated_at_end, report.devices, report.not_installed
                ));
            }
        }
        "class-traps" => {
            if !rolled_back_from(0) {
                return Err(format!("not stopped in the canary and rolled back: {}", report.line()));
            }
            let canary = report.ever_updated;
            if report.affected_bad >= canary {
                return Err(format!("{} affected, canary {canary}", report.affected_bad));
            }
            let reason = &report
                .deciding
                .as_ref()
                .map(|decision| decision.reason.clone())
                .unwrap_or_default();
            if !reason.contains("traps on jetson") {
                return Err(format!("stopped for another reason: {reason}"));
            }
        }
        "offline" => {
            if report.outcome != "rolled_back" || report.updated_at_end > report.ever_updated / 20 {
                return Err(format!("not rolled back: {}", report.line()));
            }
            let reason = &report
                .deciding
                .as_ref()
                .map(|decision| decision.reason.clone())
                .unwrap_or_default();
            if !reason.contains("offline") {
                return Err(format!("stopped for another reason: {reason}"));
            }
        }
        "metric-drift" => {
            let reason = &report
                .deciding
                .as_ref()
                .map(|decision| decision.reason.clone())
                .unwrap_or_default();
            if report.outcome != "rolled_back" || !reason.contains("latency_ms") {
                return Err(format!("the drift was not stopped: {}", report.line()));
            }
        }
        "joiners" => {
            if report.outcome != "completed" {
                return Err(format!("did not complete: {}", report.line()));
            }
            if report.joiners_told_before_canary != 0 || report.joiners_unseen_class_told != 0 {
                return Err(format!(
                    "{} joiners told before the canary promoted, {} of a class the canary never saw",
                    report.joiners_told_before_canary, report.joiners_unseen_class_told
                ));
            }
            let unseen = report.joiners / 21; // one part in 21: see sim::scenario
            if report.joiners_updated + unseen < report.joiners - unseen / 2 || report.joiners_updated == 0 {
                return Err(format!(
                    "{} of {} joiners updated (those of the unseen class stay)",
                    report.joiners_updated, report.joiners
                ));
            }
        }
        other => return Err(format!("no verdict for {other}")),
    }
    Ok(())
}

fn check(name: &str) {
    let report = report(name);
    if let Err(why) = verdict(name, report) {
        panic!("scenario {name} (seed {SEED}): {why}");
    }
}

#[test]
fn scenario_1_healthy_release_promotes_to_100_percent() {
    check("healthy");
}

#[test]
fn scenario_2_tripled_traps_on_one_class_stop_in_the_canary() {
    check("class-traps");
}

#[test]
fn scenario_3_three_percent_offline_is_stopped_and_rolled_back() {
    check("offline");
}

#[test]
fn scenario_4_metric_drift_is_stopped() {
    check("metric-drift");
}

#[test]
fn scenario_5_noisy_healthy_fleet_is_not_stopped() {
    check("noisy");
}

#[test]
fn scenario_7_joiners_never_skip_the_canary() {
    check("joiners");
}

#[test]
fn rollout_scenarios_summary() {
    let mut correct = 0;
    let mut false_aborts = 0;
    let mut max_affected_bad = 0;
    for (number, name) in NUMBERED {
        let report = report(name);
        let ok = verdict(name, report).is_ok();
        correct += u32::from(ok);
        if matches!(name, "healthy" | "noisy" | "joiners") && report.outcome == "rolled_back" {
            false_aborts += 1;
        }
        if (2..=4).contains(&number) {
            max_affected_bad = max_affected_bad.max(report.affected_bad);
        }
    }
    println!(
        "rollout-scenarios: scenarios={} correct={correct} false-aborts={false_aborts} max-affected-bad={max_affected_bad}",
        NUMBERED.len()
    );
    assert_eq!(correct as usize, NUMBERED.len());
    assert_eq!(false_aborts, 0);
}
