//! Release hosting: the TUF repository that devices update from.
//!
//! `molt repo push` uploads what `molt repo publish` made (signed metadata
//! and targets, never a key) into an upload directory, one file per
//! request, and then commits it. The commit verifies the upload exactly as
//! a device verifies a repository (molt-release's client: TUF from the
//! server's pinned root with rollback and freeze protection, molt's release
//! rules for every hardware class the newest release set names, and every
//! part's length and hashes), and only then adds its files to the served
//! directory: targets first, then versioned metadata, then `timestamp.json`
//! by one rename, so a device never sees a timestamp whose files are not
//! all there. Nothing is ever removed from the served directory.
//!
//! The served directory is `/repo/` on the HTTPS listener, with `Range`
//! requests (devices resume interrupted downloads), no token needed: TUF,
//! not the transport, is what a device trusts.
//!
//! The server never holds root, targets or snapshot keys. It may hold the
//! online timestamp key (`repository.timestamp_key`); then it re-signs
//! `timestamp.json` before it expires, as TUF intends, and a pushed
//! timestamp that is not newer than the served one is re-signed with the
//! next version, so that an operator's push and the server's re-signing do
//! not race each other into a rollback.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use http_body_util::BodyExt as _;
use molt_release::client::{Client, ClientLimits, Installed, UpdateError};
use molt_release::download::{NoProgress, Source};
use molt_release::keys::Signer;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

use crate::http::{ApiResult, ErrorBody, Role, TokenRefusals, authorize};
use crate::ingest::tokio_util_shutdown::Shutdown;
use crate::{Error, Shared};

/// The agent version the server checks release sets against: any, since
/// the server checks what a release set is, not whether one device may run it.
const ANY_AGENT_VERSION: &str = "4294967295.4294967295.4294967295";

/// Release hosting's state: where its directories are, the timestamp key,
/// and one lock that orders commits and re-signing.
pub struct Releases {
    dir: PathBuf,
    pinned_root: PathBuf,
    timestamp_key: Option<Signer>,
    lock: tokio::sync::Mutex<()>,
    /// Timestamps the server re-signed, for `/metrics`.
    pub resigned: AtomicU64,
    /// Pushes committed, for `/metrics`.
    pub pushes: AtomicU64,
    /// Pushes refused at commit, for `/metrics`.
    pub pushes_refused: AtomicU64,
}

impl Releases {
    /// Opens `data_dir/repository`, loading the timestamp key if configured.
    pub(crate) fn open(config: &crate::Config) -> Result<Releases, Error> {
        let dir = config.data_dir.join("repository");
        for sub in ["public/metadata", "public/targets", "uploads"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::io(format!("creating {}", dir.join(sub).display()), e))?;
        }
        let timestamp_key = match &config.repository.timestamp_key {
            Some(path) => {
                let path = config.data_dir.join(path);
                Some(
                    molt_release::keys::load_key(&path)
                        .map_err(|e| Error::Config(format!("repository.timestamp_key {}: {e}", path.display())))?,
                )
            }
            None => None,
        };
        Ok(Releases {
            pinned_root: config.data_dir.join(crate::TUF_ROOT_FILE),
            dir,
            timestamp_key,
            lock: tokio::sync::Mutex::new(()),
            resigned: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            pushes_refused: AtomicU64::new(0),
        })
    }

    /// The directory served under `/repo/`.
    pub fn public_dir(&self) -> PathBuf {
        self.dir.join("public")
    }

    fn uploads(&self) -> PathBuf {
        self.dir.join("uploads")
    }

    fn upload(&self, id: &str) -> Result<PathBuf, Error> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::NotFound(format!("upload {id}")));
        }
        let dir = self.uploads().join(id);
        if !dir.is_dir() {
            return Err(Error::NotFound(format!("upload {id}")));
        }
        Ok(dir)
    }
}

