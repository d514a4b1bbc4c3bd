//! The image as a real virtual machine: the stock cloud image of `tests/tests/image.rs`
//! with the agent's `.deb` installed and baked, made into disks (`/` and a read-only
//! `/usr`, as hardened images ship it) and booted under qemu with the image's own
//! kernel and initramfs — under KVM when `/dev/kvm` is usable, else software emulation;
//! the output says which. What a container cannot show, this does:
//!
//! 1. first boot: cloud-init provisions the machine from a NoCloud seed (user, SSH key,
//!    file, hostname, command), `driftwatch.service` goes active, and the boot check,
//!    with the kernel's modules really loaded (`/proc/modules`), reports **zero
//!    findings**, as does `driftwatch check` run as root; the kernel-module check ran;
//! 2. a reboot: still zero findings, the provisioning window still sealed;
//! 3. `mount -o remount,rw /usr` on a host whose policy expects `/usr` read-only is a
//!    mount finding, seen by the daemon under its unit;
//! 4. kernel-module drift for real: a module the image does not ship, loaded from /tmp
//!    (a shipped one renamed), is a `not_in_image` finding; a shipped `.ko` changed on
//!    disk is a file finding, and, loaded, a `tainted` module finding.
//!
//! Boot-to-active and first-boot-to-clean times are printed on the `timings:` line
//! (`bench/boot.sh` takes medians). Ignored by default (a boot under software emulation
//! takes minutes on a loaded 2-core machine): `cargo test -p driftwatch-tests --test
//! qemu -- --ignored --nocapture`. Needs root, qemu-system-x86_64, mkfs.ext4, ssh and
//! what `tests/tests/image.rs` needs to build the image; otherwise `skipping: <why>`
//! (a failure under `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use driftwatch_tests::bake::{self, install_package, DEFAULT_USER, RAN, UNIT, WRITTEN};
use driftwatch_tests::container::{self, Root};
use driftwatch_tests::vm::{Accel, Disks, Kernel, Vm, VmSpec, FSTAB};
use driftwatch_tests::{bin, ok, plain_check, run};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE_ID: &str = "debian-qemu-1";
/// A shipped module loaded under another name: the image does not ship that one.
const RENAMED_FROM: (&str, &str) = ("kernel/lib/crc-itu-t.ko", "crc_itu_t");
const FOREIGN: &str = "dwt_itu_t";
/// A shipped module changed on disk, then loaded.
const CHANGED: (&str, &str) = ("kernel/lib/crc7.ko", "crc7");

#[test]
#[ignore = "boots a virtual machine twice: minutes under software emulation, more than CI's \
            budget here; run with `-- --ignored` (bench/boot.sh qemu does)"]
