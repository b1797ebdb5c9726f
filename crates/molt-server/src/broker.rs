//! The embedded MQTT broker (rmqtt, pinned exactly) and the hooks that
//! enforce device identity and topic rights from the registry.
//!
//! rmqtt's defaults are unsafe for us (FLEET.md, sharp edges), so each is
//! overridden here: anonymous clients are refused on every listener, every
//! auth and ACL check is answered (deny by default), and nothing is stored
//! from the `MessagePublish` hook (it runs before the publish ACL).
//!
//! Two listeners: `devices` (TLS, client certificate required, CN = client
//! id = device id) and `local` (loopback plain TCP, a random secret in the
//! data directory), where the server's own logic connects as the only
//! superuser (FLEET.md, principle 2).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use molt_protocol::DeviceId;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::types::{AuthResult, Id, Message, PublishAclResult, Reason, SubscribeReturn};

use crate::Error;
use crate::config::Config;
use crate::store::Access;

/// The listener id of the device listener.
pub const DEVICES_LISTENER: u16 = 1;
/// The listener id of the loopback listener for the server's own client.
pub const LOCAL_LISTENER: u16 = 2;
/// The MQTT user name of the server's own client.
pub const SERVER_USER: &str = "molt-server";

/// Refusal counters by reason, for `/metrics` and the tests.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Connections without a certificate CN or with a client id that differs from it.
    pub identity_mismatch: AtomicU64,
    /// Connections from devices not in the registry.
    pub unknown_device: AtomicU64,
    /// Connections or packets from revoked devices.
    pub revoked: AtomicU64,
    /// Publishes outside the device's own uplink topics.
    pub publish_acl: AtomicU64,
    /// Subscriptions outside the device's own downlink topics.
    pub subscribe_acl: AtomicU64,
    /// Publishes over `limits.device_messages_per_second`.
    pub rate_limited: AtomicU64,
    /// Local-listener logins without the server's secret.
    pub local_auth: AtomicU64,
}

