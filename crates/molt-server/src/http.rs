//! HTTPS: device enrollment, the REST API under `/api/v1`, and `/metrics`.
//!
//! Every API route names the least role it needs (viewer < operator <
//! admin); a token's role comes from the `api_tokens` table. Every change
//! is written to the audit log with who, what, when, before and after.
//! Errors are `{ "error": { "code", "message" } }` with stable codes;
//! internals are logged, never returned.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::groups;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::ingest::tokio_util_shutdown::Shutdown;
use crate::store::now_ms;
use crate::{Error, Shared};

/// API roles, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads everything except the audit log.
    Viewer,
    /// Also changes devices, groups, tokens, desired state, alerts.
    Operator,
    /// Also reads the audit log and makes API tokens.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Makes an API token with `role`; returns the token (only its hash is stored).
pub async fn create_api_token(
    store: &crate::store::Store,
    name: &str,
    role: Role,
    actor: &str,
) -> Result<String, Error> {
    let token = format!("molt_{}", crate::random_hex(24));
    sqlx::query("INSERT INTO api_tokens (token_hash, name, role, created_ms) VALUES ($1, $2, $3, $4)")
        .bind(hash_token(&token))
        .bind(name)
        .bind(role.name())
        .bind(now_ms())
        .execute(store.pool())
        .await?;
    store
        .audit(
            actor,
            "api_token.create",
            name,
            None,
            Some(&serde_json::json!({ "role": role.name() })),
        )
        .await?;
    Ok(token)
}

/// An error response.
pub struct ApiError(StatusCode, Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Refused { code, .. } if code.starts_with("unauthorized") => StatusCode::UNAUTHORIZED,
            Error::Refused { code, .. } if code.starts_with("forbidden") => StatusCode::FORBIDDEN,
            Error::Refused { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0 == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.1, "request failed");
        }
        let body = serde_json::json!({ "error": { "code": self.1.code(), "message": self.1.public_message() } });
        (self.0, Json(body)).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;
type St = State<Arc<Shared>>;

/// Who called, with which role.
pub(crate) struct Caller {
    pub(crate) name: String,
}

pub(crate) async fn authorize(shared: &Shared, headers: &HeaderMap, need: Role) -> Result<Caller, ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Error::refused(
                "unauthorized",
                "missing `Authorization: Bearer TOKEN` (set MOLT_TOKEN or --token-file)",
            )
        })?;
    let row = sqlx::query("SELECT name, role FROM api_tokens WHERE token_hash = $1")
        .bind(hash_token(token))
        .fetch_optional(shared.store.pool())
        .await
        .map_err(Error::from)?
        .ok_or_else(|| Error::refused("unauthorized", "unknown API token"))?;
    let name: String = row.try_get(0).map_err(Error::from)?;
    let role = Role::parse(&row.try_get::<String, _>(1).map_err(Error::from)?)
        .ok_or_else(|| Error::refused("unauthorized", "token has an unknown role"))?;
    if role < need {
        return Err(Error::refused(
            "forbidden",
            format!(
                "this route needs the {} role; the token `{name}` is {}",
                need.name(),
                role.name()
            ),
        )
        .into());
    }
    Ok(Caller { name })
}

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/enrollment-tokens", post(create_enrollment_token))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}", get(show_device))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device))
        .route("/api/v1/devices/{id}/tags", put(tag_device))
        .route("/api/v1/devices/{id}/desired", put(set_desired))
        .route("/api/v1/groups", get(groups::list).post(groups::create))
        .route("/api/v1/groups/{name}", get(groups::show).delete(groups::delete))
        .route("/api/v1/groups/{name}/devices", put(groups::set_members))
        .route("/api/v1/alerts", get(groups::alerts))
        .route("/api/v1/alerts/{id}/state", put(groups::set_alert_state))
        .route("/api/v1/telemetry", get(telemetry))
        .route("/api/v1/audit", get(audit))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(shared.config.limits.http_body_bytes_max))
        .merge(crate::releases::router(&shared))
        .with_state(shared)
}

/// `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Deserialize)]
struct TokenRequest {
    ttl_s: u64,
    #[serde(default = "one")]
    uses: u32,
    #[serde(default)]
    hardware_class: Option<String>,
    #[serde(default)]
    tags: serde_json::Map<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize)]
