//! `molt release`: create and sign release-set drafts.
//!
//! Parts are named on the command line as
//! `--agent CLASS=PATH@VERSION` and `--policy NAME=PATH@VERSION[:CONFIG]`:
//! the path is split from the version at the last `@` that is followed by a
//! `major.minor.patch` version, so paths may contain `@` themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use molt_release::release_set::{AGENTS_MAX, POLICIES_MAX, ReleaseSet};
use molt_release::repo::{AgentInput, PolicyInput, ReleaseInput};
use serde::Serialize;

use crate::output::{Output, Report, UsageError, human_bytes};

/// Upper bound on a policy's `init` configuration file
/// (`policy_config_bytes_max`).
const POLICY_CONFIG_BYTES_MAX: u64 = 64 << 10;
/// Upper bound on a hardware class or policy name (`part_name_len_max`).
const PART_NAME_LEN_MAX: usize = 64;

/// Create and sign release sets: one consistent device configuration.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  molt release create --repo ./repo --keys ./keys --version 1 --security-counter 1 \\
      --min-agent-version 1.0.0 --agent rpi4=./agent.img@1.0.0 \\
      --policy threshold=./threshold.wasm@0.1.0:./threshold.json
  molt release sign --repo ./repo --keys ./keys 1")]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Create(CreateArgs),
    Sign(SignArgs),
}

/// Create a draft release set from agent images and policy modules.
///
/// Copies each file into the workspace's `drafts/<VERSION>/`, hashes it, and
/// writes the unsigned release set and the agent image manifests. The
/// workspace is created (as an empty repository signed by `--keys`) if it
/// does not exist yet.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Part syntax:
  --agent CLASS=PATH@VERSION
      the agent image for one hardware class, e.g. rpi4=./build/agent.img@1.2.0
  --policy NAME=PATH@VERSION[:CONFIG]
      a policy component and, optionally, its configuration: a JSON file holding one
      object of strings, numbers or booleans, e.g. {\"min_step\": 0.5} (default: empty),
      e.g. threshold=./threshold.wasm@0.1.0:./threshold.json
  VERSION is major.minor.patch; CLASS and NAME use letters, digits, '-', '_' and '.'.

Next:
  molt release sign --repo <WORKSPACE> --keys <KEYS> <VERSION>

Examples:
  molt release create --repo ./repo --keys ./keys --version 1 --security-counter 1 \\
      --min-agent-version 1.0.0 --agent rpi4=./agent.img@1.0.0 \\
      --policy threshold=./threshold.wasm@0.1.0:./threshold.json")]
struct CreateArgs {
    /// The repository workspace.
    #[arg(long, value_name = "WORKSPACE")]
    repo: PathBuf,
    /// The key directory (only its public root is used here; a new
    /// workspace's repository is signed with it).
    #[arg(long, value_name = "DIR", env = "MOLT_KEYS")]
    keys: PathBuf,
    /// The release set's version; must exceed every published one.
    #[arg(long, value_name = "N")]
    version: u64,
    /// Anti-rollback counter: raise it to stop devices installing older sets.
    #[arg(long, value_name = "N")]
    security_counter: u64,
    /// The oldest agent that may run this set's policies (major.minor.patch).
    #[arg(long, value_name = "X.Y.Z", value_parser = parse_version)]
    min_agent_version: String,
    /// An agent image: CLASS=PATH@VERSION (repeat for each hardware class).
    #[arg(long = "agent", value_name = "CLASS=PATH@VERSION", value_parser = parse_agent)]
    agents: Vec<AgentSpec>,
    /// A policy module, with an optional JSON config file (repeat for each policy).
    #[arg(long = "policy", value_name = "NAME=PATH@VERSION[:CONFIG]", value_parser = parse_policy)]
    policies: Vec<PolicySpec>,
}

/// Sign a draft: its image manifests with the image keys and its targets
/// metadata with the targets keys.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Next:
  molt repo publish --repo <WORKSPACE> --keys <KEYS> <VERSION>

Example:
  molt release sign --repo ./repo --keys ./keys 1")]
struct SignArgs {
    /// The repository workspace.
    #[arg(long, value_name = "WORKSPACE")]
    repo: PathBuf,
    /// The key directory.
    #[arg(long, value_name = "DIR", env = "MOLT_KEYS")]
    keys: PathBuf,
    /// The draft's version.
    version: u64,
}

/// `--agent CLASS=PATH@VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AgentSpec {
    hardware_class: String,
    path: PathBuf,
    version: String,
}

/// `--policy NAME=PATH@VERSION[:CONFIG]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PolicySpec {
    name: String,
    path: PathBuf,
    version: String,
    config: Option<PathBuf>,
}

