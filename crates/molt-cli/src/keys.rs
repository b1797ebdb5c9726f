//! `molt keys`: create, rotate and export role keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use molt_release::keys::{KEYS_PER_ROLE_MAX, KeyDir, KeyPlan, Role, RoleKeys};
use serde::Serialize;

use crate::output::{Output, Report, UsageError};

/// Create, rotate and export the keys that sign releases.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  molt keys init ./keys
  molt keys init ./keys --root-keys 5 --root-threshold 3
  molt keys root ./keys --output root.json
  molt keys rotate ./keys --role timestamp
  molt keys rotate ./keys --role root --keys 5 --threshold 3")]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Init(InitArgs),
    Rotate(RotateArgs),
    Root(RootArgs),
}

/// Create a key directory: keys for every role and root metadata version 1.
///
/// The directory (mode 0700, files 0600) holds ed25519 keys for the TUF
/// roles root, targets, snapshot and timestamp, and for `image`, the keys
/// that sign agent image manifests. Keep it offline and backed up: the root
/// keys are the trust anchor of every device.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Next:
  molt keys root <DIR> --output root.json     the root metadata devices pin
  molt release create --repo ./repo --keys <DIR> --version 1 ...

Examples:
  molt keys init ./keys
  molt keys init ./keys --root-keys 5 --root-threshold 3 --root-expires 180d")]
struct InitArgs {
    /// The directory to create; must not exist or be empty.
    dir: PathBuf,
    /// Root keys to create.
    #[arg(long, value_name = "N", default_value_t = KeyPlan::default().root.keys)]
    root_keys: usize,
    /// Root signatures required.
    #[arg(long, value_name = "K", default_value_t = KeyPlan::default().root.threshold)]
    root_threshold: usize,
    /// Targets keys to create.
    #[arg(long, value_name = "N", default_value_t = KeyPlan::default().targets.keys)]
    targets_keys: usize,
    /// Targets signatures required.
    #[arg(long, value_name = "K", default_value_t = KeyPlan::default().targets.threshold)]
    targets_threshold: usize,
    /// Snapshot keys to create.
    #[arg(long, value_name = "N", default_value_t = KeyPlan::default().snapshot.keys)]
    snapshot_keys: usize,
    /// Snapshot signatures required.
    #[arg(long, value_name = "K", default_value_t = KeyPlan::default().snapshot.threshold)]
    snapshot_threshold: usize,
    /// Timestamp keys to create.
    #[arg(long, value_name = "N", default_value_t = KeyPlan::default().timestamp.keys)]
    timestamp_keys: usize,
    /// Timestamp signatures required.
    #[arg(long, value_name = "K", default_value_t = KeyPlan::default().timestamp.threshold)]
    timestamp_threshold: usize,
    /// Image manifest keys to create.
    #[arg(long, value_name = "N", default_value_t = KeyPlan::default().image.keys)]
    image_keys: usize,
    /// Image manifest signatures required.
    #[arg(long, value_name = "K", default_value_t = KeyPlan::default().image.threshold)]
    image_threshold: usize,
    /// Lifetime of each root metadata version: a number and s, m, h, d or w.
    #[arg(long, value_name = "LIFETIME", default_value = "365d", value_parser = crate::lifetime::parse)]
    root_expires: Duration,
}

/// Replace one role's keys and sign the next root metadata version.
///
/// The new root is signed by a threshold of the old root keys (and, for a
/// root rotation, of the new ones too), so devices can follow the chain.
/// Publish it with `molt repo refresh`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Next:
  molt repo refresh --repo <WORKSPACE> --keys <DIR>      publish the new root (and metadata
                                                         signed with the new keys)

Examples:
  molt keys rotate ./keys --role timestamp
  molt keys rotate ./keys --role root --keys 5 --threshold 3")]
struct RotateArgs {
    /// The key directory.
    dir: PathBuf,
    /// The role whose keys are replaced.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// New keys to create [default: the role's default from `molt keys
    /// init`: 3 for root, 1 for the others].
    #[arg(long, value_name = "N")]
    keys: Option<usize>,
    /// Signatures required from now on [default: unchanged].
    #[arg(long, value_name = "K")]
    threshold: Option<usize>,
}

