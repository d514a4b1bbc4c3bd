//! The image path end to end, on a real systemd: a Debian root file system with the
//! agent's `.deb` installed with dpkg in a chroot and the image baked there with
//! `driftwatch-bake` (signed baseline, image id, machine id emptied); the image
//! registered with a collector running on the outer machine; three machines booted from
//! it with `systemd-nspawn --boot`, each on a network namespace of its own joined to a
//! bridge the collector listens on; and everything checked from outside:
//!
//! 1. `driftwatch.service` is active, the host is `clean` at the collector with the
//!    image's id and baseline digest, under its own machine id, and heartbeats arrive;
//! 2. drift made inside (a binary dropped in `/usr/local/bin`, a setuid bit, a package
//!    installed offline with apt from the image's cache) reaches the collector within
//!    seconds as the right findings;
//! 3. the collector's policy marks the host, `/healthz` inside turns 503, the webhook
//!    receives the drift and the mark;
//! 4. a second machine booted from the same image stays `clean`, also after every
//!    timer's service ran and a reload re-checked everything (no false positives from a
//!    real boot: machine id, journal, networkd, apt and dpkg timers…), and stops cleanly;
//! 5. a third machine whose baseline was tampered with (one byte) is marked at boot with
//!    a critical `baseline` finding, and its `/healthz` is 503.
//!
//! The `.deb` is built by `packaging/build.sh agent-deb` (cargo's incremental build
//! makes later runs quick), unless `DRIFTWATCH_TEST_DEB` names one. The root file
//! system is cached under `target/boot-cache/` (see `driftwatch_tests::container`).
//! Needs root, systemd-nspawn, mmdebstrap, nsenter, ip, and a Debian host whose apt
//! sources name a mirror; otherwise the test prints `skipping: <reason>` and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::bake::{install_package, DEFAULT_USER, RAN, SPARE, UNIT, WRITTEN};
use driftwatch_tests::container::{self, last_lines, Bridge, Container, Network, Root, Rootfs};
use driftwatch_tests::{bin, ok, run, Collector, WebhookReceiver};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt::Display;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The image's id, recorded in the baseline and registered with the collector.
const IMAGE_ID: &str = "debian-e2e-1";
/// The agent's health endpoint inside every container (its own network namespace).
const HEALTH_PORT: u16 = 9847;
/// A file the drift step adds under a critical, watched path.
const DROPPED: &str = "/usr/local/bin/x";
/// A binary the drift step makes setuid.
const SETUID: &str = "/usr/bin/env";
/// What the spare package installs under a critical path.
const SPARE_BINARY: &str = "/usr/bin/hello";
/// How long the collector may take to show what an agent saw ("within seconds").
const SOON: Duration = Duration::from_secs(15);