fn a_cloud_image_boots_under_qemu_clean_and_module_and_mount_drift_are_found() {
    let started = Instant::now();
    let tools = [
        "qemu-system-x86_64",
        "mkfs.ext4",
        "ssh",
        "ssh-keygen",
        "truncate",
        "mount",
    ];
    let bake::Ingredients {
        cache, rootfs, deb, ..
    } = match bake::ingredients(&tools) {
        Ok(ingredients) => ingredients,
        Err(reason) => {
            container::skip(reason);
            return;
        }
    };
    let (accel, why) = Accel::detect();
    eprintln!("boots: {accel} ({why})");
    let mut timings = vec![format!("boots {accel}"), format!("rootfs {}", rootfs.how)];

    // The image: the cloud image, the package, a read-only /usr in fstab and a policy
    // that expects it, baked; then each machine's seed.
    let work = tempfile::Builder::new()
        .prefix("driftwatch-qemu-")
        .tempdir()
        .unwrap();
    let (sign_key, pubkey, ssh_key) = (
        work.path().join("pipeline.key"),
        work.path().join("pipeline.pub"),
        work.path().join("id_ed25519"),
    );
    ok(run(Command::new(bin("driftwatch"))
        .args(["key", "generate", "--private"])
        .arg(&sign_key)
        .arg("--public")
        .arg(&pubkey)));
    ok(run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "e2e@driftwatch",
            "-f",
        ])
        .arg(&ssh_key)));
    let baking = Instant::now();
    let image = cache.root("qemu");
    image.extract(&rootfs.tarball);
    install_package(&image, &deb);
    configure_image(&image);
    bake::bake(
        &image,
        IMAGE_ID,
        &sign_key,
        &pubkey,
        &["--policy", "/tmp/policy.toml"],
    );
    std::fs::remove_file(image.join("/tmp/policy.toml")).unwrap();
    let public = std::fs::read_to_string(ssh_key.with_extension("pub")).unwrap();
    bake::seed_cloud_init(&image, "dw-qemu", public.trim(), &[]);
    let kernel = Kernel::of(&image);
    let disks = Disks::make(&image);
    timings.push(format!("image {:.1?}", baking.elapsed()));
    let spec = VmSpec {
        name: "dw-qemu",
        disks: &disks,
        kernel: &kernel,
        accel,
        user: DEFAULT_USER,
        key: &ssh_key,
    };

    // 1. First boot: provisioned, active, clean; modules loaded and checked.
    let mut vm = Vm::boot(&spec);
    let ssh = vm.wait_ssh();
    let status = wait_status(&vm, "the sealed first-boot check", |s| {
        s["full_checks"].as_u64() >= Some(1) && s["provisioning"]["phase"] == "sealed"
    });
    let clean_after = vm.up_for();
    let active_after = active_after(&vm);
    timings.push(format!("ssh {ssh:.1?}"));
    timings.push(format!("boot-to-active {active_after:.1?}"));
    timings.push(format!("first-boot-to-clean {clean_after:.1?}"));
    expect_machine(&vm, &kernel);
    expect_clean(&vm, &status, "the first boot");

    // 2. A reboot: clean, the window still sealed.
    let sealed = status["provisioning"]["sealed"].clone();
    timings.push(format!("poweroff {:.1?}", vm.shutdown()));
    drop(vm);
    let mut vm = Vm::boot(&spec);
    vm.wait_ssh();
    let status = wait_status(&vm, "the check after the reboot", |s| {
        s["full_checks"].as_u64() >= Some(1)
    });
    timings.push(format!("reboot-to-checked {:.1?}", vm.up_for()));
    if status["provisioning"]["sealed"] != sealed {
        vm.fail(format!(
            "the window must stay sealed at {sealed} across a reboot: {:#}",
            status["provisioning"]
        ));
    }
    expect_clean(&vm, &status, "the reboot");

    // 3. + 4. Drift: /usr made writable, a foreign module loaded, a shipped one changed
    //    and loaded; one re-check finds all of it. Each module gets a byte after its
    //    signature's marker: the kernel refuses a module whose signature does not
    //    verify ("Key was rejected by service") even when signatures are not enforced,
    //    and loads one without a signature, tainted `E`, as it would a module built
    //    out of tree.
    let drifting = Instant::now();
    let tree = format!("/usr/lib/modules/{}", kernel.release);
    let changed = format!("{tree}/{}", CHANGED.0);
    let foreign = format!("/tmp/{FOREIGN}.ko");
    vm.sudo_ok(&["mount", "-o", "remount,rw", "/usr"]);
    vm.sudo_ok(&[
        "sh",
        "-c",
        &format!(
            "LC_ALL=C sed s/{}/{FOREIGN}/g {tree}/{} > {foreign} && printf x >> {foreign} && \
             insmod {foreign} && printf x >> {changed} && insmod {changed}",
            RENAMED_FROM.1, RENAMED_FROM.0
        ),
    ]);
    let loaded = vm.exec(&["cat", "/proc/modules"]).stdout;
    eprintln!(
        "loaded now: {}",
        loaded
            .lines()
            .filter(|l| l.starts_with(FOREIGN) || l.starts_with(CHANGED.1))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let checks = status["full_checks"].as_u64().unwrap_or(0);
    vm.sudo_ok(&["systemctl", "reload", UNIT]);
    let status = wait_status(&vm, "the re-check after the drift", |s| {
        s["full_checks"].as_u64() > Some(checks)
    });
    timings.push(format!("drift-to-found {:.1?}", drifting.elapsed()));
    let findings: Vec<&Value> = status["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| &r["finding"])
        .collect();
    for f in &findings {
        eprintln!("found: {f}");
    }
    let has = |what: &str, right: &dyn Fn(&Value) -> bool| {
        if !findings.iter().any(|f| right(f)) {
            vm.fail(format!(
                "after the drift the daemon should report {what}: {findings:#?}"
            ));
        }
    };
    has("/usr mounted without ro", &|f| {
        f["kind"] == "mount" && f["mountpoint"] == "/usr"
    });
    has(
        &format!("{FOREIGN} as a module the image does not ship"),
        &|f| f["kind"] == "kernel_module" && f["name"] == FOREIGN && f["reason"] == "not_in_image",
    );
    has(&format!("{changed} modified"), &|f| {
        f["kind"] == "file" && f["path"] == changed.as_str() && f["change"] == "modified"
    });
    has(&format!("{} loaded tainted (unsigned)", CHANGED.1), &|f| {
        f["kind"] == "kernel_module"
            && f["name"] == CHANGED.1
            && f["reason"] == "tainted"
            && f["taint"].as_str().is_some_and(|t| t.contains('E'))
    });
    if status["state"] != "marked" {
        vm.fail(format!(
            "critical drift should mark the host: {}",
            status["state"]
        ));
    }
    timings.push(format!("poweroff {:.1?}", vm.shutdown()));
    drop(vm);
    timings.push(format!("total {:.1?}", started.elapsed()));
    eprintln!("timings: {}", timings.join(" | "));
}

/// What the image build adds before the bake: `/usr` read-only in fstab and a policy
/// that expects it so (the built-in one with a mount rule), DHCP on the machine's
/// network card with systemd-networkd, cloud-init told to use the NoCloud seed.
fn configure_image(image: &Root) {
    image.write("/etc/fstab", FSTAB, 0o644);
    // The lost+found every ext4 file system has at its root: there when an image with
    // a /usr partition is baked on its mounted partitions.
    std::fs::create_dir_all(image.join("/usr/lost+found")).unwrap();
    std::fs::set_permissions(
        image.join("/usr/lost+found"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // What the seed's write_files and runcmd write is provisioning too.
    let packaged = std::fs::read_to_string(image.join("/etc/driftwatch/agent.toml")).unwrap();
    image.write(
        "/etc/driftwatch/agent.toml",
        format!(
            "{packaged}\n[provisioning]\nextra_paths = [\"/etc/driftwatch-e2e\", \"/etc/driftwatch-e2e/**\"]\n"
        ),
        0o644,
    );
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let policy = std::fs::read_to_string(workspace.join("agent/policy/default.toml")).unwrap();
    let expecting = policy.replace(
        "\nmounts = []\n",
        "\nmounts = [{ path = \"/usr\", options = [\"ro\"] }]\n",
    );
    assert_ne!(expecting, policy, "the default policy has no `mounts = []`");
    image.write("/tmp/policy.toml", expecting, 0o644);
    image.write(
        "/etc/systemd/network/90-dhcp.network",
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n\
         IPv6AcceptRA=no\n",
        0o644,
    );
    image
        .chroot(&["systemctl", "enable", "systemd-networkd.service"])
        .ok();
    image.write(
        "/etc/cloud/cloud.cfg.d/90-driftwatch-e2e.cfg",
        "datasource_list: [NoCloud]\nnetwork: {config: disabled}\nlocale: false\n",
        0o644,
    );
}

/// The agent's `/status`, asked with `driftwatch status` on the machine.
fn agent_status(vm: &Vm) -> Option<Value> {
    let out = vm.exec(&["driftwatch", "status", "--format", "json"]);
    serde_json::from_str(&out.stdout).ok()
}

/// Polls the agent's status until `done` holds, failing after the boot limit.
fn wait_status(vm: &Vm, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    let limit = vm.accel().boot_limit();
    loop {
        let status = agent_status(vm);
        if let Some(status) = status.as_ref().filter(|s| done(s)) {
            return status.clone();
        }
        if start.elapsed() > limit {
            vm.fail(format!(
                "timed out after {limit:?} waiting for {what}; last status: {status:#?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How long after qemu started systemd called the unit active, from the machine's own
/// record: qemu's start to now, minus what passed on the machine since the unit went
/// active.
fn active_after(vm: &Vm) -> Duration {
    let asked = vm.up_for();
    let out = vm.exec(&[
        "sh",
        "-c",
        &format!("systemctl show -P ActiveEnterTimestampMonotonic {UNIT}; cat /proc/uptime"),
    ]);
    let mut lines = out.stdout.lines();
    let active: Option<u64> = lines.next().and_then(|l| l.trim().parse().ok());
    let uptime: Option<f64> = lines
        .next()
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    match (active, uptime) {
        (Some(active), Some(uptime)) if active > 0 => {
            let since =
                Duration::from_secs_f64(uptime).saturating_sub(Duration::from_micros(active));
            asked.saturating_sub(since)
        }
        _ => vm.fail(format!("{UNIT} never went active:{out}")),
    }
}

/// Fails unless the machine runs the image's kernel with modules loaded, `/usr`
/// read-only, and cloud-init did what the seed asked.
fn expect_machine(vm: &Vm, kernel: &Kernel) {
    let release = vm.exec(&["uname", "-r"]).stdout;
    let modules = vm.exec(&["cat", "/proc/modules"]).stdout;
    let usr = vm.exec(&["findmnt", "-n", "-o", "OPTIONS", "/usr"]).stdout;
    let provisioned = vm.exec(&["cat", WRITTEN, RAN]);
    let hostname = vm.exec(&["hostname"]).stdout;
    eprintln!(
        "{}: kernel {}, {} modules loaded, /usr {}, hostname {}",
        vm.name(),
        release.trim(),
        modules.lines().count(),
        usr.trim(),
        hostname.trim()
    );
    if release.trim() != kernel.release
        || modules.lines().count() == 0
        || !usr.split(',').any(|o| o.trim() == "ro")
        || provisioned.stdout != "provisioned\nran\n"
        || hostname.trim() != vm.name()
    {
        vm.fail(format!(
            "expected kernel {}, modules loaded, /usr ro, provisioned: {release}{modules}{usr}{provisioned}{hostname}",
            kernel.release
        ));
    }
}

/// Fails unless the daemon and a plain `driftwatch check` as root both report nothing
/// (the check's listing, JSON summary, text summary and exit status alike), and the
/// check judged the loaded modules (nothing "Not checked").
fn expect_clean(vm: &Vm, status: &Value, when: &str) {
    let findings = status["findings"].as_array().cloned().unwrap_or_default();
    if !findings.is_empty() || status["state"] != "clean" {
        vm.fail(format!(
            "after {when} the daemon should be clean with no findings: {status:#}"
        ));
    }
    let json = vm.sudo(&["driftwatch", "check", "--format", "json"]);
    let text = vm.sudo(&["driftwatch", "check"]);
    let report = plain_check::judge(&json, &text)
        .unwrap_or_else(|wrong| vm.fail(format!("after {when}: {wrong}")));
    if report["findings"] != serde_json::json!([])
        || !text.stdout.contains("No drift.")
        || text.stdout.contains("Not checked")
    {
        vm.fail(format!(
            "after {when} `driftwatch check` as root should find nothing and check everything:{json}{text}"
        ));
    }
    eprintln!(
        "{} after {when}: clean (daemon and plain check), {} errors, degradations {}",
        vm.name(),
        status["errors"].as_array().map_or(0, Vec::len),
        status["degradations"]
    );
}