struct TokenResponse {
    id: String,
    token: String,
    expires_ms: i64,
    uses: u32,
}

async fn create_enrollment_token(
    State(shared): St,
    headers: HeaderMap,
    Json(req): Json<TokenRequest>,
) -> ApiResult<TokenResponse> {
    let caller = authorize(&shared, &headers, Role::Operator).await?;
    let limits = &shared.config.limits;
    if req.ttl_s == 0 || req.ttl_s > limits.enrollment_token_ttl_max_s {
        return Err(Error::refused(
            "limit_exceeded",
            format!(
                "ttl_s must be 1..={} (limits.enrollment_token_ttl_max_s)",
                limits.enrollment_token_ttl_max_s
            ),
        )
        .into());
    }
    if req.uses == 0 || req.uses > limits.enrollment_token_uses_max {
        return Err(Error::refused(
            "limit_exceeded",
            format!(
                "uses must be 1..={} (limits.enrollment_token_uses_max)",
                limits.enrollment_token_uses_max
            ),
        )
        .into());
    }
    let id = crate::random_hex(8);
    let token = format!("molt_enroll_{}", crate::random_hex(24));
    let expires_ms = now_ms() + (req.ttl_s as i64) * 1000;
    let tags = serde_json::Value::Object(req.tags);
    sqlx::query(
        "INSERT INTO enrollment_tokens (id, token_hash, created_ms, expires_ms, uses_max, hardware_class, tags, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(hash_token(&token))
    .bind(now_ms())
    .bind(expires_ms)
    .bind(i64::from(req.uses))
    .bind(&req.hardware_class)
    .bind(tags.to_string())
    .bind(&caller.name)
    .execute(shared.store.pool())
    .await
    .map_err(Error::from)?;
    let after = serde_json::json!({ "expires_ms": expires_ms, "uses": req.uses, "hardware_class": req.hardware_class, "tags": tags });
    shared
        .store
        .audit(&caller.name, "enrollment_token.create", &id, None, Some(&after))
        .await?;
    Ok(Json(TokenResponse {
        id,
        token,
        expires_ms,
        uses: req.uses,
    }))
}

/// `POST /api/v1/enroll`: a device presents its token and CSR once.
#[derive(Debug, Deserialize)]
pub struct EnrollRequest {
    /// The enrollment token.
    pub token: String,
    /// The device id it asks for (becomes the certificate CN).
    pub device_id: String,
    /// PKCS#10 CSR, PEM.
    pub csr_pem: String,
}

/// What an enrolled device receives.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device id (CN).
    pub device_id: String,
    /// The device's certificate, PEM.
    pub certificate_pem: String,
    /// The CA chain to trust for the broker and HTTPS, PEM.
    pub ca_chain_pem: String,
    /// Where to connect (`mqtts://host:port`).
    pub broker: String,
    /// The pinned TUF root (JSON), when the server hosts releases.
    pub tuf_root: Option<serde_json::Value>,
    /// Where the server serves its TUF repository (`https://HOST:PORT/repo/`).
    #[serde(default)]
    pub repository: Option<String>,
}

