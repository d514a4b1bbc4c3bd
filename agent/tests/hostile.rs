//! A host whose root is hostile: each trick must end in a finding or a reported error
//! within seconds, never a hang, an endless read, a followed link or a silent pass.
//! Every test drives the real `driftwatch` binary on a scratch tree (see `util`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use serde_json::Value;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use util::{errors_of, finding_at, Tree};

/// Stops a background loop even when the test fails first.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn attributes(finding: &Value) -> Vec<&str> {
    finding["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// Sizes a file to `size` bytes without writing them (a hole), falling back to the
/// largest size the filesystem allows.
fn grow_sparse(path: &std::path::Path, sizes: &[u64]) -> u64 {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open");
    for &size in sizes {
        if file.set_len(size).is_ok() {
            return size;
        }
    }
    panic!(
        "no sparse size in {sizes:?} accepted for {}",
        path.display()
    );
}

#[test]
fn huge_sparse_files_are_findings_without_being_read() {
    let t = Tree::new();
    t.file("/usr/bin/tool", b"#!/bin/sh\necho tool\n")
        .dir("/usr/local/bin");
    t.create();
    // A baselined binary grown to 100 GiB, and a new petabyte file (ext4 stops at
    // 16 TiB; the point is "far beyond any limit").
    grow_sparse(&t.path("/usr/bin/tool"), &[100 << 30]);
    let planted = grow_sparse(
        &t.path("/usr/local/bin/x"),
        &[1 << 50, 16 << 40, (16 << 40) - 4096],
    );
    let out = t.check_cmd().timeout(Duration::from_secs(30)).run();
    out.assert_code(1);
    assert!(
        out.elapsed < Duration::from_secs(20),
        "took {:?}{out}",
        out.elapsed
    );
    let report = out.json();
    let grown = finding_at(&report, "/usr/bin/tool");
    assert_eq!(grown["change"], "modified", "{out}");
    assert_eq!(attributes(grown), ["size", "content"], "{out}");
    assert_eq!(grown["observed"]["size"], 100u64 << 30, "{out}");
    let added = finding_at(&report, "/usr/local/bin/x");
    assert_eq!(added["change"], "added", "{out}");
    assert_eq!(added["observed"]["size"], planted, "{out}");
    let errors = errors_of(&report);
    for path in ["/usr/bin/tool", "/usr/local/bin/x"] {
        assert!(
            errors
                .iter()
                .any(|(p, e)| p == path && e.contains("above the size limit")),
            "{path} not named as too large to hash{out}"
        );
    }
}

#[test]
fn sparse_files_within_the_limit_hash_as_their_zeros() {
    let t = Tree::new();
    let size = 64u64 << 20;
    let path = t.path("/var/sparse.img");
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut file = fs::File::create(&path).expect("create");
    file.write_all(b"head").expect("write");
    file.set_len(size).expect("set_len");
    drop(file);
    t.create();
    let entries = util::shown_entries(&t.baseline());
    let entry = entries
        .iter()
        .find(|e| e["path"] == "/var/sparse.img")
        .expect("recorded");
    let mut content = vec![0u8; size as usize];
    content[..4].copy_from_slice(b"head");
    assert_eq!(
        entry["blake3"].as_str(),
        Some(blake3::hash(&content).to_hex().as_str()),
        "a sparse file's digest must be that of its full logical content"
    );
    t.assert_clean();
}

#[test]
fn a_lower_size_limit_in_the_policy_is_honoured() {
    let t = Tree::new();
    t.write_policy(&format!(
        "{}\n[scan]\nmax_file_bytes = 1000\n",
        util::TEST_POLICY
    ));
    t.file("/small", [1u8; 1000]).file("/large", [2u8; 1001]);
    let out = t.create_cmd(&t.baseline()).run();
    out.assert_code(2);
    let errors = errors_of(&out.json());
    assert_eq!(errors.len(), 1, "{out}");
    assert_eq!(errors[0].0, "/large", "{out}");
    assert!(
        errors[0].1.contains("above the size limit of 1000 bytes"),
        "{out}"
    );
}

/// Swaps `/usr/lib` between the real directory and a link to a directory outside the
/// tree, as fast as it can, while scans run: no scan may ever see what is behind the
/// link.
#[test]
fn a_directory_swapped_for_a_symlink_mid_walk_is_never_followed() {
    let t = Tree::new();
    for i in 0..200 {
        t.file(format!("/usr/lib/mod{i:03}"), format!("module {i}"));
    }
    t.create();
    let evil = t.outside("evil");
    fs::create_dir(&evil).expect("mkdir evil");
    for i in 0..200 {
        fs::write(evil.join(format!("planted{i:03}")), b"outside the root").expect("plant");
    }
    let (lib, parked) = (t.path("/usr/lib"), t.path("/usr/lib.real"));
    let stop = Arc::new(AtomicBool::new(false));
    let guard = StopOnDrop(Arc::clone(&stop));
    let swapper = {
        let stop = Arc::clone(&stop);
        let evil = evil.clone();
        let (lib, parked) = (lib.clone(), parked.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if fs::rename(&lib, &parked).is_ok() {
                    let _ = symlink(&evil, &lib);
                    std::thread::yield_now();
                    let _ = fs::remove_file(&lib);
                    let _ = fs::rename(&parked, &lib);
                    swaps += 1;
                }
            }
            swaps
        })
    };
    for _ in 0..15 {
        let out = t.check_cmd().timeout(Duration::from_secs(30)).run();
        assert!(
            !out.stdout.contains("planted"),
            "a scan followed the swapped-in link{out}"
        );
        assert!(matches!(out.code, Some(0..=2)), "{out}");
    }
    drop(guard);
    let swaps = swapper.join().expect("swapper");
    assert!(swaps > 10, "only {swaps} swaps: the race was not exercised");
}

