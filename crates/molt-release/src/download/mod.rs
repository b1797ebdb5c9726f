//! Transfers: bounded metadata fetches (over molt's HTTP transport, which
//! implements tough's `Transport` trait), and resumable, bounded target
//! downloads.
//!
//! Every transfer is bounded: by the length TUF metadata gives (endless
//! data), by a minimum throughput over a window (slow retrieval), and by a
//! number of retries with exponential backoff that stops at once on cancel.
//! Target downloads go to `<dest>.part` and resume from its length with an
//! HTTP `Range` request; nothing in a `.part` file is trusted until the
//! whole file matches every expected digest.
//!
//! - [`download_target`]: one target into a file, all or nothing.
//! - [`fetch_metadata`]: one metadata file into memory, bounded.
//! - [`transport`]: the [`Transport`](tough::Transport) `fetch_metadata` uses
//!   for HTTP (and any tough client could).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use url::Url;

use crate::digest::Digests;

mod http;
mod metadata;
mod target;
mod transport;

pub use metadata::{FetchError, fetch_metadata};

/// Where a repository is: a directory (its `public/`) or an HTTP(S) base URL.
/// Metadata is under `metadata/` and targets under `targets/` in both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local directory.
    Dir(PathBuf),
    /// An `http://` or `https://` base URL.
    Url(Url),
}

/// Bounds on every transfer; each name appears in the error it causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadLimits {
    /// A transfer slower than this over `throughput_window` is cut off and
    /// retried; 0 turns the check off. Default 1 KiB/s.
    pub min_bytes_per_sec: u64,
    /// The window over which `min_bytes_per_sec` is judged, counted from
    /// the moment a request is sent. Default 10 s.
    pub throughput_window: Duration,
    /// Attempts after the first. Default 5.
    pub retries_max: u32,
    /// First backoff delay, doubled each retry. Default 200 ms.
    pub backoff_initial: Duration,
    /// Cap on the backoff delay. Default 5 s.
    pub backoff_max: Duration,
    /// TCP connect timeout. Default 10 s.
    pub connect_timeout: Duration,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            min_bytes_per_sec: 1024,
            throughput_window: Duration::from_secs(10),
            retries_max: 5,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What a target must be, from verified metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Exact length in bytes.
    pub length: u64,
    /// Every digest the bytes must have (each listed algorithm molt
    /// supports).
    pub digests: Digests,
}

impl Expected {
    /// `length` bytes with this sha256.
    pub fn sha256(length: u64, sha256: [u8; 32]) -> Expected {
        Expected {
            length,
            digests: Digests::sha256(sha256),
        }
    }
}

/// Watches a transfer; the CLI draws progress bars with it.
pub trait Progress: Send + Sync {
    /// A transfer of `name` starts; `resumed_at` bytes are already present.
    /// Called again, with the new offset, when a retry resumes or restarts.
    fn start(&self, name: &str, total: u64, resumed_at: u64);
    /// `bytes` more arrived.
    fn advance(&self, bytes: u64);
    /// The transfer ended (either way); called exactly once per download.
    fn finish(&self);
}

