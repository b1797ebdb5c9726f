//! HTTPS: device enrollment, the REST API under `/api/v1`, and `/metrics`.
//!
//! Every API route names the least role it needs (viewer < operator <
//! admin); a token's role comes from the `api_tokens` table. Every change
//! is written to the audit log with who, what, when, before and after.
//! Errors are `{ "error": { "code", "message" } }` with stable codes;
//! internals are logged, never returned.
//!
//! The OpenAPI document at `/api/v1/openapi.json` is generated from the
//! handlers' `#[utoipa::path]` annotations as [`router`] registers them,
//! so a route cannot be served without being described.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::groups;
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
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.1.code().to_owned(),
                message: self.1.public_message(),
            },
        };
        (self.0, Json(body)).into_response()
    }
}

/// The body of every error response; the OpenAPI document describes it
/// from this type, so the description is the serialization.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable code for programs, e.g. `limit_exceeded`, `not_found`, `forbidden`.
    code: String,
    /// For people: names the limit or the next step, never internals.
    message: String,
}

/// The responses every route behind a token may give besides its own:
/// `401 unauthorized`, `403 forbidden` and `500 internal`, each an
/// [`ErrorBody`]. Named in each handler's `responses(...)`.
pub(crate) struct TokenRefusals;

impl utoipa::IntoResponses for TokenRefusals {
    fn responses() -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        [
            (
                "401",
                "`unauthorized`: no `Authorization: Bearer TOKEN` header, or an unknown token",
            ),
            (
                "403",
                "`forbidden`: the token's role is below the least role this route needs",
            ),
            ("500", "`internal`: the server failed; its log has the cause"),
        ]
        .into_iter()
        .map(|(status, description)| (status.to_owned(), error_response(description).into()))
        .collect()
    }
}

fn error_response(description: &str) -> utoipa::openapi::response::Response {
    let body = utoipa::openapi::ContentBuilder::new()
        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
        .build();
    utoipa::openapi::ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
        .build()
}

/// The name of the bearer-token security scheme in the document.
const BEARER: &str = "bearer";

/// What the document says beyond the handlers: its title and the bearer
/// token scheme. The paths come from [`router`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "molt fleet server",
        description = "The REST API of `molt server`. Routes behind a token name the least role they need \
                       (viewer < operator < admin); errors are `{ \"error\": { \"code\", \"message\" } }`. \
                       A body that is not the JSON a route takes is refused before the route runs, \
                       with 400, 415 or 422 and a plain-text message."
    ),
    modifiers(&BearerScheme),
    components(schemas(ErrorBody, ErrorDetail))
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API token (`molt_...`) with its role: viewer, operator or admin. \
                 `molt server init` writes the first admin token to `admin.token`.",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;

/// A JSON request body, like axum's `Json`, but a body that cannot be read
/// is answered in the API's error shape (`body_invalid`, with what was
/// wrong), not with axum's plain text.
pub struct Body<T>(
    /// The parsed body.
    pub T,
);

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Body<T>, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(refused_input(rejection.status(), rejection.body_text())),
        }
    }
}

/// Query parameters, like axum's `Query`, refused in the API's error shape.
pub struct Params<T>(
    /// The parsed parameters.
    pub T,
);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Params<T>, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Params(value)),
            Err(rejection) => Err(refused_input(rejection.status(), rejection.body_text())),
        }
    }
}

fn refused_input(status: StatusCode, text: String) -> ApiError {
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("{text} (limits.http_body_bytes_max)")
    } else {
        text
    };
    ApiError(status, Error::refused("body_invalid", message))
}
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

