//! `cargo xtask conformance <SUITE_DIR>`: run the public tuf-conformance
//! suite against `molt tuf-client`.
//!
//! The suite is not part of `cargo xtask test`: it is another project (from
//! GitHub), needs Python 3.10+ with its dependencies and `faketime`, and
//! runs a real HTTP server per test. Keep a checkout of it outside this
//! repository (README, "Conformance").

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::command_exists;
use crate::{cargo, run, workspace_root};

/// The suite commit the README's count was measured at.
pub(crate) const SUITE_COMMIT: &str = "eec841c186f81f2d9d8d30460c7e7deefa615f9e";

const USAGE: &str = "cargo xtask conformance <SUITE_DIR> [-- <pytest arguments>]";

pub(crate) fn conformance(args: &[String]) -> Result<()> {
    let (suite, pytest_args) = match args.split_first() {
        Some((suite, rest)) if !suite.starts_with('-') => {
            let rest = match rest.split_first() {
                Some((dashes, rest)) if dashes == "--" => rest,
                None => rest,
                Some((other, _)) => bail!("unexpected argument {other:?}: `{USAGE}`"),
            };
            (PathBuf::from(suite), rest)
        }
        _ => bail!("`{USAGE}`: give the path of a tuf-conformance checkout"),
    };
    let suite = suite
        .canonicalize()
        .with_context(|| format!("{} is not a directory", suite.display()))?;
    if !suite.join("tuf_conformance").is_dir() {
        bail!(
            "{} is not a tuf-conformance checkout (no tuf_conformance/); \
             git clone https://github.com/theupdateframework/tuf-conformance",
            suite.display()
        );
    }
    check_commit(&suite);
    if !command_exists("faketime") {
        bail!("the suite runs the client under faketime: apt-get install faketime");
    }
    let pytest = pytest(&suite)?;

    run("cargo build -p molt-cli", cargo().args(["build", "-p", "molt-cli"]))?;
    // The target directory may be shared with other checkouts that build
    // their own `molt`; run a private copy of this build.
    let target = crate::bench::target_dir()?;
    let built = target.join("debug").join("molt");
    let private = target.join("xtask-conformance");
    std::fs::create_dir_all(&private).with_context(|| format!("could not create {}", private.display()))?;
    let binary = private.join(format!("molt-{}", std::process::id()));
    std::fs::copy(&built, &binary).with_context(|| format!("could not copy {}", built.display()))?;

    let entrypoint = workspace_root().join("crates/molt-cli/tuf-conformance/molt-tuf-client");
    let xfails = entrypoint.with_extension("xfails");
    if xfails.exists() {
        eprintln!("xtask: conformance: expected failures listed in {}", xfails.display());
    }
    let mut command = Command::new(&pytest);
    command
        .current_dir(&suite)
        .env("MOLT_BIN", &binary)
        .arg("tuf_conformance")
        .arg("--entrypoint")
        .arg(&entrypoint)
        .args(["-p", "no:cacheprovider"])
        .args(pytest_args);
    let outcome = run(
        &format!(
            "MOLT_BIN={} {} tuf_conformance --entrypoint {} (in {})",
            binary.display(),
            pytest.display(),
            entrypoint.display(),
            suite.display()
        ),
        &mut command,
    );
    let _ = std::fs::remove_file(&binary);
    outcome
}

fn check_commit(suite: &Path) {
    let head = Command::new("git")
        .arg("-C")
        .arg(suite)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    match head {
        Some(head) if head == SUITE_COMMIT => {
            eprintln!("xtask: conformance: suite at {SUITE_COMMIT}, the commit README.md names");
        }
        Some(head) => eprintln!(
            "xtask: conformance: warning: the suite is at {head}, README.md's count is for {SUITE_COMMIT} \
             (git -C {} checkout {SUITE_COMMIT})",
            suite.display()
        ),
        None => eprintln!(
            "xtask: conformance: warning: cannot tell the suite's commit; README.md's count is for {SUITE_COMMIT}"
        ),
    }
}

/// `MOLT_CONFORMANCE_PYTEST`, else a virtual environment beside or inside
/// the checkout (`../tuf-conformance-env`, `.venv`), else `pytest` on PATH.
fn pytest(suite: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MOLT_CONFORMANCE_PYTEST") {
        return Ok(PathBuf::from(path));
    }
    let candidates = [
        suite
            .parent()
            .map(|parent| parent.join("tuf-conformance-env/bin/pytest")),
        Some(suite.join(".venv/bin/pytest")),
    ];
    if let Some(found) = candidates.into_iter().flatten().find(|path| path.is_file()) {
        return Ok(found);
    }
    if command_exists("pytest") {
        return Ok(PathBuf::from("pytest"));
    }
    bail!(
        "no pytest with the suite's dependencies: python3 -m venv {0}/../tuf-conformance-env && \
         {0}/../tuf-conformance-env/bin/pip install -e {0} (or set MOLT_CONFORMANCE_PYTEST)",
        suite.display()
    )
}
