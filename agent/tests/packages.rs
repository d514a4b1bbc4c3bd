//! Package drift through the real binary: a baseline records the package set of the
//! root's own database (dpkg status, rpm sqlite), and `check` reports packages
//! installed, removed and upgraded since — and a broken database as an error, not a
//! crash. Fixtures are real databases: a copy of a Debian host's dpkg status, and rpm
//! databases built with rpm itself (`fixtures/rpm/make-fixtures.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use serde_json::Value;
use std::fs;
use std::path::Path;
use util::{Tree, TEST_POLICY};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The test policy, with the databases themselves excluded so that only package
/// findings appear (a changed status file would otherwise be a file finding too).
fn policy() -> String {
    format!("exclude = [\"/var/lib/dpkg\", \"/var/lib/rpm\"]\n{TEST_POLICY}")
}

/// `(change, name, baseline_version, observed_version)` of each package finding.
fn package_findings(report: &Value) -> Vec<(String, String, Option<String>, Option<String>)> {
    let text = |v: &Value| v.as_str().map(str::to_string);
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            assert_eq!(f["kind"], "package", "unexpected finding: {f:#}");
            assert_eq!(f["severity"], "high", "{f:#}");
            (
                text(&f["change"]).expect("change"),
                text(&f["name"]).expect("name"),
                text(&f["baseline_version"]),
                text(&f["observed_version"]),
            )
        })
        .collect()
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn install_file(tree: &Tree, rel: &str, from: &Path) {
    let to = tree.path(rel);
    fs::create_dir_all(to.parent().expect("parent")).unwrap();
    fs::copy(from, &to).unwrap();
}

/// The stanza of one package in a dpkg status file.
fn stanza<'a>(status: &'a str, package: &str) -> &'a str {
    let start = status
        .find(&format!("Package: {package}\n"))
        .unwrap_or_else(|| panic!("{package} not in the fixture"));
    let end = status[start..]
        .find("\n\n")
        .map_or(status.len(), |e| start + e + 2);
    &status[start..end]
}

#[test]
fn dpkg_install_remove_and_upgrade_are_reported() {
    let t = Tree::new();
    t.write_policy(&policy());
    let status = fs::read_to_string(Path::new(FIXTURES).join("dpkg/status")).unwrap();
    t.file("/var/lib/dpkg/status", &status);
    let created = t.create();
    let recorded = created.json()["packages"].as_u64().expect("package count");
    assert!(recorded > 100, "{created}");
    t.assert_clean();

    // Remove one package, upgrade another, install a third.
    let removed = stanza(&status, "bash");
    let upgraded = stanza(&status, "coreutils");
    let old_version = upgraded
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .expect("version");
    let new_stanza = upgraded.replace(&format!("Version: {old_version}\n"), "Version: 99.0-1\n");
    let installed = "Package: dw-extra\nStatus: install ok installed\nArchitecture: amd64\n\
                     Version: 1.0-1\nDescription: test\n\n";
    let changed = status.replace(removed, "").replace(upgraded, &new_stanza) + installed;
    t.file("/var/lib/dpkg/status", &changed);

    let out = t.check();
    out.assert_code(1);
    let mut findings = package_findings(&out.json());
    findings.sort();
    assert_eq!(
        findings,
        [
            ("installed".into(), "dw-extra".into(), None, some("1.0-1")),
            ("removed".into(), "bash".into(), findings[1].2.clone(), None),
            (
                "version_changed".into(),
                "coreutils".into(),
                some(old_version),
                some("99.0-1")
            ),
        ],
        "{out}"
    );
    assert!(findings[1].2.is_some(), "{out}");

    // A package that is only configured-but-removed does not count as installed.
    let half_removed = changed.replace(
        "Package: dw-extra\nStatus: install ok installed",
        "Package: dw-extra\nStatus: deinstall ok config-files",
    );
    t.file("/var/lib/dpkg/status", &half_removed);
    let names: Vec<String> = package_findings(&t.check().json())
        .into_iter()
        .map(|f| f.1)
        .collect();
    assert!(!names.contains(&"dw-extra".to_string()), "{names:?}");
}

