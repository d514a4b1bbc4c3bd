//! Integration tests of the `driftwatch` binary: baselines are made of scratch trees,
//! the trees are changed, and `check` (or `baseline diff`/`verify`/`show`) must report
//! exactly what changed, with the documented exit statuses
//! (0 clean, 1 drift, 2 operational error or entries not examined, 3 baseline integrity
//! failure).
//!
//! Every test works in its own temp dir (`util::Tree`): `tree/` is scanned, the policy
//! and the baseline live beside it, outside the scanned tree. Tests that need root say
//! "skipping: needs root" and pass when not run as root.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use util::{
    errors_of, finding_at, found, generate_key, have_tool, root_or_skip, sh, shown_entries, Cmd,
    Found, Tree, TEST_POLICY,
};

/// Runs a command as uid/gid 65534 with no supplementary groups.
const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

fn os(path: &Path) -> &OsStr {
    path.as_os_str()
}

/// The entry for `path` in `baseline show --entries --format json` output.
fn shown_entry<'a>(entries: &'a [Value], path: &str) -> &'a Value {
    entries
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in the baseline: {entries:#?}"))
}

fn shown_paths(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["path"].as_str().expect("path").to_string())
        .collect()
}

// 1 ------------------------------------------------------------------------------------

#[test]
fn content_change_with_same_size_and_mtime_is_found() {
    let t = Tree::new();
    t.file("/etc/app.conf", b"listen = 127.0.0.1\n")
        .file("/other", b"unchanged");
    t.create();
    t.assert_clean();

    let path = t.path("/etc/app.conf");
    let before = fs::metadata(&path).unwrap();
    fs::write(&path, b"listen = 0.0.0.0:1\n").unwrap();
    // `touch -r`: put the old mtime back.
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let after = fs::metadata(&path).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after.modified().unwrap(), before.modified().unwrap());

    let out = t.check();
    out.assert_code(1);
    assert_eq!(
        out.findings(),
        [found("modified", "/etc/app.conf", &["content"])],
        "{out}"
    );
    let report = out.json();
    let f = finding_at(&report, "/etc/app.conf");
    assert_eq!(f["severity"], "medium");
    assert_ne!(f["baseline"]["blake3"], f["observed"]["blake3"]);
    assert_eq!(f["baseline"]["mtime"], f["observed"]["mtime"]);
}

// 2 ------------------------------------------------------------------------------------

#[test]
fn mode_change_and_setuid_bit_is_critical() {
    let t = Tree::new();
    t.file("/a", b"a")
        .file("/b", b"#!/bin/sh\n")
        .chmod("/b", 0o755);
    t.create();
    t.assert_clean();

    t.chmod("/a", 0o600).chmod("/b", 0o4755);
    let out = t.check();
    out.assert_code(1);
    assert_eq!(
        out.findings(),
        [
            found("modified", "/a", &["mode"]),
            found("modified", "/b", &["mode"]),
        ],
        "{out}"
    );
    let report = out.json();
    let a = finding_at(&report, "/a");
    assert_eq!(a["severity"], "medium", "{a:#}");
    assert_eq!(
        (&a["baseline"]["mode"], &a["observed"]["mode"]),
        (&json!("0644"), &json!("0600"))
    );
    let b = finding_at(&report, "/b");
    assert_eq!(
        b["severity"], "critical",
        "setuid gained must be critical: {b:#}"
    );
    assert_eq!(b["observed"]["mode"], "4755");
    assert_eq!(report["summary"]["critical"], 1);
    assert_eq!(report["summary"]["medium"], 1);
}

// 3 ------------------------------------------------------------------------------------

#[test]
fn owner_change_is_found() {
    if !root_or_skip() {
        return;
    }
    let t = Tree::new();
    t.file("/srv/data", b"data");
    t.create();
    t.assert_clean();

    std::os::unix::fs::chown(t.path("/srv/data"), Some(1234), Some(1234)).unwrap();
    let out = t.check();
    out.assert_code(1);
    assert_eq!(
        out.findings(),
        [found("modified", "/srv/data", &["uid", "gid"])],
        "{out}"
    );
    let report = out.json();
    let f = finding_at(&report, "/srv/data");
    assert_eq!(
        (&f["observed"]["uid"], &f["observed"]["gid"]),
        (&json!(1234), &json!(1234))
    );
}

// 4 ------------------------------------------------------------------------------------

#[test]
fn added_removed_retargeted_and_retyped_entries() {
    let t = Tree::new();
    t.file("/keep", b"keep")
        .file("/gone", b"gone")
        .file("/f", b"becomes a directory")
        .symlink("/link", "target-a")
        .symlink("/link2", "a");
    t.create();
    t.assert_clean();

    t.remove("/gone");
    t.file("/new", b"new");
    t.remove("/link").symlink("/link", "target-b"); // same length
    t.remove("/link2").symlink("/link2", "abc"); // longer: size changes too
    t.remove("/f").dir("/f");

    let out = t.check();
    out.assert_code(1);
    assert_eq!(
        out.findings(),
        [
            found("modified", "/f", &["type"]),
            found("removed", "/gone", &[]),
            found("modified", "/link", &["link_target"]),
            found("modified", "/link2", &["size", "link_target"]),
            found("added", "/new", &[]),
        ],
        "{out}"
    );
    let report = out.json();
    let link = finding_at(&report, "/link");
    assert_eq!(link["baseline"]["link_target"], "target-a");
    assert_eq!(link["observed"]["link_target"], "target-b");
    let f = finding_at(&report, "/f");
    assert_eq!(
        (&f["baseline"]["type"], &f["observed"]["type"]),
        (&json!("file"), &json!("dir"))
    );
    assert_eq!(finding_at(&report, "/gone")["observed"], Value::Null);
    assert_eq!(finding_at(&report, "/new")["baseline"], Value::Null);
}

// 5 ------------------------------------------------------------------------------------

