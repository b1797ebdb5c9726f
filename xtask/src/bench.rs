//! `cargo xtask bench`: run every benchmark and write `docs/benchmarks.md`.
//!
//! Figures come from two places, both produced by the run that writes the
//! file, never typed in:
//! - criterion's own estimates (`<target>/criterion/<group>/<bench>/new/estimates.json`);
//! - percentile lines the benches print to stderr, `<key>: n=<n> p50=<d> p99=<d> max=<d>`,
//!   where `<d>` is a `Duration` in its `Debug` form (`10.65µs`, `1.14ms`), and
//!   memory lines `memory/<key>: <bytes> bytes per instance ...`;
//! - the fleet server's scenario lines, `figure/<key>: <value> <unit> ...`
//!   (`crates/molt-server/benches/fleet.rs`, beside Mosquitto).
//!
//! Each figure in [`FIGURES`] names its source, its target and, where one
//! exists, the baseline measured in the same run (plain wasmtime, or tough's
//! TUF loader), so the page can give molt's overhead as a ratio.
//!
//! `--only <package>` runs one package's suites, to check that their figures
//! parse; the page it writes says which figures were not measured, so it is
//! not one to commit.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::{cargo, workspace_root};

/// One benchmark binary.
struct Suite {
    package: &'static str,
    bench: &'static str,
}

const SUITES: &[Suite] = &[
    Suite {
        package: "molt-core",
        bench: "update",
    },
    Suite {
        package: "molt-wasm",
        bench: "runtime",
    },
    Suite {
        package: "molt-release",
        bench: "verify",
    },
    Suite {
        package: "molt-release",
        bench: "download",
    },
    Suite {
        package: "molt-rollout",
        bench: "rollout",
    },
    Suite {
        package: "molt-agent",
        bench: "outbox",
    },
    Suite {
        package: "molt-server",
        bench: "fleet",
    },
];