/// The router, and with it the OpenAPI document.
///
/// Every `/api/v1` route is registered through `routes!`, which takes its
/// path and methods from the handler's `#[utoipa::path]`, so the document
/// lists exactly what is served. `/metrics` and `/repo/` are not part of
/// the REST API and stay out of it.
pub fn router(shared: Arc<Shared>) -> Router {
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(enroll))
        .routes(routes!(create_enrollment_token))
        .routes(routes!(list_devices))
        .routes(routes!(show_device))
        .routes(routes!(revoke_device))
        .routes(routes!(tag_device))
        .routes(routes!(set_desired))
        .routes(routes!(groups::list, groups::create))
        .routes(routes!(groups::show, groups::delete))
        .routes(routes!(groups::set_members))
        .routes(routes!(groups::alerts))
        .routes(routes!(groups::set_alert_state))
        .routes(routes!(telemetry))
        .routes(routes!(audit))
        .routes(routes!(openapi_json))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(shared.config.limits.http_body_bytes_max))
        .merge(crate::releases::router(&shared))
        .split_for_parts();
    router
        .layer(Extension(Arc::new(openapi_paths(openapi))))
        .with_state(shared)
}

/// OpenAPI has no catch-all parameter: axum's `{*path}` is written
/// `{path}` in the document (a string that may hold `/`).
fn openapi_paths(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    openapi.paths.paths = std::mem::take(&mut openapi.paths.paths)
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    openapi
}

/// This document.
///
/// No token needed: it describes the API, it grants nothing.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 document of this API", body = Object)),
)]
async fn openapi_json(Extension(openapi): Extension<Arc<utoipa::openapi::OpenApi>>) -> Json<utoipa::openapi::OpenApi> {
    Json(openapi.as_ref().clone())
}

/// `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Deserialize, ToSchema)]
struct TokenRequest {
    /// Lifetime, 1 to `limits.enrollment_token_ttl_max_s` seconds.
    ttl_s: u64,
    /// Enrollments it allows, 1 to `limits.enrollment_token_uses_max`.
    #[serde(default = "one")]
    #[schema(default = 1)]
    uses: u32,
    /// The hardware class devices enrolled with it get.
    #[serde(default)]
    hardware_class: Option<String>,
    /// Tags devices enrolled with it get.
    #[serde(default)]
    #[schema(value_type = Object)]
    tags: serde_json::Map<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}

/// A new enrollment token.
#[derive(Debug, Serialize, ToSchema)]
struct TokenResponse {
    /// Its id, as the audit log names it.
    id: String,
    /// The secret a device presents at `POST /api/v1/enroll`; shown once.
    token: String,
    /// When it expires (ms since the epoch).
    expires_ms: i64,
    /// Enrollments it allows.
    uses: u32,
}

/// Makes an enrollment token.
///
/// Least role: operator.
#[utoipa::path(
    post,
    path = "/api/v1/enrollment-tokens",
    tag = "devices",
    security(("bearer" = [])),
    request_body = TokenRequest,
    responses(
        (status = 200, description = "the token", body = TokenResponse),
        (status = 400, description = "`limit_exceeded`: ttl_s or uses out of range", body = ErrorBody),
        TokenRefusals,
    ),
)]
async fn create_enrollment_token(
    State(shared): St,
    headers: HeaderMap,
    Body(req): Body<TokenRequest>,
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
#[derive(Debug, Deserialize, ToSchema)]
pub struct EnrollRequest {
    /// The enrollment token.
    pub token: String,
    /// The device id it asks for (becomes the certificate CN).
    pub device_id: String,
    /// PKCS#10 CSR, PEM.
    pub csr_pem: String,
}

/// What an enrolled device receives.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
    #[schema(value_type = Option<Object>)]
    pub tuf_root: Option<serde_json::Value>,
    /// Where the server serves its TUF repository (`https://HOST:PORT/repo/`).
    #[serde(default)]
    pub repository: Option<String>,
}

