//! HTTP handlers: agent ingest and enrollment, and the operator API.
//!
//! Agents authenticate by their client certificate ([`crate::tls::Peer`]); operators
//! by the bearer token in `Authorization` (a [`Principal`]). What is shared by the
//! handlers lives here: the per-host rate limiter, body decoding with its bounds, and
//! time formatting.

pub mod enroll;
pub mod ingest;
pub mod openapi;
pub mod operator;
pub mod tokens;

pub use crate::limiter::RateLimiter;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use std::io::Read;
use std::sync::Arc;

/// Milliseconds since the epoch as RFC 3339: the one formatter both crates share, under
/// the name the store and the fleet logic use.
pub use driftwatch_protocol::time::rfc3339_ms as rfc3339;

/// The request body, decompressed when `Content-Encoding: gzip`, never beyond
/// `max_decoded` bytes.
pub fn decode_body(
    headers: &HeaderMap,
    body: &[u8],
    max_decoded: usize,
) -> Result<Vec<u8>, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => {
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(max_decoded as u64 + 1)
                .read_to_end(&mut decoded)
                .map_err(|e| ApiError::BadRequest(format!("the gzip body is corrupt: {e}")))?;
            if decoded.len() > max_decoded {
                return Err(ApiError::TooLarge(format!(
                    "the body expands beyond {max_decoded} bytes"
                )));
            }
            Ok(decoded)
        }
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "content encoding {other:?} is not supported (use gzip or none)"
        ))),
    }
}

/// A caller authenticated by the bearer token in `Authorization`; each handler then
/// checks the right it needs with [`Principal::require`].
impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Principal, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::Unauthorized("use Authorization: Bearer <token>".into()))?;
        match parts.extensions.get::<crate::tls::Peer>() {
            Some(peer) => crate::auth::authenticate_from(state, token, peer.address.ip()).await,
            None => crate::auth::authenticate(state, token).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_gzip_bomb_is_too_large_and_garbage_is_bad() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![b'a'; 1 << 20]).unwrap();
        let bomb = encoder.finish().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(matches!(
            decode_body(&headers, &bomb, 1000),
            Err(ApiError::TooLarge(_))
        ));
        assert_eq!(
            decode_body(&headers, &bomb, 1 << 20).unwrap().len(),
            1 << 20
        );
        assert!(matches!(
            decode_body(&headers, b"not gzip", 1000),
            Err(ApiError::BadRequest(_))
        ));
        headers.insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        assert!(matches!(
            decode_body(&headers, b"x", 1000),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }
}
