//! molt-server: the fleet server.
//!
//! One process holds the registry and the device CA, runs the embedded MQTT
//! broker (rmqtt) that enforces per-device identity and topic rights,
//! stores telemetry idempotently and acknowledges it only after commit,
//! directs each device's desired release, and serves enrollment and the
//! REST API over HTTPS. [`run`] is the whole server in the mini-redis
//! style: a config, a bound HTTPS listener and a shutdown future.
//!
//! Code map: [`config`] (the file `molt server init` writes), [`store`]
//! (all SQL), [`ca`] (device CA), [`broker`] (rmqtt and its hooks),
//! [`ingest`] (the server's own MQTT client), [`http`] (enrollment, REST
//! API, metrics), [`webhook`] (alert notifications), [`releases`] (the
//! hosted TUF repository).

#![deny(missing_docs)]

pub mod broker;
pub mod ca;
pub mod config;
mod error;
pub mod groups;
pub mod http;
pub mod ingest;
pub mod points;
pub mod releases;
pub mod store;
pub mod webhook;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use crate::config::Config;
pub use crate::error::Error;
use crate::ingest::tokio_util_shutdown::Shutdown;
use crate::store::Store;

/// File with the secret of the server's own MQTT client.
pub const LOCAL_SECRET_FILE: &str = "local-mqtt.secret";
/// File with the admin API token `molt server init` made.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// File with the pinned TUF root handed to devices (optional; `molt repo
/// push` sets it).
pub const TUF_ROOT_FILE: &str = "tuf-root.json";

/// A random secret, hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// What `molt server init` made.
#[derive(Debug)]
pub struct Initialized {
    /// The config file.
    pub config_path: std::path::PathBuf,
    /// The admin API token (also in `admin.token`).
    pub admin_token: String,
}

/// Creates a data directory: config, database, device CA, server TLS
/// certificate, local secret and an admin API token. `names` are the DNS
/// names or IPs the server's certificate covers (localhost is always in).
pub async fn init(dir: &Path, names: &[String]) -> Result<Initialized, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let config_path = dir.join(config::CONFIG_FILE);
    if config_path.exists() {
        return Err(Error::Config(format!(
            "{} exists; `molt server run --config {}` starts it",
            config_path.display(),
            config_path.display()
        )));
    }
    let mut all = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    all.extend(names.iter().cloned());
    ca::DeviceCa::create(dir, &all)?;
    std::fs::write(dir.join(LOCAL_SECRET_FILE), random_hex(32))
        .map_err(|e| Error::io("writing the local secret", e))?;
    let store = Store::open(dir).await?;
    let admin_token = http::create_api_token(&store, "admin", http::Role::Admin, "molt server init").await?;
    std::fs::write(dir.join(ADMIN_TOKEN_FILE), &admin_token).map_err(|e| Error::io("writing the admin token", e))?;
    #[cfg(unix)]
    for name in [LOCAL_SECRET_FILE, ADMIN_TOKEN_FILE] {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600));
    }
    store.close().await;
    std::fs::write(&config_path, config::CONFIG_TEMPLATE).map_err(|e| Error::io("writing the config", e))?;
    Ok(Initialized {
        config_path,
        admin_token,
    })
}

/// Longest [`Running::stop`] waits for the webhook task.
const WEBHOOK_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Addresses the running server bound.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// MQTT over TLS for devices.
    pub mqtt: SocketAddr,
    /// The broker's loopback listener for the server's client.
    pub mqtt_local: SocketAddr,
    /// HTTPS (enrollment, REST API, metrics).
    pub https: SocketAddr,
}

/// Shared state of a running server.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The database.
    pub store: Store,
    /// The broker's gate (access cache, refusals).
    pub gate: Arc<broker::Gate>,
    /// Ingest counters.
    pub ingest: Arc<ingest::IngestStats>,
    /// Webhook counters.
    pub webhook: Arc<webhook::WebhookStats>,
    /// The server's MQTT client, for downlink messages.
    pub downlink: ingest::Downlink,
    /// The device CA.
    pub ca: ca::DeviceCa,
    /// The bound addresses.
    pub addrs: Addrs,
    /// Release hosting.
    pub releases: releases::Releases,
}

