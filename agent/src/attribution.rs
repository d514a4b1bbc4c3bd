//! Package attribution: a file finding on a path that belongs to a package which was
//! itself installed or changed version carries that package ([`PackageRef`]), so that
//! one package change reads as one change — the text report groups such files under
//! their package, the collector groups its alerts by it — and what no package explains
//! stands apart.
//!
//! Pure: findings × who owns the changed packages' paths → the same findings,
//! attributed. Reading the owners from the package database is the package source's
//! job ([`crate::source::packages::owners`]). A removed package lists no files any
//! more, so the files it took along are not attributed.

use base64::Engine as _;
use driftwatch_protocol::report::{Finding, PackageChange, PackageRef};
use std::collections::HashMap;

/// The packages that were installed or changed version, in report order: the ones
/// whose files can be attributed.
pub fn changed_packages(findings: &[Finding]) -> Vec<PackageRef> {
    findings
        .iter()
        .filter_map(|finding| match finding {
            Finding::Package(p) if p.change != PackageChange::Removed => Some(PackageRef::from(p)),
            _ => None,
        })
        .collect()
}

/// Attaches to every file finding whose path `owners` maps (to an index into
/// `packages`) that package; returns how many were attributed.
pub fn attribute(
    findings: &mut [Finding],
    packages: &[PackageRef],
    owners: &HashMap<Vec<u8>, usize>,
) -> usize {
    let mut attributed = 0;
    for finding in findings {
        let Finding::File(file) = finding else {
            continue;
        };
        let path = match &file.path_bytes_b64 {
            Some(exact) => match base64::engine::general_purpose::STANDARD.decode(exact) {
                Ok(bytes) => bytes,
                Err(_) => continue,
            },
            None => file.path.as_bytes().to_vec(),
        };
        if let Some(package) = owners.get(&path).and_then(|&index| packages.get(index)) {
            file.package = Some(package.clone());
            attributed += 1;
        }
    }
    attributed
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_protocol::package::PackageDb;
    use driftwatch_protocol::report::{FileChange, FileFinding, PackageFinding, Severity};

    fn file(path: &str) -> Finding {
        Finding::File(Box::new(FileFinding {
            change: FileChange::Added,
            path: path.into(),
            path_bytes_b64: None,
            attributes: vec![],
            severity: Severity::Critical,
            rule: "r".into(),
            baseline: None,
            observed: None,
            package: None,
        }))
    }

    fn package(name: &str, change: PackageChange) -> Finding {
        Finding::Package(PackageFinding {
            change,
            name: name.into(),
            arch: "amd64".into(),
            db: PackageDb::Dpkg,
            baseline_version: (change != PackageChange::Installed).then(|| "1".into()),
            observed_version: (change != PackageChange::Removed).then(|| "2".into()),
            severity: Severity::High,
        })
    }

    fn attributed_to(finding: &Finding) -> Option<&str> {
        match finding {
            Finding::File(f) => f.package.as_ref().map(|p| p.name.as_str()),
            _ => None,
        }
    }

    #[test]
    fn files_of_changed_packages_carry_them_and_the_rest_does_not() {
        let mut findings = vec![
            package("podman", PackageChange::Installed),
            package("curl", PackageChange::VersionChanged),
            package("gone", PackageChange::Removed),
            file("/usr/bin/podman"),
            file("/usr/bin/curl"),
            file("/usr/bin/backdoor"),
            file("/usr/bin/gone"),
        ];
        let changed = changed_packages(&findings);
        let names: Vec<&str> = changed.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["podman", "curl"],
            "a removed package lists no files"
        );
        let owners: HashMap<Vec<u8>, usize> = [
            (b"/usr/bin/podman".to_vec(), 0),
            (b"/usr/bin/curl".to_vec(), 1),
            (b"/usr/bin/out-of-range".to_vec(), 7),
        ]
        .into_iter()
        .collect();
        assert_eq!(attribute(&mut findings, &changed, &owners), 2);
        let by: Vec<Option<&str>> = findings.iter().map(attributed_to).collect();
        assert_eq!(
            by,
            [None, None, None, Some("podman"), Some("curl"), None, None]
        );
        let Finding::File(curl) = &findings[4] else {
            unreachable!()
        };
        let curl = curl.package.as_ref().unwrap();
        assert_eq!(curl.describe(), "upgraded curl 1 → 2");
        assert_eq!(curl.arch, "amd64");
    }
}
