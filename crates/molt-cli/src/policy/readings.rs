//! Readings from a file, for `molt policy run` and `swap`: CSV with a
//! header, or JSON lines.

use std::path::PathBuf;

use anyhow::{Context, bail};
use molt_wasm::{Reading, Runtime};
use serde::Deserialize;

use crate::output::UsageError;

/// Upper bound on a readings file (`readings_bytes_max`).
const READINGS_BYTES_MAX: u64 = 64 << 20;

#[derive(Debug, clap::Args)]
pub(super) struct Input {
    /// Readings: CSV with a header (`sensor,timestamp_ms,value[,sequence]`) or
    /// JSON lines.
    #[arg(long, value_name = "FILE")]
    readings: PathBuf,
    /// Readings per batch, from 1 to the runtime's batch_readings_max (4096).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(super) batch: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonReading {
    sequence: Option<u64>,
    sensor: u32,
    timestamp_ms: u64,
    value: f64,
}

impl Input {
    /// The readings, checked: sequence numbers strictly increasing, batch
    /// size within the runtime's limit.
    pub(super) fn load(&self, runtime: &Runtime) -> anyhow::Result<Vec<Reading>> {
        let limit = runtime.limits().batch_readings_max;
        if self.batch == 0 || self.batch > limit {
            return Err(UsageError(format!(
                "--batch {} is outside 1 to {limit} (batch_readings_max)",
                self.batch
            ))
            .into());
        }
        let shown = self.readings.display();
        let bytes = crate::preflight::read_bounded(&self.readings, READINGS_BYTES_MAX, "readings_bytes_max")?;
        let text = String::from_utf8(bytes).with_context(|| format!("{shown} is not UTF-8 text"))?;
        let first = text.lines().find(|line| !line.trim().is_empty()).unwrap_or("");
        let readings = if first.trim_start().starts_with('{') {
            json_lines(&text).with_context(|| format!("{shown} is not JSON lines of readings"))?
        } else {
            csv(&text).with_context(|| format!("{shown} is not CSV of readings"))?
        };
        if readings.is_empty() {
            bail!("{shown} holds no readings");
        }
        for pair in readings.windows(2) {
            if pair[1].sequence <= pair[0].sequence {
                bail!(
                    "{shown}: sequence {} follows {}; sequence numbers must strictly increase",
                    pair[1].sequence,
                    pair[0].sequence
                );
            }
        }
        Ok(readings)
    }
}

fn json_lines(text: &str) -> anyhow::Result<Vec<Reading>> {
    let mut readings = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let reading: JsonReading = serde_json::from_str(line).with_context(|| {
            format!(
                "line {}: expected {{\"sensor\": 1, \"timestamp_ms\": 0, \"value\": 21.5}} (sequence optional)",
                index + 1
            )
        })?;
        readings.push(Reading {
            sequence: reading.sequence.unwrap_or(readings.len() as u64),
            sensor: reading.sensor,
            timestamp_ms: reading.timestamp_ms,
            value: reading.value,
        });
    }
    Ok(readings)
}

fn csv(text: &str) -> anyhow::Result<Vec<Reading>> {
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let column = |name: &str| columns.iter().position(|column| *column == name);
    let (Some(sensor), Some(timestamp), Some(value)) = (column("sensor"), column("timestamp_ms"), column("value"))
    else {
        bail!("the header `{header}` must name the columns sensor, timestamp_ms and value (and optionally sequence)");
    };
    let sequence = column("sequence");
    let mut readings = Vec::new();
    for (index, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != columns.len() {
            bail!(
                "line {}: {} fields, the header has {}",
                index + 1,
                fields.len(),
                columns.len()
            );
        }
        let at = |column: usize, name: &str| -> anyhow::Result<&str> {
            fields
                .get(column)
                .copied()
                .with_context(|| format!("line {}: no {name}", index + 1))
        };
        let number = |column: usize, name: &str| -> anyhow::Result<u64> {
            let text = at(column, name)?;
            text.parse()
                .with_context(|| format!("line {}: {name} `{text}` is not a whole number", index + 1))
        };
        let value_text = at(value, "value")?;
        readings.push(Reading {
            sequence: match sequence {
                Some(column) => number(column, "sequence")?,
                None => readings.len() as u64,
            },
            sensor: u32::try_from(number(sensor, "sensor")?)
                .with_context(|| format!("line {}: sensor is over 2^32", index + 1))?,
            timestamp_ms: number(timestamp, "timestamp_ms")?,
            value: value_text
                .parse()
                .with_context(|| format!("line {}: value `{value_text}` is not a number", index + 1))?,
        });
    }
    Ok(readings)
}
