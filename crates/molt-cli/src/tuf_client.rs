//! `molt tuf-client`: the client-under-test command line of the public
//! `tuf-conformance` suite (its CLIENT-CLI.md), on molt's own TUF client
//! workflow (`molt_release::tuf`), the one molt devices verify releases
//! with, so that an outside suite tests exactly that code.
//!
//! The metadata directory is the workflow's store: each trusted role under
//! its non-versioned name (`root.json`, `timestamp.json`, `snapshot.json`,
//! `targets.json`, `<percent-encoded role>.json`), exactly the bytes that
//! verified, each written as it verifies (so a root that verified stays
//! trusted when a later step fails, as the specification's workflow
//! persists it). Targets are looked up by the workflow's delegation search
//! and fetched with molt's bounded download, which checks the listed length
//! and every supported digest before the file appears.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use molt_release::digest::Digests;
use molt_release::download::{NoProgress, Source};
use molt_release::tuf::{self, Durability, TimestampUpdate, TufLimits, Updater};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::output::{Output, UsageError};

/// Root versions one refresh may walk through: the conformance suite's
/// repositories rotate freely, and python-tuf allows 256.
const ROOT_UPDATES_MAX: u64 = 256;

fn limits() -> TufLimits {
    TufLimits {
        root_updates_max: ROOT_UPDATES_MAX,
        ..TufLimits::default()
    }
}

/// A TUF client for the tuf-conformance suite's client-under-test protocol.
///
/// Implements `init`, `refresh` and `download` as the suite's CLIENT-CLI.md
/// documents them: exit code 0 on success, 1 on any failure. Metadata the
/// client trusts is kept in --metadata-dir as root.json, timestamp.json,
/// snapshot.json, targets.json and delegated roles' files.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  molt tuf-client --metadata-dir /tmp/md init ./root.json
  molt tuf-client --metadata-dir /tmp/md --metadata-url http://127.0.0.1:8000/metadata refresh
  molt tuf-client --metadata-dir /tmp/md --metadata-url http://127.0.0.1:8000/metadata \\
      --target-name file.txt --target-base-url http://127.0.0.1:8000/targets \\
      --target-dir /tmp/targets download

Run the suite: see \"Conformance\" in README.md (`cargo xtask conformance`).")]
pub(crate) struct Args {
    /// Where trusted metadata is kept.
    #[arg(long, value_name = "DIR")]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata, ending in /metadata (refresh,
    /// download).
    #[arg(long, value_name = "URL")]
    metadata_url: Option<Url>,
    /// Target path to download, in order (repeatable; download).
    #[arg(long = "target-name", value_name = "TARGET_PATH")]
    target_names: Vec<String>,
    /// Base URL of the repository's targets, ending in /targets (download).
    #[arg(long, value_name = "URL")]
    target_base_url: Option<Url>,
    /// Where verified targets are stored (download).
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    /// Print more about each step (repeatable).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Trust TRUSTED_ROOT as the initial root; makes no request.
    Init {
        /// The initial root.json.
        trusted_root: PathBuf,
    },
    /// Update the trusted top-level metadata from --metadata-url.
    Refresh,
    /// Refresh, then download and verify each --target-name into --target-dir.
    Download,
}

pub(crate) async fn run(args: Args, _output: &Output) -> anyhow::Result<()> {
    match &args.command {
        Command::Init { trusted_root } => init(&args.metadata_dir, trusted_root),
        Command::Refresh => {
            let metadata_url = required(&args.metadata_url, "--metadata-url", "refresh")?;
            refresh(&args.metadata_dir, metadata_url, args.verbose).await?;
            Ok(())
        }
        Command::Download => download(&args).await,
    }
}

fn required<'a, T>(value: &'a Option<T>, flag: &str, command: &str) -> Result<&'a T, UsageError> {
    value
        .as_ref()
        .ok_or_else(|| UsageError(format!("`{command}` needs {flag}")))
}

/// Checks the root (it must be signed by its own root keys) and makes it the
/// only trusted metadata in `metadata_dir`.
fn init(metadata_dir: &Path, trusted_root: &Path) -> anyhow::Result<()> {
    let limits = limits();
    let root = crate::preflight::read_bounded(trusted_root, limits.root_bytes_max, "root_bytes_max")?;
    tuf::verify_trusted_root(&root).with_context(|| format!("{} cannot be a trust anchor", trusted_root.display()))?;
    std::fs::create_dir_all(metadata_dir).with_context(|| format!("could not create {}", metadata_dir.display()))?;
    // A new trust anchor replaces whatever was trusted before.
    for entry in
        std::fs::read_dir(metadata_dir).with_context(|| format!("could not list {}", metadata_dir.display()))?
    {
        let path = entry
            .with_context(|| format!("could not list {}", metadata_dir.display()))?
            .path();
        if path.extension().is_some_and(|extension| extension == "json") && path.is_file() {
            std::fs::remove_file(&path).with_context(|| format!("could not remove {}", path.display()))?;
        }
    }
    write_atomically(&metadata_dir.join("root.json"), &root)
}

/// The repository a metadata URL belongs to: molt reads metadata under
/// `<repository>/metadata/` and targets under `<repository>/targets/`.
fn repository_source(url: &Url, last: &str, flag: &str) -> Result<Source, UsageError> {
    let mut base = url.clone();
    let ends_in_last = {
        let mut segments = base
            .path_segments()
            .into_iter()
            .flatten()
            .filter(|segment| !segment.is_empty());
        segments.next_back() == Some(last)
    };
    if !ends_in_last {
        return Err(UsageError(format!(
            "{flag} {url} must end in /{last} (molt reads <repository>/{last}/)"
        )));
    }
    base.path_segments_mut()
        .map_err(|()| UsageError(format!("{flag} {url} cannot be a base URL")))?
        .pop_if_empty()
        .pop()
        .push("");
    Ok(Source::Url(base))
}