/// The routes of release hosting: the upload API (in the OpenAPI
/// document, see [`crate::http::router`]) and `/repo/` (not in it).
pub(crate) fn router(shared: &Arc<Shared>) -> OpenApiRouter<Arc<Shared>> {
    use axum::extract::DefaultBodyLimit;
    let serve =
        tower_http::services::ServeDir::new(shared.releases.public_dir()).append_index_html_on_directories(false);
    OpenApiRouter::default()
        .routes(routes!(status))
        .routes(routes!(start_upload))
        .routes(routes!(abort_upload))
        .routes(routes!(upload_file).layer(DefaultBodyLimit::disable()))
        .routes(routes!(commit))
        .nest_service("/repo", serve)
}

/// `GET /api/v1/repository`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RepositoryStatus {
    /// Whether the server has a pinned TUF root (devices get it at enrollment).
    pub root_pinned: bool,
    /// The served timestamp's version, if anything is served.
    pub timestamp_version: Option<u64>,
    /// When the served timestamp expires (seconds since the epoch).
    pub timestamp_expires_unix_s: Option<i64>,
    /// Whether the server re-signs the timestamp with the online key.
    pub timestamp_key: bool,
    /// The URL devices fetch the repository from.
    pub url: String,
}

/// What the server serves: the pinned root, the timestamp, the URL.
///
/// Least role: viewer.
#[utoipa::path(
    get,
    path = "/api/v1/repository",
    tag = "repository",
    operation_id = "repository_status",
    security(("bearer" = [])),
    responses((status = 200, description = "the served repository", body = RepositoryStatus), TokenRefusals),
)]
async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<RepositoryStatus> {
    authorize(&shared, &headers, Role::Viewer).await?;
    let releases = &shared.releases;
    let timestamp = molt_release::repo::timestamp_info(&releases.public_dir().join("metadata")).ok();
    Ok(Json(RepositoryStatus {
        root_pinned: releases.pinned_root.is_file(),
        timestamp_version: timestamp.map(|t| t.version),
        timestamp_expires_unix_s: timestamp.map(|t| t.expires_unix_s),
        timestamp_key: releases.timestamp_key.is_some(),
        url: repository_url(&shared),
    }))
}

/// Where devices fetch the repository.
pub(crate) fn repository_url(shared: &Shared) -> String {
    format!("https://{}/repo/", shared.addrs.https)
}

/// A new upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct UploadStarted {
    /// Its id, for the file and commit routes.
    id: String,
}

/// Opens an upload: the files of one push, then a commit.
///
/// Least role: operator.
#[utoipa::path(
    post,
    path = "/api/v1/repository/uploads",
    tag = "repository",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the upload", body = UploadStarted),
        (status = 400, description = "`limit_exceeded`: `repository.uploads_max` uploads are open", body = ErrorBody),
        TokenRefusals,
    ),
)]
async fn start_upload(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> ApiResult<UploadStarted> {
    authorize(&shared, &headers, Role::Operator).await?;
    let limits = &shared.config.repository;
    let uploads = shared.releases.uploads();
    let open = expire_uploads(&uploads, Duration::from_secs(limits.upload_idle_timeout_s))
        .map_err(|e| Error::io("listing uploads", e))?;
    if open >= limits.uploads_max {
        return Err(Error::refused(
            "limit_exceeded",
            format!(
                "{open} uploads are open, the most the server keeps (repository.uploads_max = {}); commit or abort one",
                limits.uploads_max
            ),
        )
        .into());
    }
    let id = crate::random_hex(16);
    std::fs::create_dir(uploads.join(&id)).map_err(|e| Error::io("creating an upload", e))?;
    touch(&uploads, &id).map_err(|e| Error::io("creating an upload", e))?;
    Ok(Json(UploadStarted { id }))
}

/// Marks upload `id` as active now: `uploads/<id>.active`, beside its
/// directory, so that nothing in the upload itself is touched.
fn touch(uploads: &Path, id: &str) -> std::io::Result<()> {
    std::fs::File::create(uploads.join(format!("{id}.active"))).map(drop)
}

/// Removes uploads nobody has added to for `idle` (a push that died), and
/// returns how many are left open.
fn expire_uploads(uploads: &Path, idle: Duration) -> std::io::Result<usize> {
    let mut open = 0;
    for entry in std::fs::read_dir(uploads)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let marker = uploads.join(format!("{}.active", entry.file_name().to_string_lossy()));
        let last = std::fs::metadata(&marker)
            .or_else(|_| entry.metadata())
            .and_then(|metadata| metadata.modified())?;
        if last.elapsed().is_ok_and(|elapsed| elapsed > idle) {
            tracing::info!(upload = %entry.file_name().to_string_lossy(), "removing an upload idle longer than repository.upload_idle_timeout_s");
            std::fs::remove_dir_all(entry.path())?;
            let _ = std::fs::remove_file(&marker);
        } else {
            open += 1;
        }
    }
    Ok(open)
}

