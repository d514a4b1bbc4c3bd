//! The dashboard's stylesheet and script, compiled into the binary, and the headers
//! every dashboard response carries (no caching, no framing, no foreign scripts).

use super::error::UiError;
use crate::error::ApiError;
use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const CSS: &str = include_str!("static/app.css");
const JS: &str = include_str!("static/app.js");

/// The policy every page is served with: only the dashboard's own assets, no inline
/// script, no framing, forms only back to the collector.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `GET /ui/static/{file}`
pub async fn file(Path(name): Path<String>) -> Result<Response, UiError> {
    let (body, kind) = match name.as_str() {
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "app.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return Err(ApiError::NotFound(format!("no asset {name}")).into()),
    };
    Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
}

/// Adds the dashboard's security headers to a response.
pub async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
