//! How a dashboard request fails: an HTML page with the status [`ApiError::status`]
//! picks (the one place statuses are chosen), or a redirect to the sign-in page.

use crate::error::ApiError;
use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

/// A dashboard request that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// No live session: go and sign in.
    #[error("sign in first")]
    SignIn,
    /// What the API would answer, shown as a page.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A template failed to render (a bug; logged).
    #[error("the page could not be rendered")]
    Render(#[from] askama::Error),
}

impl From<crate::store::StoreError> for UiError {
    fn from(err: crate::store::StoreError) -> UiError {
        UiError::Api(err.into())
    }
}

/// A dashboard result.
pub type UiResult<T> = Result<T, UiError>;

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: String,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::SignIn => return Redirect::to("/ui/login").into_response(),
            UiError::Api(ApiError::Internal(source)) => {
                tracing::error!(error = %source, "Dashboard request failed in the store.");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            UiError::Api(api) => api.status(),
            UiError::Render(source) => {
                tracing::error!(error = %source, "A dashboard page failed to render.");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message: self.to_string(),
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => status.into_response(),
        }
    }
}