/// An aborted upload.
#[derive(Debug, Serialize, ToSchema)]
struct UploadAborted {
    /// Its id.
    aborted: String,
}

/// Aborts an upload: its files are removed, nothing is served.
///
/// Least role: operator.
#[utoipa::path(
    delete,
    path = "/api/v1/repository/uploads/{id}",
    tag = "repository",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the upload id")),
    responses(
        (status = 200, description = "the upload is gone", body = UploadAborted),
        (status = 404, description = "`not_found`: no such upload", body = ErrorBody),
        TokenRefusals,
    ),
)]
async fn abort_upload(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<UploadAborted> {
    authorize(&shared, &headers, Role::Operator).await?;
    let dir = shared.releases.upload(&id)?;
    tokio::fs::remove_dir_all(&dir)
        .await
        .map_err(|e| Error::io("removing an upload", e))?;
    let _ = tokio::fs::remove_file(shared.releases.uploads().join(format!("{id}.active"))).await;
    Ok(Json(UploadAborted { aborted: id }))
}

/// A path inside an upload: `metadata/NAME.json` or `targets/...`, with
/// plain segments only.
fn upload_path(path: &str) -> Result<PathBuf, Error> {
    let bad = |why: &str| Error::refused("path_invalid", format!("upload path {path:?}: {why}"));
    if path.len() > 1024 {
        return Err(bad("longer than 1024 bytes"));
    }
    let relative = Path::new(path);
    let mut segments = 0;
    for component in relative.components() {
        match component {
            Component::Normal(segment) => {
                let segment = segment.to_str().ok_or_else(|| bad("not UTF-8"))?;
                if segment.starts_with('.')
                    || !segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+' | b'@'))
                {
                    return Err(bad("segments are letters, digits and . - _ + @, not starting with ."));
                }
                segments += 1;
            }
            _ => return Err(bad("only plain relative segments")),
        }
    }
    match relative.components().next() {
        Some(Component::Normal(top)) if top == "metadata" && segments == 2 && path.ends_with(".json") => {
            Ok(relative.into())
        }
        Some(Component::Normal(top)) if top == "targets" && segments >= 2 => Ok(relative.into()),
        _ => Err(bad("expected metadata/NAME.json or targets/...")),
    }
}

/// A stored upload file.
#[derive(Debug, Serialize, ToSchema)]
struct UploadedFile {
    /// Its path in the upload.
    path: String,
    /// Its length.
    bytes: u64,
}

/// Stores one file of an upload (`metadata/NAME.json` or `targets/...`), streamed.
///
/// Least role: operator. No body limit but `repository.upload_file_bytes_max`.
#[utoipa::path(
    put,
    path = "/api/v1/repository/uploads/{id}/files/{*path}",
    tag = "repository",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "the upload id"),
        ("path" = String, Path, description = "`metadata/NAME.json` or `targets/...`; may hold `/`"),
    ),
    request_body(content_type = "application/octet-stream", description = "the file's bytes"),
    responses(
        (status = 200, description = "the file is stored in the upload", body = UploadedFile),
        (
            status = 400,
            description = "`path_invalid`, `body_invalid` or `limit_exceeded` \
                           (`repository.upload_files_max`, `repository.upload_file_bytes_max`)",
            body = ErrorBody,
        ),
        (status = 404, description = "`not_found`: no such upload", body = ErrorBody),
        TokenRefusals,
    ),
)]
async fn upload_file(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath((id, path)): UrlPath<(String, String)>,
    body: Body,
) -> ApiResult<UploadedFile> {
    authorize(&shared, &headers, Role::Operator).await?;
    let limits = &shared.config.repository;
    let dir = shared.releases.upload(&id)?;
    let relative = upload_path(&path)?;
    let files = files_under(&dir)
        .map_err(|e| Error::io("counting upload files", e))?
        .len();
    if files >= limits.upload_files_max {
        return Err(Error::refused(
            "limit_exceeded",
            format!("the upload has {files} files, the most one push may have (repository.upload_files_max)"),
        )
        .into());
    }
    let dest = dir.join(&relative);
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| Error::io("creating an upload directory", e))?;
    }
    touch(&shared.releases.uploads(), &id).map_err(|e| Error::io("marking an upload", e))?;
    let mut partial = dest.clone().into_os_string();
    partial.push(".part-upload");
    let partial = PathBuf::from(partial);
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| Error::io("creating an upload file", e))?;
    let mut body = body;
    let mut written: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::refused("body_invalid", format!("reading the upload of {path}: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        written += data.len() as u64;
        if written > limits.upload_file_bytes_max {
            drop(file);
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(Error::refused(
                "limit_exceeded",
                format!(
                    "{path} is larger than {} bytes (repository.upload_file_bytes_max)",
                    limits.upload_file_bytes_max
                ),
            )
            .into());
        }
        file.write_all(&data)
            .await
            .map_err(|e| Error::io("writing an upload file", e))?;
    }
    file.flush().await.map_err(|e| Error::io("writing an upload file", e))?;
    drop(file);
    tokio::fs::rename(&partial, &dest)
        .await
        .map_err(|e| Error::io("storing an upload file", e))?;
    Ok(Json(UploadedFile { path, bytes: written }))
}

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> std::io::Result<BTreeSet<PathBuf>> {
    let mut files = BTreeSet::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else if let Ok(relative) = entry.path().strip_prefix(dir) {
                files.insert(relative.to_owned());
            }
        }
    }
    Ok(files)
}

