//! The server's configuration: one TOML file, every limit named.
//!
//! `molt server init DIR` writes [`CONFIG_TEMPLATE`] with a comment on every
//! key; [`Config::load`] reads it back. A limit's key is the name an error
//! gives when the limit refuses something.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// The file name `molt server init` writes in the data directory.
pub const CONFIG_FILE: &str = "molt-server.toml";

/// Everything the server reads at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the database, the device CA and the broker's keys live.
    /// Relative paths are taken from the config file's directory.
    pub data_dir: PathBuf,
    /// Listening addresses.
    pub listen: Listen,
    /// Limits on what devices and clients may send.
    #[serde(default)]
    pub limits: Limits,
    /// The device protocol's message limits (`molt_protocol::Limits`).
    #[serde(default)]
    pub protocol: ProtocolLimits,
    /// Alert notifications to an HTTP endpoint; off unless `url` is set.
    #[serde(default)]
    pub webhook: Webhook,
    /// Release hosting: uploads from `molt repo push` and the timestamp key.
    #[serde(default)]
    pub repository: Repository,
}

/// Listening addresses; port 0 picks a free port and the server prints it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// MQTT over TLS with client certificates, for devices.
    pub mqtt: SocketAddr,
    /// Plain MQTT on loopback for the server's own privileged client.
    pub mqtt_local: SocketAddr,
    /// HTTPS: enrollment and the REST API.
    pub https: SocketAddr,
    /// The broker address handed to devices at enrollment
    /// (`mqtts://host:port`); empty means the bound `mqtt` address.
    #[serde(default)]
    pub advertised_mqtt: String,
}

/// Limits on outside input; each key is named in the error it causes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Uplink messages one device may send per second (sustained).
    pub device_messages_per_second: u32,
    /// Messages a device may send in a burst above the sustained rate.
    pub device_message_burst: u32,
    /// Most messages the store commits in one transaction.
    pub ingest_batch_max: usize,
    /// Longest a received message waits for its batch to fill, in ms.
    pub ingest_batch_wait_ms: u64,
    /// Messages waiting for the store before the server stops reading the
    /// broker (back-pressure: the broker then queues for the server, up to
    /// `broker_server_queue_max`).
    pub ingest_queue_max: usize,
    /// Publishes the embedded broker has accepted and the server's own
    /// client not yet received, at most; above it the broker refuses new
    /// publishes (`molt_broker_shed_total`) without disconnecting, so its
    /// memory stays bounded under overload. Nothing acknowledged is lost:
    /// a device resends whatever the store has not acknowledged.
    pub broker_server_queue_max: usize,
    /// Device connections the broker accepts at once.
    pub broker_connections_max: usize,
    /// TLS handshakes in progress at once.
    pub broker_handshakes_max: usize,
    /// Largest MQTT packet, in bytes.
    pub mqtt_packet_bytes_max: u32,
    /// Longest a device connection may take from TCP accept through the TLS
    /// handshake, and again from there to a complete CONNECT, in seconds.
    pub mqtt_connect_timeout_s: u64,
    /// Largest HTTP request body (CSR, API calls), in bytes.
    pub http_body_bytes_max: usize,
    /// HTTPS connections open at once; more wait in the kernel's backlog.
    pub http_connections_max: usize,
    /// Longest an HTTPS connection may take from accept to the end of its
    /// TLS handshake, and a request to send its headers, in seconds.
    pub http_handshake_timeout_s: u64,
    /// Longest a request body may pause between two chunks, in seconds.
    pub http_body_idle_timeout_s: u64,
    /// Longest lifetime of an enrollment token, in seconds.
    pub enrollment_token_ttl_max_s: u64,
    /// Most uses of one enrollment token.
    pub enrollment_token_uses_max: u32,
    /// Validity of a device certificate, in days.
    pub device_cert_days: u32,
    /// Telemetry older than this many days is deleted.
    pub telemetry_retention_days: u32,
    /// Device groups the server holds.
    pub groups_max: usize,
    /// Devices in one static group.
    pub group_members_max: usize,
    /// `KEY=VALUE` terms in one dynamic group's query.
    pub group_query_terms_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            device_messages_per_second: 50,
            device_message_burst: 500,
            ingest_batch_max: 2000,
            ingest_batch_wait_ms: 20,
            ingest_queue_max: 50_000,
            broker_server_queue_max: 5_000,
            broker_connections_max: 20_000,
            broker_handshakes_max: 2_000,
            mqtt_packet_bytes_max: 96 * 1024,
            mqtt_connect_timeout_s: 10,
            http_body_bytes_max: 64 * 1024,
            http_connections_max: 1024,
            http_handshake_timeout_s: 10,
            http_body_idle_timeout_s: 30,
            enrollment_token_ttl_max_s: 7 * 24 * 3600,
            enrollment_token_uses_max: 100_000,
            device_cert_days: 3650,
            telemetry_retention_days: 30,
            groups_max: 1000,
            group_members_max: 100_000,
            group_query_terms_max: 16,
        }
    }
}