#[test]
fn a_baked_image_boots_clean_reports_drift_and_detects_a_tampered_baseline() {
    let started = Instant::now();
    let mut timings = Timings::default();
    // The root file system (cached) and the agent's package (built), side by side.
    let driftwatch_tests::bake::Ingredients {
        cache,
        rootfs,
        deb,
        deb_how,
    } = match driftwatch_tests::bake::ingredients(&["bash"]) {
        Ok(ingredients) => ingredients,
        Err(reason) => {
            container::skip(reason);
            return;
        }
    };
    eprintln!("boots: nspawn (systemd-nspawn --boot, the outer machine's kernel)");
    timings.note("boots", "nspawn");
    timings.note("rootfs", &rootfs.how);
    timings.note(".deb", &deb_how);

    // The collector on the outer machine, on a bridge the containers join; it trusts
    // the pipeline's key; its policy marks on any critical finding, for every host.
    let bridge = match Bridge::create() {
        Ok(bridge) => bridge,
        Err(reason) => {
            container::skip(format!("cannot make a bridge here: {reason}"));
            return;
        }
    };
    let work = tempfile::Builder::new()
        .prefix("driftwatch-image-")
        .tempdir()
        .unwrap();
    let (sign_key, pubkey) = (
        work.path().join("pipeline.key"),
        work.path().join("pipeline.pub"),
    );
    ok(run(Command::new(bin("driftwatch"))
        .args(["key", "generate", "--private"])
        .arg(&sign_key)
        .arg("--public")
        .arg(&pubkey)));
    let receiver = WebhookReceiver::start();
    let gateway = bridge.gateway().to_string();
    let collector = Collector::start_on(
        &gateway,
        &[&gateway],
        &[&pubkey],
        &format!(
            "\n[[webhook]]\nurl = \"{}\"\nformat = \"json\"\n\
             \n[replacement]\nmax_hosts = 10\nmax_percent = 100.0\n",
            receiver.url()
        ),
    );

    // The image: extracted, the package installed, configured for the fleet, baked.
    let baking = Instant::now();
    let image = cache.root("image");
    image.extract(&rootfs.tarball);
    timings.add("extract", baking.elapsed());
    let installing = Instant::now();
    install_package(&image, &deb);
    timings.add("dpkg -i", installing.elapsed());
    configure_image(&image, &collector, &rootfs);
    let bake_step = Instant::now();
    driftwatch_tests::bake::bake(&image, IMAGE_ID, &sign_key, &pubkey, &[]);
    timings.add("bake", bake_step.elapsed());
    let baseline = work.path().join("baseline");
    std::fs::copy(image.join("/usr/lib/driftwatch/baseline"), &baseline).unwrap();
    let shown: Value = serde_json::from_str(&ok(run(Command::new(bin("driftwatch"))
        .args(["baseline", "show", "--format", "json"])
        .arg(&baseline))))
    .unwrap();
    assert_eq!(shown["image_id"], IMAGE_ID, "{shown:#}");
    assert!(
        shown["signer"].is_string(),
        "the baseline is not signed: {shown:#}"
    );
    let digest = shown["digest"].as_str().unwrap().to_string();
    let baked_entries = shown["entries"].as_u64().unwrap();
    ok(collector.cli(&[
        "image",
        "register",
        "--image-id",
        IMAGE_ID,
        "--baseline",
        baseline.to_str().unwrap(),
    ]));
    timings.add("image", baking.elapsed());

    // Three machines from the image, booted together: A drifts, B stays clean, C's
    // baseline was tampered with after the bake.
    let copying = Instant::now();
    let roots: Vec<Root> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let root = cache.root(name);
            root.copy_from(&image);
            root
        })
        .collect();
    drop(image);
    for (root, name) in roots.iter().zip(["a", "b", "c"]) {
        seed_cloud_init(root, &format!("dw-e2e-{name}"), name == "a");
    }
    flip_a_byte(&roots[2].join("/usr/lib/driftwatch/baseline"));
    timings.add("3 copies", copying.elapsed());
    let mut machines: Vec<Container> = roots
        .into_iter()
        .zip(["a", "b", "c"])
        .enumerate()
        .map(|(i, (root, name))| {
            let network = Network::Bridge {
                bridge: &bridge,
                address: bridge.address(11 + i as u8),
            };
            Container::boot(root, &format!("dw-e2e-{name}"), UNIT, network)
        })
        .collect();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();

    // 1. Up and clean, locally and at the collector, each under its own machine id.
    let mut ids = Vec::new();
    for (machine, label) in machines.iter().zip(["A", "B", "C"]) {
        let tampered = label == "C";
        let status = wait_status(machine, Duration::from_secs(120), "the boot check", |s| {
            (s["full_checks"].as_u64() >= Some(1) && s["provisioning"]["phase"] == "sealed")
                || (tampered && s["state"] == "marked")
        });
        // Only now: a process `nsenter` starts is, for an instant, the outer machine's
        // binary in the container, which the boot check's process scan would report.
        let active = machine.exec(&["systemctl", "is-active", UNIT]);
        if active.stdout.trim() != "active" {
            machine.fail(format!("{UNIT} is not active:{active}"));
        }
        timings.add(
            &format!("{label} boot-to-active"),
            machine.active_after(UNIT).unwrap_or_default(),
        );
        let id = machine
            .exec_ok(&["cat", "/etc/machine-id"])
            .stdout
            .trim()
            .to_string();
        if id.len() != 32 || status["collector"]["host_id"] != id.as_str() {
            machine.fail(format!(
                "the host id should be the machine id made at first boot ({id:?}): {:#}",
                status["collector"]
            ));
        }
        ids.push(id);
        if tampered {
            continue;
        }
        eprintln!(
            "{label}: system {}; failed units: [{}]",
            machine
                .exec(&["systemctl", "is-system-running"])
                .stdout
                .trim(),
            machine
                .exec(&[
                    "systemctl",
                    "--failed",
                    "--plain",
                    "--no-legend",
                    "--no-pager"
                ])
                .stdout
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ")
        );
        // cloud-init has added files (the default user's) before the boot check runs.
        match boot_check_entries(machine) {
            Some(entries) if entries >= baked_entries => {}
            other => problem(
                &mut problems,
                format!(
                    "{label}: the boot check compared {other:?} entries (journal field \
                     F_ENTRIES); the baseline has {baked_entries}, each must be compared"
                ),
            ),
        }
        timings.add(&format!("{label} first-boot-to-clean"), machine.up_for());
        judge_provisioned(machine, &status, &mut problems);
        // A's provisioning also wrote outside the declared paths: drift as usual.
        let expected: &[&str] = if label == "A" { &[OUTSIDE] } else { &[] };
        judge_clean(
            machine,
            &status,
            &format!("{label}'s first boot"),
            expected,
            &mut seen,
            &mut problems,
        );
        // Right after the seal, as an operator would look: the plain check agrees.
        compare_with_plain_check(machine, &status, label == "B", &mut problems);
    }
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 3, "every machine needs its own id: {ids:?}");
    let (id_a, id_b, id_c) = (&ids[0], &ids[1], &ids[2]);
    for (machine, id) in machines.iter().zip(&ids).take(2) {
        // A heartbeat sent after the boot check: everything it found was sent before.
        let first = wait_host(machine, &collector, id, "its first report", |_| true);
        let later = wait_host(machine, &collector, id, "a later heartbeat", |h| {
            h["host"]["last_heartbeat"] != first["host"]["last_heartbeat"]
        });
        let host = &later["host"];
        let (state, subjects) = if machine.name().ends_with("-a") {
            ("drifted", serde_json::json!([OUTSIDE]))
        } else {
            ("clean", serde_json::json!([]))
        };
        let found: Vec<&Value> = later["findings"]
            .as_array()
            .map(|f| f.iter().map(|f| &f["subject"]).collect())
            .unwrap_or_default();
        let delta = later["provisioning"]["changes"].as_array().map(Vec::len);
        if host["state"] != state
            || host["image_id"] != IMAGE_ID
            || host["baseline_digest"] != digest.as_str()
            || serde_json::json!(found) != subjects
            || delta.unwrap_or(0) == 0
        {
            problem(
                &mut problems,
                format!(
                    "{}: at the collector after the boot check, expected {state} on {IMAGE_ID} \
                     with {digest}, findings {subjects} and a provisioning delta: {later:#}",
                    machine.name()
                ),
            );
        }
    }

    // 4. B: what the host does later, done now: every timer's service runs once, then
    //    a reload re-checks everything. Still clean, locally and at the collector.
    let rechecking = Instant::now();
    let b = &machines[1];
    let timers = b.exec_ok(&[
        "systemctl",
        "list-timers",
        "--all",
        "--plain",
        "--no-legend",
        "--no-pager",
    ]);
    for service in timers
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().last())
    {
        let ran = b.exec(&["systemctl", "start", service]);
        eprintln!("B: ran {service} (from its timer): exit {:?}", ran.code);
    }
    let reload = b.exec(&["systemctl", "reload", UNIT]);
    let checks = if reload.success() {
        2
    } else {
        problem(
            &mut problems,
            format!(
                "`systemctl reload {UNIT}` fails under systemd:{reload}\n{}",
                last_lines(&b.journal(UNIT), 6)
            ),
        );
        b.exec_ok(&["systemctl", "restart", UNIT]);
        1
    };
    let status = wait_status(
        b,
        Duration::from_secs(120),
        "the re-check after the timers",
        |s| s["full_checks"].as_u64() >= Some(checks),
    );
    judge_clean(
        b,
        &status,
        "B's re-check after every timer ran",
        &[],
        &mut seen,
        &mut problems,
    );
    let before = collector.host(id_b).unwrap();
    let after = wait_host(b, &collector, id_b, "a heartbeat after the re-check", |h| {
        h["host"]["last_heartbeat"] != before["host"]["last_heartbeat"]
    });
    if after["host"]["state"] != "clean" || after["findings"] != serde_json::json!([]) {
        problem(
            &mut problems,
            format!("B at the collector after the timers and the reload: {after:#}"),
        );
    }
    timings.add("B timers+re-check", rechecking.elapsed());

    // B reboots: its provisioning window stays sealed (cloud-final runs at every boot),
    // the host stays clean, and a plain `driftwatch check` inside agrees with the daemon.
    let sealed_at = status["provisioning"]["sealed"].clone();
    let rebooting = Instant::now();
    machines[1].reboot(Network::Bridge {
        bridge: &bridge,
        address: bridge.address(12),
    });
    let b = &machines[1];
    let status = wait_status(
        b,
        Duration::from_secs(120),
        "the check after the reboot",
        |s| s["full_checks"].as_u64() >= Some(1),
    );
    timings.add("B reboot-to-checked", rebooting.elapsed());
    if status["provisioning"]["phase"] != "sealed" || status["provisioning"]["sealed"] != sealed_at
    {
        problem(
            &mut problems,
            format!(
                "B: the provisioning window must stay sealed (at {sealed_at}) across a \
                 reboot: {:#}",
                status["provisioning"]
            ),
        );
    }
    judge_clean(b, &status, "B's reboot", &[], &mut seen, &mut problems);
    compare_with_plain_check(b, &status, true, &mut problems);

    // 2. + 3. A drifts: each change reaches the collector as the right finding, the
    //    policy marks the host, its /healthz turns 503, the webhook hears of it.
    let a = &machines[0];
    let drifting = Instant::now();
    a.exec_ok(&["cp", "/bin/true", DROPPED]);
    let host = wait_finding(a, &collector, id_a, DROPPED);
    timings.add("drift-to-collector", drifting.elapsed());
    expect_finding(a, &host, DROPPED, |f| {
        f["kind"] == "file" && f["severity"] == "critical" && f["finding"]["change"] == "added"
    });
    let healthz = loop {
        match a.get(HEALTH_PORT, "/healthz") {
            Some((503, body)) => break body,
            _ if drifting.elapsed() > SOON => a.fail(format!(
                "/healthz is not 503 {SOON:?} after the drift: {:?}",
                a.get(HEALTH_PORT, "/healthz")
            )),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    timings.add("drift-to-503", drifting.elapsed());
    let marked = wait_host(a, &collector, id_a, "the mark", |h| {
        h["host"]["state"] == "marked"
    });
    let reason = marked["host"]["mark_reason"].as_str().unwrap_or_default();
    if !reason.contains(DROPPED) {
        a.fail(format!("the mark should name {DROPPED}: {marked:#}"));
    }
    let marker = a.exec(&["cat", "/run/driftwatch/replace-me"]);
    if !marker.success() || !healthz.contains(DROPPED) {
        a.fail(format!(
            "the host's own mark should name {DROPPED}: /healthz {healthz}{marker}"
        ));
    }

    let privileged = Instant::now();
    a.exec_ok(&["chmod", "u+s", SETUID]);
    let host = wait_finding(a, &collector, id_a, SETUID);
    timings.add("setuid-to-collector", privileged.elapsed());
    expect_finding(a, &host, SETUID, |f| {
        f["kind"] == "file"
            && f["severity"] == "critical"
            && f["finding"]["attributes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "mode"))
    });

    let installing = Instant::now();
    let spare = format!(
        "/var/cache/apt/archives/{}",
        rootfs
            .deb(SPARE)
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
    );
    a.exec_ok(&["apt-get", "install", "--yes", "--no-download", &spare]);
    let host = wait_finding(a, &collector, id_a, SPARE_BINARY);
    timings.add("apt-install-to-collector", installing.elapsed());
    expect_finding(a, &host, SPARE_BINARY, |f| {
        f["severity"] == "critical" && f["finding"]["change"] == "added"
    });
    // The daemon polls the package database: the package finding follows on its own.
    let host = wait_finding(a, &collector, id_a, SPARE);
    timings.add("apt-install-to-package-finding", installing.elapsed());
    expect_finding(a, &host, SPARE, |f| {
        f["kind"] == "package" && f["finding"]["change"] == "installed"
    });

    let alerts = wait_alerts(a, &receiver, "drift", DROPPED);
    if alerts[0]["hosts"] != serde_json::json!([id_a]) || alerts[0]["image_id"] != IMAGE_ID {
        a.fail(format!("the drift alert: {alerts:#?}"));
    }
    wait_alerts(a, &receiver, "marked", id_a);
    let actions = collector.actions();
    let done = |action: &str| {
        actions
            .iter()
            .any(|x| x["host_id"] == id_a.as_str() && x["action"] == action && x["outcome"] == "ok")
    };
    if !(done("mark") && done("agent_told")) {
        a.fail(format!(
            "the action log should show mark and agent_told: {actions:#?}"
        ));
    }

    // After the window: a change to a declared path is drift, and so is a module file
    // added for the image's own kernel (seen by the daemon under its unit: no sandbox
    // setting hides /usr/lib/modules).
    let keys = format!("/home/{DEFAULT_USER}/.ssh/authorized_keys");
    a.exec_ok(&[
        "sh",
        "-c",
        &format!("echo 'ssh-ed25519 AAAAintruder x' >> {keys}"),
    ]);
    let host = wait_finding(a, &collector, id_a, &keys);
    // The baseline has no such file ("added"), and what is there now is not what the
    // delta recorded: drift.
    expect_finding(a, &host, &keys, |f| {
        f["severity"] == "critical" && f["finding"]["change"] == "added"
    });
    let module = format!(
        "/usr/lib/modules/{}/kernel/fs/foo.ko",
        image_kernel(a.root())
    );
    a.exec_ok(&["cp", "/bin/true", &module]);
    // A full re-check as well: the plain check below is compared with all of it.
    let checks = agent_status(a).map_or(0, |s| s["full_checks"].as_u64().unwrap_or(0));
    a.exec_ok(&["systemctl", "reload", UNIT]);
    wait_status(a, Duration::from_secs(120), "A's re-check", |s| {
        s["full_checks"].as_u64() > Some(checks)
    });
    let host = wait_finding(a, &collector, id_a, &module);
    expect_finding(a, &host, &module, |f| {
        f["severity"] == "critical" && f["finding"]["change"] == "added"
    });
    compare_with_plain_check(
        a,
        &agent_status(a).unwrap_or_default(),
        false,
        &mut problems,
    );

    if agent_status(a).is_none_or(|s| s["state"] != "marked") {
        a.fail(format!(
            "A's own state should be marked: {:#}",
            agent_status(a).unwrap_or_default()
        ));
    }
    print_findings("A at the collector", &collector.host(id_a).unwrap());

    // 5. C: a baseline that fails verification is critical drift at boot.
    let c = &machines[2];
    let host = wait_host(c, &collector, id_c, "the tampered baseline", |h| {
        h["host"]["state"] == "marked"
            && h["findings"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|f| f["kind"] == "baseline" && f["severity"] == "critical")
            })
    });
    if !host["host"]["baseline_digest"].is_null() {
        c.fail(format!(
            "a tampered baseline has no digest to claim: {host:#}"
        ));
    }
    match c.get(HEALTH_PORT, "/healthz") {
        Some((503, _)) => {}
        other => c.fail(format!("/healthz with a tampered baseline: {other:?}")),
    }
    print_findings("C at the collector", &host);

    // Every daemon stops cleanly under systemd (SIGTERM, within TimeoutStopSec), and
    // every machine powers off.
    for machine in &machines {
        let stopping = Instant::now();
        machine.exec_ok(&["systemctl", "stop", UNIT]);
        timings.add(&format!("{} stop", machine.name()), stopping.elapsed());
        let result = machine.exec(&[
            "systemctl",
            "show",
            "--property=Result,ExecMainStatus,NRestarts",
            UNIT,
        ]);
        if ["Result=success", "ExecMainStatus=0", "NRestarts=0"]
            .iter()
            .any(|want| !result.stdout.lines().any(|line| line == *want))
        {
            problem(
                &mut problems,
                format!(
                    "{}: the service did not run and stop cleanly:{result}",
                    machine.name()
                ),
            );
        }
    }
    eprintln!(
        "--- A: journalctl -u {UNIT} ---\n{}",
        machines[0].journal(UNIT)
    );
    if !problems.is_empty() {
        machines[0].fail(problems.join("\n"));
    }
    for machine in &mut machines {
        let took = machine.shutdown();
        timings.add(&format!("{} poweroff", machine.name()), took);
    }
    drop(machines);
    timings.add("total", started.elapsed());
    eprintln!("timings: {timings}");
}