async fn enroll(State(shared): St, Json(req): Json<EnrollRequest>) -> ApiResult<EnrollResponse> {
    let store = &shared.store;
    let device = molt_protocol::DeviceId::parse(&req.device_id)
        .map_err(|e| Error::refused("device_id_invalid", format!("device id {:?}: {e}", req.device_id)))?;
    // Take one use of the token atomically: expired or used-up tokens
    // change nothing.
    let row = sqlx::query(
        "UPDATE enrollment_tokens SET uses = uses + 1 WHERE token_hash = $1 AND uses < uses_max AND expires_ms > $2 \
         RETURNING id, hardware_class, tags",
    )
    .bind(hash_token(&req.token))
    .bind(now_ms())
    .fetch_optional(store.pool())
    .await
    .map_err(Error::from)?;
    let Some(row) = row else {
        let why = sqlx::query("SELECT id, uses, uses_max, expires_ms FROM enrollment_tokens WHERE token_hash = $1")
            .bind(hash_token(&req.token))
            .fetch_optional(store.pool())
            .await
            .map_err(Error::from)?;
        let (code, message, id) = match why {
            None => (
                "enrollment_token_unknown",
                "unknown enrollment token".to_owned(),
                "?".to_owned(),
            ),
            Some(r) => {
                let id: String = r.try_get(0).map_err(Error::from)?;
                if r.try_get::<i64, _>(3).map_err(Error::from)? <= now_ms() {
                    (
                        "enrollment_token_expired",
                        "the enrollment token has expired; ask for a new one (`molt device enroll`)".to_owned(),
                        id,
                    )
                } else {
                    (
                        "enrollment_token_used_up",
                        "the enrollment token has no uses left; ask for a new one (`molt device enroll`)".to_owned(),
                        id,
                    )
                }
            }
        };
        store
            .audit(
                "device",
                "enroll.refused",
                &id,
                None,
                Some(&serde_json::json!({ "device": req.device_id, "code": code })),
            )
            .await?;
        return Err(Error::refused(code, message).into());
    };
    let token_id: String = row.try_get(0).map_err(Error::from)?;
    let hardware_class: Option<String> = row.try_get(1).map_err(Error::from)?;
    let tags: String = row.try_get(2).map_err(Error::from)?;
    let tags: serde_json::Value = serde_json::from_str(&tags).unwrap_or(serde_json::json!({}));
    let result = async {
        let signed = shared
            .ca
            .sign_csr(&req.csr_pem, device.as_str(), shared.config.limits.device_cert_days)?;
        store
            .insert_device(
                device.as_str(),
                hardware_class.as_deref().unwrap_or(""),
                &tags,
                &signed.serial,
                &signed.key_fingerprint,
            )
            .await?;
        Ok::<_, Error>(signed)
    }
    .await;
    let signed = match result {
        Ok(s) => s,
        Err(e) => {
            // Give the use back: a refused CSR did not enroll anything.
            let _ = sqlx::query("UPDATE enrollment_tokens SET uses = uses - 1 WHERE id = $1")
                .bind(&token_id)
                .execute(store.pool())
                .await;
            store
                .audit(
                    "device",
                    "enroll.refused",
                    &token_id,
                    None,
                    Some(&serde_json::json!({ "device": req.device_id, "code": e.code() })),
                )
                .await?;
            return Err(e.into());
        }
    };
    shared.gate.allow(device.as_str());
    store
        .audit(
            &format!("token:{token_id}"),
            "device.enroll",
            device.as_str(),
            None,
            Some(&serde_json::json!({ "serial": signed.serial, "hardware_class": hardware_class, "tags": tags })),
        )
        .await?;
    let broker = if shared.config.listen.advertised_mqtt.is_empty() {
        format!("mqtts://{}", shared.addrs.mqtt)
    } else {
        shared.config.listen.advertised_mqtt.clone()
    };
    let tuf_root = std::fs::read_to_string(shared.config.data_dir.join(crate::TUF_ROOT_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    Ok(Json(EnrollResponse {
        device_id: device.as_str().to_owned(),
        certificate_pem: signed.cert_pem,
        ca_chain_pem: shared.ca.cert_pem.clone(),
        repository: tuf_root.as_ref().map(|_| crate::releases::repository_url(&shared)),
        broker,
        tuf_root,
    }))
}

async fn list_devices(State(shared): St, headers: HeaderMap) -> ApiResult<Vec<crate::store::DeviceRow>> {
    authorize(&shared, &headers, Role::Viewer).await?;
    Ok(Json(shared.store.devices().await?))
}

async fn show_device(
    State(shared): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<crate::store::DeviceRow> {
    authorize(&shared, &headers, Role::Viewer).await?;
    Ok(Json(shared.store.device(&id).await?))
}

async fn revoke_device(
    State(shared): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<crate::store::DeviceRow> {
    let caller = authorize(&shared, &headers, Role::Operator).await?;
    let before = shared.store.revoke(&id).await?;
    shared.gate.revoke(&id).await;
    let after = shared.store.device(&id).await?;
    shared
        .store
        .audit(
            &caller.name,
            "device.revoke",
            &id,
            serde_json::to_value(&before).ok().as_ref(),
            serde_json::to_value(&after).ok().as_ref(),
        )
        .await?;
    Ok(Json(after))
}

async fn tag_device(
    State(shared): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(tags): Json<serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<crate::store::DeviceRow> {
    let caller = authorize(&shared, &headers, Role::Operator).await?;
    let tags = serde_json::Value::Object(tags);
    let before = shared.store.set_tags(&id, &tags).await?;
    let after = shared.store.device(&id).await?;
    shared
        .store
        .audit(&caller.name, "device.tag", &id, Some(&before.tags), Some(&after.tags))
        .await?;
    Ok(Json(after))
}

#[derive(Debug, Deserialize)]
struct DesiredRequest {
    release: u64,
    #[serde(default)]
    rollout: Option<String>,
}

async fn set_desired(
    State(shared): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<DesiredRequest>,
) -> ApiResult<crate::store::DeviceRow> {
    let caller = authorize(&shared, &headers, Role::Operator).await?;
    let before = shared.store.device(&id).await?;
    let generation = shared
        .store
        .set_desired(&id, req.release, req.rollout.as_deref())
        .await?;
    let desired = molt_protocol::Desired {
        v: molt_protocol::PROTOCOL_VERSION,
        generation: generation as u64,
        release: req.release,
        rollout: req.rollout.clone(),
    };
    // The device may be offline: it gets the desired state again when it
    // subscribes (see `presence`).
    if let Err(e) = shared.downlink.send_desired(&id, &desired).await {
        tracing::warn!(device = %id, error = %e, "desired state not sent now; it is sent on the device's next subscribe");
    }
    let after = shared.store.device(&id).await?;
    shared
        .store
        .audit(
            &caller.name,
            "device.desired",
            &id,
            Some(&serde_json::json!({ "generation": before.desired_generation, "release": before.desired_release })),
            Some(&serde_json::json!({ "generation": generation, "release": req.release, "rollout": req.rollout })),
        )
        .await?;
    Ok(Json(after))
}

#[derive(Debug, Deserialize)]
struct TelemetryQuery {
    device: String,
    metric: String,
    #[serde(default)]
    from_ms: Option<i64>,
    #[serde(default)]
    to_ms: Option<i64>,
    /// Bucket width for downsampling (avg/min/max/count per bucket).
    #[serde(default)]
    step_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Bucket {
    t_ms: i64,
    count: i64,
    avg: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
}

const TELEMETRY_BUCKETS_MAX: i64 = 10_000;

async fn telemetry(State(shared): St, headers: HeaderMap, Query(q): Query<TelemetryQuery>) -> ApiResult<Vec<Bucket>> {
    authorize(&shared, &headers, Role::Viewer).await?;
    let from = q.from_ms.unwrap_or(0);
    let to = q.to_ms.unwrap_or(i64::MAX);
    let step = q.step_ms.unwrap_or(1).max(1);
    let rows = sqlx::query(
        "SELECT (t_ms / $1) * $1 AS b, COUNT(*), AVG(value), MIN(value), MAX(value) FROM points \
         WHERE device = $2 AND metric = $3 AND t_ms >= $4 AND t_ms < $5 GROUP BY b ORDER BY b LIMIT $6",
    )
    .bind(step)
    .bind(&q.device)
    .bind(&q.metric)
    .bind(from)
    .bind(to)
    .bind(TELEMETRY_BUCKETS_MAX)
    .fetch_all(shared.store.pool())
    .await
    .map_err(Error::from)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Bucket {
            t_ms: r.try_get(0).map_err(Error::from)?,
            count: r.try_get(1).map_err(Error::from)?,
            avg: r.try_get(2).map_err(Error::from)?,
            min: r.try_get(3).map_err(Error::from)?,
            max: r.try_get(4).map_err(Error::from)?,
        });
    }
    Ok(Json(out))
}

#[derive(Debug, Serialize)]
struct AuditRecord {
    id: i64,
    t_ms: i64,
    actor: String,
    action: String,
    target: String,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
}

async fn audit(State(shared): St, headers: HeaderMap) -> ApiResult<Vec<AuditRecord>> {
    authorize(&shared, &headers, Role::Admin).await?;
    let rows = sqlx::query(
        "SELECT id, t_ms, actor, action, target, before_json, after_json FROM audit ORDER BY id DESC LIMIT 1000",
    )
    .fetch_all(shared.store.pool())
    .await
    .map_err(Error::from)?;
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(AuditRecord {
            id: r.try_get(0).map_err(Error::from)?,
            t_ms: r.try_get(1).map_err(Error::from)?,
            actor: r.try_get(2).map_err(Error::from)?,
            action: r.try_get(3).map_err(Error::from)?,
            target: r.try_get(4).map_err(Error::from)?,
            before: parse(r.try_get(5).map_err(Error::from)?),
            after: parse(r.try_get(6).map_err(Error::from)?),
        });
    }
    Ok(Json(out))
}

async fn metrics(State(shared): St) -> String {
    use std::fmt::Write;
    let i = &shared.ingest;
    let l = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# TYPE molt_connections gauge\nmolt_connections {}",
        l(&shared.gate.connected)
    );
    let _ = writeln!(
        out,
        "# TYPE molt_messages_in_total counter\nmolt_messages_in_total {}",
        l(&i.messages_in)
    );
    let _ = writeln!(
        out,
        "# TYPE molt_messages_out_total counter\nmolt_messages_out_total {}",
        l(&i.messages_out)
    );
    let _ = writeln!(
        out,
        "# TYPE molt_messages_stored_total counter\nmolt_messages_stored_total {}",
        l(&i.messages_stored)
    );
    let _ = writeln!(
        out,
        "# TYPE molt_duplicates_total counter\nmolt_duplicates_total {}",
        l(&i.duplicates)
    );
    let _ = writeln!(
        out,
        "# TYPE molt_points_stored_total counter\nmolt_points_stored_total {}",
        l(&i.points_stored)
    );
    let _ = writeln!(
        out,
        "# TYPE molt_ingest_queue_depth gauge\nmolt_ingest_queue_depth {}",
        l(&i.queue_depth)
    );
    let _ = writeln!(
        out,
        "# TYPE molt_ingest_lag_ms gauge\nmolt_ingest_lag_ms {}",
        l(&i.lag_ms)
    );
    let _ = writeln!(out, "# TYPE molt_refusals_total counter");
    for (reason, n) in shared.gate.refusals.by_reason() {
        let _ = writeln!(out, "molt_refusals_total{{reason=\"{reason}\"}} {n}");
    }
    let _ = writeln!(out, "molt_refusals_total{{reason=\"decode\"}} {}", l(&i.decode_refused));
    let w = &shared.webhook;
    for (name, kind, value) in [
        ("molt_webhook_delivered_total", "counter", l(&w.delivered)),
        ("molt_webhook_retried_total", "counter", l(&w.retried)),
        ("molt_webhook_failed_total", "counter", l(&w.failed)),
        ("molt_webhook_dropped_total", "counter", l(&w.dropped)),
        ("molt_webhook_queue_depth", "gauge", l(&w.queue_depth)),
        ("molt_repository_pushes_total", "counter", l(&shared.releases.pushes)),
        (
            "molt_repository_pushes_refused_total",
            "counter",
            l(&shared.releases.pushes_refused),
        ),
        (
            "molt_repository_timestamps_resigned_total",
            "counter",
            l(&shared.releases.resigned),
        ),
    ] {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
    }
    out
}

/// Keeps the registry's online state and re-sends the desired state when
/// a device (re)subscribes.
pub async fn presence(shared: Arc<Shared>, mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, bool)>) {
    while let Some((device, online)) = rx.recv().await {
        if let Err(e) = shared.store.set_online(&device, online).await {
            tracing::warn!(device = %device, error = %e, "presence not recorded");
        }
        if online
            && let Ok(row) = shared.store.device(&device).await
            && let Some(release) = row.desired_release
        {
            let desired = molt_protocol::Desired {
                v: molt_protocol::PROTOCOL_VERSION,
                generation: row.desired_generation as u64,
                release: release as u64,
                rollout: row.desired_rollout,
            };
            let _ = shared.downlink.send_desired(&device, &desired).await;
        }
    }
}

/// Serves HTTPS on `listener` until `shutdown`.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener, mut shutdown: Shutdown) {
    let tls = match tls_config(&shared) {
        Ok(c) => tokio_rustls::TlsAcceptor::from(Arc::new(c)),
        Err(e) => {
            tracing::error!(error = %e, "HTTPS not started");
            return;
        }
    };
    let app = router(shared.clone());
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        let tls = tls.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::debug!(%peer, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn tls_config(shared: &Shared) -> Result<rustls::ServerConfig, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let dir = &shared.config.data_dir;
    let certs = CertificateDer::pem_file_iter(dir.join(crate::ca::SERVER_CERT))
        .map_err(|e| Error::Cert(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Cert(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(dir.join(crate::ca::SERVER_KEY)).map_err(|e| Error::Cert(e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Cert(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Cert(e.to_string()))
}
