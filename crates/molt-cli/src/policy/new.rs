//! `molt policy new NAME`: a policy crate that builds anywhere.
//!
//! The crate carries its own copy of the guest SDK (`molt-policy-sdk/`,
//! with the `molt:policy` contract in `molt-policy-sdk/wit/`), compiled into
//! this binary, so it matches the contract this molt runs and needs nothing
//! from the molt repository; its other dependencies come from crates.io at
//! the versions `guests/Cargo.lock` pins (written as the crate's Cargo.lock).

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::output::{Output, Report, UsageError};

/// The SDK's sources, as `guests/molt-policy-sdk` has them.
const SDK_SOURCES: &[(&str, &str)] = &[
    (
        "src/lib.rs",
        include_str!("../../../../guests/molt-policy-sdk/src/lib.rs"),
    ),
    (
        "src/action.rs",
        include_str!("../../../../guests/molt-policy-sdk/src/action.rs"),
    ),
    (
        "src/config.rs",
        include_str!("../../../../guests/molt-policy-sdk/src/config.rs"),
    ),
    (
        "src/export.rs",
        include_str!("../../../../guests/molt-policy-sdk/src/export.rs"),
    ),
    (
        "src/policy.rs",
        include_str!("../../../../guests/molt-policy-sdk/src/policy.rs"),
    ),
    (
        "src/sensor_map.rs",
        include_str!("../../../../guests/molt-policy-sdk/src/sensor_map.rs"),
    ),
    (
        "src/state.rs",
        include_str!("../../../../guests/molt-policy-sdk/src/state.rs"),
    ),
    (
        "src/testing.rs",
        include_str!("../../../../guests/molt-policy-sdk/src/testing.rs"),
    ),
    (
        "src/tests.rs",
        include_str!("../../../../guests/molt-policy-sdk/src/tests.rs"),
    ),
];

/// The versions every guest is tested with.
const CARGO_LOCK: &str = include_str!("../../../../guests/Cargo.lock");

/// In the repository the SDK finds the contract two levels up; the copy has
/// it next to its manifest.
const WIT_PATH_IN_REPO: &str = "path: \"../../wit\"";
const WIT_PATH_IN_COPY: &str = "path: \"wit\"";

/// The SDK's manifest, with `guests/Cargo.toml`'s workspace versions written out.
const SDK_MANIFEST: &str = r#"[package]
name = "molt-policy-sdk"
description = "Write molt policies in Rust (copied by `molt policy new`)"
version = "0.0.0"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
serde = { version = "1.0", default-features = false, features = ["derive", "alloc", "std"] }
serde_ipld_dagcbor = { version = "0.7", default-features = false, features = ["std"] }
# The release on the wasm-tools release (0.254) the host's wasmtime (48) reads.
wit-bindgen = { version = "=0.60.0", default-features = false, features = ["macros", "realloc", "std"] }
"#;

const MANIFEST: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
molt-policy-sdk = { path = "molt-policy-sdk" }
serde = { version = "1.0", default-features = false, features = ["derive", "alloc", "std"] }

# A workspace of its own, even inside another one.
[workspace]

[profile.release]
# Policies travel over the air to small devices: optimise for size.
opt-level = "s"
lto = true
codegen-units = 1
# A panic is a wasm trap, which the host recovers from.
panic = "abort"
# Function names and line tables, for the host's trap backtraces.
debug = "line-tables-only"
strip = "none"
"#;

const LIB: &str = r#"//! {name}: publishes a sensor's rate of change, in units per second, and
//! alerts when it is steeper than `max_rate`.
//!
//! Config: `max_rate` (number > 0, required).

