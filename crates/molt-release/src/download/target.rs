//! One target into one file: fetch (HTTP with resume, or a local copy)
//! into `<dest>.part`, verify length and every listed digest over the whole part file,
//! fsync, rename, fsync the directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::download::http::{self, StatusClass, Throughput, WaitError};
use crate::download::{DownloadError, DownloadLimits, Expected, Progress, Source};

/// Part-file writes and read-back hashing go in blocks of this size.
const IO_BLOCK_BYTES: usize = 1 << 20;

pub(crate) async fn download(
    source: &Source,
    name: &str,
    dest: &Path,
    expected: &Expected,
    limits: &DownloadLimits,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<(), DownloadError> {
    check_name(name)?;
    let job = Job {
        name,
        location: String::new(),
        part: part_path(dest),
        dest,
        expected,
        limits,
        progress,
    };
    match source {
        Source::Dir(dir) => {
            let mut path = dir.join("targets");
            path.extend(name.split('/'));
            let job = Job {
                location: path.display().to_string(),
                ..job
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => Err(job.cancelled()),
                result = copy_from_dir(&job, &path) => result,
            }
        }
        Source::Url(base) => {
            let url = target_url(base, name)?;
            let job = Job {
                location: url.to_string(),
                ..job
            };
            download_url(&job, &url, cancel).await
        }
    }
}

/// `dest` with `.part` appended.
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    PathBuf::from(part)
}

/// Target names come from verified metadata, but they still must not
/// escape `targets/` once joined to a directory or a URL.
fn check_name(name: &str) -> Result<(), DownloadError> {
    let bad_segment = |segment: &str| segment.is_empty() || segment == "." || segment == "..";
    if name.split('/').any(bad_segment) || name.contains(['\\', '\0']) {
        return Err(DownloadError::InvalidName { name: name.to_owned() });
    }
    Ok(())
}

fn target_url(base: &Url, name: &str) -> Result<Url, DownloadError> {
    let invalid = || DownloadError::InvalidUrl { url: base.clone() };
    if !matches!(base.scheme(), "http" | "https") {
        return Err(invalid());
    }
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| invalid())?
        .pop_if_empty()
        .push("targets")
        .extend(name.split('/'));
    Ok(url)
}

struct Job<'a> {
    name: &'a str,
    location: String,
    part: PathBuf,
    dest: &'a Path,
    expected: &'a Expected,
    limits: &'a DownloadLimits,
    progress: &'a dyn Progress,
}

/// An attempt's error and whether another attempt may help.
struct Failure {
    error: DownloadError,
    retry: bool,
}

impl From<DownloadError> for Failure {
    fn from(error: DownloadError) -> Self {
        Failure {
            retry: error.is_retryable(),
            error,
        }
    }
}

