//! `molt policy build`: a policy crate compiled for wasm32, or a core module
//! from any language, wrapped into a `molt:policy` component with the
//! wasm-tools crates of the release the host's wasmtime uses.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::Serialize;
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

use crate::output::{Output, Report, UsageError, human_bytes};

/// The contract, compiled into this binary from `wit/policy.wit`.
pub(super) const POLICY_WIT: &str = include_str!("../../../../wit/policy.wit");
const WORLD: &str = "policy";
const TARGET: &str = "wasm32-unknown-unknown";

/// Build a policy crate into a component, or wrap a core module made in
/// another language.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
A crate (from `molt policy new`) is built with
  cargo build --release --target wasm32-unknown-unknown
and its core module wrapped into <DIR>/<crate>.wasm.

With --core, a core module from another language is wrapped: if it carries no
component-type section (wit-bindgen adds one; Zig, WAT and hand-written modules
do not), the molt:policy world is embedded first (wasm-tools component embed),
then the module is encoded as a component (wasm-tools component new) and compiled
to check the contract.

Examples:
  molt policy build ./rate
  molt policy build --core rate.core.wasm --output rate.wasm")]
pub(super) struct BuildArgs {
    /// The policy crate's directory [default: .].
    #[arg(value_name = "DIR", conflicts_with = "core")]
    dir: Option<PathBuf>,
    /// Wrap this core module instead of building a crate.
    #[arg(long, value_name = "CORE.wasm")]
    core: Option<PathBuf>,
    /// Where to write the component.
    #[arg(long, short, value_name = "FILE.wasm")]
    output: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct BuildOutput {
    core: PathBuf,
    embedded_world: bool,
    component: PathBuf,
    size_bytes: usize,
}

impl Report for BuildOutput {
    fn human(&self) -> String {
        format!(
            "built {} ({}) from {}{}\nnext: molt policy check {} --config <CONFIG.json>\n",
            self.component.display(),
            human_bytes(self.size_bytes as u64),
            self.core.display(),
            if self.embedded_world {
                ", with the molt:policy world embedded"
            } else {
                ""
            },
            self.component.display()
        )
    }
}

pub(super) fn build(args: BuildArgs, output: &Output) -> anyhow::Result<()> {
    let runtime = super::runtime()?;
    let (core_path, default_output) = match &args.core {
        Some(core) => {
            let stem = core.file_name().and_then(|name| name.to_str()).unwrap_or("policy.wasm");
            let stem = stem.trim_end_matches(".wasm").trim_end_matches(".core");
            (core.clone(), core.with_file_name(format!("{stem}.component.wasm")))
        }
        None => cargo_build(args.dir.as_deref().unwrap_or(Path::new(".")))?,
    };
    let component_path = args.output.clone().unwrap_or(default_output);
    let core = super::read_module(&core_path, &runtime)?;
    let (component, embedded_world) =
        componentize(&core).with_context(|| format!("could not make a policy component of {}", core_path.display()))?;
    // The contract, imports and exports; `init` needs the config, which
    // `molt policy check` takes.
    runtime.compile(&component).map_err(|error| {
        anyhow::anyhow!(
            "{} does not implement molt:policy: {error}; its exports must be the ones docs/policy-authors-guide.md lists",
            core_path.display()
        )
    })?;
    std::fs::write(&component_path, &component)
        .with_context(|| format!("could not write {}", component_path.display()))?;
    output.report(&BuildOutput {
        core: core_path,
        embedded_world,
        component: component_path,
        size_bytes: component.len(),
    })
}

/// Wraps a core module into a component; embeds the `molt:policy` world
/// first when the module carries none. Returns whether it did.
pub(crate) fn componentize(core: &[u8]) -> anyhow::Result<(Vec<u8>, bool)> {
    let mut has_world = false;
    for payload in wasmparser::Parser::new(0).parse_all(core) {
        match payload.context("not a valid WebAssembly module")? {
            wasmparser::Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Module => {
                bail!("it is already a component, not a core module; check it with `molt policy check`")
            }
            wasmparser::Payload::CustomSection(section) if section.name().starts_with("component-type") => {
                has_world = true;
            }
            _ => {}
        }
    }
    let mut module = core.to_vec();
    if !has_world {
        // Without the world, the encoder would make a component that
        // exports nothing.
        let mut resolve = Resolve::default();
        let package = resolve
            .push_str("policy.wit", POLICY_WIT)
            .context("parsing wit/policy.wit")?;
        let world = resolve.select_world(&[package], Some(WORLD))?;
        wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)?;
    }
    let component = ComponentEncoder::default().module(&module)?.validate(true).encode()?;
    Ok((component, !has_world))
}

/// `cargo build --release --target wasm32-unknown-unknown` in `dir`;
/// returns the core module and where its component goes.
fn cargo_build(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(UsageError(format!(
            "{} has no Cargo.toml; give a policy crate's directory (`molt policy new NAME` makes one), or --core FILE",
            dir.display()
        ))
        .into());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        // cargo's progress and errors go to stderr; stdout is for molt's report.
        .stdout(Stdio::piped());
    let result = command.output().context("could not run cargo; is Rust installed?")?;
    if !result.status.success() {
        bail!(
            "cargo build of {} failed ({}); its errors are above. If the target is missing: \
             rustup target add {TARGET}",
            dir.display(),
            result.status
        );
    }
    let mut wasm = None;
    for line in String::from_utf8_lossy(&result.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        for file in message["filenames"].as_array().into_iter().flatten() {
            if let Some(file) = file.as_str().filter(|file| file.ends_with(".wasm")) {
                wasm = Some(PathBuf::from(file));
            }
        }
    }
    let Some(core) = wasm else {
        bail!(
            "cargo built {} but no .wasm came out; the crate needs `crate-type = [\"cdylib\"]` under [lib]",
            dir.display()
        );
    };
    let name = core
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("policy.wasm"));
    Ok((core, dir.join(name)))
}
