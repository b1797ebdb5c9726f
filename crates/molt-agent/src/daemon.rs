//! `molt-agent run`: sensor sources in, the [`Pipeline`] in the middle,
//! actuator sinks out, configured by one TOML file with every limit named.
//!
//! Sources run on their own threads and hand readings to the main loop
//! through one bounded queue (`source_queue_max`): a source that floods
//! blocks on it, and nothing is read that cannot be queued. The main loop
//! cuts batches (`batch_readings_max`, `batch_wait_ms`), hands each to the
//! pipeline (journal, policies, outbox, checkpoints), and only then
//! acknowledges the sources: a JSON-lines file source's position is
//! journaled in the same record as its readings, so after a crash it
//! continues exactly after the last line that is durable.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use molt_wasm::{Action, Deployment, PolicyVersion, Reading, Runtime, RuntimeConfig, State, SwapConfig};
use serde::Deserialize;

use crate::link::{Link, LinkSummary, ServerConfig};
use crate::log::{LogLimits, SyncPolicy};
use crate::metrics::{MetricsConfig, MetricsServer, MetricsSource};
use crate::outbox::OverflowPolicy;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineError, Policies};
use crate::report::{Counters, HealthConfig, Observed, Reporter};

/// The agent's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the journal, outbox and checkpoints live.
    pub state_dir: PathBuf,
    /// Batching and queue bounds.
    #[serde(default)]
    pub limits: AgentLimits,
    /// The outbox.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// The input journal.
    #[serde(default)]
    pub journal: JournalConfig,
    /// Sensor sources.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Policies run from local files (development and tests; a fleet
    /// device gets its policies from TUF-verified release sets).
    #[serde(default, rename = "policy")]
    pub policies: Vec<LocalPolicyConfig>,
    /// Actuator sinks, by actuator name.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkConfig>,
    /// The link to the fleet server; without it the agent runs offline.
    #[serde(default)]
    pub server: Option<ServerConfig>,
    /// Health reports and events sent to the fleet server.
    #[serde(default)]
    pub health: HealthConfig,
    /// The local Prometheus endpoint; off unless `listen` is set.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// Batching and queue bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentLimits {
    /// Readings in one batch.
    pub batch_readings_max: usize,
    /// A batch is cut after this long even if not full.
    pub batch_wait_ms: u64,
    /// Readings queued between the sources and the main loop.
    pub source_queue_max: usize,
    /// A JSON line longer than this is refused.
    pub line_bytes_max: usize,
    /// Batches between policy checkpoints.
    pub checkpoint_interval_batches: u32,
    /// The largest checkpoint read back.
    pub checkpoint_bytes_max: u64,
}

impl Default for AgentLimits {
    fn default() -> AgentLimits {
        AgentLimits {
            batch_readings_max: 1024,
            batch_wait_ms: 50,
            source_queue_max: 65_536,
            line_bytes_max: 4096,
            checkpoint_interval_batches: 64,
            checkpoint_bytes_max: 64 << 20,
        }
    }
}

/// The outbox's bounds and policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Bytes on disk, at most.
    pub bytes_max: u64,
    /// Bytes per segment file.
    pub segment_bytes_max: u64,
    /// Bytes of one batch's messages.
    pub record_bytes_max: u32,
    /// `every-append`, `every-batch` or `{ interval-ms = N }`.
    pub sync: SyncPolicy,
    /// `refuse-readings` or `drop-new-messages`.
    pub overflow: OverflowPolicy,
}

impl Default for OutboxConfig {
    fn default() -> OutboxConfig {
        let defaults = PipelineConfig::default();
        OutboxConfig {
            bytes_max: defaults.outbox.bytes_max,
            segment_bytes_max: defaults.outbox.segment_bytes_max,
            record_bytes_max: defaults.outbox.record_bytes_max,
            sync: defaults.outbox_sync,
            overflow: defaults.overflow,
        }
    }
}

/// The journal's bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Bytes on disk, at most.
    pub bytes_max: u64,
    /// Bytes per segment file.
    pub segment_bytes_max: u64,
}

impl Default for JournalConfig {
    fn default() -> JournalConfig {
        let defaults = PipelineConfig::default();
        JournalConfig {
            bytes_max: defaults.journal.bytes_max,
            segment_bytes_max: defaults.journal.segment_bytes_max,
        }
    }
}

