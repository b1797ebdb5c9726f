//! The OpenAPI document at `/api/v1/openapi.json` describes exactly the
//! routes the server answers under `/api/v1`: no route missing, no extra,
//! no method the server does not take, every reference resolvable.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use reqwest::Method;

/// Every route under `/api/v1`, as the document spells paths (axum's
/// catch-all `{*path}` is `{path}`). A route added to the router is added
/// here, and the test fails until the document has it too.
const API_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/enroll"),
    ("POST", "/api/v1/enrollment-tokens"),
    ("GET", "/api/v1/devices"),
    ("GET", "/api/v1/devices/{id}"),
    ("POST", "/api/v1/devices/{id}/revoke"),
    ("PUT", "/api/v1/devices/{id}/tags"),
    ("PUT", "/api/v1/devices/{id}/desired"),
    ("GET", "/api/v1/groups"),
    ("POST", "/api/v1/groups"),
    ("GET", "/api/v1/groups/{name}"),
    ("DELETE", "/api/v1/groups/{name}"),
    ("PUT", "/api/v1/groups/{name}/devices"),
    ("GET", "/api/v1/alerts"),
    ("PUT", "/api/v1/alerts/{id}/state"),
    ("GET", "/api/v1/telemetry"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/repository"),
    ("POST", "/api/v1/repository/uploads"),
    ("DELETE", "/api/v1/repository/uploads/{id}"),
    ("PUT", "/api/v1/repository/uploads/{id}/files/{path}"),
    ("POST", "/api/v1/repository/uploads/{id}/commit"),
    ("GET", "/api/v1/openapi.json"),
];

/// Routes that take no API token.
const NO_TOKEN: &[(&str, &str)] = &[("POST", "/api/v1/enroll"), ("GET", "/api/v1/openapi.json")];

/// The methods probed on every documented path. (HEAD follows GET in axum.)
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn operations(doc: &serde_json::Value) -> BTreeMap<(String, String), &serde_json::Value> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut out = BTreeMap::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item is an object") {
            let method = method.to_ascii_uppercase();
            if METHODS.contains(&method.as_str()) {
                out.insert((method, path.clone()), operation);
            }
        }
    }
    out
}

/// Every `$ref` in `value`.
fn refs<'v>(value: &'v serde_json::Value, out: &mut Vec<&'v str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", serde_json::Value::String(target)) => out.push(target),
                    _ => refs(value, out),
                }
            }
        }
        serde_json::Value::Array(values) => values.iter().for_each(|value| refs(value, out)),
        _ => {}
    }
}

