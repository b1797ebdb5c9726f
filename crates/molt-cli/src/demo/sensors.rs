//! Simulated sensors: temperature and humidity, streamed in real time from
//! their own thread, every reading numbered.
//!
//! Even sensor ids measure temperature in °C, odd ones relative humidity as
//! a fraction (0.0 to 1.0). Values follow slow per-sensor waves with a
//! little deterministic noise, so temperatures cross a threshold around 30 °C
//! now and then. Readings carry one global sequence number, from 1, in the
//! order they are produced: that number is what proves, at the end, that
//! each reading was processed exactly once and in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use molt_wasm::Reading;

/// How the sensors run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SensorConfig {
    /// Sensors, half temperature and half humidity.
    pub(crate) sensors: u32,
    /// Readings per second per sensor.
    pub(crate) rate_hz: u32,
    /// Wall-clock time of the first tick, in Unix milliseconds.
    pub(crate) start_unix_ms: u64,
}

/// Ticks the channel holds before the sensor thread waits for the device:
/// a minute of readings. The sensors never drop a reading; if the device
/// fell a minute behind, they would fall behind real time instead.
const QUEUED_TICKS_MAX_SECONDS: usize = 60;

/// The running sensor thread.
pub(crate) struct Sensors {
    readings: Receiver<Vec<Reading>>,
    stop: Arc<AtomicBool>,
    burst: Arc<AtomicU32>,
    thread: Option<JoinHandle<u64>>,
}

impl Sensors {
    pub(crate) fn start(config: SensorConfig) -> anyhow::Result<Sensors> {
        let capacity = (config.rate_hz as usize).max(1) * QUEUED_TICKS_MAX_SECONDS;
        let (sender, readings) = std::sync::mpsc::sync_channel(capacity);
        let stop = Arc::new(AtomicBool::new(false));
        let burst = Arc::new(AtomicU32::new(0));
        let thread = std::thread::Builder::new()
            .name("molt-demo-sensors".into())
            .spawn({
                let stop = Arc::clone(&stop);
                let burst = Arc::clone(&burst);
                move || run(config, &sender, &stop, &burst)
            })
            .context("could not start the sensor thread")?;
        Ok(Sensors {
            readings,
            stop,
            burst,
            thread: Some(thread),
        })
    }

    /// Every reading produced so far.
    pub(crate) fn drain(&self, into: &mut Vec<Reading>) {
        loop {
            match self.readings.try_recv() {
                Ok(tick) => into.extend(tick),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// On the next tick, each sensor reports `per_sensor` extra readings at
    /// once: a load spike.
    pub(crate) fn burst(&self, per_sensor: u32) {
        self.burst.fetch_add(per_sensor, Ordering::Relaxed);
    }

    /// Stops the thread and returns how many readings it produced; the
    /// last of them are still in the channel for `drain`.
    pub(crate) fn stop(&mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| anyhow::anyhow!("the sensor thread panicked")),
            None => Ok(0),
        }
    }
}

impl Drop for Sensors {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run(config: SensorConfig, sender: &SyncSender<Vec<Reading>>, stop: &AtomicBool, burst: &AtomicU32) -> u64 {
    let period = Duration::from_secs(1) / config.rate_hz.max(1);
    let started = Instant::now();
    let mut sequence = 0u64;
    let mut tick = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = started + period * u32::try_from(tick).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
            continue;
        }
        let extra = burst.swap(0, Ordering::Relaxed);
        let elapsed_ms = tick * 1000 / u64::from(config.rate_hz.max(1));
        let timestamp_ms = config.start_unix_ms + elapsed_ms;
        let mut readings = Vec::with_capacity(config.sensors as usize * (1 + extra as usize));
        for sample in 0..=extra {
            for sensor in 0..config.sensors {
                sequence += 1;
                readings.push(Reading {
                    sequence,
                    sensor,
                    timestamp_ms,
                    value: value(sensor, elapsed_ms, sample),
                });
            }
        }
        if sender.send(readings).is_err() {
            break;
        }
        tick += 1;
    }
    sequence
}

/// A sensor's value at `elapsed_ms`.
fn value(sensor: u32, elapsed_ms: u64, sample: u32) -> f64 {
    let seconds = elapsed_ms as f64 / 1000.0 + f64::from(sample) * 0.001;
    let period_s = 4.0 + f64::from(sensor % 7);
    let wave = (std::f64::consts::TAU * seconds / period_s + f64::from(sensor)).sin();
    let noise = noise(sensor, elapsed_ms, sample);
    if sensor.is_multiple_of(2) {
        25.0 + 6.5 * wave + 0.4 * noise
    } else {
        0.55 + 0.15 * wave + 0.01 * noise
    }
}

/// Deterministic noise in [-1, 1] (splitmix64 of the inputs).
fn noise(sensor: u32, elapsed_ms: u64, sample: u32) -> f64 {
    let mut x = (u64::from(sensor) << 48) ^ elapsed_ms ^ (u64::from(sample) << 32);
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}