/// One sensor source.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// JSON lines `{"sensor": 3, "value": 21.5, "t": 1700000000000}` (`t`
    /// optional, milliseconds since the Unix epoch) from a file, a FIFO or
    /// `-` for stdin. A regular file resumes after a restart at the last
    /// line journaled.
    JsonLines {
        /// The file, FIFO, or `-`.
        path: String,
        /// Stop the agent at the end of the input (tests, one-shot imports).
        #[serde(default)]
        exit_at_eof: bool,
    },
    /// Linux system sensors from `/proc` and `/sys`.
    System {
        /// How often to sample.
        interval_ms: u64,
    },
    /// The demo's simulated sensors: a slow sine plus noise per sensor.
    Simulated {
        /// Sensors.
        sensors: u32,
        /// Readings per second, all sensors together.
        rate_per_second: u64,
    },
    /// A local MQTT broker's topics, acknowledged once journaled
    /// (`crate::mqtt_io`).
    Mqtt(crate::mqtt_io::MqttSourceConfig),
}

/// One policy from local files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPolicyConfig {
    /// The policy's name.
    pub name: String,
    /// Its version, for reports.
    #[serde(default = "default_version")]
    pub version: String,
    /// The component (`.wasm`).
    pub wasm: PathBuf,
    /// Its configuration.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_version() -> String {
    "local".into()
}

/// Where an actuator's commands go.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkConfig {
    /// Write each command to the log (stderr, for journald).
    Log {
        /// The actuator name commands carry.
        actuator: String,
        /// Commands per second, at most; more are dropped and counted.
        commands_per_second_max: u32,
    },
    /// Publish each command to a local MQTT topic (`crate::mqtt_io`).
    Mqtt(crate::mqtt_io::MqttSinkConfig),
    /// Drive a Linux GPIO line (`crate::gpio`).
    Gpio(crate::gpio::GpioSinkConfig),
}

impl AgentConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, String> {
        let bytes = std::fs::read(path).map_err(|error| format!("reading {}: {error}", path.display()))?;
        if bytes.len() > 1 << 20 {
            return Err(format!("{}: over 1 MiB (config_bytes_max)", path.display()));
        }
        let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
        let config: AgentConfig = toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        if let Some(server) = &config.server {
            server.check().map_err(|error| format!("{}: {error}", path.display()))?;
        }
        config
            .check_io()
            .map_err(|error| format!("{}: {error}", path.display()))?;
        config
            .health
            .check()
            .and_then(|()| config.metrics.check())
            .map_err(|error| format!("{}: {error}", path.display()))?;
        Ok(config)
    }

    /// Checks the MQTT sources and the MQTT and GPIO sinks, naming the key.
    pub fn check_io(&self) -> Result<(), String> {
        for source in &self.sources {
            if let SourceConfig::Mqtt(mqtt) = source {
                mqtt.check()?;
            }
        }
        for sink in &self.sinks {
            match sink {
                SinkConfig::Log { .. } => {}
                SinkConfig::Mqtt(mqtt) => mqtt.check()?,
                SinkConfig::Gpio(gpio) => gpio.check()?,
            }
        }
        Ok(())
    }

    /// The pipeline's configuration.
    pub fn pipeline(&self) -> PipelineConfig {
        let defaults = PipelineConfig::default();
        PipelineConfig {
            outbox: LogLimits {
                segment_bytes_max: self.outbox.segment_bytes_max,
                bytes_max: self.outbox.bytes_max,
                record_bytes_max: self.outbox.record_bytes_max,
            },
            outbox_sync: self.outbox.sync,
            overflow: self.outbox.overflow,
            journal: LogLimits {
                segment_bytes_max: self.journal.segment_bytes_max,
                bytes_max: self.journal.bytes_max,
                record_bytes_max: (self.limits.batch_readings_max * 20 + 8) as u32,
            },
            checkpoint_interval_batches: self.limits.checkpoint_interval_batches,
            checkpoint_bytes_max: self.limits.checkpoint_bytes_max,
            batch_readings_max: self.limits.batch_readings_max,
            ..defaults
        }
    }
}

