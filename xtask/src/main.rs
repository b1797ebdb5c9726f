//! Project automation, so that CI and a person run the same thing.
//!
//! ```text
//! cargo xtask demo        install what the build needs (deps), then `molt demo` (the README's first command)
//! cargo xtask crash-sim   run the power-cut simulator (release build)
//! cargo xtask test        the whole test suite (the README's test command)
//! cargo xtask check       format, clippy, docs, no_std build, fuzz compile check
//! cargo xtask ci          `test`, then `check`: what .ci/run does
//! cargo xtask deps        install what the build and tests need if missing: the toolchain's targets, clang, lld, Zig
//! cargo xtask bench       run every benchmark and rewrite docs/benchmarks.md
//! cargo xtask conformance run the tuf-conformance suite (a checkout given) against molt tuf-client
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

mod bench;
mod conformance;
mod setup;

const HELP: &str = "\
cargo xtask <task>

Tasks:
  demo [-- <molt demo arguments>]
              The README's first command: installs what the build needs (the Rust targets
              rust-toolchain.toml lists, clang and lld), then runs `molt demo` from a release
              build (cargo run --release -p molt-cli -- demo).
  crash-sim   Run the power-cut simulator in release mode and print its report line.
              MOLT_CRASH_RUNS=<n> scales it up (default 10000), MOLT_CRASH_SEED=<n>
              picks the seed, MOLT_CRASH_ONLY=<case> replays one failed case.
  test        The whole test suite, the README's test command: installs what the build
              and the tests need (deps), then runs cargo test --workspace and the guest policies'
              native tests.
  check       Format check, clippy with warnings denied (host workspace, and guests for
              wasm32), docs with warnings denied, the no_std build of molt-core and
              molt-protocol for thumbv7em-none-eabihf, and a compile check of the fuzz targets.
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
  deps        Install what the build needs beyond rustup's default toolchain, whatever is
              missing: the targets rust-toolchain.toml lists (rustup target add), and clang
              and lld, which compile the C guest policies in guests-c/ (apt-get, with sudo
              when not root), and for the tests Zig 0.15.2, which compiles the example in
              guests-zig/ (PyPI's ziglang wheel, pip-installed into .tools/zig; MOLT_ZIG
              names another). demo runs the build part first, test and ci all of it.
";

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let outcome = match task.as_deref() {
        Some("crash-sim") => crash_sim(),
        Some("check") => check(),
        Some("demo") => setup::build_deps().and_then(|()| demo(&std::env::args().skip(2).collect::<Vec<_>>())),
        Some("test") => setup::build_deps()
            .and_then(|()| setup::test_deps())
            .and_then(|()| test()),
        Some("ci") => setup::build_deps()
            .and_then(|()| setup::test_deps())
            .and_then(|()| test())
            .and_then(|()| check()),
        Some("deps") => setup::build_deps().and_then(|()| setup::test_deps()),
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

/// `molt demo` in a release build, with `args` passed on.
fn demo(args: &[String]) -> Result<()> {
    let args = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    run(
        "cargo run --release -p molt-cli -- demo",
        cargo()
            .args(["run", "--release", "-p", "molt-cli", "--", "demo"])
            .args(args),
    )
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
        "no_std build of molt-core and molt-protocol for thumbv7em-none-eabihf",
        cargo().args([
            "build",
            "-p",
            "molt-core",
            "-p",
            "molt-protocol",
            "--target",
            "thumbv7em-none-eabihf",
        ]),
    )?;
    run(
        "fuzz targets compile",
        cargo().args(["check", "--manifest-path", "fuzz/Cargo.toml", "--all-targets"]),
    )?;
    Ok(())
}
