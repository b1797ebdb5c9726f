//! Builds the policies in `guests/` for `wasm32-unknown-unknown` with a nested cargo and those in `guests-c/` with clang, wraps each core module into a component, and writes `artifacts.rs` with their bytes.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use wit_bindgen_core::Files;
use wit_bindgen_core::wit_parser::Resolve;
use wit_component::ComponentEncoder;

const TARGET: &str = "wasm32-unknown-unknown";

/// The guest packages built into artifacts, and the doc line of each constant.
/// A new guest is a member of `guests/Cargo.toml` and a line here.
const GUESTS: &[(&str, &str)] = &[
    ("threshold", "A threshold alert with hysteresis (`guests/threshold`)."),
    (
        "moving-average",
        "A per-sensor moving average, downsampled (`guests/moving-average`).",
    ),
    (
        "deadband",
        "Deadband: publishes a value only when it moved (`guests/deadband`).",
    ),
    (
        "sequence-echo",
        "Test policy: echoes each reading's sequence number, traps or fails on demand (`guests/sequence-echo`).",
    ),
    (
        "chaos",
        "Test policy: loops, memory bombs, deep recursion, traps and huge output on demand (`guests/chaos`).",
    ),
];

/// The guest workspace's library, which every guest builds on.
const SDK: &str = "molt-policy-sdk";

/// The C guests: a directory of `.c` files in `guests-c/`, and the doc line of its constant, which is named `<DIRECTORY>_C`.
/// A new C guest is a directory there and a line here.
const C_GUESTS: &[(&str, &str)] = &[(
    "threshold",
    "[`THRESHOLD`] written in C (`guests-c/threshold`): the same config, actions and state bytes.",
)];

/// The C guests' library: the DAG-CBOR state codec, config, number formatting, and the few libc functions they need (`guests-c/sdk`).
const C_SDK: &str = "sdk";

/// The world the C bindings are generated for, from `wit/`.
const WORLD: &str = "policy";

/// How every C guest is compiled and linked: freestanding, with no libc but `guests-c/sdk`'s, so that the core module imports nothing.
const C_FLAGS: &[&str] = &[
    "--target=wasm32-unknown-unknown",
    "-std=c11",
    "-Os",
    "-flto",
    // memory.copy and memory.fill, which rustc also uses for the Rust guests.
    "-mbulk-memory",
    "-ffreestanding",
    "-nostdlib",
    // The host names guest functions and lines in a trap's backtrace from the name section and DWARF line tables.
    "-gline-tables-only",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--no-entry",
    // A stack overflow then runs off the bottom of memory and traps, instead of overwriting static data.
    "-Wl,--stack-first",
    // wasm-ld's default, stated: the deepest frames (number formatting) hold about 5 KiB of big integers.
    "-Wl,-z,stack-size=65536",
];

/// Settings of the outer build that must not reach the nested one:
/// its target directory (whose lock the outer cargo holds while this script runs), its target, profile and flags, and clippy's wrapper.
const OUTER_VARS: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "CLIPPY_ARGS",
    "CLIPPY_CONF_DIR",
];
const OUTER_VAR_PREFIXES: &[&str] = &["CARGO_BUILD_", "CARGO_PROFILE_", "CARGO_TARGET_"];

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    let repo = manifest_dir.join("../..");
    let guests_dir = repo.join("guests");

    rerun_if_changed(&repo.join("wit"));
    rerun_if_changed(&guests_dir.join("Cargo.toml"));
    rerun_if_changed(&guests_dir.join("Cargo.lock"));
    for package in GUESTS.iter().map(|(package, _)| *package).chain([SDK]) {
        rerun_if_changed(&guests_dir.join(package).join("Cargo.toml"));
        rerun_if_changed(&guests_dir.join(package).join("src"));
    }

    let c_dir = repo.join("guests-c");
    rerun_if_changed(&c_dir);

    check_target_installed()?;
    let clang = find_clang()?;
    let target_dir = out_dir.join("target");
    build_guests(&guests_dir, &target_dir)?;

    let mut generated = String::new();
    let mut all = String::new();
    let mut add = |name: &str, constant: &str, doc: &str, core: &[u8]| -> Result<()> {
        let component = componentize(core).with_context(|| format!("making a component of {name}"))?;
        let component_path = out_dir.join(format!("{name}.wasm"));
        fs::write(&component_path, &component).with_context(|| format!("writing {}", component_path.display()))?;
        writeln!(generated, "/// {doc}")?;
        writeln!(
            generated,
            "pub const {constant}: &[u8] = include_bytes!({component_path:?});"
        )?;
        writeln!(all, "    ({name:?}, {constant}),")?;
        Ok(())
    };
    for (package, doc) in GUESTS {
        let snake = package.replace('-', "_");
        let core_path = target_dir.join(TARGET).join("release").join(format!("{snake}.wasm"));
        let core = fs::read(&core_path).with_context(|| format!("reading {}", core_path.display()))?;
        add(package, &snake.to_uppercase(), doc, &core)?;
    }

    let bindings_dir = out_dir.join("c-bindings");
    generate_c_bindings(&repo.join("wit"), &bindings_dir)?;
    for (directory, doc) in C_GUESTS {
        let name = format!("{directory}-c");
        let core_path = out_dir.join(format!("{name}.core.wasm"));
        build_c_guest(&clang, &c_dir, directory, &bindings_dir, &core_path)?;
        let core = fs::read(&core_path).with_context(|| format!("reading {}", core_path.display()))?;
        add(&name, &name.replace('-', "_").to_uppercase(), doc, &core)?;
    }
    writeln!(
        generated,
        "/// Every guest component, by package name, in a fixed order."
    )?;
    writeln!(generated, "pub const ALL: &[(&str, &[u8])] = &[\n{all}];")?;
    fs::write(out_dir.join("artifacts.rs"), generated).context("writing artifacts.rs")?;
    Ok(())
}

