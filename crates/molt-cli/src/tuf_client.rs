//! `molt tuf-client`: the client-under-test command line of the public
//! `tuf-conformance` suite (its CLIENT-CLI.md), on tough's
//! `RepositoryLoader` with molt's transport and explicit limits, so that an
//! outside suite can test the verifier molt devices rely on.
//!
//! tough keeps its state in a datastore, which also holds
//! `latest_known_time.json` (tough's guard against a clock stepping back).
//! The suite reads every `*.json` in the metadata directory as TUF metadata,
//! so the datastore is the subdirectory [`DATASTORE_DIR`] and, after every
//! update, the trusted metadata files are mirrored into the metadata
//! directory under their non-versioned names, as the protocol allows
//! ("the client-under-test CLI should make copies available").
//!
//! Metadata is verified by tough alone. Targets are looked up in tough's
//! verified targets (with its delegation search) and fetched with molt's
//! bounded download, which checks the listed length and sha256 before the
//! file appears; see `remote_name` for why tough's `read_target` is not used.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use molt_release::download::{DownloadLimits, Expected, NoProgress, Source};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tough::{ExpirationEnforcement, Limits, Repository, RepositoryLoader, TargetName, Transport};
use url::Url;

use crate::output::{Output, UsageError};

/// The datastore tough owns, inside the metadata directory.
const DATASTORE_DIR: &str = "tough-datastore";
/// The datastore file that is not TUF metadata: tough's record of the
/// latest clock reading.
const LATEST_KNOWN_TIME: &str = "latest_known_time.json";

/// Bounds on metadata, each named as in tough's `Limits`.
const LIMITS: Limits = Limits {
    max_root_size: 1 << 20,
    max_targets_size: 10 << 20,
    max_timestamp_size: 1 << 20,
    max_snapshot_size: 10 << 20,
    max_root_updates: 256,
};

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

Run the suite: see \"Conformance\" in README.md (wrapper: crates/molt-cli/tuf-conformance/molt-tuf-client).")]
pub(crate) struct Args {
    /// Where trusted metadata is kept.
    #[arg(long, value_name = "DIR")]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata (refresh, download).
    #[arg(long, value_name = "URL")]
    metadata_url: Option<Url>,
    /// Target path to download, in order (repeatable; download).
    #[arg(long = "target-name", value_name = "TARGET_PATH")]
    target_names: Vec<String>,
    /// Base URL of the repository's targets (download).
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
            let repository = load(&args.metadata_dir, metadata_url, metadata_url).await?;
            if args.verbose > 0 {
                eprintln!("molt tuf-client: refreshed {}", describe(&repository));
            }
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

fn init(metadata_dir: &Path, trusted_root: &Path) -> anyhow::Result<()> {
    let root = crate::preflight::read_bounded(trusted_root, LIMITS.max_root_size, "max_root_size")?;
    let datastore = metadata_dir.join(DATASTORE_DIR);
    // A new trust anchor replaces whatever was trusted before.
    if datastore.exists() {
        std::fs::remove_dir_all(&datastore).with_context(|| format!("could not clear {}", datastore.display()))?;
    }
    std::fs::create_dir_all(&datastore).with_context(|| format!("could not create {}", datastore.display()))?;
    write_atomically(&datastore.join("root.json"), &root)?;
    mirror(&datastore, metadata_dir)
}

/// Runs tough's client workflow from the trusted root in the datastore, then
/// mirrors what is trusted now, whether or not the update succeeded (a
/// verified new root stays trusted even if a later step fails).
async fn load(metadata_dir: &Path, metadata_url: &Url, targets_url: &Url) -> anyhow::Result<Repository> {
    let datastore = metadata_dir.join(DATASTORE_DIR);
    let root_path = datastore.join("root.json");
    if !root_path.is_file() {
        bail!(
            "{} has no trusted root; run `molt tuf-client --metadata-dir {} init <TRUSTED_ROOT>` first",
            metadata_dir.display(),
            metadata_dir.display()
        );
    }
    let root = crate::preflight::read_bounded(&root_path, LIMITS.max_root_size, "max_root_size")?;
    // tough refuses to run if the clock is behind the last run's. The suite
    // starts every command of a test at the same fake time (faketime), so
    // that guard, which TUF does not ask for, would refuse legitimate runs:
    // each run here judges expiry by its own clock only.
    let clock = datastore.join(LATEST_KNOWN_TIME);
    if clock.exists() {
        std::fs::remove_file(&clock).with_context(|| format!("could not remove {}", clock.display()))?;
    }
    let transport = molt_release::download::transport(&Source::Url(metadata_url.clone()), &DownloadLimits::default());
    let loaded = RepositoryLoader::new(&root, metadata_url.clone(), targets_url.clone())
        .transport(SharedTransport(transport))
        .limits(LIMITS)
        .datastore(&datastore)
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await
        .with_context(|| {
            format!("metadata from {metadata_url} did not verify; trusted metadata kept as it was verified")
        });
    let mirrored = mirror(&datastore, metadata_dir);
    let repository = loaded?;
    mirrored?;
    Ok(repository)
}

/// tough takes a concrete transport; molt's comes boxed.
#[derive(Debug, Clone)]
struct SharedTransport(Box<dyn Transport>);

#[tough::async_trait]
impl Transport for SharedTransport {
    async fn fetch(&self, url: Url) -> Result<tough::TransportStream, tough::TransportError> {
        self.0.fetch(url).await
    }
}

fn describe(repository: &Repository) -> String {
    format!(
        "root v{}, timestamp v{}, snapshot v{}, targets v{}",
        repository.root().signed.version,
        repository.timestamp().signed.version,
        repository.snapshot().signed.version,
        repository.targets().signed.version
    )
}

async fn download(args: &Args) -> anyhow::Result<()> {
    let metadata_url = required(&args.metadata_url, "--metadata-url", "download")?;
    let target_base_url = required(&args.target_base_url, "--target-base-url", "download")?;
    let target_dir = required(&args.target_dir, "--target-dir", "download")?;
    if args.target_names.is_empty() {
        return Err(UsageError("`download` needs at least one --target-name".to_owned()).into());
    }
    let repository = load(&args.metadata_dir, metadata_url, target_base_url).await?;
    std::fs::create_dir_all(target_dir).with_context(|| format!("could not create {}", target_dir.display()))?;
    // In argument order; the first failure stops the rest.
    let targets_source = targets_source(target_base_url)?;
    for name in &args.target_names {
        download_target(&repository, &targets_source, name, target_dir, args.verbose).await?;
    }
    Ok(())
}

async fn download_target(
    repository: &Repository,
    targets_source: &Source,
    name: &str,
    target_dir: &Path,
    verbose: u8,
) -> anyhow::Result<()> {
    let target_name = TargetName::new(name).with_context(|| format!("`{name}` is not a usable target name"))?;
    // tough's own search honours delegation order and terminating roles.
    let target = repository
        .targets()
        .signed
        .find_target(&target_name, false)
        .with_context(|| format!("target `{name}` is not listed in the trusted targets metadata"))?;
    let sha256: [u8; 32] = target.hashes.sha256.as_ref().try_into().map_err(|_| {
        anyhow::anyhow!(
            "target `{name}` lists a sha256 of {} bytes, not 32",
            target.hashes.sha256.len()
        )
    })?;
    let path = target_dir.join(file_name(name));
    if is_cached(&path, target.length, &sha256)? {
        if verbose > 0 {
            eprintln!("molt tuf-client: {name} is already downloaded and verified");
        }
        return Ok(());
    }
    let remote_name = remote_name(
        target_name.resolved(),
        &sha256,
        repository.root().signed.consistent_snapshot,
    );
    let expected = Expected {
        length: target.length,
        sha256,
    };
    let downloaded = molt_release::download::download_target(
        targets_source,
        &remote_name,
        &path,
        &expected,
        &DownloadLimits::default(),
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
            "molt tuf-client: downloaded {name} ({} bytes) to {}",
            target.length,
            path.display()
        );
    }
    Ok(())
}

