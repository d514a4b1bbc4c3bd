//! The fleet page (`/ui/`): hosts by state, the images with their replacement budgets,
//! what is held and why, silent hosts, the last alerts and what is still owed.

use super::error::UiResult;
use super::signin::SignedIn;
use super::view::{ActionRow, Chrome, HostRow};
use super::Ui;
use crate::store::{now_ms, ActionFilter, Hold, HostFilter, PageRequest};
use askama::Template;
use axum::extract::State;
use axum::response::Html;
use driftwatch_protocol::wire::HostState;
use std::sync::Arc;

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
    pub live: u64,
    pub used: u64,
    pub allowed: u64,
}

/// Hosts held for one reason.
pub struct Held {
    pub hold: &'static str,
    pub why: &'static str,
    pub count: usize,
    pub hosts: Vec<String>,
}

#[derive(Template)]
#[template(path = "ui/fleet.html")]
struct FleetPage {
    chrome: Chrome,
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
    let store = ui.app.fleet.store();
    let counts = store.counts().await?;
    let silent = store
        .hosts(HostFilter {
            state: Some(HostState::Silent),
            image_id: None,
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
    let page = FleetPage {
        chrome: Chrome::of(&who, "fleet"),
        states: HostState::ALL
            .iter()
            .zip(counts.hosts_by_state)
            .map(|(s, n)| (s.name(), n))
            .collect(),
        findings: counts.findings_by_severity,
        budgets: budgets(&ui).await?,
        window: humantime::format_duration(std::time::Duration::from_millis(
            u64::try_from(ui.policy.window_ms).unwrap_or(0),
        ))
        .to_string(),
        mode: mode_name(&ui),
        held: held(&ui).await?,
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
    };
    Ok(Html(page.render()?))
}

fn mode_name(ui: &Ui) -> &'static str {
    match ui.policy.mode {
        crate::config::ReplacementMode::Auto => "auto",
        crate::config::ReplacementMode::DryRun => "dry run",
        crate::config::ReplacementMode::ManualApprove => "manual approval",
    }
}

/// The budget of each of the newest images: marks in the window against what it allows.
async fn budgets(ui: &Ui) -> UiResult<Vec<Budget>> {
    let store = ui.app.fleet.store();
    let images = store
        .images(PageRequest {
            after: None,
            limit: Some(IMAGES_SHOWN),
        })
        .await?;
    let since = now_ms().saturating_sub(ui.policy.window_ms);
    let mut budgets = Vec::with_capacity(images.items.len());
    for image in images.items {
        let id = Some(image.image_id.as_str());
        let live = store.live_hosts_on_image(id).await?;
        budgets.push(Budget {
            used: store.marked_since(id, since).await?,
            allowed: ui.policy.budget(live),
            live,
            image: image.image_id,
        });
    }
    Ok(budgets)
}

/// The hosts whose decision is held, by reason.
async fn held(ui: &Ui) -> UiResult<Vec<Held>> {
    let mut held = Vec::new();
    for (hold, why) in [
        (Hold::Budget, "the image's replacement budget is used up"),
        (Hold::Approval, "waiting for an operator's approval"),
        (Hold::DryRun, "dry run: would have been marked"),
    ] {
        let mut hosts = ui.app.fleet.store().held_hosts(hold).await?;
        if hosts.is_empty() {
            continue;
        }
        let count = hosts.len();
        hosts.sort();
        hosts.truncate(HOSTS_SHOWN);
        held.push(Held {
            hold: hold.name(),
            why,
            count,
            hosts,
        });
    }
    Ok(held)
}
