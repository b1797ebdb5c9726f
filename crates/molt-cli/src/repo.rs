//! `molt repo`: publish signed releases and keep the published metadata
//! fresh.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use molt_release::repo::{Expiry, Published, Repo};
use serde::Serialize;

use crate::output::{Output, Report};

/// Publish signed releases into the directory devices download from.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  molt repo publish --repo ./repo --keys ./keys 1
  molt repo publish --repo ./repo --keys ./keys 2 --expires-timestamp 6h
  molt repo refresh --repo ./repo --keys ./keys      (run it from cron, well within the timestamp lifetime)")]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Publish(PublishArgs),
    Refresh(RefreshArgs),
}

/// Publish a signed release into `<WORKSPACE>/public/`.
///
/// Writes the release's targets, then snapshot and timestamp metadata signed
/// with the online keys. `public/` can be served by any static HTTP server
/// or read as a directory.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Next:
  serve <WORKSPACE>/public over HTTP, e.g. python3 -m http.server --directory ./repo/public 8080
  molt verify --root root.json ./repo/public       check what a device would install
  molt repo refresh --repo <WORKSPACE> --keys <KEYS>   before the timestamp expires

Examples:
  molt repo publish --repo ./repo --keys ./keys 1
  molt repo publish --repo ./repo --keys ./keys 2 --expires-timestamp 6h")]
struct PublishArgs {
    /// The repository workspace.
    #[arg(long, value_name = "WORKSPACE")]
    repo: PathBuf,
    /// The key directory.
    #[arg(long, value_name = "DIR", env = "MOLT_KEYS")]
    keys: PathBuf,
    /// The signed draft to publish.
    version: u64,
    #[command(flatten)]
    expiry: ExpiryArgs,
}

/// Re-sign snapshot and timestamp with fresh versions and expiry, and
/// publish root versions made by `molt keys rotate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example:
  molt repo refresh --repo ./repo --keys ./keys --expires-timestamp 1d")]
struct RefreshArgs {
    /// The repository workspace.
    #[arg(long, value_name = "WORKSPACE")]
    repo: PathBuf,
    /// The key directory.
    #[arg(long, value_name = "DIR", env = "MOLT_KEYS")]
    keys: PathBuf,
    #[command(flatten)]
    expiry: ExpiryArgs,
}

/// Lifetimes of newly signed metadata: a number and s, m, h, d or w.
#[derive(Debug, clap::Args)]
struct ExpiryArgs {
    /// Lifetime of targets metadata [default: 30d].
    #[arg(long, value_name = "LIFETIME", value_parser = crate::lifetime::parse)]
    expires_targets: Option<Duration>,
    /// Lifetime of snapshot metadata [default: 7d].
    #[arg(long, value_name = "LIFETIME", value_parser = crate::lifetime::parse)]
    expires_snapshot: Option<Duration>,
    /// Lifetime of timestamp metadata [default: 1d].
    #[arg(long, value_name = "LIFETIME", value_parser = crate::lifetime::parse)]
    expires_timestamp: Option<Duration>,
}

impl ExpiryArgs {
    fn expiry(&self) -> Expiry {
        let default = Expiry::default();
        Expiry {
            targets: self.expires_targets.unwrap_or(default.targets),
            snapshot: self.expires_snapshot.unwrap_or(default.snapshot),
            timestamp: self.expires_timestamp.unwrap_or(default.timestamp),
        }
    }
}

pub(crate) async fn run(args: Args, output: &Output) -> anyhow::Result<()> {
    match args.command {
        Command::Publish(args) => publish(args, output).await,
        Command::Refresh(args) => refresh(args, output).await,
    }
}

#[derive(Debug, Serialize)]
struct PublishedReport {
    /// `publish` or `refresh`.
    action: &'static str,
    /// The published release's hardware classes (empty for a policies-only
    /// release, or after a refresh).
    hardware_classes: Vec<String>,
    repo: PathBuf,
    public_dir: PathBuf,
    root_version: u64,
    targets_version: u64,
    snapshot_version: u64,
    timestamp_version: u64,
    release_set: Option<u64>,
    expires_targets_secs: u64,
    expires_snapshot_secs: u64,
    expires_timestamp_secs: u64,
}