#[test]
fn rpm_install_and_remove_are_reported() {
    let t = Tree::new();
    t.write_policy(&policy());
    let full = Path::new(FIXTURES).join("rpm/rpmdb.sqlite");
    let removed = Path::new(FIXTURES).join("rpm/rpmdb-removed.sqlite");
    install_file(&t, "/var/lib/rpm/rpmdb.sqlite", &full);
    t.create();
    t.assert_clean();

    install_file(&t, "/var/lib/rpm/rpmdb.sqlite", &removed);
    let out = t.check();
    out.assert_code(1);
    let findings = package_findings(&out.json());
    assert_eq!(findings.len(), 1, "{out}");
    assert_eq!(
        (findings[0].0.as_str(), findings[0].1.as_str()),
        ("removed", "dw-extra")
    );
    assert_eq!(out.json()["findings"][0]["db"], "rpm");

    // The other way round: baked without it, installed later.
    let t = Tree::new();
    t.write_policy(&policy());
    install_file(&t, "/var/lib/rpm/rpmdb.sqlite", &removed);
    t.create();
    install_file(&t, "/var/lib/rpm/rpmdb.sqlite", &full);
    let out = t.check();
    out.assert_code(1);
    let findings = package_findings(&out.json());
    assert_eq!(findings.len(), 1, "{out}");
    assert_eq!(
        (findings[0].0.as_str(), findings[0].1.as_str()),
        ("installed", "dw-extra")
    );
}

#[test]
fn a_broken_database_is_an_error_not_a_crash() {
    let t = Tree::new();
    t.write_policy(&policy());
    install_file(
        &t,
        "/var/lib/rpm/rpmdb.sqlite",
        &Path::new(FIXTURES).join("rpm/rpmdb.sqlite"),
    );
    t.create();

    // Garbage where the database was: the check completes, names the database, exit 2.
    t.file(
        "/var/lib/rpm/rpmdb.sqlite",
        b"SQLite format 3\0 but not really".repeat(50),
    );
    let out = t.check();
    out.assert_code(2);
    let report = out.json();
    assert_eq!(report["findings"], serde_json::json!([]), "{out}");
    let errors = report["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("rpmdb.sqlite"),
        "{out}"
    );
    assert!(!out.stderr.contains("panicked"), "{out}");

    // At bake time a broken database fails the bake, naming it.
    let broken = t.create_cmd(&t.outside("other-baseline")).run();
    broken.assert_code(2);
    assert!(broken.stderr.contains("rpmdb.sqlite"), "{broken}");
}

#[test]
fn a_root_without_a_database_records_no_packages() {
    let t = Tree::new();
    t.write_policy(TEST_POLICY);
    t.file("/etc/hostname", b"x\n");
    let created = t.create();
    assert_eq!(created.json()["packages"], Value::Null, "{created}");
    // A database appearing later is not package drift (there is nothing to compare it
    // with) — only the new files are.
    t.file(
        "/var/lib/dpkg/status",
        b"Package: a\nStatus: install ok installed\nVersion: 1\n\n",
    );
    let out = t.check();
    assert!(
        out.json()["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["kind"] == "file"),
        "{out}"
    );
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn package_verification_covers_excluded_paths_and_accepts_the_images_own_edits() {
    let t = Tree::new();
    // /opt/dw is excluded from the file scan: only the package manager's record sees it.
    t.write_policy(&format!(
        "exclude = [\"/var/lib/dpkg\", \"/opt/dw\"]\n{TEST_POLICY}"
    ));
    t.file(
        "/var/lib/dpkg/status",
        "Package: dw-tool\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n\n",
    );
    t.file(
        "/var/lib/dpkg/info/dw-tool.md5sums",
        format!(
            "{}  opt/dw/tool\n{}  opt/dw/edited\n",
            md5_hex(b"tool v1\n"),
            md5_hex(b"as packaged\n")
        ),
    );
    t.file("/opt/dw/tool", b"tool v1\n");
    // The image itself edited this one before baking: that is not drift.
    t.file("/opt/dw/edited", b"as the image wants it\n");
    t.create();
    t.assert_clean();

    t.file("/opt/dw/tool", b"tool v2\n");
    let out = t.check();
    out.assert_code(1);
    let report = out.json();
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{out}");
    let f = &findings[0];
    assert_eq!(f["kind"], "package_file", "{f:#}");
    assert_eq!(f["path"], "/opt/dw/tool");
    assert_eq!(f["package"], "dw-tool");
    assert_eq!(f["expected"], format!("md5:{}", md5_hex(b"tool v1\n")));
    assert_eq!(f["observed"], format!("md5:{}", md5_hex(b"tool v2\n")));
    assert_eq!(f["severity"], "high");

    // The accepted edit changing again is drift again.
    t.file("/opt/dw/edited", b"edited on the host\n");
    t.remove("/opt/dw/tool");
    let out = t.check();
    let report = out.json();
    let mut seen: Vec<(String, Value)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["observed"].clone(),
            )
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen.len(), 2, "{out}");
    assert_eq!(seen[0].0, "/opt/dw/edited");
    assert_eq!(seen[1], ("/opt/dw/tool".to_string(), Value::Null), "{out}");
}

