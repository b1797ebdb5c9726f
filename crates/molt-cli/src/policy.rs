//! `molt policy`: the tools a policy author needs, in the binary they
//! already have: start a crate, build it into a component, check it, run it
//! on readings, and swap one version for another as a device would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use molt_wasm::{Action, CheckReport, PolicyInstance, PolicyModule, Reading, Runtime, RuntimeConfig, State};
use serde::Serialize;

use crate::output::{Output, Report, UsageError, human_bytes};

mod build;
mod new;
mod readings;

/// Write, build, check and try policies.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
From nothing to a signed release:
  molt policy new rate                       # a policy crate, with native tests
  cd rate && cargo test && cd ..
  molt policy build rate                     # wasm32 build, wrapped into rate/rate.wasm
  molt policy check rate/rate.wasm --config rate/config.json
  molt policy run rate/rate.wasm --config rate/config.json --readings rate/readings.csv
  molt release create --repo ./repo --keys ./keys --version 1 --security-counter 1 \\
      --min-agent-version 1.0.0 --policy rate=rate/rate.wasm@0.1.0:rate/config.json

Another language: build a core module exporting the canonical ABI of wit/policy.wit
(docs/policy-authors-guide.md, \"Bring your own language\"), then
  molt policy build --core policy.core.wasm --output policy.wasm")]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    New(new::NewArgs),
    Build(build::BuildArgs),
    Check(CheckArgs),
    Run(RunArgs),
    Swap(SwapArgs),
}

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    match args.command {
        Command::New(args) => new::new(args, output),
        Command::Build(args) => build::build(args, output),
        Command::Check(args) => check(args, output),
        Command::Run(args) => run_readings(args, output),
        Command::Swap(args) => swap(args, output),
    }
}

/// The runtime every subcommand checks and runs policies with: molt-wasm's
/// default limits, which are a device's unless it configures others.
pub(crate) fn runtime() -> anyhow::Result<Runtime> {
    Runtime::new(&RuntimeConfig::default()).context("could not start the WebAssembly runtime")
}

/// Reads a policy file, bounded by the runtime's `module_bytes_max`.
pub(crate) fn read_module(path: &Path, runtime: &Runtime) -> anyhow::Result<Vec<u8>> {
    let limit = runtime.limits().module_bytes_max as u64;
    crate::preflight::read_bounded(path, limit, "module_bytes_max")
}

/// The policy check of `molt release create`, `molt verify` and
/// `molt policy check`: the error names the policy and why it cannot run.
pub(crate) fn check_named(
    runtime: &Runtime,
    name: &str,
    wasm: &[u8],
    config: &BTreeMap<String, String>,
) -> anyhow::Result<CheckReport> {
    let pairs: Vec<(String, String)> = config.iter().map(|(key, value)| (key.clone(), value.clone())).collect();
    molt_wasm::check_policy(runtime, wasm, &pairs)
        .map_err(|error| anyhow::anyhow!("policy `{name}` cannot run: {error}"))
}

fn read_config(path: Option<&Path>) -> anyhow::Result<BTreeMap<String, String>> {
    match path {
        Some(path) => crate::release::read_config(path, "under test"),
        None => Ok(BTreeMap::new()),
    }
}

fn pairs(config: &BTreeMap<String, String>) -> Vec<(String, String)> {
    config.iter().map(|(key, value)| (key.clone(), value.clone())).collect()
}

/// Check a policy component: the contract, imports, size and limits; then
/// compile it and run `init` with the config.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Runs the same check as `molt release create` and `molt verify`, with molt-wasm's
default limits.

Example:
  molt policy check threshold.wasm --config threshold.json")]
