//! What an operator does from a host's page: `Mark`, `Unmark`, `Approve` and `Revoke`,
//! each a form that carries the session's CSRF token, checked for the `Act` right, and
//! carried out by the fleet exactly as the API's calls are, logged with the token's name.

use super::error::UiResult;
use super::hosts::url_path;
use super::signin::SignedIn;
use super::Ui;
use crate::auth::Right;
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::response::Redirect;
use axum::Form;
use serde::Deserialize;
use std::sync::Arc;

/// Longest reason an operator may give for a mark.
const MAX_REASON_CHARS: usize = 500;

/// An acting form.
#[derive(Deserialize)]
pub struct ActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// `POST /ui/hosts/{id}/{approve|mark|unmark|revoke}`, then back to the host.
pub async fn host_action(
    State(ui): State<Arc<Ui>>,
    who: SignedIn,
    Path((host_id, action)): Path<(String, String)>,
    Form(form): Form<ActForm>,
) -> UiResult<Redirect> {
    who.may(&form.csrf, Right::Act)?;
    let fleet = &ui.app.fleet;
    let by = who.principal().name.as_str();
    let host = match action.as_str() {
        "approve" => fleet.approve(&host_id, by).await?,
        "mark" => {
            let reason = form.reason.trim();
            if reason.chars().count() > MAX_REASON_CHARS {
                return Err(ApiError::BadRequest(format!(
                    "the reason is longer than {MAX_REASON_CHARS} characters"
                ))
                .into());
            }
            let reason = if reason.is_empty() {
                "requested by an operator"
            } else {
                reason
            };
            fleet.operator_mark(&host_id, reason, by).await?
        }
        "unmark" => fleet.unmark(&host_id, by).await?,
        "revoke" => fleet.revoke(&host_id, by).await?,
        other => {
            return Err(ApiError::NotFound(format!(
                "no host action {other:?} (approve, mark, unmark, revoke)"
            ))
            .into())
        }
    };
    tracing::info!(host_id = %host.host_id, %action, by, "Dashboard action.");
    Ok(Redirect::to(&format!(
        "/ui/hosts/{}",
        url_path(&host.host_id)
    )))
}