/// Prints why the test cannot run; with `CI=true` that is a failure.
fn skip(why: &str) {
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true, but {why}"
    );
    eprintln!("skipping: {why}");
}

/// Builds `name_version.deb` with `dpkg-deb --build` from `files` (path, content).
fn build_deb(dir: &Path, name: &str, version: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let tree = dir.join(format!("{name}-{version}"));
    fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\n\
             Maintainer: driftwatch tests <tests@example.org>\nDescription: test package\n"
        ),
    )
    .unwrap();
    for (path, content) in files {
        let at = tree.join(path.trim_start_matches('/'));
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::write(at, content).unwrap();
    }
    let deb = dir.join(format!("{name}_{version}_all.deb"));
    let built = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    deb
}

/// `dpkg --root TREE -i DEB`: the real package manager, writing the tree's database.
fn dpkg_install(t: &Tree, deb: &Path) {
    let installed = std::process::Command::new("dpkg")
        .arg(format!("--root={}", t.root().display()))
        .args(["--force-not-root", "--log=/dev/null", "-i"])
        .arg(deb)
        .output()
        .unwrap();
    assert!(installed.status.success(), "{installed:?}");
}

/// Issue 10 §6: the files of a package installed or upgraded since the bake carry that
/// package; what no package explains stands apart, in JSON and in text.
#[test]
fn r10_file_findings_carry_the_package_that_changed_them() {
    if !util::have_tool("dpkg") || !util::have_tool("dpkg-deb") {
        return skip("dpkg and dpkg-deb are not installed");
    }
    let t = Tree::new();
    t.write_policy(&policy());
    for dir in ["/var/lib/dpkg/info", "/var/lib/dpkg/updates"] {
        t.dir(dir);
    }
    t.file("/var/lib/dpkg/status", b"")
        .file("/var/lib/dpkg/available", b"");
    let debs = t.outside("debs");
    let base_v1 = build_deb(
        &debs,
        "dw-base",
        "1.0",
        &[("/usr/bin/dw-tool", "tool v1\n")],
    );
    dpkg_install(&t, &base_v1);
    t.file("/usr/bin/ls", b"the image's own ls\n");
    t.create();
    t.assert_clean();

    // Since the bake: one package upgraded, one installed, and a file no package ships.
    let base_v2 = build_deb(
        &debs,
        "dw-base",
        "2.0",
        &[
            ("/usr/bin/dw-tool", "tool v2\n"),
            ("/usr/lib/dw-base/plugin", "plugin\n"),
        ],
    );
    let extra = build_deb(
        &debs,
        "dw-extra",
        "3.1",
        &[
            ("/usr/bin/dw-extra", "extra\n"),
            ("/usr/share/doc/dw-extra/README", "read me\n"),
        ],
    );
    dpkg_install(&t, &base_v2);
    dpkg_install(&t, &extra);
    t.file("/usr/bin/ls", b"a trojaned ls\n");

    let out = t.check();
    out.assert_code(1);
    let report = out.json();
    let attribution: std::collections::BTreeMap<String, Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "file")
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["package"].clone(),
            )
        })
        .collect();
    let package = |name: &str, change: &str, from: Value, to: &str| {
        serde_json::json!({
            "name": name, "arch": "all", "change": change,
            "baseline_version": from, "observed_version": to,
        })
    };
    let upgraded = package("dw-base", "version_changed", "1.0".into(), "2.0");
    let installed = package("dw-extra", "installed", Value::Null, "3.1");
    for (path, expected) in [
        ("/usr/bin/dw-tool", &upgraded),
        ("/usr/lib/dw-base", &upgraded),
        ("/usr/lib/dw-base/plugin", &upgraded),
        ("/usr/bin/dw-extra", &installed),
        ("/usr/share/doc/dw-extra", &installed),
        ("/usr/share/doc/dw-extra/README", &installed),
    ] {
        assert_eq!(attribution.get(path), Some(expected), "{path}: {out}");
    }
    assert_eq!(attribution.get("/usr/bin/ls"), Some(&Value::Null), "{out}");

    // Text: each package change with its files, then what no package explains.
    let text = util::Cmd::new(["check", "--format", "text", "--root"])
        .arg(t.root())
        .arg("--baseline")
        .arg(t.baseline())
        .run();
    let stdout = &text.stdout;
    let at = |needle: &str| {
        stdout
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing:\n{stdout}"))
    };
    let packages = at("PACKAGE CHANGES (2)");
    // /usr/lib and /usr/share came with them: the packages created those too.
    let base = at("upgraded dw-base 1.0 → 2.0: 4 files");
    let extra = at("installed dw-extra 3.1: 5 files");
    let apart = at("NOT EXPLAINED BY A PACKAGE");
    let ls = at("/usr/bin/ls");
    assert!(
        packages < base && base < apart && extra < apart && apart < ls,
        "{stdout}"
    );
}

