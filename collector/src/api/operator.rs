//! The operator API (JSON, bearer token): hosts, findings, images, the action log,
//! and the calls that approve, mark, unmark or revoke a host. The
//! `driftwatch-collector` CLI is a client of exactly these routes.

use super::Operator;
use crate::app::AppState;
use crate::error::ApiError;
use crate::store::{ActionRecord, FindingRecord, HostFilter, HostRecord, ImageRecord};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use driftwatch_protocol::wire::HostState;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most rows one list returns.
const MAX_LIMIT: u32 = 10_000;

/// A host with its findings.
#[derive(Debug, Serialize, Deserialize)]
pub struct HostDetail {
    /// The host.
    pub host: HostRecord,
    /// Its findings, most severe first.
    pub findings: Vec<FindingRecord>,
    /// What provisioning changed at its first boot (not drift), as the host sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<serde_json::Value>,
}

/// `GET /v1/hosts` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsQuery {
    state: Option<String>,
    image: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/hosts?state=&image=&limit=`
pub async fn hosts(
    _: Operator,
    State(state): State<Arc<AppState>>,
    Query(query): Query<HostsQuery>,
) -> Result<Json<Vec<HostRecord>>, ApiError> {
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
            limit: Some(query.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT)),
        })
        .await?;
    Ok(Json(hosts))
}

/// `GET /v1/hosts/{id}`: the host and its findings.
pub async fn host(
    _: Operator,
    State(state): State<Arc<AppState>>,
    Path(host_id): Path<String>,
) -> Result<Json<HostDetail>, ApiError> {
    let store = state.fleet.store();
    let host = store
        .host(&host_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no host {host_id}")))?;
    let findings = store.findings(&host_id).await?;
    let provisioning = store.provisioning(&host_id).await?;
    Ok(Json(HostDetail {
        host,
        findings,
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

/// `POST /v1/hosts/{id}/{approve|mark|unmark|revoke}`
pub async fn host_action(
    _: Operator,
    State(state): State<Arc<AppState>>,
    Path((host_id, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<HostRecord>, ApiError> {
    let fleet = &state.fleet;
    let by = "operator";
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
        other => {
            return Err(ApiError::NotFound(format!(
                "no host action {other:?} (approve, mark, unmark, revoke)"
            )))
        }
    };
    Ok(Json(host))
}

/// `GET /v1/images`
pub async fn images(
    _: Operator,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<ImageRecord>>, ApiError> {
    let images = state.fleet.store().images().await?;
    Ok(Json(images))
}

/// `POST /v1/images?image_id=ID` queries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterQuery {
    image_id: Option<String>,
}

/// `POST /v1/images[?image_id=ID]` with the baseline file as the body.
pub async fn register_image(
    _: Operator,
    State(state): State<Arc<AppState>>,
    Query(query): Query<RegisterQuery>,
    body: Bytes,
) -> Result<Json<ImageRecord>, ApiError> {
    let image = state
        .fleet
        .register_image(&body, query.image_id.as_deref())
        .await?;
    Ok(Json(image))
}

/// `GET /v1/actions?host=&limit=` queries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsQuery {
    host: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/actions?host=&limit=`: the action log, newest first.
pub async fn actions(
    _: Operator,
    State(state): State<Arc<AppState>>,
    Query(query): Query<ActionsQuery>,
) -> Result<Json<Vec<ActionRecord>>, ApiError> {
    let actions = state
        .fleet
        .store()
        .actions(
            query.host.as_deref(),
            query.limit.unwrap_or(100).min(MAX_LIMIT),
        )
        .await?;
    Ok(Json(actions))
}

/// `GET /metrics` (OpenMetrics; needs the operator token like the rest of the API).
pub async fn metrics(
    _: Operator,
    State(state): State<Arc<AppState>>,
) -> Result<impl IntoResponse, ApiError> {
    let counts = state.fleet.store().counts().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&counts),
    ))
}
