//! One look at the evidence of the current wave, and the decision it gives.

use serde::{Deserialize, Serialize};

use crate::controller::{Phase, Rollout};
use crate::spec::{Direction, HOUR_MS, METRIC_GATES_MAX, Millis, OnFail, Signal};
use crate::stats::{self, MannWhitney, RateSample};

/// What a look decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The wave passed every gate: start the next.
    Promote,
    /// Not enough evidence yet (or still soaking).
    Hold,
    /// Stop for a human.
    Pause,
    /// Stop and roll every updated device back.
    Abort,
}

/// One decision and everything it was based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The wave it is about (0 is the canary).
    pub wave: u32,
    /// The look's number in the rollout (1-based); 0 for an operator's
    /// command.
    pub look: u32,
    /// When.
    pub at: Millis,
    /// What it decided.
    pub outcome: Outcome,
    /// Why, in one sentence.
    pub reason: String,
    /// The figures.
    pub evidence: Evidence,
}

/// The figures a decision rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The current wave's installs.
    pub installs: InstallEvidence,
    /// Updated devices of the wave observed at least `min_exposure_ms`.
    pub sample: u64,
    /// The sample the gates need before a decision other than hold.
    pub sample_required: u64,
    /// The significance level of each test: the rollout's alpha divided by
    /// `looks_max` times the tests in a look (Bonferroni).
    pub alpha_per_test: f64,
    /// Every test of this look.
    pub tests: Vec<TestEvidence>,
}

/// Installs of the current wave.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InstallEvidence {
    /// Devices in the wave.
    pub devices: u64,
    /// Told and not yet reported.
    pub waiting: u64,
    /// Installed.
    pub installed: u64,
    /// Failed (rolled themselves back).
    pub failed: u64,
    /// Never reported after every retry.
    pub unreachable: u64,
    /// `failed / (installed + failed)`.
    pub failure_rate: f64,
    /// The gate's maximum.
    pub failure_rate_max: f64,
    /// One-sided binomial p-value of "the true failure rate is above the
    /// maximum".
    pub p: f64,
}

/// One group's figures in a test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroupFigures {
    /// Devices.
    pub devices: u64,
    /// Events (signals) or samples (metrics).
    pub events: f64,
    /// Device-hours observed (signals).
    pub exposure_hours: f64,
    /// Events per device-hour (signals) or the mean of device means
    /// (metrics).
    pub value: f64,
}

/// Which test gave a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "test")]
pub enum TestKind {
    /// Rate ratio: conditional binomial test of two Poisson rates, counts
    /// divided by the control group's dispersion.
    RateRatio {
        /// `rate(updated) / rate(control)`.
        ratio: f64,
        /// The largest ratio tolerated.
        tolerated_ratio: f64,
        /// The control group's Pearson dispersion (1 = Poisson).
        dispersion: f64,
    },
    /// Mann-Whitney U over per-device means.
    MannWhitney {
        /// The test's figures.
        result: MannWhitney,
        /// Mean shift in the harmful direction, in the metric's unit.
        shift: f64,
        /// The smallest shift that matters.
        min_effect: f64,
    },
}

/// A test's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No significant harm.
    Pass,
    /// Significant harm beyond the tolerance.
    Fail,
    /// Not enough devices in one of the groups to test.
    NotEnoughData,
}

/// One test of a look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestEvidence {
    /// The signal or metric.
    pub gate: String,
    /// The hardware class, or `None` for the whole group.
    pub class: Option<String>,
    /// The updated devices.
    pub updated: GroupFigures,
    /// The control group (not yet updated), same window.
    pub control: GroupFigures,
    /// The test and its statistic.
    pub test: TestKind,
    /// One-sided p-value of the harm.
    pub p: f64,
    /// The verdict at `alpha_per_test`.
    pub verdict: Verdict,
    /// What failing does.
    pub on_fail: OnFail,
}

/// Devices an updated or control group needs in a class before it is tested
/// on its own (the whole-group test always runs).
const CLASS_GROUP_MIN: u64 = 30;

struct Accumulated {
    /// `[signal][class + 1][group]`, class 0 = all; group 0 = updated.
    rates: Vec<[RateSample; 2]>,
    /// `[metric][class + 1][group]` per-device means.
    metrics: Vec<[Vec<f64>; 2]>,
    sample: u64,
    installs: InstallEvidence,
}