struct CheckArgs {
    /// The policy component.
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,
    /// A JSON object of the config `init` receives [default: empty].
    #[arg(long, value_name = "CONFIG.json")]
    config: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct CheckOutput {
    file: PathBuf,
    contract: &'static str,
    imports: Vec<String>,
    size_bytes: usize,
    module_bytes_max: usize,
    init_fuel: u64,
    fuel_per_batch: u64,
    memory_bytes: usize,
    memory_bytes_max: usize,
    config: BTreeMap<String, String>,
}

impl Report for CheckOutput {
    fn human(&self) -> String {
        format!(
            "{} is a {} component that imports nothing\n  size     {} of {} (module_bytes_max)\n  \
             init     {} fuel of {} per call (fuel_per_batch), with {} config key(s)\n  \
             memory   {} of {} (memory_bytes_max) after init\n",
            self.file.display(),
            self.contract,
            human_bytes(self.size_bytes as u64),
            human_bytes(self.module_bytes_max as u64),
            self.init_fuel,
            self.fuel_per_batch,
            self.config.len(),
            human_bytes(self.memory_bytes as u64),
            human_bytes(self.memory_bytes_max as u64),
        )
    }
}

fn check(args: CheckArgs, output: &Output) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let wasm = read_module(&args.file, &runtime)?;
    let config = read_config(args.config.as_deref())?;
    let report = molt_wasm::check_policy(&runtime, &wasm, &pairs(&config))
        .map_err(|error| anyhow::anyhow!("{} cannot run as a policy: {error}", args.file.display()))?;
    output.report(&CheckOutput {
        file: args.file,
        contract: molt_release::release_set::CONTRACT,
        imports: Vec::new(),
        size_bytes: report.size_bytes,
        module_bytes_max: report.module_bytes_max,
        init_fuel: report.init_fuel,
        fuel_per_batch: report.fuel_per_batch,
        memory_bytes: report.memory_bytes,
        memory_bytes_max: report.memory_bytes_max,
        config,
    })
}

