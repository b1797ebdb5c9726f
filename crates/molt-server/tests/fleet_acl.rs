//! The attack list of issue 10, against the real server: embedded broker on
//! TLS, real SQLite, protocol-level test devices on 127.0.0.1:0.
//!
//! Each attack asserts the refusal, that the store did not change except
//! for what the attack itself may add to the audit log, and that a
//! bystander device still gets its telemetry stored and acknowledged.
//! Prints `fleet-acl: attacks=N refused=N others-unaffected=N`.

mod common;

use std::time::Duration;

use common::*;
use molt_protocol::Kind;
use molt_server::store::Table;
use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};

#[derive(Debug, PartialEq)]
struct Snapshot {
    devices: i64,
    uplink: i64,
    points: i64,
    alerts: i64,
    events: i64,
}

async fn snapshot(s: &TestServer) -> Snapshot {
    let st = &s.running.shared.store;
    Snapshot {
        devices: st.count(Table::Devices).await.expect("count"),
        uplink: st.count(Table::Uplink).await.expect("count"),
        points: st.count(Table::Points).await.expect("count"),
        alerts: st.count(Table::Alerts).await.expect("count"),
        events: st.count(Table::Events).await.expect("count"),
    }
}

/// The bystander sends one telemetry message and must get it stored and
/// acknowledged.
async fn bystander_ok(s: &TestServer, b: &mut Device) -> bool {
    let (seq, payload) = b.telemetry(3);
    b.publish(Kind::Telemetry, payload).await;
    let acked = b.wait_ack(seq).await == Some(seq);
    let stored = s
        .running
        .shared
        .store
        .device(&b.id)
        .await
        .map(|d| d.stored_through as u64 == seq)
        .unwrap_or(false);
    acked && stored
}

/// Waits until the device's connection ends (the broker disconnected it).
async fn disconnected(d: &mut Device) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), d.events.recv()).await {
            Ok(Some(Ok(Event::Incoming(Packet::Disconnect)))) | Ok(Some(Err(_))) | Ok(None) => return true,
            Ok(Some(Ok(_))) => {}
            Err(_) => return false,
        }
    }
}

async fn suback_refused(d: &mut Device, filter: &str) -> bool {
    d.client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe");
    loop {
        match d.next().await {
            Some(Ok(Event::Incoming(Packet::SubAck(a)))) => {
                return a.return_codes.iter().all(|c| *c == SubscribeReasonCode::Failure);
            }
            Some(Ok(_)) => {}
            _ => return true,
        }
    }
}

struct Tally {
    attacks: u32,
    refused: u32,
    unaffected: u32,
}

