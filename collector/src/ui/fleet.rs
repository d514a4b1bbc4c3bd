//! The fleet page (`/ui/`): hosts by state, the images with their replacement budgets,
//! what is held and why, silent hosts, the last alerts and what is still owed.

use super::error::UiResult;
use super::signin::SignedIn;
use super::view::{ActionRow, Chrome, HostRow};
use super::Ui;
use crate::store::{now_ms, ActionFilter, Hold, HostFilter, HostSort, ImageStates, PageRequest};
use askama::Template;
use axum::extract::State;
use axum::response::Html;
use driftwatch_protocol::wire::HostState;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Images shown with their budget (the newest).
const IMAGES_SHOWN: u32 = 20;
/// Held and silent hosts listed by name (the rest are counted).
const HOSTS_SHOWN: usize = 10;
/// Recent actions searched for alerts.
const ACTIONS_SEARCHED: u32 = 200;
/// Alerts shown.
const ALERTS_SHOWN: usize = 10;

/// An image's replacement budget in the current window.
pub struct Budget {
    pub image: String,
    /// Its hosts per state, in [`HostState::ALL`] order.
    pub states: Vec<(&'static str, u64)>,
    pub live: u64,
    pub used: u64,
    pub allowed: u64,
}

/// Hosts held for one reason.
pub struct Held {
    pub hold: &'static str,
    pub why: &'static str,
    pub count: u64,
    pub hosts: Vec<String>,
    /// More are held than listed.
    pub more: bool,
}

/// How long one computation of the fleet's summary serves every session: its counts
/// read every host's row (grouped in the store), and the page refreshes itself every
/// 5 s in each browser, so without it the store's cost would grow with the number of
/// viewers.
const SUMMARY_TTL: Duration = Duration::from_secs(5);

/// A fleet summary and when it was computed.
pub type CachedSummary = tokio::sync::Mutex<Option<(Instant, Arc<Summary>)>>;

#[derive(Template)]
#[template(path = "ui/fleet.html")]
struct FleetPage {
    chrome: Chrome,
    s: Arc<Summary>,
}

/// What the fleet page shows, the same for every session.
pub struct Summary {
    states: Vec<(&'static str, u64)>,
    findings: [u64; 4],
    budgets: Vec<Budget>,
    window: String,
    mode: &'static str,
    held: Vec<Held>,
    silent: Vec<HostRow>,
    silent_more: bool,
    alerts: Vec<ActionRow>,
    pending_alerts: u64,
    pending_commands: u64,
}

/// `GET /ui/`
pub async fn page(State(ui): State<Arc<Ui>>, who: SignedIn) -> UiResult<Html<String>> {
    let page = FleetPage {
        chrome: Chrome::of(&who, "fleet"),
        s: cached_summary(&ui).await?,
    };
    Ok(Html(page.render()?))
}

/// The summary, computed at most once per [`SUMMARY_TTL`] (concurrent requests wait
/// for the one computing it).
async fn cached_summary(ui: &Ui) -> UiResult<Arc<Summary>> {
    let mut cached = ui.fleet_summary.lock().await;
    if let Some((at, summary)) = cached.as_ref() {
        if at.elapsed() < SUMMARY_TTL {
            return Ok(Arc::clone(summary));
        }
    }
    let summary = Arc::new(summary(ui).await?);
    *cached = Some((Instant::now(), Arc::clone(&summary)));
    Ok(summary)
}

async fn summary(ui: &Ui) -> UiResult<Summary> {
    let store = ui.app.fleet.store();
    let counts = store.counts().await?;
    let by_image = store.hosts_by_image_state().await?;
    let silent = store
        .hosts(HostFilter {
            state: Some(HostState::Silent),
            image_id: None,
            min_severity: None,
            sort: HostSort::default(),
            page: PageRequest {
                after: None,
                limit: Some(HOSTS_SHOWN as u32),
            },
        })
        .await?;
    let recent = store
        .actions(ActionFilter {
            host_id: None,
            page: PageRequest {
                after: None,
                limit: Some(ACTIONS_SEARCHED),
            },
        })
        .await?;
    Ok(Summary {
        states: HostState::ALL
            .iter()
            .zip(counts.hosts_by_state)
            .map(|(s, n)| (s.name(), n))
            .collect(),
        findings: counts.findings_by_severity,
        budgets: budgets(ui, &by_image).await?,
        window: humantime::format_duration(std::time::Duration::from_millis(
            u64::try_from(ui.policy.window_ms).unwrap_or(0),
        ))
        .to_string(),
        mode: mode_name(ui),
        held: held(ui).await?,
        silent_more: silent.next_cursor.is_some(),
        silent: silent.items.iter().map(HostRow::of).collect(),
        alerts: recent
            .items
            .iter()
            .filter(|a| matches!(a.action.as_str(), "alert" | "webhook"))
            .take(ALERTS_SHOWN)
            .map(ActionRow::of)
            .collect(),
        pending_alerts: counts.pending_alerts,
        pending_commands: counts.pending_commands,
    })
}

fn mode_name(ui: &Ui) -> &'static str {
    match ui.policy.mode {
        crate::config::ReplacementMode::Auto => "auto",
        crate::config::ReplacementMode::DryRun => "dry run",
        crate::config::ReplacementMode::ManualApprove => "manual approval",
    }
}

/// The budget of each of the newest images: marks in the window against what it allows,
/// from two grouped queries (hosts by image and state, marks by image) whatever the
/// number of images.
async fn budgets(ui: &Ui, by_image: &[ImageStates]) -> UiResult<Vec<Budget>> {
    let store = ui.app.fleet.store();
    let images = store
        .images(PageRequest {
            after: None,
            limit: Some(IMAGES_SHOWN),
        })
        .await?;
    let since = now_ms().saturating_sub(ui.policy.window_ms);
    let marked: HashMap<Option<String>, u64> =
        store.marked_by_image(since).await?.into_iter().collect();
    let hosts: HashMap<Option<&str>, &ImageStates> = by_image
        .iter()
        .map(|i| (i.image_id.as_deref(), i))
        .collect();
    Ok(images
        .items
        .into_iter()
        .map(|image| {
            let on = hosts.get(&Some(image.image_id.as_str()));
            let live = on.map_or(0, |i| i.live());
            Budget {
                states: HostState::ALL
                    .iter()
                    .map(|s| s.name())
                    .zip(on.map_or([0; 5], |i| i.by_state))
                    .collect(),
                used: marked
                    .get(&Some(image.image_id.clone()))
                    .copied()
                    .unwrap_or(0),
                allowed: ui.policy.budget(live),
                live,
                image: image.image_id,
            }
        })
        .collect())
}

/// The hosts whose decision is held, by reason: each a count and the first few ids.
async fn held(ui: &Ui) -> UiResult<Vec<Held>> {
    let mut held = Vec::new();
    for (hold, why) in [
        (Hold::Budget, "the image's replacement budget is used up"),
        (Hold::Approval, "waiting for an operator's approval"),
        (Hold::DryRun, "dry run: would have been marked"),
    ] {
        let hosts = ui.app.fleet.store().held(hold, HOSTS_SHOWN as u32).await?;
        if hosts.count == 0 {
            continue;
        }
        held.push(Held {
            hold: hold.name(),
            why,
            more: hosts.count > hosts.first.len() as u64,
            count: hosts.count,
            hosts: hosts.first,
        });
    }
    Ok(held)
}
