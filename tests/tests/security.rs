//! Hostile requests against a real collector: each is refused with the right status,
//! and the collector keeps serving honest hosts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::{gzip, heartbeat_batch, key_and_csr, ok, Collector, RawClient, Topology};
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn post_json(
    client: &RawClient,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, String), String> {
    client.post(path, serde_json::to_vec(body).unwrap(), &[])
}

fn hostile_requests_are_refused_and_the_collector_keeps_serving(topology: Topology) {
    let collector = Collector::start_as(topology, "");
    let certs = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = collector.issue_cert("host-a", certs.path());
    let host_a = RawClient::new(&collector, Some((&cert_a, &key_a)));
    let anonymous = RawClient::new(&collector, None);

    // An honest heartbeat is accepted.
    let (status, body) =
        post_json(&host_a, "/v1/ingest", &heartbeat_batch("host-a", "e1")).unwrap();
    assert_eq!(status, 200, "{body}");

    // No client certificate: 401.
    let (status, body) =
        post_json(&anonymous, "/v1/ingest", &heartbeat_batch("host-a", "e2")).unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("client certificate"), "{body}");

    // A certificate from another CA does not even complete the handshake.
    // A collector of its own, with its own CA.
    let other = Collector::start("");
    let (cert_x, key_x) = other.issue_cert("host-a", certs.path().join("other").as_path());
    let stranger = RawClient::new(&collector, Some((&cert_x, &key_x)));
    let refused = post_json(&stranger, "/v1/ingest", &heartbeat_batch("host-a", "e3"));
    assert!(
        refused.is_err(),
        "a foreign certificate was accepted: {refused:?}"
    );

    // Host A's valid certificate cannot report as host B.
    let (status, body) =
        post_json(&host_a, "/v1/ingest", &heartbeat_batch("host-b", "e4")).unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cannot report as host-b"), "{body}");
    assert!(collector.host("host-b").is_none());

    // A bad enrollment token: 403.
    let enroll = json!({"token": "guess", "host_id": "host-c", "csr_pem": "x"});
    let (status, body) = post_json(&anonymous, "/v1/enroll", &enroll).unwrap();
    assert_eq!(status, 403, "{body}");

    // Oversized body (default limit 1 MiB): 413.
    let big = vec![b' '; 2 << 20];
    let (status, _) = host_a.post("/v1/ingest", big, &[]).unwrap();
    assert_eq!(status, 413);

    // A small gzip body that expands beyond the decoded limit (16 MiB): 413.
    let bomb = gzip(&vec![b' '; 20 << 20]);
    assert!(bomb.len() < 1 << 20);
    let (status, body) = host_a
        .post("/v1/ingest", bomb, &[("content-encoding", "gzip")])
        .unwrap();
    assert_eq!(status, 413, "{body}");

    // Malformed JSON, a wrong schema: 400.
    for bad in [
        b"{not json".to_vec(),
        serde_json::to_vec(&json!({"schema": "driftwatch.ingest/v9", "host_id": "host-a"}))
            .unwrap(),
    ] {
        let (status, body) = host_a.post("/v1/ingest", bad, &[]).unwrap();
        assert_eq!(status, 400, "{body}");
    }
    // Unknown fields (a newer agent) are ignored; an event of an unknown kind is
    // rejected alone, the rest of its batch stored.
    let mut batch = heartbeat_batch("host-a", "e5");
    batch["admin"] = json!(true);
    let mut unknown = batch["events"][0].clone();
    unknown["id"] = json!("e5-new");
    unknown["body"] = json!({"type": "from_the_future"});
    batch["events"].as_array_mut().unwrap().push(unknown);
    let (status, body) = post_json(&host_a, "/v1/ingest", &batch).unwrap();
    assert_eq!(status, 200, "{body}");
    let ack: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ack["accepted"], 1, "{ack}");
    assert_eq!(ack["rejected"][0]["id"], "e5-new", "{ack}");

    // Too many events in one batch (default 1000): 413.
    let mut batch = heartbeat_batch("host-a", "e6");
    let event = batch["events"][0].clone();
    batch["events"] = json!((0..1001)
        .map(|i| {
            let mut e = event.clone();
            e["id"] = json!(format!("many-{i}"));
            e
        })
        .collect::<Vec<_>>());
    let (status, body) = post_json(&host_a, "/v1/ingest", &batch).unwrap();
    assert_eq!(status, 413, "{body}");

    // The operator API without a token, or with a wrong one.
    let (status, _) = anonymous
        .post("/v1/hosts/host-a/mark", Vec::new(), &[])
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = anonymous
        .post(
            "/v1/hosts/host-a/mark",
            Vec::new(),
            &[("authorization", "Bearer nope")],
        )
        .unwrap();
    assert_eq!(status, 403);

    // A revoked host is refused from then on.
    ok(collector.cli(&["revoke", "host-a"]));
    let (status, body) =
        post_json(&host_a, "/v1/ingest", &heartbeat_batch("host-a", "e7")).unwrap();
    assert_eq!(status, 403, "{body}");

    // And through all of it, the collector serves honest hosts.
    let (cert_d, key_d) = collector.issue_cert("host-d", certs.path());
    let host_d = RawClient::new(&collector, Some((&cert_d, &key_d)));
    let (status, body) =
        post_json(&host_d, "/v1/ingest", &heartbeat_batch("host-d", "e1")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(collector.state("host-d").as_deref(), Some("clean"));
}

