//! Alert webhooks: a real device's alerts, through the broker and the
//! store, POSTed to a receiver on 127.0.0.1:0 that fails on purpose.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use molt_protocol::{Alert, Alerts, Kind, Limits, PROTOCOL_VERSION, Severity};
use molt_server::config::Webhook;
use molt_server::store::{StoredAlert, Table};
use reqwest::Method;

/// What the receiver saw; it answers `fail_with` to the first `fail_first`
/// requests and 200 after.
#[derive(Default)]
struct Seen {
    requests: usize,
    fail_first: usize,
    fail_with: u16,
    accepted: Vec<StoredAlert>,
    authorization: Vec<Option<String>>,
}

type Receiver = Arc<Mutex<Seen>>;

async fn hook(State(seen): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let mut seen = seen.lock().expect("receiver lock");
    seen.requests += 1;
    seen.authorization.push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    if seen.requests <= seen.fail_first {
        return StatusCode::from_u16(seen.fail_with).expect("status");
    }
    let alert: StoredAlert = serde_json::from_str(&body).expect("webhook body is a StoredAlert");
    seen.accepted.push(alert);
    StatusCode::OK
}

/// A receiver on 127.0.0.1:0; returns its URL and what it saw.
async fn receiver(fail_first: usize, fail_with: u16) -> (String, Receiver) {
    let seen = Arc::new(Mutex::new(Seen {
        fail_first,
        fail_with,
        ..Seen::default()
    }));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), seen)
}

fn fast_webhook(url: &str) -> Webhook {
    Webhook {
        url: url.to_owned(),
        retries_max: 5,
        retry_backoff_ms: 20,
        retry_backoff_max_ms: 100,
        timeout_ms: 2_000,
        token: "hook-secret".to_owned(),
        ..Webhook::default()
    }
}

fn alerts_payload(seq: u64, messages: &[&str]) -> Vec<u8> {
    let alerts = Alerts {
        v: PROTOCOL_VERSION,
        seq,
        policy: "threshold@1".into(),
        alerts: messages
            .iter()
            .enumerate()
            .map(|(i, m)| Alert {
                sensor: i as u32,
                t: 1_700_000_000_000 + seq * 1000,
                severity: Severity::Warning,
                message: (*m).to_owned(),
            })
            .collect(),
    };
    molt_protocol::encode(&alerts, &Limits::default()).expect("encode")
}