use molt_policy_sdk::{Action, Alert, Config, Policy, PolicyError, Reading, SensorMap, Severity, Telemetry, config_error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Rate {
    /// From the config, set again on every restore.
    #[serde(skip)]
    max_rate: f64,
    /// Each sensor's last finite reading: (timestamp_ms, value).
    last: SensorMap<(u64, f64)>,
}

impl Policy for Rate {
    fn init(config: &Config) -> Result<Self, PolicyError> {
        let mut rate = Rate { max_rate: 0.0, last: SensorMap::default() };
        rate.reconfigure(config)?;
        Ok(rate)
    }

    fn process(&mut self, batch: &[Reading], actions: &mut Vec<Action>) -> Result<(), PolicyError> {
        for reading in batch.iter().filter(|reading| reading.value.is_finite()) {
            let last = self.last.get_or_insert_with(reading.sensor, || (reading.timestamp_ms, reading.value));
            let elapsed_ms = reading.timestamp_ms.saturating_sub(last.0);
            if elapsed_ms > 0 {
                let rate = (reading.value - last.1) * 1000.0 / elapsed_ms as f64;
                actions.push(Telemetry::for_reading(reading, "rate", rate).into());
                if rate.abs() > self.max_rate {
                    actions.push(
                        Alert {
                            sensor: reading.sensor,
                            timestamp_ms: reading.timestamp_ms,
                            severity: Severity::Warning,
                            message: format!("changing at {rate:.3}/s, over max_rate {}", self.max_rate),
                        }
                        .into(),
                    );
                }
            }
            *last = (reading.timestamp_ms, reading.value);
        }
        Ok(())
    }

    fn reconfigure(&mut self, config: &Config) -> Result<(), PolicyError> {
        config.check_keys(&["max_rate"])?;
        let max_rate = config.require_f64("max_rate")?;
        if max_rate <= 0.0 {
            return Err(config_error("max_rate", "must be above 0"));
        }
        self.max_rate = max_rate;
        Ok(())
    }
}

molt_policy_sdk::export_policy!(Rate);

#[cfg(test)]
mod tests {
    use molt_policy_sdk::{Action, testing};

    use super::Rate;

    #[test]
    fn publishes_the_rate_and_alerts_over_the_maximum() {
        let mut rate: Rate = testing::init(&[("max_rate", "5")]).expect("a valid config");
        // One reading a second: +1/s, then +10/s.
        let actions = testing::process(&mut rate, &testing::readings(&[(1, 20.0), (1, 21.0), (1, 31.0)], 1_000))
            .expect("process");
        assert_eq!(testing::telemetry_lines(&actions[..1]), "1:rate=1");
        assert!(matches!(&actions[2], Action::Alert(alert) if alert.message.contains("10.000/s")));
        assert_eq!(actions.len(), 3);
    }

    #[test]
    fn refuses_a_bad_config() {
        assert!(testing::init::<Rate>(&[("max_rate", "0")]).is_err());
        assert!(testing::init::<Rate>(&[("max_rate", "5"), ("typo", "1")]).is_err());
    }

    #[test]
    fn state_survives_snapshot_and_restore() {
        let mut rate: Rate = testing::init(&[("max_rate", "5")]).expect("a valid config");
        testing::process(&mut rate, &testing::readings(&[(1, 20.0)], 1_000)).expect("process");
        let restored = testing::round_trip(&rate, &[("max_rate", "5")]).expect("round trip");
        assert_eq!(restored.last.get(1), Some(&(0, 20.0)));
    }
}
"#;

const CONFIG: &str = "{\"max_rate\": 5}\n";

const READINGS: &str = "sensor,timestamp_ms,value
1,0,20.0
1,1000,20.5
1,2000,21.0
1,3000,28.0
1,4000,28.2
2,4000,5.0
2,5000,5.0
1,5000,28.1
";

const GITIGNORE: &str = "/target\n/*.wasm\n";

/// Start a policy crate, with native tests, that builds outside the molt
/// repository.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Writes NAME/: a rate-of-change policy in src/lib.rs with its tests, config.json,
readings.csv, and a copy of the guest SDK in molt-policy-sdk/.

Next:
  cd NAME && cargo test && cd ..
  molt policy build NAME")]
pub(super) struct NewArgs {
    /// The crate's name and directory: letters, digits, '-' and '_'.
    #[arg(value_name = "NAME")]
    name: String,
}

#[derive(Debug, Serialize)]
struct NewOutput {
    dir: PathBuf,
    files: Vec<String>,
}

impl Report for NewOutput {
    fn human(&self) -> String {
        let dir = self.dir.display();
        format!(
            "created policy crate {dir} ({} files)\nnext:\n  cd {dir} && cargo test && cd -\n  molt policy build {dir}\n  \
             molt policy run {dir}/<crate>.wasm --config {dir}/config.json --readings {dir}/readings.csv\n",
            self.files.len()
        )
    }
}

pub(super) fn new(args: NewArgs, output: &Output) -> anyhow::Result<()> {
    let name = &args.name;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(UsageError(format!(
            "`{name}` is not a crate name: 1 to 64 letters, digits, '-' or '_', starting with a letter"
        ))
        .into());
    }
    let dir = PathBuf::from(name);
    if dir.exists() {
        bail!("{} already exists; pick another name or remove it", dir.display());
    }
    let lib = SDK_SOURCES[0].1;
    if lib.matches(WIT_PATH_IN_REPO).count() != 1 {
        bail!("this molt's copy of the SDK does not name its contract as expected; rebuild molt");
    }
    let mut files: Vec<(String, String)> = vec![
        ("Cargo.toml".into(), MANIFEST.replace("{name}", name)),
        ("Cargo.lock".into(), CARGO_LOCK.to_owned()),
        ("src/lib.rs".into(), LIB.replace("{name}", name)),
        ("config.json".into(), CONFIG.to_owned()),
        ("readings.csv".into(), READINGS.to_owned()),
        (".gitignore".into(), GITIGNORE.to_owned()),
        ("molt-policy-sdk/Cargo.toml".into(), SDK_MANIFEST.to_owned()),
        (
            "molt-policy-sdk/wit/policy.wit".into(),
            super::build::POLICY_WIT.to_owned(),
        ),
    ];
    for (path, text) in SDK_SOURCES {
        let text = text.replace(WIT_PATH_IN_REPO, WIT_PATH_IN_COPY);
        files.push((format!("molt-policy-sdk/{path}"), text));
    }
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))?;
    }
    output.report(&NewOutput {
        dir,
        files: files.into_iter().map(|(path, _)| path).collect(),
    })
}
