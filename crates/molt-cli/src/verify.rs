//! `molt verify`: what a device would install from a repository, verified
//! end to end exactly as the device verifies it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use molt_release::client::{Client, ClientLimits, Fetched, Installed, UpdateError};
use molt_release::download::Source;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::output::{Output, Report, UsageError, human_bytes};
use crate::release::{AgentSummary, PolicySummary, ReleaseSummary};

/// Fetch and verify the newest release set, and print what would be
/// installed.
///
/// Runs the device's update check: TUF metadata from the pinned root
/// (following root rotations), molt's release rules (hardware class, no
/// downgrade, contract, minimum agent version), then downloads every part
/// and checks its length and sha256. Nothing is installed. A fresh
/// temporary trusted directory is used unless --trusted is given; like a
/// device, a kept trusted directory takes in freshly verified metadata only
/// when there is nothing newer to install.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
SOURCE is a published repository: a directory (a workspace's public/) or an
http:// or https:// URL serving one.

Exit codes: 0 the newest release verified (or nothing newer than the installed
one), 1 anything was refused or failed, 2 usage error.

Examples:
  molt verify --root root.json ./repo/public
  molt verify --root root.json --hardware-class rpi4 http://updates.example.com/
  molt verify --root root.json --hardware-class rpi4 \\
      --installed-release 3 --installed-counter 2 --agent-version 1.2.0 ./repo/public
  molt --json verify --root root.json ./repo/public | jq .install")]
pub(crate) struct Args {
    /// The root metadata to trust (`molt keys root <KEYS> --output root.json`);
    /// required unless --trusted is an initialised trusted directory.
    #[arg(long, value_name = "ROOT.JSON")]
    root: Option<PathBuf>,
    /// The device's hardware class: which agent image would be installed.
    #[arg(long, value_name = "CLASS")]
    hardware_class: Option<String>,
    /// Version of the release set the device has committed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    installed_release: u64,
    /// Security counter the device has committed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    installed_counter: u64,
    /// The device's running agent version [default: not checked: the
    /// device is assumed to meet the set's minimum agent version].
    #[arg(long, value_name = "X.Y.Z", value_parser = crate::release::parse_version)]
    agent_version: Option<String>,
    /// A trusted directory to use and keep, as a device would (initialised
    /// from --root when new or empty).
    #[arg(long, value_name = "DIR")]
    trusted: Option<PathBuf>,
    /// Keep the verified parts here instead of in a temporary directory.
    #[arg(long, value_name = "DIR")]
    download_dir: Option<PathBuf>,
    /// The repository: a directory or an http(s) URL.
    #[arg(value_name = "SOURCE")]
    source: String,
}

/// Stands in for the running agent when --agent-version is not given: the
/// highest version there is, so the minimum-agent rule always holds and the
/// report shows the version as unchecked (`null`).
const AGENT_VERSION_UNCHECKED: &str = "4294967295.4294967295.4294967295";

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    let source = parse_source(&args.source)?;
    let limits = ClientLimits::default();
    let hardware_class = args.hardware_class.clone().unwrap_or_default();
    let scratch = tempfile::Builder::new()
        .prefix("molt-verify-")
        .tempdir()
        .context("could not create a temporary directory; check that TMPDIR is writable")?;
    let client = open_client(&args, scratch.path(), &hardware_class, &limits)?;
    let installed = Installed {
        release_version: args.installed_release,
        security_counter: args.installed_counter,
        agent_version: args
            .agent_version
            .clone()
            .unwrap_or_else(|| AGENT_VERSION_UNCHECKED.to_owned()),
    };
    let installed_report = InstalledReport {
        release_version: installed.release_version,
        security_counter: installed.security_counter,
        agent_version: args.agent_version.clone(),
    };
    let mut report = VerifyReport {
        source: args.source.clone(),
        hardware_class: args.hardware_class.clone(),
        installed: installed_report,
        up_to_date: true,
        release: None,
        install: None,
        download_dir: None,
        checked: Vec::new(),
    };

    let verified = match client.check(&source, &installed).await {
        Ok(verified) => verified,
        Err(error @ UpdateError::WrongHardwareClass { .. }) if args.hardware_class.is_none() => {
            return Err(anyhow::Error::new(error).context(
                "the release set pins an agent image per hardware class; pass the device's class with --hardware-class <CLASS>, one of those it has",
            ));
        }
        Err(error) => {
            return Err(anyhow::Error::new(error).context(format!(
                "{} did not pass the device's checks; nothing would be installed (the cause says what to fix)",
                args.source
            )));
        }
    };
    let Some(verified) = verified else {
        return output.report(&report);
    };

    let download_dir = match &args.download_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create --download-dir {}", dir.display()))?;
            dir.clone()
        }
        None => scratch.path().join("parts"),
    };
    std::fs::create_dir_all(&download_dir).with_context(|| format!("could not create {}", download_dir.display()))?;
    let cancel = CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.cancel();
        }
    });
    let progress = output.progress();
    let fetched = client
        .fetch(&verified, &download_dir, &progress, &cancel)
        .await
        .with_context(|| {
            format!(
                "release {} verified but its parts did not; nothing would be installed. \
             Re-run to resume the downloads; if it fails again the repository's files do not match its metadata",
                verified.set.version
            )
        })?;

    // The device compiles each policy and runs its `init` before it
    // installs anything; so does verify, with the same check.
    let runtime = crate::policy::runtime()?;
    for (name, policy) in &fetched.policies {
        let checked = crate::policy::check_named(&runtime, name, &policy.wasm, &policy.config).with_context(|| {
            format!(
                "release {} verified through TUF, but a device would refuse it; publish a release with a policy that runs \
                 (`molt policy check` shows why)",
                fetched.set.version
            )
        })?;
        report.checked.push(crate::release::CheckedPolicy::new(name, &checked));
    }

    report.up_to_date = false;
    report.install = Some(install_report(&fetched, &hardware_class));
    report.release = Some(ReleaseSummary::new(&fetched.set));
    report.download_dir = args.download_dir.clone();
    output.report(&report)
}