/// Enrolls a device: an enrollment token and a CSR buy a certificate.
///
/// No API token: the enrollment token in the body is the credential.
#[utoipa::path(
    post,
    path = "/api/v1/enroll",
    tag = "devices",
    request_body = EnrollRequest,
    responses(
        (status = 200, description = "the device's certificate and where to connect", body = EnrollResponse),
        (
            status = 400,
            description = "`device_id_invalid`, `enrollment_token_unknown`, `enrollment_token_expired`, \
                           `enrollment_token_used_up`, or a refused CSR",
            body = ErrorBody,
        ),
        (status = 500, description = "`internal`: the server failed; its log has the cause", body = ErrorBody),
    ),
)]
async fn enroll(State(shared): St, Body(req): Body<EnrollRequest>) -> ApiResult<EnrollResponse> {
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

/// Lists every device.
///
/// Least role: viewer.
#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    security(("bearer" = [])),
    responses((status = 200, description = "every device", body = [crate::store::DeviceRow]), TokenRefusals),
)]
async fn list_devices(State(shared): St, headers: HeaderMap) -> ApiResult<Vec<crate::store::DeviceRow>> {
    authorize(&shared, &headers, Role::Viewer).await?;
    Ok(Json(shared.store.devices().await?))
}

/// Shows one device.
///
/// Least role: viewer.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the device id")),
    responses(
        (status = 200, description = "the device", body = crate::store::DeviceRow),
        (status = 404, description = "`not_found`: no such device", body = ErrorBody),
        TokenRefusals,
    ),
)]
async fn show_device(
    State(shared): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<crate::store::DeviceRow> {
    authorize(&shared, &headers, Role::Viewer).await?;
    Ok(Json(shared.store.device(&id).await?))
}

/// Revokes a device: the broker refuses it from now on.
///
/// Least role: operator.
#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/revoke",
    tag = "devices",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the device id")),
    responses(
        (status = 200, description = "the device, revoked", body = crate::store::DeviceRow),
        (status = 404, description = "`not_found`: no such device", body = ErrorBody),
        TokenRefusals,
    ),
)]
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

/// Replaces a device's tags.
///
/// Least role: operator.
#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/tags",
    tag = "devices",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the device id")),
    request_body(content = Object, description = "the new tags, a JSON object"),
    responses(
        (status = 200, description = "the device with its new tags", body = crate::store::DeviceRow),
        (status = 404, description = "`not_found`: no such device", body = ErrorBody),
        TokenRefusals,
    ),
)]
async fn tag_device(
    State(shared): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(tags): Body<serde_json::Map<String, serde_json::Value>>,
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

/// `PUT /api/v1/devices/{id}/desired`.
#[derive(Debug, Deserialize, ToSchema)]
struct DesiredRequest {
    /// The release set the device should run.
    release: u64,
    /// The rollout this belongs to, if any.
    #[serde(default)]
    rollout: Option<String>,
}

/// Sets the release a device should run, and tells it if it is online.
///
/// Least role: operator.
#[utoipa::path(
    put,
    path = "/api/v1/devices/{id}/desired",
    tag = "devices",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the device id")),
    request_body = DesiredRequest,
    responses(
        (status = 200, description = "the device with its new desired state", body = crate::store::DeviceRow),
        (status = 404, description = "`not_found`: no such device", body = ErrorBody),
        TokenRefusals,
    ),
)]
async fn set_desired(
    State(shared): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(req): Body<DesiredRequest>,
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
    // connects (see `presence`) and when its next state report does not
    // show this generation (`Stored::desired_again`).
    if let Err(e) = shared.downlink.send_desired(&id, &desired).await {
        tracing::warn!(device = %id, error = %e, "desired state not sent now; it is sent again when the device reports its state");
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

/// `GET /api/v1/telemetry?device=&metric=&from_ms=&to_ms=&step_ms=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TelemetryQuery {
    /// The device id.
    device: String,
    /// The metric name.
    metric: String,
    /// From this time on (ms since the epoch, inclusive).
    #[serde(default)]
    from_ms: Option<i64>,
    /// Up to this time (ms since the epoch, exclusive).
    #[serde(default)]
    to_ms: Option<i64>,
    /// Bucket width for downsampling (avg/min/max/count per bucket).
    #[serde(default)]
    step_ms: Option<i64>,
}

/// One bucket of telemetry points.
#[derive(Debug, Serialize, ToSchema)]
struct Bucket {
    /// The bucket's start (ms since the epoch).
    t_ms: i64,
    /// Points in it.
    count: i64,
    /// Their mean.
    avg: Option<f64>,
    /// Their least value.
    min: Option<f64>,
    /// Their greatest value.
    max: Option<f64>,
}

const TELEMETRY_BUCKETS_MAX: usize = 10_000;

/// Reads one metric of one device, downsampled into buckets.
///
/// Least role: viewer. At most 10,000 buckets, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/telemetry",
    tag = "telemetry",
    security(("bearer" = [])),
    params(TelemetryQuery),
    responses((status = 200, description = "the buckets, oldest first", body = [Bucket]), TokenRefusals),
)]
async fn telemetry(State(shared): St, headers: HeaderMap, Params(q): Params<TelemetryQuery>) -> ApiResult<Vec<Bucket>> {
    authorize(&shared, &headers, Role::Viewer).await?;
    let from = q.from_ms.unwrap_or(0);
    let to = q.to_ms.unwrap_or(i64::MAX);
    let step = q.step_ms.unwrap_or(1).max(1);
    let buckets = shared
        .store
        .telemetry(&q.device, &q.metric, from, to, step, TELEMETRY_BUCKETS_MAX)
        .await?;
    let out = buckets
        .into_iter()
        .map(|b| Bucket {
            t_ms: b.t_ms,
            count: b.count,
            avg: b.avg,
            min: b.min,
            max: b.max,
        })
        .collect();
    Ok(Json(out))
}

