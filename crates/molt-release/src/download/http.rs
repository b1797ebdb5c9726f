//! The HTTP pieces shared by target downloads and the metadata transport:
//! the client, ranged requests, status classes, the throughput deadline
//! and the backoff schedule.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use tokio::time::Instant;
use url::Url;

use crate::download::DownloadLimits;

/// The client for one download or one transport: `connect_timeout` bounds
/// the TCP and TLS handshake; every later wait is bounded by the
/// throughput deadline instead of a total timeout, so a large target on a
/// slow but steady link is not cut off.
pub(crate) fn client(limits: &DownloadLimits) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(limits.connect_timeout)
        .build()
}

/// Sends `GET url`, asking for the bytes from `offset` on when it is not 0.
pub(crate) async fn get(client: &reqwest::Client, url: &Url, offset: u64) -> Result<reqwest::Response, reqwest::Error> {
    let mut request = client.get(url.clone());
    if offset > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
    }
    request.send().await
}

/// What a response's status means for a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// `200`: the whole file from byte 0 (a server may answer a range
    /// request with it).
    Whole,
    /// `206`: the requested range.
    Partial,
    /// `416`: the requested start is at or past the server's end.
    RangeNotSatisfiable,
    /// `403`, `404`, `410`: the file is not there (tough's convention).
    NotFound,
    /// `408`, `429`, `5xx`: may succeed later.
    Retryable,
    /// Any other status: retrying will not help.
    Fatal,
}

pub(crate) fn classify(status: StatusCode) -> StatusClass {
    classify_status_code(status.as_u16())
}

pub(crate) fn classify_status_code(status: u16) -> StatusClass {
    match status {
        200 => StatusClass::Whole,
        206 => StatusClass::Partial,
        416 => StatusClass::RangeNotSatisfiable,
        403 | 404 | 410 => StatusClass::NotFound,
        408 | 429 | 500..=599 => StatusClass::Retryable,
        _ => StatusClass::Fatal,
    }
}

/// The first byte offset of a `206` response's `Content-Range: bytes S-E/T`,
/// or `None` if the header is missing or malformed.
pub(crate) fn content_range_start(response: &reqwest::Response) -> Option<u64> {
    let value = response.headers().get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let (start, _rest) = value.strip_prefix("bytes ")?.split_once('-')?;
    start.trim().parse().ok()
}

/// The raw `Content-Range` header, for error messages.
pub(crate) fn content_range_header(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("(none)")
        .to_owned()
}

/// The slow-retrieval guard: at the end of every `throughput_window` at
/// least `min_bytes_per_sec * throughput_window` bytes must have arrived in
/// it, counting from the moment the request was sent (so a server that
/// never answers is caught too). `min_bytes_per_sec = 0` turns it off.
#[derive(Debug, Clone)]
pub(crate) struct Throughput {
    min_bytes_per_sec: u64,
    window: Duration,
    window_start: Instant,
    window_bytes: u64,
}

/// The window closed with fewer bytes than the limit asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooSlow {
    pub(crate) bytes_in_window: u64,
}

impl Throughput {
    pub(crate) fn new(limits: &DownloadLimits) -> Throughput {
        Throughput {
            min_bytes_per_sec: limits.min_bytes_per_sec,
            // A zero window would make every instant a deadline.
            window: limits.throughput_window.max(Duration::from_millis(1)),
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// When the current window closes; `None` if the guard is off.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (self.min_bytes_per_sec > 0).then(|| self.window_start + self.window)
    }

    fn bytes_required(&self) -> u64 {
        let required = u128::from(self.min_bytes_per_sec) * self.window.as_millis() / 1000;
        u64::try_from(required).unwrap_or(u64::MAX)
    }

    /// Counts `n_bytes` that arrived now and judges any window that closed.
    pub(crate) fn record(&mut self, n_bytes: u64) -> Result<(), TooSlow> {
        self.window_bytes = self.window_bytes.saturating_add(n_bytes);
        self.check()
    }

    /// Judges the current window if it has closed, and opens the next one.
    pub(crate) fn check(&mut self) -> Result<(), TooSlow> {
        let Some(deadline) = self.deadline() else {
            return Ok(());
        };
        let now = Instant::now();
        if now < deadline {
            return Ok(());
        }
        if self.window_bytes < self.bytes_required() {
            return Err(TooSlow {
                bytes_in_window: self.window_bytes,
            });
        }
        self.window_start = now;
        self.window_bytes = 0;
        Ok(())
    }
}

/// Why waiting on the network under the throughput deadline stopped.
#[derive(Debug)]
pub(crate) enum WaitError {
    TooSlow(TooSlow),
    Http(reqwest::Error),
}

/// Awaits `future` (a request or a body chunk) but gives up when the
/// throughput window closes short of its bytes.
pub(crate) async fn within_deadline<T>(
    throughput: &mut Throughput,
    future: impl Future<Output = Result<T, reqwest::Error>>,
) -> Result<T, WaitError> {
    let mut future = std::pin::pin!(future);
    loop {
        let Some(deadline) = throughput.deadline() else {
            return future.await.map_err(WaitError::Http);
        };
        tokio::select! {
            result = &mut future => return result.map_err(WaitError::Http),
            () = tokio::time::sleep_until(deadline) => {
                throughput.check().map_err(WaitError::TooSlow)?;
            }
        }
    }
}

/// The next body chunk (`None` at the end), under the throughput deadline.
pub(crate) async fn next_chunk(
    response: &mut reqwest::Response,
    throughput: &mut Throughput,
) -> Result<Option<Bytes>, WaitError> {
    let chunk = within_deadline(throughput, response.chunk()).await?;
    if let Some(chunk) = &chunk {
        throughput.record(chunk.len() as u64).map_err(WaitError::TooSlow)?;
    }
    Ok(chunk)
}

/// The pause before retry number `retry_idx` (0-based):
/// `backoff_initial * 2^retry_idx`, capped at `backoff_max`.
pub(crate) fn backoff_delay(limits: &DownloadLimits, retry_idx: u32) -> Duration {
    let factor = 1u32.checked_shl(retry_idx).unwrap_or(u32::MAX);
    limits
        .backoff_initial
        .checked_mul(factor)
        .unwrap_or(limits.backoff_max)
        .min(limits.backoff_max)
}

#[cfg(test)]
mod tests;