const AGENT_SYNTAX: &str = "expected CLASS=PATH@VERSION, e.g. rpi4=./agent.img@1.2.0";
const POLICY_SYNTAX: &str =
    "expected NAME=PATH@VERSION[:CONFIG], e.g. threshold=./threshold.wasm@0.1.0:./threshold.json";

fn parse_agent(text: &str) -> Result<AgentSpec, String> {
    let (hardware_class, rest) = text.split_once('=').ok_or(AGENT_SYNTAX)?;
    check_part_name(hardware_class, "hardware class", AGENT_SYNTAX)?;
    let (path, version, _) = split_versioned(rest, false).ok_or(AGENT_SYNTAX)?;
    Ok(AgentSpec {
        hardware_class: hardware_class.to_owned(),
        path: path.into(),
        version: version.to_owned(),
    })
}

fn parse_policy(text: &str) -> Result<PolicySpec, String> {
    let (name, rest) = text.split_once('=').ok_or(POLICY_SYNTAX)?;
    check_part_name(name, "policy name", POLICY_SYNTAX)?;
    let (path, version, config) = split_versioned(rest, true).ok_or(POLICY_SYNTAX)?;
    Ok(PolicySpec {
        name: name.to_owned(),
        path: path.into(),
        version: version.to_owned(),
        config: config.map(Into::into),
    })
}

fn check_part_name(name: &str, what: &str, syntax: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > PART_NAME_LEN_MAX || !name.chars().all(allowed) {
        return Err(format!(
            "{what} `{name}` must be 1 to {PART_NAME_LEN_MAX} letters, digits, '-', '_' or '.'; {syntax}"
        ));
    }
    Ok(())
}

/// Splits `PATH@VERSION[:CONFIG]` at the last `@` followed by a valid
/// version (and, if `with_config`, an optional non-empty `:CONFIG`).
fn split_versioned(text: &str, with_config: bool) -> Option<(&str, &str, Option<&str>)> {
    for (at, _) in text.rmatch_indices('@') {
        let (path, rest) = (&text[..at], &text[at + 1..]);
        let (version, config) = match rest.split_once(':') {
            Some((version, config)) if with_config && !config.is_empty() => (version, Some(config)),
            Some(_) => continue,
            None => (rest, None),
        };
        if !path.is_empty() && parse_version(version).is_ok() {
            return Some((path, version, config));
        }
    }
    None
}

/// Accepts `major.minor.patch`, each a decimal number.
pub(crate) fn parse_version(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.split('.').collect();
    let numeric = |part: &&str| !part.is_empty() && part.len() <= 9 && part.bytes().all(|b| b.is_ascii_digit());
    if parts.len() == 3 && parts.iter().all(numeric) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "expected a version major.minor.patch such as 1.2.0, got `{text}`"
        ))
    }
}

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    match args.command {
        Command::Create(args) => create(args, output).await,
        Command::Sign(args) => sign(args, output).await,
    }
}

/// A release set as the CLI reports it (`--json` field names are stable).
#[derive(Debug, Serialize)]
pub(crate) struct ReleaseSummary {
    pub(crate) version: u64,
    pub(crate) security_counter: u64,
    pub(crate) contract: String,
    pub(crate) min_agent_version: String,
    pub(crate) agents: Vec<AgentSummary>,
    pub(crate) policies: Vec<PolicySummary>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AgentSummary {
    pub(crate) hardware_class: String,
    pub(crate) version: String,
    pub(crate) target: String,
    pub(crate) length: u64,
    pub(crate) sha256: String,
    pub(crate) manifest_target: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct PolicySummary {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) target: String,
    pub(crate) length: u64,
    pub(crate) sha256: String,
    pub(crate) config: BTreeMap<String, String>,
}

impl PolicySummary {
    /// One line of human output.
    pub(crate) fn line(&self) -> String {
        format!(
            "  policy {:<16} {:<10} {:>10}  sha256 {}\n",
            self.name,
            self.version,
            human_bytes(self.length),
            self.sha256
        )
    }
}

impl ReleaseSummary {
    pub(crate) fn new(set: &ReleaseSet) -> ReleaseSummary {
        ReleaseSummary {
            version: set.version,
            security_counter: set.security_counter,
            contract: set.contract.clone(),
            min_agent_version: set.min_agent_version.clone(),
            agents: set
                .agents
                .iter()
                .map(|(class, agent)| AgentSummary {
                    hardware_class: class.clone(),
                    version: agent.version.clone(),
                    target: agent.image.target.clone(),
                    length: agent.image.length,
                    sha256: agent.image.sha256.clone(),
                    manifest_target: agent.manifest.target.clone(),
                })
                .collect(),
            policies: set
                .policies
                .iter()
                .map(|(name, policy)| PolicySummary {
                    name: name.clone(),
                    version: policy.version.clone(),
                    target: policy.module.target.clone(),
                    length: policy.module.length,
                    sha256: policy.module.sha256.clone(),
                    config: policy.config.clone(),
                })
                .collect(),
        }
    }

