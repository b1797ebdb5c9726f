//! Release hosting's upload API on bad input: paths outside an upload,
//! unknown uploads, too many open uploads, and uploads left by a push that
//! died, which expire. (`molt-cli`'s `tests/it/fleet.rs` pushes real
//! repositories through it.)

mod common;

use std::time::Duration;

use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_bounded_checked_and_expire() {
    let server = common::server_with(|config| {
        config.repository.uploads_max = 1;
        config.repository.upload_idle_timeout_s = 1;
    })
    .await;
    let (status, started) = server.api(Method::POST, "/api/v1/repository/uploads", None).await;
    assert_eq!(status, 200, "{started}");
    let id = started["id"].as_str().expect("an upload id").to_owned();

    // Paths that would leave the upload, or are not metadata or targets.
    for path in [
        "..%2Fescape.json",
        "metadata/..%2F..%2Fx.json",
        "keys/root.pem",
        "metadata/.hidden.json",
        "targets",
    ] {
        let response = server
            .http
            .put(server.url(&format!("/api/v1/repository/uploads/{id}/files/{path}")))
            .bearer_auth(&server.admin)
            .body("{}")
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "path_invalid", "{path}: {body}");
    }
    // An unknown upload.
    let (status, body) = server
        .api(
            Method::POST,
            "/api/v1/repository/uploads/00000000000000000000000000000000/commit",
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // One upload is open, the most this server keeps.
    let (status, body) = server.api(Method::POST, "/api/v1/repository/uploads", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("repository.uploads_max"),
        "{body}"
    );

    // Left alone past repository.upload_idle_timeout_s, it is removed when
    // the next upload starts.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = server.api(Method::POST, "/api/v1/repository/uploads", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .api(Method::POST, &format!("/api/v1/repository/uploads/{id}/commit"), None)
        .await;
    assert_eq!(status, 404, "the expired upload is gone: {body}");
}
