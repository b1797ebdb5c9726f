//! Telemetry read back: a device's points through the broker and the store,
//! queried over the REST API with and without downsampling; and a store
//! written in the legacy one-row-per-point layout keeping every point.

mod common;

use common::*;
use molt_protocol::{Kind, Limits, Telemetry, TelemetryBuilder};
use molt_server::store::{Store, Table};
use reqwest::Method;
use serde_json::json;

const T0: u64 = 1_700_000_000_000;

/// Two metrics in one message, one value not finite (stored as missing).
fn two_metrics(seq: u64) -> Vec<u8> {
    let mut b = TelemetryBuilder::new("test@1");
    for i in 0..10u64 {
        let t = T0 + seq * 100 + i * 10;
        assert!(b.push(1, t, "temp", (seq * 10 + i) as f64));
        assert!(b.push(2, t, "humidity", if i == 3 { f64::NAN } else { 50.0 }));
    }
    let t: Telemetry = b.finish(seq);
    molt_protocol::encode(&t, &Limits::default()).expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_are_read_back_exactly_and_downsampled() {
    let s = server().await;
    let id = s.enroll("gw-read").await;
    let mut d = s.device(&id);
    assert!(matches!(d.connected().await, Outcome::Connected));
    d.subscribe_ack().await;
    for seq in 1..=3 {
        d.publish(Kind::Telemetry, two_metrics(seq)).await;
    }
    // A resend of seq 2 must not count twice.
    d.publish(Kind::Telemetry, two_metrics(2)).await;
    d.publish(Kind::Telemetry, telemetry_payload(4, 1)).await;
    assert_eq!(d.wait_ack(4).await, Some(4));

    let store = &s.running.shared.store;
    assert_eq!(store.count(Table::Points).await.expect("count"), 3 * 20 + 1);
    assert_eq!(store.duplicate_points().await.expect("dups"), 0);

    let query = |q: String| {
        let s = &s;
        async move {
            let (status, body) = s.api(Method::GET, &format!("/api/v1/telemetry?{q}"), None).await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    // Raw: one bucket per point, in time order across messages (message 4's
    // one point last).
    let raw = query("device=gw-read&metric=temp".into()).await;
    let raw = raw.as_array().expect("array");
    assert_eq!(raw.len(), 31);
    assert_eq!(
        raw[30],
        json!({"t_ms": T0 + 4000, "count": 1, "avg": 4.0, "min": 4.0, "max": 4.0})
    );
    for (k, b) in raw[..30].iter().enumerate() {
        let (seq, i) = (1 + k as u64 / 10, k as u64 % 10);
        assert_eq!(
            b,
            &json!({"t_ms": T0 + seq * 100 + i * 10, "count": 1, "avg": (seq * 10 + i) as f64,
                    "min": (seq * 10 + i) as f64, "max": (seq * 10 + i) as f64}),
        );
    }
    // Downsampled into 100 ms buckets over [seq 2, seq 3): exactly message 2.
    let from = T0 + 200;
    let to = T0 + 300;
    let one = query(format!(
        "device=gw-read&metric=temp&from_ms={from}&to_ms={to}&step_ms=100"
    ))
    .await;
    assert_eq!(
        one,
        json!([{"t_ms": from, "count": 10, "avg": 24.5, "min": 20.0, "max": 29.0}])
    );
    // A missing value counts, but takes no part in avg/min/max.
    let hum = query(format!(
        "device=gw-read&metric=humidity&from_ms={from}&to_ms={to}&step_ms=1000"
    ))
    .await;
    assert_eq!(
        hum,
        json!([{"t_ms": T0, "count": 10, "avg": 50.0, "min": 50.0, "max": 50.0}])
    );
    // Another metric, another device: nothing.
    assert_eq!(query("device=gw-read&metric=pressure".into()).await, json!([]));
    assert_eq!(query("device=gw-other&metric=temp".into()).await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_legacy_point_rows_keeps_every_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path()).await.expect("create"));
    // Rows as a server before chunked points wrote them.
    {
        use sqlx::sqlite::SqliteConnectOptions;
        use sqlx::{ConnectOptions, Connection};
        let mut conn = SqliteConnectOptions::new()
            .filename(dir.path().join(molt_server::store::DB_FILE))
            .connect()
            .await
            .expect("connect");
        let mut tx = conn.begin().await.expect("tx");
        for seq in 1..=3i64 {
            for i in 0..40i64 {
                sqlx::query(
                    "INSERT INTO points (device, seq, metric, sensor, t_ms, value) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind("gw-old")
                .bind(seq)
                .bind(if i % 2 == 0 { "temp" } else { "volts" })
                .bind(i)
                .bind(1_000 * seq + i)
                .bind(if i == 5 { None } else { Some(i as f64) })
                .execute(&mut *tx)
                .await
                .expect("insert");
            }
        }
        tx.commit().await.expect("commit");
        conn.close().await.expect("close");
    }
    let store = Store::open(dir.path()).await.expect("reopen moves the rows");
    assert_eq!(store.count(Table::Points).await.expect("count"), 120);
    assert_eq!(
        store.duplicate_points().await.expect("dups"),
        0,
        "one chunk per message and metric"
    );
    let temp = store
        .telemetry("gw-old", "temp", 0, i64::MAX, 1_000, 100)
        .await
        .expect("query");
    assert_eq!(
        temp.iter().map(|b| (b.t_ms, b.count)).collect::<Vec<_>>(),
        [(1000, 20), (2000, 20), (3000, 20)]
    );
    assert_eq!(temp[0].avg, Some(19.0), "mean of 0, 2, .., 38");
    let volts = store
        .telemetry("gw-old", "volts", 2_000, 3_000, 1, 100)
        .await
        .expect("query");
    assert_eq!(volts.len(), 20);
    assert_eq!(
        volts.iter().filter(|b| b.avg.is_none()).count(),
        1,
        "the missing value stays missing"
    );
    // Opening again finds nothing left to move.
    drop(store);
    let store = Store::open(dir.path()).await.expect("third open");
    assert_eq!(store.count(Table::Points).await.expect("count"), 120);
}
