//! `molt demo`: one local device living through real updates, proving
//! molt's three promises in under a minute.
//!
//! Everything is real except the sensors and the agent image: a TUF
//! repository signed with fresh keys, a device state directory on disk with
//! pinned root metadata and A/B agent slots, WebAssembly policies swapped
//! live, and molt-core's power-cut simulator run on a copy of the device's
//! slot files. Every figure printed is measured in this run.

mod audit;
mod power_cut;
mod sensors;
mod steps;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use molt_agent::{Device, DeviceConfig, InstallReport, Processed};
use molt_release::download::{NoProgress, Source};
use molt_release::keys::{KeyDir, KeyPlan};
use molt_release::repo::{AgentInput, Expiry, PolicyInput, ReleaseInput, Repo};
use molt_wasm::{Reading, SwapConfig};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::demo::audit::{AUDIT_POLICY, Entry, Ledger, VersionSource};
use crate::demo::sensors::{SensorConfig, Sensors};
use crate::demo::steps::{Step, Steps};
use crate::output::{Output, Report, UsageError};

/// The hardware class of the demo device.
const HARDWARE_CLASS: &str = "molt-demo";
/// The policy that is updated, broken and reverted.
const THRESHOLD: &str = "threshold";
/// The downsampling policy, unchanged throughout.
const DOWNSAMPLE: &str = "downsample";

/// Run one local device through four signed releases, a live policy swap, a
/// policy that traps, a power cut mid-install and an attack, and prove that
/// nothing was lost, duplicated, bricked or accepted that should not be.
#[derive(Debug, clap::Args)]
#[command(long_about = LONG_ABOUT, after_help = "\
Examples:
  molt demo                      # under 10 seconds, spinners on a terminal
  molt demo --keep               # keep the repository, device state and logs
  molt demo --dir ./demo         # work in ./demo (kept)
  molt demo --ci                 # plain output; exit status 1 if any promise failed
  molt demo --sensors 100 --rate-hz 200

Then look inside the kept directory:
  repo/public/          the signed TUF repository a device would fetch from
  device/installed.json what the device installed, recorded durably
  device/slots/         the agent's A/B slots and boot record
  device/log/actions.jsonl  every alert, telemetry value, swap and revert")]
pub(crate) struct Args {
    /// Work in this directory, created if missing (it must be empty), and
    /// keep it.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Keep the temporary directory and print where it is.
    #[arg(long)]
    keep: bool,

    /// Plain, non-interactive output; the last line is the one-line result,
    /// and the exit status is 1 if any promise failed.
    #[arg(long)]
    ci: bool,

    /// Simulated sensors (half temperature, half humidity).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=1000))]
    sensors: u32,

    /// Readings per second from each sensor.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rate_hz: u32,

    /// How often the device takes what the sensors produced as one batch.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(5..=1000))]
    batch_ms: u64,

    /// How long the device runs between steps.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    phase_ms: u64,

    /// Size of the synthetic agent images.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    image_mib: u32,

    /// How many times power is cut while release 4 installs; each cut
    /// lands at a random storage operation of the install that is left.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    power_cuts: u32,

    /// Seed for choosing where power is cut (printed, so a run can be
    /// repeated); random by default.
    #[arg(long)]
    seed: Option<u64>,
}

const LONG_ABOUT: &str = "\
Run one local device through four signed releases, a live policy swap, a policy that traps, \
a power cut mid-install and an attack, and prove that nothing was lost, duplicated, bricked or \
accepted that should not be.

The demo works in a temporary directory (or --dir), in seven steps:
 1. Creates signing keys and a TUF repository and publishes release set 1: a synthetic agent \
image (deterministic bytes standing in for a binary), the threshold policy v1, a moving-average \
policy that downsamples, and an audit policy that echoes every reading's sequence number.
 2. Provisions a device (pinned root metadata, A/B agent slots on disk) and installs release 1. \
Simulated temperature and humidity sensors stream through its policies in real time; actions go \
to device/log/actions.jsonl.
 3. Publishes release set 2, threshold v2 with a new threshold: the device verifies it, swaps \
live with the state carried over, and commits after the trial window.
 4. Publishes release set 3, whose threshold traps under load: the device reverts to v2 by \
itself and prints the trap's guest backtrace.
 5. Publishes release set 4 with a new agent image and cuts power in the middle of installing \
it: the device recovers, boots a verified image and completes the update.
 6. Tries two attacks, a replayed old repository and a tampered module: both are refused and \
the device's trusted state is byte-identical.
 7. Replays every batch through the same policy versions in a fresh runtime and prints the \
summary: readings, lost and duplicated (0), swaps, reverts, swap latency, state CIDs before and \
after replay, and the verified versions.";