/// `POST /api/v1/repository/uploads/{id}/commit`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// Pin the upload's `metadata/1.root.json` as the root devices trust,
    /// when the server has none yet (admin only).
    #[serde(default)]
    pub pin_root: bool,
}

/// What a commit did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CommitResponse {
    /// The newest release set now served, if any.
    pub release_set: Option<u64>,
    /// Hardware classes verified (empty for a policies-only set).
    pub hardware_classes: Vec<String>,
    /// The served timestamp's version.
    pub timestamp_version: u64,
    /// Whether the server re-signed the pushed timestamp.
    pub timestamp_resigned: bool,
    /// Files added to the served directory.
    pub files_added: usize,
    /// Whether this push pinned the root.
    pub root_pinned: bool,
    /// Where devices fetch the repository.
    pub url: String,
}

/// Commits an upload: verified as a device would verify it, then served.
///
/// Least role: operator; admin with `pin_root`. The upload is spent either way.
#[utoipa::path(
    post,
    path = "/api/v1/repository/uploads/{id}/commit",
    tag = "repository",
    operation_id = "commit_upload",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the upload id")),
    request_body(content = Option<CommitRequest>, description = "optional; `{}` or none commits without pinning"),
    responses(
        (status = 200, description = "what is served now", body = CommitResponse),
        (
            status = 400,
            description = "`repository_invalid`, `root_not_pinned`, `root_already_pinned` or `timestamp_key_invalid`; \
                           nothing was published",
            body = ErrorBody,
        ),
        (status = 404, description = "`not_found`: no such upload", body = ErrorBody),
        TokenRefusals,
    ),
)]
async fn commit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Option<Json<CommitRequest>>,
) -> ApiResult<CommitResponse> {
    let request = body.map(|Json(request)| request).unwrap_or_default();
    let need = if request.pin_root { Role::Admin } else { Role::Operator };
    let caller = authorize(&shared, &headers, need).await?;
    let releases = &shared.releases;
    let staged = releases.upload(&id)?;
    let _guard = releases.lock.lock().await;
    let before = molt_release::repo::timestamp_info(&releases.public_dir().join("metadata")).ok();
    let outcome = commit_locked(&shared, &staged, &request).await;
    // The upload is spent either way: a refused one is pushed again.
    let _ = tokio::fs::remove_dir_all(&staged).await;
    let _ = tokio::fs::remove_file(releases.uploads().join(format!("{id}.active"))).await;
    let response = match outcome {
        Ok(response) => response,
        Err(e) => {
            releases.pushes_refused.fetch_add(1, Ordering::Relaxed);
            shared
                .store
                .audit(
                    &caller.name,
                    "repository.push_refused",
                    &id,
                    None,
                    Some(&serde_json::json!({ "code": e.code(), "message": e.public_message() })),
                )
                .await?;
            return Err(e.into());
        }
    };
    releases.pushes.fetch_add(1, Ordering::Relaxed);
    shared
        .store
        .audit(
            &caller.name,
            "repository.push",
            &id,
            before
                .map(|t| serde_json::json!({ "timestamp_version": t.version }))
                .as_ref(),
            Some(&serde_json::json!({
                "release_set": response.release_set,
                "timestamp_version": response.timestamp_version,
                "timestamp_resigned": response.timestamp_resigned,
                "files_added": response.files_added,
                "root_pinned": response.root_pinned,
            })),
        )
        .await?;
    Ok(Json(response))
}

