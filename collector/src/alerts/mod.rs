//! Grouped alerts: many hosts, one message.
//!
//! Hosts of one image are identical, so when something goes wrong with an image — a bad
//! package pushed by configuration management, an attacker's tool spread across the
//! fleet, a region losing its network — it goes wrong on all of them within seconds.
//! One alert per host would bury the on-call person under 40 copies of the same
//! message. Instead, the collector raises an [`Occurrence`] per host — in the store,
//! in the transaction that causes it — and occurrences of the same change (same kind,
//! image and group) gather for `alerts.group_wait_secs`; then **one** alert goes out:
//! "modified /usr/bin/ssh on 40 of 40 hosts of image ami-123".
//!
//! A host alerted for a change is not alerted for it again (until the change has not
//! been seen for a day); hosts that show the change later make a follow-up alert ("on
//! 3 more hosts, 43 of 60 hosts of image ami-123").
//!
//! A change inside containers is about the containers' image, not the hosts': its
//! occurrences group by the containers' image across hosts of any image, and each
//! container counts once ("added file /usr/local/bin/x in 12 containers of image
//! shop/api@sha256:… on 5 hosts"; a new container showing it later is a follow-up).
//!
//! Nothing of this is in memory, so nothing is lost on a restart and any replica can
//! carry on: the parts are
//! - [`grouping`]: the job, under a lease, that flushes due groups into the outbox;
//! - [`webhook`]: the receivers, and the outbox worker that posts to them (at least
//!   once, with an `Idempotency-Key`, retried with backoff and jitter for hours);
//! - [`wording`]: how an alert reads;
//! - [`roots`]: which CAs a receiver's certificate is checked against (rustls with the
//!   ring provider; without a `ca_file`, an `https://` receiver needs the system's CA
//!   bundle, and the collector refuses to start when there is none).

pub mod grouping;
pub(crate) mod roots;
mod webhook;
mod wording;

pub use crate::store::outbox::{Alert, AlertKind, Occurrence};
pub use wording::ALERT_SCHEMA;

use crate::config::CollectorConfig;
use crate::metrics::Metrics;
use crate::store::{DynStore, Policy, StoreResult};
use driftwatch_protocol::backoff::Backoff;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The first retry waits about this long; each next one about twice as long.
const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// The longest wait between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// Why alerting cannot start.
#[derive(Debug, Error)]
pub enum AlertError {
    /// A webhook's `ca_file` cannot be read or holds no certificate.
    #[error("webhook {url}: cannot use ca_file {path}: {message}")]
    ReadCaFile {
        /// The webhook.
        url: String,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An `https://` webhook without `ca_file`, and no system CA bundle.
    #[error(
        "webhook {url}: no ca_file is set and no system CA bundle was found \
         ($SSL_CERT_FILE, {}); set ca_file",
        roots::SYSTEM_CA_BUNDLES.join(", ")
    )]
    NoRoots {
        /// The webhook.
        url: String,
    },
    /// The HTTP client cannot be built.
    #[error("webhook {url}: cannot build an HTTP client: {message}")]
    BuildClient {
        /// The webhook.
        url: String,
        /// Why.
        message: String,
    },
    /// A replacement rule does not compile.
    #[error("bad glob in a replacement rule: {0}")]
    Policy(#[from] globset::Error),
}

/// Files occurrences outside a decision and starts this replica's part of alerting:
/// the grouping job (under its lease) and the webhook worker. Cheap to clone.
#[derive(Clone)]
pub struct Alerter {
    store: DynStore,
    policy: Arc<Policy>,
}

impl Alerter {
    /// Builds a client per webhook and spawns the grouping job and the webhook worker
    /// on the current tokio runtime (panics outside one).
    ///
    /// Fails when a webhook's `ca_file` cannot be used, or an `https://` webhook has
    /// none and the system has no CA bundle.
    pub fn start(
        config: &CollectorConfig,
        store: DynStore,
        metrics: Arc<Metrics>,
    ) -> Result<Alerter, AlertError> {
        let backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        Alerter::start_with(
            config,
            store,
            metrics,
            backoff,
            crate::delivery::replica_id(),
        )
    }

