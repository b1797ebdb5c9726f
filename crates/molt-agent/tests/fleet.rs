//! The agent and a real molt-server, in-process, on loopback.
//!
//! - `telemetry_is_stored_exactly_once_and_the_outbox_trimmed`: enroll with
//!   the `molt-agent` binary, run the agent on a JSON-lines file through a
//!   real policy, and check that every message it produced is in the
//!   server's store exactly once and that the outbox was trimmed on the
//!   server's acknowledgements.
//! - `a_server_restart_mid_stream_loses_and_duplicates_nothing`: the server
//!   stops while the agent is sending and starts again on the same data
//!   directory (its broker on a new port, behind a fixed loopback address the
//!   agent's `[server] broker` names); the agent reconnects, resends
//!   everything above the last acknowledgement, and the store holds each
//!   message once. A desired state set through the REST API on the way is
//!   kept in `desired.json`.
//! - `state_health_and_events_are_stored_once_across_a_restart`: two runs
//!   on one state directory; the store holds the device's reported state,
//!   its health reports (the second run's says `restarts` 2) and one
//!   `started` event per run, each once, and the second run sends only what
//!   the first had not had acknowledged (`acked.json`).
//! - `enrollment_refusals_are_clear_and_write_nothing`: a used-up token, an
//!   untrusted CA, an unreachable server and an existing identity.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use molt_agent::daemon::{self, AgentConfig};
use molt_agent::log::{LogLimits, SyncPolicy};
use molt_agent::outbox::{Outbox, OverflowPolicy};
use molt_server::store::{Store, Table};
use molt_server::{Config, Running};

const DEVICE: &str = "gw-0001";

struct Server {
    running: Running,
    admin: String,
    http: reqwest::Client,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a server on `dir` (initialising it first if `init`).
async fn start_server(dir: &Path, init: bool) -> Server {
    let admin = if init {
        molt_server::init(dir, &[]).await.unwrap().admin_token
    } else {
        std::fs::read_to_string(dir.join(molt_server::ADMIN_TOKEN_FILE))
            .unwrap()
            .trim()
            .to_owned()
    };
    let config = Config::loopback(dir);
    let https = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = molt_server::start(config, https).await.unwrap();
    let ca = std::fs::read(dir.join(molt_server::ca::CA_CERT)).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    Server { running, admin, http }
}

impl Server {
    fn url(&self) -> String {
        format!("https://localhost:{}", self.running.addrs.https.port())
    }

    async fn token(&self, uses: u32) -> String {
        let response = self
            .http
            .post(format!("{}/api/v1/enrollment-tokens", self.url()))
            .bearer_auth(&self.admin)
            .json(&serde_json::json!({ "ttl_s": 600, "uses": uses }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }
}

/// Runs `molt-agent enroll`; returns (success, stdout, stderr).
fn enroll(server: &str, token: &str, device: &str, state: &Path, ca: Option<&Path>) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_molt-agent"));
    command
        .args([
            "enroll",
            "--server",
            server,
            "--token",
            token,
            "--device-id",
            device,
            "--state-dir",
        ])
        .arg(state);
    if let Some(ca) = ca {
        command.arg("--ca").arg(ca);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Readings `1..=lines`, `t` = the line number, a garbage line every 997th.
fn write_input(path: &Path, lines: u64) {
    let mut text = String::new();
    for line in 1..=lines {
        text.push_str(&format!(
            "{{\"sensor\": {}, \"value\": {line}, \"t\": {line}}}\n",
            line % 7
        ));
        if line % 997 == 0 {
            text.push_str("{not json\n");
        }
    }
    std::fs::write(path, text).unwrap();
}

fn agent_config(dir: &Path, server: &str) -> (PathBuf, PathBuf) {
    let wasm = dir.join("sequence-echo.wasm");
    std::fs::write(&wasm, molt_guests::SEQUENCE_ECHO).unwrap();
    let input = dir.join("input.jsonl");
    let state = dir.join("state");
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            r#"
state_dir = "{state}"

[limits]
batch_readings_max = 10
batch_wait_ms = 2
checkpoint_interval_batches = 5

[outbox]
segment_bytes_max = 4096

[[source]]
kind = "json-lines"
path = "{input}"
exit_at_eof = true

[[policy]]
name = "echo"
wasm = "{wasm}"
config = {{ tag = "echo" }}

[server]
reconnect_initial_ms = 100
reconnect_max_ms = 1000
drain_timeout_ms = 120000
{server}
"#,
            state = state.display(),
            input = input.display(),
            wasm = wasm.display(),
        ),
    )
    .unwrap();
    (path, state)
}

fn open_outbox(state: &Path) -> Outbox {
    Outbox::open(
        &state.join("outbox"),
        LogLimits {
            segment_bytes_max: 4096,
            bytes_max: 256 << 20,
            record_bytes_max: 8 << 20,
        },
        SyncPolicy::EveryBatch,
        OverflowPolicy::RefuseReadings,
    )
    .unwrap()
    .0
}

/// What the store holds for the device: (messages, points, duplicate
/// points, stored_through).
async fn stored(store: &Store) -> (i64, i64, i64, i64) {
    (
        store.count(Table::Uplink).await.unwrap(),
        store.count(Table::Points).await.unwrap(),
        store.duplicate_points().await.unwrap(),
        store.device(DEVICE).await.unwrap().stored_through,
    )
}

#[test]
fn telemetry_is_stored_exactly_once_and_the_outbox_trimmed() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let server = rt.block_on(start_server(&server_dir, true));
    let token = rt.block_on(server.token(1));
    let (config_path, state) = agent_config(dir.path(), "");
    let (ok, stdout, stderr) = enroll(
        &server.url(),
        &token,
        DEVICE,
        &state,
        Some(&server_dir.join(molt_server::ca::CA_CERT)),
    );
    assert!(ok, "enroll failed: {stdout}{stderr}");
    assert!(stdout.contains("enrolled as gw-0001"), "{stdout}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("identity/device.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("identity/identity.json")).unwrap()).unwrap();
    assert_eq!(identity["device_id"], DEVICE);
    assert_eq!(
        identity["broker"],
        format!("mqtts://{}", server.running.addrs.mqtt).as_str()
    );

