//! Alert notifications: every alert newly stored is POSTed to a webhook.
//!
//! After a batch commits, ingest hands each alert it inserted to
//! [`Notifier::notify`], which never waits: the bounded queue
//! (`webhook.queue_max`) either takes the notification or drops it and
//! counts the drop. One task owns the queue and delivers in order, one
//! request at a time, retrying connection errors, timeouts, 5xx and 429 with
//! exponential backoff (`webhook.retries_max`, `webhook.retry_backoff_ms`,
//! `webhook.retry_backoff_max_ms`); any other status is final. The body is
//! the [`StoredAlert`] as JSON.
//!
//! A resent uplink message inserts no alert, so it notifies nothing. Past
//! that, delivery is best effort: a request that timed out may still have
//! reached the receiver (which can dedupe by `id`), and the queue lives in
//! memory, so what is queued when the server stops or crashes is not sent.
//! The alerts are in the store, open, either way: the webhook is a nudge,
//! not the record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::Error;
use crate::config;
use crate::ingest::tokio_util_shutdown::Shutdown;
use crate::store::StoredAlert;

/// Webhook counters, for `/metrics` and the tests.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Notifications the receiver accepted (2xx).
    pub delivered: AtomicU64,
    /// Notifications given up: a final status, or `webhook.retries_max`
    /// retries spent.
    pub failed: AtomicU64,
    /// Notifications never sent: the queue was full (`webhook.queue_max`),
    /// or the server stopped first.
    pub dropped: AtomicU64,
    /// Retries (attempts after the first).
    pub retried: AtomicU64,
    /// Notifications queued now, the one being delivered included.
    pub queue_depth: AtomicU64,
}

/// The sending side ingest holds; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    /// `None` when no `webhook.url` is configured.
    tx: Option<mpsc::Sender<StoredAlert>>,
    queue_max: usize,
    stats: Arc<WebhookStats>,
}

impl Notifier {
    /// A notifier that sends nothing (no webhook configured).
    pub fn disabled(stats: Arc<WebhookStats>) -> Notifier {
        Notifier {
            tx: None,
            queue_max: 0,
            stats,
        }
    }

    /// Queues a notification for an alert that was just committed; never
    /// waits. A full queue drops it, counts it and says so in the log.
    pub fn notify(&self, alert: StoredAlert) {
        let Some(tx) = &self.tx else { return };
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        let reason = match tx.try_send(alert) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "queue full",
            Err(TrySendError::Closed(_)) => "server stopping",
        };
        self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
        let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // A receiver that is down for long drops many: log the first drop
        // and then every thousandth, with the running total.
        if dropped == 1 || dropped.is_multiple_of(1000) {
            tracing::warn!(
                limit = "webhook.queue_max",
                queue_max = self.queue_max,
                dropped_total = dropped,
                reason,
                "webhook notification dropped; the alert is stored"
            );
        }
    }
}

/// Starts the delivery task when `config.url` is set. The task stops
/// promptly on `shutdown`: the request in flight is abandoned and what is
/// still queued is counted as dropped.
pub fn start(
    config: &config::Webhook,
    stats: Arc<WebhookStats>,
    shutdown: Shutdown,
) -> Result<(Notifier, Option<tokio::task::JoinHandle<()>>), Error> {
    if !config.enabled() {
        return Ok((Notifier::disabled(stats), None));
    }
    config.check()?;
    let timeout = Duration::from_millis(config.timeout_ms);
    // Redirects are not followed: a redirected POST turns into a GET, and
    // the configured URL is the one the operator vouched for.
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Config(format!("webhook.url: cannot build the HTTP client: {e}")))?;
    let (tx, rx) = mpsc::channel(config.queue_max);
    let notifier = Notifier {
        tx: Some(tx),
        queue_max: config.queue_max,
        stats: stats.clone(),
    };
    let delivery = Delivery {
        client,
        url: config.url.trim().to_owned(),
        token: config.token.clone(),
        retries_max: config.retries_max,
        backoff: Duration::from_millis(config.retry_backoff_ms),
        backoff_max: Duration::from_millis(config.retry_backoff_max_ms),
        stats,
    };
    let handle = tokio::spawn(run(delivery, rx, shutdown));
    tracing::info!(
        queue_max = config.queue_max,
        retries_max = config.retries_max,
        timeout_ms = config.timeout_ms,
        "webhook notifications on"
    );
    Ok((notifier, Some(handle)))
}

