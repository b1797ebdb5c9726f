//! 1,000 test devices with their own certificates send telemetry to a
//! `molt-server` process; the server is killed with SIGKILL mid-ingest and
//! restarted. Every point a device had a store acknowledgement for must be
//! in the store after the kill; the devices resend the rest; at the end
//! every point is stored exactly once. Prints one `fleet-kill:` line.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Identity, choose_tls_provider, register_devices, telemetry_payload};
use molt_server::store::{Store, Table};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

const DEVICES: usize = 1000;
const MESSAGES: u64 = 20;
const POINTS: usize = 5;
const SEND_EVERY: Duration = Duration::from_millis(100);
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

struct Spawned {
    child: Child,
    mqtt: SocketAddr,
}

/// A failing test must not leave its server running (it would hold the
/// test harness's output open).
impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(config: &std::path::Path) -> Spawned {
    let mut child = Command::new(env!("CARGO_BIN_EXE_molt-server"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn molt-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read address line");
    let mqtt = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mqtt="))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .expect("addr");
    Spawned { child, mqtt }
}

#[derive(Default)]
struct DevState {
    acked: AtomicU64,
}

async fn device(
    identity: Identity,
    ca: Vec<u8>,
    addr: Arc<Mutex<SocketAddr>>,
    state: Arc<DevState>,
    total_acked: Arc<AtomicU64>,
    resent: Arc<AtomicU64>,
) {
    let mut sent = 0u64;
    let mut first = true;
    loop {
        let a = *addr.lock().expect("addr");
        let mut o = MqttOptions::new(identity.device.clone(), "127.0.0.1", a.port());
        o.set_keep_alive(Duration::from_secs(60));
        o.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: ca.clone(),
            alpn: None,
            client_auth: Some((
                identity.cert_pem.clone().into_bytes(),
                identity.key_pem.clone().into_bytes(),
            )),
        }));
        let (client, mut ev) = AsyncClient::new(o, 256);
        let topic = format!("molt/d/{}/telemetry", identity.device);
        let mut tick = tokio::time::interval(SEND_EVERY);
        let mut up = false;
        // When the acknowledgement stops advancing with messages
        // outstanding, resend from it (the agent's ack_timeout_ms): an
        // overloaded broker refuses publishes rather than queue them.
        let mut stall = tokio::time::Instant::now() + ACK_TIMEOUT;
        loop {
            let acked = state.acked.load(Ordering::SeqCst);
            tokio::select! {
                e = ev.poll() => match e {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        up = true;
                        let _ = client.try_subscribe(format!("molt/d/{}/ack", identity.device), QoS::AtLeastOnce);
                        // Resend whatever the store has not acknowledged.
                        let from = state.acked.load(Ordering::SeqCst) + 1;
                        for seq in from..=sent {
                            if !first {
                                resent.fetch_add(1, Ordering::Relaxed);
                            }
                            let _ = client.try_publish(topic.clone(), QoS::AtLeastOnce, false, telemetry_payload(seq, POINTS));
                        }
                        first = false;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(ack) = molt_protocol::decode::<molt_protocol::StoreAck>(&p.payload, &Default::default()) {
                            let old = state.acked.fetch_max(ack.stored_through, Ordering::SeqCst);
                            if ack.stored_through > old {
                                total_acked.fetch_add(ack.stored_through - old, Ordering::Relaxed);
                                stall = tokio::time::Instant::now() + ACK_TIMEOUT;
                            }
                            if ack.stored_through >= MESSAGES {
                                let _ = client.try_disconnect();
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
                _ = tokio::time::sleep_until(stall), if up && acked < sent => {
                    for seq in acked + 1..=sent {
                        resent.fetch_add(1, Ordering::Relaxed);
                        let _ = client.try_publish(topic.clone(), QoS::AtLeastOnce, false, telemetry_payload(seq, POINTS));
                    }
                    stall = tokio::time::Instant::now() + ACK_TIMEOUT;
                }
                _ = tick.tick(), if up && sent < MESSAGES => {
                    if acked == sent {
                        stall = tokio::time::Instant::now() + ACK_TIMEOUT;
                    }
                    sent += 1;
                    let _ = client.try_publish(topic.clone(), QoS::AtLeastOnce, false, telemetry_payload(sent, POINTS));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_devices_sigkill_mid_ingest() {
    choose_tls_provider();
    let dir = tempfile::tempdir().expect("tmp");
    molt_server::init(dir.path(), &[]).await.expect("init");
    let config = dir.path().join(molt_server::config::CONFIG_FILE);
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("mqtt = \"0.0.0.0:8883\"", "mqtt = \"127.0.0.1:0\"")
        .replace("https = \"0.0.0.0:8443\"", "https = \"127.0.0.1:0\"");
    std::fs::write(&config, text).expect("write config");

    // Devices with their own certificates, registered before the start.
    let ids = register_devices(dir.path(), "dev", DEVICES, "test").await;
    let ca_pem = std::fs::read(dir.path().join(molt_server::ca::CA_CERT)).expect("ca pem");

    let mut server = spawn_server(&config);
    let addr = Arc::new(Mutex::new(server.mqtt));
    let total_acked = Arc::new(AtomicU64::new(0));
    let resent = Arc::new(AtomicU64::new(0));
    let states: Vec<Arc<DevState>> = (0..DEVICES).map(|_| Arc::new(DevState::default())).collect();
    let mut tasks = Vec::new();
    for (identity, state) in ids.iter().cloned().zip(&states) {
        tasks.push(tokio::spawn(device(
            identity,
            ca_pem.clone(),
            addr.clone(),
            state.clone(),
            total_acked.clone(),
            resent.clone(),
        )));
    }
    let total = DEVICES as u64 * MESSAGES;
    let started = Instant::now();
    while total_acked.load(Ordering::Relaxed) < total * 3 / 10 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "ingest too slow before the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let acked_at_kill: HashMap<String, u64> = ids
        .iter()
        .zip(&states)
        .map(|(i, s)| (i.device.clone(), s.acked.load(Ordering::SeqCst)))
        .collect();
    let acked_sum: u64 = acked_at_kill.values().sum();
    assert!(
        acked_sum < total,
        "the kill came after everything was acknowledged; not mid-ingest"
    );

    // Every acknowledged point is in the store after the kill.
    let store = Store::open(dir.path()).await.expect("reopen");
    let mut lost = 0u64;
    for (device, acked) in &acked_at_kill {
        let row = store.device(device).await.expect("device");
        if (row.stored_through as u64) < *acked {
            lost += acked - row.stored_through as u64;
        }
    }
    store.close().await;
    assert_eq!(lost, 0, "acknowledged messages missing after SIGKILL");

    // Restart; the devices reconnect and resend the rest.
    let mut server = spawn_server(&config);
    *addr.lock().expect("addr") = server.mqtt;
    let deadline = Instant::now() + Duration::from_secs(180);
    for t in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, t)
            .await
            .expect("devices finish after the restart")
            .expect("task");
    }
    // Graceful stop (SIGTERM), then check exactly-once.
    #[cfg(unix)]
    {
        let _ = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status();
    }
    let _ = server.child.wait();
    let store = Store::open(dir.path()).await.expect("reopen");
    let points = store.count(Table::Points).await.expect("points");
    let uplink = store.count(Table::Uplink).await.expect("uplink");
    let dups = store.duplicate_points().await.expect("dups");
    assert_eq!(uplink as u64, total, "every message stored once");
    assert_eq!(points as u64, total * POINTS as u64, "every point stored once");
    assert_eq!(dups, 0);
    println!(
        "fleet-kill: devices={DEVICES} points={points} acked-before-kill={} lost-after-kill={lost} resent={} duplicates={dups}",
        acked_sum * POINTS as u64,
        resent.load(Ordering::Relaxed)
    );
}
