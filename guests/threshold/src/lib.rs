//! A threshold alert with hysteresis.
//!
//! Raises an alert when a sensor's value rises above `threshold`, and clears it only once the value falls below `threshold - hysteresis`, so that a value hovering at the threshold does not flap.
//! Each raise and clear is also published as telemetry `threshold.alarm` (1 raised, 0 cleared).
//!
//! Config:
//! - `threshold` (number, required);
//! - `hysteresis` (number ≥ 0, default 0);
//! - `sensor` (sensor id, optional): watch only this sensor; by default every sensor is watched on its own;
//! - `severity` (`info`, `warning` or `critical`, default `warning`): the severity of a raised alert; a clear is always `info`.
//!
//! Readings that are `NaN` or infinite are ignored.

use molt_policy_sdk::{
    Action, Alert, Config, Policy, PolicyError, Reading, SensorMap, Severity, Telemetry, config_error,
};
use serde::{Deserialize, Serialize};

/// The telemetry metric of raises (1) and clears (0).
const ALARM_METRIC: &str = "threshold.alarm";

#[derive(Debug, Serialize, Deserialize)]
struct Threshold {
    #[serde(skip)]
    settings: Settings,
    /// Sensors currently in alarm.
    alarms: SensorMap<Alarm>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Alarm {
    raised_at_ms: u64,
}

#[derive(Debug)]
struct Settings {
    threshold: f64,
    hysteresis: f64,
    sensor: Option<u32>,
    severity: Severity,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            threshold: 0.0,
            hysteresis: 0.0,
            sensor: None,
            severity: Severity::Warning,
        }
    }
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, PolicyError> {
        config.check_keys(&["threshold", "hysteresis", "sensor", "severity"])?;
        let threshold = config.require_f64("threshold")?;
        let hysteresis = config.get_f64("hysteresis")?.unwrap_or(0.0);
        if hysteresis < 0.0 {
            return Err(config_error(
                "hysteresis",
                format_args!("must not be negative, got {hysteresis}"),
            ));
        }
        let severity = match config.get_str("severity") {
            None | Some("warning") => Severity::Warning,
            Some("info") => Severity::Info,
            Some("critical") => Severity::Critical,
            Some(other) => {
                return Err(config_error(
                    "severity",
                    format_args!("expected `info`, `warning` or `critical`, got `{other}`"),
                ));
            }
        };
        Ok(Settings {
            threshold,
            hysteresis,
            sensor: config.get_u32("sensor")?,
            severity,
        })
    }
}

impl Policy for Threshold {
    fn init(config: &Config) -> Result<Self, PolicyError> {
        Ok(Threshold {
            settings: Settings::from_config(config)?,
            alarms: SensorMap::default(),
        })
    }

    fn process(&mut self, batch: &[Reading], actions: &mut Vec<Action>) -> Result<(), PolicyError> {
        let settings = &self.settings;
        let clear_below = settings.threshold - settings.hysteresis;
        for reading in batch {
            let watched = settings.sensor.is_none_or(|sensor| sensor == reading.sensor);
            if !watched || !reading.value.is_finite() {
                continue;
            }
            match self.alarms.get(reading.sensor) {
                None if reading.value > settings.threshold => {
                    self.alarms.insert(
                        reading.sensor,
                        Alarm {
                            raised_at_ms: reading.timestamp_ms,
                        },
                    );
                    let message = format!(
                        "sensor {}: {} rose above threshold {}",
                        reading.sensor, reading.value, settings.threshold
                    );
                    actions.push(Alert::for_reading(reading, settings.severity, message).into());
                    actions.push(Telemetry::for_reading(reading, ALARM_METRIC, 1.0).into());
                }
                Some(alarm) if reading.value < clear_below => {
                    let raised_for_ms = reading.timestamp_ms.saturating_sub(alarm.raised_at_ms);
                    self.alarms.remove(reading.sensor);
                    let message = format!(
                        "sensor {}: {} fell below {clear_below}, cleared after {raised_for_ms} ms",
                        reading.sensor, reading.value
                    );
                    actions.push(Alert::for_reading(reading, Severity::Info, message).into());
                    actions.push(Telemetry::for_reading(reading, ALARM_METRIC, 0.0).into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn reconfigure(&mut self, config: &Config) -> Result<(), PolicyError> {
        self.settings = Settings::from_config(config)?;
        Ok(())
    }
}

molt_policy_sdk::export_policy!(Threshold);

#[cfg(test)]
mod tests;