#[test]
fn security_xattrs_and_capabilities_are_found_user_xattrs_ignored() {
    if !root_or_skip() || !have_tool("setcap") || !have_tool("setfattr") {
        return;
    }
    let t = Tree::new();
    t.file("/cap", b"\x7fELF")
        .file("/trusted", b"t")
        .file("/user", b"u");
    t.create();
    t.assert_clean();

    sh(
        "setcap",
        &[OsStr::new("cap_net_raw+ep"), os(&t.path("/cap"))],
    );
    sh(
        "setfattr",
        &[
            OsStr::new("-n"),
            OsStr::new("trusted.x"),
            OsStr::new("-v"),
            OsStr::new("1"),
            os(&t.path("/trusted")),
        ],
    );
    sh(
        "setfattr",
        &[
            OsStr::new("-n"),
            OsStr::new("user.note"),
            OsStr::new("-v"),
            OsStr::new("hello"),
            os(&t.path("/user")),
        ],
    );

    let out = t.check();
    out.assert_code(1);
    assert_eq!(
        out.findings(),
        [
            found("modified", "/cap", &["xattrs"]),
            found("modified", "/trusted", &["xattrs"]),
        ],
        "{out}"
    );
    let report = out.json();
    let cap = finding_at(&report, "/cap");
    assert_eq!(
        cap["severity"], "critical",
        "a new capability is critical: {cap:#}"
    );
    assert_eq!(
        cap["observed"]["xattrs"]["security.capability"],
        "cap_net_raw+ep"
    );
    assert_eq!(cap["baseline"]["xattrs"], json!({}));
    let trusted = finding_at(&report, "/trusted");
    assert_eq!(trusted["severity"], "medium");
    assert_eq!(
        trusted["observed"]["xattrs"],
        json!({"trusted.x": "base64:MQ=="})
    );
}

// 6 ------------------------------------------------------------------------------------

