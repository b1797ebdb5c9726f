//! molt-release integration tests: one binary, one module per concern.

mod attacks;
mod download;
mod flows;
mod graph;
mod server;
mod tuf;
mod world;
