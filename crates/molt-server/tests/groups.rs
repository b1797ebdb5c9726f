//! Groups over enrolled devices, and alerts from a real device through
//! the broker to an operator's acknowledgement, each change audited.

mod common;

use common::*;
use molt_protocol::{Alert, Alerts, Kind, Limits, PROTOCOL_VERSION, Severity};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_and_static_groups_follow_the_registry() {
    let s = server().await;
    for (id, site) in [("gw-1", "berlin"), ("gw-2", "berlin"), ("gw-3", "oslo")] {
        s.enroll(id).await;
        let (status, body) = s
            .api(
                Method::PUT,
                &format!("/api/v1/devices/{id}/tags"),
                Some(serde_json::json!({ "site": site })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, g) = s
        .api(
            Method::POST,
            "/api/v1/groups",
            Some(serde_json::json!({ "name": "berlin", "query": "site=berlin" })),
        )
        .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["devices"], serde_json::json!(["gw-1", "gw-2"]));
    // A device tagged later joins the dynamic group at once.
    s.api(
        Method::PUT,
        "/api/v1/devices/gw-3/tags",
        Some(serde_json::json!({ "site": "berlin" })),
    )
    .await;
    let (_, g) = s.api(Method::GET, "/api/v1/groups/berlin", None).await;
    assert_eq!(g["devices"], serde_json::json!(["gw-1", "gw-2", "gw-3"]));

    // A static group; an unknown member refuses the whole change.
    let (status, g) = s
        .api(
            Method::POST,
            "/api/v1/groups",
            Some(serde_json::json!({ "name": "pilot", "devices": ["gw-2"] })),
        )
        .await;
    assert_eq!(status, 200, "{g}");
    let (status, e) = s
        .api(
            Method::PUT,
            "/api/v1/groups/pilot/devices",
            Some(serde_json::json!(["gw-1", "gw-404"])),
        )
        .await;
    assert_eq!(status, 404, "{e}");
    let (_, g) = s.api(Method::GET, "/api/v1/groups/pilot", None).await;
    assert_eq!(g["devices"], serde_json::json!(["gw-2"]), "nothing changed");
    let (status, g) = s
        .api(
            Method::PUT,
            "/api/v1/groups/pilot/devices",
            Some(serde_json::json!(["gw-3", "gw-1"])),
        )
        .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["devices"], serde_json::json!(["gw-1", "gw-3"]));

    // Bad input: both kinds at once, a bad name, too many query terms.
    for (body, code) in [
        (
            serde_json::json!({ "name": "x", "query": "a=1", "devices": ["gw-1"] }),
            "group_invalid",
        ),
        (
            serde_json::json!({ "name": "no spaces", "query": "a=1" }),
            "group_name_invalid",
        ),
        (
            serde_json::json!({ "name": "wide", "query": (0..17).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",") }),
            "limit_exceeded",
        ),
    ] {
        let (status, e) = s.api(Method::POST, "/api/v1/groups", Some(body.clone())).await;
        assert_eq!((status, e["error"]["code"].as_str()), (400, Some(code)), "{body}: {e}");
    }
    let (_, audit) = s.api(Method::GET, "/api/v1/audit", None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|a| a["action"].as_str())
        .filter(|a| a.starts_with("group."))
        .collect();
    assert_eq!(actions, ["group.members", "group.create", "group.create"]);
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_from_a_device_is_acknowledged_and_resolved() {
    let s = server().await;
    let id = s.enroll("gw-7").await;
    let mut d = s.device(&id);
    assert!(matches!(d.connected().await, Outcome::Connected));
    d.subscribe_ack().await;
    let alerts = Alerts {
        v: PROTOCOL_VERSION,
        seq: 1,
        policy: "threshold@1".into(),
        alerts: vec![Alert {
            sensor: 3,
            t: 1_700_000_000_000,
            severity: Severity::Critical,
            message: "too hot".into(),
        }],
    };
    d.publish(
        Kind::Alerts,
        molt_protocol::encode(&alerts, &Limits::default()).expect("encode"),
    )
    .await;
    assert_eq!(d.wait_ack(1).await, Some(1), "stored and acknowledged");

    let (_, open) = s.api(Method::GET, "/api/v1/alerts?state=open", None).await;
    let open = open.as_array().expect("alerts").clone();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["message"], "too hot");
    let alert_id = open[0]["id"].as_i64().expect("id");
    for state in ["acknowledged", "resolved"] {
        let (status, a) = s
            .api(
                Method::PUT,
                &format!("/api/v1/alerts/{alert_id}/state"),
                Some(serde_json::json!({ "state": state })),
            )
            .await;
        assert_eq!((status, a["state"].as_str()), (200, Some(state)), "{a}");
    }
    let (_, open) = s.api(Method::GET, "/api/v1/alerts?state=open", None).await;
    assert_eq!(open, serde_json::json!([]));
    let (status, e) = s
        .api(
            Method::PUT,
            &format!("/api/v1/alerts/{alert_id}/state"),
            Some(serde_json::json!({ "state": "snoozed" })),
        )
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("alert_state_invalid"))
    );
    s.running.stop().await;
}
