//! A test policy that misbehaves on demand, for the host's bad-module suite.
//!
//! Config:
//! - `mode` (required):
//!   - `ok`: behaves, emitting nothing;
//!   - `loop`: loops forever (the host's fuel or epoch deadline must stop it);
//!   - `grow`: grows linear memory a page at a time until the host refuses, then allocates until the allocator fails (a memory bomb);
//!   - `recurse`: recurses without bound, on the wasm call stack (the host's stack limit must stop it);
//!   - `trap`: panics, which is a wasm trap;
//!   - `huge-output`: returns `count` log lines from `process` (the host's output limits must stop it);
//!   - `nan`: behaves, but computes NaNs from each batch's readings and keeps their bits in its state (see below), for the host's NaN-canonicalisation test;
//! - `at` (`process`, `init` or `restore`; default `process`): when to misbehave: on every `process` call, in `init`, or in `restore` after the state was decoded;
//! - `count` (integer, default 10000000): how many log lines `huge-output` returns;
//! - `batch_over` (integer, optional): misbehave in `process` only on a batch of more than this many readings, a policy that fails under load.
//!
//! The state is the number of batches processed and, in `nan` mode, `float_bits`: for each reading of the last batch, the bits of `value / value`, `value.sqrt()`, `value + 0.0` and `value * inf`.
//! For a reading of 0, -1, ±inf or NaN some of those are NaNs the engine makes, whose sign and payload depend on the hardware (x86_64's default NaN, `0xfff8…`, is negative; a NaN operand's payload is kept) unless the host canonicalises NaNs.
//! DAG-CBOR cannot hold a NaN, so the state keeps bits, not floats, and only the last batch's, so that it stays bounded by the batch size.
//! Every state field has a default, so `restore` also accepts another policy's snapshot, as a new version of that policy would.

use molt_policy_sdk::{Action, Config, Level, LogLine, Policy, PolicyError, Reading, config_error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Chaos {
    #[serde(skip)]
    settings: Settings,
    #[serde(default)]
    n_batches: u64,
    /// `nan` mode only: the bits the last batch's float operations gave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    float_bits: Vec<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Mode {
    #[default]
    Ok,
    Loop,
    Grow,
    Recurse,
    Trap,
    HugeOutput,
    Nan,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum At {
    #[default]
    Process,
    Init,
    Restore,
}

#[derive(Debug, Default)]
struct Settings {
    mode: Mode,
    at: At,
    count: u64,
    batch_over: Option<u64>,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, PolicyError> {
        config.check_keys(&["mode", "at", "count", "batch_over"])?;
        let mode = match config.require_str("mode")? {
            "ok" => Mode::Ok,
            "loop" => Mode::Loop,
            "grow" => Mode::Grow,
            "recurse" => Mode::Recurse,
            "trap" => Mode::Trap,
            "huge-output" => Mode::HugeOutput,
            "nan" => Mode::Nan,
            other => {
                return Err(config_error(
                    "mode",
                    format_args!(
                        "expected `ok`, `loop`, `grow`, `recurse`, `trap`, `huge-output` or `nan`, got `{other}`"
                    ),
                ));
            }
        };
        let at = match config.get_str("at") {
            None | Some("process") => At::Process,
            Some("init") => At::Init,
            Some("restore") => At::Restore,
            Some(other) => {
                return Err(config_error(
                    "at",
                    format_args!("expected `process`, `init` or `restore`, got `{other}`"),
                ));
            }
        };
        if mode == Mode::HugeOutput && at != At::Process {
            return Err(config_error("at", "`huge-output` only applies to `process`"));
        }
        Ok(Settings {
            mode,
            at,
            count: config.get_u64("count")?.unwrap_or(10_000_000),
            batch_over: config.get_u64("batch_over")?,
        })
    }

    /// Misbehaves as configured if `at` is now; returns only in modes that return.
    fn misbehave(&self, at: At, actions: &mut Vec<Action>) {
        if self.at != at {
            return;
        }
        match self.mode {
            // `nan` changes the state, which `Chaos::process` does.
            Mode::Ok | Mode::Nan => {}
            Mode::Loop => spin(),
            Mode::Grow => grow(),
            Mode::Recurse => {
                std::hint::black_box(recurse(0, std::hint::black_box(u64::MAX)));
            }
            Mode::Trap => panic!("chaos: trap requested"),
            Mode::HugeOutput => {
                for _ in 0..self.count {
                    actions.push(LogLine::new(Level::Debug, String::new()).into());
                }
            }
        }
    }
}

fn spin() -> ! {
    let mut n_spins = 0u64;
    loop {
        n_spins = std::hint::black_box(n_spins.wrapping_add(1));
    }
}

fn grow() -> ! {
    #[cfg(target_arch = "wasm32")]
    while core::arch::wasm32::memory_grow::<0>(1) != usize::MAX {}
    // The host refused to grow: now make the allocator ask for more, which aborts.
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1; 1 << 20]);
        std::hint::black_box(&mut hoard);
    }
}

/// Recurses until the wasm call stack overflows.
///
/// The values kept across the call are wasm locals, which live on the engine's stack, and not in linear memory, so it is the host's stack limit that stops this, not the guest's own shadow stack running into its data.
/// `limit` comes from outside, so the optimiser cannot see the recursion never ends, and the work after the call keeps it from becoming a loop.
#[inline(never)]
fn recurse(depth: u64, limit: u64) -> u64 {
    if depth == limit {
        return depth;
    }
    let mixed = depth.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let rotated = mixed.rotate_left(17);
    recurse(depth + 1, limit) ^ mixed ^ rotated
}

/// The bits of float operations that make NaNs from 0, negative numbers, infinities and NaNs.
/// The operands are readings, unknown when the guest is compiled, so each is an instruction the engine runs, not a constant the compiler folded.
#[allow(clippy::eq_op, reason = "`value / value` is how 0 and infinities make a NaN")]
fn float_bits(value: f64) -> [u64; 4] {
    [
        (value / value).to_bits(),
        value.sqrt().to_bits(),
        // Kept by the compiler, since `-0.0 + 0.0` is `+0.0`; a NaN operand comes back with whatever payload the engine keeps.
        (value + 0.0).to_bits(),
        (value * f64::INFINITY).to_bits(),
    ]
}

impl Policy for Chaos {
    fn init(config: &Config) -> Result<Self, PolicyError> {
        let settings = Settings::from_config(config)?;
        settings.misbehave(At::Init, &mut Vec::new());
        Ok(Chaos {
            settings,
            n_batches: 0,
            float_bits: Vec::new(),
        })
    }

    fn process(&mut self, batch: &[Reading], actions: &mut Vec<Action>) -> Result<(), PolicyError> {
        let loaded = self
            .settings
            .batch_over
            .is_none_or(|batch_over| batch.len() as u64 > batch_over);
        if loaded {
            self.settings.misbehave(At::Process, actions);
        }
        if self.settings.mode == Mode::Nan {
            self.float_bits = batch.iter().flat_map(|reading| float_bits(reading.value)).collect();
        }
        self.n_batches += 1;
        Ok(())
    }

    fn reconfigure(&mut self, config: &Config) -> Result<(), PolicyError> {
        self.settings = Settings::from_config(config)?;
        self.settings.misbehave(At::Restore, &mut Vec::new());
        Ok(())
    }
}

molt_policy_sdk::export_policy!(Chaos);

#[cfg(test)]
mod tests;
