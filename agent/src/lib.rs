//! `driftwatch-agent` as a library: the modules behind the `driftwatch` binary.
//!
//! The agent is a small pipeline: **sources** observe the host ([`source::files`]: the
//! scan engine), **diff** compares observations with the image's baseline
//! ([`diff`], graded by [`policy`]), and **sinks** deliver the findings
//! ([`sink::report`]: text and `driftwatch.report/v1` JSON). `baseline create` runs the
//! same scan into a [`baseline`] file instead of a diff; [`daemon`] schedules the same
//! pipeline on a host.
//!
//! The binary (`src/main.rs`) only parses the command line and maps the outcome to an
//! exit status; the library exists so that the fuzz targets and benchmarks can drive the
//! parsers of hostile input (baselines, package databases, the spool, configs) directly.

pub mod baseline;
pub mod cli;
pub mod command;
pub mod daemon;
pub mod diff;
pub mod error;
pub mod logging;
pub mod pipeline;
pub mod policy;
pub mod sink;
pub mod source;
pub mod watch;
