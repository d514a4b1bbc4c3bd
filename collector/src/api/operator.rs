//! The operator API (JSON, bearer token): hosts, findings, images, the action log,
//! and the calls that approve, mark, unmark or revoke a host. The
//! `driftwatch-collector` CLI is a client of exactly these routes.

use super::{rfc3339, Operator};
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

/// A host as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct HostView {
    /// Host id.
    pub host_id: String,
    /// Hostname.
    pub hostname: String,
    /// Image claimed.
    pub image_id: Option<String>,
    /// Baseline digest claimed.
    pub baseline_digest: Option<String>,
    /// Lifecycle state.
    pub state: HostState,
    /// Since when.
    pub state_since: String,
    /// First contact.
    pub first_seen: String,
    /// Last contact.
    pub last_seen: String,
    /// Last heartbeat.
    pub last_heartbeat: Option<String>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Why marked.
    pub mark_reason: Option<String>,
    /// When marked.
    pub marked_at: Option<String>,
    /// Why a decision is held (`budget`, `approval`, `dry_run`).
    pub hold: Option<String>,
    /// What the held decision would say.
    pub hold_reason: Option<String>,
    /// Refused from now on.
    pub revoked: bool,
    /// Findings: critical, high, medium, low.
    pub findings: [u64; 4],
}

impl From<HostRecord> for HostView {
    fn from(h: HostRecord) -> HostView {
        HostView {
            host_id: h.host_id,
            hostname: h.hostname,
            image_id: h.image_id,
            baseline_digest: h.baseline_digest,
            state: h.state,
            state_since: rfc3339(h.state_since_ms),
            first_seen: rfc3339(h.first_seen_ms),
            last_seen: rfc3339(h.last_seen_ms),
            last_heartbeat: h.last_heartbeat_ms.map(rfc3339),
            agent_version: h.agent_version,
            mark_reason: h.mark_reason,
            marked_at: h.marked_at_ms.map(rfc3339),
            hold: h.hold,
            hold_reason: h.hold_reason,
            revoked: h.revoked,
            findings: h.findings_by_severity,
        }
    }
}

/// A finding as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct FindingView {
    /// Stable key.
    pub key: String,
    /// Kind.
    pub kind: String,
    /// Severity.
    pub severity: driftwatch_protocol::report::Severity,
    /// Path or name.
    pub subject: String,
    /// First received.
    pub first_seen: String,
    /// Last received.
    pub last_seen: String,
    /// The finding as reported.
    pub finding: serde_json::Value,
}

impl From<FindingRecord> for FindingView {
    fn from(f: FindingRecord) -> FindingView {
        FindingView {
            key: f.key,
            kind: f.kind,
            severity: f.severity,
            subject: f.subject,
            first_seen: rfc3339(f.first_seen_ms),
            last_seen: rfc3339(f.last_seen_ms),
            finding: f.finding,
        }
    }
}

/// A host with its findings.
#[derive(Debug, Serialize, Deserialize)]
pub struct HostDetail {
    /// The host.
    pub host: HostView,
    /// Its findings, most severe first.
    pub findings: Vec<FindingView>,
}

/// An image as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageView {
    /// Image id.
    pub image_id: String,
    /// Baseline digest its hosts must report.
    pub baseline_digest: String,
    /// Signing key fingerprint.
    pub signer: Option<String>,
    /// Baseline entries.
    pub entries: u64,
    /// When baked.
    pub created_at: String,
    /// When registered.
    pub registered_at: String,
}

impl From<ImageRecord> for ImageView {
    fn from(i: ImageRecord) -> ImageView {
        ImageView {
            image_id: i.image_id,
            baseline_digest: i.baseline_digest,
            signer: i.signer,
            entries: i.entries,
            created_at: i.created_at,
            registered_at: rfc3339(i.registered_ms),
        }
    }
}

/// A logged action as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ActionView {
    /// Sequence number.
    pub id: i64,
    /// When.
    pub at: String,
    /// Host.
    pub host_id: Option<String>,
    /// Image.
    pub image_id: Option<String>,
    /// What.
    pub action: String,
    /// Aimed at.
    pub target: Option<String>,
    /// How it went.
    pub outcome: String,
    /// One sentence.
    pub detail: String,
}

impl From<ActionRecord> for ActionView {
    fn from(a: ActionRecord) -> ActionView {
        ActionView {
            id: a.id,
            at: rfc3339(a.at_ms),
            host_id: a.host_id,
            image_id: a.image_id,
            action: a.action,
            target: a.target,
            outcome: a.outcome,
            detail: a.detail,
        }
    }
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
) -> Result<Json<Vec<HostView>>, ApiError> {
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
    Ok(Json(hosts.into_iter().map(HostView::from).collect()))
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
    Ok(Json(HostDetail {
        host: host.into(),
        findings: findings.into_iter().map(FindingView::from).collect(),
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
) -> Result<Json<HostView>, ApiError> {
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
    Ok(Json(host.into()))
}

/// `GET /v1/images`
pub async fn images(
    _: Operator,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<ImageView>>, ApiError> {
    let images = state.fleet.store().images().await?;
    Ok(Json(images.into_iter().map(ImageView::from).collect()))
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
) -> Result<Json<ImageView>, ApiError> {
    let image = state
        .fleet
        .register_image(&body, query.image_id.as_deref())
        .await?;
    Ok(Json(image.into()))
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
) -> Result<Json<Vec<ActionView>>, ApiError> {
    let actions = state
        .fleet
        .store()
        .actions(
            query.host.as_deref(),
            query.limit.unwrap_or(100).min(MAX_LIMIT),
        )
        .await?;
    Ok(Json(actions.into_iter().map(ActionView::from).collect()))
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
