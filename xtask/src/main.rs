//! Project automation, so that CI and a person run the same thing.
//!
//! ```text
//! cargo xtask crash-sim   run the power-cut simulator (release build)
//! cargo xtask check       format, clippy, docs, no_std build, fuzz compile check
//! cargo xtask ci          the README's test command, then `check`: what .ci/run does
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const HELP: &str = "\
cargo xtask <task>

Tasks:
  crash-sim   Run the power-cut simulator in release mode and print its report line.
              MOLT_CRASH_RUNS=<n> scales it up (default 10000), MOLT_CRASH_SEED=<n>
              picks the seed, MOLT_CRASH_ONLY=<case> replays one failed case.
  check       Format check, clippy with warnings denied, docs with warnings denied,
              the no_std build of molt-core for thumbv7em-none-eabihf, and a compile
              check of the fuzz targets.
  ci          The README's test command (cargo test --workspace), then check.
";

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let outcome = match task.as_deref() {
        Some("crash-sim") => crash_sim(),
        Some("check") => check(),
        Some("ci") => test().and_then(|()| check()),
        Some("-h" | "--help" | "help") | None => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprint!("xtask: unknown task {other:?}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

fn run(step: &str, command: &mut Command) -> Result<()> {
    eprintln!("xtask: {step}");
    let status = command.status().with_context(|| format!("could not start: {step}"))?;
    if !status.success() {
        bail!("failed ({status}): {step}");
    }
    Ok(())
}

fn crash_sim() -> Result<()> {
    run(
        "power-cut simulator (cargo run --release -p molt-core --example crash_sim)",
        cargo().args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "molt-core",
            "--features",
            "sim",
            "--example",
            "crash_sim",
        ]),
    )
}

fn test() -> Result<()> {
    run("cargo test --workspace", cargo().args(["test", "--workspace"]))
}

fn check() -> Result<()> {
    run("cargo fmt --check", cargo().args(["fmt", "--all", "--check"]))?;
    run(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "cargo doc",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--all-features"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run(
        "no_std build of molt-core for thumbv7em-none-eabihf",
        cargo().args(["build", "-p", "molt-core", "--target", "thumbv7em-none-eabihf"]),
    )?;
    run(
        "fuzz targets compile",
        cargo().args(["check", "--manifest-path", "fuzz/Cargo.toml", "--all-targets"]),
    )?;
    Ok(())
}
