//! Drift across the fleet (`/ui/drift`): the same change on many hosts as one row —
//! "modified /usr/bin/ssh (content) on 40 of 40 hosts of image web-2026.11.27" — the
//! view that tells a bad image or policy (every host of an image) from an intrusion
//! (one host). A change inside containers groups as the alerts do
//! ([`crate::store::policy::describe`]): by the containers' image, across hosts of
//! any image, counting containers — "added file /usr/local/bin/x in 12 containers of
//! image shop/api@sha256:… on 5 hosts".
//!
//! The store has no cross-host index of findings, so the page reads the findings of the
//! drifted and marked hosts most recently seen, at most [`MAX_HOSTS`] of them (in one
//! query, [`crate::store::Store::findings_of`]), and says so when there were more.

use super::error::UiResult;
use super::signin::SignedIn;
use super::view::{summary, Chrome};
use super::Ui;
use crate::store::policy::describe;
use crate::store::{HostFilter, HostSort, PageRequest};
use askama::Template;
use axum::extract::State;
use axum::response::Html;
use driftwatch_protocol::wire::HostState;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Most hosts whose findings are grouped.
pub const MAX_HOSTS: u32 = 1_000;
/// Most findings read per host.
const FINDINGS_PER_HOST: u32 = 500;
/// Host ids listed per row (the rest are counted).
const HOSTS_PER_ROW: usize = 10;

/// One change and the hosts it was seen on.
pub struct DriftRow {
    /// The hosts' image, or for a change inside containers the containers' image.
    pub image: String,
    pub change: String,
    pub severity: &'static str,
    severity_rank: usize,
    pub hosts: BTreeSet<String>,
    /// A change inside containers: the `(host, container id)` it was seen in.
    pub containers: BTreeSet<(String, String)>,
    pub in_containers: bool,
    /// Live hosts of the image (host rows only).
    pub of: u64,
}

impl DriftRow {
    /// The first host ids, for links.
    pub fn shown(&self) -> Vec<&String> {
        self.hosts.iter().take(HOSTS_PER_ROW).collect()
    }
}

#[derive(Template)]
#[template(path = "ui/drift.html")]
struct DriftPage {
    chrome: Chrome,
    rows: Vec<DriftRow>,
    scanned: usize,
    truncated: bool,
}

/// `GET /ui/drift`
pub async fn page(State(ui): State<Arc<Ui>>, who: SignedIn) -> UiResult<Html<String>> {
    let store = ui.app.fleet.store();
    let mut hosts = Vec::new();
    let mut truncated = false;
    for state in [HostState::Marked, HostState::Drifted] {
        let left = MAX_HOSTS.saturating_sub(hosts.len() as u32);
        if left == 0 {
            truncated = true;
            break;
        }
        let page = store
            .hosts(HostFilter {
                state: Some(state),
                image_id: None,
                min_severity: None,
                sort: HostSort::default(),
                page: PageRequest {
                    after: None,
                    limit: Some(left),
                },
            })
            .await?;
        truncated |= page.next_cursor.is_some();
        hosts.extend(page.items);
    }
    let images: HashMap<&str, String> = hosts
        .iter()
        .map(|h| (h.host_id.as_str(), h.image_id.clone().unwrap_or_default()))
        .collect();
    // One query for every host's findings.
    let findings = store
        .findings_of(
            hosts.iter().map(|h| h.host_id.clone()).collect(),
            FINDINGS_PER_HOST,
        )
        .await?;
    // Keyed by (in containers, image, what is the same about the change).
    let mut rows: HashMap<(bool, String, String), DriftRow> = HashMap::new();
    for finding in findings {
        let described = describe(&finding);
        let (key, change, container) = match described.container {
            Some(container) => (
                (true, container.image, described.group),
                described.title,
                Some(container.id),
            ),
            None => {
                let image = images
                    .get(finding.host_id.as_str())
                    .cloned()
                    .unwrap_or_default();
                let change = summary(&finding.finding, &finding.kind, &finding.subject);
                ((false, image, change.clone()), change, None)
            }
        };
        let rank = crate::store::severity_index(finding.severity);
        let row = rows.entry(key.clone()).or_insert_with(|| DriftRow {
            image: key.1.clone(),
            change,
            severity: finding.severity.name(),
            severity_rank: rank,
            hosts: BTreeSet::new(),
            containers: BTreeSet::new(),
            in_containers: key.0,
            of: 0,
        });
        if rank < row.severity_rank {
            (row.severity, row.severity_rank) = (finding.severity.name(), rank);
        }
        if let Some(id) = container {
            row.containers.insert((finding.host_id.clone(), id));
        }
        row.hosts.insert(finding.host_id.clone());
    }
    let live: HashMap<String, u64> = store
        .hosts_by_image_state()
        .await?
        .iter()
        .map(|i| (i.image_id.clone().unwrap_or_default(), i.live()))
        .collect();
    for row in rows.values_mut().filter(|r| !r.in_containers) {
        row.of = live.get(&row.image).copied().unwrap_or(0);
    }
    let mut rows: Vec<DriftRow> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        (b.hosts.len(), a.severity_rank, &a.image, &a.change).cmp(&(
            a.hosts.len(),
            b.severity_rank,
            &b.image,
            &b.change,
        ))
    });
    let page = DriftPage {
        chrome: Chrome::of(&who, "drift"),
        rows,
        scanned: hosts.len(),
        truncated,
    };
    Ok(Html(page.render()?))
}
