//! `GET /metrics`: the agent's counters in Prometheus' text exposition
//! format, on a local port, off unless `[metrics] listen` names one.
//!
//! It is a plain tokio `TcpListener` on a thread of its own with a
//! current-thread runtime, not a web framework: one path, one method, a
//! response rendered per request. Every bound is named in `[metrics]`: a
//! request's head over `request_bytes_max` is answered 431 and its
//! connection closed, one that takes longer than `request_timeout_ms` is
//! answered 408, and past `connections_max` open connections the listener
//! stops accepting (clients wait in the kernel's backlog, costing the agent
//! nothing). The values are the ones health reports carry (see
//! [`crate::report`]), plus the link's counters.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::link::LinkProbe;
use crate::outbox::{self, SharedOutbox};
use crate::report::Counters;

/// The `[metrics]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics`, e.g. `127.0.0.1:9471`; off without it.
    /// Nothing is authenticated, so keep it on loopback or a trusted
    /// network.
    pub listen: Option<SocketAddr>,
    /// Bytes of a request's line and headers, at most.
    pub request_bytes_max: usize,
    /// Connections open at once, at most.
    pub connections_max: usize,
    /// A request must arrive whole within this long.
    pub request_timeout_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            listen: None,
            request_bytes_max: 8192,
            connections_max: 4,
            request_timeout_ms: 5000,
        }
    }
}

