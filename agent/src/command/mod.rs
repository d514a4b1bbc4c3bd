//! The commands: each resolves what the user typed into real objects (policy, keys,
//! baseline), runs the pipeline, and returns an [`Outcome`] that `main` turns into the
//! exit status.

pub mod baseline;
pub mod check;
pub mod containers;
pub mod key;
pub mod status;

use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How a command ended, when it did not fail outright.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report (exit 0).
    Clean,
    /// Drift or differences found (exit 1).
    Drift,
    /// Completed, but some entries could not be examined (exit 2).
    Incomplete,
}

impl Outcome {
    /// Drift wins over incompleteness: what was found is certain.
    pub fn of(findings: usize, errors: usize) -> Outcome {
        if findings > 0 {
            Outcome::Drift
        } else if errors > 0 {
            Outcome::Incomplete
        } else {
            Outcome::Clean
        }
    }

    /// The exit status.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Clean => 0,
            Outcome::Drift => 1,
            Outcome::Incomplete => 2,
        }
    }
}

/// The root as an absolute path without symlinks, so that every path below it is
/// resolved the same way by the walker and by us.
pub fn canonical_root(root: &Path) -> Result<PathBuf> {
    fs::canonicalize(root).map_err(|source| Error::Root {
        path: root.to_path_buf(),
        source,
    })
}

/// The creation time of a baseline: `SOURCE_DATE_EPOCH` when set (reproducible builds),
/// else now.
pub fn creation_time() -> Result<SystemTime> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse::<u64>()
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .map_err(|_| Error::Environment {
                name: "SOURCE_DATE_EPOCH",
                expected: "a number of seconds since 1970",
                value,
            }),
        Err(_) => Ok(SystemTime::now()),
    }
}