/// Policies run from local `.wasm` files.
#[derive(Debug)]
pub struct LocalPolicies {
    policies: Vec<(String, PolicyVersion, Deployment)>,
    swap: SwapConfig,
    /// Traps, reverts, errors and swaps since the main loop last took them.
    observed: Observed,
}

impl LocalPolicies {
    /// Compiles and starts each policy.
    pub fn start(runtime: &Runtime, configs: &[LocalPolicyConfig]) -> Result<LocalPolicies, String> {
        let swap = SwapConfig::default();
        let mut policies = Vec::new();
        for config in configs {
            let wasm = std::fs::read(&config.wasm)
                .map_err(|error| format!("policy {}: reading {}: {error}", config.name, config.wasm.display()))?;
            let module = runtime
                .compile(&wasm)
                .map_err(|error| format!("policy {}: {error}", config.name))?;
            let version = PolicyVersion {
                id: format!("{}@{}", config.name, config.version),
                module,
                config: config.config.clone().into_iter().collect(),
            };
            let deployment = Deployment::start(version.clone(), swap.clone())
                .map_err(|error| format!("policy {}: {error}", config.name))?;
            policies.push((config.name.clone(), version, deployment));
        }
        Ok(LocalPolicies {
            policies,
            swap,
            observed: Observed::default(),
        })
    }

    /// What the policies did since the last call, for health and events.
    pub fn take_observed(&mut self) -> Observed {
        std::mem::take(&mut self.observed)
    }

    /// Each policy's name and versions, for the reported state.
    pub fn policy_states(&self) -> Vec<molt_protocol::PolicyState> {
        self.policies
            .iter()
            .map(|(name, _, deployment)| molt_protocol::PolicyState {
                name: name.clone(),
                serving: deployment.active_version().to_owned(),
                trial: deployment.on_trial().then(|| deployment.active_version().to_owned()),
            })
            .collect()
    }
}

impl Policies for LocalPolicies {
    fn process(&mut self, batch: &[Reading]) -> Result<Vec<(String, Vec<Action>)>, String> {
        let mut out = Vec::with_capacity(self.policies.len());
        for (_, _, deployment) in &mut self.policies {
            let outcome = deployment.process(batch.to_vec());
            self.observed.record(&outcome);
            if let Some((_, error)) = outcome.unprocessed {
                // Handed back by every version: counted, not retried forever.
                eprintln!(
                    "molt-agent: policy {} could not process a batch: {error}",
                    outcome.served_by
                );
            }
            out.push((outcome.served_by, outcome.actions));
        }
        Ok(out)
    }

    fn snapshots(&mut self) -> Result<Vec<(String, State)>, String> {
        self.policies
            .iter_mut()
            .map(|(name, _, deployment)| {
                deployment
                    .snapshot()
                    .map(|state| (name.clone(), state))
                    .map_err(|error| format!("policy {name}: snapshot: {error}"))
            })
            .collect()
    }

    fn resume(&mut self, name: &str, state: &State) -> Result<(), String> {
        let Some((_, version, deployment)) = self.policies.iter_mut().find(|(n, _, _)| n == name) else {
            // A checkpoint of a policy no longer configured is ignored.
            return Ok(());
        };
        *deployment = Deployment::resume(version.clone(), state, self.swap.clone())
            .map_err(|error| format!("policy {name}: resume: {error}"))?;
        Ok(())
    }
}