impl Tally {
    fn record(&mut self, name: &str, refused: bool, unchanged: bool, bystander: bool) {
        self.attacks += 1;
        assert!(refused, "attack not refused: {name}");
        assert!(unchanged, "attack changed the store: {name}");
        assert!(bystander, "bystander affected by: {name}");
        self.refused += 1;
        self.unaffected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_acl_attacks() {
    let s = server_with(|c| {
        c.limits.device_messages_per_second = 20;
        c.limits.device_message_burst = 40;
        c.limits.mqtt_connect_timeout_s = 2;
    })
    .await;
    let ca = s.ca_pem();
    let port = s.running.addrs.mqtt.port();
    let victim_id = s.enroll("victim-1").await;
    let attacker_id = s.enroll("attacker-1").await;
    let bystander_id = s.enroll("bystander-1").await;
    let mut b = s.device(&bystander_id);
    assert!(matches!(b.connected().await, Outcome::Connected));
    b.subscribe_ack().await;
    assert!(bystander_ok(&s, &mut b).await, "bystander works before the attacks");
    let mut t = Tally {
        attacks: 0,
        refused: 0,
        unaffected: 0,
    };

    // 1. Publish on another device's telemetry topic: disconnected, nothing stored.
    {
        let before = snapshot(&s).await;
        let mut a = s.device(&attacker_id);
        assert!(matches!(a.connected().await, Outcome::Connected));
        a.client
            .publish(
                "molt/d/victim-1/telemetry",
                QoS::AtLeastOnce,
                false,
                telemetry_payload(1, 3),
            )
            .await
            .expect("publish");
        let refused = disconnected(&mut a).await;
        let unchanged = snapshot(&s).await == before;
        t.record(
            "publish to another device",
            refused,
            unchanged,
            bystander_ok(&s, &mut b).await,
        );
    }
    // 2-5. Subscriptions outside the own prefix, wildcards included.
    for filter in [
        "molt/d/victim-1/ack",
        "molt/d/+/desired",
        "molt/d/#",
        "#",
        "molt/d/attacker-1",
        "$SYS/#",
    ] {
        let before = snapshot(&s).await;
        let mut a = s.device(&attacker_id);
        assert!(matches!(a.connected().await, Outcome::Connected));
        let refused = suback_refused(&mut a, filter).await;
        let unchanged = snapshot(&s).await == before;
        t.record(
            &format!("subscribe {filter}"),
            refused,
            unchanged,
            bystander_ok(&s, &mut b).await,
        );
        let _ = a.client.disconnect().await;
    }
    // 6. Client id different from the certificate's CN.
    {
        let before = snapshot(&s).await;
        let mut a = connect_with(options(&attacker_id, "victim-1", &ca, port), "victim-1");
        let refused = matches!(a.connected().await, Outcome::Refused(_));
        let unchanged = snapshot(&s).await == before;
        t.record("client id != CN", refused, unchanged, bystander_ok(&s, &mut b).await);
    }
    // 7. Certificate from another CA.
    {
        let before = snapshot(&s).await;
        let other = tempfile::tempdir().expect("tmp");
        let other_ca = molt_server::ca::DeviceCa::create(other.path(), &["localhost".into()]).expect("other ca");
        let (signed, key) = other_ca.issue_device("victim-1", 1).expect("issue");
        let forged = Identity {
            device: "victim-1".into(),
            cert_pem: signed.cert_pem,
            key_pem: key,
        };
        let mut a = s.device(&forged);
        let refused = matches!(a.connected().await, Outcome::Refused(_));
        let unchanged = snapshot(&s).await == before;
        t.record(
            "certificate from another CA",
            refused,
            unchanged,
            bystander_ok(&s, &mut b).await,
        );
    }
    // 8. A certificate of our CA for a device the registry does not know.
    {
        let before = snapshot(&s).await;
        let (signed, key) = s.running.shared.ca.issue_device("ghost-1", 1).expect("issue");
        let ghost = Identity {
            device: "ghost-1".into(),
            cert_pem: signed.cert_pem,
            key_pem: key,
        };
        let mut a = s.device(&ghost);
        let refused = matches!(a.connected().await, Outcome::Refused(_));
        let unchanged = snapshot(&s).await == before;
        t.record("unknown device", refused, unchanged, bystander_ok(&s, &mut b).await);
    }
    // 9. Revocation: a connected device is disconnected at once and refused after.
    {
        let revokee = s.enroll("revokee-1").await;
        let mut r = s.device(&revokee);
        assert!(matches!(r.connected().await, Outcome::Connected));
        let before = snapshot(&s).await;
        let (status, _) = s
            .api(reqwest::Method::POST, "/api/v1/devices/revokee-1/revoke", None)
            .await;
        assert_eq!(status, 200);
        let kicked = disconnected(&mut r).await;
        let mut again = s.device(&revokee);
        let refused = kicked && matches!(again.connected().await, Outcome::Refused(_));
        let unchanged = snapshot(&s).await == before;
        t.record(
            "revoked certificate",
            refused,
            unchanged,
            bystander_ok(&s, &mut b).await,
        );
    }
    // 10. An expired enrollment token.
    {
        let (_, tok) = s.token(serde_json::json!({ "ttl_s": 1, "uses": 5 })).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = snapshot(&s).await;
        let (status, body) = s
            .enroll_raw(tok["token"].as_str().expect("token"), "late-1", &make_csr().1)
            .await;
        let refused = status == 400 && body["error"]["code"] == "enrollment_token_expired";
        let unchanged = snapshot(&s).await == before;
        t.record(
            "expired enrollment token",
            refused,
            unchanged,
            bystander_ok(&s, &mut b).await,
        );
    }
    // 11. A used-up enrollment token.
    {
        let (_, tok) = s.token(serde_json::json!({ "ttl_s": 600, "uses": 1 })).await;
        let token = tok["token"].as_str().expect("token").to_owned();
        let (status, _) = s.enroll_raw(&token, "once-1", &make_csr().1).await;
        assert_eq!(status, 200);
        let before = snapshot(&s).await;
        let (status, body) = s.enroll_raw(&token, "twice-1", &make_csr().1).await;
        let refused = status == 400 && body["error"]["code"] == "enrollment_token_used_up";
        let unchanged = snapshot(&s).await == before;
        t.record(
            "used-up enrollment token",
            refused,
            unchanged,
            bystander_ok(&s, &mut b).await,
        );
    }
    // 12. A replayed CSR (same key, another device id), with a valid token.
    {
        let (_, tok) = s.token(serde_json::json!({ "ttl_s": 600, "uses": 2 })).await;
        let token = tok["token"].as_str().expect("token").to_owned();
        let (_, csr) = make_csr();
        let (status, _) = s.enroll_raw(&token, "first-1", &csr).await;
        assert_eq!(status, 200);
        let before = snapshot(&s).await;
        let (status, body) = s.enroll_raw(&token, "second-1", &csr).await;
        let refused = status == 400 && body["error"]["code"] == "csr_replayed";
        let unchanged = snapshot(&s).await == before;
        t.record("replayed CSR", refused, unchanged, bystander_ok(&s, &mut b).await);
    }
    // 13. Malformed MQTT bytes after the TLS handshake: a CONNECT whose
    // protocol name is not MQTT.
    {
        let before = snapshot(&s).await;
        let bytes = [
            0x10, 0x0c, 0x00, 0x04, b'X', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
        ];
        let refused = closed_after(&s, &victim_id, &bytes).await;
        let unchanged = snapshot(&s).await == before;
        t.record(
            "malformed MQTT packet",
            refused,
            unchanged,
            bystander_ok(&s, &mut b).await,
        );
    }
    // 13b. A CONNECT that starts well and never completes: closed once
    // limits.mqtt_connect_timeout_s has passed.
    {
        let before = snapshot(&s).await;
        let bytes = [0x10, 0x20, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c];
        let refused = closed_after(&s, &victim_id, &bytes).await;
        let unchanged = snapshot(&s).await == before;
        t.record("stalled CONNECT", refused, unchanged, bystander_ok(&s, &mut b).await);
    }
    // 14. An oversized payload (above limits.mqtt_packet_bytes_max).
    {
        let before = snapshot(&s).await;
        let mut a = s.device(&attacker_id);
        assert!(matches!(a.connected().await, Outcome::Connected));
        a.publish(Kind::Telemetry, vec![0u8; 200 * 1024]).await;
        let refused = disconnected(&mut a).await;
        let unchanged = snapshot(&s).await == before;
        t.record("oversized payload", refused, unchanged, bystander_ok(&s, &mut b).await);
    }
    // 15. An unknown message version: refused by the decoder, not stored.
    {
        let before = snapshot(&s).await;
        let mut a = s.device(&attacker_id);
        assert!(matches!(a.connected().await, Outcome::Connected));
        let mut payload = telemetry_payload(1, 1);
        // `{"v": 1, ...}`: DAG-CBOR map, key "v", then the unsigned 1 (0x01).
        let at = payload.windows(2).position(|w| w == [0x61, b'v']).expect("v key") + 2;
        payload[at] = 0x18;
        payload.insert(at + 1, 99);
        a.publish(Kind::Telemetry, payload).await;
        let refused_before = s
            .running
            .shared
            .ingest
            .decode_refused
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut refused = false;
        for _ in 0..100 {
            if s.running
                .shared
                .ingest
                .decode_refused
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
            {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = refused_before;
        let unchanged = snapshot(&s).await == before;
        t.record(
            "unknown message version",
            refused,
            unchanged,
            bystander_ok(&s, &mut b).await,
        );
        let _ = a.client.disconnect().await;
    }
    // 16. Sequence numbers going backwards: a resent old message is not
    // stored twice and does not move the acknowledgement back.
    {
        let mut v = s.device(&victim_id);
        assert!(matches!(v.connected().await, Outcome::Connected));
        v.subscribe_ack().await;
        for _ in 0..3 {
            let (seq, p) = v.telemetry(2);
            v.publish(Kind::Telemetry, p).await;
            assert_eq!(v.wait_ack(seq).await, Some(seq));
        }
        let before = snapshot(&s).await;
        v.publish(Kind::Telemetry, telemetry_payload(2, 2)).await;
        let ack = v.wait_ack(0).await;
        let refused = ack == Some(3);
        let unchanged = snapshot(&s).await == before;
        t.record(
            "sequence going backwards",
            refused,
            unchanged,
            bystander_ok(&s, &mut b).await,
        );
        let _ = v.client.disconnect().await;
    }
    // 17. A flood from one device: rate-limited (disconnected), and every
    // message it got a store acknowledgement for is stored exactly once.
    {
        let mut f = s.device(&attacker_id);
        assert!(matches!(f.connected().await, Outcome::Connected));
        f.subscribe_ack().await;
        let points_before = s.running.shared.store.count(Table::Points).await.expect("count");
        for _ in 0..400 {
            let (_, p) = f.telemetry(1);
            if f.client
                .try_publish(format!("molt/d/{}/telemetry", f.id), QoS::AtLeastOnce, false, p)
                .is_err()
            {
                break;
            }
        }
        let mut acked = 0;
        let mut kicked = false;
        while let Some(ev) = f.next().await {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/ack") => {
                    let a: molt_protocol::StoreAck =
                        molt_protocol::decode(&p.payload, &Default::default()).expect("ack");
                    acked = acked.max(a.stored_through);
                }
                Ok(_) => {}
                Err(_) => {
                    kicked = true;
                    break;
                }
            }
        }
        let limited = s
            .running
            .shared
            .gate
            .refusals
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0;
        let through = s
            .running
            .shared
            .store
            .device(&f.id)
            .await
            .expect("device")
            .stored_through as u64;
        let points = s.running.shared.store.count(Table::Points).await.expect("count") - points_before;
        // Acknowledged means stored; stored means once (one point per message).
        let intact = through >= acked
            && points as u64 == through
            && s.running.shared.store.duplicate_points().await.expect("dups") == 0;
        t.record(
            "flood from one device",
            kicked && limited,
            intact,
            bystander_ok(&s, &mut b).await,
        );
    }

    println!(
        "fleet-acl: attacks={} refused={} others-unaffected={}",
        t.attacks, t.refused, t.unaffected
    );
    s.running.stop().await;
}

/// Opens TLS with a valid device certificate and sends `bytes`; true when
/// the broker closes the connection within 15 s.
async fn closed_after(s: &TestServer, id: &Identity, bytes: &[u8]) -> bool {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&s.ca_pem()) {
        roots.add(c.expect("ca")).expect("root");
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
        .map(|c| c.expect("cert"))
        .collect();
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key");
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .expect("client auth");
    let tcp = tokio::net::TcpStream::connect(s.running.addrs.mqtt).await.expect("tcp");
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls");
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    // The broker may answer with a refusing CONNACK first; what counts is
    // that it closes the connection.
    let closed = async {
        let mut buf = [0u8; 64];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), closed).await.is_ok()
}