fn refused(code: &'static str, message: impl Into<String>) -> Error {
    Error::refused(code, message)
}

fn update_refused(e: UpdateError) -> Error {
    refused(
        "repository_invalid",
        format!("the upload did not pass a device's checks, so nothing was published: {e}"),
    )
}

async fn commit_locked(shared: &Shared, staged: &Path, request: &CommitRequest) -> Result<CommitResponse, Error> {
    let releases = &shared.releases;
    let public = releases.public_dir();
    let staged_metadata = staged.join("metadata");
    if !staged_metadata.join("timestamp.json").is_file() || !staged_metadata.join("root.json").is_file() {
        return Err(refused(
            "repository_invalid",
            "the upload has no metadata/timestamp.json or metadata/root.json; push a workspace's whole public/ directory",
        ));
    }

    // The root devices trust: pinned once, by an admin, from the upload,
    // and only once the upload has verified against it.
    let mut to_pin = None;
    if !releases.pinned_root.is_file() {
        if !request.pin_root {
            return Err(refused(
                "root_not_pinned",
                "the server has no pinned TUF root yet; push once with --pin-root (admin token) to pin this repository's \
                 metadata/1.root.json",
            ));
        }
        let first = staged_metadata.join("1.root.json");
        let bytes = std::fs::read(&first).map_err(|_| {
            refused(
                "repository_invalid",
                "--pin-root needs metadata/1.root.json in the upload, the first root of the repository",
            )
        })?;
        molt_release::tuf::verify_trusted_root(&bytes).map_err(|e| {
            refused(
                "repository_invalid",
                format!("metadata/1.root.json cannot be pinned: {e}"),
            )
        })?;
        to_pin = Some(bytes);
    } else if request.pin_root {
        return Err(refused(
            "root_already_pinned",
            "the server already has a pinned root; devices follow root rotations from it, so push without --pin-root",
        ));
    }
    let trusted = releases.dir.join("trusted");
    let limits = ClientLimits::default();
    if let Some(root) = &to_pin {
        // Whatever an earlier, refused pin attempt left is started afresh.
        if trusted.exists() {
            std::fs::remove_dir_all(&trusted).map_err(|e| Error::io("resetting the trusted metadata", e))?;
        }
        Client::init(&trusted, root, "", limits.clone()).map_err(update_refused)?;
    } else if !trusted.join("metadata").exists() {
        let root = std::fs::read(&releases.pinned_root).map_err(|e| Error::io("reading the pinned root", e))?;
        Client::init(&trusted, &root, "", limits.clone()).map_err(update_refused)?;
    }

    // Targets the server already serves need not be uploaded again: they
    // are hash-named (consistent snapshots), so the same name is the same file.
    let served_targets = files_under(&public.join("targets")).map_err(|e| Error::io("listing served targets", e))?;
    for relative in &served_targets {
        let dest = staged.join("targets").join(relative);
        if !dest.exists() {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io("linking served targets", e))?;
            }
            let source = public.join("targets").join(relative);
            if std::fs::hard_link(&source, &dest).is_err() {
                std::fs::copy(&source, &dest).map_err(|e| Error::io("copying served targets", e))?;
            }
        }
    }

    // An operator's timestamp that is not newer than the served one (the
    // server re-signed since) is re-signed as the next version.
    let mut timestamp_resigned = false;
    if let (Some(key), Ok(served)) = (
        &releases.timestamp_key,
        molt_release::repo::timestamp_info(&public.join("metadata")),
    ) {
        let pushed = molt_release::repo::timestamp_info(&staged_metadata)
            .map_err(|e| refused("repository_invalid", format!("metadata/timestamp.json: {e}")))?;
        if pushed.version <= served.version {
            molt_release::repo::resign_timestamp(
                &staged_metadata,
                key,
                Some(served.version + 1),
                Duration::from_secs(shared.config.repository.timestamp_lifetime_s),
            )
            .await
            .map_err(|e| refused("timestamp_key_invalid", format!("re-signing the pushed timestamp: {e}")))?;
            timestamp_resigned = true;
        }
    }

    // Verify as a device would, for every hardware class the set names.
    let source = Source::Dir(staged.to_owned());
    let installed = Installed {
        release_version: 0,
        security_counter: 0,
        agent_version: ANY_AGENT_VERSION.to_owned(),
    };
    let parts = releases.dir.join("verify-parts");
    let _ = std::fs::remove_dir_all(&parts);
    std::fs::create_dir_all(&parts).map_err(|e| Error::io("creating verify-parts", e))?;
    let open = |class: &str| Client::open(&trusted, class, limits.clone()).map_err(update_refused);
    // Each class is checked and its parts downloaded and hashed in turn; a
    // check supersedes the one before it, so the last one is accepted.
    let fetch = |client: Client, verified| {
        let parts = parts.clone();
        async move {
            let fetched = client
                .fetch(&verified, &parts, &NoProgress, &tokio_util_cancel())
                .await
                .map_err(update_refused)?;
            Ok::<_, Error>((client, fetched))
        }
    };
    let mut classes = Vec::new();
    let mut last = None;
    let any_class = open("")?;
    let release_set = match any_class.check(&source, &installed).await {
        Ok(None) => None,
        // Policies only: no class to choose.
        Ok(Some(verified)) => {
            let version = verified.set.version;
            last = Some(fetch(any_class, verified).await?);
            Some(version)
        }
        Err(UpdateError::WrongHardwareClass { available, version, .. }) => {
            classes = available.split(", ").map(str::to_owned).collect::<Vec<_>>();
            for class in &classes {
                let client = open(class)?;
                let verified = client
                    .check(&source, &installed)
                    .await
                    .map_err(update_refused)?
                    .ok_or_else(|| {
                        refused(
                            "repository_invalid",
                            format!("release set {version} vanished while verifying"),
                        )
                    })?;
                last = Some(fetch(client, verified).await?);
            }
            Some(version)
        }
        Err(e) => return Err(update_refused(e)),
    };
    if let Some((client, fetched)) = last {
        client.accept(&fetched).map_err(update_refused)?;
    }
    let _ = std::fs::remove_dir_all(&parts);

    let files_added = publish(staged, &public)?;
    let root_pinned = match &to_pin {
        Some(root) => {
            write_synced(&releases.pinned_root, root)?;
            true
        }
        None => false,
    };
    let timestamp = molt_release::repo::timestamp_info(&public.join("metadata"))
        .map_err(|e| Error::io("reading the served timestamp", std::io::Error::other(e.to_string())))?;
    Ok(CommitResponse {
        release_set,
        hardware_classes: classes,
        timestamp_version: timestamp.version,
        timestamp_resigned,
        files_added,
        root_pinned,
        url: repository_url(shared),
    })
}