/// `[repository]`: release hosting ([`crate::releases`]). Each key is
/// named in the error it causes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Repository {
    /// Largest file one push may upload, in bytes.
    pub upload_file_bytes_max: u64,
    /// Most files one push may upload.
    pub upload_files_max: usize,
    /// Uploads open at once (started, not yet committed or aborted).
    pub uploads_max: usize,
    /// An upload nothing was added to for this many seconds (a push that
    /// died) is removed when the next one starts.
    pub upload_idle_timeout_s: u64,
    /// The online TUF timestamp key (a PEM key file of `molt keys init`,
    /// the one `keys.json` lists under `roles.timestamp`), relative to `data_dir`; none means the server
    /// serves the timestamps operators push and never signs one.
    pub timestamp_key: Option<PathBuf>,
    /// Lifetime of a timestamp the server signs, in seconds.
    pub timestamp_lifetime_s: u64,
    /// Re-sign the served timestamp when it expires within this many seconds.
    pub timestamp_resign_before_s: u64,
    /// How often the server looks at the served timestamp, in seconds.
    pub timestamp_check_interval_s: u64,
}

impl Default for Repository {
    fn default() -> Repository {
        Repository {
            upload_file_bytes_max: 1 << 30,
            upload_files_max: 10_000,
            uploads_max: 4,
            upload_idle_timeout_s: 3600,
            timestamp_key: None,
            timestamp_lifetime_s: 24 * 3600,
            timestamp_resign_before_s: 6 * 3600,
            timestamp_check_interval_s: 60,
        }
    }
}

/// `[webhook]`: every alert newly stored is POSTed as JSON to `url`
/// ([`crate::webhook`]). Each key is named in the error or log line it causes.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhook {
    /// `http://` or `https://` URL; empty means no webhook.
    pub url: String,
    /// Notifications waiting for delivery; above it new ones are dropped
    /// (and counted), so a slow receiver never holds up ingest.
    pub queue_max: usize,
    /// Further attempts after the first fails with a connection error, a
    /// timeout, a 5xx or a 429; other statuses are not retried.
    pub retries_max: u32,
    /// Wait before the first retry, in ms; doubled after every retry.
    pub retry_backoff_ms: u64,
    /// Longest wait between retries, in ms (also caps a `Retry-After`).
    pub retry_backoff_max_ms: u64,
    /// Longest one request may take, connect to response, in ms.
    pub timeout_ms: u64,
    /// Sent as `Authorization: Bearer TOKEN` when not empty.
    pub token: String,
}

impl Default for Webhook {
    fn default() -> Webhook {
        Webhook {
            url: String::new(),
            queue_max: 10_000,
            retries_max: 5,
            retry_backoff_ms: 500,
            retry_backoff_max_ms: 30_000,
            timeout_ms: 5_000,
            token: String::new(),
        }
    }
}

// By hand, so that a logged config never shows the token.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("queue_max", &self.queue_max)
            .field("retries_max", &self.retries_max)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .field("retry_backoff_max_ms", &self.retry_backoff_max_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("token", &if self.token.is_empty() { "" } else { "<redacted>" })
            .finish()
    }
}

impl Webhook {
    /// Whether notifications are sent at all.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), Error> {
        if !self.enabled() {
            return Ok(());
        }
        let url = reqwest::Url::parse(self.url.trim())
            .map_err(|e| Error::Config(format!("webhook.url = {:?} is not a URL: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::Config(format!(
                "webhook.url = {:?} must be an http:// or https:// URL with a host",
                self.url
            )));
        }
        for (name, value) in [
            ("webhook.queue_max", self.queue_max as u64),
            ("webhook.retry_backoff_ms", self.retry_backoff_ms),
            ("webhook.timeout_ms", self.timeout_ms),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        if self.retry_backoff_max_ms < self.retry_backoff_ms {
            return Err(Error::Config(format!(
                "webhook.retry_backoff_max_ms ({}) is below webhook.retry_backoff_ms ({})",
                self.retry_backoff_max_ms, self.retry_backoff_ms
            )));
        }
        if !self.token.is_empty() && reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.token)).is_err()
        {
            return Err(Error::Config(
                "webhook.token must be printable ASCII (it is sent in an HTTP header)".to_owned(),
            ));
        }
        Ok(())
    }
}

