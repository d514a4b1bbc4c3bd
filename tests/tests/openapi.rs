//! `/v1/openapi.json` against the real thing: every route it documents is called on a
//! running collector with real hosts, images and actions, and each answer's status
//! must be documented for that route and its body must conform to the schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::openapi::check;
use driftwatch_tests::{ok, wait_until, Collector, Credentials, Host, Image, RawClient};
use serde_json::Value;
use std::time::Duration;

/// The response schema the document gives `method path` for `status` (None: a body
/// that is not JSON).
fn response_schema<'a>(
    document: &'a Value,
    path: &str,
    method: &str,
    status: u16,
) -> Option<&'a Value> {
    let operation = &document["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is not documented");
    let mut response = &operation["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which is not documented"
    );
    if let Some(reference) = response["$ref"].as_str() {
        response = document.pointer(&reference[1..]).unwrap();
    }
    response["content"]["application/json"].get("schema")
}

#[test]
fn every_documented_route_answers_as_documented() {
    let collector = Collector::start("");
    let image = Image::bake("img-api");
    image.register(&collector);
    let mut hosts: Vec<Host> = ["api-1", "api-2"]
        .iter()
        .map(|id| Host::new(&image, &collector, id, Credentials::Certificate, ""))
        .collect();
    for host in &mut hosts {
        host.start();
    }
    for host in &hosts {
        wait_until(Duration::from_secs(30), "the host known", || {
            collector.state(&host.id).filter(|s| s == "clean")
        });
    }
    hosts[0].write("/usr/bin/backdoor", "#!/bin/sh\n");
    wait_until(Duration::from_secs(30), "findings of api-1", || {
        let host = collector.host("api-1")?;
        (!host["findings"].as_array()?.is_empty()).then_some(())
    });
    wait_until(Duration::from_secs(30), "api-2 known", || {
        collector.host("api-2")
    });

    let token = collector.path("operator.token");
    let bearer = |file: &str| {
        let text = std::fs::read_to_string(collector.path(file)).unwrap();
        format!("Bearer {}", text.trim())
    };
    // Images are the pipeline's to register, hosts the operator's to act on, tokens
    // the admin's to make.
    let token_for = |path: &str, method: &str| {
        if path == "/v1/images" && method == "post" {
            "pipeline.token"
        } else if path.starts_with("/v1/tokens") {
            "admin.token"
        } else {
            "operator.token"
        }
    };
    let client = RawClient::new(&collector, None);
    let (status, text) = client.get_operator("/v1/openapi.json", &token);
    assert_eq!(status, 200);
    let document: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(document["openapi"], "3.1.0");

    let second = Image::bake("img-api-2");
    let baseline = std::fs::read(second.baseline()).unwrap();
    // (documented path, method, the real request's path, how it is sent)
    let calls: Vec<(&str, &str, String, Option<Vec<u8>>)> = vec![
        ("/v1/hosts", "get", "/v1/hosts".into(), None),
        (
            "/v1/hosts",
            "get",
            "/v1/hosts?state=drifted&limit=5".into(),
            None,
        ),
        ("/v1/hosts", "get", "/v1/hosts?state=nonsense".into(), None),
        ("/v1/hosts", "get", "/v1/hosts?limit=1".into(), None),
        ("/v1/hosts", "get", "/v1/hosts?cursor=garbage".into(), None),
        ("/v1/images", "get", "/v1/images?limit=1".into(), None),
        ("/v1/actions", "get", "/v1/actions?limit=2".into(), None),
        ("/v1/hosts/{host_id}", "get", "/v1/hosts/api-1".into(), None),
        (
            "/v1/hosts/{host_id}",
            "get",
            "/v1/hosts/api-1?limit=1".into(),
            None,
        ),
        (
            "/v1/hosts/{host_id}",
            "get",
            "/v1/hosts/nobody".into(),
            None,
        ),
        (
            "/v1/hosts/{host_id}/{action}",
            "post",
            "/v1/hosts/api-2/mark".into(),
            Some(br#"{"reason":"openapi test"}"#.to_vec()),
        ),
        (
            "/v1/hosts/{host_id}/{action}",
            "post",
            "/v1/hosts/api-2/unmark".into(),
            Some(Vec::new()),
        ),
        ("/v1/images", "get", "/v1/images".into(), None),
        (
            "/v1/images",
            "post",
            "/v1/images?image_id=img-api-2".into(),
            Some(baseline),
        ),
        ("/v1/actions", "get", "/v1/actions?limit=1000".into(), None),
        (
            "/v1/tokens",
            "post",
            "/v1/tokens".into(),
            Some(br#"{"name":"api-enroll","role":"enroll","uses":2,"no_daemon":true}"#.to_vec()),
        ),
        (
            "/v1/tokens",
            "post",
            "/v1/tokens".into(),
            Some(br#"{"name":"api-enroll","role":"enroll"}"#.to_vec()),
        ),
        (
            "/v1/tokens",
            "post",
            "/v1/tokens".into(),
            Some(br#"{"name":"x","role":"root"}"#.to_vec()),
        ),
        ("/v1/tokens", "get", "/v1/tokens".into(), None),
        (
            "/v1/tokens/{name}/revoke",
            "post",
            "/v1/tokens/api-enroll/revoke".into(),
            Some(Vec::new()),
        ),
        (
            "/v1/tokens/{name}/revoke",
            "post",
            "/v1/tokens/nobody/revoke".into(),
            Some(Vec::new()),
        ),
        ("/metrics", "get", "/metrics".into(), None),
        ("/healthz", "get", "/healthz".into(), None),
        ("/v1/openapi.json", "get", "/v1/openapi.json".into(), None),
    ];
    // Every documented route is called.
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(
                calls.iter().any(|(p, m, ..)| p == path && m == method),
                "{method} {path} is documented but not checked"
            );
        }
    }
    for (path, method, real, body) in &calls {
        let (status, text) = match body {
            None => client.get_operator(real, &collector.path(token_for(path, method))),
            Some(body) => client
                .post(
                    real,
                    body.clone(),
                    &[("authorization", bearer(token_for(path, method)).as_str())],
                )
                .unwrap(),
        };
        match response_schema(&document, path, method, status) {
            Some(schema) => {
                let value: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{method} {real}: not JSON ({e}): {text}"));
                let problems = check(&document, schema, &value);
                assert!(
                    problems.is_empty(),
                    "{method} {real} ({status}): {problems:#?}\n{value:#}"
                );
            }
            None => assert!(!text.is_empty(), "{method} {real}: empty body"),
        }
    }
    // A role without the right: 403, as documented.
    let (status, text) = client.get_operator("/v1/tokens", &token);
    assert_eq!(status, 403, "{text}");
    let schema = response_schema(&document, "/v1/tokens", "get", status).unwrap();
    let problems = check(&document, schema, &serde_json::from_str(&text).unwrap());
    assert!(problems.is_empty(), "{problems:#?}");
    // The answers above were the real ones: the mark went through, the token was made
    // and revoked.
    let tokens = collector.json(&["token", "list"]);
    assert_eq!(tokens[0]["name"], "api-enroll");
    assert!(tokens[0]["revoked_at"].is_string(), "{tokens:#}");
    let actions = collector.actions();
    assert!(actions
        .iter()
        .any(|a| a["host_id"] == "api-2" && a["action"] == "mark"));
    ok(collector.cli(&["image", "list"]));
}
