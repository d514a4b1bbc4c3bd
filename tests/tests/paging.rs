//! The operator API's cursor paging over HTTP, on SQLite and on PostgreSQL behind the
//! load balancer: following `Next-Cursor` (lists) and `next_cursor` (a host's
//! findings) page by page gives every row exactly once, and the last page says no
//! more; a page is never longer than its `limit`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::Topology;
use driftwatch_tests::{heartbeat_batch, ok, Collector, Credentials, Host, Image, RawClient};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

const LIMIT: usize = 2;

/// Follows `Next-Cursor` from `path` (which has a `?`): every row, in order.
fn every_page(client: &RawClient, token: &Path, path: &str) -> Vec<Value> {
    let (mut rows, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&limit={LIMIT}&cursor={c}"),
            None => format!("{path}&limit={LIMIT}"),
        };
        let (status, next, body) = client.get_operator_page(&url, token);
        assert_eq!(status, 200, "{url}: {body}");
        let page: Vec<Value> = serde_json::from_str(&body).unwrap();
        assert!(page.len() <= LIMIT, "{url}: {page:#?}");
        rows.extend(page);
        pages += 1;
        assert!(pages < 100, "{path}: the cursor never ends");
        match next {
            Some(next) => cursor = Some(next),
            None => return rows,
        }
    }
}

/// The values of `field` in `rows`, checked to be distinct.
fn distinct(rows: &[Value], field: &str) -> BTreeSet<String> {
    let values: Vec<String> = rows
        .iter()
        .map(|r| r[field].as_str().unwrap().to_string())
        .collect();
    let set: BTreeSet<String> = values.iter().cloned().collect();
    assert_eq!(set.len(), values.len(), "a row twice: {values:?}");
    set
}

fn lists_page_with_cursors_to_the_last_row(topology: Topology) {
    let collector = Collector::start_as(topology, "");
    let token = collector.path("operator.token");
    let client = RawClient::new(&collector, None);
    let images: BTreeSet<String> = (0..5).map(|i| format!("img-page-{i}")).collect();
    for id in &images {
        Image::bake(id).register(&collector);
    }
    // Five hosts heartbeating, each with its own certificate.
    let certs = tempfile::tempdir().unwrap();
    let ids: BTreeSet<String> = (0..5).map(|i| format!("page-{i}")).collect();
    for id in &ids {
        let (cert, key) = collector.issue_cert(id, certs.path());
        let host = RawClient::new(&collector, Some((cert.as_path(), key.as_path())));
        let body = serde_json::to_vec(&heartbeat_batch(id, "e0")).unwrap();
        let (status, text) = host.post("/v1/ingest", body, &[]).unwrap();
        assert_eq!(status, 200, "{text}");
        ok(collector.cli(&["mark", id, "--reason", "paging"]));
    }

    let hosts = every_page(&client, &token, "/v1/hosts?");
    assert_eq!(distinct(&hosts, "host_id"), ids);
    let marked = every_page(&client, &token, "/v1/hosts?state=marked");
    assert_eq!(distinct(&marked, "host_id"), ids);
    let listed = every_page(&client, &token, "/v1/images?");
    assert_eq!(distinct(&listed, "image_id"), images);
    let actions = every_page(&client, &token, "/v1/actions?");
    let ids_of_actions: Vec<u64> = actions.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    let unique: BTreeSet<u64> = ids_of_actions.iter().copied().collect();
    assert_eq!(unique.len(), ids_of_actions.len(), "{actions:#?}");
    let marks: BTreeSet<String> = actions
        .iter()
        .filter(|a| a["action"] == "mark")
        .map(|a| a["host_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(marks, ids, "{actions:#?}");
    let (status, _, body) = client.get_operator_page("/v1/hosts?cursor=garbage", &token);
    assert_eq!(status, 400, "{body}");
}

fn a_hosts_findings_page_with_next_cursor(topology: Topology) {
    let collector = Collector::start_as(topology, "");
    let token = collector.path("operator.token");
    let client = RawClient::new(&collector, None);
    let image = Image::bake("img-findings-page");
    image.register(&collector);
    let host = Host::new(
        &image,
        &collector,
        "findings-1",
        Credentials::Certificate,
        "",
    );
    let written: BTreeSet<String> = (0..5).map(|i| format!("/usr/bin/added-{i}")).collect();
    for path in &written {
        host.write(path, "#!/bin/sh\n");
    }
    assert_eq!(host.check_report().status.code(), Some(1));
    let (mut subjects, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let url = match &cursor {
            Some(c) => format!("/v1/hosts/findings-1?limit={LIMIT}&cursor={c}"),
            None => format!("/v1/hosts/findings-1?limit={LIMIT}"),
        };
        let (status, body) = client.get_operator(&url, &token);
        assert_eq!(status, 200, "{body}");
        let detail: Value = serde_json::from_str(&body).unwrap();
        let page = detail["findings"].as_array().unwrap();
        assert!(page.len() <= LIMIT, "{detail:#}");
        subjects.extend(
            page.iter()
                .map(|f| f["subject"].as_str().unwrap().to_string()),
        );
        pages += 1;
        assert!(pages < 100, "the cursor never ends");
        match detail["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let unique: BTreeSet<String> = subjects.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        subjects.len(),
        "a finding twice: {subjects:?}"
    );
    assert!(written.is_subset(&unique), "{subjects:?}");
    assert!(pages >= written.len().div_ceil(LIMIT), "{pages} pages");
}

driftwatch_tests::each_topology!(
    lists_page_with_cursors_to_the_last_row,
    a_hosts_findings_page_with_next_cursor,
);
