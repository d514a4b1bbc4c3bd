//! The hosts (`/ui/hosts`: filtered by state, image and severity, found by id, sorted
//! by last contact, id or severity, paged with the store's cursors so that 100,000
//! hosts cost one page each) and one host
//! (`/ui/hosts/{id}`: identity, image and baseline, state, findings with before → after,
//! the provisioning delta, and a timeline of its findings and of every action on it).

use super::error::{UiError, UiResult};
use super::query::{cursor, given};
use super::signin::SignedIn;
use super::view::{time, ActionRow, Chrome, FindingView, HostRow};
use super::Ui;
use crate::error::ApiError;
use crate::store::{ActionFilter, HostFilter, HostSort, PageRequest};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use driftwatch_protocol::report::Severity;
use driftwatch_protocol::wire::HostState;
use serde::Deserialize;
use std::sync::Arc;

/// Hosts per page.
const HOSTS_PER_PAGE: u32 = 100;
/// Findings per page of a host.
const FINDINGS_PER_PAGE: u32 = 200;
/// Actions on a host shown in its timeline.
const ACTIONS_SHOWN: u32 = 200;

/// `/ui/hosts` filters (empty fields, as forms send them, mean "any").
#[derive(Debug, Default, Deserialize)]
pub struct HostsQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    cursor: String,
}

#[derive(Template)]
#[template(path = "ui/hosts.html")]
struct HostsPage {
    chrome: Chrome,
    states: Vec<&'static str>,
    state: String,
    image: String,
    severities: Vec<&'static str>,
    severity: String,
    sorts: Vec<(&'static str, &'static str)>,
    sort: String,
    caption: &'static str,
    q: String,
    hosts: Vec<HostRow>,
    next: Option<String>,
    first_page: bool,
}

/// `GET /ui/hosts?state=&image=&severity=&sort=&q=&cursor=`: a search by id goes
/// straight to the host.
pub async fn list(
    State(ui): State<Arc<Ui>>,
    who: SignedIn,
    Query(query): Query<HostsQuery>,
) -> UiResult<Response> {
    let store = ui.app.fleet.store();
    if let Some(id) = given(&query.q) {
        if store.host(id).await?.is_some() {
            return Ok(Redirect::to(&format!("/ui/hosts/{}", url_path(id))).into_response());
        }
    }
    let state = match given(&query.state) {
        None => None,
        Some(name) => Some(HostState::from_name(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown state {name:?} (clean, drifted, marked, silent, gone)"
            ))
        })?),
    };
    let min_severity = match given(&query.severity) {
        None => None,
        Some(name) => Some(
            Severity::ALL_DESCENDING
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown severity {name:?} (critical, high, medium, low)"
                    ))
                })?,
        ),
    };
    let sort = match given(&query.sort) {
        None => HostSort::default(),
        Some(name) => HostSort::from_name(name).ok_or_else(|| {
            ApiError::BadRequest(format!("unknown order {name:?} (seen, id, severity)"))
        })?,
    };
    let page = if given(&query.q).is_some() {
        // An id that matches no host: an empty list that says so.
        crate::store::Page {
            items: Vec::new(),
            next_cursor: None,
        }
    } else {
        store
            .hosts(HostFilter {
                state,
                image_id: given(&query.image).map(str::to_string),
                min_severity,
                sort,
                page: PageRequest {
                    after: cursor(&query.cursor)?,
                    limit: Some(HOSTS_PER_PAGE),
                },
            })
            .await?
    };
    let page = HostsPage {
        chrome: Chrome::of(&who, "hosts"),
        states: HostState::ALL.iter().map(|s| s.name()).collect(),
        state: query.state.trim().to_string(),
        image: query.image.trim().to_string(),
        severities: Severity::ALL_DESCENDING.iter().map(|s| s.name()).collect(),
        severity: min_severity
            .map(Severity::name)
            .unwrap_or_default()
            .to_string(),
        sorts: HostSort::ALL
            .iter()
            .map(|s| (s.name(), sort_label(*s)))
            .collect(),
        sort: sort.name().to_string(),
        caption: sort_label(sort),
        q: query.q.trim().to_string(),
        hosts: page.items.iter().map(HostRow::of).collect(),
        next: page.next_cursor.map(|c| c.encode()),
        first_page: given(&query.cursor).is_none(),
    };
    Ok(Html(page.render()?).into_response())
}

/// How an order reads on the page.
fn sort_label(sort: HostSort) -> &'static str {
    match sort {
        HostSort::LastSeen => "Most recently seen first",
        HostSort::Id => "By host id",
        HostSort::Severity => "Most severe first",
    }
}