/// Where a figure's value comes from.
#[derive(Clone, Copy)]
enum Source {
    /// criterion's median time per iteration for `group/bench`, divided by
    /// `per` (e.g. readings per batch).
    Time { id: &'static str, per: f64 },
    /// Elements (or bytes) per second: `elements` per criterion iteration.
    Rate {
        id: &'static str,
        elements: f64,
        unit: RateUnit,
    },
    /// A percentile line's p50 or p99.
    Percentile { key: &'static str, p: Pct },
    /// A memory line's bytes per instance.
    Memory { key: &'static str },
    /// A scenario's `figure/<key>: <value> ...` line.
    Figure { key: &'static str, unit: FigureUnit },
}

/// What a `figure/` line's number is.
#[derive(Clone, Copy)]
enum FigureUnit {
    /// Things per second.
    PerSecond(&'static str),
    /// Seconds.
    Seconds,
    /// Bytes.
    Bytes,
    /// A count.
    Count(&'static str),
}

#[derive(Clone, Copy)]
enum Pct {
    P50,
    P99,
}

#[derive(Clone, Copy)]
enum RateUnit {
    PerSecond(&'static str),
    MibPerSecond,
}

/// What a figure must meet.
#[derive(Clone, Copy)]
enum Target {
    /// No target: the figure is reported.
    None,
    /// At most this many nanoseconds.
    TimeAtMost(f64),
    /// At most this many bytes.
    BytesAtMost(f64),
    /// The figure is an overhead over `baseline`; the ratio must be at most this.
    RatioAtMost(f64),
    /// At least this much (a rate or a count).
    AtLeast(f64),
    /// The figure is a rate compared with `baseline`; the ratio must be at least this.
    RatioAtLeast(f64),
}

struct Figure {
    section: &'static str,
    what: &'static str,
    value: Source,
    target: Target,
    /// The same quantity in plain wasmtime (or another floor) in the same run.
    baseline: Option<Source>,
}

/// Every figure on the page, in order.
const FIGURES: &[Figure] = &[
    Figure {
        section: "molt-core: update engine",
        what: "Stage a 16 MiB image on `FsStore` (sha256, fsync, read-back)",
        value: Source::Rate {
            id: "stage_fs/stage_16MiB",
            elements: 16.0 * 1024.0 * 1024.0,
            unit: RateUnit::MibPerSecond,
        },
        target: Target::None,
        baseline: Some(Source::Rate {
            id: "stage_fs/sha256_only",
            elements: 16.0 * 1024.0 * 1024.0,
            unit: RateUnit::MibPerSecond,
        }),
    },
    Figure {
        section: "molt-core: update engine",
        what: "Boot decision, committed 1 MiB image, `FsStore` (re-hashes it)",
        value: Source::Time {
            id: "boot_decision/fs_boot_1MiB",
            per: 1.0,
        },
        target: Target::None,
        baseline: None,
    },
    Figure {
        section: "molt-core: update engine",
        what: "`Engine::open` + boot decision, committed 1 MiB image, `FsStore`",
        value: Source::Time {
            id: "boot_decision/fs_open_boot_1MiB",
            per: 1.0,
        },
        target: Target::None,
        baseline: None,
    },
    Figure {
        section: "molt-core: update engine",
        what: "Boot decision, committed 1 MiB image, `SimFlash`",
        value: Source::Time {
            id: "boot_decision/simflash_boot_1MiB",
            per: 1.0,
        },
        target: Target::None,
        baseline: None,
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "New pooled instance (`InstancePre`), p50",
        value: Source::Percentile {
            key: "instantiate-pct/molt_pooled",
            p: Pct::P50,
        },
        target: Target::TimeAtMost(10_000.0),
        baseline: Some(Source::Percentile {
            key: "instantiate-pct/plain_pooled",
            p: Pct::P50,
        }),
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "New pooled instance + first call (`init`), p50 (baseline: plain, pool slots kept resident as molt keeps them)",
        value: Source::Percentile {
            key: "instantiate-pct/molt_pooled_init",
            p: Pct::P50,
        },
        target: Target::TimeAtMost(10_000.0),
        baseline: Some(Source::Percentile {
            key: "instantiate-pct/plain_keep_resident_pooled_init",
            p: Pct::P50,
        }),
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "New pooled instance + first call (`init`), p99 (same baseline)",
        value: Source::Percentile {
            key: "instantiate-pct/molt_pooled_init",
            p: Pct::P99,
        },
        target: Target::TimeAtMost(50_000.0),
        baseline: Some(Source::Percentile {
            key: "instantiate-pct/plain_keep_resident_pooled_init",
            p: Pct::P99,
        }),
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "Per-reading cost, threshold policy, batches of 256",
        value: Source::Time {
            id: "process/molt_threshold_256",
            per: 256.0,
        },
        target: Target::TimeAtMost(100.0),
        baseline: Some(Source::Time {
            id: "process/plain_fuel_epochs_threshold_256",
            per: 256.0,
        }),
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "Single-core throughput, threshold policy, batches of 256",
        value: Source::Rate {
            id: "process/molt_threshold_256",
            elements: 256.0,
            unit: RateUnit::PerSecond("readings"),
        },
        target: Target::None,
        baseline: Some(Source::Rate {
            id: "process/plain_fuel_epochs_threshold_256",
            elements: 256.0,
            unit: RateUnit::PerSecond("readings"),
        }),
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "Fuel overhead: plain wasmtime with fuel vs without (ratio is the overhead)",
        value: Source::Time {
            id: "process/plain_fuel_threshold_256",
            per: 256.0,
        },
        target: Target::RatioAtMost(1.10),
        baseline: Some(Source::Time {
            id: "process/plain_threshold_256",
            per: 256.0,
        }),
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "Swap to a precompiled version (verified load + stage + switch), p50",
        value: Source::Percentile {
            key: "swap-pct/molt_precompiled load_verified+stage+switch (total without the batch)",
            p: Pct::P50,
        },
        target: Target::None,
        baseline: None,
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "Swap to a precompiled version (verified load + stage + switch), p99; 0 readings lost",
        value: Source::Percentile {
            key: "swap-pct/molt_precompiled load_verified+stage+switch (total without the batch)",
            p: Pct::P99,
        },
        target: Target::TimeAtMost(1_000_000.0),
        baseline: None,
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "Same, re-hashing the artifact at every load, p99 (baseline: verified once)",
        value: Source::Percentile {
            key: "swap-pct/molt_precompiled_hashing load_precompiled+stage+switch (total without the batch)",
            p: Pct::P99,
        },
        target: Target::None,
        baseline: Some(Source::Percentile {
            key: "swap-pct/molt_precompiled load_verified+stage+switch (total without the batch)",
            p: Pct::P99,
        }),
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "Swap from `.wasm`, Winch (compile + stage + switch), p50 (baseline: plain Cranelift compile alone)",
        value: Source::Percentile {
            key: "swap-pct/molt_wasm_winch compile+stage+switch (total without the batch)",
            p: Pct::P50,
        },
        target: Target::TimeAtMost(20_000_000.0),
        baseline: Some(Source::Percentile {
            key: "compile-pct/sequence_echo plain Component::new",
            p: Pct::P50,
        }),
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "Swap from `.wasm`, Cranelift (compile + stage + switch), p50 (baseline: plain Cranelift compile alone)",
        value: Source::Percentile {
            key: "swap-pct/molt_wasm compile+stage+switch (total without the batch)",
            p: Pct::P50,
        },
        target: Target::TimeAtMost(20_000_000.0),
        baseline: Some(Source::Percentile {
            key: "compile-pct/sequence_echo plain Component::new",
            p: Pct::P50,
        }),
    },
    Figure {
        section: "molt-wasm: policy runtime (baseline: plain wasmtime 48 with the same pool, fuel and epochs)",
        what: "Memory per loaded policy instance (resident growth, threshold)",
        value: Source::Memory { key: "molt_threshold" },
        target: Target::BytesAtMost(102_400.0),
        baseline: Some(Source::Memory { key: "plain_threshold" }),
    },
    Figure {
        section: "molt-release: TUF release sets",
        what: "`check`: TUF metadata and release-set rules, set of 50 policies + 1 agent, local directory (baseline: the same check on tough 0.24's `RepositoryLoader`, same repository)",
        value: Source::Time {
            id: "verify_50_policies/check",
            per: 1.0,
        },
        target: Target::None,
        baseline: Some(Source::Time {
            id: "verify_50_policies/check_tough_loader",
            per: 1.0,
        }),
    },
    Figure {
        section: "molt-release: TUF release sets",
        what: "`check` + `fetch`: also copy and verify all 52 parts (50 × 64 KiB, 1 MiB agent)",
        value: Source::Time {
            id: "verify_50_policies/check_and_fetch",
            per: 1.0,
        },
        target: Target::None,
        baseline: None,
    },
    Figure {
        section: "molt-release: TUF release sets",
        what: "Download 16 MiB over loopback HTTP (stream, sha256, fsync, rename)",
        value: Source::Rate {
            id: "download/plain/16MiB",
            elements: 16.0 * 1024.0 * 1024.0,
            unit: RateUnit::MibPerSecond,
        },
        target: Target::None,
        baseline: None,
    },
    Figure {
        section: "molt-release: TUF release sets",
        what: "Download 64 MiB over loopback HTTP",
        value: Source::Rate {
            id: "download/plain/64MiB",
            elements: 64.0 * 1024.0 * 1024.0,
            unit: RateUnit::MibPerSecond,
        },
        target: Target::None,
        baseline: None,
    },
    Figure {
        section: "molt-release: TUF release sets",
        what: "Download 64 MiB, connection cut at half, resumed with `Range` (baseline: uninterrupted)",
        value: Source::Rate {
            id: "download/drop-half-and-resume/64MiB",
            elements: 64.0 * 1024.0 * 1024.0,
            unit: RateUnit::MibPerSecond,
        },
        target: Target::None,
        baseline: Some(Source::Rate {
            id: "download/plain/64MiB",
            elements: 64.0 * 1024.0 * 1024.0,
            unit: RateUnit::MibPerSecond,
        }),
    },
    Figure {
        section: "molt-rollout: rollout controller and fleet simulator",
        what: "One wave decision at 320,000 devices (every gate, whole group and each of 4 classes)",
        value: Source::Time {
            id: "rollout_decision/look_320k",
            per: 1.0,
        },
        target: Target::TimeAtMost(1e9),
        baseline: None,
    },
    Figure {
        section: "molt-rollout: rollout controller and fleet simulator",
        what: "Controller memory, one rollout of 320,000 devices (resident growth while planning it)",
        value: Source::Memory {
            key: "rollout_controller_320k",
        },
        target: Target::None,
        baseline: None,
    },
    Figure {
        section: "molt-rollout: rollout controller and fleet simulator",
        what: "Scenario 1 in the simulator, 320,000 devices, about 8.5 simulated hours, end to end",
        value: Source::Time {
            id: "rollout_sim/healthy_320k",
            per: 1.0,
        },
        target: Target::None,
        baseline: None,
    },
    Figure {
        section: "molt-agent: durable outbox",
        what: "Outbox append, 16 messages of 1 KiB per batch, fsync after every append",
        value: Source::Rate {
            id: "outbox_append/every_append",
            elements: 16.0,
            unit: RateUnit::PerSecond("messages"),
        },
        target: Target::None,
        baseline: Some(Source::Rate {
            id: "outbox_append/plain_write",
            elements: 16.0,
            unit: RateUnit::PerSecond("messages"),
        }),
    },
    Figure {
        section: "molt-agent: durable outbox",
        what: "Outbox append, 16 messages of 1 KiB per batch, fsync once per batch (the default)",
        value: Source::Rate {
            id: "outbox_append/every_batch",
            elements: 16.0,
            unit: RateUnit::PerSecond("messages"),
        },
        target: Target::None,
        baseline: Some(Source::Rate {
            id: "outbox_append/plain_write",
            elements: 16.0,
            unit: RateUnit::PerSecond("messages"),
        }),
    },
    Figure {
        section: "molt-agent: durable outbox",
        what: "Outbox append, 16 messages of 1 KiB per batch, fsync at most every 100 ms",
        value: Source::Rate {
            id: "outbox_append/interval_100ms",
            elements: 16.0,
            unit: RateUnit::PerSecond("messages"),
        },
        target: Target::None,
        baseline: Some(Source::Rate {
            id: "outbox_append/plain_write",
            elements: 16.0,
            unit: RateUnit::PerSecond("messages"),
        }),
    },
    Figure {
        section: FLEET,
        what: "Telemetry ingest: MQTT messages stored per second (TLS, ACL checks, idempotent store; 50 points each), vs Mosquitto forwarding them to one subscriber",
        value: Source::Figure {
            key: "ingest_messages",
            unit: FigureUnit::PerSecond("messages"),
        },
        target: Target::RatioAtLeast(1.0),
        baseline: Some(Source::Figure {
            key: "mosquitto_messages",
            unit: FigureUnit::PerSecond("messages"),
        }),
    },
    Figure {
        section: FLEET,
        what: "Telemetry ingest: points stored per second",
        value: Source::Figure {
            key: "ingest_points",
            unit: FigureUnit::PerSecond("points"),
        },
        target: Target::AtLeast(50_000.0),
        baseline: None,
    },
    Figure {
        section: FLEET,
        what: "Connection storm: devices connected (TLS client certificates, all at once)",
        value: Source::Figure {
            key: "storm_connected",
            unit: FigureUnit::Count("devices"),
        },
        target: Target::AtLeast(10_000.0),
        baseline: Some(Source::Figure {
            key: "mosquitto_storm_connected",
            unit: FigureUnit::Count("devices"),
        }),
    },
    Figure {
        section: FLEET,
        what: "Connection storm: seconds until the last device is connected",
        value: Source::Figure {
            key: "storm_seconds",
            unit: FigureUnit::Seconds,
        },
        target: Target::TimeAtMost(20e9),
        baseline: Some(Source::Figure {
            key: "mosquitto_storm_seconds",
            unit: FigureUnit::Seconds,
        }),
    },
    Figure {
        section: FLEET,
        what: "Connection storm: broker resident memory with every device connected",
        value: Source::Figure {
            key: "storm_rss",
            unit: FigureUnit::Bytes,
        },
        target: Target::None,
        baseline: Some(Source::Figure {
            key: "mosquitto_storm_rss",
            unit: FigureUnit::Bytes,
        }),
    },
    Figure {
        section: FLEET,
        what: "Connection storm: broker resident memory per connection",
        value: Source::Figure {
            key: "storm_bytes_per_connection",
            unit: FigureUnit::Bytes,
        },
        target: Target::BytesAtMost(20_000.0),
        baseline: Some(Source::Figure {
            key: "mosquitto_storm_bytes_per_connection",
            unit: FigureUnit::Bytes,
        }),
    },
    Figure {
        section: FLEET,
        what: "Enrollment: devices enrolled per second (token + CSR over HTTPS, 16 in flight)",
        value: Source::Figure {
            key: "enroll_rate",
            unit: FigureUnit::PerSecond("devices"),
        },
        target: Target::None,
        baseline: None,
    },
];

/// The fleet server's scenario figures (`crates/molt-server/benches/fleet.rs`).
const FLEET: &str = "molt-server: fleet server (baseline: Mosquitto 2.0 with TLS client certificates, same run)";

/// Everything one run measured.
#[derive(Default)]
struct Measured {
    /// criterion id → median ns per iteration.
    criterion: BTreeMap<String, f64>,
    /// percentile key → (p50, p99).
    percentiles: BTreeMap<String, (Duration, Duration)>,
    /// memory key → bytes per instance.
    memory: BTreeMap<String, u64>,
    /// `figure/` key → value.
    figures: BTreeMap<String, f64>,
}

pub(crate) fn bench(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut only: Option<String> = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let package = rest
                    .next()
                    .context("`--only` needs a package: `cargo xtask bench --only molt-release`")?;
                if !SUITES.iter().any(|suite| suite.package == package) {
                    bail!("no benchmarks in package {package:?}");
                }
                only = Some(package.clone());
            }
            other => bail!("unknown argument {other:?}: `cargo xtask bench [--quick] [--only <package>]`"),
        }
    }
    let machine_before = Machine::read();
    let target_dir = target_dir()?;
    // Coarse file timestamps: allow a second of slack, never more.
    let started = SystemTime::now() - Duration::from_secs(1);
    let mut measured = Measured::default();
    let mut lines = Vec::new();
    for suite in SUITES {
        if only.as_ref().is_none_or(|package| package == suite.package) {
            lines.extend(run_suite(suite, quick)?);
        }
    }
    for line in &lines {
        parse_line(line, &mut measured);
    }
    read_criterion(&target_dir.join("criterion"), started, &mut measured)?;
    let load_after = load_average();
    let page = render(&machine_before, &load_after, quick, &measured)?;
    let path = workspace_root().join("docs/benchmarks.md");
    std::fs::write(&path, page).with_context(|| format!("could not write {}", path.display()))?;
    eprintln!("xtask: bench: wrote {}", path.display());
    Ok(())
}

pub(crate) fn target_dir() -> Result<PathBuf> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("could not run cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed ({})", output.status);
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata gave no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Runs one bench binary, echoing its output, and returns its stderr lines.
fn run_suite(suite: &Suite, quick: bool) -> Result<Vec<String>> {
    let step = format!("cargo bench -p {} --bench {}", suite.package, suite.bench);
    eprintln!("xtask: {step}");
    let mut command = cargo();
    command.args(["bench", "-p", suite.package, "--bench", suite.bench, "--"]);
    if quick {
        command.arg("--quick");
    }
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start: {step}"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let lines = echo_lines(stderr);
    let status = child.wait().with_context(|| format!("could not wait for: {step}"))?;
    if !status.success() {
        bail!("failed ({status}): {step}");
    }
    Ok(lines)
}

fn echo_lines(stream: impl Read) -> Vec<String> {
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        eprintln!("{line}");
        lines.push(line);
    }
    lines
}

fn parse_line(line: &str, measured: &mut Measured) {
    let Some((key, rest)) = line.split_once(": ") else {
        return;
    };
    if let Some(figure_key) = key.strip_prefix("figure/") {
        if let Some(value) = rest.split(' ').next().and_then(|n| n.parse().ok()) {
            measured.figures.insert(figure_key.to_owned(), value);
        }
        return;
    }
    if let Some(memory_key) = key.strip_prefix("memory/") {
        if let Some(bytes) = rest.split(' ').next().and_then(|n| n.parse().ok()) {
            measured.memory.insert(memory_key.to_owned(), bytes);
        }
        return;
    }
    let field = |name: &str| {
        rest.split(' ')
            .find_map(|part| part.strip_prefix(name))
            .and_then(parse_debug_duration)
    };
    if let (Some(p50), Some(p99)) = (field("p50="), field("p99=")) {
        measured.percentiles.insert(key.to_owned(), (p50, p99));
    }
}

/// Parses `Duration`'s `Debug` form: `12ns`, `10.65µs`, `1.14ms`, `2.5s`.
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let nanos = match unit {
        "ns" => 1.0,
        "µs" | "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    Some(Duration::from_nanos((value * nanos).round() as u64))
}

/// Reads criterion's median estimate for every benchmark under `dir` that
/// this run wrote (modified at or after `since`), so a figure a suite no
/// longer produces is reported missing rather than taken from an old run.
/// A benchmark's id is its directory's path below `dir`: `group/bench`, or
/// `group/function/parameter` for parameterised ones.
fn read_criterion(dir: &Path, since: SystemTime, measured: &mut Measured) -> Result<()> {
    if !dir.is_dir() {
        bail!("no criterion results under {}", dir.display());
    }
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() || entry.file_name() == "report" {
                continue;
            }
            let estimates = path.join("new/estimates.json");
            if !estimates.is_file() {
                pending.push(path);
                continue;
            }
            let fresh = std::fs::metadata(&estimates)
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| modified >= since);
            if !fresh {
                continue;
            }
            let text = std::fs::read_to_string(&estimates)
                .with_context(|| format!("could not read {}", estimates.display()))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", estimates.display()))?;
            let median = json["median"]["point_estimate"]
                .as_f64()
                .with_context(|| format!("no median point estimate in {}", estimates.display()))?;
            let id = path
                .strip_prefix(dir)
                .map(|relative| relative.to_string_lossy().replace('\\', "/"))
                .with_context(|| format!("{} is not under {}", path.display(), dir.display()))?;
            measured.criterion.insert(id, median);
        }
    }
    Ok(())
}