#[test]
fn fifo_is_recorded_without_blocking_and_retype_is_found() {
    let t = Tree::new();
    t.file("/before", b"x").file("/zafter", b"y");
    let fifo = CString::new(t.path("/fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) },
        0,
        "mkfifo failed"
    );

    let out = t
        .create_cmd(&t.baseline())
        .timeout(Duration::from_secs(20))
        .run();
    out.assert_code(0);
    let entries = shown_entries(&t.baseline());
    assert_eq!(shown_paths(&entries), ["/", "/before", "/fifo", "/zafter"]);
    let entry = shown_entry(&entries, "/fifo");
    assert_eq!(entry["type"], "fifo", "{entry:#}");
    assert_eq!(entry["blake3"], Value::Null);
    // check walks the FIFO too, and must not block on it either.
    let out = t.check_cmd().timeout(Duration::from_secs(20)).run();
    out.assert_code(0);
    assert_eq!(out.findings(), Vec::<Found>::new());

    t.remove("/fifo").file("/fifo", b"now a file");
    let out = t.check_cmd().timeout(Duration::from_secs(20)).run();
    out.assert_code(1);
    assert_eq!(
        out.findings(),
        [found("modified", "/fifo", &["type"])],
        "{out}"
    );
    let report = out.json();
    let f = finding_at(&report, "/fifo");
    assert_eq!(
        (&f["baseline"]["type"], &f["observed"]["type"]),
        (&json!("fifo"), &json!("file"))
    );
}

#[test]
fn device_node_number_change_is_found() {
    if !root_or_skip() || !have_tool("mknod") {
        return;
    }
    let t = Tree::new();
    let node = t.path("/null");
    sh(
        "mknod",
        &[os(&node), OsStr::new("c"), OsStr::new("1"), OsStr::new("3")],
    );
    t.create();
    let entries = shown_entries(&t.baseline());
    let entry = shown_entry(&entries, "/null");
    assert_eq!(entry["type"], "char_device", "{entry:#}");
    assert_eq!(entry["rdev"], "1:3", "{entry:#}");
    t.assert_clean();

    let mode = fs::symlink_metadata(&node).unwrap().permissions().mode();
    t.remove("/null");
    sh(
        "mknod",
        &[os(&node), OsStr::new("c"), OsStr::new("1"), OsStr::new("5")],
    );
    fs::set_permissions(&node, fs::Permissions::from_mode(mode & 0o7777)).unwrap();
    let out = t.check();
    out.assert_code(1);
    assert_eq!(
        out.findings(),
        [found("modified", "/null", &["rdev"])],
        "{out}"
    );
    let report = out.json();
    let f = finding_at(&report, "/null");
    assert_eq!(
        (&f["baseline"]["rdev"], &f["observed"]["rdev"]),
        (&json!("1:3"), &json!("1:5"))
    );
}

// 7 ------------------------------------------------------------------------------------

/// Appends to `/big` (16 MiB to start with, 16 KiB a millisecond) while `baseline
/// create` runs; `/big2` is a hard link to it when `hard_link`. The create must finish
/// within 60 s with exit 0 or 2; with 2, the errors name the growing file and say it
/// changed while being read; whatever is recorded of it must be self-consistent.
fn create_while_a_file_grows(hard_link: bool) {
    const START: usize = 16 << 20;
    const CAP: u64 = 1 << 30; // never fill the disk, whatever happens
    let t = Tree::new();
    t.file("/a-small", b"small").file("/z-small", b"small");
    let big = t.path("/big");
    let mut file = fs::File::create(&big).unwrap();
    let chunk: Vec<u8> = (0..=255u8).cycle().take(16 * 1024).collect();
    for _ in 0..START / chunk.len() {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
    let growing: &[&str] = if hard_link {
        fs::hard_link(&big, t.path("/big2")).unwrap();
        &["/big", "/big2"]
    } else {
        &["/big"]
    };

    // Stops the writer even if the test fails before it gets to say so.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop_guard = StopOnDrop(Arc::clone(&stop));
    let writer = {
        let stop = Arc::clone(&stop);
        let chunk = chunk.clone();
        std::thread::spawn(move || {
            let mut written = START as u64;
            while !stop.load(Ordering::Relaxed) && written < CAP {
                file.write_all(&chunk).unwrap();
                written += chunk.len() as u64;
                // Rate limit (~16 MB/s), not synchronisation.
                std::thread::sleep(Duration::from_millis(1));
            }
            written
        })
    };
    let out = t
        .create_cmd(&t.baseline())
        .timeout(Duration::from_secs(60))
        .run();
    drop(stop_guard);
    let written = writer.join().expect("writer thread");
    eprintln!(
        "appended up to {written} bytes; create exited {:?}",
        out.code
    );

    let summary = out.json();
    let entries = shown_entries(&t.baseline());
    // The rest of the tree is recorded either way.
    shown_entry(&entries, "/a-small");
    shown_entry(&entries, "/z-small");
    let content = fs::read(&big).unwrap();
    match out.code {
        Some(2) => {
            let errors = errors_of(&summary);
            let named: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
            assert!(!named.is_empty(), "{out}");
            for (path, error) in &errors {
                assert!(
                    growing.contains(&path.as_str()),
                    "unexpected error for {path}{out}"
                );
                assert!(
                    error.contains("changed while being read"),
                    "{path}: {error}{out}"
                );
            }
        }
        Some(0) => assert_eq!(summary["errors"], json!([]), "{out}"),
        _ => panic!("baseline create must exit 0 or 2{out}"),
    }
    // Whatever was recorded of the growing file must be usable: hashed, and the hash
    // must be that of the recorded size (the file only grows, so its first `size` bytes
    // never changed). An entry without its hash would hide every later content change.
    for path in growing {
        let Some(entry) = entries.iter().find(|e| e["path"] == *path) else {
            assert_eq!(
                out.code,
                Some(2),
                "{path} missing from a clean baseline{out}"
            );
            continue;
        };
        let size = entry["size"].as_u64().expect("size") as usize;
        assert!(size >= START && size <= content.len(), "{entry:#}");
        assert_eq!(
            entry["blake3"].as_str(),
            Some(blake3::hash(&content[..size]).to_hex().as_str()),
            "{path} recorded without a matching hash: {entry:#}{out}"
        );
    }
}

#[test]
fn file_growing_during_the_scan_is_handled() {
    create_while_a_file_grows(false);
}

#[test]
fn hard_linked_file_growing_during_the_scan_is_handled_the_same_way() {
    create_while_a_file_grows(true);
}

// 8 ------------------------------------------------------------------------------------

/// A tree readable by 65534 except `/secret` (0600 root) and `/private` (0700 root, with
/// children), and a world-writable `out/` for baselines.
fn unreadable_tree() -> Tree {
    let t = Tree::new();
    fs::set_permissions(t.base(), fs::Permissions::from_mode(0o755)).unwrap();
    t.file("/public", b"public")
        .file("/secret", b"root only")
        .chmod("/secret", 0o600)
        .file("/private/a", b"a")
        .file("/private/sub/b", b"b")
        .chmod("/private", 0o700)
        .file("/zz-last", b"after the private directory");
    let out_dir = t.outside("out");
    fs::create_dir(&out_dir).unwrap();
    fs::set_permissions(&out_dir, fs::Permissions::from_mode(0o777)).unwrap();
    t
}

fn assert_unreadable_errors(report: &Value, context: &util::Output) {
    let errors = errors_of(report);
    let mut paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        ["/private", "/secret"],
        "errors must name both unreadable paths, each once{context}"
    );
    for (path, error) in &errors {
        assert!(
            error.contains("permission denied"),
            "{path}: {error}{context}"
        );
    }
}

#[test]
fn unreadable_entries_as_unprivileged_user_are_errors_not_drift() {
    if !root_or_skip() || !have_tool("setpriv") {
        return;
    }
    let t = unreadable_tree();
    let baseline = t.outside("out/baseline");
    let out = t.create_cmd(&baseline).via(AS_NOBODY).run();
    out.assert_code(2);
    assert_unreadable_errors(&out.json(), &out);
    assert!(
        baseline.exists(),
        "the baseline is written despite the errors{out}"
    );

    let out = Cmd::new(["check", "--format", "json", "--root"])
        .arg(t.root())
        .arg("--baseline")
        .arg(&baseline)
        .via(AS_NOBODY)
        .run();
    out.assert_code(2);
    let report = out.json();
    assert_eq!(out.findings(), Vec::<Found>::new(), "{out}");
    assert_unreadable_errors(&report, &out);
}

#[test]
fn children_of_an_unreadable_directory_are_not_reported_removed() {
    if !root_or_skip() || !have_tool("setpriv") {
        return;
    }
    let t = unreadable_tree();
    // Baked by root: the baseline knows what is inside /private.
    let baseline = t.outside("out/baseline");
    t.create_to(&baseline);
    let paths = shown_paths(&shown_entries(&baseline));
    assert!(paths.contains(&"/private/sub/b".to_string()), "{paths:?}");

    let out = Cmd::new(["check", "--format", "json", "--root"])
        .arg(t.root())
        .arg("--baseline")
        .arg(&baseline)
        .via(AS_NOBODY)
        .run();
    out.assert_code(2);
    assert_eq!(
        out.findings(),
        Vec::<Found>::new(),
        "nothing below an unreadable directory is removed{out}"
    );
    assert_unreadable_errors(&out.json(), &out);
}

// 9 ------------------------------------------------------------------------------------

#[test]
fn non_utf8_names_round_trip_and_are_reported_exactly() {
    let t = Tree::new();
    t.file(b"/dir\xfe/inner\xff", b"in a non-UTF-8 directory")
        .file("/plain", b"plain")
        .file(b"/\xc3\xa9t\xc3\xa9", b"valid UTF-8");
    t.create();
    // Unchanged non-UTF-8 entries in the baseline: no finding.
    t.assert_clean();

    t.file(b"/caf\xff", b"new");
    let out = t.check();
    out.assert_code(1);
    assert_eq!(out.findings(), [found("added", "/caf\\xff", &[])], "{out}");
    let report = out.json();
    let f = finding_at(&report, "/caf\\xff");
    let exact = base64::engine::general_purpose::STANDARD
        .decode(f["path_bytes_b64"].as_str().expect("path_bytes_b64"))
        .unwrap();
    assert_eq!(exact, b"/caf\xff");
    // UTF-8 paths carry no path_bytes_b64.
    let entries = shown_entries(&t.baseline());
    assert!(shown_entry(&entries, "/\u{e9}t\u{e9}")
        .get("path_bytes_b64")
        .is_none());
    let inner = shown_entry(&entries, "/dir\\xfe/inner\\xff");
    let exact = base64::engine::general_purpose::STANDARD
        .decode(inner["path_bytes_b64"].as_str().expect("path_bytes_b64"))
        .unwrap();
    assert_eq!(exact, b"/dir\xfe/inner\xff");
}

// 10 -----------------------------------------------------------------------------------

#[test]
fn excluded_paths_are_ignored_but_includes_inside_them_are_checked() {
    let t = Tree::new();
    t.write_policy(&format!(
        "exclude = [\"/var/log\"]\ninclude = [\"/var/log/keep\"]\n{TEST_POLICY}"
    ));
    t.file("/etc/conf", b"conf")
        .file("/var/log/syslog", b"line 1\n")
        .file("/var/log/keep/audit", b"audit 1\n");
    t.create();
    let entries = shown_entries(&t.baseline());
    assert_eq!(
        shown_paths(&entries),
        [
            "/",
            "/etc",
            "/etc/conf",
            "/var",
            "/var/log/keep",
            "/var/log/keep/audit"
        ],
        "excluded paths are not recorded; the included one is"
    );
    t.assert_clean();

    // Everything under /var/log (outside /var/log/keep) may change freely.
    t.file("/var/log/syslog", b"line 1\nline 2\n")
        .file("/var/log/new", b"new log")
        .file("/var/log/rotated/syslog.1", b"old")
        .chmod("/var/log", 0o700);
    t.assert_clean();

    t.file("/var/log/keep/audit", b"audit 2\n")
        .file("/var/log/keep/new", b"x");
    let out = t.check();
    out.assert_code(1);
    assert_eq!(
        out.findings(),
        [
            found("modified", "/var/log/keep/audit", &["content"]),
            found("added", "/var/log/keep/new", &[]),
        ],
        "{out}"
    );
}

// 11 -----------------------------------------------------------------------------------

/// Runs `check` and `baseline verify` on `baseline` (with `pubkey` when given) and
/// asserts both exit with `code`, a one-line error containing every `needles`, and no
/// report on stdout.
fn assert_rejected(t: &Tree, baseline: &Path, pubkey: Option<&Path>, code: i32, needles: &[&str]) {
    let mut check = Cmd::new(["check", "--format", "json", "--root"])
        .arg(t.root())
        .arg("--baseline")
        .arg(baseline);
    let mut verify = Cmd::new(["baseline", "verify"]).arg(baseline);
    if let Some(key) = pubkey {
        check = check.arg("--pubkey").arg(key);
        verify = verify.arg("--pubkey").arg(key);
    }
    for cmd in [check, verify] {
        let out = cmd.run();
        out.assert_code(code).assert_one_line_error();
        assert_eq!(out.stdout, "", "a rejected baseline is never used{out}");
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "stderr must mention {needle:?}{out}"
            );
        }
    }
}