fn parse_source(text: &str) -> anyhow::Result<Source> {
    if text.starts_with("http://") || text.starts_with("https://") {
        let url = url::Url::parse(text).map_err(|error| {
            UsageError(format!(
                "`{text}` is not a valid URL: {error}; give e.g. http://host:8080/"
            ))
        })?;
        return Ok(Source::Url(url));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(UsageError(format!(
            "`{scheme}://` sources are not supported; give a directory or an http:// or https:// URL"
        ))
        .into());
    }
    let dir = Path::new(text);
    if !dir.is_dir() {
        bail!("{text} is not a directory; give a published repository's public/ directory or an http(s) URL");
    }
    if !dir.join("metadata").is_dir() {
        if dir.join("public").join("metadata").is_dir() {
            bail!("{text} is a repository workspace; verify what it publishes: `molt verify ... {text}/public`");
        }
        bail!("{text} has no metadata/ directory; publish a release into it first with `molt repo publish`");
    }
    Ok(Source::Dir(dir.to_owned()))
}

fn open_client(args: &Args, scratch: &Path, hardware_class: &str, limits: &ClientLimits) -> anyhow::Result<Client> {
    let (trusted, kept) = match &args.trusted {
        Some(dir) => (dir.clone(), true),
        None => (scratch.join("trusted"), false),
    };
    let initialised = kept
        && trusted.is_dir()
        && std::fs::read_dir(&trusted)
            .with_context(|| format!("could not read --trusted {}", trusted.display()))?
            .next()
            .is_some();
    if initialised {
        if args.root.is_some() {
            return Err(UsageError(format!(
                "--trusted {} is already initialised; drop --root to use the root it trusts, or give an empty --trusted directory",
                trusted.display()
            ))
            .into());
        }
        return Client::open(&trusted, hardware_class, limits.clone()).with_context(|| {
            format!(
                "could not open trusted directory {}; re-create it with --root",
                trusted.display()
            )
        });
    }
    let Some(root) = &args.root else {
        return Err(UsageError(
            "--root is required to verify with a new trusted directory; export it with `molt keys root <KEYS> --output root.json`"
                .to_owned(),
        )
        .into());
    };
    let root_json =
        crate::preflight::read_bounded(root, limits.root_bytes_max, "root_bytes_max").with_context(|| {
            format!(
                "could not read --root {}; export it with `molt keys root <KEYS> --output {}`",
                root.display(),
                root.display()
            )
        })?;
    Client::init(&trusted, &root_json, hardware_class, limits.clone()).with_context(|| {
        format!(
            "could not pin {} as the trusted root; is it a root.json from `molt keys root`?",
            root.display()
        )
    })
}

