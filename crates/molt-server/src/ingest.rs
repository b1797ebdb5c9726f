//! The server's own MQTT client: ingest and the director's downlink.
//!
//! It connects to the broker like any client would (the embedded one over
//! loopback, later an external one), subscribes to every device's uplink
//! topics, stores what arrives in batches, idempotently by `(device, seq)`,
//! and publishes `StoreAck { stored_through }` only after the batch's
//! transaction committed. `stored_through` moves only over a gap-free
//! prefix of sequence numbers (docs/protocol.md).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use molt_protocol::{AnyMessage, Desired, Kind, PROTOCOL_VERSION, StoreAck, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::Error;
use crate::broker::SERVER_USER;
use crate::config::Config;
use crate::store::{Store, Uplink};
use crate::webhook::Notifier;

/// Ingest counters, for `/metrics` and the tests.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Uplink messages received from the broker.
    pub messages_in: AtomicU64,
    /// Messages stored (first time).
    pub messages_stored: AtomicU64,
    /// Messages already stored (resends), acknowledged again.
    pub duplicates: AtomicU64,
    /// Points stored.
    pub points_stored: AtomicU64,
    /// Payloads refused by the protocol decoder (size, version, shape).
    pub decode_refused: AtomicU64,
    /// Store acknowledgements and desired states published.
    pub messages_out: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Messages received but not yet committed.
    pub queue_depth: AtomicU64,
    /// Milliseconds the last batch's oldest message waited before commit.
    pub lag_ms: AtomicU64,
}

/// The connected client, for publishing downlink messages.
#[derive(Clone)]
pub struct Downlink {
    client: AsyncClient,
    limits: molt_protocol::Limits,
    stats: Arc<IngestStats>,
}

