//! A per-sensor moving average, downsampled.
//!
//! Keeps each sensor's last `window` values and, on every `every`-th reading of that sensor, publishes their mean as telemetry `<metric>.avg`.
//! With `every = window` it downsamples to one value per window; with `every = 1` it smooths every reading.
//!
//! Config:
//! - `window` (integer from 1 to 4096, required): how many of a sensor's latest values are averaged;
//! - `every` (integer ≥ 1, default 1): publish on every `every`-th reading of a sensor;
//! - `metric` (text, default `value`): the published metric is `<metric>.avg`.
//!
//! A restore under a smaller `window` keeps each sensor's newest values.
//! Readings that are `NaN` or infinite are ignored and do not count towards `every`.

use std::collections::VecDeque;

use molt_policy_sdk::{Action, Config, Policy, PolicyError, Reading, SensorMap, Telemetry, config_error};
use serde::{Deserialize, Serialize};

/// The largest `window`: bounds the state to 32 KiB per sensor.
const WINDOW_MAX: u32 = 4096;

#[derive(Debug, Serialize, Deserialize)]
struct MovingAverage {
    #[serde(skip)]
    settings: Settings,
    sensors: SensorMap<Ring>,
}

/// One sensor's latest values, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ring {
    values: VecDeque<f64>,
    /// Readings since the last publication.
    since_published: u32,
}

#[derive(Debug, Default)]
struct Settings {
    window: usize,
    every: u32,
    /// `<metric>.avg`.
    metric_avg: String,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, PolicyError> {
        config.check_keys(&["window", "every", "metric"])?;
        let window = config.require_u32("window")?;
        if !(1..=WINDOW_MAX).contains(&window) {
            return Err(config_error(
                "window",
                format_args!("must be from 1 to {WINDOW_MAX}, got {window}"),
            ));
        }
        let every = config.get_u32("every")?.unwrap_or(1);
        if every == 0 {
            return Err(config_error("every", "must be at least 1"));
        }
        let metric = config.get_str("metric").unwrap_or("value");
        Ok(Settings {
            window: window as usize,
            every,
            metric_avg: format!("{metric}.avg"),
        })
    }
}

impl Policy for MovingAverage {
    fn init(config: &Config) -> Result<Self, PolicyError> {
        Ok(MovingAverage {
            settings: Settings::from_config(config)?,
            sensors: SensorMap::default(),
        })
    }

    fn process(&mut self, batch: &[Reading], actions: &mut Vec<Action>) -> Result<(), PolicyError> {
        let settings = &self.settings;
        for reading in batch {
            if !reading.value.is_finite() {
                continue;
            }
            let ring = self.sensors.get_or_insert_with(reading.sensor, Ring::default);
            if ring.values.len() == settings.window {
                ring.values.pop_front();
            }
            ring.values.push_back(reading.value);
            ring.since_published += 1;
            if ring.since_published >= settings.every {
                ring.since_published = 0;
                let mean = ring.values.iter().sum::<f64>() / ring.values.len() as f64;
                actions.push(Telemetry::for_reading(reading, &settings.metric_avg, mean).into());
            }
        }
        Ok(())
    }

    fn reconfigure(&mut self, config: &Config) -> Result<(), PolicyError> {
        let settings = Settings::from_config(config)?;
        for ring in self.sensors.values_mut() {
            let excess = ring.values.len().saturating_sub(settings.window);
            ring.values.drain(..excess);
        }
        self.settings = settings;
        Ok(())
    }
}

molt_policy_sdk::export_policy!(MovingAverage);

#[cfg(test)]
mod tests;
