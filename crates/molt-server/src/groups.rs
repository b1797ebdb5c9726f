//! Device groups and alert states, over the REST API.
//!
//! A group is static (an explicit member list) or dynamic (a query over
//! hardware class, tags and online state, evaluated when asked, so a device
//! tagged later joins at once). A query is `KEY=VALUE` terms joined by
//! commas, all of which must hold: `hardware_class=rpi4,site=berlin`.
//! `hardware_class` and `online` (`true`/`false`) name the device's own
//! fields; any other key names a tag.
//!
//! Alerts arrive open from devices; an operator acknowledges or resolves
//! them here. Every change is audited like every other API change.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};

use crate::http::{ApiResult, Body, ErrorBody, Params, Role, TokenRefusals, authorize};
use crate::store::{DeviceRow, now_ms};
use crate::{Error, Shared};

type St = State<Arc<Shared>>;

/// One term of a dynamic group's query.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    HardwareClass(String),
    Online(bool),
    Tag(String, String),
}

/// A parsed dynamic-group query: every term must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupQuery(Vec<Term>);

impl GroupQuery {
    /// Parses `KEY=VALUE[,KEY=VALUE]...`, at most `terms_max` terms.
    pub fn parse(text: &str, terms_max: usize) -> Result<GroupQuery, Error> {
        let refuse = |m: String| Error::refused("group_query_invalid", m);
        let mut terms = Vec::new();
        for raw in text.split(',') {
            let raw = raw.trim();
            let (key, value) = raw
                .split_once('=')
                .ok_or_else(|| refuse(format!("query term {raw:?} is not KEY=VALUE")))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(refuse(format!("query term {raw:?} has an empty key")));
            }
            terms.push(match key {
                "hardware_class" => Term::HardwareClass(value.to_owned()),
                "online" => Term::Online(match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(refuse(format!("online={value:?}: use true or false"))),
                }),
                _ => Term::Tag(key.to_owned(), value.to_owned()),
            });
        }
        if terms.len() > terms_max {
            return Err(Error::refused(
                "limit_exceeded",
                format!(
                    "the query has {} terms, more than limits.group_query_terms_max ({terms_max})",
                    terms.len()
                ),
            ));
        }
        Ok(GroupQuery(terms))
    }

    /// Whether `device` matches every term.
    pub fn matches(&self, device: &DeviceRow) -> bool {
        self.0.iter().all(|term| match term {
            Term::HardwareClass(class) => device.hardware_class == *class,
            Term::Online(online) => device.online == *online,
            Term::Tag(key, value) => match device.tags.get(key) {
                Some(serde_json::Value::String(s)) => s == value,
                Some(other) => serde_json::from_str::<serde_json::Value>(value).ok().as_ref() == Some(other),
                None => false,
            },
        })
    }
}

/// A group as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// The dynamic query; `None` for a static group.
    pub query: Option<String>,
    /// Member device ids, sorted (evaluated now for a dynamic group).
    pub devices: Vec<String>,
}

/// `POST /api/v1/groups`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewGroup {
    /// Its name (the device id rules).
    name: String,
    /// A dynamic group's query, `KEY=VALUE[,KEY=VALUE]...`.
    #[serde(default)]
    query: Option<String>,
    /// A static group's members.
    #[serde(default)]
    devices: Vec<String>,
}

fn check_name(name: &str) -> Result<(), Error> {
    molt_protocol::DeviceId::parse(name).map(|_| ()).map_err(|e| {
        Error::refused(
            "group_name_invalid",
            format!("group name {name:?}: {e} (group names follow the device id rules)"),
        )
    })
}

async fn load(shared: &Shared, name: &str) -> Result<Group, Error> {
    load_with(shared, name, None).await
}

/// [`load`], evaluating a dynamic group over `devices` when the caller
/// already read them (a list of every group reads the registry once).
async fn load_with(shared: &Shared, name: &str, devices: Option<&[DeviceRow]>) -> Result<Group, Error> {
    let row = sqlx::query("SELECT query FROM device_groups WHERE name = $1")
        .bind(name)
        .fetch_optional(shared.store.pool())
        .await?
        .ok_or_else(|| Error::NotFound(format!("no group {name:?} (`molt group list` shows them)")))?;
    let query: Option<String> = row.try_get(0)?;
    let devices = match &query {
        Some(q) => {
            let parsed = GroupQuery::parse(q, usize::MAX)?;
            let matching = |all: &[DeviceRow]| -> Vec<String> {
                all.iter().filter(|d| parsed.matches(d)).map(|d| d.id.clone()).collect()
            };
            match devices {
                Some(all) => matching(all),
                None => matching(&shared.store.devices().await?),
            }
        }
        None => {
            let rows = sqlx::query("SELECT device FROM group_members WHERE group_name = $1 ORDER BY device")
                .bind(name)
                .fetch_all(shared.store.pool())
                .await?;
            rows.iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, _>>()?
        }
    };
    Ok(Group {
        name: name.to_owned(),
        query,
        devices,
    })
}