impl Downlink {
    /// Publishes a device's desired state (QoS 1).
    pub async fn send_desired(&self, device: &str, desired: &Desired) -> Result<(), Error> {
        let id =
            molt_protocol::DeviceId::parse(device).map_err(|e| Error::refused("device_id_invalid", e.to_string()))?;
        let payload = molt_protocol::encode(desired, &self.limits).map_err(|e| Error::Broker(e.to_string()))?;
        self.client
            .publish(
                molt_protocol::topic(&id, Kind::Desired),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| Error::Broker(e.to_string()))?;
        self.stats.messages_out.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn send_ack(&self, device: &str, stored_through: u64) {
        let Ok(id) = molt_protocol::DeviceId::parse(device) else {
            return;
        };
        let ack = StoreAck {
            v: PROTOCOL_VERSION,
            stored_through,
        };
        let Ok(payload) = molt_protocol::encode(&ack, &self.limits) else {
            return;
        };
        if self
            .client
            .publish(molt_protocol::topic(&id, Kind::Ack), QoS::AtLeastOnce, false, payload)
            .await
            .is_ok()
        {
            self.stats.messages_out.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Received {
    device: String,
    kind: Kind,
    payload: bytes::Bytes,
    at: std::time::Instant,
}

/// Connects the server's client to the broker's local listener and starts
/// the ingest tasks. Alerts a committed batch inserted go to `notifier`.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    config: &Config,
    local: SocketAddr,
    secret: &str,
    store: Store,
    stats: Arc<IngestStats>,
    gate: Arc<crate::broker::Gate>,
    notifier: Notifier,
    shutdown: tokio_util_shutdown::Shutdown,
) -> Result<(Downlink, tokio::task::JoinHandle<()>), Error> {
    let mut options = MqttOptions::new(SERVER_USER, local.ip().to_string(), local.port());
    options.set_credentials(SERVER_USER, secret);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    let packet_max = config.limits.mqtt_packet_bytes_max as usize;
    options.set_max_packet_size(packet_max, packet_max);
    options.set_inflight(1000);
    options.set_request_channel_capacity(10_000);
    let (client, mut event_loop) = AsyncClient::new(options, 10_000);
    let limits = config.protocol.to_protocol();
    let downlink = Downlink {
        client: client.clone(),
        limits: limits.clone(),
        stats: stats.clone(),
    };
    let (tx, rx) = mpsc::channel::<Received>(config.limits.ingest_queue_max);

    // Subscribe before anything polls: the request is queued and sent on
    // connect (and re-sent by us on every reconnect below).
    //
    // At QoS 0: a PUBACK between the broker and this client, both in this
    // process, promises nothing (they die together); the guarantee is the
    // StoreAck after commit, and a device resends whatever the store has
    // not acknowledged. QoS 1 here cost the broker an in-flight window and
    // a PUBACK per message on this one connection, which every uplink
    // message passes through: the fleet bench stored 1.2k messages/s at
    // QoS 1 and 6.0k at QoS 0 (50 points each, 100 TLS devices, 2 cores).
    let filters: Vec<String> = Kind::UPLINK.iter().map(|k| k.all_devices_filter()).collect();
    for f in &filters {
        client
            .subscribe(f.clone(), QoS::AtMostOnce)
            .await
            .map_err(|e| Error::Broker(e.to_string()))?;
    }

    // Task 1: poll the event loop; never publish from here (rumqttc #1025).
    let poll_stats = stats.clone();
    let resubscribe = client.clone();
    let mut poll_shutdown = shutdown.clone();
    let poller = tokio::spawn(async move {
        let mut connected_once = false;
        loop {
            let event = tokio::select! {
                e = event_loop.poll() => e,
                () = poll_shutdown.wait() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = p.topic.as_str();
                    let Ok(parsed) = Topic::parse(topic) else { continue };
                    poll_stats.messages_in.fetch_add(1, Ordering::Relaxed);
                    poll_stats.queue_depth.fetch_add(1, Ordering::Relaxed);
                    let r = Received {
                        device: parsed.device.to_owned(),
                        kind: parsed.kind,
                        // A copy of exactly the payload: rumqttc's payload
                        // is a slice of its read buffer and would keep all of
                        // it alive while queued (a full queue held 2 GB).
                        payload: bytes::Bytes::copy_from_slice(&p.payload),
                        at: std::time::Instant::now(),
                    };
                    // Back-pressure: a full queue stops reading the broker.
                    if tx.send(r).await.is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    gate.forget_backlog();
                    if connected_once {
                        let c = resubscribe.clone();
                        let fs = filters.clone();
                        tokio::spawn(async move {
                            for f in fs {
                                let _ = c.subscribe(f, QoS::AtMostOnce).await;
                            }
                        });
                    }
                    connected_once = true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "server client: broker connection lost; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });

    // Task 2: batch, store, acknowledge.
    let writer = tokio::spawn(writer(
        rx,
        store,
        downlink.clone(),
        notifier,
        limits,
        config.limits.ingest_batch_max,
        Duration::from_millis(config.limits.ingest_batch_wait_ms),
        stats,
    ));
    let handle = tokio::spawn(async move {
        let _ = poller.await;
        // The poller dropped the sender: the writer drains and commits
        // what is queued, then ends.
        let _ = writer.await;
    });
    Ok((downlink, handle))
}

#[allow(clippy::too_many_arguments)]
async fn writer(
    mut rx: mpsc::Receiver<Received>,
    store: Store,
    downlink: Downlink,
    notifier: Notifier,
    limits: molt_protocol::Limits,
    batch_max: usize,
    wait: Duration,
    stats: Arc<IngestStats>,
) {
    let mut frontiers: HashMap<String, (u64, BTreeSet<u64>)> = HashMap::new();
    let mut pending: Vec<Received> = Vec::with_capacity(batch_max);
    loop {
        let Some(first) = rx.recv().await else { break };
        pending.push(first);
        let deadline = tokio::time::Instant::now() + wait;
        while pending.len() < batch_max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => pending.push(r),
                _ => break,
            }
        }
        let received = std::mem::take(&mut pending);
        stats.queue_depth.fetch_sub(received.len() as u64, Ordering::Relaxed);
        let oldest = received.iter().map(|r| r.at).min();
        let mut batch = Vec::with_capacity(received.len());
        for r in received {
            match molt_protocol::decode_kind(r.kind, &r.payload, &limits) {
                Ok(message) if message.seq().is_some() => batch.push(Uplink {
                    device: r.device,
                    message,
                }),
                Ok(_) => {
                    stats.decode_refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.decode_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(device = %r.device, kind = ?r.kind, error = %e, "uplink refused");
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        // The frontiers this batch moves to, computed on copies: the cache
        // changes only after the commit.
        let mut moved: HashMap<String, (u64, BTreeSet<u64>)> = HashMap::new();
        for up in &batch {
            if !moved.contains_key(&up.device) {
                let state = match frontiers.get(&up.device) {
                    Some(s) => s.clone(),
                    None => match store.frontier(&up.device).await {
                        Ok((through, above)) => (through, above.into_iter().collect()),
                        Err(e) => {
                            tracing::error!(error = %e, "reading a frontier failed");
                            (0, BTreeSet::new())
                        }
                    },
                };
                moved.insert(up.device.clone(), state);
            }
            if let (Some(seq), Some(state)) = (up.message.seq(), moved.get_mut(&up.device))
                && seq > state.0
            {
                state.1.insert(seq);
                while state.1.remove(&(state.0 + 1)) {
                    state.0 += 1;
                }
            }
        }
        let through: HashMap<String, u64> = moved.iter().map(|(d, s)| (d.clone(), s.0)).collect();
        // Retry a failed commit: nothing was acknowledged for this batch,
        // and the devices would resend it anyway.
        let mut attempt = 0;
        let stored = loop {
            match store.store_batch(&batch, &through).await {
                Ok(stored) => break Some(stored),
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "store commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "store commit failed; batch not acknowledged, devices will resend");
                    break None;
                }
            }
        };
        let Some(stored) = stored else { continue };
        stats.batches.fetch_add(1, Ordering::Relaxed);
        for (up, new) in batch.iter().zip(&stored.fresh) {
            if *new {
                stats.messages_stored.fetch_add(1, Ordering::Relaxed);
                if let AnyMessage::Telemetry(t) = &up.message {
                    stats
                        .points_stored
                        .fetch_add(t.points().count() as u64, Ordering::Relaxed);
                }
            } else {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(oldest) = oldest {
            stats
                .lag_ms
                .store(oldest.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        // A device whose state report does not show its desired generation
        // missed it (offline, or subscribed after the connect-time send).
        // Sent before the acknowledgements, so a device that sees the
        // acknowledgement of its report has been sent the desired state.
        for (device, desired) in &stored.desired_again {
            if let Err(e) = downlink.send_desired(device, desired).await {
                tracing::warn!(device = %device, error = %e, "desired state not sent again");
            }
        }
        for (device, state) in moved {
            downlink.send_ack(&device, state.0).await;
            frontiers.insert(device, state);
        }
        // Committed, so each alert is notified once: a resend inserted none.
        for alert in stored.alerts {
            notifier.notify(alert);
        }
    }
}

/// A cloneable shutdown signal.
pub mod tokio_util_shutdown {
    /// Resolves once the server is told to stop.
    #[derive(Clone)]
    pub struct Shutdown(pub(crate) tokio::sync::watch::Receiver<bool>);

    impl Shutdown {
        /// Waits for the signal.
        pub async fn wait(&mut self) {
            while !*self.0.borrow() {
                if self.0.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}