/// A started server; [`Running::stop`] shuts it down.
pub struct Running {
    /// Bound addresses.
    pub addrs: Addrs,
    /// Shared state (tests read counters and the store through it).
    pub shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    ingest: tokio::task::JoinHandle<()>,
    broker: tokio::task::JoinHandle<()>,
    http: tokio::task::JoinHandle<()>,
    webhook: Option<tokio::task::JoinHandle<()>>,
}

/// Starts every part and returns once all listen.
pub async fn start(config: Config, https: tokio::net::TcpListener) -> Result<Running, Error> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    config.check()?;
    let dir = config.data_dir.clone();
    let store = Store::open(&dir).await?;
    let ca = ca::DeviceCa::load(&dir)?;
    let secret = std::fs::read_to_string(dir.join(LOCAL_SECRET_FILE))
        .map_err(|e| Error::io(format!("reading {} (run `molt server init`)", LOCAL_SECRET_FILE), e))?
        .trim()
        .to_owned();
    let (presence_tx, presence_rx) = tokio::sync::mpsc::unbounded_channel();
    let stats = Arc::new(ingest::IngestStats::default());
    let gate = Arc::new(broker::Gate::new(
        store.all_access().await?,
        secret.clone(),
        &config,
        presence_tx,
        stats.clone(),
    ));
    let (broker_addrs, broker_task) = broker::start(&config, gate.clone()).await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let webhook_stats = Arc::new(webhook::WebhookStats::default());
    let (notifier, webhook_task) = webhook::start(&config.webhook, webhook_stats.clone(), Shutdown(stop_rx.clone()))?;
    let (downlink, ingest_task) = ingest::start(
        &config,
        broker_addrs.local,
        &secret,
        store.clone(),
        stats.clone(),
        gate.clone(),
        notifier,
        Shutdown(stop_rx.clone()),
    )
    .await?;
    let addrs = Addrs {
        mqtt: broker_addrs.devices,
        mqtt_local: broker_addrs.local,
        https: https
            .local_addr()
            .map_err(|e| Error::io("reading the HTTPS address", e))?,
    };
    let releases = releases::Releases::open(&config)?;
    let shared = Arc::new(Shared {
        config,
        store,
        gate,
        ingest: stats,
        webhook: webhook_stats,
        downlink,
        ca,
        addrs,
        releases,
    });
    tokio::spawn(http::presence(shared.clone(), presence_rx));
    tokio::spawn(releases::keep_timestamp_fresh(
        shared.clone(),
        Shutdown(stop_rx.clone()),
    ));
    let http_task = tokio::spawn(http::serve(shared.clone(), https, Shutdown(stop_rx)));
    tracing::info!(mqtt = %addrs.mqtt, https = %addrs.https, "molt-server running");
    Ok(Running {
        addrs,
        shared,
        stop,
        ingest: ingest_task,
        broker: broker_task,
        http: http_task,
        webhook: webhook_task,
    })
}

impl Running {
    /// Graceful shutdown: stop reading the broker, commit and acknowledge
    /// what was received, then stop the broker and close the database.
    /// Webhook notifications still queued are not sent (the alerts are
    /// stored).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.ingest.await;
        let _ = self.http.await;
        if let Some(mut webhook) = self.webhook {
            // It abandons its request at the stop signal; the bound only
            // guards against a delivery that never yields.
            if tokio::time::timeout(WEBHOOK_STOP_TIMEOUT, &mut webhook).await.is_err() {
                tracing::warn!("webhook task did not stop in time; aborted");
                webhook.abort();
            }
        }
        self.broker.abort();
        let _ = self.broker.await;
        self.shared.store.close().await;
    }
}

/// Runs the server until `shutdown` resolves (mini-redis style).
pub async fn run(
    config: Config,
    https: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let running = start(config, https).await?;
    shutdown.await;
    tracing::info!("shutting down: flushing acknowledged messages");
    running.stop().await;
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM: the shutdown both server
/// entries (`molt-server run`, `molt server run`) wait for.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