/// A host id in a URL path. Host ids are `[A-Za-z0-9._:-]` ([`driftwatch_protocol`]
/// refuses others), so only what a stored record could still hold is escaped.
pub fn url_path(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// How the host's image compares with the registry.
pub struct ImageStatus {
    pub registered: bool,
    pub digest: String,
    pub signer: String,
    pub matches: bool,
}

/// One entry of a host's timeline.
pub struct TimelineEntry {
    pub at: String,
    at_ms: i64,
    pub what: String,
    pub outcome: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "ui/host.html")]
struct HostPage {
    chrome: Chrome,
    host: HostRow,
    url_id: String,
    claimed_digest: String,
    agent_version: String,
    first_seen: String,
    state_since: String,
    last_heartbeat: String,
    marked_at: String,
    revoked: bool,
    dropped: u64,
    held: bool,
    marked: bool,
    image: Option<ImageStatus>,
    findings: Vec<FindingView>,
    next: Option<String>,
    timeline: Vec<TimelineEntry>,
    provisioning: Option<Provisioning>,
}

/// A host's first-boot provisioning delta.
pub struct Provisioning {
    pub opened: String,
    pub sealed: String,
    pub units: String,
    pub changes: Vec<FindingView>,
}

/// `/ui/hosts/{id}?cursor=` (pages its findings).
#[derive(Debug, Default, Deserialize)]
pub struct HostQuery {
    #[serde(default)]
    cursor: String,
}

/// `GET /ui/hosts/{id}`
pub async fn detail(
    State(ui): State<Arc<Ui>>,
    who: SignedIn,
    Path(host_id): Path<String>,
    Query(query): Query<HostQuery>,
) -> UiResult<Html<String>> {
    let store = ui.app.fleet.store();
    let host = store
        .host(&host_id)
        .await?
        .ok_or_else(|| UiError::Api(ApiError::NotFound(format!("no host {host_id}"))))?;
    let findings = store
        .findings(
            &host_id,
            PageRequest {
                after: cursor(&query.cursor)?,
                limit: Some(FINDINGS_PER_PAGE),
            },
        )
        .await?;
    let actions = store
        .actions(ActionFilter {
            host_id: Some(host_id.clone()),
            page: PageRequest {
                after: None,
                limit: Some(ACTIONS_SHOWN),
            },
        })
        .await?;
    let image = match host.image_id.as_deref() {
        Some(id) => store.image(id).await?.map(|image| ImageStatus {
            registered: true,
            matches: host.baseline_digest.as_deref() == Some(image.baseline_digest.as_str()),
            digest: image.baseline_digest,
            signer: image.signer.unwrap_or_default(),
        }),
        None => None,
    };
    let mut timeline: Vec<TimelineEntry> = actions
        .items
        .iter()
        .map(|a| {
            let row = ActionRow::of(a);
            TimelineEntry {
                at: row.at,
                at_ms: a.at_ms,
                what: match row.target.as_str() {
                    "" => row.action,
                    target => format!("{} → {target}", row.action),
                },
                outcome: row.outcome.to_string(),
                detail: row.detail,
            }
        })
        .chain(findings.items.iter().map(|f| TimelineEntry {
            at: time(f.first_seen_ms),
            at_ms: f.first_seen_ms,
            what: "finding".into(),
            outcome: f.severity.name().to_string(),
            detail: super::view::summary(&f.finding, &f.kind, &f.subject),
        }))
        .collect();
    timeline.sort_by_key(|t| std::cmp::Reverse(t.at_ms));
    let provisioning = store
        .provisioning(&host_id)
        .await?
        .and_then(|d| serde_json::from_value(d).ok())
        .map(provisioning_view);
    let page = HostPage {
        chrome: Chrome::of(&who, "hosts"),
        url_id: url_path(&host.host_id),
        claimed_digest: host.baseline_digest.clone().unwrap_or_default(),
        agent_version: host.agent_version.clone().unwrap_or_default(),
        first_seen: time(host.first_seen_ms),
        state_since: time(host.state_since_ms),
        last_heartbeat: host.last_heartbeat_ms.map(time).unwrap_or_default(),
        marked_at: host.marked_at_ms.map(time).unwrap_or_default(),
        revoked: host.revoked,
        dropped: host.findings_dropped,
        held: host.hold.is_some(),
        marked: host.state == HostState::Marked,
        host: HostRow::of(&host),
        image,
        findings: findings.items.iter().map(FindingView::of).collect(),
        next: findings.next_cursor.map(|c| c.encode()),
        timeline,
        provisioning,
    };
    Ok(Html(page.render()?))
}

fn provisioning_view(delta: driftwatch_protocol::wire::ProvisionDelta) -> Provisioning {
    Provisioning {
        opened: delta.opened.unwrap_or_default(),
        sealed: delta.sealed.unwrap_or_default(),
        units: delta.units.join(", "),
        changes: delta
            .changes
            .iter()
            .filter_map(|change| {
                let value = serde_json::to_value(change).ok()?;
                Some(FindingView::of_value(
                    &value,
                    change.kind_name(),
                    &change.subject(),
                ))
            })
            .collect(),
    }
}