/// Run a policy on readings from a file: the actions of each batch, its
/// fuel, and the final state's CID, then a snapshot/restore round trip.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
READINGS is CSV with a header naming sensor, timestamp_ms and value (and optionally
sequence), or JSON lines such as {\"sensor\": 1, \"timestamp_ms\": 0, \"value\": 21.5}.
Sequence numbers default to the line's position, from 0.

Example:
  molt policy run threshold.wasm --config threshold.json --readings readings.csv --batch 50")]
struct RunArgs {
    /// The policy component.
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,
    /// A JSON object of the config `init` receives [default: empty].
    #[arg(long, value_name = "CONFIG.json")]
    config: Option<PathBuf>,
    #[command(flatten)]
    input: readings::Input,
}

#[derive(Debug, Serialize)]
struct BatchOutput {
    batch: usize,
    readings: usize,
    fuel: u64,
    actions: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct RunOutput {
    file: PathBuf,
    readings: usize,
    batches: Vec<BatchOutput>,
    fuel_max: u64,
    fuel_per_batch: u64,
    state_cid: String,
    state_bytes: usize,
    round_trip: &'static str,
}

impl Report for RunOutput {
    fn human(&self) -> String {
        let mut text = String::new();
        for batch in &self.batches {
            text.push_str(&format!(
                "batch {:>4}  {:>5} readings  {:>10} fuel  {} action(s)\n",
                batch.batch,
                batch.readings,
                batch.fuel,
                batch.actions.len()
            ));
            for action in &batch.actions {
                text.push_str(&format!("    {}\n", action_line(action)));
            }
        }
        text.push_str(&format!(
            "{} readings in {} batches; most fuel in one batch {} of {} (fuel_per_batch)\n\
             state {} ({} bytes)\nsnapshot/restore round trip: {}\n",
            self.readings,
            self.batches.len(),
            self.fuel_max,
            self.fuel_per_batch,
            self.state_cid,
            self.state_bytes,
            self.round_trip
        ));
        text
    }
}

fn run_readings(args: RunArgs, output: &Output) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let readings = args.input.load(&runtime)?;
    let config = read_config(args.config.as_deref())?;
    let module = compile_checked(&runtime, &args.file, &config)?;
    let mut instance = started(&module, &config, &args.file)?;
    let mut batches = Vec::new();
    for (index, batch) in readings.chunks(args.input.batch).enumerate() {
        let actions = instance.process(batch).with_context(|| {
            format!(
                "{} failed on batch {} (readings from sequence {})",
                args.file.display(),
                index + 1,
                batch[0].sequence
            )
        })?;
        batches.push(BatchOutput {
            batch: index + 1,
            readings: batch.len(),
            fuel: instance.fuel_consumed_last_call(),
            actions: actions.iter().map(action_json).collect(),
        });
    }
    let state = instance.snapshot().context("the policy's snapshot failed")?;
    round_trip(&module, &config, &state)?;
    output.report(&RunOutput {
        file: args.file,
        readings: readings.len(),
        fuel_max: batches.iter().map(|batch| batch.fuel).max().unwrap_or(0),
        batches,
        fuel_per_batch: runtime.limits().fuel_per_batch,
        state_cid: state.cid().to_string(),
        state_bytes: state.bytes().len(),
        round_trip: "ok (restored into a fresh instance, whose snapshot has the same CID)",
    })
}

/// Compiles after the policy check, so that a bad file gets the check's
/// error.
fn compile_checked(runtime: &Runtime, file: &Path, config: &BTreeMap<String, String>) -> anyhow::Result<PolicyModule> {
    let wasm = read_module(file, runtime)?;
    molt_wasm::check_policy(runtime, &wasm, &pairs(config))
        .map_err(|error| anyhow::anyhow!("{} cannot run as a policy: {error}", file.display()))?;
    runtime
        .compile(&wasm)
        .with_context(|| format!("could not compile {}", file.display()))
}

fn started(module: &PolicyModule, config: &BTreeMap<String, String>, file: &Path) -> anyhow::Result<PolicyInstance> {
    let mut instance = module.instantiate().context("could not instantiate the policy")?;
    instance
        .init(&pairs(config))
        .with_context(|| format!("{}: init failed", file.display()))?;
    Ok(instance)
}

/// Restores `state` into a fresh instance and checks that its snapshot is
/// the same state, as a live swap or a recovery relies on.
fn round_trip(module: &PolicyModule, config: &BTreeMap<String, String>, state: &State) -> anyhow::Result<()> {
    let mut fresh = module.instantiate().context("could not instantiate the policy")?;
    fresh
        .restore(&pairs(config), state)
        .context("snapshot/restore round trip: restore refused the policy's own snapshot")?;
    let again = fresh
        .snapshot()
        .context("snapshot/restore round trip: the restored instance's snapshot failed")?;
    if again.cid() != state.cid() {
        bail!(
            "snapshot/restore round trip changed the state: {} became {}; \
             the snapshot must hold everything the policy needs to continue",
            state.cid(),
            again.cid()
        );
    }
    Ok(())
}

/// Swap one version for another mid-stream, as a device does, and show
/// how the actions after the swap differ from the old version's.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
OLD runs the batches before --at; its snapshot is restored into NEW under
--new-config (default: --config), as a live swap does. The rest of the readings then
go through both: NEW as swapped in, OLD as if nothing had happened.

Example:
  molt policy swap threshold-1.wasm threshold-2.wasm --config t.json --readings r.csv --at 3")]
struct SwapArgs {
    /// The running version.
    #[arg(value_name = "OLD.wasm")]
    old: PathBuf,
    /// The version swapped in.
    #[arg(value_name = "NEW.wasm")]
    new: PathBuf,
    /// OLD's config [default: empty].
    #[arg(long, value_name = "CONFIG.json")]
    config: Option<PathBuf>,
    /// NEW's config [default: --config].
    #[arg(long, value_name = "CONFIG.json")]
    new_config: Option<PathBuf>,
    /// The batch (from 1) NEW takes over at [default: the middle batch].
    #[arg(long, value_name = "BATCH")]
    at: Option<usize>,
    #[command(flatten)]
    input: readings::Input,
}

#[derive(Debug, Serialize)]
struct SwapOutput {
    old: PathBuf,
    new: PathBuf,
    swapped_at_batch: usize,
    carried_state_cid: String,
    old_actions: usize,
    new_actions: usize,
    differences: Vec<Difference>,
    old_state_cid: String,
    new_state_cid: String,
}

#[derive(Debug, Serialize)]
struct Difference {
    position: usize,
    old: Option<serde_json::Value>,
    new: Option<serde_json::Value>,
}

/// How many differences the output lists (`--json` too).
const DIFFERENCES_SHOWN_MAX: usize = 20;

impl Report for SwapOutput {
    fn human(&self) -> String {
        let mut text = format!(
            "swapped {} for {} at batch {}, carrying state {}\n  after the swap: {} action(s) from the old version, {} from the new\n",
            self.old.display(),
            self.new.display(),
            self.swapped_at_batch,
            self.carried_state_cid,
            self.old_actions,
            self.new_actions
        );
        if self.differences.is_empty() {
            text.push_str("  the same actions, in the same order\n");
        }
        for difference in &self.differences {
            if let Some(old) = &difference.old {
                text.push_str(&format!("  - #{:<5} {}\n", difference.position, action_line(old)));
            }
            if let Some(new) = &difference.new {
                text.push_str(&format!("  + #{:<5} {}\n", difference.position, action_line(new)));
            }
        }
        text.push_str(&format!(
            "  final state: old {}\n               new {}\n",
            self.old_state_cid, self.new_state_cid
        ));
        text
    }
}

fn swap(args: SwapArgs, output: &Output) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let readings = args.input.load(&runtime)?;
    let old_config = read_config(args.config.as_deref())?;
    let new_config = match &args.new_config {
        Some(path) => read_config(Some(path))?,
        None => old_config.clone(),
    };
    let old_module = compile_checked(&runtime, &args.old, &old_config)?;
    let new_module = compile_checked(&runtime, &args.new, &new_config)?;
    let batches: Vec<&[Reading]> = readings.chunks(args.input.batch).collect();
    let at = args.at.unwrap_or(batches.len() / 2 + 1);
    if at < 1 || at > batches.len() {
        return Err(UsageError(format!(
            "--at {at} is outside the {} batches of the readings; give 1 to {}",
            batches.len(),
            batches.len()
        ))
        .into());
    }
    let mut old = started(&old_module, &old_config, &args.old)?;
    for batch in &batches[..at - 1] {
        old.process(batch)
            .with_context(|| format!("{} failed before the swap", args.old.display()))?;
    }
    let carried = old.snapshot().context("the old version's snapshot failed")?;
    let mut new = new_module
        .instantiate()
        .context("could not instantiate the new version")?;
    new.restore(&pairs(&new_config), &carried).with_context(|| {
        format!(
            "{} refused {}'s state {}; it must restore snapshots of the version it replaces",
            args.new.display(),
            args.old.display(),
            carried.cid()
        )
    })?;
    let (mut old_actions, mut new_actions) = (Vec::new(), Vec::new());
    for batch in &batches[at - 1..] {
        old_actions.extend(
            old.process(batch)
                .with_context(|| format!("{} failed", args.old.display()))?,
        );
        new_actions.extend(
            new.process(batch)
                .with_context(|| format!("{} failed after the swap", args.new.display()))?,
        );
    }
    let mut differences = Vec::new();
    for position in 0..old_actions.len().max(new_actions.len()) {
        let (old_action, new_action) = (old_actions.get(position), new_actions.get(position));
        if old_action != new_action && differences.len() < DIFFERENCES_SHOWN_MAX {
            differences.push(Difference {
                position,
                old: old_action.map(action_json),
                new: new_action.map(action_json),
            });
        }
    }
    output.report(&SwapOutput {
        swapped_at_batch: at,
        carried_state_cid: carried.cid().to_string(),
        old_actions: old_actions.len(),
        new_actions: new_actions.len(),
        differences,
        old_state_cid: old
            .snapshot()
            .context("the old version's snapshot failed")?
            .cid()
            .to_string(),
        new_state_cid: new
            .snapshot()
            .context("the new version's snapshot failed")?
            .cid()
            .to_string(),
        old: args.old,
        new: args.new,
    })
}