#[test]
fn baseline_integrity_failures() {
    let t = Tree::new();
    for i in 0..100 {
        t.file(format!("/data/file{i:03}"), format!("content {i}"));
    }
    let (key, pubkey) = generate_key(t.base(), "pipeline");
    let (other_key, _) = generate_key(t.base(), "other");
    let good = t.baseline();
    t.create_cmd(&good)
        .arg("--sign-key")
        .arg(&key)
        .run()
        .assert_code(0);
    // Controls: the intact baseline is accepted, with and without the trusted key.
    t.assert_clean();
    t.check_cmd()
        .arg("--pubkey")
        .arg(&pubkey)
        .run()
        .assert_code(0);
    Cmd::new(["baseline", "verify"])
        .arg(&good)
        .arg("--pubkey")
        .arg(&pubkey)
        .run()
        .assert_code(0);
    let bytes = fs::read(&good).unwrap();
    let good_name = good.display().to_string();

    // (a) one flipped byte in the middle.
    let flipped = t.outside("flipped");
    let mut bad = bytes.clone();
    bad[bytes.len() / 2] ^= 0x01;
    fs::write(&flipped, &bad).unwrap();
    let flipped_name = flipped.display().to_string();
    assert_rejected(
        &t,
        &flipped,
        None,
        3,
        &[&flipped_name, "digest does not match"],
    );
    assert_rejected(
        &t,
        &flipped,
        Some(&pubkey),
        3,
        &[&flipped_name, "digest does not match"],
    );

    // (b) truncated to half.
    let truncated = t.outside("truncated");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let truncated_name = truncated.display().to_string();
    assert_rejected(&t, &truncated, None, 3, &[&truncated_name, "truncated"]);
    let empty = t.outside("empty");
    fs::write(&empty, b"").unwrap();
    assert_rejected(&t, &empty, None, 3, &[&empty.display().to_string()]);

    // (c) the same tree signed with another key, checked against the trusted key.
    let resigned = t.outside("resigned");
    t.create_cmd(&resigned)
        .arg("--sign-key")
        .arg(&other_key)
        .run()
        .assert_code(0);
    Cmd::new(["baseline", "verify"])
        .arg(&resigned)
        .run()
        .assert_code(0);
    assert_rejected(
        &t,
        &resigned,
        Some(&pubkey),
        3,
        &[&resigned.display().to_string(), "signed by"],
    );

    // (d) unsigned, checked with a trusted key.
    let unsigned = t.outside("unsigned");
    t.create_to(&unsigned);
    assert_rejected(
        &t,
        &unsigned,
        Some(&pubkey),
        3,
        &[&unsigned.display().to_string(), "not signed"],
    );

    // (e) missing: an operational error, not an integrity failure.
    let missing = t.outside("missing");
    assert_rejected(&t, &missing, None, 2, &[&missing.display().to_string()]);
    assert_rejected(
        &t,
        &missing,
        Some(&pubkey),
        2,
        &[&missing.display().to_string()],
    );

    // (f) content changed and the digest recomputed, without the key: the old
    // signature no longer verifies.
    let resealed = t.outside("resealed");
    let signed_seal = 32 + 1 + 32 + 64;
    let content_len = bytes.len() - 12 - signed_seal;
    let mut bad = bytes.clone();
    bad[content_len / 2] ^= 0x01;
    let digest = *blake3::hash(&bad[..content_len]).as_bytes();
    bad[content_len..content_len + 32].copy_from_slice(&digest);
    fs::write(&resealed, &bad).unwrap();
    let resealed_name = resealed.display().to_string();
    assert_rejected(&t, &resealed, None, 3, &[&resealed_name, "signature"]);
    assert_rejected(
        &t,
        &resealed,
        Some(&pubkey),
        3,
        &[&resealed_name, "signature"],
    );

    // (g) a flipped bit anywhere (header, entries, index, footer, seal, trailer).
    let anywhere = t.outside("anywhere");
    for at in (0..bytes.len())
        .step_by(bytes.len() / 40)
        .chain([bytes.len() - 1])
    {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        fs::write(&anywhere, &bad).unwrap();
        let out = Cmd::new(["baseline", "verify"]).arg(&anywhere).run();
        assert_eq!(
            out.code,
            Some(3),
            "flip at byte {at} of {}{out}",
            bytes.len()
        );
        out.assert_one_line_error();
    }

    // The original is untouched by all this.
    assert_eq!(fs::read(&good).unwrap(), bytes, "{good_name}");
}