    let lines = 2000;
    write_input(&dir.path().join("input.jsonl"), lines);
    let config = AgentConfig::load(&config_path).unwrap();
    let summary = daemon::run(&config).unwrap();
    let link = summary.link.clone().expect("the link ran");

    let outbox = open_outbox(&state);
    let messages = outbox.next_seq() - 1;
    assert_eq!(
        messages,
        lines.div_ceil(10) + summary.status_messages,
        "one telemetry message per batch of 10, and the agent's own (events, state, health)"
    );
    assert_eq!(summary.drained, Some(true), "{summary:?}");
    assert_eq!(link.acked_through, messages, "{link:?}");
    assert!(link.published >= messages, "{link:?}");

    let (uplink, points, duplicates, stored_through) = rt.block_on(stored(&server.running.shared.store));
    println!(
        "fleet: messages={messages} stored={uplink} points={points} duplicates={duplicates} published={} reconnects={}",
        link.published, link.reconnects
    );
    assert_eq!(uplink as u64, messages, "every message stored exactly once");
    assert_eq!(points as u64, lines, "every reading's point stored exactly once");
    assert_eq!(duplicates, 0);
    assert_eq!(stored_through as u64, messages);

    // Trimmed on the acknowledgements: whole segments, never the newest.
    let batches = outbox.batches().unwrap();
    let oldest = batches.first().and_then(|batch| batch.messages.first()).map(|m| m.seq);
    assert!(
        oldest.is_some_and(|seq| seq > messages / 2),
        "the outbox still holds from {oldest:?} of {messages}"
    );
    assert!(outbox.bytes() <= 2 * 4096 + 1024, "{} bytes left", outbox.bytes());

    // `status` reports the link.
    let output = Command::new(env!("CARGO_BIN_EXE_molt-agent"))
        .args(["status", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&output.stdout);
    assert!(status.contains("identity: device gw-0001"), "{status}");
    assert!(status.contains(&format!("acked through {messages}")), "{status}");
    rt.block_on(server.running.stop());
}

/// A fixed loopback address forwarding to the broker wherever it is now:
/// the stable name (DNS, a load balancer) a real fleet has in front of a
/// server whose broker port changed.
struct Forwarder {
    addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Forwarder {
    fn start(rt: &tokio::runtime::Runtime, target: SocketAddr) -> Forwarder {
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let forwarder = Forwarder {
            addr: listener.local_addr().unwrap(),
            upstream: Arc::new(Mutex::new(Some(target))),
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        let (upstream, connections) = (forwarder.upstream.clone(), forwarder.connections.clone());
        rt.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let Some(target) = *upstream.lock().unwrap() else {
                    continue;
                };
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(task.abort_handle());
            }
        });
        forwarder
    }

