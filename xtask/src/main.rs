//! Project automation, so that CI and a person run the same thing.
//!
//! ```text
//! cargo xtask crash-sim   run the power-cut simulator (release build)
//! cargo xtask test        the whole test suite (the README's test command)
//! cargo xtask check       format, clippy, docs, no_std build, fuzz compile check
//! cargo xtask ci          `test`, then `check`: what .ci/run does
//! cargo xtask deps        install the Debian packages the build needs (clang, lld) if missing
//! cargo xtask bench       run every benchmark and rewrite docs/benchmarks.md
//! cargo xtask conformance run the tuf-conformance suite (a checkout given) against molt tuf-client
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod bench;
mod conformance;

const HELP: &str = "\
cargo xtask <task>

Tasks:
  crash-sim   Run the power-cut simulator in release mode and print its report line.
              MOLT_CRASH_RUNS=<n> scales it up (default 10000), MOLT_CRASH_SEED=<n>
              picks the seed, MOLT_CRASH_ONLY=<case> replays one failed case.
  test        The whole test suite, the README's test command: installs what the build
              needs (deps), then runs cargo test --workspace and the guest policies'
              native tests.
  check       Format check, clippy with warnings denied (host workspace, and guests for
              wasm32), docs with warnings denied, the no_std build of molt-core for
              thumbv7em-none-eabihf, and a compile check of the fuzz targets.
  ci          test, then check: what .ci/run does.
  bench       Run the benchmarks of molt-core, molt-wasm and molt-release (criterion,
              release builds; about 15 minutes on 2 cores) and rewrite docs/benchmarks.md
              with the machine, each figure's value and target, and molt's ratio to a
              baseline measured in the same run (plain wasmtime, tough's TUF loader). --quick: criterion's quick mode.
              --only <package>: that package's suites only, to check their figures parse
              (the page then lists the others as not measured; do not commit it).
  conformance <SUITE_DIR> [-- <pytest arguments>]
              Run the public tuf-conformance suite, checked out at SUITE_DIR (README,
              \"Conformance\"; commit eec841c), against `molt tuf-client`: builds molt,
              finds pytest (MOLT_CONFORMANCE_PYTEST, SUITE_DIR/../tuf-conformance-env or
              SUITE_DIR/.venv), needs faketime. Not part of `test`: the suite comes from
              GitHub and needs Python.
  deps        Install the Debian packages the build needs beyond rustup's toolchain,
              if any is missing: clang and lld, which compile the C guest policies
              in guests-c/ to WebAssembly. Runs apt-get (with sudo when not root).
";

/// Debian packages the build needs beyond rustup's toolchain, each with the command that shows it is installed.
/// `crates/molt-guests` compiles `guests-c/` with clang and links it with lld's `wasm-ld`.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[("clang", "clang"), ("lld", "wasm-ld")];

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let outcome = match task.as_deref() {
        Some("crash-sim") => crash_sim(),
        Some("check") => check(),
        Some("test") => deps().and_then(|()| test()),
        Some("ci") => deps().and_then(|()| test()).and_then(|()| check()),
        Some("deps") => deps(),
        Some("bench") => bench::bench(&std::env::args().skip(2).collect::<Vec<_>>()),
        Some("conformance") => conformance::conformance(&std::env::args().skip(2).collect::<Vec<_>>()),
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

fn deps() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, command)| !command_exists(command))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: deps: all installed ({})", installed_commands());
        return Ok(());
    }
    if !command_exists("apt-get") {
        bail!(
            "missing {}, and this is not a Debian-like system with apt-get: install them with your package manager",
            missing.join(", ")
        );
    }
    let apt_get = || {
        // Not root (a developer's machine): ask sudo; CI runs as root.
        let mut command = if is_root() {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    run("apt-get update", apt_get().arg("update"))?;
    run(
        &format!("apt-get install {}", missing.join(" ")),
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still_missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, command)| !command_exists(command))
        .map(|(_, command)| *command)
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "installed {} but still cannot find {} on PATH",
            missing.join(", "),
            still_missing.join(", ")
        );
    }
    eprintln!("xtask: deps: all installed ({})", installed_commands());
    Ok(())
}

fn installed_commands() -> String {
    DEBIAN_PACKAGES
        .iter()
        .map(|(_, command)| *command)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `command -v`, as the shell finds commands.
fn command_exists(command: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {command} >/dev/null"))
        .status()
        .is_ok_and(|status| status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn test() -> Result<()> {
    run("cargo test --workspace", cargo().args(["test", "--workspace"]))?;
    // The guest SDK and policies are plain Rust: their logic is tested
    // natively, in their own workspace.
    run(
        "guest policies' native tests",
        cargo().args(["test", "--manifest-path", "guests/Cargo.toml", "--workspace"]),
    )
}

fn check() -> Result<()> {
    run("cargo fmt --check", cargo().args(["fmt", "--all", "--check"]))?;
    run(
        "cargo fmt --check (guests)",
        cargo().args(["fmt", "--manifest-path", "guests/Cargo.toml", "--all", "--check"]),
    )?;
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
        "cargo clippy (guests, wasm32)",
        cargo().args([
            "clippy",
            "--manifest-path",
            "guests/Cargo.toml",
            "--workspace",
            "--target",
            "wasm32-unknown-unknown",
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