// 12 -----------------------------------------------------------------------------------

#[test]
fn baselines_are_deterministic_with_source_date_epoch() {
    let t = Tree::new();
    for i in 0..150 {
        t.file(format!("/d{}/f{i:03}", i % 5), format!("{i}").repeat(i));
    }
    t.symlink("/d0/link", "../d1/f001")
        .dir("/empty")
        .chmod("/d2/f002", 0o4755);
    let (key, _) = generate_key(t.base(), "k");
    let first = t.outside("first");
    let second = t.outside("second");
    for (out, threads) in [(&first, "1"), (&second, "2")] {
        let result = t
            .create_cmd(out)
            .arg("--sign-key")
            .arg(&key)
            .arg("--image-id")
            .arg("img-1")
            .arg("--threads")
            .arg(threads)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .run();
        result.assert_code(0);
    }
    let (a, b) = (fs::read(&first).unwrap(), fs::read(&second).unwrap());
    assert!(
        a == b,
        "two baselines of the same tree differ ({} vs {} bytes)",
        a.len(),
        b.len()
    );

    let out = Cmd::new(["baseline", "show", "--format", "json"])
        .arg(&first)
        .run();
    out.assert_code(0);
    let shown = out.json();
    assert_eq!(shown["created_at"], "2023-11-14T22:13:20Z", "{out}");
    assert_eq!(shown["image_id"], "img-1");
}

// 13 -----------------------------------------------------------------------------------

#[test]
fn baseline_diff_reports_changes_between_baselines() {
    let t = Tree::new();
    t.file("/same", b"same")
        .file("/changed", b"aaaa")
        .file("/gone", b"gone")
        .file("/mode", b"mode");
    let old = t.outside("old");
    t.create_to(&old);
    t.file("/changed", b"bbbb")
        .remove("/gone")
        .file("/new", b"new")
        .chmod("/mode", 0o600);
    let new = t.outside("new");
    t.create_to(&new);

    let diff = |a: &Path, b: &Path| {
        Cmd::new(["baseline", "diff", "--format", "json"])
            .arg(a)
            .arg(b)
            .run()
    };
    let out = diff(&old, &new);
    out.assert_code(1);
    assert_eq!(
        out.findings(),
        [
            found("modified", "/changed", &["content"]),
            found("removed", "/gone", &[]),
            found("modified", "/mode", &["mode"]),
            found("added", "/new", &[]),
        ],
        "{out}"
    );
    assert_eq!(out.json()["summary"]["findings"], 4);

    let out = diff(&new, &old);
    out.assert_code(1);
    assert_eq!(
        out.findings(),
        [
            found("modified", "/changed", &["content"]),
            found("added", "/gone", &[]),
            found("modified", "/mode", &["mode"]),
            found("removed", "/new", &[]),
        ],
        "{out}"
    );

    let out = diff(&old, &old);
    out.assert_code(0);
    assert_eq!(out.findings(), Vec::<Found>::new(), "{out}");
    // Two baselines of the same state (different files) are identical too.
    let again = t.outside("again");
    t.create_to(&again);
    diff(&new, &again).assert_code(0);
    // Text form: same exit statuses.
    Cmd::new(["baseline", "diff"])
        .arg(&old)
        .arg(&new)
        .run()
        .assert_code(1);
    Cmd::new(["baseline", "diff"])
        .arg(&new)
        .arg(&again)
        .run()
        .assert_code(0);
}

