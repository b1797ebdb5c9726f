//! `molt fleet-sim`: the in-process fleet simulator, running molt's rollout
//! controller on a modelled fleet on a simulated clock.

use std::io::IsTerminal;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use molt_rollout::sim::{self, Effect, Model, SimReport};
use molt_rollout::{MINUTE_MS, Outcome};
use serde::Serialize;

use crate::output::{Output, Report, UsageError};

/// Run a rollout on a simulated fleet, in process, and print what happened.
///
/// Hundreds of thousands of modelled devices (no sockets), on a simulated
/// clock, driving the same rollout controller the server runs: seeded
/// waves, the rate limit, soak, health gates against the control group,
/// automatic rollback. Devices churn offline and back, report traps,
/// reverts, policy errors, restarts and a latency metric, and behave as
/// the --model rules say for the new release (2) on their hardware class
/// (rpi4 40 %, imx8 30 %, stm32mp1 20 %, jetson 10 %). A run is a function
/// of its seed: the same command replays it decision for decision.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Scenarios (issue 12; each with its own models):
  healthy       a good release: promotes through every wave to 100 %
  class-traps   triples the trap rate on jetson: stopped in the canary, rolled back
  offline       3 % of updated devices go offline: stopped, rolled back
  metric-drift  latency_ms rises by 2 ms: stopped, rolled back
  noisy         a healthy release on a noisy fleet: must not be stopped
  joiners       devices join mid-rollout, one class the canary never saw

A --model rule is CLASS=EFFECT (CLASS is a hardware class or '*'), with EFFECT one of
  healthy | install-fails:P | traps:FACTOR | offline:P[:MINUTES] | drift:SHIFT

Examples:
  molt fleet-sim
  molt fleet-sim --scenario class-traps --seed 7
  molt fleet-sim --scenario healthy --model 'jetson=traps:3' --model '*=install-fails:0.01'
  molt --json fleet-sim --scenario offline --devices 50000 | jq .report.deciding.evidence.tests")]
pub(crate) struct Args {
    /// The starting scenario.
    #[arg(long, default_value = "healthy", value_parser = clap::builder::PossibleValuesParser::new(sim::SCENARIOS))]
    scenario: String,
    /// Modelled devices at the start.
    #[arg(long, default_value_t = 320_000, value_parser = clap::value_parser!(u32).range(1..=2_000_000))]
    devices: u32,
    /// The seed of the fleet and of the rollout's selection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Add a behaviour of the new release on a class: CLASS=EFFECT.
    #[arg(long = "model", value_name = "CLASS=EFFECT")]
    models: Vec<String>,
}

#[derive(Debug, Serialize)]
struct FleetSimReport {
    scenario: String,
    seed: u64,
    report: SimReport,
}

impl Report for FleetSimReport {
    fn human(&self) -> String {
        let report = &self.report;
        let mut text = format!(
            "fleet-sim {} (seed {}): {} devices, {:.1} simulated hours\n",
            self.scenario,
            self.seed,
            report.devices,
            report.sim_ms as f64 / 3_600_000.0
        );
        for (wave, at) in &report.wave_starts {
            text.push_str(&format!("  wave {wave} started at {:.1} h\n", *at as f64 / 3_600_000.0));
        }
        for (wave, outcome, reason) in &report.decisions {
            let outcome = match outcome {
                Outcome::Promote => "promote",
                Outcome::Hold => "hold",
                Outcome::Pause => "pause",
                Outcome::Abort => "abort",
            };
            text.push_str(&format!("  wave {wave}: {outcome}: {reason}\n"));
        }
        if report.joiners > 0 {
            text.push_str(&format!(
                "  joiners: {} joined, {} updated, {} told before the canary promoted, {} of a class the canary never saw told\n",
                report.joiners,
                report.joiners_updated,
                report.joiners_told_before_canary,
                report.joiners_unseen_class_told
            ));
        }
        text.push_str(&format!("summary: {}\n", report.line()));
        text
    }
}

fn parse_model(text: &str, release: u64) -> anyhow::Result<Model> {
    let usage = |why: &str| {
        UsageError(format!(
            "--model {text:?}: {why}; expected CLASS=EFFECT, e.g. 'jetson=traps:3' or '*=install-fails:0.05'"
        ))
    };
    let (class, effect) = text.split_once('=').ok_or_else(|| usage("no '='"))?;
    if class.is_empty() {
        return Err(usage("no class").into());
    }
    let mut parts = effect.split(':');
    let kind = parts.next().unwrap_or_default();
    let mut number = |name: &str| -> anyhow::Result<f64> {
        let value: f64 = parts
            .next()
            .ok_or_else(|| usage(&format!("{kind} needs {name}")))?
            .parse()
            .map_err(|_| usage(&format!("{name} is not a number")))?;
        if !value.is_finite() || value < 0.0 {
            return Err(usage(&format!("{name} must be a finite number >= 0")).into());
        }
        Ok(value)
    };
    let effect = match kind {
        "healthy" => Effect::Healthy,
        "install-fails" => {
            let probability = number("a probability")?;
            if probability > 1.0 {
                bail!(usage("the probability must be at most 1"));
            }
            Effect::InstallFails { probability }
        }
        "traps" => Effect::Traps {
            factor: number("a factor")?,
        },
        "offline" => {
            let probability = number("a probability")?;
            let minutes = parts
                .next()
                .map(str::parse::<u64>)
                .transpose()
                .ok()
                .flatten()
                .unwrap_or(30);
            if probability > 1.0 {
                bail!(usage("the probability must be at most 1"));
            }
            Effect::OfflineAfterUpdate {
                probability,
                within_ms: minutes * MINUTE_MS,
            }
        }
        "drift" => {
            let shift: f64 = effect
                .strip_prefix("drift:")
                .ok_or_else(|| usage("drift needs a shift"))?
                .parse()
                .map_err(|_| usage("the shift is not a number"))?;
            if !shift.is_finite() {
                bail!(usage("the shift must be finite"));
            }
            Effect::MetricDrift { shift }
        }
        other => bail!(usage(&format!("unknown effect {other:?}"))),
    };
    Ok(Model {
        release,
        class: (class != "*").then(|| class.to_owned()),
        effect,
    })
}

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    let (mut config, spec) = sim::scenario(&args.scenario, args.devices, args.seed)
        .with_context(|| format!("no scenario {:?}", args.scenario))?;
    for model in &args.models {
        config.models.push(parse_model(model, spec.release.version)?);
    }
    let spinner = (!output.is_json() && std::io::stderr().is_terminal()).then(|| {
        let spinner = ProgressBar::new_spinner();
        spinner.set_style(
            ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        spinner
    });
    let scenario = args.scenario.clone();
    let report = tokio::task::spawn_blocking(move || {
        let report = sim::run(&config, spec, |now, rollout| {
            if let Some(spinner) = &spinner
                && (now / MINUTE_MS).is_multiple_of(10)
            {
                spinner.set_message(format!(
                    "{scenario}: simulated {:.1} h, wave {}, {}",
                    now as f64 / 3_600_000.0,
                    rollout.current_wave(),
                    sim::status_name(rollout.status())
                ));
                spinner.tick();
            }
        });
        if let Some(spinner) = spinner {
            spinner.finish_and_clear();
        }
        report
    })
    .await
    .context("the simulator thread failed")?
    .context("the simulated rollout could not be created")?;
    output.report(&FleetSimReport {
        scenario: args.scenario,
        seed: args.seed,
        report,
    })
}
