//! The tough [`Transport`] for metadata over HTTP, with molt's limits.
//!
//! tough's own `HttpTransport` bounds a fetch by a total timeout; molt
//! wants the same throughput deadline, connect timeout and retry budget as
//! target downloads, so it brings its own. A spawned task runs the request
//! (with retries, resuming an interrupted body with `Range`) and hands
//! chunks to the stream over a small channel; dropping the stream ends the
//! task.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

use crate::download::http::{self, StatusClass, Throughput, WaitError};
use crate::download::{DownloadError, DownloadLimits};

/// Chunks buffered between the transfer task and tough.
const CHANNEL_CHUNKS: usize = 16;

#[derive(Debug, Clone)]
pub(crate) struct HttpTransport {
    /// Built once; a failure is reported on every fetch.
    client: Result<reqwest::Client, std::sync::Arc<reqwest::Error>>,
    limits: DownloadLimits,
}

impl HttpTransport {
    pub(crate) fn new(limits: &DownloadLimits) -> HttpTransport {
        HttpTransport {
            client: http::client(limits).map_err(std::sync::Arc::new),
            limits: *limits,
        }
    }
}

type Item = Result<Bytes, TransportError>;

#[async_trait::async_trait]
impl Transport for HttpTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TransportError::new(TransportErrorKind::UnsupportedUrlScheme, url));
        }
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(error) => {
                return Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url,
                    error.to_string(),
                ));
            }
        };
        let (head_tx, head_rx) = oneshot::channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
        let pump = Pump {
            client,
            url: url.clone(),
            limits: self.limits,
            head_tx: Some(head_tx),
            chunk_tx,
        };
        tokio::spawn(pump.run());
        match head_rx.await {
            // 403, 404, 410: tough stops walking root versions on this.
            Ok(Err(not_found)) => Err(not_found),
            Ok(Ok(())) | Err(_) => Ok(Box::pin(ChunkStream { chunk_rx })),
        }
    }
}

struct ChunkStream {
    chunk_rx: mpsc::Receiver<Item>,
}

impl futures_core::Stream for ChunkStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.chunk_rx.poll_recv(cx)
    }
}

/// The transfer task for one fetch.
struct Pump {
    client: reqwest::Client,
    url: Url,
    limits: DownloadLimits,
    /// Told once: `Err` only for "file not found", else `Ok` before the
    /// first item (errors then go through the stream).
    head_tx: Option<oneshot::Sender<Result<(), TransportError>>>,
    chunk_tx: mpsc::Sender<Item>,
}

impl Pump {
    async fn run(mut self) {
        let chunk_tx = self.chunk_tx.clone();
        tokio::select! {
            // The stream was dropped (tough hit a size limit, or is done).
            () = chunk_tx.closed() => {}
            () = self.transfer() => {}
        }
    }

    fn error(&self, error: DownloadError) -> TransportError {
        TransportError::new_with_cause(TransportErrorKind::Other, self.url.clone(), error)
    }

    async fn send(&mut self, item: Item) -> Result<(), ()> {
        if let Some(head_tx) = self.head_tx.take() {
            let _ = head_tx.send(Ok(()));
        }
        self.chunk_tx.send(item).await.map_err(|_| ())
    }

    async fn transfer(&mut self) {
        let name = self.url.path().to_owned();
        let location = self.url.to_string();
        // Bytes already handed to tough; a retry resumes after them.
        let mut delivered: u64 = 0;
        let mut retry_idx = 0;
        loop {
            let error = match self.attempt(&name, &location, &mut delivered).await {
                Ok(()) => return,
                Err(Attempt::NotFound(error)) => {
                    let error =
                        TransportError::new_with_cause(TransportErrorKind::FileNotFound, self.url.clone(), error);
                    match self.head_tx.take() {
                        Some(head_tx) => {
                            let _ = head_tx.send(Err(error));
                        }
                        None => {
                            let _ = self.chunk_tx.send(Err(error)).await;
                        }
                    }
                    return;
                }
                Err(Attempt::Receiver) => return,
                Err(Attempt::Failed(error)) => error,
            };
            let error = if !error.is_retryable() {
                error
            } else if retry_idx >= self.limits.retries_max {
                DownloadError::RetriesExhausted {
                    name: name.clone(),
                    attempts: retry_idx + 1,
                    retries_max: self.limits.retries_max,
                    last: Box::new(error),
                }
            } else {
                tokio::time::sleep(http::backoff_delay(&self.limits, retry_idx)).await;
                retry_idx += 1;
                continue;
            };
            let error = self.error(error);
            let _ = self.send(Err(error)).await;
            return;
        }
    }