/// Issue 10 §6 on the other package databases: a package installed since the bake
/// (recorded by rpm itself in `fixtures/rpm`, by apk on Alpine in `fixtures/apk`)
/// explains the files it brought; a file it does not own stands apart.
#[test]
fn r10_rpm_and_apk_file_findings_carry_the_package_installed_since_the_bake() {
    let apk_db = fs::read_to_string(Path::new(FIXTURES).join("apk/installed")).unwrap();
    let apk_without = apk_db
        .split("\n\n")
        .filter(|stanza| !stanza.contains("\nP:alpine-release\n"))
        .collect::<Vec<_>>()
        .join("\n\n");
    assert_ne!(
        apk_without, apk_db,
        "alpine-release is not in the apk fixture"
    );
    let rpm_dir = Path::new(FIXTURES).join("rpm");
    type Install<'a> = &'a dyn Fn(&Tree, bool);
    let rpm: Install = &|t, installed| {
        let db = if installed {
            "rpmdb.sqlite"
        } else {
            "rpmdb-removed.sqlite"
        };
        install_file(t, "/var/lib/rpm/rpmdb.sqlite", &rpm_dir.join(db));
    };
    let apk: Install = &|t, installed| {
        let db = if installed { &apk_db } else { &apk_without };
        t.file("/lib/apk/db/installed", db.as_bytes());
    };
    for (db, install, package, arch, files) in [
        (
            "rpm",
            rpm,
            "dw-extra",
            "noarch",
            &["/usr/share/dw-extra/readme"][..],
        ),
        (
            "apk",
            apk,
            "alpine-release",
            "x86_64",
            &["/etc/alpine-release", "/etc/issue", "/usr/lib/os-release"][..],
        ),
    ] {
        let t = Tree::new();
        t.write_policy(&format!(
            "exclude = [\"/var/lib/rpm\", \"/lib/apk\"]\n{TEST_POLICY}"
        ));
        install(&t, false);
        t.dir("/usr/share")
            .dir("/usr/lib")
            .file("/etc/motd", b"baked\n");
        t.create();
        t.assert_clean();

        install(&t, true);
        for file in files {
            t.file(file, b"from the package\n");
        }
        t.file("/usr/local-evil", b"no package\n");
        let out = t.check();
        out.assert_code(1);
        let report = out.json();
        let findings = report["findings"].as_array().unwrap();
        let changed = findings
            .iter()
            .find(|f| f["kind"] == "package")
            .unwrap_or_else(|| panic!("{db}: no package finding: {out}"));
        assert_eq!(
            (&changed["db"], &changed["name"], &changed["change"]),
            (
                &Value::from(db),
                &Value::from(package),
                &Value::from("installed")
            ),
            "{out}"
        );
        let package_of = |path: &str| {
            findings
                .iter()
                .find(|f| f["kind"] == "file" && f["path"] == path)
                .unwrap_or_else(|| panic!("{db}: no finding about {path}: {out}"))["package"]
                .clone()
        };
        for file in files {
            let attributed = package_of(file);
            assert_eq!(
                (
                    &attributed["name"],
                    &attributed["arch"],
                    &attributed["change"]
                ),
                (
                    &Value::from(package),
                    &Value::from(arch),
                    &Value::from("installed")
                ),
                "{db}: {file}: {out}"
            );
            assert_eq!(attributed["observed_version"], changed["observed_version"]);
        }
        assert_eq!(package_of("/usr/local-evil"), Value::Null, "{db}: {out}");
    }
}