/// A file whose ctime a loop keeps moving can never be hashed consistently: its other
/// attributes are still compared, and it is a finding, not only an error.
#[test]
fn a_file_that_never_settles_is_a_finding_of_its_severity() {
    let t = Tree::new();
    let data = vec![0x5a; 32 << 20];
    t.file("/etc/restless", &data).file("/etc/calm", b"calm");
    t.create();
    let path = t.path("/etc/restless");
    let mtime = fs::metadata(&path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let stop = Arc::new(AtomicBool::new(false));
    let guard = StopOnDrop(Arc::clone(&stop));
    let toucher = {
        let stop = Arc::clone(&stop);
        let path = path.clone();
        std::thread::spawn(move || {
            let file = fs::File::options().write(true).open(&path).expect("open");
            while !stop.load(Ordering::Relaxed) {
                // Same mtime every time: only the ctime moves.
                let _ = file.set_modified(mtime);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let out = t.check_cmd().timeout(Duration::from_secs(60)).run();
    drop(guard);
    toucher.join().expect("toucher");
    out.assert_code(1);
    let report = out.json();
    let finding = finding_at(&report, "/etc/restless");
    assert_eq!(finding["change"], "modified", "{out}");
    assert_eq!(attributes(finding), ["content"], "{out}");
    assert_eq!(finding["severity"], "medium", "{out}");
    assert!(
        errors_of(&report)
            .iter()
            .any(|(p, e)| p == "/etc/restless" && e.starts_with("could not be hashed: changing")),
        "{out}"
    );
    assert_eq!(
        report["findings"].as_array().map(Vec::len),
        Some(1),
        "{out}"
    );
}

fn mkfifo(path: &std::path::Path) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    util::sh("mkfifo", &[path.as_os_str()]);
}

/// `etc/machine-id` as a link to `/dev/zero` or as a FIFO, a FIFO as the dpkg status
/// file: each is an error naming the path (or ignored), never a hang or an endless read.
#[test]
fn hostile_root_images_do_not_hang_the_check() {
    for variant in ["zero", "fifo"] {
        let t = Tree::new();
        t.file("/bin/sh", b"shell").file(
            "/var/lib/dpkg/status",
            "Package: dw\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n\n",
        );
        t.create();
        fs::remove_file(t.path("/var/lib/dpkg/status")).expect("rm status");
        match variant {
            "zero" => {
                t.dir("/etc");
                t.symlink("/etc/machine-id", "/dev/zero");
            }
            _ => mkfifo(&t.path("/etc/machine-id")),
        }
        mkfifo(&t.path("/var/lib/dpkg/status"));
        let out = t
            .check_cmd()
            .arg("--no-runtime")
            .timeout(Duration::from_secs(30))
            .run();
        assert!(out.elapsed < Duration::from_secs(20), "{variant}: {out}");
        assert!(matches!(out.code, Some(1 | 2)), "{variant}: {out}");
        let report = out.json();
        assert!(
            errors_of(&report)
                .iter()
                .any(|(_, e)| e.contains("var/lib/dpkg/status") && e.contains("not a regular file"))
                || out.stderr.contains("var/lib/dpkg/status"),
            "{variant}: the FIFO database is not named{out}"
        );
        assert!(report["host"]["machine_id"].is_null(), "{variant}: {out}");
    }
}

/// The default baseline path inside a root that is an absolute link (to a real
/// baseline on this host, even): refused, not followed, with the path named.
#[test]
fn an_absolute_link_at_the_default_baseline_path_is_refused() {
    let t = Tree::new();
    let inside = driftwatch_agent::config::DEFAULT_BASELINE_PATH;
    let parent = std::path::Path::new(inside).parent().expect("parent");
    t.file("/bin/sh", b"shell")
        .dir(parent.to_str().expect("utf-8"));
    t.create();
    t.symlink(inside, t.baseline().to_str().expect("utf-8"));
    let out = util::Cmd::new(["check", "--format", "json", "--root"])
        .arg(t.root())
        .timeout(Duration::from_secs(30))
        .run();
    out.assert_code(2);
    out.assert_one_line_error();
    assert!(out.stderr.contains("symbolic link; not followed"), "{out}");
    assert!(out.stderr.contains(inside.trim_start_matches('/')), "{out}");
    // The same file, really inside the root, is used.
    fs::remove_file(t.path(inside)).expect("rm link");
    fs::copy(t.baseline(), t.path(inside)).expect("copy");
    let out = util::Cmd::new(["check", "--format", "json", "--root"])
        .arg(t.root())
        .run();
    out.assert_code(0);
}
