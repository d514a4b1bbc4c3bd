//! Prometheus metrics on `/metrics` (OpenMetrics text).
//!
//! Counters and histograms are updated where things happen; the fleet gauges (hosts by
//! state, findings by severity) are read from the store when scraped, so they are
//! right even with several collectors sharing one database.

use crate::store::FleetCounts;
use driftwatch_protocol::wire::HostState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label set with one label.
type Label = Vec<(&'static str, String)>;

/// Every metric the collector exports.
pub struct Metrics {
    registry: Registry,
    /// Ingest requests by outcome (`accepted`, `refused`, `error`).
    pub ingest_requests: Family<Label, Counter>,
    /// Events stored by type (`heartbeat`, `finding`), duplicates excluded.
    pub ingest_events: Family<Label, Counter>,
    /// Duplicate events (retries).
    pub ingest_duplicates: Counter,
    /// Seconds from request to acknowledgement, store commit included.
    pub ingest_latency: Histogram,
    /// Alerts sent by kind.
    pub alerts_sent: Family<Label, Counter>,
    /// Webhook deliveries by outcome (`ok`, `failed`).
    pub webhook_deliveries: Family<Label, Counter>,
    /// Alerts or actions waiting to be delivered.
    pub queue_depth: Family<Label, Gauge<i64, std::sync::atomic::AtomicI64>>,
    /// Replacement decisions the budget held back.
    pub budget_stops: Counter,
    /// Failed authentications (bad, revoked or expired tokens), by where (`api`,
    /// `enroll`).
    pub auth_failures: Family<Label, Counter>,
    /// Hosts by state (set at scrape).
    hosts: Family<Label, Gauge<f64, AtomicU64>>,
    /// Findings by severity (set at scrape).
    findings: Family<Label, Gauge<f64, AtomicU64>>,
    /// Registered images (set at scrape).
    images: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `driftwatch_collector` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("driftwatch_collector");
        let metrics = Metrics {
            ingest_requests: Family::default(),
            ingest_events: Family::default(),
            ingest_duplicates: Counter::default(),
            // 1 ms to ~4 s.
            ingest_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 13),
            ),
            alerts_sent: Family::default(),
            webhook_deliveries: Family::default(),
            queue_depth: Family::default(),
            budget_stops: Counter::default(),
            auth_failures: Family::default(),
            hosts: Family::default(),
            findings: Family::default(),
            images: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ingest_requests",
            "Ingest requests by outcome",
            metrics.ingest_requests.clone(),
        );
        registry.register(
            "ingest_events",
            "Events stored, by type",
            metrics.ingest_events.clone(),
        );
        registry.register(
            "ingest_duplicate_events",
            "Events received again and not stored twice",
            metrics.ingest_duplicates.clone(),
        );
        registry.register(
            "ingest_latency_seconds",
            "Time from request to acknowledgement",
            metrics.ingest_latency.clone(),
        );
        registry.register(
            "alerts_sent",
            "Alerts sent, by kind",
            metrics.alerts_sent.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries, by outcome",
            metrics.webhook_deliveries.clone(),
        );
        registry.register(
            "queue_depth",
            "Items waiting in the outbox, by queue",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed authentications, by where",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "budget_stops",
            "Replacements held back by the budget",
            metrics.budget_stops.clone(),
        );
        registry.register("hosts", "Hosts by state", metrics.hosts.clone());
        registry.register("findings", "Findings by severity", metrics.findings.clone());
        registry.register("images", "Registered images", metrics.images.clone());
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Renders the registry after setting the fleet gauges from `counts`.
    pub fn render(&self, counts: &FleetCounts) -> String {
        for (state, count) in HostState::ALL.iter().zip(counts.hosts_by_state) {
            self.hosts
                .get_or_create(&vec![("state", state.name().to_string())])
                .set(count as f64);
        }
        for (severity, count) in ["critical", "high", "medium", "low"]
            .iter()
            .zip(counts.findings_by_severity)
        {
            self.findings
                .get_or_create(&vec![("severity", severity.to_string())])
                .set(count as f64);
        }
        self.images.set(counts.images as f64);
        // The queues are the store's outbox: their depth is what it holds, on every
        // replica alike.
        for (queue, depth) in [
            ("alerts", counts.pending_alerts),
            ("commands", counts.pending_commands),
        ] {
            self.queue_depth
                .get_or_create(&Metrics::label("queue", queue))
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The one-label set `name=value`.
    pub fn label(name: &'static str, value: &str) -> Label {
        vec![(name, value.to_string())]
    }
}