fn accumulate(rollout: &Rollout, now: Millis) -> Accumulated {
    let gates = &rollout.spec.gates;
    let strata = rollout.classes().len() + 1;
    let metrics = gates.metrics.len().min(METRIC_GATES_MAX);
    let mut accumulated = Accumulated {
        rates: vec![[RateSample::default(), RateSample::default()]; Signal::ALL.len() * strata],
        metrics: (0..metrics * strata).map(|_| [Vec::new(), Vec::new()]).collect(),
        sample: 0,
        installs: InstallEvidence {
            devices: 0,
            waiting: 0,
            installed: 0,
            failed: 0,
            unreachable: 0,
            failure_rate: 0.0,
            failure_rate_max: gates.install_failure_rate_max,
            p: 1.0,
        },
    };
    let wave = rollout.current_wave as u16;
    for device in &rollout.devices {
        if device.wave == wave {
            let installs = &mut accumulated.installs;
            match device.phase {
                Phase::Told => installs.waiting += 1,
                Phase::Updated => installs.installed += 1,
                Phase::Failed => installs.failed += 1,
                Phase::Unreachable => installs.unreachable += 1,
                _ => {}
            }
            if device.phase != Phase::Pending {
                installs.devices += 1;
            }
        }
        let group = match device.phase {
            Phase::Updated => 0,
            Phase::Pending => 1,
            _ => continue,
        };
        // Only devices heard from in their window: one offline since before
        // it says nothing about this window.
        if device.last_seen < device.window_start {
            continue;
        }
        let offline = now.saturating_sub(device.last_seen) > gates.offline_after_ms;
        let end = now.min(device.last_seen.saturating_add(gates.offline_after_ms));
        let exposure_ms = end.saturating_sub(device.window_start);
        if exposure_ms < gates.min_exposure_ms {
            continue;
        }
        if group == 0 && device.wave == wave {
            accumulated.sample += 1;
        }
        let hours = exposure_ms as f64 / HOUR_MS as f64;
        let class = device.class as usize + 1;
        for (signal_ix, signal) in Signal::ALL.iter().enumerate() {
            let events = match signal {
                Signal::Offline => f64::from(u8::from(offline)),
                _ => f64::from(device.counts[signal_ix]),
            };
            accumulated.rates[signal_ix * strata][group].add(events, hours);
            accumulated.rates[signal_ix * strata + class][group].add(events, hours);
        }
        for slot in 0..metrics {
            if device.metric_count[slot] > 0 {
                let mean = device.metric_sum[slot] / f64::from(device.metric_count[slot]);
                accumulated.metrics[slot * strata][group].push(mean);
                accumulated.metrics[slot * strata + class][group].push(mean);
            }
        }
    }
    accumulated
}