/// What sources send the main loop.
#[derive(Debug)]
pub(crate) enum Input {
    Reading {
        sensor: u32,
        timestamp_ms: u64,
        value: f64,
        /// A resumable source's position after this reading.
        cursor: Option<u64>,
    },
    /// A reading to acknowledge to its source once it is journaled (MQTT).
    Acked {
        sensor: u32,
        timestamp_ms: u64,
        value: f64,
        ack: crate::mqtt_io::Ack,
    },
    /// A line or sample that could not be used, and why.
    Refused(String),
    /// The source ended and asked the agent to stop.
    Eof,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[derive(Deserialize)]
struct JsonReading {
    sensor: u32,
    value: f64,
    #[serde(default)]
    t: Option<u64>,
}

fn spawn_json_lines(path: String, exit_at_eof: bool, resume_at: Option<u64>, line_max: usize, tx: SyncSender<Input>) {
    std::thread::spawn(move || {
        let (mut reader, mut offset, resumable): (Box<dyn BufRead + Send>, u64, bool) = if path == "-" {
            (Box::new(BufReader::new(std::io::stdin())), 0, false)
        } else {
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(error) => {
                    let _ = tx.send(Input::Refused(format!("json-lines source {path}: {error}")));
                    return;
                }
            };
            let regular = file.metadata().map(|meta| meta.is_file()).unwrap_or(false);
            let mut offset = 0;
            if regular && let Some(at) = resume_at {
                offset = file.seek(SeekFrom::Start(at)).unwrap_or(0);
            }
            (Box::new(BufReader::new(file)), offset, regular)
        };
        // A line is used only once its newline arrived: a writer may be
        // mid-line at the end of the input.
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let room = (line_max + 1).saturating_sub(line.len()) as u64;
            let read = std::io::Read::take(&mut reader, room.max(1)).read_until(b'\n', &mut line);
            match read {
                Ok(0) => {
                    if exit_at_eof {
                        let _ = tx.send(Input::Eof);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = tx.send(Input::Refused(format!("json-lines source {path}: {error}")));
                    return;
                }
            }
            if !line.ends_with(b"\n") {
                if line.len() > line_max {
                    // Keep only the count: a huge line costs line_bytes_max.
                    offset += line.len() as u64;
                    line.clear();
                    too_long = true;
                }
                continue;
            }
            offset += line.len() as u64;
            let cursor = resumable.then_some(offset);
            let input = if too_long || line.len() > line_max + 1 {
                Input::Refused(format!(
                    "json-lines source {path}: a line over line_bytes_max={line_max} was skipped"
                ))
            } else {
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    line.clear();
                    continue;
                }
                match serde_json::from_str::<JsonReading>(text.trim()) {
                    Ok(reading) => Input::Reading {
                        sensor: reading.sensor,
                        timestamp_ms: reading.t.unwrap_or_else(now_ms),
                        value: reading.value,
                        cursor,
                    },
                    Err(error) => Input::Refused(format!("json-lines source {path}: line refused: {error}")),
                }
            };
            line.clear();
            too_long = false;
            if tx.send(input).is_err() {
                return;
            }
        }
    });
}

/// Sensors numbered for the system source.
pub mod system_sensor {
    /// CPU load average over 1 minute.
    pub const LOAD_1M: u32 = 1000;
    /// Memory available, bytes.
    pub const MEM_AVAILABLE: u32 = 1001;
    /// Memory total, bytes.
    pub const MEM_TOTAL: u32 = 1002;
    /// Bytes received over all network interfaces except `lo`.
    pub const NET_RX: u32 = 1003;
    /// Bytes sent over all network interfaces except `lo`.
    pub const NET_TX: u32 = 1004;
    /// Disk bytes free on the state directory's filesystem is not read
    /// without libc; sectors read over all disks instead.
    pub const DISK_READ_SECTORS: u32 = 1005;
    /// Sectors written over all disks.
    pub const DISK_WRITE_SECTORS: u32 = 1006;
    /// Thermal zone `n` in degrees Celsius is `THERMAL_BASE + n`.
    pub const THERMAL_BASE: u32 = 1100;
    /// hwmon temperature `k` (in discovery order) in degrees Celsius.
    pub const HWMON_BASE: u32 = 1200;
}