impl Job<'_> {
    fn name(&self) -> String {
        self.name.to_owned()
    }

    fn cancelled(&self) -> DownloadError {
        DownloadError::Cancelled { name: self.name() }
    }

    fn io(&self, operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError {
        let name = self.name();
        let path = path.to_path_buf();
        move |source| DownloadError::Io {
            name,
            operation,
            path,
            source,
        }
    }

    fn too_long(&self) -> DownloadError {
        DownloadError::TooLong {
            name: self.name(),
            location: self.location.clone(),
            length: self.expected.length,
        }
    }

    fn too_short(&self, received: u64) -> DownloadError {
        DownloadError::TooShort {
            name: self.name(),
            location: self.location.clone(),
            received,
            length: self.expected.length,
        }
    }

    fn wait_error(&self, error: WaitError) -> DownloadError {
        match error {
            WaitError::TooSlow(too_slow) => DownloadError::TooSlow {
                name: self.name(),
                location: self.location.clone(),
                bytes_in_window: too_slow.bytes_in_window,
                min_bytes_per_sec: self.limits.min_bytes_per_sec,
                throughput_window: self.limits.throughput_window,
            },
            WaitError::Http(source) if source.is_connect() && source.is_timeout() => DownloadError::ConnectTimeout {
                name: self.name(),
                location: self.location.clone(),
                connect_timeout: self.limits.connect_timeout,
            },
            WaitError::Http(source) => match super::untrusted_certificate(&source) {
                Some(reason) => DownloadError::UntrustedCertificate {
                    name: self.name(),
                    location: self.location.clone(),
                    reason,
                },
                None => DownloadError::Http {
                    name: self.name(),
                    location: self.location.clone(),
                    source,
                },
            },
        }
    }

    /// Deletes the part file; a missing one is fine.
    async fn remove_part(&self) -> Result<(), DownloadError> {
        match tokio::fs::remove_file(&self.part).await {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(self.io("delete", &self.part)(error)),
            _ => Ok(()),
        }
    }

    /// Deletes the part file and returns `error` (or the deletion's error).
    async fn discard(&self, error: DownloadError) -> DownloadError {
        match self.remove_part().await {
            Ok(()) => error,
            Err(remove_error) => remove_error,
        }
    }

    async fn part_len(&self) -> Result<u64, DownloadError> {
        match tokio::fs::metadata(&self.part).await {
            Ok(metadata) => Ok(metadata.len()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(error) => Err(self.io("inspect", &self.part)(error)),
        }
    }

    async fn verify_and_commit(&self) -> Result<(), DownloadError> {
        let name = self.name();
        let part = self.part.clone();
        let dest = self.dest.to_path_buf();
        let expected = self.expected.clone();
        let committed = tokio::task::spawn_blocking(move || verify_and_commit(&name, &part, &dest, &expected)).await;
        match committed {
            Ok(result) => result,
            // The blocking task panicked; keep the panic a panic.
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        }
    }
}

async fn download_url(job: &Job<'_>, url: &Url, cancel: &CancellationToken) -> Result<(), DownloadError> {
    let client = http::client(job.limits).map_err(|source| DownloadError::Client { source })?;
    let mut retry_idx = 0;
    loop {
        // The attempt watches `cancel` itself so it can keep what arrived.
        let attempt = attempt_url(job, &client, url, cancel).await;
        let Err(failure) = attempt else {
            return Ok(());
        };
        if !failure.retry {
            return Err(failure.error);
        }
        if retry_idx >= job.limits.retries_max {
            return Err(DownloadError::RetriesExhausted {
                name: job.name(),
                attempts: retry_idx + 1,
                retries_max: job.limits.retries_max,
                last: Box::new(failure.error),
            });
        }
        let delay = http::backoff_delay(job.limits, retry_idx);
        retry_idx += 1;
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(job.cancelled()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One request: resume the part file (or restart it), append what arrives,
/// and verify and commit once it has the expected length.
async fn attempt_url(
    job: &Job<'_>,
    client: &reqwest::Client,
    url: &Url,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let length = job.expected.length;
    let mut offset = job.part_len().await?;
    if offset > length {
        // Longer than the target can be: not from a download of it.
        job.remove_part().await?;
        offset = 0;
    }
    // Bytes from an earlier response are in the file: a digest mismatch may
    // come from mixing two versions of the file, so it is worth a fresh try.
    let mut mixed = offset > 0;

    job.progress.start(job.name, length, offset);
    if offset < length {
        let mut throughput = Throughput::new(job.limits);
        let mut response = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(job.cancelled().into()),
            response = http::within_deadline(&mut throughput, http::get(client, url, offset)) => {
                response.map_err(|error| job.wait_error(error))?
            }
        };
        let status = response.status();
        match http::classify(status) {
            StatusClass::Whole => {
                if offset > 0 {
                    // The server ignored the range; start over.
                    job.remove_part().await?;
                    offset = 0;
                    mixed = false;
                    job.progress.start(job.name, length, 0);
                }
            }
            StatusClass::Partial => {
                if offset == 0 || http::content_range_start(&response) != Some(offset) {
                    let error = DownloadError::BadContentRange {
                        name: job.name(),
                        location: job.location.clone(),
                        offset,
                        content_range: http::content_range_header(&response),
                    };
                    return Err(job.discard(error).await.into());
                }
            }
            StatusClass::RangeNotSatisfiable => {
                let error = DownloadError::RangeNotSatisfiable {
                    name: job.name(),
                    location: job.location.clone(),
                    offset,
                    length,
                };
                return Err(job.discard(error).await.into());
            }
            StatusClass::NotFound => {
                return Err(DownloadError::NotFound {
                    name: job.name(),
                    location: job.location.clone(),
                }
                .into());
            }
            StatusClass::Retryable | StatusClass::Fatal => {
                return Err(DownloadError::HttpStatus {
                    name: job.name(),
                    location: job.location.clone(),
                    status: status.as_u16(),
                }
                .into());
            }
        }
        if let Some(content_length) = response.content_length()
            && offset.saturating_add(content_length) > length
        {
            return Err(job.discard(job.too_long()).await.into());
        }

        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&job.part)
            .await
            .map_err(job.io("open", &job.part))?;
        let mut writer = BufWriter::with_capacity(IO_BLOCK_BYTES, file);
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => Err(None),
                next = http::next_chunk(&mut response, &mut throughput) => next.map_err(Some),
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(error) => {
                    // Keep what arrived so the next attempt (or the next
                    // call, after a cancel) resumes after it.
                    writer.flush().await.map_err(job.io("write", &job.part))?;
                    return Err(match error {
                        Some(error) => job.wait_error(error).into(),
                        None => job.cancelled().into(),
                    });
                }
            };
            let n_bytes = chunk.len() as u64;
            if offset.saturating_add(n_bytes) > length {
                drop(writer);
                return Err(job.discard(job.too_long()).await.into());
            }
            writer.write_all(&chunk).await.map_err(job.io("write", &job.part))?;
            offset += n_bytes;
            job.progress.advance(n_bytes);
        }
        writer.flush().await.map_err(job.io("write", &job.part))?;
        if offset < length {
            return Err(job.too_short(offset).into());
        }
    }

    match job.verify_and_commit().await {
        Err(error @ DownloadError::DigestMismatch { .. }) => Err(Failure { error, retry: mixed }),
        result => Ok(result?),
    }
}