// 14 -----------------------------------------------------------------------------------

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn key_set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn is_rfc3339_utc_seconds(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn json_report_contract_and_text_output() {
    let t = Tree::new();
    t.write_policy(&format!(
        "{TEST_POLICY}\n[[rule]]\nname = \"docs\"\npaths = [\"/doc\"]\nseverity = \"low\"\n\n\
         [[rule]]\nname = \"config\"\npaths = [\"/etc\"]\nseverity = \"high\"\n"
    ));
    let machine_id = "0123456789abcdef0123456789abcdef";
    t.file("/doc/readme", b"read me")
        .file("/etc/conf", b"key = 1")
        .file("/etc/machine-id", format!("{machine_id}\n"))
        .file("/bin/tool", b"tool")
        .chmod("/bin/tool", 0o755)
        .file("/other", b"other");
    let (key, pubkey) = generate_key(t.base(), "k");
    let created = t
        .create_cmd(&t.baseline())
        .arg("--sign-key")
        .arg(&key)
        .arg("--image-id")
        .arg("img-42")
        .run();
    created.assert_code(0);
    let digest = created.json()["digest"]
        .as_str()
        .expect("digest")
        .to_string();

    // A clean text report ends with the summary line.
    let out = Cmd::new(["check", "--root"])
        .arg(t.root())
        .arg("--baseline")
        .arg(t.baseline())
        .run();
    out.assert_code(0);
    assert!(
        !out.stdout.contains("\x1b["),
        "no colour when not on a terminal{out}"
    );
    assert!(out.stdout.ends_with('\n'), "{out}");
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("No drift."), "last line: {last:?}{out}");

    t.file("/doc/readme", b"READ ME") // low
        .file("/etc/conf", b"key = 2") // high
        .chmod("/bin/tool", 0o4755) // critical (setuid)
        .remove("/other") // medium
        .file("/added", b"added"); // medium

    let out = t.check_cmd().arg("--pubkey").arg(&pubkey).run();
    out.assert_code(1);
    assert!(out.stderr.is_empty(), "{out}");
    let report = out.json();
    assert_eq!(
        keys(&report),
        key_set(&["schema", "host", "baseline", "scan", "summary", "findings", "errors"]),
        "{out}"
    );
    assert_eq!(report["schema"], "driftwatch.report/v1");
    assert_eq!(keys(&report["host"]), key_set(&["hostname", "machine_id"]));
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(report["host"]["hostname"], hostname.trim());
    assert_eq!(report["host"]["machine_id"], machine_id);
    assert_eq!(
        keys(&report["baseline"]),
        key_set(&["digest", "image_id", "signed"])
    );
    assert!(report["baseline"]["digest"]
        .as_str()
        .expect("digest")
        .starts_with("blake3:"));
    assert_eq!(report["baseline"]["digest"], digest.as_str());
    assert_eq!(report["baseline"]["image_id"], "img-42");
    assert_eq!(report["baseline"]["signed"], true);
    let scan = &report["scan"];
    assert_eq!(
        keys(scan),
        key_set(&[
            "root",
            "started_at",
            "duration_ms",
            "entries",
            "bytes_hashed"
        ])
    );
    let root = fs::canonicalize(t.root()).unwrap();
    assert_eq!(scan["root"], root.display().to_string());
    let started = scan["started_at"].as_str().expect("started_at");
    assert!(is_rfc3339_utc_seconds(started), "started_at {started:?}");
    assert!(scan["duration_ms"].is_u64());
    // "/", /added, /bin, /bin/tool, /doc, /doc/readme, /etc, /etc/conf, /etc/machine-id
    assert_eq!(scan["entries"], 9, "{scan:#}");
    let hashed: usize = [
        "/added",
        "/bin/tool",
        "/doc/readme",
        "/etc/conf",
        "/etc/machine-id",
    ]
    .iter()
    .map(|p| fs::metadata(t.path(p)).unwrap().len() as usize)
    .sum();
    assert_eq!(scan["bytes_hashed"], hashed, "{scan:#}");

    assert_eq!(
        out.findings(),
        [
            found("added", "/added", &[]),
            found("modified", "/bin/tool", &["mode"]),
            found("modified", "/doc/readme", &["content"]),
            found("modified", "/etc/conf", &["content"]),
            found("removed", "/other", &[]),
        ],
        "{out}"
    );
    let findings = report["findings"].as_array().expect("findings");
    let mut counted =
        json!({"findings": findings.len(), "critical": 0, "high": 0, "medium": 0, "low": 0});
    for f in findings {
        assert_eq!(
            keys(f),
            key_set(&[
                "kind",
                "change",
                "path",
                "attributes",
                "severity",
                "rule",
                "baseline",
                "observed"
            ]),
            "{f:#}"
        );
        let severity = f["severity"].as_str().expect("severity");
        counted[severity] = json!(counted[severity].as_u64().expect("known severity") + 1);
    }
    assert_eq!(
        report["summary"], counted,
        "summary must count the findings"
    );
    assert_eq!(
        report["summary"],
        json!({"findings": 5, "critical": 1, "high": 1, "medium": 2, "low": 1})
    );
    let graded: Vec<(&str, &str, &str)> = findings
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or_default(),
                f["severity"].as_str().unwrap_or_default(),
                f["rule"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        graded,
        [
            ("/added", "medium", "default"),
            ("/bin/tool", "critical", "default"),
            ("/doc/readme", "low", "docs"),
            ("/etc/conf", "high", "config"),
            ("/other", "medium", "default"),
        ]
    );
    let entry_keys = key_set(&[
        "type",
        "mode",
        "uid",
        "gid",
        "size",
        "mtime",
        "rdev",
        "blake3",
        "sha256",
        "link_target",
        "xattrs",
    ]);
    assert_eq!(
        keys(&finding_at(&report, "/etc/conf")["observed"]),
        entry_keys
    );
    assert_eq!(
        keys(&finding_at(&report, "/etc/conf")["baseline"]),
        entry_keys
    );
    assert_eq!(report["errors"], json!([]));

    // The same check as text.
    let out = Cmd::new(["check", "--root"])
        .arg(t.root())
        .arg("--baseline")
        .arg(t.baseline())
        .run();
    out.assert_code(1);
    assert!(
        !out.stdout.contains("\x1b["),
        "no colour when not on a terminal{out}"
    );
    let last = out.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("5 findings: 1 critical, 1 high, 2 medium, 1 low"),
        "last line: {last:?}{out}"
    );
    for path in ["/added", "/bin/tool", "/doc/readme", "/etc/conf", "/other"] {
        assert!(out.stdout.contains(path), "text report lacks {path}{out}");
    }
}

// Beyond the list: further behaviour the documentation promises ---------------------