fn rerun_if_changed(path: &Path) {
    println!("cargo::rerun-if-changed={}", path.display());
}

/// Fails early, with the fix, when the toolchain lacks the guests' target.
fn check_target_installed() -> Result<()> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = String::from_utf8(output.stdout).context("rustc printed a non-UTF-8 sysroot")?;
    let target_lib = Path::new(sysroot.trim()).join("lib/rustlib").join(TARGET);
    if !target_lib.is_dir() {
        bail!(
            "the Rust target {TARGET} is not installed, and the guest policies are built for it; \
             run `rustup toolchain install` in the repository (rust-toolchain.toml lists the target)"
        );
    }
    Ok(())
}

/// `cargo build --release --target wasm32-unknown-unknown` in `guests/`, in a target directory of its own.
fn build_guests(guests_dir: &Path, target_dir: &Path) -> Result<()> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(guests_dir.join("Cargo.toml"));
    for (package, _) in GUESTS {
        command.arg("--package").arg(package);
    }
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if OUTER_VARS.contains(&key) || OUTER_VAR_PREFIXES.iter().any(|prefix| key.starts_with(prefix)) {
            command.env_remove(key);
        }
    }
    // Set rather than removed: a target-dir in a developer's cargo config would otherwise apply.
    // CARGO_MAKEFLAGS stays: the nested cargo then takes job slots from the outer one instead of starting as many jobs again.
    command
        .env("CARGO_TARGET_DIR", target_dir)
        // Cargo reads a build script's stdout for directives; the nested build's output is for people.
        .stdout(Stdio::from(std::io::stderr()));
    eprintln!("running: {command:?}");
    let status = command.status().context("running cargo for guests/")?;
    if !status.success() {
        bail!("building guests/ failed ({status}); the nested cargo's output is above");
    }
    Ok(())
}

/// clang and lld are Debian packages that `cargo xtask deps` installs; fails with that fix when either is missing.
fn find_clang() -> Result<PathBuf> {
    let install =
        "run `cargo xtask deps` (it installs Debian's clang and lld), or install them with your package manager";
    let clang = PathBuf::from("clang");
    let output = match Command::new(&clang)
        .args(["--target=wasm32-unknown-unknown", "-print-prog-name=wasm-ld"])
        .output()
    {
        Ok(output) if output.status.success() => output,
        Ok(output) => bail!(
            "clang cannot target wasm32 ({}: {}), and the C guest policies in guests-c/ are compiled with it; {install}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => bail!(
            "clang is not installed ({error}), and the C guest policies in guests-c/ are compiled with it; {install}"
        ),
    };
    // clang prints the bare name back when it finds no such program in its own directory or on PATH.
    let wasm_ld = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !wasm_ld.is_absolute() || !wasm_ld.is_file() {
        bail!(
            "wasm-ld (from lld) is not installed, and clang links the C guest policies in guests-c/ with it; {install}"
        );
    }
    Ok(clang)
}

/// Writes the C bindings of the `policy` world (`policy.h`, `policy.c` and `policy_component_type.o`, which carries the world's type into the core module for `wit-component`).
fn generate_c_bindings(wit_dir: &Path, bindings_dir: &Path) -> Result<()> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit_dir)
        .with_context(|| format!("parsing {}", wit_dir.display()))?;
    let world = resolve.select_world(&[package], Some(WORLD))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("generating C bindings")?;
    fs::create_dir_all(bindings_dir).with_context(|| format!("creating {}", bindings_dir.display()))?;
    for (name, contents) in files.iter() {
        let path = bindings_dir.join(name);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Compiles and links one C guest: its `.c` files, the SDK's, and the generated bindings, into a core module.
fn build_c_guest(clang: &Path, c_dir: &Path, directory: &str, bindings_dir: &Path, core_path: &Path) -> Result<()> {
    let sdk_dir = c_dir.join(C_SDK);
    let mut command = Command::new(clang);
    command
        .args(C_FLAGS)
        .arg("-I")
        .arg(sdk_dir.join("include"))
        .arg("-I")
        .arg(bindings_dir);
    for source_dir in [c_dir.join(directory), sdk_dir.join("src")] {
        command.args(c_sources(&source_dir)?);
    }
    command
        .arg(bindings_dir.join(format!("{WORLD}.c")))
        .arg(bindings_dir.join(format!("{WORLD}_component_type.o")))
        .arg("-o")
        .arg(core_path)
        .stdout(Stdio::from(std::io::stderr()));
    eprintln!("running: {command:?}");
    let status = command.status().context("running clang")?;
    if !status.success() {
        bail!("compiling guests-c/{directory} failed ({status}); clang's output is above");
    }
    Ok(())
}

/// The `.c` files of a directory, sorted so that the build does not depend on directory order.
fn c_sources(directory: &Path) -> Result<Vec<PathBuf>> {
    let mut sources = Vec::new();
    for entry in fs::read_dir(directory).with_context(|| format!("reading {}", directory.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|extension| extension == "c") {
            sources.push(path);
        }
    }
    sources.sort();
    Ok(sources)
}

/// Wraps a core module made with `wit-bindgen` into a component, validating it with the wasm-tools release the host uses.
fn componentize(core: &[u8]) -> Result<Vec<u8>> {
    ComponentEncoder::default().module(core)?.validate(true).encode()
}
