//! Runtime sources read the host as the host is (issue 10 §3): `driftwatch check` run
//! in a mount namespace of its own — as the daemon runs under its unit — judges the
//! mounts of the host's init, not its own; and the file scan follows the image onto
//! the file systems it is split across (a separate `/usr`), not onto others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use serde_json::Value;
use std::process::Command;
use util::{Tree, BIN};

/// Prints why the test cannot run; with `CI=true` that is a failure.
fn skip(why: &str) {
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true, but {why}"
    );
    eprintln!("skipping: {why}");
}

/// Root and unshare(1), which every test here needs to make mount namespaces; says why
/// not (a failure under CI) and returns false when either is missing.
fn can_unshare() -> bool {
    if !util::is_root() {
        skip("mount namespaces need root");
        return false;
    }
    if !util::have_tool("unshare") {
        skip("unshare (util-linux) is not installed");
        return false;
    }
    true
}

/// In a new PID and mount namespace (its PID 1 plays the host's init), `dir` is a
/// tmpfs mounted with `host_options`; the check runs in a further mount namespace
/// where the same mount is remounted `own_options` (as `ProtectSystem=` does for the
/// daemon). Returns the mount findings of the check's report.
fn mount_findings(
    t: &Tree,
    dir: &std::path::Path,
    host_options: &str,
    own_options: &str,
) -> Vec<Value> {
    let d = dir.display();
    let script = format!(
        "set -e; mount -t tmpfs -o {host_options} dwtest {d}; \
         unshare --mount --propagation private sh -c 'mount -o remount,bind,{own_options} {d} && \
         exec {BIN} check --format json --root / --baseline {}' || true",
        t.baseline().display()
    );
    let out = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "private",
            "--mount-proc",
        ])
        .args(["sh", "-c", &script])
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "mount")
        .cloned()
        .collect()
}

#[test]
fn r10_mounts_are_judged_as_the_hosts_init_sees_them() {
    if !can_unshare() {
        return;
    }
    let t = Tree::new();
    let dir = t.outside("usr-like");
    std::fs::create_dir_all(&dir).unwrap();
    let scanned = t.outside("scanned");
    std::fs::create_dir_all(&scanned).unwrap();
    // A tiny scan (the check reads the running system only with --root /), and the
    // rule under test: the mount must be read-only.
    t.write_policy(&format!(
        "[scan]\npaths = [{:?}]\n[packages]\nenabled = false\nverify = \"off\"\n[runtime]\nmounts = [{{ path = {:?}, options = [\"ro\"] }}]\n",
        scanned.display().to_string(),
        dir.display().to_string()
    ));
    let created = Command::new(BIN)
        .args(["baseline", "create", "--root", "/", "--policy"])
        .arg(t.policy())
        .arg("--out")
        .arg(t.baseline())
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");

    // The host remounted it read-write; the checker's own namespace still says ro.
    let found = mount_findings(&t, &dir, "rw", "ro");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["mountpoint"], dir.display().to_string());
    assert!(
        found[0]["observed"]
            .as_array()
            .unwrap()
            .contains(&"rw".into()),
        "{found:?}"
    );
    // Read-only on the host, whatever the checker's namespace says: no finding.
    assert_eq!(mount_findings(&t, &dir, "ro", "rw"), Vec::<Value>::new());
}

/// A host whose `/usr` is a file system of its own (as a hardened image lays it out)
/// is still compared with the image below `/usr`, although the policy keeps the scan on
/// one file system; a file system mounted where the image ships nothing is not walked.
#[test]
fn r10_the_images_own_file_systems_are_crossed_and_others_are_not() {
    if !can_unshare() {
        return;
    }
    let t = Tree::new();
    t.write_policy(&format!(
        "[packages]\nenabled = false\nverify = \"off\"\n[runtime]\nenabled = false\n{}",
        util::TEST_POLICY
    ));
    t.file("/usr/bin/tool", b"the image's tool\n")
        .file("/usr/lib/lib.so", b"a library\n")
        .dir("/media")
        .file("/etc/config", b"setting\n");
    t.create();
    t.assert_clean();
    let (root, copy) = (t.root(), t.outside("usr-copy"));
    let check = |changes: &str| {
        let script = format!(
            "set -e; cp -a {root}/usr/. {copy}/; mount -t tmpfs -o mode=0755 dwusr {root}/usr; \
             cp -a {copy}/. {root}/usr/; mount -t tmpfs -o mode=0755 dwmedia {root}/media; \
             echo removable > {root}/media/file; {changes} \
             exec {BIN} check --format json --root {root} --baseline {}",
            t.baseline().display(),
            root = root.display(),
            copy = copy.display(),
        );
        std::fs::create_dir_all(&copy).unwrap();
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "no report ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        report["findings"].as_array().unwrap().clone()
    };
    assert_eq!(check(""), Vec::<Value>::new());
    let root = t.root().display().to_string();
    let found = check(&format!("echo trojan > {root}/usr/bin/tool;"));
    let paths: Vec<&Value> = found.iter().map(|f| &f["path"]).collect();
    assert_eq!(paths, ["/usr/bin/tool"], "{found:#?}");
    assert_eq!(found[0]["change"], "modified");
}