#[derive(Debug, Serialize)]
struct VerifyReport {
    source: String,
    hardware_class: Option<String>,
    installed: InstalledReport,
    /// True when nothing newer than the installed release verified.
    up_to_date: bool,
    release: Option<ReleaseSummary>,
    install: Option<InstallReport>,
    download_dir: Option<PathBuf>,
    /// Each policy passed the policy check (`molt policy check`).
    checked: Vec<crate::release::CheckedPolicy>,
}

#[derive(Debug, Serialize)]
struct InstalledReport {
    release_version: u64,
    security_counter: u64,
    /// `None` when the minimum agent version was not checked.
    agent_version: Option<String>,
}

/// What the device would install: only verified bytes are described.
#[derive(Debug, Serialize)]
struct InstallReport {
    agent: Option<AgentSummary>,
    policies: Vec<PolicySummary>,
    parts_verified: usize,
}

fn install_report(fetched: &Fetched, hardware_class: &str) -> InstallReport {
    let agent = fetched.agent.as_ref().map(|agent| {
        let part = fetched.set.agents.get(hardware_class);
        AgentSummary {
            hardware_class: hardware_class.to_owned(),
            version: agent.version.clone(),
            target: part.map(|part| part.image.target.clone()).unwrap_or_default(),
            length: part.map(|part| part.image.length).unwrap_or_default(),
            sha256: part.map(|part| part.image.sha256.clone()).unwrap_or_default(),
            manifest_target: part.map(|part| part.manifest.target.clone()).unwrap_or_default(),
        }
    });
    let targets: BTreeMap<&str, &str> = fetched
        .set
        .policies
        .iter()
        .map(|(name, policy)| (name.as_str(), policy.module.target.as_str()))
        .collect();
    let policies: Vec<PolicySummary> = fetched
        .policies
        .iter()
        .map(|(name, policy)| PolicySummary {
            name: name.clone(),
            version: policy.version.clone(),
            target: targets
                .get(name.as_str())
                .map(|target| (*target).to_owned())
                .unwrap_or_default(),
            length: policy.wasm.len() as u64,
            sha256: hex(&policy.sha256),
            config: policy.config.clone(),
        })
        .collect();
    // The agent counts twice: its image and its signed manifest.
    let parts_verified = policies.len() + agent.as_ref().map_or(0, |_| 2);
    InstallReport {
        agent,
        policies,
        parts_verified,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl Report for VerifyReport {
    fn human(&self) -> String {
        let (Some(release), Some(install)) = (&self.release, &self.install) else {
            return format!(
                "{}: up to date; nothing newer than release {} (security counter {}) verified\n",
                self.source, self.installed.release_version, self.installed.security_counter
            );
        };
        let mut text = format!(
            "verified release {} from {}\n  security counter {}, contract {}, agents >= {}\n",
            release.version, self.source, release.security_counter, release.contract, release.min_agent_version
        );
        match (release.agents.is_empty(), &self.hardware_class) {
            (true, _) => text.push_str("would install (policies only: the device keeps its agent):\n"),
            (false, Some(class)) => text.push_str(&format!("would install on hardware class {class}:\n")),
            (false, None) => text.push_str("would install (no --hardware-class given, so no agent image):\n"),
        }
        if let Some(agent) = &install.agent {
            text.push_str(&format!(
                "  agent  {:<16} {:<10} {:>10}  sha256 {}\n",
                agent.hardware_class,
                agent.version,
                human_bytes(agent.length),
                agent.sha256
            ));
        } else if !release.agents.is_empty() {
            let classes: Vec<&str> = release
                .agents
                .iter()
                .map(|agent| agent.hardware_class.as_str())
                .collect();
            text.push_str(&format!(
                "  (no agent image; the set has agents for: {})\n",
                classes.join(", ")
            ));
        }
        for policy in &install.policies {
            text.push_str(&policy.line());
        }
        for checked in &self.checked {
            text.push_str(&checked.line());
        }
        text.push_str(&format!(
            "all {} parts downloaded and matched their signed length and sha256; nothing was installed\n",
            install.parts_verified
        ));
        if self.installed.agent_version.is_none() {
            text.push_str(&format!(
                "assumed the device runs agent {} or newer; pass --agent-version to check\n",
                release.min_agent_version
            ));
        }
        if let Some(dir) = &self.download_dir {
            text.push_str(&format!("verified parts kept in {}\n", dir.display()));
        }
        text
    }
}
