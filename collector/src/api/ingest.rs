//! `POST /v1/ingest`: a batch of events from an authenticated agent.
//!
//! The order of checks is the order of cost: identity, rate, size, decoding, schema —
//! so a host that floods or sends garbage costs little — then the fleet stores the
//! batch and only then is it acknowledged.

use super::decode_body;
use crate::app::AppState;
use crate::config::IngestConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::tls::Peer;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use driftwatch_protocol::wire::{
    Batch, BatchAck, Event, EventBody, ImageClaim, RejectedEvent, INGEST_SCHEMA,
};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, instrument, Instrument};

/// Longest event id accepted.
const MAX_EVENT_ID: usize = 200;
/// Longest hostname, image id or digest accepted.
const MAX_NAME: usize = 255;

/// Stores a batch and answers with the host's verdict.
///
/// The work runs in a task of its own: an agent killed or cut off mid-request drops
/// this handler's future, and what was stored must still be counted and decided on,
/// not left half done for the resend to find as a duplicate.
#[instrument(skip_all, fields(host_id = peer.host_id.as_deref().unwrap_or("-")))]
pub async fn ingest(
    State(state): State<Arc<AppState>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<BatchAck>, ApiError> {
    let span = tracing::Span::current();
    tokio::spawn(async move { counted(&state, &peer, &headers, &body).await }.instrument(span))
        .await
        .unwrap_or(Err(ApiError::Unavailable))
        .map(Json)
}

/// [`accept`], with the request's outcome, latency and duplicates counted.
async fn counted(
    state: &AppState,
    peer: &Peer,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<BatchAck, ApiError> {
    let started = Instant::now();
    let result = accept(state, peer, headers, body).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(ApiError::Internal(_) | ApiError::Unavailable) => "error",
        Err(_) => "refused",
    };
    state
        .metrics
        .ingest_requests
        .get_or_create(&Metrics::label("outcome", outcome))
        .inc();
    if let Ok(ack) = &result {
        state
            .metrics
            .ingest_latency
            .observe(started.elapsed().as_secs_f64());
        state
            .metrics
            .ingest_duplicates
            .inc_by(u64::from(ack.duplicates));
        debug!(
            accepted = ack.accepted,
            duplicates = ack.duplicates,
            "Batch stored."
        );
    }
    result
}

async fn accept(
    state: &AppState,
    peer: &Peer,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<BatchAck, ApiError> {
    let host_id = peer.host_id.as_deref().ok_or_else(|| {
        ApiError::Unauthorized(
            "reporting needs a client certificate from the collector's CA".into(),
        )
    })?;
    state.limiter.check(host_id)?;
    state.event_limiter.admit(host_id)?;
    let certificate = peer
        .certificate
        .as_ref()
        .ok_or_else(|| ApiError::Unauthorized("the client certificate cannot be read".into()))?;
    let binding = crate::identity::admit(state.fleet.store(), host_id, certificate).await?;
    let (mut batch, rejected) = decode_batch(headers, body, &state.config.ingest, host_id)?;
    // Before the store sees it: a flood is refused at the cost of its decoding.
    let events = u32::try_from(batch.events.len() + rejected.len()).unwrap_or(u32::MAX);
    state.event_limiter.take(host_id, events)?;
    crate::identity::check_image(&binding, batch.image.image_id.as_deref())?;
    // Silence is the collector's call: the host's claim can only shorten it.
    let image = batch.image.image_id.clone();
    for event in &mut batch.events {
        if let EventBody::Heartbeat(heartbeat) = &mut event.body {
            heartbeat.interval_secs = state.config.hosts.expected_interval(
                image.as_deref(),
                heartbeat.interval_secs,
                binding.daemon,
            );
        }
    }
    let (mut heartbeats, mut findings) = (0u64, 0u64);
    for event in &batch.events {
        match event.body {
            EventBody::Heartbeat(_) => heartbeats += 1,
            EventBody::Finding { .. } => findings += 1,
            // Once in a host's life: not worth a metric of its own.
            EventBody::Provisioned(_) => {}
        }
    }
    let mut ack = state.fleet.ingest(batch).await?;
    if !rejected.is_empty() {
        state
            .metrics
            .ingest_rejected_events
            .inc_by(rejected.len() as u64);
        debug!(rejected = rejected.len(), "Events rejected one by one.");
    }
    ack.rejected = rejected;
    // A certificate of a CA the collector no longer issues from (a rotation): renew now.
    ack.renew = state
        .enrollment()
        .is_some_and(|enrollment| !enrollment.ca.issued(certificate));
    let metrics = &state.metrics;
    metrics
        .ingest_events
        .get_or_create(&Metrics::label("type", "heartbeat"))
        .inc_by(heartbeats);
    metrics
        .ingest_events
        .get_or_create(&Metrics::label("type", "finding"))
        .inc_by(findings.saturating_sub(u64::from(ack.duplicates)));
    Ok(ack)
}

/// Decodes and checks a batch from `host_id` (the authenticated peer): the body's
/// encoding and its decoded size bound, the JSON, the schema, the host, the event
/// count and the lengths of names and ids. Nothing is stored; this is all the ingest
/// path does with the bytes before the fleet sees the batch.
pub fn decode_batch(
    headers: &HeaderMap,
    body: &[u8],
    limits: &IngestConfig,
    host_id: &str,
) -> Result<(Batch, Vec<RejectedEvent>), ApiError> {
    let json = decode_body(headers, body, limits.max_decoded_bytes)?;
    let raw: RawBatch = serde_json::from_slice(&json)
        .map_err(|e| ApiError::BadRequest(format!("the batch is not valid: {e}")))?;
    let (batch, rejected) = raw.split();
    if batch.schema != INGEST_SCHEMA {
        return Err(ApiError::BadRequest(format!(
            "unknown schema {:?}; this collector reads {INGEST_SCHEMA}",
            batch.schema
        )));
    }
    if batch.host_id != host_id {
        return Err(ApiError::Forbidden(format!(
            "this certificate belongs to host {host_id}; it cannot report as {}",
            batch.host_id
        )));
    }
    if batch.events.len() > limits.max_events_per_batch {
        return Err(ApiError::TooLarge(format!(
            "{} events in one batch; at most {} are accepted",
            batch.events.len(),
            limits.max_events_per_batch
        )));
    }
    let too_long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > MAX_NAME);
    if batch.hostname.len() > MAX_NAME
        || too_long(&batch.image.image_id)
        || too_long(&batch.image.baseline_digest)
    {
        return Err(ApiError::BadRequest(format!(
            "hostname, image id and digest are limited to {MAX_NAME} bytes"
        )));
    }
    if let Some(event) = batch
        .events
        .iter()
        .find(|e| e.id.is_empty() || e.id.len() > MAX_EVENT_ID)
    {
        return Err(ApiError::BadRequest(format!(
            "event ids must be 1 to {MAX_EVENT_ID} bytes (got {} bytes)",
            event.id.len()
        )));
    }
    Ok((batch, rejected))
}

/// A batch whose events are read one by one: one event this collector cannot read
/// (a kind from a newer agent) is rejected alone, not with its batch.
#[derive(Deserialize)]
struct RawBatch {
    schema: String,
    host_id: String,
    hostname: String,
    image: ImageClaim,
    events: Vec<serde_json::Value>,
}

impl RawBatch {
    /// The batch of the events that read, and the ones that did not.
    fn split(self) -> (Batch, Vec<RejectedEvent>) {
        let mut rejected = Vec::new();
        let events = self
            .events
            .into_iter()
            .filter_map(|value| {
                let id = value
                    .get("id")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(MAX_EVENT_ID)
                    .collect::<String>();
                serde_json::from_value::<Event>(value)
                    .map_err(|e| {
                        rejected.push(RejectedEvent {
                            id,
                            error: format!("this collector cannot read the event: {e}"),
                        })
                    })
                    .ok()
            })
            .collect();
        let batch = Batch {
            schema: self.schema,
            host_id: self.host_id,
            hostname: self.hostname,
            image: self.image,
            events,
        };
        (batch, rejected)
    }
}