/// One sample of the Linux system sensors that exist on this machine.
pub fn sample_system() -> Vec<(u32, f64)> {
    use system_sensor::*;
    let mut out = Vec::new();
    let read = |path: &str| std::fs::read_to_string(path).ok();
    if let Some(load) = read("/proc/loadavg").and_then(|text| text.split_whitespace().next()?.parse().ok()) {
        out.push((LOAD_1M, load));
    }
    if let Some(meminfo) = read("/proc/meminfo") {
        for line in meminfo.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(kb)) = (parts.next(), parts.next().and_then(|kb| kb.parse::<f64>().ok())) else {
                continue;
            };
            match key {
                "MemTotal:" => out.push((MEM_TOTAL, kb * 1024.0)),
                "MemAvailable:" => out.push((MEM_AVAILABLE, kb * 1024.0)),
                _ => {}
            }
        }
    }
    if let Some(dev) = read("/proc/net/dev") {
        let (mut rx, mut tx) = (0.0, 0.0);
        for line in dev.lines().skip(2) {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            if name.trim() == "lo" {
                continue;
            }
            let fields: Vec<f64> = rest.split_whitespace().filter_map(|f| f.parse().ok()).collect();
            if fields.len() >= 9 {
                rx += fields[0];
                tx += fields[8];
            }
        }
        out.push((NET_RX, rx));
        out.push((NET_TX, tx));
    }
    if let Some(stats) = read("/proc/diskstats") {
        let (mut read_sectors, mut written) = (0.0, 0.0);
        for line in stats.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Whole disks only: partitions would count twice.
            if fields.len() >= 10 && !fields[2].starts_with("loop") && !fields[2].starts_with("ram") {
                let is_partition = fields[2].chars().last().is_some_and(|c| c.is_ascii_digit())
                    && !fields[2].starts_with("nvme")
                    && !fields[2].starts_with("mmcblk");
                if !is_partition {
                    read_sectors += fields[5].parse::<f64>().unwrap_or(0.0);
                    written += fields[9].parse::<f64>().unwrap_or(0.0);
                }
            }
        }
        out.push((DISK_READ_SECTORS, read_sectors));
        out.push((DISK_WRITE_SECTORS, written));
    }
    for zone in 0..32u32 {
        match read(&format!("/sys/class/thermal/thermal_zone{zone}/temp")) {
            Some(text) => {
                if let Ok(milli) = text.trim().parse::<f64>() {
                    out.push((THERMAL_BASE + zone, milli / 1000.0));
                }
            }
            None => break,
        }
    }
    let mut idx = 0;
    if let Ok(entries) = std::fs::read_dir("/sys/class/hwmon") {
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for dir in dirs {
            for input in 1..=16 {
                if let Some(milli) = std::fs::read_to_string(dir.join(format!("temp{input}_input")))
                    .ok()
                    .and_then(|text| text.trim().parse::<f64>().ok())
                {
                    out.push((system_sensor::HWMON_BASE + idx, milli / 1000.0));
                    idx += 1;
                }
            }
        }
    }
    out
}

fn spawn_system(interval_ms: u64, tx: SyncSender<Input>) {
    std::thread::spawn(move || {
        loop {
            let t = now_ms();
            for (sensor, value) in sample_system() {
                let input = Input::Reading {
                    sensor,
                    timestamp_ms: t,
                    value,
                    cursor: None,
                };
                if tx.send(input).is_err() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(interval_ms.max(10)));
        }
    });
}

fn spawn_simulated(sensors: u32, rate: u64, tx: SyncSender<Input>) {
    std::thread::spawn(move || {
        let sensors = sensors.max(1);
        let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
        let started = Instant::now();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0u64.. {
            let due = started + period * n as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let sensor = (n % u64::from(sensors)) as u32 + 1;
            let value = 20.0 + 5.0 * ((n as f64) / 500.0 + f64::from(sensor)).sin() + noise;
            let input = Input::Reading {
                sensor,
                timestamp_ms: now_ms(),
                value,
                cursor: None,
            };
            if tx.send(input).is_err() {
                return;
            }
        }
    });
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Readings accepted (journaled) by this process.
    pub readings: u64,
    /// Batches.
    pub batches: u64,
    /// Inputs refused (garbage, over a limit).
    pub refused_inputs: u64,
    /// Commands delivered to sinks.
    pub commands: u64,
    /// Commands dropped by a sink's rate limit or with no sink.
    pub commands_dropped: u64,
    /// The link to the fleet server's counters, when `[server]` is set.
    pub link: Option<LinkSummary>,
    /// Whether the server acknowledged every message before the agent
    /// stopped (within `server.drain_timeout_ms`); `None` without a link.
    pub drained: Option<bool>,
    /// Events, reported states and health reports appended to the outbox.
    pub status_messages: u64,
    /// Commands a sink refused or failed to carry out (counted, logged).
    pub commands_failed: u64,
    /// Each MQTT source's counters.
    pub mqtt_sources: Vec<crate::mqtt_io::MqttSourceSummary>,
    /// Each actuator sink's counters.
    pub actuators: Vec<crate::actuators::ActuatorSummary>,
}

struct Sink {
    per_second_max: u32,
    window: Instant,
    in_window: u32,
    output: crate::actuators::Output,
}

