//! `driftwatch check`: the live tree merged against the baseline, findings out — and,
//! with `--report`, to the collector as well (a one-shot delivery, nothing spooled).

use super::{canonical_root, Outcome};
use crate::cli::{CheckArgs, Format};
use crate::config::{AgentConfig, CollectorConfig, DEFAULT_CONFIG_PATH};
use crate::daemon::provision;
use crate::error::{Error, Result};
use crate::pipeline::{self, CheckOutcome, CheckPlan};
use crate::sink::collector::deliver_report;
use crate::sink::progress::Progress;
use crate::sink::report::{colour_stdout, summary_line, write_findings, write_json, Paint};
use crate::source::files::ScanOptions;
use driftwatch_protocol::report::Report;
use driftwatch_protocol::wire::ImageClaim;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Runs a check and writes the report; with `--report`, delivers it.
pub fn run(args: &CheckArgs, out: &mut impl Write) -> Result<Outcome> {
    // Read before the scan: a bad configuration should not cost a whole scan.
    let collector = args.report.then(|| collector_config(args)).transpose()?;
    let root = canonical_root(&args.scan.root)?;
    let baseline_path = match &args.baseline {
        Some(path) => path.clone(),
        None => default_baseline_in(&root)?,
    };
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
            readers: args.scan.readers,
            ..ScanOptions::default()
        },
        runtime: !args.no_runtime,
        cancel: &AtomicBool::new(false),
    };
    let CheckOutcome {
        mut report,
        skipped,
    } = pipeline::check(&plan, &progress, &mut |_, _, _| {})?;
    if let Some(config) = host_config(args, &root)? {
        // The host's own first-boot changes are not drift here either: the same
        // answer as the daemon's, in the listing, the summary and the exit status.
        provision::explain(&config, &mut report);
    }
    match args.format {
        Format::Json => write_json(out, &report)?,
        Format::Text => write_text(
            out,
            &report,
            reader.signer().map(|k| k.fingerprint()),
            &skipped,
        )?,
    }
    if let Some((collector, state_dir)) = collector {
        // The report is out before the network is tried: a slow collector must not
        // hold it back.
        out.flush()?;
        deliver(&collector, &state_dir, &report)?;
    }
    Ok(Outcome::of(report.findings.len(), report.errors.len()))
}

/// The agent configuration when `root` is the root it watches (`root`, default `/`):
/// read for a check of `/`, or when `--config` names it. `None` for any other tree
/// (a mounted image is judged against its baseline alone).
fn host_config(args: &CheckArgs, root: &Path) -> Result<Option<AgentConfig>> {
    if args.config.is_none() && root != Path::new("/") {
        return Ok(None);
    }
    let config = AgentConfig::load(
        args.config
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_CONFIG_PATH)),
        args.config.is_some(),
    )
    .map_err(Error::Config)?;
    let watched = std::fs::canonicalize(&config.root).is_ok_and(|watched| watched == root);
    Ok(watched.then_some(config))
}

/// The `[collector]` section and state directory of the agent configuration.
fn collector_config(args: &CheckArgs) -> Result<(CollectorConfig, PathBuf)> {
    let path = args
        .config
        .as_deref()
        .unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    let config = AgentConfig::load(path, true).map_err(Error::Config)?;
    let collector = config.collector.ok_or_else(|| {
        Error::Usage(format!(
            "--report needs a [collector] section in {}",
            path.display()
        ))
    })?;
    Ok((collector, config.state_dir))
}

/// Sends the report and says, on stderr, what the collector thinks of the host.
fn deliver(collector: &CollectorConfig, state_dir: &Path, report: &Report) -> Result<()> {
    let image = ImageClaim {
        image_id: report.baseline.image_id.clone(),
        baseline_digest: Some(report.baseline.digest.clone()),
    };
    let delivered =
        deliver_report(collector, state_dir, image, &report.findings).map_err(|source| {
            Error::Report {
                url: collector.url.to_string(),
                source,
            }
        })?;
    let mark = delivered.host.mark.map_or(String::new(), |m| {
        format!(", marked for replacement since {}: {}", m.since, m.reason)
    });
    eprintln!(
        "driftwatch: report delivered to {} ({} findings); host {} is {} at the collector{mark}.",
        collector.url,
        delivered.findings,
        collector.host_id(),
        delivered.host.state.name(),
    );
    Ok(())
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

/// The default baseline inside `root`, which may be a hostile image: a link there (even
/// an absolute one, which would lead to the scanning host's files) or a FIFO is refused
/// with an error naming the path.
fn default_baseline_in(root: &Path) -> Result<PathBuf> {
    let inside = crate::config::DEFAULT_BASELINE_PATH.as_bytes();
    crate::source::rootfs::open_regular_in_root(root, inside)
        .map(|(_, host)| host)
        .map_err(|source| Error::OpenBaseline {
            path: pipeline::default_baseline(root),
            source,
        })
}
