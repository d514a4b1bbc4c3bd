//! `driftwatch check`: the live tree merged against the baseline, findings out.

use super::{canonical_root, Outcome};
use crate::cli::{CheckArgs, Format};
use crate::error::Result;
use crate::pipeline::{self, CheckOutcome, CheckPlan};
use crate::sink::progress::Progress;
use crate::sink::report::{colour_stdout, summary_line, write_findings, write_json, Paint};
use crate::source::files::ScanOptions;
use driftwatch_protocol::report::Report;
use std::io::Write;
use std::sync::atomic::AtomicBool;

/// Runs a check and writes the report.
pub fn run(args: &CheckArgs, out: &mut impl Write) -> Result<Outcome> {
    let root = canonical_root(&args.scan.root)?;
    let baseline_path = args
        .baseline
        .clone()
        .unwrap_or_else(|| pipeline::default_baseline(&root));
    let (reader, policy) = pipeline::open_baseline_and_policy(
        &baseline_path,
        args.pubkey.as_deref(),
        args.scan.policy.as_deref(),
    )?;
    let progress = Progress::new(Some(reader.entry_count()), "checking");
    let plan = CheckPlan {
        root: &root,
        baseline: &reader,
        baseline_path: &baseline_path,
        policy: &policy,
        scan: ScanOptions {
            threads: args.scan.threads,
            ..ScanOptions::default()
        },
        runtime: !args.no_runtime,
        cancel: &AtomicBool::new(false),
    };
    let CheckOutcome { report, skipped } = pipeline::check(&plan, &progress, &mut |_, _, _| {})?;
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