// ---------------------------------------------------------------------------------------
// The image.

/// What the image build adds for its fleet before the bake: the agent's collector (URL,
/// CA, enrollment token), systemd-networkd for the network, the spare package's `.deb`
/// in apt's cache, and stand-ins for the host kernel's modules.
fn configure_image(image: &Root, collector: &Collector, rootfs: &Rootfs) {
    // The packaged configuration, with the fleet's collector added; heartbeats and
    // retries quick for the test. `pubkey` is left for driftwatch-bake to set.
    let packaged = std::fs::read_to_string(image.join("/etc/driftwatch/agent.toml")).unwrap();
    image.write(
        "/etc/driftwatch/agent.toml",
        format!(
            "{packaged}\n[collector]\nurl = \"{}\"\nca_file = \"/etc/driftwatch/collector-ca.pem\"\n\
             enrollment_token_file = \"/etc/driftwatch/enroll.token\"\n\
             heartbeat_interval_secs = 2\nretry_max_secs = 2\n\
             \n[provisioning]\nextra_paths = [\"/etc/driftwatch-e2e\", \"/etc/driftwatch-e2e/**\"]\n",
            collector.url()
        ),
        0o644,
    );
    image.write(
        "/etc/driftwatch/collector-ca.pem",
        std::fs::read(collector.ca()).unwrap(),
        0o644,
    );
    image.write(
        "/etc/driftwatch/enroll.token",
        std::fs::read(collector.enrollment_token()).unwrap(),
        0o600,
    );
    image
        .chroot(&["systemctl", "enable", "systemd-networkd.service"])
        .ok();
    let spare = rootfs.deb(SPARE).unwrap();
    std::fs::copy(
        &spare,
        image
            .join("/var/cache/apt/archives")
            .join(spare.file_name().unwrap()),
    )
    .unwrap();
    container::stand_in_kernel_modules(image);
    // cloud-init looks for nothing but a NoCloud seed (in a container its datasource
    // cannot be detected), leaves the network to systemd-networkd as configured, and
    // the locale as the image has it (minbase has no `locales` to generate one from).
    image.write(
        "/etc/cloud/cloud.cfg.d/90-driftwatch-e2e.cfg",
        "datasource_list: [NoCloud]\nnetwork: {config: disabled}\nlocale: false\n",
        0o644,
    );
}