/// Checks that every id names an enrolled device.
async fn check_members(shared: &Shared, devices: &[String]) -> Result<(), Error> {
    let limit = shared.config.limits.group_members_max;
    if devices.len() > limit {
        return Err(Error::refused(
            "limit_exceeded",
            format!(
                "{} devices, more than limits.group_members_max ({limit})",
                devices.len()
            ),
        ));
    }
    for id in devices {
        shared.store.device(id).await?;
    }
    Ok(())
}

async fn write_members(shared: &Shared, name: &str, devices: &[String]) -> Result<(), Error> {
    let mut tx = shared.store.write_tx().await?;
    sqlx::query("DELETE FROM group_members WHERE group_name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    for id in devices {
        sqlx::query("INSERT INTO group_members (group_name, device) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `POST /api/v1/groups`: a static group (`devices`) or a dynamic one (`query`).
///
/// Least role: operator.
#[utoipa::path(
    post,
    path = "/api/v1/groups",
    tag = "groups",
    operation_id = "create_group",
    security(("bearer" = [])),
    request_body = NewGroup,
    responses(
        (status = 200, description = "the group, with its members now", body = Group),
        (
            status = 400,
            description = "`group_invalid`, `group_name_invalid`, `group_query_invalid`, `group_exists` or \
                           `limit_exceeded`",
            body = ErrorBody,
        ),
        (status = 404, description = "`not_found`: a listed device is not enrolled", body = ErrorBody),
        TokenRefusals,
    ),
)]
pub async fn create(State(shared): St, headers: HeaderMap, Body(req): Body<NewGroup>) -> ApiResult<Group> {
    let caller = authorize(&shared, &headers, Role::Operator).await?;
    check_name(&req.name)?;
    match (&req.query, req.devices.is_empty()) {
        (Some(_), false) => {
            return Err(Error::refused(
                "group_invalid",
                "a group has a query (dynamic) or a device list (static), not both",
            )
            .into());
        }
        (Some(q), true) => {
            GroupQuery::parse(q, shared.config.limits.group_query_terms_max)?;
        }
        (None, _) => check_members(&shared, &req.devices).await?,
    }
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM device_groups")
        .fetch_one(shared.store.pool())
        .await
        .map_err(Error::from)?
        .try_get(0)
        .map_err(Error::from)?;
    let groups_max = shared.config.limits.groups_max;
    if count as u64 >= groups_max as u64 {
        return Err(Error::refused(
            "limit_exceeded",
            format!("the server holds {count} groups already (limits.groups_max = {groups_max})"),
        )
        .into());
    }
    let inserted =
        sqlx::query("INSERT INTO device_groups (name, query, created_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(&req.name)
            .bind(&req.query)
            .bind(now_ms())
            .execute(shared.store.pool())
            .await
            .map_err(Error::from)?;
    if inserted.rows_affected() == 0 {
        return Err(Error::refused(
            "group_exists",
            format!("a group {:?} exists already (`molt group show {}`)", req.name, req.name),
        )
        .into());
    }
    if req.query.is_none() {
        write_members(&shared, &req.name, &req.devices).await?;
    }
    let group = load(&shared, &req.name).await?;
    shared
        .store
        .audit(
            &caller.name,
            "group.create",
            &req.name,
            None,
            Some(&serde_json::json!({ "query": req.query, "devices": req.devices })),
        )
        .await?;
    Ok(Json(group))
}

/// `GET /api/v1/groups`: every group with its members now.
///
/// Least role: viewer.
#[utoipa::path(
    get,
    path = "/api/v1/groups",
    tag = "groups",
    operation_id = "list_groups",
    security(("bearer" = [])),
    responses((status = 200, description = "every group, by name", body = [Group]), TokenRefusals),
)]
pub async fn list(State(shared): St, headers: HeaderMap) -> ApiResult<Vec<Group>> {
    authorize(&shared, &headers, Role::Viewer).await?;
    let rows = sqlx::query("SELECT name FROM device_groups ORDER BY name")
        .fetch_all(shared.store.pool())
        .await
        .map_err(Error::from)?;
    let devices = shared.store.devices().await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get(0).map_err(Error::from)?;
        out.push(load_with(&shared, &name, Some(&devices)).await?);
    }
    Ok(Json(out))
}

/// `GET /api/v1/groups/{name}`: one group with its members now.
///
/// Least role: viewer.
#[utoipa::path(
    get,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    operation_id = "show_group",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "the group name")),
    responses((status = 200, description = "the group", body = Group), (status = 404, description = "`not_found`: no such group", body = ErrorBody), TokenRefusals),
)]
pub async fn show(State(shared): St, headers: HeaderMap, Path(name): Path<String>) -> ApiResult<Group> {
    authorize(&shared, &headers, Role::Viewer).await?;
    Ok(Json(load(&shared, &name).await?))
}

