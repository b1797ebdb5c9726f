//! `molt repo`: publish signed releases and keep the published metadata
//! fresh.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use molt_release::repo::{Expiry, Published, Repo};
use serde::Serialize;

use crate::output::{Output, Report, human_bytes};

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
    Push(PushArgs),
}

/// Upload a published repository to a molt server, which hosts it for its
/// devices.
///
/// Uploads `<WORKSPACE>/public/` (signed metadata and targets; never a key)
/// file by file, skipping targets the server already serves, then asks the
/// server to commit. The server verifies the upload as a device would (TUF
/// from its pinned root, molt's release rules for every hardware class,
/// every part's hashes) and only then serves it at https://HOST:PORT/repo/.
/// The first push pins the repository's root on the server: pass
/// --pin-root with an admin token; enrolled devices receive that root.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  molt repo push --repo ./repo --server https://127.0.0.1:8443 --ca fleet/device-ca.pem \\
      --token-file fleet/admin.token --pin-root                  (the first push)
  MOLT_TOKEN=... molt repo push --repo ./repo --server https://fleet.example.com:8443

Next:
  SSL_CERT_FILE=fleet/device-ca.pem molt verify --root root.json https://HOST:PORT/repo/
                                            what a device would install")]
struct PushArgs {
    /// The repository workspace (its public/ directory is pushed).
    #[arg(long, value_name = "WORKSPACE")]
    repo: PathBuf,
    /// Pin this repository's first root on the server (the first push; admin token).
    #[arg(long)]
    pin_root: bool,
    #[command(flatten)]
    conn: crate::fleet_client::Conn,
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
        Command::Push(args) => push(args, output).await,
    }
}

#[derive(Debug, Serialize)]
struct PushReport {
    server: String,
    /// The CA the server's certificate chains to, as given with --ca.
    #[serde(skip)]
    ca: Option<PathBuf>,
    files_uploaded: usize,
    files_skipped: usize,
    bytes_uploaded: u64,
    #[serde(flatten)]
    committed: serde_json::Value,
}

impl Report for PushReport {
    fn human(&self) -> String {
        let c = &self.committed;
        let release = c["release_set"]
            .as_u64()
            .map_or_else(|| "no release set".to_owned(), |v| format!("release set {v}"));
        let classes = c["hardware_classes"]
            .as_array()
            .map(|classes| classes.iter().filter_map(|c| c.as_str()).collect::<Vec<_>>().join(", "))
            .filter(|classes| !classes.is_empty())
            .map_or_else(
                || "policies only".to_owned(),
                |classes| format!("hardware classes {classes}"),
            );
        let resigned = if c["timestamp_resigned"] == true {
            ", re-signed by the server"
        } else {
            ""
        };
        let pinned = if c["root_pinned"] == true {
            "\n  pinned this repository's root: devices enrolled from now on receive it"
        } else {
            ""
        };
        let url = c["url"].as_str().unwrap_or("");
        // The server's certificate comes from its own CA; rustls reads
        // SSL_CERT_FILE for the roots to trust.
        let trust = self
            .ca
            .as_ref()
            .map(|ca| format!("SSL_CERT_FILE={} ", ca.display()))
            .unwrap_or_default();
        format!(
            "pushed to {}: {} files uploaded ({}), {} already there\n  the server verified {release} ({classes}) as a device would\n  \
             serving timestamp v{}{resigned} at {url}{pinned}\n\nnext:\n  {trust}molt verify --root root.json {url}\n  \
             molt device desire ID --release N    to move a device to it\n",
            self.server,
            self.files_uploaded,
            human_bytes(self.bytes_uploaded),
            self.files_skipped,
            c["timestamp_version"],
        )
    }
}

/// Every file under `dir`, relative to it, with `/` separators.
fn files_under(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).with_context(|| format!("listing {}", current.display()))? {
            let entry = entry.with_context(|| format!("listing {}", current.display()))?;
            let path = entry.path();
            if entry
                .file_type()
                .with_context(|| format!("reading {}", path.display()))?
                .is_dir()
            {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                let relative = relative
                    .to_str()
                    .with_context(|| format!("{} is not a UTF-8 path", path.display()))?;
                files.push(relative.to_owned());
            }
        }
    }
    files.sort();
    Ok(files)
}

async fn push(args: PushArgs, output: &Output) -> anyhow::Result<()> {
    let public = args.repo.join("public");
    if !public.join("metadata/timestamp.json").is_file() {
        anyhow::bail!(
            "{} has nothing published (no metadata/timestamp.json); run `molt repo publish --repo {} --keys <KEYS> <VERSION>` first",
            public.display(),
            args.repo.display()
        );
    }
    let client = args.conn.client()?;
    let files = files_under(&public)?;
    let started = client
        .call(reqwest::Method::POST, "/api/v1/repository/uploads", None, &[])
        .await
        .context("could not start an upload")?;
    let id = started["id"]
        .as_str()
        .context("the server's answer to an upload has no id")?
        .to_owned();
    let mut sizes = Vec::with_capacity(files.len());
    for file in &files {
        let length = std::fs::metadata(public.join(file))
            .with_context(|| format!("reading {}", public.join(file).display()))?
            .len();
        sizes.push(length);
    }
    let outcome = upload_and_commit(&client, &id, &public, &files, &sizes, args.pin_root, output).await;
    if outcome.is_err() {
        // Best effort: the server also removes an upload left idle.
        let _ = client
            .call(
                reqwest::Method::DELETE,
                &format!("/api/v1/repository/uploads/{id}"),
                None,
                &[],
            )
            .await;
    }
    let (uploaded, skipped, bytes, committed) = outcome?;
    output.report(&PushReport {
        server: args.conn.server.clone(),
        ca: args.conn.ca.clone(),
        files_uploaded: uploaded,
        files_skipped: skipped,
        bytes_uploaded: bytes,
        committed,
    })
}

/// Uploads every file the server does not serve yet, then commits; returns
/// (uploaded, skipped, bytes uploaded, the server's answer to the commit).
async fn upload_and_commit(
    client: &crate::fleet_client::Client,
    id: &str,
    public: &std::path::Path,
    files: &[String],
    sizes: &[u64],
    pin_root: bool,
    output: &Output,
) -> anyhow::Result<(usize, usize, u64, serde_json::Value)> {
    use molt_release::download::Progress as _;
    let bars = output.progress();
    bars.start(&format!("push {} files", files.len()), sizes.iter().sum(), 0);
    let (mut uploaded, mut skipped, mut bytes) = (0, 0, 0);
    for (file, length) in files.iter().zip(sizes) {
        // Targets are hash-named: one the server serves with the same length is this file.
        if file.starts_with("targets/") && client.served_length(&format!("/repo/{file}")).await? == Some(*length) {
            skipped += 1;
        } else {
            let body =
                std::fs::read(public.join(file)).with_context(|| format!("reading {}", public.join(file).display()))?;
            client
                .put_bytes(&format!("/api/v1/repository/uploads/{id}/files/{file}"), body)
                .await
                .with_context(|| {
                    format!("uploading {file}; nothing is served until the push commits, so push again")
                })?;
            uploaded += 1;
            bytes += length;
        }
        bars.advance(*length);
    }
    bars.finish();
    let committed = client
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/repository/uploads/{id}/commit"),
            Some(serde_json::json!({ "pin_root": pin_root })),
            &[],
        )
        .await
        .context("the server did not publish the upload; what it served before is unchanged")?;
    Ok((uploaded, skipped, bytes, committed))
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
