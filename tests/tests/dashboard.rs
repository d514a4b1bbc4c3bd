//! The dashboard in a real browser: headless Chromium, driven over WebDriver, against a
//! real collector with real agents reporting. Sign in; the fleet page counts drift as it
//! happens (refreshed in place); the drift page groups one change made on three hosts
//! into one row; a host's page shows the finding's before → after; an operator
//! approves a budget-held host and its agent's `/healthz` turns 503; the action log
//! names the operator; a forged POST without the CSRF token is refused; the page says
//! when the collector is unreachable. Each step leaves a screenshot
//! (`target/screenshots/`, or `DRIFTWATCH_SCREENSHOTS`).
//!
//! Also: the images page compares two registered images' baselines; and a session
//! opened through one replica is served by another on the same PostgreSQL database
//! (sessions live in the store), until its token is revoked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::browser::Browser;
use driftwatch_tests::{ok, wait_until, Collector, Credentials, Host, Image, Topology};
use std::time::Duration;

const SOON: Duration = Duration::from_secs(30);
const HOSTS: [&str; 3] = ["web-1", "web-2", "web-3"];

/// The drifted host the budget held back, and the one it marked.
fn held_and_marked(collector: &Collector) -> (Vec<String>, String) {
    wait_until(SOON, "one host marked and two held", || {
        let hosts: Vec<_> = HOSTS.iter().filter_map(|h| collector.host(h)).collect();
        let marked: Vec<String> = hosts
            .iter()
            .filter(|h| h["host"]["state"] == "marked")
            .map(|h| h["host"]["host_id"].as_str().unwrap().to_string())
            .collect();
        let held: Vec<String> = hosts
            .iter()
            .filter(|h| h["host"]["hold"] == "budget")
            .map(|h| h["host"]["host_id"].as_str().unwrap().to_string())
            .collect();
        (marked.len() == 1 && held.len() == 2).then(|| (held, marked[0].clone()))
    })
}

/// Waits until the text of `css` on the page shown satisfies `test`, without reloading.
fn wait_text(browser: &Browser, css: &str, what: &str, test: impl Fn(&str) -> bool) {
    wait_until(SOON, what, || {
        browser.text(css).filter(|t| test(t)).map(|_| ())
    });
}

