//! The action log (`/ui/actions`): every decision, delivery and operator action with
//! its outcome, newest first, filterable by host; and what the outbox still owes.

use super::error::UiResult;
use super::query::cursor;
use super::signin::SignedIn;
use super::view::{ActionRow, Chrome};
use super::Ui;
use crate::store::{ActionFilter, PageRequest};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use serde::Deserialize;
use std::sync::Arc;

/// Actions per page.
const ACTIONS_PER_PAGE: u32 = 100;

/// `/ui/actions?host=&cursor=`
#[derive(Debug, Default, Deserialize)]
pub struct ActionsQuery {
    #[serde(default)]
    host: String,
    #[serde(default)]
    cursor: String,
}

#[derive(Template)]
#[template(path = "ui/actions.html")]
struct ActionsPage {
    chrome: Chrome,
    host: String,
    actions: Vec<ActionRow>,
    next: Option<String>,
    pending_alerts: u64,
    pending_commands: u64,
}

/// `GET /ui/actions`
pub async fn page(
    State(ui): State<Arc<Ui>>,
    who: SignedIn,
    Query(query): Query<ActionsQuery>,
) -> UiResult<Html<String>> {
    let store = ui.app.fleet.store();
    let host = query.host.trim().to_string();
    let after = cursor(&query.cursor)?;
    let actions = store
        .actions(ActionFilter {
            host_id: Some(host.clone()).filter(|h| !h.is_empty()),
            page: PageRequest {
                after,
                limit: Some(ACTIONS_PER_PAGE),
            },
        })
        .await?;
    let counts = store.counts().await?;
    let page = ActionsPage {
        chrome: Chrome::of(&who, "actions"),
        host,
        actions: actions.items.iter().map(ActionRow::of).collect(),
        next: actions.next_cursor.map(|c| c.encode()),
        pending_alerts: counts.pending_alerts,
        pending_commands: counts.pending_commands,
    };
    Ok(Html(page.render()?))
}
