//! molt-wasm's integration tests, one binary.

mod bad_modules;
mod c_guest;
mod determinism;
mod engines;
mod fixtures;
mod guests;
mod precompiled;
mod rng;
mod swap;
