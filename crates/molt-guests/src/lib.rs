//! The guest policies of `guests/`, built from source and ready to load: each constant holds a WebAssembly component of the `molt:policy` world (`wit/policy.wit`).
//!
//! The build script runs `cargo build --release --target wasm32-unknown-unknown` on `guests/Cargo.toml`, a workspace of its own, in a target directory under `OUT_DIR`, so it never waits on the outer build's lock, and with the outer build's flags, profile and target settings removed.
//! It then turns each core module into a component with `wit-component` (the wasm-tools release the host's wasmtime uses) and validates it.
//! The C policies of `guests-c/` are compiled with clang and linked with `wasm-ld`, freestanding, against C bindings that `wit-bindgen-c` generates from `wit/` during the build, and then made components the same way.
//! The components import nothing, and keep their name section and DWARF line tables so that the host can name the guest functions in a trap's backtrace.
//!
//! | constant | guest | what it does |
//! |---|---|---|
//! | [`THRESHOLD`] | `guests/threshold` | alert above `threshold`, clear below `threshold - hysteresis`, per sensor |
//! | [`MOVING_AVERAGE`] | `guests/moving-average` | mean of the last `window` values, every `every` readings, per sensor |
//! | [`DEADBAND`] | `guests/deadband` | publish a value only when it moved by more than `deadband` |
//! | [`SEQUENCE_ECHO`] | `guests/sequence-echo` | one telemetry per reading with `value = sequence` and `metric = tag`; traps or fails on chosen sequence numbers |
//! | [`CHAOS`] | `guests/chaos` | `mode` = `loop`, `grow`, `recurse`, `trap`, `huge-output`, `nan` or `ok`; `at` = `process`, `init` or `restore`; `batch_over` = misbehave only on batches longer than this |
//! | [`THRESHOLD_C`] | `guests-c/threshold` | [`THRESHOLD`] in C: the same config, actions and snapshot bytes |
//!
//! Each guest's configuration keys are documented in its `src/lib.rs` (a C guest's: at the top of its `.c` file).
//!
//! ```
//! assert!(molt_guests::THRESHOLD.starts_with(b"\0asm"));
//! assert_eq!(molt_guests::ALL.len(), 6);
//! ```
//!
//! Building needs the `wasm32-unknown-unknown` target, which `rust-toolchain.toml` lists: `rustup toolchain install` in the repository adds it.
//! It also needs clang and lld (for `wasm-ld`): `cargo xtask deps` installs Debian's; the build fails, saying so, without them.
#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

#[cfg(test)]
mod tests;