/// A local repository: copy with the same length bound, then verify.
async fn copy_from_dir(job: &Job<'_>, path: &Path) -> Result<(), DownloadError> {
    let length = job.expected.length;
    let mut source_file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(DownloadError::NotFound {
                name: job.name(),
                location: job.location.clone(),
            });
        }
        Err(error) => return Err(job.io("open", path)(error)),
    };
    job.progress.start(job.name, length, 0);
    let part_file = tokio::fs::File::create(&job.part)
        .await
        .map_err(job.io("create", &job.part))?;
    let mut writer = BufWriter::with_capacity(IO_BLOCK_BYTES, part_file);
    let mut buf = vec![0u8; IO_BLOCK_BYTES];
    let mut copied: u64 = 0;
    loop {
        let n_read = source_file.read(&mut buf).await.map_err(job.io("read", path))?;
        if n_read == 0 {
            break;
        }
        let n_bytes = n_read as u64;
        if copied.saturating_add(n_bytes) > length {
            drop(writer);
            return Err(job.discard(job.too_long()).await);
        }
        writer
            .write_all(&buf[..n_read])
            .await
            .map_err(job.io("write", &job.part))?;
        copied += n_bytes;
        job.progress.advance(n_bytes);
    }
    writer.flush().await.map_err(job.io("write", &job.part))?;
    drop(writer);
    if copied < length {
        return Err(job.discard(job.too_short(copied)).await);
    }
    job.verify_and_commit().await
}

/// Reads the whole part file back, checks its length and digests, and only
/// then makes it durable and renames it to `dest`. On a mismatch the part
/// file is deleted.
fn verify_and_commit(name: &str, part: &Path, dest: &Path, expected: &Expected) -> Result<(), DownloadError> {
    let io = |operation: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io {
            name: name.to_owned(),
            operation,
            path,
            source,
        }
    };
    let discard = |error: DownloadError| match std::fs::remove_file(part) {
        Ok(()) => error,
        Err(remove_error) => io("delete", part)(remove_error),
    };

    // Write access so the same descriptor can be fsynced.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(part)
        .map_err(io("open", part))?;
    let mut hasher = expected.digests.hasher();
    let mut buf = vec![0u8; IO_BLOCK_BYTES];
    let mut n_hashed: u64 = 0;
    loop {
        let n_read = file.read(&mut buf).map_err(io("read", part))?;
        if n_read == 0 {
            break;
        }
        n_hashed += n_read as u64;
        if n_hashed > expected.length {
            return Err(discard(DownloadError::TooLong {
                name: name.to_owned(),
                location: part.display().to_string(),
                length: expected.length,
            }));
        }
        hasher.update(&buf[..n_read]);
    }
    if n_hashed != expected.length {
        return Err(DownloadError::TooShort {
            name: name.to_owned(),
            location: part.display().to_string(),
            received: n_hashed,
            length: expected.length,
        });
    }
    if let Err(mismatch) = expected.digests.check_hasher(hasher) {
        return Err(discard(DownloadError::DigestMismatch {
            name: name.to_owned(),
            algorithm: mismatch.algorithm.name(),
            expected: mismatch.expected,
            actual: mismatch.actual,
        }));
    }
    file.sync_all().map_err(io("fsync", part))?;
    drop(file);
    std::fs::rename(part, dest).map_err(io("rename", part))?;
    let dir = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|dir_file| dir_file.sync_all())
        .map_err(io("fsync directory", dir))
}
