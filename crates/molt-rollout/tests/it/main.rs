//! molt-rollout's integration tests: one binary (see STYLE.md).

mod controller;
mod scenarios;