    /// The server process is gone: its connections drop and nothing answers.
    /// (In-process, a stopped molt-server's broker sessions would live on.)
    fn cut(&self) {
        *self.upstream.lock().unwrap() = None;
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn point_to(&self, target: SocketAddr) {
        *self.upstream.lock().unwrap() = Some(target);
    }
}

#[test]
fn a_server_restart_mid_stream_loses_and_duplicates_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let server = rt.block_on(start_server(&server_dir, true));
    let front = Forwarder::start(&rt, server.running.addrs.mqtt);
    let token = rt.block_on(server.token(1));
    // Slow enough that the stop comes mid-stream: 20 messages a second.
    let (config_path, state) = agent_config(
        dir.path(),
        &format!(
            "broker = \"mqtts://{}\"\npublish_per_second_max = 20\npublish_burst_max = 10",
            front.addr
        ),
    );
    let (ok, stdout, stderr) = enroll(
        &server.url(),
        &token,
        DEVICE,
        &state,
        Some(&server_dir.join(molt_server::ca::CA_CERT)),
    );
    assert!(ok, "enroll failed: {stdout}{stderr}");
    let lines = 3000;
    write_input(&dir.path().join("input.jsonl"), lines);
    let config = AgentConfig::load(&config_path).unwrap();
    let agent = std::thread::spawn(move || daemon::run(&config));

    let stored_through = |server: &Server| {
        rt.block_on(server.running.shared.store.device(DEVICE))
            .unwrap()
            .stored_through
    };
    let started = Instant::now();
    while stored_through(&server) < 30 {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The director names a release set while the device is online.
    let status = rt.block_on(async {
        server
            .http
            .put(format!("{}/api/v1/devices/{DEVICE}/desired", server.url()))
            .bearer_auth(&server.admin)
            .json(&serde_json::json!({ "release": 7, "rollout": "r-1" }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 200);
    // Stop the server once more of the stream is stored.
    while stored_through(&server) < 60 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress before the stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    front.cut();
    rt.block_on(server.running.stop());
    // What the agent had been acknowledged must be in the store.
    std::thread::sleep(Duration::from_millis(1500));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join(molt_agent::link::LINK_STATUS_FILE)).unwrap()).unwrap();
    assert_eq!(report["connected"], false, "{report}");
    let acked_at_stop = report["acked_through"].as_u64().unwrap();
    let store = rt.block_on(Store::open(&server_dir)).unwrap();
    let (_, _, _, stored_at_stop) = rt.block_on(stored(&store));
    rt.block_on(store.close());
    assert!(
        stored_at_stop as u64 >= acked_at_stop,
        "acknowledged through {acked_at_stop} but the store holds through {stored_at_stop}"
    );
    let expected = lines.div_ceil(10);
    assert!(
        acked_at_stop < expected,
        "the stop came after everything was acknowledged"
    );

    // The same directory again; its broker gets a new port.
    let server = rt.block_on(start_server(&server_dir, false));
    front.point_to(server.running.addrs.mqtt);
    let summary = agent.join().unwrap().unwrap();
    let link = summary.link.clone().unwrap();
    assert_eq!(summary.drained, Some(true), "{summary:?}");
    assert!(link.reconnects >= 1, "{link:?}");

    let messages = open_outbox(&state).next_seq() - 1;
    assert_eq!(messages, expected + summary.status_messages);
    assert_eq!(link.acked_through, messages);
    let (uplink, points, duplicates, stored_through) = rt.block_on(stored(&server.running.shared.store));
    println!(
        "fleet-restart: messages={messages} acked-before-stop={acked_at_stop} stored={uplink} points={points} \
         duplicates={duplicates} published={} reconnects={}",
        link.published, link.reconnects
    );
    assert_eq!(uplink as u64, messages, "every message stored exactly once");
    assert_eq!(points as u64, lines, "every point stored exactly once");
    assert_eq!(duplicates, 0);
    assert_eq!(stored_through as u64, messages);

    // The desired state was kept (sent again after the reconnect, and
    // ignored then: same generation).
    assert_eq!(link.desired_generation, 1, "{link:?}");
    assert!(link.desired_received >= 1, "{link:?}");
    let desired: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join(molt_agent::link::DESIRED_FILE)).unwrap()).unwrap();
    assert_eq!(
        (desired["generation"].as_u64(), desired["release"].as_u64()),
        (Some(1), Some(7))
    );
    assert_eq!(desired["rollout"], "r-1");
    rt.block_on(server.running.stop());
}

