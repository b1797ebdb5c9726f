//! Deadband: publish a sensor's value only when it has moved.
//!
//! Publishes a reading as telemetry `<metric>` when it is the sensor's first, or when it differs from the value last published for that sensor by more than `deadband`.
//! Repeated and jittering values are dropped, so a slowly changing signal costs almost no uplink.
//!
//! Config:
//! - `deadband` (number ≥ 0, required): 0 drops exact repeats only;
//! - `metric` (text, default `value`): the published metric.
//!
//! Readings that are `NaN` or infinite are ignored.

use molt_policy_sdk::{Action, Config, Policy, PolicyError, Reading, SensorMap, Telemetry, config_error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Deadband {
    #[serde(skip)]
    settings: Settings,
    /// The value last published, per sensor.
    published: SensorMap<f64>,
}

#[derive(Debug, Default)]
struct Settings {
    deadband: f64,
    metric: String,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, PolicyError> {
        config.check_keys(&["deadband", "metric"])?;
        let deadband = config.require_f64("deadband")?;
        if deadband < 0.0 {
            return Err(config_error(
                "deadband",
                format_args!("must not be negative, got {deadband}"),
            ));
        }
        Ok(Settings {
            deadband,
            metric: config.get_str("metric").unwrap_or("value").to_owned(),
        })
    }
}

impl Policy for Deadband {
    fn init(config: &Config) -> Result<Self, PolicyError> {
        Ok(Deadband {
            settings: Settings::from_config(config)?,
            published: SensorMap::default(),
        })
    }

    fn process(&mut self, batch: &[Reading], actions: &mut Vec<Action>) -> Result<(), PolicyError> {
        for reading in batch {
            if !reading.value.is_finite() {
                continue;
            }
            let moved = match self.published.get(reading.sensor) {
                None => true,
                Some(last) => (reading.value - last).abs() > self.settings.deadband,
            };
            if moved {
                self.published.insert(reading.sensor, reading.value);
                actions.push(Telemetry::for_reading(reading, &self.settings.metric, reading.value).into());
            }
        }
        Ok(())
    }

    fn reconfigure(&mut self, config: &Config) -> Result<(), PolicyError> {
        self.settings = Settings::from_config(config)?;
        Ok(())
    }
}

molt_policy_sdk::export_policy!(Deadband);

#[cfg(test)]
mod tests;
