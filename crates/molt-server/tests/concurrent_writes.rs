//! Writes that race: many devices enrolling at once all succeed. SQLite
//! refuses a deferred transaction that read before another connection
//! committed (`database is locked`), so every write transaction takes the
//! write lock first (`Store::write_tx`).

mod common;

use common::{make_csr, server};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_devices_enroll_at_once() {
    let server = std::sync::Arc::new(server().await);
    let (status, token) = server.token(serde_json::json!({ "ttl_s": 600, "uses": 256 })).await;
    assert_eq!(status, 200, "{token}");
    let token = token["token"].as_str().expect("token").to_owned();
    let csrs: Vec<String> = (0..256).map(|_| make_csr().1).collect();
    let mut tasks = Vec::new();
    for (i, csr) in csrs.into_iter().enumerate() {
        let (server, token) = (server.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            server.enroll_raw(&token, &format!("racer-{i:02}"), &csr).await
        }));
    }
    for task in tasks {
        let (status, body) = task.await.expect("task");
        assert_eq!(status, 200, "{body}");
    }
    let (status, devices) = server.api(reqwest::Method::GET, "/api/v1/devices", None).await;
    assert_eq!(status, 200);
    assert_eq!(devices.as_array().map(Vec::len), Some(256), "{devices}");
}