/// `PUT /api/v1/groups/{name}/devices`: replaces a static group's members.
///
/// Least role: operator.
#[utoipa::path(
    put,
    path = "/api/v1/groups/{name}/devices",
    tag = "groups",
    operation_id = "set_group_members",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "the group name")),
    request_body(content = Vec<String>, description = "the device ids, all enrolled"),
    responses(
        (status = 200, description = "the group with its new members", body = Group),
        (status = 400, description = "`group_dynamic` or `limit_exceeded`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such group, or a device is not enrolled", body = ErrorBody),
        TokenRefusals,
    ),
)]
pub async fn set_members(
    State(shared): St,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(devices): Body<Vec<String>>,
) -> ApiResult<Group> {
    let caller = authorize(&shared, &headers, Role::Operator).await?;
    let before = load(&shared, &name).await?;
    if let Some(q) = &before.query {
        return Err(Error::refused(
            "group_dynamic",
            format!("{name:?} is a dynamic group (query {q:?}); its members follow the query"),
        )
        .into());
    }
    check_members(&shared, &devices).await?;
    write_members(&shared, &name, &devices).await?;
    let after = load(&shared, &name).await?;
    shared
        .store
        .audit(
            &caller.name,
            "group.members",
            &name,
            Some(&serde_json::json!(before.devices)),
            Some(&serde_json::json!(after.devices)),
        )
        .await?;
    Ok(Json(after))
}

/// `DELETE /api/v1/groups/{name}`: the devices stay, the group goes.
///
/// Least role: operator.
#[utoipa::path(
    delete,
    path = "/api/v1/groups/{name}",
    tag = "groups",
    operation_id = "delete_group",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "the group name")),
    responses((status = 200, description = "the group as it was", body = Group), (status = 404, description = "`not_found`: no such group", body = ErrorBody), TokenRefusals),
)]
pub async fn delete(State(shared): St, headers: HeaderMap, Path(name): Path<String>) -> ApiResult<Group> {
    let caller = authorize(&shared, &headers, Role::Operator).await?;
    let before = load(&shared, &name).await?;
    let mut tx = shared.store.write_tx().await.map_err(Error::from)?;
    sqlx::query("DELETE FROM group_members WHERE group_name = $1")
        .bind(&name)
        .execute(&mut *tx)
        .await
        .map_err(Error::from)?;
    sqlx::query("DELETE FROM device_groups WHERE name = $1")
        .bind(&name)
        .execute(&mut *tx)
        .await
        .map_err(Error::from)?;
    tx.commit().await.map_err(Error::from)?;
    shared
        .store
        .audit(
            &caller.name,
            "group.delete",
            &name,
            Some(&serde_json::json!({ "query": before.query, "devices": before.devices })),
            None,
        )
        .await?;
    Ok(Json(before))
}

/// An alert as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alert {
    /// Its id.
    id: i64,
    /// The device that raised it.
    device: String,
    /// The device's sequence number of the message that carried it.
    seq: i64,
    /// The policy that raised it.
    policy: String,
    /// The sensor it is about.
    sensor: i64,
    /// When the device raised it (ms since the epoch).
    t_ms: i64,
    /// Its severity.
    severity: String,
    /// The policy's text.
    message: String,
    /// `open`, `acknowledged` or `resolved`.
    state: String,
    /// When its state last changed (ms since the epoch).
    updated_ms: i64,
}

const ALERT_COLUMNS: &str =
    "SELECT id, device, seq, policy, sensor, t_ms, severity, message, state, updated_ms FROM alerts";

fn alert_row(r: &sqlx::sqlite::SqliteRow) -> Result<Alert, Error> {
    Ok(Alert {
        id: r.try_get(0)?,
        device: r.try_get(1)?,
        seq: r.try_get(2)?,
        policy: r.try_get(3)?,
        sensor: r.try_get(4)?,
        t_ms: r.try_get(5)?,
        severity: r.try_get(6)?,
        message: r.try_get(7)?,
        state: r.try_get(8)?,
        updated_ms: r.try_get(9)?,
    })
}

/// `GET /api/v1/alerts?state=&device=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// Only alerts in this state: `open`, `acknowledged` or `resolved`.
    #[serde(default)]
    state: Option<String>,
    /// Only this device's alerts.
    #[serde(default)]
    device: Option<String>,
}

/// Most alerts one list returns, newest first.
pub const ALERTS_PER_PAGE_MAX: i64 = 1000;

