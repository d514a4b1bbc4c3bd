//! The collector's ingest decoder: `Content-Encoding` (gzip or none) within the decoded
//! size bound, then the batch JSON and its checks, as `POST /v1/ingest` runs them for an
//! authenticated host. The first byte picks the encoding; small bounds let the fuzzer
//! reach them.

use axum::http::{header, HeaderMap, HeaderValue};
use driftwatch_collector::api::ingest::decode_batch;
use driftwatch_collector::config::IngestConfig;

/// Runs the `ingest` target on one input.
pub fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    match mode % 3 {
        0 => {}
        1 => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        _ => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("GZip "));
        }
    }
    let limits = IngestConfig {
        max_decoded_bytes: 64 << 10,
        max_events_per_batch: 50,
        ..IngestConfig::default()
    };
    let _ = decode_batch(&headers, body, &limits, "host-1");
}