    /// The parts, one per line, indented.
    pub(crate) fn human_parts(&self) -> String {
        let mut text = String::new();
        for agent in &self.agents {
            text.push_str(&format!(
                "  agent  {:<16} {:<10} {:>10}  sha256 {}\n",
                agent.hardware_class,
                agent.version,
                human_bytes(agent.length),
                agent.sha256
            ));
        }
        for policy in &self.policies {
            text.push_str(&policy.line());
        }
        text
    }
}

#[derive(Debug, Serialize)]
struct CreateReport {
    repo: PathBuf,
    signed: bool,
    release: ReleaseSummary,
    /// Each policy passed the policy check (`molt policy check`).
    checked: Vec<CheckedPolicy>,
}

/// A policy that compiled and started with its config.
#[derive(Debug, Serialize)]
pub(crate) struct CheckedPolicy {
    pub(crate) name: String,
    pub(crate) init_fuel: u64,
    pub(crate) memory_bytes: usize,
}

impl CheckedPolicy {
    pub(crate) fn new(name: &str, report: &molt_wasm::CheckReport) -> CheckedPolicy {
        CheckedPolicy {
            name: name.to_owned(),
            init_fuel: report.init_fuel,
            memory_bytes: report.memory_bytes,
        }
    }

    /// One line of human output.
    pub(crate) fn line(&self) -> String {
        format!(
            "  checked {:<15} compiles, imports nothing, init accepts its config ({} fuel, {} memory)\n",
            self.name,
            self.init_fuel,
            human_bytes(self.memory_bytes as u64)
        )
    }
}

impl Report for CreateReport {
    fn human(&self) -> String {
        format!(
            "created draft release {} in {} (security counter {}, agents >= {}, {})\n{}{}\nnext: molt release sign --repo {} --keys <KEYS> {}\n",
            self.release.version,
            self.repo.display(),
            self.release.security_counter,
            self.release.min_agent_version,
            self.release.contract,
            self.release.human_parts(),
            self.checked.iter().map(CheckedPolicy::line).collect::<String>(),
            self.repo.display(),
            self.release.version
        )
    }
}

async fn create(args: CreateArgs, output: &Output) -> anyhow::Result<()> {
    let runtime = crate::policy::runtime()?;
    let mut checks = Vec::new();
    let input = release_input(&args, &runtime, &mut checks)?;
    let keys = crate::preflight::open_key_dir(&args.keys)?;
    let repo = crate::preflight::open_repo(&args.repo, &keys).await?;
    let set = repo.create_release(&input).await.with_context(|| {
        format!(
            "could not create draft release {} in {}; a version must be new and above every published one",
            args.version,
            args.repo.display()
        )
    })?;
    output.report(&CreateReport {
        repo: args.repo,
        signed: false,
        release: ReleaseSummary::new(&set),
        checked: checks
            .iter()
            .map(|(name, report)| CheckedPolicy::new(name, report))
            .collect(),
    })
}

/// Checks the parts as a whole and reads the policy configurations.
fn release_input(
    args: &CreateArgs,
    runtime: &molt_wasm::Runtime,
    checks: &mut Vec<(String, molt_wasm::CheckReport)>,
) -> anyhow::Result<ReleaseInput> {
    if args.agents.is_empty() && args.policies.is_empty() {
        return Err(UsageError("a release needs at least one --agent or --policy".to_owned()).into());
    }
    if args.agents.len() > AGENTS_MAX {
        return Err(UsageError(format!(
            "{} --agent parts exceed agents_max ({AGENTS_MAX})",
            args.agents.len()
        ))
        .into());
    }
    if args.policies.len() > POLICIES_MAX {
        return Err(UsageError(format!(
            "{} --policy parts exceed policies_max ({POLICIES_MAX})",
            args.policies.len()
        ))
        .into());
    }
    let mut agents = Vec::with_capacity(args.agents.len());
    for (agent_idx, agent) in args.agents.iter().enumerate() {
        if args.agents[..agent_idx]
            .iter()
            .any(|earlier| earlier.hardware_class == agent.hardware_class)
        {
            return Err(UsageError(format!(
                "hardware class `{}` is given twice; a release has at most one agent image per class",
                agent.hardware_class
            ))
            .into());
        }
        check_file(
            &agent.path,
            &format!("agent image for `{}`", agent.hardware_class),
            "--agent",
        )?;
        agents.push(AgentInput {
            hardware_class: agent.hardware_class.clone(),
            version: agent.version.clone(),
            path: agent.path.clone(),
        });
    }
    let mut policies = Vec::with_capacity(args.policies.len());
    for (policy_idx, policy) in args.policies.iter().enumerate() {
        if args.policies[..policy_idx]
            .iter()
            .any(|earlier| earlier.name == policy.name)
        {
            return Err(UsageError(format!(
                "policy `{}` is given twice; policy names are unique within a release",
                policy.name
            ))
            .into());
        }
        check_file(&policy.path, &format!("module of policy `{}`", policy.name), "--policy")?;
        let config = match &policy.config {
            Some(path) => read_config(path, &policy.name)?,
            None => BTreeMap::new(),
        };
        let wasm = crate::policy::read_module(&policy.path, runtime)?;
        let checked = crate::policy::check_named(runtime, &policy.name, &wasm, &config).with_context(|| {
            format!(
                "{} given with --policy {}; nothing was created. Try it with `molt policy check {}`",
                policy.path.display(),
                policy.name,
                policy.path.display()
            )
        })?;
        checks.push((policy.name.clone(), checked));
        policies.push(PolicyInput {
            name: policy.name.clone(),
            version: policy.version.clone(),
            path: policy.path.clone(),
            config,
        });
    }
    Ok(ReleaseInput {
        version: args.version,
        security_counter: args.security_counter,
        min_agent_version: args.min_agent_version.clone(),
        agents,
        policies,
    })
}

fn check_file(path: &Path, what: &str, flag: &str) -> anyhow::Result<()> {
    if !path.is_file() {
        bail!(
            "the {what}, {}, is not a file; check the path given with {flag}",
            path.display()
        );
    }
    Ok(())
}

/// Reads a policy's configuration: a bounded file holding one flat JSON
/// object whose values are strings, numbers or booleans. Policies receive
/// key/value strings (`wit/policy.wit`), so a string is passed as it is and
/// a number or boolean as its JSON text (`0.5`, `true`).
pub(crate) fn read_config(path: &Path, policy: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let shown = path.display();
    check_file(path, &format!("configuration of policy `{policy}`"), "--policy")?;
    let bytes = crate::preflight::read_bounded(path, POLICY_CONFIG_BYTES_MAX, "policy_config_bytes_max").with_context(
        || format!("could not read the configuration of policy `{policy}`; keep it a small JSON object"),
    )?;
    let fix = "fix it, or drop `:CONFIG` for an empty configuration";
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("configuration {shown} of policy `{policy}` is not valid JSON; {fix}"))?;
    config_pairs(&value).map_err(|reason| anyhow::anyhow!("configuration {shown} of policy `{policy}` {reason}; {fix}"))
}

