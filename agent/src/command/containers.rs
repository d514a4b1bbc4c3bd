//! `driftwatch containers`: the running containers, each with its image and drift.

use super::Outcome;
use crate::cli::{ContainersArgs, Format};
use crate::error::{Error, Result};
use crate::pipeline::load_policy;
use crate::policy::Policy;
use crate::sink::report::{colour_stdout, summary_line, write_findings, write_json, Paint};
use crate::source::containers::{self, ContainerSummary, Host};
use driftwatch_protocol::report::{Finding, Summary};
use serde::Serialize;
use std::io::Write;

/// The JSON document's schema name.
pub const CONTAINERS_SCHEMA: &str = "driftwatch.containers/v1";

#[derive(Serialize)]
struct Listing<'a> {
    schema: &'static str,
    containers: Vec<Listed<'a>>,
    errors: &'a [String],
}

#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    summary: &'a ContainerSummary,
    findings: Vec<&'a Finding>,
}

/// Lists the containers and what drifted in them.
pub fn run(args: &ContainersArgs, out: &mut impl Write) -> Result<Outcome> {
    let policy = match &args.policy {
        Some(path) => load_policy(path)?,
        None => Policy::builtin().map_err(|source| Error::Policy {
            origin: "built in".to_string(),
            source,
        })?,
    };
    let observed = containers::observe(&Host::default(), &policy.config().containers);
    match args.format {
        Format::Json => {
            let listing = Listing {
                schema: CONTAINERS_SCHEMA,
                containers: observed
                    .containers
                    .iter()
                    .map(|summary| Listed {
                        summary,
                        findings: observed
                            .findings
                            .iter()
                            .filter(|f| f.container().is_some_and(|c| c.id == summary.reference.id))
                            .collect(),
                    })
                    .collect(),
                errors: &observed.errors,
            };
            write_json(out, &listing)?;
        }
        Format::Text => write_text(out, &observed)?,
    }
    Ok(Outcome::of(observed.findings.len(), observed.errors.len()))
}

fn write_text(out: &mut impl Write, observed: &containers::ContainerObservation) -> Result<()> {
    let paint = Paint(colour_stdout());
    if observed.containers.is_empty() {
        writeln!(out, "no running containers")?;
    } else {
        writeln!(
            out,
            "{}",
            paint.bold(&format!(
                "{:<14}{:<24}{:<12}{:<40}{:>6}",
                "CONTAINER", "NAME", "RUNTIME", "IMAGE", "DRIFT"
            ))
        )?;
        for container in &observed.containers {
            let reference = &container.reference;
            let short: String = reference.id.chars().take(12).collect();
            let drift = match container.max_severity {
                Some(severity) => paint.severity(severity, &format!("{:>6}", container.drift)),
                None => paint.good(&format!("{:>6}", 0)),
            };
            writeln!(
                out,
                "{short:<14}{:<24}{:<12}{:<40}{drift}",
                reference.name.as_deref().unwrap_or("-"),
                reference.runtime,
                reference.image.as_deref().unwrap_or("-"),
            )?;
        }
        writeln!(out)?;
    }
    let errors: Vec<_> = observed
        .errors
        .iter()
        .map(|e| driftwatch_protocol::report::ScanError {
            path: "(containers)".to_string(),
            path_bytes_b64: None,
            error: e.clone(),
        })
        .collect();
    write_findings(out, paint, &observed.findings, &errors)?;
    let summary = Summary::of(&observed.findings);
    writeln!(
        out,
        "{}",
        summary_line(paint, &summary, "no drift in containers")
    )?;
    Ok(())
}