/// Rows of the server's store, read with SQL (the store has no query for
/// these): per kind, (kind, rows, distinct sequence numbers).
async fn kinds(server_dir: &Path, table: &str) -> Vec<(String, i64, i64)> {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let options = SqliteConnectOptions::new()
        .filename(server_dir.join(molt_server::store::DB_FILE))
        .read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let rows = sqlx::query_as::<_, (String, i64, i64)>(&format!(
        "SELECT kind, COUNT(*), COUNT(DISTINCT seq) FROM {table} WHERE device = $1 GROUP BY kind ORDER BY kind"
    ))
    .bind(DEVICE)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

#[test]
fn state_health_and_events_are_stored_once_across_a_restart() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let server = rt.block_on(start_server(&server_dir, true));
    let token = rt.block_on(server.token(1));
    let (config_path, state) = agent_config(dir.path(), "hardware_class = \"rpi4\"");
    let (ok, stdout, stderr) = enroll(
        &server.url(),
        &token,
        DEVICE,
        &state,
        Some(&server_dir.join(molt_server::ca::CA_CERT)),
    );
    assert!(ok, "enroll failed: {stdout}{stderr}");
    let input = dir.path().join("input.jsonl");
    let config = AgentConfig::load(&config_path).unwrap();
    let device = |server: &Server| -> serde_json::Value {
        rt.block_on(async {
            server
                .http
                .get(format!("{}/api/v1/devices/{DEVICE}", server.url()))
                .bearer_auth(&server.admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
    };

    // The first run: 200 readings.
    write_input(&input, 200);
    let first = daemon::run(&config).unwrap();
    assert_eq!(first.drained, Some(true), "{first:?}");
    let newest_first = open_outbox(&state).next_seq() - 1;
    assert_eq!(newest_first, 20 + first.status_messages);
    let row = device(&server);
    let reported = &row["reported"];
    assert_eq!(reported["hardware_class"], "rpi4", "{row}");
    assert_eq!(reported["agent_version"], env!("CARGO_PKG_VERSION"), "{row}");
    assert_eq!(reported["policies"][0]["name"], "echo", "{row}");
    assert_eq!(reported["policies"][0]["serving"], "echo@local", "{row}");
    let health = row["health"].clone();
    assert_eq!(health["restarts"], 1, "{row}");
    assert_eq!(health["readings"], 200, "the last report, sent at the stop: {row}");
    assert_eq!(health["batches"], 20, "{row}");
    assert!(health["boot"].as_u64().unwrap() > 0, "{row}");
    assert!(health["rss_bytes"].as_u64().unwrap() > 0, "{row}");

    // The second run on the same directory: 100 more readings.
    write_input(&input, 300);
    let second = daemon::run(&config).unwrap();
    assert_eq!(second.drained, Some(true), "{second:?}");
    let link = second.link.clone().unwrap();
    let newest = open_outbox(&state).next_seq() - 1;
    assert_eq!(newest, newest_first + 10 + second.status_messages);
    if link.reconnects == 0 {
        // Resumed after the first run's acknowledgement, not from the
        // outbox's oldest segment (which still holds the first run's).
        assert_eq!(link.published, newest - newest_first, "{link:?}");
    }

    let row = device(&server);
    assert_eq!(row["stored_through"].as_u64(), Some(newest), "{row}");
    assert_eq!(row["health"]["restarts"], 2, "{row}");
    assert_eq!(row["health"]["readings"], 100, "counted from this boot: {row}");
    assert!(row["health"]["boot"].as_u64() > health["boot"].as_u64(), "{row}");
    assert_eq!(row["reported"]["policies"][0]["name"], "echo", "{row}");
    assert!(row["reported"].get("update").is_none(), "no desired state: {row}");

    // Each message once: the ledger has one row per sequence number up to
    // the newest, and the events table one `started` per run.
    let uplink = rt.block_on(kinds(&server_dir, "uplink"));
    let events = rt.block_on(kinds(&server_dir, "events"));
    println!(
        "fleet-reports: messages={newest} status-messages={} uplink={uplink:?} events={events:?} published-second={}",
        first.status_messages + second.status_messages,
        link.published
    );
    let rows: i64 = uplink.iter().map(|(_, rows, _)| rows).sum();
    assert_eq!(rows as u64, newest, "{uplink:?}");
    let by_kind = |kind: &str| {
        uplink
            .iter()
            .find(|(k, _, _)| k == kind)
            .map_or(0, |(_, rows, _)| *rows)
    };
    assert_eq!(by_kind("telemetry"), 30, "{uplink:?}");
    assert!(by_kind("state") >= 2, "a reported state per run at least: {uplink:?}");
    assert!(
        by_kind("health") >= 4,
        "at the start and at the stop of each run: {uplink:?}"
    );
    assert_eq!(by_kind("events"), 2, "{uplink:?}");
    assert_eq!(
        events,
        vec![("started".to_owned(), 2, 2)],
        "one `started` per run, each once"
    );
    assert_eq!(
        (by_kind("state") + by_kind("health") + by_kind("events")) as u64,
        first.status_messages + second.status_messages
    );
    rt.block_on(server.running.stop());
}

#[test]
fn enrollment_refusals_are_clear_and_write_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let server = rt.block_on(start_server(&server_dir, true));
    let ca = server_dir.join(molt_server::ca::CA_CERT);
    let token = rt.block_on(server.token(1));

    let first = dir.path().join("first");
    let (ok, stdout, stderr) = enroll(&server.url(), &token, "gw-first", &first, Some(&ca));
    assert!(ok, "{stdout}{stderr}");

    // The token is used up.
    let second = dir.path().join("second");
    let (ok, _, stderr) = enroll(&server.url(), &token, "gw-second", &second, Some(&ca));
    assert!(!ok);
    assert!(stderr.contains("enrollment_token_used_up"), "{stderr}");
    assert!(stderr.contains("no uses left"), "the server's message: {stderr}");
    assert!(!second.exists(), "nothing written");

    // A CA that did not sign the server's certificate.
    let fresh = rt.block_on(server.token(1));
    let other_ca = dir.path().join("other-ca.pem");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let (ok, _, stderr) = enroll(&server.url(), &fresh, "gw-second", &second, Some(&other_ca));
    assert!(!ok);
    assert!(stderr.contains("is not trusted"), "{stderr}");
    assert!(stderr.contains("--ca"), "says how to proceed: {stderr}");
    assert!(!second.exists(), "nothing written");

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (ok, _, stderr) = enroll(
        &format!("https://127.0.0.1:{port}"),
        &fresh,
        "gw-second",
        &second,
        Some(&ca),
    );
    assert!(!ok);
    assert!(stderr.contains("cannot reach the server"), "{stderr}");
    assert!(!second.exists(), "nothing written");

    // An identity is never overwritten; the token is still unused.
    let (ok, _, stderr) = enroll(&server.url(), &fresh, "gw-other", &first, Some(&ca));
    assert!(!ok);
    assert!(
        stderr.contains("already holds the identity of device `gw-first`"),
        "{stderr}"
    );
    assert!(stderr.contains("move"), "says how to proceed: {stderr}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.join("identity/identity.json")).unwrap()).unwrap();
    assert_eq!(record["device_id"], "gw-first");

    // The token the refusals did not spend still enrolls.
    let (ok, stdout, stderr) = enroll(&server.url(), &fresh, "gw-second", &second, Some(&ca));
    assert!(ok, "{stdout}{stderr}");
    rt.block_on(server.running.stop());
}

/// The agent's copies of the enrollment types read and write what the
/// server's do (the agent does not depend on molt-server).
#[test]
fn enrollment_types_match_the_server() {
    let request = molt_agent::identity::EnrollRequest {
        token: "t".into(),
        device_id: "gw-1".into(),
        csr_pem: "csr".into(),
    };
    let theirs: molt_server::http::EnrollRequest =
        serde_json::from_value(serde_json::to_value(&request).unwrap()).unwrap();
    assert_eq!(
        (theirs.token, theirs.device_id, theirs.csr_pem),
        (request.token, request.device_id, request.csr_pem)
    );
    let response = molt_server::http::EnrollResponse {
        device_id: "gw-1".into(),
        certificate_pem: "cert".into(),
        ca_chain_pem: "ca".into(),
        broker: "mqtts://127.0.0.1:8883".into(),
        tuf_root: Some(serde_json::json!({ "signed": {} })),
        repository: Some("https://127.0.0.1:8443/repo/".into()),
    };
    let ours: molt_agent::identity::EnrollResponse =
        serde_json::from_value(serde_json::to_value(&response).unwrap()).unwrap();
    assert_eq!(
        serde_json::to_value(&ours).unwrap(),
        serde_json::to_value(&response).unwrap()
    );
}