/// Print the newest signed root metadata: what a device pins at first boot.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  molt keys root ./keys --output root.json
  molt keys root ./keys > root.json")]
struct RootArgs {
    /// The key directory.
    dir: PathBuf,
    /// Write to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    Root,
    Targets,
    Snapshot,
    Timestamp,
    Image,
}

impl RoleArg {
    fn role(self) -> Role {
        match self {
            RoleArg::Root => Role::Root,
            RoleArg::Targets => Role::Targets,
            RoleArg::Snapshot => Role::Snapshot,
            RoleArg::Timestamp => Role::Timestamp,
            RoleArg::Image => Role::Image,
        }
    }

    fn default_keys(self) -> usize {
        let plan = KeyPlan::default();
        match self {
            RoleArg::Root => plan.root.keys,
            RoleArg::Targets => plan.targets.keys,
            RoleArg::Snapshot => plan.snapshot.keys,
            RoleArg::Timestamp => plan.timestamp.keys,
            RoleArg::Image => plan.image.keys,
        }
    }
}

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    match args.command {
        Command::Init(args) => init(args, output).await,
        Command::Rotate(args) => rotate(args, output).await,
        Command::Root(args) => root(args, output),
    }
}

#[derive(Debug, Serialize)]
struct InitReport {
    key_dir: PathBuf,
    root_version: u64,
    root_expires_secs: u64,
    roles: Vec<RoleReport>,
}

#[derive(Debug, Serialize)]
struct RoleReport {
    role: &'static str,
    keys: usize,
    threshold: usize,
}

impl Report for InitReport {
    fn human(&self) -> String {
        let dir = self.key_dir.display();
        let mut text = format!("created key directory {dir} (private to its owner)\n");
        for role in &self.roles {
            text.push_str(&format!(
                "  {:<10} {} of {} keys must sign\n",
                role.role, role.threshold, role.keys
            ));
        }
        text.push_str(&format!(
            "signed root metadata version {} (expires in {})\n\n\
             Keep {dir} offline and backed up: its root keys are every device's trust anchor.\n\
             next:\n  molt keys root {dir} --output root.json\n  \
             molt release create --repo ./repo --keys {dir} --version 1 --security-counter 1 --min-agent-version 1.0.0 ...\n",
            self.root_version,
            crate::lifetime::format(Duration::from_secs(self.root_expires_secs)),
        ));
        text
    }
}

fn role_keys(name: &str, keys: usize, threshold: usize) -> Result<RoleKeys, UsageError> {
    if keys == 0 || keys > KEYS_PER_ROLE_MAX {
        return Err(UsageError(format!(
            "--{name}-keys {keys} is out of range; give 1 to {KEYS_PER_ROLE_MAX} (keys_per_role_max)"
        )));
    }
    if threshold == 0 || threshold > keys {
        return Err(UsageError(format!(
            "--{name}-threshold {threshold} is out of range; give 1 to --{name}-keys ({keys})"
        )));
    }
    Ok(RoleKeys { keys, threshold })
}

async fn init(args: InitArgs, output: &Output) -> anyhow::Result<()> {
    let plan = KeyPlan {
        root: role_keys("root", args.root_keys, args.root_threshold)?,
        targets: role_keys("targets", args.targets_keys, args.targets_threshold)?,
        snapshot: role_keys("snapshot", args.snapshot_keys, args.snapshot_threshold)?,
        timestamp: role_keys("timestamp", args.timestamp_keys, args.timestamp_threshold)?,
        image: role_keys("image", args.image_keys, args.image_threshold)?,
        root_expires: args.root_expires,
    };
    let dir = &args.dir;
    let shown = dir.display();
    if dir.exists() && !is_empty_dir(dir)? {
        bail!(
            "{shown} already exists and is not empty; choose a new key directory, \
             or rotate the keys in an existing one with `molt keys rotate {shown} --role <ROLE>`"
        );
    }
    let key_dir = KeyDir::init(dir, &plan).await.with_context(|| {
        format!("could not create key directory {shown}; check that its parent exists and is writable")
    })?;
    let roles = [
        ("root", plan.root),
        ("targets", plan.targets),
        ("snapshot", plan.snapshot),
        ("timestamp", plan.timestamp),
        ("image", plan.image),
    ];
    let root_version = key_dir
        .root_version()
        .with_context(|| format!("could not read back the root metadata in {shown}"))?;
    output.report(&InitReport {
        key_dir: key_dir.path().to_owned(),
        root_version,
        root_expires_secs: plan.root_expires.as_secs(),
        roles: roles
            .into_iter()
            .map(|(role, keys)| RoleReport {
                role,
                keys: keys.keys,
                threshold: keys.threshold,
            })
            .collect(),
    })
}

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    let mut entries = std::fs::read_dir(dir).with_context(|| format!("could not read {}", dir.display()))?;
    Ok(entries.next().is_none())
}