impl MetricsConfig {
    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        // "GET /metrics HTTP/1.1\r\n\r\n" is 25 bytes; less refuses every
        // scraper.
        if self.request_bytes_max < 64 {
            return Err(format!(
                "metrics.request_bytes_max ({}) must be at least 64",
                self.request_bytes_max
            ));
        }
        for (name, value) in [
            ("metrics.connections_max", self.connections_max as u64),
            ("metrics.request_timeout_ms", self.request_timeout_ms),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Where the values come from.
#[derive(Debug, Clone)]
pub struct MetricsSource {
    /// The agent's counters.
    pub counters: Arc<Counters>,
    /// The outbox, for its depth and size.
    pub outbox: SharedOutbox,
    /// The link, when there is one.
    pub link: Option<LinkProbe>,
}

impl MetricsSource {
    /// The exposition text.
    pub fn render(&self) -> String {
        let now = {
            let outbox = outbox::lock(&self.outbox);
            self.counters.snapshot(&outbox)
        };
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "molt_agent_boot_timestamp_seconds",
            "gauge",
            "When the agent process started, seconds since the Unix epoch.",
            now.boot_ms / 1000,
        );
        metric(
            "molt_agent_starts_total",
            "counter",
            "Agent process starts since the state directory was made, this one included.",
            now.starts,
        );
        metric(
            "molt_agent_readings_total",
            "counter",
            "Readings accepted since the agent started.",
            now.readings,
        );
        metric(
            "molt_agent_batches_total",
            "counter",
            "Batches processed since the agent started.",
            now.batches,
        );
        metric(
            "molt_agent_policy_traps_total",
            "counter",
            "Policy traps since the agent started.",
            now.traps,
        );
        metric(
            "molt_agent_policy_reverts_total",
            "counter",
            "Policy reverts since the agent started.",
            now.reverts,
        );
        metric(
            "molt_agent_policy_errors_total",
            "counter",
            "Policy errors (error results, fuel, memory, deadlines) since the agent started.",
            now.policy_errors,
        );
        metric(
            "molt_agent_batch_p99_microseconds",
            "gauge",
            "99th percentile batch latency over the last health period.",
            now.batch_p99_us,
        );
        metric(
            "molt_agent_outbox_messages",
            "gauge",
            "Messages in the outbox the server's store has not acknowledged.",
            now.outbox_messages,
        );
        metric(
            "molt_agent_outbox_bytes",
            "gauge",
            "Bytes the outbox holds on disk.",
            now.outbox_bytes,
        );
        metric(
            "molt_agent_outbox_oldest_milliseconds",
            "gauge",
            "Age of the oldest message the server's store has not acknowledged.",
            now.outbox_oldest_ms,
        );
        metric(
            "molt_agent_outbox_dropped_total",
            "counter",
            "Messages the outbox's overflow policy dropped, across restarts.",
            now.outbox_dropped,
        );
        metric(
            "molt_agent_rss_bytes",
            "gauge",
            "Resident memory of the agent process.",
            now.rss_bytes,
        );
        metric(
            "molt_agent_events_total",
            "counter",
            "Events appended to the outbox since the agent started.",
            now.events,
        );
        metric(
            "molt_agent_events_suppressed_total",
            "counter",
            "Events over health.events_per_minute_max, not sent, since the agent started.",
            now.events_suppressed,
        );
        metric(
            "molt_agent_status_messages_total",
            "counter",
            "Events, reported states and health reports appended since the agent started.",
            now.status_messages,
        );
        if let Some(link) = &self.link {
            let link = link.summary();
            metric(
                "molt_agent_link_connected",
                "gauge",
                "1 while connected to the fleet server's broker.",
                u64::from(link.connected),
            );
            metric(
                "molt_agent_link_connects_total",
                "counter",
                "Connections made since the agent started.",
                link.connects,
            );
            metric(
                "molt_agent_link_reconnects_total",
                "counter",
                "Connections lost or refused since the agent started.",
                link.reconnects,
            );
            metric(
                "molt_agent_link_ack_timeouts_total",
                "counter",
                "Times no store acknowledgement advanced within server.ack_timeout_ms with messages outstanding, each followed by a resend.",
                link.ack_timeouts,
            );
            metric(
                "molt_agent_link_resends_total",
                "counter",
                "Messages published again, after a reconnect or an acknowledgement timeout.",
                link.resends,
            );
            metric(
                "molt_agent_link_offline_milliseconds_total",
                "counter",
                "Time without a connection since the agent started.",
                link.offline_ms,
            );
            metric(
                "molt_agent_link_published_total",
                "counter",
                "Messages published, resends included.",
                link.published,
            );
            metric(
                "molt_agent_link_puback_total",
                "counter",
                "Messages the broker acknowledged (not yet stored, maybe).",
                link.puback,
            );
            metric(
                "molt_agent_link_acked_through",
                "gauge",
                "The newest sequence number the server's store acknowledged.",
                link.acked_through,
            );
            metric(
                "molt_agent_link_downlink_refused_total",
                "counter",
                "Downlink payloads the protocol decoder refused.",
                link.downlink_refused,
            );
            metric(
                "molt_agent_link_desired_generation",
                "gauge",
                "The newest desired-state generation kept.",
                link.desired_generation,
            );
        }
        out
    }
}

/// A running `/metrics` endpoint; dropping it stops it.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `config.listen` (an error names the address) and serves on a
    /// thread of its own; `None` when `listen` is not set.
    pub fn start(config: &MetricsConfig, source: MetricsSource) -> Result<Option<MetricsServer>, String> {
        let Some(listen) = config.listen else {
            return Ok(None);
        };
        config.check()?;
        // Bound here, so a taken port stops the agent at start, saying so.
        let listener =
            std::net::TcpListener::bind(listen).map_err(|error| format!("metrics.listen {listen}: {error}"))?;
        let addr = listener
            .local_addr()
            .map_err(|error| format!("metrics.listen {listen}: {error}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|error| format!("metrics.listen {listen}: {error}"))?;
        let (stop, stop_rx) = watch::channel(false);
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("molt-metrics".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        eprintln!("molt-agent: metrics: cannot start its runtime: {error}");
                        return;
                    }
                };
                runtime.block_on(serve(listener, config, source, stop_rx));
            })
            .map_err(|error| format!("starting the metrics thread: {error}"))?;
        Ok(Some(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        }))
    }

    /// The address it listens on (the port chosen, for `:0`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    config: MetricsConfig,
    source: MetricsSource,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("molt-agent: metrics: {error}");
            return;
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(config.connections_max));
    loop {
        // A permit first: with none left, nothing more is accepted.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: wait, do not spin.
                    eprintln!("molt-agent: metrics: accepting: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let source = source.clone();
        let config = config.clone();
        tokio::spawn(async move {
            answer(stream, &config, &source).await;
            drop(permit);
        });
    }
}

/// What a request's head asked for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics,
    NotFound,
    WrongMethod,
    Malformed,
    TooLarge,
    TimedOut,
}

/// Reads a request's head, up to `bytes_max`.
async fn read_head(stream: &mut tokio::net::TcpStream, bytes_max: usize) -> Asked {
    let mut head = Vec::with_capacity(512.min(bytes_max));
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(4).position(|window| window == b"\r\n\r\n") {
            head.truncate(end);
            break;
        }
        if head.len() > bytes_max {
            return Asked::TooLarge;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Asked::Malformed,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    if head.len() > bytes_max {
        return Asked::TooLarge;
    }
    let Ok(head) = std::str::from_utf8(&head) else {
        return Asked::Malformed;
    };
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Asked::Malformed;
    };
    if !version.starts_with("HTTP/1.") {
        return Asked::Malformed;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Asked::Metrics,
        ("GET", _) => Asked::NotFound,
        _ => Asked::WrongMethod,
    }
}

