//! A server whose own client falls behind the broker: the broker refuses
//! new publishes (without disconnecting) instead of queueing them without
//! bound, and a device that resends what the store has not acknowledged
//! gets every message stored exactly once.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use molt_protocol::{Kind, Limits, StoreAck};
use molt_server::store::Table;
use rumqttc::{Event, Packet};

const MESSAGES: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_broker_sheds_publishes_and_resends_store_everything_once() {
    let s = server_with(|c| {
        c.limits.broker_server_queue_max = 5;
        c.limits.device_messages_per_second = 1_000_000;
        c.limits.device_message_burst = 1_000_000;
    })
    .await;
    let id = s.enroll("gw-flood").await;
    let mut d = s.device(&id);
    assert!(matches!(d.connected().await, Outcome::Connected));
    d.subscribe_ack().await;

    // Everything at once, then resend from the acknowledgement whenever it
    // stops advancing (what the agent's ack_timeout_ms does).
    let mut acked = 0u64;
    let mut rounds = 0;
    while acked < MESSAGES {
        rounds += 1;
        assert!(rounds <= 200, "stuck at stored_through={acked}");
        for seq in acked + 1..=MESSAGES {
            d.publish(Kind::Telemetry, telemetry_payload(seq, 5)).await;
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(300), d.events.recv()).await {
                Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) if p.topic.ends_with("/ack") => {
                    let ack: StoreAck = molt_protocol::decode(&p.payload, &Limits::default()).expect("ack");
                    acked = acked.max(ack.stored_through);
                }
                Ok(Some(Ok(Event::Incoming(Packet::Disconnect)))) => panic!("the device was disconnected"),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("the device lost its connection: {e}"),
                Ok(None) => panic!("event loop ended"),
                Err(_) => break,
            }
        }
    }
    let gate = &s.running.shared.gate;
    let shed = gate.shed.load(Ordering::Relaxed);
    eprintln!("overload: messages={MESSAGES} rounds={rounds} shed={shed}");
    assert!(shed > 0, "the broker never had to refuse a publish");
    let store = &s.running.shared.store;
    assert_eq!(store.count(Table::Uplink).await.expect("count"), MESSAGES as i64);
    assert_eq!(store.count(Table::Points).await.expect("count"), 5 * MESSAGES as i64);
    assert_eq!(store.duplicate_points().await.expect("dups"), 0);
}
