//! The operator API (JSON, bearer token): hosts, findings, images, the action log,
//! and the calls that approve, mark, unmark or revoke a host. The
//! `driftwatch-collector` CLI is a client of exactly these routes.
//!
//! Lists page with cursors: `limit` rows at most, and `cursor` to go on after the
//! last row of a page. Where there is more, a list (a JSON array) answers with the
//! next page's cursor in the `Next-Cursor` header, and a host's detail with it in
//! `next_cursor`; without a `limit`, lists keep their historical bounds. Cursors are
//! opaque and stay valid while rows come and go (keyset paging: a page starts after
//! the sort key of the previous page's last row).

use crate::app::AppState;
use crate::auth::{Principal, Right};
use crate::error::ApiError;
use crate::store::{
    ActionFilter, ActionRecord, Cursor, FindingRecord, HostFilter, HostRecord, HostSort,
    ImageRecord, Page, PageRequest,
};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use driftwatch_protocol::wire::HostState;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most rows one list returns.
const MAX_LIMIT: u32 = 10_000;

/// The header that carries the next page's cursor of a list.
pub const NEXT_CURSOR: &str = "next-cursor";

/// A host with its findings.
#[derive(Debug, Serialize, Deserialize)]
pub struct HostDetail {
    /// The host.
    pub host: HostRecord,
    /// Its findings, most severe first.
    pub findings: Vec<FindingRecord>,
    /// Where the next page of findings starts, when there is more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// What provisioning changed at its first boot (not drift), as the host sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<serde_json::Value>,
}

/// A page as a JSON array, with the next page's cursor in [`NEXT_CURSOR`].
fn page_response<T: Serialize>(page: Page<T>) -> Response {
    let mut response = Json(page.items).into_response();
    if let Some(cursor) = page.next_cursor {
        if let Ok(value) = cursor.encode().parse() {
            response.headers_mut().insert(NEXT_CURSOR, value);
        }
    }
    response
}

/// A page request from `cursor` and `limit` query parameters.
fn page_request(
    cursor: Option<&str>,
    limit: Option<u32>,
    default: u32,
) -> Result<PageRequest, ApiError> {
    Ok(PageRequest {
        after: cursor.map(Cursor::decode).transpose()?,
        limit: Some(limit.unwrap_or(default).clamp(1, MAX_LIMIT)),
    })
}

/// `GET /v1/hosts` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsQuery {
    state: Option<String>,
    image: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /v1/hosts?state=&image=&limit=&cursor=`
pub async fn hosts(
    who: Principal,
    State(state): State<Arc<AppState>>,
    Query(query): Query<HostsQuery>,
) -> Result<Response, ApiError> {
    who.require(Right::Read)?;
    let host_state = match query.state.as_deref() {
        None => None,
        Some(name) => Some(HostState::from_name(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown state {name:?} (clean, drifted, marked, silent, gone)"
            ))
        })?),
    };
    let hosts = state
        .fleet
        .store()
        .hosts(HostFilter {
            state: host_state,
            image_id: query.image,
            min_severity: None,
            sort: HostSort::default(),
            page: page_request(query.cursor.as_deref(), query.limit, MAX_LIMIT)?,
        })
        .await?;
    Ok(page_response(hosts))
}

/// `GET /v1/hosts/{id}?limit=&cursor=` queries (paging its findings).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /v1/hosts/{id}`: the host and its findings.
pub async fn host(
    who: Principal,
    State(state): State<Arc<AppState>>,
    Path(host_id): Path<String>,
    Query(query): Query<HostQuery>,
) -> Result<Json<HostDetail>, ApiError> {
    who.require(Right::Read)?;
    let store = state.fleet.store();
    let host = store
        .host(&host_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no host {host_id}")))?;
    let page = PageRequest {
        after: query.cursor.as_deref().map(Cursor::decode).transpose()?,
        limit: query.limit.map(|l| l.clamp(1, MAX_LIMIT)),
    };
    let findings = store.findings(&host_id, page).await?;
    let provisioning = store.provisioning(&host_id).await?;
    Ok(Json(HostDetail {
        host,
        findings: findings.items,
        next_cursor: findings.next_cursor.map(|c| c.encode()),
        provisioning,
    }))
}

/// The body of `POST /v1/hosts/{id}/mark`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MarkRequest {
    /// Why (default: "requested by an operator").
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /v1/hosts/{id}/{approve|mark|unmark|revoke|retire}`
pub async fn host_action(
    who: Principal,
    State(state): State<Arc<AppState>>,
    Path((host_id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<HostRecord>, ApiError> {
    who.require(Right::Act)?;
    let fleet = &state.fleet;
    let by = who.name.as_str();
    let host = match action.as_str() {
        "approve" => fleet.approve(&host_id, by).await?,
        "mark" => {
            let request: MarkRequest = if body.is_empty() {
                MarkRequest::default()
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    ApiError::BadRequest(format!("the mark request is not valid: {e}"))
                })?
            };
            let reason = request
                .reason
                .unwrap_or_else(|| "requested by an operator".into());
            fleet.operator_mark(&host_id, &reason, by).await?
        }
        "unmark" => fleet.unmark(&host_id, by).await?,
        "revoke" => fleet.revoke(&host_id, by).await?,
        "retire" => fleet.retire(&host_id, by).await?,
        other => {
            return Err(ApiError::NotFound(format!(
                "no host action {other:?} (approve, mark, unmark, revoke, retire)"
            )))
        }
    };
    Ok(Json(host))
}

/// `GET /v1/images?limit=&cursor=` queries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /v1/images?limit=&cursor=`: images, newest first.
pub async fn images(
    who: Principal,
    State(state): State<Arc<AppState>>,
    Query(query): Query<ImagesQuery>,
) -> Result<Response, ApiError> {
    who.require(Right::Read)?;
    let page = page_request(query.cursor.as_deref(), query.limit, MAX_LIMIT)?;
    let images: Page<ImageRecord> = state.fleet.store().images(page).await?;
    Ok(page_response(images))
}

/// `POST /v1/images?image_id=ID` queries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterQuery {
    image_id: Option<String>,
}

/// `POST /v1/images[?image_id=ID]` with the baseline file as the body.
pub async fn register_image(
    who: Principal,
    State(state): State<Arc<AppState>>,
    Query(query): Query<RegisterQuery>,
    body: Bytes,
) -> Result<Json<ImageRecord>, ApiError> {
    who.require(Right::Register)?;
    let image = state
        .fleet
        .register_image(&body, query.image_id.as_deref(), &who.name)
        .await?;
    Ok(Json(image))
}

/// `GET /v1/actions?host=&limit=&cursor=` queries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsQuery {
    host: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /v1/actions?host=&limit=&cursor=`: the action log, newest first.
pub async fn actions(
    who: Principal,
    State(state): State<Arc<AppState>>,
    Query(query): Query<ActionsQuery>,
) -> Result<Response, ApiError> {
    who.require(Right::Read)?;
    let filter = ActionFilter {
        host_id: query.host,
        page: page_request(query.cursor.as_deref(), query.limit, 100)?,
    };
    let actions: Page<ActionRecord> = state.fleet.store().actions(filter).await?;
    Ok(page_response(actions))
}

/// `GET /metrics` (OpenMetrics; needs the operator token like the rest of the API).
pub async fn metrics(
    who: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(Right::Scrape)?;
    let counts = state.fleet.store().counts().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&counts),
    ))
}