/// How long a step waits for something the device does on its own (a
/// commit, a revert) before it counts as a broken promise.
const WAIT_MAX: Duration = Duration::from_secs(20);

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    if args.sensors.saturating_mul(args.rate_hz) > 1_000_000 {
        return Err(UsageError(format!(
            "--sensors {} × --rate-hz {} is over 1,000,000 readings per second; lower one of them",
            args.sensors, args.rate_hz
        ))
        .into());
    }
    let started = Instant::now();
    let (work, temp) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
            let mut entries = std::fs::read_dir(dir).with_context(|| format!("could not read {}", dir.display()))?;
            if entries.next().is_some() {
                return Err(UsageError(format!(
                    "{} is not empty; give --dir an empty or new directory",
                    dir.display()
                ))
                .into());
            }
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("molt-demo-")
                .tempdir()
                .context("could not create a temporary directory")?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let plain = args.ci || !std::io::stderr().is_terminal();
    let mut steps = Steps::new(plain, 7);
    let result = run_steps(&args, &work, &mut steps).await;
    let kept = match temp {
        Some(temp) if args.keep => Some(temp.keep()),
        Some(_) => None,
        None => Some(work.clone()),
    };
    let mut summary = result?;
    summary.wall_time_s = started.elapsed().as_secs_f64();
    summary.kept = kept.map(|dir| dir.display().to_string());
    output.report(&summary)?;
    if !summary.broken_promises.is_empty() {
        bail!(
            "{} promise(s) failed: {}",
            summary.broken_promises.len(),
            summary.broken_promises.join("; ")
        );
    }
    Ok(())
}

/// A policy version as the demo publishes it.
struct PolicySpec {
    name: &'static str,
    version: &'static str,
    wasm: &'static [u8],
    config: Vec<(&'static str, String)>,
}

impl PolicySpec {
    fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// The repository side of the demo.
struct Publisher {
    keys: KeyDir,
    repo: Repo,
    inputs: PathBuf,
    /// Every policy version published, for the replay.
    versions: BTreeMap<String, VersionSource>,
}

impl Publisher {
    async fn publish(
        &mut self,
        version: u64,
        security_counter: u64,
        agent: Option<&(String, PathBuf)>,
        policies: &[PolicySpec],
    ) -> anyhow::Result<()> {
        let mut policy_inputs = Vec::with_capacity(policies.len());
        for policy in policies {
            let path = self.inputs.join(format!("{}-{}.wasm", policy.name, policy.version));
            std::fs::write(&path, policy.wasm).with_context(|| format!("could not write {}", path.display()))?;
            let config: BTreeMap<String, String> = policy
                .config
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect();
            self.versions.insert(
                policy.id(),
                VersionSource {
                    wasm: Arc::new(policy.wasm.to_vec()),
                    config: config.iter().map(|(key, value)| (key.clone(), value.clone())).collect(),
                },
            );
            policy_inputs.push(PolicyInput {
                name: policy.name.to_owned(),
                version: policy.version.to_owned(),
                path,
                config,
            });
        }
        let input = ReleaseInput {
            version,
            security_counter,
            min_agent_version: "1.0.0".to_owned(),
            agents: agent
                .map(|(agent_version, path)| AgentInput {
                    hardware_class: HARDWARE_CLASS.to_owned(),
                    version: agent_version.clone(),
                    path: path.clone(),
                })
                .into_iter()
                .collect(),
            policies: policy_inputs,
        };
        self.repo
            .create_release(&input)
            .await
            .with_context(|| format!("creating release set {version}"))?;
        self.repo
            .sign_release(version, &self.keys)
            .await
            .with_context(|| format!("signing release set {version}"))?;
        self.repo
            .publish(version, &self.keys, &Expiry::default())
            .await
            .with_context(|| format!("publishing release set {version}"))?;
        Ok(())
    }

    fn source(&self) -> Source {
        Source::Dir(self.repo.public_dir())
    }
}

/// The device side: sensors in, batches through the device, every proof
/// recorded on the way.
struct Pump {
    sensors: Sensors,
    pending: Vec<Reading>,
    batch_readings_max: usize,
    batch_interval: Duration,
    ledger: Ledger,
    log: Vec<Entry>,
}

impl Pump {
    /// Runs the device for `duration`.
    fn run_for(&mut self, device: &mut Device, duration: Duration, step: &Step) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        self.run_until(device, until, step, |_, _| false).map(|_| ())
    }