/// The `{name}`s of a path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_every_api_route_and_nothing_else() {
    let s = server().await;
    // No token: the document describes the API, it grants nothing.
    let response = s.http.get(s.url("/api/v1/openapi.json")).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let doc: serde_json::Value = response.json().await.expect("the document is JSON");
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "OpenAPI version {version:?}");
    assert!(doc["info"]["title"].is_string(), "{}", doc["info"]);

    // Exactly the served routes, each with its methods.
    let operations = operations(&doc);
    let documented: BTreeSet<(String, String)> = operations.keys().cloned().collect();
    let expected: BTreeSet<(String, String)> = API_ROUTES
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(expected.len(), API_ROUTES.len(), "API_ROUTES lists a route twice");
    let missing: Vec<_> = expected.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "served but not documented: {missing:?}; documented but not in API_ROUTES: {extra:?}"
    );
    assert!(
        documented.iter().all(|(_, path)| path.starts_with("/api/v1/")),
        "only the REST API is documented, not /metrics or /repo"
    );

    // Every reference resolves, and the error shape is the server's.
    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    assert!(!targets.is_empty());
    for target in targets {
        let pointer = target.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "dangling reference {target}");
    }
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["properties"]["error"]["$ref"], "#/components/schemas/ErrorDetail");
    let detail = &doc["components"]["schemas"]["ErrorDetail"]["properties"];
    assert!(detail["code"].is_object() && detail["message"].is_object(), "{detail}");
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http", "{bearer}");
    assert_eq!(bearer["scheme"], "bearer", "{bearer}");

    for ((method, path), operation) in &operations {
        let route = format!("{method} {path}");
        // Each path parameter is declared, and nothing else is in the path.
        let declared: BTreeSet<String> = operation["parameters"]
            .as_array()
            .map(|parameters| {
                parameters
                    .iter()
                    .filter(|parameter| parameter["in"] == "path")
                    .filter_map(|parameter| parameter["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(declared, template_params(path), "{route}: path parameters");
        let responses = operation["responses"].as_object().expect("responses");
        assert!(responses.contains_key("200"), "{route}: no 200 response");
        // The document itself is served from memory; every other route can refuse.
        assert!(
            path == "/api/v1/openapi.json"
                || responses.iter().any(|(status, response)| status.starts_with('4')
                    && response["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody"),
            "{route}: no error response with the error shape"
        );
        if NO_TOKEN.contains(&(method.as_str(), path.as_str())) {
            assert!(operation.get("security").is_none(), "{route}: takes no token");
        } else {
            assert_eq!(
                operation["security"],
                serde_json::json!([{ "bearer": [] }]),
                "{route}: needs a token"
            );
            let description = operation["description"].as_str().unwrap_or_default();
            assert!(
                ["viewer", "operator", "admin"]
                    .iter()
                    .any(|role| description.contains(&format!("Least role: {role}"))),
                "{route}: the description names no least role: {description:?}"
            );
            for status in ["401", "403", "500"] {
                assert!(responses.contains_key(status), "{route}: no {status} response");
            }
        }
    }

    // The server takes every documented method of every documented path,
    // and no other: an undocumented method on a documented path is 405.
    let paths: BTreeSet<&String> = operations.keys().map(|(_, path)| path).collect();
    for path in paths {
        let concrete = path
            .replace("{id}", "1")
            .replace("{name}", "g")
            .replace("{path}", "metadata/1.root.json");
        for method in METHODS {
            let status = s
                .http
                .request(Method::from_bytes(method.as_bytes()).expect("method"), s.url(&concrete))
                .send()
                .await
                .expect("request")
                .status()
                .as_u16();
            if operations.contains_key(&(method.to_owned(), path.clone())) {
                assert!(
                    status != 404 && status != 405,
                    "{method} {concrete}: {status}, but the document has {method} {path}"
                );
            } else {
                assert_eq!(status, 405, "{method} {concrete}: served but not documented");
            }
        }
    }
    s.running.stop().await;
}

/// Registering routes through the OpenAPI router kept each route's body
/// limit: `limits.http_body_bytes_max` on the API, none on upload files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_survive_the_openapi_router() {
    let s = server().await;
    let body_max = s.running.shared.config.limits.http_body_bytes_max;
    let names: Vec<String> = (0..body_max / 8).map(|n| format!("gw-{n}")).collect();
    let (status, body) = s
        .api(
            Method::POST,
            "/api/v1/groups",
            Some(serde_json::json!({ "name": "big", "devices": names })),
        )
        .await;
    assert_eq!(status, 413, "{body}");

    let (status, upload) = s.api(Method::POST, "/api/v1/repository/uploads", None).await;
    assert_eq!(status, 200, "{upload}");
    let id = upload["id"].as_str().expect("upload id");
    let file = vec![7u8; body_max * 4];
    let response = s
        .http
        .put(s.url(&format!("/api/v1/repository/uploads/{id}/files/targets/big.bin")))
        .bearer_auth(&s.admin)
        .body(file.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let stored: serde_json::Value = response.json().await.expect("json");
    assert_eq!(
        stored,
        serde_json::json!({ "path": "targets/big.bin", "bytes": file.len() })
    );
    s.running.stop().await;
}
