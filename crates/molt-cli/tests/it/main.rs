//! molt-cli integration tests: the built `molt` binary, one module per
//! command area, in one test binary.

mod cli;
mod demo;
mod fleet;
mod policy;