    /// Runs the device until `done` says so or `until` passes; true if
    /// `done` said so.
    fn run_until(
        &mut self,
        device: &mut Device,
        until: Instant,
        step: &Step,
        mut done: impl FnMut(&Device, &Ledger) -> bool,
    ) -> anyhow::Result<bool> {
        loop {
            self.batch(device)?;
            step.status(&format!(
                "{} readings processed, serving {}",
                self.ledger.readings,
                device
                    .policy_names()
                    .iter()
                    .filter_map(|name| device.serving(name).ok().map(|(id, trial)| if trial {
                        format!("{id} (trial)")
                    } else {
                        id
                    }))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            if done(device, &self.ledger) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(false);
            }
            std::thread::sleep(self.batch_interval.min(until - now));
        }
    }

    /// Processes everything the sensors produced since the last call, in
    /// batches of at most `batch_readings_max`.
    fn batch(&mut self, device: &mut Device) -> anyhow::Result<()> {
        self.sensors.drain(&mut self.pending);
        let pending = std::mem::take(&mut self.pending);
        for chunk in pending.chunks(self.batch_readings_max) {
            let processed = device.process(chunk).context("the device refused a batch")?;
            self.record(chunk.to_vec(), &processed);
        }
        Ok(())
    }

    fn record(&mut self, batch: Vec<Reading>, processed: &Processed) {
        self.ledger.observe(&batch, processed);
        let served_by = processed
            .outcomes
            .iter()
            .map(|(policy, outcome)| (policy.clone(), outcome.served_by.clone()))
            .collect();
        self.log.push(Entry::Batch {
            readings: Arc::new(batch),
            served_by,
        });
    }

    /// Notes an install in the replay log: new policies start, changed
    /// ones are staged.
    fn installed(&mut self, before: &[String], report: &InstallReport) {
        for id in &report.staged {
            let policy = id.split_once('@').map_or(id.as_str(), |(name, _)| name).to_owned();
            let entry = if before.contains(&policy) {
                Entry::Stage {
                    policy,
                    version: id.clone(),
                }
            } else {
                Entry::Start {
                    policy,
                    version: id.clone(),
                }
            };
            self.log.push(entry);
        }
    }
}

/// Everything the demo measured.
#[derive(Debug, Serialize)]
struct Summary {
    readings: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    swaps: u64,
    commits: u64,
    reverts: u64,
    swap_latency_p50_us: Option<u128>,
    swap_latency_p99_us: Option<u128>,
    swap_latency_samples: usize,
    power_cuts: u64,
    recovered: u64,
    attacks: u64,
    attacks_rejected: u64,
    policies: Vec<PolicySummary>,
    release_version: u64,
    security_counter: u64,
    agent_version: String,
    agent_slot: String,
    agent_image_sha256: String,
    seed: u64,
    wall_time_s: f64,
    kept: Option<String>,
    broken_promises: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PolicySummary {
    name: String,
    serving: String,
    readings_served_by: BTreeMap<String, u64>,
    live_cid: String,
    replay_cid: String,
    replay_batches: u64,
    replay_served_differently: u64,
}

impl Report for Summary {
    fn human(&self) -> String {
        let mut text = String::from("\nmolt demo: summary\n");
        let mut row = |label: &str, value: String| text.push_str(&format!("  {label:<26} {value}\n"));
        let micros = |us: Option<u128>| us.map_or("-".to_owned(), |us| format!("{:.2} ms", us as f64 / 1000.0));
        row(
            "readings processed",
            format!("{} (each by every policy)", self.readings),
        );
        row(
            "lost / duplicated",
            format!(
                "{} / {}  (out of order: {})",
                self.lost, self.duplicated, self.out_of_order
            ),
        );
        row(
            "swaps / commits / reverts",
            format!("{} / {} / {}", self.swaps, self.commits, self.reverts),
        );
        row(
            "swap latency",
            format!(
                "p50 {}  p99 {}  (n={}, snapshot + restore)",
                micros(self.swap_latency_p50_us),
                micros(self.swap_latency_p99_us),
                self.swap_latency_samples
            ),
        );
        row(
            "power cuts / recovered",
            format!("{} / {}  (seed {:#x})", self.power_cuts, self.recovered, self.seed),
        );
        row(
            "attacks rejected",
            format!(
                "{} / {}  (trusted metadata and slots byte-identical)",
                self.attacks_rejected, self.attacks
            ),
        );
        for policy in &self.policies {
            let same = if policy.live_cid == policy.replay_cid {
                "identical"
            } else {
                "DIFFERENT"
            };
            row(
                &format!("state CID {}", policy.name),
                format!("live   {}", policy.live_cid),
            );
            row("", format!("replay {}  {same}", policy.replay_cid));
        }
        row(
            "verified versions",
            format!(
                "release set {} (security counter {})",
                self.release_version, self.security_counter
            ),
        );
        row(
            "",
            format!(
                "agent {} committed in slot {} (sha256 {}…)",
                self.agent_version,
                self.agent_slot,
                self.agent_image_sha256.get(..16).unwrap_or("")
            ),
        );
        for policy in &self.policies {
            row("", format!("{} serving {}", policy.name, policy.serving));
        }
        row("wall time", format!("{:.1} s", self.wall_time_s));
        if let Some(dir) = &self.kept {
            row("kept", dir.clone());
        }
        for broken in &self.broken_promises {
            text.push_str(&format!("  BROKEN: {broken}\n"));
        }
        text.push_str(&format!(
            "demo: readings={} lost={} duplicated={} swaps={} reverts={} power-cuts={} recovered={} attacks-rejected={}\n",
            self.readings, self.lost, self.duplicated, self.swaps, self.reverts, self.power_cuts, self.recovered, self.attacks_rejected
        ));
        text
    }
}

/// A deterministic synthetic agent image: a text header saying what it is,
/// then pseudo-random bytes from the version.
fn synthetic_image(version: &str, size_bytes: usize) -> Vec<u8> {
    let mut image = format!(
        "molt demo synthetic agent image {version}: deterministic filler bytes standing in for an agent binary, not a program\n"
    )
    .into_bytes();
    let mut state = u64::from_le_bytes(Sha256::digest(version.as_bytes())[..8].try_into().unwrap_or([7; 8]));
    while image.len() < size_bytes {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = state;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        image.extend_from_slice(&(x ^ (x >> 31)).to_le_bytes());
    }
    image.truncate(size_bytes);
    image
}

/// splitmix64: where power is cut, reproducible from `--seed`.
struct CutPoints(u64);

impl CutPoints {
    /// A number from 1 to `n`.
    fn pick(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        1 + (x ^ (x >> 31)) % n.max(1)
    }
}

/// sha256 over every file (path and bytes) under the device's trusted
/// state: TUF metadata (not the scratch copy an update works in), agent
/// slots, policy modules and the installed record.
fn fingerprint(device: &Device) -> anyhow::Result<String> {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let path = entry.path();
            if path.is_dir() {
                if entry.file_name() != "scratch" {
                    walk(root, &path, files)?;
                }
            } else {
                let relative = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                files.push((relative, path));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for dir in [device.trusted_dir(), device.slots_dir(), device.dir().join("policies")] {
        walk(device.dir(), &dir, &mut files)?;
    }
    files.push(("installed.json".to_owned(), device.dir().join("installed.json")));
    files.sort();
    let mut hasher = Sha256::new();
    for (name, path) in files {
        hasher.update(name.as_bytes());
        hasher.update(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
    }
    Ok(format!("{:x}", Sha256Hex(hasher.finalize().into())))
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let target = to.join(entry.file_name());
        if entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).with_context(|| format!("copying to {}", target.display()))?;
        }
    }
    Ok(())
}

fn short(cid: &str) -> String {
    match cid.len() {
        0..=20 => cid.to_owned(),
        len => format!("{}…{}", &cid[..12], &cid[len - 6..]),
    }
}

async fn run_steps(args: &Args, work: &Path, steps: &mut Steps) -> anyhow::Result<Summary> {
    let cancel = CancellationToken::new();
    let mut broken: Vec<String> = Vec::new();
    let phase = Duration::from_millis(args.phase_ms);
    let nominal_batch = (u64::from(args.sensors) * u64::from(args.rate_hz) * args.batch_ms / 1000).max(1);
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x6d6f6c74, |elapsed| elapsed.as_nanos() as u64)
    });
    let image_bytes = args.image_mib as usize * 1024 * 1024;

    // 1. Keys, repository, release set 1.
    let step = steps.begin("signed repository, release set 1");
    let inputs = work.join("inputs");
    std::fs::create_dir_all(&inputs).with_context(|| format!("creating {}", inputs.display()))?;
    let keys = KeyDir::init(&work.join("keys"), &KeyPlan::default())
        .await
        .context("creating the signing keys")?;
    let repo = Repo::open_or_create(&work.join("repo"), &keys)
        .await
        .context("creating the repository")?;
    let mut publisher = Publisher {
        keys,
        repo,
        inputs,
        versions: BTreeMap::new(),
    };
    let agent_v1 = ("1.0.0".to_owned(), publisher.inputs.join("agent-1.0.0.img"));
    std::fs::write(&agent_v1.1, synthetic_image("1.0.0", image_bytes)).context("writing the agent image")?;
    let threshold = |version: &'static str, threshold: &str| PolicySpec {
        name: THRESHOLD,
        version,
        wasm: molt_guests::THRESHOLD,
        config: vec![("threshold", threshold.to_owned()), ("hysteresis", "1".to_owned())],
    };
    let downsample = || PolicySpec {
        name: DOWNSAMPLE,
        version: "1.0.0",
        wasm: molt_guests::MOVING_AVERAGE,
        config: vec![
            ("window", "10".to_owned()),
            ("every", "10".to_owned()),
            ("metric", "value".to_owned()),
        ],
    };
    let audit = |version: &'static str, trap_every: Option<u64>| {
        let mut config = vec![("tag", format!("{AUDIT_POLICY}@{version}"))];
        if let Some(every) = trap_every {
            config.push(("trap_when_sequence_mod", every.to_string()));
            config.push(("trap_when_sequence_rem", (every - 1).to_string()));
        }
        PolicySpec {
            name: AUDIT_POLICY,
            version,
            wasm: molt_guests::SEQUENCE_ECHO,
            config,
        }
    };
    let release_2_policies = || vec![threshold("2.0.0", "28"), downsample(), audit("2.0.0", None)];
    publisher
        .publish(
            1,
            1,
            Some(&agent_v1),
            &[threshold("1.0.0", "30"), downsample(), audit("1.0.0", None)],
        )
        .await?;
    // An attacker's copy of the repository as it is now, replayed in step 6.
    let replayed_public = work.join("attacker").join("replayed-release-1");
    copy_dir(&publisher.repo.public_dir(), &replayed_public)?;
    step.note("keys: root 2 of 3, targets, snapshot, timestamp, image (ed25519)");
    step.note(&format!(
        "release set 1: agent 1.0.0 ({} MiB synthetic image), threshold@1.0.0 (threshold 30), downsample@1.0.0 (moving average, 1 in 10), audit@1.0.0 (sequence echo)",
        args.image_mib
    ));
    step.finish(
        true,
        &format!("repository at {}", publisher.repo.public_dir().display()),
    );

    // 2. Provision the device, install release 1, start the sensors.
    let step = steps.begin("device boots release set 1, sensors streaming");
    let trial_batches = u32::try_from((1000 / args.batch_ms).max(10)).unwrap_or(10);
    let mut config = DeviceConfig::new(HARDWARE_CLASS, "1.0.0");
    // The trial is counted in batches only, never in wall-clock time, so the
    // replay in step 7 commits at the same batches as the live device.
    config.swap = SwapConfig {
        trial_batches,
        trial_duration_min: Duration::ZERO,
        ..SwapConfig::default()
    };
    let runtime_config = config.runtime.clone();
    let swap_config = config.swap.clone();
    let root_json = publisher.keys.root_json().context("reading the root metadata")?;
    let image_trust = publisher.keys.image_trust_root().context("reading the image keys")?;
    let mut device = Device::provision(&work.join("device"), &root_json, &image_trust, config)?;
    let source = publisher.source();
    let start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let before = device.policy_names();
    let report = device
        .update(&source, &NoProgress, &cancel)
        .await
        .context("installing release set 1")?
        .context("the device found no release set to install")?;
    let sensors = Sensors::start(SensorConfig {
        sensors: args.sensors,
        rate_hz: args.rate_hz,
        start_unix_ms,
    })?;
    let batch_readings_max = device.runtime().limits().batch_readings_max;
    let mut pump = Pump {
        sensors,
        pending: Vec::new(),
        batch_readings_max,
        batch_interval: Duration::from_millis(args.batch_ms),
        ledger: Ledger::default(),
        log: Vec::new(),
    };
    pump.installed(&before, &report);
    if let Some(agent) = &report.agent {
        step.note(&format!(
            "agent {} staged, booted on trial from slot {}, health-checked and committed",
            agent.committed.version,
            agent.slot.label()
        ));
    }
    step.note(&format!("policies started: {}", report.staged.join(", ")));
    step.note(&format!(
        "{} sensors × {} Hz = {} readings/s, a batch every {} ms; actions → {}",
        args.sensors,
        args.rate_hz,
        args.sensors * args.rate_hz,
        args.batch_ms,
        device.log_path().display()
    ));
    pump.run_for(&mut device, phase, &step)?;
    step.finish(true, &format!("{} readings processed", pump.ledger.readings));

    // 3. Release 2: threshold v2 swaps live and commits.
    let step = steps.begin("release set 2: live swap to threshold v2");
    publisher.publish(2, 1, Some(&agent_v1), &release_2_policies()).await?;
    let before = device.policy_names();
    let swaps_before = pump.ledger.swap_latencies.len();
    match device
        .update(&source, &NoProgress, &cancel)
        .await
        .context("installing release set 2")?
    {
        Some(report) => {
            step.note(&format!(
                "verified through TUF and staged in {:.0} ms: {}",
                (report.prepare_time + report.install_time).as_secs_f64() * 1000.0,
                report.staged.join(", ")
            ));
            pump.installed(&before, &report);
        }
        None => broken.push("release set 2 was not offered to the device".to_owned()),
    }
    let committed = pump.run_until(&mut device, Instant::now() + WAIT_MAX, &step, |device, _| {
        device
            .serving(THRESHOLD)
            .is_ok_and(|(id, trial)| id == "threshold@2.0.0" && !trial)
    })?;
    pump.run_for(&mut device, phase / 2, &step)?;
    let verdict = pump.ledger.verdict(pump.ledger.readings);
    let latencies: Vec<String> = pump.ledger.swap_latencies[swaps_before..]
        .iter()
        .map(|latency| format!("{:.2} ms", latency.as_secs_f64() * 1000.0))
        .collect();
    step.note(&format!("swap latency (snapshot + restore): {}", latencies.join(", ")));
    step.note(&format!(
        "so far: {} readings, {} lost, {} duplicated",
        pump.ledger.readings, verdict.lost, verdict.duplicated
    ));
    if !committed {
        broken.push("threshold v2 was not committed after its trial".to_owned());
    }
    step.finish(
        committed,
        &format!("threshold@2.0.0 committed after a {trial_batches}-batch trial"),
    );

    // 4. Release 3: a threshold version that traps under load.
    let step = steps.begin("release set 3: a policy that traps under load");
    // Normal batches stay under it; the spike below (and any batch the
    // device splits at its batch_readings_max) goes over.
    let batch_over = (4 * nominal_batch).min(batch_readings_max as u64 / 2);
    let audit_trap_every = 2 * nominal_batch.max(10);
    let release_3 = vec![
        PolicySpec {
            name: THRESHOLD,
            version: "3.0.0",
            wasm: molt_guests::CHAOS,
            config: vec![("mode", "trap".to_owned()), ("batch_over", batch_over.to_string())],
        },
        downsample(),
        audit("3.0.0", Some(audit_trap_every)),
    ];
    publisher.publish(3, 1, Some(&agent_v1), &release_3).await?;
    let before = device.policy_names();
    match device
        .update(&source, &NoProgress, &cancel)
        .await
        .context("installing release set 3")?
    {
        Some(report) => {
            step.note(&format!("staged {}", report.staged.join(", ")));
            pump.installed(&before, &report);
        }
        None => broken.push("release set 3 was not offered to the device".to_owned()),
    }
    step.note(&format!(
        "threshold@3.0.0 traps on any batch over {batch_over} readings; audit@3.0.0 traps on every {audit_trap_every}th reading"
    ));
    // A load spike: every sensor reports a burst at once.
    let burst_per_sensor = u32::try_from(8 * nominal_batch / u64::from(args.sensors) + 1).unwrap_or(u32::MAX);
    pump.sensors.burst(burst_per_sensor);
    let reverted = pump.run_until(&mut device, Instant::now() + WAIT_MAX, &step, |device, ledger| {
        ledger.revert_reasons.contains_key(THRESHOLD)
            && ledger.revert_reasons.contains_key(AUDIT_POLICY)
            && device.serving(THRESHOLD).is_ok_and(|(_, trial)| !trial)
    })?;
    pump.run_for(&mut device, phase / 2, &step)?;
    let serving = device.serving(THRESHOLD).map(|(id, _)| id).unwrap_or_default();
    for policy in [THRESHOLD, AUDIT_POLICY] {
        if let Some(reason) = pump.ledger.revert_reasons.get(policy) {
            let readings = pump.ledger.revert_batch_readings.get(policy).copied().unwrap_or(0);
            let on_trial = pump
                .ledger
                .served_by
                .get(&format!("{policy}@3.0.0"))
                .copied()
                .unwrap_or(0);
            step.note(&format!(
                "{policy}@3.0.0 served {on_trial} readings on trial, then failed on a batch of {readings}; \
                 {policy}@2.0.0, still warm, replayed the trial's batches silently and served the failed one"
            ));
            for line in condense_backtrace(reason) {
                step.note(&format!("  {line}"));
            }
        }
    }
    let ok = reverted && serving == "threshold@2.0.0";
    if !ok {
        broken.push(format!(
            "threshold@3.0.0 did not revert to threshold@2.0.0 (serving {serving})"
        ));
    }
    step.finish(ok, &format!("reverted by itself; serving {serving}"));

    // 5. Release 4: new agent, power cut mid-install.
    let step = steps.begin("release set 4: new agent, power cut mid-install");
    let agent_v2 = ("2.0.0".to_owned(), publisher.inputs.join("agent-2.0.0.img"));
    std::fs::write(&agent_v2.1, synthetic_image("2.0.0", image_bytes)).context("writing the agent image")?;
    publisher.publish(4, 2, Some(&agent_v2), &release_2_policies()).await?;
    pump.run_for(&mut device, Duration::from_millis(args.batch_ms), &step)?;
    let prepared = device
        .prepare(&source, &NoProgress, &cancel)
        .await
        .context("verifying release set 4")?
        .context("release set 4 was not offered to the device")?;
    let agent = prepared
        .agent()
        .context("release set 4 has no agent image for this device")?
        .clone();
    let manifest = molt_agent::agent_slots::verify_agent_manifest(&image_trust, HARDWARE_CLASS, &agent)?;
    let engine_config = device.slot_engine_config();
    let layout = device.config().slot_layout;
    let mut store = power_cut::load(&device.slots_dir())?;
    // The running device's own health probe decides each simulated commit,
    // as it decides the real one.
    let health = device.health();
    let install = power_cut::Install {
        config: &engine_config,
        layout,
        agent: &agent,
        manifest: &manifest,
        health: &health,
    };
    let mut cut_points = CutPoints(seed);
    let mut cuts = Vec::new();
    for _ in 0..args.power_cuts {
        let ops = power_cut::count_ops(&store, &install)?;
        if ops == 0 {
            break;
        }
        let at = cut_points.pick(ops);
        let (survived, cut) = power_cut::cut(&store, &install, at, ops)?;
        step.note(&format!(
            "power cut at storage operation {} of {} ({}), unsynced writes lost",
            cut.at, cut.ops, cut.error
        ));
        step.note(&format!(
            "reboot: boot record copies {:?}; booted slot {} ({}, {:?}), its image verified against its signed manifest",
            cut.recovery.copies,
            cut.boot.slot.label(),
            cut.boot.image.version,
            cut.boot.reason
        ));
        store = survived;
        cuts.push(cut);
    }
    power_cut::write_back(&mut store, &device.slots_dir())?;
    let reopened = device
        .reopen_slots()
        .context("reopening the slots the power cut left")?;
    let report = device
        .install(prepared)
        .context("completing release set 4 after the power cut")?;
    let committed = device.agent_engine().record().committed_version.to_string();
    let recovered = if reopened.boot.is_some() && committed == "2.0.0" {
        cuts.len() as u64
    } else {
        0
    };
    step.note(&format!(
        "device state written back from the surviving store; reboot on disk booted slot {}; update completed: agent {committed} committed",
        reopened.boot.map_or("-", |boot| boot.slot.label())
    ));
    match (
        report.agent.map(|agent| agent.trial_boot),
        cuts.last().map(|cut| cut.boot),
    ) {
        (Some(Some(trial)), _) => step.note(&format!(
            "install completed for real: slot {} booted on trial, health-checked, committed",
            trial.slot.label()
        )),
        (Some(None), Some(boot)) if boot.reason == molt_core::BootReason::Trial => step
            .note("the reboot after the cut found 2.0.0 on trial, booted it and committed it after its health check"),
        (Some(None), _) => step.note("the commit was durable before the cut: nothing was left to install"),
        (None, _) => broken.push("release set 4 installed no agent".to_owned()),
    }
    if recovered != cuts.len() as u64 || cuts.is_empty() {
        broken.push(format!(
            "power cut: {} cuts, {recovered} recovered, agent {committed} committed",
            cuts.len()
        ));
    }
    pump.run_for(&mut device, phase / 2, &step)?;
    step.finish(
        recovered == cuts.len() as u64 && !cuts.is_empty(),
        &format!("{} power cut(s), agent 2.0.0 running", cuts.len()),
    );

    // 6. Attacks.
    let step = steps.begin("attacks: replayed repository, tampered module");
    let mut attacks = 0;
    let mut rejected = 0;
    // Replay: the repository as it was at release set 1.
    {
        attacks += 1;
        let fingerprint_before = fingerprint(&device)?;
        let result = device
            .update(&Source::Dir(replayed_public.clone()), &NoProgress, &cancel)
            .await;
        let unchanged = fingerprint(&device)? == fingerprint_before;
        match result {
            Err(error) if unchanged => {
                rejected += 1;
                step.note(&format!("replayed release set 1: rejected: {error}"));
            }
            Err(error) => broken.push(format!("replay attack rejected ({error}) but the device state changed")),
            Ok(_) => broken.push("a replayed old repository was accepted".to_owned()),
        }
    }
    // Tampering: release set 5 adds a module whose served bytes are then
    // changed on the server.
    {
        attacks += 1;
        let mut release_5 = release_2_policies();
        release_5.push(PolicySpec {
            name: "deadband",
            version: "1.0.0",
            wasm: molt_guests::DEADBAND,
            config: vec![("deadband", "0.5".to_owned())],
        });
        publisher.publish(5, 2, Some(&agent_v2), &release_5).await?;
        let tampered = tamper(&publisher.repo.public_dir(), molt_guests::DEADBAND)?;
        let fingerprint_before = fingerprint(&device)?;
        let result = device.update(&source, &NoProgress, &cancel).await;
        let unchanged = fingerprint(&device)? == fingerprint_before;
        match result {
            _ if tampered == 0 => broken.push("could not find the module to tamper with in the repository".to_owned()),
            Err(error) if unchanged => {
                rejected += 1;
                step.note(&format!("tampered deadband module: rejected: {error}"));
            }
            Err(error) => broken.push(format!(
                "tampered module rejected ({error}) but the device state changed"
            )),
            Ok(_) => broken.push("a tampered module was accepted".to_owned()),
        }
    }
    step.note(
        "trusted TUF metadata, agent slots, policy modules and installed.json hashed before and after: identical",
    );
    pump.run_for(&mut device, phase / 2, &step)?;
    step.finish(
        rejected == attacks,
        &format!("{rejected} of {attacks} attacks rejected, nothing changed"),
    );

    // 7. Drain, replay, summarise.
    let step = steps.begin("replay and summary");
    let produced = pump.sensors.stop()?;
    pump.batch(&mut device)?;
    let verdict = pump.ledger.verdict(produced);
    if pump.ledger.readings != produced {
        broken.push(format!(
            "the sensors produced {produced} readings but the device was given {}",
            pump.ledger.readings
        ));
    }
    if verdict.lost != 0 || verdict.duplicated != 0 || verdict.out_of_order != 0 || verdict.wrong_version != 0 {
        broken.push(format!(
            "exactly-once: lost {} duplicated {} out of order {} from the wrong version {}",
            verdict.lost, verdict.duplicated, verdict.out_of_order, verdict.wrong_version
        ));
    }
    let (audit_state, _) = device.snapshot(AUDIT_POLICY)?;
    let audit_state = audit::decode_audit_state(&audit_state)?;
    if audit_state.n_readings != produced || audit_state.last_sequence != Some(produced) {
        broken.push(format!(
            "the audit policy's own state counts {} readings up to {:?}, the sensors produced {produced}",
            audit_state.n_readings, audit_state.last_sequence
        ));
    }
    step.note(&format!(
        "audit: every sequence number 1..={produced} delivered once, in order; its state counts {} readings, last {}",
        audit_state.n_readings,
        audit_state.last_sequence.unwrap_or(0)
    ));
    step.status("replaying every batch in a fresh runtime");
    let replayed = audit::replay(&pump.log, &publisher.versions, &runtime_config, &swap_config)?;
    let mut policies = Vec::new();
    for name in device.policy_names() {
        let (_, live) = device.snapshot(&name)?;
        let (serving, trial) = device.serving(&name)?;
        let replay = replayed.get(&name);
        let live_cid = live.to_string();
        let replay_cid = replay.map(|replay| replay.cid.to_string()).unwrap_or_default();
        if live_cid != replay_cid || replay.is_none_or(|replay| replay.served_differently != 0) {
            broken.push(format!("{name}: the replay does not reproduce the live state"));
        }
        step.note(&format!(
            "{name}: live {} = replay {}",
            short(&live_cid),
            short(&replay_cid)
        ));
        let readings_served_by = pump
            .ledger
            .served_by
            .iter()
            .filter(|(id, _)| id.split_once('@').is_some_and(|(policy, _)| policy == name))
            .map(|(id, readings)| (id.clone(), *readings))
            .collect();
        policies.push(PolicySummary {
            name: name.clone(),
            serving: if trial {
                format!("{serving} (on trial)")
            } else {
                serving
            },
            readings_served_by,
            live_cid,
            replay_cid,
            replay_batches: replay.map_or(0, |replay| replay.batches),
            replay_served_differently: replay.map_or(0, |replay| replay.served_differently),
        });
    }
    step.finish(
        broken.is_empty(),
        &format!(
            "{} batches replayed",
            pump.log
                .iter()
                .filter(|entry| matches!(entry, Entry::Batch { .. }))
                .count()
        ),
    );

    let record = *device.agent_engine().record();
    let installed = device.installed().clone();
    let (agent_slot, agent_sha) = match record.active {
        Some(slot) => (
            slot.label().to_owned(),
            record.slots[slot.index()]
                .ready()
                .map(|image| format!("{:x}", Sha256Hex(image.sha256)))
                .unwrap_or_default(),
        ),
        None => ("-".to_owned(), String::new()),
    };
    if installed.release_version != 4 || record.committed_version.to_string() != "2.0.0" {
        broken.push(format!(
            "the device ended on release set {} with agent {}, expected 4 and 2.0.0",
            installed.release_version, record.committed_version
        ));
    }
    if pump.ledger.swaps < 2 || pump.ledger.reverts < 1 {
        broken.push(format!(
            "{} swaps and {} reverts, expected at least 2 and 1",
            pump.ledger.swaps, pump.ledger.reverts
        ));
    }
    let micros = |p| audit::percentile(&pump.ledger.swap_latencies, p).map(|latency| latency.as_micros());
    Ok(Summary {
        readings: produced,
        lost: verdict.lost,
        duplicated: verdict.duplicated,
        out_of_order: verdict.out_of_order,
        swaps: pump.ledger.swaps,
        commits: pump.ledger.commits,
        reverts: pump.ledger.reverts,
        swap_latency_p50_us: micros(50),
        swap_latency_p99_us: micros(99),
        swap_latency_samples: pump.ledger.swap_latencies.len(),
        power_cuts: cuts.len() as u64,
        recovered,
        attacks,
        attacks_rejected: rejected,
        policies,
        release_version: installed.release_version,
        security_counter: installed.security_counter,
        agent_version: record.committed_version.to_string(),
        agent_slot,
        agent_image_sha256: agent_sha,
        seed,
        wall_time_s: 0.0,
        kept: None,
        broken_promises: broken,
    })
}