impl PublishedReport {
    fn new(action: &'static str, repo: &Repo, published: &Published, expiry: &Expiry) -> PublishedReport {
        PublishedReport {
            action,
            hardware_classes: Vec::new(),
            repo: repo.dir().to_owned(),
            public_dir: repo.public_dir(),
            root_version: published.root_version,
            targets_version: published.targets_version,
            snapshot_version: published.snapshot_version,
            timestamp_version: published.timestamp_version,
            release_set: published.release_set,
            expires_targets_secs: expiry.targets.as_secs(),
            expires_snapshot_secs: expiry.snapshot.as_secs(),
            expires_timestamp_secs: expiry.timestamp.as_secs(),
        }
    }
}

impl Report for PublishedReport {
    fn human(&self) -> String {
        let repo = self.repo.display();
        let public = self.public_dir.display();
        let what = match (self.action, self.release_set) {
            ("publish", Some(version)) => format!("published release {version} from {repo}"),
            (_, Some(version)) => format!("refreshed {repo} (newest release {version})"),
            (_, None) => format!("refreshed {repo} (no release published yet)"),
        };
        let lifetime = |secs| crate::lifetime::format(Duration::from_secs(secs));
        // A device verifies with its own class; a policies-only release
        // needs none.
        let class = match self.hardware_classes.as_slice() {
            [] => " ".to_owned(),
            [class] => format!(" --hardware-class {class} "),
            classes => format!(" --hardware-class <{}> ", classes.join("|")),
        };
        format!(
            "{what}\n  root v{}, targets v{} (expires in {}), snapshot v{} (expires in {}), timestamp v{} (expires in {})\n  \
             serve: {public}\n\nnext:\n  molt verify --root root.json{class}{public}\n  \
             molt repo refresh --repo {repo} --keys <KEYS>    within {} to keep devices updating\n",
            self.root_version,
            self.targets_version,
            lifetime(self.expires_targets_secs),
            self.snapshot_version,
            lifetime(self.expires_snapshot_secs),
            self.timestamp_version,
            lifetime(self.expires_timestamp_secs),
            lifetime(self.expires_timestamp_secs),
        )
    }
}

async fn publish(args: PublishArgs, output: &Output) -> anyhow::Result<()> {
    let expiry = args.expiry.expiry();
    let keys = crate::preflight::open_key_dir(&args.keys)?;
    let repo = crate::preflight::open_existing_repo(&args.repo, &keys).await?;
    let shown = args.repo.display();
    let hardware_classes: Vec<String> = repo
        .draft(args.version)
        .map(|set| set.agents.into_keys().collect())
        .unwrap_or_default();
    let published = repo.publish(args.version, &keys, &expiry).await.with_context(|| {
        format!(
            "could not publish release {} from {shown}; only a signed draft can be published: \
             run `molt release sign --repo {shown} --keys {} {}` first",
            args.version,
            args.keys.display(),
            args.version
        )
    })?;
    let mut report = PublishedReport::new("publish", &repo, &published, &expiry);
    report.hardware_classes = hardware_classes;
    output.report(&report)
}

async fn refresh(args: RefreshArgs, output: &Output) -> anyhow::Result<()> {
    let expiry = args.expiry.expiry();
    let keys = crate::preflight::open_key_dir(&args.keys)?;
    let repo = crate::preflight::open_existing_repo(&args.repo, &keys).await?;
    let published = repo.refresh(&keys, &expiry).await.with_context(|| {
        format!(
            "could not refresh {}; the snapshot and timestamp keys in {} must be the ones the newest root names",
            args.repo.display(),
            args.keys.display()
        )
    })?;
    output.report(&PublishedReport::new("refresh", &repo, &published, &expiry))
}
