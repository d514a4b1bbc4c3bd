//! Reports: `driftwatch.report/v1` JSON for machines, and text for people — the files
//! of each installed or upgraded package under that package first, then what no
//! package explains grouped by severity, one line per finding (a container's findings
//! under a heading naming the container), a summary line last, colour only on a
//! terminal.

use driftwatch_protocol::report::{
    Attribute, ContainerRef, EntryState, FileChange, FileFinding, Finding, KernelModuleReason,
    PackageChange, PackageRef, ProcessReason, ScanError, Severity, Summary,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Write};

/// Whether to colour text written to stdout: only on a terminal, never with `NO_COLOR`.
pub fn colour_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// ANSI styling that disappears when colour is off.
#[derive(Clone, Copy)]
pub struct Paint(pub bool);

impl Paint {
    fn wrap(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Bold text.
    pub fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }

    /// Dimmed text.
    pub fn dim(self, text: &str) -> String {
        self.wrap("2", text)
    }

    /// Green text (all clear).
    pub fn good(self, text: &str) -> String {
        self.wrap("32", text)
    }

    /// Text coloured by severity.
    pub fn severity(self, severity: Severity, text: &str) -> String {
        let code = match severity {
            Severity::Critical => "1;31",
            Severity::High => "31",
            Severity::Medium => "33",
            Severity::Low => "36",
        };
        self.wrap(code, text)
    }
}

/// Writes a value as one pretty JSON document and a newline.
pub fn write_json(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::other)?;
    writeln!(out)
}

fn change_word(change: FileChange) -> &'static str {
    match change {
        FileChange::Added => "added",
        FileChange::Removed => "removed",
        FileChange::Modified => "modified",
    }
}