fn figures(sample: &RateSample) -> GroupFigures {
    GroupFigures {
        devices: sample.devices,
        events: sample.events,
        exposure_hours: sample.exposure_hours,
        value: sample.rate(),
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Tests in one look (the install gate, then every gate on the whole group
/// and, with `per_class`, on each class).
fn tests_per_look(rollout: &Rollout) -> u64 {
    let gates = &rollout.spec.gates;
    let per_gate = 1 + if gates.per_class {
        rollout.classes().len() as u64
    } else {
        0
    };
    1 + (gates.signals.len() + gates.metrics.len()) as u64 * per_gate
}

/// One look at the current wave.
pub(crate) fn evaluate(rollout: &Rollout, now: Millis) -> Decision {
    let gates = &rollout.spec.gates;
    let strata = rollout.classes().len() + 1;
    let alpha_per_test = gates.alpha / (f64::from(gates.looks_max) * tests_per_look(rollout) as f64);
    let mut accumulated = accumulate(rollout, now);
    let mut tests = Vec::new();
    let class_name = |stratum: usize| (stratum > 0).then(|| rollout.classes()[stratum - 1].clone());
    let strata_tested = if gates.per_class { strata } else { 1 };

    for gate in &gates.signals {
        let signal_ix = Signal::ALL
            .iter()
            .position(|signal| *signal == gate.signal)
            .unwrap_or(0);
        for stratum in 0..strata_tested {
            let [updated, control] = &accumulated.rates[signal_ix * strata + stratum];
            let group_min = if stratum == 0 { 1 } else { CLASS_GROUP_MIN };
            let dispersion = control.dispersion();
            let (p, verdict) = if updated.devices < group_min || control.devices < group_min {
                (1.0, Verdict::NotEnoughData)
            } else {
                let p = stats::rate_test(updated, control, gate.tolerated_ratio, dispersion);
                (
                    p,
                    if p < alpha_per_test {
                        Verdict::Fail
                    } else {
                        Verdict::Pass
                    },
                )
            };
            let ratio = if control.rate() > 0.0 {
                updated.rate() / control.rate()
            } else if updated.rate() > 0.0 {
                // Infinite, but JSON has no infinity: the state must persist.
                f64::MAX
            } else {
                1.0
            };
            tests.push(TestEvidence {
                gate: gate.signal.name().to_owned(),
                class: class_name(stratum),
                updated: figures(updated),
                control: figures(control),
                test: TestKind::RateRatio {
                    ratio,
                    tolerated_ratio: gate.tolerated_ratio,
                    dispersion,
                },
                p,
                verdict,
                on_fail: gate.on_fail,
            });
        }
    }
    for (slot, gate) in gates.metrics.iter().enumerate().take(METRIC_GATES_MAX) {
        for stratum in 0..strata_tested {
            let [updated, control] = &mut accumulated.metrics[slot * strata + stratum];
            let sign = match gate.direction {
                Direction::HigherIsWorse => 1.0,
                Direction::LowerIsWorse => -1.0,
            };
            let group_min = if stratum == 0 { 1 } else { CLASS_GROUP_MIN as usize };
            let shift = sign * (mean(updated) - mean(control));
            let (result, verdict) = if updated.len() < group_min || control.len() < group_min {
                (stats::mann_whitney(&[], &[]), Verdict::NotEnoughData)
            } else {
                if sign < 0.0 {
                    updated.iter_mut().for_each(|value| *value = -*value);
                    control.iter_mut().for_each(|value| *value = -*value);
                }
                let result = stats::mann_whitney(updated, control);
                let fail = result.p < alpha_per_test && shift > gate.min_effect;
                (result, if fail { Verdict::Fail } else { Verdict::Pass })
            };
            let group = |values: &Vec<f64>| GroupFigures {
                devices: values.len() as u64,
                events: values.len() as f64,
                exposure_hours: 0.0,
                value: sign * mean(values),
            };
            tests.push(TestEvidence {
                gate: gate.name.clone(),
                class: class_name(stratum),
                updated: group(updated),
                control: group(control),
                test: TestKind::MannWhitney {
                    result,
                    shift,
                    min_effect: gate.min_effect,
                },
                p: result.p,
                verdict,
                on_fail: gate.on_fail,
            });
        }
    }

    let installs = &mut accumulated.installs;
    let settled = installs.installed + installs.failed;
    if settled > 0 {
        installs.failure_rate = installs.failed as f64 / settled as f64;
        installs.p = stats::binomial_upper_tail(installs.failed as f64, settled as f64, gates.install_failure_rate_max);
    }
    let wave = &rollout.waves[rollout.current_wave];
    let wave_size = wave.queue.len() as u64;
    let observable = wave_size.saturating_sub(installs.failed + installs.unreachable);
    let sample_required = u64::from(gates.min_sample).min(observable).max(1);
    let evidence = Evidence {
        installs: *installs,
        sample: accumulated.sample,
        sample_required,
        alpha_per_test,
        tests,
    };

    let failed = |on_fail: OnFail| {
        evidence
            .tests
            .iter()
            .filter(|test| test.verdict == Verdict::Fail && test.on_fail == on_fail)
            .map(describe_failure)
            .collect::<Vec<_>>()
    };
    let install_failed =
        settled > 0 && installs.p < alpha_per_test && installs.failure_rate > installs.failure_rate_max;
    let aborts = failed(OnFail::Abort);
    let pauses = failed(OnFail::Pause);
    let soak_end = wave.dispatched_at.map(|at| at + rollout.spec.plan.soak_ms);
    let (outcome, reason) = if install_failed {
        (
            Outcome::Abort,
            format!(
                "install failures {} of {} ({:.2} %) are significantly above the maximum {:.2} % (p = {:.2e} < {:.2e})",
                installs.failed,
                settled,
                installs.failure_rate * 100.0,
                installs.failure_rate_max * 100.0,
                installs.p,
                alpha_per_test
            ),
        )
    } else if !aborts.is_empty() {
        (Outcome::Abort, format!("significant harm: {}", aborts.join("; ")))
    } else if !pauses.is_empty() {
        (Outcome::Pause, format!("significant harm: {}", pauses.join("; ")))
    } else if wave.cursor < wave.queue.len() {
        (
            Outcome::Hold,
            format!("telling devices: {} of {} told", wave.cursor, wave.queue.len()),
        )
    } else if installs.waiting > 0 {
        (
            Outcome::Hold,
            format!("{} devices have not reported their install yet", installs.waiting),
        )
    } else if evidence.sample < sample_required {
        (
            Outcome::Hold,
            format!(
                "sample {} of {} updated devices observed long enough",
                evidence.sample, sample_required
            ),
        )
    } else if soak_end.is_none_or(|end| now < end) {
        (
            Outcome::Hold,
            format!("soaking until {} ms", soak_end.unwrap_or(Millis::MAX)),
        )
    } else if settled > 0 && installs.failure_rate > installs.failure_rate_max {
        (
            Outcome::Pause,
            format!(
                "install failures {:.2} % are above the maximum {:.2} %, though not significantly: a human decides",
                installs.failure_rate * 100.0,
                installs.failure_rate_max * 100.0
            ),
        )
    } else {
        (
            Outcome::Promote,
            format!(
                "soaked, {} updated devices observed, install failures {:.2} %, no gate showed harm",
                evidence.sample,
                installs.failure_rate * 100.0
            ),
        )
    };
    let (outcome, reason) = if outcome == Outcome::Hold && rollout.looks_used >= gates.looks_max {
        (
            Outcome::Pause,
            format!(
                "every look of the evidence budget (looks_max = {}) is used and the wave is still undecided ({reason}); a human decides",
                gates.looks_max
            ),
        )
    } else {
        (outcome, reason)
    };
    Decision {
        wave: rollout.current_wave as u32,
        look: rollout.looks_used,
        at: now,
        outcome,
        reason,
        evidence,
    }
}

fn describe_failure(test: &TestEvidence) -> String {
    let class = test
        .class
        .as_deref()
        .map_or_else(String::new, |class| format!(" on {class}"));
    match test.test {
        TestKind::RateRatio {
            ratio, tolerated_ratio, ..
        } => format!(
            "{}{} {:.3}/device-hour vs control {:.3} (x{:.2} > tolerated x{:.2}, p = {:.2e})",
            test.gate, class, test.updated.value, test.control.value, ratio, tolerated_ratio, test.p
        ),
        TestKind::MannWhitney { shift, min_effect, .. } => format!(
            "{}{} mean {:.4} vs control {:.4} (shift {:.4} > {:.4}, Mann-Whitney p = {:.2e})",
            test.gate, class, test.updated.value, test.control.value, shift, min_effect, test.p
        ),
    }
}

fn bare_evidence(rollout: &Rollout, now: Millis) -> Evidence {
    let decision = evaluate(rollout, now);
    decision.evidence
}

pub(crate) fn deadline_decision(rollout: &Rollout, now: Millis) -> Decision {
    Decision {
        wave: rollout.current_wave as u32,
        look: rollout.looks_used,
        at: now,
        outcome: Outcome::Pause,
        reason: format!(
            "the deadline ({} ms after the start) passed: no further wave starts; updated devices stay",
            rollout.spec.deadline_ms
        ),
        evidence: bare_evidence(rollout, now),
    }
}

pub(crate) fn operator_decision(rollout: &Rollout, now: Millis, outcome: Outcome, reason: &str) -> Decision {
    Decision {
        wave: rollout.current_wave as u32,
        look: 0,
        at: now,
        outcome,
        reason: format!("operator: {reason}"),
        evidence: bare_evidence(rollout, now),
    }
}