/// Polls `check` until it holds or `within` runs out; returns whether it held.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_arrives_once_after_retries_and_a_resend_does_not_notify_again() {
    let (url, seen) = receiver(3, 503).await;
    let s = server_with(|c| c.webhook = fast_webhook(&url)).await;
    let id = s.enroll("gw-hook").await;
    let mut d = s.device(&id);
    assert!(matches!(d.connected().await, Outcome::Connected));
    d.subscribe_ack().await;

    d.publish(Kind::Alerts, alerts_payload(1, &["too hot", "fan stalled"]))
        .await;
    d.publish(Kind::Alerts, alerts_payload(2, &["door open"])).await;
    assert_eq!(d.wait_ack(2).await, Some(2), "stored and acknowledged");
    let arrived = eventually(Duration::from_secs(10), || {
        seen.lock().expect("lock").accepted.len() >= 3
    })
    .await;
    assert!(arrived, "3 alerts delivered after 3 refusals");

    // A resend of seq 1 (the device did not see its ack) is stored once and
    // notifies nothing. Delivery is in order, so once seq 3's alert has
    // arrived, a notification for the resend would have arrived before it.
    let duplicates = s
        .running
        .shared
        .ingest
        .duplicates
        .load(std::sync::atomic::Ordering::Relaxed);
    d.publish(Kind::Alerts, alerts_payload(1, &["too hot", "fan stalled"]))
        .await;
    let deduped = eventually(Duration::from_secs(10), || {
        s.running
            .shared
            .ingest
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed)
            > duplicates
    })
    .await;
    assert!(deduped, "the resend reached the store");
    d.publish(Kind::Alerts, alerts_payload(3, &["smoke"])).await;
    let arrived = eventually(Duration::from_secs(10), || {
        seen.lock().expect("lock").accepted.iter().any(|a| a.seq == 3)
    })
    .await;
    assert!(arrived, "seq 3 delivered");

    let (_, stored) = s.api(Method::GET, "/api/v1/alerts", None).await;
    let mut stored_ids: Vec<i64> = stored
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["id"].as_i64())
        .collect();
    stored_ids.sort_unstable();
    assert_eq!(stored_ids.len(), 4, "{stored}");

    {
        let seen = seen.lock().expect("lock");
        let mut got: Vec<(i64, i64, String, String, String)> = seen
            .accepted
            .iter()
            .map(|a| (a.seq, a.sensor, a.message.clone(), a.state.clone(), a.device.clone()))
            .collect();
        got.sort();
        let expect =
            |seq: i64, sensor: i64, m: &str| (seq, sensor, m.to_owned(), "open".to_owned(), "gw-hook".to_owned());
        assert_eq!(
            got,
            [
                expect(1, 0, "too hot"),
                expect(1, 1, "fan stalled"),
                expect(2, 0, "door open"),
                expect(3, 0, "smoke")
            ],
            "each alert exactly once"
        );
        let mut delivered_ids: Vec<i64> = seen.accepted.iter().map(|a| a.id).collect();
        delivered_ids.sort_unstable();
        assert_eq!(delivered_ids, stored_ids, "the body carries the stored alert's id");
        assert!(
            seen.accepted
                .iter()
                .all(|a| a.policy == "threshold@1" && a.severity == "warning")
        );
        assert_eq!(seen.requests, 3 + 4, "3 refusals, then one request per alert");
        assert!(
            seen.authorization
                .iter()
                .all(|h| h.as_deref() == Some("Bearer hook-secret")),
            "{:?}",
            seen.authorization
        );
    }

    let (status, text) = {
        let r = s.http.get(s.url("/metrics")).send().await.expect("metrics");
        (r.status().as_u16(), r.text().await.expect("metrics body"))
    };
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "molt_webhook_delivered_total"), Some(4), "{text}");
    assert_eq!(metric(&text, "molt_webhook_retried_total"), Some(3), "{text}");
    assert_eq!(metric(&text, "molt_webhook_failed_total"), Some(0), "{text}");
    assert_eq!(metric(&text, "molt_webhook_dropped_total"), Some(0), "{text}");
    assert_eq!(metric(&text, "molt_webhook_queue_depth"), Some(0), "{text}");
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_is_not_retried_and_retries_are_bounded_by_retries_max() {
    // 400: final at once.
    let (url, seen) = receiver(usize::MAX, 400).await;
    let s = server_with(|c| c.webhook = fast_webhook(&url)).await;
    let id = s.enroll("gw-4xx").await;
    let mut d = s.device(&id);
    assert!(matches!(d.connected().await, Outcome::Connected));
    d.subscribe_ack().await;
    d.publish(Kind::Alerts, alerts_payload(1, &["bad"])).await;
    assert_eq!(d.wait_ack(1).await, Some(1));
    let stats = s.running.shared.webhook.clone();
    let failed = eventually(Duration::from_secs(10), || {
        stats.failed.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    assert!(failed, "the 400 counted as failed");
    assert_eq!(seen.lock().expect("lock").requests, 1, "a 400 is not retried");
    assert_eq!(stats.retried.load(std::sync::atomic::Ordering::Relaxed), 0);
    s.running.stop().await;

    // 503 forever: 1 + retries_max requests, then failed.
    let (url, seen) = receiver(usize::MAX, 503).await;
    let s = server_with(|c| {
        c.webhook = Webhook {
            retries_max: 2,
            ..fast_webhook(&url)
        }
    })
    .await;
    let id = s.enroll("gw-5xx").await;
    let mut d = s.device(&id);
    assert!(matches!(d.connected().await, Outcome::Connected));
    d.subscribe_ack().await;
    d.publish(Kind::Alerts, alerts_payload(1, &["flaky"])).await;
    assert_eq!(d.wait_ack(1).await, Some(1));
    let stats = s.running.shared.webhook.clone();
    let failed = eventually(Duration::from_secs(10), || {
        stats.failed.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    assert!(failed, "given up after webhook.retries_max");
    assert_eq!(seen.lock().expect("lock").requests, 3, "first attempt + 2 retries");
    assert_eq!(stats.retried.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(stats.delivered.load(std::sync::atomic::Ordering::Relaxed), 0);
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_receiver_and_a_full_queue_never_hold_up_ingest() {
    // A port nothing listens on: every attempt is refused, and the long
    // backoff keeps the one delivery task busy with the first alert.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let s = server_with(|c| {
        c.webhook = Webhook {
            url: format!("http://127.0.0.1:{port}/hook"),
            queue_max: 2,
            retries_max: 10,
            retry_backoff_ms: 5_000,
            retry_backoff_max_ms: 5_000,
            timeout_ms: 1_000,
            token: String::new(),
        }
    })
    .await;
    let id = s.enroll("gw-down").await;
    let mut d = s.device(&id);
    assert!(matches!(d.connected().await, Outcome::Connected));
    d.subscribe_ack().await;
    let n_messages = 20u64;
    for seq in 1..=n_messages {
        d.publish(Kind::Alerts, alerts_payload(seq, &["a", "b"])).await;
    }
    assert_eq!(
        d.wait_ack(n_messages).await,
        Some(n_messages),
        "everything stored and acknowledged"
    );
    let n_alerts = 2 * n_messages;
    assert_eq!(
        s.running.shared.store.count(Table::Alerts).await.expect("count"),
        n_alerts as i64
    );
    let stats = s.running.shared.webhook.clone();
    let dropped = stats.dropped.load(std::sync::atomic::Ordering::Relaxed);
    // At most one alert in flight and queue_max queued; the rest dropped.
    assert!(
        dropped >= n_alerts - 1 - 2,
        "dropped {dropped} of {n_alerts} with webhook.queue_max = 2"
    );
    assert_eq!(stats.delivered.load(std::sync::atomic::Ordering::Relaxed), 0);
    let (_, text) = {
        let r = s.http.get(s.url("/metrics")).send().await.expect("metrics");
        (r.status().as_u16(), r.text().await.expect("metrics body"))
    };
    assert_eq!(metric(&text, "molt_webhook_dropped_total"), Some(dropped), "{text}");

    // Shutdown does not wait out the backoff (5 s per retry, 10 retries):
    // the delivery task abandons the alert in flight and counts it and the
    // queued ones as dropped, so every alert is accounted for.
    let started = Instant::now();
    s.running.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        started.elapsed()
    );
    let counted = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (
            counted(&stats.delivered),
            counted(&stats.failed),
            counted(&stats.dropped),
            counted(&stats.queue_depth)
        ),
        (0, 0, n_alerts, 0),
        "(delivered, failed, dropped, queue_depth) after stop"
    );
}

#[tokio::test]
async fn the_config_template_parses_and_bad_webhook_settings_name_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(molt_server::config::CONFIG_FILE);
    std::fs::write(&path, molt_server::config::CONFIG_TEMPLATE).expect("write");
    let config = molt_server::Config::load(&path).expect("the template loads");
    assert!(!config.webhook.enabled(), "the template has no webhook");
    assert_eq!(config.webhook.queue_max, Webhook::default().queue_max);

    let with = |section: &str| {
        let text = molt_server::config::CONFIG_TEMPLATE.replace("url = \"\"\n", section);
        std::fs::write(&path, text).expect("write");
        molt_server::Config::load(&path)
            .map(|c| c.webhook)
            .map_err(|e| e.to_string())
    };
    let ok = with("url = \"https://alerts.example.com/molt\"\n").expect("an https URL");
    assert!(ok.enabled());
    for (section, key) in [
        ("url = \"ftp://alerts.example.com/\"\n", "webhook.url"),
        ("url = \"not a url\"\n", "webhook.url"),
        ("url = \"http://x/\"\nbogus = 1\n", "bogus"),
    ] {
        let e = with(section).expect_err(section);
        assert!(e.contains(key), "{section}: {e}");
    }
    for (setting, key) in [
        ("queue_max = 10000", "webhook.queue_max"),
        ("timeout_ms = 5000", "webhook.timeout_ms"),
        ("retry_backoff_max_ms = 30000", "webhook.retry_backoff_max_ms"),
    ] {
        let zeroed = setting.split(" = ").next().map(|k| format!("{k} = 0")).expect("key");
        let text = molt_server::config::CONFIG_TEMPLATE
            .replace("url = \"\"\n", "url = \"http://127.0.0.1:9/\"\n")
            .replace(setting, &zeroed);
        std::fs::write(&path, text).expect("write");
        let e = molt_server::Config::load(&path).expect_err(setting).to_string();
        assert!(e.contains(key), "{setting}: {e}");
    }
    let debug = format!(
        "{:?}",
        Webhook {
            token: "s3cret".to_owned(),
            ..Webhook::default()
        }
    );
    assert!(!debug.contains("s3cret"), "{debug}");
}
