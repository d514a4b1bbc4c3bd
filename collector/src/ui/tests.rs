//! The dashboard driven with `oneshot` requests against an in-memory store: sign-in and
//! its cookie, role and CSRF refusals, and an operator's action reaching the log.
//! The same flows in a real browser against real binaries: `tests/tests/dashboard.rs`.

use super::*;
use crate::auth::{Principal, Role};
use crate::store::ActionFilter;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use driftwatch_protocol::report::{
    ContainerRef, FileChange, FileFinding, Finding, KernelModuleFinding, KernelModuleReason,
    Severity,
};
use driftwatch_protocol::wire::{Batch, Event, EventBody, ImageClaim, INGEST_SCHEMA};
use tower::ServiceExt;

const TOKEN: &str = "ui-operator-secret";

/// A collector on an in-memory store, and its dashboard.
fn dashboard() -> (Arc<Ui>, Router) {
    let app = crate::app::test_state("", TOKEN);
    let ui = Arc::new(Ui::new(app).unwrap());
    let router = router(Arc::clone(&ui));
    (ui, router)
}

/// A host that reported a high-severity kernel module.
async fn drifted_host(ui: &Ui, host: &str) {
    host_with(ui, host, Severity::High).await;
}

/// A host that reported a kernel module of `severity`.
async fn host_with(ui: &Ui, host: &str, severity: Severity) {
    let finding = Finding::KernelModule(KernelModuleFinding {
        reason: KernelModuleReason::NotInImage,
        name: "rootkit".into(),
        taint: None,
        severity,
    });
    let batch = Batch {
        schema: INGEST_SCHEMA.into(),
        host_id: host.into(),
        hostname: host.into(),
        image: ImageClaim {
            image_id: Some("img".into()),
            baseline_digest: None,
        },
        events: vec![Event {
            id: "e1".into(),
            at: "2026-01-01T00:00:00Z".into(),
            body: EventBody::Finding { finding },
        }],
    };
    ui.app.fleet.ingest(batch).await.unwrap();
}

/// The stored state of `host`.
async fn state_of(ui: &Ui, host: &str) -> &'static str {
    let host = ui.app.fleet.store().host(host).await.unwrap().unwrap();
    host.state.name()
}

/// (status, Location or Set-Cookie headers, body).
async fn send(router: &Router, request: Request<Body>) -> (StatusCode, Vec<String>, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| [header::LOCATION, header::SET_COOKIE].contains(name))
        .map(|(_, v)| v.to_str().unwrap().to_string())
        .collect();
    let body = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get(uri: &str, session: Option<&str>) -> Request<Body> {
    let mut request = Request::get(uri);
    if let Some(id) = session {
        request = request.header(header::COOKIE, format!("{}={id}", session::COOKIE));
    }
    request.body(Body::empty()).unwrap()
}

fn post(uri: &str, session: Option<&str>, form: &str) -> Request<Body> {
    let mut request =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(id) = session {
        request = request.header(header::COOKIE, format!("{}={id}", session::COOKIE));
    }
    request.body(Body::from(form.to_string())).unwrap()
}

fn principal(name: &str, role: Role) -> Principal {
    Principal {
        name: name.into(),
        role,
    }
}

/// A viewer's session (bob's), by its id.
async fn viewer_session(ui: &Ui) -> String {
    ui.sessions
        .open(principal("bob", Role::Viewer), "a-stored-token")
        .await
        .unwrap()
}

