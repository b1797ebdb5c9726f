//! The local action log: every action a policy delivered, and every swap,
//! commit and revert, as one JSON object per line.
//!
//! The log is bounded by [`DeviceConfig::log_bytes_max`](crate::DeviceConfig::log_bytes_max):
//! when the next line would pass it, the file is renamed to `<name>.1`
//! (replacing the previous one) and a new file is started.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use molt_wasm::{Action, Level, Severity, SwapEvent};
use serde::Serialize;

use crate::error::DeviceError;

/// One line of the log.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Line<'a> {
    Telemetry {
        batch: u64,
        policy: &'a str,
        version: &'a str,
        sensor: u32,
        timestamp_ms: u64,
        metric: &'a str,
        value: f64,
    },
    Alert {
        batch: u64,
        policy: &'a str,
        version: &'a str,
        sensor: u32,
        timestamp_ms: u64,
        severity: &'static str,
        message: &'a str,
    },
    Command {
        batch: u64,
        policy: &'a str,
        version: &'a str,
        actuator: &'a str,
        value: f64,
    },
    Log {
        batch: u64,
        policy: &'a str,
        version: &'a str,
        level: &'static str,
        message: &'a str,
    },
    Event {
        batch: u64,
        policy: &'a str,
        event: &'static str,
        detail: String,
    },
    Unprocessed {
        batch: u64,
        policy: &'a str,
        readings: usize,
        error: String,
    },
    Installed {
        release_version: u64,
        security_counter: u64,
        agent_version: &'a str,
    },
}

impl<'a> Line<'a> {
    pub(crate) fn action(batch: u64, policy: &'a str, version: &'a str, action: &'a Action) -> Line<'a> {
        match action {
            Action::Telemetry(telemetry) => Line::Telemetry {
                batch,
                policy,
                version,
                sensor: telemetry.sensor,
                timestamp_ms: telemetry.timestamp_ms,
                metric: &telemetry.metric,
                value: telemetry.value,
            },
            Action::Alert(alert) => Line::Alert {
                batch,
                policy,
                version,
                sensor: alert.sensor,
                timestamp_ms: alert.timestamp_ms,
                severity: match alert.severity {
                    Severity::Info => "info",
                    Severity::Warning => "warning",
                    Severity::Critical => "critical",
                },
                message: &alert.message,
            },
            Action::Command(command) => Line::Command {
                batch,
                policy,
                version,
                actuator: &command.actuator,
                value: command.value,
            },
            Action::Log(line) => Line::Log {
                batch,
                policy,
                version,
                level: match line.level {
                    Level::Debug => "debug",
                    Level::Info => "info",
                    Level::Warn => "warn",
                    Level::Error => "error",
                },
                message: &line.message,
            },
        }
    }

    pub(crate) fn event(batch: u64, policy: &'a str, event: &SwapEvent) -> Line<'a> {
        let (event, detail) = match event {
            SwapEvent::Swapped { from, to, latency } => ("swapped", format!("{from} -> {to} in {latency:?}")),
            SwapEvent::SwapRefused { version, error } => ("swap_refused", format!("{version}: {error}")),
            SwapEvent::Committed { version } => ("committed", version.clone()),
            SwapEvent::Reverted { from, to, error } => ("reverted", format!("{from} -> {to}: {error}")),
            SwapEvent::Recovered { version, error } => ("recovered", format!("{version}: {error}")),
            other => ("other", format!("{other:?}")),
        };
        Line::Event {
            batch,
            policy,
            event,
            detail,
        }
    }
}

/// An append-only JSON-lines file with one rotation.
#[derive(Debug)]
pub(crate) struct ActionLog {
    path: PathBuf,
    file: BufWriter<File>,
    size_bytes: u64,
    size_bytes_max: u64,
    line: Vec<u8>,
}

impl ActionLog {
    pub(crate) fn open(path: &Path, size_bytes_max: u64) -> Result<ActionLog, DeviceError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(DeviceError::io("open log", path))?;
        let size_bytes = file.metadata().map_err(DeviceError::io("stat log", path))?.len();
        Ok(ActionLog {
            path: path.to_owned(),
            file: BufWriter::new(file),
            size_bytes,
            size_bytes_max,
            line: Vec::new(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn append(&mut self, line: &Line<'_>) -> Result<(), DeviceError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, line).map_err(|error| DeviceError::Io {
            operation: "encode log line",
            path: self.path.clone(),
            source: error.into(),
        })?;
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        if self.size_bytes > 0 && self.size_bytes + len > self.size_bytes_max {
            self.rotate()?;
        }
        self.file
            .write_all(&self.line)
            .map_err(DeviceError::io("append to log", &self.path))?;
        self.size_bytes += len;
        Ok(())
    }

    /// Hands buffered lines to the operating system. The log is a record for
    /// people, not a commit point, so it is not fsynced.
    pub(crate) fn flush(&mut self) -> Result<(), DeviceError> {
        self.file.flush().map_err(DeviceError::io("write log", &self.path))
    }

    fn rotate(&mut self) -> Result<(), DeviceError> {
        self.flush()?;
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(".1");
        std::fs::rename(&self.path, &rotated).map_err(DeviceError::io("rotate log", &self.path))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(DeviceError::io("open log", &self.path))?;
        self.file = BufWriter::new(file);
        self.size_bytes = 0;
        Ok(())
    }
}
