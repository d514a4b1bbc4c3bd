//! Signing in and out, and [`SignedIn`]: the extractor every page takes, which turns
//! the session cookie back into the principal and checks CSRF tokens.

use super::error::{UiError, UiResult};
use super::session::{clear_cookie, cookie_value, set_cookie, Session};
use super::Ui;
use crate::auth::{Principal, Right};
use crate::error::ApiError;
use askama::Template;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use std::sync::Arc;

/// A request of a signed-in browser.
pub struct SignedIn {
    /// The session's id (from the cookie).
    id: String,
    /// The session.
    pub session: Session,
}

impl SignedIn {
    /// Who is signed in.
    pub fn principal(&self) -> &Principal {
        &self.session.principal
    }

    /// `Ok` when `csrf` is this session's token and the principal holds `right`:
    /// the check every form that changes something passes first.
    pub fn may(&self, csrf: &str, right: Right) -> Result<(), ApiError> {
        if !self.session.csrf_matches(csrf) {
            return Err(ApiError::Forbidden(
                "the form's CSRF token is missing or wrong; reload the page and try again".into(),
            ));
        }
        self.principal().require(right)
    }
}

impl FromRequestParts<Arc<Ui>> for SignedIn {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, ui: &Arc<Ui>) -> UiResult<SignedIn> {
        let id = cookie_value(&parts.headers).ok_or(UiError::SignIn)?;
        let session = ui.sessions.get(&id).await?.ok_or(UiError::SignIn)?;
        // Every page reads the fleet; a credential that may not is turned away here.
        session.principal.require(Right::Read)?;
        Ok(SignedIn { id, session })
    }
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage<'a> {
    error: Option<&'a str>,
}

/// `GET /ui/login`
pub async fn form() -> UiResult<Html<String>> {
    Ok(Html(LoginPage { error: None }.render()?))
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /ui/login`: a session for a valid token, the form again otherwise.
pub async fn login(State(ui): State<Arc<Ui>>, Form(form): Form<LoginForm>) -> UiResult<Response> {
    let principal = match crate::auth::authenticate(&ui.app, &form.token).await {
        Ok(principal) => principal,
        Err(ApiError::Forbidden(_) | ApiError::Unauthorized(_)) => {
            let page = LoginPage {
                error: Some("That token is not valid."),
            };
            return Ok((StatusCode::FORBIDDEN, Html(page.render()?)).into_response());
        }
        Err(other) => return Err(other.into()),
    };
    principal.require(Right::Read)?;
    tracing::info!(name = %principal.name, role = principal.role.name(), "Dashboard sign-in.");
    let id = ui.sessions.open(principal, &form.token).await?;
    let mut headers = HeaderMap::new();
    if let Ok(value) = set_cookie(&id).parse() {
        headers.insert(header::SET_COOKIE, value);
    }
    Ok((headers, Redirect::to("/ui/")).into_response())
}

/// A form that only carries its CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/logout`
pub async fn logout(
    State(ui): State<Arc<Ui>>,
    who: SignedIn,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    who.may(&form.csrf, Right::Read)?;
    ui.sessions.close(&who.id).await?;
    let mut headers = HeaderMap::new();
    if let Ok(value) = clear_cookie().parse() {
        headers.insert(header::SET_COOKIE, value);
    }
    Ok((headers, Redirect::to("/ui/login")).into_response())
}