fn tokio_util_cancel() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}

/// Adds the verified upload's files to the served directory: targets, then
/// versioned metadata, then `root.json`, then `timestamp.json` last, each
/// synced and renamed into place. A versioned file already served with
/// other content is refused (it would be an equivocation), before anything
/// is added.
fn publish(staged: &Path, public: &Path) -> Result<usize, Error> {
    let files = files_under(staged).map_err(|e| Error::io("listing the upload", e))?;
    let mutable = [Path::new("metadata/timestamp.json"), Path::new("metadata/root.json")];
    let mut added = Vec::new();
    for relative in &files {
        let served = public.join(relative);
        if mutable.contains(&relative.as_path()) {
            continue;
        }
        if served.exists() {
            if relative.starts_with("metadata")
                && std::fs::read(&served).ok() != std::fs::read(staged.join(relative)).ok()
            {
                return Err(refused(
                    "repository_invalid",
                    format!(
                        "{} is already served with other content; a version, once published, never changes",
                        relative.display()
                    ),
                ));
            }
            continue;
        }
        added.push(relative.clone());
    }
    // Targets before the metadata that lists them.
    added.sort_by_key(|relative| !relative.starts_with("targets"));
    for relative in &added {
        install(&staged.join(relative), &public.join(relative))?;
    }
    for name in ["metadata/root.json", "metadata/timestamp.json"] {
        install(&staged.join(name), &public.join(name))?;
    }
    Ok(added.len())
}