/// Runs the client workflow's update (5.3–5.6) on the metadata directory.
async fn refresh(metadata_dir: &Path, metadata_url: &Url, verbose: u8) -> anyhow::Result<Updater> {
    let source = repository_source(metadata_url, "metadata", "--metadata-url")?;
    if !metadata_dir.join("root.json").is_file() {
        bail!(
            "{} has no trusted root; run `molt tuf-client --metadata-dir {} init <TRUSTED_ROOT>` first",
            metadata_dir.display(),
            metadata_dir.display()
        );
    }
    let mut updater = Updater::open(metadata_dir, source, limits(), Durability::EachWrite)
        .with_context(|| format!("could not open the trusted metadata in {}", metadata_dir.display()))?;
    let refresh = updater.refresh().await.with_context(|| {
        format!("metadata from {metadata_url} did not verify; what verified before the failure is kept")
    })?;
    if let TimestampUpdate::SameVersionDiscarded { version } = refresh.timestamp {
        // 5.4.3.1: discarded, the trusted one kept, and no error.
        eprintln!(
            "molt tuf-client: warning: the repository serves a different timestamp of the trusted version {version}; it was discarded and the trusted one kept"
        );
    }
    if verbose > 0 {
        eprintln!(
            "molt tuf-client: trusted root v{} ({} new), timestamp {:?}, snapshot v{}, targets v{}",
            refresh.root_version,
            refresh.roots_updated,
            refresh.timestamp,
            refresh.snapshot_version,
            refresh.targets_version
        );
    }
    Ok(updater)
}

async fn download(args: &Args) -> anyhow::Result<()> {
    let metadata_url = required(&args.metadata_url, "--metadata-url", "download")?;
    let target_base_url = required(&args.target_base_url, "--target-base-url", "download")?;
    let target_dir = required(&args.target_dir, "--target-dir", "download")?;
    if args.target_names.is_empty() {
        return Err(UsageError("`download` needs at least one --target-name".to_owned()).into());
    }
    let targets_source = repository_source(target_base_url, "targets", "--target-base-url")?;
    let mut updater = refresh(&args.metadata_dir, metadata_url, args.verbose).await?;
    std::fs::create_dir_all(target_dir).with_context(|| format!("could not create {}", target_dir.display()))?;
    // In argument order, with the same updater; the first failure stops the
    // rest.
    for name in &args.target_names {
        download_target(&mut updater, &targets_source, name, target_dir, args.verbose).await?;
    }
    Ok(())
}

async fn download_target(
    updater: &mut Updater,
    targets_source: &Source,
    name: &str,
    target_dir: &Path,
    verbose: u8,
) -> anyhow::Result<()> {
    let target = updater
        .find_target(name)
        .await
        .with_context(|| format!("looking up target `{name}` failed"))?
        .with_context(|| format!("target `{name}` is not listed by any role trusted for it"))?;
    let expected = target
        .expected()
        .with_context(|| format!("target `{name}` cannot be verified"))?;
    let path = target_dir.join(file_name(name));
    if is_cached(&path, expected.length, &expected.digests)? {
        if verbose > 0 {
            eprintln!("molt tuf-client: {name} is already downloaded and verified");
        }
        return Ok(());
    }
    let remote = tuf::target_file_path(name, &expected, updater.consistent_snapshot());
    let downloaded = molt_release::download::download_target(
        targets_source,
        &remote,
        &path,
        &expected,
        &limits().download,
        &NoProgress,
        &CancellationToken::new(),
    )
    .await;
    if let Err(error) = downloaded {
        // The suite reads every file in the target directory; a partial
        // download kept for resuming would look like a downloaded artifact.
        let _ = std::fs::remove_file(molt_part_path(&path));
        return Err(anyhow::Error::new(error).context(format!("target `{name}` did not download and verify")));
    }
    if verbose > 0 {
        eprintln!(
            "molt tuf-client: downloaded {name} ({} bytes, listed by {}) to {}",
            expected.length,
            target.role,
            path.display()
        );
    }
    Ok(())
}

/// Where `download_target` keeps a partial download of `dest`.
fn molt_part_path(dest: &Path) -> PathBuf {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    PathBuf::from(part)
}

/// True if `path` already holds exactly the expected bytes.
fn is_cached(path: &Path, length: u64, digests: &Digests) -> anyhow::Result<bool> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error).with_context(|| format!("could not read {}", path.display())),
    };
    if !metadata.is_file() || metadata.len() != length {
        return Ok(false);
    }
    let bytes = std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    Ok(digests.check(&bytes).is_ok())
}

/// A file name for a target path: every byte outside `[A-Za-z0-9_.~-]` is
/// percent-encoded, so the name never leaves the target directory, and the
/// same target always lands in the same file.
fn file_name(target: &str) -> String {
    let mut name = String::with_capacity(target.len());
    for byte in target.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'~' | b'-') {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    if name.is_empty() || name.bytes().all(|byte| byte == b'.') {
        name = name.replace('.', "%2E");
        name.push_str("%00");
    }
    name
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("could not write in {}", dir.display()))?;
    std::io::Write::write_all(&mut temp, bytes).with_context(|| format!("could not write {}", path.display()))?;
    temp.as_file()
        .sync_all()
        .with_context(|| format!("could not sync {}", path.display()))?;
    temp.persist(path)
        .with_context(|| format!("could not replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