/// `0755 → 4755`-style detail for the attributes whose values are short.
fn detail(attribute: Attribute, before: &EntryState, after: &EntryState) -> Option<String> {
    let show = |a: &dyn std::fmt::Display, b: &dyn std::fmt::Display| Some(format!("{a} → {b}"));
    match attribute {
        Attribute::Type => show(&before.file_type, &after.file_type),
        Attribute::Mode => show(&before.mode, &after.mode),
        Attribute::Uid => show(&before.uid, &after.uid),
        Attribute::Gid => show(&before.gid, &after.gid),
        Attribute::Size => show(&before.size, &after.size),
        Attribute::LinkTarget => show(
            &before.link_target.as_deref().unwrap_or("?"),
            &after.link_target.as_deref().unwrap_or("?"),
        ),
        Attribute::Xattrs => {
            let changed: Vec<String> = before
                .xattrs
                .keys()
                .chain(after.xattrs.keys())
                .filter(|name| before.xattrs.get(*name) != after.xattrs.get(*name))
                .map(|name| match after.xattrs.get(name) {
                    Some(value) => format!("{name}={value}"),
                    None => format!("-{name}"),
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            Some(changed.join(" "))
        }
        Attribute::Content | Attribute::Rdev | Attribute::Mtime => None,
    }
}

fn file_line(paint: Paint, finding: &FileFinding) -> String {
    let mut line = format!(
        "  {:<8}  {}",
        change_word(finding.change),
        paint.bold(&finding.path)
    );
    if let (Some(before), Some(after)) = (&finding.baseline, &finding.observed) {
        let parts: Vec<String> = finding
            .attributes
            .iter()
            .map(|a| match detail(*a, before, after) {
                Some(d) if !d.is_empty() => format!("{} {d}", a.name()),
                _ => a.name().to_string(),
            })
            .collect();
        line.push_str(&format!("  {}", paint.dim(&parts.join(", "))));
    } else if let Some(state) = finding.observed.as_ref().or(finding.baseline.as_ref()) {
        let mut what = format!("{} {}", state.file_type, state.mode);
        if let Some(target) = &state.link_target {
            what.push_str(&format!(" → {target}"));
        }
        line.push_str(&format!("  {}", paint.dim(&what)));
    }
    line
}

/// One line for any finding: what changed, on what, and the detail that explains it.
fn finding_line(paint: Paint, finding: &Finding) -> String {
    let line = |what: &str, subject: &str, detail: String| {
        format!(
            "  {what:<8}  {}  {}",
            paint.bold(subject),
            paint.dim(&detail)
        )
    };
    match finding {
        Finding::File(file) => file_line(paint, file),
        Finding::Package(p) => {
            let versions = match p.change {
                PackageChange::Installed => p.observed_version.clone().unwrap_or_default(),
                PackageChange::Removed => p.baseline_version.clone().unwrap_or_default(),
                PackageChange::VersionChanged => format!(
                    "{} → {}",
                    p.baseline_version.as_deref().unwrap_or("?"),
                    p.observed_version.as_deref().unwrap_or("?")
                ),
            };
            let what = match p.change {
                PackageChange::Installed => "installed",
                PackageChange::Removed => "removed",
                PackageChange::VersionChanged => "upgraded",
            };
            line(
                what,
                &format!("package {}:{}", p.name, p.arch),
                format!("{versions} ({})", p.db.name()),
            )
        }
        Finding::PackageFile(f) => {
            let how = match &f.observed {
                Some(observed) => {
                    format!("{} records {}, file has {observed}", f.package, f.expected)
                }
                None => format!("{} ships it; it is missing", f.package),
            };
            line("packaged", &f.path, how)
        }
        Finding::Process(p) => {
            let why = match p.reason {
                ProcessReason::NotInBaseline => "executable not in the image",
                ProcessReason::DiffersFromBaseline => "executable differs from the image",
                ProcessReason::DeletedExecutable => "executable deleted",
                ProcessReason::MutablePath => "runs from a writable path",
                ProcessReason::NotInImage => "executable written into the container",
            };
            let user = p.user.clone().unwrap_or_else(|| p.uid.to_string());
            line(
                "process",
                &p.exe,
                format!("{why}; pid {} user {user}: {}", p.pid, p.cmdline),
            )
        }
        Finding::KernelModule(m) => {
            let why = match m.reason {
                KernelModuleReason::NotInImage => "not shipped in the image".to_string(),
                KernelModuleReason::Tainted => {
                    format!("taints the kernel ({})", m.taint.as_deref().unwrap_or("?"))
                }
            };
            line("module", &m.name, why)
        }
        Finding::Listener(l) => {
            let owner = match (&l.program, l.pid) {
                (Some(program), Some(pid)) => format!("{program} (pid {pid})"),
                (Some(program), None) => program.clone(),
                _ => "owner unknown".to_string(),
            };
            line(
                "listener",
                &format!("{} {}:{}", l.protocol, l.address, l.port),
                format!("{owner}; not allowed by the policy"),
            )
        }
        Finding::Mount(m) => line(
            "mount",
            &m.mountpoint,
            format!(
                "expected {}, mounted {}",
                m.expected.join(","),
                m.observed.join(",")
            ),
        ),
        Finding::Baseline(b) => line(
            "baseline",
            &b.path,
            format!("failed verification: {}", b.error),
        ),
    }
}

/// Files listed under their package in text; the JSON report lists them all.
const FILES_PER_PACKAGE: usize = 5;

/// The package a finding is attributed to, if it is a file finding that has one.
fn attributed(finding: &Finding) -> Option<&PackageRef> {
    match finding {
        Finding::File(file) => file.package.as_ref(),
        _ => None,
    }
}

/// Whether `finding` is the package finding of `package`.
fn is_package(finding: &Finding, package: &PackageRef) -> bool {
    matches!(finding, Finding::Package(p) if p.name == package.name && p.arch == package.arch)
}

/// The packages whose changes explain file findings, each with its files, in report
/// order: `installed podman 4.3.1: 212 files`, a few of them, the worst severity.
fn write_packages(out: &mut impl Write, paint: Paint, findings: &[&Finding]) -> io::Result<()> {
    let mut packages: Vec<&PackageRef> = Vec::new();
    for package in findings.iter().copied().filter_map(attributed) {
        if !packages
            .iter()
            .any(|p| p.name == package.name && p.arch == package.arch)
        {
            packages.push(package);
        }
    }
    writeln!(
        out,
        "{}",
        paint.bold(&format!("PACKAGE CHANGES ({})", packages.len()))
    )?;
    for package in packages {
        let files: Vec<&Finding> = findings
            .iter()
            .copied()
            .filter(|f| {
                attributed(f).is_some_and(|p| p.name == package.name && p.arch == package.arch)
            })
            .collect();
        let worst = findings
            .iter()
            .copied()
            .filter(|f| files.contains(f) || is_package(f, package))
            .map(Finding::severity)
            .max()
            .unwrap_or(Severity::Low);
        let noun = if files.len() == 1 { "file" } else { "files" };
        let title = format!("{}: {} {noun}", package.describe(), files.len());
        writeln!(
            out,
            "  {}  {}",
            paint.severity(worst, &title),
            paint.dim(&format!("({}; worst {})", package.arch, worst.name()))
        )?;
        for file in files.iter().take(FILES_PER_PACKAGE) {
            writeln!(out, "  {}", finding_line(paint, file))?;
        }
        if files.len() > FILES_PER_PACKAGE {
            let more = files.len() - FILES_PER_PACKAGE;
            writeln!(
                out,
                "    {}",
                paint.dim(&format!("… and {more} more (--format json lists them all)"))
            )?;
        }
    }
    writeln!(out)
}

/// One group of findings (the host's, or one container's): the package changes with
/// their files, then the findings no package explains grouped by severity.
fn write_by_severity(
    out: &mut impl Write,
    paint: Paint,
    findings: &[&Finding],
    indent: &str,
) -> io::Result<()> {
    let explained: Vec<&PackageRef> = findings.iter().copied().filter_map(attributed).collect();
    let unexplained: Vec<&Finding> = findings
        .iter()
        .copied()
        .filter(|f| attributed(f).is_none() && !explained.iter().any(|p| is_package(f, p)))
        .collect();
    if !explained.is_empty() {
        write_packages(out, paint, findings)?;
        if !unexplained.is_empty() {
            writeln!(out, "{}", paint.bold("NOT EXPLAINED BY A PACKAGE"))?;
        }
    }
    for severity in Severity::ALL_DESCENDING {
        let group: Vec<&Finding> = unexplained
            .iter()
            .copied()
            .filter(|f| f.severity() == severity)
            .collect();
        if group.is_empty() {
            continue;
        }
        let title = format!("{} ({})", severity.name().to_uppercase(), group.len());
        writeln!(out, "{indent}{}", paint.severity(severity, &title))?;
        for finding in group {
            writeln!(out, "{indent}{}", finding_line(paint, finding))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// `CONTAINER api (3f9a8c2d1e4b) podman, image shop/api:1.4, pod shop/api-7d9f`.
fn container_title(paint: Paint, container: &ContainerRef) -> String {
    let short: String = container.id.chars().take(12).collect();
    let mut title = match &container.name {
        Some(name) => format!("CONTAINER {name} ({short})"),
        None => format!("CONTAINER {short}"),
    };
    let mut about = vec![container.runtime.clone()];
    if let Some(image) = &container.image {
        about.push(format!("image {image}"));
    }
    if let Some(pod) = &container.pod {
        let namespace = container.namespace.as_deref().unwrap_or("?");
        about.push(format!("pod {namespace}/{pod}"));
    }
    title = paint.bold(&title);
    format!("{title}  {}", paint.dim(&about.join(", ")))
}

/// Writes findings grouped by severity — the host's first, then each container's under
/// a heading naming it — then errors. Nothing is written for empty groups.
pub fn write_findings(
    out: &mut impl Write,
    paint: Paint,
    findings: &[Finding],
    errors: &[ScanError],
) -> io::Result<()> {
    let host: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.container().is_none())
        .collect();
    write_by_severity(out, paint, &host, "")?;
    let mut containers: BTreeMap<&str, (&ContainerRef, Vec<&Finding>)> = BTreeMap::new();
    for finding in findings {
        if let Some(container) = finding.container() {
            containers
                .entry(container.id.as_str())
                .or_insert_with(|| (container, Vec::new()))
                .1
                .push(finding);
        }
    }
    for (container, group) in containers.values() {
        writeln!(out, "{}", container_title(paint, container))?;
        write_by_severity(out, paint, group, "  ")?;
    }
    if !errors.is_empty() {
        writeln!(
            out,
            "{}",
            paint.bold(&format!("NOT EXAMINED ({})", errors.len()))
        )?;
        for error in errors {
            writeln!(out, "  {}: {}", error.path, error.error)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// `3 findings: 1 critical, 1 high, 1 medium, 0 low`, or `no drift` in green.
pub fn summary_line(paint: Paint, summary: &Summary, none: &str) -> String {
    if summary.findings == 0 {
        return paint.good(none);
    }
    let noun = if summary.findings == 1 {
        "finding"
    } else {
        "findings"
    };
    format!(
        "{} {noun}: {} critical, {} high, {} medium, {} low",
        summary.findings, summary.critical, summary.high, summary.medium, summary.low
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_protocol::entry::{Entry, FileType};

    #[test]
    fn text_groups_by_severity_with_details() {
        let before = Entry {
            path: b"/usr/bin/ssh".to_vec(),
            file_type: FileType::File,
            mode: 0o755,
            ..Entry::default()
        };
        let mut after = before.clone();
        after.mode = 0o4755;
        let rule = crate::policy::Rule {
            name: "r".into(),
            attributes: crate::policy::AttributeSet::of(&Attribute::ALL),
            severity: Severity::Low,
        };
        let findings = vec![
            crate::diff::file_finding(FileChange::Added, None, Some(&after), vec![], &rule)
                .unwrap(),
            crate::diff::file_finding(
                FileChange::Modified,
                Some(&before),
                Some(&after),
                vec![Attribute::Mode],
                &rule,
            )
            .unwrap(),
        ];
        let mut out = Vec::new();
        write_findings(&mut out, Paint(false), &findings, &[]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "CRITICAL (2)\n  added     /usr/bin/ssh  file 4755\n  modified  /usr/bin/ssh  mode 0755 → 4755\n\n"
        );
        let summary = Summary::of(&findings);
        assert_eq!(
            summary_line(Paint(false), &summary, "ok"),
            "2 findings: 2 critical, 0 high, 0 medium, 0 low"
        );
    }

    /// The host's own findings first; each container's under a heading naming it (name,
    /// short id, runtime, image, pod), containers in id order.
    #[test]
    fn text_groups_container_findings_under_their_container() {
        let entry = |path: &[u8], mode| Entry {
            path: path.to_vec(),
            file_type: FileType::File,
            mode,
            ..Entry::default()
        };
        let rule = crate::policy::Rule {
            name: "r".into(),
            attributes: crate::policy::AttributeSet::of(&Attribute::ALL),
            severity: Severity::Medium,
        };
        let added = |path: &[u8], container: Option<ContainerRef>| {
            let mut finding = crate::diff::file_finding(
                FileChange::Added,
                None,
                Some(&entry(path, 0o644)),
                vec![],
                &rule,
            )
            .unwrap();
            if let Finding::File(file) = &mut finding {
                file.container = container;
            }
            finding
        };
        let api = ContainerRef {
            id: "3f9a8c2d1e4b5a6f".into(),
            name: Some("api".into()),
            runtime: "containerd".into(),
            image: Some("shop/api:1.4".into()),
            image_digest: Some("sha256:ab12".into()),
            pod: Some("api-7d9f".into()),
            namespace: Some("shop".into()),
        };
        let anonymous = ContainerRef {
            id: "0badc0de".into(),
            runtime: "unknown".into(),
            ..ContainerRef::default()
        };
        let findings = vec![
            added(b"/srv/x", Some(api.clone())),
            added(b"/etc/y", None),
            added(b"/data/z", Some(anonymous)),
            added(b"/srv/w", Some(api)),
        ];
        let mut out = Vec::new();
        write_findings(&mut out, Paint(false), &findings, &[]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "MEDIUM (1)\n  added     /etc/y  file 0644\n\n\
             CONTAINER 0badc0de  unknown\n  MEDIUM (1)\n    added     /data/z  file 0644\n\n\
             CONTAINER api (3f9a8c2d1e4b)  containerd, image shop/api:1.4, pod shop/api-7d9f\n\
             \x20 MEDIUM (2)\n    added     /srv/x  file 0644\n    added     /srv/w  file 0644\n\n"
        );
    }
}