/// Copies `from` to a temporary file beside `to`, syncs it and renames it
/// into place.
fn install(from: &Path, to: &Path) -> Result<(), Error> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("creating a served directory", e))?;
    }
    let bytes = std::fs::read(from).map_err(|e| Error::io(format!("reading {}", from.display()), e))?;
    write_synced(to, &bytes)
}

fn write_synced(to: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    let temporary = to.with_extension("publishing");
    let mut file = std::fs::File::create(&temporary).map_err(|e| Error::io(format!("writing {}", to.display()), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("writing {}", to.display()), e))?;
    std::fs::rename(&temporary, to).map_err(|e| Error::io(format!("renaming into {}", to.display()), e))?;
    if let Some(dir) = to.parent().and_then(|parent| std::fs::File::open(parent).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Re-signs the served timestamp whenever it would expire within
/// `repository.timestamp_resign_before_s`, until shutdown.
pub(crate) async fn keep_timestamp_fresh(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let Some(key) = &shared.releases.timestamp_key else {
        return;
    };
    let config = &shared.config.repository;
    let interval = Duration::from_secs(config.timestamp_check_interval_s.max(1));
    loop {
        let metadata = shared.releases.public_dir().join("metadata");
        if let Ok(served) = molt_release::repo::timestamp_info(&metadata) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs() as i64);
            if served.expires_unix_s - now < config.timestamp_resign_before_s as i64 {
                let _guard = shared.releases.lock.lock().await;
                match molt_release::repo::resign_timestamp(
                    &metadata,
                    key,
                    None,
                    Duration::from_secs(config.timestamp_lifetime_s),
                )
                .await
                {
                    Ok(info) => {
                        shared.releases.resigned.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            version = info.version,
                            expires = info.expires_unix_s,
                            "re-signed timestamp.json"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not re-sign timestamp.json (repository.timestamp_key)")
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.wait() => return,
        }
    }
}