/// Progress that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _name: &str, _total: u64, _resumed_at: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// Why a transfer failed. Each variant names the limit or the fact that
/// stopped it, and says what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The target name is not a plain relative path under `targets/`.
    #[error(
        "target name {name:?} is not a relative path inside targets/; \
         target names must come from verified metadata"
    )]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// The source URL cannot have paths appended (e.g. `mailto:`).
    #[error("{url} cannot be a repository URL; use an http:// or https:// base URL")]
    InvalidUrl {
        /// The source URL.
        url: Url,
    },
    /// The HTTP client could not be set up (TLS configuration).
    #[error("could not set up the HTTP client: {source}")]
    Client {
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The source has no such file (HTTP 403, 404 or 410, or no file in
    /// the directory).
    #[error(
        "{name}: not found at {location}; \
         check the repository location and that the release was published"
    )]
    NotFound {
        /// The target (or metadata file) name.
        name: String,
        /// The URL or path tried.
        location: String,
    },
    /// More bytes arrived than the verified metadata lists (endless data).
    #[error(
        "{name}: {location} sent more than {length} bytes, the length in the verified metadata \
         (endless data); the source serves a different file, the part file was deleted"
    )]
    TooLong {
        /// The target name.
        name: String,
        /// The URL or path.
        location: String,
        /// The length from the metadata.
        length: u64,
    },
    /// The source ended before the length from the metadata.
    #[error(
        "{name}: {location} ended after {received} of {length} bytes; \
         the next attempt resumes from the part file"
    )]
    TooShort {
        /// The target name.
        name: String,
        /// The URL or path.
        location: String,
        /// Bytes present when it ended.
        received: u64,
        /// The length from the metadata.
        length: u64,
    },
    /// Fewer than `min_bytes_per_sec` arrived over `throughput_window`
    /// (slow retrieval, or a stalled server).
    #[error(
        "{name}: only {bytes_in_window} bytes from {location} in throughput_window = \
         {throughput_window:?}, below min_bytes_per_sec = {min_bytes_per_sec} (slow retrieval); \
         check the network or the server, or lower min_bytes_per_sec"
    )]
    TooSlow {
        /// The target name.
        name: String,
        /// The URL.
        location: String,
        /// Bytes that arrived in the window that closed.
        bytes_in_window: u64,
        /// The limit.
        min_bytes_per_sec: u64,
        /// The window.
        throughput_window: Duration,
    },
    /// The whole file does not have a digest from the verified metadata.
    #[error(
        "{name}: {algorithm} {actual} of the downloaded bytes is not {expected}, the digest in the \
         verified metadata; the part file was deleted, and the source serves a different file"
    )]
    DigestMismatch {
        /// The target name.
        name: String,
        /// The hash algorithm (`sha256`, `sha512`, ...).
        algorithm: &'static str,
        /// Hex digest from the metadata.
        expected: String,
        /// Hex digest of what arrived.
        actual: String,
    },
    /// The server answered with a status that is neither success nor
    /// "not found".
    #[error("{name}: {location} answered HTTP {status}; check the server")]
    HttpStatus {
        /// The target name.
        name: String,
        /// The URL.
        location: String,
        /// The status code.
        status: u16,
    },
    /// A range request got a `Content-Range` that does not start where the
    /// part file ends.
    #[error(
        "{name}: asked {location} for bytes {offset}- and got Content-Range {content_range}; \
         the part file was deleted and the next attempt starts from zero"
    )]
    BadContentRange {
        /// The target name.
        name: String,
        /// The URL.
        location: String,
        /// Where the part file ended.
        offset: u64,
        /// The header received.
        content_range: String,
    },
    /// The server has fewer bytes than the part file (HTTP 416).
    #[error(
        "{name}: {location} has no bytes from {offset} on (HTTP 416) although the metadata \
         lists {length}; the part file was deleted and the next attempt starts from zero"
    )]
    RangeNotSatisfiable {
        /// The target name.
        name: String,
        /// The URL.
        location: String,
        /// Where the part file ended.
        offset: u64,
        /// The length from the metadata.
        length: u64,
    },
    /// Connecting took longer than `connect_timeout`.
    #[error(
        "{name}: could not connect to {location} within connect_timeout = {connect_timeout:?}; \
         check the network and the URL"
    )]
    ConnectTimeout {
        /// The target name.
        name: String,
        /// The URL.
        location: String,
        /// The limit.
        connect_timeout: Duration,
    },
    /// The server's TLS certificate is not trusted: no retry makes it so.
    #[error(
        "{name}: {location} presented a TLS certificate that is not trusted ({reason}); a server whose certificate \
         comes from its own CA needs that CA among the trusted roots (for `molt verify`: SSL_CERT_FILE=CA.pem)"
    )]
    UntrustedCertificate {
        /// The target name.
        name: String,
        /// The URL.
        location: String,
        /// What rustls found wrong with the certificate.
        reason: String,
    },
    /// The request or the body transfer failed (refused, reset, cut off).
    #[error("{name}: transfer from {location} failed: {source}")]
    Http {
        /// The target name.
        name: String,
        /// The URL.
        location: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// A local file operation failed.
    #[error("{name}: could not {operation} {}: {source}", path.display())]
    Io {
        /// The target name.
        name: String,
        /// What was being done, e.g. "write".
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Every attempt failed; `last` says why the last one did.
    #[error(
        "{name}: gave up after {attempts} attempts (retries_max = {retries_max}); \
         the part file is kept for the next try; last error: {last}"
    )]
    RetriesExhausted {
        /// The target name.
        name: String,
        /// Attempts made: `retries_max + 1`.
        attempts: u32,
        /// The limit.
        retries_max: u32,
        /// The last attempt's error.
        last: Box<DownloadError>,
    },
    /// The cancellation token fired.
    #[error("{name}: cancelled; the part file is kept and the next download resumes from it")]
    Cancelled {
        /// The target name.
        name: String,
    },
}