/// `molt_protocol::Limits`, under the same names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct ProtocolLimits {
    pub payload_bytes_max: usize,
    pub points_per_message_max: usize,
    pub metrics_per_message_max: usize,
    pub metric_len_max: usize,
    pub alerts_per_message_max: usize,
    pub text_len_max: usize,
    pub name_len_max: usize,
    pub policies_max: usize,
}

impl Default for ProtocolLimits {
    fn default() -> ProtocolLimits {
        let l = molt_protocol::Limits::default();
        ProtocolLimits {
            payload_bytes_max: l.payload_bytes_max,
            points_per_message_max: l.points_per_message_max,
            metrics_per_message_max: l.metrics_per_message_max,
            metric_len_max: l.metric_len_max,
            alerts_per_message_max: l.alerts_per_message_max,
            text_len_max: l.text_len_max,
            name_len_max: l.name_len_max,
            policies_max: l.policies_max,
        }
    }
}

impl ProtocolLimits {
    /// The protocol crate's form.
    pub fn to_protocol(&self) -> molt_protocol::Limits {
        molt_protocol::Limits {
            payload_bytes_max: self.payload_bytes_max,
            points_per_message_max: self.points_per_message_max,
            metrics_per_message_max: self.metrics_per_message_max,
            metric_len_max: self.metric_len_max,
            alerts_per_message_max: self.alerts_per_message_max,
            text_len_max: self.text_len_max,
            name_len_max: self.name_len_max,
            policies_max: self.policies_max,
        }
    }
}

impl Config {
    /// Reads and checks a config file; relative `data_dir` is resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read {}: {e} (create one with `molt server init DIR`)",
                path.display()
            ))
        })?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.data_dir = base.join(&config.data_dir);
        }
        config.check()?;
        Ok(config)
    }

    /// A config for tests and embedding: everything on `127.0.0.1:0`.
    pub fn loopback(data_dir: impl Into<PathBuf>) -> Config {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            data_dir: data_dir.into(),
            listen: Listen {
                mqtt: any,
                mqtt_local: any,
                https: any,
                advertised_mqtt: String::new(),
            },
            limits: Limits::default(),
            protocol: ProtocolLimits::default(),
            webhook: Webhook::default(),
            repository: Repository::default(),
        }
    }

    /// Refuses settings that cannot work, naming the key.
    pub fn check(&self) -> Result<(), Error> {
        if !self.listen.mqtt_local.ip().is_loopback() {
            return Err(Error::Config(format!(
                "listen.mqtt_local = {} must be a loopback address: it carries the server's privileged client",
                self.listen.mqtt_local
            )));
        }
        let l = &self.limits;
        for (name, value) in [
            (
                "limits.device_messages_per_second",
                l.device_messages_per_second as usize,
            ),
            ("limits.device_message_burst", l.device_message_burst as usize),
            ("limits.ingest_batch_max", l.ingest_batch_max),
            ("limits.ingest_queue_max", l.ingest_queue_max),
            ("limits.broker_server_queue_max", l.broker_server_queue_max),
            ("limits.broker_connections_max", l.broker_connections_max),
            ("limits.broker_handshakes_max", l.broker_handshakes_max),
            ("limits.mqtt_connect_timeout_s", l.mqtt_connect_timeout_s as usize),
            ("limits.http_connections_max", l.http_connections_max),
            ("limits.http_handshake_timeout_s", l.http_handshake_timeout_s as usize),
            ("limits.http_body_idle_timeout_s", l.http_body_idle_timeout_s as usize),
            ("limits.groups_max", l.groups_max),
            ("limits.group_query_terms_max", l.group_query_terms_max),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        if (l.mqtt_packet_bytes_max as usize) < self.protocol.payload_bytes_max {
            return Err(Error::Config(format!(
                "limits.mqtt_packet_bytes_max ({}) is below protocol.payload_bytes_max ({})",
                l.mqtt_packet_bytes_max, self.protocol.payload_bytes_max
            )));
        }
        self.webhook.check()
    }
}

/// The commented config `molt server init` writes.
pub const CONFIG_TEMPLATE: &str = r#"# molt-server configuration, written by `molt server init`.
# Start the server with: molt server run --config THIS_FILE

# Database (SQLite), device CA, broker keys and the admin token live here.
# Relative to this file's directory.
data_dir = "."