#[test]
fn an_operator_sees_drift_approves_a_held_host_and_the_log_names_them() {
    let Some(browser) = Browser::start() else {
        return;
    };
    // A budget of one host per window: the first drifted host is marked, the others held.
    let mut collector = Collector::start("\n[replacement]\nmax_hosts = 1\nmax_percent = 100.0\n");
    let image = Image::bake("web-2026.11.27");
    image.register(&collector);
    let mut hosts: Vec<Host> = HOSTS
        .iter()
        .map(|id| Host::new(&image, &collector, id, Credentials::Certificate, ""))
        .collect();
    for host in &mut hosts {
        host.start();
    }
    for host in &hosts {
        wait_until(SOON, "the hosts to report clean", || {
            (collector.state(&host.id).as_deref() == Some("clean")).then_some(())
        });
    }
    let ui = format!("{}/ui/", collector.url());

    // Signed out, every page leads to the sign-in form; a wrong token is refused.
    browser.goto(&format!("{ui}hosts"));
    assert!(browser.url().ends_with("/ui/login"), "{}", browser.url());
    browser.fill("#token", "not-the-token");
    browser.click("#sign-in");
    wait_text(&browser, "#login-error", "the refusal", |t| {
        t == "That token is not valid."
    });
    browser.screenshot("dashboard-login");
    let token = std::fs::read_to_string(collector.path("operator.token")).unwrap();
    browser.fill("#token", token.trim());
    browser.click("#sign-in");
    browser.wait_url("/ui/");
    assert_eq!(browser.text("#principal").as_deref(), Some("operator"));
    assert_eq!(browser.text("#count-clean .n").as_deref(), Some("3"));

    // The same change on all three hosts, while the fleet page is open: it counts the
    // drift without a reload.
    for host in &hosts {
        host.write("/usr/bin/tool", "#!/bin/sh\necho changed\n");
    }
    let (held, marked) = held_and_marked(&collector);
    wait_text(
        &browser,
        "#count-marked .n",
        "the fleet page to count the mark",
        |t| t == "1",
    );
    wait_text(
        &browser,
        "#count-drifted .n",
        "the fleet page to count the drift",
        |t| t == "2",
    );
    wait_text(
        &browser,
        "#held-budget",
        "the held hosts to be listed",
        |t| t.starts_with("2 held: the image's replacement budget is used up"),
    );
    assert!(browser.url().ends_with("/ui/"), "the page was not reloaded");
    browser.screenshot("dashboard-fleet");

    // One row for the one change on three hosts.
    browser.click("nav a[href='/ui/drift']");
    browser.wait_url("/ui/drift");
    let rows = browser.texts("#drift tbody tr");
    let tool: Vec<&String> = rows
        .iter()
        .filter(|r| r.contains("modified /usr/bin/tool"))
        .collect();
    assert_eq!(tool.len(), 1, "{rows:#?}");
    assert!(tool[0].contains("on 3 of 3 hosts"), "{rows:#?}");
    assert!(tool[0].contains("web-2026.11.27"), "{rows:#?}");
    browser.screenshot("dashboard-drift");

    // A held host: its finding's before → after, and approving it marks it.
    let target = &held[0];
    browser.goto(&format!("{ui}hosts/{target}"));
    assert_eq!(browser.text("#host-state").as_deref(), Some("drifted"));
    let summaries = browser.texts("#findings .summary");
    assert!(
        summaries
            .iter()
            .any(|s| s.starts_with("modified /usr/bin/tool (") && s.contains("content")),
        "{summaries:#?}"
    );
    let blake3 = browser.texts("#findings table.diff tr.changed");
    let content = blake3.iter().find(|r| r.starts_with("blake3")).unwrap();
    let hashes: Vec<&str> = content.split_whitespace().skip(1).collect();
    assert!(
        hashes.len() >= 2 && hashes[0] != hashes[hashes.len() - 1],
        "{content}"
    );
    browser.screenshot("dashboard-host");
    browser.click(".act details:first-of-type summary");
    browser.click("#confirm-approve");
    wait_text(
        &browser,
        "#host-state",
        "the host page to say marked",
        |t| t == "marked",
    );
    let host = hosts.iter().find(|h| &h.id == target).unwrap();
    wait_until(SOON, "the approved host's health check to fail", || {
        (host.health() == Some(503)).then_some(())
    });
    assert_eq!(collector.state(&marked).as_deref(), Some("marked"));
    browser.screenshot("dashboard-host-approved");

    // The action log names who approved it.
    browser.goto(&format!("{ui}actions?host={target}"));
    let log = browser.texts("#actions tbody tr");
    assert!(
        log.iter()
            .any(|r| r.contains("mark") && r.contains("operator")),
        "{log:#?}"
    );
    browser.screenshot("dashboard-actions");

    // A forged POST from the page without the form's CSRF token acts on nothing.
    let other = &held[1];
    let status = browser.run_async(&format!(
        "const done = arguments[arguments.length - 1];\
         fetch('/ui/hosts/{other}/mark', {{method: 'POST', body: new URLSearchParams({{reason: 'forged'}})}})\
           .then(r => done(r.status), e => done(String(e)));"
    ));
    assert_eq!(status, serde_json::json!(403));
    assert_eq!(collector.state(other).as_deref(), Some("drifted"));

    // A viewer's token: it reads the same host page with no action on it, and its POST
    // is refused even with its own session's CSRF token.
    let viewer = collector.json(&["token", "create", "--name", "vera", "--role", "viewer"]);
    let viewer = viewer["token"].as_str().unwrap().to_string();
    browser.click("form.who button");
    browser.wait_url("/ui/login");
    browser.fill("#token", &viewer);
    browser.click("#sign-in");
    browser.wait_url("/ui/");
    assert_eq!(browser.text("#principal").as_deref(), Some("vera"));
    browser.goto(&format!("{ui}hosts/{other}"));
    assert_eq!(browser.text("#host-state").as_deref(), Some("drifted"));
    assert!(!browser.shown(".act"), "a viewer is offered actions");
    let status = browser.run_async(&format!(
        "const done = arguments[arguments.length - 1];\
         const csrf = document.querySelector('form.who input[name=csrf]').value;\
         fetch('/ui/hosts/{other}/mark', {{method: 'POST', body: new URLSearchParams({{reason: 'viewer', csrf}})}})\
           .then(r => done(r.status), e => done(String(e)));"
    ));
    assert_eq!(status, serde_json::json!(403));
    assert_eq!(collector.state(other).as_deref(), Some("drifted"));
    browser.screenshot("dashboard-viewer");

    // Times read in the viewer's zone, UTC on hover.
    let time = browser.run_async(
        "const done = arguments[arguments.length - 1];\
         const t = document.querySelector('#host-state ~ time');\
         done([t.getAttribute('datetime'), t.textContent, t.title]);",
    );
    let utc = time[0].as_str().unwrap();
    assert!(utc.ends_with('Z'), "{time}");
    assert_ne!(time[1].as_str().unwrap(), utc, "{time}");
    assert_eq!(time[2].as_str().unwrap(), format!("{utc} (UTC)"), "{time}");
    // The host page, open, shows what an operator does elsewhere without a reload.
    ok(collector.cli(&["mark", other, "--reason", "seen elsewhere"]));
    wait_text(
        &browser,
        "#host-state",
        "the open host page to say marked",
        |t| t == "marked",
    );
    let reason = browser.text("#mark-reason").unwrap_or_default();
    assert!(reason.contains("seen elsewhere"), "{reason}");
    assert!(browser.url().ends_with(&format!("/ui/hosts/{other}")));

    // The images page shows the registered image and its hosts.
    browser.goto(&format!("{ui}images"));
    let images = browser.texts("#images tbody tr");
    assert!(
        images
            .iter()
            .any(|r| r.contains("web-2026.11.27") && r.ends_with(" 3")),
        "{images:#?}"
    );

    // With the collector gone, the live page says so.
    browser.goto(&ui);
    collector.stop();
    wait_until(SOON, "the unreachable banner", || {
        browser.shown("#offline").then_some(())
    });
    browser.screenshot("dashboard-offline");
}