impl DownloadError {
    /// The error that ended the last attempt: `last` of
    /// [`RetriesExhausted`](DownloadError::RetriesExhausted), else `self`.
    pub fn last_attempt(&self) -> &DownloadError {
        match self {
            DownloadError::RetriesExhausted { last, .. } => last.last_attempt(),
            other => other,
        }
    }

    /// Whether another attempt might succeed (network trouble, not a
    /// source that serves the wrong file or a local failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            DownloadError::TooShort { .. }
            | DownloadError::TooSlow { .. }
            | DownloadError::BadContentRange { .. }
            | DownloadError::RangeNotSatisfiable { .. }
            | DownloadError::ConnectTimeout { .. }
            | DownloadError::Http { .. } => true,
            DownloadError::HttpStatus { status, .. } => {
                http::classify_status_code(*status) == http::StatusClass::Retryable
            }
            DownloadError::InvalidName { .. }
            | DownloadError::InvalidUrl { .. }
            | DownloadError::Client { .. }
            | DownloadError::NotFound { .. }
            | DownloadError::TooLong { .. }
            | DownloadError::DigestMismatch { .. }
            | DownloadError::Io { .. }
            | DownloadError::RetriesExhausted { .. }
            | DownloadError::UntrustedCertificate { .. }
            | DownloadError::Cancelled { .. } => false,
        }
    }
}

/// Downloads target `name` (its path under `targets/`, already
/// hash-prefixed if the repository uses consistent snapshots) from `source`
/// to `dest`, resuming `<dest>.part` if present, and returns once `dest`
/// holds exactly the expected bytes. On a digest or length mismatch the
/// part file is deleted.
///
/// `dest` is written only by an atomic rename of the part file after its
/// whole content matched `expected`, was fsynced, and the directory is
/// fsynced after the rename.
pub async fn download_target(
    source: &Source,
    name: &str,
    dest: &Path,
    expected: &Expected,
    limits: &DownloadLimits,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<(), DownloadError> {
    let result = target::download(source, name, dest, expected, limits, progress, cancel).await;
    progress.finish();
    result
}

/// The tough transport molt uses for metadata from `source`'s kind: files
/// for a directory, HTTP (with `limits`) for a URL.
///
/// The HTTP transport applies `connect_timeout`, the throughput deadline and
/// `retries_max` with backoff (resuming with `Range` after an interrupted
/// body); tough applies its own size limits on top of the stream. HTTP 403,
/// 404 and 410 become [`tough::TransportErrorKind::FileNotFound`], which
/// tough relies on to stop walking root versions; any other failure is
/// delivered as an error in the stream, so tough reports it instead of
/// taking it for "no newer root".
pub fn transport(source: &Source, limits: &DownloadLimits) -> Box<dyn tough::Transport> {
    match source {
        Source::Dir(_) => Box::new(tough::FilesystemTransport),
        Source::Url(_) => Box::new(transport::HttpTransport::new(limits)),
    }
}

/// What rustls found wrong with the server's certificate, if that is why
/// `error` happened. The cause sits below reqwest and hyper inside an
/// `io::Error`, whose `source()` skips the error it wraps, so each
/// `io::Error` is opened with `get_ref`.
pub(crate) fn untrusted_certificate(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(rustls::Error::InvalidCertificate(reason)) = current.downcast_ref::<rustls::Error>() {
            return Some(reason.to_string());
        }
        let inner = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if let Some(reason) = inner.and_then(|inner| untrusted_certificate(inner)) {
            return Some(reason);
        }
        next = current.source();
    }
    None
}
