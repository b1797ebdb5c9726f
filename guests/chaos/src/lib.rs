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
//! - `at` (`process`, `init` or `restore`; default `process`): when to misbehave: on every `process` call, in `init`, or in `restore` after the state was decoded;
//! - `count` (integer, default 10000000): how many log lines `huge-output` returns.
//!
//! The state is the number of batches processed.

use molt_policy_sdk::{Action, Config, Level, LogLine, Policy, PolicyError, Reading, config_error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Chaos {
    #[serde(skip)]
    settings: Settings,
    n_batches: u64,
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
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self, PolicyError> {
        config.check_keys(&["mode", "at", "count"])?;
        let mode = match config.require_str("mode")? {
            "ok" => Mode::Ok,
            "loop" => Mode::Loop,
            "grow" => Mode::Grow,
            "recurse" => Mode::Recurse,
            "trap" => Mode::Trap,
            "huge-output" => Mode::HugeOutput,
            other => {
                return Err(config_error(
                    "mode",
                    format_args!("expected `ok`, `loop`, `grow`, `recurse`, `trap` or `huge-output`, got `{other}`"),
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
        })
    }

    /// Misbehaves as configured if `at` is now; returns only in modes that return.
    fn misbehave(&self, at: At, actions: &mut Vec<Action>) {
        if self.at != at {
            return;
        }
        match self.mode {
            Mode::Ok => {}
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

impl Policy for Chaos {
    fn init(config: &Config) -> Result<Self, PolicyError> {
        let settings = Settings::from_config(config)?;
        settings.misbehave(At::Init, &mut Vec::new());
        Ok(Chaos { settings, n_batches: 0 })
    }

    fn process(&mut self, _batch: &[Reading], actions: &mut Vec<Action>) -> Result<(), PolicyError> {
        self.settings.misbehave(At::Process, actions);
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