async fn answer(mut stream: tokio::net::TcpStream, config: &MetricsConfig, source: &MetricsSource) {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let asked = tokio::time::timeout(timeout, read_head(&mut stream, config.request_bytes_max))
        .await
        .unwrap_or(Asked::TimedOut);
    let (status, extra, body) = match asked {
        Asked::Metrics => ("200 OK", "", source.render()),
        Asked::NotFound => ("404 Not Found", "", "only /metrics is served here\n".to_owned()),
        Asked::WrongMethod => (
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            "only GET /metrics is served here\n".to_owned(),
        ),
        Asked::Malformed => ("400 Bad Request", "", "not an HTTP/1 request\n".to_owned()),
        Asked::TooLarge => (
            "431 Request Header Fields Too Large",
            "",
            format!(
                "the request is over metrics.request_bytes_max={} bytes\n",
                config.request_bytes_max
            ),
        ),
        Asked::TimedOut => (
            "408 Request Timeout",
            "",
            format!(
                "the request did not arrive within metrics.request_timeout_ms={}\n",
                config.request_timeout_ms
            ),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(timeout, stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
    // A lingering close: read what the client is still sending (a refused
    // request's rest) for a moment, so that closing with unread bytes does
    // not reset the connection before the client read the answer.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::log::{LogLimits, SyncPolicy};
    use crate::outbox::{Outbox, OverflowPolicy};

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let request = request.to_vec();
        // Written on its own thread: the server stops reading a refused
        // request, and the client must still get to read the answer.
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(&request);
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let _ = sender.join();
        String::from_utf8_lossy(&response).into_owned()
    }

    #[test]
    fn metrics_are_served_and_a_huge_request_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut outbox, _) = Outbox::open(
            &dir.path().join("outbox"),
            LogLimits {
                segment_bytes_max: 4096,
                bytes_max: 1 << 20,
                record_bytes_max: 64 << 10,
            },
            SyncPolicy::EveryBatch,
            OverflowPolicy::RefuseReadings,
        )
        .unwrap();
        outbox
            .append_batch(3, &[(molt_protocol::Kind::Telemetry, vec![1, 2, 3])])
            .unwrap();
        let counters = Arc::new(Counters::new(1_700_000_000_000, 4, 2));
        counters.batch(3, Duration::from_micros(250));
        let source = MetricsSource {
            counters,
            outbox: Arc::new(std::sync::Mutex::new(outbox)),
            link: None,
        };
        let config = MetricsConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..MetricsConfig::default()
        };
        let server = MetricsServer::start(&config, source).unwrap().unwrap();

        let response = get(server.addr(), b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("text/plain; version=0.0.4"), "{response}");
        for line in [
            "molt_agent_readings_total 3",
            "molt_agent_batches_total 1",
            "molt_agent_starts_total 4",
            "molt_agent_outbox_messages 1",
            "molt_agent_outbox_dropped_total 2",
            "# TYPE molt_agent_policy_traps_total counter",
            "molt_agent_boot_timestamp_seconds 1700000000",
        ] {
            assert!(response.lines().any(|l| l == line), "no `{line}` in\n{response}");
        }
        let rss = response
            .lines()
            .find_map(|line| line.strip_prefix("molt_agent_rss_bytes "))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap();
        if cfg!(target_os = "linux") {
            assert!(rss > 0, "VmRSS read from /proc");
        }

        // A 1 MiB header is refused, naming the limit, and costs the agent
        // request_bytes_max.
        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Fill: ".to_vec();
        huge.resize(1 << 20, b'a');
        huge.extend_from_slice(b"\r\n\r\n");
        let response = get(server.addr(), &huge);
        assert!(
            response.starts_with("HTTP/1.1 431 "),
            "{}",
            &response[..response.len().min(200)]
        );
        assert!(response.contains("metrics.request_bytes_max=8192"), "{response}");

        // Other paths and methods are refused; the endpoint still serves.
        assert!(get(server.addr(), b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(server.addr(), b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(get(server.addr(), b"GET /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200 "));
    }
}