    async fn attempt(&mut self, name: &str, location: &str, delivered: &mut u64) -> Result<(), Attempt> {
        let failed = |error: DownloadError| Attempt::Failed(error);
        let limits = self.limits;
        let wait_error = |error: WaitError| match error {
            WaitError::TooSlow(too_slow) => DownloadError::TooSlow {
                name: name.to_owned(),
                location: location.to_owned(),
                bytes_in_window: too_slow.bytes_in_window,
                min_bytes_per_sec: limits.min_bytes_per_sec,
                throughput_window: limits.throughput_window,
            },
            WaitError::Http(source) if source.is_connect() && source.is_timeout() => DownloadError::ConnectTimeout {
                name: name.to_owned(),
                location: location.to_owned(),
                connect_timeout: limits.connect_timeout,
            },
            WaitError::Http(source) => match super::untrusted_certificate(&source) {
                Some(reason) => DownloadError::UntrustedCertificate {
                    name: name.to_owned(),
                    location: location.to_owned(),
                    reason,
                },
                None => DownloadError::Http {
                    name: name.to_owned(),
                    location: location.to_owned(),
                    source,
                },
            },
        };
        let mut throughput = Throughput::new(&self.limits);
        let mut response = http::within_deadline(&mut throughput, http::get(&self.client, &self.url, *delivered))
            .await
            .map_err(|error| failed(wait_error(error)))?;
        let status = response.status();
        // Bytes at the start of this body that tough already has.
        let mut skip: u64 = 0;
        match http::classify(status) {
            StatusClass::Whole => skip = *delivered,
            StatusClass::Partial if *delivered > 0 && http::content_range_start(&response) == Some(*delivered) => {}
            StatusClass::Partial => {
                return Err(failed(DownloadError::BadContentRange {
                    name: name.to_owned(),
                    location: location.to_owned(),
                    offset: *delivered,
                    content_range: http::content_range_header(&response),
                }));
            }
            StatusClass::NotFound => {
                return Err(Attempt::NotFound(DownloadError::NotFound {
                    name: name.to_owned(),
                    location: location.to_owned(),
                }));
            }
            StatusClass::RangeNotSatisfiable | StatusClass::Retryable | StatusClass::Fatal => {
                return Err(failed(DownloadError::HttpStatus {
                    name: name.to_owned(),
                    location: location.to_owned(),
                    status: status.as_u16(),
                }));
            }
        }
        loop {
            let mut chunk = match http::next_chunk(&mut response, &mut throughput).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(error) => return Err(failed(wait_error(error))),
            };
            if skip > 0 {
                let n_skipped = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
                let _ = chunk.split_to(n_skipped);
                skip -= n_skipped as u64;
                if chunk.is_empty() {
                    continue;
                }
            }
            *delivered += chunk.len() as u64;
            self.send(Ok(chunk)).await.map_err(|()| Attempt::Receiver)?;
        }
        if skip > 0 {
            // The file is now shorter than what tough already has.
            return Err(failed(DownloadError::TooShort {
                name: name.to_owned(),
                location: location.to_owned(),
                received: *delivered - skip,
                length: *delivered,
            }));
        }
        // An empty file still needs the head answered.
        if let Some(head_tx) = self.head_tx.take() {
            let _ = head_tx.send(Ok(()));
        }
        Ok(())
    }
}

enum Attempt {
    /// 403, 404, 410.
    NotFound(DownloadError),
    /// The stream was dropped.
    Receiver,
    Failed(DownloadError),
}
