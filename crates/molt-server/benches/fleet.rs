//! Whole-server benchmarks, each beside Mosquitto measured in the same run
//! on the same machine:
//!
//! - telemetry ingest: MQTT messages and stored points per second over TLS
//!   with client certificates, ACL checks and idempotent storage, against a
//!   Mosquitto forwarding the same messages to one subscriber;
//! - a connection storm: devices connecting at once with TLS client
//!   certificates, seconds until all are connected and the server's resident
//!   memory per connection, against Mosquitto;
//! - enrollment: devices enrolled per second (token + CSR over HTTPS).
//!
//! These are scenarios, not microbenchmarks, so this is a plain
//! `harness = false` program: it runs each scenario once and prints one
//! `figure/<key>: <value> <unit>` line per figure on stderr, which
//! `cargo xtask bench` collects into docs/benchmarks.md. The connection
//! storm runs against a freshly started server, so that its memory figure
//! is not hidden by what ingest left allocated. The server runs as its own process
//! (the `molt-server` binary), as it would in production, and so does
//! Mosquitto: a private instance of the machine's `mosquitto` with a TLS
//! listener that, like molt's, requires client certificates from the same
//! CA, so both sides do the same cryptography. Without a `mosquitto` binary
//! the baselines are skipped and say so.
//!
//! Scale with `MOLT_BENCH_INGEST_DEVICES` (default 100), `MOLT_BENCH_INGEST_S`
//! (default 10), `MOLT_BENCH_STORM_DEVICES` (default 10000) and
//! `MOLT_BENCH_ENROLL` (default 500); `--quick` (from `cargo xtask bench
//! --quick`) divides each by five.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Identity, choose_tls_provider, telemetry_payload};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

/// Points in each telemetry message.
const POINTS: usize = 50;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    choose_tls_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    runtime.block_on(run());
}

struct Server {
    child: Child,
    mqtt: SocketAddr,
    https: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(config: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_molt-server"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn molt-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read address line");
    let addr = |key: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .parse()
            .expect("address")
    };
    Server {
        mqtt: addr("mqtt="),
        https: addr("https="),
        child,
    }
}

/// A private Mosquitto with a TLS listener requiring client certificates
/// of molt's device CA, on a free loopback port.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_binary() -> Option<PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

fn spawn_mosquitto(binary: &Path, data_dir: &Path, scratch: &Path) -> Mosquitto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let config = scratch.join("mosquitto.conf");
    let file = |name: &str| data_dir.join(name).display().to_string();
    std::fs::write(
        &config,
        format!(
            "user root\npersistence false\nlog_dest none\nmax_queued_messages 100000\n\
             listener {port} 127.0.0.1\nallow_anonymous true\nrequire_certificate true\nuse_identity_as_username true\n\
             cafile {}\ncertfile {}\nkeyfile {}\n",
            file(molt_server::ca::CA_CERT),
            file(molt_server::ca::SERVER_CERT),
            file(molt_server::ca::SERVER_KEY),
        ),
    )
    .expect("write mosquitto.conf");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mosquitto");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Mosquitto { child, port }
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// One rustls client config per device (its own certificate), built before
/// anything is timed.
fn tls(identity: &Identity, ca_pem: &[u8]) -> TlsConfiguration {
    TlsConfiguration::Simple {
        ca: ca_pem.to_vec(),
        alpn: None,
        client_auth: Some((
            identity.cert_pem.clone().into_bytes(),
            identity.key_pem.clone().into_bytes(),
        )),
    }
}

