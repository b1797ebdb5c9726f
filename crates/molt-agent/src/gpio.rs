//! The GPIO actuator sink (`[[sink]] kind = "gpio"`): one Linux GPIO line,
//! requested as an output through the GPIO character device
//! (`/dev/gpiochipN`, uAPI v2, by `gpiocdev`). A command drives the line
//! active when its value is not 0, inactive when it is 0 (`active_low`
//! inverts the electrical level). The line is requested inactive when the
//! agent starts and released when it stops.
//!
//! A chip or line that is not there (a HAT not plugged in, a driver that
//! probes late) does not stop the agent by default: it would take the
//! readings, the outbox and the link to the fleet down with one actuator.
//! The sink logs the error once, naming the chip and the line, counts every
//! command it cannot set as failed, and tries to request the line again at
//! most every `reopen_interval_ms`. With `required = true` the agent instead
//! refuses to start with that error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gpiocdev::line::Value;
use serde::Deserialize;

use crate::mqtt_io::SinkCounters;

fn default_reopen_interval_ms() -> u64 {
    10_000
}

fn default_consumer() -> String {
    "molt-agent".into()
}

/// The `[[sink]] kind = "gpio"` section; defaults in `packaging/agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioSinkConfig {
    /// The actuator name commands carry.
    pub actuator: String,
    /// Commands per second, at most; more are dropped and counted.
    pub commands_per_second_max: u32,
    /// The chip: `gpiochip0` or `/dev/gpiochip0`.
    pub chip: String,
    /// The line's offset on the chip.
    pub line: u32,
    /// The line is active low.
    #[serde(default)]
    pub active_low: bool,
    /// Refuse to start when the line cannot be requested.
    #[serde(default)]
    pub required: bool,
    /// How often a line that could not be requested is tried again.
    #[serde(default = "default_reopen_interval_ms")]
    pub reopen_interval_ms: u64,
    /// The consumer label the kernel shows for the line (at most 31 bytes).
    #[serde(default = "default_consumer")]
    pub consumer: String,
}

impl GpioSinkConfig {
    /// The chip's device path.
    pub fn chip_path(&self) -> PathBuf {
        if self.chip.contains('/') {
            PathBuf::from(&self.chip)
        } else {
            PathBuf::from("/dev").join(&self.chip)
        }
    }

    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.actuator.is_empty() {
            return Err("gpio sink: actuator must not be empty".into());
        }
        if self.chip.is_empty() {
            return Err(format!("gpio sink {}: chip must not be empty", self.actuator));
        }
        if self.consumer.is_empty() || self.consumer.len() > 31 {
            return Err(format!("gpio sink {}: consumer must be 1 to 31 bytes", self.actuator));
        }
        if self.reopen_interval_ms == 0 {
            return Err(format!(
                "gpio sink {}: reopen_interval_ms must be at least 1",
                self.actuator
            ));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "gpio sink {}: chip {} line {}",
            self.actuator,
            self.chip_path().display(),
            self.line
        )
    }
}

/// Requests the line as an output, inactive.
fn request(config: &GpioSinkConfig) -> Result<gpiocdev::Request, String> {
    let path = config.chip_path();
    let chip = gpiocdev::Chip::from_path(&path).map_err(|error| format!("{}: {error}", config.describe()))?;
    let info = chip.info().map_err(|error| format!("{}: {error}", config.describe()))?;
    if config.line >= info.num_lines {
        return Err(format!(
            "{}: the chip ({}, {}) has {} lines, 0 to {}",
            config.describe(),
            info.name,
            info.label,
            info.num_lines,
            info.num_lines.saturating_sub(1)
        ));
    }
    let mut builder = gpiocdev::Request::builder();
    builder
        .on_chip(&path)
        .with_consumer(config.consumer.as_str())
        .with_line(config.line)
        .as_output(Value::Inactive);
    if config.active_low {
        builder.as_active_low();
    }
    builder
        .request()
        .map_err(|error| format!("{}: requesting the line as an output: {error}", config.describe()))
}

/// A GPIO line driven by commands.
#[derive(Debug)]
pub struct GpioSink {
    config: GpioSinkConfig,
    line: Option<gpiocdev::Request>,
    tried_at: Instant,
    counters: SinkCounters,
}

impl GpioSink {
    /// Requests the line. Where it cannot be requested: an error if the
    /// sink is `required`, else a sink that logs once, counts its commands
    /// as failed and tries again every `reopen_interval_ms`.
    pub fn start(config: &GpioSinkConfig) -> Result<GpioSink, String> {
        config.check()?;
        let mut sink = GpioSink {
            config: config.clone(),
            line: None,
            tried_at: Instant::now(),
            counters: SinkCounters::default(),
        };
        match request(config) {
            Ok(line) => {
                sink.line = Some(line);
                sink.counters.ready = true;
            }
            Err(error) if config.required => return Err(format!("{error} (required = true)")),
            Err(error) => {
                eprintln!(
                    "molt-agent: {error}; its commands are counted as failed, and the line is requested again every {} ms",
                    config.reopen_interval_ms
                );
                sink.counters.last_error = Some(error);
            }
        }
        Ok(sink)
    }

    /// Drives the line: active for a value other than 0.
    pub fn set(&mut self, value: f64) -> Result<(), String> {
        let result = self.try_set(value);
        match &result {
            Ok(()) => self.counters.delivered += 1,
            Err(error) => {
                self.counters.failed += 1;
                self.counters.last_error = Some(error.clone());
            }
        }
        result
    }

    fn try_set(&mut self, value: f64) -> Result<(), String> {
        if value.is_nan() {
            return Err(format!(
                "{}: a command value of NaN was not set",
                self.config.describe()
            ));
        }
        if self.line.is_none() {
            if self.tried_at.elapsed() < Duration::from_millis(self.config.reopen_interval_ms) {
                return Err(format!(
                    "{}: the line is not held (requested again every reopen_interval_ms={})",
                    self.config.describe(),
                    self.config.reopen_interval_ms
                ));
            }
            self.tried_at = Instant::now();
            let line = request(&self.config)?;
            eprintln!("molt-agent: {}: requested", self.config.describe());
            self.line = Some(line);
            self.counters.ready = true;
        }
        let Some(line) = &self.line else {
            return Err(format!("{}: the line is not held", self.config.describe()));
        };
        let level = if value != 0.0 { Value::Active } else { Value::Inactive };
        if let Err(error) = line.set_value(self.config.line, level) {
            // The chip may be gone: request the line again later.
            self.line = None;
            self.tried_at = Instant::now();
            self.counters.ready = false;
            return Err(format!("{}: setting {level:?}: {error}", self.config.describe()));
        }
        Ok(())
    }

    /// The counters now.
    pub fn counters(&self) -> SinkCounters {
        self.counters.clone()
    }
}
