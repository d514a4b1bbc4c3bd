//! `driftwatch status`: asks the running daemon on its loopback endpoint.

use super::Outcome;
use crate::cli::{Format, StatusArgs};
use crate::config::{AgentConfig, DEFAULT_CONFIG_PATH};
use crate::error::{Error, Result};
use crate::sink::report::{colour_stdout, Paint};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// The daemon answers locally in milliseconds; a hung daemon must not hang this.
const TIMEOUT: Duration = Duration::from_secs(5);
/// A status document is small; a larger answer is not the daemon's.
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// One HTTP/1.0 GET on loopback: the endpoint is ours and plain, so a client library
/// would add nothing but weight to the agent.
fn get(address: SocketAddr, path: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    if !response.starts_with(b"HTTP/1.1 200") && !response.starts_with(b"HTTP/1.0 200") {
        return Err(std::io::Error::other("unexpected HTTP status"));
    }
    Ok(response.split_off(split + 4))
}

/// Prints the daemon's status.
pub fn run(args: &StatusArgs, out: &mut impl Write) -> Result<Outcome> {
    let explicit = args.config.is_some();
    let path = args
        .config
        .as_deref()
        .unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    let config = AgentConfig::load(path, explicit).map_err(Error::Config)?;
    let address = config.health.listen;
    let body = get(address, "/status").map_err(|source| Error::Status { address, source })?;
    let status: Value = serde_json::from_slice(&body).map_err(|e| Error::Status {
        address,
        source: std::io::Error::other(e),
    })?;
    let state = status["state"].as_str().unwrap_or("unknown");
    match args.format {
        Format::Json => crate::sink::report::write_json(out, &status)?,
        Format::Text => {
            let paint = Paint(colour_stdout());
            let headline = format!("driftwatch: {state}");
            writeln!(
                out,
                "{}",
                if state == "clean" {
                    paint.good(&headline)
                } else {
                    paint.bold(&headline)
                }
            )?;
            if let Some(reason) = status["mark"]["reason"].as_str() {
                let by = if status["mark"]["origin"] == "collector" {
                    " by the collector"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "marked for replacement{by} since {}: {reason}",
                    status["mark"]["since"].as_str().unwrap_or("?")
                )?;
            }
            let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
            writeln!(
                out,
                "baseline   {} ({})",
                text(&status["baseline_digest"]),
                text(&status["image_id"])
            )?;
            writeln!(
                out,
                "last check {} ({} ms)",
                text(&status["last_full_check"]),
                status["last_full_check_ms"]
            )?;
            let collector = &status["collector"];
            if collector.is_object() {
                let reach = if collector["reachable"] == true {
                    "reachable".to_string()
                } else {
                    match collector["last_error"].as_str() {
                        Some(error) => format!("not reachable ({error})"),
                        None => "not reached yet".to_string(),
                    }
                };
                writeln!(
                    out,
                    "collector  {} as {}: {reach}; {} events spooled; last ack {}; host {} there",
                    text(&collector["url"]),
                    text(&collector["host_id"]),
                    collector["spooled_events"],
                    text(&collector["last_ack"]),
                    text(&collector["host_state"]),
                )?;
            }
            provisioning_lines(out, &status["provisioning"])?;
            for degradation in status["degradations"].as_array().into_iter().flatten() {
                writeln!(out, "degraded   {}", text(degradation))?;
            }
            let findings = status["findings"].as_array().cloned().unwrap_or_default();
            if !findings.is_empty() {
                writeln!(out, "\n{} findings remembered:", findings.len())?;
            }
            for remembered in &findings {
                let finding = &remembered["finding"];
                let subject = ["path", "name", "exe", "mountpoint", "port"]
                    .iter()
                    .find_map(|k| finding.get(*k).filter(|v| !v.is_null()))
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "  {:<8}  {:<13}  {subject}  (since {})",
                    text(&finding["severity"]),
                    text(&finding["kind"]),
                    text(&remembered["first_seen"])
                )?;
            }
        }
    }
    Ok(if state == "clean" || state == "starting" {
        Outcome::Clean
    } else {
        Outcome::Drift
    })
}

/// The first-boot provisioning window: its phase, and the delta it holds (changes that
/// are the host's own, not drift).
fn provisioning_lines(out: &mut impl Write, window: &Value) -> std::io::Result<()> {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let delta = window["delta"].as_object().cloned().unwrap_or_default();
    match window["phase"].as_str() {
        Some("open") => writeln!(
            out,
            "provision  window open since {} (until {} finished): {} changes so far",
            text(&window["opened"]),
            window["units"]
                .as_array()
                .map(|u| u.iter().map(text).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            delta.len()
        )?,
        Some("sealed") => writeln!(
            out,
            "provision  delta sealed {} ({}): {} changes, not drift",
            text(&window["sealed"]),
            text(&window["sealed_because"]),
            delta.len()
        )?,
        _ => return Ok(()),
    }
    for entry in delta.values() {
        let finding = &entry["finding"];
        writeln!(
            out,
            "  {:<8}  {}  {}",
            text(&finding["change"]),
            text(&finding["path"]),
            text(&finding["observed"]["blake3"])
        )?;
    }
    Ok(())
}