/// Runs the agent until a source ends with `exit_at_eof`. Errors are
/// what stops the agent; everything else is logged and counted.
pub fn run(config: &AgentConfig) -> Result<RunSummary, String> {
    let mut runtime_config = RuntimeConfig::default();
    runtime_config.limits.batch_readings_max = runtime_config
        .limits
        .batch_readings_max
        .max(config.limits.batch_readings_max);
    let runtime = Runtime::new(&runtime_config).map_err(|error| format!("starting the policy runtime: {error}"))?;
    let policies = LocalPolicies::start(&runtime, &config.policies)?;
    let (mut pipeline, mut resumed) = Pipeline::open(&config.state_dir, config.pipeline(), policies)
        .map_err(|error| format!("opening {}: {error}", config.state_dir.display()))?;
    for (path, why) in &resumed.bad_checkpoints {
        eprintln!("molt-agent: checkpoint {} not used: {why}", path.display());
    }
    for recovery in [&resumed.journal, &resumed.outbox] {
        for (path, offset, bytes) in &recovery.corrupt {
            eprintln!(
                "molt-agent: {}: corrupt at byte {offset}, {bytes} bytes not trusted; the records before were kept",
                path.display()
            );
        }
    }
    eprintln!(
        "molt-agent: resumed from checkpoint through reading {}, re-processed {} batches ({} already in the outbox)",
        resumed.checkpoint_through, resumed.replayed_batches, resumed.suppressed_batches
    );
    let mut sinks: BTreeMap<String, Sink> = BTreeMap::new();
    for sink in &config.sinks {
        let (actuator, per_second_max, output) = crate::actuators::Output::start(sink)?;
        let sink = Sink {
            per_second_max,
            window: Instant::now(),
            in_window: 0,
            output,
        };
        if sinks.insert(actuator.clone(), sink).is_some() {
            return Err(format!("two sinks for actuator {actuator}; one at most"));
        }
    }
    let mut summary = RunSummary::default();
    let mut deliver = |commands: Vec<(String, molt_wasm::Command)>, summary: &mut RunSummary| {
        for (policy, command) in commands {
            match sinks.get_mut(&command.actuator) {
                Some(sink) => {
                    if sink.window.elapsed() >= Duration::from_secs(1) {
                        sink.window = Instant::now();
                        sink.in_window = 0;
                    }
                    if sink.in_window >= sink.per_second_max {
                        summary.commands_dropped += 1;
                        continue;
                    }
                    sink.in_window += 1;
                    match sink.output.deliver(&command.actuator, &policy, command.value) {
                        Ok(()) => summary.commands += 1,
                        Err(why) => {
                            summary.commands_failed += 1;
                            if summary.commands_failed <= 100 || summary.commands_failed.is_power_of_two() {
                                eprintln!("molt-agent: {why} ({} failed so far)", summary.commands_failed);
                            }
                        }
                    }
                }
                None => summary.commands_dropped += 1,
            }
        }
    };
    deliver(std::mem::take(&mut resumed.commands), &mut summary);
    let link = match &config.server {
        Some(server) => Some(Link::start(
            server,
            &config.state_dir,
            pipeline.shared_outbox(),
            config.pipeline().protocol,
        )?),
        None => None,
    };
    let counters = Arc::new(Counters::start(&config.state_dir));
    let mut reporter = Reporter::new(
        &config.health,
        config
            .server
            .as_ref()
            .map_or(std::env::consts::ARCH, |server| server.hardware_class.as_str()),
        config.pipeline().protocol,
        counters.clone(),
        pipeline.shared_outbox(),
        link.as_ref().map(Link::probe),
        &config.state_dir,
    );
    reporter.started(&resumed);
    reporter.policies(pipeline.policies().take_observed());
    let _metrics = MetricsServer::start(
        &config.metrics,
        MetricsSource {
            counters,
            outbox: pipeline.shared_outbox(),
            link: link.as_ref().map(Link::probe),
        },
    )?;
    let wake = |link: &Option<Link>| {
        if let Some(link) = link {
            link.wake();
        }
    };

    let resumable = config
        .sources
        .iter()
        .filter(|source| matches!(source, SourceConfig::JsonLines { path, .. } if path != "-"))
        .count();
    if resumable > 1 {
        return Err(format!(
            "{resumable} json-lines sources read files; one at most (its position is journaled with the readings)"
        ));
    }
    let (tx, rx): (SyncSender<Input>, Receiver<Input>) = sync_channel(config.limits.source_queue_max.max(1));
    let resume_at = pipeline.journal().cursor();
    let mut mqtt_sources = Vec::new();
    for source in &config.sources {
        match source {
            SourceConfig::JsonLines { path, exit_at_eof } => spawn_json_lines(
                path.clone(),
                *exit_at_eof,
                resume_at,
                config.limits.line_bytes_max,
                tx.clone(),
            ),
            SourceConfig::System { interval_ms } => spawn_system(*interval_ms, tx.clone()),
            SourceConfig::Simulated {
                sensors,
                rate_per_second,
            } => spawn_simulated(*sensors, *rate_per_second, tx.clone()),
            SourceConfig::Mqtt(mqtt) => {
                // Readings journaled before a crash that the broker will
                // deliver again are dropped by their keys.
                let seed = crate::mqtt_io::journal_keys(pipeline.journal(), mqtt.dedupe_readings_max)?;
                mqtt_sources.push(crate::mqtt_io::MqttSource::start(mqtt, seed, tx.clone())?);
            }
        }
    }
    drop(tx);
    let wait = Duration::from_millis(config.limits.batch_wait_ms.max(1));
    let max = config.limits.batch_readings_max.max(1);
    let mut stop = false;
    while !stop {
        if reporter.tick(|| pipeline.policies().policy_states()) {
            wake(&link);
        }
        let mut values = Vec::with_capacity(max);
        let mut cursor = None;
        let mut acks = Vec::new();
        let deadline = Instant::now() + wait;
        while values.len() < max {
            let timeout = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(timeout) {
                Ok(Input::Reading {
                    sensor,
                    timestamp_ms,
                    value,
                    cursor: at,
                }) => {
                    values.push((sensor, timestamp_ms, value));
                    cursor = at.or(cursor);
                }
                Ok(Input::Acked {
                    sensor,
                    timestamp_ms,
                    value,
                    ack,
                }) => {
                    values.push((sensor, timestamp_ms, value));
                    acks.push(ack);
                }
                Ok(Input::Refused(why)) => {
                    summary.refused_inputs += 1;
                    if summary.refused_inputs <= 100 || summary.refused_inputs.is_power_of_two() {
                        eprintln!("molt-agent: {why} ({} refused so far)", summary.refused_inputs);
                    }
                }
                Ok(Input::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    stop = true;
                    break;
                }
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        if values.is_empty() {
            continue;
        }
        loop {
            let began = Instant::now();
            match pipeline.accept_from(&values, cursor) {
                Ok(accepted) => {
                    let observed = pipeline.policies().take_observed();
                    reporter.batch(values.len(), began.elapsed(), accepted.uplink, observed);
                    summary.readings += values.len() as u64;
                    summary.batches += 1;
                    // Journaled and fsynced: the sources may acknowledge.
                    for ack in std::mem::take(&mut acks) {
                        ack.journaled();
                    }
                    if let (Some(link), Some(_)) = (&link, accepted.uplink) {
                        link.wake();
                    }
                    deliver(accepted.commands, &mut summary);
                    break;
                }
                Err(PipelineError::OutboxFull { .. }) => {
                    // Back-pressure: hold this batch, take nothing new.
                    reporter.outbox_full();
                    if reporter.tick(|| pipeline.policies().policy_states()) {
                        wake(&link);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    }
    pipeline.checkpoint().map_err(|error| error.to_string())?;
    summary.mqtt_sources = mqtt_sources.into_iter().map(|source| source.stop()).collect();
    summary.actuators = std::mem::take(&mut sinks)
        .into_iter()
        .map(|(actuator, sink)| sink.output.finish(actuator))
        .collect();
    if reporter.stopping(|| pipeline.policies().policy_states()) {
        wake(&link);
    }
    summary.status_messages = reporter.appended();
    if let Some(link) = link {
        let newest = pipeline.outbox().next_seq().saturating_sub(1);
        summary.drained = Some(link.drain(newest));
        summary.link = Some(link.stop());
    }
    Ok(summary)
}
