//! The HTTPS listener's limits: connections that stall in the TLS handshake
//! are closed after `limits.http_handshake_timeout_s`, and while
//! `limits.http_connections_max` connections are open the next one waits
//! instead of being served, then goes through once a slot frees.

mod common;

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;

/// Reads until EOF or `within`; true if the server closed the connection.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await,
        Ok(())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_and_capped() {
    let server = common::server_with(|config| {
        config.limits.http_handshake_timeout_s = 1;
        config.limits.http_connections_max = 2;
    })
    .await;
    let addr = server.running.addrs.https;

    // Two clients connect and send nothing: they hold both slots.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A real request waits for a slot, and gets one when the stalled
    // connections time out.
    let started = Instant::now();
    let (status, _) = server.api(reqwest::Method::GET, "/api/v1/devices", None).await;
    assert_eq!(status, 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "served in {waited:?} while both slots were held"
    );

    // Both stalled connections were closed by the server.
    for stream in &mut stalled {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "a stalled connection stayed open past limits.http_handshake_timeout_s"
        );
    }
}

/// A body or query that cannot be read is refused in the API's own error
/// shape, with a stable code and what was wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_input_gets_the_api_error_shape() {
    let server = common::server().await;
    for (body, content_type, status) in [
        ("{not json", "application/json", 400),
        (r#"{"name": 5}"#, "application/json", 422),
        ("{}", "text/plain", 415),
    ] {
        let response = server
            .http
            .post(server.url("/api/v1/groups"))
            .bearer_auth(&server.admin)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), status, "{body}");
        let error: serde_json::Value = response.json().await.expect("a JSON error document");
        assert_eq!(error["error"]["code"], "body_invalid", "{error}");
        assert!(!error["error"]["message"].as_str().unwrap_or("").is_empty(), "{error}");
    }
    let too_big = "x".repeat(molt_server::config::Limits::default().http_body_bytes_max + 1);
    let response = server
        .http
        .post(server.url("/api/v1/groups"))
        .bearer_auth(&server.admin)
        .header("content-type", "application/json")
        .body(format!("\"{too_big}\""))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 413);
    let error: serde_json::Value = response.json().await.expect("a JSON error document");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("limits.http_body_bytes_max"),
        "{error}"
    );
    // A query missing a parameter.
    let response = server
        .http
        .get(server.url("/api/v1/telemetry?device=gw-1"))
        .bearer_auth(&server.admin)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 400);
    let error: serde_json::Value = response.json().await.expect("a JSON error document");
    assert_eq!(error["error"]["code"], "body_invalid", "{error}");
}