/// A value with its unit, ready to print and compare.
enum Value {
    Nanos(f64),
    Rate(f64, RateUnit),
    Bytes(u64),
    Count(f64, &'static str),
}

impl Value {
    fn render(&self) -> String {
        match self {
            Value::Nanos(ns) => format_nanos(*ns),
            Value::Rate(rate, RateUnit::MibPerSecond) => format!("{rate:.0} MiB/s"),
            Value::Rate(rate, RateUnit::PerSecond(unit)) => format!("{} {unit}/s", format_count(*rate)),
            Value::Bytes(bytes) => format!("{bytes} B"),
            Value::Count(count, unit) => format!("{count:.0} {unit}"),
        }
    }

    fn scalar(&self) -> f64 {
        match self {
            Value::Nanos(ns) => *ns,
            Value::Rate(rate, _) => *rate,
            Value::Bytes(bytes) => *bytes as f64,
            Value::Count(count, _) => *count,
        }
    }
}

fn format_nanos(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn format_count(count: f64) -> String {
    if count >= 1e6 {
        format!("{:.2} M", count / 1e6)
    } else if count >= 1e3 {
        format!("{:.1} k", count / 1e3)
    } else {
        format!("{count:.0}")
    }
}

fn value_of(source: Source, measured: &Measured) -> Option<Value> {
    match source {
        Source::Time { id, per } => measured.criterion.get(id).map(|ns| Value::Nanos(ns / per)),
        Source::Rate { id, elements, unit } => measured.criterion.get(id).map(|ns| {
            let per_second = elements / (ns / 1e9);
            match unit {
                RateUnit::MibPerSecond => Value::Rate(per_second / (1024.0 * 1024.0), unit),
                RateUnit::PerSecond(_) => Value::Rate(per_second, unit),
            }
        }),
        Source::Percentile { key, p } => measured.percentiles.get(key).map(|(p50, p99)| {
            let duration = match p {
                Pct::P50 => p50,
                Pct::P99 => p99,
            };
            Value::Nanos(duration.as_nanos() as f64)
        }),
        Source::Memory { key } => measured.memory.get(key).map(|bytes| Value::Bytes(*bytes)),
        Source::Figure { key, unit } => measured.figures.get(key).map(|value| match unit {
            FigureUnit::PerSecond(name) => Value::Rate(*value, RateUnit::PerSecond(name)),
            FigureUnit::Seconds => Value::Nanos(value * 1e9),
            FigureUnit::Bytes => Value::Bytes(*value as u64),
            FigureUnit::Count(name) => Value::Count(*value, name),
        }),
    }
}

fn source_label(source: Source) -> String {
    match source {
        Source::Time { id, per } if per > 1.0 => format!("`{id}` ÷ {per}"),
        Source::Time { id, .. } | Source::Rate { id, .. } => format!("`{id}`"),
        Source::Percentile { key, p } => format!(
            "`{key}` {}",
            match p {
                Pct::P50 => "p50",
                Pct::P99 => "p99",
            }
        ),
        Source::Memory { key } => format!("`memory/{key}`"),
        Source::Figure { key, .. } => format!("`figure/{key}`"),
    }
}

fn render(machine: &Machine, load_after: &str, quick: bool, measured: &Measured) -> Result<String> {
    let mut page = String::new();
    let mut missing = Vec::new();
    writeln!(page, "# Benchmarks")?;
    writeln!(page)?;
    writeln!(
        page,
        "Written by `cargo xtask bench`{} from one run on the machine below; every value is what that run measured.",
        if quick { " --quick" } else { "" }
    )?;
    writeln!(
        page,
        "The machine is a shared, noisy virtual machine: read single values as ±30 %, and trust most the ratios, whose two sides were measured side by side in the same run."
    )?;
    writeln!(page)?;
    writeln!(page, "## Machine")?;
    writeln!(page)?;
    writeln!(page, "- CPU: {} ({} cores online)", machine.cpu, machine.cores)?;
    writeln!(page, "- Memory: {}", machine.memory)?;
    writeln!(page, "- Kernel: {}", machine.kernel)?;
    writeln!(page, "- Toolchain: {}", machine.rustc)?;
    writeln!(page, "- Date: {}", machine.date)?;
    writeln!(
        page,
        "- Load average (1, 5, 15 min): {} before, {load_after} after",
        machine.load
    )?;
    writeln!(page)?;
    writeln!(page, "## How to reproduce")?;
    writeln!(page)?;
    writeln!(page, "```sh")?;
    writeln!(
        page,
        "cargo xtask bench          # every suite, then rewrites this page"
    )?;
    for suite in SUITES {
        writeln!(page, "cargo bench -p {} --bench {}", suite.package, suite.bench)?;
    }
    writeln!(page, "```")?;

    let mut section = "";
    for figure in FIGURES {
        if figure.section != section {
            section = figure.section;
            writeln!(page)?;
            writeln!(page, "## {section}")?;
            writeln!(page)?;
            writeln!(
                page,
                "| Figure | Value | Target | Met | Baseline, same run | Ratio | Source |"
            )?;
            writeln!(page, "|---|---|---|---|---|---|---|")?;
        }
        let Some(value) = value_of(figure.value, measured) else {
            missing.push(source_label(figure.value));
            writeln!(
                page,
                "| {} | not measured | {} | — | | | {} |",
                figure.what,
                target_text(figure.target),
                source_label(figure.value)
            )?;
            continue;
        };
        let baseline = figure.baseline.and_then(|source| value_of(source, measured));
        let ratio = baseline
            .as_ref()
            .filter(|base| base.scalar() > 0.0)
            .map(|base| value.scalar() / base.scalar());
        let met = match figure.target {
            Target::None => "—".to_owned(),
            Target::TimeAtMost(limit) | Target::BytesAtMost(limit) => yes_no(value.scalar() <= limit),
            Target::RatioAtMost(limit) => ratio.map_or_else(|| "—".to_owned(), |ratio| yes_no(ratio <= limit)),
            Target::AtLeast(limit) => yes_no(value.scalar() >= limit),
            Target::RatioAtLeast(limit) => ratio.map_or_else(|| "—".to_owned(), |ratio| yes_no(ratio >= limit)),
        };
        let mut sources = source_label(figure.value);
        if let Some(source) = figure.baseline {
            let _ = write!(sources, " vs {}", source_label(source));
        }
        writeln!(
            page,
            "| {} | {} | {} | {} | {} | {} | {} |",
            figure.what,
            value.render(),
            target_text(figure.target),
            met,
            baseline.as_ref().map(Value::render).unwrap_or_default(),
            ratio.map(|ratio| format!("{ratio:.2}")).unwrap_or_default(),
            sources
        )?;
    }
    if !missing.is_empty() {
        eprintln!("xtask: bench: not measured in this run: {}", missing.join(", "));
    }
    Ok(page)
}

fn target_text(target: Target) -> String {
    match target {
        Target::None => "none set".to_owned(),
        Target::TimeAtMost(ns) => format!("≤ {}", format_nanos(ns)),
        Target::BytesAtMost(bytes) => format!("≤ {bytes:.0} B"),
        Target::RatioAtMost(ratio) => format!("ratio ≤ {ratio:.2}"),
        Target::AtLeast(value) => format!("≥ {}", format_count(value)),
        Target::RatioAtLeast(ratio) => format!("ratio ≥ {ratio:.2}"),
    }
}

fn yes_no(met: bool) -> String {
    if met { "yes" } else { "**no**" }.to_owned()
}

struct Machine {
    cpu: String,
    cores: String,
    memory: String,
    kernel: String,
    rustc: String,
    date: String,
    load: String,
}

impl Machine {
    fn read() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("model name"))
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("MemTotal:"))
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or_else(
                || "unknown".to_owned(),
                |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
            );
        Machine {
            cpu,
            cores: command_text("nproc", &[]),
            memory,
            kernel: command_text("uname", &["-r"]),
            rustc: command_text("rustc", &["-V"]),
            date: command_text("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            load: load_average(),
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| text.split(' ').take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn command_text(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |text| text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debug_durations() {
        assert_eq!(parse_debug_duration("10.65µs"), Some(Duration::from_nanos(10_650)));
        assert_eq!(parse_debug_duration("1.14ms"), Some(Duration::from_nanos(1_140_000)));
        assert_eq!(parse_debug_duration("44ns"), Some(Duration::from_nanos(44)));
        assert_eq!(parse_debug_duration("2.50s"), Some(Duration::from_millis(2_500)));
        assert_eq!(parse_debug_duration("fast"), None);
    }

    #[test]
    fn parses_percentile_and_memory_lines() {
        let mut measured = Measured::default();
        parse_line(
            "instantiate-pct/molt_pooled_init: n=2000 p50=10.65µs p99=44.90µs max=1.20ms",
            &mut measured,
        );
        parse_line(
            "memory/molt: 49152 bytes per instance (second 100: +4915200 bytes)",
            &mut measured,
        );
        parse_line("Benchmarking process/molt_threshold_256: Warming up", &mut measured);
        assert_eq!(
            measured.percentiles.get("instantiate-pct/molt_pooled_init"),
            Some(&(Duration::from_nanos(10_650), Duration::from_nanos(44_900)))
        );
        assert_eq!(measured.memory.get("molt"), Some(&49_152));
        assert_eq!(measured.percentiles.len(), 1);
    }

    #[test]
    fn parses_figure_lines() {
        let mut measured = Measured::default();
        parse_line(
            "figure/ingest_messages: 664 messages/s (20 devices, 50 points each, TLS, stored)",
            &mut measured,
        );
        parse_line(
            "figure/storm_seconds: 0.22 s (500 of 500 devices connected, TLS)",
            &mut measured,
        );
        parse_line("figure/broken: many", &mut measured);
        assert_eq!(measured.figures.get("ingest_messages"), Some(&664.0));
        assert_eq!(measured.figures.get("storm_seconds"), Some(&0.22));
        assert_eq!(measured.figures.len(), 2);
    }

    #[test]
    fn reads_only_fresh_criterion_medians() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        let write = |bench: &str, median: f64| {
            let path = dir.join("group").join(bench).join("new");
            std::fs::create_dir_all(&path).unwrap();
            let text = format!(r#"{{"mean":{{"point_estimate":1.0}},"median":{{"point_estimate":{median}}}}}"#);
            std::fs::write(path.join("estimates.json"), text).unwrap();
        };
        write("old", 1.0);
        let since = SystemTime::now() + Duration::from_secs(3600);
        let mut measured = Measured::default();
        read_criterion(&dir, since, &mut measured).unwrap();
        assert!(measured.criterion.is_empty(), "an estimate older than the run was read");
        write("new", 5.5e3);
        write("function/16MiB", 7.0);
        read_criterion(&dir, SystemTime::UNIX_EPOCH, &mut measured).unwrap();
        assert_eq!(measured.criterion.get("group/new"), Some(&5500.0));
        assert_eq!(measured.criterion.get("group/function/16MiB"), Some(&7.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