/// The key/value pairs of a flat JSON object.
fn config_pairs(value: &serde_json::Value) -> Result<BTreeMap<String, String>, String> {
    let serde_json::Value::Object(object) = value else {
        return Err("is not a JSON object such as {\"min_step\": 0.5}".to_owned());
    };
    let mut pairs = BTreeMap::new();
    for (key, value) in object {
        let text = match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Bool(flag) => flag.to_string(),
            _ => {
                return Err(format!(
                    "has `{key}` set to null, an array or an object; values must be strings, numbers or booleans"
                ));
            }
        };
        pairs.insert(key.clone(), text);
    }
    Ok(pairs)
}

#[derive(Debug, Serialize)]
struct SignReport {
    repo: PathBuf,
    version: u64,
    signed: bool,
}

impl Report for SignReport {
    fn human(&self) -> String {
        format!(
            "signed draft release {} in {}\nnext: molt repo publish --repo {} --keys <KEYS> {}\n",
            self.version,
            self.repo.display(),
            self.repo.display(),
            self.version
        )
    }
}

async fn sign(args: SignArgs, output: &Output) -> anyhow::Result<()> {
    let keys = crate::preflight::open_key_dir(&args.keys)?;
    let repo = crate::preflight::open_existing_repo(&args.repo, &keys).await?;
    let shown = args.repo.display();
    repo.sign_release(args.version, &keys).await.with_context(|| {
        format!(
            "could not sign draft release {} in {shown}; create it first with \
             `molt release create --repo {shown} --version {} ...`, and sign with the key directory \
             that holds the targets and image keys",
            args.version, args.version
        )
    })?;
    output.report(&SignReport {
        repo: args.repo,
        version: args.version,
        signed: true,
    })
}

#[cfg(test)]
mod tests;