/// `GET /api/v1/alerts`: the newest alerts first, at most 1,000 (`ALERTS_PER_PAGE_MAX`).
///
/// Least role: viewer.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    operation_id = "list_alerts",
    security(("bearer" = [])),
    params(AlertQuery),
    responses(
        (status = 200, description = "the alerts, newest first", body = [Alert]),
        (status = 400, description = "`alert_state_invalid`", body = ErrorBody),
        TokenRefusals,
    ),
)]
pub async fn alerts(State(shared): St, headers: HeaderMap, Params(q): Params<AlertQuery>) -> ApiResult<Vec<Alert>> {
    authorize(&shared, &headers, Role::Viewer).await?;
    if let Some(state) = &q.state {
        check_state(state)?;
    }
    let rows = sqlx::query(&format!(
        "{ALERT_COLUMNS} WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR device = $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(&q.state)
    .bind(&q.device)
    .bind(ALERTS_PER_PAGE_MAX)
    .fetch_all(shared.store.pool())
    .await
    .map_err(Error::from)?;
    Ok(Json(rows.iter().map(alert_row).collect::<Result<_, _>>()?))
}

fn check_state(state: &str) -> Result<(), Error> {
    match state {
        "open" | "acknowledged" | "resolved" => Ok(()),
        _ => Err(Error::refused(
            "alert_state_invalid",
            format!("alert state {state:?}: use open, acknowledged or resolved"),
        )),
    }
}

/// `PUT /api/v1/alerts/{id}/state`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AlertState {
    /// `open`, `acknowledged` or `resolved`.
    state: String,
}

/// `PUT /api/v1/alerts/{id}/state`: acknowledge, resolve or reopen.
///
/// Least role: operator.
#[utoipa::path(
    put,
    path = "/api/v1/alerts/{id}/state",
    tag = "alerts",
    operation_id = "set_alert_state",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "the alert id")),
    request_body = AlertState,
    responses(
        (status = 200, description = "the alert in its new state", body = Alert),
        (status = 400, description = "`alert_state_invalid`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such alert", body = ErrorBody),
        TokenRefusals,
    ),
)]
pub async fn set_alert_state(
    State(shared): St,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Body(req): Body<AlertState>,
) -> ApiResult<Alert> {
    let caller = authorize(&shared, &headers, Role::Operator).await?;
    check_state(&req.state)?;
    let one = |id: i64| {
        let shared = shared.clone();
        async move {
            let row = sqlx::query(&format!("{ALERT_COLUMNS} WHERE id = $1"))
                .bind(id)
                .fetch_optional(shared.store.pool())
                .await?
                .ok_or_else(|| Error::NotFound(format!("no alert {id} (`molt alert list` shows them)")))?;
            alert_row(&row)
        }
    };
    let before = one(id).await?;
    sqlx::query("UPDATE alerts SET state = $1, updated_ms = $2 WHERE id = $3")
        .bind(&req.state)
        .bind(now_ms())
        .bind(id)
        .execute(shared.store.pool())
        .await
        .map_err(Error::from)?;
    let after = one(id).await?;
    shared
        .store
        .audit(
            &caller.name,
            "alert.state",
            &id.to_string(),
            Some(&serde_json::json!({ "state": before.state })),
            Some(&serde_json::json!({ "state": after.state })),
        )
        .await?;
    Ok(Json(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(class: &str, tags: serde_json::Value, online: bool) -> DeviceRow {
        DeviceRow {
            id: "d".into(),
            hardware_class: class.into(),
            tags,
            created_ms: 0,
            last_seen_ms: None,
            online,
            revoked_ms: None,
            stored_through: 0,
            reported: None,
            health: None,
            desired_generation: 0,
            desired_release: None,
            desired_rollout: None,
        }
    }

    #[test]
    fn query_terms_all_hold() {
        let q = GroupQuery::parse("hardware_class=rpi4, site=berlin", 16).expect("parse");
        let berlin = serde_json::json!({ "site": "berlin" });
        assert!(q.matches(&device("rpi4", berlin.clone(), false)));
        assert!(!q.matches(&device("x86", berlin, false)));
        assert!(!q.matches(&device("rpi4", serde_json::json!({ "site": "oslo" }), false)));
        assert!(!q.matches(&device("rpi4", serde_json::json!({}), false)));
        let q = GroupQuery::parse("online=true", 16).expect("parse");
        assert!(q.matches(&device("", serde_json::json!({}), true)));
        assert!(!q.matches(&device("", serde_json::json!({}), false)));
    }

    #[test]
    fn bad_queries_are_refused_by_name() {
        for (text, code) in [
            ("site", "group_query_invalid"),
            ("=x", "group_query_invalid"),
            ("online=maybe", "group_query_invalid"),
            ("a=1,b=2,c=3", "limit_exceeded"),
        ] {
            let e = GroupQuery::parse(text, 2).expect_err(text);
            assert_eq!(e.code(), code, "{text}: {e}");
        }
    }
}
