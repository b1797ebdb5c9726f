//! Shorthands for building actions.

use crate::{Action, Alert, Command, Level, LogLine, Reading, Severity, Telemetry};

impl Telemetry {
    /// Telemetry about `reading`: its sensor and timestamp, with `metric` and `value`.
    pub fn for_reading(reading: &Reading, metric: impl Into<String>, value: f64) -> Self {
        Telemetry {
            sensor: reading.sensor,
            timestamp_ms: reading.timestamp_ms,
            metric: metric.into(),
            value,
        }
    }
}

impl Alert {
    /// An alert about `reading`: its sensor and timestamp, with `severity` and `message`.
    pub fn for_reading(reading: &Reading, severity: Severity, message: impl Into<String>) -> Self {
        Alert {
            sensor: reading.sensor,
            timestamp_ms: reading.timestamp_ms,
            severity,
            message: message.into(),
        }
    }
}

impl LogLine {
    /// A log line at `level`.
    pub fn new(level: Level, message: impl Into<String>) -> Self {
        LogLine {
            level,
            message: message.into(),
        }
    }
}

impl From<Telemetry> for Action {
    fn from(telemetry: Telemetry) -> Self {
        Action::Telemetry(telemetry)
    }
}

impl From<Alert> for Action {
    fn from(alert: Alert) -> Self {
        Action::Alert(alert)
    }
}

impl From<Command> for Action {
    fn from(command: Command) -> Self {
        Action::Command(command)
    }
}

impl From<LogLine> for Action {
    fn from(log_line: LogLine) -> Self {
        Action::Log(log_line)
    }
}