[listen]
# MQTT over TLS for devices; every device shows its own certificate.
# Port 0 picks a free port; the server prints the one it chose.
mqtt = "0.0.0.0:8883"
# The server's own privileged MQTT client connects here. Must be loopback.
mqtt_local = "127.0.0.1:0"
# HTTPS: device enrollment and the REST API (/api/v1).
https = "0.0.0.0:8443"
# Broker address handed to devices at enrollment, e.g. "mqtts://fleet.example.com:8883".
# Empty: the bound mqtt address.
advertised_mqtt = ""

[limits]
# Uplink messages one device may send per second, sustained; above it the
# device is disconnected and resends from its outbox later (nothing lost).
device_messages_per_second = 50
# Messages a device may send at once above the sustained rate.
device_message_burst = 500
# Most messages committed in one store transaction.
ingest_batch_max = 2000
# Longest a message waits for its batch to fill, in milliseconds.
ingest_batch_wait_ms = 20
# Messages waiting for the store before the server stops reading (back-pressure).
ingest_queue_max = 50000
# Publishes the broker holds for the server, at most; above it new publishes
# are refused (not disconnected) and devices resend what the store has not
# acknowledged. Bounds the broker's memory under overload.
broker_server_queue_max = 5000
# Device connections accepted at once, and TLS handshakes in progress at once.
broker_connections_max = 20000
broker_handshakes_max = 2000
# Largest MQTT packet, in bytes (at least protocol.payload_bytes_max).
mqtt_packet_bytes_max = 98304
# Seconds a device may take for its TLS handshake, and again for its CONNECT;
# a connection that stalls longer is closed.
mqtt_connect_timeout_s = 10
# Largest HTTP request body (CSR, API call), in bytes.
http_body_bytes_max = 65536
# HTTPS connections open at once (more wait in the kernel's backlog); the
# longest a client may take for its TLS handshake and, again, for a
# request's headers; the longest a request body may pause (seconds).
http_connections_max = 1024
http_handshake_timeout_s = 10
http_body_idle_timeout_s = 30
# Longest lifetime and most uses of one enrollment token.
enrollment_token_ttl_max_s = 604800
enrollment_token_uses_max = 100000
# Validity of a device certificate, in days.
device_cert_days = 3650
# Telemetry older than this is deleted.
telemetry_retention_days = 30
# Device groups, devices in one static group, and terms in one dynamic
# group's query (KEY=VALUE,... over hardware_class, online and tags).
groups_max = 1000
group_members_max = 100000
group_query_terms_max = 16

[protocol]
# The device protocol's limits (docs/protocol.md); agents use the same names.
payload_bytes_max = 65536
points_per_message_max = 2048
metrics_per_message_max = 256
metric_len_max = 128
alerts_per_message_max = 256
text_len_max = 2048
name_len_max = 128
policies_max = 64

[webhook]
# Every alert newly stored (state "open") is POSTed as JSON to this http://
# or https:// URL: id, device, seq, policy, sensor, t_ms, severity, message,
# state. A resent message does not notify again. Empty: no webhook.
url = ""
# Notifications waiting for delivery; above it new ones are dropped and
# counted (molt_webhook_dropped_total), so ingest never waits for the receiver.
# The alerts themselves are always stored.
queue_max = 10000
# Retries after a connection error, a timeout, a 5xx or a 429 (other
# statuses are not retried), waiting retry_backoff_ms, doubled each time, at
# most retry_backoff_max_ms (milliseconds).
retries_max = 5
retry_backoff_ms = 500
retry_backoff_max_ms = 30000
# Longest one request may take, in milliseconds.
timeout_ms = 5000
# Sent as "Authorization: Bearer TOKEN" when not empty.
token = ""

[repository]
# Release hosting: `molt repo push --server URL` uploads a published
# repository here; the server verifies it as a device would and serves it
# at https://HOST:PORT/repo/ (with Range requests). It never holds root,
# targets or snapshot keys.
# Largest file, most files and uploads open at once, for one push.
upload_file_bytes_max = 1073741824
upload_files_max = 10000
uploads_max = 4
# An upload nothing was added to for this long (seconds; a push that died)
# is removed when the next one starts.
upload_idle_timeout_s = 3600
# The online timestamp key (relative to data_dir): a copy of the key file
# KEYS/KEYID.pem that KEYS/keys.json lists under roles.timestamp. The server
# then re-signs timestamp.json before it expires. Without it, operators keep
# it fresh (`molt repo refresh`, then push). Never put another role's key here.
# timestamp_key = "KEYID.pem"
# Lifetime of a timestamp the server signs; re-sign this long before expiry;
# how often to look (seconds).
timestamp_lifetime_s = 86400
timestamp_resign_before_s = 21600
timestamp_check_interval_s = 60
"#;
