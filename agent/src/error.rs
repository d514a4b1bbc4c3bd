//! The agent's errors, and the one place that maps them to exit codes.

use driftwatch_protocol::baseline::{ReadError, WriteError};
use driftwatch_protocol::sign::KeyError;
use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// Everything that can stop a command. Per-file problems during a scan are not errors:
/// they are listed in the report.
#[derive(Debug, Error)]
pub enum Error {
    /// The policy file could not be read.
    #[error("cannot read policy {}: {source}", path.display())]
    ReadPolicy {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The policy is invalid.
    #[error("invalid policy {origin}: {source}")]
    Policy {
        /// The file, or where the policy came from.
        origin: String,
        /// What is wrong.
        source: crate::policy::PolicyError,
    },
    /// The baseline file could not be opened.
    #[error("cannot open baseline {}: {source}", path.display())]
    OpenBaseline {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The baseline is not intact or not trusted.
    #[error("baseline {} failed verification: {source}", path.display())]
    VerifyBaseline {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: ReadError,
    },
    /// The baseline could not be written.
    #[error("cannot write baseline {}: {source}", path.display())]
    WriteBaseline {
        /// The file.
        path: PathBuf,
        /// Why.
        source: WriteError,
    },
    /// A key file could not be read or written.
    #[error("cannot {action} key {}: {source}", path.display())]
    KeyFile {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A key file does not hold the expected key.
    #[error("key {} is unusable: {source}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: KeyError,
    },
    /// The root to scan cannot be used.
    #[error("cannot scan root {}: {source}", path.display())]
    Root {
        /// The root.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An environment variable has an unusable value.
    #[error("{name} must be {expected}, not {value:?}")]
    Environment {
        /// The variable.
        name: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        value: String,
    },
    /// The package database inside the root could not be read.
    #[error("{0}")]
    PackageDb(crate::source::packages::PackageDbError),
    /// The daemon's configuration cannot be used.
    #[error("{0}")]
    Config(crate::config::ConfigError),
    /// The health endpoint cannot listen.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The daemon's state cannot be read or written.
    #[error("daemon state: {0}")]
    State(io::Error),
    /// The daemon cannot start (runtime, signal handlers).
    #[error("cannot start the daemon: {0}")]
    Start(io::Error),
    /// The daemon cannot be reached for its status.
    #[error("cannot get the status from {address} (is the daemon running?): {source}")]
    Status {
        /// The address asked.
        address: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The spool of events for the collector cannot be used.
    #[error("{0}")]
    Spool(crate::sink::spool::SpoolError),
    /// `check --report` could not deliver the report.
    #[error("cannot deliver the report to {url}: {source}")]
    Report {
        /// The collector.
        url: String,
        /// Why.
        source: crate::sink::collector::ReportError,
    },
    /// Options that cannot be used together or here.
    #[error("{0}")]
    Usage(String),
    /// Writing the report failed.
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
}

impl Error {
    /// The exit code (DESIGN.md §3): 3 for baseline integrity failures, 2 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::VerifyBaseline { source, .. } if source.is_integrity_failure() => 3,
            _ => 2,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