fn options(identity: &Identity, ca_pem: &[u8], port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(identity.device.clone(), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(100);
    o.set_transport(Transport::Tls(tls(identity, ca_pem)));
    o
}

async fn run() {
    let scale = if std::env::args().any(|arg| arg == "--quick") {
        5
    } else {
        1
    };
    let ingest_devices = (env_or("MOLT_BENCH_INGEST_DEVICES", 100) / scale).max(1) as usize;
    let ingest_window = Duration::from_secs((env_or("MOLT_BENCH_INGEST_S", 10) / scale).max(1));
    let storm_devices = (env_or("MOLT_BENCH_STORM_DEVICES", 10_000) / scale).max(1) as usize;
    let enrollments = (env_or("MOLT_BENCH_ENROLL", 500) / scale).max(1) as usize;

    let dir = tempfile::tempdir().expect("tempdir");
    let init = molt_server::init(dir.path(), &["localhost".to_owned()])
        .await
        .expect("init");
    let config = dir.path().join(molt_server::config::CONFIG_FILE);
    // Loopback ports; per-device rate limits and connection caps out of the way
    // of a benchmark that means to find the server's own limits.
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("mqtt = \"0.0.0.0:8883\"", "mqtt = \"127.0.0.1:0\"")
        .replace("https = \"0.0.0.0:8443\"", "https = \"127.0.0.1:0\"")
        .replace(
            "device_messages_per_second = 50",
            "device_messages_per_second = 1000000",
        )
        .replace("device_message_burst = 500", "device_message_burst = 1000000")
        .replace(
            "broker_handshakes_max = 2000",
            &format!("broker_handshakes_max = {}", storm_devices.max(1)),
        );
    std::fs::write(&config, text).expect("write config");

    // Every device's certificate, issued by the device CA and registered,
    // before anything is timed.
    let devices = storm_devices.max(ingest_devices);
    eprintln!("fleet bench: issuing {devices} device certificates");
    let identities = common::register_devices(dir.path(), "bench", devices, "bench").await;
    let ca_pem = std::fs::read(dir.path().join(molt_server::ca::CA_CERT)).expect("ca pem");
    let mosquitto = mosquitto_binary();
    if mosquitto.is_none() {
        eprintln!("fleet bench: no mosquitto binary; the baselines are not measured");
    }

    let server = spawn_server(&config);
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).expect("ca")])
        .build()
        .expect("client");
    let base = format!("https://localhost:{}", server.https.port());

    // Enrollment.
    enroll(&http, &base, &init.admin_token, enrollments).await;

    // Ingest: molt, then Mosquitto.
    let ingest = &identities[..ingest_devices];
    let metric = |name: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let text = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            text.lines()
                .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse::<u64>().ok()))
                .unwrap_or(0)
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let publishers = start_publishers(ingest, &ca_pem, server.mqtt.port(), stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (messages_0, points_0) = (
        metric("molt_messages_stored_total ").await,
        metric("molt_points_stored_total ").await,
    );
    let started = Instant::now();
    tokio::time::sleep(ingest_window).await;
    let (messages_1, points_1) = (
        metric("molt_messages_stored_total ").await,
        metric("molt_points_stored_total ").await,
    );
    let seconds = started.elapsed().as_secs_f64();
    let shed = metric("molt_broker_shed_total ").await;
    stop.store(true, Ordering::SeqCst);
    for publisher in publishers {
        let _ = publisher.await;
    }
    eprintln!(
        "figure/ingest_messages: {:.0} messages/s ({ingest_devices} devices, {POINTS} points each, TLS, stored; \
         the devices publish without waiting, and the broker refused {shed} publishes while the store was behind)",
        (messages_1 - messages_0) as f64 / seconds
    );
    eprintln!(
        "figure/ingest_points: {:.0} points/s",
        (points_1 - points_0) as f64 / seconds
    );

    let scratch = tempfile::tempdir().expect("scratch");
    if let Some(binary) = &mosquitto {
        let broker = spawn_mosquitto(binary, dir.path(), scratch.path());
        let received = Arc::new(AtomicU64::new(0));
        let subscriber = subscribe_all(
            &identities[ingest_devices.min(devices - 1)],
            &ca_pem,
            broker.port,
            received.clone(),
        )
        .await;
        let stop = Arc::new(AtomicBool::new(false));
        let publishers = start_publishers(ingest, &ca_pem, broker.port, stop.clone()).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = received.load(Ordering::SeqCst);
        let started = Instant::now();
        tokio::time::sleep(ingest_window).await;
        let after = received.load(Ordering::SeqCst);
        let seconds = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::SeqCst);
        for publisher in publishers {
            let _ = publisher.await;
        }
        subscriber.abort();
        eprintln!(
            "figure/mosquitto_messages: {:.0} messages/s (the same devices and messages, TLS, forwarded to one subscriber)",
            (after - before) as f64 / seconds
        );
    }

    // The connection storm: a fresh molt, then a fresh Mosquitto, each alone
    // on the machine.
    drop(server);
    let server = spawn_server(&config);
    let storm = &identities[..storm_devices];
    let (seconds, connected, bytes, rss) =
        connection_storm(storm, &ca_pem, server.mqtt.port(), server.child.id()).await;
    eprintln!("figure/storm_connected: {connected} devices");
    eprintln!("figure/storm_rss: {rss} bytes (the server process, every device connected)");
    eprintln!("figure/storm_seconds: {seconds:.2} s ({connected} of {storm_devices} devices connected, TLS)");
    eprintln!("figure/storm_bytes_per_connection: {bytes} bytes");
    drop(server);
    if let Some(binary) = &mosquitto {
        let broker = spawn_mosquitto(binary, dir.path(), scratch.path());
        let (seconds, connected, bytes, rss) = connection_storm(storm, &ca_pem, broker.port, broker.child.id()).await;
        eprintln!("figure/mosquitto_storm_connected: {connected} devices");
        eprintln!("figure/mosquitto_storm_rss: {rss} bytes");
        eprintln!(
            "figure/mosquitto_storm_seconds: {seconds:.2} s ({connected} of {storm_devices} devices connected, TLS)"
        );
        eprintln!("figure/mosquitto_storm_bytes_per_connection: {bytes} bytes");
    }
}