/// "Whatever the rule says, gaining a setuid/setgid bit or a file capability is
/// critical" (policy/default.toml): also when the rule does not compare mode or xattrs.
#[test]
fn privilege_gain_is_reported_even_where_the_rule_compares_only_content() {
    let t = Tree::new();
    t.write_policy("[default]\nattributes = [\"content\"]\nseverity = \"low\"\n");
    t.file("/f", b"#!/bin/sh\n")
        .chmod("/f", 0o755)
        .file("/g", b"\x7fELF");
    t.create();
    t.assert_clean();

    t.chmod("/f", 0o4755);
    let mut expected = vec![found("modified", "/f", &["mode"])];
    if !util::is_root() {
        eprintln!("capability part skipped: needs root");
    } else if have_tool("setcap") {
        sh("setcap", &[OsStr::new("cap_net_raw+ep"), os(&t.path("/g"))]);
        expected.push(found("modified", "/g", &["xattrs"]));
    }
    let out = t.check();
    assert_eq!(
        out.findings(),
        expected,
        "privilege gained must be reported{out}"
    );
    out.assert_code(1);
    let report = out.json();
    for f in report["findings"].as_array().expect("findings") {
        assert_eq!(f["severity"], "critical", "{f:#}");
    }
}

/// A directory that can be listed but not searched: every entry that could not be
/// examined is listed once.
#[test]
fn each_unexamined_path_is_listed_once() {
    if !root_or_skip() || !have_tool("setpriv") {
        return;
    }
    let t = Tree::new();
    fs::set_permissions(t.base(), fs::Permissions::from_mode(0o755)).unwrap();
    t.file("/semi/f", b"f")
        .file("/semi/sub/x", b"x")
        .chmod("/semi", 0o744);
    let out_dir = t.outside("out");
    fs::create_dir(&out_dir).unwrap();
    fs::set_permissions(&out_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let by_root = t.outside("out/root");
    t.create_to(&by_root);

    let by_nobody = t.outside("out/nobody");
    let created = t.create_cmd(&by_nobody).via(AS_NOBODY).run();
    let checked = Cmd::new(["check", "--format", "json", "--root"])
        .arg(t.root())
        .arg("--baseline")
        .arg(&by_root)
        .via(AS_NOBODY)
        .run();
    for out in [&created, &checked] {
        out.assert_code(2);
        let report = out.json();
        let errors = errors_of(&report);
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/semi/f", "/semi/sub"], "each path once{out}");
        assert!(
            errors.iter().all(|(_, e)| e.contains("permission denied")),
            "{out}"
        );
    }
    assert_eq!(checked.findings(), Vec::<Found>::new(), "{checked}");
}

/// Colour only on a terminal, and never with NO_COLOR.
#[test]
fn colour_on_a_terminal_unless_no_color() {
    if !have_tool("script") {
        return;
    }
    let t = Tree::new();
    t.file("/a", b"a");
    t.create();
    t.chmod("/a", 0o600);
    let line = format!(
        "{} check --root {} --baseline {} 2>/dev/null",
        util::BIN,
        t.root().display(),
        t.baseline().display()
    );
    let on_terminal = || Cmd::exec("script", ["-qec", line.as_str(), "/dev/null"]);
    let coloured = on_terminal().run();
    coloured.assert_code(1);
    assert!(
        coloured.stdout.contains("\x1b["),
        "colour on a terminal{coloured}"
    );
    let plain = on_terminal().env("NO_COLOR", "1").run();
    plain.assert_code(1);
    assert!(
        !plain.stdout.contains("\x1b["),
        "NO_COLOR must disable colour{plain}"
    );
    assert!(
        plain
            .stdout
            .contains("1 finding: 0 critical, 0 high, 1 medium, 0 low"),
        "{plain}"
    );
}

// 15 -----------------------------------------------------------------------------------

#[test]
fn real_usr_and_etc_have_no_drift_with_the_default_policy() {
    // Only root can read all of /etc (shadow, sudoers, private keys).
    if !root_or_skip() {
        return;
    }
    let default_policy = include_str!("../policy/default.toml");
    let scan_line = "paths = [\"/\"]";
    assert_eq!(
        default_policy.matches(scan_line).count(),
        1,
        "the default policy changed"
    );
    let policy = default_policy.replace(scan_line, "paths = [\"/usr\", \"/etc\"]");
    // Containers running on this machine are judged against their own images (see
    // tests/containers.rs), not against this host's /usr and /etc.
    let policy = format!("{policy}\n[containers]\nenabled = false\n");
    let t = Tree::new();
    t.write_policy(&policy);
    let baseline = t.baseline();
    let timeout = Duration::from_secs(30 * 60);
    // A running machine, not an image: accept the runtime state it has now (this
    // machine's own infrastructure runs from memory and listens unowned).
    let created = Cmd::new([
        "baseline",
        "create",
        "--capture-runtime",
        "--format",
        "json",
        "--root",
        "/",
        "--policy",
    ])
    .arg(t.policy())
    .arg("--out")
    .arg(&baseline)
    .timeout(timeout)
    .run();
    assert!(
        created.code == Some(0),
        "create must succeed as root on /usr and /etc{created}"
    );
    let out = Cmd::new(["check", "--format", "json", "--root", "/", "--baseline"])
        .arg(&baseline)
        .timeout(timeout)
        .run();
    let report = out.json();
    let findings = report["findings"].as_array().expect("findings");
    for f in findings {
        eprintln!("finding: {f}");
    }
    for e in report["errors"].as_array().expect("errors") {
        eprintln!("error: {} {}", e["path"], e["error"]);
    }
    eprintln!(
        "scanned {} entries, {} bytes hashed, create {:?}, check {:?}",
        report["scan"]["entries"], report["scan"]["bytes_hashed"], created.elapsed, out.elapsed
    );
    assert_eq!(
        findings.len(),
        0,
        "expected no drift on this machine's /usr and /etc"
    );
    out.assert_code(0);
    assert!(report["scan"]["entries"].as_u64().expect("entries") > 1000);
}

// 16 -----------------------------------------------------------------------------------

mod property {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// A small random tree. Names are 1–3 bytes from an alphabet chosen to stress walk
    /// order (`-`, `.`, space and `0` sort before `/`'s neighbours; 0xff is not UTF-8).
    /// Directories go inside an earlier directory or the root; files and symlinks inside
    /// any directory.
    #[derive(Clone, Debug)]
    struct Spec {
        dirs: Vec<(Index, Vec<u8>)>,
        files: Vec<(Index, Vec<u8>, Vec<u8>)>,
        links: Vec<(Index, Vec<u8>, String)>,
    }

    #[derive(Clone, Debug)]
    enum Mutation {
        Content(Index),
        Chmod(Index),
        AddFile(Index, Vec<u8>),
        RemoveLeaf(Index),
        Retarget(Index),
        FileToDir(Index),
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            proptest::sample::select(vec![b'a', b'b', b'-', b'.', b' ', b'0', 0xff]),
            1..4,
        )
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            proptest::collection::vec((any::<Index>(), name()), 0..5),
            proptest::collection::vec(
                (
                    any::<Index>(),
                    name(),
                    proptest::collection::vec(any::<u8>(), 1..300),
                ),
                1..8,
            ),
            proptest::collection::vec((any::<Index>(), name(), "[a-z./]{1,12}"), 1..4),
        )
            .prop_map(|(dirs, files, links)| Spec { dirs, files, links })
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            any::<Index>().prop_map(Mutation::Content),
            any::<Index>().prop_map(Mutation::Chmod),
            (
                any::<Index>(),
                proptest::collection::vec(any::<u8>(), 0..100)
            )
                .prop_map(|(i, c)| Mutation::AddFile(i, c)),
            any::<Index>().prop_map(Mutation::RemoveLeaf),
            any::<Index>().prop_map(Mutation::Retarget),
            any::<Index>().prop_map(Mutation::FileToDir),
        ]
    }

    /// Paths as driftwatch reports them: UTF-8 runs as they are, other bytes as `\xNN`.
    fn display(path: &[u8]) -> String {
        let mut out = String::new();
        for chunk in path.utf8_chunks() {
            out.push_str(chunk.valid());
            for byte in chunk.invalid() {
                out.push_str(&format!("\\x{byte:02x}"));
            }
        }
        out
    }

    /// Tree paths built so far, to keep names unique.
    struct Namer(BTreeSet<Vec<u8>>);

    impl Namer {
        fn child(&mut self, parent: &[u8], name: &[u8]) -> Vec<u8> {
            let mut path = parent.to_vec();
            path.push(b'/');
            path.extend_from_slice(name);
            let base = path.clone();
            let mut n = 0;
            while self.0.contains(&path) {
                n += 1;
                path = base.clone();
                path.extend_from_slice(format!("_{n}").as_bytes());
            }
            self.0.insert(path.clone());
            path
        }
    }

    type Paths = Vec<Vec<u8>>;

    /// Materialises the spec; returns the directories, files and links created.
    fn build(t: &Tree, spec: &Spec, namer: &mut Namer) -> (Paths, Paths, Paths) {
        let parent = |dirs: &Paths, i: &Index| -> Vec<u8> {
            match i.index(dirs.len() + 1) {
                0 => Vec::new(),
                k => dirs[k - 1].clone(),
            }
        };
        let mut dirs = Vec::new();
        for (i, name) in &spec.dirs {
            let path = namer.child(&parent(&dirs, i), name);
            t.dir(&path);
            dirs.push(path);
        }
        let mut files = Vec::new();
        for (i, name, content) in &spec.files {
            let path = namer.child(&parent(&dirs, i), name);
            t.file(&path, content);
            files.push(path);
        }
        let mut links = Vec::new();
        for (i, name, target) in &spec.links {
            let path = namer.child(&parent(&dirs, i), name);
            t.symlink(&path, target);
            links.push(path);
        }
        (dirs, files, links)
    }

    fn pick<'a>(items: &'a [Vec<u8>], i: &Index) -> &'a [u8] {
        &items[i.index(items.len())]
    }

    /// Applies the mutation; returns the one finding it must cause.
    fn mutate(
        t: &Tree,
        namer: &mut Namer,
        (dirs, files, links): &(Paths, Paths, Paths),
        m: &Mutation,
    ) -> Found {
        match m {
            Mutation::Content(i) => {
                let path = pick(files, i);
                let mut content = fs::read(t.path(path)).unwrap();
                content[0] ^= 0xff;
                fs::write(t.path(path), &content).unwrap();
                found("modified", &display(path), &["content"])
            }
            Mutation::Chmod(i) => {
                let all: Paths = files.iter().chain(dirs).cloned().collect();
                let path = pick(&all, i);
                let is_dir = dirs.iter().any(|d| d == path);
                t.chmod(path, if is_dir { 0o700 } else { 0o600 });
                found("modified", &display(path), &["mode"])
            }
            Mutation::AddFile(i, content) => {
                let parent = match i.index(dirs.len() + 1) {
                    0 => &[][..],
                    k => dirs[k - 1].as_slice(),
                };
                let path = namer.child(parent, b"new");
                t.file(&path, content);
                found("added", &display(&path), &[])
            }
            Mutation::RemoveLeaf(i) => {
                let all: Paths = files.iter().chain(links).cloned().collect();
                let path = pick(&all, i);
                t.remove(path);
                found("removed", &display(path), &[])
            }
            Mutation::Retarget(i) => {
                let path = pick(links, i);
                let old = fs::read_link(t.path(path)).unwrap();
                let mut target = old.as_os_str().as_bytes().to_vec();
                target[0] = if target[0] == b'X' { b'Y' } else { b'X' };
                t.remove(path).symlink(path, &target);
                found("modified", &display(path), &["link_target"])
            }
            Mutation::FileToDir(i) => {
                let path = pick(files, i);
                t.remove(path).dir(path);
                found("modified", &display(path), &["type"])
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            // PROPTEST_CASES=500 for a longer hunt; 24 keeps the suite fast.
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(24),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn one_mutation_gives_exactly_one_finding(spec in spec(), m in mutation()) {
            let t = Tree::new();
            let mut namer = Namer(BTreeSet::new());
            let built = build(&t, &spec, &mut namer);
            t.create();
            let out = t.check();
            prop_assert_eq!(out.code, Some(0), "{}", out);
            prop_assert_eq!(out.findings(), Vec::<Found>::new(), "{}", out);

            let expected = mutate(&t, &mut namer, &built, &m);
            let out = t.check();
            prop_assert_eq!(out.code, Some(1), "{}", out);
            prop_assert_eq!(out.findings(), vec![expected], "{}", out);
        }
    }
}
