//! One metadata file into memory, bounded: from a directory's `metadata/`
//! or over HTTP through molt's transport (throughput deadline, retries,
//! resume).

use std::io::Read as _;
use std::pin::Pin;

use futures_core::Stream as _;
use tough::{Transport as _, TransportErrorKind};

use crate::download::{DownloadLimits, Source, transport};

/// Why a metadata file could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The file is not there: no such file in the directory, or HTTP 403,
    /// 404 or 410. For root versions this ends the walk.
    #[error("{location} is not in the repository")]
    NotFound {
        /// The path or URL.
        location: String,
    },
    /// The file is longer than the caller's bound.
    #[error("{location} is longer than {max} bytes")]
    TooLarge {
        /// The path or URL.
        location: String,
        /// The bound.
        max: u64,
    },
    /// The file name is not a single percent-encoded path segment.
    #[error("{name:?} is not a metadata file name")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// Reading the local file failed.
    #[error("could not read {location}: {source}")]
    Io {
        /// The path.
        location: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The transfer failed (after `retries_max` retries); the cause chain
    /// holds molt's [`DownloadError`](crate::download::DownloadError).
    #[error("fetching {location} failed: {source}")]
    Transfer {
        /// The URL.
        location: String,
        /// The cause.
        source: tough::TransportError,
    },
}

/// Fetches metadata file `file_name` (one path segment, already
/// percent-encoded, e.g. `3.root.json` or `%3F.json`) from `source`'s
/// `metadata/`, refusing more than `max_bytes` bytes.
pub async fn fetch_metadata(
    source: &Source,
    file_name: &str,
    max_bytes: u64,
    limits: &DownloadLimits,
) -> Result<Vec<u8>, FetchError> {
    let valid = !file_name.is_empty()
        && file_name != "."
        && file_name != ".."
        && file_name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'~' | b'-' | b'%'));
    if !valid {
        return Err(FetchError::InvalidName {
            name: file_name.to_owned(),
        });
    }
    match source {
        Source::Dir(dir) => {
            let path = dir.join("metadata").join(file_name);
            let location = path.display().to_string();
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Err(FetchError::NotFound { location });
                }
                Err(source) => return Err(FetchError::Io { location, source }),
            };
            let mut bytes = Vec::new();
            file.take(max_bytes.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(|source| FetchError::Io {
                    location: location.clone(),
                    source,
                })?;
            if bytes.len() as u64 > max_bytes {
                return Err(FetchError::TooLarge {
                    location,
                    max: max_bytes,
                });
            }
            Ok(bytes)
        }
        Source::Url(base) => {
            let mut url = base.clone();
            let base_path = base.path().trim_end_matches('/');
            url.set_path(&format!("{base_path}/metadata/{file_name}"));
            let location = url.to_string();
            let transport = transport::HttpTransport::new(limits);
            let mut stream = match transport.fetch(url).await {
                Ok(stream) => stream,
                Err(error) if error.kind() == TransportErrorKind::FileNotFound => {
                    return Err(FetchError::NotFound { location });
                }
                Err(source) => return Err(FetchError::Transfer { location, source }),
            };
            let mut bytes = Vec::new();
            while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
                match chunk {
                    Ok(chunk) => {
                        bytes.extend_from_slice(&chunk);
                        if bytes.len() as u64 > max_bytes {
                            return Err(FetchError::TooLarge {
                                location,
                                max: max_bytes,
                            });
                        }
                    }
                    Err(error) if error.kind() == TransportErrorKind::FileNotFound => {
                        return Err(FetchError::NotFound { location });
                    }
                    Err(source) => return Err(FetchError::Transfer { location, source }),
                }
            }
            Ok(bytes)
        }
    }
}