struct Delivery {
    client: reqwest::Client,
    url: String,
    token: String,
    retries_max: u32,
    backoff: Duration,
    backoff_max: Duration,
    stats: Arc<WebhookStats>,
}

async fn run(delivery: Delivery, mut rx: mpsc::Receiver<StoredAlert>, mut shutdown: Shutdown) {
    let stats = delivery.stats.clone();
    loop {
        let alert = tokio::select! {
            alert = rx.recv() => match alert {
                Some(alert) => alert,
                None => break,
            },
            () = shutdown.wait() => break,
        };
        tokio::select! {
            () = delivery.deliver(&alert) => {
                stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            }
            () = shutdown.wait() => {
                stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::info!(alert = alert.id, "webhook delivery abandoned: server stopping");
                break;
            }
        }
    }
    // Later notify() calls see the queue closed and count their own drops.
    rx.close();
    let mut left = 0u64;
    while rx.try_recv().is_ok() {
        left += 1;
    }
    if left > 0 {
        stats.queue_depth.fetch_sub(left, Ordering::Relaxed);
        stats.dropped.fetch_add(left, Ordering::Relaxed);
        tracing::warn!(
            dropped = left,
            "webhook notifications not sent: server stopping; the alerts are stored"
        );
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Worth another try; the receiver may ask for a wait (`Retry-After`).
    Retry(String, Option<Duration>),
    Final(String),
}

impl Delivery {
    async fn deliver(&self, alert: &StoredAlert) {
        let mut backoff = self.backoff;
        let mut retries = 0u32;
        loop {
            let (reason, retry_after) = match self.attempt(alert).await {
                Attempt::Delivered => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Attempt::Final(reason) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        alert = alert.id,
                        device = %alert.device,
                        reason,
                        "webhook refused the notification; not retried"
                    );
                    return;
                }
                Attempt::Retry(reason, retry_after) => (reason, retry_after),
            };
            if retries >= self.retries_max {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    alert = alert.id,
                    device = %alert.device,
                    reason,
                    limit = "webhook.retries_max",
                    retries_max = self.retries_max,
                    "webhook notification failed; retries spent"
                );
                return;
            }
            // A receiver's Retry-After is honoured up to the cap.
            let wait = retry_after
                .map_or(backoff, |after| after.max(backoff))
                .min(self.backoff_max);
            tracing::debug!(
                alert = alert.id,
                reason,
                wait_ms = wait.as_millis() as u64,
                "webhook notification retried"
            );
            tokio::time::sleep(wait).await;
            backoff = backoff.saturating_mul(2).min(self.backoff_max);
            retries += 1;
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn attempt(&self, alert: &StoredAlert) -> Attempt {
        let mut request = self.client.post(&self.url).json(alert);
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        // Every transport error is worth a retry: refused or reset
        // connections, TLS failures, `webhook.timeout_ms` running out.
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Attempt::Retry(format!("no response within webhook.timeout_ms: {}", describe(e)), None);
            }
            Err(e) => return Attempt::Retry(format!("transport: {}", describe(e)), None),
        };
        let status = response.status();
        if status.is_success() {
            Attempt::Delivered
        } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Attempt::Retry(format!("status {status}"), retry_after)
        } else {
            Attempt::Final(format!("status {status}"))
        }
    }
}

/// The error with its causes, without the URL: a webhook URL often carries
/// a secret in its path.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