/// `count` devices enrolled with one token, 16 requests in flight; keys and
/// CSRs are made before the clock starts.
async fn enroll(http: &reqwest::Client, base: &str, admin: &str, count: usize) {
    let token: serde_json::Value = http
        .post(format!("{base}/api/v1/enrollment-tokens"))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "ttl_s": 3600, "uses": count }))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token JSON");
    let token = token["token"].as_str().expect("a token").to_owned();
    let csrs: Vec<(String, String)> = (0..count)
        .map(|i| (format!("enrolled-{i:05}"), common::make_csr().1))
        .collect();
    let started = Instant::now();
    let next = Arc::new(std::sync::Mutex::new(csrs.into_iter()));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (http, base, token, next) = (http.clone(), base.to_owned(), token.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut enrolled = 0u64;
            loop {
                let Some((device, csr)) = next.lock().expect("lock").next() else {
                    return enrolled;
                };
                let response = http
                    .post(format!("{base}/api/v1/enroll"))
                    .json(&serde_json::json!({ "token": token, "device_id": device, "csr_pem": csr }))
                    .send()
                    .await
                    .expect("enroll");
                assert!(response.status().is_success(), "enroll {device}: {}", response.status());
                enrolled += 1;
            }
        }));
    }
    let mut enrolled = 0;
    for worker in workers {
        enrolled += worker.await.expect("worker");
    }
    eprintln!(
        "figure/enroll_rate: {:.0} devices/s ({enrolled} enrollments over HTTPS, 16 in flight)",
        enrolled as f64 / started.elapsed().as_secs_f64()
    );
}

/// Each device connects and publishes telemetry as fast as its event loop
/// takes it (QoS 1, 100 in flight), until `stop`.
async fn start_publishers(
    identities: &[Identity],
    ca_pem: &[u8],
    port: u16,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for identity in identities {
        let (client, mut event_loop) = AsyncClient::new(options(identity, ca_pem, port), 256);
        let topic = format!("molt/d/{}/telemetry", identity.device);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let poller = tokio::spawn(async move { while event_loop.poll().await.is_ok() {} });
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                if client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, telemetry_payload(seq, POINTS))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = client.disconnect().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            poller.abort();
        }));
    }
    tasks
}

/// One subscriber to every device's telemetry, counting what arrives.
async fn subscribe_all(
    identity: &Identity,
    ca_pem: &[u8],
    port: u16,
    received: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let mut o = options(identity, ca_pem, port);
    o.set_client_id(format!("{}-subscriber", identity.device));
    let (client, mut event_loop) = AsyncClient::new(o, 256);
    client
        .subscribe("molt/d/+/telemetry", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut subscribed = Some(subscribed);
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            let _ = &client;
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), is_subscribed).await;
    task
}

/// Every device connects at once; returns seconds until the last CONNACK,
/// how many connected, the broker's resident bytes per connection, and its
/// resident bytes with every device connected.
async fn connection_storm(identities: &[Identity], ca_pem: &[u8], port: u16, pid: u32) -> (f64, u64, u64, u64) {
    // Options (and each device's TLS material) before the clock starts.
    let prepared: Vec<MqttOptions> = identities
        .iter()
        .map(|identity| options(identity, ca_pem, port))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss(pid);
    let connected = Arc::new(AtomicU64::new(0));
    let (release, _) = tokio::sync::broadcast::channel::<()>(1);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(prepared.len());
    for options in prepared {
        let connected = connected.clone();
        let mut release = release.subscribe();
        tasks.push(tokio::spawn(async move {
            let (client, mut event_loop) = AsyncClient::new(options, 16);
            let deadline = tokio::time::sleep(Duration::from_secs(60));
            tokio::pin!(deadline);
            // Until connected, then hold the connection until released.
            let mut up = false;
            loop {
                tokio::select! {
                    event = event_loop.poll() => match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) if !up => {
                            up = true;
                            connected.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(_) if up => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    },
                    _ = release.recv() => break,
                    () = &mut deadline, if !up => return,
                }
            }
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while event_loop.poll().await.is_ok() {}
            })
            .await;
        }));
    }
    let total = tasks.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::SeqCst) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let up = connected.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss(pid);
    let per_connection = rss_after.saturating_sub(rss_before) / up.max(1);
    let _ = release.send(());
    for task in tasks {
        let _ = task.await;
    }
    (seconds, up, per_connection, rss_after)
}