/// Lowercase hex of a digest.
struct Sha256Hex([u8; 32]);

impl std::fmt::LowerHex for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// Flips one byte in the middle of every file under `public/targets` that
/// holds exactly `module`, as an attacker with write access to the mirror
/// would; returns how many files it changed.
fn tamper(public: &Path, module: &[u8]) -> anyhow::Result<usize> {
    fn walk(dir: &Path, module: &[u8], tampered: &mut usize) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let path = entry.path();
            if entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
                walk(&path, module, tampered)?;
            } else if entry.metadata().map(|meta| meta.len()).ok() == Some(module.len() as u64) {
                let mut bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                if bytes == module {
                    let middle = bytes.len() / 2;
                    bytes[middle] ^= 0xff;
                    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                    *tampered += 1;
                }
            }
        }
        Ok(())
    }
    let mut tampered = 0;
    walk(&public.join("targets"), module, &mut tampered)?;
    Ok(tampered)
}

/// A trap's message with its guest backtrace, without the frames and
/// source lines of the Rust standard library's panic machinery.
fn condense_backtrace(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut std_frame = false;
    let mut located = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("at ") {
            if !std_frame && !located {
                lines.push(line.to_owned());
                located = true;
            }
            continue;
        }
        let is_frame = trimmed
            .split_once(':')
            .is_some_and(|(index, _)| index.parse::<u32>().is_ok());
        if is_frame {
            let function = trimmed.split_once('!').map_or("", |(_, function)| function);
            std_frame = ["std::", "core::", "alloc::", "__rustc::"]
                .iter()
                .any(|prefix| function.starts_with(prefix));
            located = false;
            if std_frame {
                continue;
            }
        }
        lines.push(line.to_owned());
    }
    lines
}
