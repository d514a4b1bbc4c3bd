//! `ApiError`: the only place that picks an HTTP status and what the client reads.
//!
//! The collector faces the network, so a response says what the client did wrong in one
//! sentence and never how the collector is built: store and I/O failures are logged
//! here and answered with a bare 500 or 503.

use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use driftwatch_protocol::wire::ErrorBody;
use tracing::error;

/// A request that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed: bad JSON, wrong schema, invalid ids (400).
    #[error("{0}")]
    BadRequest(String),
    /// No credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials that do not allow this (403): another host's id, a revoked host, a
    /// bad token, an untrusted baseline signature.
    #[error("{0}")]
    Forbidden(String),
    /// No such host or image (404).
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with what is stored (409).
    #[error("{0}")]
    Conflict(String),
    /// Too large, compressed or decompressed (413).
    #[error("{0}")]
    TooLarge(String),
    /// An encoding the collector does not read (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Over the per-host rate (429).
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests {
        /// Seconds until a retry is welcome.
        retry_after_secs: u64,
    },
    /// The store failed (500; detail logged only).
    #[error("internal error")]
    Internal(#[source] StoreError),
    /// Shutting down (503).
    #[error("the collector is shutting down")]
    Unavailable,
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::NotFound { what, id } => ApiError::NotFound(format!("no {what} {id}")),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::BadCursor => ApiError::BadRequest("invalid cursor".into()),
            StoreError::Closed => ApiError::Unavailable,
            other => ApiError::Internal(other),
        }
    }
}

impl ApiError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(source) = &self {
            error!(error = %source, "Request failed in the store.");
        }
        let status = self.status();
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if let ApiError::TooManyRequests { retry_after_secs } = self {
            if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
