//! `driftwatch baseline create|verify|show|diff`.

use super::{canonical_root, creation_time, Outcome};
use crate::baseline::{self, PendingBaseline};
use crate::cli::{CreateArgs, DiffArgs, Format, ShowArgs, VerifyArgs};
use crate::diff::{BaselineCursor, Differ};
use crate::error::{Error, Result};
use crate::pipeline::{inside_root, load_policy, scan_error};
use crate::policy::Policy;
use crate::sink::progress::Progress;
use crate::sink::report::{colour_stdout, summary_line, write_findings, write_json, Paint};
use crate::source::files::{scan, ScanAbort, ScanItem, ScanOptions};
use crate::source::{packages, runtime};
use driftwatch_protocol::baseline::{digest_string, BaselineMeta, BaselineReader};
use driftwatch_protocol::package::AcceptedMismatch;
use driftwatch_protocol::report::{report_path, BaselineInfo, EntryState, Finding, Summary};
use driftwatch_protocol::time::rfc3339;
use serde::Serialize;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

#[derive(Serialize)]
struct CreateSummary {
    path: String,
    digest: String,
    image_id: Option<String>,
    signer: Option<String>,
    entries: u64,
    packages: Option<usize>,
    size: u64,
    bytes_hashed: u64,
    duration_ms: u64,
    errors: Vec<driftwatch_protocol::report::ScanError>,
}

/// Scans the root and writes a sealed (optionally signed) baseline.
pub fn create(args: &CreateArgs, out: &mut impl Write) -> Result<Outcome> {
    let root = canonical_root(&args.scan.root)?;
    if args.capture_runtime && root != Path::new("/") {
        return Err(Error::Usage(
            "--capture-runtime records this running system, so it needs --root /".to_string(),
        ));
    }
    let policy = match &args.scan.policy {
        Some(path) => load_policy(path)?,
        None => Policy::builtin().map_err(|source| Error::Policy {
            origin: "built in".to_string(),
            source,
        })?,
    };
    let key = args
        .sign_key
        .as_deref()
        .map(baseline::read_private_key)
        .transpose()?;
    // Read before the scan: a broken package database fails the bake before minutes
    // of hashing, and the baseline records what the image was built with.
    let mut errors = Vec::new();
    let mut packages = if policy.config().packages.enabled {
        packages::read(&root).map_err(Error::PackageDb)?
    } else {
        None
    };
    if let Some(set) = packages.as_mut() {
        // What already differs from its package at bake time is the image's own state.
        let outcome =
            packages::verify_for_policy(&root, &policy, set.db).map_err(Error::PackageDb)?;
        set.accepted_mismatches = outcome
            .findings
            .into_iter()
            .map(|f| AcceptedMismatch {
                path: f.path,
                package: f.package,
                observed: f.observed,
            })
            .collect();
        set.accepted_mismatches.sort();
        errors.extend(
            outcome
                .errors
                .iter()
                .map(|(path, e)| scan_error(path, e.clone())),
        );
    }
    let mut hashes = vec!["blake3".to_string()];
    if policy.config().scan.sha256 {
        hashes.push("sha256".to_string());
    }
    let meta = BaselineMeta {
        image_id: args.image_id.clone(),
        created_at: rfc3339(creation_time()?),
        tool: format!("driftwatch {}", env!("CARGO_PKG_VERSION")),
        policy: policy.text().to_string(),
        policy_digest: policy.digest(),
        hashes,
        packages,
        runtime: args
            .capture_runtime
            .then(|| runtime::capture(&policy.config().runtime)),
    };
    let mut pending = PendingBaseline::create(&args.out, &meta)?;
    // The baseline being written may lie inside the tree; it is not part of the image.
    let own_files: Vec<Vec<u8>> = [&args.out, pending.temp_path()]
        .into_iter()
        .filter_map(|file| inside_root(&root, file))
        .collect();

    let timer = Instant::now();
    let progress = Progress::new(None, "recording");
    let mut bytes_seen = 0u64;
    let options = ScanOptions {
        threads: args.scan.threads,
        readers: args.scan.readers,
        skip: own_files,
        ..ScanOptions::default()
    };
    let stats = scan(&root, &policy, &options, &AtomicBool::new(false), |item| {
        match item {
            ScanItem::Observed {
                entry,
                error,
                unsettled,
                ..
            } => {
                if entry.blake3.is_some() {
                    bytes_seen += entry.size;
                }
                progress.entry(bytes_seen);
                if let Some(error) = error {
                    errors.push(scan_error(&entry.path, error));
                }
                // Recorded without its hash, a file would never have its content
                // compared: better left out (and named in the errors) than baked so.
                if !unsettled {
                    pending.push(&entry)?;
                }
            }
            ScanItem::Unreadable { path, error, .. } => errors.push(scan_error(&path, error)),
        }
        Ok(())
    })
    .map_err(|abort| match abort {
        ScanAbort::Root { path, source } => Error::Root { path, source },
        ScanAbort::Visitor(err) => err,
    })?;
    progress.finish();
    let sealed = pending.finish(key.as_ref())?;

    let summary = CreateSummary {
        path: args.out.display().to_string(),
        digest: digest_string(&sealed.digest),
        image_id: args.image_id.clone(),
        signer: sealed.signer.map(|k| k.fingerprint()),
        entries: sealed.entry_count,
        packages: meta.packages.as_ref().map(|p| p.packages.len()),
        size: sealed.size,
        bytes_hashed: stats.bytes_hashed,
        duration_ms: timer.elapsed().as_millis() as u64,
        errors,
    };
    match args.format {
        Format::Json => write_json(out, &summary)?,
        Format::Text => {
            let paint = Paint(colour_stdout());
            write_findings(out, paint, &[], &summary.errors)?;
            writeln!(
                out,
                "Wrote {}: {} entries{}, {}, {} ({}); {} hashed in {:.1} s",
                summary.path,
                summary.entries,
                summary
                    .packages
                    .map_or(String::new(), |n| format!(", {n} packages")),
                indicatif::HumanBytes(summary.size),
                summary.digest,
                summary
                    .signer
                    .as_deref()
                    .map_or("unsigned".to_string(), |k| format!("signed by {k}")),
                indicatif::HumanBytes(summary.bytes_hashed),
                summary.duration_ms as f64 / 1000.0,
            )?;
        }
    }
    Ok(Outcome::of(0, summary.errors.len()))
}

