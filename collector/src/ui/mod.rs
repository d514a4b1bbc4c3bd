//! The fleet dashboard, served by the collector under `/ui/`: server-rendered pages
//! (askama templates) that show the fleet's drift and let operators act on it.
//!
//! Every page works with JavaScript off; a few lines of script ([`assets`]) show times
//! in the viewer's zone and refresh the fleet and host pages in place, saying when the
//! collector is unreachable. Nothing is fetched from elsewhere: the stylesheet and
//! the script are compiled into the binary, and the pages' Content-Security-Policy
//! allows only them.
//!
//! Sign-in ([`signin`], [`session`]) goes through [`crate::auth::authenticate`], so a
//! token means on the dashboard what it means on the API: a viewer reads every page and
//! sees no button that acts; an operator's `Mark`, `Unmark`, `Approve` and `Revoke`
//! ([`act`]) carry the session's CSRF token and are logged with the token's name.
//!
//! Pages: the fleet ([`fleet`]), hosts and a host ([`hosts`]), drift across the fleet
//! ([`drift`]), images and the difference between two ([`images`], [`compare`]) and
//! the action log ([`log`]).

pub mod act;
pub mod assets;
pub mod compare;
pub mod drift;
pub mod error;
pub mod fleet;
pub mod hosts;
pub mod images;
pub mod log;
pub mod query;
pub mod session;
pub mod signin;
pub mod view;

use crate::app::AppState;
use crate::store::Policy;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// What the dashboard's handlers share.
pub struct Ui {
    /// The collector's state (store, fleet, configuration).
    pub app: Arc<AppState>,
    /// Signed-in browsers (kept in the store: any replica serves them).
    pub sessions: session::Sessions,
    /// The replacement policy, for the budgets the fleet page shows.
    pub policy: Policy,
    /// The fleet page's summary, shared by every session for a few seconds.
    pub fleet_summary: fleet::CachedSummary,
}

impl Ui {
    /// The dashboard of this collector.
    pub fn new(app: Arc<AppState>) -> Result<Ui, globset::Error> {
        let policy = Policy::new(&app.config)?;
        Ok(Ui {
            sessions: session::Sessions::new(Arc::clone(&app)),
            app,
            policy,
            fleet_summary: Default::default(),
        })
    }
}

/// The dashboard's routes, all under `/ui` (`/ui` itself leads to `/ui/`).
pub fn router<S: Clone + Send + Sync + 'static>(ui: Arc<Ui>) -> Router<S> {
    Router::new()
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::to("/ui/") }),
        )
        .route("/ui/", get(fleet::page))
        .route("/ui/login", get(signin::form).post(signin::login))
        .route("/ui/logout", post(signin::logout))
        .route("/ui/hosts", get(hosts::list))
        .route("/ui/hosts/{host_id}", get(hosts::detail))
        .route("/ui/hosts/{host_id}/{action}", post(act::host_action))
        .route("/ui/drift", get(drift::page))
        .route("/ui/images", get(images::page))
        .route("/ui/images/diff", get(images::diff))
        .route("/ui/actions", get(log::page))
        .route("/ui/static/{file}", get(assets::file))
        .layer(axum::middleware::map_response(assets::secure_headers))
        .with_state(ui)
}

/// The dashboard for [`crate::app::app`]. A policy the configuration cannot compile is
/// refused at start-up long before this; should it happen here, the dashboard is left
/// out and the API still served.
pub fn mount<S: Clone + Send + Sync + 'static>(app: Arc<AppState>) -> Router<S> {
    match Ui::new(app) {
        Ok(ui) => router(Arc::new(ui)),
        Err(error) => {
            tracing::error!(%error, "The dashboard is off: the replacement rules do not compile.");
            Router::new()
        }
    }
}

#[cfg(test)]
mod tests;
