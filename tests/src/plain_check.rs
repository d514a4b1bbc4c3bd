//! `driftwatch check` run on a booted machine as a plain root command (nspawn or qemu),
//! judged on its own before it is compared with the daemon: its JSON listing, JSON
//! summary, text summary and exit status must tell the same story. A summary that
//! counts what the listing leaves out (the sealed provisioning delta, once) reads as
//! drift to whoever looks only at the last line.

use crate::container::Out;
use serde_json::Value;

/// The exit status a report calls for: drift 1, otherwise incomplete 2, else 0.
fn exit_for(findings: usize, errors: usize) -> i32 {
    match (findings, errors) {
        (0, 0) => 0,
        (0, _) => 2,
        _ => 1,
    }
}

/// Judges the JSON (`--format json`) and the text run of one check on an unchanged
/// host: the report, or every way they disagree.
pub fn judge(json: &Out, text: &Out) -> Result<Value, String> {
    let report: Value = serde_json::from_str(&json.stdout)
        .map_err(|e| format!("`driftwatch check --format json` printed no report ({e}):{json}"))?;
    let mut wrong = Vec::new();
    if report["schema"] != "driftwatch.report/v1" {
        wrong.push(format!("schema {}", report["schema"]));
    }
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    let errors = report["errors"].as_array().map_or(0, Vec::len);
    let summary = &report["summary"];
    let count = |severity: &str| {
        findings
            .iter()
            .filter(|f| f["severity"] == severity)
            .count()
    };
    let (critical, high, medium, low) = (
        count("critical"),
        count("high"),
        count("medium"),
        count("low"),
    );
    for (name, listed) in [
        ("findings", findings.len()),
        ("critical", critical),
        ("high", high),
        ("medium", medium),
        ("low", low),
    ] {
        if summary[name].as_u64() != Some(listed as u64) {
            wrong.push(format!(
                "the JSON summary counts {} {name}, the listing has {listed}",
                summary[name]
            ));
        }
    }
    let exit = exit_for(findings.len(), errors);
    for (out, how) in [(json, "JSON"), (text, "text")] {
        if out.code != Some(exit) {
            wrong.push(format!(
                "the {how} run exits {:?} for {} findings and {errors} errors (want {exit})",
                out.code,
                findings.len()
            ));
        }
    }
    let last = text.stdout.lines().last().unwrap_or_default();
    let want = match findings.len() {
        0 => "No drift.".to_string(),
        n => format!(
            "{n} {}: {critical} critical, {high} high, {medium} medium, {low} low",
            if n == 1 { "finding" } else { "findings" }
        ),
    };
    if !last.starts_with(&want) {
        wrong.push(format!(
            "the text summary is {last:?}, the listing calls for {want:?}"
        ));
    }
    if wrong.is_empty() {
        Ok(report)
    } else {
        Err(format!(
            "`driftwatch check` contradicts itself: {}{json}{text}",
            wrong.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(code: i32, stdout: &str) -> Out {
        Out {
            command: "driftwatch check".into(),
            code: Some(code),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    #[test]
    fn a_summary_counting_what_the_listing_leaves_out_is_caught() {
        let clean = r#"{"schema":"driftwatch.report/v1","summary":{"findings":0,"critical":0,"high":0,"medium":0,"low":0},"findings":[],"errors":[]}"#;
        let text = "driftwatch check of / against blake3:x\n\nNo drift. · 10 entries, 1 KiB hashed in 0.1 s\n";
        assert!(judge(&out(0, clean), &out(0, text)).is_ok());
        let stale = clean.replace(
            r#""findings":0,"critical":0"#,
            r#""findings":1,"critical":1"#,
        );
        assert!(judge(&out(0, &stale), &out(0, text)).is_err());
        let counted = "\n1 finding: 1 critical, 0 high, 0 medium, 0 low · 10 entries\n";
        assert!(judge(&out(0, clean), &out(0, counted)).is_err());
        assert!(judge(&out(1, clean), &out(0, text)).is_err());
    }
}
