//! A protocol-level test device and a server on 127.0.0.1:0.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use molt_protocol::{DeviceId, Kind, Limits, StoreAck, Telemetry, TelemetryBuilder};
use molt_server::{Config, Running};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub running: Running,
    pub admin: String,
    pub http: reqwest::Client,
}

pub async fn server_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let init = molt_server::init(dir.path(), &[]).await.expect("init");
    let mut config = Config::loopback(dir.path());
    adjust(&mut config);
    let https = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let running = molt_server::start(config, https).await.expect("start");
    let ca = std::fs::read(dir.path().join(molt_server::ca::CA_CERT)).expect("ca");
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("ca pem")])
        .build()
        .expect("client");
    TestServer {
        dir,
        running,
        admin: init.admin_token,
        http,
    }
}

pub async fn server() -> TestServer {
    server_with(|_| {}).await
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.running.addrs.https.port())
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join(molt_server::ca::CA_CERT)).expect("ca")
    }

    /// An enrollment token; returns (status, body).
    pub async fn token(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.url("/api/v1/enrollment-tokens"))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    pub async fn enroll_raw(&self, token: &str, device: &str, csr_pem: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.url("/api/v1/enroll"))
            .json(&serde_json::json!({ "token": token, "device_id": device, "csr_pem": csr_pem }))
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    /// Enrolls `device` over HTTPS with a fresh key; returns its identity.
    pub async fn enroll(&self, device: &str) -> Identity {
        let (_, t) = self.token(serde_json::json!({ "ttl_s": 600, "uses": 1 })).await;
        let token = t["token"].as_str().expect("token").to_owned();
        let (key_pem, csr) = make_csr();
        let (status, body) = self.enroll_raw(&token, device, &csr).await;
        assert_eq!(status, 200, "enroll {device}: {body}");
        Identity {
            device: device.to_owned(),
            cert_pem: body["certificate_pem"].as_str().expect("cert").to_owned(),
            key_pem,
        }
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self.http.request(method, self.url(path)).bearer_auth(&self.admin);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.expect("request");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }
}

pub fn make_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key.serialize_pem(), csr)
}

#[derive(Clone)]
pub struct Identity {
    pub device: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A connected test device.
pub struct Device {
    pub id: String,
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
    pub seq: u64,
}

/// rumqttc's TLS uses the process-wide rustls provider; with more than one
/// backend in the build it must be chosen, as the server does.
pub fn choose_tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub fn options(identity: &Identity, client_id: &str, ca: &[u8], port: u16) -> MqttOptions {
    choose_tls_provider();
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_transport(Transport::Tls(TlsConfiguration::Simple {
        ca: ca.to_vec(),
        alpn: None,
        client_auth: Some((
            identity.cert_pem.clone().into_bytes(),
            identity.key_pem.clone().into_bytes(),
        )),
    }));
    o
}

/// Connects; the event loop is polled on its own task (never publish from
/// it) and stops at the first error.
pub fn connect_with(options: MqttOptions, id: &str) -> Device {
    let (client, mut event_loop) = AsyncClient::new(options, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match event_loop.poll().await {
                Ok(e) => {
                    if tx.send(Ok(e)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    Device {
        id: id.to_owned(),
        client,
        events: rx,
        seq: 0,
    }
}

impl TestServer {
    pub fn device(&self, identity: &Identity) -> Device {
        connect_with(
            options(
                identity,
                &identity.device,
                &self.ca_pem(),
                self.running.addrs.mqtt.port(),
            ),
            &identity.device,
        )
    }
}

pub enum Outcome {
    Connected,
    Refused(String),
}

impl Device {
    /// Waits for CONNACK or an error.
    pub async fn connected(&mut self) -> Outcome {
        loop {
            // Generous: TLS handshakes on a loaded 2-core machine (the whole
            // suite runs at once) can take seconds.
            match tokio::time::timeout(Duration::from_secs(30), self.events.recv()).await {
                Ok(Some(Ok(Event::Incoming(Packet::ConnAck(a))))) => {
                    return if a.code == rumqttc::ConnectReturnCode::Success {
                        Outcome::Connected
                    } else {
                        Outcome::Refused(format!("{:?}", a.code))
                    };
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Outcome::Refused(e),
                Ok(None) => return Outcome::Refused("closed".into()),
                Err(_) => return Outcome::Refused("timeout".into()),
            }
        }
    }

    pub async fn subscribe_ack(&mut self) {
        let id = DeviceId::parse(&self.id).expect("id");
        self.client
            .subscribe(molt_protocol::topic(&id, Kind::Ack), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        self.client
            .subscribe(molt_protocol::topic(&id, Kind::Desired), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            match self.next().await {
                Some(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Some(Ok(_)) => {}
                other => panic!(
                    "{}: no SUBACK: {:?}",
                    self.id,
                    other.map(|r| r.map(|e| format!("{e:?}")))
                ),
            }
        }
        loop {
            match self.next().await {
                Some(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Some(Ok(_)) => {}
                other => panic!(
                    "{}: no SUBACK: {:?}",
                    self.id,
                    other.map(|r| r.map(|e| format!("{e:?}")))
                ),
            }
        }
    }

    pub async fn next(&mut self) -> Option<Result<Event, String>> {
        tokio::time::timeout(Duration::from_secs(15), self.events.recv())
            .await
            .ok()
            .flatten()
    }

    pub fn telemetry(&mut self, points: usize) -> (u64, Vec<u8>) {
        self.seq += 1;
        (self.seq, telemetry_payload(self.seq, points))
    }

    pub async fn publish(&self, kind: Kind, payload: Vec<u8>) {
        let id = DeviceId::parse(&self.id).expect("id");
        self.client
            .publish(molt_protocol::topic(&id, kind), QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    /// Waits until a StoreAck with `stored_through >= seq` arrives.
    pub async fn wait_ack(&mut self, seq: u64) -> Option<u64> {
        loop {
            match self.next().await? {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/ack") => {
                    let ack: StoreAck = molt_protocol::decode(&p.payload, &Limits::default()).ok()?;
                    if ack.stored_through >= seq {
                        return Some(ack.stored_through);
                    }
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

pub fn telemetry_payload(seq: u64, points: usize) -> Vec<u8> {
    let mut b = TelemetryBuilder::new("test@1");
    for i in 0..points {
        assert!(b.push(i as u32, 1_700_000_000_000 + seq * 1000 + i as u64, "temp", seq as f64));
    }
    let t: Telemetry = b.finish(seq);
    molt_protocol::encode(&t, &Limits::default()).expect("encode")
}

pub type Shared = Arc<molt_server::Shared>;

/// `count` devices named `{prefix}-{i:05}`, each with its own certificate
/// from the device CA in `dir`, registered in its store with `hardware_class`
/// (the server must not be running: this opens the store itself).
pub async fn register_devices(
    dir: &std::path::Path,
    prefix: &str,
    count: usize,
    hardware_class: &str,
) -> Vec<Identity> {
    let ca = molt_server::ca::DeviceCa::load(dir).expect("ca");
    let store = molt_server::store::Store::open(dir).await.expect("store");
    let mut identities = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("{prefix}-{i:05}");
        let (signed, key) = ca.issue_device(&id, 1).expect("issue");
        store
            .insert_device(
                &id,
                hardware_class,
                &serde_json::json!({}),
                &signed.serial,
                &signed.key_fingerprint,
            )
            .await
            .expect("register");
        identities.push(Identity {
            device: id,
            cert_pem: signed.cert_pem,
            key_pem: key,
        });
    }
    store.close().await;
    identities
}