/// Signs in at `base` (a collector's or a replica's URL) with `token`.
fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.goto(&format!("{base}/ui/login"));
    browser.fill("#token", token.trim());
    browser.click("#sign-in");
    browser.wait_url("/ui/");
}

#[test]
fn the_images_page_shows_a_difference_between_two_images() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let collector = Collector::start("");
    let old = Image::bake("web-2026.11.27");
    let new = Image::bake_with(
        "web-2026.12.03",
        &[
            ("usr/bin/tool", Some("#!/bin/sh\necho tool, version 2\n")),
            ("usr/bin/added", Some("#!/bin/sh\necho new\n")),
            ("etc/machine-id", None),
        ],
    );
    old.register(&collector);
    new.register(&collector);
    let token = std::fs::read_to_string(collector.path("operator.token")).unwrap();
    sign_in(&browser, &collector.url(), &token);
    browser.click("nav a[href='/ui/images']");
    browser.wait_url("/ui/images");
    let rows = browser.texts("#images tbody tr");
    assert_eq!(rows.len(), 2, "{rows:#?}");
    // Newest first; the form compares the one before it with it unless told otherwise.
    browser.click("#compare-go");
    browser.wait_url("/ui/images/diff?from=web-2026.11.27&to=web-2026.12.03");
    assert_eq!(
        browser.text("#file-counts").as_deref(),
        Some("1 added, 1 removed, 1 changed.")
    );
    let files = browser.texts("#files .summary");
    assert_eq!(
        files,
        [
            "removed /etc/machine-id",
            "added /usr/bin/added",
            "modified /usr/bin/tool (size, content)"
        ],
        "{files:#?}"
    );
    let changed = browser.texts("#files table.diff tr.changed");
    let content = changed.iter().find(|r| r.starts_with("blake3")).unwrap();
    let hashes: Vec<&str> = content.split_whitespace().skip(1).collect();
    assert!(
        hashes.len() >= 2 && hashes[0] != hashes[hashes.len() - 1],
        "{content}"
    );
    assert_eq!(
        browser.text("#diff-to-id").as_deref(),
        Some("web-2026.12.03")
    );
    browser.screenshot("dashboard-image-diff");
    // The other way round, the added file is the removed one.
    browser.goto(&format!(
        "{}/ui/images/diff?from=web-2026.12.03&to=web-2026.11.27",
        collector.url()
    ));
    let files = browser.texts("#files .summary");
    assert!(
        files.contains(&"removed /usr/bin/added".to_string()),
        "{files:#?}"
    );
}

#[test]
fn a_session_opened_through_one_replica_is_served_by_another() {
    let Some(topology) = Topology::replicas() else {
        return;
    };
    let Some(browser) = Browser::start() else {
        return;
    };
    let collector = Collector::start_as(topology, "");
    let replicas = collector.replica_urls();
    let viewer = collector.json(&["token", "create", "--name", "vera", "--role", "viewer"]);
    let viewer = viewer["token"].as_str().unwrap().to_string();
    sign_in(&browser, &replicas[0], &viewer);
    assert_eq!(browser.text("#principal").as_deref(), Some("vera"));
    // The same cookie (cookies are per host, not per port) at another replica.
    browser.goto(&format!("{}/ui/hosts", replicas[1]));
    assert!(browser.url().ends_with("/ui/hosts"), "{}", browser.url());
    assert_eq!(browser.text("#principal").as_deref(), Some("vera"));
    browser.screenshot("dashboard-other-replica");
    // Revoking the token ends its session on every replica.
    collector.json(&["token", "revoke", "vera"]);
    for replica in &replicas {
        browser.goto(&format!("{replica}/ui/"));
        assert!(browser.url().ends_with("/ui/login"), "{}", browser.url());
    }
    // Signed in again (another credential) through the last replica, signed out
    // through the first: gone everywhere.
    let token = std::fs::read_to_string(collector.path("operator.token")).unwrap();
    sign_in(&browser, &replicas[replicas.len() - 1], &token);
    browser.goto(&format!("{}/ui/", replicas[0]));
    assert_eq!(browser.text("#principal").as_deref(), Some("operator"));
    browser.click("form.who button");
    browser.wait_url("/ui/login");
    browser.goto(&format!("{}/ui/", replicas[replicas.len() - 1]));
    assert!(browser.url().ends_with("/ui/login"), "{}", browser.url());
}