#[derive(Debug, Serialize)]
struct RotateReport {
    key_dir: PathBuf,
    role: &'static str,
    keys: usize,
    threshold: usize,
    root_version: u64,
}

impl Report for RotateReport {
    fn human(&self) -> String {
        let dir = self.key_dir.display();
        let threshold = format!("{} of {} new keys must sign", self.threshold, self.keys);
        let mut text = format!(
            "rotated {} keys in {dir}: {threshold}\nsigned root metadata version {}\n\nnext:\n  \
             molt repo refresh --repo <WORKSPACE> --keys {dir}    publish root version {} to devices\n",
            self.role, self.root_version, self.root_version
        );
        if self.role == "image" {
            text.push_str(&format!(
                "  molt release sign --repo <WORKSPACE> --keys {dir} <VERSION>    sign new releases' agent manifests with the new image keys\n"
            ));
        }
        text
    }
}

async fn rotate(args: RotateArgs, output: &Output) -> anyhow::Result<()> {
    let keys = args.keys.unwrap_or(args.role.default_keys());
    if keys == 0 || keys > KEYS_PER_ROLE_MAX {
        return Err(UsageError(format!(
            "--keys {keys} is out of range; give 1 to {KEYS_PER_ROLE_MAX} (keys_per_role_max)"
        ))
        .into());
    }
    if let Some(threshold) = args.threshold
        && (threshold == 0 || threshold > keys)
    {
        return Err(UsageError(format!(
            "--threshold {threshold} is out of range; give 1 to --keys ({keys})"
        ))
        .into());
    }
    let mut key_dir = crate::preflight::open_key_dir(&args.dir)?;
    let root_version = key_dir
        .rotate(args.role.role(), keys, args.threshold)
        .await
        .with_context(|| {
            format!(
                "could not rotate the {} keys in {}; nothing was replaced unless a new root version was written",
                args.role.role().name(),
                args.dir.display()
            )
        })?;
    let threshold = key_dir
        .threshold(args.role.role())
        .with_context(|| format!("could not read back {}", args.dir.display()))?;
    output.report(&RotateReport {
        key_dir: args.dir,
        role: args.role.role().name(),
        keys,
        threshold,
        root_version,
    })
}

#[derive(Debug, Serialize)]
struct RootReport {
    key_dir: PathBuf,
    output: PathBuf,
    size_bytes: u64,
}

impl Report for RootReport {
    fn human(&self) -> String {
        format!(
            "wrote the newest root metadata of {} to {} ({} bytes)\nnext: pin it on devices, or check a repository with `molt verify --root {} <DIR-or-URL>`\n",
            self.key_dir.display(),
            self.output.display(),
            self.size_bytes,
            self.output.display()
        )
    }
}

fn root(args: RootArgs, output: &Output) -> anyhow::Result<()> {
    let key_dir = crate::preflight::open_key_dir(&args.dir)?;
    let root_json = key_dir
        .root_json()
        .with_context(|| format!("could not read the root metadata in {}", args.dir.display()))?;
    let Some(path) = args.output else {
        // The root metadata is itself JSON, so it is the document with or
        // without --json.
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&root_json).and_then(|()| stdout.write_all(b"\n"))?;
        return Ok(());
    };
    std::fs::write(&path, &root_json)
        .with_context(|| format!("could not write {}; check that its directory exists", path.display()))?;
    output.report(&RootReport {
        key_dir: args.dir,
        output: path,
        size_bytes: root_json.len() as u64,
    })
}
