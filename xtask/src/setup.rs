//! What the build needs beyond rustup's default toolchain, installed by the project itself so that the
//! README's commands work on a fresh machine:
//!
//! - the Rust targets `rust-toolchain.toml` lists (rustup installs a pinned toolchain's targets only when it
//!   installs the toolchain itself, not when the toolchain is already there);
//! - Debian's clang and lld, which compile and link the C guest policies;
//! - for the test suite only, Zig, which compiles the example policy in `guests-zig/`: PyPI's `ziglang` wheel,
//!   installed with pip into `.tools/zig` in the checkout, not onto the system (the wheel is the official Zig
//!   release, and pip and Python are on more machines than any Zig package).
//!
//! Each step checks first and installs only what is missing, so a second run costs a few process starts.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{run, workspace_root};

/// Debian packages the build needs beyond rustup's toolchain, each with the command that shows it is installed.
/// `crates/molt-guests` compiles `guests-c/` with clang and links it with lld's `wasm-ld`.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[("clang", "clang"), ("lld", "wasm-ld")];

/// Everything both README commands need: the toolchain's targets and the Debian packages.
pub(crate) fn build_deps() -> Result<()> {
    targets()?;
    debian_packages()
}

/// The targets of `rust-toolchain.toml` that the toolchain lacks, added with `rustup target add`.
fn targets() -> Result<()> {
    let root = workspace_root();
    let toolchain_file = root.join("rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&toolchain_file).with_context(|| format!("reading {}", toolchain_file.display()))?;
    let channel = toml_string(&text, "channel")
        .with_context(|| format!("{} has no channel = \"...\" line", toolchain_file.display()))?;
    let wanted = toml_list(&text, "targets");
    let sysroot = rustc_sysroot()?;
    let missing: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|target| !sysroot.join("lib/rustlib").join(target).is_dir())
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: deps: Rust targets installed ({})", wanted.join(", "));
        return Ok(());
    }
    if !command_exists("rustup") {
        bail!(
            "the Rust targets {} are missing and rustup is not installed to add them; install them for toolchain {channel} \
             with your Rust distribution",
            missing.join(", ")
        );
    }
    run(
        &format!(
            "rustup target add --toolchain {channel} {} (rust-toolchain.toml lists them)",
            missing.join(" ")
        ),
        Command::new("rustup")
            .args(["target", "add", "--toolchain", &channel])
            .args(&missing)
            .current_dir(&root),
    )
}

/// The sysroot of the toolchain cargo runs this workspace with.
fn rustc_sysroot() -> Result<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .current_dir(workspace_root())
        .output()
        .context("running rustc --print sysroot")?;
    if !output.status.success() {
        bail!(
            "rustc --print sysroot failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(PathBuf::from(
        String::from_utf8(output.stdout).context("non-UTF-8 sysroot")?.trim(),
    ))
}

/// `key = "value"` in a flat TOML file.
fn toml_string(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once('=')?;
        (name.trim() == key).then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// `key = ["a", "b"]` on one line in a flat TOML file.
fn toml_list(text: &str, key: &str) -> Vec<String> {
    toml_string(text, key)
        .map(|value| {
            value
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|item| item.trim().trim_matches('"').to_owned())
                .filter(|item| !item.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The Zig release `guests-zig/` is written for (Zig's standard library still changes between releases).
const ZIG_VERSION: &str = "0.15.2";

/// What the test suite needs beyond the build: Zig, unless `MOLT_ZIG` names one.
pub(crate) fn test_deps() -> Result<()> {
    if let Some(zig) = std::env::var_os("MOLT_ZIG") {
        eprintln!("xtask: deps: Zig from MOLT_ZIG ({})", PathBuf::from(zig).display());
        return Ok(());
    }
    zig()
}

/// PyPI's `ziglang` wheel, pinned to [`ZIG_VERSION`], installed with pip into `.tools/zig`, where
/// `crates/molt-cli/tests/it/policy.rs` looks for it.
fn zig() -> Result<()> {
    let dir = workspace_root().join(".tools/zig");
    let zig = dir.join("ziglang/zig");
    let installed = dir.join(format!("ziglang-{ZIG_VERSION}.dist-info"));
    if installed.is_dir() && zig.is_file() {
        eprintln!("xtask: deps: Zig {ZIG_VERSION} installed ({})", zig.display());
        return Ok(());
    }
    let Some(python) = ["python3", "python"].into_iter().find(|python| command_exists(python)) else {
        bail!(
            "the test suite builds guests-zig/ with Zig {ZIG_VERSION}, which `cargo xtask deps` installs from PyPI with pip, \
             but there is no python3: install python3 and python3-pip, or set MOLT_ZIG to a zig {ZIG_VERSION} binary"
        );
    };
    run(
        &format!("{python} -m pip install --target .tools/zig ziglang=={ZIG_VERSION} (Zig, for guests-zig/)"),
        Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", "--target"])
            .arg(&dir)
            .arg(format!("ziglang=={ZIG_VERSION}"))
            .env("PIP_ROOT_USER_ACTION", "ignore"),
    )
    .with_context(|| {
        format!(
            "installing Zig {ZIG_VERSION} from PyPI (if {python} has no pip: install python3-pip, or set MOLT_ZIG to a zig \
             {ZIG_VERSION} binary)"
        )
    })?;
    if !zig.is_file() {
        bail!(
            "pip installed ziglang=={ZIG_VERSION} but {} is not there",
            zig.display()
        );
    }
    eprintln!("xtask: deps: Zig {ZIG_VERSION} installed ({})", zig.display());
    Ok(())
}

/// clang and lld from apt-get, if either is missing.
pub(crate) fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, command)| !command_exists(command))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: deps: Debian packages installed ({})", installed_commands());
        return Ok(());
    }
    apt_get_install(&missing)?;
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
    eprintln!("xtask: deps: Debian packages installed ({})", installed_commands());
    Ok(())
}

fn apt_get_install(packages: &[&str]) -> Result<()> {
    if !command_exists("apt-get") {
        bail!(
            "missing {}, and this is not a Debian-like system with apt-get: install them with your package manager",
            packages.join(", ")
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
        &format!("apt-get install {}", packages.join(" ")),
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages),
    )
}

fn installed_commands() -> String {
    DEBIAN_PACKAGES
        .iter()
        .map(|(_, command)| *command)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `command -v`, as the shell finds commands.
pub(crate) fn command_exists(command: &str) -> bool {
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