/// One change, as the audit log holds it.
#[derive(Debug, Serialize, ToSchema)]
struct AuditRecord {
    /// Its sequence number.
    id: i64,
    /// When (ms since the epoch).
    t_ms: i64,
    /// Who: a token's name, `device` or `token:ID`.
    actor: String,
    /// What, e.g. `device.revoke`.
    action: String,
    /// Which: a device id, group name, upload id...
    target: String,
    /// The state before, as JSON.
    before: Option<serde_json::Value>,
    /// The state after, as JSON.
    after: Option<serde_json::Value>,
}

/// Reads the audit log, newest first (at most 1,000 records).
///
/// Least role: admin.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    security(("bearer" = [])),
    responses((status = 200, description = "the newest records, newest first", body = [AuditRecord]), TokenRefusals),
)]
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
    let _ = writeln!(
        out,
        "# TYPE molt_broker_dropped_total counter\nmolt_broker_dropped_total {}",
        l(&shared.gate.dropped)
    );
    let _ = writeln!(
        out,
        "# TYPE molt_broker_shed_total counter\nmolt_broker_shed_total {}",
        l(&shared.gate.shed)
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
/// a device connects. The broker reports the connection before the device
/// has subscribed, so this send can miss it; the resend after the device's
/// state report (`Stored::desired_again`) is the one that cannot.
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
    let limits = &shared.config.limits;
    let handshake_timeout = std::time::Duration::from_secs(limits.http_handshake_timeout_s);
    // A body that pauses longer than this between chunks ends the request.
    let app = router(shared.clone()).layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        std::time::Duration::from_secs(limits.http_body_idle_timeout_s),
    ));
    // One permit per open connection (limits.http_connections_max): when
    // none is left the server stops accepting, and clients wait in the
    // kernel's backlog instead of costing memory here.
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.http_connections_max));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.wait() => break,
        };
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
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake_timeout, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::debug!(%peer, "TLS handshake failed or exceeded limits.http_handshake_timeout_s");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(handshake_timeout);
            let _ = builder
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