impl Refusals {
    /// Sum of all counters.
    pub fn total(&self) -> u64 {
        [
            &self.identity_mismatch,
            &self.unknown_device,
            &self.revoked,
            &self.publish_acl,
            &self.subscribe_acl,
            &self.rate_limited,
            &self.local_auth,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// `(reason, count)` pairs.
    pub fn by_reason(&self) -> [(&'static str, u64); 7] {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("identity_mismatch", l(&self.identity_mismatch)),
            ("unknown_device", l(&self.unknown_device)),
            ("revoked", l(&self.revoked)),
            ("publish_acl", l(&self.publish_acl)),
            ("subscribe_acl", l(&self.subscribe_acl)),
            ("rate_limited", l(&self.rate_limited)),
            ("local_auth", l(&self.local_auth)),
        ]
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the hooks consult: the registry's access states (kept in memory,
/// updated by enrollment and revocation), the connected sessions (to
/// disconnect a revoked device at once) and the rate buckets.
pub struct Gate {
    access: Mutex<HashMap<String, Access>>,
    sessions: Mutex<HashMap<String, Id>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    local_secret: String,
    rate: f64,
    burst: f64,
    /// Refusals by reason.
    pub refusals: Refusals,
    /// Devices connected now.
    pub connected: AtomicU64,
    /// Uplink publishes accepted by the ACL.
    pub publishes_accepted: AtomicU64,
    /// Accepted messages the broker dropped (a subscriber's queue full, or
    /// no subscriber at all); devices resend them.
    pub dropped: AtomicU64,
    /// Accepted messages written off when the server's client connected
    /// with a new session (whatever its old session held is gone).
    written_off: AtomicU64,
    /// Publishes refused because the server's client was
    /// `limits.broker_server_queue_max` messages behind; devices resend them.
    pub shed: AtomicU64,
    /// The ingest's counters: what the server's client has received.
    ingest: Arc<crate::ingest::IngestStats>,
    backlog_max: u64,
    /// Connection state changes for the registry: `(device, online)`.
    presence: tokio::sync::mpsc::UnboundedSender<(String, bool)>,
    scx: Mutex<Option<ServerContext>>,
}

impl Gate {
    /// A gate over `access`.
    pub fn new(
        access: HashMap<String, Access>,
        local_secret: String,
        config: &Config,
        presence: tokio::sync::mpsc::UnboundedSender<(String, bool)>,
        ingest: Arc<crate::ingest::IngestStats>,
    ) -> Gate {
        Gate {
            access: Mutex::new(access),
            sessions: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            local_secret,
            rate: f64::from(config.limits.device_messages_per_second),
            burst: f64::from(config.limits.device_message_burst),
            refusals: Refusals::default(),
            connected: AtomicU64::new(0),
            publishes_accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            written_off: AtomicU64::new(0),
            ingest,
            backlog_max: config.limits.broker_server_queue_max as u64,
            presence,
            scx: Mutex::new(None),
        }
    }

    /// Publishes accepted that the server's client has not received yet
    /// (nor the broker dropped).
    fn backlog(&self) -> u64 {
        let accepted = self.publishes_accepted.load(Ordering::Relaxed);
        let gone = self.ingest.messages_in.load(Ordering::Relaxed)
            + self.dropped.load(Ordering::Relaxed)
            + self.written_off.load(Ordering::Relaxed);
        accepted.saturating_sub(gone)
    }

    /// The server's client has connected with a clean session: nothing
    /// accepted before is still on its way to it, whether or not the broker
    /// reported the loss, so the backlog starts again from zero.
    pub fn forget_backlog(&self) {
        self.written_off.fetch_add(self.backlog(), Ordering::Relaxed);
    }

    fn access_of(&self, device: &str) -> Access {
        self.access
            .lock()
            .map(|m| m.get(device).copied().unwrap_or(Access::Unknown))
            .unwrap_or(Access::Unknown)
    }

    /// Lets a newly enrolled device connect.
    pub fn allow(&self, device: &str) {
        if let Ok(mut m) = self.access.lock() {
            m.insert(device.to_owned(), Access::Allowed);
        }
    }

    /// Refuses `device` from now on and disconnects it if connected.
    pub async fn revoke(&self, device: &str) {
        if let Ok(mut m) = self.access.lock() {
            m.insert(device.to_owned(), Access::Revoked);
        }
        let id = self.sessions.lock().ok().and_then(|m| m.get(device).cloned());
        let scx = self.scx.lock().ok().and_then(|s| s.clone());
        if let (Some(id), Some(scx)) = (id, scx) {
            let entry = scx.extends.shared().await.entry(id);
            if let Some(tx) = entry.tx() {
                let _ = tx.unbounded_send(Message::Closed(Reason::ConnectKicked(true)));
            }
        }
    }

    fn take_token(&self, device: &str) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        let now = Instant::now();
        let bucket = buckets.entry(device.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Hooks {
    gate: Arc<Gate>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

// rmqtt's trait elides the lifetime; matching it exactly is required.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl Handler for Hooks {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let gate = &self.gate;
        match param {
            Parameter::ClientAuthenticate(info) => {
                let id = info.id();
                let result = if id.lid == LOCAL_LISTENER {
                    let user_ok = info.username().map(|u| &**u == SERVER_USER).unwrap_or(false);
                    let pass_ok = info
                        .password()
                        .map(|p| p.as_ref() == gate.local_secret.as_bytes())
                        .unwrap_or(false);
                    if user_ok && pass_ok {
                        AuthResult::Allow(true, None)
                    } else {
                        bump(&gate.refusals.local_auth);
                        AuthResult::NotAuthorized
                    }
                } else if id.lid == DEVICES_LISTENER {
                    let cn = info.cert().and_then(|c| c.common_name.clone());
                    match cn {
                        Some(cn) if *info.client_id() == cn && DeviceId::parse(&cn).is_ok() => {
                            match gate.access_of(&cn) {
                                Access::Allowed => AuthResult::Allow(false, None),
                                Access::Revoked => {
                                    bump(&gate.refusals.revoked);
                                    AuthResult::NotAuthorized
                                }
                                Access::Unknown => {
                                    bump(&gate.refusals.unknown_device);
                                    AuthResult::NotAuthorized
                                }
                            }
                        }
                        _ => {
                            bump(&gate.refusals.identity_mismatch);
                            AuthResult::NotAuthorized
                        }
                    }
                } else {
                    AuthResult::NotAuthorized
                };
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                if session.id.lid == LOCAL_LISTENER {
                    return (
                        false,
                        Some(HookResult::SubscribeAclResult(SubscribeReturn::new_success(
                            subscribe.opts.qos(),
                            None,
                        ))),
                    );
                }
                let client = &*session.id.client_id;
                let allowed = gate.access_of(client) == Access::Allowed
                    && DeviceId::parse(client)
                        .map(|d| molt_protocol::may_subscribe(&d, &subscribe.topic_filter))
                        .unwrap_or(false);
                if allowed {
                    (
                        false,
                        Some(HookResult::SubscribeAclResult(SubscribeReturn::new_success(
                            subscribe.opts.qos(),
                            None,
                        ))),
                    )
                } else {
                    bump(&gate.refusals.subscribe_acl);
                    (
                        false,
                        Some(HookResult::SubscribeAclResult(SubscribeReturn::new_failure(
                            SubscribeAckReason::NotAuthorized,
                        ))),
                    )
                }
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                if session.id.lid == LOCAL_LISTENER {
                    return (false, Some(HookResult::PublishAclResult(PublishAclResult::allow())));
                }
                let client = &*session.id.client_id;
                match gate.access_of(client) {
                    Access::Allowed => {}
                    _ => {
                        bump(&gate.refusals.revoked);
                        return (
                            false,
                            Some(HookResult::PublishAclResult(PublishAclResult::rejected(true, None))),
                        );
                    }
                }
                let topic_ok = DeviceId::parse(client)
                    .map(|d| molt_protocol::may_publish(&d, &publish.topic))
                    .unwrap_or(false);
                if !topic_ok {
                    bump(&gate.refusals.publish_acl);
                    // Disconnect on deny: an MQTT 3.1.1 client would
                    // otherwise never learn its publish was dropped.
                    return (
                        false,
                        Some(HookResult::PublishAclResult(PublishAclResult::rejected(true, None))),
                    );
                }
                if !gate.take_token(client) {
                    bump(&gate.refusals.rate_limited);
                    return (
                        false,
                        Some(HookResult::PublishAclResult(PublishAclResult::rejected(true, None))),
                    );
                }
                // rmqtt hands every publish to the subscriber's session
                // through an unbounded channel (rmqtt 0.24.0 session.rs,
                // `unbounded()`; `max_mqueue_len` applies only after the
                // session task took it): a server client that falls behind
                // would hold every message in memory (2-3 GB in a minute of
                // the fleet bench). So the broker stops taking publishes
                // while the server's client is that far behind. The device
                // is not disconnected; it resends what the store has not
                // acknowledged (its acknowledgement timeout).
                if gate.backlog() >= gate.backlog_max {
                    bump(&gate.shed);
                    return (
                        false,
                        Some(HookResult::PublishAclResult(PublishAclResult::rejected(false, None))),
                    );
                }
                bump(&gate.publishes_accepted);
                (false, Some(HookResult::PublishAclResult(PublishAclResult::allow())))
            }
            Parameter::ClientConnected(session) => {
                if session.id.lid == DEVICES_LISTENER {
                    let device = session.id.client_id.to_string();
                    if let Ok(mut m) = gate.sessions.lock() {
                        m.insert(device.clone(), session.id.clone());
                    }
                    bump(&gate.connected);
                    let _ = gate.presence.send((device, true));
                }
                (true, acc)
            }
            Parameter::ClientDisconnected(session, _) => {
                if session.id.lid == DEVICES_LISTENER {
                    let device = session.id.client_id.to_string();
                    if let Ok(mut m) = gate.sessions.lock()
                        && m.get(&device).map(|id| id == &session.id).unwrap_or(false)
                    {
                        m.remove(&device);
                    }
                    gate.connected.fetch_sub(1, Ordering::Relaxed);
                    let _ = gate.presence.send((device, false));
                }
                (true, acc)
            }
            // A publish the ACL refused is reported as dropped too; only
            // accepted messages the broker then lost count here.
            Parameter::MessageNonsubscribed(_) => {
                bump(&gate.dropped);
                (true, acc)
            }
            Parameter::MessageDropped(_, _, _, reason) => {
                if !matches!(reason, Reason::PublishResult(_)) {
                    bump(&gate.dropped);
                }
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

/// The running broker's addresses.
#[derive(Debug, Clone, Copy)]
pub struct BrokerAddrs {
    /// Device listener (TLS).
    pub devices: SocketAddr,
    /// Local listener for the server's client.
    pub local: SocketAddr,
}

/// Starts the broker; it runs until the returned task is aborted.
pub async fn start(config: &Config, gate: Arc<Gate>) -> Result<(BrokerAddrs, tokio::task::JoinHandle<()>), Error> {
    let dir = &config.data_dir;
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let limits = &config.limits;
    let scx = ServerContext::new()
        .busy_handshaking_limit(limits.broker_handshakes_max as isize)
        .mqtt_max_sessions(limits.broker_connections_max as isize + 16)
        .build()
        .await;
    let register = scx.extends.hook_mgr().register();
    for typ in [
        Type::ClientAuthenticate,
        Type::ClientSubscribeCheckAcl,
        Type::MessagePublishCheckAcl,
        Type::ClientConnected,
        Type::ClientDisconnected,
        Type::MessageDropped,
        Type::MessageNonsubscribed,
    ] {
        register
            .add_priority(typ, i32::MAX as _, Box::new(Hooks { gate: gate.clone() }))
            .await;
    }
    register.start().await;
    if let Ok(mut s) = gate.scx.lock() {
        *s = Some(scx.clone());
    }

    let broker_err = |e: rmqtt::Error| Error::Broker(e.to_string());
    let devices = Builder::new()
        .name("devices")
        .laddr(config.listen.mqtt)
        .allow_anonymous(false)
        .max_connections(limits.broker_connections_max)
        .max_handshaking_limit(limits.broker_handshakes_max)
        .max_packet_size(limits.mqtt_packet_bytes_max)
        .handshake_timeout(std::time::Duration::from_secs(limits.mqtt_connect_timeout_s))
        .max_qos_allowed(rmqtt::codec::types::QoS::AtLeastOnce)
        .backlog(4096)
        .tls_cross_certificate(true)
        .collect_cert_info(true)
        .tls_cert(Some(path(crate::ca::SERVER_CERT)))
        .tls_key(Some(path(crate::ca::SERVER_KEY)))
        .tls_client_ca_certs(Some(path(crate::ca::CA_CERT)))
        .bind()
        .map_err(broker_err)?
        .tls()
        .map_err(broker_err)?;
    let local = Builder::new()
        .name("local")
        .laddr(config.listen.mqtt_local)
        .allow_anonymous(false)
        .max_packet_size(limits.mqtt_packet_bytes_max)
        .max_inflight(std::num::NonZeroU16::new(1024).unwrap_or(std::num::NonZeroU16::MIN))
        .max_mqueue_len(limits.broker_server_queue_max)
        .mqueue_rate_limit(std::num::NonZeroU32::MAX, std::time::Duration::from_secs(1))
        .bind()
        .map_err(broker_err)?
        .tcp()
        .map_err(broker_err)?;
    let addrs = BrokerAddrs {
        devices: devices.local_addr().map_err(broker_err)?,
        local: local.local_addr().map_err(broker_err)?,
    };
    let server = MqttServer::new(scx)
        .listener_by_id(devices, DEVICES_LISTENER)
        .listener_by_id(local, LOCAL_LISTENER)
        .build();
    let task = tokio::spawn(async move {
        if let Err(e) = server.run().await {
            tracing::error!(error = %e, "broker stopped");
        }
    });
    Ok((addrs, task))
}
