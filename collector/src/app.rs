//! The router: a plain function of the collector's state, so tests can drive it with
//! `oneshot` requests and `serve` can put it behind TLS.

use crate::api::{self, enroll, ingest, operator};
use crate::config::CollectorConfig;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::pki::CertificateAuthority;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Longest a request may take, store included, before it is answered 408: a stuck
/// client or store must not hold connections (or shutdown) forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest enrollment request: a token, a host id and a CSR.
const MAX_ENROLL_BYTES: usize = 16 * 1024;

/// Enrollment, when configured: the token's hash and the CA that signs.
pub struct Enrollment {
    /// BLAKE3 of the token (compared in constant time).
    pub token: blake3::Hash,
    /// Signs the hosts' certificate requests.
    pub ca: CertificateAuthority,
}

/// Everything a request may need.
pub struct AppState {
    /// Limits and policy.
    pub config: Arc<CollectorConfig>,
    /// The decisions and the store.
    pub fleet: Arc<Fleet>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// BLAKE3 of the operator token.
    pub operator_token: blake3::Hash,
    /// Enrollment, if on.
    pub enrollment: Option<Enrollment>,
    /// Per-host request rate.
    pub limiter: api::RateLimiter,
}

/// The collector's routes.
pub fn app(state: Arc<AppState>) -> Router {
    let ingest_limit = state.config.ingest.max_body_bytes;
    let baseline_limit = state.config.ingest.max_baseline_bytes;
    Router::new()
        .route(
            driftwatch_protocol::wire::INGEST_PATH,
            post(ingest::ingest).layer(DefaultBodyLimit::max(ingest_limit)),
        )
        .route(
            driftwatch_protocol::wire::ENROLL_PATH,
            post(enroll::enroll).layer(DefaultBodyLimit::max(MAX_ENROLL_BYTES)),
        )
        .route("/v1/hosts", get(operator::hosts))
        .route("/v1/hosts/{host_id}", get(operator::host))
        .route("/v1/hosts/{host_id}/{action}", post(operator::host_action))
        .route(
            "/v1/images",
            get(operator::images)
                .post(operator::register_image)
                .layer(DefaultBodyLimit::max(baseline_limit)),
        )
        .route("/v1/actions", get(operator::actions))
        .route("/metrics", get(operator::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/openapi.json", get(api::openapi::document))
        .merge(crate::ui::mount(Arc::clone(&state)))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

#[cfg(test)]
mod tests {
    //! The router driven with `oneshot` requests against an in-memory store: the
    //! fleet's decisions as an agent and an operator see them.
    use super::*;
    use crate::actions::Actions;
    use crate::alerts::Alerter;
    use crate::store::sqlite::SqliteStore;
    use crate::store::DynStore;
    use crate::tls::Peer;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::Extension;
    use driftwatch_protocol::report::{Finding, KernelModuleFinding, KernelModuleReason, Severity};
    use driftwatch_protocol::wire::{
        Batch, BatchAck, Event, EventBody, Heartbeat, HostState, ImageClaim, INGEST_SCHEMA,
    };
    use serde_json::Value;
    use tower::ServiceExt;

    const TOKEN: &str = "operator-secret";

    fn state(extra: &str) -> Arc<AppState> {
        let config: CollectorConfig = toml::from_str(&format!(
            "[tls]\ncert_file = \"/x\"\nkey_file = \"/x\"\nclient_ca_file = \"/x\"\n\
             [auth]\noperator_token_file = \"/x\"\n{extra}"
        ))
        .unwrap();
        config.validate().unwrap();
        let config = Arc::new(config);
        let store: DynStore = Arc::new(SqliteStore::open_memory().unwrap());
        let metrics = Arc::new(Metrics::new());
        let alerter = Alerter::start(&config, Arc::clone(&store), Arc::clone(&metrics)).unwrap();
        let actions = Actions::start(
            &config,
            Arc::clone(&store),
            alerter.clone(),
            Arc::clone(&metrics),
        );
        let fleet = Fleet::new(
            Arc::clone(&config),
            store,
            alerter,
            actions,
            Arc::clone(&metrics),
        )
        .unwrap();
        Arc::new(AppState {
            limiter: api::RateLimiter::new(1000.0, 1000.0),
            config,
            fleet: Arc::new(fleet),
            metrics,
            operator_token: blake3::hash(TOKEN.as_bytes()),
            enrollment: None,
        })
    }

    fn module(name: &str, severity: Severity) -> EventBody {
        EventBody::Finding {
            finding: Finding::KernelModule(KernelModuleFinding {
                reason: KernelModuleReason::NotInImage,
                name: name.into(),
                taint: None,
                severity,
            }),
        }
    }

    fn heartbeat() -> EventBody {
        EventBody::Heartbeat(Heartbeat {
            agent_version: "test".into(),
            findings: 0,
            last_full_verification: None,
            interval_secs: 30,
        })
    }

    /// One request through the router, from a connection of `host` (None: no client
    /// certificate): (status, JSON body or null).
    async fn call(
        state: &Arc<AppState>,
        request: Request<Body>,
        host: Option<&str>,
    ) -> (StatusCode, Value) {
        let peer = Peer {
            host_id: host.map(str::to_string),
            address: "127.0.0.1:1".parse().unwrap(),
        };
        let response = app(Arc::clone(state))
            .layer(Extension(peer))
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn send(state: &Arc<AppState>, host: &str, events: Vec<(&str, EventBody)>) -> BatchAck {
        let batch = Batch {
            schema: INGEST_SCHEMA.into(),
            host_id: host.into(),
            hostname: host.into(),
            // No digest: the registry check stays out of these tests.
            image: ImageClaim {
                image_id: Some("img".into()),
                baseline_digest: None,
            },
            events: events
                .into_iter()
                .map(|(id, body)| Event {
                    id: id.into(),
                    at: "2026-01-01T00:00:00Z".into(),
                    body,
                })
                .collect(),
        };
        let request = Request::post("/v1/ingest")
            .body(Body::from(serde_json::to_vec(&batch).unwrap()))
            .unwrap();
        let (status, body) = call(state, request, Some(host)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn operator(state: &Arc<AppState>, method: &str, uri: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        call(state, request, None).await
    }

    #[tokio::test]
    async fn a_critical_finding_marks_and_the_agent_is_told_once_stored() {
        let state = state("");
        let ack = send(&state, "h1", vec![("e1", heartbeat())]).await;
        assert_eq!(ack.host.state, HostState::Clean);
        let ack = send(&state, "h1", vec![("e2", module("low", Severity::Low))]).await;
        assert_eq!((ack.host.state, ack.accepted), (HostState::Drifted, 1));
        let ack = send(
            &state,
            "h1",
            vec![("e3", module("rootkit", Severity::Critical))],
        )
        .await;
        assert_eq!(ack.host.state, HostState::Marked);
        let mark = ack.host.mark.unwrap();
        assert!(mark.reason.contains("rootkit"), "{}", mark.reason);
        // The same batch again: nothing stored twice, the verdict repeated.
        let again = send(
            &state,
            "h1",
            vec![("e3", module("rootkit", Severity::Critical))],
        )
        .await;
        assert_eq!((again.accepted, again.duplicates), (0, 1));
        assert!(again.host.mark.is_some());
        let (_, actions) = operator(&state, "GET", "/v1/actions?host=h1").await;
        let told = actions
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == "agent_told")
            .count();
        assert_eq!(told, 1, "{actions:#}");
    }

    #[tokio::test]
    async fn dry_run_decides_and_logs_but_marks_nothing() {
        let state = state("[replacement]\nmode = \"dry_run\"\n");
        let ack = send(
            &state,
            "h1",
            vec![("e1", module("rootkit", Severity::Critical))],
        )
        .await;
        assert_eq!((ack.host.state, ack.host.mark), (HostState::Drifted, None));
        let (_, host) = operator(&state, "GET", "/v1/hosts/h1").await;
        assert_eq!(host["host"]["hold"], "dry_run");
        let (_, actions) = operator(&state, "GET", "/v1/actions").await;
        assert!(actions
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "mark" && a["outcome"] == "dry_run"));
    }

    #[tokio::test]
    async fn manual_approval_holds_until_an_operator_approves() {
        let state = state("[replacement]\nmode = \"manual_approve\"\n");
        let ack = send(
            &state,
            "h1",
            vec![("e1", module("rootkit", Severity::Critical))],
        )
        .await;
        assert_eq!(ack.host.state, HostState::Drifted);
        let (status, _) = operator(&state, "POST", "/v1/hosts/h2/approve").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, host) = operator(&state, "POST", "/v1/hosts/h1/approve").await;
        assert_eq!(
            (status, host["state"].as_str()),
            (StatusCode::OK, Some("marked"))
        );
        let ack = send(&state, "h1", vec![("hb", heartbeat())]).await;
        assert!(ack.host.mark.is_some());
        // Nothing left to approve.
        let (status, _) = operator(&state, "POST", "/v1/hosts/h1/approve").await;
        assert_eq!(status, StatusCode::CONFLICT);
    }

    #[tokio::test]
    async fn unmarking_accepts_the_current_drift_but_not_the_next() {
        let state = state("");
        send(
            &state,
            "h1",
            vec![("e1", module("first", Severity::Critical))],
        )
        .await;
        let (status, host) = operator(&state, "POST", "/v1/hosts/h1/unmark").await;
        assert_eq!(
            (status, host["state"].as_str()),
            (StatusCode::OK, Some("drifted"))
        );
        let ack = send(&state, "h1", vec![("hb", heartbeat())]).await;
        assert_eq!((ack.host.state, ack.host.mark), (HostState::Drifted, None));
        // The lifted mark gave its budget slot back.
        let ack = send(
            &state,
            "h1",
            vec![("e2", module("second", Severity::Critical))],
        )
        .await;
        assert_eq!(ack.host.state, HostState::Marked);
    }

    #[tokio::test]
    async fn the_budget_takes_the_smaller_of_its_limits() {
        // 20 hosts, at most 5 or 10 %: 2 per window.
        let state = state("[replacement]\nmax_hosts = 5\nmax_percent = 10.0\n");
        for i in 0..20 {
            send(&state, &format!("h{i}"), vec![("hb", heartbeat())]).await;
        }
        let mut marked = 0;
        for i in 0..20 {
            let ack = send(
                &state,
                &format!("h{i}"),
                vec![("e", module("m", Severity::Critical))],
            )
            .await;
            marked += usize::from(ack.host.state == HostState::Marked);
        }
        assert_eq!(marked, 2);
        let (_, held) = operator(&state, "GET", "/v1/hosts?state=drifted").await;
        assert!(held
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["hold"] == "budget"));
        assert_eq!(held.as_array().unwrap().len(), 18);
        assert_eq!(state.metrics.budget_stops.get(), 18);
    }

    #[tokio::test]
    async fn the_operator_api_needs_the_token() {
        let state = state("");
        for (header, expected) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("Bearer wrong"), StatusCode::FORBIDDEN),
            (Some("Basic xyz"), StatusCode::UNAUTHORIZED),
        ] {
            let mut request = Request::get("/v1/hosts");
            if let Some(value) = header {
                request = request.header("authorization", value);
            }
            let (status, _) = call(&state, request.body(Body::empty()).unwrap(), Some("h1")).await;
            assert_eq!(status, expected);
        }
        let (status, _) = operator(&state, "GET", "/v1/hosts?state=nonsense").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, metrics) = operator(&state, "GET", "/metrics").await;
        assert_eq!(status, StatusCode::OK, "{metrics}");
    }
}