#[tokio::test]
async fn signing_in_sets_a_strict_cookie_and_a_bad_token_is_refused() {
    let (_, router) = dashboard();
    let (status, headers, _) = send(&router, get("/ui/", None)).await;
    assert_eq!(
        (status, headers),
        (StatusCode::SEE_OTHER, vec!["/ui/login".to_string()])
    );
    let (status, _, body) = send(&router, post("/ui/login", None, "token=wrong")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("That token is not valid."), "{body}");
    let (status, headers, _) =
        send(&router, post("/ui/login", None, &format!("token={TOKEN}"))).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers
        .iter()
        .find(|h| h.starts_with(session::COOKIE))
        .unwrap();
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Max-Age=",
        "Path=/ui",
    ] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let id = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
    let (status, _, body) = send(&router, get("/ui/", Some(id))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("Signed in as <strong id=\"principal\">operator</strong>"),
        "{body}"
    );
    // Signing out ends the session.
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let (status, _, _) = send(
        &router,
        post("/ui/logout", Some(id), &format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, _) = send(&router, get("/ui/", Some(id))).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_operator_acts_with_the_csrf_token_only_and_the_log_names_them() {
    let (ui, router) = dashboard();
    drifted_host(&ui, "h1").await;
    let id = ui
        .sessions
        .open(principal("alice", Role::Operator), "a-stored-token")
        .await
        .unwrap();
    let csrf = ui.sessions.get(&id).await.unwrap().unwrap().csrf;
    let (status, _, body) = send(&router, get("/ui/hosts/h1", Some(&id))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("id=\"confirm-mark\""), "{body}");
    assert!(
        body.contains("kernel module rootkit (not in image)"),
        "{body}"
    );
    for form in ["reason=x".to_string(), "csrf=forged&reason=x".to_string()] {
        let (status, _, _) = send(&router, post("/ui/hosts/h1/mark", Some(&id), &form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form}");
    }
    assert_eq!(state_of(&ui, "h1").await, "drifted");
    let form = format!("csrf={csrf}&reason=seen+from+the+dashboard");
    let (status, headers, _) = send(&router, post("/ui/hosts/h1/mark", Some(&id), &form)).await;
    assert_eq!(
        (status, headers),
        (StatusCode::SEE_OTHER, vec!["/ui/hosts/h1".to_string()])
    );
    assert_eq!(state_of(&ui, "h1").await, "marked");
    let log = ui
        .app
        .fleet
        .store()
        .actions(ActionFilter::default())
        .await
        .unwrap();
    let mark = log.items.iter().find(|a| a.action == "mark").unwrap();
    assert_eq!(mark.target.as_deref(), Some("alice"));
    assert!(
        mark.detail.contains("seen from the dashboard"),
        "{}",
        mark.detail
    );
    let (_, _, body) = send(&router, get("/ui/actions?host=h1", Some(&id))).await;
    assert!(body.contains("<td>alice</td>"), "{body}");
}

#[tokio::test]
async fn a_viewer_reads_every_page_sees_no_button_and_cannot_act() {
    let (ui, router) = dashboard();
    drifted_host(&ui, "h1").await;
    let id = viewer_session(&ui).await;
    let csrf = ui.sessions.get(&id).await.unwrap().unwrap().csrf;
    for page in [
        "/ui/",
        "/ui/hosts",
        "/ui/hosts?state=drifted",
        "/ui/hosts/h1",
        "/ui/drift",
        "/ui/images",
        "/ui/actions",
    ] {
        let (status, _, body) = send(&router, get(page, Some(&id))).await;
        assert_eq!(status, StatusCode::OK, "{page}: {body}");
        assert!(!body.contains("confirm-"), "{page} shows an action: {body}");
    }
    let (status, _, body) = send(
        &router,
        post("/ui/hosts/h1/mark", Some(&id), &format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body.contains("the viewer credential &#34;bob&#34; may not do this"),
        "{body}"
    );
    assert_eq!(state_of(&ui, "h1").await, "drifted");
    // A credential that may not read is not signed in at all.
    let id = ui
        .sessions
        .open(principal("ci", Role::Pipeline), "a-stored-token")
        .await
        .unwrap();
    let (status, _, _) = send(&router, get("/ui/", Some(&id))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_hosts_page_filters_by_severity_and_sorts() {
    let (ui, router) = dashboard();
    host_with(&ui, "h1", Severity::High).await;
    host_with(&ui, "h2", Severity::Critical).await;
    host_with(&ui, "h3", Severity::Low).await;
    let id = viewer_session(&ui).await;
    let listed = |body: &str| -> Vec<&'static str> {
        let mut at: Vec<(usize, &'static str)> = ["h1", "h2", "h3"]
            .into_iter()
            .filter_map(|h| {
                body.find(&format!("href=\"/ui/hosts/{h}\""))
                    .map(|i| (i, h))
            })
            .collect();
        at.sort();
        at.into_iter().map(|(_, h)| h).collect()
    };
    let (status, _, body) = send(&router, get("/ui/hosts?severity=high", Some(&id))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut high = listed(&body);
    high.sort();
    assert_eq!(high, ["h1", "h2"], "{body}");
    let (_, _, body) = send(&router, get("/ui/hosts?sort=severity", Some(&id))).await;
    assert_eq!(listed(&body), ["h2", "h1", "h3"], "{body}");
    assert!(body.contains("Most severe first"), "{body}");
    assert!(
        body.contains(r#"<option value="severity" selected>"#),
        "{body}"
    );
    let (_, _, body) = send(
        &router,
        get("/ui/hosts?sort=id&severity=critical", Some(&id)),
    )
    .await;
    assert_eq!(listed(&body), ["h2"], "{body}");
    let (_, _, body) = send(&router, get("/ui/hosts?sort=id", Some(&id))).await;
    assert_eq!(listed(&body), ["h1", "h2", "h3"], "{body}");
    for bad in ["/ui/hosts?severity=dire", "/ui/hosts?sort=random"] {
        let (status, _, body) = send(&router, get(bad, Some(&id))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn the_drift_page_groups_one_change_across_hosts() {
    let (ui, router) = dashboard();
    for host in ["h1", "h2", "h3"] {
        drifted_host(&ui, host).await;
    }
    let id = viewer_session(&ui).await;
    let (_, _, body) = send(&router, get("/ui/drift", Some(&id))).await;
    assert_eq!(
        body.matches("kernel module rootkit (not in image)").count(),
        1,
        "{body}"
    );
    assert!(body.contains("on 3 of 3 hosts"), "{body}");
}

/// `/usr/local/bin/x` added inside containers `(id, image)` of `host` on `image`.
async fn dropped_in_containers(ui: &Ui, host: &str, image: &str, containers: &[(&str, &str)]) {
    let events = containers
        .iter()
        .map(|(id, container_image)| Event {
            id: format!("e-{id}"),
            at: "2026-01-01T00:00:00Z".into(),
            body: EventBody::Finding {
                finding: Finding::File(Box::new(FileFinding {
                    change: FileChange::Added,
                    path: "/usr/local/bin/x".into(),
                    path_bytes_b64: None,
                    attributes: Vec::new(),
                    severity: Severity::Critical,
                    rule: "containers".into(),
                    baseline: None,
                    observed: None,
                    package: None,
                    container: Some(ContainerRef {
                        id: (*id).into(),
                        name: Some(format!("web-{id}")),
                        runtime: "containerd".into(),
                        image: Some((*container_image).into()),
                        image_digest: Some("sha256:ab12".into()),
                        pod: None,
                        namespace: None,
                    }),
                })),
            },
        })
        .collect();
    let batch = Batch {
        schema: INGEST_SCHEMA.into(),
        host_id: host.into(),
        hostname: host.into(),
        image: ImageClaim {
            image_id: Some(image.into()),
            baseline_digest: None,
        },
        events,
    };
    ui.app.fleet.ingest(batch).await.unwrap();
}

#[tokio::test]
async fn the_drift_page_groups_a_change_in_containers_by_their_image() {
    let (ui, router) = dashboard();
    dropped_in_containers(
        &ui,
        "n1",
        "node-a",
        &[("c1", "shop/api"), ("c2", "shop/api")],
    )
    .await;
    dropped_in_containers(&ui, "n2", "node-b", &[("c3", "shop/api")]).await;
    dropped_in_containers(&ui, "n3", "node-a", &[("c4", "shop/web")]).await;
    let id = viewer_session(&ui).await;
    let (_, _, body) = send(&router, get("/ui/drift", Some(&id))).await;
    // One row for shop/api's containers on both node images, one for shop/web's.
    assert_eq!(
        body.matches("added file /usr/local/bin/x").count(),
        2,
        "{body}"
    );
    assert!(
        body.contains("in 3 containers of image shop/api@sha256:ab12 on 2 hosts"),
        "{body}"
    );
    assert!(
        body.contains("in 1 container of image shop/web@sha256:ab12 on 1 host<"),
        "{body}"
    );
    // The host page names the container and its image.
    let (_, _, body) = send(&router, get("/ui/hosts/n1", Some(&id))).await;
    assert!(
        body.contains(
            "added /usr/local/bin/x in container web-c2 (c2) of image shop/api@sha256:ab12"
        ),
        "{body}"
    );
}

#[tokio::test]
async fn assets_are_served_and_pages_carry_security_headers() {
    let (_, router) = dashboard();
    let response = router
        .clone()
        .oneshot(get("/ui/static/app.js", None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let (status, _, _) = send(&router, get("/ui/static/../../etc/passwd", None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send(&router, get("/ui/login", None)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_mount_serves_ui_with_and_without_the_slash() {
    let (ui, _) = dashboard();
    let router: Router = mount(Arc::clone(&ui.app));
    let (status, headers, _) = send(&router, get("/ui", None)).await;
    assert_eq!(
        (status, headers),
        (StatusCode::SEE_OTHER, vec!["/ui/".to_string()])
    );
    let (status, headers, _) = send(&router, get("/ui/", None)).await;
    assert_eq!(
        (status, headers),
        (StatusCode::SEE_OTHER, vec!["/ui/login".to_string()])
    );
}

#[tokio::test]
async fn the_images_page_counts_hosts_by_state_and_compares_kept_baselines() {
    use super::compare::tests::{baseline, file};
    let (ui, router) = dashboard();
    let store = ui.app.fleet.store();
    for (i, (id, content)) in [("img", 1u8), ("img2", 2)].into_iter().enumerate() {
        store
            .register_image(crate::store::ImageRecord {
                image_id: id.into(),
                baseline_digest: "blake3:00".into(),
                signer: None,
                entries: 1,
                created_at: "2026-01-01T00:00:00Z".into(),
                registered_ms: 1_000 + i as i64,
            })
            .await
            .unwrap();
        let kept = baseline(
            id,
            &[file("/usr/bin/ssh", 0o755, content, 1)],
            &[("a", "1")],
        );
        store.keep_baseline(id, Some(kept)).await.unwrap();
    }
    store
        .register_image(crate::store::ImageRecord {
            image_id: "unkept".into(),
            baseline_digest: "blake3:00".into(),
            signer: None,
            entries: 1,
            created_at: "x".into(),
            registered_ms: 1,
        })
        .await
        .unwrap();
    // Counted under the image it claims, now that it is registered.
    drifted_host(&ui, "h1").await;
    let id = viewer_session(&ui).await;
    let (status, _, body) = send(&router, get("/ui/images", Some(&id))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("<a href=\"/ui/hosts?image=img&amp;state=drifted\" aria-label=\"1 drifted hosts of img\">1</a>"),
        "{body}"
    );
    assert!(body.contains("id=\"compare-go\""), "{body}");
    // The fleet page counts the same, by image and state, with the same links.
    let (status, _, body) = send(&router, get("/ui/", Some(&id))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(
            "<a href=\"/ui/hosts?image=img&amp;state=drifted\" aria-label=\"1 drifted hosts of img\">1</a>"
        ),
        "{body}"
    );
    let (status, _, body) = send(&router, get("/ui/images/diff?from=img&to=img2", Some(&id))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("0 added, 0 removed, 1 changed."), "{body}");
    assert!(body.contains("modified /usr/bin/ssh (content)"), "{body}");
    assert!(
        body.contains("The baselines record the same packages."),
        "{body}"
    );
    for (query, expected) in [
        ("", StatusCode::BAD_REQUEST),
        ("?from=img", StatusCode::BAD_REQUEST),
        ("?from=img&to=nope", StatusCode::NOT_FOUND),
        ("?from=unkept&to=img", StatusCode::BAD_REQUEST),
    ] {
        let (status, _, body) =
            send(&router, get(&format!("/ui/images/diff{query}"), Some(&id))).await;
        assert_eq!(status, expected, "{query}: {body}");
    }
    // A kept baseline that no longer reads is an error, not a guess.
    store
        .keep_baseline("img2", Some(b"not a baseline".to_vec()))
        .await
        .unwrap();
    let (status, _, _) = send(&router, get("/ui/images/diff?from=img&to=img2", Some(&id))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}