    fn start_with(
        config: &CollectorConfig,
        store: DynStore,
        metrics: Arc<Metrics>,
        backoff: Backoff,
        replica: &str,
    ) -> Result<Alerter, AlertError> {
        let webhooks = Alerter::webhooks(config, Arc::clone(&metrics), backoff)?;
        let policy = Arc::new(Policy::new(config)?);
        grouping::spawn(
            Arc::clone(&store),
            Arc::clone(&policy),
            metrics,
            replica.to_string(),
        );
        crate::delivery::spawn(Arc::clone(&store), replica.to_string(), Arc::new(webhooks));
        Ok(Alerter { store, policy })
    }

    /// The receivers of the configured webhooks.
    fn webhooks(
        config: &CollectorConfig,
        metrics: Arc<Metrics>,
        backoff: Backoff,
    ) -> Result<webhook::Webhooks, AlertError> {
        let mut system_roots = None;
        let receivers = config
            .webhooks
            .iter()
            .map(|w| Ok((w.url.clone(), webhook::Receiver::new(w, &mut system_roots)?)))
            .collect::<Result<_, AlertError>>()?;
        Ok(webhook::Webhooks {
            receivers,
            metrics,
            backoff,
        })
    }

    /// Files an occurrence into its group, durably.
    pub async fn raise(&self, occurrence: Occurrence) -> StoreResult<()> {
        self.store
            .raise(vec![occurrence], Arc::clone(&self.policy))
            .await
    }

    /// The policy the alerts were started with.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{WebhookConfig, WebhookFormat};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{now_ms, ActionFilter, ActionRecord, IngestBody, IngestEvent, IngestRecord};
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::Json;
    use driftwatch_protocol::report::Severity;
    use std::collections::VecDeque;
    use std::path::Path;
    use std::sync::Mutex;
    use tokio::time::Instant;

    pub(crate) const IMAGE: &str = "img-1";

    /// A configuration with these webhooks and a 1 s group wait.
    pub(crate) fn config(webhooks: Vec<WebhookConfig>) -> CollectorConfig {
        let mut config: CollectorConfig = toml::from_str(
            r#"
            [tls]
            cert_file = "/x/server.pem"
            key_file = "/x/server.key"
            client_ca_file = "/x/ca.pem"
            [auth]
            operator_token_file = "/x/operator.token"
            "#,
        )
        .unwrap();
        config.alerts.group_wait_secs = 1;
        config.webhooks = webhooks;
        config
    }

    pub(crate) fn webhook(url: &str, format: WebhookFormat, events: &[&str]) -> WebhookConfig {
        WebhookConfig {
            url: url.to_string(),
            format,
            events: events.iter().map(|e| e.to_string()).collect(),
            ca_file: None,
            max_attempts: 5,
            timeout_secs: 5,
        }
    }

    /// An in-memory store with these hosts on [`IMAGE`].
    pub(crate) async fn store_with_hosts(hosts: &[&str]) -> DynStore {
        let store: DynStore = Arc::new(SqliteStore::open_memory().unwrap());
        add_hosts(&store, hosts).await;
        store
    }

    /// Adds these hosts on [`IMAGE`], each with one heartbeat.
    pub(crate) async fn add_hosts(store: &DynStore, hosts: &[&str]) {
        let policy = Arc::new(Policy::new(&config(Vec::new())).unwrap());
        for host in hosts {
            store
                .ingest(
                    IngestRecord {
                        host_id: host.to_string(),
                        hostname: format!("{host}.example"),
                        image_id: Some(IMAGE.to_string()),
                        baseline_digest: Some("blake3:00".into()),
                        events: vec![IngestEvent {
                            id: "hb1".into(),
                            body: IngestBody::Heartbeat {
                                agent_version: "0.1.0".into(),
                                interval_secs: 60,
                            },
                        }],
                        collector_findings: Vec::new(),
                        received_ms: now_ms(),
                    },
                    Arc::clone(&policy),
                )
                .await
                .unwrap();
        }
    }