fn enrollment_issues_one_certificate_per_host_id(topology: Topology) {
    let collector = Collector::start_as(topology, "");
    let anonymous = RawClient::new(&collector, None);
    let token = std::fs::read_to_string(collector.enrollment_token()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some((key, csr_pem)) = key_and_csr(dir.path(), "first") else {
        return;
    };
    let request = json!({
        "token": token.trim(),
        "host_id": "fresh-host",
        "csr_pem": csr_pem,
    });
    let (status, body) = post_json(&anonymous, "/v1/enroll", &request).unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, answer["certificate_pem"].as_str().unwrap()).unwrap();
    // The certificate works, and names the host the collector chose.
    let host = RawClient::new(&collector, Some((&cert, &key)));
    let (status, body) =
        post_json(&host, "/v1/ingest", &heartbeat_batch("fresh-host", "e1")).unwrap();
    assert_eq!(status, 200, "{body}");
    // The same request again (its answer was lost) is answered again: the id is bound
    // to this key, and a certificate for the same key changes nothing.
    let (status, body) = post_json(&anonymous, "/v1/enroll", &request).unwrap();
    assert_eq!(status, 200, "{body}");
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    std::fs::write(&cert, again["certificate_pem"].as_str().unwrap()).unwrap();
    let host = RawClient::new(&collector, Some((&cert, &key)));
    let (status, body) =
        post_json(&host, "/v1/ingest", &heartbeat_batch("fresh-host", "e2")).unwrap();
    assert_eq!(status, 200, "{body}");
    // Another key for the same id is refused: the token admits new hosts, it does not
    // take over existing ones. Nor ids provisioned with a certificate.
    let (_, other_csr) = key_and_csr(dir.path(), "other").unwrap();
    let mut takeover = request.clone();
    takeover["csr_pem"] = json!(other_csr);
    let (status, body) = post_json(&anonymous, "/v1/enroll", &takeover).unwrap();
    assert_eq!(status, 409, "{body}");
    let certs = tempfile::tempdir().unwrap();
    collector.issue_cert("provisioned-host", certs.path());
    takeover["host_id"] = json!("provisioned-host");
    let (status, body) = post_json(&anonymous, "/v1/enroll", &takeover).unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("provisioned"), "{body}");
    // Guessed tokens do not spend the valid token's rate: after many, it still works.
    for _ in 0..30 {
        let guess = json!({"token": "guess", "host_id": "x", "csr_pem": "x"});
        let (status, _) = post_json(&anonymous, "/v1/enroll", &guess).unwrap();
        assert!(status == 403 || status == 429, "{status}");
    }
    let (_, third_csr) = key_and_csr(dir.path(), "third").unwrap();
    let mut newcomer = request.clone();
    newcomer["host_id"] = json!("newcomer");
    newcomer["csr_pem"] = json!(third_csr);
    let (status, body) = post_json(&anonymous, "/v1/enroll", &newcomer).unwrap();
    assert_eq!(status, 200, "{body}");
    // An invalid host id is refused before anything is issued.
    let mut bad = request.clone();
    bad["host_id"] = json!("../../etc");
    let (status, _) = post_json(&anonymous, "/v1/enroll", &bad).unwrap();
    assert_eq!(status, 400);
}

fn an_idle_connection_is_closed_and_a_slow_handshake_too(topology: Topology) {
    let collector = Collector::start_as(topology, "");
    let address = collector.url().trim_start_matches("https://").to_string();
    // A client that completes the handshake, then says nothing: closed after the
    // collector's idle timeout (10 s), not held open with its buffers.
    let started = std::time::Instant::now();
    let Ok(mut idle) = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &address])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        driftwatch_tests::missing_prerequisite("openssl is not installed");
        return;
    };
    let _stdin = idle.stdin.take();
    let closed = driftwatch_tests::wait_until(Duration::from_secs(30), "the idle close", || {
        idle.try_wait().unwrap()
    });
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(9) && after < Duration::from_secs(25),
        "closed after {after:?} ({closed})"
    );
    // A client that connects and never starts TLS is dropped too (handshake timeout).
    let mut silent = std::net::TcpStream::connect(&address).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut silent, &mut byte);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(45));
}

driftwatch_tests::each_topology!(
    hostile_requests_are_refused_and_the_collector_keeps_serving,
    enrollment_issues_one_certificate_per_host_id,
    an_idle_connection_is_closed_and_a_slow_handshake_too,
);
