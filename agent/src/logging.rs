//! Structured logs: to the journal when there is one (the daemon under systemd), else
//! to stderr. The filter comes from `RUST_LOG`, default `driftwatch=info`.

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls do nothing).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("driftwatch=info"));
    let registry = tracing_subscriber::registry().with(filter);
    // tracing-journald fails where the journal socket is absent (containers, CI): fall
    // back to plain structured lines on stderr.
    let journald = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    let _ = match journald {
        Some(journald) => registry.with(journald).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}
