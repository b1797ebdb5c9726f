//! State and health reports: a newer report is never replaced by an older
//! one, and a state report that does not show the desired generation gets
//! the desired state sent again (docs/protocol.md, "Desired state").

mod common;

use common::*;
use molt_protocol::{Desired, Health, Kind, Limits, PROTOCOL_VERSION, Reported, UpdatePhase, UpdateStatus};
use reqwest::Method;
use rumqttc::{Event, Packet};
use serde_json::json;

fn reported(seq: u64, hardware_class: &str, update_generation: Option<u64>) -> Vec<u8> {
    let r = Reported {
        v: PROTOCOL_VERSION,
        seq,
        t: 1_700_000_000_000 + seq,
        hardware_class: hardware_class.into(),
        agent_version: "0.0.0".into(),
        release: None,
        security_counter: 0,
        policies: Vec::new(),
        update: update_generation.map(|generation| UpdateStatus {
            generation,
            release: 7,
            phase: UpdatePhase::Pending,
            error: None,
        }),
    };
    molt_protocol::encode(&r, &Limits::default()).expect("encode")
}

fn health(seq: u64, readings: u64) -> Vec<u8> {
    let h = Health {
        v: PROTOCOL_VERSION,
        seq,
        t: 1_700_000_000_000 + seq,
        boot: 1,
        restarts: 0,
        readings,
        batches: 0,
        traps: 0,
        reverts: 0,
        policy_errors: 0,
        batch_p99_us: 0,
        outbox_messages: 0,
        outbox_bytes: 0,
        outbox_oldest_ms: 0,
        outbox_dropped: 0,
        rss_bytes: 0,
        offline_ms: 0,
    };
    molt_protocol::encode(&h, &Limits::default()).expect("encode")
}

/// Every Desired the device receives until the StoreAck for `seq`.
async fn desired_until_ack(d: &mut Device, seq: u64) -> Vec<Desired> {
    let mut got = Vec::new();
    loop {
        match d.next().await {
            Some(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic.ends_with("/desired") => {
                got.push(molt_protocol::decode(&p.payload, &Limits::default()).expect("desired"));
            }
            Some(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic.ends_with("/ack") => {
                let ack: molt_protocol::StoreAck = molt_protocol::decode(&p.payload, &Limits::default()).expect("ack");
                if ack.stored_through >= seq {
                    return got;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("no ack for {seq}: {:?}", other.map(|r| r.map(|e| format!("{e:?}")))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_report_without_the_desired_generation_gets_it_again() {
    let s = server().await;
    let id = s.enroll("gw-dir").await;
    let mut d = s.device(&id);
    assert!(matches!(d.connected().await, Outcome::Connected));
    // Once the server has seen the connection (and found no desired state
    // to send), set one while the device is not yet subscribed: that send
    // reaches nobody.
    for _ in 0..100 {
        let (_, row) = s.api(Method::GET, "/api/v1/devices/gw-dir", None).await;
        if row["online"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = s
        .api(
            Method::PUT,
            "/api/v1/devices/gw-dir/desired",
            Some(json!({"release": 7})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    d.subscribe_ack().await;

    // A report that knows nothing of generation 1: it is sent again.
    d.publish(Kind::State, reported(1, "gw", None)).await;
    let got = desired_until_ack(&mut d, 1).await;
    assert_eq!(
        got.iter().map(|x| (x.generation, x.release)).collect::<Vec<_>>(),
        vec![(1, 7)]
    );

    // A report that shows generation 1: nothing more is sent.
    d.publish(Kind::State, reported(2, "gw", Some(1))).await;
    assert_eq!(desired_until_ack(&mut d, 2).await, Vec::new());
    // A report that lost it again (say the device was reset) gets it again,
    // with no reconnect involved.
    d.publish(Kind::State, reported(3, "gw", None)).await;
    let got = desired_until_ack(&mut d, 3).await;
    assert_eq!(
        got.iter().map(|x| (x.generation, x.release)).collect::<Vec<_>>(),
        vec![(1, 7)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_report_never_replaces_a_newer_one() {
    let s = server().await;
    let id = s.enroll("gw-order").await;
    let mut d = s.device(&id);
    assert!(matches!(d.connected().await, Outcome::Connected));
    d.subscribe_ack().await;
    // Sequence 1 and 2 overtaken by 3 and 4; the late ones are new to the
    // ledger (stored once), but the device row keeps the newest report.
    d.publish(Kind::State, reported(3, "newer", None)).await;
    d.publish(Kind::Health, health(4, 400)).await;
    d.publish(Kind::State, reported(1, "older", None)).await;
    d.publish(Kind::Health, health(2, 200)).await;
    assert_eq!(d.wait_ack(4).await, Some(4));
    let (status, row) = s.api(Method::GET, "/api/v1/devices/gw-order", None).await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["reported"]["hardware_class"], "newer", "{row}");
    assert_eq!(row["reported"]["seq"], 3, "{row}");
    assert_eq!(row["health"]["readings"], 400, "{row}");
    // A newer report does replace it.
    d.publish(Kind::State, reported(5, "newest", None)).await;
    assert_eq!(d.wait_ack(5).await, Some(5));
    let (_, row) = s.api(Method::GET, "/api/v1/devices/gw-order", None).await;
    assert_eq!(row["reported"]["hardware_class"], "newest", "{row}");
}
