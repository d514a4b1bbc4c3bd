//! The loopback endpoint: `/healthz` for load balancers and autoscalers (200 while the
//! host may serve, 503 once it is marked for replacement, locally or by the collector),
//! `/status` for people and `driftwatch status`, `/metrics` for Prometheus.

use super::{Shared, Status};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The router, a function of the shared state (tests call it without a socket).
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let status = shared.status();
    match &status.mark {
        Some(mark) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"status": "marked", "reason": mark.reason, "since": mark.since}),
            ),
        ),
        None => (
            StatusCode::OK,
            Json(serde_json::json!({"status": status.state})),
        ),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Status> {
    Json(shared.status().clone())
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let text = render_metrics(&shared.status());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// The metrics of a status snapshot (built per request: a handful of series).
fn render_metrics(status: &Status) -> String {
    let mut registry = Registry::with_prefix("driftwatch");
    let findings = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    for severity in driftwatch_protocol::report::Severity::ALL_DESCENDING {
        let count = status
            .findings
            .iter()
            .filter(|r| r.finding.severity() == severity)
            .count();
        findings
            .get_or_create(&vec![("severity", severity.name())])
            .set(count as i64);
    }
    registry.register("findings", "Findings remembered, by severity", findings);
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: i64| {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    };
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    };
    gauge(
        &mut registry,
        "marked",
        "1 when the host is marked for replacement",
        i64::from(status.mark.is_some()),
    );
    gauge(
        &mut registry,
        "watch_degradations",
        "Ways real-time watching is degraded",
        status.degradations.len() as i64,
    );
    gauge(
        &mut registry,
        "state_problems",
        "Problems with the state directory (corrupt at start, saves failing)",
        status.state_problems.len() as i64,
    );
    counter(
        &mut registry,
        "hash_caches_discarded",
        "Hash caches found damaged and discarded (every file re-read, the cache rebuilt)",
        status.hash_caches_discarded,
    );
    counter(
        &mut registry,
        "full_checks",
        "Full checks finished",
        status.full_checks,
    );
    counter(
        &mut registry,
        "watch_rescans",
        "Full checks run because watch events were lost",
        status.rescans,
    );
    counter(
        &mut registry,
        "fast_checks",
        "Fast verifications finished",
        status.fast_checks,
    );
    counter(
        &mut registry,
        "watch_rechecks",
        "Paths re-checked after watch events",
        status.watch_rechecks,
    );
    let hashed = crate::source::hashing::totals();
    for (name, help, value) in [
        (
            "hashed_files",
            "Files hashed (scan, package verification, executables)",
            hashed.files,
        ),
        (
            "hashed_bytes",
            "Bytes read from disk for hashing",
            hashed.bytes_read,
        ),
        (
            "hashed_hole_bytes",
            "Bytes of sparse holes hashed as zeros without reading",
            hashed.hole_bytes,
        ),
        (
            "hash_refusals",
            "Files not hashed: above the size limit, changing or cancelled",
            hashed.refused,
        ),
    ] {
        counter(&mut registry, name, help, value);
    }
    if let Some(collector) = &status.collector {
        gauge(
            &mut registry,
            "collector_reachable",
            "1 when the collector acknowledged the last request",
            i64::from(collector.reachable),
        );
        gauge(
            &mut registry,
            "collector_spooled_events",
            "Events in the spool waiting for the collector",
            collector.spooled_events as i64,
        );
        gauge(
            &mut registry,
            "collector_spool_bytes",
            "Bytes the spool holds on disk",
            collector.spool_bytes as i64,
        );
        counter(
            &mut registry,
            "collector_events_sent",
            "Events the collector acknowledged, heartbeats included",
            collector.events_sent,
        );
        counter(
            &mut registry,
            "collector_events_rejected",
            "Events the collector rejected one by one, dropped",
            collector.events_rejected,
        );
        if let Some(expires) = collector.certificate_expires_unix {
            gauge(
                &mut registry,
                "collector_certificate_expiry_timestamp_seconds",
                "When the client certificate in use expires, in seconds since the epoch",
                expires,
            );
        }
        counter(
            &mut registry,
            "collector_certificate_renewals",
            "Client certificates renewed",
            collector.certificate_renewals,
        );
        counter(
            &mut registry,
            "collector_certificate_renewal_failures",
            "Certificate renewals that failed (each is retried with backoff)",
            collector.certificate_renewal_failures,
        );
        counter(
            &mut registry,
            "collector_requests_failed",
            "Requests to the collector that failed",
            collector.requests_failed,
        );
        counter(
            &mut registry,
            "collector_events_spooled",
            "Events written to the spool",
            collector.events_spooled,
        );
    }
    let duration = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    duration.set(status.last_full_check_ms.unwrap_or(0) as f64 / 1000.0);
    registry.register(
        "last_full_check_duration_seconds",
        "Duration of the last full check",
        duration,
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(shared: &Arc<Shared>, uri: &str) -> (StatusCode, String) {
        let response = app(Arc::clone(shared))
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_turns_503_once_marked() {
        let shared = Arc::new(Shared::default());
        shared.status().state = "clean";
        assert_eq!(get(&shared, "/healthz").await.0, StatusCode::OK);
        shared.status().mark = Some(super::super::state::Mark {
            since: "now".into(),
            reason: "critical finding".into(),
            origin: super::super::state::MarkOrigin::Collector,
        });
        let (code, body) = get(&shared, "/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("critical finding"), "{body}");
        let (code, body) = get(&shared, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("driftwatch_marked 1"), "{body}");
        assert!(body.contains("driftwatch_watch_rescans_total 0"), "{body}");
        assert!(
            body.contains("driftwatch_findings{severity=\"critical\"} 0"),
            "{body}"
        );
        assert_eq!(get(&shared, "/nope").await.0, StatusCode::NOT_FOUND);
        // Without a collector there are no collector series.
        assert!(!body.contains("collector"), "{body}");
    }

    #[tokio::test]
    async fn collector_state_is_on_status_and_metrics() {
        let shared = Arc::new(Shared::default());
        shared.status().collector = Some(crate::sink::collector::CollectorStatus {
            url: "https://collector:8443".into(),
            host_id: "web-1".into(),
            reachable: true,
            spooled_events: 3,
            spool_bytes: 900,
            last_ack: Some("2026-01-01T00:00:00Z".into()),
            last_error: None,
            host_state: Some(driftwatch_protocol::wire::HostState::Drifted),
            events_sent: 12,
            requests_failed: 2,
            events_spooled: 15,
            events_rejected: 1,
            certificate_expires: Some("2027-01-01T00:00:00Z".into()),
            certificate_expires_unix: Some(1_798_761_600),
            certificate_renewals: 4,
            certificate_renewal_failures: 1,
        });
        let (_, body) = get(&shared, "/metrics").await;
        for line in [
            "driftwatch_collector_reachable 1",
            "driftwatch_collector_spooled_events 3",
            "driftwatch_collector_events_sent_total 12",
            "driftwatch_collector_requests_failed_total 2",
            "driftwatch_collector_events_rejected_total 1",
            "driftwatch_collector_events_spooled_total 15",
            "driftwatch_collector_certificate_expiry_timestamp_seconds 1798761600",
            "driftwatch_collector_certificate_renewals_total 4",
            "driftwatch_collector_certificate_renewal_failures_total 1",
            "driftwatch_hashed_bytes_total ",
            "driftwatch_hash_refusals_total ",
        ] {
            assert!(body.contains(line), "{line} missing: {body}");
        }
        let (_, body) = get(&shared, "/status").await;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["collector"]["host_state"], "drifted");
        assert_eq!(status["collector"]["last_ack"], "2026-01-01T00:00:00Z");
    }
}