/// What A's provisioning writes outside the declared paths: drift, even in the window.
const OUTSIDE: &str = "/etc/driftwatch-outside";

/// The public key the default user gets (any well-formed key: nobody logs in).
const USER_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHQYxR9QyZbRj3fDUeMXSLYs5yLvKZqDV8kCq0AbS1fC e2e@driftwatch";

/// Machine `name`'s seed; A's provisioning also writes outside the declared paths.
fn seed_cloud_init(root: &Root, name: &str, outside: bool) {
    let more = format!("echo outside > {OUTSIDE}");
    let more: &[&str] = if outside { &[&more] } else { &[] };
    driftwatch_tests::bake::seed_cloud_init(root, name, USER_KEY, more);
}

/// Flips one byte in the middle of `file`.
fn flip_a_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

// ---------------------------------------------------------------------------------------
// Watching from outside.

/// The agent's `/status` inside `machine`.
fn agent_status(machine: &Container) -> Option<Value> {
    machine
        .get(HEALTH_PORT, "/status")
        .and_then(|(_, body)| serde_json::from_str(&body).ok())
}

/// Polls the agent's `/status` until `done` holds, failing after `limit`.
fn wait_status(
    machine: &Container,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let status = agent_status(machine);
        if let Some(status) = status.as_ref().filter(|s| done(s)) {
            return status.clone();
        }
        if start.elapsed() > limit {
            match status {
                Some(status) => machine.fail(format!(
                    "timed out after {limit:?} waiting for {what}; last status: {status:#}"
                )),
                None => machine.fail(format!(
                    "timed out after {limit:?} waiting for {what}: /status does not answer"
                )),
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Polls the collector's view of host `id` until `done` holds, failing after [`SOON`]
/// (with the machine's journal and the collector's log).
fn wait_host(
    machine: &Container,
    collector: &Collector,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let host = collector.host(id);
        if let Some(host) = host.as_ref().filter(|h| done(h)) {
            return host.clone();
        }
        if start.elapsed() > SOON {
            machine.fail(format!(
                "timed out after {SOON:?} waiting for {what} at the collector; host {id}: \
                 {host:#?}\nagent status: {:#}\n--- collector log (last 30 lines) ---\n{}",
                agent_status(machine).unwrap_or_default(),
                last_lines(&collector.log(), 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the collector to show a finding about `subject` on host `id`.
fn wait_finding(machine: &Container, collector: &Collector, id: &str, subject: &str) -> Value {
    wait_host(
        machine,
        collector,
        id,
        &format!("a finding about {subject}"),
        |h| finding(h, subject).is_some(),
    )
}

/// The collector's finding about `subject`, if any.
fn finding<'a>(host: &'a Value, subject: &str) -> Option<&'a Value> {
    host["findings"]
        .as_array()?
        .iter()
        .find(|f| f["subject"] == subject)
}

/// Fails unless the collector's finding about `subject` passes `right`.
fn expect_finding(
    machine: &Container,
    host: &Value,
    subject: &str,
    right: impl Fn(&Value) -> bool,
) {
    let found = finding(host, subject).unwrap();
    if !right(found) {
        machine.fail(format!(
            "the finding about {subject} is not as expected: {found:#}"
        ));
    }
}

/// Waits for webhook alerts of `kind` whose title or hosts name `about`.
fn wait_alerts(
    machine: &Container,
    receiver: &WebhookReceiver,
    kind: &str,
    about: &str,
) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let alerts: Vec<Value> = receiver
            .of_kind(kind)
            .into_iter()
            .filter(|a| {
                a["title"].as_str().unwrap_or("").contains(about)
                    || a["hosts"]
                        .as_array()
                        .is_some_and(|h| h.iter().any(|h| h == about))
            })
            .collect();
        if !alerts.is_empty() {
            return alerts;
        }
        if start.elapsed() > SOON {
            machine.fail(format!(
                "no {kind} alert about {about} after {SOON:?}; received: {:#?}",
                receiver.received()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many entries the boot check compared, from its journal entry.
fn boot_check_entries(machine: &Container) -> Option<u64> {
    let out = machine.exec(&[
        "journalctl",
        &format!("--unit={UNIT}"),
        "--boot",
        "--output=json",
        "--no-pager",
    ]);
    out.stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|e| e["MESSAGE"] == "Check finished." && e["F_WHY"] == "boot")
        .and_then(|e| e["F_ENTRIES"].as_str()?.parse().ok())
}

/// Records a problem unless `status` (after `when`) is clean: no findings, state
/// `clean`, `/healthz` 200. Findings not printed before are printed in full.
fn judge_clean(
    machine: &Container,
    status: &Value,
    when: &str,
    expected: &[&str],
    seen: &mut HashSet<String>,
    problems: &mut Vec<String>,
) {
    print_list(&format!("errors of {when}"), &status["errors"]);
    print_list(
        &format!("degradations after {when}"),
        &status["degradations"],
    );
    let all = status["findings"].as_array().cloned().unwrap_or_default();
    for path in expected {
        if !all.iter().any(|r| r["finding"]["path"] == *path) {
            problem(
                problems,
                format!("after {when}, {path} should be a finding: {all:#?}"),
            );
        }
    }
    let findings: Vec<Value> = all
        .into_iter()
        .filter(|r| !expected.iter().any(|p| r["finding"]["path"] == *p))
        .collect();
    let new: Vec<&Value> = findings
        .iter()
        .filter(|r| seen.insert(format!("{}|{}", machine.name(), r["finding"])))
        .collect();
    if !new.is_empty() {
        eprintln!("FALSE POSITIVES after {when} ({} new):", new.len());
        for remembered in &new {
            eprintln!("  {}", describe(&remembered["finding"]));
        }
        problem(
            problems,
            format!(
                "{} findings after {when} (listed above); state {}, mark {}",
                new.len(),
                status["state"],
                status["mark"]
            ),
        );
    }
    if !findings.is_empty() || !expected.is_empty() {
        return;
    }
    if status["state"] != "clean" {
        problem(
            problems,
            format!("after {when} the state is {}: {status:#}", status["state"]),
        );
        return;
    }
    match machine.get(HEALTH_PORT, "/healthz") {
        Some((200, _)) => {}
        Some((code, body)) => problem(problems, format!("/healthz after {when}: {code} {body}")),
        None => machine.fail("/healthz does not answer"),
    }
}

/// Records a problem unless cloud-init did what the seed asked (user, key, file,
/// hostname, command) and the daemon holds it as the sealed provisioning delta, shown
/// by `driftwatch status` in text and JSON.
fn judge_provisioned(machine: &Container, status: &Value, problems: &mut Vec<String>) {
    let home = format!("/home/{DEFAULT_USER}");
    let keys = format!("{home}/.ssh/authorized_keys");
    let host = machine.name();
    for (command, want) in [
        (format!("id -u {DEFAULT_USER}"), String::new()),
        (format!("cat {keys}"), USER_KEY.to_string()),
        (format!("cat {WRITTEN}"), "provisioned".to_string()),
        (format!("cat {RAN}"), "ran".to_string()),
        ("cat /etc/hostname".to_string(), host.to_string()),
    ] {
        let out = machine.exec(&["sh", "-c", &command]);
        if !out.success() || !out.stdout.contains(&want) {
            problem(
                problems,
                format!("{host}: cloud-init did not provision ({want:?} expected):{out}"),
            );
        }
    }
    let delta = &status["provisioning"]["delta"];
    eprintln!(
        "{host}: provisioning delta ({}): {}",
        status["provisioning"]["sealed_because"],
        delta
            .as_object()
            .map(|d| d.keys().cloned().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    for path in [
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/etc/gshadow",
        "/etc/sudoers.d/90-cloud-init-users",
        &keys,
        WRITTEN,
        RAN,
    ] {
        let entry = &delta[format!("file:{path}")]["finding"];
        if entry["observed"]["blake3"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            problem(
                problems,
                format!("{host}: the provisioning delta lacks {path} with its digest"),
            );
        }
    }
    let text = machine.exec(&["driftwatch", "status"]);
    let json = machine.exec(&["driftwatch", "status", "--format", "json"]);
    let shown: Value = serde_json::from_str(&json.stdout).unwrap_or_default();
    if !text.stdout.contains("delta sealed")
        || !text.stdout.contains(&keys)
        || shown["provisioning"]["phase"] != "sealed"
    {
        problem(
            problems,
            format!("{host}: `driftwatch status` should show the sealed delta:{text}{json}"),
        );
    }
}

/// Records a problem unless `driftwatch check`, run inside as a plain root command,
/// agrees with itself (listing, JSON summary, text summary, exit status) and with the
/// daemon under its unit: everything it finds the daemon reports too (processes aside:
/// the outer machine's `nsenter` is one, for an instant), so no sandbox setting hides
/// anything from the daemon. The daemon may remember more (drift since put back); with
/// `clean`, neither has anything: after the sealed window, no drift either way.
fn compare_with_plain_check(
    machine: &Container,
    status: &Value,
    clean: bool,
    problems: &mut Vec<String>,
) {
    let json = machine.exec(&["driftwatch", "check", "--format", "json"]);
    let text = machine.exec(&["driftwatch", "check"]);
    let report = match driftwatch_tests::plain_check::judge(&json, &text) {
        Ok(report) => report,
        Err(wrong) => {
            problem(problems, format!("{}: {wrong}", machine.name()));
            return;
        }
    };
    let keys = |findings: Vec<&Value>| -> std::collections::BTreeSet<String> {
        findings
            .into_iter()
            .filter(|f| f["kind"] != "process")
            .map(|f| {
                let subject = ["path", "name", "mountpoint", "port"]
                    .iter()
                    .find_map(|k| f.get(*k).filter(|v| !v.is_null()))
                    .map_or_else(String::new, Value::to_string);
                format!("{} {subject}", f["kind"])
            })
            .collect()
    };
    let listed: Vec<&Value> = report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let plain = keys(listed.clone());
    let daemon = keys(
        status["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| &r["finding"])
            .collect(),
    );
    eprintln!(
        "{}: plain check and daemon agree on {} findings",
        machine.name(),
        plain.len()
    );
    let remembered: Vec<&String> = daemon.difference(&plain).collect();
    if !remembered.is_empty() {
        eprintln!(
            "{}: the daemon also remembers {remembered:?}",
            machine.name()
        );
    }
    if !plain.is_subset(&daemon) {
        problem(
            problems,
            format!(
                "{}: `driftwatch check` as root finds {plain:?}, the daemon under its unit \
                 {daemon:?}",
                machine.name()
            ),
        );
    }
    if clean && (!listed.is_empty() || !daemon.is_empty() || status["state"] != "clean") {
        problem(
            problems,
            format!(
                "{}: after the sealed window both should see no drift; plain check: \
                 {listed:#?}, daemon ({}): {daemon:?}\n{}",
                machine.name(),
                status["state"],
                text.stdout
            ),
        );
    }
}

/// The release of the image's own kernel (`/boot/vmlinuz-RELEASE`).
fn image_kernel(root: &Root) -> String {
    std::fs::read_dir(root.join("/boot"))
        .unwrap()
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .expect("the image has a kernel in /boot")
}

/// One line per finding: the essentials first, then the whole finding.
fn describe(finding: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let essentials = match finding["kind"].as_str() {
        Some("file") => format!(
            "{} {} {} [{}] rule {:?}",
            text(&finding["severity"]),
            text(&finding["change"]),
            text(&finding["path"]),
            finding["attributes"]
                .as_array()
                .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            text(&finding["rule"]),
        ),
        kind => format!("{} {}", text(&finding["severity"]), kind.unwrap_or("?")),
    };
    format!("{essentials}\n      {finding}")
}

/// Records a problem that fails the test at the end (the test goes on to show what else
/// works), printing it now.
fn problem(problems: &mut Vec<String>, message: impl Display) {
    eprintln!("PROBLEM: {message}");
    problems.push(message.to_string());
}

/// The collector's view of a host, one line per finding.
fn print_findings(what: &str, host: &Value) {
    let findings = host["findings"].as_array().cloned().unwrap_or_default();
    eprintln!(
        "{what}: {}, {} findings (mark: {})",
        host["host"]["state"],
        findings.len(),
        host["host"]["mark_reason"]
    );
    for f in &findings {
        eprintln!(
            "  {} {} {} {}",
            f["severity"].as_str().unwrap_or("?"),
            f["kind"].as_str().unwrap_or("?"),
            f["subject"].as_str().unwrap_or("?"),
            f["finding"]["change"].as_str().unwrap_or("")
        );
    }
}

fn print_list(what: &str, list: &Value) {
    match list.as_array() {
        Some(items) if !items.is_empty() => {
            eprintln!("{what} ({}):", items.len());
            for item in items {
                eprintln!("  {item}");
            }
        }
        _ => eprintln!("{what}: none"),
    }
}

/// The timings line printed at the end.
#[derive(Default)]
struct Timings(Vec<(String, String)>);

impl Timings {
    fn add(&mut self, what: &str, took: Duration) {
        self.0.push((what.to_string(), format!("{took:.1?}")));
    }

    fn note(&mut self, what: &str, how: &str) {
        self.0.push((what.to_string(), how.to_string()));
    }
}

impl Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(what, took)| format!("{what} {took}"))
            .collect();
        write!(f, "{}", parts.join(" | "))
    }
}