#[derive(Serialize)]
struct BaselineDescription<'a> {
    file: String,
    digest: String,
    signer: Option<String>,
    entries: u64,
    size: u64,
    #[serde(flatten)]
    meta: &'a BaselineMeta,
}

fn describe<'a>(path: &Path, reader: &'a BaselineReader<File>) -> BaselineDescription<'a> {
    BaselineDescription {
        file: path.display().to_string(),
        digest: digest_string(reader.digest()),
        signer: reader.signer().map(|k| k.fingerprint()),
        entries: reader.entry_count(),
        size: reader.size(),
        meta: reader.meta(),
    }
}

fn write_description(
    out: &mut impl Write,
    d: &BaselineDescription<'_>,
    trusted: bool,
) -> std::io::Result<()> {
    let signature = match (&d.signer, trusted) {
        (Some(k), true) => format!("signed by {k} (the trusted key)"),
        (Some(k), false) => format!("signed by {k} (no trusted key given to compare with)"),
        (None, _) => "unsigned".to_string(),
    };
    writeln!(out, "baseline   {}", d.file)?;
    writeln!(out, "digest     {}", d.digest)?;
    writeln!(out, "signature  {signature}")?;
    writeln!(
        out,
        "image      {}",
        d.meta.image_id.as_deref().unwrap_or("-")
    )?;
    writeln!(out, "created    {} by {}", d.meta.created_at, d.meta.tool)?;
    writeln!(out, "policy     {}", d.meta.policy_digest)?;
    writeln!(out, "hashes     {}", d.meta.hashes.join(", "))?;
    writeln!(out, "entries    {}", d.entries)?;
    writeln!(out, "size       {}", indicatif::HumanBytes(d.size))
}

/// Verifies digest and signature; failures are errors (exit 3).
pub fn verify(args: &VerifyArgs, out: &mut impl Write) -> Result<Outcome> {
    let key = args
        .pubkey
        .as_deref()
        .map(baseline::read_public_key)
        .transpose()?;
    let reader = baseline::open(&args.file, key.as_ref())?;
    // The digest covers every byte, but walk the entries too: a well-sealed file whose
    // structure is broken must fail here, not later on a host.
    for entry in reader.entries() {
        entry.map_err(|source| Error::VerifyBaseline {
            path: args.file.clone(),
            source,
        })?;
    }
    let description = describe(&args.file, &reader);
    match args.format {
        Format::Json => write_json(out, &description)?,
        Format::Text => {
            write_description(out, &description, key.is_some())?;
            writeln!(
                out,
                "{}",
                Paint(colour_stdout()).good("OK: the baseline verifies.")
            )?;
        }
    }
    Ok(Outcome::Clean)
}

#[derive(Serialize)]
struct ShownEntry {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_bytes_b64: Option<String>,
    #[serde(flatten)]
    state: EntryState,
}