/// An action as JSON, with its kind.
fn action_json(action: &Action) -> serde_json::Value {
    use serde_json::json;
    match action {
        Action::Telemetry(t) => {
            json!({"kind": "telemetry", "sensor": t.sensor, "timestamp_ms": t.timestamp_ms, "metric": t.metric, "value": t.value})
        }
        Action::Alert(a) => {
            json!({"kind": "alert", "sensor": a.sensor, "timestamp_ms": a.timestamp_ms, "severity": severity_name(a.severity), "message": a.message})
        }
        Action::Command(c) => json!({"kind": "command", "actuator": c.actuator, "value": c.value}),
        Action::Log(l) => {
            json!({"kind": "log", "level": level_name(l.level), "message": l.message})
        }
    }
}

fn severity_name(severity: molt_wasm::Severity) -> &'static str {
    match severity {
        molt_wasm::Severity::Info => "info",
        molt_wasm::Severity::Warning => "warning",
        molt_wasm::Severity::Critical => "critical",
    }
}

fn level_name(level: molt_wasm::Level) -> &'static str {
    match level {
        molt_wasm::Level::Debug => "debug",
        molt_wasm::Level::Info => "info",
        molt_wasm::Level::Warn => "warn",
        molt_wasm::Level::Error => "error",
    }
}

/// One line of human output for [`action_json`]'s value.
fn action_line(action: &serde_json::Value) -> String {
    let field = |name: &str| match &action[name] {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match field("kind").as_str() {
        "telemetry" => format!(
            "telemetry sensor {} at {} ms: {} = {}",
            field("sensor"),
            field("timestamp_ms"),
            field("metric"),
            field("value")
        ),
        "alert" => format!(
            "alert {} sensor {} at {} ms: {}",
            field("severity"),
            field("sensor"),
            field("timestamp_ms"),
            field("message")
        ),
        "command" => format!("command {} = {}", field("actuator"), field("value")),
        _ => format!("log {}: {}", field("level"), field("message")),
    }
}