/// The file name a target is fetched under: with consistent snapshots the
/// sha256 is prefixed to the last path segment (`dir/<sha256>.file`), as the
/// TUF specification says. tough 0.24 prefixes the whole path instead
/// (`<sha256>.dir/file`), so the CLI fetches targets itself, through
/// molt's bounded, digest-checked download.
fn remote_name(name: &str, sha256: &[u8; 32], consistent_snapshot: bool) -> String {
    if !consistent_snapshot {
        return name.to_owned();
    }
    let digest: String = sha256.iter().map(|byte| format!("{byte:02x}")).collect();
    match name.rsplit_once('/') {
        Some((dir, file)) => format!("{dir}/{digest}.{file}"),
        None => format!("{digest}.{name}"),
    }
}

/// Where `download_target` keeps a partial download of `dest`.
fn molt_part_path(dest: &Path) -> PathBuf {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    PathBuf::from(part)
}

/// molt's downloads take the repository root and add `targets/`; the suite
/// gives the targets URL itself.
fn targets_source(target_base_url: &Url) -> anyhow::Result<Source> {
    let mut base = target_base_url.clone();
    let is_targets = {
        let mut segments = base
            .path_segments()
            .into_iter()
            .flatten()
            .filter(|segment| !segment.is_empty());
        segments.next_back() == Some("targets")
    };
    if !is_targets {
        return Err(UsageError(format!(
            "--target-base-url {target_base_url} must end in /targets (molt serves targets under <repository>/targets/)"
        ))
        .into());
    }
    base.path_segments_mut()
        .map_err(|()| UsageError(format!("--target-base-url {target_base_url} cannot be a base URL")))?
        .pop_if_empty()
        .pop()
        .push("");
    Ok(Source::Url(base))
}

/// True if `path` already holds exactly the expected bytes.
fn is_cached(path: &Path, length: u64, sha256: &[u8]) -> anyhow::Result<bool> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error).with_context(|| format!("could not read {}", path.display())),
    };
    if !metadata.is_file() || metadata.len() != length {
        return Ok(false);
    }
    let bytes = std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    Ok(Sha256::digest(&bytes).as_slice() == sha256)
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

/// Copies the datastore's metadata files into `metadata_dir` and removes
/// metadata files there that are no longer trusted.
fn mirror(datastore: &Path, metadata_dir: &Path) -> anyhow::Result<()> {
    let trusted = metadata_files(datastore)?;
    for name in &trusted {
        let bytes = std::fs::read(datastore.join(name))
            .with_context(|| format!("could not read {}", datastore.join(name).display()))?;
        let dest = metadata_dir.join(name);
        if std::fs::read(&dest).ok().as_deref() != Some(bytes.as_slice()) {
            write_atomically(&dest, &bytes)?;
        }
    }
    for name in metadata_files(metadata_dir)?.difference(&trusted) {
        let stale = metadata_dir.join(name);
        std::fs::remove_file(&stale).with_context(|| format!("could not remove {}", stale.display()))?;
    }
    Ok(())
}

/// The `*.json` files in `dir` that are TUF metadata.
fn metadata_files(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("could not list {}", dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.ends_with(".json") && name != LATEST_KNOWN_TIME && entry.path().is_file() {
            names.insert(name);
        }
    }
    Ok(names)
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