/// Prints a baseline's metadata and optionally its entries (streamed, so memory stays
/// flat for any size).
pub fn show(args: &ShowArgs, out: &mut impl Write) -> Result<Outcome> {
    let reader = baseline::open(&args.file, None)?;
    let description = describe(&args.file, &reader);
    let entry_error = |source| Error::VerifyBaseline {
        path: args.file.clone(),
        source,
    };
    match args.format {
        Format::Text => {
            write_description(out, &description, false)?;
            if args.entries {
                writeln!(out)?;
                for entry in reader.entries() {
                    let entry = entry.map_err(entry_error)?;
                    let state = EntryState::of(&entry);
                    let mut line = format!(
                        "{:<12} {} {:>5} {:>5} {:>10}  {}",
                        state.file_type,
                        state.mode,
                        state.uid,
                        state.gid,
                        state.size,
                        report_path(&entry.path).0
                    );
                    if let Some(target) = state.link_target {
                        line.push_str(&format!(" -> {target}"));
                    }
                    writeln!(out, "{line}")?;
                }
            }
        }
        Format::Json if !args.entries => write_json(out, &description)?,
        Format::Json => {
            // One JSON document, written entry by entry.
            let head = serde_json::to_string(&description).map_err(std::io::Error::other)?;
            write!(out, "{},\"entries\":[", head.trim_end_matches('}'))?;
            for (index, entry) in reader.entries().enumerate() {
                let entry = entry.map_err(entry_error)?;
                let (path, path_bytes_b64) = report_path(&entry.path);
                let shown = ShownEntry {
                    path,
                    path_bytes_b64,
                    state: EntryState::of(&entry),
                };
                if index > 0 {
                    write!(out, ",")?;
                }
                serde_json::to_writer(&mut *out, &shown).map_err(std::io::Error::other)?;
            }
            writeln!(out, "]}}")?;
        }
    }
    Ok(Outcome::Clean)
}

#[derive(Serialize)]
struct DiffReport {
    schema: &'static str,
    old: BaselineInfo,
    new: BaselineInfo,
    summary: Summary,
    findings: Vec<Finding>,
}

fn info(reader: &BaselineReader<File>) -> BaselineInfo {
    BaselineInfo {
        digest: digest_string(reader.digest()),
        image_id: reader.meta().image_id.clone(),
        signed: reader.signer().is_some(),
    }
}

/// Compares two baselines; the newer one's policy decides what counts and how much.
pub fn diff(args: &DiffArgs, out: &mut impl Write) -> Result<Outcome> {
    let old = baseline::open(&args.old, None)?;
    let new = baseline::open(&args.new, None)?;
    let policy = Policy::parse(&new.meta().policy).map_err(|source| Error::Policy {
        origin: format!("recorded in {}", args.new.display()),
        source,
    })?;
    let mut cursor = BaselineCursor::new(old.entries());
    let mut differ = Differ::new(&policy, &[]);
    let old_error = |source| Error::VerifyBaseline {
        path: args.old.clone(),
        source,
    };
    for entry in new.entries() {
        let entry = entry.map_err(|source| Error::VerifyBaseline {
            path: args.new.clone(),
            source,
        })?;
        let before = cursor
            .seek(&entry.path, |b| differ.unmatched_baseline(b))
            .map_err(old_error)?;
        differ.observed(
            before.as_ref(),
            &entry,
            &policy.state_for(&entry.path),
            false,
        );
    }
    cursor
        .drain(|b| differ.unmatched_baseline(b))
        .map_err(old_error)?;
    let findings = differ.finish();
    let report = DiffReport {
        schema: "driftwatch.baseline-diff/v1",
        old: info(&old),
        new: info(&new),
        summary: Summary::of(&findings),
        findings,
    };
    match args.format {
        Format::Json => write_json(out, &report)?,
        Format::Text => {
            let paint = Paint(colour_stdout());
            let name = |i: &BaselineInfo| {
                format!(
                    "{} ({})",
                    i.image_id.as_deref().unwrap_or("no image id"),
                    i.digest
                )
            };
            writeln!(
                out,
                "{}",
                paint.dim(&format!(
                    "From {}\n  to {}",
                    name(&report.old),
                    name(&report.new)
                ))
            )?;
            writeln!(out)?;
            write_findings(out, paint, &report.findings, &[])?;
            writeln!(
                out,
                "{}",
                summary_line(
                    paint,
                    &report.summary,
                    "The baselines record the same state."
                )
            )?;
        }
    }
    Ok(Outcome::of(report.findings.len(), 0))
}
