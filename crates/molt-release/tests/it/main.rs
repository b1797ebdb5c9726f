//! molt-release integration tests: one binary, one module per concern.

mod attacks;
mod download;
mod flows;
mod server;
mod world;
