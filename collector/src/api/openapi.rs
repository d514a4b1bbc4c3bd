//! `GET /v1/openapi.json`: the operator API described as an OpenAPI 3.1 document, so
//! that operators can generate clients and check what they rely on. The document is a
//! static file embedded in the binary (written by hand, next to the handlers it
//! describes in [`super::operator`]); the end-to-end test `tests/tests/openapi.rs`
//! checks real responses of every route it documents against it.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// Serves [`DOCUMENT`]. No token: it says nothing a client could not learn by trying.
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::DOCUMENT;

    #[test]
    fn the_document_is_json_and_names_its_version() {
        let value: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert_eq!(value["openapi"], "3.1.0");
        assert!(value["paths"]["/v1/hosts"]["get"].is_object());
    }
}