    /// Polls the action log until `n` actions named `action` are in it (10 s at most).
    pub(crate) async fn wait_for_actions(
        store: &DynStore,
        action: &str,
        n: usize,
    ) -> Vec<ActionRecord> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<ActionRecord> = store
                .actions(ActionFilter::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|a| a.action == action)
                .collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts an alerter whose retries wait 10 ms, 20 ms, 40 ms…
    pub(crate) fn fast_alerter(
        config: &CollectorConfig,
        store: DynStore,
        metrics: Arc<Metrics>,
    ) -> Alerter {
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(40));
        Alerter::start_with(config, store, metrics, backoff, "test").unwrap()
    }

    #[derive(Default)]
    struct Recorded {
        bodies: Mutex<Vec<serde_json::Value>>,
        /// The `Idempotency-Key` of each request, in order.
        keys: Mutex<Vec<String>>,
        /// Statuses to answer with, in order; 200 once used up.
        script: Mutex<VecDeque<u16>>,
    }

    /// A webhook receiver on 127.0.0.1 recording every request body.
    pub(crate) struct TestReceiver {
        pub(crate) url: String,
        recorded: Arc<Recorded>,
    }

    impl TestReceiver {
        /// Over plain HTTP, answering with `script`'s statuses first.
        pub(crate) async fn start(script: &[u16]) -> TestReceiver {
            let (recorded, app) = TestReceiver::app(script);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hook", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            TestReceiver { url, recorded }
        }

        /// Over HTTPS with a certificate for 127.0.0.1 from a new CA; returns it with
        /// the CA's certificate file (in `dir`).
        async fn start_https(dir: &Path) -> (TestReceiver, PathBuf) {
            let ca = crate::pki::CertificateAuthority::generate("test CA", 1).unwrap();
            let (cert, key) = ca.server_certificate(&["127.0.0.1".into()], 1).unwrap();
            let paths = ["ca.pem", "server.pem", "server.key"].map(|name| dir.join(name));
            for (path, pem) in paths.iter().zip([&ca.cert_pem, &cert, &key]) {
                std::fs::write(path, pem).unwrap();
            }
            let tls = crate::tls::server_config(&paths[1], &paths[2], &paths[0]).unwrap();
            let (recorded, app) = TestReceiver::app(&[]);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("https://{}/hook", listener.local_addr().unwrap());
            tokio::spawn(crate::tls::serve(
                listener,
                tls,
                app,
                std::future::pending(),
            ));
            let [ca_file, ..] = paths;
            (TestReceiver { url, recorded }, ca_file)
        }

        fn app(script: &[u16]) -> (Arc<Recorded>, axum::Router) {
            async fn receive(
                State(recorded): State<Arc<Recorded>>,
                headers: axum::http::HeaderMap,
                Json(body): Json<serde_json::Value>,
            ) -> StatusCode {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                recorded.keys.lock().unwrap().push(key);
                recorded.bodies.lock().unwrap().push(body);
                let status = recorded.script.lock().unwrap().pop_front().unwrap_or(200);
                StatusCode::from_u16(status).unwrap()
            }
            let recorded = Arc::new(Recorded {
                bodies: Mutex::default(),
                keys: Mutex::default(),
                script: Mutex::new(script.iter().copied().collect()),
            });
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(receive))
                .with_state(recorded.clone());
            (recorded, app)
        }

        pub(crate) fn keys(&self) -> Vec<String> {
            self.recorded.keys.lock().unwrap().clone()
        }

        pub(crate) fn bodies(&self) -> Vec<serde_json::Value> {
            self.recorded.bodies.lock().unwrap().clone()
        }

        /// Waits until `n` requests arrived (10 s at most), then a little longer so
        /// that an extra one would show.
        pub(crate) async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.bodies().len() < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.bodies()
        }
    }

    fn ssh_modified(host: &str) -> Occurrence {
        Occurrence {
            kind: AlertKind::Drift,
            image_id: Some(IMAGE.to_string()),
            container: None,
            group: "file:/usr/bin/ssh:modified:content".into(),
            title: "modified /usr/bin/ssh (content)".into(),
            severity: Severity::Critical,
            host_id: host.to_string(),
            detail: format!("modified /usr/bin/ssh on host {host}"),
        }
    }

    fn silent(host: &str) -> Occurrence {
        Occurrence {
            kind: AlertKind::Silence,
            image_id: Some(IMAGE.to_string()),
            container: None,
            group: String::new(),
            title: "went silent".into(),
            severity: Severity::High,
            host_id: host.to_string(),
            detail: format!("Host {host} sent no heartbeat."),
        }
    }

    async fn setup(
        hosts: &[&str],
        webhooks: Vec<WebhookConfig>,
    ) -> (Alerter, DynStore, Arc<Metrics>) {
        let store = store_with_hosts(hosts).await;
        let metrics = Arc::new(Metrics::new());
        let alerter = fast_alerter(&config(webhooks), store.clone(), metrics.clone());
        (alerter, store, metrics)
    }

    #[tokio::test]
    async fn the_same_change_on_three_hosts_makes_one_alert() {
        let receiver = TestReceiver::start(&[]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, store, metrics) = setup(&["h1", "h2", "h3"], vec![hook]).await;
        for host in ["h3", "h1", "h2"] {
            alerter.raise(ssh_modified(host)).await.unwrap();
        }
        let bodies = receiver.wait_for(1).await;
        assert_eq!(bodies.len(), 1, "{bodies:#?}");
        let body = &bodies[0];
        assert_eq!(body["schema"], ALERT_SCHEMA);
        assert_eq!(body["kind"], "drift");
        assert_eq!(body["image_id"], IMAGE);
        assert_eq!(body["severity"], "critical");
        assert_eq!(body["group"], "file:/usr/bin/ssh:modified:content");
        assert_eq!(body["title"], "modified /usr/bin/ssh (content)");
        assert_eq!(body["hosts"], serde_json::json!(["h1", "h2", "h3"]));
        assert_eq!(body["host_count"], 3);
        assert_eq!(body["earlier_hosts"], 0);
        assert_eq!(body["image_hosts"], 3);
        assert_eq!(
            body["text"],
            "[driftwatch] CRITICAL drift: modified /usr/bin/ssh (content) on 3 of 3 hosts of image img-1"
        );
        assert!(body["first_at"].as_str().unwrap().ends_with('Z'));
        assert!(body["sent_at"].as_str().unwrap() >= body["first_at"].as_str().unwrap());

        let actions = wait_for_actions(&store, "webhook", 1).await;
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].outcome, "ok");
        assert_eq!(actions[0].target.as_deref(), Some(receiver.url.as_str()));
        assert_eq!(actions[0].image_id.as_deref(), Some(IMAGE));
        assert!(
            actions[0].detail.ends_with("after 1 attempt"),
            "{}",
            actions[0].detail
        );
        let rendered = metrics.render(&Default::default());
        assert!(
            rendered.contains(r#"alerts_sent_total{kind="drift"} 1"#),
            "{rendered}"
        );
        assert!(
            rendered.contains(r#"webhook_deliveries_total{outcome="ok"} 1"#),
            "{rendered}"
        );
        assert!(
            rendered.contains(r#"queue_depth{queue="alerts"} 0"#),
            "{rendered}"
        );
    }

    #[tokio::test]
    async fn different_changes_make_separate_alerts() {
        let receiver = TestReceiver::start(&[]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, _store, _metrics) = setup(&["h1", "h2"], vec![hook]).await;
        alerter.raise(ssh_modified("h1")).await.unwrap();
        alerter
            .raise(Occurrence {
                group: "file:/etc/shadow:modified:content".into(),
                title: "modified /etc/shadow (content)".into(),
                ..ssh_modified("h2")
            })
            .await
            .unwrap();
        let mut titles: Vec<String> = receiver
            .wait_for(2)
            .await
            .iter()
            .map(|b| b["title"].as_str().unwrap().to_string())
            .collect();
        titles.sort();
        assert_eq!(
            titles,
            [
                "modified /etc/shadow (content)",
                "modified /usr/bin/ssh (content)"
            ]
        );
    }

    #[tokio::test]
    async fn a_repeated_host_counts_once() {
        let receiver = TestReceiver::start(&[]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, _store, _metrics) = setup(&["h1", "h2", "h3"], vec![hook]).await;
        for host in ["h1", "h1", "h2", "h1"] {
            alerter.raise(ssh_modified(host)).await.unwrap();
        }
        let bodies = receiver.wait_for(1).await;
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0]["hosts"], serde_json::json!(["h1", "h2"]));
        assert_eq!(bodies[0]["host_count"], 2);
    }

    #[tokio::test]
    async fn later_hosts_make_a_follow_up_alert() {
        let receiver = TestReceiver::start(&[]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, _store, _metrics) = setup(&["h1", "h2", "h3"], vec![hook]).await;
        alerter.raise(ssh_modified("h1")).await.unwrap();
        alerter.raise(ssh_modified("h2")).await.unwrap();
        assert_eq!(receiver.wait_for(1).await.len(), 1);
        // h2 was alerted already; h3 is new.
        alerter.raise(ssh_modified("h2")).await.unwrap();
        alerter.raise(ssh_modified("h3")).await.unwrap();
        let bodies = receiver.wait_for(2).await;
        assert_eq!(bodies.len(), 2, "{bodies:#?}");
        let follow_up = &bodies[1];
        assert_eq!(follow_up["hosts"], serde_json::json!(["h3"]));
        assert_eq!(follow_up["host_count"], 1);
        assert_eq!(follow_up["earlier_hosts"], 2);
        assert_eq!(
            follow_up["text"],
            "[driftwatch] CRITICAL drift: modified /usr/bin/ssh (content) on 1 more host, \
             3 of 3 hosts of image img-1: modified /usr/bin/ssh on host h3"
        );
        // Every host is alerted now: nothing more goes out.
        alerter.raise(ssh_modified("h1")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(receiver.bodies().len(), 2);
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_delivered() {
        let receiver = TestReceiver::start(&[500, 500]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, store, metrics) = setup(&["h1"], vec![hook]).await;
        alerter.raise(ssh_modified("h1")).await.unwrap();
        let actions = wait_for_actions(&store, "webhook", 1).await;
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].outcome, "ok");
        assert!(
            actions[0].detail.ends_with("after 3 attempts"),
            "{}",
            actions[0].detail
        );
        assert_eq!(receiver.wait_for(3).await.len(), 3);
        let rendered = metrics.render(&Default::default());
        assert!(
            rendered.contains(r#"webhook_deliveries_total{outcome="ok"} 1"#),
            "{rendered}"
        );
    }

    #[tokio::test]
    async fn every_attempt_of_one_alert_carries_its_idempotency_key() {
        let receiver = TestReceiver::start(&[500, 503]).await;
        let hooks = vec![webhook(&receiver.url, WebhookFormat::Json, &["drift"])];
        let (alerter, _store, _metrics) = setup(&["h1", "h2"], hooks).await;
        alerter.raise(ssh_modified("h1")).await.unwrap();
        assert_eq!(receiver.wait_for(3).await.len(), 3);
        let keys = receiver.keys();
        assert_eq!(keys[0].len(), 32, "{keys:?}");
        assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
        // Another alert has another key.
        alerter
            .raise(Occurrence {
                group: "other".into(),
                ..ssh_modified("h2")
            })
            .await
            .unwrap();
        let keys = {
            receiver.wait_for(4).await;
            receiver.keys()
        };
        assert_eq!(keys.len(), 4);
        assert_ne!(keys[3], keys[0]);
    }

    #[tokio::test]
    async fn a_client_error_is_final() {
        let receiver = TestReceiver::start(&[400]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Json, &["drift"]);
        let (alerter, store, metrics) = setup(&["h1"], vec![hook]).await;
        alerter.raise(ssh_modified("h1")).await.unwrap();
        let actions = wait_for_actions(&store, "webhook", 1).await;
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].outcome, "failed");
        assert!(
            actions[0]
                .detail
                .ends_with("after 1 attempt: HTTP 400 Bad Request"),
            "{}",
            actions[0].detail
        );
        assert_eq!(receiver.wait_for(1).await.len(), 1, "a 400 is not retried");
        let rendered = metrics.render(&Default::default());
        assert!(
            rendered.contains(r#"webhook_deliveries_total{outcome="failed"} 1"#),
            "{rendered}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_receiver_fails_after_max_attempts() {
        // A port that was free a moment ago: connections are refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        drop(listener);
        let hook = WebhookConfig {
            max_attempts: 2,
            ..webhook(&url, WebhookFormat::Json, &["drift"])
        };
        let (alerter, store, _metrics) = setup(&["h1"], vec![hook]).await;
        alerter.raise(ssh_modified("h1")).await.unwrap();
        let actions = wait_for_actions(&store, "webhook", 1).await;
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].outcome, "failed");
        assert!(
            actions[0].detail.contains("after 2 attempts: "),
            "{}",
            actions[0].detail
        );
    }

    #[tokio::test]
    async fn https_receivers_are_verified_with_their_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let (receiver, ca_file) = TestReceiver::start_https(dir.path()).await;
        let hook = WebhookConfig {
            ca_file: Some(ca_file),
            ..webhook(&receiver.url, WebhookFormat::Json, &["drift"])
        };
        let (alerter, _store, _metrics) = setup(&["h1"], vec![hook]).await;
        alerter.raise(ssh_modified("h1")).await.unwrap();
        assert_eq!(receiver.wait_for(1).await.len(), 1);
    }

    #[tokio::test]
    async fn an_unusable_ca_file_stops_the_start() {
        let store = store_with_hosts(&[]).await;
        let missing = PathBuf::from("/nonexistent/ca.pem");
        let hook = WebhookConfig {
            ca_file: Some(missing),
            ..webhook(
                "https://alerts.example/hook",
                WebhookFormat::Json,
                &["drift"],
            )
        };
        let Err(error) = Alerter::start(&config(vec![hook]), store, Arc::new(Metrics::new()))
        else {
            panic!("a missing ca_file must stop the start");
        };
        let message = error.to_string();
        assert!(
            message.starts_with(
                "webhook https://alerts.example/hook: cannot use ca_file /nonexistent/ca.pem: "
            ),
            "{message}"
        );
    }

    #[tokio::test]
    async fn chat_webhooks_get_one_line_of_text() {
        let receiver = TestReceiver::start(&[]).await;
        let hook = webhook(&receiver.url, WebhookFormat::Chat, &["drift"]);
        let (alerter, _store, _metrics) = setup(&["h1", "h2", "h3"], vec![hook]).await;
        for host in ["h1", "h2", "h3"] {
            alerter.raise(ssh_modified(host)).await.unwrap();
        }
        let bodies = receiver.wait_for(1).await;
        assert_eq!(
            bodies,
            [serde_json::json!({
                "text": "[driftwatch] CRITICAL drift: modified /usr/bin/ssh (content) on 3 of 3 hosts of image img-1"
            })]
        );
    }

    #[tokio::test]
    async fn webhooks_get_only_the_kinds_they_subscribe_to() {
        let marked_only = TestReceiver::start(&[]).await;
        let everything = TestReceiver::start(&[]).await;
        let hooks = vec![
            webhook(&marked_only.url, WebhookFormat::Json, &["marked"]),
            webhook(
                &everything.url,
                WebhookFormat::Json,
                &crate::config::ALERT_KINDS,
            ),
        ];
        let (alerter, _store, _metrics) = setup(&["h1", "h2"], hooks).await;
        alerter.raise(ssh_modified("h1")).await.unwrap();
        alerter.raise(silent("h1")).await.unwrap();
        alerter.raise(silent("h2")).await.unwrap();
        let mut kinds: Vec<String> = everything
            .wait_for(2)
            .await
            .iter()
            .map(|b| b["kind"].as_str().unwrap().to_string())
            .collect();
        kinds.sort();
        assert_eq!(kinds, ["drift", "silence"]);
        assert_eq!(marked_only.bodies(), Vec::<serde_json::Value>::new());
    }
}
