//! `driftwatch check`: the live tree merged against the baseline, findings out.

use super::{
    canonical_root, hostname, inside_root, load_policy, machine_id, rfc3339, scan_error, Outcome,
};
use crate::baseline::{self, DEFAULT_BASELINE_PATH};
use crate::cli::{CheckArgs, Format};
use crate::diff::{package_findings, BaselineCursor, Differ};
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::sink::progress::Progress;
use crate::sink::report::{colour_stdout, summary_line, write_findings, write_json, Paint};
use crate::source::files::{scan, ScanAbort, ScanItem, ScanOptions};
use crate::source::{packages, runtime};
use driftwatch_protocol::baseline::digest_string;
use driftwatch_protocol::package::PackageSet;
use driftwatch_protocol::report::{
    BaselineInfo, Finding, HostInfo, PackageFileFinding, Report, ScanError, ScanInfo, Summary,
    REPORT_SCHEMA,
};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime};

/// Runs a check and writes the report.
pub fn run(args: &CheckArgs, out: &mut impl Write) -> Result<Outcome> {
    let root = canonical_root(&args.scan.root)?;
    let baseline_path = args
        .baseline
        .clone()
        .unwrap_or_else(|| root.join(DEFAULT_BASELINE_PATH.trim_start_matches('/')));
    let trusted_key = args
        .pubkey
        .as_deref()
        .map(baseline::read_public_key)
        .transpose()?;
    let reader = baseline::open(&baseline_path, trusted_key.as_ref())?;
    let policy = match &args.scan.policy {
        Some(path) => load_policy(path)?,
        None => Policy::parse(&reader.meta().policy).map_err(|source| Error::Policy {
            origin: format!("recorded in {}", baseline_path.display()),
            source,
        })?,
    };
    // The baseline itself lives in the image but is not part of it.
    let own_files: Vec<Vec<u8>> = inside_root(&root, &baseline_path).into_iter().collect();

    let started_at = SystemTime::now();
    let timer = Instant::now();
    let progress = Progress::new(Some(reader.entry_count()), "checking");
    let mut cursor = BaselineCursor::new(reader.entries());
    let mut differ = Differ::new(&policy, &own_files);
    let mut errors = Vec::new();
    let mut bytes_seen = 0u64;
    let options = ScanOptions {
        threads: args.scan.threads,
        skip: own_files.clone(),
    };
    let stats = scan(&root, &policy, &options, &AtomicBool::new(false), |item| {
        match item {
            ScanItem::Observed {
                entry,
                state,
                error,
            } => {
                if entry.blake3.is_some() {
                    bytes_seen += entry.size;
                }
                progress.entry(bytes_seen);
                let before = cursor.seek(&entry.path, |b| differ.unmatched_baseline(b))?;
                differ.observed(before.as_ref(), &entry, &state);
                if let Some(error) = error {
                    errors.push(scan_error(&entry.path, error));
                }
            }
            ScanItem::Unreadable {
                path,
                error,
                subtree_unknown,
            } => {
                // What is below an unreadable path is unknown, not removed.
                cursor.seek(&path, |b| differ.unmatched_baseline(b))?;
                if subtree_unknown {
                    differ.subtree_unknown(path.clone());
                }
                errors.push(scan_error(&path, error));
            }
        }
        Ok(())
    })
    .map_err(|abort| match abort {
        ScanAbort::Root { path, source } => Error::Root { path, source },
        ScanAbort::Visitor(source) => Error::VerifyBaseline {
            path: baseline_path.clone(),
            source,
        },
    })?;
    cursor
        .drain(|b| differ.unmatched_baseline(b))
        .map_err(|source| Error::VerifyBaseline {
            path: baseline_path.clone(),
            source,
        })?;
    progress.finish();

    let mut findings = differ.finish();
    let baked_packages = reader.meta().packages.as_ref();
    if let Some(baked) = baked_packages.filter(|_| policy.config().packages.enabled) {
        // A database that cannot be read is one error; verification would only repeat it.
        let verified = packages::read(&root).and_then(|now| {
            // No database at all where the image had one: every package is gone.
            let now = now.unwrap_or_else(|| PackageSet::new(baked.db, Vec::new()));
            findings.extend(package_findings(
                baked,
                &now,
                policy.config().packages.severity,
            ));
            packages::verify_for_policy(&root, &policy, baked.db)
        });
        match verified {
            Ok(outcome) => {
                let accepted = |f: &PackageFileFinding| {
                    baked.accepted_mismatches.iter().any(|a| {
                        a.path == f.path && a.package == f.package && a.observed == f.observed
                    })
                };
                findings.extend(
                    outcome
                        .findings
                        .into_iter()
                        .filter(|f| !accepted(f))
                        .map(Finding::PackageFile),
                );
                errors.extend(
                    outcome
                        .errors
                        .iter()
                        .map(|(path, e)| scan_error(path, e.clone())),
                );
            }
            Err(err) => errors.push(ScanError {
                path: "(package database)".to_string(),
                path_bytes_b64: None,
                error: err.to_string(),
            }),
        }
    }
    // Runtime state belongs to the running system, so only a check of / reads it.
    let mut skipped = Vec::new();
    if root == Path::new("/") && !args.no_runtime {
        let observed = runtime::observe(
            &policy.config().runtime,
            &reader,
            reader.meta().runtime.as_ref(),
        );
        findings.extend(observed.findings);
        errors.extend(observed.errors.into_iter().map(|error| ScanError {
            path: "(runtime)".to_string(),
            path_bytes_b64: None,
            error,
        }));
        skipped = observed.skipped;
    }

    let report = Report {
        schema: REPORT_SCHEMA.to_string(),
        host: HostInfo {
            hostname: hostname(),
            machine_id: machine_id(&root),
        },
        baseline: BaselineInfo {
            digest: digest_string(reader.digest()),
            image_id: reader.meta().image_id.clone(),
            signed: reader.signer().is_some(),
        },
        scan: ScanInfo {
            root: root.display().to_string(),
            started_at: rfc3339(started_at),
            duration_ms: timer.elapsed().as_millis() as u64,
            entries: stats.entries,
            bytes_hashed: stats.bytes_hashed,
        },
        summary: Summary::of(&findings),
        findings,
        errors,
    };
    match args.format {
        Format::Json => write_json(out, &report)?,
        Format::Text => write_text(
            out,
            &report,
            reader.signer().map(|k| k.fingerprint()),
            &skipped,
        )?,
    }
    Ok(Outcome::of(report.findings.len(), report.errors.len()))
}

fn write_text(
    out: &mut impl Write,
    report: &Report,
    signer: Option<String>,
    skipped: &[String],
) -> std::io::Result<()> {
    let paint = Paint(colour_stdout());
    let image = report.baseline.image_id.as_deref().unwrap_or("no image id");
    let signed = signer.map_or("unsigned".to_string(), |k| format!("signed by {k}"));
    writeln!(
        out,
        "{}",
        paint.dim(&format!(
            "driftwatch check of {} against {} ({image}, {signed})",
            report.scan.root, report.baseline.digest
        ))
    )?;
    writeln!(out)?;
    write_findings(out, paint, &report.findings, &report.errors)?;
    for note in skipped {
        writeln!(out, "{}", paint.dim(&format!("Not checked: {note}.")))?;
    }
    writeln!(
        out,
        "{} · {} entries, {} hashed in {:.1} s",
        summary_line(paint, &report.summary, "No drift."),
        report.scan.entries,
        indicatif::HumanBytes(report.scan.bytes_hashed),
        report.scan.duration_ms as f64 / 1000.0
    )
}
