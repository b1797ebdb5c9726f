//! molt-core's integration tests: one binary, one module per area.

mod crash_sim;
mod engine;
mod kill;
mod model;
