//! The router: a plain function of the collector's state, so tests can drive it with
//! `oneshot` requests and `serve` can put it behind TLS.

use crate::api::{self, enroll, ingest, operator, renew, tokens};
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

/// Issuing host certificates, when the CA key is configured: the CA that signs
/// (enrollment and renewal) and the hash of the configuration's enrollment token.
pub struct Enrollment {
    /// BLAKE3 of `enrollment_token_file`'s token (compared in constant time), if set;
    /// stored `enroll` tokens work either way.
    pub token: Option<blake3::Hash>,
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
    /// The token files' credentials and the bound on failed attempts.
    pub credentials: crate::auth::Credentials,
    /// Enrollment (and renewal), if on; replaced on SIGHUP (a new token file, a new
    /// issuing CA).
    pub enrollment: std::sync::RwLock<Option<Arc<Enrollment>>>,
    /// Per-host request rate.
    pub limiter: api::RateLimiter,
    /// Per-host event rate.
    pub event_limiter: crate::limiter::EventLimiter,
}

impl AppState {
    /// Enrollment as configured now, if on.
    pub fn enrollment(&self) -> Option<Arc<Enrollment>> {
        self.enrollment
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
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
        .route(
            driftwatch_protocol::wire::RENEW_PATH,
            post(renew::renew).layer(DefaultBodyLimit::max(MAX_ENROLL_BYTES)),
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
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{name}/revoke", post(tokens::revoke))
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

/// A collector's state on an in-memory SQLite store, for the unit tests of the router
/// and of the dashboard: `extra` is appended to a minimal configuration, and `token`
/// is the admin's (named "operator").
#[cfg(test)]
pub(crate) fn test_state(extra: &str, token: &str) -> Arc<AppState> {
    let config: CollectorConfig = toml::from_str(&format!(
        "[tls]\ncert_file = \"/x\"\nkey_file = \"/x\"\nclient_ca_file = \"/x\"\n\
         [auth]\noperator_token_file = \"/x\"\n{extra}"
    ))
    .unwrap();
    config.validate().unwrap();
    let config = Arc::new(config);
    let store: crate::store::DynStore =
        Arc::new(crate::store::sqlite::SqliteStore::open_memory().unwrap());
    let metrics = Arc::new(Metrics::new());
    let alerter =
        crate::alerts::Alerter::start(&config, Arc::clone(&store), Arc::clone(&metrics)).unwrap();
    let actions = crate::actions::Actions::start(
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
    let admin = crate::auth::FileToken::new(token, "operator", crate::auth::Role::Admin);
    Arc::new(AppState {
        limiter: api::RateLimiter::new(1000.0, 1000.0),
        event_limiter: crate::limiter::EventLimiter::new(100_000.0, 100_000.0),
        config,
        fleet: Arc::new(fleet),
        metrics,
        credentials: crate::auth::Credentials::new(vec![admin]),
        enrollment: std::sync::RwLock::new(None),
    })
}

#[cfg(test)]
mod tests {
    //! The router driven with `oneshot` requests against an in-memory store: the
    //! fleet's decisions as an agent and an operator see them.
    use super::*;
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
        test_state(extra, TOKEN)
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
            certificate: host.map(|host| crate::pki::CertInfo {
                key_fingerprint: format!("test-key-of-{host}"),
                serial: "01".into(),
                not_after_ms: i64::MAX,
                issuer: Vec::new(),
            }),
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
        // No digest: the registry check stays out of these tests.
        let image = ImageClaim {
            image_id: Some("img".into()),
            baseline_digest: None,
        };
        send_claiming(state, host, image, events).await
    }

    async fn send_claiming(
        state: &Arc<AppState>,
        host: &str,
        image: ImageClaim,
        events: Vec<(&str, EventBody)>,
    ) -> BatchAck {
        let batch = Batch {
            schema: INGEST_SCHEMA.into(),
            host_id: host.into(),
            hostname: host.into(),
            image,
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
        with_token(state, TOKEN, method, uri, "").await
    }

    /// A call with bearer `token` and `body` (JSON or empty).
    async fn with_token(
        state: &Arc<AppState>,
        token: &str,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        call(state, request, None).await
    }

    /// Makes a token of `role` named `name` with the admin token; returns its secret.
    async fn token(state: &Arc<AppState>, name: &str, role: &str) -> String {
        let body = serde_json::json!({ "name": name, "role": role }).to_string();
        let (status, created) = with_token(state, TOKEN, "POST", "/v1/tokens", &body).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        assert_eq!(created["role"], role);
        created["token"].as_str().unwrap().to_string()
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

    #[tokio::test]
    async fn each_role_does_its_part_only_and_the_log_names_the_token() {
        let state = state("");
        send(&state, "h1", vec![("e1", heartbeat())]).await;
        let mut secrets = std::collections::HashMap::new();
        for role in ["viewer", "operator", "pipeline", "metrics", "enroll"] {
            secrets.insert(role, token(&state, &format!("t-{role}"), role).await);
        }
        let mark = "/v1/hosts/h1/mark";
        for (role, method, uri, expected) in [
            ("viewer", "GET", "/v1/hosts", StatusCode::OK),
            ("viewer", "POST", mark, StatusCode::FORBIDDEN),
            ("pipeline", "GET", "/v1/hosts", StatusCode::FORBIDDEN),
            ("pipeline", "GET", "/v1/actions", StatusCode::FORBIDDEN),
            ("metrics", "GET", "/metrics", StatusCode::OK),
            ("metrics", "GET", "/v1/hosts/h1", StatusCode::FORBIDDEN),
            ("metrics", "POST", mark, StatusCode::FORBIDDEN),
            ("metrics", "POST", "/v1/images", StatusCode::FORBIDDEN),
            ("metrics", "GET", "/v1/tokens", StatusCode::FORBIDDEN),
            ("operator", "GET", "/v1/tokens", StatusCode::FORBIDDEN),
            ("operator", "POST", "/v1/images", StatusCode::FORBIDDEN),
            ("enroll", "GET", "/v1/hosts", StatusCode::FORBIDDEN),
            ("operator", "POST", mark, StatusCode::OK),
        ] {
            let (status, body) = with_token(&state, &secrets[role], method, uri, "").await;
            assert_eq!(status, expected, "{role} {method} {uri}: {body}");
        }
        // The host itself did not change for any refused call, and the log names the
        // token that marked it.
        let (_, actions) = operator(&state, "GET", "/v1/actions?host=h1").await;
        let marks: Vec<&Value> = actions
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == "mark")
            .collect();
        assert_eq!(marks.len(), 1, "{actions:#}");
        assert_eq!(marks[0]["target"], "t-operator");
        // Listing shows no secret; a revoked token stops at once.
        let (_, list) = operator(&state, "GET", "/v1/tokens").await;
        assert_eq!(list.as_array().unwrap().len(), 5);
        assert!(!list.to_string().contains(&secrets["viewer"]));
        let (status, _) = operator(&state, "POST", "/v1/tokens/t-viewer/revoke").await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = with_token(&state, &secrets["viewer"], "GET", "/v1/hosts", "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (_, log) = operator(&state, "GET", "/v1/actions").await;
        assert!(log
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "token_revoke" && a["target"] == "operator"));
    }

    #[tokio::test]
    async fn tokens_are_checked_when_made_and_expire() {
        let state = state("");
        for body in [
            r#"{"name":"operator","role":"viewer"}"#,
            r#"{"name":"a b","role":"viewer"}"#,
            r#"{"name":"x","role":"root"}"#,
            r#"{"name":"x","role":"viewer","uses":3}"#,
            r#"{"name":"x","role":"enroll","host_ids":"web-[*"}"#,
        ] {
            let (status, answer) = with_token(&state, TOKEN, "POST", "/v1/tokens", body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        }
        token(&state, "once", "viewer").await;
        let (status, _) = with_token(
            &state,
            TOKEN,
            "POST",
            "/v1/tokens",
            r#"{"name":"once","role":"viewer"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT);
        let body = r#"{"name":"brief","role":"viewer","expires_secs":1}"#;
        let (_, created) = with_token(&state, TOKEN, "POST", "/v1/tokens", body).await;
        let secret = created["token"].as_str().unwrap().to_string();
        let (status, _) = with_token(&state, &secret, "GET", "/v1/hosts", "").await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let (status, body) = with_token(&state, &secret, "GET", "/v1/hosts", "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }

    #[tokio::test]
    async fn failed_authentications_are_bounded_per_address_and_counted() {
        let state = state("");
        let mut statuses = Vec::new();
        for _ in 0..12 {
            let (status, _) = with_token(&state, "guess", "GET", "/v1/hosts", "").await;
            statuses.push(status);
        }
        assert!(statuses[..10].iter().all(|s| *s == StatusCode::FORBIDDEN));
        assert_eq!(statuses[11], StatusCode::TOO_MANY_REQUESTS);
        // The valid token from the same address is not held back by the guesses.
        let (status, _) = operator(&state, "GET", "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            state
                .metrics
                .auth_failures
                .get_or_create(&Metrics::label("at", "api"))
                .get(),
            12
        );
    }

    #[tokio::test]
    async fn a_retired_host_is_gone_without_a_silence_alert_and_not_revoked() {
        let state = state("");
        send(&state, "h1", vec![("e1", heartbeat())]).await;
        let viewer = token(&state, "v", "viewer").await;
        let retire = "/v1/hosts/h1/retire";
        let (status, _) = with_token(&state, &viewer, "POST", retire, "").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, host) = operator(&state, "POST", retire).await;
        assert_eq!(status, StatusCode::OK, "{host}");
        assert_eq!(
            (host["state"].as_str(), host["revoked"].as_bool()),
            (Some("gone"), Some(false))
        );
        let store = state.fleet.store();
        let far = crate::store::now_ms() + 86_400_000;
        assert!(store.overdue_hosts(1, far).await.unwrap().is_empty());
        let (_, actions) = operator(&state, "GET", "/v1/actions?host=h1").await;
        let actions = actions.as_array().unwrap();
        assert!(actions
            .iter()
            .any(|a| a["action"] == "retire" && a["target"] == "operator"));
        assert!(actions.iter().all(|a| a["action"] != "silence"));
        let (status, _) = operator(&state, "POST", "/v1/hosts/nobody/retire").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn invented_image_ids_share_one_unregistered_budget() {
        let state = state("[replacement]\nmax_hosts = 2\nmax_percent = 100.0\n");
        let mut marked = 0;
        for i in 0..10 {
            let image = ImageClaim {
                image_id: Some(format!("invented-{i}")),
                baseline_digest: Some("blake3:00".into()),
            };
            let ack =
                send_claiming(&state, &format!("h{i}"), image, vec![("hb", heartbeat())]).await;
            marked += usize::from(ack.host.state == HostState::Marked);
        }
        // Each host is critical (its image is not registered), but ten invented ids
        // are one budget, not ten.
        assert_eq!(marked, 2);
        let (_, held) = operator(&state, "GET", "/v1/hosts?state=drifted").await;
        let held = held.as_array().unwrap();
        assert_eq!(held.len(), 8);
        assert!(held
            .iter()
            .all(|h| h["hold"] == "budget" && h["image_id"].is_null()));
        let (_, detail) = operator(&state, "GET", "/v1/hosts/h3").await;
        assert_eq!(detail["findings"][0]["finding"]["reason"], "unregistered");
        assert_eq!(detail["findings"][0]["subject"], "invented-3");
    }

    fn heartbeat_claiming(interval_secs: u64) -> EventBody {
        EventBody::Heartbeat(Heartbeat {
            agent_version: "test".into(),
            findings: 0,
            last_full_verification: None,
            interval_secs,
        })
    }

    #[tokio::test]
    async fn silence_is_the_collectors_call_not_the_hosts() {
        let state = state(
            "[hosts]\nheartbeat_interval_secs = 60\n\
             [[hosts.heartbeat]]\nimages = [\"batch-*\"]\ninterval_secs = 600\n",
        );
        // "Never silent", a longer interval, a shorter one; and an image of its own.
        send(&state, "zero", vec![("hb", heartbeat_claiming(0))]).await;
        send(&state, "long", vec![("hb", heartbeat_claiming(3600))]).await;
        send(&state, "short", vec![("hb", heartbeat_claiming(10))]).await;
        let batch = ImageClaim {
            image_id: Some("batch-7".into()),
            baseline_digest: None,
        };
        send_claiming(&state, "batch", batch, vec![("hb", heartbeat_claiming(0))]).await;
        let store = state.fleet.store();
        let interval = |host: &'static str| async move {
            let host = store.host(host).await.unwrap().unwrap();
            host.heartbeat_interval_secs
        };
        assert_eq!(interval("zero").await, 60);
        assert_eq!(interval("long").await, 60);
        assert_eq!(interval("short").await, 10);
        assert_eq!(interval("batch").await, 600);
        // Three missed minutes later the daemon host that claimed 0 is overdue.
        let later = crate::store::now_ms() + 181_000;
        let overdue = store.overdue_hosts(3, later).await.unwrap();
        for host in ["zero", "long", "short"] {
            assert!(overdue.contains(&host.to_string()), "{host}: {overdue:?}");
        }
        assert!(!overdue.contains(&"batch".to_string()));
    }

    #[test]
    fn only_a_host_declared_without_a_daemon_is_never_silent() {
        let hosts = crate::config::HostsConfig::default();
        assert_eq!(hosts.expected_interval(None, 0, false), 0);
        assert_eq!(hosts.expected_interval(None, 30, false), 0);
        assert_eq!(hosts.expected_interval(None, 0, true), 300);
        assert_eq!(hosts.expected_interval(Some("x"), 30, true), 30);
    }

    #[tokio::test]
    async fn one_unknown_event_is_rejected_alone_and_unknown_fields_are_ignored() {
        let state = state("");
        let mut events: Vec<Value> = (1..=9)
            .map(|i| {
                serde_json::json!({
                    "id": format!("e{i}"),
                    "at": "2026-01-01T00:00:00Z",
                    "from_a_newer_agent": true,
                    "body": {"type": "heartbeat", "agent_version": "9", "findings": 0,
                             "last_full_verification": null, "interval_secs": 30,
                             "battery": "full"}
                })
            })
            .collect();
        events.insert(
            4,
            serde_json::json!({"id": "e-new", "at": "2026-01-01T00:00:00Z",
                               "body": {"type": "quantum_drift", "qubits": 3}}),
        );
        let batch = serde_json::json!({
            "schema": INGEST_SCHEMA, "host_id": "h1", "hostname": "h1",
            "image": {"image_id": "img", "baseline_digest": null, "signed_by": "x"},
            "region": "eu-1",
            "events": events,
        });
        let request = Request::post("/v1/ingest")
            .body(Body::from(batch.to_string()))
            .unwrap();
        let (status, ack) = call(&state, request, Some("h1")).await;
        assert_eq!(status, StatusCode::OK, "{ack}");
        let ack: BatchAck = serde_json::from_value(ack).unwrap();
        assert_eq!(ack.accepted, 9);
        assert_eq!(ack.rejected.len(), 1, "{:?}", ack.rejected);
        assert_eq!(ack.rejected[0].id, "e-new");
        assert!(
            ack.rejected[0].error.contains("quantum_drift"),
            "{:?}",
            ack.rejected
        );
        assert_eq!(state.metrics.ingest_rejected_events.get(), 1);
        // The collector still serves the host.
        let ack = send(&state, "h1", vec![("e11", heartbeat())]).await;
        assert_eq!((ack.accepted, ack.rejected.len()), (1, 0));
    }
}
